"""HTTP Range requests (RFC 9110 section 14): parsing a single `bytes=` range, and a file
that reads only that range. Used by MSR's blob endpoint (msr/registry/views.py) and the
cache node (caches/node.py)."""

import re

RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeNotSatisfiable(Exception):
    pass


def parse_range(header: str, size: int) -> tuple[int, int]:
    """(start, end) inclusive of a single `bytes=` range; RangeNotSatisfiable otherwise."""
    match = RANGE_RE.match(header.strip())
    if not match or (match.group(1) == "" and match.group(2) == ""):
        raise RangeNotSatisfiable(header)
    first, last = match.group(1), match.group(2)
    if first == "":  # suffix range: the last N bytes
        start, end = max(size - int(last), 0), size - 1
    else:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise RangeNotSatisfiable(header)
    return start, end


class LimitedFile:
    """A file positioned at the range start that reads at most `length` bytes.

    fileno() stays available, so gunicorn sends it with sendfile(2) from the current
    offset for exactly Content-Length bytes."""

    def __init__(self, file, length):
        self._file, self._remaining = file, length

    def read(self, size=-1):
        if self._remaining <= 0:
            return b""
        if size < 0 or size > self._remaining:
            size = self._remaining
        data = self._file.read(size)
        self._remaining -= len(data)
        return data

    def fileno(self):
        return self._file.fileno()

    def tell(self):
        return self._file.tell()

    def close(self):
        self._file.close()
