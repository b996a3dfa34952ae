"""Start and stop real MSR processes on free ports of 127.0.0.1, and run registry clients."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

MSR = str(Path(sys.executable).with_name("msr"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A child process with its output in a log file, stopped by process id."""

    def __init__(self, argv, env, log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_http(self, url: str, timeout=60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"process exited with {self.popen.returncode}:\n{self.log()}")
            try:
                requests.get(url, timeout=5)
                return
            except (requests.ConnectionError, requests.Timeout):  # not up yet, or a busy machine
                time.sleep(0.1)
        raise RuntimeError(f"{url} did not answer in {timeout}s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL the process and its children (its process group, which it leads): a crash,
        nothing cleaned up."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()
        self._log.close()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self._log.close()


def side_by_side(*calls) -> list:
    """Run the calls (starts or stops of independent processes, each mostly waiting) in
    threads at once; their results in order, or the first one's exception."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, len(calls))) as pool:
        running = [pool.submit(call) for call in calls]
    return [done.result() for done in running]


def stop_all(*processes) -> None:
    """Stop the processes (None: not started) side by side: a graceful exit takes seconds
    (a Celery worker's), and one need not wait for another's."""
    side_by_side(*(p.stop for p in processes if p is not None))


def database_url(settings_dict) -> str:
    if settings_dict["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{settings_dict['NAME']}"
    user = settings_dict.get("USER") or ""
    password = settings_dict.get("PASSWORD") or ""
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = settings_dict.get("PORT") or 5432
    return f"postgres://{auth}{host}:{port}/{settings_dict['NAME']}"


def start_msr(command: str, data_dir: Path, db_url: str | None, log_dir: Path, extra_env=None,
              workers=2, threads=None) -> tuple[Process, str]:
    """Run `msr serve` or `msr up` on a free port; returns the process and its URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env["MSR_DATA_DIR"] = str(data_dir)
    if db_url:
        env["DATABASE_URL"] = db_url
    else:
        env.pop("DATABASE_URL", None)
    env.update(extra_env or {})
    log_dir.mkdir(parents=True, exist_ok=True)
    argv = [MSR, command, "--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
    if threads:
        argv += ["--threads", str(threads)]
    process = Process(argv, env, log_dir / f"msr-{command}-{port}.log")
    url = f"http://127.0.0.1:{port}"
    process.wait_http(f"{url}/v2/")
    return process, url


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def need(tool: str, path: str | None = None) -> None:
    """Skip the test when `tool` (on PATH, or at `path`) is missing; with
    MSR_REQUIRE_CLIENTS=1 (CI) fail it instead."""
    import pytest

    if (Path(path).exists() if path else have(tool)):
        return
    if os.environ.get("MSR_REQUIRE_CLIENTS") == "1":
        pytest.fail(f"{tool} is not installed (MSR_REQUIRE_CLIENTS=1)")
    pytest.skip(f"{tool} is not installed")


def run(argv, timeout=300, check=True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def start_cache(name: str, msr_url: str, data_dir: Path, log_dir: Path, upstream: str | None = None,
                workers=2, extra_env=None, threads=None, extra_args=(), port: int | None = None
                ) -> tuple[Process, str]:
    """Run `msr cache` (a cache node) on `port` (default: a free one); returns the process
    and its URL. `extra_args`: more of `msr cache`'s options (a region's --store, ...)."""
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "MSR_", "DATABASE_URL"))}
    env.update(extra_env or {})
    log_dir.mkdir(parents=True, exist_ok=True)
    argv = [MSR, "cache", "--name", name, "--msr", msr_url, "--data", str(data_dir),
            "--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
    if upstream:
        argv += ["--upstream", upstream]
    if threads:
        argv += ["--threads", str(threads)]
    argv += list(extra_args)
    process = Process(argv, env, log_dir / f"cache-{name}-{port}.log")
    url = f"http://127.0.0.1:{port}"
    process.wait_http(f"{url}/healthz")
    return process, url
