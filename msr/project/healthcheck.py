"""`msr healthcheck`: the container image's HEALTHCHECK, for whatever role it runs.

It finds the MSR process of its container (PID 1, or the first MSR process when an init
such as `docker run --init` is PID 1) from /proc and checks that role where it really
listens:

    web (`msr serve`, `msr up`)   GET http://<its --bind>/healthz (`--ready`: /readyz)
    cache node (`msr cache`)      GET http://<its --bind>/healthz
    worker (`msr worker`)         `celery inspect ping` of its own node, msr-<pid>@<host>
    scheduler (`celery beat`)     its schedule file was written in the last 5 minutes

The bind comes from the running process's command line (`msr serve` and `msr cache` exec
gunicorn with `--bind`, whether it came from the command line or from MSR_BIND /
MSR_CACHE_BIND), so `docker run msr serve --bind 0.0.0.0:8080` is checked on 8080. No
Django setup: it runs every few seconds. Exit status 0 is healthy, 1 is not.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

PROC = Path("/proc")


def _cmdline(pid: int) -> list[str]:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _option(argv: list[str], name: str) -> str | None:
    """The first value of `--name VALUE` or `--name=VALUE`."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _names(argv: list[str]) -> list[str]:
    return [Path(a).name for a in argv[:3]]


def role_of(argv: list[str]) -> str | None:
    """web, cache, worker or beat for the command line of an MSR process, else None."""
    if "msr.project.wsgi:application" in argv:
        return "web"
    if "caches.node:application" in argv:
        return "cache"
    names = _names(argv)
    if "celery" in names:  # `celery ...`, `python -m celery ...`, `python .../bin/celery ...`
        return "worker" if "worker" in argv else "beat" if "beat" in argv else None
    if "msr" in names:  # `msr up` (which supervises web, worker and cache children), or
        # `msr serve|cache|worker` in the moment before it execs gunicorn or celery
        command = argv[names.index("msr") + 1:names.index("msr") + 2]
        return {"up": "web", "serve": "web", "cache": "cache", "worker": "worker"}.get(
            command[0] if command else "")
    return None


def find_process() -> tuple[int, list[str], str] | None:
    """PID 1 when it is an MSR role, else the lowest-numbered MSR process."""
    pids = sorted(int(p.name) for p in PROC.iterdir() if p.name.isdigit()) if PROC.is_dir() else []
    if 1 in pids:
        pids.remove(1)
        pids.insert(0, 1)
    me = os.getpid()
    for pid in pids:
        if pid == me:
            continue
        argv = _cmdline(pid)
        role = role_of(argv)
        if role:
            return pid, argv, role
    return None


def _url(bind: str, path: str) -> str:
    if bind.startswith(("unix:", "fd://")):
        raise ValueError(f"cannot check a {bind.split(':')[0]} socket over HTTP")
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


def _environ(pid: int | None) -> dict[str, str]:
    """The environment the process was started with (its own, not the health check's)."""
    try:
        raw = (PROC / str(pid) / "environ").read_bytes()
    except (OSError, TypeError):
        return dict(os.environ)
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs}


def _http(url: str, timeout: float) -> tuple[int | None, str]:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via HTTP_PROXY
    try:
        with direct.open(url, timeout=timeout) as response:
            return response.status, response.read(4096).decode(errors="replace").strip()
    except urllib.error.HTTPError as e:
        return e.code, e.read(4096).decode(errors="replace").strip()
    except OSError as e:
        return None, str(e)


def check(ready: bool = False, timeout: float = 4.0) -> tuple[bool, str]:
    found = find_process()
    if found is None:
        if PROC.is_dir() or not os.environ.get("MSR_BIND"):
            return False, "no MSR process found (web, cache node, worker or beat)"
        # No /proc to read (not Linux): the address the web role reads itself.
        pid, argv, role = None, [], "web"
    else:
        pid, argv, role = found
    if role in ("web", "cache"):
        default = ("MSR_BIND", "127.0.0.1:5000") if role == "web" else ("MSR_CACHE_BIND", "127.0.0.1:5100")
        bind = _option(argv, "--bind") or _environ(pid).get(*default) or default[1]
        path = "/readyz" if ready and role == "web" else "/healthz"
        try:
            url = _url(bind, path)
        except ValueError as e:
            return False, f"{role}: {e}"
        status, body = _http(url, timeout)
        ok = status == 200
        if ok and role == "cache":  # a cache node says so, with its name
            try:
                ok = json.loads(body).get("status") == "ok"
            except (ValueError, AttributeError):
                ok = False
        return ok, f"{role}: {url}: {status or 'no answer'} {body}"
    if role == "worker":
        name = (_option(argv, "--hostname") or _option(argv, "-n") or f"msr-{pid}@%h")
        name = name.replace("%h", socket.gethostname()).replace("%n", socket.gethostname().split(".")[0])
        celery = [sys.executable, "-m", "celery", "-A", _option(argv, "-A") or "msr",
                  "inspect", "ping", "-d", name, "--timeout", str(int(timeout))]
        try:
            result = subprocess.run(celery, capture_output=True, text=True, timeout=timeout + 5)
        except subprocess.TimeoutExpired:
            return False, f"worker: {name} did not answer"
        ok = result.returncode == 0 and "pong" in result.stdout
        return ok, f"worker: {name}: {(result.stdout or result.stderr).strip()[-300:]}"
    if role == "beat":
        schedule = _option(argv, "--schedule") or _option(argv, "-s") or "celerybeat-schedule"
        if not os.path.isabs(schedule):
            try:
                schedule = os.path.join(os.readlink(PROC / str(pid) / "cwd"), schedule)
            except OSError:
                pass
        base = Path(schedule)
        files = [p for p in base.parent.glob(base.name + "*") if p.is_file()]
        newest = max((p.stat().st_mtime for p in files), default=None)
        if newest is None:
            return False, f"beat: no schedule file {schedule}"
        age = time.time() - newest
        return age < 300, f"beat: {schedule} written {age:.0f} s ago"
    return False, f"unknown role {role}"


def main(ready: bool = False) -> int:
    ok, detail = check(ready=ready)
    print(("healthy: " if ok else "unhealthy: ") + detail)
    return 0 if ok else 1
