"""The Docker CLI and containerd's ctr against a real `msr serve`, and through a cache node.

One private dockerd and one private containerd serve the session (tests/dockerd.py).
Images are built by the test: a small rootfs made with tarfile and `docker import`ed, then a
`FROM` build (the 20.10 legacy builder, DOCKER_BUILDKIT=0) that adds two `COPY` layers of
random bytes, so every image has three layers of its own (no two tests share a layer: a
layer already in the daemon would not be fetched again).

The cache story: a user whose profile picks the cache node `asia` (tests/test_caches.py's
`nodes` and `users`) pulls; MSR answers every blob GET of the pull with a 307 to asia (its
/metrics counts blob GETs by status) and asia fetches each blob from MSR once (its /stats);
a second user of the same cache pulls the same image and asia serves it all from disk.
"""

import io
import json
import os
import re
import tarfile
from pathlib import Path

import pytest
import requests

from tests.client import Registry
from tests.fixtures.caches import nodes, stats, users  # noqa: F401  (fixtures shared with the cache tests)
from tests.fixtures.metrics import BLOB, scrape, value

ORG = "edge"  # alice's organization; team `pullers` (asiaone, asiatwo) may read all of it


def _host(msr: str) -> str:
    return msr.removeprefix("http://")


def _login(dockerd, host, user, secret):
    result = dockerd.docker("login", "-u", user, "--password-stdin", host, input=secret)
    assert "Login Succeeded" in result.stdout
    return result


def _auths(dockerd) -> dict:
    path = dockerd.config_dir / "config.json"
    return json.loads(path.read_text()).get("auths", {}) if path.exists() else {}


def build_image(dockerd, tmp_path: Path, tag: str) -> dict:
    """Build `tag` in the daemon: an imported rootfs plus two COPY layers; returns the
    image's id, its layers' diff ids and the bytes of /app/app.bin."""
    work = tmp_path / f"build-{os.urandom(4).hex()}"
    work.mkdir()
    rootfs = work / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        for name, data, mode in [("etc/os-release", b"NAME=msr-test\n", 0o644),
                                 ("bin/hello", b"#!/bin/sh\necho hello\n", 0o755),
                                 ("var/lib/seed", os.urandom(32_768), 0o644)]:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    base = f"msr-test-base-{os.urandom(4).hex()}:latest"
    dockerd.docker("import", str(rootfs), base)
    context = work / "context"
    context.mkdir()
    app = os.urandom(300_000)
    (context / "app.bin").write_bytes(app)
    (context / "app.conf").write_text(f"id = {os.urandom(8).hex()}\n")
    (context / "Dockerfile").write_text(f"FROM {base}\nCOPY app.bin /app/app.bin\nCOPY app.conf /etc/app.conf\n")
    dockerd.docker("build", "-q", "-t", tag, str(context), env={"DOCKER_BUILDKIT": "0"})
    dockerd.docker("rmi", base)  # the built image keeps the layer; only the tag goes
    inspected = _inspect(dockerd, tag)
    assert inspected is not None and len(inspected["RootFS"]["Layers"]) == 3
    return {"id": inspected["Id"], "layers": inspected["RootFS"]["Layers"], "app": app}


def _inspect(dockerd, reference) -> dict | None:
    result = dockerd.docker("image", "inspect", reference, check=False)
    return json.loads(result.stdout)[0] if result.returncode == 0 else None


def _push(dockerd, reference) -> str:
    """docker push; returns the manifest digest docker reports."""
    output = dockerd.docker("push", reference).stdout
    return re.search(r"digest: (sha256:[0-9a-f]{64}) size: \d+", output).group(1)


def _forget(dockerd, *references):
    """docker rmi, and make sure the image is gone from the daemon."""
    dockerd.docker("rmi", *references)
    for reference in references:
        assert _inspect(dockerd, reference) is None


def _manifest(msr, name, reference, persona) -> tuple[str, dict]:
    client = Registry(msr, persona.name, persona.token)
    response = client.request("GET", f"/v2/{name}/manifests/{reference}", scope=f"repository:{name}:pull",
                              headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    assert response.status_code == 200, response.text
    return response.headers["Docker-Content-Digest"], response.json()


# -- docker CLI, direct --------------------------------------------------------------------


def test_docker_login_push_rmi_pull_by_tag_and_by_digest_then_logout(dockerd, msr, personas, unique, tmp_path):
    host, name = _host(msr), f"acme/docker-{unique}"
    image = f"{host}/{name}:v1"
    built = build_image(dockerd, tmp_path, image)

    _login(dockerd, host, "alice", "alice-password")
    assert host in _auths(dockerd)  # in the private DOCKER_CONFIG, not ~/.docker
    digest = _push(dockerd, image)
    served_digest, manifest = _manifest(msr, name, "v1", personas["alice"])
    assert served_digest == digest
    assert len(manifest["layers"]) == 3

    _forget(dockerd, image)
    dockerd.docker("pull", image)
    pulled = _inspect(dockerd, image)
    assert pulled["Id"] == built["id"] and pulled["RootFS"]["Layers"] == built["layers"]
    assert f"{host}/{name}@{digest}" in pulled["RepoDigests"]

    _forget(dockerd, image)
    by_digest = f"{host}/{name}@{digest}"
    dockerd.docker("pull", by_digest)
    assert _inspect(dockerd, by_digest)["Id"] == built["id"]
    _forget(dockerd, by_digest)

    logout = dockerd.docker("logout", host)
    assert f"Removing login credentials for {host}" in logout.stdout
    assert host not in _auths(dockerd)
    # acme/docker-… is private: without the credentials the pull is refused.
    refused = dockerd.docker("pull", image, check=False)
    assert refused.returncode != 0
    assert f"pull access denied for {host}/{name}" in refused.stderr, refused.stderr
    assert f"denied: insufficient scope: the token does not grant pull on {name}" in refused.stderr, refused.stderr
    assert _inspect(dockerd, image) is None


def test_docker_login_with_a_personal_access_token_ends_with_its_revocation(dockerd, msr, personas, unique,
                                                                         tmp_path):
    host, name = _host(msr), "acme/private-app"
    image = f"{host}/{name}:docker-pat-{unique}"
    created = requests.post(f"{msr}/api/v0/tokens", auth=("wanda", "wanda-password"), timeout=30,
                            json={"name": f"docker-{unique}", "scopes": ["registry:pull", "registry:push"]})
    assert created.status_code == 201, created.text
    token = created.json()["token"]

    wrong = dockerd.docker("login", "-u", "wanda", "--password-stdin", host, input="not-the-token", check=False)
    assert wrong.returncode != 0
    assert "unauthorized: invalid username, password or token" in wrong.stderr, wrong.stderr
    _login(dockerd, host, "wanda", token)  # wanda's team may write acme/private-app
    built = build_image(dockerd, tmp_path, image)
    digest = _push(dockerd, image)
    tags = requests.get(f"{msr}/api/v0/repositories/{name}/tags", auth=("wanda", "wanda-password"), timeout=30).json()
    assert f"docker-pat-{unique}" in [tag["name"] for tag in tags]
    _forget(dockerd, image)
    dockerd.docker("pull", image)
    assert _inspect(dockerd, image)["Id"] == built["id"]
    _forget(dockerd, image)

    revoked = requests.delete(f"{msr}/api/v0/tokens/{created.json()['id']}", auth=("wanda", "wanda-password"),
                              timeout=30)
    assert revoked.status_code == 204
    refused = dockerd.docker("pull", f"{host}/{name}@{digest}", check=False)
    assert refused.returncode != 0
    # docker login traded the token for a refresh token, which ends with the token.
    assert "unauthorized: invalid, expired or revoked refresh token" in refused.stderr, refused.stderr
    dockerd.docker("logout", host)


def test_docker_push_without_write_access_is_refused_with_msrs_message(dockerd, msr, personas, unique, tmp_path):
    host = _host(msr)
    image = f"{host}/acme/private-app:bob-{unique}"
    build_image(dockerd, tmp_path, image)
    _login(dockerd, host, "bob", "bob-password")  # bob's team is read-only on acme/private-app
    try:
        refused = dockerd.docker("push", image, check=False)
    finally:
        dockerd.docker("logout", host)
        dockerd.docker("rmi", image)
    assert refused.returncode != 0
    # bob may pull: the message names only what he lacks
    assert "denied: insufficient scope: the token does not grant push on acme/private-app" in refused.stderr, \
        refused.stderr
    tags = requests.get(f"{msr}/api/v0/repositories/acme/private-app/tags", auth=("bob", "bob-password"),
                        timeout=30).json()
    assert f"bob-{unique}" not in [tag["name"] for tag in tags]


def test_docker_pull_of_another_tenants_private_repository_is_refused(dockerd, msr, personas, unique):
    host, name = _host(msr), "acme/private-app"
    alice = Registry(msr, "alice", personas["alice"].token)
    _, pushed = alice.push_image(name, f"carol-{unique}", layers=(os.urandom(100), os.urandom(100)))
    assert pushed.status_code == 201, pushed.text
    _login(dockerd, host, "carol", "carol-password")  # carol is not a member of acme
    try:
        refused = dockerd.docker("pull", f"{host}/{name}:carol-{unique}", check=False)
    finally:
        dockerd.docker("logout", host)
    assert refused.returncode != 0
    assert f"pull access denied for {host}/{name}" in refused.stderr, refused.stderr
    assert f"denied: insufficient scope: the token does not grant pull on {name}" in refused.stderr, refused.stderr


# -- through the user's cache --------------------------------------------------------------


@pytest.fixture(scope="module")
def edge(personas, users):
    """alice's organization `edge`, all of which the team `pullers` may read: asiaone and
    asiatwo (tests/test_caches.py's users, whose profiles pick the cache asia)."""
    from accounts.models import Namespace, User
    from accounts.services import add_team_member, create_organization, create_team, set_team_access

    org = Namespace.objects.filter(name=ORG).first() or create_organization(ORG, owner=personas["alice"].user)
    team = org.teams.filter(name="pullers").first() or create_team(org, "pullers")
    for name in ("asiaone", "asiatwo"):
        add_team_member(team, User.objects.get(username=name))
    set_team_access(team, org, "read-only")
    return ORG


def _pushed_by_alice(dockerd, msr, personas, tmp_path, name) -> tuple[dict, str, int]:
    """alice builds and pushes `name:v1` (private) with docker; the daemon keeps nothing
    of it. Returns the build, the manifest digest and the number of blobs a pull fetches
    (layers and config)."""
    host = _host(msr)
    image = f"{host}/{name}:v1"
    built = build_image(dockerd, tmp_path, image)
    _login(dockerd, host, "alice", "alice-password")
    digest = _push(dockerd, image)
    dockerd.docker("logout", host)
    _forget(dockerd, image)
    _, manifest = _manifest(msr, name, "v1", personas["alice"])
    return built, digest, len(manifest["layers"]) + 1


class Watch:
    """What one pull did: MSR's blob GETs by status (its /metrics, summed over its
    workers) and the cache node's counters (its /stats)."""

    def __init__(self, msr, cache):
        self.msr, self.cache = msr, cache

    def __enter__(self):
        self.msr_before, self.cache_before = scrape(self.msr), stats(self.cache)
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            msr_after, cache_after = scrape(self.msr), stats(self.cache)
            self.redirected = self._moved(msr_after, status="307")
            self.served_by_msr = self._moved(msr_after, status="200")  # the cache's fills only
            self.to_asia = (value(msr_after, "msr_cache_redirects_total", cache="asia")
                            - value(self.msr_before, "msr_cache_redirects_total", cache="asia"))
            self.node = {key: cache_after[key] - self.cache_before[key]
                         for key in ("hits", "misses", "upstream_fetches")}

    def _moved(self, after, status):
        labels = {"route": BLOB, "method": "GET", "status": status}
        return value(after, "msr_http_requests_total", **labels) - value(self.msr_before, "msr_http_requests_total",
                                                                         **labels)


def test_docker_pulls_go_through_the_users_cache_and_a_second_user_gets_only_hits(
        dockerd, msr, personas, nodes, users, edge, unique, tmp_path):
    host, name = _host(msr), f"{edge}/app-{unique}"
    image = f"{host}/{name}:v1"
    built, digest, blobs = _pushed_by_alice(dockerd, msr, personas, tmp_path, name)
    assert blobs == 4

    _login(dockerd, host, *users["asiaone"].split(":"))
    with Watch(msr, nodes["asia"]) as first:
        dockerd.docker("image", "pull", image)
    assert _inspect(dockerd, image)["Id"] == built["id"]
    assert first.redirected == blobs and first.to_asia == blobs  # every blob GET: a 307 to asia
    assert first.served_by_msr == blobs  # asia's fills, once per blob
    assert first.node == {"misses": blobs, "upstream_fetches": blobs, "hits": 0}

    _forget(dockerd, image)
    _login(dockerd, host, *users["asiatwo"].split(":"))
    with Watch(msr, nodes["asia"]) as second:
        dockerd.docker("image", "pull", image)
    dockerd.docker("logout", host)
    pulled = _inspect(dockerd, image)
    assert pulled["Id"] == built["id"] and f"{host}/{name}@{digest}" in pulled["RepoDigests"]
    _forget(dockerd, image)
    assert second.redirected == blobs and second.to_asia == blobs
    assert second.served_by_msr == 0  # no new fetch from MSR: all from asia's disk
    assert second.node == {"misses": 0, "upstream_fetches": 0, "hits": blobs}


# -- containerd's ctr (the runtime of Kubernetes nodes) -------------------------------------

# `native` copies each layer into a plain directory: it works on any filesystem, where
# overlayfs cannot mount on an overlay root (CI containers). ctr unpacks every pull with it.
SNAPSHOTTER = "native"


def _ctr_pull(containerd, msr, reference, credentials, check=True):
    return containerd.ctr("images", "pull", "--plain-http", "--snapshotter", SNAPSHOTTER, "--user", credentials,
                          f"{_host(msr)}/{reference}", check=check)


def _ctr_digest(containerd, reference) -> str | None:
    for line in containerd.ctr("images", "ls").stdout.splitlines()[1:]:
        columns = line.split()
        if columns[0] == reference:
            return columns[2]
    return None


def test_ctr_pulls_and_unpacks_an_image_docker_pushed(dockerd, containerd, msr, personas, unique, tmp_path):
    name = f"acme/ctr-{unique}"
    reference = f"{_host(msr)}/{name}:v1"
    built, digest, _ = _pushed_by_alice(dockerd, msr, personas, tmp_path, name)

    refused = _ctr_pull(containerd, msr, f"{name}:v1", "carol:carol-password", check=False)
    assert refused.returncode != 0
    # containerd shows the challenge's error code, not its description
    assert "pull access denied" in refused.stderr and "insufficient_scope: authorization failed" in refused.stderr, \
        refused.stderr
    assert _ctr_digest(containerd, reference) is None

    _ctr_pull(containerd, msr, f"{name}:v1", "alice:alice-password")
    assert _ctr_digest(containerd, reference) == digest
    # unpacked: the image's filesystem holds what docker put in it
    target = tmp_path / "mounted"
    target.mkdir()
    containerd.ctr("images", "mount", "--snapshotter", SNAPSHOTTER, reference, str(target))
    try:
        assert (target / "app/app.bin").read_bytes() == built["app"]
        assert (target / "etc/os-release").read_text() == "NAME=msr-test\n"
    finally:
        containerd.ctr("images", "unmount", "--rm", str(target))
    containerd.ctr("images", "rm", "--sync", reference)


def test_ctr_pulls_go_through_the_users_cache(dockerd, containerd, msr, personas, nodes, users, edge, unique,
                                              tmp_path):
    name = f"{edge}/ctr-{unique}"
    reference = f"{_host(msr)}/{name}:v1"
    _, digest, blobs = _pushed_by_alice(dockerd, msr, personas, tmp_path, name)

    with Watch(msr, nodes["asia"]) as pull:
        _ctr_pull(containerd, msr, f"{name}:v1", users["asiaone"])
    assert _ctr_digest(containerd, reference) == digest
    assert pull.redirected == blobs and pull.to_asia == blobs  # containerd followed each 307 to asia
    assert pull.served_by_msr == blobs
    assert pull.node == {"misses": blobs, "upstream_fetches": blobs, "hits": 0}
    containerd.ctr("images", "rm", "--sync", reference)

    with Watch(msr, nodes["asia"]) as again:
        _ctr_pull(containerd, msr, f"{name}:v1", users["asiatwo"])
    assert _ctr_digest(containerd, reference) == digest
    assert again.redirected == blobs and again.served_by_msr == 0
    assert again.node == {"misses": 0, "upstream_fetches": 0, "hits": blobs}
    containerd.ctr("images", "rm", "--sync", reference)
