#!/usr/bin/env python3
"""HTTP client for bench/region.sh: blob GETs timed to the first body byte, a herd of
concurrent GETs started together, and the cache nodes' own counters. Standard library only.

    region_client.py get URL [--reps 5] [--size BYTES] [--digest sha256:...]
    region_client.py herd URL --n 32 --size BYTES --digest sha256:...
    region_client.py stats NODE_URL...

get   one GET after another, each on a new connection (a fresh client); a 307 is followed
      (to the presigned bucket URL of `--s3-redirect`) on another new connection. Prints one
      JSON object: per GET the seconds to the first body byte of the final answer (counted
      from the first request, so a redirect's round trip is in it), the seconds to the last
      byte, the redirects followed, X-Cache of the node's answer; fails on a status other
      than 200 at the end, a body of the wrong size or (with --digest) wrong bytes.
herd  N threads each open a connection, wait at a barrier, then GET URL at once (following
      a 307), read and hash the whole body. Prints the seconds from the barrier to the last
      body, the first-byte times, X-Cache and redirect counts; fails if any answer is not
      200 with the right size and digest.
stats GET /stats of each node (directly, not through the load balancer) and print its own
      counters: "self" in a region (shared store), the top level otherwise (a local node's
      counters are its own). One JSON object {"nodes": {url: counters}, "sum": counters}.
"""
import argparse
import hashlib
import http.client
import json
import statistics
import sys
import threading
import time
from urllib.parse import urljoin, urlsplit

CHUNK = 1024 * 1024
COUNTERS = ("hits", "misses", "bytes_from_disk", "bytes_from_upstream", "upstream_fetches",
            "upstream_failures", "refused")


def connect(url):
    parts = urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname, parts.port, timeout=300)
    conn.connect()
    return conn, (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def fetch(url, t0=None, digest=None, conn=None, max_redirects=3):
    """GET url (following 307/302 on new connections); the first connection may be given
    already open. Returns a dict: status, size, ttfb, total, redirects, x_cache, sha256."""
    t0 = time.monotonic() if t0 is None else t0
    redirects, x_cache = 0, None
    target = url
    while True:
        if conn is None:
            conn, path = connect(target)
        else:
            path = urlsplit(target).path + (f"?{urlsplit(target).query}" if urlsplit(target).query else "")
        conn.request("GET", path)
        resp = conn.getresponse()
        if x_cache is None:
            x_cache = resp.getheader("X-Cache")
        if resp.status in (301, 302, 303, 307, 308) and redirects < max_redirects:
            location = resp.getheader("Location")
            resp.read()
            conn.close()
            conn = None
            target = urljoin(target, location)
            redirects += 1
            continue
        break
    hasher = hashlib.sha256() if digest else None
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    size, ttfb = 0, None
    while True:
        n = resp.readinto(view)
        if not n:
            break
        if ttfb is None:
            ttfb = time.monotonic() - t0
        size += n
        if hasher:
            hasher.update(view[:n])
    total = time.monotonic() - t0
    conn.close()
    return {"status": resp.status, "size": size, "ttfb": ttfb if ttfb is not None else total, "total": total,
            "redirects": redirects, "x_cache": x_cache,
            "sha256": ("sha256:" + hasher.hexdigest()) if hasher else None}


def check(result, size, digest):
    if result["status"] != 200:
        return f"HTTP {result['status']}"
    if size is not None and result["size"] != size:
        return f"{result['size']} bytes, expected {size}"
    if digest and result["sha256"] != digest:
        return f"body hashes to {result['sha256']}, expected {digest}"
    return None


def cmd_get(args):
    out = []
    for _ in range(args.reps):
        r = fetch(args.url, digest=args.digest)
        bad = check(r, args.size, args.digest)
        if bad:
            sys.exit(f"GET {args.url.split('?')[0]}: {bad}")
        out.append(r)
    print(json.dumps({"ttfb": [r["ttfb"] for r in out], "total": [r["total"] for r in out],
                      "redirects": [r["redirects"] for r in out], "x_cache": [r["x_cache"] for r in out]}))


def cmd_herd(args):
    results, errors = [None] * args.n, []
    barrier = threading.Barrier(args.n + 1)
    start = {}

    def one(i):
        try:
            conn, _ = connect(args.url)  # connected before the start: the herd is the requests
        except OSError as e:
            errors.append(f"client {i}: connect: {e}")
            barrier.abort()
            return
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return
        try:
            results[i] = fetch(args.url, t0=start["t0"], digest=args.digest, conn=conn)
        except (OSError, http.client.HTTPException) as e:
            errors.append(f"client {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(args.n)]
    for t in threads:
        t.start()
    start["t0"] = time.monotonic()  # the last to reach the barrier releases the herd
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    for t in threads:
        t.join()
    wall = time.monotonic() - start["t0"]
    for i, r in enumerate(results):
        if r is not None:
            bad = check(r, args.size, args.digest)
            if bad:
                errors.append(f"client {i}: {bad}")
    done = [r for r in results if r is not None]
    x_cache = {}
    for r in done:
        x_cache[r["x_cache"] or "-"] = x_cache.get(r["x_cache"] or "-", 0) + 1
    print(json.dumps({"n": args.n, "ok": sum(1 for r in done if not check(r, args.size, args.digest)),
                      "errors": errors, "wall": wall,
                      "ttfb_median": statistics.median(r["ttfb"] for r in done) if done else None,
                      "ttfb_max": max((r["ttfb"] for r in done), default=None),
                      "redirects": sum(r["redirects"] for r in done), "x_cache": x_cache}))
    if errors:
        sys.exit(1)


def cmd_stats(args):
    nodes, total = {}, dict.fromkeys(COUNTERS, 0)
    for url in args.urls:
        conn, path = connect(url.rstrip("/") + "/stats")
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        if resp.status != 200:
            sys.exit(f"GET {url}/stats: HTTP {resp.status}")
        doc = json.loads(body)
        own = doc.get("self") if isinstance(doc.get("self"), dict) else doc
        nodes[url] = {k: int(own.get(k, 0)) for k in COUNTERS}
        for k in COUNTERS:
            total[k] += nodes[url][k]
    print(json.dumps({"nodes": nodes, "sum": total}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("get")
    g.add_argument("url")
    g.add_argument("--reps", type=int, default=1)
    g.add_argument("--size", type=int)
    g.add_argument("--digest")
    g.set_defaults(func=cmd_get)
    h = sub.add_parser("herd")
    h.add_argument("url")
    h.add_argument("--n", type=int, default=32)
    h.add_argument("--size", type=int, required=True)
    h.add_argument("--digest", required=True)
    h.set_defaults(func=cmd_herd)
    s = sub.add_parser("stats")
    s.add_argument("urls", nargs="+")
    s.set_defaults(func=cmd_stats)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
