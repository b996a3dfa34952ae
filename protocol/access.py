"""Registry access tokens (Docker token authentication): their claims and their
verification, shared by MSR's `/v2/` (msr/tokens.py) and the cache node's regional
endpoint (caches/endpoint.py), which verifies MSR's tokens offline against its JWKS.

An access token is an EdDSA JWT signed by MSR: `typ` "access", `aud` the token service
(MSR_TOKEN_SERVICE), `sub` the user, `access` the granted scopes,
`[{"type": "repository", "name": "team/app", "actions": ["pull"]}]`.
"""

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import jwt

from protocol.grants import ALGORITHM

# The same key signs access tokens, cache grants and purge tokens; `typ` tells them apart
# and every verifier checks it, so a grant never passes for an access token (a cache could
# be named like the token service) nor the reverse.
ACCESS_TYPE = "access"


class InvalidToken(Exception):
    pass


def access_claims(subject: str, service: str, access: list[dict]) -> dict:
    return {"typ": ACCESS_TYPE, "sub": subject, "aud": service, "access": access}


def granted_actions(claims: dict, resource_type: str, name: str) -> set[str]:
    """The actions `claims` grant on one resource (`*` stands for every action)."""
    actions = set()
    for entry in claims.get("access") or ():
        if isinstance(entry, dict) and entry.get("type") == resource_type and entry.get("name") == name:
            actions.update(entry.get("actions") or ())
    return actions


def may(claims: dict, repository: str, action: str) -> bool:
    granted = granted_actions(claims, "repository", repository)
    return "*" in granted or action in granted


class VerifiedTokens:
    """Tokens this process has verified, with their claims: a client sends the same token
    with every request of a pull, and verifying an Ed25519 signature each time is wasted
    work. Least recently used first out; an entry past its `exp` is refused."""

    def __init__(self, capacity=4096):
        self._entries: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()
        self._capacity = capacity

    def verify(self, token: str, key_for: Callable[[str | None], object], service: str,
               issuer: str | None = None) -> dict:
        """The claims of `token`, a valid access token for `service` signed by the key
        `key_for(kid)` returns (and from `issuer`, unless None); InvalidToken otherwise."""
        with self._lock:
            claims = self._entries.get(token)
            if claims is not None:
                self._entries.move_to_end(token)
        if claims is not None:
            if claims["exp"] <= time.time():
                raise InvalidToken("token expired")
            return claims
        claims = _decode(token, key_for, service, issuer)
        with self._lock:
            self._entries[token] = claims
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
        return claims


def evidence(token: str, key_for: Callable[[str | None], object], service: str, issuer: str | None,
             max_age: int) -> dict:
    """The claims of an access token MSR issued for `service` at most `max_age` seconds ago,
    expired or not: the proof, in a cache's report, that its user was allowed a pull when
    the cache answered it. InvalidToken otherwise."""
    try:
        key = key_for(jwt.get_unverified_header(token).get("kid"))
        if key is None:
            raise jwt.InvalidSignatureError("signed by an unknown key")
        claims = jwt.decode(token, key, algorithms=[ALGORITHM], audience=service, issuer=issuer,
                            options={"require": ["exp", "aud", "iat"], "verify_exp": False})
    except jwt.PyJWTError as e:
        raise InvalidToken(str(e)) from None
    if claims.get("typ") != ACCESS_TYPE:
        raise InvalidToken("not an access token")
    if not isinstance(claims["iat"], int | float) or time.time() - claims["iat"] > max_age:
        raise InvalidToken("issued too long ago")
    return claims


def _decode(token: str, key_for, service: str, issuer: str | None) -> dict:
    try:
        key = key_for(jwt.get_unverified_header(token).get("kid"))
        if key is None:
            raise jwt.InvalidSignatureError("signed by an unknown key")
        required = ["exp", "aud", "iss"] if issuer is not None else ["exp", "aud"]
        claims = jwt.decode(token, key, algorithms=[ALGORITHM], audience=service, issuer=issuer,
                            options={"require": required})
    except jwt.PyJWTError as e:
        raise InvalidToken(str(e)) from None
    if claims.get("typ") != ACCESS_TYPE:
        raise InvalidToken("not an access token")
    if not isinstance(claims.get("access", []), list):
        raise InvalidToken("malformed access claim")
    return claims
