"""What the registry core (services, uploads, storage) reports when it cannot do what was
asked. Each exception carries a human message and structured detail, and knows nothing
of HTTP: the /v2/ API maps them to OCI errors (msr/registry/base.py), the REST API to
DRF errors (msr/api/errors.py), the pages and the mirroring jobs show the message.

Three kinds, by what the caller can do about it: `NotFound` (there is no such thing),
`Invalid` (the request itself is wrong: do not repeat it as is) and `Conflict` (the
registry's state got in the way: another request, a concurrent garbage collection).
"""


class DomainError(Exception):
    """Base of every error the registry core raises on purpose.

    `message` says what went wrong to a person; `detail` says about what, for programs.
    A class names in `about` the values its positional arguments give (detail
    `{name: value}`): `ManifestNotFound("acme/app", "v1")`."""

    message = "the registry cannot do that"
    about: tuple[str, ...] = ()

    def __init__(self, *values, message: str | None = None, detail=None):
        if values:
            if len(values) != len(self.about):
                raise TypeError(f"{type(self).__name__} takes {', '.join(self.about) or 'no values'}")
            detail = dict(zip(self.about, values))
        self.message = message or self.message
        self.detail = detail
        super().__init__(self.message)


class NotFound(DomainError):
    """There is no such repository, manifest, blob or upload (or the caller's repository
    does not hold it)."""

    message = "not found"


class Invalid(DomainError):
    """The request itself is wrong: sent again unchanged, it fails again."""

    message = "invalid request"


class Conflict(DomainError):
    """The registry's state got in the way (a concurrent request or collection): the same
    request may succeed later, or from the start."""

    message = "conflicts with the registry's current state"


class RepositoryNotFound(NotFound):
    """No repository by that name (a push creates one only in an existing namespace)."""

    message = "repository name not known to registry"
    about = ("name",)


class ManifestNotFound(NotFound):
    """The repository has no manifest with that digest, or no such tag."""

    message = "manifest unknown to registry"
    about = ("name", "reference")


class BlobNotFound(NotFound):
    """The blob is not linked into the repository: the bytes may be stored for others,
    but this repository may not serve them."""

    message = "blob unknown to registry"
    about = ("digest",)


class UploadNotFound(NotFound):
    """No upload in progress with that id in this repository (finished, cancelled or
    collected as stale)."""

    message = "blob upload unknown to registry"
    about = ("uuid",)


class InvalidTag(Invalid):
    """Not a tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`."""

    message = "invalid tag"
    about = ("tag",)


class InvalidDigest(Invalid):
    """Not a digest this registry understands (malformed, or an unsupported algorithm)."""

    message = "invalid digest"
    about = ("digest",)


class DigestMismatch(Invalid):
    """The content does not hash to the digest it was sent with."""

    message = "provided digest did not match uploaded content"

    def __init__(self, expected: str, actual: str):
        super().__init__(detail={"expected": expected, "computed": actual})
        self.expected, self.actual = expected, actual


class InvalidManifest(Invalid):
    """Not a manifest or index this registry accepts; `reason` says which rule it breaks."""

    message = "manifest invalid"

    def __init__(self, reason: str):
        super().__init__(detail=reason)
        self.reason = reason


class ManifestReferencesUnknown(Invalid):
    """A manifest names blobs or child manifests that its repository does not hold."""

    message = "manifest references a manifest or blob unknown to registry"
    about = ("missing",)


class InvalidRange(Invalid):
    """A malformed Content-Range, or a chunk that does not start where the upload ends."""

    message = "invalid content range"


class LengthMismatch(Invalid):
    """A chunk whose Content-Range and Content-Length disagree."""

    message = "provided length did not match content length"


class UploadBusy(Conflict):
    """Another request is writing to this upload right now (often the same client
    retrying a chunk whose first attempt is still being received)."""

    message = "another request is writing to this upload"
    about = ("uuid",)


class UploadLost(Conflict):
    """The upload's bytes are gone (a garbage collection took them): send them again."""

    message = "the blob was removed while it was uploaded; upload it again"
    about = ("digest",)


class Refused(DomainError):
    """A rule of the repository forbids the change (an immutable tag, the tag limit):
    the same request is refused again until an admin changes the rule."""

    message = "refused by a rule of the repository"


class ImmutableTag(Refused):
    """The tag exists and may not point elsewhere or go: the repository makes every tag
    immutable (`rule` "repository") or the tag matches the immutable tag pattern `rule`."""

    def __init__(self, where: str, tag: str, rule: str, action: str = "overwritten", digest: str = ""):
        if rule == "repository":
            why = f"{where} is an immutable repository"
        else:
            why = f"it matches the immutable tag rule {rule} of {where}"
        message = f"tag={tag} cannot be {action} because {why}"
        detail = {"tag": tag, "rule": rule, "repository": where}
        if digest:  # a delete by digest would take the tag with the manifest
            message = f"manifest {digest} cannot be deleted: {message}"
            detail["digest"] = digest
        super().__init__(message=message, detail=detail)


class TagLimitReached(Refused):
    """A new tag would exceed the repository's tag limit and the tags that could make
    room are all immutable."""

    def __init__(self, where: str, tag: str, limit: int, protected: int):
        super().__init__(
            message=(f"tag={tag} cannot be added because {where} keeps at most {limit} tags and "
                     f"{protected} of its tags are immutable, so none can be removed to make room"),
            detail={"tag": tag, "tagLimit": limit, "immutableTags": protected, "repository": where})
