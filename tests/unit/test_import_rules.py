"""The dependency rules of shared/design.md ("Dependencies between parts"), checked over
the whole tree from the source (every `import` and `from … import`, at module level and
inside functions): an import that breaks a rule fails here with the file and line.

- `accounts` depends on nothing of ours (but the Django-free `protocol`).
- `protocol` is Django-free and imports nothing of ours: the cache node runs on it.
- The cache node (caches/node.py and what it runs on) imports no Django, no model and
  nothing of `msr`, `accounts` or `mirroring`.
- Nothing imports the Django project (`msr/project/`: settings, URLconf, WSGI, Celery,
  CLI, metrics, logs, probes, operators' commands) but the project itself.
- The registry core (`msr`, but `msr/project/`) knows nothing of `mirroring`, and asks `caches` one question
  only: where a client should fetch a layer (msr/registry/views.py, caches.grants).
  Apps add what the core needs through msr/extensions.py.
- Nothing imports `mirroring` but `mirroring`.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("msr", "accounts", "caches", "mirroring", "protocol")

# msr/project/ is the Django project: it wires the core and the apps into processes and
# may import anything; nothing imports it but itself and msr/__init__.py, which loads the
# Celery application with Django (the usual Django + Celery layout).
PROJECT_PREFIX = "msr/project/"
MAY_IMPORT_PROJECT = {("msr/__init__.py", "msr.project.celery")}
NODE = {"caches/node.py", "caches/httpserver.py", "caches/endpoint.py", "caches/region.py"}
# The one question the core asks of caches.
CORE_MAY_ASK_CACHES = {("msr/registry/views.py", "caches.grants")}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file; relative imports made absolute."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found += [(node.lineno, f"{base}.{alias.name}" if base in PACKAGES else base) for alias in node.names]
    return sorted(set(found))


def _sources():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.parts:
                yield path.relative_to(ROOT).as_posix(), path


def _top(module: str) -> str:
    return module.split(".")[0]


def violations() -> list[str]:
    broken = []
    for name, path in _sources():
        package = name.split("/")[0]
        for line, module in _imports(path):
            top = _top(module)

            def refuse(rule):
                broken.append(f"{name}:{line} imports {module}: {rule}")

            if package == "accounts" and top in ("msr", "caches", "mirroring"):
                refuse("accounts depends on nothing of ours")
            if package == "protocol" and (top in ("msr", "accounts", "caches", "mirroring", "django",
                                                  "rest_framework")):
                refuse("protocol is Django-free and imports nothing of ours")
            node_modules = {n.removesuffix(".py").replace("/", ".") for n in NODE}
            if name in NODE and (top in ("msr", "accounts", "mirroring", "django", "rest_framework")
                                 or (top == "caches" and module.rsplit(".", 1)[0] not in node_modules
                                     and module not in node_modules)):
                refuse("the cache node imports no Django, no model, nothing of msr, accounts or mirroring")
            in_project = name.startswith(PROJECT_PREFIX)
            if (module + ".").startswith("msr.project.") and not in_project and (name, module) not in MAY_IMPORT_PROJECT:
                refuse("nothing imports the project (msr/project/) but the project")
            if package == "msr" and not in_project:
                if top == "mirroring":
                    refuse("the registry core knows nothing of mirroring (it emits signals and outbox rows)")
                if top == "caches" and not any(name == where and (module + ".").startswith(allowed + ".")
                                               for where, allowed in CORE_MAY_ASK_CACHES):
                    refuse("the core asks caches only where a layer should come from (msr/registry/views.py)")
            if top == "mirroring" and package != "mirroring" and not in_project:
                refuse("nothing imports mirroring but mirroring")
    return broken


def test_the_tree_keeps_the_dependency_rules():
    assert violations() == []


@pytest.mark.parametrize("where, line, rule", [
    ("accounts/models.py", "from msr import services", "accounts depends on nothing of ours"),
    ("msr/services.py", "from mirroring.models import Job", "knows nothing of mirroring"),
    ("msr/retention.py", "from caches.models import CacheMetrics", "asks caches only"),
    ("caches/node.py", "from django.conf import settings", "the cache node imports no Django"),
    ("protocol/grants.py", "from msr import tokens", "protocol is Django-free"),
    ("caches/api.py", "from mirroring import jobs", "nothing imports mirroring but mirroring"),
    ("msr/services.py", "from msr.project import metrics", "nothing imports the project"),
    ("mirroring/jobs.py", "from msr.project.settings import DATA_DIR", "nothing imports the project"),
])
def test_a_forbidden_import_is_reported_with_its_place(tmp_path, monkeypatch, where, line, rule):
    """The check itself: the same tree with one forbidden import added fails it."""
    copy = tmp_path / "tree"
    for package in PACKAGES:
        if (ROOT / package).exists():
            for path in (ROOT / package).rglob("*.py"):
                target = copy / path.relative_to(ROOT)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(path.read_text())
    target = copy / where
    target.write_text(target.read_text() + f"\n\ndef _added():\n    {line}\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", copy)
    found = violations()
    assert found and all(f.startswith(f"{where}:") for f in found) and any(rule in f for f in found), found
