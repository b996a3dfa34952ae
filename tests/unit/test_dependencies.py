"""The cache node and the protocol package stand apart from MSR (design.md, "Dependencies
between parts"): the node runs in a region with a disk, its upstream's URL and MSR's
public keys, and loads no Django, no model and nothing of msr, accounts or mirroring.
Each check imports in a fresh interpreter and lists what got loaded."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.fresh_interpreter

ROOT = Path(__file__).resolve().parents[2]
# What the gunicorn of `msr cache` loads of ours: the application and the worker class.
NODE_MODULES = ("caches", "caches.node", "caches.httpserver", "caches.endpoint", "caches.region")


def _loaded_after(statement: str) -> list[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def _within(module: str, packages) -> bool:
    return any(module == package or module.startswith(package + ".") for package in packages)


def test_the_cache_node_loads_no_django_nor_msr():
    loaded = _loaded_after("\n".join(f"import {module}" for module in NODE_MODULES))
    forbidden = [m for m in loaded if _within(m, ("django", "msr", "accounts", "mirroring", "rest_framework",
                                                  "celery", "guardian"))]
    assert forbidden == []
    assert [m for m in loaded if _within(m, ("caches",)) and m not in NODE_MODULES] == []  # models, grants, tasks...


def test_the_protocol_package_imports_nothing_of_ours_nor_django():
    loaded = _loaded_after("import pkgutil, importlib, protocol\n"
                           "for info in pkgutil.iter_modules(protocol.__path__):\n"
                           "    importlib.import_module('protocol.' + info.name)")
    assert "protocol.grants" in loaded
    assert [m for m in loaded if _within(m, ("django", "msr", "accounts", "caches", "mirroring", "tests"))] == []
