"""Private container engines for the tests: a dockerd and a containerd of their own.

Each runs as root with its own data root, state/exec root, socket and pidfile under a
directory the test gives it, so nothing else on the machine is touched (no
/var/lib/docker, /run/docker.sock, /etc/docker/key.json, /run/containerd or
/opt/containerd), and is stopped by process id.

    dockerd = start_dockerd(root)           # tmp_path_factory.mktemp("dockerd")
    dockerd.docker("login", "-u", "alice", "--password-stdin", host, input=password)
    dockerd.stop()

dockerd: Debian's docker.io (/usr/sbin/dockerd, client /usr/bin/docker; not a docker that
may come first on PATH), storage driver vfs (works on any filesystem, inside a container
too), no iptables, no bridge. Registries on 127.0.0.0/8 are insecure by default, so it
speaks plain HTTP to an MSR on 127.0.0.1. The client's credentials go to <root>/config
(DOCKER_CONFIG), never to ~/.docker. Its containerd is a private one started here
(`--containerd`), in <root>/containerd: the containerd dockerd would start itself cannot be
configured and creates /opt/containerd.

containerd: /usr/bin/containerd with a minimal config (CRI plugin disabled), driven with
/usr/bin/ctr in the namespace `msr-tests`.

The image test (tests/test_image.py) keeps a daemon's data between runs (`keep_data`,
its build cache) and uses overlay2 where the filesystem allows it (`overlay_works`): with
vfs every build step and container copies the whole image.

When an engine cannot start (binary missing, not root) the test is skipped with the
reason; with MSR_REQUIRE_CLIENTS=1 (CI) it fails instead.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

DOCKERD = "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker"
CONTAINERD = "/usr/bin/containerd"
CTR = "/usr/bin/ctr"
CTR_NAMESPACE = "msr-tests"
# A unix socket path holds at most 107 bytes; containerd's sockets sit a few levels
# below the exec/state root, so a long test directory gets a short one in /tmp instead.
_MAX_RUN_DIR = 50


def _unavailable(reason: str):
    if os.environ.get("MSR_REQUIRE_CLIENTS") == "1":
        pytest.fail(f"{reason} (MSR_REQUIRE_CLIENTS=1)")
    pytest.skip(reason)


def _check_can_start(*binaries: str) -> None:
    for binary in binaries:
        if not Path(binary).exists():
            _unavailable(f"{binary} is not installed (Debian packages docker.io, containerd)")
    if os.geteuid() != 0:
        _unavailable(f"{Path(binaries[0]).name} needs root to start (running as uid {os.geteuid()})")


def _run_dir(root: Path, name: str) -> Path:
    """<root>/<name>, or a short private directory in /tmp when <root> is too long for
    sockets (removed at stop either way)."""
    if len(str(root / name)) <= _MAX_RUN_DIR:
        path = root / name
        path.mkdir(parents=True, exist_ok=True)
        return path
    return Path(tempfile.mkdtemp(prefix=f"msr-{name}-", dir="/tmp"))


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(child) for child in (task / "children").read_text().split()]
    except OSError:
        pass
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _end(pid: int, timeout=20) -> None:
    """SIGTERM `pid`, then SIGKILL if it is still there after `timeout` seconds."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.1)


class _Daemon:
    """A daemon started by Popen in its own session, with its log in the test's root."""

    name = "daemon"

    def __init__(self, root: Path, argv: list[str], run_dir: Path, ready):
        self.root = root
        self.run_dir = run_dir
        self.log_path = root / f"{self.name}.log"
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.popen.pid
        deadline = time.monotonic() + 60
        while True:
            if self.popen.poll() is not None:
                self._cleanup()
                _unavailable(f"{argv[0]} exited with {self.popen.returncode} at start:\n{self.log()[-3000:]}")
            try:
                if ready():
                    return
            except subprocess.TimeoutExpired:  # a busy machine: ask again
                pass
            if time.monotonic() > deadline:
                self.stop()
                _unavailable(f"{argv[0]} did not answer within 60 s:\n{self.log()[-3000:]}")
            time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _run(self, argv, check, input, timeout, env) -> subprocess.CompletedProcess:
        # -H or --address names the daemon: settings that would name another one go
        inherited = {k: v for k, v in os.environ.items()
                     if k not in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH",
                                  "CONTAINERD_ADDRESS", "CONTAINERD_NAMESPACE")}
        result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout,
                                env={**inherited, **self._env(), **(env or {})})
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {result.returncode}\n"
                                 f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        return result

    def _env(self) -> dict:
        return {}

    def stop(self) -> None:
        """Stop the daemon by its process id, then any child it left (containerd,
        shims), and remove its state; the log stays in root."""
        if self.popen.poll() is None:
            children = _children(self.pid)
            _end(self.pid)
            self.popen.wait(timeout=10)
            for child in children:
                _end(child)
        self._cleanup()

    def _cleanup(self) -> None:
        self._log.close()
        # dockerd leaves its network namespace file mounted (exec/netns/default)
        for directory in (self.root, self.run_dir):
            for mountpoint in _mounts_under(directory):
                subprocess.run(["umount", mountpoint], capture_output=True)
        for path in (*self._state_dirs(), self.run_dir):
            shutil.rmtree(path, ignore_errors=True)

    def _state_dirs(self) -> list[Path]:
        return []


class Dockerd(_Daemon):
    name = "dockerd"

    def __init__(self, root: Path, storage_driver: str = "vfs", keep_data: bool = False):
        root.mkdir(parents=True, exist_ok=True)
        self.keep_data = keep_data
        run_dir = _run_dir(root, "run")
        self.socket = run_dir / "docker.sock"
        self.config_dir = root / "config"
        self.config_dir.mkdir(exist_ok=True)
        self.data_root = root / "data"
        # Our own daemon.json: /etc/docker/daemon.json is not read, and the daemon's
        # trust key goes to root instead of /etc/docker/key.json.
        daemon_json = root / "daemon.json"
        daemon_json.write_text(json.dumps({"deprecated-key-path": str(root / "key.json")}))
        self.containerd = Containerd(root / "containerd")
        argv = [DOCKERD, "--config-file", str(daemon_json), "--containerd", str(self.containerd.socket),
                "--storage-driver", storage_driver,
                "--iptables=false", "--ip6tables=false", "--bridge=none",
                "--data-root", str(self.data_root), "--exec-root", str(run_dir / "exec"),
                "--pidfile", str(run_dir / "dockerd.pid"), "-H", f"unix://{self.socket}"]
        try:
            super().__init__(root, argv, run_dir, ready=self._answers)
        except BaseException:  # skipped or failed: its containerd goes too
            self.containerd.stop()
            raise

    def stop(self) -> None:
        super().stop()
        self.containerd.stop()

    def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        return self.docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=30).returncode == 0

    def _env(self) -> dict:
        return {"DOCKER_CONFIG": str(self.config_dir)}

    def docker(self, *args, check=True, input=None, timeout=300, env=None) -> subprocess.CompletedProcess:
        """Run /usr/bin/docker against this daemon (text mode, output captured)."""
        return self._run([DOCKER, "-H", f"unix://{self.socket}", *args], check, input, timeout, env)

    def _state_dirs(self) -> list[Path]:
        return [] if self.keep_data else [self.data_root]


class Containerd(_Daemon):
    name = "containerd"

    def __init__(self, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        run_dir = _run_dir(root, "run")
        self.state = run_dir / "state"
        self.socket = run_dir / "containerd.sock"
        self.data_root = root / "root"
        config = root / "config.toml"
        # Only what the tests need: no CRI (no Kubernetes here), content, metadata and
        # snapshotters under our root; /opt/containerd is not touched.
        config.write_text("\n".join([
            "version = 2",
            f'root = "{self.data_root}"',
            f'state = "{self.state}"',
            'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",',
            '  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",',
            '  "io.containerd.snapshotter.v1.zfs"]',
            "[grpc]",
            f'  address = "{self.socket}"',
            "[ttrpc]",
            f'  address = "{self.socket}.ttrpc"',
            "[debug]",
            '  address = ""',
            "[plugins]",
            '  [plugins."io.containerd.internal.v1.opt"]',
            f'    path = "{root / "opt"}"',
            "",
        ]))
        argv = [CONTAINERD, "--config", str(config), "--root", str(self.data_root), "--state",
                str(self.state), "--address", str(self.socket)]
        super().__init__(root, argv, run_dir, ready=self._answers)

    def _answers(self) -> bool:
        return self.socket.exists() and self.ctr("version", check=False, timeout=30).returncode == 0

    def ctr(self, *args, check=True, input=None, timeout=300, env=None) -> subprocess.CompletedProcess:
        """Run /usr/bin/ctr against this containerd, in the namespace `msr-tests`."""
        return self._run([CTR, "--address", str(self.socket), "--namespace", CTR_NAMESPACE, *args],
                         check, input, timeout, env)

    def _state_dirs(self) -> list[Path]:
        return [self.data_root, self.root / "opt"]


def start_dockerd(root: Path, storage_driver: str = "vfs", keep_data: bool = False) -> Dockerd:
    """Start a private dockerd under `root` and wait until `docker info` answers.
    `storage_driver="overlay2"` only where overlay_works(root)."""
    _check_can_start(DOCKERD, DOCKER)
    return Dockerd(Path(root), storage_driver, keep_data)


def start_containerd(root: Path) -> Containerd:
    """Start a private containerd under `root` and wait until `ctr version` answers."""
    _check_can_start(CONTAINERD, CTR)
    return Containerd(root)


def _mounts_under(root: Path) -> list[str]:
    """Mount points inside `root`, deepest first."""
    prefix = str(Path(root).resolve()) + "/"
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return []
    points = [line.split()[1] for line in lines if len(line.split()) > 1]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


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
