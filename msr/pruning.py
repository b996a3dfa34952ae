"""Tag pruning (issue 17): repository policies whose rules pick tags to delete.

A rule is `{"field": ..., "operator": ..., "values": [...]}` in MSR's rule-engine shape;
every rule of a policy must hold for a tag to be picked, and a tag goes when ANY enabled
policy of its repository picks it. Operators (MSR's names):

- field `tag`: eq, neq, sw (starts with), ew (ends with), c (contains; "contains" is
  accepted), oneof, noneof, matches (a regular expression searched in the tag: anchor
  with ^ and $ for the whole tag). With several values, eq/sw/ew/c/matches hold when one
  value does; neq holds when the tag equals none.
- fields `last_pushed` and `last_pulled`: gte / after (at or after) and lte / before
  (at or before), one value: an age (`30d`, `12h`, `45m`, `10s`, `2w`: that long before
  the run) or an ISO date/time (`2026-01-31`, `2026-01-31T12:00:00Z`). `last_pulled lte
  30d` picks tags not pulled for 30 days; a tag never pulled counts as pulled long ago
  (lte holds, gte does not).

Protected tags are never pruned: immutable tags (Repository rules), tags whose manifest
is a child of an index that a tag keeps, and whatever the apps protect through
`msr.extensions.tag_protectors` (mirroring: targets of enabled promotion policies).

A real run deletes each picked tag in its own short transaction under the lock every tag
write takes (services.write_tag), and only if the tag still points at the digest it had
when the run began and was last pushed before the run began: a tag pushed or moved during
the run stays. Each deletion is recorded as one (audit DELETE event with reason "pruning
policy", a TAG_PRUNED webhook delivery). Bytes are freed later by garbage collection.
"""

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone as dt_timezone

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from msr import extensions, readonly, services, signals
from msr.models import Manifest, PruningPolicy, PruningRun, Repository, Tag, Webhook
from msr.references import bad_pattern, tag_rule_holds

log = logging.getLogger(__name__)

TAG_OPERATORS = {
    "eq": "equals", "neq": "does not equal", "sw": "starts with", "ew": "ends with", "c": "contains",
    "oneof": "is one of", "noneof": "is none of", "matches": "matches (regular expression)",
}
TIME_OPERATORS = {"gte": "at or after", "after": "at or after", "lte": "at or before", "before": "at or before"}
FIELDS = {"tag": TAG_OPERATORS, "last_pushed": TIME_OPERATORS, "last_pulled": TIME_OPERATORS}
ALIASES = {"contains": "c"}
MAX_RULES, MAX_VALUES = 20, 100
_AGE = re.compile(r"\A(\d{1,6})([smhdw])\Z")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class InvalidRules(ValueError):
    """Rules a policy cannot hold; the message says which and why."""


def _parse_moment(value: str) -> timedelta | datetime | None:
    """An age (`30d`) as a timedelta, a date or date/time as an aware datetime, else None."""
    age = _AGE.match(value)
    if age:
        return timedelta(seconds=int(age.group(1)) * _UNIT_SECONDS[age.group(2)])
    try:
        moment = parse_datetime(value)
        if moment is None and parse_date(value) is not None:
            moment = datetime.combine(parse_date(value), datetime.min.time())
    except ValueError:
        return None
    if moment is not None and timezone.is_naive(moment):
        moment = moment.replace(tzinfo=dt_timezone.utc)
    return moment


def validate_rules(rules) -> list[dict]:
    """The rules, normalized; InvalidRules naming the rule and the reason otherwise."""
    if not isinstance(rules, list) or not rules:
        raise InvalidRules("rules must be a non-empty list (a policy without rules would prune every tag)")
    if len(rules) > MAX_RULES:
        raise InvalidRules(f"at most {MAX_RULES} rules")
    clean = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict) or set(rule) - {"field", "operator", "values"}:
            raise InvalidRules(f"rule {i}: an object with field, operator and values")
        name, operator, values = rule.get("field"), rule.get("operator"), rule.get("values")
        if name not in FIELDS:
            raise InvalidRules(f"rule {i}: unknown field {name!r} (one of {', '.join(FIELDS)})")
        operator = ALIASES.get(operator, operator) if isinstance(operator, str) else operator
        if operator not in FIELDS[name]:
            raise InvalidRules(f"rule {i}: operator {operator!r} does not apply to {name} "
                               f"(one of {', '.join(FIELDS[name])})")
        if (not isinstance(values, list) or not values or len(values) > MAX_VALUES
                or not all(isinstance(v, str) and v and len(v) <= 256 for v in values)):
            raise InvalidRules(f"rule {i}: values must be a list of 1 to {MAX_VALUES} non-empty strings")
        if name != "tag":
            if len(values) != 1 or _parse_moment(values[0]) is None:
                raise InvalidRules(f"rule {i}: {name} takes one value, an age like 30d, 12h, 2w "
                                   f"or a date like 2026-01-31")
        elif operator == "matches" and (problem := bad_pattern(values)):
            raise InvalidRules(f"rule {i}: {problem}")
        clean.append({"field": name, "operator": operator, "values": list(values)})
    return clean


def _time_holds(operator: str, value: str, moment: datetime | None, now: datetime) -> bool:
    bound = _parse_moment(value)
    if isinstance(bound, timedelta):
        bound = now - bound
    if moment is None:  # never pulled: as if long ago
        return operator in ("lte", "before")
    return moment >= bound if operator in ("gte", "after") else moment <= bound


def holds(rules: list[dict], tag: str, pushed_at: datetime | None, pulled_at: datetime | None,
          now: datetime) -> bool:
    """True when every rule holds for a tag with these times (`now`: the run's start)."""
    for rule in rules:
        operator, values = rule["operator"], rule["values"]
        if rule["field"] == "tag":
            ok = tag_rule_holds(operator, values, tag)
        else:
            ok = _time_holds(operator, values[0], pushed_at if rule["field"] == "last_pushed" else pulled_at, now)
        if not ok:
            return False
    return True


# -- what a run picks ------------------------------------------------------------------


@dataclass
class Selection:
    candidates: list[dict] = field(default_factory=list)  # {"tag", "digest"}: to prune
    protected: list[dict] = field(default_factory=list)  # {"tag", "digest", "reason"}: picked but kept
    # What each candidate looked like when selected: (manifest pk, pushed at).
    seen: dict[str, tuple[int, datetime]] = field(default_factory=dict)


def select(repository: Repository, policies_rules: list[list[dict]], now: datetime) -> Selection:
    """The tags some rule set picks, split into candidates and protected tags (with why)."""
    tags = list(Tag.objects.filter(repository=repository).order_by("name")
                .values_list("name", "manifest_id", "manifest__digest", "updated_at", "last_pulled_at"))
    picked = {name for name, _, _, pushed, pulled in tags
              if any(holds(rules, name, pushed, pulled, now) for rules in policies_rules)}
    reasons = _protections(repository, tags, picked)
    selection = Selection()
    for name, manifest_id, digest, pushed, _ in tags:
        if name not in picked:
            continue
        if name in reasons:
            selection.protected.append({"tag": name, "digest": digest, "reason": reasons[name]})
        else:
            selection.candidates.append({"tag": name, "digest": digest})
            selection.seen[name] = (manifest_id, pushed)
    return selection


def _protections(repository: Repository, tags: list[tuple], picked: set[str]) -> dict[str, str]:
    """Why each picked tag must stay (tag -> reason)."""
    reasons: dict[str, str] = {}
    for name in picked:
        rule = repository.immutability_rule(name)
        if rule is not None:
            reasons[name] = "immutable" if rule == "repository" else f"immutable (pattern {rule})"
    for protector in extensions.tag_protectors:
        for name, reason in protector(repository).items():
            if name in picked:
                reasons.setdefault(name, reason)
    # A child of an index that a tag keeps: the tags that stay are those not picked, or
    # picked but protected; an index kept only by a pruned tag protects nothing.
    kept_manifests = {manifest_id for name, manifest_id, *_ in tags if name not in picked or name in reasons}
    kept_children = dict(
        Manifest.children.through.objects.filter(from_manifest_id__in=kept_manifests)
        .values_list("to_manifest_id", "from_manifest__digest"))
    for name, manifest_id, *_ in tags:
        if name in picked and name not in reasons and manifest_id in kept_children:
            reasons[name] = f"referenced by the index {kept_children[manifest_id]}, which stays"
    return reasons


# -- runs ------------------------------------------------------------------------------


def start(policy: PruningPolicy, dry_run: bool, trigger: str, triggered_by: str = "") -> PruningRun:
    """Write a waiting run and queue it once the caller's transaction commits."""
    from msr import outbox
    from msr.tasks import run_pruning

    run = PruningRun.objects.create(policy=policy, repository=policy.repository, rules=policy.rules,
                                    dry_run=dry_run, trigger=trigger, triggered_by=triggered_by)
    outbox.send(run_pruning, run.pk)
    return run


def _claim(run_id: int) -> PruningRun | None:
    now = timezone.now()
    if not PruningRun.objects.filter(pk=run_id, status=PruningRun.WAITING).update(
            status=PruningRun.RUNNING, started_at=now, error=""):
        return None
    return PruningRun.objects.select_related("repository__namespace", "policy").get(pk=run_id)


def execute(run_id: int) -> str:
    """Run a waiting pruning run (idempotent: a run not waiting is left alone).

    1. Real runs wait while the registry is read-only (the caller queues a later look).
    2. Claim the run (compare-and-set waiting → running); its start time is "now" for
       the age rules and the bound for the concurrency check.
    3. Select candidates and protected tags; a dry run stops here, recorded.
    4. Delete each candidate in its own transaction, re-checked under the tag lock.
    """
    waiting = PruningRun.objects.filter(pk=run_id, status=PruningRun.WAITING).values_list("dry_run", flat=True).first()
    if waiting is None:
        return "skipped"
    if not waiting and readonly.is_read_only():
        return "read-only"
    run = _claim(run_id)
    if run is None:
        return "skipped"
    try:
        _perform(run)
    except _Paused:
        return "read-only"
    except Exception as e:  # the run records its failure; the worker goes on
        log.exception("pruning run %s failed", run.pk)
        run.append_log(f"failed: {e}")
        PruningRun.objects.filter(pk=run.pk).update(status=PruningRun.FAILED, error=str(e)[:1000],
                                                    finished_at=timezone.now())
        _audit(run, PruningRun.FAILED)
        return PruningRun.FAILED
    _audit(PruningRun.objects.get(pk=run.pk), PruningRun.DONE)
    return PruningRun.DONE


class _Paused(Exception):
    """Read-only mode began during a real run: it goes back to waiting."""


def _perform(run: PruningRun) -> None:
    repository, began = run.repository, run.started_at
    run.append_log(f"{'dry run' if run.dry_run else 'run'} of {run.policy or 'a deleted policy'} "
                   f"(rules {run.rules}), trigger {run.trigger}")
    selection = select(repository, [run.rules], began)
    for item in selection.protected:
        run.append_log(f"keeps {item['tag']}: {item['reason']}")
    PruningRun.objects.filter(pk=run.pk).update(candidates=selection.candidates, protected=selection.protected)
    pruned = list(run.pruned or [])  # a run paused by read-only mode goes on where it stopped
    if run.dry_run:
        run.append_log(f"would prune {len(selection.candidates)} tag(s): "
                       + ", ".join(c["tag"] for c in selection.candidates))
    else:
        for item in selection.candidates:
            if readonly.is_read_only():
                # Back to waiting, like a mirroring job: selected again (with a new start
                # time) when read-only mode ends; what it pruned so far stays counted.
                run.append_log(f"{readonly.MESSAGE}: paused before {item['tag']}; the run waits")
                PruningRun.objects.filter(pk=run.pk).update(status=PruningRun.WAITING, started_at=None,
                                                            pruned=pruned)
                raise _Paused()
            manifest_id, pushed = selection.seen[item["tag"]]
            if prune_tag(repository, item["tag"], manifest_id, pushed, began, run):
                pruned.append(item)
                run.append_log(f"pruned {item['tag']} ({item['digest']})")
            else:
                run.append_log(f"kept {item['tag']}: pushed, moved or deleted since the run began")
        run.append_log(f"pruned {len(pruned)} tag(s) in all; {len(selection.candidates)} candidate(s) this time")
    PruningRun.objects.filter(pk=run.pk).update(status=PruningRun.DONE, pruned=pruned, finished_at=timezone.now())


def prune_tag(repository: Repository, name: str, manifest_id: int, pushed_at: datetime, began: datetime,
              run: PruningRun) -> bool:
    """Delete the tag if it still is what the run selected, recorded; True if deleted."""
    with transaction.atomic():
        if not services.remove_tag_if_unchanged(repository, name, manifest_id, pushed_at, began):
            return False
        digest = Manifest.objects.filter(pk=manifest_id).values_list("digest", flat=True).first()
        signals.manifest_deleted.send(
            sender=Manifest, repository=repository, digest=digest, tag=name, user=None,
            reason={"reason": "pruning policy", "policy": run.policy_id, "run": run.pk},
            also_notify=(Webhook.TAG_PRUNED,), actor=run.triggered_by)
    return True


def _audit(run: PruningRun, status: str) -> None:
    from msr.events import record
    from msr.models import Event

    record(Event.REPOSITORY, run.triggered_by, run.repository.full_name, detail={
        "action": "pruning dry run" if run.dry_run else "pruning run", "policy": run.policy_id, "run": run.pk,
        "status": status, "trigger": run.trigger, "candidates": len(run.candidates), "pruned": len(run.pruned),
        **({"error": run.error} if run.error else {})})


def due_runs() -> list[int]:
    """Scheduled: one real run per enabled policy of every repository, unless one is
    already waiting or running for it."""
    # A run still waiting or running after a whole interval was abandoned (its worker
    # died mid-run, or read-only mode lasted that long): it gives way to a new one.
    now = timezone.now()
    PruningRun.objects.filter(
        status__in=(PruningRun.WAITING, PruningRun.RUNNING),
        created_at__lt=now - timedelta(seconds=max(settings.PRUNING_INTERVAL_SECONDS, 600)),
    ).update(status=PruningRun.FAILED, error="abandoned: not finished within an interval", finished_at=now)
    busy = set(PruningRun.objects.filter(status__in=(PruningRun.WAITING, PruningRun.RUNNING), dry_run=False)
               .values_list("policy_id", flat=True))
    ids = []
    for policy in PruningPolicy.objects.filter(enabled=True).select_related("repository").order_by("pk"):
        if policy.pk not in busy:
            with transaction.atomic():
                ids.append(start(policy, dry_run=False, trigger=PruningRun.SCHEDULE).pk)
    return ids
