"""/api/v0/content_caches (system admins): caches, their health and metrics, purge and
pre-warm actions, network rules and pre-warming policies."""

import ipaddress

from django.db.models.deletion import ProtectedError
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import generics, serializers, status
from rest_framework.permissions import AllowAny, IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from caches.models import CacheMetrics, ContentCache, NetworkRule, PrewarmPolicy
from msr import egress
from msr.references import is_valid_name


class RegionNodeSerializer(serializers.Serializer):
    """One node of a region, from its heartbeat in the shared store (read-only: the
    region reports it)."""

    node = serializers.CharField(read_only=True, help_text="the node's id")
    url = serializers.CharField(read_only=True, help_text="where the region's other nodes reach it")
    healthy = serializers.BooleanField(read_only=True, help_text="its heartbeat is recent (15 s)")
    age = serializers.FloatField(read_only=True, allow_null=True,
                                 help_text="seconds since its last heartbeat, at the report")
    seen = serializers.DateTimeField(read_only=True, allow_null=True, help_text="its last heartbeat")


class ContentCacheSerializer(serializers.ModelSerializer):
    parent = serializers.SlugRelatedField(slug_field="name", queryset=ContentCache.objects.all(),
                                          allow_null=True, required=False)
    lastCheckedAt = serializers.DateTimeField(source="last_checked_at", read_only=True, allow_null=True)
    lastError = serializers.CharField(source="last_error", read_only=True,
                                      help_text="why the last health check failed, in a sentence")
    lastErrorDetail = serializers.CharField(source="last_error_detail", read_only=True,
                                            help_text="the raw error behind lastError")
    store = serializers.CharField(read_only=True, help_text="a region's shared store (s3://bucket/prefix); "
                                                            "empty: one node with its own disk")
    nodes = RegionNodeSerializer(many=True, read_only=True,
                                 help_text="a region's nodes at its last report, by node id; empty: one node")
    nodesHealthy = serializers.SerializerMethodField(help_text="a region's nodes with a recent heartbeat; null: one node")
    nodesTotal = serializers.SerializerMethodField(help_text="a region's nodes; null: one node")
    nodesReportedAt = serializers.DateTimeField(source="nodes_reported_at", read_only=True, allow_null=True,
                                                help_text="when the region last reported its nodes")
    metrics = serializers.SerializerMethodField()

    class Meta:
        model = ContentCache
        fields = ["id", "name", "region", "url", "enabled", "parent", "healthy", "lastCheckedAt", "lastError",
                  "lastErrorDetail", "store", "nodes", "nodesHealthy", "nodesTotal", "nodesReportedAt", "metrics"]
        read_only_fields = ["healthy"]

    def get_nodesHealthy(self, cache) -> int | None:
        return cache.nodes_healthy if cache.is_region else None

    def get_nodesTotal(self, cache) -> int | None:
        return len(cache.nodes) if cache.is_region else None

    def get_metrics(self, cache) -> dict | None:
        latest = cache.metrics.order_by("-at").first()
        if latest is None:
            return None
        served = latest.hits + latest.misses
        return {"at": latest.at.isoformat(), "hits": latest.hits, "misses": latest.misses,
                "hitRatio": round(latest.hits / served, 4) if served else None,
                "bytesFromDisk": latest.bytes_from_disk, "bytesFromUpstream": latest.bytes_from_upstream,
                "diskUsed": latest.disk_used}

    def validate_url(self, value):
        if not value.lower().startswith(("http://", "https://")):
            raise serializers.ValidationError("Use an http or https URL.")
        try:
            egress.check_url(value)  # MSR checks its health and sends purges there
        except (ValueError, egress.EgressRefused) as e:
            raise serializers.ValidationError(str(e)) from None
        return value.rstrip("/")

    def validate(self, data):
        parent = data.get("parent")
        if parent is not None and self.instance is not None and self.instance in parent.chain():
            raise serializers.ValidationError({"parent": ["A cache cannot be its own ancestor."]})
        return data


class _AdminList(generics.ListCreateAPIView):
    permission_classes = [IsAdminUser]


class _AdminDetail(generics.RetrieveUpdateDestroyAPIView):
    """One object of the list view `of`, with its serializer."""

    permission_classes = [IsAdminUser]
    http_method_names = ["get", "patch", "delete"]
    of: type[_AdminList]

    def get_serializer_class(self):
        return self.of.serializer_class

    def get_queryset(self):
        return self.of.queryset.all()


class ContentCacheList(_AdminList):
    serializer_class = ContentCacheSerializer
    queryset = ContentCache.objects.select_related("parent").order_by("name")


class ContentCacheDetail(_AdminDetail):
    of = ContentCacheList

    def destroy(self, request, *args, **kwargs):
        try:
            return super().destroy(request, *args, **kwargs)
        except ProtectedError:
            return Response({"detail": "Other caches use this cache as their parent."}, status=400)


class MetricsSampleSerializer(serializers.ModelSerializer):
    bytesFromDisk = serializers.IntegerField(source="bytes_from_disk")
    bytesFromUpstream = serializers.IntegerField(source="bytes_from_upstream")
    diskUsed = serializers.IntegerField(source="disk_used")

    class Meta:
        model = CacheMetrics
        fields = ["at", "hits", "misses", "bytesFromDisk", "bytesFromUpstream", "diskUsed"]


class ContentCacheMetrics(generics.ListAPIView):
    """The counters the cache reported at each health check, newest first."""

    permission_classes = [IsAdminUser]
    serializer_class = MetricsSampleSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return CacheMetrics.objects.none()
        return CacheMetrics.objects.filter(cache_id=self.kwargs["pk"]).order_by("-at")


class PurgeSerializer(serializers.Serializer):
    digest = serializers.RegexField(r"^sha(256:[a-f0-9]{64}|512:[a-f0-9]{128})$", required=False,
                                    help_text="one blob; omit to empty the cache")


class _CacheAction(APIView):
    """POST to one cache (system admins): the body is checked by `form`, then `act`."""

    permission_classes = [IsAdminUser]
    form: type[serializers.Serializer]

    def post(self, request, pk):
        cache = generics.get_object_or_404(ContentCache, pk=pk)
        form = self.form(data=request.data)
        form.is_valid(raise_exception=True)
        return self.act(cache, form.validated_data)

    def act(self, cache: ContentCache, data: dict) -> Response:
        raise NotImplementedError


@extend_schema_view(post=extend_schema(request=PurgeSerializer, responses={200: dict}))
class ContentCachePurge(_CacheAction):
    """Remove one blob (`digest`) or every blob from the cache's disk; it fetches them
    again from upstream on the next pull."""

    form = PurgeSerializer

    def act(self, cache, data):
        import requests

        from caches.tasks import purge

        try:
            return Response(purge(cache, data.get("digest")))
        except (requests.RequestException, egress.EgressRefused) as e:
            return Response({"detail": f"the cache did not answer: {egress.describe(e)}"}, status=502)


class PrewarmSerializer(serializers.Serializer):
    repository = serializers.CharField(help_text="namespace/repository")
    tag = serializers.CharField(help_text="tag or digest")

    def validate_repository(self, value):
        if not is_valid_name(value):
            raise serializers.ValidationError("Not a valid repository name.")
        return value


@extend_schema_view(post=extend_schema(request=PrewarmSerializer, responses={202: dict}))
class ContentCachePrewarm(_CacheAction):
    """Queue a pre-warm: the cache fetches the image's layers (every platform of an
    index) before anyone pulls them."""

    form = PrewarmSerializer

    def act(self, cache, data):
        from caches.tasks import prewarm
        from msr import outbox
        from msr.exceptions import NotFound
        from msr.services import resolve_manifest

        try:
            resolve_manifest(data["repository"], data["tag"])
        except NotFound:
            raise serializers.ValidationError({"tag": ["No such image."]}) from None
        outbox.send(prewarm, cache.pk, data["repository"], data["tag"])
        return Response({"queued": True, "cache": cache.name}, status=status.HTTP_202_ACCEPTED)


class NetworkRuleSerializer(serializers.ModelSerializer):
    cache = serializers.SlugRelatedField(slug_field="name", queryset=ContentCache.objects.all())

    class Meta:
        model = NetworkRule
        fields = ["id", "cidr", "cache"]

    def validate_cidr(self, value):
        try:
            return str(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise serializers.ValidationError("Not a network, e.g. 10.20.0.0/16.") from None


class NetworkRuleList(_AdminList):
    serializer_class = NetworkRuleSerializer
    queryset = NetworkRule.objects.select_related("cache").order_by("cidr")


class NetworkRuleDetail(generics.RetrieveDestroyAPIView):
    permission_classes = [IsAdminUser]
    serializer_class = NetworkRuleSerializer
    queryset = NetworkRule.objects.select_related("cache")


class PrewarmPolicySerializer(serializers.ModelSerializer):
    caches = serializers.SlugRelatedField(slug_field="name", many=True, queryset=ContentCache.objects.all())
    tagPattern = serializers.CharField(source="tag_pattern", max_length=200, default=".*")

    class Meta:
        model = PrewarmPolicy
        fields = ["id", "namespace", "repository", "tagPattern", "caches", "enabled"]

    def validate_tagPattern(self, value):
        import re

        try:
            re.compile(value)
        except re.error as e:
            raise serializers.ValidationError(f"Not a regular expression: {e}") from None
        return value


class PrewarmPolicyList(_AdminList):
    serializer_class = PrewarmPolicySerializer
    queryset = PrewarmPolicy.objects.prefetch_related("caches").order_by("id")


class PrewarmPolicyDetail(_AdminDetail):
    of = PrewarmPolicyList


# -- pulls a cache answered in its region -------------------------------------------------

# A report older than this is refused (its tokens too): a node keeps reports while MSR is
# away, and a day is far longer than MSR is ever expected to be.
REPORT_MAX_AGE = 24 * 3600


class RegionalPullSerializer(serializers.Serializer):
    token = serializers.CharField(max_length=8192, help_text="the client's access token for the pull")
    repository = serializers.CharField(max_length=255)
    digest = serializers.RegexField(r"^sha(256:[a-f0-9]{64}|512:[a-f0-9]{128})$")
    at = serializers.DateTimeField()
    client = serializers.IPAddressField(required=False, allow_null=True)


class RegionalPullsSerializer(serializers.Serializer):
    cache = serializers.CharField(max_length=100)
    pulls = RegionalPullSerializer(many=True, max_length=1000)


class RegionalPulls(APIView):
    """`POST /api/v0/content_caches/pulls`, by a cache node: the pulls it answered in its
    region without asking MSR (manifests by digest; a tag is always resolved at MSR, which
    records that pull itself), for the audit trail. The node holds no credential of its
    own: each pull carries the access token the client presented, which proves who pulled
    and that MSR allowed it; a pull whose token does not is left out (`refused`). The
    events are written before the answer, so a node deletes a report only once it is
    recorded."""

    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(request=RegionalPullsSerializer, responses={200: dict})
    def post(self, request):
        from datetime import timedelta

        from django.utils import timezone

        from msr.models import Event
        from msr.tokens import InvalidToken, access_token_evidence
        from protocol.access import may

        form = RegionalPullsSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        cache = generics.get_object_or_404(ContentCache, name=form.validated_data["cache"])
        now = timezone.now()
        events, refused = [], 0
        for pull in form.validated_data["pulls"]:
            try:
                claims = access_token_evidence(pull["token"], REPORT_MAX_AGE)
            except InvalidToken:
                claims = None
            at = pull["at"]
            if claims is None or not may(claims, pull["repository"], "pull") \
                    or not now - timedelta(seconds=REPORT_MAX_AGE) <= at <= now + timedelta(minutes=5):
                refused += 1
                continue
            events.append(Event(type=Event.PULL, actor=claims.get("sub") or "", repository=pull["repository"],
                                digest=pull["digest"], client_ip=pull.get("client"), created_at=min(at, now),
                                detail={"cache": cache.name}))
        Event.objects.bulk_create(events)
        return Response({"recorded": len(events), "refused": refused})
