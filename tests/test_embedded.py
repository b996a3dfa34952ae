"""`msr up`, the embedded default: SQLite and filesystem storage in a fresh data dir,
nothing else to install, whatever DATABASE_URL the test session itself uses."""

import re
import time

import requests

from tests.images import make_image_layout
from tests.processes import need, run, start_msr
from tests.test_webhooks import Receiver


def test_msr_up_on_a_fresh_data_dir_serves_skopeo_and_keeps_data_across_restarts(tmp_path):
    need("skopeo")
    data_dir = tmp_path / "data"
    process, url = start_msr("up", data_dir, None, tmp_path / "logs")
    try:
        match = re.search(r"Created the admin user 'admin' with password: (\S+)", process.log())
        assert match, process.log()
        password = match.group(1)
        assert (data_dir / "msr.sqlite3").exists()
        host = url.removeprefix("http://")
        source = tmp_path / "image"
        digest = make_image_layout(source, layer_sizes=(100_000, 200_000))
        # The embedded worker delivers webhooks through the filesystem broker.
        receiver = Receiver(failures=0)
        hook = requests.post(f"{url}/api/v0/webhooks", auth=("admin", password), json={
            "type": "TAG_PUSH", "key": "admin", "endpoint": receiver.url})
        assert hook.status_code == 201, hook.text
        run(["skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", f"admin:{password}",
             f"oci:{source}:v1", f"docker://{host}/admin/embedded:v1"])
        receiver.wait_for(1, timeout=30)
        time.sleep(0.3)
        assert [body for _, body in receiver.requests if b'"tag":"v1"' in body]
        assert process.popen.poll() is None
        # The local cache node runs and is registered; choosing it sends pulls through it.
        local = re.search(r"local cache on (http://\S+)", process.log()).group(1)
        assert requests.get(f"{local}/healthz").json()["name"] == "local"
        settings_url = f"{url}/api/v0/accounts/admin/settings"
        assert requests.patch(settings_url, auth=("admin", password),
                              json={"defaultContentCache": "local"}).status_code == 200
        run(["skopeo", "copy", "--src-tls-verify=false", "--src-creds", f"admin:{password}",
             f"docker://{host}/admin/embedded:v1", f"oci:{tmp_path / 'via-local'}:v1"])
        assert requests.get(f"{local}/stats").json()["upstream_fetches"] == 3  # config + 2 layers
    finally:
        process.stop()

    process, url = start_msr("up", data_dir, None, tmp_path / "logs")
    try:
        assert "Created the admin user" not in process.log()
        host = url.removeprefix("http://")
        inspected = run(["skopeo", "inspect", "--tls-verify=false", "--creds", f"admin:{password}",
                         f"docker://{host}/admin/embedded:v1"]).stdout
        assert digest in inspected
        back = tmp_path / "back"
        run(["skopeo", "copy", "--src-tls-verify=false", "--src-creds", f"admin:{password}",
             f"docker://{host}/admin/embedded:v1", f"oci:{back}:v1"])
        assert sorted(p.name for p in (back / "blobs/sha256").iterdir()) == \
            sorted(p.name for p in (source / "blobs/sha256").iterdir())
    finally:
        process.stop()


def test_two_msr_up_side_by_side_do_not_collide(tmp_path):
    first, first_url = start_msr("up", tmp_path / "one", None, tmp_path / "logs")
    second, second_url = start_msr("up", tmp_path / "two", None, tmp_path / "logs")
    try:
        caches = [re.search(r"local cache on (http://\S+)", p.log()).group(1) for p in (first, second)]
        assert first_url != second_url and caches[0] != caches[1]
        for url in [first_url, second_url]:
            assert requests.get(f"{url}/v2/").status_code == 401
        for cache in caches:
            assert requests.get(f"{cache}/healthz").status_code == 200
        assert first.popen.poll() is None and second.popen.poll() is None
    finally:
        second.stop()
        first.stop()
