"""Team sync with the company directory (LDAP or Active Directory): one DirectorySync run.

Loaded only where MSR_LDAP_URL is set (python-ldap is the `ldap` extra). A run reads
everything it needs from the directory first, with MSR's own bind and the sign-in's
connection settings (TLS, CA file, timeouts), then changes MSR in one transaction:

- every team bound to an LDAP group (its DN) or an LDAP filter gets exactly the directory
  users the binding finds: accounts are created on first sight (as a directory sign-in
  would), members who left are removed;
- every active directory user that the user search no longer finds is deactivated
  (accounts.services.set_active: refresh tokens and web sessions end, personal access
  tokens stop working with the account), and system admin rights follow
  MSR_LDAP_ADMIN_GROUP;
- a directory that cannot be reached, or refuses MSR's bind, fails the run and changes
  nothing; a team whose group is not in the directory keeps its members, with the reason
  shown on the team.

A member counts only when the user search (MSR_LDAP_USER_SEARCH_BASE and _USER_FILTER)
finds them, so that a team never holds someone who could not sign in.
"""

import logging
import re
from datetime import timedelta
from dataclasses import dataclass, field

import ldap
import ldap.dn
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from ldap.cidict import cidict
from ldap.controls import SimplePagedResultsControl
from ldap.filter import escape_filter_chars

from accounts import services, teamsync
from accounts.directory import describe, why_no_account
from accounts.models import DirectorySync, Namespace, Team, User

log = logging.getLogger(__name__)

PAGE_SIZE = 500
NAMES_PER_SEARCH = 100
MEMBER_ATTRIBUTES = ["member", "uniqueMember", "memberUid"]
# Active Directory returns at most MaxValRange (1500 by default) values of a multi-valued
# attribute per search, named with the range it holds: `member;range=0-1499`; the next
# range is asked for as `member;range=1500-*`, until one ends in `*` (AD's "ranged
# retrieval"; other directories return every value as `member`).
RANGED_ATTRIBUTE = re.compile(r"^(?P<attribute>[^;]+);range=(?P<low>\d+)-(?P<high>\d+|\*)$", re.IGNORECASE)
MAX_RANGES = 1000  # 1.5 million members at AD's default range: a directory that never ends is refused
# A run that has not finished after this long lost its worker; another may start.
STALE_AFTER_SECONDS = 3600


class Unreachable(Exception):
    """The directory cannot be read (down, TLS not trusted, MSR's bind refused)."""


@dataclass
class Person:
    dn: str
    name: str
    full_name: str
    email: str


@dataclass
class Plan:
    """What the directory says, read before anything changes."""

    people: dict[str, Person] = field(default_factory=dict)  # name → person, everyone looked up and found
    teams: dict[int, set[str]] = field(default_factory=dict)  # team id → member names
    bindings: dict[int, tuple[str, str]] = field(default_factory=dict)  # team id → the binding read
    team_errors: dict[int, str] = field(default_factory=dict)
    admins: set[str] | None = None  # None: no admin group configured


class _Directory:
    def __init__(self):
        try:
            self.connection = ldap.initialize(settings.AUTH_LDAP_SERVER_URI)
            for option, value in settings.AUTH_LDAP_CONNECTION_OPTIONS.items():
                self.connection.set_option(option, value)
            if settings.AUTH_LDAP_START_TLS:
                self.connection.start_tls_s()
            self.connection.simple_bind_s(settings.AUTH_LDAP_BIND_DN, settings.AUTH_LDAP_BIND_PASSWORD)
        except ldap.LDAPError as e:
            raise Unreachable(describe(e)) from None
        search = settings.AUTH_LDAP_USER_SEARCH
        self.user_base, self.user_scope, self.user_filter = search.base_dn, search.scope, search.filterstr
        self.name_attribute = settings.LDAP_ATTR_USERNAME
        attr_map = settings.AUTH_LDAP_USER_ATTR_MAP
        self.full_name_attribute, self.email_attribute = attr_map["full_name"], attr_map["email"]

    def close(self):
        try:
            self.connection.unbind_s()
        except ldap.LDAPError:
            pass

    def search(self, base: str, scope: int, filterstr: str, attributes: list[str]) -> list[tuple[str, cidict]]:
        """Every entry, page by page (directories cap unpaged answers, AD at 1000)."""
        control = SimplePagedResultsControl(True, size=PAGE_SIZE, cookie="")
        found = []
        while True:
            message = self.connection.search_ext(base, scope, filterstr, attributes, serverctrls=[control])
            _, entries, _, controls = self.connection.result3(message)
            found += [(dn, cidict(attrs)) for dn, attrs in entries if dn]  # dn None: a referral
            cookie = next((c.cookie for c in controls if c.controlType == SimplePagedResultsControl.controlType),
                          b"")
            if not cookie:
                return found
            control.cookie = cookie

    def _person(self, dn: str, attrs: cidict) -> Person | None:
        def first(attribute):
            values = attrs.get(attribute) or [b""]
            return values[0].decode("utf-8", "replace")

        name = first(self.name_attribute).strip().lower()
        return Person(dn, name, first(self.full_name_attribute), first(self.email_attribute)) if name else None

    def people(self, filterstr: str) -> dict[str, Person]:
        attributes = [self.name_attribute, self.full_name_attribute, self.email_attribute]
        found = {}
        for dn, attrs in self.search(self.user_base, self.user_scope, filterstr, attributes):
            person = self._person(dn, attrs)
            if person is not None:
                found[person.name] = person
        return found

    def people_named(self, names: set[str]) -> dict[str, Person]:
        """The users the sign-in's user search finds under these names."""
        found, ordered = {}, sorted(names)
        for start in range(0, len(ordered), NAMES_PER_SEARCH):
            chunk = ordered[start:start + NAMES_PER_SEARCH]
            alternatives = "".join(self.user_filter % {"user": escape_filter_chars(n)} for n in chunk)
            found.update(self.people(f"(|{alternatives})"))
        return {name: person for name, person in found.items() if name in names}

    def group_members(self, group_dn: str) -> tuple[set[str], set[str]]:
        """(member DNs, member names) of a group: groupOfNames and AD's `member`,
        groupOfUniqueNames' `uniqueMember`, posixGroup's `memberUid`."""
        entries = self.search(group_dn, ldap.SCOPE_BASE, "(objectClass=*)", MEMBER_ATTRIBUTES)
        if not entries:
            raise ldap.NO_SUCH_OBJECT({"desc": "No such object"})
        attrs = entries[0][1]
        dns = {_normal_dn(v.decode()) for a in ("member", "uniqueMember") for v in self._all_values(group_dn, attrs, a)}
        names = {v.decode().strip().lower() for v in self._all_values(group_dn, attrs, "memberUid")}
        return dns - {""}, names

    def _all_values(self, dn: str, attrs: cidict, attribute: str) -> list[bytes]:
        """Every value of an attribute of an entry, asking for the rest range by range when
        the directory sent a ranged part (RANGED_ATTRIBUTE). A range that does not follow
        the one before is an error, not a silently shorter group."""
        values = list(attrs.get(attribute, []))
        expected = 0
        for _ in range(MAX_RANGES):
            ranged = [(match, key) for key in attrs.keys()
                      if (match := RANGED_ATTRIBUTE.match(key)) and match["attribute"].lower() == attribute.lower()]
            if not ranged:
                if expected:  # asked for the next range, answered without one
                    raise ldap.PROTOCOL_ERROR({"desc": f"{attribute} of {dn}: no range from {expected} on"})
                return values
            match, key = ranged[0]
            if int(match["low"]) != expected:
                raise ldap.PROTOCOL_ERROR({"desc": f"{attribute} of {dn}: range {match['low']}- where {expected}- was due"})
            values += attrs[key]
            if match["high"] == "*":
                return values
            expected = int(match["high"]) + 1
            entries = self.search(dn, ldap.SCOPE_BASE, "(objectClass=*)", [f"{attribute};range={expected}-*"])
            if not entries:
                raise ldap.NO_SUCH_OBJECT({"desc": f"{dn} went away while its members were read"})
            attrs = entries[0][1]
        raise ldap.SIZELIMIT_EXCEEDED({"desc": f"{attribute} of {dn}: more than {MAX_RANGES} ranges"})

    def members(self, group_dn: str) -> set[str]:
        """Names of the group's members that the user search finds."""
        dns, names = self.group_members(group_dn)
        by_rdn = {}
        for dn in dns:  # uid=dora,ou=people,… names dora without another round trip
            rdn = ldap.dn.str2dn(dn)[0][0] if dn else None
            if rdn and rdn[0].lower() == self.name_attribute.lower():
                by_rdn[dn] = str(rdn[1]).lower()
            else:
                for found_dn, attrs in self.search(dn, ldap.SCOPE_BASE, "(objectClass=*)", [self.name_attribute]):
                    person = self._person(found_dn, attrs)
                    if person is not None:
                        by_rdn[dn] = person.name
        wanted = names | set(by_rdn.values())
        found = self.people_named(wanted)
        # A member named by DN is that entry, not another user who happens to share the name.
        return {name for name, person in found.items()
                if name in names or _normal_dn(person.dn) in dns}


def _normal_dn(dn: str) -> str:
    try:
        return ldap.dn.dn2str(ldap.dn.str2dn(dn.strip())).lower()
    except ldap.DECODING_ERROR:
        return dn.strip().lower()


def valid_binding(kind: str, value: str) -> str | None:
    """Why an LDAP binding cannot work (a readable sentence), or None."""
    if kind == Team.LDAP_GROUP:
        if not value or not ldap.dn.is_dn(value) or not ldap.dn.str2dn(value):
            return f"{value!r} is not a distinguished name (for example cn=developers,ou=groups,dc=example,dc=org)"
    elif kind == Team.LDAP_FILTER:
        depth = 0
        for char in value:
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth < 0:
                break
        if not value.startswith("(") or not value.endswith(")") or depth != 0:
            return f"{value!r} is not an LDAP filter (for example (department=Platform))"
    return None


def read(run_log) -> Plan:
    """Everything the run needs from the directory. Raises Unreachable."""
    directory = _Directory()
    plan = Plan()
    try:
        for team in Team.objects.filter(sync_kind__in=(Team.LDAP_GROUP, Team.LDAP_FILTER)).order_by("pk"):
            plan.bindings[team.pk] = (team.sync_kind, team.sync_value)
            try:
                if team.sync_kind == Team.LDAP_GROUP:
                    names = directory.members(team.sync_value)
                else:
                    people = directory.people(f"(&{team.sync_value}({directory.name_attribute}=*))")
                    plan.people.update(people)
                    names = set(people)
                plan.teams[team.pk] = names
                run_log(f"team {team}: {len(names)} member(s) in the directory")
            except (ldap.NO_SUCH_OBJECT, ldap.FILTER_ERROR, ldap.INVALID_DN_SYNTAX) as e:
                reason = "the group is not in the directory" if isinstance(e, ldap.NO_SUCH_OBJECT) else describe(e)
                plan.team_errors[team.pk] = reason
                run_log(f"team {team}: not synced, {reason}; its members stay as they are")
        admin_group = settings.LDAP_ADMIN_GROUP
        if admin_group:
            plan.admins = directory.members(admin_group)
        known = set(User.objects.filter(source=User.DIRECTORY, is_active=True).values_list("username", flat=True))
        wanted = known | set().union(*plan.teams.values()) | (plan.admins or set())
        plan.people.update(directory.people_named(wanted - plan.people.keys()))
        if len(known) > 1 and not known & plan.people.keys():
            raise Unreachable(f"the user search finds none of MSR's {len(known)} directory users (check "
                              "MSR_LDAP_USER_SEARCH_BASE and MSR_LDAP_USER_FILTER); nobody is deactivated on that")
    except ldap.LDAPError as e:
        raise Unreachable(describe(e)) from None
    finally:
        directory.close()
    return plan


def _account(person: Person, run_log) -> User | None:
    """The directory user's account, created on first sight as a directory sign-in would."""
    user = User.objects.filter(username=person.name).first()
    if reason := why_no_account(person.name, user):
        run_log(f"{person.name}: {reason}; not added")
        return None
    if user is not None:
        changed = [f for f, v in (("full_name", person.full_name), ("email", person.email)) if getattr(user, f) != v]
        if changed:
            user.full_name, user.email = person.full_name, person.email
            user.save(update_fields=changed)
        return user
    user = User(username=person.name, source=User.DIRECTORY, full_name=person.full_name, email=person.email)
    user.set_unusable_password()
    user.save()
    Namespace.objects.create(name=user.username, user=user, full_name=user.full_name)
    run_log(f"{person.name}: account created")
    return user


@transaction.atomic
def apply(plan: Plan, run_log) -> dict:
    summary = {"teams": 0, "added": 0, "removed": 0, "created": 0, "deactivated": 0, "failedTeams": 0}
    now = timezone.now()
    accounts = {}
    for name in set().union(*plan.teams.values()):
        before = User.objects.filter(username=name).exists()
        user = _account(plan.people[name], run_log)
        if user is not None:
            accounts[name] = user
            summary["created"] += not before
    teams = Team.objects.select_for_update().filter(pk__in=plan.teams.keys() | plan.team_errors.keys())
    for team in teams.select_related("organization", "group"):
        if (team.sync_kind, team.sync_value) != plan.bindings[team.pk]:
            run_log(f"team {team}: its binding changed while the directory was read; the next sync does it")
            continue
        if team.pk in plan.team_errors:
            team.synced_at, team.sync_result = now, f"not synced: {plan.team_errors[team.pk]}"[:1000]
            summary["failedTeams"] += 1
        else:
            added, removed = teamsync.set_members(team, [accounts[n] for n in plan.teams[team.pk] if n in accounts])
            for name in added:
                run_log(f"team {team}: {name} added")
            for name in removed:
                run_log(f"team {team}: {name} removed")
            summary["teams"] += 1
            summary["added"] += len(added)
            summary["removed"] += len(removed)
            team.synced_at = now
            team.sync_result = f"{len(plan.teams[team.pk])} in the directory, {len(added)} added, {len(removed)} removed"
        team.save(update_fields=["synced_at", "sync_result"])
    for user in User.objects.filter(source=User.DIRECTORY, is_active=True).exclude(username__in=plan.people.keys()):
        services.set_active(user, False)
        run_log(f"{user.username}: no longer in the directory; deactivated (refresh tokens, sessions and "
                "personal access tokens stop working)")
        summary["deactivated"] += 1
    if plan.admins is not None:
        for user in User.objects.filter(source=User.DIRECTORY, username__in=plan.people.keys()):
            admin = user.username in plan.admins
            if user.is_superuser != admin:
                user.is_superuser = user.is_staff = admin
                user.save(update_fields=["is_superuser", "is_staff"])
                run_log(f"{user.username}: system admin {'granted' if admin else 'removed'} (MSR_LDAP_ADMIN_GROUP)")
    return summary


def queue(triggered_by: str = "") -> tuple[DirectorySync, bool]:
    """A waiting run, or the one already waiting or running; (run, created)."""
    with transaction.atomic():
        stale = timezone.now() - timedelta(seconds=STALE_AFTER_SECONDS)
        pending = (DirectorySync.objects.select_for_update()
                   .filter(status__in=(DirectorySync.WAITING, DirectorySync.RUNNING), created_at__gt=stale)
                   .order_by("-created_at").first())
        if pending is not None:
            return pending, False
        return DirectorySync.objects.create(triggered_by=triggered_by), True


def run(run_id: int) -> DirectorySync | None:
    """Claim a waiting run and do it; None when another worker has it."""
    claimed = DirectorySync.objects.filter(pk=run_id, status=DirectorySync.WAITING).update(
        status=DirectorySync.RUNNING, started_at=timezone.now())
    if not claimed:
        return None
    lines = []

    def run_log(message):
        log.info("directory sync %s: %s", run_id, message)
        lines.append(f"{timezone.now():%Y-%m-%d %H:%M:%S} {message}")

    status, error, summary = DirectorySync.DONE, "", {}
    try:
        plan = read(run_log)
        summary = apply(plan, run_log)
        run_log("done: " + DirectorySync(summary=summary).summary_text)
    except Unreachable as e:
        status, error = DirectorySync.FAILED, f"the directory could not be read, nothing changed: {e}"
        run_log(error)
    except Exception as e:  # recorded on the run, and raised for the worker's log
        status, error = DirectorySync.FAILED, f"{type(e).__name__}: {e}"
        run_log(f"failed, nothing changed: {error}")
        DirectorySync.objects.filter(pk=run_id).update(status=status, error=error[:1000], log="\n".join(lines) + "\n",
                                                       finished_at=timezone.now())
        raise
    DirectorySync.objects.filter(pk=run_id).update(status=status, error=error[:1000], summary=summary,
                                                   log="\n".join(lines) + "\n", finished_at=timezone.now())
    return DirectorySync.objects.get(pk=run_id)
