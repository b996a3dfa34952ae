"""Run by scripts/check-clean-install with the Python of a fresh virtual environment that
holds `pip install .` and nothing else (no test extras): the production broker path works.

`msr manage migrate`, then `msr serve` and `msr worker` on Redis; /readyz must be 200 (its
broker check loads Kombu's Redis transport, as the worker does); a user pushes an image and
the webhook it subscribed arrives at a receiver on 127.0.0.1, delivered by the worker.

Settings: CHECK_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/msr_clean_install,
dropped and created here), CHECK_REDIS_URL (default redis://127.0.0.1:6379/9, flushed).
"""

import hashlib
import importlib.util
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import requests

WORK = Path(sys.argv[1])
BIN = Path(sys.executable).parent
DATABASE_URL = os.environ.get("CHECK_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/msr_clean_install")
REDIS_URL = os.environ.get("CHECK_REDIS_URL", "redis://127.0.0.1:6379/9")


def say(message: str) -> None:
    print(f"clean install: {message}", flush=True)


def fail(message: str, *logs: Path) -> None:
    for log in logs:
        if log.exists():
            print(f"--- {log.name} (last 60 lines)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-60:]))
    say(f"FAILED: {message}")
    sys.exit(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_database() -> None:
    import psycopg2

    parts = urlsplit(DATABASE_URL)
    name = parts.path.lstrip("/")
    admin = psycopg2.connect(host=parts.hostname, port=parts.port or 5432, user=parts.username,
                             password=parts.password, dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cursor.execute(f'CREATE DATABASE "{name}"')
    admin.close()


class Receiver:
    def __init__(self):
        self.bodies: list[bytes] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                receiver.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def push_image(url: str, auth: tuple[str, str], name: str, tag: str) -> str:
    token = requests.get(f"{url}/auth/token", params={"service": "msr", "scope": f"repository:{name}:pull,push"},
                         auth=auth, timeout=30).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    layer = secrets.token_bytes(2048)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    for blob in (layer, config):
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        response = requests.post(f"{url}/v2/{name}/blobs/uploads/?digest={digest}", data=blob, headers=headers,
                                 timeout=30)
        assert response.status_code == 201, response.text
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": len(config),
                   "digest": "sha256:" + hashlib.sha256(config).hexdigest()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "size": len(layer),
                    "digest": "sha256:" + hashlib.sha256(layer).hexdigest()}],
    }).encode()
    response = requests.put(f"{url}/v2/{name}/manifests/{tag}", data=manifest, timeout=30,
                            headers={**headers, "Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert response.status_code == 201, response.text
    return response.headers["Docker-Content-Digest"]


def main() -> None:
    if importlib.util.find_spec("pytest") is not None:
        fail("pytest is importable: this check needs an environment without the test extras")
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    fresh_database()
    password = secrets.token_urlsafe(18)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "MSR_"))},
           "MSR_DATA_DIR": str(WORK / "data"), "DATABASE_URL": DATABASE_URL, "MSR_BROKER_URL": REDIS_URL,
           "MSR_OUTBOUND_ALLOW": "127.0.0.1/32", "MSR_NEW_USER_PASSWORD": password}
    msr = str(BIN / "msr")
    for argv in ([msr, "manage", "migrate", "--no-input"], [msr, "manage", "adduser", "ci-user"]):
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        if result.returncode:
            fail(f"{' '.join(argv[1:])} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    web_log, worker_log = WORK / "web.log", WORK / "worker.log"
    with open(web_log, "wb") as web_out, open(worker_log, "wb") as worker_out:
        web = subprocess.Popen([msr, "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1"], env=env,
                               stdout=web_out, stderr=subprocess.STDOUT)
        worker = subprocess.Popen([msr, "worker", "--concurrency", "1"], env=env, stdout=worker_out,
                                  stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 90
            while True:
                for name, process, log in (("msr serve", web, web_log), ("msr worker", worker, worker_log)):
                    if process.poll() is not None:
                        fail(f"{name} exited {process.returncode}", log)
                try:
                    ready = requests.get(f"{url}/readyz", timeout=10)
                    if ready.status_code == 200 and b" ready." in worker_log.read_bytes():
                        break
                except requests.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    fail("not ready in 90 s", web_log, worker_log)
                time.sleep(0.3)
            say("msr serve is ready (database, Redis broker through Kombu's transport, storage)")
            receiver = Receiver()
            auth = ("ci-user", password)
            push_image(url, auth, "ci-user/app", "v0")  # the repository exists before the subscription
            hook = requests.post(f"{url}/api/v0/webhooks", auth=auth, timeout=30, json={
                "type": "TAG_PUSH", "key": "ci-user/app", "endpoint": receiver.url})
            if hook.status_code != 201:
                fail(f"creating the webhook answered {hook.status_code}: {hook.text}", web_log)
            digest = push_image(url, auth, "ci-user/app", "v1")
            deadline = time.monotonic() + 60
            while not receiver.bodies and time.monotonic() < deadline:
                time.sleep(0.2)
            if not receiver.bodies:
                fail("the webhook was not delivered in 60 s", web_log, worker_log)
            event = json.loads(receiver.bodies[0])
            if event["type"] != "TAG_PUSH" or event["contents"]["digest"] != digest:
                fail(f"unexpected delivery: {event}")
            say(f"webhook for ci-user/app:v1 ({digest[:19]}…) delivered by msr worker on Redis: ok")
        finally:
            for process in (web, worker):
                process.terminate()
            for process in (web, worker):
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()


if __name__ == "__main__":
    main()
