#!/usr/bin/env python3
"""Far users and regional caches: MSR's cache node beside Distribution as a pull-through
cache, on the same simulated WAN links (standard library only; needs msr, skopeo,
docker-registry, nginx, curl).

    bench/geo.py [--layers 5] [--layer-mb 40] [--delay-ms 100] [--bw 6M] [--rounds 1]

Topology, for each registry: user → central through link A (latency_proxy.py: one-way
--delay-ms, --bw shared), cache → central through link B (same), user → cache local.
Pull times (skopeo copy docker://… dir:…, a new image for every cold and pre-warmed
case so nothing is reused): direct from central over A, through the cache cold, warm,
and pre-warmed (MSR only: Distribution cannot pre-warm). MSR's user logs in to and pulls
from MSR over A; MSR answers layer requests with redirects to the user's cache.
Then blob throughput of the cache node (a 200 MiB layer, 1 and 8 concurrent curl
clients) against nginx serving the same file with sendfile.
"""

import argparse
import atexit
import base64
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROCS: list[subprocess.Popen] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv, log: Path, env=None) -> subprocess.Popen:
    process = subprocess.Popen(argv, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)
    PROCS.append(process)
    return process


def stop_all():
    for process in reversed(PROCS):
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.time() + 15
    for process in PROCS:
        try:
            process.wait(timeout=max(deadline - time.time(), 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def wait_http(url, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"{url} did not answer")


def api(method, url, creds, body=None):
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None)
    request.add_header("Authorization", "Basic " + base64.b64encode(creds.encode()).decode())
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        raw = response.read()
        return json.loads(raw) if raw else None


def run(argv):
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=1800)


def timed(argv) -> float:
    started = time.monotonic()
    run(argv)
    return time.monotonic() - started


class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="msr-geo-"))
        if not args.keep:
            atexit.register(shutil.rmtree, self.tmp, True)
        atexit.register(stop_all)
        self.image_count = 0

    def link(self, target_port: int, name: str) -> int:
        port = free_port()
        start([sys.executable, str(HERE / "latency_proxy.py"), "--listen", f"127.0.0.1:{port}",
               "--target", f"127.0.0.1:{target_port}", "--delay-ms", str(self.args.delay_ms),
               "--shared-bw", self.args.bw], self.tmp / f"link-{name}.log")
        deadline = time.time() + 20
        while True:  # listening before anyone depends on it (docker-registry's proxy exits otherwise)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return port
            except OSError:
                if time.time() > deadline:
                    sys.exit(f"the latency proxy on {port} did not start")
                time.sleep(0.1)

    def image(self, layers=None, layer_mb=None) -> Path:
        self.image_count += 1
        out = self.tmp / f"image{self.image_count}"
        run([sys.executable, str(HERE / "mkimage.py"), "--layers", str(layers or self.args.layers),
             "--size-mb", str(layer_mb or self.args.layer_mb), "--out", str(out), "--tag", "v1",
             "--gzip-level", "0"])
        return out

    def pull(self, reference: str, creds: str | None) -> float:
        target = self.tmp / f"pull-{secrets.token_hex(4)}"
        argv = ["skopeo", "copy", "--src-tls-verify=false", f"docker://{reference}", f"dir:{target}"]
        if creds:
            argv[2:2] = ["--src-creds", creds]
        seconds = timed(argv)
        shutil.rmtree(target, ignore_errors=True)
        return seconds

    # -- MSR ------------------------------------------------------------------------------

    def msr(self) -> dict:
        data, port, pw = self.tmp / "msr", free_port(), "bench-" + secrets.token_hex(8)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MSR_", "DATABASE_URL"))}
        env.update(MSR_DATA_DIR=str(data), MSR_CACHE_GRANT_TTL="3600")
        msr = self.args.msr_bin
        subprocess.run([msr, "manage", "migrate", "-v", "0"], env=env, check=True)
        subprocess.run([msr, "manage", "adduser", "admin", "--admin", "--password", pw], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        start([msr, "serve", "--bind", f"127.0.0.1:{port}"], self.tmp / "msr.log", env)
        start([msr, "worker", "--pool", "threads", "--concurrency", "4"], self.tmp / "worker.log", env)
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/v2/")
        link_a, link_b = self.link(port, "msr-user"), self.link(port, "msr-cache")
        cache_port = free_port()
        cache_env = {k: v for k, v in os.environ.items() if not k.startswith(("MSR_", "DATABASE_URL"))}
        start([msr, "cache", "--name", "asia", "--msr", f"http://127.0.0.1:{link_b}",
               "--upstream", f"http://127.0.0.1:{link_b}", "--data", str(self.tmp / "cache"),
               "--bind", f"127.0.0.1:{cache_port}"], self.tmp / "cache.log", cache_env)
        cache_url = f"http://127.0.0.1:{cache_port}"
        wait_http(f"{cache_url}/healthz")
        admin = f"admin:{pw}"
        cache_id = api("POST", f"{url}/api/v0/content_caches", admin, {"name": "asia", "url": cache_url})["id"]
        api("POST", f"{url}/api/v0/accounts", admin, {"name": "far", "password": "far-password-123"})
        api("POST", f"{url}/api/v0/accounts", admin, {"name": "near", "password": "near-password-123"})
        api("PATCH", f"{url}/api/v0/accounts/near/settings", admin, {"defaultContentCache": "asia"})
        return {"url": url, "port": port, "admin": admin, "link_a": link_a, "cache_url": cache_url,
                "cache_id": cache_id, "data": data}

    def msr_push(self, m, name: str, image: Path) -> None:
        run(["skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", m["admin"], f"oci:{image}:v1",
             f"docker://127.0.0.1:{m['port']}/admin/{name}:v1"])
        api("PATCH", f"{m['url']}/api/v0/repositories/admin/{name}", m["admin"], {"visibility": "public"})

    def cache_stats(self, m) -> dict:
        with urllib.request.urlopen(f"{m['cache_url']}/stats", timeout=10) as response:
            return json.loads(response.read())

    def msr_pulls(self, m, round_no: int) -> dict:
        far, near = "far:far-password-123", "near:near-password-123"
        wan = f"127.0.0.1:{m['link_a']}"
        results = {}
        self.msr_push(m, f"direct{round_no}", self.image())
        results["direct"] = self.pull(f"{wan}/admin/direct{round_no}:v1", far)
        self.msr_push(m, f"cold{round_no}", self.image())
        before = self.cache_stats(m)["upstream_fetches"]
        results["cold"] = self.pull(f"{wan}/admin/cold{round_no}:v1", near)
        fetched = self.cache_stats(m)["upstream_fetches"] - before
        assert fetched == self.args.layers + 1, f"the cold pull fetched {fetched} blobs through the cache"
        results["warm"] = self.pull(f"{wan}/admin/cold{round_no}:v1", near)
        self.msr_push(m, f"warmed{round_no}", self.image())
        before = self.cache_stats(m)["upstream_fetches"]
        api("POST", f"{m['url']}/api/v0/content_caches/{m['cache_id']}/prewarm", m["admin"],
            {"repository": f"admin/warmed{round_no}", "tag": "v1"})
        deadline = time.time() + 600
        while self.cache_stats(m)["upstream_fetches"] - before < self.args.layers + 1:
            assert time.time() < deadline, "pre-warming did not finish"
            time.sleep(0.5)
        results["prewarmed"] = self.pull(f"{wan}/admin/warmed{round_no}:v1", near)
        return results

    # -- Distribution ---------------------------------------------------------------------

    def registry(self, name: str, remote: str | None = None) -> int:
        port, root = free_port(), self.tmp / name
        root.mkdir()
        config = root / "config.yml"
        config.write_text(
            f"version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n"
            f"  filesystem:\n    rootdirectory: {root}\n  cache:\n    blobdescriptor: inmemory\n"
            f"http:\n  addr: 127.0.0.1:{port}\n" + (f"proxy:\n  remoteurl: {remote}\n" if remote else ""))
        start(["docker-registry", "serve", str(config)], self.tmp / f"{name}.log")
        wait_http(f"http://127.0.0.1:{port}/v2/")
        return port

    def distribution_pulls(self, round_no: int) -> dict:
        central = self.registry(f"central{round_no}")
        link_a, link_b = self.link(central, f"dist-user{round_no}"), self.link(central, f"dist-cache{round_no}")
        cache = self.registry(f"proxy{round_no}", f"http://127.0.0.1:{link_b}")
        results = {}
        for case in ("direct", "cold"):
            run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{self.image()}:v1",
                 f"docker://127.0.0.1:{central}/admin/{case}:v1"])
        results["direct"] = self.pull(f"127.0.0.1:{link_a}/admin/direct:v1", None)
        results["cold"] = self.pull(f"127.0.0.1:{cache}/admin/cold:v1", None)
        results["warm"] = self.pull(f"127.0.0.1:{cache}/admin/cold:v1", None)
        return results

    # -- blob throughput ------------------------------------------------------------------

    def throughput(self, m) -> dict:
        image = self.image(layers=1, layer_mb=200)
        self.msr_push(m, "blob", image)
        manifest = json.loads((image / "blobs/sha256" / json.loads((image / "index.json").read_text())
                               ["manifests"][0]["digest"].split(":")[1]).read_text())
        digest, size = manifest["layers"][0]["digest"], manifest["layers"][0]["size"]
        request = urllib.request.Request(
            f"{m['url']}/auth/token?service=msr&scope=repository:admin/blob:pull")
        request.add_header("Authorization", "Basic " + base64.b64encode(b"near:near-password-123").decode())
        token = json.loads(urllib.request.urlopen(request).read())["token"]
        location = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{redirect_url}", "-H", f"Authorization: Bearer {token}",
             f"{m['url']}/v2/admin/blob/blobs/{digest}"], capture_output=True, text=True, check=True).stdout
        assert location.startswith(m["cache_url"]), location
        run(["curl", "-sf", "-o", "/dev/null", location])  # warm the cache
        nginx_root = self.tmp / "nginx"
        (nginx_root / "logs").mkdir(parents=True)
        os.chmod(self.tmp, 0o755)  # nginx's workers run as nobody when started by root
        shutil.copy(image / "blobs/sha256" / digest.split(":")[1], nginx_root / "blob")
        nginx_port = free_port()
        (nginx_root / "nginx.conf").write_text(
            f"worker_processes 2; pid {nginx_root}/nginx.pid; error_log {nginx_root}/logs/error.log;\n"
            f"events {{ worker_connections 256; }}\nhttp {{ access_log off; sendfile on; tcp_nopush on;\n"
            f"client_body_temp_path {nginx_root}/tmp; proxy_temp_path {nginx_root}/tmp;\n"
            f"fastcgi_temp_path {nginx_root}/tmp; uwsgi_temp_path {nginx_root}/tmp; scgi_temp_path {nginx_root}/tmp;\n"
            f"server {{ listen 127.0.0.1:{nginx_port}; root {nginx_root}; }} }}\n")
        (nginx_root / "tmp").mkdir()
        start(["nginx", "-p", str(nginx_root), "-c", str(nginx_root / "nginx.conf"), "-g", "daemon off;"],
              self.tmp / "nginx.log")
        wait_http(f"http://127.0.0.1:{nginx_port}/blob")
        results = {}
        for label, url in (("nginx", f"http://127.0.0.1:{nginx_port}/blob"), ("cache", location)):
            for clients in (1, 8):
                rates = [self._rate(url, clients, size) for _ in range(self.args.throughput_rounds)]
                results[(label, clients)] = statistics.median(rates)
        return results

    @staticmethod
    def _rate(url, clients, size, reps=2) -> float:
        script = f'for i in $(seq {reps}); do curl -sf -o /dev/null "$0" || exit 1; done'
        started = time.monotonic()
        procs = [subprocess.Popen(["bash", "-c", script, url]) for _ in range(clients)]
        assert all(p.wait() == 0 for p in procs), "a download failed"
        return clients * reps * size / (time.monotonic() - started) / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--layer-mb", type=float, default=40)
    parser.add_argument("--delay-ms", type=int, default=100, help="one way: 100 = 200 ms round trip")
    parser.add_argument("--bw", default="6M", help="shared bandwidth per link direction (6M ≈ 50 Mbit/s)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--throughput-rounds", type=int, default=5)
    parser.add_argument("--skip-distribution", action="store_true")
    parser.add_argument("--msr-bin", default=str(HERE.parent / ".venv/bin/msr")
                        if (HERE.parent / ".venv/bin/msr").exists() else "msr")
    parser.add_argument("--keep", action="store_true", help="keep the scratch dir")
    args = parser.parse_args()
    bench = Bench(args)
    m = bench.msr()
    msr_rounds = [bench.msr_pulls(m, i) for i in range(args.rounds)]
    dist_rounds = [] if args.skip_distribution else [bench.distribution_pulls(i) for i in range(args.rounds)]
    rates = bench.throughput(m)

    def med(rounds, key):
        values = [r[key] for r in rounds if key in r]
        return statistics.median(values) if values else None

    size = args.layers * args.layer_mb
    print(f"## geo: {args.layers} x {args.layer_mb:g} MiB image ({size:g} MiB), links {2 * args.delay_ms} ms RTT, "
          f"{args.bw}/s shared per direction, median of {args.rounds} round(s)\n")
    print("| registry | direct (far) s | cache cold s | cache warm s | cache pre-warmed s | far/warm |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, rounds in (("MSR + msr cache", msr_rounds), ("Distribution + pull-through cache", dist_rounds)):
        if not rounds:
            continue
        cells = [med(rounds, k) for k in ("direct", "cold", "warm", "prewarmed")]
        ratio = f"{cells[0] / cells[2]:.1f}x" if cells[2] else "—"
        print(f"| {label} | " + " | ".join(f"{c:.2f}" if c is not None else "n/a" for c in cells) + f" | {ratio} |")
    print("\n## cache node blob throughput: one 200 MiB layer, MiB/s (ratio to nginx)\n")
    print("| server | 1 client | 8 clients |")
    print("|---|---:|---:|")
    for label in ("nginx", "cache"):
        cells = []
        for clients in (1, 8):
            value = rates[(label, clients)]
            ratio = "" if label == "nginx" else f" ({value / rates[('nginx', clients)]:.2f}x)"
            cells.append(f"{value:.0f}{ratio}")
        name = "nginx (static, sendfile)" if label == "nginx" else "msr cache (hit, grant in URL)"
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
