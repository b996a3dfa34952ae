"""The ID token checks of single sign-on (msr/sso.py: Authlib on joserfc), through the real
sign-in and callback views, against a minimal provider on a real 127.0.0.1 HTTP server
(discovery, JWKS, a token endpoint) whose ID token each case spoils: expired, signed by
another key, for another client, with another nonce or issuer, or none at all. The real
provider of tests/test_sso.py (glewlwyd) issues only good ones, and an ID token lives an
hour there, beyond any clock skew MSR allows (Authlib's 120 s leeway). Then the account
rules (accounts/sso.py) as the callback applies them: names other accounts have, names
that cannot be namespaces, returning people found by subject, deactivated accounts."""

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client, override_settings
from joserfc import jwt
from joserfc.jwk import RSAKey

CLIENT_ID = "msr-unit"


class _Provider(BaseHTTPRequestHandler):
    issuer = ""
    key = None
    token_response: dict = {}
    token_status = 200

    def _answer(self, document: dict, status=200) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.endswith("/.well-known/openid-configuration"):
            self._answer({"issuer": self.issuer, "authorization_endpoint": f"{self.issuer}/auth",
                          "token_endpoint": f"{self.issuer}/token", "jwks_uri": f"{self.issuer}/jwks",
                          "response_types_supported": ["code"], "subject_types_supported": ["public"],
                          "id_token_signing_alg_values_supported": ["RS256"]})
        elif self.path.endswith("/jwks"):
            self._answer({"keys": [self.key.as_dict(private=False)]})
        else:
            self.send_error(404)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer(_Provider.token_response, _Provider.token_status)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def provider():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Provider)
    _Provider.issuer = f"http://127.0.0.1:{server.server_port}"
    _Provider.key = RSAKey.generate_key(2048, auto_kid=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield _Provider
    server.shutdown()


@pytest.fixture
def single_sign_on(provider, db):
    from msr.egress import parse_allow

    with override_settings(OIDC_ISSUER=provider.issuer, OIDC_CLIENT_ID=CLIENT_ID, OIDC_CLIENT_SECRET="secret",
                           OUTBOUND_ALLOW=parse_allow([provider.issuer.removeprefix("http://")])):
        yield provider


def _sign_in(provider, spoil) -> tuple:
    """Start a sign-in, let the provider answer with an ID token `spoil` changed, come back
    to the callback: (the callback's response, the user name the token carried)."""
    client = Client()
    started = client.get("/oidc/login/")
    assert started.status_code == 302 and started["Location"].startswith(f"{provider.issuer}/auth?")
    sent = {k: v[0] for k, v in parse_qs(urlsplit(started["Location"]).query).items()}
    assert sent["code_challenge_method"] == "S256" and sent["code_challenge"] and sent["nonce"]
    username = f"sso-{uuid.uuid4().hex[:8]}"
    now = int(time.time())
    claims = {"iss": provider.issuer, "sub": uuid.uuid4().hex, "aud": CLIENT_ID, "iat": now, "exp": now + 300,
              "nonce": sent["nonce"], "preferred_username": username, "name": "Una Unit",
              "email": f"{username}@example.org", "groups": []}
    key = provider.key
    claims, key = spoil(claims, key)
    provider.token_status = 200
    provider.token_response = {"access_token": "an-access-token", "token_type": "Bearer", "expires_in": 300,
                               "refresh_token": f"refresh-of-{username}"}
    if claims is not None:
        provider.token_response["id_token"] = jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key)
    return client.get("/oidc/callback/", {"state": sent["state"], "code": "a-code"}), username


def _other_key(claims, key):
    other = RSAKey.generate_key(2048, parameters={"kid": key.kid})  # same kid, not the provider's key
    return claims, other


SPOILED = {
    "expired": (lambda c, k: ({**c, "iat": c["iat"] - 3900, "exp": c["iat"] - 300}, k), "ExpiredTokenError"),
    "signed by another key": (_other_key, "BadSignatureError"),
    "for another client": (lambda c, k: ({**c, "aud": "another-client"}, k), "ClaimError"),  # azp, aud
    "with another nonce": (lambda c, k: ({**c, "nonce": "not-the-one-sent"}, k), "InvalidClaimError"),
    "from another issuer": (lambda c, k: ({**c, "iss": "https://elsewhere.example.com"}, k), "InvalidClaimError"),
    "missing": (lambda c, k: (None, k), "the token response holds no ID token"),
}


@pytest.mark.parametrize("case", SPOILED)
def test_an_id_token_that_fails_a_check_signs_nobody_in(single_sign_on, case):
    from accounts.models import User
    from msr.models import Event

    response, username = _sign_in(single_sign_on, SPOILED[case][0])
    assert response.status_code == 502
    assert "gave an answer MSR cannot accept" in response.content.decode()
    assert not User.objects.filter(username=username).exists()
    event = Event.objects.filter(type=Event.LOGIN).latest("id")
    assert not event.detail["succeeded"] and SPOILED[case][1] in event.detail["reason"]
    assert "an-access-token" not in json.dumps(event.detail)


def test_a_good_id_token_signs_in_and_makes_the_account(single_sign_on):
    from accounts.models import User

    response, username = _sign_in(single_sign_on, lambda c, k: (c, k))
    assert response.status_code == 302, response.content.decode()
    user = User.objects.get(username=username)
    assert (user.source, user.full_name) == ("oidc", "Una Unit")
    assert user.external_id.startswith(f"{single_sign_on.issuer} ")


def _as(username, subject=None):
    return lambda c, k: ({**c, "preferred_username": username, **({"sub": subject} if subject else {})}, k)


@pytest.mark.parametrize("taken_by, message", [
    ("local", "already used by a local MSR account"),
    ("ldap", "already used by a company directory account"),
    ("organization", "already used by an organization"),
])
def test_a_name_another_account_has_is_refused_never_taken_over(single_sign_on, taken_by, message):
    from accounts.models import User
    from accounts.services import create_organization, create_user

    name = f"taken-{uuid.uuid4().hex[:8]}"
    if taken_by == "organization":
        create_organization(name)
    else:
        User.objects.filter(pk=create_user(name, "a-local-password-123").pk).update(source=taken_by)
    response, _ = _sign_in(single_sign_on, _as(name))
    assert response.status_code == 403 and message in response.content.decode()
    assert list(User.objects.filter(username=name).values_list("source", "external_id")) == (
        [] if taken_by == "organization" else [(taken_by, "")])


def test_a_name_that_cannot_be_a_namespace_is_refused(single_sign_on):
    response, _ = _sign_in(single_sign_on, _as("Not A Name!"))
    assert response.status_code == 403
    assert "cannot be an MSR user name" in response.content.decode()


def test_a_returning_person_is_found_by_subject_and_a_deactivated_one_is_refused(single_sign_on):
    from accounts.models import User

    subject = uuid.uuid4().hex
    first, _ = _sign_in(single_sign_on, _as(f"first-{subject[:8]}", subject))
    assert first.status_code == 302
    again, _ = _sign_in(single_sign_on, _as(f"renamed-{subject[:8]}", subject))  # renamed at the provider
    assert again.status_code == 302
    user = User.objects.get(external_id=f"{single_sign_on.issuer} {subject}")
    assert user.username == f"first-{subject[:8]}"  # the account keeps its MSR name
    user.is_active = False
    user.save()
    refused, _ = _sign_in(single_sign_on, _as(user.username, subject))
    assert refused.status_code == 403 and "deactivated" in refused.content.decode()


def test_a_code_the_token_endpoint_refuses_is_a_502_page_naming_no_secret(single_sign_on, monkeypatch):
    from msr.models import Event

    client = Client()
    started = client.get("/oidc/login/")
    sent = {k: v[0] for k, v in parse_qs(urlsplit(started["Location"]).query).items()}
    monkeypatch.setattr(single_sign_on, "token_status", 400)
    monkeypatch.setattr(single_sign_on, "token_response", {"error": "invalid_grant"})
    response = client.get("/oidc/callback/", {"state": sent["state"], "code": "a-used-code"})
    assert response.status_code == 502 and "gave an answer MSR cannot accept" in response.content.decode()
    event = Event.objects.filter(type=Event.LOGIN).latest("id")
    assert not event.detail["succeeded"] and event.detail["reason"] == "token request refused: invalid_grant"
    assert "a-used-code" not in json.dumps(event.detail)


def _signed_on(provider):
    from accounts.models import User

    response, username = _sign_in(provider, lambda claims, key: (claims, key))
    assert response.status_code == 302
    return User.objects.get(username=username)


@pytest.mark.parametrize("status, answer, honoured, ended", [
    (200, {"access_token": "a2", "token_type": "Bearer", "refresh_token": "rotated"}, True, False),
    (400, {"error": "invalid_grant", "error_description": "user disabled"}, False, True),
    (401, {"error": "invalid_client"}, True, False),  # MSR's client, not the person: logged, honoured
    (503, {"error": "temporarily_unavailable"}, True, False),  # the provider away: asked at the next use
])
def test_the_provider_decides_whether_a_single_sign_on_users_tokens_still_count(
        single_sign_on, monkeypatch, status, answer, honoured, ended):
    from datetime import timedelta

    from django.utils import timezone

    from msr import sso
    from msr.crypto import decrypt

    user = _signed_on(single_sign_on)
    assert decrypt(user.sso_refresh_token) == f"refresh-of-{user.username}"  # kept, encrypted
    assert sso.confirm(user)  # just signed on: not asked again before MSR_OIDC_RECHECK_SECONDS
    type(user).objects.filter(pk=user.pk).update(sso_checked_at=timezone.now() - timedelta(hours=1))
    user.refresh_from_db()
    monkeypatch.setattr(single_sign_on, "token_status", status)
    monkeypatch.setattr(single_sign_on, "token_response", answer)
    assert sso.confirm(user) is honoured
    user.refresh_from_db()
    assert (user.sso_ended_at is not None) is ended
    if status == 200:
        assert decrypt(user.sso_refresh_token) == "rotated"
    if ended:
        assert not sso.confirm(user)  # ended stays ended, whatever the provider says later
        again = _sign_in(single_sign_on, lambda claims, key: ({**claims, "sub": user.external_id.split()[1],
                                                               "preferred_username": user.username}, key))[0]
        assert again.status_code == 302  # a new single sign-on brings the tokens back
        user.refresh_from_db()
        assert user.sso_ended_at is None and sso.confirm(user)
