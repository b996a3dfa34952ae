"""The cache node as its region's registry endpoint (caches/endpoint.py), with real
processes: `msr serve`, a cache node whose MSR is reached through a proxy that counts
(and can cut) what crosses to MSR, and the protocol spoken as clients speak it.

What a user relies on: a warm pull is answered in the region but for the tag, which MSR
resolves every time with the client's token; permissions stay MSR's (a token for another
repository, a forged or expired token, a digest of someone else's repository, a user
whose access was removed, a deleted tag); pushes through the regional address land in
MSR with MSR's checks; the node keeps serving what it has while MSR is away.
"""

import json
import time

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.client import Registry, sha256
from tests.faults import FaultProxy
from tests.processes import start_cache

REPO = "acme/private-app"


@pytest.fixture(scope="module")
def wan(msr):
    """MSR as the region sees it: every request that crosses is counted; close() cuts it."""
    proxy = FaultProxy(msr)
    yield proxy
    try:
        proxy.close()
    except OSError:
        pass


@pytest.fixture(scope="module")
def region(wan, artifacts_dir, tmp_path_factory):
    from caches.models import ContentCache

    data = tmp_path_factory.mktemp("region")
    # One process: its connections to MSR are the ones a warm pull may reuse.
    process, url = start_cache("region", wan.url, data, artifacts_dir / "logs", workers=1)
    ContentCache.objects.update_or_create(name="region", defaults={"url": url})
    yield {"url": url, "data": data, "process": process}
    process.stop()
    ContentCache.objects.filter(name="region").delete()


@pytest.fixture(scope="module")
def image(msr, personas):
    """A private image of acme/private-app (alice owns acme): its tag and digests."""
    alice = Registry(msr, "alice", personas["alice"].token)
    layers = (b"regional layer one " * 3000, b"regional layer two " * 5000)
    tag = f"region-{int(time.time() * 1000)}"
    digest, response = alice.push_image(REPO, tag, layers=layers)
    assert response.status_code == 201, response.text
    return {"tag": tag, "digest": digest, "layers": [sha256(layer) for layer in layers], "data": layers}


def pull(url, user, secret, name, tag, accept="application/vnd.oci.image.manifest.v1+json"):
    """A pull as a client makes it through the node: token (through the node's relay),
    manifest by tag, every blob; returns (manifest response, [blob responses])."""
    client = Registry(url, user, secret)
    token = client.token(f"repository:{name}:pull")
    manifest = client.request("GET", f"/v2/{name}/manifests/{tag}", token=token, headers={"Accept": accept})
    assert manifest.status_code == 200, manifest.text
    document = manifest.json()
    blobs = [client.request("GET", f"/v2/{name}/blobs/{d['digest']}", token=token)
             for d in [document["config"], *document["layers"]]]
    return manifest, blobs


def crossed(wan, since: int, needle: str) -> list:
    return [entry for entry in wan.seen[since:] if needle in entry[1]]


def test_a_warm_pull_crosses_to_msr_for_the_tag_only(region, wan, personas, image):
    url = region["url"]
    manifest, blobs = pull(url, "alice", personas["alice"].token, REPO, image["tag"])
    assert manifest.headers["Docker-Content-Digest"] == image["digest"]
    assert [sha256(b.content) for b in blobs[1:]] == image["layers"]

    before, connections = len(wan.seen), wan.connections
    manifest, blobs = pull(url, "alice", personas["alice"].token, REPO, image["tag"])
    assert all(b.status_code == 200 and b.headers["X-Cache"] == "HIT" for b in blobs)
    # No new connection across the WAN: the first pull's are kept alive (a relayed token
    # answer read to its end gives its connection back, for the tag).
    assert wan.connections == connections, wan.connections - connections
    assert [b.content for b in blobs[1:]] == list(image["data"])
    to_msr = [(method, path.split("?")[0]) for method, path, _ in wan.seen[before:]
              if not path.startswith("/api/v0/content_caches/pulls")]  # the node's reports, not the client's
    # The token (relayed) and the tag: nothing else crosses, whatever the number of layers.
    assert to_msr == [("GET", "/auth/token"), ("GET", f"/v2/{REPO}/manifests/{image['tag']}")], to_msr


def test_a_manifest_by_digest_is_served_in_the_region_once_known(region, wan, personas, image):
    url = region["url"]
    pull(url, "alice", personas["alice"].token, REPO, image["tag"])
    client = Registry(url, "alice", personas["alice"].token)
    token = client.token(f"repository:{REPO}:pull")
    before = len(wan.seen)
    for method in ("HEAD", "GET"):
        response = client.request(method, f"/v2/{REPO}/manifests/{image['digest']}", token=token)
        assert response.status_code == 200 and response.headers["Docker-Content-Digest"] == image["digest"]
    assert crossed(wan, before, "/manifests/") == []


def test_without_a_token_the_node_challenges_like_msr(region, wan, msr, image):
    response = requests.get(f"{region['url']}/v2/{REPO}/manifests/{image['tag']}", timeout=10)
    assert response.status_code == 401
    assert response.json()["errors"][0]["code"] == "UNAUTHORIZED"
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith(f'Bearer realm="{region["url"]}/auth/token",service="msr"')
    assert f'scope="repository:{REPO}:pull"' in challenge
    base = requests.get(f"{region['url']}/v2/", timeout=10)
    assert base.status_code == 401 and base.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def _forged(claims_change=None, key=None, ttl=300):
    from msr.tokens import sign

    claims = {"typ": "access", "sub": "alice", "aud": "msr",
              "access": [{"type": "repository", "name": REPO, "actions": ["pull"]}]}
    claims.update(claims_change or {})
    if key is None:
        return sign(claims, ttl)
    now = int(time.time())
    return jwt.encode({"iss": "msr", "iat": now, "exp": now + ttl, **claims}, key, algorithm="EdDSA",
                      headers={"kid": "not-msrs-key"})


@pytest.mark.parametrize("case", ["another repository", "expired", "tampered", "another key", "a grant"])
def test_tokens_msr_did_not_issue_for_this_are_refused(region, personas, image, case):
    pull(region["url"], "alice", personas["alice"].token, REPO, image["tag"])  # the node holds the blobs
    token = {
        "another repository": lambda: _forged({"access": [{"type": "repository", "name": "acme/public-app",
                                                             "actions": ["pull"]}]}),
        "expired": lambda: _forged(ttl=-10),
        "tampered": lambda: _tampered(_forged()),
        "another key": lambda: _forged(key=Ed25519PrivateKey.generate()),
        "a grant": lambda: _forged({"typ": "blob-grant", "aud": ["region"]}),
    }[case]()
    headers = {"Authorization": f"Bearer {token}"}
    for path in (f"/v2/{REPO}/blobs/{image['layers'][0]}", f"/v2/{REPO}/manifests/{image['digest']}"):
        response = requests.get(f"{region['url']}{path}", headers=headers, timeout=10)
        assert response.status_code == 401, (case, path, response.status_code)
        assert image["data"][0] not in response.content
        expected = "insufficient_scope" if case == "another repository" else "invalid_token"
        assert f'error="{expected}"' in response.headers["WWW-Authenticate"]


def _tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(jwt.utils.base64url_decode(payload))
    claims["access"][0]["name"] = "acme/other"
    forged = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    return f"{header}.{forged}.{signature}"


def test_a_digest_of_another_private_repository_is_not_served(region, msr, personas, image, unique):
    """mel may pull only what is hers: the node holds alice's private layer, but mel's
    token for her own repository does not reach it by digest."""
    pull(region["url"], "alice", personas["alice"].token, REPO, image["tag"])
    mel = Registry(region["url"], "mel", personas["mel"].token)
    mine = f"mel/own-{unique}"
    Registry(msr, "mel", personas["mel"].token).push_image(mine, "v1", layers=(b"mel's own layer",))
    token = mel.token(f"repository:{mine}:pull")
    for digest in (image["layers"][0], image["digest"]):
        kind = "manifests" if digest == image["digest"] else "blobs"
        response = mel.request("GET", f"/v2/{mine}/{kind}/{digest}", token=token)
        assert response.status_code == 404, (kind, response.status_code)
        assert image["data"][0] not in response.content


def test_a_user_whose_access_was_removed_is_refused_at_the_next_pull(region, msr, personas, image, unique):
    from accounts.models import Namespace
    from accounts.services import add_member, add_team_member, create_team, set_team_access
    from msr.models import Repository

    acme = Namespace.objects.get(name="acme")
    carol = personas["carol"]
    add_member(acme, carol.user)
    team = create_team(acme, f"regional-{unique}")
    add_team_member(team, carol.user)
    repository = Repository.objects.get(namespace=acme, name="private-app")
    set_team_access(team, repository, "read-only")
    pull(region["url"], "carol", carol.token, REPO, image["tag"])

    set_team_access(team, repository, None)
    client = Registry(region["url"], "carol", carol.token)
    token = client.token(f"repository:{REPO}:pull")  # MSR grants nothing now
    for path in (f"/v2/{REPO}/manifests/{image['tag']}", f"/v2/{REPO}/blobs/{image['layers'][0]}"):
        assert client.request("GET", path, token=token).status_code == 401


def test_a_deleted_tag_is_gone_at_once(region, msr, personas, image):
    alice = Registry(msr, "alice", personas["alice"].token)
    tag = f"{image['tag']}-gone"
    _, pushed = alice.push_image(REPO, tag, layers=(b"a tag that goes " * 100,))
    assert pushed.status_code == 201
    pull(region["url"], "alice", personas["alice"].token, REPO, tag)
    deleted = requests.delete(f"{msr}/api/v0/repositories/{REPO}/tags/{tag}", auth=("alice", personas["alice"].token),
                              timeout=10)
    assert deleted.status_code == 204, deleted.text
    client = Registry(region["url"], "alice", personas["alice"].token)
    response = client.request("GET", f"/v2/{REPO}/manifests/{tag}", scope=f"repository:{REPO}:pull")
    assert response.status_code == 404 and response.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


def test_a_push_through_the_region_lands_in_msr_with_msrs_checks(region, msr, personas):
    wanda = Registry(region["url"], "wanda", personas["wanda"].token)
    tag = f"pushed-{int(time.time() * 1000)}"
    digest, response = wanda.push_image(REPO, tag, layers=(b"pushed through the region " * 2000,))
    assert response.status_code == 201, response.text
    direct = Registry(msr, "alice", personas["alice"].token).request(
        "GET", f"/v2/{REPO}/manifests/{tag}", scope=f"repository:{REPO}:pull",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert direct.status_code == 200 and direct.headers["Docker-Content-Digest"] == digest

    bob = Registry(region["url"], "bob", personas["bob"].token)  # read-only on acme/private-app
    refused = bob.push_blob(REPO, b"bob may not push")
    assert refused.status_code == 401


def test_when_msr_is_away_known_digests_are_served_and_tags_say_why(msr, personas, image, artifacts_dir,
                                                                   tmp_path):
    away = FaultProxy(msr)
    process, url = start_cache("island", away.url, tmp_path / "island", artifacts_dir / "logs")
    try:
        client = Registry(url, "alice", personas["alice"].token)
        token = client.token(f"repository:{REPO}:pull")
        pull(url, "alice", personas["alice"].token, REPO, image["tag"])
        away.close()
        process.stop()  # and the node restarts while MSR is away: its store and keys stay
        process, url = start_cache("island", away.url, tmp_path / "island", artifacts_dir / "logs")
        client = Registry(url, "alice", personas["alice"].token)
        blob = client.request("GET", f"/v2/{REPO}/blobs/{image['layers'][1]}", token=token)
        assert blob.status_code == 200 and blob.content == image["data"][1]
        by_digest = client.request("GET", f"/v2/{REPO}/manifests/{image['digest']}", token=token)
        assert by_digest.status_code == 200
        by_tag = client.request("GET", f"/v2/{REPO}/manifests/{image['tag']}", token=token)
        assert by_tag.status_code == 503
        assert "MSR is unreachable" in by_tag.json()["errors"][0]["message"]
    finally:
        process.stop()


def _region_pulls(digest):
    from msr.models import Event

    return list(Event.objects.filter(type=Event.PULL, digest=digest, detail__cache="region").order_by("pk"))


def _wait_for(predicate, seconds=20):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def test_pulls_answered_in_the_region_reach_msrs_audit_trail_even_after_msr_was_away(region, wan, personas,
                                                                                      image):
    """A manifest by digest answered from the region is a pull MSR did not see: the node
    reports it with the client's token; while MSR is away the report waits, then lands."""
    pull(region["url"], "alice", personas["alice"].token, REPO, image["tag"])
    client = Registry(region["url"], "alice", personas["alice"].token)
    token = client.token(f"repository:{REPO}:pull")
    before = len(_region_pulls(image["digest"]))
    assert client.request("GET", f"/v2/{REPO}/manifests/{image['digest']}", token=token).status_code == 200
    assert _wait_for(lambda: len(_region_pulls(image["digest"])) == before + 1)
    event = _region_pulls(image["digest"])[-1]
    assert (event.actor, event.repository) == ("alice", REPO)

    wan.fail_next = 10**6  # MSR answers 503 to everything from the region
    try:
        assert client.request("GET", f"/v2/{REPO}/manifests/{image['digest']}", token=token).status_code == 200
        time.sleep(5)  # the node tried, at least twice
        assert len(_region_pulls(image["digest"])) == before + 1
    finally:
        wan.fail_next = 0
    assert _wait_for(lambda: len(_region_pulls(image["digest"])) == before + 2)


def test_a_report_proves_each_pull_with_the_clients_token(region, msr, personas, image):
    """Anyone may post a report, so each pull must carry a token MSR issued that allows it."""
    from django.utils import timezone

    def report(cache, token):
        return requests.post(f"{msr}/api/v0/content_caches/pulls", timeout=10, json={
            "cache": cache, "pulls": [{"token": token, "repository": REPO, "digest": image["digest"],
                                       "at": timezone.now().isoformat()}]})

    before = len(_region_pulls(image["digest"]))
    for token in (_forged({"access": [{"type": "repository", "name": "acme/public-app", "actions": ["pull"]}]}),
                  _forged(key=Ed25519PrivateKey.generate()), _tampered(_forged()), "not-a-token"):
        answer = report("region", token)
        assert answer.status_code == 200 and answer.json() == {"recorded": 0, "refused": 1}
    assert report("nowhere", _forged()).status_code == 404
    assert len(_region_pulls(image["digest"])) == before
    assert report("region", _forged(ttl=-60)).json() == {"recorded": 1, "refused": 0}  # expired since: still proof


def test_a_head_of_a_blob_the_node_lacks_is_msrs_answer_not_a_download(region, wan, msr, personas, unique):
    """A push asks HEAD for each layer: the node answers with MSR's HEAD and keeps nothing."""
    data = f"never pulled through the region {unique}".encode() * 1000
    assert Registry(msr, "alice", personas["alice"].token).push_blob(REPO, data).status_code == 201
    client = Registry(region["url"], "alice", personas["alice"].token)
    token = client.token(f"repository:{REPO}:pull,push")
    before = len(wan.seen)
    head = client.request("HEAD", f"/v2/{REPO}/blobs/{sha256(data)}", token=token)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(data))
    assert [(m, p.split("?")[0]) for m, p, _ in wan.seen[before:]
            if p.startswith("/v2/")] == [("HEAD", f"/v2/{REPO}/blobs/{sha256(data)}")]
    hex_ = sha256(data).split(":")[1]
    assert not (region["data"] / "blobs" / "sha256" / hex_[:2] / hex_).exists()
    missing = client.request("HEAD", f"/v2/{REPO}/blobs/{sha256(data + b'x')}", token=token)
    assert missing.status_code == 404 and missing.content == b""


def test_a_pull_after_a_pause_finds_its_connection_to_msr_open(msr, personas, image, artifacts_dir, tmp_path):
    """MSR closes a connection idle for 5 s (gunicorn's keep-alive); while its region
    pulls, the node keeps one open, so a pull after a pause opens no WAN connection."""
    closing = FaultProxy(msr, idle_timeout=5)
    process, url = start_cache("warm", closing.url, tmp_path / "warm", artifacts_dir / "logs", workers=1)
    try:
        pull(url, "alice", personas["alice"].token, REPO, image["tag"])
        connections = closing.connections
        time.sleep(8)
        pull(url, "alice", personas["alice"].token, REPO, image["tag"])
        assert closing.connections == connections, closing.connections - connections
    finally:
        process.stop()
        closing.close()
