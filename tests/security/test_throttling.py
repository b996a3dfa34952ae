"""Guessing is throttled at every entry point that checks a secret: after too many failures
for one account from one address the next attempts get 429 with Retry-After (the right
password included, or the block would be an oracle), while the account's owner signs in
from another address; every failure is in the audit trail. Passwords must be worth
guessing at: Django's validators are on."""

import base64
import random
import re

import pytest
import requests
from requests.adapters import HTTPAdapter

from tests.client import Registry

ATTEMPTS = 30


class FromAddress(HTTPAdapter):
    """Connections from another loopback address: one more client, for MSR."""

    def __init__(self, address):
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def client_at(address: str) -> requests.Session:
    session = requests.Session()
    session.mount("http://", FromAddress(address))
    return session


@pytest.fixture
def attacker_address():
    return f"127.0.{random.randint(1, 254)}.{random.randint(2, 254)}"


def _ui_sign_in(session, url, username, password):
    page = session.get(f"{url}/login/", timeout=30)
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    return session.post(f"{url}/login/", headers={"Referer": page.url}, timeout=30, allow_redirects=False,
                        data={"username": username, "password": password, "csrfmiddlewaretoken": csrf})


def _basic(username, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


ENTRY_POINTS = {
    # name: (attempt(session, url, username, password) -> response, accepted status)
    "web sign-in": (lambda s, url, u, p: _ui_sign_in(s, url, u, p), 302),
    "token service GET": (lambda s, url, u, p: s.get(f"{url}/auth/token", params={"service": "msr"},
                                                     headers=_basic(u, p), timeout=30), 200),
    "token service POST": (lambda s, url, u, p: s.post(f"{url}/auth/token", timeout=30, data={
        "grant_type": "password", "username": u, "password": p, "service": "msr"}), 200),
    "REST API Basic": (lambda s, url, u, p: s.get(f"{url}/api/v0/tokens", headers=_basic(u, p), timeout=30), 200),
    "metrics Basic": (lambda s, url, u, p: s.get(f"{url}/metrics", timeout=30,
                                                 headers={**_basic(u, p), "X-Forwarded-For": "203.0.113.9"}), 403),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_thirty_wrong_passwords_are_throttled_without_locking_the_owner_out(guarded, tenant, attacker_address,
                                                                            entry):
    from msr.models import Event

    attempt, accepted = ENTRY_POINTS[entry]
    victim = tenant("victim")
    attacker = client_at(attacker_address)
    statuses = []
    for i in range(ATTEMPTS):
        statuses.append(attempt(attacker, guarded.url, victim.name, f"guess number {i}").status_code)
    assert 429 in statuses, statuses
    first_refusal = statuses.index(429)
    assert all(s == 429 for s in statuses[first_refusal:]), statuses
    assert all(s in (200, 400, 401) for s in statuses[:first_refusal]), statuses
    blocked = attempt(attacker, guarded.url, victim.name, victim.password)
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) > 0
    # The owner, from another address, is not locked out.
    owner = attempt(client_at("127.0.0.1"), guarded.url, victim.name, victim.password)
    assert owner.status_code == accepted, owner.text[:300]
    failures = Event.objects.filter(type=Event.LOGIN, actor=victim.name, client_ip=attacker_address,
                                    detail__succeeded=False)
    assert failures.count() == ATTEMPTS + 1


def test_a_bearer_token_guesser_is_throttled_by_address(guarded, attacker_address):
    attacker = client_at(attacker_address)
    statuses = [attacker.get(f"{guarded.url}/api/v0/tokens", timeout=30,
                             headers={"Authorization": f"Bearer msrpat_guess{i}"}).status_code
                for i in range(120)]
    assert statuses[0] == 401 and statuses[-1] == 429


def test_a_refresh_token_guesser_is_throttled_by_address(guarded, attacker_address):
    attacker = client_at(attacker_address)
    statuses = [attacker.post(f"{guarded.url}/auth/token", timeout=30, data={
        "grant_type": "refresh_token", "refresh_token": f"msrrt_guess{i}", "service": "msr"}).status_code
        for i in range(120)]
    assert statuses[0] == 400 and statuses[-1] == 429


@pytest.mark.parametrize("password,words", [
    ("password", "too common"), ("12345678901234", "entirely numeric"), ("short1", "too short"),
])
def test_weak_passwords_are_refused(guarded, personas, unique, password, words):
    admin = ("admin", personas["admin"].password)
    response = guarded.api(admin, "POST", "accounts", json={"name": f"weak{unique}", "password": password})
    assert response.status_code == 400 and words in " ".join(response.json()["password"])
    same = guarded.api(admin, "POST", "accounts", json={"name": f"samename{unique}",
                                                        "password": f"samename{unique}"})
    assert same.status_code == 400 and "too similar" in " ".join(same.json()["password"])
    good = guarded.api(admin, "POST", "accounts", json={"name": f"strong{unique}",
                                                        "password": "tangerine orbit velvet"})
    assert good.status_code == 201


def test_msr_manage_adduser_refuses_a_weak_password(guarded, db_url):
    import os
    import subprocess

    from django.conf import settings

    from tests.processes import MSR

    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env.update(MSR_DATA_DIR=str(settings.DATA_DIR), DATABASE_URL=db_url)
    result = subprocess.run([MSR, "manage", "adduser", "weakling", "--password", "12345678"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "too short" in result.stderr


def test_a_token_request_with_thousands_of_scopes_is_refused_at_once(guarded, tenant):
    user = tenant("greedy")
    scopes = " ".join(f"repository:{user.name}/app{i}:pull" for i in range(5000))
    response = requests.post(f"{guarded.url}/auth/token", timeout=60, data={
        "grant_type": "password", "username": user.name, "password": user.password, "service": "msr",
        "scope": scopes})
    assert response.status_code == 400 and response.json()["error"] == "invalid_scope"
    small = Registry(guarded.url, user.name, user.password).token_response(
        *[f"repository:{user.name}/app{i}:pull" for i in range(10)])
    assert small.status_code == 200
