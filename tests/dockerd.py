"""A private Docker daemon for tests: Debian's dockerd on its own socket, data and exec
roots (vfs storage by default: no overlay mounts needed; no bridge and no iptables rules:
containers use `--network host`), stopped by its process id.

    daemon = start_dockerd(tmp_path / "docker")
    daemon.docker("build", ...)
    daemon.stop()

When it cannot start (no dockerd, not root, the daemon fails) the test is skipped with
the reason; with MSR_REQUIRE_CLIENTS=1 (CI) it fails instead.
"""

import os
import signal
import subprocess
import time
from pathlib import Path

DOCKERD = "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker"  # Debian's client (docker.io), matching the daemon


def _unavailable(reason: str):
    import pytest

    if os.environ.get("MSR_REQUIRE_CLIENTS") == "1":
        pytest.fail(f"dockerd: {reason} (MSR_REQUIRE_CLIENTS=1)")
    pytest.skip(f"dockerd: {reason}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_our_dockerd(pid: int, root: Path) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(argv) and argv[0].endswith(b"dockerd") and str(root / "data").encode() in argv


class Dockerd:
    def __init__(self, root: Path, popen: subprocess.Popen, log_path: Path):
        self.root = root
        self.socket = root / "docker.sock"
        self.popen = popen
        self.pid = popen.pid
        self.log_path = log_path

    def docker(self, *args, check=True, input=None, timeout=300, env=None) -> subprocess.CompletedProcess:
        full_env = {**os.environ, **(env or {}), "DOCKER_CONFIG": str(self.root / "config")}
        full_env.pop("DOCKER_HOST", None)
        argv = [DOCKER, "-H", f"unix://{self.socket}", *args]
        result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, env=full_env)
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} exited {result.returncode}\n"
                                 f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}")
        return result

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM by pid (dockerd stops its containers and its containerd), then SIGKILL."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        # dockerd leaves its network namespace file mounted (exec/netns/default)
        for mountpoint in _mounts_under(self.root):
            subprocess.run(["umount", mountpoint], capture_output=True)


def _mounts_under(root: Path) -> list[str]:
    """Mount points inside `root`, deepest first."""
    prefix = str(Path(root).resolve()) + "/"
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return []
    points = [line.split()[1] for line in lines if len(line.split()) > 1]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def start_dockerd(root: Path, storage_driver: str = "vfs") -> Dockerd:
    """`storage_driver="overlay2"` where the kernel has overlayfs and `root` is not on one
    (see overlay_works): vfs copies a whole image for every container and build step."""
    if not Path(DOCKERD).exists() or not Path(DOCKER).exists():
        _unavailable(f"{DOCKERD} or {DOCKER} is not installed (Debian: apt-get install docker.io)")
    if os.geteuid() != 0:
        _unavailable("dockerd needs root (it mounts and creates namespaces)")
    root = Path(root)
    for sub in ("data", "exec", "config"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    # A daemon of a run that was killed holds the pidfile: end it (it is ours: same data root).
    pidfile = root / "dockerd.pid"
    if pidfile.exists():
        try:
            old = int(pidfile.read_text().strip() or 0)
        except ValueError:
            old = 0
        if old and _alive(old) and _is_our_dockerd(old, root):
            os.kill(old, signal.SIGTERM)
            deadline = time.monotonic() + 60
            while _alive(old) and time.monotonic() < deadline:
                time.sleep(0.2)
        pidfile.unlink(missing_ok=True)
    log_path = root / "dockerd.log"
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            [DOCKERD, "--storage-driver", storage_driver, "--iptables=false", "--bridge=none",
             "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
             "--pidfile", str(pidfile), "-H", f"unix://{root / 'docker.sock'}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    daemon = Dockerd(root, popen, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            _unavailable(f"dockerd exited with {popen.returncode}:\n{daemon.log()[-3000:]}")
        if daemon.socket.exists() and daemon.docker("info", check=False, timeout=30).returncode == 0:
            return daemon
        time.sleep(0.3)
    daemon.stop()
    _unavailable(f"dockerd did not answer `docker info` within 60 s:\n{daemon.log()[-3000:]}")


def overlay_works(root: Path) -> bool:
    """overlayfs is in the kernel and `root`'s filesystem can carry it (not overlayfs
    itself, as inside many CI containers)."""
    try:
        if "overlay" not in Path("/proc/filesystems").read_text():
            return False
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return False
    root = Path(root).resolve()
    best = max((m for m in mounts if len(m) > 2 and (root == Path(m[1]) or Path(m[1]) in root.parents)),
               key=lambda m: len(m[1]), default=None)
    return best is not None and best[2] in ("ext4", "xfs", "btrfs")
