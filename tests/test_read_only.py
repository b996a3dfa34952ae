"""Read-only mode (issue 17) against real processes: a deployment of its own (`msr serve`
and a Celery worker with beat, its own database and broker), so that no other test
module ever sees read-only mode. Real skopeo and podman, real Chromium."""

import hashlib
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.client import Registry
from tests.deployments import Deployment, wait_for
from tests.fixtures.ui import browser, check_accessibility_basics, password_sign_in, shot  # noqa: F401  (fixture)
from tests.images import make_image_layout
from tests.processes import MSR, Process, free_port, need, run

MESSAGE = "the registry is in read-only mode for maintenance"
# Broker database 7 of the run's redis-server (the other modules' are listed in conftest.py).
REDIS = os.environ.get("MSR_TEST_REDIS_URL", "redis://127.0.0.1:6379/11").rpartition("/")[0] + "/7"
CACHE_SECONDS = 0.5

SETUP = """
from accounts.services import add_team_member, create_team, create_user, set_team_access
from caches.models import ContentCache, UserCacheChoice
from msr.models import Repository
from accounts.models import Namespace
team = Namespace.objects.get(name="team")
Repository.objects.create(namespace=team, name="promoted")
edgy = create_user("edgy", "edgy-password")
readers = create_team(team, "readers"); add_team_member(readers, edgy); set_team_access(readers, team, "read-only")
edge = ContentCache.objects.create(name="edge", url="http://127.0.0.1:9")
UserCacheChoice.objects.create(user=edgy, cache=edge)
"""


@pytest.fixture(scope="module")
def deployment(db_url, tmp_path_factory):
    import redis

    redis.Redis.from_url(REDIS).flushdb()
    made = Deployment("readonly", tmp_path_factory.mktemp("readonly"), db_url, REDIS,
                      extra_env={"MSR_READ_ONLY_CACHE_SECONDS": str(CACHE_SECONDS),
                                 "MSR_READ_ONLY_JOB_WAIT_SECONDS": "1"})
    try:
        made.with_admin("team", setup=SETUP)
        made.start()
        yield made
    finally:
        made.stop()


def set_read_only(deployment: Deployment, value: bool) -> dict:
    response = deployment.api("PATCH", "meta/settings", json={"readOnly": value})
    assert response.status_code == 200, response.text
    time.sleep(2 * CACHE_SECONDS)  # every web process has seen it
    return response.json()


@contextmanager
def read_only(deployment: Deployment):
    set_read_only(deployment, True)
    try:
        yield
    finally:
        set_read_only(deployment, False)


def host(deployment: Deployment) -> str:
    return deployment.url.removeprefix("http://")


def skopeo(*args, check=True):
    need("skopeo")
    return run(["skopeo", *args], check=check)


def push(deployment: Deployment, layout: Path, reference: str, check=True):
    return skopeo("copy", "--dest-tls-verify=false", "--dest-creds", "admin:admin-password",
                  f"oci:{layout}:v1", f"docker://{host(deployment)}/{reference}", check=check)


def podman(tmp_path: Path, *args, check=True):
    need("podman")
    # podman refuses a run root longer than 50 characters; pytest's tmp paths are longer.
    runroot = Path(tempfile.gettempdir()) / f"msrro-{hashlib.sha1(str(tmp_path).encode()).hexdigest()[:12]}"
    return run(["podman", "--root", str(tmp_path / "podman"), "--runroot", str(runroot), "--storage-driver", "vfs",
                "--events-backend", "file", "--cgroup-manager", "cgroupfs", *args], check=check, timeout=600)


def test_pushes_are_refused_with_the_message_while_pulls_and_cache_redirects_work(deployment, tmp_path):
    layout = tmp_path / "layout"
    digest = make_image_layout(layout, layer_sizes=(50_000, 70_000))
    push(deployment, layout, "team/app:v1")
    admin = Registry(deployment.url, "admin", "admin-password")
    edgy = Registry(deployment.url, "edgy", "edgy-password")
    layer = next(iter(sorted((layout / "blobs/sha256").iterdir(), key=lambda p: -p.stat().st_size)))
    layer_digest = f"sha256:{layer.name}"
    with read_only(deployment):
        refused = push(deployment, layout, "team/app:v2", check=False)
        assert refused.returncode != 0 and MESSAGE in refused.stderr, refused.stderr

        # The protocol's answer to every write: 405 UNSUPPORTED in the OCI envelope.
        scope = "repository:team/app:pull,push"
        assert admin.granted("team/app", "pull", "push") == {"pull", "push"}  # refused at the write
        for method, path in (("POST", "/v2/team/app/blobs/uploads/"),
                             ("POST", f"/v2/team/app/blobs/uploads/?mount={digest}&from=team/app"),
                             ("PUT", "/v2/team/app/manifests/v3"), ("DELETE", f"/v2/team/app/manifests/{digest}"),
                             ("DELETE", f"/v2/team/app/blobs/{layer_digest}")):
            response = admin.request(method, path, scope=scope)
            assert response.status_code == 405, (method, path, response.text)
            assert response.json()["errors"][0]["code"] == "UNSUPPORTED"
            assert response.json()["errors"][0]["message"] == MESSAGE

        # Pulls, tags, catalog and the cache redirect go on.
        pulled = tmp_path / "pulled"
        skopeo("copy", "--src-tls-verify=false", "--src-creds", "admin:admin-password",
               f"docker://{host(deployment)}/team/app:v1", f"oci:{pulled}:v1")
        assert (pulled / "blobs/sha256" / digest.split(":")[1]).exists()
        assert admin.request("GET", "/v2/team/app/tags/list", scope="repository:team/app:pull").json()["tags"] == ["v1"]
        redirect = edgy.request("GET", f"/v2/team/app/blobs/{layer_digest}", scope="repository:team/app:pull")
        assert redirect.status_code == 307
        assert redirect.headers["Location"].startswith(f"http://127.0.0.1:9/v2/team/app/blobs/{layer_digest}?grant=")

        # podman: the pull works, the push prints the registry's message.
        auth = str(tmp_path / "auth.json")
        podman(tmp_path, "login", "--tls-verify=false", "--authfile", auth, "-u", "admin", "-p", "admin-password",
               host(deployment))
        podman(tmp_path, "pull", "--tls-verify=false", "--authfile", auth, f"{host(deployment)}/team/app:v1")
        podman(tmp_path, "tag", f"{host(deployment)}/team/app:v1", f"{host(deployment)}/team/other:v1")
        refused = podman(tmp_path, "push", "--tls-verify=false", "--authfile", auth,
                         f"{host(deployment)}/team/other:v1", check=False)
        assert refused.returncode != 0 and MESSAGE in refused.stderr, refused.stderr

    # Leaving read-only mode restores writes.
    push(deployment, layout, "team/app:v2")
    assert sorted(admin.request("GET", "/v2/team/app/tags/list", scope="repository:team/app:pull").json()["tags"]) \
        == ["v1", "v2"]


def test_api_writes_answer_json_503_and_only_admins_switch_it(deployment):
    with read_only(deployment):
        created = deployment.api("POST", "repositories/team", json={"name": "refused"})
        assert created.status_code == 503 and created.headers["Retry-After"]
        assert "read-only mode for maintenance" in created.json()["detail"]
        assert deployment.api("POST", "tokens", json={"name": "ci"}).status_code == 503
        assert deployment.api("GET", "repositories/team").status_code == 200
        state = deployment.api("GET", "meta/settings").json()
        assert state["readOnly"] and state["readOnlyRuntime"] and not state["readOnlyFromEnvironment"]
        assert state["readOnlyChangedBy"] == "admin"
        refused = deployment.api("PATCH", "meta/settings", auth=("edgy", "edgy-password"), json={"readOnly": False})
        assert refused.status_code == 403
    events = deployment.api("GET", "events?type=settings").json()["results"]
    assert [e["detail"]["readOnly"] for e in events[:2]] == [False, True]
    assert deployment.api("POST", "repositories/team", json={"name": "accepted"}).status_code == 201


def test_a_promotion_queued_during_read_only_waits_and_runs_when_it_ends(deployment, tmp_path):
    layout = tmp_path / "layout"
    digest = make_image_layout(layout, layer_sizes=(30_000,))
    push(deployment, layout, "team/source:v1")
    policy = deployment.api("POST", "repositories/team/source/promotionPolicies", json={
        "rules": [], "targetRepository": "team/promoted", "tagTemplate": "%n-promoted"})
    assert policy.status_code == 201, policy.text
    policy_id = policy.json()["id"]
    with read_only(deployment):
        queued = deployment.api("POST", "jobs", json={"action": "promote", "policy": policy_id, "tag": "v1"})
        assert queued.status_code == 202, queued.text
        job_id = queued.json()["id"]

        def job():
            return deployment.api("GET", f"jobs/{job_id}").json()

        wait_for(lambda: MESSAGE in job()["log"], what="the job to find read-only mode")
        time.sleep(3)  # several looks later: still waiting, not failed, no attempt spent
        waiting = job()
        assert waiting["status"] == "waiting" and waiting["attempts"] == 0, waiting
        assert waiting["log"].count(MESSAGE) == 1, waiting["log"]
    done = wait_for(lambda: job()["status"] == "done" and job(), what="the promotion after read-only mode")
    assert done["results"][0]["digest"] == digest
    tag = deployment.api("GET", "repositories/team/promoted/tags/v1-promoted").json()
    assert tag["digest"] == digest


def test_the_ui_shows_the_banner_refuses_forms_readably_and_the_console_switches_it(deployment, browser):
    context = browser.new_context(base_url=deployment.url, viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        password_sign_in(page, "admin", "admin-password")
        page.wait_for_url("**/repositories/")
        assert page.locator("#read-only-banner").count() == 0
        page.goto("/console/")
        page.get_by_role("button", name="Enter read-only mode").click()
        page.wait_for_url("**/console/")
        time.sleep(2 * CACHE_SECONDS)
        page.goto("/repositories/")
        banner = page.locator("#read-only-banner")
        assert "read-only mode for maintenance" in banner.inner_text()
        shot(page, "read-only-banner")
        check_accessibility_basics(page)

        page.goto("/tokens/")
        page.get_by_label("Token name").fill("refused")
        page.get_by_role("button", name="Create token").click()
        assert page.get_by_role("heading", name="Not saved: read-only mode").is_visible()

        # Signing in keeps working.
        other = context.browser.new_context(base_url=deployment.url)
        try:
            fresh = other.new_page()
            password_sign_in(fresh, "edgy", "edgy-password")
            fresh.wait_for_url("**/repositories/")
            assert fresh.locator("#read-only-banner").is_visible()
        finally:
            other.close()

        page.goto("/console/")
        page.get_by_role("button", name="Leave read-only mode").click()
        page.wait_for_url("**/console/")
        time.sleep(2 * CACHE_SECONDS)
        page.goto("/repositories/")
        assert page.locator("#read-only-banner").count() == 0
    finally:
        context.close()
        if deployment.api("GET", "meta/settings").json()["readOnly"]:
            set_read_only(deployment, False)


def test_msr_read_only_in_the_environment_cannot_be_switched_off_by_the_api(deployment):
    port = free_port()
    env = {**deployment.env, "MSR_READ_ONLY": "true"}
    web = Process([MSR, "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1"], env,
                  deployment.logs / f"web-env-{port}.log")
    try:
        url = f"http://127.0.0.1:{port}"
        web.wait_http(f"{url}/v2/")
        switched = requests.patch(f"{url}/api/v0/meta/settings", json={"readOnly": False},
                                  auth=("admin", "admin-password"), timeout=30)
        assert switched.status_code == 409 and "MSR_READ_ONLY" in switched.json()["detail"], switched.text
        state = requests.get(f"{url}/api/v0/meta/settings", auth=("admin", "admin-password"), timeout=30).json()
        assert state["readOnly"] and state["readOnlyFromEnvironment"] and not state["readOnlyRuntime"]
        upload = Registry(url, "admin", "admin-password").request(
            "POST", "/v2/team/app/blobs/uploads/", scope="repository:team/app:pull,push")
        assert upload.status_code == 405 and upload.json()["errors"][0]["message"] == MESSAGE
        # The deployment's other web process, without the variable, still takes writes.
        assert deployment.api("POST", "repositories/team", json={"name": "still-writable"}).status_code == 201
    finally:
        web.stop()
