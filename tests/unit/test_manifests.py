"""Manifest parsing and validation (msr.manifests.ParsedManifest), in-process: what a
manifest PUT accepts, what it refuses, and the blobs and children it references."""

import json

import pytest

from msr.manifests import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, ParsedManifest

CONFIG = "sha256:" + "c" * 64
LAYERS = ["sha256:" + "1" * 64, "sha256:" + "2" * 64]
CHILDREN = ["sha256:" + "a" * 64, "sha256:" + "b" * 64]


def descriptor(digest, media_type="application/vnd.oci.image.layer.v1.tar+gzip", size=10, **extra):
    return {"mediaType": media_type, "digest": digest, "size": size, **extra}


def image(media_type=OCI_MANIFEST, **changes):
    document = {"schemaVersion": 2, "mediaType": media_type,
                "config": descriptor(CONFIG, "application/vnd.oci.image.config.v1+json"),
                "layers": [descriptor(d) for d in LAYERS]}
    document.update(changes)
    return {k: v for k, v in document.items() if v is not None}


def index(media_type=OCI_INDEX, **changes):
    document = {"schemaVersion": 2, "mediaType": media_type,
                "manifests": [descriptor(d, OCI_MANIFEST, platform={"os": "linux"}) for d in CHILDREN]}
    document.update(changes)
    return {k: v for k, v in document.items() if v is not None}


def parse(document, content_type=None):
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    return ParsedManifest(body, content_type if content_type is not None else document.get("mediaType", ""))


def refusal(body: bytes, content_type: str) -> str:
    """Why the document is refused (MANIFEST_INVALID's detail)."""
    with pytest.raises(Exception) as raised:
        ParsedManifest(body, content_type)
    error = raised.value
    assert getattr(error, "code", "MANIFEST_INVALID") == "MANIFEST_INVALID"
    return str(getattr(error, "detail", None) or error)


@pytest.mark.parametrize("media_type", [OCI_MANIFEST, DOCKER_MANIFEST])
def test_an_image_manifest_references_its_config_and_layers(media_type):
    parsed = parse(image(media_type))
    assert parsed.media_type == media_type
    assert parsed.blob_digests == [CONFIG, *LAYERS]
    assert parsed.child_digests == []
    assert parsed.artifact_type == "application/vnd.oci.image.config.v1+json"


@pytest.mark.parametrize("media_type", [OCI_INDEX, DOCKER_LIST])
def test_an_index_lists_its_children_and_no_blobs(media_type):
    parsed = parse(index(media_type))
    assert parsed.child_digests == CHILDREN
    assert parsed.blob_digests == []


def test_the_media_type_may_come_from_the_document_alone():
    assert parse(image(), content_type="").media_type == OCI_MANIFEST


def test_a_foreign_layer_with_urls_is_not_a_blob_of_the_repository():
    foreign = descriptor("sha256:" + "f" * 64, "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                         urls=["https://example.com/layer"])
    parsed = parse(image(DOCKER_MANIFEST, layers=[descriptor(LAYERS[0]), foreign]))
    assert parsed.blob_digests == [CONFIG, LAYERS[0]]


def test_a_subject_and_annotations_are_kept():
    parsed = parse(image(subject=descriptor(CHILDREN[0], OCI_MANIFEST), annotations={"a": "b"}))
    assert parsed.subject_digest == CHILDREN[0] and parsed.annotations == {"a": "b"}


@pytest.mark.parametrize("body,content_type,reason", [
    (b"{not json", OCI_MANIFEST, "not valid JSON"),
    (b"\xff\xfe", OCI_MANIFEST, "not valid JSON"),
    (b"[" * 10_000 + b"]" * 10_000, OCI_MANIFEST, "not valid JSON"),  # too deep: a 400, not a RecursionError
    (b"[]", OCI_MANIFEST, "JSON object"),
    (json.dumps(image(media_type=None)).encode(), "", "no Content-Type and no mediaType"),
    (json.dumps(image()).encode(), "application/json", "unsupported manifest media type"),
    (json.dumps(image(media_type="application/vnd.oci.image.config.v1+json")).encode(), "", "unsupported"),
    (json.dumps(image()).encode(), DOCKER_MANIFEST, "does not match Content-Type"),
    (json.dumps(image(schemaVersion=1)).encode(), OCI_MANIFEST, "schemaVersion must be 2"),
    (json.dumps(image(config=None)).encode(), OCI_MANIFEST, "config: a descriptor must be an object"),
    (json.dumps(image(layers={"0": 1})).encode(), OCI_MANIFEST, "layers must be an array"),
    (json.dumps(image(layers=[{"digest": LAYERS[0], "size": 1}])).encode(), OCI_MANIFEST,
     "layers[0]: mediaType is required"),
    (json.dumps(image(layers=[descriptor("sha256:short")])).encode(), OCI_MANIFEST, "layers[0]: invalid digest"),
    (json.dumps(image(layers=[descriptor(LAYERS[0], size=-1)])).encode(), OCI_MANIFEST,
     "layers[0]: size must be a non-negative integer"),
    (json.dumps(image(layers=[descriptor(LAYERS[0], size=True)])).encode(), OCI_MANIFEST, "size must be"),
    (json.dumps(image(artifactType=7)).encode(), OCI_MANIFEST, "artifactType must be a string"),
    (json.dumps(image(annotations=["a"])).encode(), OCI_MANIFEST, "annotations must be an object"),
    (json.dumps(image(subject="sha256:x")).encode(), OCI_MANIFEST, "subject: a descriptor must be an object"),
    (json.dumps(index(manifests=None)).encode(), OCI_INDEX, "manifests must be an array"),
    (json.dumps(index(manifests=[{"mediaType": OCI_MANIFEST, "size": 1}])).encode(), OCI_INDEX,
     "manifests[0]: invalid digest"),
])
def test_it_refuses_an_invalid_manifest_with_the_reason(body, content_type, reason):
    assert reason in refusal(body, content_type)


def test_depth_is_bounded_before_parsing():
    from msr import jsonsafe

    jsonsafe.loads("[" * jsonsafe.MAX_DEPTH + "]" * jsonsafe.MAX_DEPTH)
    with pytest.raises(ValueError):
        jsonsafe.loads("[" * (jsonsafe.MAX_DEPTH + 1) + "]" * (jsonsafe.MAX_DEPTH + 1))
    jsonsafe.loads(json.dumps({"s": "[" * 1000}))  # brackets inside strings do not count
