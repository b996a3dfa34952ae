"""The caches console (system admins): every cache's health (a sentence, with the raw
error in a details element), hit ratio, bytes served, a traffic chart, the nodes of a
region of several nodes and their heartbeats, how to point clients at each cache as
their region's registry endpoint, and pre-warming by hand."""

from urllib.parse import urlsplit

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect, render
from django.utils.safestring import mark_safe

from caches.models import ContentCache
from caches.tasks import prewarm
from msr import outbox, services
from msr.exceptions import DomainError, NotFound
from msr.registry.base import public_url
from msr.ui.views import readable


class PrewarmForm(forms.Form):
    cache = forms.ChoiceField(label="Cache")
    repository = forms.CharField(max_length=255, label="Repository", help_text="namespace/repository")
    tag = forms.CharField(max_length=128, label="Tag")

    def __init__(self, *args, caches=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["cache"].choices = [(c.name, c.name) for c in caches]


def _chart(samples, width=320, height=60) -> str:
    """An inline SVG polyline of bytes served per interval (disk + upstream), oldest
    first: a chart without JavaScript or a charting library."""
    points = []
    for previous, current in zip(samples, samples[1:]):
        served = (current.bytes_from_disk - previous.bytes_from_disk) + \
                 (current.bytes_from_upstream - previous.bytes_from_upstream)
        points.append(max(served, 0))
    if not points:
        return ""
    top = max(points) or 1
    step = width / max(len(points) - 1, 1)
    coordinates = " ".join(f"{i * step:.1f},{height - value / top * (height - 4) - 2:.1f}"
                           for i, value in enumerate(points))
    return (f'<svg role="img" aria-label="bytes served per health check, peak {top} bytes" '
            f'class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
            f'<polyline fill="none" stroke="#1f5fbf" stroke-width="2" points="{coordinates}"/></svg>')


def region_summary(cache: ContentCache) -> str:
    """"region of 3 nodes, 2 healthy" for a region of several nodes, else ""."""
    if not cache.is_region:
        return ""
    total = len(cache.nodes)
    return f"region of {total} node{'' if total == 1 else 's'}, {cache.nodes_healthy} healthy"


def heartbeat_age(seconds: float | None) -> str:
    """How long ago a node's heartbeat was, at the report: "4 s ago", "3 min ago"."""
    if seconds is None:
        return "unknown"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f} {unit} ago"
    return f"{int(seconds)} s ago"


def endpoint_setup(cache_url: str, msr_url: str) -> dict:
    """How clients pull through a cache as their region's registry endpoint
    (caches/endpoint.py): containerd's hosts.toml and podman's or CRI-O's registries.conf
    make the cache a mirror of MSR's host (images keep MSR's name); any other client names
    the cache's host in the image."""
    cache, msr = urlsplit(cache_url), urlsplit(msr_url)
    registries_conf = ["[[registry]]", f'location = "{msr.netloc}"']
    # containers/image speaks HTTPS unless told a location is insecure (plain HTTP).
    if msr.scheme == "http":
        registries_conf.append("insecure = true")
    registries_conf += ["", "[[registry.mirror]]", f'location = "{cache.netloc}"']
    if cache.scheme == "http":
        registries_conf.append("insecure = true")
    return {
        "msr_host": msr.netloc,
        "cache_host": cache.netloc,
        "hosts_toml_path": f"/etc/containerd/certs.d/{msr.netloc}/hosts.toml",
        "hosts_toml": "\n".join([f'server = "{msr.scheme}://{msr.netloc}"', "",
                                 f'[host."{cache.scheme}://{cache.netloc}"]',
                                 '  capabilities = ["pull", "resolve"]']),
        "registries_conf": "\n".join(registries_conf),
        "plain": "\n".join([f"docker login {cache.netloc}",
                            f"docker pull {cache.netloc}/NAMESPACE/REPOSITORY:TAG"]),
    }


@login_required
def console_caches(request):
    if not request.user.is_superuser:
        raise PermissionDenied("The console is for system admins.")
    caches = list(ContentCache.objects.select_related("parent").order_by("name"))
    form = PrewarmForm(request.POST or None, caches=caches)
    if request.method == "POST" and form.is_valid():
        repository_name, tag = form.cleaned_data["repository"], form.cleaned_data["tag"]
        try:
            services.resolve_manifest(repository_name, tag)
        except NotFound:
            form.add_error("tag", "No such image in this repository.")
        except DomainError as e:  # an invalid digest
            form.add_error("tag", readable(e))
        else:
            cache = next(c for c in caches if c.name == form.cleaned_data["cache"])
            outbox.send(prewarm, cache.pk, repository_name, tag)
            messages.success(request, f"Queued: {cache.name} will fetch {repository_name}:{tag}.")
            return redirect("caches:console")
    rows, msr_url = [], public_url(request)
    for cache in caches:
        samples = list(cache.metrics.order_by("-at")[:48])[::-1]
        latest = samples[-1] if samples else None
        served = (latest.hits + latest.misses) if latest else 0
        rows.append({
            "cache": cache, "latest": latest,
            "hit_ratio": f"{latest.hits / served:.0%}" if served else "—",
            "bytes_served": (latest.bytes_from_disk + latest.bytes_from_upstream) if latest else 0,
            "chart": mark_safe(_chart(samples)),
            "region": region_summary(cache),
            "degraded": cache.is_region and cache.nodes_healthy < len(cache.nodes),
            "nodes": [{**node, "heartbeat": heartbeat_age(node.get("age"))} for node in cache.nodes]
            if cache.is_region else [],
            "setup": endpoint_setup(cache.url, msr_url),
        })
    return render(request, "caches/console.html", {"rows": rows, "form": form},
                  status=400 if form.errors else 200)
