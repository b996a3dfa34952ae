"""MSR_OIDC_* are checked when MSR starts, with a message naming the variable (like
MSR_LDAP_*). Each case loads the settings in a fresh interpreter."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.fresh_interpreter

ROOT = Path(__file__).resolve().parents[2]
GOOD = {"MSR_OIDC_ISSUER": "https://sso.example.com/realms/corp", "MSR_OIDC_CLIENT_ID": "msr",
        "MSR_OIDC_CLIENT_SECRET": "s3cret"}


def _start(tmp_path, **variables) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MSR_OIDC_", "DJANGO_"))}
    env.update(DJANGO_SETTINGS_MODULE="msr.project.settings", MSR_DATA_DIR=str(tmp_path), **variables)
    code = "from django.conf import settings; print(settings.OIDC_SCOPES, settings.OIDC_PROVIDER_NAME)"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("variables, message", [
    ({"MSR_OIDC_ISSUER": "sso.example.com"}, "MSR_OIDC_ISSUER='sso.example.com': expected the provider's issuer URL"),
    ({"MSR_OIDC_CLIENT_ID": ""}, "MSR_OIDC_CLIENT_ID must name MSR's client"),
    ({"MSR_OIDC_CLIENT_SECRET": ""}, "MSR_OIDC_CLIENT_SECRET (or MSR_OIDC_CLIENT_SECRET_FILE) must hold"),
    ({"MSR_OIDC_CLIENT_SECRET_FILE": "/nonexistent/secret"}, "MSR_OIDC_CLIENT_SECRET_FILE=/nonexistent/secret"),
    ({"MSR_OIDC_SCOPES": "email profile"}, "MSR_OIDC_SCOPES='email profile': must include openid"),
    ({"MSR_OIDC_CA_FILE": "/nonexistent/ca.pem"}, "MSR_OIDC_CA_FILE=/nonexistent/ca.pem: no such file"),
    ({"MSR_OIDC_TIMEOUT": "0"}, "MSR_OIDC_TIMEOUT: expected a number of seconds"),
    ({"MSR_OIDC_RECHECK_SECONDS": "-5"}, "MSR_OIDC_RECHECK_SECONDS: expected a number of seconds"),
])
def test_a_bad_single_sign_on_setting_stops_msr_with_a_message_naming_it(tmp_path, variables, message):
    result = _start(tmp_path, **{**GOOD, **variables})
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert "s3cret" not in result.stderr


def test_good_settings_start_with_the_defaults(tmp_path):
    result = _start(tmp_path, **GOOD)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["openid", "email", "profile", "groups", "single", "sign-on"]
    assert _start(tmp_path, MSR_OIDC_ISSUER="").returncode == 0  # off: nothing else needed
