"""Grants and purge tokens: the claims of the short-lived JWTs MSR signs for its caches,
and their verification.

A grant lets a cache (and the caches above it) fetch and serve one blob of one
repository for one user; a purge token lets MSR empty a cache. MSR builds the claims
(caches/grants.py, caches/tasks.py) and signs them (msr/tokens.py); MSR's blob endpoint
verifies a grant presented by a cache filling itself (msr/registry/views.py), and the
cache node verifies grants and purge tokens offline against MSR's JWKS (caches/node.py).
"""

from collections.abc import Callable

import jwt

# Every token MSR signs (access tokens, grants, purge tokens) is signed with this
# algorithm and names its type in `typ`, which every verifier checks: the same key signs
# them all, so one must never pass for another.
ALGORITHM = "EdDSA"
GRANT_TYPE = "blob-grant"
PURGE_TYPE = "cache-purge"

# Claim names.
TYPE = "typ"
AUDIENCE = "aud"  # the names of the caches that may use it
SUBJECT = "sub"  # the user the blob is fetched for
REPOSITORY = "repo"
DIGEST = "digest"


class GrantRefused(Exception):
    """A grant that does not let its bearer fetch this blob: `denied` for a valid grant
    for another cache or another blob (403 DENIED), else an invalid one (401)."""

    def __init__(self, reason: str, denied: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.denied = denied


def grant_claims(audience: list[str], repository: str, digest: str, username: str) -> dict:
    """The claims of a grant for the caches named in `audience` (a cache and the caches
    above it: the same grant is presented upstream)."""
    return {TYPE: GRANT_TYPE, AUDIENCE: audience, SUBJECT: username, REPOSITORY: repository, DIGEST: digest}


def purge_claims(cache_name: str, digest: str | None) -> dict:
    """The claims of a purge token: remove `digest` from the cache, or every blob if None."""
    return {TYPE: PURGE_TYPE, AUDIENCE: [cache_name], DIGEST: digest}


def decode(token: str, key_for: Callable[[str | None], object], typ: str, *,
           audience: str | None = None, issuer: str | None = None) -> dict:
    """The claims of `token`, signed by the key `key_for(kid)` returns, of type `typ`,
    not expired, for `audience` (None: any audience) and from `issuer` (None: unchecked).
    Raises a jwt.PyJWTError otherwise (jwt.InvalidAudienceError for another audience)."""
    key = key_for(jwt.get_unverified_header(token).get("kid"))
    if key is None:
        raise jwt.InvalidSignatureError("unknown signing key")
    options = {"require": ["exp", "aud"]}
    if audience is None:
        options["verify_aud"] = False
    claims = jwt.decode(token, key, algorithms=[ALGORITHM], audience=audience, issuer=issuer, options=options)
    if claims.get(TYPE) != typ:
        raise jwt.InvalidTokenError(f"not a {typ}")
    return claims


def verify_grant(grant: str, key_for: Callable[[str | None], object], repository: str, digest: str, *,
                 audience: str | None = None, issuer: str | None = None) -> dict:
    """The claims of a grant valid for `repository` and `digest` (see decode for the
    rest); GrantRefused otherwise."""
    try:
        claims = decode(grant, key_for, GRANT_TYPE, audience=audience, issuer=issuer)
    except jwt.InvalidAudienceError:
        raise GrantRefused("the grant is for another cache", denied=True) from None
    except jwt.PyJWTError as e:
        raise GrantRefused(str(e)) from None
    if claims.get(REPOSITORY) != repository or claims.get(DIGEST) != digest:
        raise GrantRefused("the grant is for another blob", denied=True)
    return claims
