"""docker/: the image installs MSR with the README's command, its build context and
volumes are lean, and the compose file validates with Debian's docker-compose (without
starting it: no Docker Hub for postgres and redis here). tests/test_image.py builds the
image and runs it."""

import os
import re
import subprocess
from pathlib import Path

import yaml

from tests.processes import MSR, need

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"


def compose(*args, env=None):
    need("docker-compose")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "MSR_"))}
    return subprocess.run(["docker-compose", "-f", str(DOCKER / "compose.yaml"), *args],
                          env={**clean, **(env or {})}, capture_output=True, text=True, timeout=60)


def test_the_compose_file_validates_with_the_example_settings():
    result = compose("--env-file", str(DOCKER / "env.example"), "config", "-q")
    assert result.returncode == 0, result.stderr


def test_the_compose_file_refuses_to_start_without_passwords():
    result = compose("config", "-q", env={"MSR_SECRET_KEY": "x", "MSR_ADMIN_PASSWORD": "y"})
    assert result.returncode != 0 and "set POSTGRES_PASSWORD" in result.stderr


def test_services_share_the_data_volume_and_have_health_checks():
    result = compose("--env-file", str(DOCKER / "env.example"), "config")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert set(services) == {"postgres", "redis", "migrate", "web", "worker", "beat", "cache"}
    for name in ("web", "worker", "beat", "migrate"):
        volumes = services[name]["volumes"]
        assert any((v["source"] if isinstance(v, dict) else v.split(":")[0]) == "msr-data" for v in volumes), name
        assert services[name]["environment"]["DATABASE_URL"].startswith("postgres://msr:change-me@postgres:")
        assert services[name]["environment"]["MSR_BROKER_URL"] == "redis://redis:6379/0"
    for name in ("postgres", "redis", "web", "worker", "beat", "cache"):
        assert services[name]["healthcheck"]["test"], name
    assert services["web"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    # the admin password reaches the migrate job through the environment, never argv
    assert "change-me-too" not in " ".join(services["migrate"]["entrypoint"])


def test_the_image_installs_msr_with_the_readme_command():
    readme = (ROOT / "README.md").read_text()
    first = re.search(r"```sh\n(.+?)\n```", readme, re.S).group(1)
    install = first.split(" && .venv/bin/msr")[0]
    assert install == "python3 -m venv .venv && .venv/bin/pip install -e ."
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert f"RUN {install}" in dockerfile


def test_the_build_context_is_only_what_pip_install_and_the_processes_need():
    """.dockerignore is a whitelist: the host's .venv and var/, tests, bench and docs never
    enter the image (tests/test_image.py looks inside a built one)."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*"
    included = {p[1:] for p in patterns if p.startswith("!")}
    assert included == {"pyproject.toml", "msr", "accounts", "caches", "mirroring", "protocol", "templates",
                        "docker/ca"}
    packages = re.search(r"include = \[(.+?)\]", (ROOT / "pyproject.toml").read_text()).group(1)
    for package in re.findall(r'"(\w+)\*"', packages):  # every package `pip install .` builds
        assert package in included, package


def test_the_image_has_no_anonymous_volume_and_checks_each_role_where_it_listens():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    instructions = [line.split()[0] for line in dockerfile.splitlines() if line and not line.startswith((" ", "#"))]
    assert "VOLUME" not in instructions
    healthcheck = next(line for line in dockerfile.splitlines() if line.startswith("HEALTHCHECK"))
    assert healthcheck.endswith('CMD ["msr", "healthcheck"]') and "5000" not in healthcheck
    for arg in ("BASE_IMAGE=python:3.11-slim-bookworm", "PIP_INDEX_URL", "PIP_TRUSTED_HOST"):
        assert f"ARG {arg}\n" in dockerfile, arg
    assert "FROM ${BASE_IMAGE}\n" in dockerfile
    # the compose file: a named volume (declared) wherever a role keeps data, and the
    # services' checks are the image's own, at their own binds
    result = compose("--env-file", str(DOCKER / "env.example"), "config")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    cache = services["cache"]
    data_dir = cache["command"][cache["command"].index("--data") + 1]
    mounts = {(v["source"], v["target"]) if isinstance(v, dict) else tuple(v.split(":")[:2])
              for v in cache["volumes"]}
    assert ("cache-data", data_dir) in mounts
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            assert source in config["volumes"], (name, source)
    for name in ("web", "worker", "beat", "cache"):
        assert services[name]["healthcheck"]["test"][:3] == ["CMD", "msr", "healthcheck"], name


def test_adduser_if_missing_is_safe_to_run_at_every_start(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "MSR_", "DATABASE_URL"))}
    env.update(MSR_DATA_DIR=str(tmp_path), MSR_NEW_USER_PASSWORD="first-password-1")
    subprocess.run([MSR, "manage", "migrate", "--no-input", "-v", "0"], env=env, check=True, timeout=300)
    argv = [MSR, "manage", "adduser", "boss", "--admin", "--if-missing"]
    assert "created user boss" in subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    again = subprocess.run(argv, env={**env, "MSR_NEW_USER_PASSWORD": "other-password-2"},
                           capture_output=True, text=True)
    assert again.returncode == 0 and "exists" in again.stdout
    plain = subprocess.run([MSR, "manage", "adduser", "boss"], env=env, capture_output=True, text=True)
    assert plain.returncode != 0  # without --if-missing a duplicate is still an error
