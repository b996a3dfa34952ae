"""/api/v0/repositories/<ns>/<repo>/pruningPolicies and /pruningRuns: tag pruning
(msr/pruning.py). Repository admins manage and run policies; every change is audited."""

from django.db import transaction
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from msr import pruning
from msr.access import repository_for, require_repository_admin
from msr.events import record
from msr.models import Event, PruningPolicy, PruningRun


class RulesField(serializers.JSONField):
    def to_internal_value(self, data):
        try:
            return pruning.validate_rules(super().to_internal_value(data))
        except pruning.InvalidRules as e:
            raise serializers.ValidationError(str(e)) from None


class PruningPolicySerializer(serializers.ModelSerializer):
    rules = RulesField(help_text='[{"field": "tag"|"last_pushed"|"last_pulled", "operator": ..., "values": [...]}]')
    enabled = serializers.BooleanField(required=False)
    createdBy = serializers.CharField(source="created_by.username", read_only=True, default="")
    createdAt = serializers.DateTimeField(source="created_at", read_only=True)
    updatedAt = serializers.DateTimeField(source="updated_at", read_only=True)

    class Meta:
        model = PruningPolicy
        fields = ["id", "rules", "enabled", "createdBy", "createdAt", "updatedAt"]


class PruningRunSerializer(serializers.ModelSerializer):
    policy = serializers.IntegerField(source="policy_id", read_only=True)
    dryRun = serializers.BooleanField(source="dry_run")
    triggeredBy = serializers.CharField(source="triggered_by")
    createdAt = serializers.DateTimeField(source="created_at")
    startedAt = serializers.DateTimeField(source="started_at")
    finishedAt = serializers.DateTimeField(source="finished_at")

    class Meta:
        model = PruningRun
        fields = ["id", "policy", "rules", "dryRun", "status", "trigger", "triggeredBy", "createdAt", "startedAt",
                  "finishedAt", "candidates", "protected", "pruned", "error", "log"]


class RunRequestSerializer(serializers.Serializer):
    dryRun = serializers.BooleanField(default=False)


class TestRequestSerializer(serializers.Serializer):
    rules = RulesField()


def _administered(request, namespace, repository):
    found = repository_for(request.user, namespace, repository)
    require_repository_admin(request.user, found)
    return found


def _policy(request, namespace, repository, policy_id):
    found = _administered(request, namespace, repository)
    return found, get_object_or_404(PruningPolicy.objects.select_related("created_by"), pk=policy_id,
                                    repository=found)


def _audit(request, repository, action: str, policy: PruningPolicy, **extra) -> None:
    record(Event.REPOSITORY, request.user.username, repository.full_name, request=request,
           detail={"action": action, "policy": policy.pk, **extra})


class PruningPolicyList(APIView):
    permission_classes = [IsAuthenticated]
    serializer_class = PruningPolicySerializer

    def get(self, request, namespace, repository):
        found = _administered(request, namespace, repository)
        return Response(PruningPolicySerializer(found.pruning_policies.select_related("created_by"), many=True).data)

    def post(self, request, namespace, repository):
        found = _administered(request, namespace, repository)
        form = PruningPolicySerializer(data=request.data)
        form.is_valid(raise_exception=True)
        with transaction.atomic():
            policy = form.save(repository=found, created_by=request.user)
            _audit(request, found, "pruning policy created", policy, rules=policy.rules, enabled=policy.enabled)
        return Response(PruningPolicySerializer(policy).data, status=status.HTTP_201_CREATED)


class PruningPolicyDetail(APIView):
    permission_classes = [IsAuthenticated]
    serializer_class = PruningPolicySerializer

    def get(self, request, namespace, repository, policy_id):
        return Response(PruningPolicySerializer(_policy(request, namespace, repository, policy_id)[1]).data)

    def patch(self, request, namespace, repository, policy_id):
        found, policy = _policy(request, namespace, repository, policy_id)
        form = PruningPolicySerializer(policy, data=request.data, partial=True)
        form.is_valid(raise_exception=True)
        with transaction.atomic():
            policy = form.save(updated_at=timezone.now())
            _audit(request, found, "pruning policy updated", policy, rules=policy.rules, enabled=policy.enabled)
        return Response(PruningPolicySerializer(policy).data)

    def delete(self, request, namespace, repository, policy_id):
        found, policy = _policy(request, namespace, repository, policy_id)
        with transaction.atomic():
            _audit(request, found, "pruning policy deleted", policy, rules=policy.rules)
            policy.delete()
        return Response(status=status.HTTP_204_NO_CONTENT)


class PruningPolicyRun(APIView):
    """Queue a run of the policy (a dry run with `{"dryRun": true}`); 202 with the run."""

    permission_classes = [IsAuthenticated]
    serializer_class = RunRequestSerializer

    @extend_schema(request=RunRequestSerializer, responses={202: PruningRunSerializer})
    def post(self, request, namespace, repository, policy_id):
        _, policy = _policy(request, namespace, repository, policy_id)
        form = RunRequestSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        with transaction.atomic():
            run = pruning.start(policy, form.validated_data["dryRun"], PruningRun.API, request.user.username)
        return Response(PruningRunSerializer(run).data, status=status.HTTP_202_ACCEPTED)


class PruningPolicyTest(APIView):
    """Evaluate rules now without saving anything: the tags they would prune and the
    protected tags they pick (with why)."""

    permission_classes = [IsAuthenticated]
    serializer_class = TestRequestSerializer

    def post(self, request, namespace, repository):
        found = _administered(request, namespace, repository)
        form = TestRequestSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        selection = pruning.select(found, [form.validated_data["rules"]], timezone.now())
        return Response({"candidates": selection.candidates, "protected": selection.protected})


class PruningRunList(APIView):
    permission_classes = [IsAuthenticated]
    serializer_class = PruningRunSerializer

    def get(self, request, namespace, repository):
        found = _administered(request, namespace, repository)
        runs = found.pruning_runs.order_by("-created_at", "-pk")[:100]
        return Response(PruningRunSerializer(runs, many=True).data)


class PruningRunDetail(APIView):
    permission_classes = [IsAuthenticated]
    serializer_class = PruningRunSerializer

    def get(self, request, namespace, repository, run_id):
        found = _administered(request, namespace, repository)
        return Response(PruningRunSerializer(get_object_or_404(PruningRun, pk=run_id, repository=found)).data)
