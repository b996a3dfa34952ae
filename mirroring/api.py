"""/api/v0/repositories/{ns}/{repo}/promotionPolicies, …/pushMirroringPolicies,
…/pollMirroringPolicies (repository admins) and /api/v0/jobs.

Secrets (password, authToken) are write-only: stored encrypted, never returned. A push
mirror is tried against the remote with its credentials when it is saved (an upload is
started and cancelled), a poll mirror by listing the remote's tags.
"""

import copy

from django.db import transaction
from django.db.models import Q
from django.http import Http404
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Namespace
from accounts.permissions import ADMIN, PULL, PUSH, repository_actions
from mirroring import criteria
from mirroring.client import RegistryError, normalize_host
from mirroring.jobs import cancel, create_job, remote_for
from mirroring.models import Job, Policy
from msr import egress
from msr.access import repository_for
from msr.crypto import encrypt
from msr.models import Repository
from msr.services import find_repository
from msr.references import is_valid_name, is_valid_tag, split_name

RULES_HELP = ('[{"field": "tag", "operator": "eq|sw|ew|c|oneof|noneof|matches", "values": ["..."]}]; '
              "all must hold; none: every tag")


class RulesField(serializers.JSONField):
    def to_internal_value(self, data):
        try:
            return criteria.validate_rules(super().to_internal_value(data))
        except ValueError as e:
            raise serializers.ValidationError(str(e)) from None


class PolicySerializer(serializers.ModelSerializer):
    repository = serializers.CharField(source="repository.full_name", read_only=True)
    rules = RulesField(default=list, help_text=RULES_HELP)
    createdBy = serializers.CharField(source="created_by.username", read_only=True, default="")
    createdAt = serializers.DateTimeField(source="created_at", read_only=True)
    lastJob = serializers.SerializerMethodField()

    def get_lastJob(self, policy) -> dict | None:
        job = policy.jobs.order_by("-pk").first()
        if job is None:
            return None
        return {"id": job.pk, "status": job.status, "createdAt": job.created_at.isoformat()}


class PromotionPolicySerializer(PolicySerializer):
    targetRepository = serializers.CharField(source="target_repository", max_length=300)
    tagTemplate = serializers.CharField(source="tag_template", max_length=200, default="%n",
                                        help_text="%n: the tag; %Y %m %d %H %M %S: the date (UTC)")

    class Meta:
        model = Policy
        fields = ["id", "repository", "enabled", "rules", "targetRepository", "tagTemplate", "createdBy",
                  "createdAt", "lastJob"]

    def validate_tagTemplate(self, value):
        try:
            return criteria.validate_template(value)
        except ValueError as e:
            raise serializers.ValidationError(str(e)) from None

    def validate_targetRepository(self, value):
        if not is_valid_name(value) or "/" not in value:
            raise serializers.ValidationError("A repository name: namespace/repository.")
        namespace_name, name = split_name(value)
        namespace = Namespace.objects.filter(name=namespace_name).first()
        repository = namespace and Repository.objects.filter(namespace=namespace, name=name).first()
        actions = repository_actions(self.context["request"].user, namespace, repository)
        if namespace is None or PUSH not in actions:
            raise PermissionDenied(f"You need write access to {value} to promote into it.")
        return value

    def validate(self, data):
        source = self.context["repository"].full_name
        target = data.get("target_repository", getattr(self.instance, "target_repository", ""))
        template = data.get("tag_template", getattr(self.instance, "tag_template", "%n"))
        if target == source and "%" not in template.replace("%n", ""):
            if template == "%n":
                raise serializers.ValidationError(
                    {"targetRepository": ["Promoting a repository into itself under the same tag does nothing."]})
        return data


class RemoteSerializer(PolicySerializer):
    remoteHost = serializers.CharField(source="remote_host", max_length=500,
                                       help_text="https://registry.example.com[:port]")
    remoteRepository = serializers.CharField(source="remote_repository", max_length=300)
    username = serializers.CharField(max_length=150, required=False, allow_blank=True, default="")
    password = serializers.CharField(write_only=True, required=False, allow_blank=True, max_length=1000,
                                     style={"input_type": "password"})
    authToken = serializers.CharField(write_only=True, required=False, allow_blank=True, max_length=4000,
                                      help_text="a token of the remote (an MSR personal access token)")
    remoteCA = serializers.CharField(source="remote_ca", required=False, allow_blank=True, default="",
                                     max_length=100_000)
    skipTLSVerification = serializers.BooleanField(source="skip_tls_verify", required=False, default=False)
    hasCredentials = serializers.SerializerMethodField()

    remote_fields = ["remoteHost", "remoteRepository", "username", "password", "authToken", "remoteCA",
                     "skipTLSVerification", "hasCredentials"]

    def get_hasCredentials(self, policy) -> bool:
        return bool(policy.secret_encrypted)

    def validate_remoteHost(self, value):
        try:
            host = normalize_host(value)
            egress.check_url(host)
        except (ValueError, egress.EgressRefused) as e:
            raise serializers.ValidationError(str(e)) from None
        return host

    def validate_remoteRepository(self, value):
        if not is_valid_name(value):
            raise serializers.ValidationError("Not a valid repository name.")
        return value

    def validate_remoteCA(self, value):
        if value.strip() and "-----BEGIN CERTIFICATE-----" not in value:
            raise serializers.ValidationError("PEM certificates (-----BEGIN CERTIFICATE-----).")
        return value

    def validate(self, data):
        data = super().validate(data)
        password, token = data.pop("password", None), data.pop("authToken", None)
        if password and token:
            raise serializers.ValidationError({"authToken": ["Give a password or a token, not both."]})
        if password:
            data["secret_encrypted"], data["secret_is_token"] = encrypt(password), False
        elif token:
            data["secret_encrypted"], data["secret_is_token"] = encrypt(token), True
        if password and not data.get("username", getattr(self.instance, "username", "")):
            raise serializers.ValidationError({"username": ["A password needs a username."]})
        return data

    def check_remote(self, policy: Policy) -> None:
        """Try the remote with the policy's credentials; a readable 400 if it refuses."""
        if not policy.enabled:
            return
        try:
            with remote_for(policy) as remote:
                if policy.kind == Policy.PUSH_MIRROR:
                    remote.check_push()
                else:
                    remote.check_pull()
        except RegistryError as e:
            raise serializers.ValidationError(
                {"remoteHost": [f"The remote registry refused: {e}"]}) from None


class PushMirroringPolicySerializer(RemoteSerializer):
    tagTemplate = serializers.CharField(source="tag_template", max_length=200, default="%n")

    class Meta:
        model = Policy
        fields = ["id", "repository", "enabled", "rules", *RemoteSerializer.remote_fields, "tagTemplate",
                  "createdBy", "createdAt", "lastJob"]

    validate_tagTemplate = PromotionPolicySerializer.validate_tagTemplate


class PollMirroringPolicySerializer(RemoteSerializer):
    interval = serializers.IntegerField(min_value=10, max_value=30 * 24 * 3600, default=1800,
                                        help_text="seconds between polls (default 1800)")
    lastPolledAt = serializers.DateTimeField(source="last_polled_at", read_only=True)

    class Meta:
        model = Policy
        fields = ["id", "repository", "enabled", "rules", *RemoteSerializer.remote_fields, "interval",
                  "lastPolledAt", "createdBy", "createdAt", "lastJob"]


class _PolicyView:
    kind: str
    serializer_class: type

    def repository(self) -> Repository:
        repository = repository_for(self.request.user, self.kwargs["namespace"], self.kwargs["repository"])
        if ADMIN not in repository_actions(self.request.user, repository.namespace, repository):
            raise PermissionDenied(f"You need admin access to {repository.full_name}.")
        return repository

    def get_serializer_context(self):
        context = super().get_serializer_context()
        if not getattr(self, "swagger_fake_view", False):
            context["repository"] = self._repository
        return context

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        self._repository = self.repository()

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Policy.objects.none()
        return (Policy.objects.filter(kind=self.kind, repository=self._repository)
                .select_related("repository__namespace", "created_by").order_by("pk"))

    def _save(self, serializer, **extra):
        """Try the remote first (no transaction is held while another server answers:
        it may be this very deployment), then save."""
        if hasattr(serializer, "check_remote"):
            probe = copy.copy(serializer.instance) if serializer.instance is not None else Policy()
            for field, value in {**serializer.validated_data, "kind": self.kind}.items():
                setattr(probe, field, value)
            serializer.check_remote(probe)
        return serializer.save(kind=self.kind, repository=self._repository, updated_at=timezone.now(), **extra)


class _PolicyList(_PolicyView, generics.ListCreateAPIView):
    def perform_create(self, serializer):
        self._save(serializer, created_by=self.request.user)


class _PolicyDetail(_PolicyView, generics.RetrieveUpdateDestroyAPIView):
    lookup_url_kwarg = "policy_id"

    def perform_update(self, serializer):
        self._save(serializer)


def _policy_views(kind, serializer):
    attrs = {"kind": kind, "serializer_class": serializer}
    name = serializer.__name__.replace("Serializer", "")
    return (type(f"{name}List", (_PolicyList,), attrs), type(f"{name}Detail", (_PolicyDetail,), attrs))


PromotionPolicyList, PromotionPolicyDetail = _policy_views(Policy.PROMOTION, PromotionPolicySerializer)
PushMirroringPolicyList, PushMirroringPolicyDetail = _policy_views(Policy.PUSH_MIRROR, PushMirroringPolicySerializer)
PollMirroringPolicyList, PollMirroringPolicyDetail = _policy_views(Policy.POLL_MIRROR, PollMirroringPolicySerializer)


# -- jobs ------------------------------------------------------------------------------------


class JobSerializer(serializers.ModelSerializer):
    policy = serializers.PrimaryKeyRelatedField(read_only=True)
    triggeredBy = serializers.CharField(source="triggered_by")
    bytesDone = serializers.IntegerField(source="bytes_done")
    bytesTotal = serializers.IntegerField(source="bytes_total")
    progress = serializers.SerializerMethodField()
    createdAt = serializers.DateTimeField(source="created_at")
    startedAt = serializers.DateTimeField(source="started_at")
    finishedAt = serializers.DateTimeField(source="finished_at")
    heartbeatAt = serializers.DateTimeField(source="heartbeat_at")

    class Meta:
        model = Job
        fields = ["id", "action", "policy", "repository", "tag", "digest", "status", "attempts", "triggeredBy",
                  "bytesDone", "bytesTotal", "progress", "results", "error", "createdAt", "startedAt",
                  "heartbeatAt", "finishedAt"]
        read_only_fields = fields

    def get_progress(self, job) -> float | None:
        """Bytes done of total (0-1); 1 when done, None before the total is known."""
        if job.status == Job.DONE:
            return 1.0
        return round(job.bytes_done / job.bytes_total, 4) if job.bytes_total else None


class JobDetailSerializer(JobSerializer):
    class Meta(JobSerializer.Meta):
        fields = JobSerializer.Meta.fields + ["log"]
        read_only_fields = fields


class RunJobSerializer(serializers.Serializer):
    action = serializers.ChoiceField(choices=Job.ACTIONS)
    policy = serializers.IntegerField()
    tag = serializers.CharField(required=False, allow_blank=True, default="",
                                help_text="one tag; empty: every tag that matches the policy")

    def validate_tag(self, value):
        if value and not is_valid_tag(value):
            raise serializers.ValidationError("Not a valid tag.")
        return value


def _administered_policies(user):
    """Policies on repositories `user` administers (every one for system admins): the
    permission function is asked once per repository that has policies."""
    policies = Policy.objects.select_related("repository__namespace")
    if user.is_superuser:
        return policies
    repositories = Repository.objects.select_related("namespace").filter(
        pk__in=Policy.objects.values("repository_id"))
    allowed = [r.pk for r in repositories if ADMIN in repository_actions(user, r.namespace, r)]
    return policies.filter(repository_id__in=allowed)


def _administered(user, names) -> set[str]:
    """Which of these repository names `user` administers (asked of the permission
    function, repository by repository)."""
    allowed = set()
    for name in names:
        repository = find_repository(name) if name else None
        if repository and ADMIN in repository_actions(user, repository.namespace, repository):
            allowed.add(name)
    return allowed


def _visible_jobs(user, pk=None):
    """Jobs of the repositories `user` administers, as source or as the repository the
    job writes into (kept when their policy is deleted: a job remembers both by name);
    with `pk`, only that job is looked at."""
    jobs = Job.objects.all() if pk is None else Job.objects.filter(pk=pk)
    if user.is_superuser:
        return jobs
    sources = set(jobs.values_list("repository", flat=True).distinct())
    targets = set(jobs.exclude(target="").values_list("target", flat=True).distinct())
    administered = _administered(user, sources | targets)
    # A job seen from its target tells of its source: shown when it wrote into the
    # target, or when the user may read the source (else a refused job would tell an
    # admin of the target what was pushed where they may not look).
    readable = {name for name in sources if (r := find_repository(name)) is not None
                and PULL in repository_actions(user, r.namespace, r)}
    return jobs.filter(Q(repository__in=administered)
                       | (Q(target__in=administered) & (Q(status=Job.DONE) | Q(repository__in=readable))))


class IncomingPolicySerializer(serializers.ModelSerializer):
    """A policy that writes into a repository, as that repository's admins see it."""

    kind = serializers.CharField(read_only=True)
    sourceRepository = serializers.SerializerMethodField()
    targetRepository = serializers.CharField(source="local_target", read_only=True)
    rules = serializers.JSONField(read_only=True)
    createdBy = serializers.CharField(source="created_by.username", read_only=True, default="")
    createdAt = serializers.DateTimeField(source="created_at", read_only=True)
    lastJob = serializers.SerializerMethodField()

    class Meta:
        model = Policy
        fields = ["id", "kind", "enabled", "sourceRepository", "targetRepository", "rules", "createdBy",
                  "createdAt", "lastJob"]

    def get_sourceRepository(self, policy) -> str:
        if policy.kind == Policy.POLL_MIRROR:
            return f"{policy.remote_host}/{policy.remote_repository}"
        return policy.repository.full_name

    get_lastJob = PolicySerializer.get_lastJob


class IncomingPolicyUpdateSerializer(serializers.Serializer):
    enabled = serializers.BooleanField()


def incoming_policies(repository: Repository):
    """Promotion policies (of any repository) whose target is `repository`, and its poll
    mirroring policies: everything that writes into it."""
    return (Policy.objects.filter(Q(kind=Policy.PROMOTION, target_repository=repository.full_name)
                                  | Q(kind=Policy.POLL_MIRROR, repository=repository))
            .select_related("repository__namespace", "created_by").order_by("pk"))


class IncomingPolicyList(generics.ListAPIView):
    """Policies that write into this repository, wherever they live (repository admins):
    a promotion set up on another repository is listed here too, so that the admins of
    its target know of it and can stop it."""

    serializer_class = IncomingPolicySerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Policy.objects.none()
        return incoming_policies(_target_repository(self.request, self.kwargs))


def _target_repository(request, kwargs) -> Repository:
    repository = repository_for(request.user, kwargs["namespace"], kwargs["repository"])
    if ADMIN not in repository_actions(request.user, repository.namespace, repository):
        raise PermissionDenied(f"You need admin access to {repository.full_name}.")
    return repository


class IncomingPolicyDetail(APIView):
    serializer_class = IncomingPolicySerializer

    def _policy(self, request, namespace, repository, policy_id) -> Policy:
        target = _target_repository(request, {"namespace": namespace, "repository": repository})
        policy = incoming_policies(target).filter(pk=policy_id).first()
        if policy is None:
            raise Http404("no such policy writes into this repository")
        return policy

    def get(self, request, namespace, repository, policy_id):
        return Response(IncomingPolicySerializer(self._policy(request, namespace, repository, policy_id)).data)

    @extend_schema(request=IncomingPolicyUpdateSerializer, responses=IncomingPolicySerializer)
    def patch(self, request, namespace, repository, policy_id):
        """Enable or disable the policy (the target's admins may stop what writes into it;
        everything else is changed on the policy's own repository)."""
        policy = self._policy(request, namespace, repository, policy_id)
        form = IncomingPolicyUpdateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        set_enabled(policy, form.validated_data["enabled"], request)
        return Response(IncomingPolicySerializer(policy).data)


def set_enabled(policy: Policy, enabled: bool, request) -> None:
    from msr.events import record
    from msr.models import Event

    with transaction.atomic():
        Policy.objects.filter(pk=policy.pk).update(enabled=enabled, updated_at=timezone.now())
        record(Event.PERMISSION, request.user.username, policy.local_target,
               detail={"action": "enable policy" if enabled else "disable policy", "policy": policy.pk,
                       "kind": policy.kind}, request=request)
    policy.enabled = enabled


JOB_FILTERS = [
    OpenApiParameter("policy", int, description="jobs of one policy"),
    OpenApiParameter("status", str, enum=[s for s, _ in Job.STATUSES]),
    OpenApiParameter("action", str, enum=[a for a, _ in Job.ACTIONS]),
]


class JobList(generics.ListCreateAPIView):
    serializer_class = JobSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Job.objects.none()
        jobs = _visible_jobs(self.request.user)
        params = self.request.query_params
        if params.get("policy"):
            if not params["policy"].isdigit():
                raise serializers.ValidationError({"policy": ["A policy id."]})
            jobs = jobs.filter(policy_id=int(params["policy"]))
        if params.get("status"):
            if params["status"] not in dict(Job.STATUSES):
                raise serializers.ValidationError({"status": [f"One of {', '.join(dict(Job.STATUSES))}."]})
            jobs = jobs.filter(status=params["status"])
        if params.get("action"):
            if params["action"] not in dict(Job.ACTIONS):
                raise serializers.ValidationError({"action": [f"One of {', '.join(dict(Job.ACTIONS))}."]})
            jobs = jobs.filter(action=params["action"])
        return jobs.order_by("-pk")

    @extend_schema(parameters=JOB_FILTERS)
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(request=RunJobSerializer, responses={202: JobDetailSerializer})
    def post(self, request):
        form = RunJobSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        policy = Policy.objects.select_related("repository__namespace").filter(pk=data["policy"]).first()
        if policy is None or not _administered_policies(request.user).filter(pk=policy.pk).exists():
            raise serializers.ValidationError({"policy": ["No such policy."]})
        if policy.action != data["action"]:
            raise serializers.ValidationError({"action": [f"Policy {policy.pk} runs {policy.action} jobs."]})
        with transaction.atomic():
            job = create_job(policy, tag=data["tag"], triggered_by=request.user.username)
        return Response(JobDetailSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class JobDetail(generics.RetrieveAPIView):
    serializer_class = JobDetailSerializer
    lookup_url_kwarg = "job_id"

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Job.objects.none()
        return _visible_jobs(self.request.user, pk=self.kwargs["job_id"])


class JobCancel(APIView):
    @extend_schema(request=None, responses={200: JobDetailSerializer})
    def post(self, request, job_id):
        job = _visible_jobs(request.user, pk=job_id).first()
        if job is None:
            raise Http404
        if job.status not in Job.ACTIVE:
            return Response({"detail": f"The job is already {job.status}."}, status=status.HTTP_409_CONFLICT)
        return Response(JobDetailSerializer(cancel(job)).data)
