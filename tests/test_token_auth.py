"""Docker Registry v2 token authentication: the token service, JWKS and /v2/ checks."""

import base64
import json
import time

import jwt
import requests

from tests.client import Registry


def _claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def test_token_grants_the_intersection_of_requested_and_permitted(msr, personas):
    bob = Registry(msr, "bob", personas["bob"].token)
    token = bob.token("repository:acme/private-app:pull,push,delete")
    assert _claims(token)["access"] == [
        {"type": "repository", "name": "acme/private-app", "actions": ["pull"]}
    ]
    assert _claims(token)["sub"] == "bob"
    assert _claims(token)["aud"] == "msr"


def test_repeated_and_space_separated_scopes_are_all_answered(msr, personas):
    alice = Registry(msr, "alice", personas["alice"].token)
    response = alice.session.get(f"{msr}/auth/token", auth=alice.auth, params=[
        ("service", "msr"), ("scope", "repository:acme/public-app:pull"),
        ("scope", "repository:acme/private-app:pull repository:acme/private-app:push"),
    ])
    access = {a["name"]: a["actions"] for a in _claims(response.json()["token"])["access"]}
    assert access == {"acme/public-app": ["pull"], "acme/private-app": ["pull", "push"]}


def test_anonymous_gets_pull_on_public_repositories_only(msr):
    anonymous = Registry(msr)
    assert anonymous.granted("acme/public-app", "pull", "push") == {"pull"}
    assert anonymous.granted("acme/private-app", "pull") == set()
    assert _claims(anonymous.token("repository:acme/public-app:pull"))["sub"] == ""


def test_bad_credentials_are_refused(msr, personas):
    for auth in [("bob", "wrong"), ("nobody", "x"), ("alice", personas["bob"].token)]:
        response = requests.get(f"{msr}/auth/token", params={"service": "msr"}, auth=auth)
        assert response.status_code == 401
        assert response.json()["errors"][0]["code"] == "UNAUTHORIZED"
    garbage = {"Authorization": "Basic !!!not-base64"}
    assert requests.get(f"{msr}/auth/token", headers=garbage).status_code == 401


def test_password_login_works_like_a_token(msr, personas):
    response = requests.get(f"{msr}/auth/token", auth=("bob", "bob-password"),
                            params={"service": "msr", "scope": "repository:acme/private-app:pull"})
    assert response.status_code == 200
    assert _claims(response.json()["token"])["access"][0]["actions"] == ["pull"]


def test_unknown_service_is_a_bad_request(msr):
    response = requests.get(f"{msr}/auth/token", params={"service": "elsewhere"})
    assert response.status_code == 400


def test_offline_token_returns_a_refresh_token_usable_with_the_oauth2_grant(msr, personas):
    response = requests.get(f"{msr}/auth/token", auth=("wanda", personas["wanda"].token),
                            params={"service": "msr", "offline_token": "true"})
    refresh = response.json()["refresh_token"]
    assert refresh.startswith("msrrt_")
    response = requests.post(f"{msr}/auth/token", data={
        "grant_type": "refresh_token", "refresh_token": refresh, "service": "msr",
        "client_id": "docker", "scope": "repository:acme/private-app:pull,push"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["refresh_token"] == refresh
    assert _claims(body["access_token"])["access"][0]["actions"] == ["pull", "push"]
    assert body["scope"] == "repository:acme/private-app:pull,push"


def test_oauth2_password_grant(msr, personas):
    response = requests.post(f"{msr}/auth/token", data={
        "grant_type": "password", "username": "bob", "password": personas["bob"].token,
        "service": "msr", "client_id": "docker", "access_type": "offline",
        "scope": "repository:acme/private-app:pull"})
    assert response.status_code == 200
    assert response.json()["refresh_token"].startswith("msrrt_")
    bad = requests.post(f"{msr}/auth/token", data={
        "grant_type": "password", "username": "bob", "password": "nope", "service": "msr"})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"
    # and in the registry's error format, the one docker reads from a token service's 400
    assert bad.json()["errors"] == [{"code": "UNAUTHORIZED", "message": bad.json()["error_description"]}]
    forged = requests.post(f"{msr}/auth/token", data={
        "grant_type": "refresh_token", "refresh_token": "msrrt_forged", "service": "msr"})
    assert forged.status_code == 400
    unknown = requests.post(f"{msr}/auth/token", data={"grant_type": "client_credentials"})
    assert unknown.json()["error"] == "unsupported_grant_type"


def test_tokens_verify_against_the_published_jwks(msr, personas):
    jwks = requests.get(f"{msr}/auth/jwks.json").json()
    token = Registry(msr, "bob", personas["bob"].token).token("repository:acme/private-app:pull")
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwks["keys"] if k["kid"] == kid)
    claims = jwt.decode(token, jwt.PyJWK(key).key, algorithms=["EdDSA"], audience="msr")
    assert claims["sub"] == "bob"


def test_a_revoked_personal_access_token_no_longer_logs_in(msr, personas):
    from accounts.models import AccessToken

    token, secret = AccessToken.issue(personas["carol"].user, AccessToken.PERSONAL, "ci")
    assert requests.get(f"{msr}/auth/token", auth=("carol", secret)).status_code == 200
    AccessToken.objects.filter(pk=token.pk).update(revoked_at=token.created_at)
    assert requests.get(f"{msr}/auth/token", auth=("carol", secret)).status_code == 401


def test_v2_refuses_a_tampered_token(msr, personas):
    bob = Registry(msr, "bob", personas["bob"].token)
    token = bob.token("repository:acme/private-app:pull")
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["access"][0]["actions"] = ["pull", "push"]
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    response = bob.request("POST", "/v2/acme/private-app/blobs/uploads/",
                           token=f"{header}.{forged_payload}.{signature}")
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert response.json()["errors"][0]["code"] == "UNAUTHORIZED"


def test_v2_refuses_an_expired_token_and_one_signed_by_another_key(msr):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from msr.tokens import sign

    access = [{"type": "repository", "name": "acme/private-app", "actions": ["pull"]}]
    expired = sign({"sub": "admin", "aud": "msr", "access": access}, ttl=-10)
    other_key = jwt.encode({"iss": "msr", "aud": "msr", "sub": "admin", "access": access,
                            "exp": int(time.time()) + 60}, Ed25519PrivateKey.generate(), algorithm="EdDSA")
    unsigned = jwt.encode({"iss": "msr", "aud": "msr", "sub": "admin", "access": access,
                           "exp": int(time.time()) + 60}, None, algorithm="none")
    for token in (expired, other_key, unsigned, "not-a-jwt"):
        response = Registry(msr).request("GET", "/v2/acme/private-app/tags/list", token=token)
        assert response.status_code == 401, token
        assert response.json()["errors"][0]["code"] == "UNAUTHORIZED"


def test_a_token_for_another_audience_is_refused(msr):
    from msr.tokens import sign

    access = [{"type": "repository", "name": "acme/private-app", "actions": ["pull"]}]
    token = sign({"sub": "admin", "aud": "some-cache", "access": access}, ttl=60)
    response = Registry(msr).request("GET", "/v2/acme/private-app/tags/list", token=token)
    assert response.status_code == 401


def test_missing_token_gets_a_challenge_naming_the_scope(msr):
    response = Registry(msr).request("GET", "/v2/acme/private-app/manifests/latest")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer realm="{msr}/auth/token",service="msr",scope="repository:acme/private-app:pull"'
    )


def test_a_remembered_login_ends_when_the_password_changes(msr, unique):
    from accounts.services import create_user

    user = create_user(f"pat{unique}", "first-password")
    def login(password):
        return requests.get(f"{msr}/auth/token", auth=(user.username, password)).status_code

    # Several logins so that both web workers remember the password.
    assert [login("first-password") for _ in range(4)] == [200] * 4
    user.set_password("second-password")
    user.save()
    assert [login("first-password") for _ in range(4)] == [401] * 4
    assert login("second-password") == 200
    user.is_active = False
    user.save()
    assert login("second-password") == 401


def test_head_errors_have_headers_but_no_body(msr):
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(msr)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    connection.request("HEAD", "/v2/acme/private-app/manifests/latest")
    response = connection.getresponse()
    assert response.status == 401
    assert response.read() == b""
    assert int(response.headers["Content-Length"]) > 0
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")
