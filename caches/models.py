"""Regional content caches as MSR knows them (the cache node itself is caches/node.py
and uses no database)."""

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

cache_name_validator = RegexValidator(r"^[a-z0-9][a-z0-9-]{0,62}$", "Lowercase letters, digits and dashes.")


class ContentCache(models.Model):
    """A cache in a region: one node, or a region of several nodes behind one address
    (a load balancer) sharing one object store. MSR redirects layer pulls of users who
    chose it (or whose network maps to it) to `url`, with a signed grant, while it is
    enabled and healthy: while that one address answers. A cache may fetch from a
    parent cache instead of from MSR."""

    name = models.CharField(max_length=63, unique=True, validators=[cache_name_validator])
    region = models.CharField(max_length=100, blank=True)
    url = models.URLField(max_length=500, help_text="the address clients use to reach the cache")
    enabled = models.BooleanField(default=True)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    healthy = models.BooleanField(default=True)
    last_checked_at = models.DateTimeField(null=True, blank=True)
    # Why the last health check failed, as a sentence for people (console, API), and the
    # error as the HTTP library put it, for whoever debugs the network (the console's details).
    last_error = models.CharField(max_length=500, blank=True)
    last_error_detail = models.TextField(blank=True)
    # A region of several nodes, as the node that answered the last health check reported
    # it: the shared store (s3://bucket/prefix) and each node's heartbeat ({"node", "url",
    # "healthy", "age", "seen"}, caches.tasks.region_of). A cache of one node with its own
    # disk reports neither. Kept while the address does not answer, with the time of that
    # report, so that the console can say which nodes were alive when it last did.
    store = models.CharField(max_length=500, blank=True, help_text="the region's shared store; empty: one node's disk")
    nodes = models.JSONField(default=list, blank=True)
    nodes_reported_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self):
        return self.name

    @property
    def is_region(self) -> bool:
        return bool(self.store)

    @property
    def nodes_healthy(self) -> int:
        return sum(1 for node in self.nodes if node.get("healthy"))

    def chain(self) -> list["ContentCache"]:
        """This cache and its ancestors, nearest first (a cycle is cut)."""
        caches, seen, node = [], set(), self
        while node is not None and node.pk not in seen:
            caches.append(node)
            seen.add(node.pk)
            node = node.parent
        return caches


class CacheMetrics(models.Model):
    """Counters a cache reported at one health check (cumulative since the node
    started); the series is the chart of the console."""

    cache = models.ForeignKey(ContentCache, on_delete=models.CASCADE, related_name="metrics")
    at = models.DateTimeField(default=timezone.now, db_index=True)
    hits = models.BigIntegerField(default=0)
    misses = models.BigIntegerField(default=0)
    bytes_from_disk = models.BigIntegerField(default=0)
    bytes_from_upstream = models.BigIntegerField(default=0)
    upstream_fetches = models.BigIntegerField(default=0)
    disk_used = models.BigIntegerField(default=0)

    class Meta:
        indexes = [models.Index(fields=["cache", "-at"], name="cache_metrics_idx")]


class UserCacheChoice(models.Model):
    """A user's default content cache (chosen by the user or set by an admin). No row: not
    chosen, the network rules decide. A row without a cache: "MSR, no cache", which wins
    over the network rules (someone on a cache's network who wants MSR itself)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="cache_choice")
    cache = models.ForeignKey(ContentCache, on_delete=models.CASCADE, related_name="+", null=True, blank=True)

    NETWORK, NONE, CACHE = "network", "none", "cache"

    @classmethod
    def of(cls, user) -> tuple[str, "ContentCache | None"]:
        """(network | none | cache, the chosen cache)."""
        choice = cls.objects.select_related("cache").filter(user=user).first()
        if choice is None:
            return cls.NETWORK, None
        return (cls.CACHE, choice.cache) if choice.cache else (cls.NONE, None)

    @classmethod
    def set(cls, user, kind: str, cache: "ContentCache | None" = None) -> None:
        if kind == cls.NETWORK:
            cls.objects.filter(user=user).delete()
        else:
            cls.objects.update_or_create(user=user, defaults={"cache": cache if kind == cls.CACHE else None})


class NetworkRule(models.Model):
    """Clients from `cidr` use `cache` unless they chose a cache themselves; the most
    specific network wins."""

    cidr = models.CharField(max_length=50, unique=True)
    cache = models.ForeignKey(ContentCache, on_delete=models.CASCADE, related_name="network_rules")

    def __str__(self):
        return f"{self.cidr} → {self.cache}"


class PrewarmPolicy(models.Model):
    """On a push of a tag matching `tag_pattern` (a regular expression) into the
    repository (or any repository of the namespace), make `caches` fetch the image's
    layers before anyone pulls them."""

    namespace = models.CharField(max_length=100)
    repository = models.CharField(max_length=255, blank=True, help_text="empty: every repository of the namespace")
    tag_pattern = models.CharField(max_length=200, default=".*")
    caches = models.ManyToManyField(ContentCache, related_name="prewarm_policies")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    def matches(self, repository_full_name: str, tag: str) -> bool:
        import re

        namespace, _, name = repository_full_name.partition("/")
        if namespace != self.namespace or (self.repository and self.repository != name):
            return False
        return re.fullmatch(self.tag_pattern, tag) is not None
