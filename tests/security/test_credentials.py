"""Credentials have a lifecycle: a refresh token ends with what created it (its personal
access token, or the password) and with the user's deactivation; users list and end their
sign-ins; a personal access token alone can neither change the password nor mint tokens
that outlive it; tokens carry scopes and an expiry."""

import re

import jwt
import requests

from tests.client import Registry


def _refresh_token(guarded, username, secret):
    response = requests.get(f"{guarded.url}/auth/token", params={"service": "msr", "offline_token": "true"},
                            auth=(username, secret), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["refresh_token"]


def _refresh(guarded, refresh_token, scope=""):
    return requests.post(f"{guarded.url}/auth/token", data={
        "grant_type": "refresh_token", "refresh_token": refresh_token, "service": "msr", "scope": scope},
        timeout=30)


def _pat(guarded, user, **body):
    response = guarded.api(user.auth, "POST", "tokens", json={"name": "ci", **body})
    assert response.status_code == 201, response.text
    return response.json()


def _granted(response, name):
    claims = jwt.decode(response.json()["token"], options={"verify_signature": False})
    return {a for entry in claims["access"] if entry["name"] == name for a in entry["actions"]}


def test_revoking_a_token_ends_the_docker_logins_made_with_it(guarded, tenant):
    user = tenant("ci")
    pat = _pat(guarded, user)
    refresh = _refresh_token(guarded, user.name, pat["token"])
    assert _refresh(guarded, refresh).status_code == 200
    assert guarded.api(user.auth, "DELETE", f"tokens/{pat['id']}").status_code == 204
    refused = _refresh(guarded, refresh)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"


def test_a_new_password_ends_every_refresh_token_and_every_other_session(guarded, tenant):
    user = tenant("mover")
    by_password = _refresh_token(guarded, user.name, user.password)
    by_token = _refresh_token(guarded, user.name, _pat(guarded, user)["token"])
    assert _refresh(guarded, by_password).status_code == 200
    new_password = "a brand new pass phrase"
    changed = guarded.api(user.auth, "PATCH", f"accounts/{user.name}", json={"password": new_password})
    assert changed.status_code == 200, changed.text
    assert _refresh(guarded, by_password).status_code == 400
    assert _refresh(guarded, by_token).status_code == 400
    assert guarded.api(user.auth, "GET", "tokens").status_code == 401
    assert guarded.api((user.name, new_password), "GET", "tokens").status_code == 200


def test_deactivating_a_user_ends_their_tokens_and_sign_ins(guarded, tenant, personas):
    user = tenant("leaver")
    pat = _pat(guarded, user)["token"]
    refresh = _refresh_token(guarded, user.name, user.password)
    admin = ("admin", personas["admin"].password)
    assert guarded.api(admin, "PATCH", f"accounts/{user.name}", json={"isActive": False}).status_code == 200
    assert _refresh(guarded, refresh).status_code == 400
    assert requests.get(f"{guarded.url}/auth/token", auth=(user.name, pat), timeout=30).status_code == 401
    assert requests.get(f"{guarded.url}/auth/token", auth=user.auth, timeout=30).status_code == 401


def test_a_personal_access_token_cannot_make_itself_permanent(guarded, tenant):
    user = tenant("leaked")
    pat = _pat(guarded, user)
    leaked = (user.name, pat["token"])
    # Reading works with the token...
    assert guarded.api(leaked, "GET", "tokens").status_code == 200
    # ...but changing the password, minting or revoking tokens, ending sign-ins take the password.
    for method, path, body in (("PATCH", f"accounts/{user.name}", {"password": "attacker pass phrase"}),
                               ("POST", "tokens", {"name": "mine now"}),
                               ("DELETE", f"tokens/{pat['id']}", None)):
        response = guarded.api(leaked, method, path, json=body)
        assert response.status_code == 403, response.text
        assert "needs your password or a signed-in session" in response.json()["detail"]
    bearer = requests.post(f"{guarded.url}/api/v0/tokens", json={"name": "x"}, timeout=30,
                           headers={"Authorization": f"Bearer {pat['token']}"})
    assert bearer.status_code == 403
    assert guarded.api(user.auth, "GET", "tokens").status_code == 200  # the password still works
    # And a web session cannot be opened with the token: the sign-in page takes the password only.
    browser = requests.Session()
    page = browser.get(f"{guarded.url}/login/")
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    signed = browser.post(f"{guarded.url}/login/", headers={"Referer": page.url}, data={
        "username": user.name, "password": pat["token"], "csrfmiddlewaretoken": csrf})
    assert signed.status_code == 200 and "sessionid" not in browser.cookies


def test_token_scopes_cap_what_a_token_does(guarded, tenant):
    user = tenant("scoped")
    name = f"{user.name}/app"
    Registry(guarded.url, user.name, user.password).push_image(name, "v1")
    pull_only = _pat(guarded, user, scopes=["registry:pull"])
    assert pull_only["scopes"] == ["registry:pull"]
    token = requests.get(f"{guarded.url}/auth/token", timeout=30, auth=(user.name, pull_only["token"]),
                         params={"service": "msr", "scope": f"repository:{name}:pull,push,delete"})
    assert _granted(token, name) == {"pull"}
    assert guarded.api((user.name, pull_only["token"]), "GET", "tokens").status_code == 403  # no api scope
    api_only = _pat(guarded, user, scopes=["api"])
    assert guarded.api((user.name, api_only["token"]), "GET", "tokens").status_code == 200
    token = requests.get(f"{guarded.url}/auth/token", timeout=30, auth=(user.name, api_only["token"]),
                         params={"service": "msr", "scope": f"repository:{name}:pull"})
    assert _granted(token, name) == set()
    # A refresh token obtained with a scoped token keeps its scopes.
    refresh = _refresh_token(guarded, user.name, pull_only["token"])
    assert _granted(_refresh(guarded, refresh, f"repository:{name}:pull,push"), name) == {"pull"}


def test_an_expired_token_is_refused(guarded, tenant):
    from datetime import timedelta

    from django.utils import timezone

    from accounts.models import AccessToken

    user = tenant("expiring")
    pat = _pat(guarded, user, expiresInDays=1)
    assert requests.get(f"{guarded.url}/auth/token", auth=(user.name, pat["token"]), timeout=30).status_code == 200
    AccessToken.objects.filter(pk=pat["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert requests.get(f"{guarded.url}/auth/token", auth=(user.name, pat["token"]), timeout=30).status_code == 401


def test_users_list_and_end_their_sign_ins(guarded, tenant):
    user = tenant("lister")
    refresh = _refresh_token(guarded, user.name, user.password)
    listed = guarded.api(user.auth, "GET", "refreshTokens").json()["results"]
    assert len(listed) == 1 and listed[0]["boundTo"] == "password" and listed[0]["active"] is True
    assert listed[0]["clientIp"] == "127.0.0.1" and "python-requests" in listed[0]["userAgent"]
    assert guarded.api(user.auth, "DELETE", f"refreshTokens/{listed[0]['id']}").status_code == 204
    assert _refresh(guarded, refresh).status_code == 400

    browser = requests.Session()
    page = browser.get(f"{guarded.url}/login/")
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    browser.post(f"{guarded.url}/login/", headers={"Referer": page.url}, data={
        "username": user.name, "password": user.password, "csrfmiddlewaretoken": csrf})
    assert browser.get(f"{guarded.url}/tokens/", allow_redirects=False).status_code == 200
    sessions = guarded.api(user.auth, "GET", "sessions").json()
    assert len(sessions) == 1 and sessions[0]["clientIp"] == "127.0.0.1"
    assert guarded.api(user.auth, "DELETE", f"sessions/{sessions[0]['id']}").status_code == 204
    signed_out = browser.get(f"{guarded.url}/tokens/", allow_redirects=False)
    assert signed_out.status_code == 302 and "/login/" in signed_out.headers["Location"]


def test_changing_the_password_in_the_browser_signs_out_everywhere_else(guarded, tenant):
    user = tenant("browser")
    refresh = _refresh_token(guarded, user.name, user.password)

    def sign_in():
        browser = requests.Session()
        page = browser.get(f"{guarded.url}/login/")
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        browser.post(f"{guarded.url}/login/", headers={"Referer": page.url}, data={
            "username": user.name, "password": user.password, "csrfmiddlewaretoken": csrf})
        return browser

    here, elsewhere = sign_in(), sign_in()
    page = here.get(f"{guarded.url}/settings/password/")
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    weak = here.post(page.url, headers={"Referer": page.url}, data={
        "old_password": user.password, "new_password1": "password", "new_password2": "password",
        "csrfmiddlewaretoken": csrf})
    assert weak.status_code == 200 and "too common" in weak.text
    changed = here.post(page.url, headers={"Referer": page.url}, data={
        "old_password": user.password, "new_password1": "correct horse battery staple",
        "new_password2": "correct horse battery staple", "csrfmiddlewaretoken": csrf})
    assert changed.status_code == 200 and "Every other session and docker login has ended" in changed.text
    assert here.get(f"{guarded.url}/tokens/", allow_redirects=False).status_code == 200
    assert elsewhere.get(f"{guarded.url}/tokens/", allow_redirects=False).status_code == 302
    assert _refresh(guarded, refresh).status_code == 400
