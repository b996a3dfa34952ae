"""The web UI: server-rendered pages that work without JavaScript; htmx only makes the
repository search answer as you type. Every decision goes through the same permission
function as the registry and the API (via msr.access)."""

from datetime import timedelta

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import LoginView, LogoutView, PasswordChangeView
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Count, Q, Sum
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse_lazy
from django.utils import timezone
from django.views.decorators.http import require_POST
from rest_framework.exceptions import ValidationError as APIValidationError

from accounts import services as account_services
from accounts.models import AccessToken, DirectorySync, Namespace, Team, User
from accounts.teamsync import BoundTeam
from accounts.permissions import ADMIN, DELETE, readable_repositories, repository_actions
from accounts.services import set_team_access
from msr import readonly, services
from msr.access import (
    is_org_member, is_org_owner, may_create_in, organization_or_404, repository_for, team_access_levels,
    team_or_404,
)
from msr.api.accounts import TeamSyncSerializer, bind_team, queue_directory_sync, usable_binding_kinds
from msr.api.repositories import create_repository, describe_tag, record_tag_rules
from msr.events import record
from msr.signin import note_session
from msr.exceptions import DomainError, NotFound
from msr.models import Blob, Event, Repository
from msr.ui import forms
from msr.ui import pruning as pruning_section


def public_host(request) -> str:
    url = settings.PUBLIC_URL or f"{request.scheme}://{request.get_host()}"
    return url.split("://", 1)[1]


def readable(error: DomainError) -> str:
    """An error of the registry core as a sentence for a page ("Invalid digest.")."""
    return error.message[:1].upper() + error.message[1:].rstrip(".") + "."


def home(request):
    return redirect("ui:repositories")


def repositories(request):
    query = request.GET.get("q", "").strip()
    visibility = request.GET.get("visibility", "")
    found = readable_repositories(request.user, Repository.objects.select_related("namespace"))
    if query:
        found = found.filter(name__icontains=query) | found.filter(namespace__name__icontains=query)
    if visibility in ("public", "private"):
        found = found.filter(visibility=visibility)
    found = found.annotate(tag_count=Count("tags")).order_by("namespace__name", "name")[:500]
    template = "ui/_repository_list.html" if request.headers.get("HX-Request") else "ui/repositories.html"
    return render(request, template, {"repositories": found, "q": query, "visibility": visibility})


def _repository_page(request, found, status=200, **extra):
    """The repository page; `extra` replaces a form with the one that was just sent."""
    actions = repository_actions(request.user, found.namespace, found)
    tags = [describe_tag(t) for t in found.tags.select_related("manifest", "pushed_by").order_by("-updated_at")[:200]]
    context = {
        "repository": found, "tags": tags, "host": public_host(request),
        "can_admin": ADMIN in actions, "can_delete": DELETE in actions,
        "can_push": "push" in actions, "is_system_admin": request.user.is_superuser,
    }
    if ADMIN in actions:
        context["rules_form"] = forms.TagRulesForm(initial={
            "immutable_tags": found.immutable_tags, "tag_limit": found.tag_limit,
            "immutable_tag_patterns": "\n".join(found.immutable_tag_patterns)})
        context.update(pruning_section.context(found))
    if found.namespace.is_org:
        context["team_access"] = team_access_levels(found.namespace, found)
        if ADMIN in actions:
            context["access_form"] = forms.TeamAccessForm(teams=found.namespace.teams.order_by("name"))
    context.update(extra)
    return render(request, "ui/repository.html", context, status=status)


def repository(request, namespace, repository):
    return _repository_page(request, repository_for(request.user, namespace, repository))


@login_required
def new_repository(request):
    candidates = Namespace.objects.order_by("is_org", "name")  # their own first
    if not request.user.is_superuser:
        candidates = candidates.filter(Q(user=request.user) | Q(is_org=True, memberships__user=request.user))
    namespaces = {n.name: n for n in candidates.distinct() if may_create_in(request.user, n)}
    form = forms.NewRepositoryForm(request.POST or None, namespaces=namespaces, initial={"tag_limit": 0})
    if request.method == "POST" and form.is_valid():
        namespace = namespaces[form.cleaned_data["namespace"]]
        try:
            created = create_repository(request, namespace, form.api_data())
        except APIValidationError as e:
            form.add_api_errors(e.detail)
        else:
            messages.success(request, f"Created {created.full_name}.")
            return redirect("ui:repository", namespace=namespace.name, repository=created.name)
    return render(request, "ui/new_repository.html", {"form": form},
                  status=400 if request.method == "POST" else 200)


@login_required
@require_POST
def repository_tag_rules(request, namespace, repository):
    found = repository_for(request.user, namespace, repository, ADMIN)
    form = forms.TagRulesForm(request.POST)
    if not form.is_valid():
        return _repository_page(request, found, status=400, rules_form=form)
    with transaction.atomic():
        for field, value in form.cleaned_data.items():
            setattr(found, field, value)
        found.save(update_fields=list(form.cleaned_data))
        record_tag_rules(request, found, form.cleaned_data)
    messages.success(request, "Saved the tag rules.")
    return redirect("ui:repository", namespace=namespace, repository=repository)


@login_required
@require_POST
def repository_access(request, namespace, repository):
    found = repository_for(request.user, namespace, repository, ADMIN)
    if not found.namespace.is_org:
        raise Http404("only an organization's repositories have team access")
    teams = found.namespace.teams.order_by("name")
    if request.POST.get("remove"):
        team = team_or_404(found.namespace, request.POST["remove"])
        set_team_access(team, found, None)
        messages.success(request, f"Removed the access of team {team.name}.")
    else:
        form = forms.TeamAccessForm(request.POST, teams=teams)
        if not form.is_valid():
            return _repository_page(request, found, status=400, access_form=form)
        team = team_or_404(found.namespace, form.cleaned_data["team"])
        with transaction.atomic():
            set_team_access(team, found, form.cleaned_data["access_level"])
            record(Event.PERMISSION, request.user.username, found.full_name,
                   detail={"action": "team access", "team": team.name,
                           "accessLevel": form.cleaned_data["access_level"]}, request=request)
        messages.success(request, f"Team {team.name} now has {form.cleaned_data['access_level']} access.")
    return redirect("ui:repository", namespace=namespace, repository=repository)


def delete_tag(request, namespace, repository, tag):
    found = repository_for(request.user, namespace, repository, DELETE)
    if not found.tags.filter(name=tag).exists():
        raise Http404("no such tag")
    if request.method == "POST":
        try:
            services.delete_manifest(found.full_name, tag, request.user)
        except NotFound:  # deleted by another request since the page was shown
            messages.info(request, f"Tag {tag} was already deleted.")
        except DomainError as e:
            messages.error(request, readable(e))
        else:
            messages.success(request, f"Deleted tag {tag}.")
        return redirect("ui:repository", namespace=namespace, repository=repository)
    return render(request, "ui/confirm_delete_tag.html", {"repository": found, "tag": tag})


@login_required
def organizations(request):
    orgs = Namespace.objects.filter(is_org=True).order_by("name")
    if not request.user.is_superuser:
        orgs = orgs.filter(memberships__user=request.user)
    return render(request, "ui/organizations.html", {"organizations": orgs})


@login_required
def organization(request, org):
    found = organization_or_404(org)
    if not is_org_member(request.user, found):
        raise Http404("no such organization")
    owner = is_org_owner(request.user, found)
    # Members see the repositories they may read, and only those repositories' grants
    # (the API answers 404 for the others; so does this page, by leaving them out).
    repositories_ = list(readable_repositories(request.user, found.repositories.all()).order_by("name"))
    # Each object's grants are read once, then grouped by team.
    access_by_team: dict[int, list] = {}
    for repository in repositories_:
        for team, level in team_access_levels(found, repository):
            access_by_team.setdefault(team.pk, []).append((repository, level))
    org_wide = {team.pk: level for team, level in team_access_levels(found, found)}
    teams = [
        {"team": team, "members": team.group.user_set.order_by("username"),
         "access": access_by_team.get(team.pk, []), "org_wide": org_wide.get(team.pk)}
        for team in found.teams.select_related("group").order_by("name")
    ]
    context = {
        "org": found, "is_owner": owner, "teams": teams,
        "members": found.memberships.select_related("user").order_by("user__username"),
    }
    if owner:
        context.update(
            binding_kinds=usable_binding_kinds(),
            member_form=forms.MemberForm(prefix="member"), team_form=forms.TeamForm(prefix="team"),
            access_form=forms.RepositoryTeamAccessForm(prefix="access", teams=found.teams.order_by("name"),
                                                       repositories=repositories_),
        )
    return render(request, "ui/organization.html", context)


@login_required
@require_POST
def organization_action(request, org, action):
    """The forms of the organization page, each a plain POST for owners."""
    found = organization_or_404(org)
    if not is_org_owner(request.user, found):
        raise PermissionDenied("Only organization owners change an organization.")
    post = request.POST
    error = None
    if action == "add-member":
        form = forms.MemberForm(post, prefix="member")
        user = User.objects.filter(username=post.get("member-username", "")).first() if form.is_valid() else None
        if user is None:
            error = "No user with that username."
        else:
            account_services.add_member(found, user, is_owner=form.cleaned_data["is_owner"])
    elif action == "remove-member":
        user = User.objects.filter(username=post.get("username", "")).first()
        if user is not None:
            account_services.remove_member(found, user)
    elif action == "create-team":
        form = forms.TeamForm(post, prefix="team")
        if not form.is_valid():
            error = "; ".join(e for errs in form.errors.values() for e in errs)
        elif found.teams.filter(name=form.cleaned_data["name"]).exists():
            error = "A team with that name exists."
        else:
            account_services.create_team(found, form.cleaned_data["name"], form.cleaned_data["description"])
    elif action in ("add-team-member", "remove-team-member"):
        team = team_or_404(found, post.get("team", ""))
        user = User.objects.filter(username=post.get("username", "")).first()
        if team.is_bound:
            error = str(BoundTeam(team))
        elif user is None:
            error = "No user with that username."
        elif action == "add-team-member":
            account_services.add_team_member(team, user)
        else:
            account_services.remove_team_member(team, user)
    elif action == "bind-team":
        team = team_or_404(found, post.get("team", ""))
        form = TeamSyncSerializer(data={"kind": post.get("kind", ""), "value": post.get("value", "")})
        if not form.is_valid():
            error = " ".join(str(e) for errs in form.errors.values() for e in errs)
        else:
            bind_team(request, team, form.validated_data["sync_kind"], form.validated_data["sync_value"])
            messages.success(request, f"Team {team.name}: members come from {team.binding}.")
    elif action == "team-access":
        form = forms.RepositoryTeamAccessForm(post, prefix="access", teams=found.teams.all(),
                                              repositories=found.repositories.all())
        if not form.is_valid():
            error = "Choose a team, a repository and an access level."
        else:
            team = team_or_404(found, form.cleaned_data["team"])
            target = found.repositories.get(name=form.cleaned_data["repository"])
            with transaction.atomic():
                set_team_access(team, target, form.cleaned_data["access_level"])
                record(Event.PERMISSION, request.user.username, target.full_name,
                       detail={"action": "team access", "team": team.name,
                               "accessLevel": form.cleaned_data["access_level"]}, request=request)
            messages.success(request, f"Team {team.name} now has {form.cleaned_data['access_level']} "
                                      f"access to {target.full_name}.")
    else:
        raise Http404("no such action")
    if error:
        messages.error(request, error)
    return redirect("ui:organization", org=org)


@login_required
def tokens(request):
    # Post/redirect/get: the new secret rides in the session to the next page view only,
    # so a reload neither shows it again nor creates another token.
    new_secret = request.session.pop("new_token_secret", None)
    form = forms.TokenForm()
    if request.method == "POST":
        form = forms.TokenForm(request.POST)
        if form.is_valid():
            days = form.cleaned_data["expires_in_days"]
            expires = timezone.now() + timedelta(days=days) if days else None
            token, secret = AccessToken.issue(request.user, AccessToken.PERSONAL, form.cleaned_data["name"], expires,
                                              scopes=form.cleaned_data["scopes"])
            record(Event.ACCOUNT, request.user.username, detail={
                "action": "create token", "account": request.user.username, "token": token.hint,
                "scopes": sorted(token.scope_set)}, request=request)
            request.session["new_token_secret"] = secret
            return redirect("ui:tokens")
    listing = AccessToken.objects.filter(user=request.user, kind=AccessToken.PERSONAL).order_by("-created_at")
    return render(request, "ui/tokens.html", {"form": form, "tokens": listing, "new_secret": new_secret,
                                              "now": timezone.now()},
                  status=400 if form.errors else 200)


@login_required
@require_POST
def revoke_token(request, token_id):
    from msr.api.tokens import revoke

    token = AccessToken.objects.filter(pk=token_id, user=request.user, kind=AccessToken.PERSONAL).first()
    if token is None:
        raise Http404("no such token")
    revoke(request, token)
    messages.success(request, f"Revoked the token “{token.name}”. It no longer works anywhere, and neither do "
                              "the docker logins made with it.")
    return redirect("ui:tokens")


class SignInView(LoginView):
    """The sign-in page: msr.signin checks the password (throttled: 429 with Retry-After
    beyond the limit; audited); the session remembers where and how it was opened, for the
    user's list of sessions."""

    form_class = forms.SignInForm
    redirect_authenticated_user = True

    def form_valid(self, form):
        response = super().form_valid(form)
        note_session(self.request)
        return response

    def get_context_data(self, **kwargs):
        return {**super().get_context_data(**kwargs), "single_sign_on": settings.OIDC_ISSUER and
                settings.OIDC_PROVIDER_NAME}

    def form_invalid(self, form):
        response = super().form_invalid(form)
        if form.throttled is not None:
            response.status_code = 429
            response["Retry-After"] = str(form.throttled.retry_after)
        return response


class SignOutView(LogoutView):
    """Sign out of MSR; a session opened by single sign-on then goes on to the provider's
    logout, when it has one (msr/sso.py). Through a page, not a redirect: the
    Content-Security-Policy's form-action 'self' stops a form's redirect to another site."""

    def post(self, request, *args, **kwargs):
        from msr import sso

        id_token = request.session.get(sso.ID_TOKEN)
        response = super().post(request, *args, **kwargs)
        provider_logout = sso.end_session_url(request, id_token)
        if provider_logout is None:
            return response
        return render(request, "registration/sso_signed_out.html", {
            "provider_logout": provider_logout, "provider": settings.OIDC_PROVIDER_NAME})


@login_required
def sign_ins(request):
    """Where the user is signed in: web sessions and the refresh tokens of docker logins,
    each with a button that ends it, and one that ends every other."""
    from accounts.models import UserSession

    now = timezone.now()
    sessions = list(UserSession.objects.filter(user=request.user, expire_date__gt=now).order_by("-created_at"))
    refresh = [t for t in AccessToken.objects.filter(user=request.user, kind=AccessToken.REFRESH, revoked_at__isnull=True)
               .select_related("parent", "user").order_by("-created_at")
               if (t.expires_at is None or t.expires_at > now) and t.binding_holds()]
    return render(request, "ui/sign_ins.html", {
        "sessions": sessions, "refresh_tokens": refresh, "current": request.session.session_key})


@login_required
@require_POST
def end_sign_in(request, kind, item):
    from accounts.models import UserSession
    from msr.api.tokens import revoke

    if kind == "session":
        found = next((s for s in UserSession.objects.filter(user=request.user) if s.public_id == item), None)
        if found is None:
            raise Http404("no such session")
        found.delete()
        record(Event.ACCOUNT, request.user.username, detail={"action": "end session",
                                                             "account": request.user.username}, request=request)
        messages.success(request, "Ended that session: the browser is signed out.")
    elif kind == "refresh":
        token = AccessToken.objects.filter(pk=int(item) if item.isdigit() else 0, user=request.user,
                                           kind=AccessToken.REFRESH).first()
        if token is None:
            raise Http404("no such sign-in")
        revoke(request, token)
        messages.success(request, "Revoked that docker login: the client must sign in again.")
    elif kind == "others" and item == "all":
        ended = account_services.end_sign_ins(request.user, keep_session=request.session.session_key)
        record(Event.ACCOUNT, request.user.username, detail={"action": "end other sign-ins",
                                                             "account": request.user.username, "ended": ended},
               request=request)
        messages.success(request, f"Signed out everywhere else ({ended} ended).")
    else:
        raise Http404("no such sign-in")
    return redirect("ui:sign-ins")


class ChangePasswordView(PasswordChangeView):
    """Change the password (the current one is asked for). Every other session and every
    docker login made with the old password ends; personal access tokens stay."""

    template_name = "ui/password.html"
    success_url = reverse_lazy("ui:sign-ins")

    def post(self, request, *args, **kwargs):
        if request.user.source != request.user.LOCAL:  # the page says to use the directory, or a token
            return self.get(request, *args, **kwargs)
        return super().post(request, *args, **kwargs)

    def form_valid(self, form):
        response = super().form_valid(form)  # saves, keeps this session signed in
        ended = account_services.end_sign_ins(self.request.user, keep_session=self.request.session.session_key)
        record(Event.ACCOUNT, self.request.user.username, detail={
            "action": "change password", "account": self.request.user.username, "ended": ended},
            request=self.request)
        messages.success(self.request, "Password changed. Every other session and docker login has ended.")
        return response


@login_required
def profile(request):
    from msr import extensions

    namespace = request.user.namespace
    initial = {"full_name": request.user.full_name, "default_visibility": namespace.default_visibility}
    for setting in extensions.account_settings:
        initial.update(setting.initial(request.user))
    form = forms.SettingsForm(request.POST or None, initial=initial, user=request.user)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            for setting in extensions.account_settings:
                setting.save(request.user, form.cleaned_data)
            request.user.full_name = form.cleaned_data["full_name"]
            request.user.save(update_fields=["full_name"])
            namespace.full_name = form.cleaned_data["full_name"]
            namespace.default_visibility = form.cleaned_data["default_visibility"]
            namespace.save(update_fields=["full_name", "default_visibility"])
        messages.success(request, "Settings saved.")
        return redirect("ui:profile")
    return render(request, "ui/profile.html", {"form": form}, status=400 if form.errors else 200)


@login_required
def console(request):
    if not request.user.is_superuser:
        raise PermissionDenied("The console is for system admins.")
    stats = {
        "users": User.objects.count(),
        "organizations": Namespace.objects.filter(is_org=True).count(),
        "repositories": Repository.objects.count(),
        "blobs": Blob.objects.count(),
        "stored_bytes": Blob.objects.aggregate(total=Sum("size"))["total"] or 0,
    }
    recent = Event.objects.exclude(type=Event.PULL).order_by("-created_at")[:15]
    syncs = DirectorySync.objects.order_by("-created_at")[:10] if settings.LDAP_URL else None
    bound = Team.objects.exclude(sync_kind=Team.MANUAL).select_related("organization").order_by(
        "organization__name", "name")
    return render(request, "ui/console.html", {"stats": stats, "events": recent, "directory_syncs": syncs, "bound_teams": bound,
                                               "sync_interval": getattr(settings, "LDAP_SYNC_INTERVAL", 0),
                                               "read_only_state": readonly.state()})


@login_required
@require_POST
def read_only(request):
    """The console's read-only switch (the same as PATCH /api/v0/meta/settings)."""
    if not request.user.is_superuser:
        raise PermissionDenied("The console is for system admins.")
    value = request.POST.get("read_only") == "on"
    try:
        readonly.set_read_only(value, request.user, request)
    except readonly.ReadOnlyLocked as e:
        messages.error(request, str(e))
    else:
        messages.success(request, "Read-only mode is on." if value else "Read-only mode is off: writes are accepted.")
    return redirect("ui:console")


@login_required
@require_POST
def directory_sync_now(request):
    if not request.user.is_superuser:
        raise PermissionDenied("The console is for system admins.")
    if not settings.LDAP_URL:
        messages.error(request, "No company directory is configured (MSR_LDAP_URL).")
    else:
        run, created = queue_directory_sync(request.user.username)
        messages.success(request, f"Directory sync {run.pk} {'queued' if created else 'is already ' + run.status}.")
    return redirect("ui:console")


@login_required
def directory_sync(request, sync_id):
    if not request.user.is_superuser:
        raise PermissionDenied("The console is for system admins.")
    found = DirectorySync.objects.filter(pk=sync_id).first()
    if found is None:
        raise Http404("no such directory sync")
    return render(request, "ui/directory_sync.html", {"sync": found})


def error_404(request, exception=None):
    return render(request, "404.html", status=404)


def error_403(request, exception=None):
    return render(request, "403.html", {"reason": str(exception or "")}, status=403)
