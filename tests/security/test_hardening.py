"""Smaller ways in: deeply nested JSON, tokens of one type presented as another, an
account oracle for anonymous callers, an organization page that showed too much, files
others could read, cookies and headers behind https."""

import json
import os
import re
import stat

import pytest
import requests
from django.conf import settings

from tests.client import Registry, sha256
from tests.processes import start_msr

DEEP = b"[" * 100_000 + b"]" * 100_000


def test_a_deeply_nested_manifest_is_a_manifest_invalid_error(msr, personas, unique):
    alice = Registry(msr, "alice", personas["alice"].token)
    body = b'{"schemaVersion": 2, "x": ' + DEEP + b"}"
    response = alice.push_manifest(f"alice/deep-{unique}", "v1", body)
    assert response.status_code == 400
    assert response.json()["errors"][0]["code"] == "MANIFEST_INVALID"
    assert "nested" in response.json()["errors"][0]["detail"]


def test_a_deeply_nested_config_does_not_break_the_repository_for_everyone(msr, personas, unique):
    alice = Registry(msr, "alice", personas["alice"].token)
    name = f"acme/nested-{unique}"
    config, layer = DEEP, b"a layer"
    for blob in (config, layer):
        assert alice.push_blob(name, blob).status_code == 201
    document = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config),
                           "size": len(config)},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(layer),
                            "size": len(layer)}]}
    assert alice.push_manifest(name, "v1", json.dumps(document).encode()).status_code == 201
    tags = requests.get(f"{msr}/api/v0/repositories/{name}/tags", auth=("alice", personas["alice"].token), timeout=30)
    assert tags.status_code == 200 and tags.json()[0]["platforms"] == []
    assert requests.get(f"{msr}/api/v0/repositories/{name}/tags/v1", timeout=30,
                        auth=("alice", personas["alice"].token)).status_code == 200


def test_a_deeply_nested_api_body_is_a_json_400(msr, personas):
    response = requests.post(f"{msr}/api/v0/webhooks", data=DEEP, timeout=30,
                             headers={"Content-Type": "application/json"}, auth=("alice", personas["alice"].token))
    assert response.status_code == 400 and "nested" in response.json()["detail"]


@pytest.mark.parametrize("kind", ["blob-grant", "cache-purge"])
def test_only_access_tokens_open_the_registry(msr, personas, kind):
    """A cache named like the token service would otherwise turn its grants into tokens."""
    from msr.tokens import sign

    forged = sign({"typ": kind, "aud": settings.TOKEN_SERVICE, "sub": "alice", "repo": "acme/private-app",
                   "digest": "sha256:" + "0" * 64,
                   "access": [{"type": "repository", "name": "acme/private-app", "actions": ["pull", "push"]}]}, 60)
    response = requests.get(f"{msr}/v2/acme/private-app/tags/list", headers={"Authorization": f"Bearer {forged}"},
                            timeout=30)
    assert response.status_code == 401
    assert response.json()["errors"][0]["detail"] == "not an access token"


def test_anonymous_callers_cannot_tell_who_has_an_account(msr, personas, unique):
    from accounts.services import create_user

    create_user(f"quiet{unique}", "quiet-pass-phrase")
    existing = requests.get(f"{msr}/api/v0/repositories/quiet{unique}", timeout=30)
    missing = requests.get(f"{msr}/api/v0/repositories/nobody{unique}", timeout=30)
    assert existing.status_code == missing.status_code == 200
    assert existing.json() == missing.json()


def test_the_organization_page_shows_members_only_what_they_may_read(msr, personas):
    browser = requests.Session()
    page = browser.get(f"{msr}/login/")
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    browser.post(f"{msr}/login/", headers={"Referer": page.url},
                 data={"username": "mel", "password": personas["mel"].password, "csrfmiddlewaretoken": csrf})
    org = browser.get(f"{msr}/orgs/acme/")
    assert org.status_code == 200 and "public-app" in org.text
    assert "private-app" not in org.text
    bob = requests.Session()
    page = bob.get(f"{msr}/login/")
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    bob.post(f"{msr}/login/", headers={"Referer": page.url},
             data={"username": "bob", "password": personas["bob"].password, "csrfmiddlewaretoken": csrf})
    assert "private-app" in bob.get(f"{msr}/orgs/acme/").text  # bob's team may read it


def test_the_data_dir_is_its_owner_s_alone(tmp_path):
    data = tmp_path / "data"
    process, url = start_msr("up", data, None, tmp_path / "logs")
    try:
        assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
        for path in ("msr.sqlite3", "secret_key", "token_key.pem"):
            assert stat.S_IMODE(os.stat(data / path).st_mode) & 0o077 == 0, path
    finally:
        process.stop()


def test_behind_https_cookies_are_secure_hosts_are_checked_and_pages_carry_the_headers(db_url, artifacts_dir):
    process, url = start_msr("serve", settings.DATA_DIR, db_url, artifacts_dir / "logs", extra_env={
        "MSR_PUBLIC_URL": "https://registry.example.com", "MSR_HSTS_SECONDS": "3600"})
    try:
        https = {"Host": "registry.example.com", "X-Forwarded-Proto": "https"}
        page = requests.get(f"{url}/login/", headers=https, timeout=30)
        assert page.status_code == 200
        assert "Secure" in page.headers["Set-Cookie"]
        assert page.headers["Strict-Transport-Security"] == "max-age=3600"
        assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
        assert requests.get(f"{url}/login/", headers={"Host": "evil.example"}, timeout=30).status_code == 400
        challenge = requests.get(f"{url}/v2/", headers=https, timeout=30).headers["WWW-Authenticate"]
        assert 'realm="https://registry.example.com/auth/token"' in challenge
        assert requests.get(f"{url}/healthz", timeout=30).status_code == 200  # probes by loopback address
    finally:
        process.stop()
