"""Every outbound request MSR sends for a user passes one egress check: webhook endpoints,
mirroring remotes, the token realms and the redirects they answer, cache nodes. Loopback,
link-local, private and the other non-public ranges are refused unless MSR_OUTBOUND_ALLOW
opens them, at save time (a 400 naming the rule) and at connect time (a failed delivery or
job naming it), and nothing a server answers travels back beyond a status code, a
registry error code and a short message."""

import socket

import pytest

from tests.client import Registry
from tests.security.fakes import INTERNAL_SECRET, Listener

REFUSED = [
    ("http://127.0.0.1:{port}/hook", "loopback"),
    ("http://localhost:{port}/hook", "loopback"),
    ("http://[::1]:{port}/hook", "loopback"),
    ("http://[::ffff:127.0.0.1]:{port}/hook", "loopback"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://10.0.0.7/hook", "private"),
    ("http://192.168.1.1/hook", "private"),
    ("http://[fd12::1]/hook", "unique-local"),
    ("http://0.0.0.0:{port}/hook", "unspecified"),
    ("http://224.0.0.1/hook", "multicast"),
    ("http://255.255.255.255/hook", "broadcast"),
]


@pytest.fixture
def internal():
    """An internal service on loopback (not opened by the deployment's policy)."""
    listener = Listener()
    yield listener
    listener.stop()


def _repository(guarded, owner):
    name = f"{owner.name}/app"
    Registry(guarded.url, owner.name, owner.password).push_image(name, "v0")
    return name


@pytest.mark.parametrize("template,rule", REFUSED, ids=[r for _, r in REFUSED])
def test_a_webhook_to_a_non_public_address_is_refused_when_saved(guarded, tenant, internal, template, rule):
    user = tenant("hooker")
    name = _repository(guarded, user)
    response = guarded.api(user.auth, "POST", "webhooks", json={
        "type": "TAG_PUSH", "key": name, "endpoint": template.format(port=internal.port)})
    assert response.status_code == 400, response.text
    assert f"{rule} address" in response.json()["endpoint"][0]
    assert "MSR_OUTBOUND_ALLOW" in response.json()["endpoint"][0]
    assert internal.requests == []


@pytest.mark.parametrize("kind", ["pushMirroringPolicies", "pollMirroringPolicies"])
def test_a_mirror_to_a_non_public_address_is_refused_and_tells_open_from_closed_ports_apart_no_more(
        guarded, tenant, internal, kind):
    user = tenant("scanner")
    name = _repository(guarded, user)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    answers = {}
    for label, port in (("open", internal.port), ("closed", closed)):
        response = guarded.api(user.auth, "POST", f"repositories/{name}/{kind}", json={
            "remoteHost": f"http://127.0.0.1:{port}", "remoteRepository": "x/y"})
        assert response.status_code == 400, response.text
        answers[label] = response.json()["remoteHost"][0].replace(str(port), "<port>")
    assert answers["open"] == answers["closed"]
    assert "loopback address" in answers["open"]
    assert internal.requests == []


def test_a_token_realm_on_loopback_is_not_followed(guarded, fake, tenant, internal):
    user = tenant("realm")
    name = _repository(guarded, user)
    fake.challenge = f'Bearer realm="{internal.url}/token?steal=1",service="x"'
    response = guarded.api(user.auth, "POST", f"repositories/{name}/pollMirroringPolicies", json={
        "remoteHost": fake.url, "remoteRepository": "x/y"})
    assert response.status_code == 400, response.text
    message = response.json()["remoteHost"][0]
    assert "token service" in message and "loopback address" in message
    assert internal.requests == []


def test_a_redirect_to_loopback_fails_the_job_naming_the_rule(guarded, fake, tenant, internal):
    user = tenant("redirect")
    name = _repository(guarded, user)
    layer = b"a layer behind a redirect"
    from tests.client import sha256

    fake.serve_image("x/y", "v1", (sha256(b"cfg"), 3), [(sha256(layer), len(layer))])
    for digest in (sha256(b"cfg"), sha256(layer)):
        fake.blobs[digest] = (307, b"", {"Location": f"{internal.url}/latest/meta-data/"})
    policy = guarded.api(user.auth, "POST", f"repositories/{name}/pollMirroringPolicies", json={
        "remoteHost": fake.url, "remoteRepository": "x/y"})
    assert policy.status_code == 201, policy.text
    job = guarded.api(user.auth, "POST", "jobs", json={"action": "poll_mirror", "policy": policy.json()["id"]})
    finished = guarded.wait_job(user.auth, job.json()["id"])
    assert finished["status"] == "failed"
    assert "loopback address" in finished["error"] and "MSR_OUTBOUND_ALLOW" in finished["error"]
    assert internal.requests == []
    assert INTERNAL_SECRET.decode() not in guarded.api(user.auth, "GET", f"jobs/{finished['id']}").text


def test_a_remote_s_answer_reaches_the_user_only_as_a_status_a_code_and_a_short_message(guarded, fake, tenant):
    user = tenant("echo")
    name = _repository(guarded, user)
    fake.answer_all = (400, b"<html>" + INTERNAL_SECRET * 50 + b"</html>", {"Content-Type": "text/html"})
    response = guarded.api(user.auth, "POST", f"repositories/{name}/pollMirroringPolicies", json={
        "remoteHost": fake.url, "remoteRepository": "x/y"})
    assert response.status_code == 400
    assert INTERNAL_SECRET.decode() not in response.text
    assert "HTTP 400" in response.json()["remoteHost"][0]
    long_message = "m" * 5000
    fake.answer_all = (403, ('{"errors":[{"code":"DENIED","message":"%s"}]}' % long_message).encode(),
                       {"Content-Type": "application/json"})
    response = guarded.api(user.auth, "POST", f"repositories/{name}/pollMirroringPolicies", json={
        "remoteHost": fake.url, "remoteRepository": "x/y"})
    message = response.json()["remoteHost"][0]
    assert "DENIED: mmm" in message and len(message) < 400


def test_a_delivery_keeps_the_receiver_s_answer_to_itself(guarded, tenant):
    user = tenant("receiver")
    name = _repository(guarded, user)
    receiver = guarded.receiver
    hook = guarded.api(user.auth, "POST", "webhooks", json={"type": "TAG_PUSH", "key": name,
                                                           "endpoint": f"{receiver.url}/hook"}).json()
    # The attacker's receiver answers its secret with a 500: the delivery log shows the status only.
    receiver.status, receiver.body = 500, INTERNAL_SECRET * 20
    try:
        guarded.api(user.auth, "POST", f"webhooks/{hook['id']}/test")
        delivery = guarded.wait_delivery(user.auth, hook["id"])
    finally:
        receiver.status, receiver.body = 200, b"ok"
    assert delivery["status"] == "failed"
    assert [a["error"] for a in delivery["log"]] == ["HTTP 500", "HTTP 500"]


def test_a_webhook_whose_address_turns_internal_is_refused_when_delivering(guarded, tenant, internal):
    """DNS rebinding: the name resolved to a public address when the webhook was saved
    and resolves to loopback now. The check is made on the address connected to."""
    user = tenant("rebind")
    name = _repository(guarded, user)
    hook = guarded.api(user.auth, "POST", "webhooks", json={"type": "TAG_PUSH", "key": name,
                                                           "endpoint": f"{guarded.receiver.url}/hook"}).json()
    from msr.models import Webhook

    Webhook.objects.filter(pk=hook["id"]).update(endpoint=f"http://localhost:{internal.port}/hook")
    Registry(guarded.url, user.name, user.password).push_image(name, "v1")
    delivery = guarded.wait_delivery(user.auth, hook["id"])
    assert delivery["status"] == "failed"
    error = delivery["log"][-1]["error"]
    assert error.startswith("outbound requests to localhost (") and "refused: loopback address" in error
    assert internal.requests == []


def test_a_cache_on_a_private_address_is_refused_until_the_operator_opens_it(guarded, personas):
    response = guarded.api(("admin", personas["admin"].password), "POST", "content_caches",
                           json={"name": "intranet", "url": "http://10.20.30.40:5100"})
    assert response.status_code == 400
    assert "private address" in response.json()["url"][0]


def test_the_egress_rules_take_cidrs_names_and_ports():
    from django.test import override_settings

    from msr import egress

    allow = egress.parse_allow(["10.20.0.0/16", "qa-msr.internal", "127.0.0.1:5100", "[::1]:99", "*.corp.example"])
    with override_settings(OUTBOUND_ALLOW=allow):
        for url in ("http://10.20.3.4/", "http://127.0.0.1:5100/", "http://[::1]:99/", "http://qa-msr.internal/",
                    "https://x.corp.example/", "http://93.184.216.34/"):
            egress.check_url(url)
        for url in ("http://10.21.0.1/", "http://127.0.0.1:5101/", "http://[::1]/", "http://localhost/"):
            with pytest.raises(egress.EgressRefused):
                egress.check_url(url)
    for bad in ("10.0.0.0/33", "host:port", "[::1]x", ""):
        if bad:
            with pytest.raises(ValueError):
                egress.parse_allow([bad])
