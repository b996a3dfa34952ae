#!/usr/bin/env python3
"""Slow clients and the cost of guarding against them: MSR's gunicorn worker
(caches/httpserver.py) beside gunicorn's plain gthread worker (MSR_HTTP_GUARD=false), in
one run, on one data dir and SQLite database, rounds alternating A B A B.

Per server:
  manifest GET req/s   wrk, 16 connections, bearer token (what the guard costs per request)
  blob GET MiB/s       curl of a 200 MiB layer, one at a time (sendfile in both)
  under attack         60 slowloris connections (a header line a second, never ending) and
                       16 uploads that trickle a byte a second, while a client asks /healthz
                       every 0.25 s with a 5 s timeout: answered / asked, and p50 / max time

Usage: bench/slow_clients.py [--rounds 2] [--workers 1] [--threads 8] [--attack-seconds 20]
Needs: wrk, curl; MSR installed in ../.venv (or --msr-bin).
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, process, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{url}: the server exited")
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.2)
    sys.exit(f"{url} did not answer")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Server:
    def __init__(self, label, msr_bin, env, workers, threads, logs):
        self.label = label
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(logs / f"{label}.log", "wb")
        self.process = subprocess.Popen(
            [msr_bin, "serve", "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers),
             "--threads", str(threads)], env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        wait_http(f"{self.url}/v2/", self.process)

    def token(self, creds, scope):
        response = requests.get(f"{self.url}/auth/token", params={"service": "msr", "scope": scope},
                                auth=creds, timeout=30)
        return response.json()["token"]

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
        self.log.close()


def push_blob(server, creds, name, data):
    token = server.token(creds, f"repository:{name}:pull,push")
    response = requests.post(f"{server.url}/v2/{name}/blobs/uploads/?digest={sha256(data)}", data=data,
                             headers={"Authorization": f"Bearer {token}"}, timeout=300)
    assert response.status_code == 201, response.text


def push_image(server, creds, name):
    config, layer = b'{"architecture":"amd64","os":"linux"}', b"tiny layer"
    for blob in (config, layer):
        push_blob(server, creds, name, blob)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(layer),
                    "size": len(layer)}]}).encode()
    token = server.token(creds, f"repository:{name}:pull,push")
    response = requests.put(f"{server.url}/v2/{name}/manifests/v1", data=manifest, timeout=30, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert response.status_code == 201, response.text


def manifest_rate(server, creds, name, seconds=8) -> float:
    token = server.token(creds, f"repository:{name}:pull")
    out = subprocess.run(["wrk", "-t2", "-c16", f"-d{seconds}s", "-H", f"Authorization: Bearer {token}",
                          "-H", "Accept: application/vnd.oci.image.manifest.v1+json",
                          f"{server.url}/v2/{name}/manifests/v1"], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        sys.exit(f"wrk got errors from {server.label}:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def blob_rate(server, creds, name, digest, size) -> float:
    token = server.token(creds, f"repository:{name}:pull")
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{speed_download} %{size_download}",
                          "-H", f"Authorization: Bearer {token}", f"{server.url}/v2/{name}/blobs/{digest}"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert int(float(out[1])) == size, out
    return float(out[0]) / 1048576


def under_attack(server, creds, name, seconds) -> tuple[int, int, float, float]:
    sockets, stop = [], threading.Event()
    token = server.token(creds, f"repository:{name}:pull,push")
    # The uploads are started first: once the slowloris connections are in, a server
    # whose threads they hold would not answer these either.
    locations = [requests.post(f"{server.url}/v2/{name}/blobs/uploads/", timeout=30,
                               headers={"Authorization": f"Bearer {token}"}).headers["Location"]
                 for _ in range(16)]
    for _ in range(60):
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        sockets.append(s)
    for location in locations:
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall((f"PATCH {location} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                   "Content-Length: 10000000\r\n\r\n").encode())
        sockets.append(s)

    def drip():  # a header line for the slowloris, 8 body bytes for the uploads
        while not stop.wait(1):
            for s in sockets:
                try:
                    s.sendall(b"X-A: b\r\n")
                except OSError:
                    pass

    threading.Thread(target=drip, daemon=True).start()
    time.sleep(1)
    asked, answered, times = 0, 0, []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        asked += 1
        started = time.monotonic()
        try:
            if requests.get(f"{server.url}/healthz", timeout=5).status_code == 200:
                answered += 1
        except requests.RequestException:
            pass
        times.append(time.monotonic() - started)
        time.sleep(0.25)
    stop.set()
    for s in sockets:
        s.close()
    return answered, asked, statistics.median(times), max(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--attack-seconds", type=int, default=20)
    parser.add_argument("--msr-bin", default=str(ROOT / ".venv" / "bin" / "msr"))
    args = parser.parse_args()
    for tool in ("wrk", "curl"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (Debian: apt-get install -y {tool})")
    scratch = Path(tempfile.mkdtemp(prefix="msr-bench-slow-"))
    password = "bench-" + os.urandom(12).hex()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MSR_", "DATABASE_URL", "DJANGO_"))}
    env.update(MSR_DATA_DIR=str(scratch / "data"), MSR_LOG_LEVEL="WARNING")
    subprocess.run([args.msr_bin, "manage", "migrate", "-v", "0"], env=env, check=True)
    subprocess.run([args.msr_bin, "manage", "adduser", "admin", "--admin", "--password", password], env=env,
                   check=True, stdout=subprocess.DEVNULL)
    creds = ("admin", password)
    servers = {"guarded": Server("guarded", args.msr_bin, {**env, "MSR_HTTP_GUARD": "true"}, args.workers,
                                 args.threads, scratch),
               "gthread": Server("gthread", args.msr_bin, {**env, "MSR_HTTP_GUARD": "false"}, args.workers,
                                 args.threads, scratch)}
    try:
        blob = os.urandom(1 << 20) * 200
        digest = sha256(blob)
        push_image(servers["guarded"], creds, "admin/bench")
        push_blob(servers["guarded"], creds, "admin/bench", blob)
        results = {label: {"manifest": [], "blob": [], "attack": []} for label in servers}
        for round_ in range(args.rounds):
            for label in (("guarded", "gthread") if round_ % 2 == 0 else ("gthread", "guarded")):
                server = servers[label]
                results[label]["manifest"].append(manifest_rate(server, creds, "admin/bench"))
                results[label]["blob"].append(statistics.median(
                    blob_rate(server, creds, "admin/bench", digest, len(blob)) for _ in range(3)))
                results[label]["attack"].append(under_attack(server, creds, "admin/bench", args.attack_seconds))
                print(f"round {round_ + 1} {label}: {results[label]['manifest'][-1]:.0f} req/s, "
                      f"{results[label]['blob'][-1]:.0f} MiB/s, healthz under attack "
                      f"{results[label]['attack'][-1][0]}/{results[label]['attack'][-1][1]}", file=sys.stderr)
        print(f"{args.workers} worker(s) x {args.threads} threads, SQLite, {args.rounds} rounds (medians)")
        print("| | MSR worker (guarded) | gunicorn gthread |")
        print("|---|---:|---:|")
        row = {label: results[label] for label in servers}
        print("| manifest GET req/s, 16 connections | " + " | ".join(
            f"{statistics.median(row[label]['manifest']):.0f}" for label in servers) + " |")
        print("| blob GET MiB/s, 200 MiB, 1 client | " + " | ".join(
            f"{statistics.median(row[label]['blob']):.0f}" for label in servers) + " |")
        for label in servers:
            attacks = row[label]["attack"]
            row[label]["attack_text"] = (f"{sum(a[0] for a in attacks)}/{sum(a[1] for a in attacks)} answered, "
                                         f"p50 {statistics.median(a[2] for a in attacks) * 1000:.0f} ms, "
                                         f"max {max(a[3] for a in attacks) * 1000:.0f} ms")
        print("| /healthz under 60 slowloris + 16 trickling uploads | " + " | ".join(
            row[label]["attack_text"] for label in servers) + " |")
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
