"""Single sign-on with OpenID Connect against a real provider (glewlwyd,
tests/fixtures/oidc.py) and real `msr serve` processes, driven by Chromium where a person
uses a browser: the account made from the claims, teams bound to a groups claim, personal
access tokens for skopeo, signing out at the provider too, an https provider's CA, and the
refusals (tampered state, the provider saying no, a discovery naming another issuer, the
egress policy, a provider that does not answer).
The ID token checks (signature, expiry, audience, nonce) are in tests/unit/test_sso_callback.py.
People at the provider: olivia (developers, admins), pete (developers), rita (none), lena
(none; a test removes her)."""

import json
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from django.conf import settings

from tests.client import Registry
from tests.fixtures.ldap import make_ca
from tests.fixtures.oidc import CLIENT_SECRET, PEOPLE_AT_PROVIDER, glewlwyd, glewlwyd_https  # noqa: F401
from tests.fixtures.ui import browser, shot  # noqa: F401  (fixtures)
from tests.processes import free_port, need, run, start_msr

OLIVIA, PETE, RITA, LENA = (PEOPLE_AT_PROVIDER[name] for name in ("olivia", "pete", "rita", "lena"))
PRIVATE = "sso-corp/internal"


@pytest.fixture(scope="module")
def sso_msr(glewlwyd, db_url, artifacts_dir):
    """`msr serve` with single sign-on through glewlwyd; MSR's callback registered there."""
    process, url = start_msr("serve", settings.DATA_DIR, db_url, artifacts_dir / "logs",
                             extra_env=glewlwyd.env(MSR_OIDC_RECHECK_SECONDS="2"), workers=1)
    glewlwyd.add_client(f"{url}/oidc/callback/")
    yield url, process
    process.stop()


@pytest.fixture(scope="module")
def developers_team(sso_msr, personas):
    """The organization sso-corp; its team `developers` follows the provider's group
    `developers` and may pull the private repository sso-corp/internal (one image, v1)."""
    from accounts.models import Namespace
    from accounts.services import create_organization, create_team, set_team_access
    from msr.models import Repository

    org = Namespace.objects.filter(name="sso-corp").first() or create_organization(
        "sso-corp", owner=personas["alice"].user)
    repository = Repository.objects.get_or_create(namespace=org, name="internal")[0]
    team = org.teams.filter(name="developers").first() or create_team(org, "developers")
    team.sync_kind, team.sync_value = team.SSO_GROUP, "developers"
    team.save()
    set_team_access(team, repository, "read-only")
    alice = Registry(sso_msr[0], "alice", personas["alice"].token)
    _, pushed = alice.push_image(PRIVATE, "v1")
    assert pushed.status_code == 201, pushed.text
    return team


def _through_provider(page, person, arrived) -> None:
    """At the provider: log in, and consent the first time (tick every scope, "Grant
    access"), then "Continue", until `arrived()`."""
    page.locator("#username").fill(person.username)
    page.locator("#password").fill(person.password)
    page.locator("#loginbut").click()
    granted = False
    for _ in range(40):
        if arrived():
            return
        grant = page.get_by_role("button", name="Grant access")
        if not granted and grant.is_visible():
            unticked = page.locator("input[type=checkbox]:not(:checked):not(:disabled)")
            while unticked.count():
                unticked.first.check()
            grant.click()
            granted = True
        elif page.get_by_role("button", name="Continue").is_visible():
            page.get_by_role("button", name="Continue").click()
        page.wait_for_timeout(250)
    shot(page, "sso-stuck-at-provider")
    raise AssertionError(f"still at the provider: {page.url} (screenshot sso-stuck-at-provider)")


def _sso_sign_in(browser, url, person):
    """Through MSR's sign-in page and the provider's, back to MSR: the context and the page."""
    context = browser.new_context(base_url=url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto("/login/")
    page.get_by_role("link", name="Sign in with Glewlwyd").click()
    _through_provider(page, person, lambda: page.url.startswith(url))
    page.wait_for_load_state()
    return context, page


def _token(url, username, secret, *scopes) -> requests.Response:
    return Registry(url, username, secret).token_response(*scopes)


def _logins(username):
    from msr.models import Event

    return list(Event.objects.filter(type=Event.LOGIN, actor=username).order_by("-id"))


def _in_team(team, username) -> bool:
    return team.group.user_set.filter(username=username).exists()


def test_a_person_signs_in_with_the_provider_and_the_groups_claim_decides_their_teams(
        browser, sso_msr, developers_team, glewlwyd):
    from accounts.models import Namespace, User

    url, process = sso_msr
    context, page = _sso_sign_in(browser, url, OLIVIA)
    try:
        page.wait_for_url("**/repositories/")
        assert page.get_by_text("Signed in as").is_visible() and "olivia" in page.content()
        shot(page, "sso-signed-in")
    finally:
        context.close()
    user = User.objects.get(username="olivia")
    assert (user.source, user.full_name, user.email) == ("oidc", "Olivia Oidc", "olivia@sso.example.org")
    assert user.external_id.startswith(f"{glewlwyd.issuer} ") and not user.has_usable_password()
    assert user.is_superuser  # in the provider's `admins` (MSR_OIDC_ADMIN_GROUP)
    assert Namespace.objects.get(name="olivia").user == user
    assert _in_team(developers_team, "olivia")
    event = _logins("olivia")[0]
    assert event.detail["succeeded"] and event.detail["method"] == "oidc" and event.detail["created"]
    assert event.detail["joined"] == ["sso-corp/developers"]

    _, secret = _issue_token(user)
    assert Registry(url, "olivia", secret).granted(PRIVATE, "pull") == {"pull"}

    glewlwyd.set_groups("olivia", [])  # out of developers and admins at the provider
    try:
        context, page = _sso_sign_in(browser, url, OLIVIA)
        page.wait_for_url("**/repositories/")
        context.close()
        user.refresh_from_db()
        assert not _in_team(developers_team, "olivia") and not user.is_superuser
        assert _logins("olivia")[0].detail["left"] == ["sso-corp/developers"]
        assert Registry(url, "olivia", secret).granted(PRIVATE, "pull") == set()
        assert User.objects.filter(username="olivia").count() == 1  # the same account, found by its subject
    finally:
        glewlwyd.set_groups("olivia", list(OLIVIA.groups))
    log = process.log()
    assert "code=" not in log and CLIENT_SECRET not in log


def _issue_token(user):
    from accounts.models import AccessToken

    return AccessToken.issue(user, AccessToken.PERSONAL, "test")


def _token_from_the_tokens_page(page, name: str) -> str:
    """Signed in through the provider: a personal access token made on /tokens/, its secret."""
    page.wait_for_url("**/repositories/")
    page.goto("/tokens/")
    page.get_by_label("Token name").fill(name)
    page.get_by_role("button", name="Create token").click()
    return page.locator("#new-token").inner_text().strip()


def test_a_token_made_after_single_sign_on_works_for_skopeo_and_no_password_does(
        browser, sso_msr, developers_team, tmp_path):
    need("skopeo")
    url, _ = sso_msr
    context, page = _sso_sign_in(browser, url, PETE)
    try:
        secret = _token_from_the_tokens_page(page, "ci")
        page.goto("/settings/password/")  # nothing to change: no MSR password
        assert page.get_by_text("your MSR account has no password").is_visible()
        assert page.get_by_label("Old password").count() == 0
    finally:
        context.close()

    host, authfile = url.removeprefix("http://"), tmp_path / "auth.json"
    authfile.write_text("{}")
    run(["skopeo", "login", "--tls-verify=false", "--authfile", str(authfile), "-u", "pete", "-p", secret, host])
    pulled = json.loads(run(["skopeo", "inspect", "--tls-verify=false", "--authfile", str(authfile),
                             f"docker://{host}/{PRIVATE}:v1"]).stdout)
    assert pulled["Name"].endswith(PRIVATE)
    run(["skopeo", "copy", "--src-tls-verify=false", "--authfile", str(authfile), f"docker://{host}/{PRIVATE}:v1",
         f"oci:{tmp_path / 'pulled'}:v1"])

    # No password is pete's in MSR: not the provider's, not any other.
    for password in (PETE.password, "", "anything-at-all", "!"):
        assert _token(url, "pete", password, f"repository:{PRIVATE}:pull").status_code == 401
    assert requests.get(f"{url}/api/v0/repositories", auth=("pete", PETE.password), timeout=30).status_code == 401
    listed = requests.get(f"{url}/api/v0/repositories", auth=("pete", secret), timeout=30)  # Basic with the token
    assert listed.status_code == 200
    assert {"namespace": "sso-corp", "name": "internal"}.items() <= next(
        r for r in listed.json()["results"] if r["name"] == "internal").items()  # private: seen through the team
    refused = run(["skopeo", "login", "--tls-verify=false", "--authfile", str(tmp_path / "other.json"),
                   "-u", "pete", "-p", PETE.password, host], check=False)
    assert refused.returncode != 0


def test_a_person_removed_at_the_provider_loses_their_tokens(
        browser, sso_msr, glewlwyd, tmp_path):
    """MSR asks the provider (a refresh-token grant, every MSR_OIDC_RECHECK_SECONDS, here 2 s)
    whether a single sign-on still stands before honouring the person's tokens."""
    import time

    need("skopeo")
    url, _ = sso_msr
    context, page = _sso_sign_in(browser, url, LENA)
    try:
        secret = _token_from_the_tokens_page(page, "laptop")
    finally:
        context.close()
    offline = requests.get(f"{url}/auth/token", auth=("lena", secret), timeout=30,
                           params={"service": "msr", "offline_token": "true"})
    assert offline.status_code == 200, offline.text
    refresh = offline.json()["refresh_token"]
    time.sleep(2.5)
    assert _token(url, "lena", secret).status_code == 200  # the provider was asked: it still stands

    glewlwyd.api("DELETE", "/api/user/lena")  # she left the company
    time.sleep(2.5)
    refused = _token(url, "lena", secret)
    assert refused.status_code == 401, refused.text
    assert "single sign-on with Glewlwyd has ended" in refused.json()["errors"][0]["message"]
    grant = requests.post(f"{url}/auth/token", timeout=30, data={
        "grant_type": "refresh_token", "refresh_token": refresh, "service": "msr", "client_id": "tests"})
    assert grant.status_code == 400 and grant.json()["error"] == "invalid_grant", grant.text
    api = requests.get(f"{url}/api/v0/repositories", headers={"Authorization": f"Bearer {secret}"}, timeout=30)
    assert api.status_code == 401 and "has ended" in api.json()["detail"], api.text
    login = run(["skopeo", "login", "--tls-verify=false", "--authfile", str(tmp_path / "auth.json"),
                 "-u", "lena", "-p", secret, url.removeprefix("http://")], check=False)
    assert login.returncode != 0, login.stdout  # skopeo shows "invalid username/password", not the body
    assert _logins("lena")[0].detail.get("single_sign_on_ended")

    # Her sign-on ended for good: no later check brings the tokens back (only a new
    # single sign-on does: tests/unit/test_sso_callback.py).
    time.sleep(2.5)
    assert _token(url, "lena", secret).status_code == 401


def test_signing_out_ends_msrs_session_and_goes_on_to_the_providers_logout(browser, sso_msr, glewlwyd):
    url, _ = sso_msr
    end_session = requests.get(f"{glewlwyd.issuer}/.well-known/openid-configuration",
                               timeout=10).json()["end_session_endpoint"]
    context, page = _sso_sign_in(browser, url, PETE)
    try:
        page.wait_for_url("**/repositories/")
        seen = []
        page.on("request", lambda request: seen.append(request.url))
        page.get_by_role("button", name="Sign out").click()
        for _ in range(40):
            if any(u.startswith(end_session) for u in seen):
                break
            page.wait_for_timeout(250)
        assert any(u.startswith(end_session) for u in seen), (end_session, seen, page.url)
        sent = parse_qs(urlsplit(next(u for u in seen if u.startswith(end_session))).query)
        assert sent["id_token_hint"][0].count(".") == 2  # a JWT: the ID token of this sign-in
        assert sent["post_logout_redirect_uri"] == [f"{url}/login/"] and sent["client_id"] == ["msr"]
        # In a page of its own: the provider's logout page may still be navigating (its
        # script), and a goto on that page would be interrupted by it.
        check = context.new_page()
        check.goto(f"{url}/tokens/")
        assert urlsplit(check.url).path == "/login/"  # MSR's session has ended (same cookies)
    finally:
        context.close()


def test_a_tampered_state_is_refused_and_no_account_is_made(browser, sso_msr, developers_team, glewlwyd):
    from accounts.models import User

    url, _ = sso_msr
    context = browser.new_context(base_url=url)
    page = context.new_page()
    sent = []

    def hold_back_the_callback(route):
        # Playwright routes no redirect hop: take the provider's redirect to MSR's callback
        # from the request that answers it, and keep the browser from following it.
        answer = route.fetch(max_redirects=0)
        location = answer.headers.get("location", "")
        if location.startswith(f"{url}/oidc/callback/"):
            sent.append(location)
            route.fulfill(status=200, body="held back")
        else:
            route.fulfill(response=answer)

    to_provider = lambda address: address.startswith(f"{glewlwyd.issuer}/auth")  # noqa: E731
    page.route(to_provider, hold_back_the_callback)
    try:
        page.goto("/login/")
        page.get_by_role("link", name="Sign in with Glewlwyd").click()
        _through_provider(page, RITA, lambda: bool(sent))
        parts = urlsplit(sent[0])
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        assert query["code"] and query["state"]
        page.unroute(to_provider)
        query["state"] = query["state"][::-1]
        response = page.goto(f"{url}{parts.path}?{urlencode(query)}")
        assert response.status == 400
        assert page.get_by_text("This sign-in cannot be completed").is_visible()
        shot(page, "sso-tampered-state")
    finally:
        context.close()
    assert not User.objects.filter(username="rita").exists()
    event = _logins("")[0]
    assert not event.detail["succeeded"] and event.detail["reason"] == "missing or unknown state"


def test_the_provider_saying_no_is_a_readable_page(sso_msr):
    url, _ = sso_msr
    response = requests.get(f"{url}/oidc/callback/", params={"error": "access_denied", "state": "x"}, timeout=30)
    assert response.status_code == 403
    assert "Glewlwyd did not sign you in (access_denied)" in response.text
    missing = requests.get(f"{url}/oidc/callback/", params={"code": "x"}, timeout=30)
    assert missing.status_code == 400 and "This sign-in cannot be completed" in missing.text


@pytest.fixture(scope="module")
def other_issuer_msr(glewlwyd, db_url, artifacts_dir):
    """MSR told the issuer is <provider>/api/other, whose discovery names <provider>/api/oidc."""
    glewlwyd.add_issuer("other", glewlwyd.issuer)
    process, url = start_msr("serve", settings.DATA_DIR, db_url, artifacts_dir / "logs",
                             extra_env=glewlwyd.env(issuer=f"{glewlwyd.url}/api/other"), workers=1)
    yield url, process
    process.stop()


def test_a_discovery_naming_another_issuer_is_refused(other_issuer_msr, glewlwyd):
    url, process = other_issuer_msr
    response = requests.get(f"{url}/oidc/login/", allow_redirects=False, timeout=30)
    assert response.status_code == 502
    assert "Glewlwyd gave an answer MSR cannot accept" in response.text
    assert f"discovery names the issuer '{glewlwyd.issuer}', not MSR_OIDC_ISSUER" in process.log()


@pytest.fixture(scope="module")
def unreachable_msrs(glewlwyd, db_url, artifacts_dir, personas):
    """Two MSRs that cannot reach their provider: one whose provider's port is closed, one
    whose egress policy does not allow the (loopback) provider."""
    closed = free_port()
    started = [start_msr("serve", settings.DATA_DIR, db_url, artifacts_dir / "logs", workers=1, extra_env=env)
               for env in (glewlwyd.env(issuer=f"http://127.0.0.1:{closed}/api/oidc",
                                        MSR_OUTBOUND_ALLOW=f"127.0.0.1:{closed}"),
                           glewlwyd.env(MSR_OUTBOUND_ALLOW=""))]
    yield [(url, process) for process, url in started]
    for process, _ in started:
        process.stop()


def test_a_provider_that_cannot_be_reached_is_a_503_page_and_local_accounts_still_sign_in(
        browser, unreachable_msrs, personas):
    (down, down_process), (guarded, guarded_process) = unreachable_msrs
    context = browser.new_context(base_url=down)
    page = context.new_page()
    try:
        page.goto("/login/")
        page.get_by_role("link", name="Sign in with Glewlwyd").click()
        assert page.get_by_text("MSR cannot reach Glewlwyd right now").is_visible()
        shot(page, "sso-provider-down")
        page.goto("/login/")  # the local admin's password sign-in is untouched
        page.get_by_label("Username").fill("admin")
        page.get_by_label("Password").fill("admin-password")
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/repositories/")
        page.get_by_role("button", name="Sign out").click()  # a password session: no provider logout
        page.wait_for_url("**/login/")
    finally:
        context.close()
    assert requests.get(f"{down}/oidc/login/", timeout=30).status_code == 503
    assert "single sign-on refused: provider unreachable: connection refused" in down_process.log()
    assert _token(down, "admin", "admin-password").status_code == 200

    response = requests.get(f"{guarded}/oidc/login/", timeout=30)
    assert response.status_code == 503
    assert "are refused: loopback address (MSR_OUTBOUND_ALLOW opens it)" in guarded_process.log()


def test_an_https_provider_is_trusted_through_its_ca_file_and_refused_without(glewlwyd_https, db_url, artifacts_dir,
                                                                             tmp_path):
    other_ca = make_ca(tmp_path / "other-ca", "Not the provider's CA")
    answers = {}
    for name, ca_file in (("its CA", glewlwyd_https.ca_file), ("another CA", other_ca)):
        process, url = start_msr("serve", settings.DATA_DIR, db_url, artifacts_dir / "logs", workers=1,
                                 extra_env=glewlwyd_https.env(MSR_OIDC_CA_FILE=str(ca_file)))
        try:
            answers[name] = requests.get(f"{url}/oidc/login/", allow_redirects=False, timeout=30)
            log = process.log()
        finally:
            process.stop()
    assert answers["its CA"].status_code == 302
    assert answers["its CA"].headers["Location"].startswith(f"{glewlwyd_https.issuer}/auth?")
    assert answers["another CA"].status_code == 503
    assert ("provider unreachable: TLS certificate not trusted (check MSR_OIDC_CA_FILE and the host name in "
            "MSR_OIDC_ISSUER)") in log
