"""Gunicorn settings and hooks of MSR's web process (`--config python:msr.project.gunicorn_config`,
read by the master before it preloads the application).

- Prometheus multiprocess mode: every worker process writes its counters to mmap files
  in PROMETHEUS_MULTIPROC_DIR, and a scrape of /metrics adds them up. The variable must
  be set before prometheus_client is imported, hence here. The files live in /dev/shm
  when there is one (else in the data dir), like gunicorn's heartbeat files: they are
  written on every request, and in memory that never waits on a disk.
  Each master gets a directory of its own (several MSRs may run on one host), empty at
  start; those of masters that died on this host are removed.
- gunicorn's own lines in MSR's log format (MSR_LOG_FORMAT), by a logger class: a
  `logconfig_dict` would also switch on gunicorn's access log, which then builds its
  fields for every request (a tenth of a millisecond) and holds the query string, where
  a cache's grant travels. MSR writes its own access line (MSR_ACCESS_LOG, msr/project/wsgi.py).
"""

import os
import shutil
import socket
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "msr.project.settings")

from django.conf import settings  # noqa: E402  (settings only: no app is set up here)
from gunicorn import glogging  # noqa: E402

from protocol.logformat import FORMATTERS  # noqa: E402

_root = (Path(f"/dev/shm/msr-prometheus-{os.getuid()}") if os.path.isdir("/dev/shm")
         else Path(settings.DATA_DIR) / "prometheus")
_prefix = f"{socket.gethostname()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_dead_masters() -> None:
    for folder in _root.glob(f"{_prefix}*"):
        pid = folder.name.removeprefix(_prefix)
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


_root.mkdir(parents=True, exist_ok=True)
_remove_dead_masters()
multiprocess_dir = _root / f"{_prefix}{os.getpid()}"
shutil.rmtree(multiprocess_dir, ignore_errors=True)
multiprocess_dir.mkdir()
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(multiprocess_dir)


class Logger(glogging.Logger):
    """gunicorn's handlers, with MSR's formatter. Registry clients (docker, podman,
    skopeo, containerd) try https first on a plain-http port; gunicorn calls the TLS
    ClientHello an "Invalid HTTP request line" at WARNING on every call. That is noise,
    not a fault: logged at debug, once per process."""

    tls_probe_seen = False

    def setup(self, cfg):
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(FORMATTERS[settings.LOG_FORMAT]())

    def warning(self, msg, *args, **kwargs):
        if isinstance(msg, str) and msg.startswith("Invalid request from") and "Invalid HTTP request line" in msg:
            if not Logger.tls_probe_seen:
                Logger.tls_probe_seen = True
                self.debug(msg + " (a client probing for TLS on the plain-http port; logged once)", *args, **kwargs)
            return
        super().warning(msg, *args, **kwargs)


logger_class = Logger


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    shutil.rmtree(multiprocess_dir, ignore_errors=True)
