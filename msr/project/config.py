"""Small strict readers for settings from the environment.

Each fails fast with a message naming the variable, so a typo in a deployment shows up
at start and not as odd behaviour later. `*_FILE` variants let secrets come from files
(Docker/Kubernetes secrets).
"""

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured


def env_str(name: str, default: str | None = None) -> str | None:
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        try:
            return Path(file_path).read_text().strip()
        except OSError as e:
            raise ImproperlyConfigured(f"{name}_FILE={file_path}: {e.strerror}") from e
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name}={value!r}: expected true or false")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r}: expected an integer") from None


def env_list(name: str, default: list[str]) -> list[str]:
    """Comma-separated; `<name>_FILE` names a file holding the value (secrets)."""
    value = env_str(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]
