"""JSON parsing with a bounded depth, for every document that comes from outside.

Python's json module recurses once per nesting level: a few thousand `[` make it raise
RecursionError (a 500 where a client expects a 400), and a document that parses at depth
900 can still exhaust the stack in code that walks it later. No manifest, image config,
index or API body needs more than a few dozen levels, so anything deeper than MAX_DEPTH
is refused as invalid JSON before it is parsed.
"""

import json
import re

MAX_DEPTH = 64


class TooDeep(ValueError):
    pass


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


def check_depth(data: bytes | str, max_depth: int = MAX_DEPTH) -> None:
    """Raise TooDeep if brackets nest deeper than `max_depth` (brackets inside strings
    do not count)."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    # The common case: no more brackets than the limit at all.
    if data.count(b"[") + data.count(b"{") <= max_depth:
        return
    depth = 0
    for bracket in _BRACKETS.findall(_STRING.sub(b"", data)):
        if bracket in (b"[", b"{"):
            depth += 1
            if depth > max_depth:
                raise TooDeep(f"JSON nested deeper than {max_depth} levels")
        else:
            depth -= 1


def loads(data: bytes | str, max_depth: int = MAX_DEPTH):
    """json.loads, refusing documents nested deeper than `max_depth` (ValueError)."""
    check_depth(data, max_depth)
    try:
        return json.loads(data)
    except RecursionError:  # belt and braces: the scan above should make this unreachable
        raise TooDeep("JSON nested too deeply") from None
