"""Metrics, logs and probes with real processes: an `msr serve` with its access log on,
a cache node, a push and a pull through the cache; a second `msr serve` whose broker is
down and whose /metrics is closed to 127.0.0.1."""

import json
import time
import uuid
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from django.conf import settings

from msr.project.metrics import route_template
from tests.client import Registry, sha256
from tests.fixtures.metrics import BLOB, scrape, value
from tests.processes import free_port, start_cache, start_msr

MANIFEST = "/v2/<name>/manifests/<reference>"
UPLOAD = "/v2/<name>/blobs/uploads/"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def json_lines(text: str) -> list[dict]:
    """Every line of a log, parsed: a line that is not one JSON object fails the test."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def eventually(check, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def unique_module():
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def observed(db_url, artifacts_dir, tmp_path_factory, unique_module):
    """`msr serve` with MSR_ACCESS_LOG and a cache node registered in it."""
    from caches.models import ContentCache

    logs = artifacts_dir / "logs"
    msr_process, msr_url = start_msr("serve", settings.DATA_DIR, db_url, logs, extra_env={"MSR_ACCESS_LOG": "true"})
    cache_name = f"obs-{unique_module}"
    cache_process, cache_url = start_cache(cache_name, msr_url, tmp_path_factory.mktemp("obs-cache"), logs)
    ContentCache.objects.update_or_create(name=cache_name, defaults={"url": cache_url, "healthy": True})
    yield {"msr": msr_url, "msr_process": msr_process, "cache": cache_url, "cache_name": cache_name,
           "cache_process": cache_process}
    cache_process.stop()
    msr_process.stop()
    ContentCache.objects.filter(name=cache_name).delete()


@pytest.fixture(scope="module")
def puller(observed, unique_module):
    """A user whose layer pulls go to the test's cache."""
    from accounts.models import User
    from accounts.services import create_user
    from caches.models import ContentCache, UserCacheChoice

    name = f"obsuser{unique_module}"
    password = f"pw-{unique_module}-secret"
    user = User.objects.filter(username=name).first() or create_user(name, password)
    UserCacheChoice.objects.update_or_create(user=user, defaults={
        "cache": ContentCache.objects.get(name=observed["cache_name"])})
    return name, password


def test_a_push_and_a_pull_through_the_cache_move_the_counters_and_share_a_request_id(
        observed, personas, puller, unique):
    from msr.services import find_repository

    msr, cache = observed["msr"], observed["cache"]
    name = f"acme/obs-{unique}"
    layers = (b"observed layer one " * 2000, b"observed layer two " * 3000)
    before = scrape(msr)

    alice = Registry(msr, "alice", personas["alice"].token)
    _, pushed = alice.push_image(name, "v1", layers=layers)
    assert pushed.status_code == 201, pushed.text
    repository = find_repository(name)
    repository.visibility = "public"
    repository.save()

    username, password = puller
    client = Registry(msr, username, password)
    token = client.token(f"repository:{name}:pull")
    manifest = client.request("GET", f"/v2/{name}/manifests/v1", token=token, headers={"Accept": OCI_MANIFEST})
    assert manifest.status_code == 200

    request_id = f"pull-{unique}"
    redirect = client.request("GET", f"/v2/{name}/blobs/{sha256(layers[0])}", token=token,
                              headers={"X-Request-ID": request_id})
    assert redirect.status_code == 307, redirect.text
    assert redirect.headers["X-Request-ID"] == request_id
    location = redirect.headers["Location"]
    assert location.startswith(cache) and parse_qs(urlsplit(location).query)["rid"] == [request_id]
    grant = parse_qs(urlsplit(location).query)["grant"][0]
    served = requests.get(location, timeout=30)
    assert served.status_code == 200 and served.content == layers[0]
    assert served.headers["X-Request-ID"] == request_id and served.headers["X-Cache"] == "MISS"

    # a refused login: its password must not be logged either
    wrong = f"wrong-{unique}-password"
    assert Registry(msr, username, wrong).token_response(f"repository:{name}:pull").status_code == 401

    after = scrape(msr)

    def moved(metric, **labels):
        return value(after, metric, **labels) - value(before, metric, **labels)

    # Counted over both gunicorn workers (multiprocess mode): exact, whichever served what.
    assert moved("msr_http_requests_total", route=UPLOAD, method="POST", status="201") == 3
    assert moved("msr_http_requests_total", route=MANIFEST, method="PUT", status="201") == 1
    assert moved("msr_http_requests_total", route=MANIFEST, method="GET", status="200") == 1
    assert moved("msr_http_requests_total", route=BLOB, method="GET", status="307") == 1
    assert moved("msr_http_requests_total", route=BLOB, method="GET", status="200") == 1  # the cache's fetch
    assert moved("msr_http_requests_total", route="/auth/token", method="GET", status="401") == 1
    assert moved("msr_http_request_duration_seconds_count", route=MANIFEST, method="GET") == 1
    assert moved("msr_pushes_total") == 1
    assert moved("msr_pulls_total") == 1
    assert moved("msr_tokens_issued_total") == 5  # 3 blobs + 1 manifest (alice), 1 pull token
    assert value(after, "msr_cache_redirects_total", cache=observed["cache_name"]) == 1
    # the raw paths never become labels
    assert not any(name in str(labels) for _, labels in after)

    cache_metrics = eventually(lambda: _cache_blob_requests(cache, observed["cache_name"]))
    assert cache_metrics == 1

    msr_log = observed["msr_process"].log()
    lines = [e for e in json_lines(msr_log) if e.get("request_id") == request_id]
    assert {(e["route"], e["status"], e["user"]) for e in lines if e["logger"] == "msr.access"} == {
        (BLOB, 307, username),  # the client's GET, redirected
        (BLOB, 200, ""),  # the cache fetching the miss (with a grant, no user), with the same id
    }
    access = next(e for e in lines if e["status"] == 307)
    assert access["method"] == "GET" and access["duration_ms"] >= 0 and access["level"] == "INFO"
    assert {"time", "logger", "message"} <= set(access)

    def cache_line():
        entries = [e for e in json_lines(observed["cache_process"].log()) if e.get("request_id") == request_id]
        assert entries, observed["cache_process"].log()
        return entries[0]

    line = eventually(cache_line)
    assert (line["route"], line["status"], line["user"], line["x_cache"]) == (BLOB, 200, username, "MISS")
    assert line["digest"] == sha256(layers[0]) and line["repository"] == name

    for log_text in (msr_log, observed["cache_process"].log()):
        for secret in (token, password, wrong, grant, personas["alice"].token, personas["alice"].password):
            assert secret not in log_text
        assert "authorization" not in log_text.lower()


def _cache_blob_requests(cache_url, cache_name) -> float:
    samples = scrape(cache_url)
    count = value(samples, "msr_cache_requests_total", cache=cache_name, route=BLOB, status="200")
    assert count, samples
    return count


def test_healthz_and_readyz_answer(observed):
    health = requests.get(f"{observed['msr']}/healthz", timeout=10)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = requests.get(f"{observed['msr']}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ok" and body["failing"] == []
    assert {name: check["ok"] for name, check in body["checks"].items()} == {
        "database": True, "broker": True, "storage": True}
    cache_health = requests.get(f"{observed['cache']}/healthz", timeout=10)
    assert cache_health.status_code == 200


def test_metrics_are_refused_through_a_proxy_without_credentials(observed):
    response = requests.get(f"{observed['msr']}/metrics", headers={"X-Forwarded-For": "203.0.113.9"}, timeout=10)
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Basic")


@pytest.fixture(scope="module")
def broken(db_url, artifacts_dir):
    """An `msr serve` whose broker is a Redis port where nothing listens, and whose
    /metrics is open to 10.0.0.0/8 only (not to this test at 127.0.0.1)."""
    process, url = start_msr("serve", settings.DATA_DIR, db_url, artifacts_dir / "logs", workers=1, extra_env={
        "MSR_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0", "MSR_METRICS_ALLOW": "10.0.0.0/8"})
    yield url
    process.stop()


def test_readyz_names_the_broker_when_it_is_down(broken):
    assert requests.get(f"{broken}/healthz", timeout=10).status_code == 200  # alive all the same
    ready = requests.get(f"{broken}/readyz", timeout=30)
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "unavailable" and body["failing"] == ["broker"]
    assert body["checks"]["database"]["ok"] and body["checks"]["storage"]["ok"]
    assert not body["checks"]["broker"]["ok"]
    assert "error" not in body["checks"]["broker"]  # details only for MSR_METRICS_ALLOW


@pytest.mark.parametrize("who, status", [(None, 401), ("bob", 403), ("admin", 200)])
def test_metrics_outside_the_allowed_networks_take_a_system_admin(broken, personas, who, status):
    auth = (who, personas[who].token) if who else None
    response = requests.get(f"{broken}/metrics", auth=auth, timeout=30)
    assert response.status_code == status
    if status == 200:
        assert "msr_http_requests_total" in response.text


def test_job_outcomes_and_durations_come_from_the_job_table(observed, personas, unique):
    from django.utils import timezone

    from mirroring.models import Job

    msr = observed["msr"]
    name = f"acme/obs-jobs-{unique}"
    alice = Registry(msr, "alice", personas["alice"].token)
    assert alice.push_image(name, "1.0")[1].status_code == 201

    def api(method, path, **kwargs):
        return requests.request(method, f"{msr}/api/v0/{path}", auth=("alice", personas["alice"].token),
                                timeout=30, **kwargs)

    before = scrape(msr)
    policy = api("POST", f"repositories/{name}/promotionPolicies", json={
        "rules": [], "targetRepository": f"{name}-promoted", "tagTemplate": "%n"})
    assert policy.status_code == 201, policy.text
    job = api("POST", "jobs", json={"action": "promote", "policy": policy.json()["id"]})
    assert job.status_code == 202 and job.json()["status"] == "waiting"  # no worker runs here
    waiting = scrape(msr)
    assert (value(waiting, "msr_mirroring_jobs_active", action="promote", status="waiting")
            - value(before, "msr_mirroring_jobs_active", action="promote", status="waiting")) == 1

    assert api("POST", f"jobs/{job.json()['id']}/cancel").json()["status"] == "canceled"
    now = timezone.now()
    Job.objects.create(action=Job.PUSH_MIRROR, repository=name, status=Job.FAILED, error="remote said no",
                       started_at=now - timedelta(seconds=3), finished_at=now)
    after = scrape(msr)

    def moved(metric, **labels):
        return value(after, metric, **labels) - value(before, metric, **labels)

    assert moved("msr_mirroring_jobs_total", action="promote", status="canceled") == 1
    assert moved("msr_mirroring_jobs_active", action="promote", status="waiting") == 0
    assert moved("msr_mirroring_jobs_total", action="push_mirror", status="failed") == 1
    histogram = "msr_mirroring_job_duration_seconds"
    assert moved(f"{histogram}_count", action="push_mirror") == 1
    assert moved(f"{histogram}_bucket", action="push_mirror", le="1.0") == 0
    assert moved(f"{histogram}_bucket", action="push_mirror", le="5.0") == 1
    assert moved(f"{histogram}_sum", action="push_mirror") == pytest.approx(3, abs=0.01)
    assert api("DELETE", f"repositories/{name}/promotionPolicies/{policy.json()['id']}").status_code == 204


@pytest.mark.parametrize("route, template", [
    (r"^v2/?$", "/v2/"),
    (r"^v2/(?P<name>.+?)/manifests/(?P<reference>[^/]+)$", MANIFEST),
    (r"^v2/(?P<name>.+?)/blobs/uploads/?$", UPLOAD),
    (r"^v2/", "/v2/*"),
    ("api/v0/accounts/<str:name>/settings", "/api/v0/accounts/<name>/settings"),
    (r"api/v0/repositories/(?P<namespace>[^/]+)/(?P<repository>.+?)/tags/(?P<tag>[^/]+)$",
     "/api/v0/repositories/<namespace>/<repository>/tags/<tag>"),
    (r"^odd/(?P<x>[()]+(a|b))/\.json$", "/odd/<x>/.json"),
    ("", "/"),
])
def test_routes_are_labelled_by_their_pattern(route, template):
    assert route_template(route) == template


@pytest.mark.parametrize("guard", ["true", "false"])
def test_a_tls_probe_on_the_plain_port_is_no_warning(db_url, artifacts_dir, guard):
    """docker, podman, skopeo and containerd try https first on a plain-http registry: the
    ClientHello is refused and the client falls back, with nothing logged at WARNING (with
    the guarded worker and with gunicorn's own gthread worker)."""
    import socket

    process, url = start_msr("serve", settings.DATA_DIR, db_url, artifacts_dir / "logs", workers=1,
                             extra_env={"MSR_HTTP_GUARD": guard})
    try:
        port = int(url.rsplit(":", 1)[1])
        # A ClientHello whose random field holds a CRLF, as about one in ten do: gunicorn
        # then has a "request line" to call invalid.
        hello = (bytes.fromhex("160301003a0100003603036a") + b"\x17" * 14 + b"\r\n" + b"\x17" * 16
                 + bytes.fromhex("0000020035010000"))
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(hello)
                answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 400")  # an http answer: the client falls back
        assert requests.get(f"{url}/v2/", timeout=10).status_code == 401  # and its next try works
    finally:
        process.stop()
    log = process.log()
    assert "Invalid HTTP request line" not in log and "Invalid request from" not in log, log[-2000:]
