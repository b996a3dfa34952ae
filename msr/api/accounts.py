"""/api/v0/accounts: users, organizations, members, teams and settings (MSR's names)."""

import functools

from django.conf import settings
from django.contrib.auth import update_session_auth_hash
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import services, teamsync
from accounts.models import NAMESPACE_PATTERN, DirectorySync, Namespace, OrganizationMembership, Team, User
from msr.access import (
    is_org_member, is_org_owner, namespace_or_404, organization_or_404, require_namespace_admin,
    team_or_404, user_or_404,
)
from msr.api.auth import require_password_or_session
from msr.events import record
from msr.models import Event


class AccountSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    name = serializers.RegexField(NAMESPACE_PATTERN, max_length=100)
    fullName = serializers.CharField(source="full_name", max_length=200, required=False, allow_blank=True)
    isOrg = serializers.BooleanField(source="is_org", default=False)
    isAdmin = serializers.SerializerMethodField()
    isActive = serializers.SerializerMethodField()
    source = serializers.SerializerMethodField(help_text="where a user signs in: local, ldap or oidc")
    createdAt = serializers.DateTimeField(source="created_at", read_only=True)

    def get_source(self, namespace) -> str | None:
        return namespace.user.source if namespace.user else None

    def get_isAdmin(self, namespace) -> bool:
        return bool(namespace.user and namespace.user.is_superuser)

    def get_isActive(self, namespace) -> bool:
        return namespace.user.is_active if namespace.user else True


class AccountCreateSerializer(serializers.Serializer):
    name = serializers.RegexField(NAMESPACE_PATTERN, max_length=100)
    password = serializers.CharField(write_only=True, required=False, style={"input_type": "password"})
    isOrg = serializers.BooleanField(default=False)
    isAdmin = serializers.BooleanField(default=False)
    fullName = serializers.CharField(max_length=200, required=False, default="", allow_blank=True)

    def validate_name(self, value):
        if Namespace.objects.filter(name=value).exists():
            raise serializers.ValidationError("This name is taken.")
        return value

    def validate(self, data):
        if data["isOrg"]:
            if data.get("password") or data["isAdmin"]:
                raise serializers.ValidationError({"isOrg": "An organization has no password and is not an admin."})
        else:
            if not data.get("password"):
                raise serializers.ValidationError({"password": "A user needs a password."})
            try:
                validate_password(data["password"], User(username=data["name"], full_name=data["fullName"]))
            except DjangoValidationError as e:
                raise serializers.ValidationError({"password": list(e.messages)}) from None
        return data


class AccountUpdateSerializer(serializers.Serializer):
    fullName = serializers.CharField(max_length=200, required=False, allow_blank=True)
    password = serializers.CharField(write_only=True, required=False, style={"input_type": "password"})
    isAdmin = serializers.BooleanField(required=False)
    isActive = serializers.BooleanField(required=False)

    def validate_password(self, value):
        try:
            validate_password(value, self.context.get("user"))
        except DjangoValidationError as e:
            raise serializers.ValidationError(list(e.messages)) from None
        return value


def _accounts():
    return Namespace.objects.select_related("user").order_by("name")


class AccountList(generics.ListCreateAPIView):
    """List accounts (any signed-in user); create users and organizations (system admins)."""

    serializer_class = AccountSerializer
    filterset_fields = {"name": ["exact", "startswith"], "is_org": ["exact"]}

    def get_queryset(self):
        return _accounts()

    @extend_schema(request=AccountCreateSerializer, responses={201: AccountSerializer})
    def post(self, request):
        if not request.user.is_superuser:
            raise PermissionDenied("Only system admins create accounts.")
        form = AccountCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        with transaction.atomic():
            if data["isOrg"]:
                namespace = services.create_organization(data["name"], full_name=data["fullName"])
            else:
                user = services.create_user(data["name"], data["password"], is_admin=data["isAdmin"],
                                            full_name=data["fullName"])
                namespace = user.namespace
            record(Event.ACCOUNT, request.user.username, detail={"action": "create", "account": data["name"]},
                   request=request)
        return Response(AccountSerializer(namespace).data, status=status.HTTP_201_CREATED)


class AccountDetail(APIView):
    serializer_class = AccountSerializer

    @extend_schema(responses=AccountSerializer)
    def get(self, request, name):
        return Response(AccountSerializer(namespace_or_404(name)).data)

    @extend_schema(request=AccountUpdateSerializer, responses=AccountSerializer)
    def patch(self, request, name):
        namespace = namespace_or_404(name)
        require_namespace_admin(request.user, namespace)
        form = AccountUpdateSerializer(data=request.data, context={"user": namespace.user})
        form.is_valid(raise_exception=True)
        data = form.validated_data
        if ("isAdmin" in data or "isActive" in data) and not request.user.is_superuser:
            raise PermissionDenied("Only system admins change isAdmin and isActive.")
        if namespace.is_org and ({"password", "isAdmin", "isActive"} & data.keys()):
            raise serializers.ValidationError({"isOrg": "These fields do not apply to an organization."})
        if "password" in data:
            require_password_or_session(request, "Changing a password")
            if namespace.user is not None and namespace.user.source == User.DIRECTORY:
                raise serializers.ValidationError({"password": ["The company directory holds this user's password; "
                                                                "change it there."]})
        with transaction.atomic():
            if "fullName" in data:
                namespace.full_name = data["fullName"]
                namespace.save(update_fields=["full_name"])
            user = namespace.user
            if user is not None:
                if "fullName" in data:
                    user.full_name = data["fullName"]
                if "isAdmin" in data:
                    user.is_superuser = user.is_staff = data["isAdmin"]
                user.save()
                if "password" in data:
                    # Ends the refresh tokens and web sessions of the old password (but
                    # the session making the change, if it is one).
                    keep = request.session.session_key if request.user == user else None
                    services.set_password(user, data["password"], keep_session=keep)
                    if keep:
                        update_session_auth_hash(request, user)
                if "isActive" in data:
                    services.set_active(user, data["isActive"])
            record(Event.ACCOUNT, request.user.username,
                   detail={"action": "update", "account": name, "fields": sorted(data)}, request=request)
        return Response(AccountSerializer(namespace).data)

    def delete(self, request, name):
        namespace = namespace_or_404(name)
        if not request.user.is_superuser and not (namespace.is_org and is_org_owner(request.user, namespace)):
            raise PermissionDenied("Only system admins and organization owners delete accounts.")
        with transaction.atomic():
            if namespace.user is not None:
                namespace.user.delete()
            else:
                for team in namespace.teams.all():
                    services.delete_team(team)
                namespace.delete()
            record(Event.ACCOUNT, request.user.username, detail={"action": "delete", "account": name},
                   request=request)
        return Response(status=status.HTTP_204_NO_CONTENT)


class _SettingsSerializerBase(serializers.Serializer):
    defaultRepositoryVisibility = serializers.ChoiceField(choices=["public", "private"], required=False)


@functools.cache
def settings_serializer() -> type[serializers.Serializer]:
    """The visibility of repositories created by push, and the settings the apps add
    (msr/extensions.py: the cache choice, say), as one serializer."""
    from msr import extensions

    fields = {}
    for setting in extensions.account_settings:
        fields.update(setting.api_fields())
    return type("SettingsSerializer", (_SettingsSerializerBase,), fields)


class _SerializerOfSettings:
    def __get__(self, view, owner):
        return settings_serializer()


def _settings(namespace) -> dict:
    from msr import extensions

    found = {"defaultRepositoryVisibility": namespace.default_visibility}
    for setting in extensions.account_settings:
        found.update(setting.read(namespace.user))
    return found


class AccountSettings(APIView):
    """A user's or organization's settings: the visibility of repositories created by
    push and, for users, the default content cache (users set their own; admins anyone's)."""

    serializer_class = _SerializerOfSettings()

    def get(self, request, name):
        namespace = namespace_or_404(name)
        require_namespace_admin(request.user, namespace)
        return Response(_settings(namespace))

    def patch(self, request, name):
        from msr import extensions

        namespace = namespace_or_404(name)
        require_namespace_admin(request.user, namespace)
        form = settings_serializer()(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        with transaction.atomic():
            for setting in extensions.account_settings:
                named = [key for key in setting.api_fields() if key in data]
                if not named:
                    continue
                if namespace.user is None and setting.users_only:
                    raise serializers.ValidationError({named[0]: [setting.users_only]})
                setting.write(namespace.user, {key: data[key] for key in named})
            if "defaultRepositoryVisibility" in data:
                namespace.default_visibility = data["defaultRepositoryVisibility"]
                namespace.save(update_fields=["default_visibility"])
        return Response(_settings(namespace))


def _organization(name: str, user, allowed, refusal: str):
    """The organization `name` (404 if there is none), if `allowed(user, organization)`
    (is_org_member, is_org_owner); else 403 with `refusal`."""
    organization = organization_or_404(name)
    if not allowed(user, organization):
        raise PermissionDenied(refusal)
    return organization


class _MembersSee:
    """A list view of something of an organization's that its members see: `listed(org)`
    (nothing while the API schema is made, which has no organization)."""

    model: type
    refusal: str

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return self.model.objects.none()
        return self.listed(_organization(self.kwargs["org"], self.request.user, is_org_member, self.refusal))


class MemberSerializer(serializers.Serializer):
    name = serializers.CharField(source="user.username", read_only=True)
    fullName = serializers.CharField(source="user.full_name", read_only=True)
    isAdmin = serializers.BooleanField(source="is_owner", default=False)


class OrganizationMembers(_MembersSee, generics.ListAPIView):
    """Members of an organization; `isAdmin` marks its owners."""

    serializer_class = MemberSerializer
    model, refusal = OrganizationMembership, "Only members see an organization's members."

    def listed(self, org):
        return org.memberships.select_related("user").order_by("user__username")


class MembershipSerializer(serializers.Serializer):
    isAdmin = serializers.BooleanField(default=False)


class OrganizationMember(APIView):
    serializer_class = MemberSerializer

    @extend_schema(request=MembershipSerializer, responses=MemberSerializer)
    def put(self, request, org, member):
        organization = _organization(org, request.user, is_org_owner,
                                     "Only organization owners manage members.")
        form = MembershipSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        membership = services.add_member(organization, user_or_404(member),
                                         is_owner=form.validated_data["isAdmin"])
        record(Event.PERMISSION, request.user.username,
               detail={"action": "member", "organization": org, "member": member,
                       "isAdmin": membership.is_owner}, request=request)
        return Response(MemberSerializer(membership).data)

    def delete(self, request, org, member):
        organization = _organization(org, request.user, is_org_owner,
                                     "Only organization owners manage members.")
        user = user_or_404(member)
        if not OrganizationMembership.objects.filter(organization=organization, user=user).exists():
            return Response({"detail": f"{member!r} is not a member of {org!r}."}, status=404)
        services.remove_member(organization, user)
        record(Event.PERMISSION, request.user.username,
               detail={"action": "remove member", "organization": org, "member": member}, request=request)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TeamSyncSerializer(serializers.Serializer):
    """Where a team's members come from: "" (managed in MSR), "ldap-group" (value: the
    group's DN), "ldap-filter" (value: a filter on the directory's users) or "oidc-group"
    (value: a name in the single sign-on groups claim); and the last sync's result."""

    kind = serializers.ChoiceField(choices=Team.SYNC_KINDS, source="sync_kind", allow_blank=True)
    value = serializers.CharField(max_length=1000, source="sync_value", required=False, default="",
                                  allow_blank=True, trim_whitespace=True)
    syncedAt = serializers.DateTimeField(source="synced_at", read_only=True, allow_null=True)
    result = serializers.CharField(source="sync_result", read_only=True)

    def validate(self, data):
        kind, value = data["sync_kind"], data.get("sync_value", "")
        if not kind:
            return {"sync_kind": "", "sync_value": ""}
        if not value:
            raise serializers.ValidationError({"value": ["Say which group (or filter) the members come from."]})
        if problem := unconfigured(kind):
            raise serializers.ValidationError({"kind": [problem]})
        if kind in (Team.LDAP_GROUP, Team.LDAP_FILTER):
            from accounts.directory_sync import valid_binding

            if problem := valid_binding(kind, value):
                raise serializers.ValidationError({"value": [problem]})
        return data


def unconfigured(kind: str) -> str | None:
    """Why this deployment cannot serve a team binding of `kind` (None: it can)."""
    if kind in (Team.LDAP_GROUP, Team.LDAP_FILTER) and not settings.LDAP_URL:
        return "No company directory is configured (MSR_LDAP_URL)."
    if kind == Team.SSO_GROUP and not settings.OIDC_ISSUER:
        return "Single sign-on is not configured (MSR_OIDC_ISSUER)."
    return None


def usable_binding_kinds() -> list[tuple[str, str]]:
    """The bindings the organization page offers: none without a directory or single sign-on."""
    bound = [(kind, label) for kind, label in Team.SYNC_KINDS if kind and not unconfigured(kind)]
    return [Team.SYNC_KINDS[0], *bound] if bound else []  # SYNC_KINDS[0]: managed in MSR


class TeamSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    name = serializers.RegexField(NAMESPACE_PATTERN, max_length=100)
    description = serializers.CharField(max_length=500, required=False, default="", allow_blank=True)
    membersCount = serializers.SerializerMethodField()
    sync = TeamSyncSerializer(source="*", read_only=True)

    def get_membersCount(self, team) -> int:
        return team.group.user_set.count()


class TeamList(_MembersSee, generics.ListCreateAPIView):
    serializer_class = TeamSerializer
    model, refusal = Team, "Only members see an organization's teams."

    def listed(self, org):
        return org.teams.select_related("group").order_by("name")

    def create(self, request, org):
        organization = _organization(org, request.user, is_org_owner,
                                     "Only organization owners create teams.")
        form = TeamSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        if organization.teams.filter(name=form.validated_data["name"]).exists():
            raise serializers.ValidationError({"name": ["A team with this name exists."]})
        team = services.create_team(organization, form.validated_data["name"],
                                    form.validated_data["description"])
        return Response(TeamSerializer(team).data, status=status.HTTP_201_CREATED)


class TeamUpdateSerializer(serializers.Serializer):
    description = serializers.CharField(max_length=500, allow_blank=True, required=False)
    sync = TeamSyncSerializer(required=False)


def bind_team(request, team: Team, kind: str, value: str) -> None:
    """Set where a team's members come from (the API and the UI); audited. A directory
    binding queues a sync, so that the members follow without waiting for the schedule."""
    if (team.sync_kind, team.sync_value) == (kind, value):
        return
    team.sync_kind, team.sync_value, team.synced_at, team.sync_result = kind, value, None, ""
    team.save(update_fields=["sync_kind", "sync_value", "synced_at", "sync_result"])
    record(Event.PERMISSION, request.user.username, request=request, detail={
        "action": "bind team", "team": str(team), "kind": kind or "manual", "value": value})
    if kind in (Team.LDAP_GROUP, Team.LDAP_FILTER):
        queue_directory_sync(request.user.username)


def queue_directory_sync(actor: str) -> tuple[DirectorySync, bool]:
    from accounts.directory_sync import queue
    from msr import outbox
    from msr.tasks import sync_directory

    with transaction.atomic():
        run, created = queue(actor)
        if created:
            outbox.send(sync_directory, run.pk)
    return run, created


class TeamDetail(APIView):
    serializer_class = TeamSerializer

    def _team(self, request, org, team, manage=False):
        if manage:
            organization = _organization(org, request.user, is_org_owner, "Only organization owners manage teams.")
        else:
            organization = _organization(org, request.user, is_org_member, "Only members see an organization's teams.")
        return team_or_404(organization, team)

    def get(self, request, org, team):
        return Response(TeamSerializer(self._team(request, org, team)).data)

    @extend_schema(request=TeamUpdateSerializer, responses=TeamSerializer)
    def patch(self, request, org, team):
        found = self._team(request, org, team, manage=True)
        form = TeamUpdateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        if "description" in form.validated_data:
            found.description = form.validated_data["description"]
            found.save(update_fields=["description"])
        if "sync" in form.validated_data:
            binding = form.validated_data["sync"]
            bind_team(request, found, binding["sync_kind"], binding["sync_value"])
        return Response(TeamSerializer(found).data)

    def delete(self, request, org, team):
        services.delete_team(self._team(request, org, team, manage=True))
        record(Event.PERMISSION, request.user.username,
               detail={"action": "delete team", "organization": org, "team": team}, request=request)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TeamMemberSerializer(serializers.Serializer):
    name = serializers.CharField(source="username")
    fullName = serializers.CharField(source="full_name")


class TeamMembers(_MembersSee, generics.ListAPIView):
    serializer_class = TeamMemberSerializer
    model, refusal = User, "Only members see an organization's teams."

    def listed(self, org):
        return team_or_404(org, self.kwargs["team"]).group.user_set.order_by("username")


class TeamMember(APIView):
    serializer_class = TeamMemberSerializer

    def _target(self, request, org, team, member):
        organization = _organization(org, request.user, is_org_owner,
                                     "Only organization owners manage team members.")
        return team_or_404(organization, team), user_or_404(member)

    @extend_schema(request=None, responses=TeamMemberSerializer)
    def put(self, request, org, team, member):
        found, user = self._target(request, org, team, member)
        if found.is_bound:
            return Response({"detail": str(teamsync.BoundTeam(found))}, status=status.HTTP_409_CONFLICT)
        services.add_team_member(found, user)
        record(Event.PERMISSION, request.user.username,
               detail={"action": "add team member", "team": f"{org}/{team}", "member": member}, request=request)
        return Response(TeamMemberSerializer(user).data)

    def delete(self, request, org, team, member):
        found, user = self._target(request, org, team, member)
        if found.is_bound:
            return Response({"detail": str(teamsync.BoundTeam(found))}, status=status.HTTP_409_CONFLICT)
        if not found.group.user_set.filter(pk=user.pk).exists():
            return Response({"detail": f"{member!r} is not in team {team!r}."}, status=404)
        services.remove_team_member(found, user)
        record(Event.PERMISSION, request.user.username,
               detail={"action": "remove team member", "team": f"{org}/{team}", "member": member},
               request=request)
        return Response(status=status.HTTP_204_NO_CONTENT)


class DirectorySyncSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    status = serializers.CharField(read_only=True)
    triggeredBy = serializers.CharField(source="triggered_by", read_only=True,
                                        help_text="who asked for it; empty for the schedule")
    summary = serializers.JSONField(read_only=True, help_text="teams synced, members added and removed, "
                                    "accounts created and deactivated, teams that failed")
    error = serializers.CharField(read_only=True)
    createdAt = serializers.DateTimeField(source="created_at", read_only=True)
    startedAt = serializers.DateTimeField(source="started_at", read_only=True, allow_null=True)
    finishedAt = serializers.DateTimeField(source="finished_at", read_only=True, allow_null=True)


class DirectorySyncDetailSerializer(DirectorySyncSerializer):
    log = serializers.CharField(read_only=True)


def _require_admin(request, what):
    if not request.user.is_superuser:
        raise PermissionDenied(f"Only system admins {what}.")


class DirectorySyncList(generics.ListAPIView):
    """Team sync runs with the company directory, newest first; POST runs one now."""

    serializer_class = DirectorySyncSerializer

    def get_queryset(self):
        _require_admin(self.request, "see directory syncs")
        return DirectorySync.objects.order_by("-created_at")

    @extend_schema(request=None, responses={202: DirectorySyncSerializer})
    def post(self, request):
        _require_admin(request, "start a directory sync")
        if not settings.LDAP_URL:
            return Response({"detail": "No company directory is configured (MSR_LDAP_URL)."},
                            status=status.HTTP_409_CONFLICT)
        run, _ = queue_directory_sync(request.user.username)
        return Response(DirectorySyncSerializer(run).data, status=status.HTTP_202_ACCEPTED)


class DirectorySyncDetail(generics.RetrieveAPIView):
    serializer_class = DirectorySyncDetailSerializer
    lookup_url_kwarg = "sync_id"

    def get_queryset(self):
        _require_admin(self.request, "see directory syncs")
        return DirectorySync.objects.all()
