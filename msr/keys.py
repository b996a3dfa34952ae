"""Key files of the data dir (the token signing key, the encryption key, Django's secret
key), created once whichever process starts first. No Django here: the settings use it.
"""

import os
import secrets
from pathlib import Path


def create_once(path: Path, make: "callable") -> bytes:
    """Return the content of `path`, creating it with `make()` if it does not exist.

    Several processes (gunicorn workers, the worker, the cache) may start at once: the
    file is written to a temporary name and hard-linked into place, so every process
    reads the same, complete content.
    """
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(make())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes()
