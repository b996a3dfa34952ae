"""The `msr` command.

    msr up       the embedded default: migrate, create the admin, then run the web
                 process and a worker (SQLite, filesystem storage and broker: nothing
                 else to install)
    msr serve    the web process alone (production: behind a load balancer, migrations
                 run separately with `msr manage migrate`)
    msr worker   a Celery worker (webhooks; later mirroring, promotion, cache checks)
    msr cache    a regional cache node (caches/node.py), also its region's registry
                 endpoint (caches/endpoint.py)
    msr manage   Django management commands (migrate, adduser, addorg, ...)
    msr healthcheck  the container image's HEALTHCHECK: checks the role running in the
                 container where it listens (msr/project/healthcheck.py)
"""

import argparse
import collections
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request

log = logging.getLogger("msr.up")


def _setup_django():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "msr.project.settings")
    import django

    django.setup()
    _private_data()


def _private_data() -> None:
    """The data dir holds the database (with session keys), generated keys and blobs of
    private repositories: nobody but MSR's user reads it. New files are owner-only (the
    umask, set in main) and the folders are closed to others, which also covers files an
    older version created readable."""
    from django.conf import settings

    folders = [settings.DATA_DIR]
    if settings.STORAGE_BACKEND == "filesystem":
        folders.append(settings.STORAGE_DIR)
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            folder.chmod(0o700)
        except PermissionError:  # not ours (a mounted volume): its owner decides
            pass
    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        for suffix in ("", "-wal", "-shm"):
            path = f"{database['NAME']}{suffix}"
            if os.path.exists(path):
                try:
                    os.chmod(path, 0o600)
                except PermissionError:
                    pass


def _prepare_keys():
    """Create the data dir's generated secrets before gunicorn forks its workers."""
    from msr.tokens import jwks

    jwks()


ADMIN_PASSWORD_FILE = "admin-password"


def ensure_admin() -> tuple[str, str | None]:
    """Create the admin user on the first start. Returns its name and, when MSR generated
    its password just now, that password. A generated password is also kept in the data
    dir (owner-only, like the keys there), so that it is not lost with the terminal, and
    never written to the logs: the logs say where it is."""
    from django.conf import settings

    from accounts.models import User
    from accounts.services import create_user

    username = os.environ.get("MSR_ADMIN_USER", "admin")
    if User.objects.filter(username=username).exists():
        return username, None
    password = os.environ.get("MSR_ADMIN_PASSWORD")
    generated = not password
    if generated:
        password = secrets.token_urlsafe(12)
    create_user(username, password, is_admin=True)
    if not generated:
        log.info("created the admin user %r (password from MSR_ADMIN_PASSWORD)", username)
        return username, None
    path = settings.DATA_DIR / ADMIN_PASSWORD_FILE
    path.write_text(f"{password}\n")
    path.chmod(0o600)
    log.info("created the admin user %r with a generated password, kept in %s", username, path)
    return username, password


def _worker_class() -> str:
    """MSR's gunicorn worker, guarded against slow clients (caches/httpserver.py);
    MSR_HTTP_GUARD=false runs gunicorn's own gthread worker instead (for comparison, or
    behind a proxy that already buffers whole requests)."""
    return "caches.httpserver.GuardedThreadWorker" if _env_flag("MSR_HTTP_GUARD", True) else "gthread"


def _env_flag(name: str, default: bool) -> bool:
    """A true/false setting from the environment; any other value stops `msr` with a
    message naming the variable."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        sys.exit(f"{name}={value!r}: expected true or false")
    return value in ("true", "1", "yes", "on")


def _gunicorn_argv(args) -> list[str]:
    from django.conf import settings

    argv = [
        sys.executable, "-m", "gunicorn", "msr.project.wsgi:application",
        "--bind", args.bind,
        "--workers", str(args.workers),
        "--worker-class", _worker_class(),
        "--threads", str(args.threads),
        "--keep-alive", "5",
        "--timeout", "300",
        "--graceful-timeout", "30",
        "--preload",
        "--name", "msr-web",
        # A per-host control socket would collide between several MSRs on one machine.
        "--no-control-socket",
        "--forwarded-allow-ips", os.environ.get("MSR_FORWARDED_ALLOW_IPS", "127.0.0.1"),
        # Prometheus multiprocess directory and hooks; gunicorn's lines in MSR's log format.
        "--config", "python:msr.project.gunicorn_config",
    ]
    if os.path.isdir("/dev/shm"):
        argv += ["--worker-tmp-dir", "/dev/shm"]
    settings.STATIC_ROOT.mkdir(parents=True, exist_ok=True)
    return argv


def cmd_serve(args) -> None:
    _setup_django()
    _prepare_keys()
    argv = _gunicorn_argv(args)
    os.execv(sys.executable, argv)


def _worker_argv(concurrency: int, pool: str, beat: bool, quiet: bool = False) -> list[str]:
    from django.conf import settings

    argv = [sys.executable, "-m", "celery", "-A", "msr"]
    if quiet:  # no banner (the configuration and task list Celery prints on stdout)
        argv.append("--quiet")
    argv += ["worker", "--loglevel", "INFO",
             "--concurrency", str(concurrency), "--pool", pool,
             "--hostname", f"msr-{os.getpid()}@%h", "--without-mingle", "--without-gossip"]
    if beat:
        argv += ["--beat", "--schedule", str(settings.DATA_DIR / "celerybeat-schedule")]
    return argv


def cmd_worker(args) -> None:
    _setup_django()
    from django.conf import settings

    # Celery's banner is not a log line: it stays for a person at a terminal (text logs)
    # and is left out of JSON logs, where every line is one object.
    os.execv(sys.executable, _worker_argv(args.concurrency, args.pool, args.beat,
                                          quiet=settings.LOG_FORMAT == "json"))


# A child of `msr up` that dies is started again, after a pause that doubles with each
# death in the window (1, 2, 4, 8 s); the RESTART_LIMIT-th death within RESTART_WINDOW
# seconds stops MSR instead: something is wrong that starting again will not fix.
RESTART_LIMIT = 5
RESTART_WINDOW = 60.0
READY_WARNING_AFTER = 60.0


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


class Child:
    """One process of `msr up`: how to start it and how to tell that it serves."""

    def __init__(self, name: str, argv: list[str], env: dict | None = None, ready=None, before_start=None):
        self.name, self.argv, self.env = name, argv, env
        self._ready, self._before_start = ready, before_start
        self.popen: subprocess.Popen | None = None
        self.up = False
        self.started_at = 0.0
        self.restart_at: float | None = None
        self.deaths: collections.deque[float] = collections.deque()

    def start(self) -> None:
        if self._before_start:
            self._before_start()
        # A process group of its own: when the child dies, what it started dies with it
        # (the worker's beat process would live on, and a restarted worker would start a
        # second scheduler). Ctrl-C reaches `msr up` alone, which stops the children.
        self.popen = subprocess.Popen(self.argv, env=self.env, process_group=0,
                                      preexec_fn=_die_with_parent(os.getpid()))
        self.started_at = time.monotonic()
        self.up = False
        self.restart_at = None

    def check_ready(self) -> bool:
        if not self.up and self.popen is not None and self.popen.poll() is None:
            self.up = self._ready is None or self._ready(self)
        return self.up


def _die_with_parent(parent: int):
    """A child's setup (Linux): SIGTERM when `msr up` dies, even by SIGKILL, so that its
    children, in process groups of their own, are not left running."""
    if not sys.platform.startswith("linux"):
        return None

    def setup() -> None:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # it died before the line above
            os._exit(1)

    return setup


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs. A zombie does not count: where `msr up`
    is process 1 (a container without an init), orphans become its children, and it reaps
    those of the group here."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    if not os.path.isdir("/proc/self"):
        return True
    alive = False
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) != pgid:
            continue
        if fields[0] != "Z":
            alive = True
        else:
            try:
                os.waitpid(int(entry.name), os.WNOHANG)
            except ChildProcessError:  # someone else's to reap
                pass
    return alive


def _kill_group(pid: int, grace: float = 0.0) -> None:
    """Whatever is left of a child's process group (the child itself has exited): given
    `grace` seconds to finish on its own (the worker's beat ends after the worker), then
    killed; returns once the group is gone (or after a few seconds more)."""
    deadline = time.monotonic() + grace
    while _group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + 5
    while _group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _stop_children(children: list[Child]) -> None:
    running = [c.popen for c in children if c.popen is not None and c.popen.poll() is None]
    for popen in running:
        popen.terminate()
    deadline = time.monotonic() + 30
    for popen in running:
        try:
            popen.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
    for popen in running:
        _kill_group(popen.pid, grace=max(deadline - time.monotonic(), 5.0))


def supervise(children: list[Child], on_ready=None) -> int:
    """Start the children and keep them running until SIGTERM or SIGINT (then stop them
    all; 0). A child that exits is started again (see RESTART_LIMIT); when one keeps
    dying, stop the others and return 1. `on_ready` is called once, when every child
    serves."""
    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for child in children:
        child.start()
    started, announced, warned = time.monotonic(), False, False
    failed = False
    while not stopping and not failed:
        now = time.monotonic()
        for child in children:
            if child.popen is not None and child.popen.poll() is not None:
                if stopping:
                    break
                pid, returncode, child.popen = child.popen.pid, child.popen.returncode, None
                _kill_group(pid)
                child.deaths.append(now)
                while child.deaths and child.deaths[0] < now - RESTART_WINDOW:
                    child.deaths.popleft()
                if len(child.deaths) >= RESTART_LIMIT:
                    log.error("%s (pid %s) exited (%s), for the %s time within %d s: giving up; stopping MSR",
                              child.name, pid, describe_exit(returncode), _ordinal(len(child.deaths)),
                              RESTART_WINDOW, extra={"child": child.name, "pid": pid, "returncode": returncode})
                    failed = True
                    break
                delay = 2.0 ** (len(child.deaths) - 1)
                log.error("%s (pid %s) exited (%s); restarting it in %g s", child.name, pid,
                          describe_exit(returncode), delay,
                          extra={"child": child.name, "pid": pid, "returncode": returncode})
                child.restart_at = now + delay
            elif child.popen is None and child.restart_at is not None and now >= child.restart_at:
                child.start()
                log.info("%s restarted (pid %s)", child.name, child.popen.pid,
                         extra={"child": child.name, "pid": child.popen.pid})
            elif child.popen is not None and not child.up and child.check_ready() and announced:
                log.info("%s is back (pid %s)", child.name, child.popen.pid,
                         extra={"child": child.name, "pid": child.popen.pid})
        if stopping or failed:
            break
        if not announced and all(child.up for child in children):
            announced = True
            if on_ready:
                on_ready()
        elif not announced and not warned and now - started > READY_WARNING_AFTER:
            warned = True
            log.warning("still waiting for %s to be ready", ", ".join(c.name for c in children if not c.up))
        time.sleep(0.2)
    log.info("stopping MSR")
    _stop_children(children)
    return 1 if failed else 0


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _next_free_bind(bind: str) -> str:
    """The first free port after the web port, on the same host."""
    import socket

    host, _, port = bind.rpartition(":")
    for candidate in range(int(port) + 1, int(port) + 200):
        with socket.socket() as s:
            try:
                s.bind((host, candidate))
            except OSError:
                continue
            return f"{host}:{candidate}"
    sys.exit(f"msr up: no free port after {bind} for the local cache; use --cache-bind")


def _register_local_cache(url: str) -> None:
    """The embedded cache is registered as `local`; nobody uses it until they choose it."""
    from caches.models import ContentCache

    ContentCache.objects.update_or_create(name="local", defaults={"url": url, "region": "this host",
                                                                  "healthy": True})


def _display_host(bind: str) -> str:
    """host:port as a URL names it: a wildcard address is reached on loopback."""
    host, _, port = bind.rpartition(":")
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def ready_message(web: str, cache: str, admin: str, password: str | None, password_file, data_dir,
                  show_password: bool) -> str:
    """What `msr up` prints at a terminal once everything serves (`web`, `cache`: URLs)."""
    from urllib.parse import urlsplit

    registry = urlsplit(web).netloc
    if password and show_password:
        credentials = [f"  Password    {password}",
                       f"              generated now, also kept in {password_file}",
                       "              (set MSR_ADMIN_PASSWORD before the first start to choose it)"]
    elif password_file.exists():
        credentials = [f"  Password    in {password_file} (generated at the first start)"]
    else:
        credentials = [f"  Password    the one you chose (forgotten: msr manage changepassword {admin})"]
    lines = [
        "",
        "MSR is ready.",
        "",
        f"  Registry    {web}    docker login {registry}",
        f"  Web UI      {web}/",
        f"  API docs    {web}/api/v0/docs",
        f"  Cache node  {cache}    the local cache (\"local\")",
        "",
        f"  Sign in as  {admin}",
        *credentials,
        "",
        f"  Data in {data_dir}. Ctrl-C stops MSR.",
        "",
    ]
    return "\n".join(lines)


def cmd_up(args) -> None:
    _setup_django()
    from django.conf import settings
    from django.core.management import call_command

    # Every child writes the format this process chose (a terminal: text), even one whose
    # stderr a library replaces.
    os.environ["MSR_LOG_FORMAT"] = settings.LOG_FORMAT
    settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
    call_command("migrate", interactive=False, verbosity=0)
    admin, password = ensure_admin()
    _prepare_keys()
    cache_bind = args.cache_bind or _next_free_bind(args.bind)
    _register_local_cache(f"http://{cache_bind}")
    # The embedded cache listens on loopback, which the egress policy refuses: open exactly
    # its address and port for the web and worker processes (health checks, pre-warming).
    allow = [os.environ.get("MSR_OUTBOUND_ALLOW", ""), cache_bind]
    os.environ["MSR_OUTBOUND_ALLOW"] = ",".join(a for a in allow if a)
    local_web, cache = f"http://{_display_host(args.bind)}", f"http://{_display_host(cache_bind)}"
    web = settings.PUBLIC_URL or local_web
    log.info("starting MSR: web on %s, local cache on %s, data in %s", local_web, cache, settings.DATA_DIR)
    cache_argv, cache_env = _cache_argv(_local_cache_args(args.bind, cache_bind, settings.DATA_DIR / "cache"))
    ready_file = settings.DATA_DIR / "worker.ready"

    def worker_ready(child: Child) -> bool:
        return ready_file.exists()

    children = [
        # Threads keep the embedded worker to one process; its tasks wait on the network.
        Child("worker", _worker_argv(4, "threads", beat=True, quiet=True),
              env={**os.environ, "MSR_WORKER_EMBEDDED": "1", "MSR_WORKER_READY_FILE": str(ready_file)},
              ready=worker_ready, before_start=lambda: ready_file.unlink(missing_ok=True)),
        Child("web", _gunicorn_argv(args), ready=lambda child: _http_ok(f"{local_web}/readyz")),
        Child("cache", cache_argv, env={**os.environ, **cache_env},
              ready=lambda child: _http_ok(f"{cache}/healthz")),
    ]
    password_file = settings.DATA_DIR / ADMIN_PASSWORD_FILE

    def announce() -> None:
        if settings.LOG_FORMAT == "text":
            print(ready_message(web, cache, admin, password, password_file, settings.DATA_DIR,
                                show_password=sys.stdout.isatty()), flush=True)
        else:
            log.info("MSR is ready: registry and web UI on %s, local cache on %s", web, cache,
                     extra={"registry_url": web, "web_url": f"{web}/",
                            "api_docs_url": f"{web}/api/v0/docs", "cache_url": cache,
                            "admin_user": admin,
                            "admin_password_file": str(password_file) if password_file.exists() else ""})

    sys.exit(supervise(children, on_ready=announce))


def _local_cache_args(msr_bind: str, cache_bind: str, data_dir) -> argparse.Namespace:
    """`msr up`'s cache, as `msr cache`'s options would give it (not read from the
    environment: the embedded default is the same everywhere)."""
    return argparse.Namespace(
        name="local", msr=f"http://{msr_bind}", upstream=None, data=str(data_dir), bind=cache_bind,
        max_size="10G", ttl="7d", workers=1, threads=16,
        token_relay=True, public_url=None, token_service=None, membership_ttl="10m")


def _cache_argv(args) -> tuple[list[str], dict]:
    env = {
        "MSR_CACHE_NAME": args.name, "MSR_CACHE_MSR_URL": args.msr,
        "MSR_CACHE_UPSTREAM": args.upstream or args.msr, "MSR_CACHE_DATA_DIR": args.data,
        "MSR_CACHE_MAX_SIZE": args.max_size, "MSR_CACHE_TTL": args.ttl,
        # The regional endpoint (caches/endpoint.py). Empty values are "not set": the
        # node reads MSR's token service from its challenge, its own URL from the Host.
        "MSR_CACHE_TOKEN_RELAY": "1" if args.token_relay else "0",
        "MSR_CACHE_PUBLIC_URL": args.public_url or "", "MSR_CACHE_TOKEN_SERVICE": args.token_service or "",
        "MSR_CACHE_MEMBERSHIP_TTL": args.membership_ttl,
        # A region's shared store (caches/region.py). Empty: the node's own --data.
        "MSR_CACHE_STORE": getattr(args, "store", None) or "", "MSR_CACHE_BIND": args.bind,
        "MSR_CACHE_S3_ENDPOINT_URL": getattr(args, "s3_endpoint", None) or "",
        "MSR_CACHE_S3_PUBLIC_ENDPOINT_URL": getattr(args, "s3_public_endpoint", None) or "",
        "MSR_CACHE_S3_REGION": getattr(args, "s3_region", None) or "",
        "MSR_CACHE_S3_ADDRESSING_STYLE": getattr(args, "s3_addressing_style", None) or "auto",
        "MSR_CACHE_S3_REDIRECT": "1" if getattr(args, "s3_redirect", False) else "0",
        "MSR_CACHE_NODE_URL": getattr(args, "node_url", None) or "",
        "MSR_CACHE_NODE_ID": getattr(args, "node_id", None) or "",
        "MSR_CACHE_LEASE_TTL": getattr(args, "lease_ttl", None) or "30s",
        "MSR_CACHE_PEER_NETWORKS": getattr(args, "peer_networks", None) or "",
    }
    argv = [sys.executable, "-m", "gunicorn", "caches.node:application", "--bind", args.bind,
            "--workers", str(args.workers), "--worker-class", _worker_class(),
            "--threads", str(args.threads),
            "--keep-alive", "5", "--timeout", "300", "--name", f"msr-cache-{args.name}",
            "--no-control-socket", "--logger-class", "caches.node.GunicornLogger"]
    if os.path.isdir("/dev/shm"):
        argv += ["--worker-tmp-dir", "/dev/shm"]
    return argv, env


def cmd_cache(args) -> None:
    """A cache node: no database, only a data dir, its upstream and MSR's public keys."""
    from caches.node import parse_duration, parse_size

    from caches.region import parse_networks
    from protocol.blobstore import parse_url

    for value, parse in ((args.max_size, parse_size), (args.ttl, parse_duration),
                         (args.membership_ttl, parse_duration), (args.lease_ttl, parse_duration)):
        try:
            parse(value)
        except ValueError as e:
            sys.exit(f"msr cache: {e}")
    if args.store:
        try:
            parse_url(args.store)
        except ValueError as e:
            sys.exit(f"msr cache: --store: {e}")
        if parse_duration(args.lease_ttl) < 2:
            sys.exit("msr cache: --lease-ttl must be at least 2s")
        try:
            parse_networks(args.peer_networks or "")
        except ValueError as e:
            sys.exit(f"msr cache: --peer-networks: {e}")
    for flag, url in (("--node-url", args.node_url), ("--s3-endpoint", args.s3_endpoint)):
        if url and not re.fullmatch(r"https?://[^/?#]+/?", url):
            sys.exit(f"msr cache: {flag} {url!r}: expected http(s)://host[:port]")
    if args.public_url and not re.fullmatch(r"https?://[^/?#]+/?", args.public_url):
        sys.exit(f"msr cache: --public-url {args.public_url!r}: expected http(s)://host[:port]")
    if not args.name or not args.msr:
        sys.exit("msr cache: --name and --msr (or MSR_CACHE_NAME and MSR_CACHE_MSR_URL) are required")
    argv, env = _cache_argv(args)
    os.environ.update(env)
    os.execv(sys.executable, argv)


def cmd_manage(args) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "msr.project.settings")
    import django

    django.setup()
    _private_data()
    from django.core.management import execute_from_command_line

    execute_from_command_line(["msr manage", *args.rest])


def cmd_healthcheck(args) -> None:
    from msr.project.healthcheck import main as healthcheck

    sys.exit(healthcheck(ready=args.ready))


def _add_web_options(parser):
    parser.add_argument("--bind", default=os.environ.get("MSR_BIND", "127.0.0.1:5000"),
                        help="host:port to listen on (default 127.0.0.1:5000, or MSR_BIND)")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("MSR_WEB_WORKERS", "2")),
                        help="web worker processes (default 2, or MSR_WEB_WORKERS)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("MSR_WEB_THREADS", "8")),
                        help="threads per worker (default 8, or MSR_WEB_THREADS)")


def build_parser() -> argparse.ArgumentParser:
    """The `msr` command line; defaults are read from the environment now."""
    parser = argparse.ArgumentParser(prog="msr", description="MSR container registry")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run everything on the embedded default")
    _add_web_options(up)
    up.add_argument("--cache-bind", default=os.environ.get("MSR_CACHE_BIND"),
                    help="host:port of the local cache node (default: the next free port after --bind)")
    up.set_defaults(func=cmd_up)
    serve = sub.add_parser("serve", help="run the web process")
    _add_web_options(serve)
    serve.set_defaults(func=cmd_serve)
    cache = sub.add_parser("cache", help="run a regional cache node")
    env = os.environ.get
    cache.add_argument("--name", default=env("MSR_CACHE_NAME"), help="the cache's name, as registered in MSR")
    cache.add_argument("--msr", default=env("MSR_CACHE_MSR_URL"), help="MSR's URL (public keys)")
    cache.add_argument("--upstream", default=env("MSR_CACHE_UPSTREAM"), help="MSR (default) or a parent cache")
    cache.add_argument("--data", default=env("MSR_CACHE_DATA_DIR", "./cache-data"), help="where blobs are kept")
    cache.add_argument("--bind", default=env("MSR_CACHE_BIND", "127.0.0.1:5100"))
    cache.add_argument("--max-size", default=env("MSR_CACHE_MAX_SIZE", "50G"), help="size budget, e.g. 50G")
    cache.add_argument("--ttl", default=env("MSR_CACHE_TTL", "24h"), help="evict blobs unused this long")
    cache.add_argument("--workers", type=int, default=int(env("MSR_CACHE_WORKERS", "2")))
    cache.add_argument("--threads", type=int, default=int(env("MSR_CACHE_THREADS", "16")))
    endpoint = cache.add_argument_group("the cache as its region's registry endpoint")
    endpoint.add_argument("--token-relay", action=argparse.BooleanOptionalAction,
                          default=_env_flag("MSR_CACHE_TOKEN_RELAY", True),
                          help="answer /auth/token by passing it on to MSR, and name it in the challenge "
                               "(default on, or MSR_CACHE_TOKEN_RELAY)")
    endpoint.add_argument("--public-url", default=env("MSR_CACHE_PUBLIC_URL"),
                          help="the node's URL as clients reach it, for the challenge's realm "
                               "(default: from the request's Host, or MSR_CACHE_PUBLIC_URL)")
    endpoint.add_argument("--token-service", default=env("MSR_CACHE_TOKEN_SERVICE"),
                          help="MSR's token service name (default: read from MSR's challenge, "
                               "or MSR_CACHE_TOKEN_SERVICE)")
    endpoint.add_argument("--membership-ttl", default=env("MSR_CACHE_MEMBERSHIP_TTL", "10m"),
                          help="how long the node trusts that a digest belongs to a repository "
                               "(default 10m, or MSR_CACHE_MEMBERSHIP_TTL)")
    region = cache.add_argument_group(
        "a region of several nodes (same --name, one --store, behind one address; docs/operations.md)")
    region.add_argument("--store", default=env("MSR_CACHE_STORE"),
                        help="s3://bucket/prefix: the region's shared store (default: the local --data); "
                             "--max-size and --ttl are then the region's. Credentials: MSR_CACHE_S3_ACCESS_KEY_ID "
                             "and MSR_CACHE_S3_SECRET_ACCESS_KEY, or the AWS SDK's own (AWS_*, instance role)")
    region.add_argument("--s3-endpoint", default=env("MSR_CACHE_S3_ENDPOINT_URL"),
                        help="the S3 API's URL (MinIO, Ceph RGW; default AWS)")
    region.add_argument("--s3-region", default=env("MSR_CACHE_S3_REGION"))
    region.add_argument("--s3-addressing-style", choices=("auto", "path", "virtual"),
                        default=env("MSR_CACHE_S3_ADDRESSING_STYLE", "auto"))
    region.add_argument("--s3-redirect", action=argparse.BooleanOptionalAction,
                        default=_env_flag("MSR_CACHE_S3_REDIRECT", False),
                        help="answer hits with a redirect to a presigned GET on the bucket instead of "
                             "streaming them (clients must reach the bucket; default off)")
    region.add_argument("--s3-public-endpoint", default=env("MSR_CACHE_S3_PUBLIC_ENDPOINT_URL"),
                        help="the bucket's URL as clients reach it, for --s3-redirect")
    region.add_argument("--node-url", default=env("MSR_CACHE_NODE_URL"),
                        help="this node's URL as the region's other nodes reach it (default http://<--bind>, "
                             "the host name for a wildcard bind)")
    region.add_argument("--node-id", default=env("MSR_CACHE_NODE_ID"),
                        help="this node's name in the region (default <host name>-<port>)")
    region.add_argument("--peer-networks", default=env("MSR_CACHE_PEER_NETWORKS"),
                        help="the networks of the region's nodes (comma-separated CIDRs): a node streams a fill "
                             "in progress, with the client's credentials, only from a node there "
                             "(default: private and loopback networks)")
    region.add_argument("--lease-ttl", default=env("MSR_CACHE_LEASE_TTL", "30s"),
                        help="a fill whose node stopped renewing its lease this long is taken over (default 30s)")
    cache.set_defaults(func=cmd_cache)
    worker = sub.add_parser("worker", help="run a Celery worker")
    worker.add_argument("--concurrency", type=int, default=int(os.environ.get("MSR_WORKER_CONCURRENCY", "2")))
    worker.add_argument("--pool", default=os.environ.get("MSR_WORKER_POOL", "prefork"),
                        choices=["prefork", "threads", "solo"])
    worker.add_argument("--beat", action="store_true", help="also run the scheduler (one per deployment)")
    worker.set_defaults(func=cmd_worker)
    manage = sub.add_parser("manage", help="run a Django management command")
    manage.add_argument("rest", nargs=argparse.REMAINDER)
    manage.set_defaults(func=cmd_manage)
    health = sub.add_parser("healthcheck", help="check the MSR process of this container (its own --bind)")
    health.add_argument("--ready", action="store_true", help="web: /readyz (database, broker, storage) instead of /healthz")
    health.set_defaults(func=cmd_healthcheck)
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    os.umask(0o077)  # files MSR writes (database, keys, blobs, caches) are its user's alone
    args.func(args)


if __name__ == "__main__":
    main()
