"""What MSR knows of manifests, in one place: the media types it stores, parsing and
validating a manifest (`ParsedManifest`: the blobs and child manifests it references, its
subject, artifact type and annotations), and how deep referrers (signatures, SBOMs and
their own referrers) are followed when an image travels with what is attached to it.

Used by the core (storing, promoting), mirroring (what to copy, what to ask a remote for)
and caches (which blobs to pre-warm). No Django."""

from msr import jsonsafe
from msr.exceptions import InvalidManifest
from msr.references import is_valid_digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
IMAGE_MANIFEST_TYPES = {OCI_MANIFEST, DOCKER_MANIFEST}
INDEX_TYPES = {OCI_INDEX, DOCKER_LIST}
MANIFEST_TYPES = IMAGE_MANIFEST_TYPES | INDEX_TYPES
# Layers that live outside the registry (Windows base layers): not required to be pushed.
FOREIGN_LAYER_TYPES = {
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
}
# What a client of another registry accepts (mirroring's Accept header), indexes first.
ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])
# Referrers of referrers are followed this deep (promotion and mirroring alike).
MAX_REFERRER_DEPTH = 4


def _descriptor(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidManifest(f"{where}: a descriptor must be an object")
    if not isinstance(value.get("mediaType"), str) or not value["mediaType"]:
        raise InvalidManifest(f"{where}: mediaType is required")
    if not isinstance(value.get("digest"), str) or not is_valid_digest(value["digest"]):
        raise InvalidManifest(f"{where}: invalid digest {value.get('digest')!r}")
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidManifest(f"{where}: size must be a non-negative integer")
    return value


class ParsedManifest:
    """A validated manifest document and what it references."""

    def __init__(self, body: bytes, content_type: str):
        try:
            document = jsonsafe.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidManifest(f"not valid JSON: {e}") from None
        if not isinstance(document, dict):
            raise InvalidManifest("a manifest is a JSON object")
        declared = document.get("mediaType")
        media_type = content_type or declared
        if not media_type:
            raise InvalidManifest("no Content-Type and no mediaType in the manifest")
        if media_type not in MANIFEST_TYPES:
            raise InvalidManifest(f"unsupported manifest media type {media_type!r}")
        if declared is not None and declared != media_type:
            raise InvalidManifest(f"mediaType {declared!r} does not match Content-Type {media_type!r}")
        if document.get("schemaVersion") != 2:
            raise InvalidManifest("schemaVersion must be 2")
        self.media_type = media_type
        self.blob_digests: list[str] = []
        self.child_digests: list[str] = []
        self.artifact_type = document.get("artifactType") or ""
        if not isinstance(self.artifact_type, str):
            raise InvalidManifest("artifactType must be a string")
        if media_type in IMAGE_MANIFEST_TYPES:
            config = _descriptor(document.get("config"), "config")
            layers = document.get("layers", [])
            if not isinstance(layers, list):
                raise InvalidManifest("layers must be an array")
            self.blob_digests.append(config["digest"])
            for i, layer in enumerate(layers):
                layer = _descriptor(layer, f"layers[{i}]")
                if layer["mediaType"] in FOREIGN_LAYER_TYPES and layer.get("urls"):
                    continue
                self.blob_digests.append(layer["digest"])
            self.artifact_type = self.artifact_type or config["mediaType"]
        else:
            children = document.get("manifests")
            if not isinstance(children, list):
                raise InvalidManifest("manifests must be an array")
            for i, child in enumerate(children):
                self.child_digests.append(_descriptor(child, f"manifests[{i}]")["digest"])
        subject = document.get("subject")
        self.subject_digest = _descriptor(subject, "subject")["digest"] if subject is not None else ""
        annotations = document.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise InvalidManifest("annotations must be an object")
        self.annotations = annotations
