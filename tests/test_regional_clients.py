"""Real clients pulling through the regional endpoint (caches/endpoint.py): podman with
the cache node as a mirror of MSR (registries.conf), and containerd's ctr with the node
as a host of MSR (hosts.toml). tests/test_regional_endpoint.py speaks the protocol with
requests; here the clients speak it as they do in a region.

What a user relies on: an image pulled by MSR's name is served by the region's node, with
one request to MSR per pull (the tag, resolved with the client's token), and a second pull
gets every blob from the node's disk.

Three addresses of MSR are in play, each a FaultProxy that records what crosses it:
- `wan`: the node's --msr, what the region sends MSR;
- `direct`: the registry in the image's name, the primary of registries.conf and the
  server of hosts.toml. Both clients fall back to it, silently, when the mirror fails (a
  refusal, an error): a pull that did not go through the node shows there, and the tests
  assert nothing of the repository crossed it;
- MSR itself, where the tests push.
The node's own account of the pull is its access log (JSON lines of msr.cache.access,
with `x_cache`), read from its process log.
"""

import base64
import hashlib
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

import pytest

from caches.endpoint import MANIFEST_ROUTE
from caches.node import BLOB_ROUTE
from tests.client import Registry
from tests.faults import FaultProxy
from tests.images import OCI_INDEX, make_image_layout, make_index_layout
from tests.processes import need, run, start_cache

REPO = "acme/private-app"  # private: alice owns acme
# The platform podman and ctr pull from an index (make_index_layout makes amd64 and arm64).
ARCHITECTURE = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), platform.machine())


def _host(url: str) -> str:
    return url.removeprefix("http://")


@pytest.fixture(scope="module")
def wan(msr):
    """MSR as the node reaches it: what the region asks MSR."""
    proxy = FaultProxy(msr)
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def direct(msr):
    """MSR by the name in the image references: where a client that gives up on the mirror goes."""
    proxy = FaultProxy(msr)
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def region(wan, artifacts_dir, tmp_path_factory):
    from caches.models import ContentCache

    process, url = start_cache("region-clients", wan.url, tmp_path_factory.mktemp("region-clients"),
                               artifacts_dir / "logs")
    # Registered, as operators do: the node's reports of the pulls it answers are accepted.
    ContentCache.objects.update_or_create(name="region-clients", defaults={"url": url})
    yield {"url": url, "process": process}
    process.stop()
    ContentCache.objects.filter(name="region-clients").delete()


# -- images ------------------------------------------------------------------------------


def _blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def push_layout(msr, persona, name: str, tag: str, layout: Path, digest: str) -> None:
    """Push the OCI layout's image (or index, and its images) to MSR as `name:tag`."""
    client = Registry(msr, persona.name, persona.token)
    document = json.loads(_blob(layout, digest))
    if document["mediaType"] == OCI_INDEX:
        for child in document["manifests"]:
            push_layout(msr, persona, name, child["digest"], layout, child["digest"])
        media_type = OCI_INDEX
    else:
        for descriptor in (document["config"], *document["layers"]):
            response = client.push_blob(name, _blob(layout, descriptor["digest"]))
            assert response.status_code == 201, response.text
        media_type = document["mediaType"]
    response = client.push_manifest(name, tag, _blob(layout, digest), media_type=media_type)
    assert response.status_code == 201, response.text


@pytest.fixture
def make_image(msr, personas, unique, tmp_path):
    """A private image (or index) of acme/private-app, of its own blobs (none is on the
    node yet), pushed to MSR: its reference by MSR's name (`direct`), its digest, the
    digest of the image manifest a client pulls (the index's entry for this machine) and
    that image's blobs (config, layers)."""
    def make(direct, prefix: str, index=False) -> dict:
        layout = tmp_path / f"layout-{prefix}"
        if index:
            digest = make_index_layout(layout)
        else:
            digest = make_image_layout(layout, layer_sizes=(300_000, 700_000, 50_000))
        tag = f"{prefix}-{unique}"
        push_layout(msr, personas["alice"], REPO, tag, layout, digest)
        document = json.loads(_blob(layout, digest))
        chosen = digest
        if index:  # the clients pull the machine's platform
            chosen = next(m["digest"] for m in document["manifests"]
                          if m["platform"]["architecture"] == ARCHITECTURE)
            document = json.loads(_blob(layout, chosen))
        blobs = [document["config"]["digest"], *[layer["digest"] for layer in document["layers"]]]
        return {"tag": tag, "reference": f"{_host(direct.url)}/{REPO}:{tag}", "digest": digest,
                "manifest": chosen, "blobs": blobs}
    return make


# -- what crossed where -------------------------------------------------------------------


class Watch:
    """What one pull (or push) did: the node's access log lines for the repository, any
    line of its log that is not JSON, and what crossed to MSR from the node (`wan`) and
    from the client directly (`direct`)."""

    def __init__(self, region, wan, direct):
        self.region, self.wan, self.direct = region, wan, direct

    def __enter__(self):
        self._log_at = len(self.region["process"].log())
        self._wan_at, self._direct_at = len(self.wan.seen), len(self.direct.seen)
        return self

    def __exit__(self, *exc):
        text = self.region["process"].log()[self._log_at:]
        self.node, self.not_json = [], []
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                self.not_json.append(line)
                continue
            if entry.get("logger") == "msr.cache.access" and entry.get("repository") == REPO:
                self.node.append(entry)
        # What the client's requests made cross; the node's own reports of pulls it answered
        # (sent every few seconds, whenever) are not the client's.
        self.to_msr = [(method, path.split("?")[0], status) for method, path, status in self.wan.seen[self._wan_at:]
                       if not path.startswith("/api/v0/content_caches/pulls")]
        self.fallback = [entry for entry in self.direct.seen[self._direct_at:] if f"/v2/{REPO}/" in entry[1]]

    def manifests_at_msr(self) -> list:
        return [entry for entry in self.to_msr if "/manifests/" in entry[1]]

    def blobs_at_msr(self) -> set:
        return {path.rsplit("/", 1)[1] for method, path, status in self.to_msr if "/blobs/" in path}

    def node_blobs(self) -> dict:
        """digest -> [(method, status, x_cache)] of the blob requests the node answered."""
        found = {}
        for entry in self.node:
            if entry["route"] == BLOB_ROUTE:
                found.setdefault(entry["digest"], []).append((entry["method"], entry["status"], entry.get("x_cache")))
        return found

    def node_manifests(self) -> list:
        return [(entry["method"], entry["digest"], entry["status"], entry.get("x_cache")) for entry in self.node
                if entry["route"] == MANIFEST_ROUTE]


def assert_through_the_node(pull: Watch, image: dict, cold: bool, head_first: bool = False) -> None:
    """The pull went through the node, asked MSR only for the tag (and, cold, for what the
    node did not hold), and got its blobs from the node: filled once if `cold`, else HITs.
    `head_first`: the client resolves the tag with a HEAD (containerd), which the node asks
    MSR as a HEAD (not a pull in MSR's audit); cold, the manifest by digest then comes
    from MSR once (the pull MSR records), warm from the node (reported by the node)."""
    assert pull.fallback == [], f"the client went to MSR directly: {pull.fallback}"
    # The node's log is read by collectors as one JSON object a line, whatever the client did.
    assert pull.not_json == [], pull.not_json
    manifests = pull.node_manifests()
    assert any(reference == image["tag"] and status == 200 and x_cache == "RESOLVED"
               for _, reference, status, x_cache in manifests), manifests
    expected = [("HEAD" if head_first else "GET", f"/v2/{REPO}/manifests/{image['tag']}", 200)]
    if cold and head_first:
        expected.append(("GET", f"/v2/{REPO}/manifests/{image['digest']}", 200))
    if cold and image["manifest"] != image["digest"]:  # an index: its image's manifest, once
        expected.append(("GET", f"/v2/{REPO}/manifests/{image['manifest']}", 200))
    assert pull.manifests_at_msr() == expected, pull.to_msr
    blobs = pull.node_blobs()
    assert set(blobs) == set(image["blobs"]), blobs
    for digest, answers in blobs.items():
        assert all(status == 200 for _, status, _ in answers), (digest, answers)
        if not cold:
            assert all(x_cache == "HIT" for _, _, x_cache in answers), (digest, answers)
    if cold:
        assert pull.blobs_at_msr() == set(image["blobs"]), pull.to_msr  # each filled from MSR
    else:
        assert pull.blobs_at_msr() == set(), pull.to_msr
        assert [path for _, path, _ in pull.to_msr if path.startswith("/v2/")] == [expected[0][1]], pull.to_msr


# -- podman: the node as a mirror of MSR (registries.conf) -----------------------------------


def _podman_config(tmp_path: Path, region, direct, persona) -> dict:
    """registries.conf with the node as MSR's mirror, and an authfile with the
    credentials for both. containers/image does not send --creds to a mirror ("we must
    not blindly send the credentials intended for the primary endpoint to mirrors",
    docker/docker_image_src.go): the mirror's credentials come from the authfile, by the
    mirror's host, or the mirror is asked without any, refuses, and podman falls back to
    the primary."""
    conf = tmp_path / "registries.conf"
    conf.write_text("\n".join([
        "[[registry]]",
        f'location = "{_host(direct.url)}"',
        "insecure = true",
        "[[registry.mirror]]",
        f'location = "{_host(region["url"])}"',
        "insecure = true",
        "",
    ]))
    secret = base64.b64encode(f"{persona.name}:{persona.token}".encode()).decode()
    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps({"auths": {_host(region["url"]): {"auth": secret},
                                              _host(direct.url): {"auth": secret}}}))
    return {"conf": conf, "authfile": authfile}


def _runroot(storage: Path) -> Path:
    # podman refuses a run root longer than 50 characters; pytest's tmp paths are longer.
    return Path(tempfile.gettempdir()) / f"msrpod-{hashlib.sha1(str(storage).encode()).hexdigest()[:12]}"


def _podman(storage: Path, config: dict, *args, check=True, input=None):
    """podman with its own storage (vfs), run root and registries.conf."""
    base = ["podman", "--root", str(storage / "root"), "--runroot", str(_runroot(storage)),
            "--storage-driver", "vfs", "--events-backend", "file", "--cgroup-manager", "cgroupfs"]
    environ = {k: v for k, v in os.environ.items() if k not in ("REGISTRY_AUTH_FILE", "CONTAINERS_REGISTRIES_CONF")}
    return run([*base, *args], check=check, timeout=600, input=input,
               env={**environ, "CONTAINERS_REGISTRIES_CONF": str(config["conf"])})


def _podman_pull(tmp_path: Path, config: dict, image: dict, attempt: str, check=True):
    """Pull into a fresh storage (nothing of the image local); what landed (podman image
    inspect), or the failed pull when not `check`. The storage goes afterwards."""
    storage = tmp_path / f"podman-{attempt}"
    try:
        pulled = _podman(storage, config, "pull", "--authfile", str(config["authfile"]), image["reference"],
                         check=check)
        if not check:
            return pulled
        return json.loads(_podman(storage, config, "image", "inspect", image["reference"]).stdout)[0]
    finally:
        shutil.rmtree(_runroot(storage), ignore_errors=True)
        shutil.rmtree(storage, ignore_errors=True)


@pytest.mark.parametrize("kind", ["image", "index"])
def test_podman_pulls_msrs_name_through_the_region_mirror(region, wan, direct, personas, make_image, tmp_path,
                                                          kind):
    need("podman")
    image = make_image(direct, f"podman-{kind}", index=kind == "index")
    config = _podman_config(tmp_path, region, direct, personas["alice"])

    with Watch(region, wan, direct) as first:
        pulled = _podman_pull(tmp_path, config, image, "first")
    assert pulled["Digest"] == image["digest"]
    assert f"{_host(direct.url)}/{REPO}@{image['digest']}" in pulled["RepoDigests"]
    assert_through_the_node(first, image, cold=True)

    with Watch(region, wan, direct) as second:
        pulled = _podman_pull(tmp_path, config, image, "second")
    assert pulled["Digest"] == image["digest"]
    assert_through_the_node(second, image, cold=False)


def test_podman_pull_the_node_refuses_is_refused_with_msrs_message(region, wan, direct, personas, make_image,
                                                                   tmp_path):
    """carol (not a member of acme) with the same configuration: the node refuses her with
    MSR's message, deciding on her token alone (nothing asked of MSR but the token), and
    serves her nothing; podman then tries MSR, which refuses too."""
    need("podman")
    image = make_image(direct, "podman-refused")
    config = _podman_config(tmp_path, region, direct, personas["carol"])
    with Watch(region, wan, direct) as pull:
        refused = _podman_pull(tmp_path, config, image, "carol", check=False)
    assert refused.returncode != 0
    # What the mirror said, after MSR's answer ("(Mirrors also failed: [<mirror>/<name>: …])")
    mirror = refused.stderr[refused.stderr.lower().find("mirrors"):]
    assert "mirrors" in refused.stderr.lower(), refused.stderr
    assert f"{_host(region['url'])}/{REPO}" in mirror, refused.stderr
    assert f"insufficient scope: the token does not grant pull on {REPO}" in mirror, refused.stderr
    assert_refused(pull)


def assert_refused(pull: Watch) -> None:
    """The node refused every manifest request on the token alone, served no blob, and
    asked MSR nothing about the repository."""
    manifests = pull.node_manifests()
    assert manifests and all(status == 401 for _, _, status, _ in manifests), manifests
    assert pull.node_blobs() == {}
    assert pull.manifests_at_msr() == [] and pull.blobs_at_msr() == set(), pull.to_msr
    assert pull.not_json == [], pull.not_json


# -- containerd: the node as a host of MSR (hosts.toml) ------------------------------------

SNAPSHOTTER = "native"  # any filesystem (tests/test_docker_cli.py)


def _hosts_dir(tmp_path: Path, region, direct) -> Path:
    """certs.d/<MSR's host>/hosts.toml: MSR is the server, the node the host that pulls and resolves."""
    hosts = tmp_path / "certs.d"
    (hosts / _host(direct.url)).mkdir(parents=True)
    (hosts / _host(direct.url) / "hosts.toml").write_text("\n".join([
        f'server = "{direct.url}"',
        "",
        f'[host."{region["url"]}"]',
        '  capabilities = ["pull", "resolve"]',
        "",
    ]))
    return hosts


def _ctr_pull(containerd, hosts: Path, persona, reference: str, check=True):
    return containerd.ctr("images", "pull", "--hosts-dir", str(hosts), "--snapshotter", SNAPSHOTTER,
                          "--user", f"{persona.name}:{persona.token}", reference, check=check)


def _ctr_digest(containerd, reference) -> str | None:
    for line in containerd.ctr("images", "ls").stdout.splitlines()[1:]:
        columns = line.split()
        if columns[0] == reference:
            return columns[2]
    return None


@pytest.mark.parametrize("kind", ["image", "index"])
def test_ctr_pulls_msrs_name_through_the_region_host(region, wan, direct, personas, make_image, containerd,
                                                     tmp_path, kind):
    image = make_image(direct, f"ctr-{kind}", index=kind == "index")
    hosts = _hosts_dir(tmp_path, region, direct)
    reference = image["reference"]

    with Watch(region, wan, direct) as first:
        _ctr_pull(containerd, hosts, personas["alice"], reference)
    assert _ctr_digest(containerd, reference) == image["digest"]
    assert_through_the_node(first, image, cold=True, head_first=True)
    containerd.ctr("images", "rm", "--sync", reference)  # and its content, collected

    with Watch(region, wan, direct) as second:
        _ctr_pull(containerd, hosts, personas["alice"], reference)
    assert _ctr_digest(containerd, reference) == image["digest"]
    assert_through_the_node(second, image, cold=False, head_first=True)
    # containerd resolves the tag (HEAD), then fetches the manifest by digest: the node
    # answers that from what it kept on the first pull.
    assert ("GET", image["digest"], 200, "HIT") in second.node_manifests(), second.node_manifests()
    containerd.ctr("images", "rm", "--sync", reference)


def test_ctr_pull_the_node_refuses_is_refused(region, wan, direct, personas, make_image, containerd, tmp_path):
    """carol's pull: refused by the node on her token (containerd names the challenge's
    error), nothing unpacked; containerd then tries MSR, which refuses too."""
    image = make_image(direct, "ctr-refused")
    hosts = _hosts_dir(tmp_path, region, direct)
    with Watch(region, wan, direct) as pull:
        refused = _ctr_pull(containerd, hosts, personas["carol"], image["reference"], check=False)
    assert refused.returncode != 0
    node_said = [line for line in refused.stderr.splitlines() if f'host="{_host(region["url"])}"' in line]
    assert node_said and "insufficient_scope" in node_said[0], refused.stderr
    assert _ctr_digest(containerd, image["reference"]) is None
    assert_refused(pull)


# -- podman by the regional name: login, push (passed through to MSR), pull ----------------


def test_podman_logs_in_pushes_and_pulls_by_the_regional_name(region, wan, direct, msr, personas, unique, tmp_path):
    """A region's users may name the node itself: podman login gets its token through the
    node's relay, a push (its uploads streamed through, PATCH bodies chunked) lands in
    MSR, and a pull by the regional name is served by the node."""
    need("podman")
    host = _host(region["url"])
    config = {"conf": tmp_path / "registries.conf", "authfile": tmp_path / "auth.json"}
    config["conf"].write_text(f'[[registry]]\nlocation = "{host}"\ninsecure = true\n')
    layout = tmp_path / "layout"
    make_image_layout(layout, layer_sizes=(400_000, 90_000))
    tag = f"regional-push-{unique}"
    reference = f"{host}/{REPO}:{tag}"
    storage = tmp_path / "podman-push"
    try:
        _podman(storage, config, "login", "--authfile", str(config["authfile"]), "-u", "wanda", "--password-stdin",
                host, input=personas["wanda"].token)
        image_id = _podman(storage, config, "pull", "-q", f"oci:{layout}:v1").stdout.strip().splitlines()[-1]
        _podman(storage, config, "tag", image_id, reference)
        with Watch(region, wan, direct) as push:
            _podman(storage, config, "push", "--authfile", str(config["authfile"]), "--digestfile",
                    str(tmp_path / "digest"), reference)
    finally:
        shutil.rmtree(_runroot(storage), ignore_errors=True)
        shutil.rmtree(storage, ignore_errors=True)
    pushed = (tmp_path / "digest").read_text().strip()
    assert push.not_json == [], push.not_json
    # The uploads (POST, chunked PATCH, PUT) and the manifest went on to MSR, which took them.
    crossed = {(method, "an upload" if f"/v2/{REPO}/blobs/uploads/" in path else path, status)
               for method, path, status in push.to_msr if method in ("POST", "PATCH", "PUT")}
    assert crossed == {("POST", "an upload", 202), ("PATCH", "an upload", 202), ("PUT", "an upload", 201),
                       ("PUT", f"/v2/{REPO}/manifests/{tag}", 201)}, push.to_msr
    at_msr = Registry(msr, "alice", personas["alice"].token).request(
        "GET", f"/v2/{REPO}/manifests/{tag}", scope=f"repository:{REPO}:pull",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert at_msr.status_code == 200 and at_msr.headers["Docker-Content-Digest"] == pushed, at_msr.text
    document = at_msr.json()

    image = {"tag": tag, "reference": reference, "digest": pushed, "manifest": pushed,
             "blobs": [document["config"]["digest"], *[layer["digest"] for layer in document["layers"]]]}
    with Watch(region, wan, direct) as pull:
        pulled = _podman_pull(tmp_path, config, image, "by-region")
    assert pulled["Digest"] == pushed
    assert_through_the_node(pull, image, cold=True)
