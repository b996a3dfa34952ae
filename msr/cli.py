"""The `msr` command.

    msr up       the embedded default: migrate, create the admin, then run the web
                 process and a worker (SQLite, filesystem storage and broker: nothing
                 else to install)
    msr serve    the web process alone (production: behind a load balancer, migrations
                 run separately with `msr manage migrate`)
    msr worker   a Celery worker (webhooks; later mirroring, promotion, cache checks)
    msr manage   Django management commands (migrate, adduser, addorg, ...)
    msr healthcheck  the container image's HEALTHCHECK: checks the role running in the
                 container where it listens (msr/healthcheck.py)
"""

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time


def _setup_django():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "msr.settings")
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


def ensure_admin(stdout=sys.stdout) -> None:
    from accounts.models import User
    from accounts.services import create_user

    username = os.environ.get("MSR_ADMIN_USER", "admin")
    if User.objects.filter(username=username).exists():
        return
    password = os.environ.get("MSR_ADMIN_PASSWORD")
    generated = not password
    if generated:
        password = secrets.token_urlsafe(12)
    create_user(username, password, is_admin=True)
    if generated:
        print(f"Created the admin user {username!r} with password: {password}", file=stdout)
        print("It is shown only this once; set MSR_ADMIN_PASSWORD to choose it.", file=stdout)
    else:
        print(f"Created the admin user {username!r} (password from MSR_ADMIN_PASSWORD).", file=stdout)


def _worker_class() -> str:
    """MSR's gunicorn worker, guarded against slow clients (caches/httpserver.py);
    MSR_HTTP_GUARD=false runs gunicorn's own gthread worker instead (for comparison, or
    behind a proxy that already buffers whole requests)."""
    guard = os.environ.get("MSR_HTTP_GUARD", "true").strip().lower()
    if guard not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        sys.exit(f"MSR_HTTP_GUARD={guard!r}: expected true or false")
    return "caches.httpserver.GuardedThreadWorker" if guard in ("true", "1", "yes", "on") else "gthread"


def _gunicorn_argv(args) -> list[str]:
    from django.conf import settings

    argv = [
        sys.executable, "-m", "gunicorn", "msr.wsgi:application",
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
        "--config", "python:msr.gunicorn_config",
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


def _worker_argv(concurrency: int, pool: str, beat: bool) -> list[str]:
    from django.conf import settings

    argv = [sys.executable, "-m", "celery", "-A", "msr", "worker", "--loglevel", "INFO",
            "--concurrency", str(concurrency), "--pool", pool,
            "--hostname", f"msr-{os.getpid()}@%h", "--without-mingle", "--without-gossip"]
    if beat:
        argv += ["--beat", "--schedule", str(settings.DATA_DIR / "celerybeat-schedule")]
    return argv


def cmd_worker(args) -> None:
    _setup_django()
    os.execv(sys.executable, _worker_argv(args.concurrency, args.pool, args.beat))


def supervise(children: dict[str, subprocess.Popen]) -> int:
    """Run until a signal or until one child exits; then stop the others."""
    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    exited = None
    while not stopping and exited is None:
        for name, child in children.items():
            if child.poll() is not None:
                exited = name
                print(f"msr up: {name} exited with {child.returncode}; stopping", file=sys.stderr, flush=True)
                break
        time.sleep(0.2)
    for child in children.values():
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + 30
    for child in children.values():
        try:
            child.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return 0 if exited is None else 1


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


def cmd_up(args) -> None:
    _setup_django()
    from django.conf import settings
    from django.core.management import call_command

    settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
    call_command("migrate", interactive=False, verbosity=0)
    ensure_admin()
    _prepare_keys()
    cache_bind = args.cache_bind or _next_free_bind(args.bind)
    _register_local_cache(f"http://{cache_bind}")
    # The embedded cache listens on loopback, which the egress policy refuses: open exactly
    # its address and port for the web and worker processes (health checks, pre-warming).
    allow = [os.environ.get("MSR_OUTBOUND_ALLOW", ""), cache_bind]
    os.environ["MSR_OUTBOUND_ALLOW"] = ",".join(a for a in allow if a)
    print(f"MSR data in {settings.DATA_DIR}; serving on http://{args.bind}; "
          f"local cache on http://{cache_bind}", flush=True)
    cache_args = argparse.Namespace(
        name="local", msr=f"http://{args.bind}", upstream=None, data=str(settings.DATA_DIR / "cache"),
        bind=cache_bind, max_size="10G", ttl="7d", workers=1, threads=16)
    cache_argv, cache_env = _cache_argv(cache_args)
    children = {
        # Threads keep the embedded worker to one process; its tasks wait on the network.
        "worker": subprocess.Popen(_worker_argv(4, "threads", beat=True)),
        "web": subprocess.Popen(_gunicorn_argv(args)),
        "cache": subprocess.Popen(cache_argv, env={**os.environ, **cache_env}),
    }
    sys.exit(supervise(children))


def _cache_argv(args) -> tuple[list[str], dict]:
    env = {
        "MSR_CACHE_NAME": args.name, "MSR_CACHE_MSR_URL": args.msr,
        "MSR_CACHE_UPSTREAM": args.upstream or args.msr, "MSR_CACHE_DATA_DIR": args.data,
        "MSR_CACHE_MAX_SIZE": args.max_size, "MSR_CACHE_TTL": args.ttl,
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

    for value, parse in ((args.max_size, parse_size), (args.ttl, parse_duration)):
        try:
            parse(value)
        except ValueError as e:
            sys.exit(f"msr cache: {e}")
    if not args.name or not args.msr:
        sys.exit("msr cache: --name and --msr (or MSR_CACHE_NAME and MSR_CACHE_MSR_URL) are required")
    argv, env = _cache_argv(args)
    os.environ.update(env)
    os.execv(sys.executable, argv)


def cmd_manage(args) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "msr.settings")
    import django

    django.setup()
    _private_data()
    from django.core.management import execute_from_command_line

    execute_from_command_line(["msr manage", *args.rest])


def cmd_healthcheck(args) -> None:
    from msr.healthcheck import main as healthcheck

    sys.exit(healthcheck(ready=args.ready))


def _add_web_options(parser):
    parser.add_argument("--bind", default=os.environ.get("MSR_BIND", "127.0.0.1:5000"),
                        help="host:port to listen on (default 127.0.0.1:5000, or MSR_BIND)")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("MSR_WEB_WORKERS", "2")),
                        help="web worker processes (default 2, or MSR_WEB_WORKERS)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("MSR_WEB_THREADS", "8")),
                        help="threads per worker (default 8, or MSR_WEB_THREADS)")


def main(argv=None) -> None:
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
    args = parser.parse_args(argv)
    os.umask(0o077)  # files MSR writes (database, keys, blobs, caches) are its user's alone
    args.func(args)


if __name__ == "__main__":
    main()
