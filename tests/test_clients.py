"""Real registry clients against a real `msr serve`: Debian's skopeo and podman.

Each image is built as an OCI layout by tests/images.py, pushed, pulled back and compared
byte for byte (digests of the manifest and of every blob)."""

import hashlib
import json
import tempfile
from urllib.parse import unquote
from pathlib import Path

import pytest

from tests.images import make_image_layout, make_index_layout
from tests.processes import need, run





def _host(msr: str) -> str:
    return msr.removeprefix("http://")


def _blobs(layout: Path) -> set[str]:
    return {p.name for p in (layout / "blobs" / "sha256").iterdir()}


def _skopeo(*args, authfile: Path) -> str:
    return run(["skopeo", *args, "--authfile", str(authfile)]).stdout


@pytest.fixture
def authfile(tmp_path):
    path = tmp_path / "auth.json"
    path.write_text("{}")
    return path


def test_skopeo_login_copy_multi_layer_image_there_and_back(msr, personas, unique, tmp_path, authfile):
    need("skopeo")
    source = tmp_path / "source"
    digest = make_image_layout(source, layer_sizes=(300_000, 1_500_000, 50_000))
    host, name = _host(msr), f"acme/skopeo-{unique}"
    run(["skopeo", "login", "--tls-verify=false", "--authfile", str(authfile),
         "-u", "alice", "-p", "alice-password", host])
    assert host in json.loads(authfile.read_text())["auths"]

    _skopeo("copy", "--dest-tls-verify=false", f"oci:{source}:v1", f"docker://{host}/{name}:v1",
            authfile=authfile)
    raw = _skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{host}/{name}:v1", authfile=authfile)
    inspected = json.loads(_skopeo("inspect", "--tls-verify=false", f"docker://{host}/{name}:v1",
                                   authfile=authfile))
    assert inspected["Digest"] == digest
    assert len(json.loads(raw)["layers"]) == 3

    back = tmp_path / "back"
    _skopeo("copy", "--src-tls-verify=false", f"docker://{host}/{name}:v1", f"oci:{back}:v1",
            authfile=authfile)
    assert _blobs(back) == _blobs(source)
    for blob in _blobs(source):
        assert (back / "blobs/sha256" / blob).read_bytes() == (source / "blobs/sha256" / blob).read_bytes()

    tags = json.loads(_skopeo("list-tags", "--tls-verify=false", f"docker://{host}/{name}", authfile=authfile))
    assert tags["Tags"] == ["v1"]
    _skopeo("delete", "--tls-verify=false", f"docker://{host}/{name}:v1", authfile=authfile)
    tags = json.loads(_skopeo("list-tags", "--tls-verify=false", f"docker://{host}/{name}", authfile=authfile))
    assert tags["Tags"] == []


def test_skopeo_copy_between_repositories_mounts_the_layers(msr, personas, unique, tmp_path, authfile):
    """A copy from one repository to another of the same registry mounts every blob (POST
    ?mount=&from= answered 201) instead of uploading it again; seen through a recording proxy."""
    need("skopeo")
    from tests.faults import FaultProxy

    source = tmp_path / "source"
    make_image_layout(source, layer_sizes=(70_000, 90_000))
    proxy = FaultProxy(msr)
    try:
        host = _host(proxy.url)
        first, second = f"acme/mount-a-{unique}", f"acme/mount-b-{unique}"
        run(["skopeo", "login", "--tls-verify=false", "--authfile", str(authfile),
             "-u", "alice", "-p", "alice-password", host])
        _skopeo("copy", "--dest-tls-verify=false", f"oci:{source}:v1", f"docker://{host}/{first}:v1",
                authfile=authfile)
        proxy.seen.clear()
        _skopeo("copy", "--src-tls-verify=false", "--dest-tls-verify=false",
                f"docker://{host}/{first}:v1", f"docker://{host}/{second}:v1", authfile=authfile)
        index = json.loads((source / "index.json").read_text())
        manifest = json.loads((source / "blobs/sha256" / index["manifests"][0]["digest"].split(":")[1]).read_text())
        layers = {layer["digest"] for layer in manifest["layers"]}
        mounts = {unquote(path.split("mount=")[1].split("&")[0]): (unquote(path.split("from=")[1].split("&")[0]), status)
                  for method, path, status in proxy.seen if method == "POST" and "mount=" in path}
        # every layer mounted from the first repository (skopeo may upload the small config again)
        assert {digest: mounts.get(digest) for digest in layers} == {digest: (first, 201) for digest in layers}, proxy.seen
        uploaded = {unquote(path.split("digest=")[1]) for method, path, status in proxy.seen
                    if method == "PUT" and "/blobs/uploads/" in path}
        assert uploaded <= {manifest["config"]["digest"]}, uploaded
    finally:
        proxy.close()


def test_skopeo_copies_a_multi_platform_index_with_a_personal_access_token(msr, personas, unique, tmp_path):
    need("skopeo")
    source = tmp_path / "index"
    digest = make_index_layout(source)
    host, name = _host(msr), f"acme/multi-{unique}"
    _repository_for_teams(name, writers="read-write", readers="read-only")
    creds = f"wanda:{personas['wanda'].token}"
    run(["skopeo", "copy", "--all", "--dest-tls-verify=false", "--dest-creds", creds,
         f"oci:{source}:v1", f"docker://{host}/{name}:v1"])
    back = tmp_path / "back"
    run(["skopeo", "copy", "--all", "--src-tls-verify=false", "--src-creds", creds,
         f"docker://{host}/{name}:v1", f"oci:{back}:v1"])
    assert json.loads((back / "index.json").read_text())["manifests"][0]["digest"] == digest
    assert _blobs(back) == _blobs(source)
    # bob's team is read-only: he pulls, he cannot push.
    bob = f"bob:{personas['bob'].token}"
    run(["skopeo", "inspect", "--tls-verify=false", "--creds", bob, f"docker://{host}/{name}:v1"])
    refused = run(["skopeo", "copy", "--all", "--dest-tls-verify=false", "--dest-creds", bob,
                   f"oci:{source}:v1", f"docker://{host}/{name}:bob"], check=False)
    assert refused.returncode != 0
    assert "denied" in refused.stderr.lower() or "unauthorized" in refused.stderr.lower()


def _repository_for_teams(name, **levels):
    from accounts.models import Team
    from accounts.services import set_team_access
    from msr.services import ensure_repository

    repository = ensure_repository(name)
    for team, level in levels.items():
        set_team_access(Team.objects.get(organization__name="acme", name=team), repository, level)
    return repository


def test_skopeo_login_with_a_bad_password_fails(msr, authfile):
    need("skopeo")
    result = run(["skopeo", "login", "--tls-verify=false", "--authfile", str(authfile),
                  "-u", "alice", "-p", "wrong", _host(msr)], check=False)
    assert result.returncode != 0


def _podman(tmp_path: Path, *args, check=True):
    storage = tmp_path / "podman"
    # podman refuses a run root longer than 50 characters; pytest's tmp paths are longer.
    runroot = Path(tempfile.gettempdir()) / f"msrpod-{hashlib.sha1(str(tmp_path).encode()).hexdigest()[:12]}"
    base = ["podman", "--root", str(storage / "root"), "--runroot", str(runroot),
            "--storage-driver", "vfs", "--events-backend", "file", "--cgroup-manager", "cgroupfs"]
    return run([*base, *args], check=check, timeout=600)


def test_podman_login_pull_and_push(msr, personas, unique, tmp_path):
    need("podman")
    need("skopeo")
    host = _host(msr)
    source = tmp_path / "source"
    digest = make_image_layout(source, layer_sizes=(200_000, 400_000, 600_000, 800_000))
    name = f"acme/podman-{unique}"
    _repository_for_teams(name, writers="read-write")
    run(["skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", f"alice:{personas['alice'].token}",
         f"oci:{source}:v1", f"docker://{host}/{name}:v1"])

    auth = str(tmp_path / "podman-auth.json")
    _podman(tmp_path, "login", "--tls-verify=false", "--authfile", auth, "-u", "wanda",
            "-p", personas["wanda"].token, host)
    # podman fetches the four layers in parallel, as Docker does.
    _podman(tmp_path, "pull", "--tls-verify=false", "--authfile", auth, f"{host}/{name}:v1")
    pulled = json.loads(_podman(tmp_path, "image", "inspect", f"{host}/{name}:v1").stdout)[0]
    assert pulled["Digest"] == digest

    _podman(tmp_path, "tag", f"{host}/{name}:v1", f"{host}/{name}:retagged")
    _podman(tmp_path, "push", "--tls-verify=false", "--authfile", auth, f"{host}/{name}:retagged")
    tags = json.loads(run(["skopeo", "list-tags", "--tls-verify=false", "--creds",
                           f"wanda:{personas['wanda'].token}", f"docker://{host}/{name}"]).stdout)
    assert sorted(tags["Tags"]) == ["retagged", "v1"]

    # A fresh podman storage pulls the pushed tag back, layers intact.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    _podman(fresh, "pull", "--tls-verify=false", "--authfile", auth, f"{host}/{name}:retagged")
    layers = json.loads(_podman(fresh, "image", "inspect", f"{host}/{name}:retagged").stdout)[0]["RootFS"]["Layers"]
    config = json.loads((source / "blobs/sha256" / json.loads(
        (source / "blobs/sha256" / digest.split(":")[1]).read_text())["config"]["digest"].split(":")[1]).read_text())
    assert layers == config["rootfs"]["diff_ids"]


def test_podman_cannot_push_where_the_team_is_read_only(msr, personas, unique, tmp_path):
    need("podman")
    need("skopeo")
    host = _host(msr)
    source = tmp_path / "source"
    make_image_layout(source, layer_sizes=(1000,))
    run(["skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", f"alice:{personas['alice'].token}",
         f"oci:{source}:v1", f"docker://{host}/acme/private-app:podman-{unique}"])
    auth = str(tmp_path / "auth.json")
    _podman(tmp_path, "login", "--tls-verify=false", "--authfile", auth, "-u", "bob", "-p", "bob-password", host)
    image = f"{host}/acme/private-app:podman-{unique}"
    _podman(tmp_path, "pull", "--tls-verify=false", "--authfile", auth, image)
    _podman(tmp_path, "tag", image, f"{image}-bob")
    refused = _podman(tmp_path, "push", "--tls-verify=false", "--authfile", auth, f"{image}-bob", check=False)
    assert refused.returncode != 0
