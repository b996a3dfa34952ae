"""`msr up`, the embedded default: SQLite and filesystem storage in a fresh data dir,
nothing else to install, whatever DATABASE_URL the test session itself uses."""

import json
import os
import pty
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import requests

from tests.images import make_image_layout
from tests.processes import MSR, free_port, need, run, start_msr, stop_all
from tests.fixtures.webhooks import Receiver


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def wait_for_record(read, message_start: str, timeout=90) -> dict:
    """The first JSON log record whose message starts with `message_start`, waiting for it."""
    deadline = time.monotonic() + timeout
    while True:
        records = [r for r in json_lines(read()) if r["message"].startswith(message_start)]
        if records:
            return records[0]
        assert time.monotonic() < deadline, f"no {message_start!r} record:\n{read()}"
        time.sleep(0.2)


def ready_cache_url(process) -> str:
    return wait_for_record(process.log, "MSR is ready")["cache_url"]


def test_msr_up_on_a_fresh_data_dir_serves_skopeo_and_keeps_data_across_restarts(tmp_path):
    need("skopeo")
    data_dir = tmp_path / "data"
    process, url = start_msr("up", data_dir, None, tmp_path / "logs")
    try:
        # Not at a terminal: the generated password is in the data dir, and the log says where.
        password = (data_dir / "admin-password").read_text().strip()
        assert f"kept in {data_dir / 'admin-password'}" in process.log()
        assert password not in process.log()
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
        local = ready_cache_url(process)
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
        assert "created the admin user" not in process.log()
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
        caches = [ready_cache_url(p) for p in (first, second)]
        assert first_url != second_url and caches[0] != caches[1]
        for url in [first_url, second_url]:
            assert requests.get(f"{url}/v2/").status_code == 401
        for cache in caches:
            assert requests.get(f"{cache}/healthz").status_code == 200
        assert first.popen.poll() is None and second.popen.poll() is None
    finally:
        stop_all(second, first)


def _up_env(data_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("DJANGO_") and k not in ("DATABASE_URL", "MSR_LOG_FORMAT")}
    env["MSR_DATA_DIR"] = str(data_dir)
    return env


def _stop(popen: subprocess.Popen) -> None:
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()


TEXT_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+ \S")


def test_msr_up_at_a_terminal_logs_text_and_then_shows_where_everything_is(tmp_path):
    """What a newcomer sees: lines of text (no JSON, no Celery banner, no root warning),
    then, once the web process, the cache node and the worker serve, the addresses and
    the admin's sign-in."""
    data_dir = tmp_path / "data"
    port, cache_port = free_port(), free_port()
    controller, terminal = pty.openpty()
    popen = subprocess.Popen([MSR, "up", "--bind", f"127.0.0.1:{port}", "--cache-bind", f"127.0.0.1:{cache_port}",
                              "--workers", "1"], stdin=terminal, stdout=terminal, stderr=terminal,
                             env=_up_env(data_dir), start_new_session=True)
    os.close(terminal)
    output = bytearray()

    def read(until: bytes | None, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (until is None or until not in output) and time.monotonic() < deadline:
            if select.select([controller], [], [], 0.2)[0]:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # every process holding the terminal is gone
                    return
                if not chunk:
                    return
                output.extend(chunk)
            elif until is not None and popen.poll() is not None:
                return

    try:
        read(b"Ctrl-C stops MSR.", timeout=120)
        text = output.decode(errors="replace").replace("\r\n", "\n")
        assert "Ctrl-C stops MSR." in text, text
        before, _, block = text.partition("\nMSR is ready.\n")
        # Everything before the block is a log line of text.
        assert before.strip() and all(TEXT_LOG_LINE.match(line) for line in before.splitlines() if line), before
        for noise in ("SecurityWarning", "superuser privileges", "[tasks]", "[queues]", ".> transport:", '{"time"'):
            assert noise not in text, noise
        # It comes once the children serve.
        assert re.search(r"celery\.apps\.worker \S+ ready\.", before), before
        assert f"Listening at: http://127.0.0.1:{port}" in before and f"Listening at: http://127.0.0.1:{cache_port}" in before
        password = (data_dir / "admin-password").read_text().strip()
        web = f"http://127.0.0.1:{port}"
        for line in (f"Registry    {web}    docker login 127.0.0.1:{port}", f"Web UI      {web}/",
                     f"API docs    {web}/api/v0/docs", f"Cache node  http://127.0.0.1:{cache_port}",
                     "Sign in as  admin", f"Password    {password}"):
            assert f"\n  {line}" in block, block
        # ... and they hold.
        assert requests.get(f"{web}/api/v0/accounts/admin/settings", auth=("admin", password)).status_code == 200
        assert requests.get(f"{web}/api/v0/docs").status_code == 200
        assert requests.get(f"{web}/").status_code == 200
        assert requests.get(f"http://127.0.0.1:{cache_port}/healthz").json()["name"] == "local"
    finally:
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
        read(None, timeout=40)  # drain the terminal while MSR stops, until the last child closes it
        _stop(popen)
        os.close(controller)
    assert popen.returncode == 0


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _group(pgid: int) -> list[int]:
    """The processes of a process group that run (zombies, which init reaps, do not)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # gone meanwhile
                continue
            state, _, group = stat.rpartition(")")[2].split()[:3]
            if int(group) == pgid and state != "Z":
                members.append(int(entry.name))
    return members


def test_msr_up_restarts_a_killed_worker_and_logs_json_when_not_at_a_terminal(tmp_path):
    data_dir = tmp_path / "data"
    port = free_port()
    stdout_path, stderr_path = tmp_path / "stdout", tmp_path / "stderr"
    with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
        popen = subprocess.Popen([MSR, "up", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
                                 stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                 env=_up_env(data_dir), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    read = stderr_path.read_text
    try:
        ready = wait_for_record(read, "MSR is ready")
        assert ready["registry_url"] == url and ready["admin_user"] == "admin"
        assert ready["admin_password_file"] == str(data_dir / "admin-password")
        password = (data_dir / "admin-password").read_text().strip()
        children = _children(popen.pid)
        [worker] = [pid for pid in children if " celery " in _cmdline(pid)]
        assert len(_group(worker)) > 1  # the worker and its beat process
        os.kill(worker, signal.SIGKILL)  # as the OOM killer would
        died = wait_for_record(read, f"worker (pid {worker}) exited")
        assert died["level"] == "ERROR" and "killed by SIGKILL" in died["message"] and "restarting" in died["message"]
        back = wait_for_record(read, "worker is back")
        assert back["pid"] != worker and back["pid"] in _children(popen.pid)
        assert _group(worker) == []  # its beat went with it: one scheduler, not two
        children.append(back["pid"])
        assert popen.poll() is None
        # The new worker runs tasks: a webhook's test delivery.
        receiver = Receiver(failures=0)
        hook = requests.post(f"{url}/api/v0/webhooks", auth=("admin", password), json={
            "type": "TAG_PUSH", "key": "admin", "endpoint": receiver.url})
        assert hook.status_code == 201, hook.text
        test = requests.post(f"{url}/api/v0/webhooks/{hook.json()['id']}/test", auth=("admin", password))
        assert test.status_code == 202, test.text
        receiver.wait_for(1, timeout=60)
        assert b'"test": true' in receiver.requests[0][1] or b'"test":true' in receiver.requests[0][1]
    finally:
        _stop(popen)
    assert popen.returncode == 0
    assert [_group(child) for child in children] == [[]] * len(children)  # nothing left running
    # One JSON object per line on stderr, the password never among them; no banner on stdout.
    lines = [line for line in read().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert password not in read()
    assert records[-1]["message"] != "" and "stopping MSR" in [r["message"] for r in records]
    printed = stdout_path.read_text()
    for noise in ("[tasks]", ".> transport:", "SecurityWarning", "superuser privileges"):
        assert noise not in printed and noise not in read(), noise
