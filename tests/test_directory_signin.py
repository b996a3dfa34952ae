"""Signing in with company directory accounts (MSR_LDAP_*) against a real slapd
(tests/fixtures/ldap.py) and real `msr serve` processes: the token service (Basic and the
OAuth password grant), skopeo, the REST API, the web sign-in, LDAPS, the admin group, and
what still works when the directory is down. Directory people: dora, erin, frank, gina
(gina in cn=admins); the suite's local personas (admin, alice, ...) are not in it."""

import json

import jwt
import pytest
import requests
from django.conf import settings

from tests.client import Registry
from tests.fixtures.ldap import ADMINS_GROUP, PEOPLE_IN_DIRECTORY, SERVICE_PASSWORD, make_ca, slapd  # noqa: F401
from tests.fixtures.ui import browser, shot  # noqa: F401  (fixtures)
from tests.processes import free_port, need, run, start_msr

DORA, ERIN, FRANK, GINA = (PEOPLE_IN_DIRECTORY[uid] for uid in ("dora", "erin", "frank", "gina"))


@pytest.fixture(scope="module")
def directory_msr(slapd, db_url, artifacts_dir):
    """`msr serve` signing in through the directory (ldap:// with StartTLS and the test CA)."""
    process, url = start_msr("serve", settings.DATA_DIR, db_url, artifacts_dir / "logs",
                             extra_env=slapd.env(), workers=1)
    yield url
    process.stop()


@pytest.fixture(scope="module")
def down_msr(slapd, db_url, artifacts_dir):
    """`msr serve` whose directory does not answer (a closed port)."""
    process, url = start_msr("serve", settings.DATA_DIR, db_url, artifacts_dir / "logs",
                             extra_env=slapd.env(MSR_LDAP_URL=f"ldap://127.0.0.1:{free_port()}"), workers=1)
    yield url, process
    process.stop()


def _token(url, username, password, *scopes) -> requests.Response:
    return Registry(url, username, password).token_response(*scopes)


def _access(response) -> list:
    return jwt.decode(response.json()["token"], options={"verify_signature": False})["access"]


def _password_grant(url, username, password) -> requests.Response:
    return requests.post(f"{url}/auth/token", data={
        "grant_type": "password", "service": "msr", "client_id": "tests", "username": username,
        "password": password, "scope": f"repository:{username}/app:pull"}, timeout=30)


def test_a_directory_user_signs_in_and_gets_an_account_from_the_directory(directory_msr):
    from accounts.models import Namespace, User

    response = _token(directory_msr, "dora", DORA.password, "repository:dora/app:pull,push")
    assert response.status_code == 200, response.text
    assert _access(response) == [{"type": "repository", "name": "dora/app", "actions": ["pull", "push"]}]

    user = User.objects.get(username="dora")
    assert (user.source, user.full_name, user.email) == ("ldap", "Dora Directory", "dora@example.org")
    assert not user.has_usable_password()  # only the directory knows it
    assert not user.is_superuser  # not in cn=admins
    assert Namespace.objects.get(name="dora").user == user  # she can push to her own namespace
    # Docker's `login` refresh: the OAuth password grant goes through the same check.
    assert _password_grant(directory_msr, "dora", DORA.password).status_code == 200


def test_skopeo_logs_in_with_a_directory_account(directory_msr, tmp_path):
    need("skopeo")
    host, authfile = directory_msr.removeprefix("http://"), tmp_path / "auth.json"
    authfile.write_text("{}")
    run(["skopeo", "login", "--tls-verify=false", "--authfile", str(authfile), "-u", "erin", "-p",
         ERIN.password, host])
    assert host in json.loads(authfile.read_text())["auths"]
    refused = run(["skopeo", "login", "--tls-verify=false", "--authfile", str(tmp_path / "other.json"),
                   "-u", "erin", "-p", "not-erins-password", host], check=False)
    assert refused.returncode != 0 and "invalid username/password" in refused.stderr


def test_a_wrong_directory_password_is_refused(directory_msr):
    response = _token(directory_msr, "erin", "not-erins-password")
    assert response.status_code == 401
    assert response.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert _token(directory_msr, "nobody-in-the-directory", "whatever").status_code == 401


def test_the_directory_decides_when_a_password_changes(directory_msr, slapd):
    old, new = FRANK.password, "frank-new-directory-pw"
    assert _token(directory_msr, "frank", old).status_code == 200
    slapd.set_password("frank", new)
    try:
        assert _token(directory_msr, "frank", old).status_code == 401  # not remembered by MSR
        assert _password_grant(directory_msr, "frank", old).status_code == 400
        assert _token(directory_msr, "frank", new).status_code == 200
    finally:
        slapd.set_password("frank", old)


def test_a_local_users_password_is_still_checked_by_msr(directory_msr, personas):
    assert _token(directory_msr, "admin", "admin-password").status_code == 200
    assert _token(directory_msr, "admin", "wrong-password").status_code == 401


def test_the_admin_group_makes_a_system_admin_until_its_member_leaves(directory_msr, slapd):
    from accounts.models import User

    assert _token(directory_msr, "gina", GINA.password).status_code == 200
    assert User.objects.get(username="gina").is_superuser
    # a system admin may list every account's tokens
    assert requests.get(f"{directory_msr}/api/v0/tokens?user=dora", auth=("gina", GINA.password),
                        timeout=30).status_code == 200
    slapd.set_member(ADMINS_GROUP, GINA.dn, present=False)
    try:
        assert _token(directory_msr, "gina", GINA.password).status_code == 200
        assert not User.objects.get(username="gina").is_superuser
        assert requests.get(f"{directory_msr}/api/v0/tokens?user=dora", auth=("gina", GINA.password),
                            timeout=30).status_code == 403
    finally:
        slapd.set_member(ADMINS_GROUP, GINA.dn, present=True)


def test_msr_does_not_set_a_directory_users_password(directory_msr, personas):
    assert _token(directory_msr, "dora", DORA.password).status_code == 200
    response = requests.patch(f"{directory_msr}/api/v0/accounts/dora", json={"password": "a-local-one-1234"},
                              auth=("admin", "admin-password"), timeout=30)
    assert response.status_code == 400 and "company directory" in response.json()["password"][0]
    assert _token(directory_msr, "dora", "a-local-one-1234").status_code == 401


def test_a_directory_user_logs_in_with_a_personal_access_token(directory_msr):
    created = requests.post(f"{directory_msr}/api/v0/tokens", json={"name": "ci"},
                            auth=("erin", ERIN.password), timeout=30)
    assert created.status_code == 201, created.text
    secret = created.json()["token"]
    # `docker login -u erin -p <token>`, then a pull's token request
    response = _token(directory_msr, "erin", secret, "repository:erin/app:pull")
    assert response.status_code == 200, response.text
    assert _access(response)[0]["actions"] == ["pull"]


def test_when_the_directory_is_down_directory_users_are_told_and_the_rest_works(
        directory_msr, down_msr, personas):
    from accounts.models import AccessToken, User

    url, process = down_msr
    assert _token(directory_msr, "dora", DORA.password).status_code == 200  # her account exists
    _, dora_token = AccessToken.issue(User.objects.get(username="dora"), AccessToken.PERSONAL, "ci")

    refused = _token(url, "dora", DORA.password)
    assert refused.status_code == 503
    assert refused.json()["errors"][0]["code"] == "UNAVAILABLE"
    assert "cannot reach the company directory" in refused.json()["errors"][0]["message"]
    oauth = _password_grant(url, "dora", DORA.password)
    assert (oauth.status_code, oauth.json()["error"]) == (503, "temporarily_unavailable")
    api = requests.get(f"{url}/api/v0/tokens", auth=("dora", DORA.password), timeout=30)
    assert api.status_code == 503 and "company directory" in api.json()["detail"]

    # PATs are MSR's own; local accounts never ask the directory
    assert _token(url, "dora", dora_token, "repository:dora/app:pull").status_code == 200
    assert _token(url, "admin", "admin-password").status_code == 200

    log = process.log()
    assert "company directory unavailable" in log
    assert DORA.password not in log and SERVICE_PASSWORD not in log


def test_ldaps_with_the_directorys_ca_signs_in_and_a_wrong_ca_is_refused(slapd, db_url, artifacts_dir, tmp_path):
    logs = artifacts_dir / "logs"
    ldaps = slapd.env(MSR_LDAP_URL=slapd.ldaps_url, MSR_LDAP_START_TLS="false")
    process, url = start_msr("serve", settings.DATA_DIR, db_url, logs, extra_env=ldaps, workers=1)
    try:
        assert _token(url, "erin", ERIN.password).status_code == 200
    finally:
        process.stop()

    other_ca = make_ca(tmp_path / "other-ca", "Not the directory's CA")
    process, url = start_msr("serve", settings.DATA_DIR, db_url, logs,
                             extra_env={**ldaps, "MSR_LDAP_CA_FILE": str(other_ca)}, workers=1)
    try:
        response = _token(url, "erin", ERIN.password)
        assert response.status_code == 503, response.text
        assert "cannot reach the company directory" in response.json()["errors"][0]["message"]
        assert _token(url, "admin", "admin-password").status_code == 200
        assert "company directory unavailable: Can't contact LDAP server" in process.log()
        assert "or its TLS certificate is not trusted: check MSR_LDAP_CA_FILE" in process.log()
    finally:
        process.stop()


def _sign_in_page(browser, url, username, password):
    context = browser.new_context(base_url=url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto("/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    return context, page


def test_a_directory_user_signs_in_to_the_web_ui_and_is_told_when_the_directory_is_down(
        browser, directory_msr, down_msr):
    context, page = _sign_in_page(browser, directory_msr, "erin", ERIN.password)
    try:
        page.wait_for_url("**/repositories/")
        assert "erin" in page.content()
        page.goto("/settings/password/")  # her password is the directory's
        assert page.get_by_text("Your password is your company directory password").is_visible()
        assert page.get_by_label("Old password").count() == 0
    finally:
        context.close()

    context, page = _sign_in_page(browser, down_msr[0], "erin", ERIN.password)
    try:
        page.wait_for_load_state()
        assert "/login/" in page.url
        message = page.get_by_text("MSR cannot reach the company directory right now")
        assert message.is_visible()
        shot(page, "directory-down-sign-in")
    finally:
        context.close()
