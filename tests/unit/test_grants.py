"""Cache grants, issued by MSR (caches.grants.issue_grant) and verified by MSR
(msr.tokens.verify_grant) and by a cache node (caches.node, against MSR's JWKS): the
round trip, expiry and the audience chain, in-process."""

import time

import jwt
import pytest

from caches.grants import issue_grant, redirect_url
from caches.models import ContentCache
from msr.tokens import InvalidToken, jwks, sign, verify_access_token, verify_grant
from protocol import grants

DIGEST = "sha256:" + "d" * 64


@pytest.fixture
def chain():
    """china -> asia -> (MSR); unsaved, with ids: chain() follows parents by id."""
    asia = ContentCache(pk=1, name="asia", url="http://asia.example:5001/")
    china = ContentCache(pk=2, name="china", url="http://china.example:5002", parent=asia)
    return china, asia


def node_verifies(grant: str, cache_name: str, repository="acme/app", digest=DIGEST) -> dict:
    """What a cache node named `cache_name` does with a grant (caches/node.py): the shared
    check of protocol/grants.py, with MSR's published keys and its own name as audience."""
    keys = {key["kid"]: jwt.PyJWK(key).key for key in jwks()["keys"]}
    return grants.verify_grant(grant, keys.get, repository, digest, audience=cache_name)


def test_a_grant_binds_cache_chain_repository_digest_and_user(chain, settings):
    china, _ = chain
    claims = verify_grant(issue_grant(china, "acme/app", DIGEST, "alice"), "acme/app", DIGEST)
    assert claims["aud"] == ["china", "asia"]  # the user's cache first, then its ancestors
    assert (claims["repo"], claims["digest"], claims["sub"]) == ("acme/app", DIGEST, "alice")
    assert claims["exp"] - claims["iat"] == settings.CACHE_GRANT_TTL_SECONDS


def test_every_cache_of_the_chain_accepts_the_grant_and_no_other(chain):
    china, asia = chain
    grant = issue_grant(china, "acme/app", DIGEST, "alice")
    assert node_verifies(grant, "china")["digest"] == DIGEST
    assert node_verifies(grant, "asia")["digest"] == DIGEST
    with pytest.raises(grants.GrantRefused, match="another cache") as refused:
        node_verifies(grant, "europe")
    assert refused.value.denied  # a valid grant, for someone else: 403
    # A grant for asia is not one for its child.
    with pytest.raises(grants.GrantRefused, match="another cache"):
        node_verifies(issue_grant(asia, "acme/app", DIGEST, "alice"), "china")
    # nor for another blob or repository
    with pytest.raises(grants.GrantRefused, match="another blob"):
        node_verifies(grant, "china", digest="sha256:" + "1" * 64)
    with pytest.raises(grants.GrantRefused, match="another blob"):
        verify_grant(grant, "acme/other", DIGEST)


def test_a_cycle_of_parents_does_not_loop(chain):
    china, asia = chain
    asia.parent = china
    assert [c.name for c in china.chain()] == ["china", "asia"]


def test_an_expired_grant_is_refused_by_msr_and_by_nodes(settings):
    settings.CACHE_GRANT_TTL_SECONDS = -30
    grant = issue_grant(ContentCache(pk=1, name="asia"), "acme/app", DIGEST, "alice")
    with pytest.raises(grants.GrantRefused, match="expired") as refused:
        verify_grant(grant, "acme/app", DIGEST)
    assert not refused.value.denied  # invalid: 401
    with pytest.raises(grants.GrantRefused, match="expired"):
        node_verifies(grant, "asia")


def test_a_grant_is_not_an_access_token_nor_the_reverse():
    grant = sign({"typ": "blob-grant", "aud": ["asia"], "repo": "acme/app", "digest": DIGEST}, 60)
    with pytest.raises(InvalidToken):
        verify_access_token(grant)
    access = sign({"typ": "access", "aud": ["asia"], "access": []}, 60)
    with pytest.raises(grants.GrantRefused, match="not a blob-grant"):
        verify_grant(access, "acme/app", DIGEST)


def test_a_grant_signed_by_another_key_is_refused():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    forged = jwt.encode({"typ": "blob-grant", "aud": ["asia"], "repo": "acme/app", "digest": DIGEST,
                         "exp": int(time.time()) + 60, "iss": "x"}, Ed25519PrivateKey.generate(), algorithm="EdDSA")
    with pytest.raises(grants.GrantRefused):
        verify_grant(forged, "acme/app", DIGEST)
    with pytest.raises(grants.GrantRefused, match="unknown signing key|Signature"):
        node_verifies(forged, "asia")


def test_the_redirect_carries_the_grant_for_the_users_cache(chain):
    from urllib.parse import parse_qs, urlsplit

    _, asia = chain
    url = urlsplit(redirect_url(asia, "acme/app", DIGEST, "alice"))
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"http://asia.example:5001/v2/acme/app/blobs/{DIGEST}"
    claims = node_verifies(parse_qs(url.query)["grant"][0], "asia")
    assert (claims["repo"], claims["digest"]) == ("acme/app", DIGEST)
