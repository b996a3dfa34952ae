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
import threading
import time
from collections import OrderedDict
from functools import cache

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings

from msr.keys import create_once
from protocol import grants
from protocol.grants import ALGORITHM

# Every token MSR signs names its type in `typ`, and every verifier checks it: the same key
# signs registry access tokens, cache grants and purge tokens, so a grant must never pass
# for an access token (a cache could be named like the token service) nor the reverse.
ACCESS_TOKEN_TYPE = "access"


class InvalidToken(Exception):
    pass


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


def issue_access_token(subject: str, access: list[dict], ttl: int | None = None) -> tuple[str, int]:
    ttl = ttl or settings.TOKEN_TTL_SECONDS
    token = sign({"typ": ACCESS_TOKEN_TYPE, "sub": subject, "aud": settings.TOKEN_SERVICE, "access": access}, ttl)
    return token, ttl


class _VerifiedCache:
    """Tokens already verified by this process: a client sends the same token with every
    request of a pull, and verifying an Ed25519 signature each time is wasted work."""

    def __init__(self, capacity=4096):
        self._entries: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()
        self._capacity = capacity

    def get(self, token: str):
        with self._lock:
            claims = self._entries.get(token)
            if claims is not None:
                self._entries.move_to_end(token)
        return claims

    def put(self, token: str, claims: dict) -> None:
        with self._lock:
            self._entries[token] = claims
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)


_verified = _VerifiedCache()


def verify_access_token(token: str) -> dict:
    """Claims of a valid access token for this service; raises InvalidToken otherwise."""
    claims = _verified.get(token)
    if claims is None:
        try:
            claims = jwt.decode(
                token, _keys()[1], algorithms=[ALGORITHM], audience=settings.TOKEN_SERVICE,
                issuer=settings.TOKEN_ISSUER, options={"require": ["exp", "aud", "iss"]},
            )
        except jwt.PyJWTError as e:
            raise InvalidToken(str(e)) from None
        if claims.get("typ") != ACCESS_TOKEN_TYPE:
            raise InvalidToken("not an access token")
        if not isinstance(claims.get("access", []), list):
            raise InvalidToken("malformed access claim")
        _verified.put(token, claims)
    elif claims["exp"] <= time.time():
        raise InvalidToken("token expired")
    return claims


def granted_actions(claims: dict, resource_type: str, name: str) -> set[str]:
    actions = set()
    for entry in claims.get("access") or ():
        if isinstance(entry, dict) and entry.get("type") == resource_type and entry.get("name") == name:
            actions.update(entry.get("actions") or ())
    return actions


def verify_grant(grant: str, repository: str, digest: str) -> dict:
    """Claims of a valid cache grant signed by this MSR for this blob (any audience: MSR
    is the origin every cache of the chain fetches from); grants.GrantRefused otherwise."""
    public_key = _keys()[1]
    return grants.verify_grant(grant, lambda kid: public_key, repository, digest, issuer=settings.TOKEN_ISSUER)
