"""The `msr` command.

    msr up       the embedded default: migrate, create the admin, serve (SQLite,
                 filesystem storage, nothing else to install)
    msr serve    the web process alone (production: behind a load balancer, migrations
                 run separately with `msr manage migrate`)
    msr manage   Django management commands (migrate, createorg, createteam, ...)
"""

import argparse
import os
import secrets
import sys


def _setup_django():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "msr.settings")
    import django

    django.setup()


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


def _gunicorn_argv(args) -> list[str]:
    from django.conf import settings

    argv = [
        sys.executable, "-m", "gunicorn", "msr.wsgi:application",
        "--bind", args.bind,
        "--workers", str(args.workers),
        "--worker-class", "gthread",
        "--threads", str(args.threads),
        "--keep-alive", "5",
        "--timeout", "300",
        "--graceful-timeout", "30",
        "--preload",
        "--name", "msr-web",
        # A per-host control socket would collide between several MSRs on one machine.
        "--no-control-socket",
        "--forwarded-allow-ips", os.environ.get("MSR_FORWARDED_ALLOW_IPS", "127.0.0.1"),
    ]
    if os.environ.get("MSR_ACCESS_LOG", "").lower() in ("1", "true", "yes"):
        argv += ["--access-logfile", "-"]
    if os.path.isdir("/dev/shm"):
        argv += ["--worker-tmp-dir", "/dev/shm"]
    settings.STATIC_ROOT.mkdir(parents=True, exist_ok=True)
    return argv


def cmd_serve(args) -> None:
    _setup_django()
    _prepare_keys()
    argv = _gunicorn_argv(args)
    os.execv(sys.executable, argv)


def cmd_up(args) -> None:
    _setup_django()
    from django.conf import settings
    from django.core.management import call_command

    settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
    call_command("migrate", interactive=False, verbosity=0)
    ensure_admin()
    _prepare_keys()
    print(f"MSR data in {settings.DATA_DIR}; serving on http://{args.bind}", flush=True)
    os.execv(sys.executable, _gunicorn_argv(args))


def cmd_manage(args) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "msr.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(["msr manage", *args.rest])


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
    up.set_defaults(func=cmd_up)
    serve = sub.add_parser("serve", help="run the web process")
    _add_web_options(serve)
    serve.set_defaults(func=cmd_serve)
    manage = sub.add_parser("manage", help="run a Django management command")
    manage.add_argument("rest", nargs=argparse.REMAINDER)
    manage.set_defaults(func=cmd_manage)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
