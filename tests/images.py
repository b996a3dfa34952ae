"""Builds small, valid OCI image layouts on disk for skopeo and podman to push.

Layers are real gzipped tars (podman unpacks them) of random bytes (no two test images
share a blob unless asked to)."""

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _write_blob(layout: Path, data: bytes) -> dict:
    digest = _sha256(data)
    path = layout / "blobs" / "sha256" / digest.split(":")[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": digest, "size": len(data)}


def make_layer(size: int, name: str = "data.bin") -> tuple[bytes, str]:
    """A gzipped tar holding one file of `size` random bytes; returns (blob, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(os.urandom(size)))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, compresslevel=1, mtime=0), _sha256(tar_bytes)


def _image(layout: Path, layer_sizes, architecture="amd64") -> dict:
    layers, diff_ids = [], []
    for i, size in enumerate(layer_sizes):
        blob, diff_id = make_layer(size, f"layer{i}.bin")
        layers.append({"mediaType": OCI_LAYER, **_write_blob(layout, blob)})
        diff_ids.append(diff_id)
    config = json.dumps({
        "architecture": architecture, "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, **_write_blob(layout, config)},
        "layers": layers,
    }).encode()
    return {"mediaType": OCI_MANIFEST, **_write_blob(layout, manifest),
            "platform": {"architecture": architecture, "os": "linux"}}


def _finish(layout: Path, descriptor: dict, tag: str) -> None:
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    entry = dict(descriptor)
    entry.pop("platform", None)
    entry["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (layout / "index.json").write_text(json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}))


def make_image_layout(layout: Path, layer_sizes=(4096, 8192, 16384), tag="v1") -> str:
    """An image with one layer per size; returns the manifest digest."""
    layout.mkdir(parents=True, exist_ok=True)
    descriptor = _image(layout, layer_sizes)
    _finish(layout, descriptor, tag)
    return descriptor["digest"]


def make_index_layout(layout: Path, architectures=("amd64", "arm64"), tag="v1") -> str:
    """A multi-platform image index, one two-layer image per architecture."""
    layout.mkdir(parents=True, exist_ok=True)
    children = [_image(layout, (2048, 4096), arch) for arch in architectures]
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}).encode()
    descriptor = {"mediaType": OCI_INDEX, **_write_blob(layout, index)}
    _finish(layout, descriptor, tag)
    return descriptor["digest"]
