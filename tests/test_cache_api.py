"""Content caches through the REST API: administration, a user's default cache, network
rules, purge and pre-warming (by hand, and by policy on push with a real worker)."""

import time

import requests

from tests.client import Registry, sha256
from tests.fixtures.caches import blob_grant, layer, nodes, stats  # noqa: F401  (fixtures)
from tests.fixtures.webhooks import msr_on_redis  # noqa: F401  (fixture)


def _admin(personas):
    session = requests.Session()
    session.auth = ("admin", personas["admin"].token)
    return session


def test_content_caches_are_administered_by_system_admins(msr, personas, unique):
    admin = _admin(personas)
    api = f"{msr}/api/v0/content_caches"
    created = admin.post(api, json={"name": f"eu{unique}", "region": "Europe", "url": "http://127.0.0.1:9/"})
    assert created.status_code == 201, created.text
    cache = created.json()
    assert cache["url"] == "http://127.0.0.1:9" and cache["healthy"] is True and cache["parent"] is None
    child = admin.post(api, json={"name": f"eu{unique}-2", "url": "http://127.0.0.1:8", "parent": f"eu{unique}"})
    assert child.status_code == 201 and child.json()["parent"] == f"eu{unique}"
    assert admin.patch(f"{api}/{cache['id']}", json={"parent": f"eu{unique}-2"}).status_code == 400  # a cycle
    assert admin.delete(f"{api}/{cache['id']}").status_code == 400  # still a parent
    for bad, field in [({"name": "Bad Name", "url": "http://x"}, "name"), ({"name": f"x{unique}", "url": "ftp://x"}, "url"),
                       ({"name": f"eu{unique}", "url": "http://x"}, "name")]:
        response = admin.post(api, json=bad)
        assert response.status_code == 400 and field in response.json(), bad
    bob = requests.Session()
    bob.auth = ("bob", personas["bob"].token)
    assert bob.get(api).status_code == 403 and bob.post(api, json={}).status_code == 403
    assert requests.get(api).status_code == 401
    assert admin.patch(f"{api}/{cache['id']}", json={"enabled": False}).json()["enabled"] is False
    assert admin.delete(f"{api}/{child.json()['id']}").status_code == 204
    assert admin.delete(f"{api}/{cache['id']}").status_code == 204


def test_users_choose_their_cache_and_admins_may_set_anyones(msr, personas, nodes, layer):
    data, digest = layer
    adam = requests.Session()
    adam.auth = ("adam", personas["adam"].token)
    url = f"{msr}/api/v0/accounts/adam/settings"
    try:
        assert adam.patch(url, json={"defaultContentCache": "nowhere"}).status_code == 400
        assert adam.patch(url, json={"defaultContentCache": "asia"}).json()["defaultContentCache"] == "asia"
        registry = Registry(msr, "adam", personas["adam"].token)
        redirected = registry.request("GET", f"/v2/acme/private-app/blobs/{digest}", scope="repository:acme/private-app:pull")
        assert redirected.status_code == 307 and redirected.headers["Location"].startswith(nodes["asia"])
        assert _admin(personas).patch(url, json={"defaultContentCache": None}).json()["defaultContentCache"] is None
        assert requests.patch(url, auth=("bob", personas["bob"].token), json={"defaultContentCache": "asia"}).status_code == 403
        direct = registry.request("GET", f"/v2/acme/private-app/blobs/{digest}", scope="repository:acme/private-app:pull")
        assert direct.status_code == 200 and direct.content == data
    finally:
        _admin(personas).patch(url, json={"contentCacheChoice": "network"})


def test_a_network_rule_picks_the_cache_unless_the_user_chose_one(msr, personas, nodes, layer):
    _, digest = layer
    admin = _admin(personas)
    rules = f"{msr}/api/v0/cache_network_rules"
    assert admin.post(rules, json={"cidr": "not-a-network", "cache": "asia"}).status_code == 400
    rule = admin.post(rules, json={"cidr": "127.0.0.0/8", "cache": "asia"})
    assert rule.status_code == 201 and rule.json()["cidr"] == "127.0.0.0/8"
    try:
        bob = Registry(msr, "bob", personas["bob"].token)
        response = bob.request("GET", f"/v2/acme/private-app/blobs/{digest}", scope="repository:acme/private-app:pull")
        assert response.status_code == 307 and response.headers["Location"].startswith(nodes["asia"])
        requests.patch(f"{msr}/api/v0/accounts/bob/settings", auth=("bob", personas["bob"].token),
                       json={"defaultContentCache": "china"})
        response = bob.request("GET", f"/v2/acme/private-app/blobs/{digest}", scope="repository:acme/private-app:pull")
        assert response.headers["Location"].startswith(nodes["china"])  # the user's choice wins
        settings_url = f"{msr}/api/v0/accounts/bob/settings"
        chose_msr = requests.patch(settings_url, auth=("bob", personas["bob"].token), json={"contentCacheChoice": "none"})
        assert chose_msr.json() == {"defaultRepositoryVisibility": "private", "contentCacheChoice": "none",
                                    "defaultContentCache": None}
        response = bob.request("GET", f"/v2/acme/private-app/blobs/{digest}", scope="repository:acme/private-app:pull")
        assert response.status_code == 200  # "MSR itself" wins over the network rule
        back = requests.patch(settings_url, auth=("bob", personas["bob"].token), json={"contentCacheChoice": "network"})
        assert back.json()["contentCacheChoice"] == "network"
        response = bob.request("GET", f"/v2/acme/private-app/blobs/{digest}", scope="repository:acme/private-app:pull")
        assert response.headers["Location"].startswith(nodes["asia"])  # not chosen: the network decides
        refused = requests.patch(settings_url, auth=("bob", personas["bob"].token),
                                 json={"contentCacheChoice": "none", "defaultContentCache": "asia"})
        assert refused.status_code == 400 and "defaultContentCache" in refused.json()
    finally:
        admin.delete(f"{rules}/{rule.json()['id']}")
        requests.patch(f"{msr}/api/v0/accounts/bob/settings", auth=("bob", personas["bob"].token),
                       json={"contentCacheChoice": "network"})


def test_behind_a_proxy_the_rule_matches_the_forwarded_client_address(msr, personas, nodes, layer):
    """MSR behind nginx sees the proxy's address (here 127.0.0.1, trusted by default):
    the rule matches the client address the proxy appended to X-Forwarded-For, not
    addresses the client wrote into the header itself; and the audit trail records it."""
    from msr.models import Event

    _, digest = layer
    admin = _admin(personas)
    rules = f"{msr}/api/v0/cache_network_rules"
    rule = admin.post(rules, json={"cidr": "198.51.100.0/24", "cache": "asia"})
    assert rule.status_code == 201
    try:
        bob = Registry(msr, "bob", personas["bob"].token)
        token = bob.token("repository:acme/private-app:pull")
        path = f"/v2/acme/private-app/blobs/{digest}"
        for forwarded, expected in [
            ("198.51.100.7", 307),                 # the proxy saw a client in the rule's network
            ("198.51.100.7, 127.0.0.1", 307),      # through two trusted proxies
            ("198.51.100.7, 203.0.113.9", 200),    # client spoofed the header; the proxy saw 203.0.113.9
            ("not-an-address", 200),
        ]:
            response = bob.request("GET", path, token=token, headers={"X-Forwarded-For": forwarded})
            assert response.status_code == expected, forwarded
            if expected == 307:
                assert response.headers["Location"].startswith(nodes["asia"])
        assert bob.request("GET", path, token=token).status_code == 200  # no header: 127.0.0.1

        alice = Registry(msr, "alice", personas["alice"].token)
        alice.push_image("acme/private-app", "behind-proxy", layers=(b"proxied layer",))
        manifest = bob.request("GET", "/v2/acme/private-app/manifests/behind-proxy", token=token,
                               headers={"X-Forwarded-For": "198.51.100.8"})
        assert manifest.status_code == 200

        def recorded():  # pulls are written in batches, within a second or so
            return Event.objects.filter(type=Event.PULL, actor="bob", client_ip="198.51.100.8").exists()
        deadline = time.monotonic() + 15
        while not recorded() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert recorded()
    finally:
        admin.delete(f"{rules}/{rule.json()['id']}")


def test_purge_one_blob_from_msr(msr, personas, nodes, layer):
    from caches.models import ContentCache

    data, digest = layer
    asia = nodes["asia"]
    assert requests.get(f"{asia}/v2/acme/private-app/blobs/{digest}",
                        params={"grant": blob_grant(digest=digest)}).content == data
    before = stats(asia)
    cache_id = ContentCache.objects.get(name="asia").pk
    purged = _admin(personas).post(f"{msr}/api/v0/content_caches/{cache_id}/purge", json={"digest": digest})
    assert purged.status_code == 200 and purged.json() == {"removed": 1}
    assert stats(asia)["disk_used"] == before["disk_used"] - len(data)
    assert requests.post(f"{asia}/purge").status_code == 401  # only MSR may purge


def test_prewarm_by_hand_and_by_policy_on_push(msr_on_redis, personas, nodes, unique):
    from caches.models import ContentCache, PrewarmPolicy

    asia = nodes["asia"]
    alice = Registry(msr_on_redis, "alice", personas["alice"].token)
    name = f"acme/warm-{unique}"
    layers = (b"warm one " + unique.encode(), b"warm two " + unique.encode())
    alice.push_image(name, "v1", layers=layers)
    cache_id = ContentCache.objects.get(name="asia").pk
    admin = _admin(personas)
    api = f"{msr_on_redis}/api/v0/content_caches/{cache_id}/prewarm"
    assert admin.post(api, json={"repository": name, "tag": "nope"}).status_code == 400
    before = stats(asia)["upstream_fetches"]
    assert admin.post(api, json={"repository": name, "tag": "v1"}).status_code == 202
    _wait(lambda: stats(asia)["upstream_fetches"] - before == 3)  # config + 2 layers

    policy = admin.post(f"{msr_on_redis}/api/v0/prewarm_policies", json={
        "namespace": "acme", "repository": f"warm-{unique}", "tagPattern": "release-.*", "caches": ["asia"]})
    assert policy.status_code == 201, policy.text
    try:
        before = stats(asia)["upstream_fetches"]
        alice.push_image(name, "dev-1", layers=(b"dev " + unique.encode(),))
        alice.push_image(name, "release-1", layers=(b"release " + unique.encode(),))
        _wait(lambda: stats(asia)["upstream_fetches"] - before == 2)  # release-1's config + layer only
        time.sleep(1)
        assert stats(asia)["upstream_fetches"] - before == 2
    finally:
        PrewarmPolicy.objects.filter(pk=policy.json()["id"]).delete()


def _wait(condition, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)


def test_cache_metrics_are_reported_back_to_msr(msr, personas, nodes, layer):
    from caches.models import ContentCache
    from caches.tasks import check_caches

    data, digest = layer
    requests.get(f"{nodes['asia']}/v2/acme/private-app/blobs/{digest}", params={"grant": blob_grant(digest=digest)})
    assert check_caches()["asia"] is True
    cache_id = ContentCache.objects.get(name="asia").pk
    admin = _admin(personas)
    cache = admin.get(f"{msr}/api/v0/content_caches/{cache_id}").json()
    assert cache["healthy"] is True and cache["metrics"]["hits"] + cache["metrics"]["misses"] >= 1
    assert 0 <= cache["metrics"]["hitRatio"] <= 1 and cache["metrics"]["diskUsed"] > 0
    sample = admin.get(f"{msr}/api/v0/content_caches/{cache_id}/metrics").json()["results"][0]
    assert sample["hits"] + sample["misses"] >= 1
    assert sha256(data) == digest
