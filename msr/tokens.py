"""Signed registry tokens (Docker Registry v2 token authentication).

Access tokens are JWTs signed with MSR's Ed25519 key (EdDSA). Their `access` claim lists,
per resource, the actions granted. The public key is published as a JWKS at
`/auth/jwks.json`, so that other processes (cache nodes) verify tokens and grants without
sharing a secret.
"""

import base64
import hashlib
import json
import secrets
import time
from functools import cache

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings

from msr.keys import create_once
from protocol import access, grants
from protocol.grants import ALGORITHM

ACCESS_TOKEN_TYPE = access.ACCESS_TYPE
InvalidToken = access.InvalidToken
granted_actions = access.granted_actions


def _generate_pem() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@cache
def _keys():
    pem = create_once(settings.TOKEN_KEY_FILE, _generate_pem)
    private_key = serialization.load_pem_private_key(pem, password=None)
    public_key = private_key.public_key()
    x = _b64url(public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    # RFC 7638 thumbprint: members in lexicographic order, no whitespace.
    thumbprint = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"))
    kid = _b64url(hashlib.sha256(thumbprint.encode()).digest())
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "use": "sig", "alg": ALGORITHM}
    return private_key, public_key, kid, jwk


def jwks() -> dict:
    return {"keys": [_keys()[3]]}


def sign(claims: dict, ttl: int) -> str:
    private_key, _, kid, _ = _keys()
    now = int(time.time())
    payload = {
        "iss": settings.TOKEN_ISSUER,
        "iat": now,
        "nbf": now - 5,
        "exp": now + ttl,
        "jti": secrets.token_urlsafe(12),
        **claims,
    }
    return jwt.encode(payload, private_key, algorithm=ALGORITHM, headers={"kid": kid})


def issue_access_token(subject: str, scopes: list[dict], ttl: int | None = None) -> tuple[str, int]:
    ttl = ttl or settings.TOKEN_TTL_SECONDS
    token = sign(access.access_claims(subject, settings.TOKEN_SERVICE, scopes), ttl)
    return token, ttl


_verified = access.VerifiedTokens()


def verify_access_token(token: str) -> dict:
    """Claims of a valid access token for this service; raises InvalidToken otherwise."""
    public_key = _keys()[1]
    return _verified.verify(token, lambda kid: public_key, settings.TOKEN_SERVICE, issuer=settings.TOKEN_ISSUER)


def access_token_evidence(token: str, max_age: int) -> dict:
    """Claims of an access token this MSR issued at most `max_age` seconds ago, expired or
    not (protocol.access.evidence); InvalidToken otherwise."""
    public_key = _keys()[1]
    return access.evidence(token, lambda kid: public_key, settings.TOKEN_SERVICE, settings.TOKEN_ISSUER, max_age)


def verify_grant(grant: str, repository: str, digest: str) -> dict:
    """Claims of a valid cache grant signed by this MSR for this blob (any audience: MSR
    is the origin every cache of the chain fetches from); grants.GrantRefused otherwise."""
    public_key = _keys()[1]
    return grants.verify_grant(grant, lambda kid: public_key, repository, digest, issuer=settings.TOKEN_ISSUER)
