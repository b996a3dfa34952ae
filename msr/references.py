"""The distribution spec's grammars for repository names, tags and digests."""

import hashlib
import re

# One path component, then more separated by "/" (distribution reference grammar).
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
NAME_MAX_LENGTH = 255
TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")

# Algorithms MSR computes, with the length of their hex encoding.
ALGORITHMS = {"sha256": 64, "sha512": 128}
_HEX_RE = re.compile(r"^[a-f0-9]+$")


def is_valid_name(name: str) -> bool:
    return len(name) <= NAME_MAX_LENGTH and NAME_RE.match(name) is not None


def is_valid_tag(tag: str) -> bool:
    return TAG_RE.match(tag) is not None


def is_digest(reference: str) -> bool:
    """True if `reference` looks like a digest (has an algorithm), valid or not."""
    return ":" in reference


def is_valid_digest(digest: str) -> bool:
    """A well-formed digest whose algorithm MSR can verify."""
    if not DIGEST_RE.match(digest):
        return False
    algorithm, _, encoded = digest.partition(":")
    return ALGORITHMS.get(algorithm) == len(encoded) and _HEX_RE.match(encoded) is not None


def split_name(name: str) -> tuple[str, str]:
    """`org/team/app` → (`org`, `team/app`); a name with one component has no namespace."""
    namespace, _, rest = name.partition("/")
    return namespace, rest


def new_hasher(digest_or_algorithm: str = "sha256"):
    return hashlib.new(digest_or_algorithm.partition(":")[0])


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def tag_rule_holds(operator: str, values: list[str], tag: str) -> bool:
    """One rule on a tag name (MSR's rule engine), shared by mirroring and promotion
    policies (mirroring/criteria.py) and pruning policies (msr/pruning.py); each validates
    which operators it accepts. `matches` is a search, like grep: anchor with ^ and $."""
    if operator in ("eq", "oneof"):
        return tag in values
    if operator in ("neq", "noneof"):
        return tag not in values
    if operator == "sw":
        return any(tag.startswith(v) for v in values)
    if operator == "ew":
        return any(tag.endswith(v) for v in values)
    if operator == "c":
        return any(v in tag for v in values)
    if operator == "matches":
        return any(re.search(v, tag) for v in values)
    return False  # an operator the policy's validation never lets through


def bad_pattern(values: list[str]) -> str | None:
    """Why one of these regular expressions (a `matches` rule's values) does not compile."""
    for value in values:
        try:
            re.compile(value)
        except re.error as e:
            return f"{value!r} is not a regular expression: {e}"
    return None
