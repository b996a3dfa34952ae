"""Bytes follow permissions: a stored blob is linked into a repository only when the
actor may read a repository that holds it, or sent its bytes in this operation. Blob
storage is shared by every tenant, so a digest alone must never be a key to them."""

import hashlib

from tests.client import Registry, sha256


def _private_image(guarded, owner, name, tag="v1"):
    """Push a private image with unique layers; returns (config, [layers]) as (digest, size)."""
    seed = hashlib.sha256(name.encode()).hexdigest().encode()
    layers = [b"secret layer one " + seed * 100, b"secret layer two " + seed * 200]
    client = Registry(guarded.url, owner.name, owner.password)
    _, response = client.push_image(name, tag, layers=layers)
    assert response.status_code == 201, response.text
    manifest = client.request("GET", f"/v2/{name}/manifests/{tag}", scope=f"repository:{name}:pull",
                              headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).json()
    config = (manifest["config"]["digest"], manifest["config"]["size"])
    return config, [(layer["digest"], layer["size"]) for layer in manifest["layers"]]


def _poll_mirror(guarded, owner, repository, remote_repository):
    response = guarded.api(owner.auth, "POST", f"repositories/{repository}/pollMirroringPolicies", json={
        "remoteHost": guarded.registry.url, "remoteRepository": remote_repository,
        "rules": [{"field": "tag", "operator": "eq", "values": ["v1"]}]})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _run(guarded, owner, action, policy_id):
    response = guarded.api(owner.auth, "POST", "jobs", json={"action": action, "policy": policy_id})
    assert response.status_code == 202, response.text
    return guarded.wait_job(owner.auth, response.json()["id"])


def _linked(repository: str, digest: str) -> bool:
    from msr.models import RepositoryBlob

    namespace, _, name = repository.partition("/")
    return RepositoryBlob.objects.filter(repository__namespace__name=namespace, repository__name=name,
                                         blob_id=digest).exists()


def test_a_poll_mirror_of_a_lying_registry_gets_no_other_tenants_bytes(guarded, fake, tenant):
    victim, attacker = tenant("victim"), tenant("attacker")
    vault = f"{victim.name}/vault"
    config, layers = _private_image(guarded, victim, vault)
    # The attacker's registry names the victim's private digests (sizes right), and has no bytes.
    fake.serve_image("evil/app", "v1", config, layers)
    loot = f"{attacker.name}/loot"
    Registry(guarded.url, attacker.name, attacker.password).push_image(loot, "seed")
    policy = _poll_mirror(guarded, attacker, loot, "evil/app")

    job = _run(guarded, attacker, "poll_mirror", policy)

    assert job["status"] == "failed", job
    assert "404" in job["error"]
    # MSR asked the remote for what the attacker may not read here, instead of linking it.
    assert fake.asked_for(config[0]) or all(fake.asked_for(d) for d, _ in layers)
    for digest, _ in [config, *layers]:
        assert not _linked(loot, digest)
        pulled = Registry(guarded.url, attacker.name, attacker.password).request(
            "GET", f"/v2/{loot}/blobs/{digest}", scope=f"repository:{loot}:pull")
        assert pulled.status_code == 404 and pulled.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
    tags = Registry(guarded.url, attacker.name, attacker.password).request(
        "GET", f"/v2/{loot}/tags/list", scope=f"repository:{loot}:pull").json()["tags"]
    assert tags == ["seed"]  # no manifest became visible either


def test_a_poll_mirror_tells_nothing_about_which_digests_exist(guarded, fake, tenant):
    victim, attacker = tenant("victim"), tenant("attacker")
    config, layers = _private_image(guarded, victim, f"{victim.name}/vault")
    invented = sha256(b"no such blob anywhere " + victim.name.encode())
    loot = f"{attacker.name}/probe"
    Registry(guarded.url, attacker.name, attacker.password).push_image(loot, "seed")
    outcomes = {}
    for probe, digest in (("stored", layers[0][0]), ("invented", invented)):
        fake.reset()
        fake.serve_image(f"evil/{probe}", "v1", (digest, 10), [])
        job = _run(guarded, attacker, "poll_mirror", _poll_mirror(guarded, attacker, loot, f"evil/{probe}"))
        outcomes[probe] = (job["status"], job["error"].replace(digest, "<digest>").replace(f"evil/{probe}", "<r>"))
        assert fake.asked_for(digest)
    assert outcomes["stored"][0] == outcomes["invented"][0] == "failed"


def test_a_poll_mirror_links_what_its_owner_may_read_without_fetching_it(guarded, fake, tenant):
    owner = tenant("owner")
    config, layers = _private_image(guarded, owner, f"{owner.name}/vault")
    fake.serve_image("upstream/app", "v1", config, layers)
    mirror = f"{owner.name}/mirror"
    Registry(guarded.url, owner.name, owner.password).push_image(mirror, "seed")

    job = _run(guarded, owner, "poll_mirror", _poll_mirror(guarded, owner, mirror, "upstream/app"))

    assert job["status"] == "done", job
    assert not any(fake.asked_for(d) for d, _ in [config, *layers])  # linked: the owner may read them
    assert all(_linked(mirror, d) for d, _ in [config, *layers])


def test_a_mount_from_a_repository_the_caller_cannot_read_becomes_an_upload(guarded, tenant):
    victim, attacker = tenant("victim"), tenant("attacker")
    vault = f"{victim.name}/vault"
    _, layers = _private_image(guarded, victim, vault)
    client = Registry(guarded.url, attacker.name, attacker.password)
    target = f"{attacker.name}/mounted"
    token = client.token(f"repository:{target}:pull,push", f"repository:{vault}:pull")
    response = client.request("POST", f"/v2/{target}/blobs/uploads/?mount={layers[0][0]}&from={vault}", token=token)
    assert response.status_code == 202  # an ordinary upload starts; nothing is linked
    assert not _linked(target, layers[0][0])


def test_a_manifest_naming_blobs_that_were_not_pushed_here_is_refused(guarded, tenant):
    victim, attacker = tenant("victim"), tenant("attacker")
    config, layers = _private_image(guarded, victim, f"{victim.name}/vault")
    import json

    document = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config[0],
                           "size": config[1]},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": s}
                           for d, s in layers]}
    target = f"{attacker.name}/forged"
    response = Registry(guarded.url, attacker.name, attacker.password).push_manifest(
        target, "v1", json.dumps(document).encode())
    assert response.status_code == 400
    assert response.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
