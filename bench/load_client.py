#!/usr/bin/env python3
"""Load client of bench/load.sh: C concurrent registry clients pulling one image over and
over for D seconds, each over its own keep-alive HTTP/1.1 connections, run by P processes
(asyncio, standard library only; proctree.py next to it).

    load_client.py run --url http://127.0.0.1:5000 --repo admin/load --tag v1 \\
        --manifest-digest sha256:... [--creds USER:PASS] [--redirect-to URL] \\
        [--clients 200] [--procs 2] [--duration 60] [--watch NAME=PID ...] \\
        [--cache-stats URL] [--audit-db SQLITE_FILE] --label TEXT --out FILE.json
    load_client.py report FILE.json...      # markdown tables of one or more runs

What one client does, the way a registry client pulls (Docker, containerd, skopeo):
- login, once at start (only with --creds): GET /v2/ (must answer 401 with a Bearer
  challenge), then GET <realm>?service=..&scope=repository:<repo>:pull with Basic
  credentials; the token is reused for every request until `expires_in` (the token
  spec's default 60 s if absent) is 5 s away, then fetched again. Every client gets its
  own token. All clients log in at once, before the timed window (kinds `ping`, `token`),
  then close those connections (left idle until t0, some would be closed by the server's
  keep-alive timer just as the first request goes out).
- a pull: GET /v2/<repo>/manifests/<tag> (OCI + Docker v2 Accept headers); the body must
  hash to --manifest-digest; then, for the config and each layer of that manifest, in
  order, GET /v2/<repo>/blobs/<digest> (kind `blob`) and check status 200 and the size.
  With --redirect-to, MSR must answer each blob GET with a 307 whose Location starts with
  that URL (kind `redirect`), and the client GETs the Location (kind `blob`) without the
  Authorization header, as clients do across hosts.
- one connection per host per client (HTTP/1.1 keep-alive, no pipelining); a connection
  closed by the server is reopened (counted). A request that fails on a reused connection
  before any byte of the answer arrived is sent once more on a new connection, as Go's
  net/http does for idempotent requests (counted as a retry, not as an error).

Errors: any answer other than the expected status (200, or 307 for `redirect`), a wrong
digest, size or redirect target, a socket error or a request taking longer than
--timeout. Every error is counted, in or after the window; the pull it happened in is
abandoned and the client goes on with a new connection.

The window: every process logs its clients in, then all start at one wall-clock time t0;
a client starts no new request after t0 + duration. Throughput (requests/s, pulls/s,
MiB/s of response bodies) counts what completed within [t0, t0 + duration]; latency
percentiles (time from sending the request to the last byte of the answer) cover every
request started in the window. Before the processes fork, one check pull with the same
code hashes every blob against its digest (and warms a cache node).

The parent samples, between t0 and t0 + duration: CPU seconds of the process trees given
with --watch (e.g. a gunicorn master and its workers) and of the client processes, the
machine's busy share (/proc/stat), and the peak resident memory of each watched tree
(sum of VmRSS, and the largest process). With --cache-stats (a cache node's /stats) it
reports the node's hit/miss counters over the run; with --audit-db (MSR's SQLite file) the
number of `pull` audit rows written, to compare with the manifest GETs answered.
"""

import argparse
import array
import asyncio
import base64
import hashlib
import json
import math
import multiprocessing as mp
import os
import sqlite3
import sys
import threading
import time
import urllib.request
from urllib.parse import urlencode, urlsplit

from proctree import tree_cpu, tree_pids, tree_rss

ACCEPT = ("application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, "
          "application/vnd.docker.distribution.manifest.v2+json, "
          "application/vnd.docker.distribution.manifest.list.v2+json")
WINDOW_KINDS = ("manifest", "redirect", "blob", "pull")
LOGIN_KINDS = ("ping", "token")
RECV_BUFFER = 1 << 20  # one per process: every recv_into lands here and is consumed at once
MAX_HEAD = 65536


class RequestError(Exception):
    pass


class ClosedEarly(RequestError):
    def __init__(self, message, received_any):
        super().__init__(message)
        self.received_any = received_any


# -- HTTP/1.1 -------------------------------------------------------------------------

class Response:
    """One answer, parsed incrementally from what the connection receives. The body is
    counted, and kept (collect) or hashed (hasher) only when asked."""

    __slots__ = ("fut", "collect", "hasher", "head", "status", "headers", "body", "received",
                 "remaining", "mode", "chunk", "close_after", "done", "any")

    def __init__(self, fut, collect=False, hasher=None):
        self.fut, self.collect, self.hasher = fut, collect, hasher
        self.head = bytearray()
        self.status = 0
        self.headers = {}
        self.body = bytearray() if collect else None
        self.received = 0
        self.remaining = 0
        self.mode = "head"  # head | length | chunk-size | chunk-data | chunk-crlf | trailer | close
        self.chunk = bytearray()
        self.close_after = False
        self.done = False
        self.any = False

    def feed(self, mv):
        self.any = True
        if self.mode == "head":
            # copy only what the head can be (a blob's first read also holds up to
            # 1 MiB of body, which is counted, not copied)
            prev = len(self.head)
            self.head += mv[:4096]
            idx = self.head.find(b"\r\n\r\n", max(0, prev - 3))
            if idx < 0 and len(mv) > 4096:
                self.head += mv[4096:MAX_HEAD]
                idx = self.head.find(b"\r\n\r\n", max(0, prev - 3))
            if idx < 0:
                if len(self.head) >= MAX_HEAD:
                    raise RequestError("response head larger than 64 KiB")
                return
            body_start = idx + 4 - prev
            self._parse_head(bytes(self.head[:idx]))
            self.head = None
            mv = mv[body_start:]
        self._body(mv)

    def _parse_head(self, head):
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise RequestError(f"bad status line {lines[0][:80]!r}")
        self.status = int(parts[1])
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            self.headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        conn = self.headers.get("connection", "").lower()
        self.close_after = "close" in conn or parts[0] == b"HTTP/1.0" and "keep-alive" not in conn
        te = self.headers.get("transfer-encoding", "").lower()
        if self.status in (204, 304) or 100 <= self.status < 200:
            self.mode = "length"; self.remaining = 0
        elif "chunked" in te:
            self.mode = "chunk-size"
        elif "content-length" in self.headers:
            self.mode = "length"; self.remaining = int(self.headers["content-length"])
        else:
            self.mode = "close"; self.close_after = True

    def _take(self, piece):
        self.received += len(piece)
        if self.collect:
            self.body += piece
        if self.hasher is not None:
            self.hasher.update(piece)

    def _body(self, mv):
        while True:
            if self.mode == "length":
                take = min(len(mv), self.remaining)
                if take:
                    self._take(mv[:take])
                    self.remaining -= take
                if self.remaining == 0:
                    if take < len(mv):
                        raise RequestError("bytes after the end of the response")
                    self._finish()
                return
            if self.mode == "close":
                self._take(mv)
                return
            if self.mode == "chunk-data":
                take = min(len(mv), self.remaining)
                self._take(mv[:take])
                self.remaining -= take
                mv = mv[take:]
                if self.remaining:
                    return
                self.mode = "chunk-crlf"
                continue
            # line-oriented states: chunk-size, chunk-crlf, trailer
            if not len(mv):
                return
            prev = len(self.chunk)
            self.chunk += mv[:4096]
            idx = self.chunk.find(b"\r\n")
            if idx < 0:
                if len(self.chunk) >= 4096:
                    raise RequestError("bad chunked encoding")
                return
            consumed = idx + 2 - prev
            line = bytes(self.chunk[:idx])
            self.chunk = bytearray()
            mv = mv[consumed:]
            if self.mode == "chunk-crlf":
                if line:
                    raise RequestError("bad chunked encoding")
                self.mode = "chunk-size"
            elif self.mode == "chunk-size":
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    self.mode = "trailer"
                else:
                    self.mode, self.remaining = "chunk-data", size
            else:  # trailer: ends with an empty line
                if not line:
                    if len(mv):
                        raise RequestError("bytes after the end of the response")
                    self._finish()
                    return

    def _finish(self):
        self.done = True
        if not self.fut.done():
            self.fut.set_result(self)

    def fail(self, exc):
        self.done = True
        if not self.fut.done():
            self.fut.set_exception(exc)

    def eof(self, exc):
        if self.mode == "close" and exc is None:
            self._finish()
        else:
            self.fail(ClosedEarly(f"connection closed ({exc or 'EOF'}) "
                                  f"{'during' if self.any else 'before'} the answer", self.any))


class Conn(asyncio.BufferedProtocol):
    def __init__(self, buf):
        self.buf, self.mv = buf, memoryview(buf)
        self.transport = None
        self.resp = None
        self.closed = False
        self.uses = 0

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        r = self.resp
        if r is None:  # nothing asked: the server must not send anything
            self.close()
            return
        try:
            r.feed(self.mv[:nbytes])
        except (RequestError, ValueError) as e:
            r.fail(RequestError(f"protocol error: {e}"))
            self.close()
        if r.done:
            self.resp = None
            if r.close_after and not self.closed:
                self.close()

    def eof_received(self):
        return False  # close the transport

    def connection_lost(self, exc):
        self.closed = True
        r, self.resp = self.resp, None
        if r is not None and not r.done:
            r.eof(exc)

    def close(self):
        self.closed = True
        if self.transport is not None:
            self.transport.close()


# -- statistics -----------------------------------------------------------------------

class Stats:
    def __init__(self, duration):
        self.lat = {k: array.array("d") for k in WINDOW_KINDS + LOGIN_KINDS}
        self.in_window = dict.fromkeys(WINDOW_KINDS, 0)   # completed by the deadline
        self.totals = dict.fromkeys(WINDOW_KINDS + LOGIN_KINDS, 0)  # every success
        self.bytes_in_window = 0
        self.errors = 0
        self.errors_by_kind = {}
        self.error_samples = []
        self.connects = 0
        self.retries = 0
        self.retry_times = []  # seconds after t0 (negative: before the window)
        self.t0 = 0.0
        self.per_second = [0] * (int(math.ceil(duration)) + 1)

    def error(self, kind, message):
        self.errors += 1
        self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1
        if len(self.error_samples) < 10:
            self.error_samples.append(f"{kind}: {message}")

    def export(self):
        return {"lat": {k: v.tobytes() for k, v in self.lat.items()}, "in_window": self.in_window,
                "totals": self.totals, "bytes_in_window": self.bytes_in_window, "errors": self.errors,
                "errors_by_kind": self.errors_by_kind, "error_samples": self.error_samples,
                "connects": self.connects, "retries": self.retries, "retry_times": self.retry_times,
                "per_second": self.per_second}


# -- one client -----------------------------------------------------------------------

def hostport_of(url):
    u = urlsplit(url)
    return f"{u.hostname}:{u.port or (443 if u.scheme == 'https' else 80)}"


class Client:
    def __init__(self, args, stats, buf, verify=False):
        self.args, self.stats, self.buf, self.verify = args, stats, buf, verify
        self.base = hostport_of(args.url)
        self.conns = {}
        self.token = None
        self.token_renew_at = 0.0
        self.realm = self.service = None
        self.t0 = 0.0           # perf_counter of the window's start
        self.deadline = math.inf
        self.manifest_path = f"/v2/{args.repo}/manifests/{args.tag}"
        self.loop = asyncio.get_running_loop()

    async def _get(self, hostport, target, headers, collect, hasher):
        head = (f"GET {target} HTTP/1.1\r\nHost: {hostport}\r\nUser-Agent: msr-bench-load/1\r\n"
                f"Accept-Encoding: identity\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                + "\r\n").encode()
        for attempt in (0, 1):
            conn = self.conns.get(hostport)
            if conn is None or conn.closed:
                host, _, port = hostport.rpartition(":")
                try:
                    _, conn = await self.loop.create_connection(lambda: Conn(self.buf), host, int(port))
                except OSError as e:
                    raise RequestError(f"connect to {hostport}: {e}") from None
                self.stats.connects += 1
                self.conns[hostport] = conn
            reused = conn.uses > 0
            conn.uses += 1
            fut = self.loop.create_future()
            resp = Response(fut, collect, hasher() if hasher else None)
            conn.resp = resp
            conn.transport.write(head)
            timer = self.loop.call_later(self.args.timeout, resp.fail,
                                         RequestError(f"no complete answer within {self.args.timeout} s"))
            try:
                return await fut
            except ClosedEarly as e:
                if reused and not e.received_any and attempt == 0:
                    self.stats.retries += 1
                    self.stats.retry_times.append(time.perf_counter() - self.stats.t0)
                    continue
                raise
            finally:
                timer.cancel()
                if not resp.done or conn.resp is resp:
                    conn.resp = None
        raise RequestError("unreachable")

    async def request(self, kind, hostport, target, headers=None, collect=False, hasher=None):
        """GET, timed and counted under `kind`; None (error recorded) on failure."""
        start = time.perf_counter()
        try:
            r = await self._get(hostport, target, headers or {}, collect, hasher)
        except RequestError as e:
            self.stats.error(kind, f"{target[:100]}: {e}")
            self._drop(hostport)
            return None
        end = time.perf_counter()
        if kind in LOGIN_KINDS or start < self.deadline:
            self.stats.lat[kind].append(end - start)
        if end <= self.deadline and kind not in LOGIN_KINDS:
            self.stats.in_window[kind] += 1
            self.stats.bytes_in_window += r.received
            sec = int(end - self.t0)
            if 0 <= sec < len(self.stats.per_second):
                self.stats.per_second[sec] += 1
        return r

    def _drop(self, hostport):
        conn = self.conns.pop(hostport, None)
        if conn is not None:
            conn.close()

    def fail(self, kind, hostport, message):
        self.stats.error(kind, message)
        self._drop(hostport)

    def close(self):
        for conn in self.conns.values():
            conn.close()
        self.conns = {}

    # -- login ------------------------------------------------------------------------

    async def login(self):
        """GET /v2/ (401 + Bearer challenge), then a token with Basic credentials."""
        if self.realm is None:
            r = await self.request("ping", self.base, "/v2/")
            if r is None:
                return False
            challenge = r.headers.get("www-authenticate", "")
            if r.status != 401 or not challenge.lower().startswith("bearer "):
                self.fail("ping", self.base, f"GET /v2/: HTTP {r.status}, challenge {challenge!r}")
                return False
            self.stats.totals["ping"] += 1
            params = {}
            for part in challenge[7:].split(","):
                k, _, v = part.strip().partition("=")
                params[k.lower()] = v.strip('"')
            self.realm, self.service = params.get("realm"), params.get("service", "")
            if not self.realm:
                self.fail("ping", self.base, f"no realm in {challenge!r}")
                return False
        u = urlsplit(self.realm)
        query = urlencode({"service": self.service, "scope": f"repository:{self.args.repo}:pull"})
        target = f"{u.path or '/'}?{u.query + '&' if u.query else ''}{query}"
        basic = base64.b64encode(self.args.creds.encode()).decode()
        hp = hostport_of(self.realm)
        r = await self.request("token", hp, target, {"Authorization": f"Basic {basic}"}, collect=True)
        if r is None:
            return False
        if r.status != 200:
            self.fail("token", hp, f"HTTP {r.status}: {bytes(r.body[:200])!r}")
            return False
        try:
            answer = json.loads(r.body)
            self.token = answer.get("token") or answer["access_token"]
            ttl = float(answer.get("expires_in") or 60)
        except (ValueError, KeyError) as e:
            self.fail("token", hp, f"bad token answer: {e}")
            return False
        self.stats.totals["token"] += 1
        self.token_renew_at = time.perf_counter() + ttl - 5
        return True

    # -- a pull -----------------------------------------------------------------------

    async def pull(self):
        """One image pull. True if it completed without error."""
        args, st = self.args, self.stats
        start = time.perf_counter()
        auth = {}
        if args.creds:
            if self.token is None or start >= self.token_renew_at:
                if not await self.login():
                    return False
            auth = {"Authorization": f"Bearer {self.token}"}
        if time.perf_counter() >= self.deadline:
            return False
        r = await self.request("manifest", self.base, self.manifest_path, {"Accept": ACCEPT, **auth},
                               collect=True)
        if r is None:
            return False
        body = bytes(r.body)
        if r.status != 200:
            self.fail("manifest", self.base, f"HTTP {r.status}: {body[:200]!r}")
            return False
        if "sha256:" + hashlib.sha256(body).hexdigest() != args.manifest_digest:
            self.fail("manifest", self.base, "manifest body does not hash to --manifest-digest")
            return False
        st.totals["manifest"] += 1
        try:
            m = json.loads(body)
            blobs = [(d["digest"], int(d["size"])) for d in [m["config"], *m["layers"]]]
        except (ValueError, KeyError, TypeError) as e:
            self.fail("manifest", self.base, f"not an image manifest: {e}")
            return False
        for digest, size in blobs:
            if time.perf_counter() >= self.deadline:
                return False
            hasher = hashlib.sha256 if self.verify else None
            path = f"/v2/{args.repo}/blobs/{digest}"
            if args.redirect_to:
                r = await self.request("redirect", self.base, path, auth)
                if r is None:
                    return False
                loc = r.headers.get("location", "")
                if r.status != 307 or not loc.startswith(args.redirect_to):
                    self.fail("redirect", self.base, f"{path}: HTTP {r.status}, Location {loc[:120]!r}, "
                                                     f"expected 307 to {args.redirect_to}")
                    return False
                st.totals["redirect"] += 1
                u = urlsplit(loc)
                hp, target, headers = hostport_of(loc), u.path + ("?" + u.query if u.query else ""), {}
            else:
                hp, target, headers = self.base, path, auth
            r = await self.request("blob", hp, target, headers, hasher=hasher)
            if r is None:
                return False
            if r.status != 200 or r.received != size:
                self.fail("blob", hp, f"{path}: HTTP {r.status}, {r.received} bytes, expected 200 with {size}")
                return False
            if self.verify and "sha256:" + r.hasher.hexdigest() != digest:
                self.fail("blob", hp, f"{path}: body does not hash to the digest")
                return False
            st.totals["blob"] += 1
        end = time.perf_counter()
        st.lat["pull"].append(end - start)
        st.totals["pull"] += 1
        if end <= self.deadline:
            st.in_window["pull"] += 1
        return True

    async def loop_pulls(self):
        while time.perf_counter() < self.deadline:
            await self.pull()
        self.close()


# -- processes ------------------------------------------------------------------------

def child_main(args, nclients, pipe):
    buf = bytearray(RECV_BUFFER)
    stats = Stats(args.duration)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    async def make():
        return [Client(args, stats, buf) for _ in range(nclients)]

    clients = loop.run_until_complete(make())
    if args.creds:
        async def login_all():
            return await asyncio.gather(*(c.login() for c in clients))
        loop.run_until_complete(login_all())
        # Close the login connections: the clients log in over several seconds, and a
        # connection left idle until t0 may be closed by the server's keep-alive timer
        # just as the first request goes out on it (an artefact of the common start).
        for c in clients:
            c.close()
    pipe.send(("ready", stats.errors))
    t0_wall = pipe.recv()
    # wait on the event loop, not in time.sleep: keep-alive connections the server closed
    # while the other processes were logging in must be seen closed before t0, or the
    # first request would go out on them
    loop.run_until_complete(asyncio.sleep(max(0.0, t0_wall - time.time())))
    t0 = time.perf_counter()
    deadline = t0 + args.duration
    stats.connects = 0  # connections opened in the window
    stats.t0 = t0
    for c in clients:
        c.t0, c.deadline = t0, deadline
    cpu0 = os.times()

    async def run_all():
        await asyncio.gather(*(c.loop_pulls() for c in clients))

    loop.run_until_complete(run_all())
    cpu1 = os.times()
    ended_after = time.perf_counter() - deadline
    loop.run_until_complete(asyncio.sleep(0.05))  # let transports close
    loop.close()
    import resource
    out = stats.export()
    out["cpu_s"] = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    out["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["ended_after_s"] = ended_after
    pipe.send(("done", out))
    pipe.close()


def machine_cpu():
    """(total, idle + iowait, irq + softirq) ticks of all CPUs."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v[:8]), v[3] + v[4], v[5] + v[6]


def all_procs():
    """pid -> (comm, ppid, CPU ticks incl. reaped children) of every process now."""
    procs = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw.rpartition(")")[2].split()
        # utime + stime, plus cutime + cstime: the CPU of children it has reaped, so that
        # short-lived processes (test suites) are charged to their parent
        procs[int(name)] = (comm, int(fields[1]), sum(int(x) for x in fields[11:15]))
    return procs


def cache_stats(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def audit_pulls(db):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute("SELECT COUNT(*) FROM msr_event WHERE type = 'pull'").fetchone()[0]
    finally:
        con.close()


def pct(sorted_values, q):
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def cmd_run(args):
    # 1. check pull: every blob hashed, in this process, before anything forks
    async def check():
        stats = Stats(1)
        c = Client(args, stats, bytearray(RECV_BUFFER), verify=True)
        ok = await c.pull()
        c.close()
        return ok, stats
    ok, st = asyncio.run(check())
    if not ok:
        print(f"check pull failed: {st.error_samples}", file=sys.stderr)
        return 2
    blobs_per_pull = st.totals["blob"]
    print(f"[load_client] {args.label}: check pull ok ({blobs_per_pull} blobs hashed)", file=sys.stderr)
    if args.audit_db:
        time.sleep(1.5)  # the check pull's audit row lands before the count taken at t0

    # 2. fork the client processes; each logs its clients in
    ctx = mp.get_context("fork")
    shares = [args.clients // args.procs + (1 if i < args.clients % args.procs else 0) for i in range(args.procs)]
    children = []
    for n in shares:
        parent_end, child_end = ctx.Pipe()
        p = ctx.Process(target=child_main, args=(args, n, child_end), daemon=True)
        p.start()
        children.append((p, parent_end))
    t_login = time.perf_counter()
    login_errors = 0
    for p, pe in children:
        if not pe.poll(args.login_timeout):
            print("a client process did not finish logging in", file=sys.stderr)
            return 2
        tag, errs = pe.recv()
        login_errors += errs
    login_s = time.perf_counter() - t_login

    # 3. the window
    watch = dict(w.split("=", 1) for w in args.watch)
    watch = {k: int(v) for k, v in watch.items() if v}
    before = {}
    if args.cache_stats:
        before["cache"] = cache_stats(args.cache_stats)
    if args.audit_db:
        before["audit"] = audit_pulls(args.audit_db)
    load_start = os.getloadavg()
    t0_wall = time.time() + 0.5
    for _, pe in children:
        pe.send(t0_wall)
    time.sleep(max(0, t0_wall - time.time()))
    cpu0 = {k: tree_cpu(pid, reaped=False) for k, pid in watch.items()}  # utime + stime
    m0, procs0 = machine_cpu(), all_procs()
    rss = {k: [0, 0] for k in watch}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            for k, pid in watch.items():
                total, largest = tree_rss(pid)
                rss[k][0] = max(rss[k][0], total)
                rss[k][1] = max(rss[k][1], largest)
            stop.wait(0.25)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    time.sleep(max(0, t0_wall + args.duration - time.time()))
    cpu1 = {k: tree_cpu(pid, reaped=False) for k, pid in watch.items()}  # utime + stime
    m1, procs1 = machine_cpu(), all_procs()
    stop.set()
    sampler.join()
    load_end = os.getloadavg()
    results = []
    for p, pe in children:
        if not pe.poll(args.duration + args.timeout + 60):
            print("a client process did not report", file=sys.stderr)
            return 2
        tag, out = pe.recv()
        results.append(out)
        p.join(10)
    after = {}
    if args.cache_stats:
        after["cache"] = cache_stats(args.cache_stats)
    if args.audit_db:
        time.sleep(1.5)  # MSR writes pull events in batches, at most about a second late
        after["audit"] = audit_pulls(args.audit_db)

    # 4. merge
    lat = {k: array.array("d") for k in WINDOW_KINDS + LOGIN_KINDS}
    merged = {"in_window": dict.fromkeys(WINDOW_KINDS, 0), "totals": dict.fromkeys(WINDOW_KINDS + LOGIN_KINDS, 0),
              "bytes_in_window": 0, "errors": 0, "errors_by_kind": {}, "error_samples": [], "connects": 0,
              "retries": 0, "per_second": [0] * (int(math.ceil(args.duration)) + 1), "client_cpu_s": 0.0,
              "client_maxrss_kb": 0, "ended_after_s": 0.0}
    for out in results:
        for k, b in out["lat"].items():
            a = array.array("d")
            a.frombytes(b)
            lat[k].extend(a)
        for k in merged["in_window"]:
            merged["in_window"][k] += out["in_window"][k]
        for k in merged["totals"]:
            merged["totals"][k] += out["totals"][k]
        merged["bytes_in_window"] += out["bytes_in_window"]
        merged["errors"] += out["errors"]
        for k, n in out["errors_by_kind"].items():
            merged["errors_by_kind"][k] = merged["errors_by_kind"].get(k, 0) + n
        merged["error_samples"] += out["error_samples"][:10 - len(merged["error_samples"])]
        merged["connects"] += out["connects"]
        merged["retries"] += out["retries"]
        merged["per_second"] = [a + b for a, b in zip(merged["per_second"], out["per_second"])]
        merged["client_cpu_s"] += out["cpu_s"]
        merged["client_maxrss_kb"] = max(merged["client_maxrss_kb"], out["maxrss_kb"])
        merged["ended_after_s"] = max(merged["ended_after_s"], out["ended_after_s"])
    d = args.duration
    kinds = {}
    for k, a in lat.items():
        s = sorted(a)
        kinds[k] = {"n": len(s), "p50_ms": pct(s, 0.50) and pct(s, 0.50) * 1000,
                    "p99_ms": pct(s, 0.99) and pct(s, 0.99) * 1000, "max_ms": s[-1] * 1000 if s else None,
                    "in_window": merged["in_window"].get(k)}
    requests = sum(merged["in_window"][k] for k in ("manifest", "redirect", "blob"))
    total_ticks = m1[0] - m0[0]
    tick = os.sysconf("SC_CLK_TCK")
    ours = {os.getpid(), *(p.pid for p, _ in children)}
    for pid in watch.values():
        ours.update(tree_pids(pid))
    kernel_threads, others = 0, {}
    for pid, (comm, ppid, t1) in procs1.items():
        if pid in ours or pid not in procs0:
            continue
        used = t1 - procs0[pid][2]
        if used <= 0:
            continue
        if pid == 2 or ppid == 2:
            kernel_threads += used
        else:
            others[comm] = others.get(comm, 0) + used
    top_others = sorted(others.items(), key=lambda kv: -kv[1])[:4]
    report = {
        "label": args.label, "url": args.url, "clients": args.clients, "procs": args.procs, "duration_s": d,
        "auth": bool(args.creds), "redirect_to": args.redirect_to, "blobs_per_pull": blobs_per_pull,
        "login_s": login_s, "login_errors": login_errors,
        "requests": requests, "rps": requests / d, "pulls": merged["in_window"]["pull"],
        "pulls_per_s": merged["in_window"]["pull"] / d,
        "mib_per_s": merged["bytes_in_window"] / d / 1048576, "kinds": kinds,
        "errors": merged["errors"], "errors_by_kind": merged["errors_by_kind"],
        "error_samples": merged["error_samples"], "connects": merged["connects"], "retries": merged["retries"],
        "totals": merged["totals"], "per_second": merged["per_second"][:int(d)],
        "ended_after_s": merged["ended_after_s"],
        "cpu_s": {"client": merged["client_cpu_s"], **{k: cpu1[k] - cpu0[k] for k in watch}},
        "machine_busy_pct": 100.0 * (total_ticks - (m1[1] - m0[1])) / total_ticks if total_ticks else None,
        # busy CPU seconds of the whole machine in the window (all cores)
        "machine_busy_cpu_s": (total_ticks - (m1[1] - m0[1])) / tick,
        # where the rest went: kernel threads, and other people's processes (alive at both
        # samples, with the children they reaped in the window) by name. irq + softirq
        # (the loopback's packet processing) is informative only: those ticks are also
        # charged to the process that was interrupted
        "irq_cpu_s": (m1[2] - m0[2]) / tick, "kernel_threads_cpu_s": kernel_threads / tick,
        "other_procs_cpu_s": sum(others.values()) / tick,
        "other_procs_top": [[c, t / tick] for c, t in top_others],
        "retries_first_second": sum(1 for t in sum((o["retry_times"] for o in results), []) if t < 1.0),
        "cores": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": load_end,
        "rss_mib": {k: {"peak_total": v[0] / 1024, "peak_largest": v[1] / 1024} for k, v in rss.items()},
        "client_maxrss_mib": merged["client_maxrss_kb"] / 1024,
    }
    if args.cache_stats:
        report["cache"] = {k: after["cache"][k] - before["cache"][k]
                           for k in ("hits", "misses", "upstream_fetches", "refused")}
    if args.audit_db:
        report["audit_pull_rows"] = after["audit"] - before["audit"]
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"[load_client] {args.label}: {report['rps']:.0f} req/s, {report['pulls_per_s']:.1f} pulls/s, "
          f"{report['mib_per_s']:.0f} MiB/s, errors {report['errors']}, retries {report['retries']}",
          file=sys.stderr)
    return 0


# -- report ---------------------------------------------------------------------------

def fmt(v, spec=".1f"):
    return "n/a" if v is None else format(v, spec)


def cmd_report(args):
    runs = [json.load(open(p)) for p in args.files]
    print("| target | req/s | pulls/s | MiB/s | manifest p50 / p99 ms | redirect p50 / p99 ms "
          "| blob p50 / p99 ms | pull p50 / p99 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        k = r["kinds"]
        cell = lambda n: (f"{fmt(k[n]['p50_ms'])} / {fmt(k[n]['p99_ms'])}" if k[n]["n"] else "n/a")
        errs = r["errors"] + r.get("login_errors", 0)
        print(f"| {r['label']} | {r['rps']:.0f} | {r['pulls_per_s']:.1f} | {r['mib_per_s']:.0f} "
              f"| {cell('manifest')} | {cell('redirect')} | {cell('blob')} | {cell('pull')} "
              f"| {errs if errs == 0 else f'**{errs} FAIL**'} |")
    print()
    cores = runs[0].get("cores") or os.cpu_count()
    print(f"CPU seconds in the {runs[0]['duration_s']:g} s window ({cores} cores = "
          f"{cores * runs[0]['duration_s']:g} CPU s); per request = a server's CPU / the requests it answered:")
    print()
    print("| target | server CPU s | server CPU ms per request | client CPU s | rest of the machine CPU s "
          "| machine busy |")
    print("|---|---|---|---:|---:|---:|")
    for r in runs:
        k = r["kinds"]
        servers = {n: v for n, v in r["cpu_s"].items() if n != "client"}
        cells, per = [], []
        for n, v in servers.items():
            cells.append(f"{n} {v:.1f}")
            if n == "cache":
                served, what = k["blob"]["in_window"], " (blobs)"
            elif r.get("redirect_to"):
                served, what = k["manifest"]["in_window"] + k["redirect"]["in_window"], " (manifests + 307s)"
            else:
                served, what = r["requests"], ""
            per.append(f"{n} {1000 * v / served:.2f}{what}" if served else f"{n} n/a")
        # the rest: kernel threads, other people's processes, processes shorter than the
        # window (interrupt time is charged to the process it interrupted, so it is in the
        # figures above)
        rest = r["machine_busy_cpu_s"] - sum(r["cpu_s"].values())
        print(f"| {r['label']} | {' + '.join(cells)} | {'; '.join(per)} | {r['cpu_s']['client']:.1f} "
              f"| {rest:.1f} | {fmt(r['machine_busy_pct'], '.0f')} % |")
    print()
    print("| target | peak RSS MiB, sum / largest process | client RSS MiB (largest process) "
          "| connections opened in the window | retries | token p50 / p99 ms | lowest / highest 1 s req/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in runs:
        rss = "; ".join(f"{n} {v['peak_total']:.0f} / {v['peak_largest']:.0f}" for n, v in r["rss_mib"].items())
        tok = r["kinds"]["token"]
        tokc = f"{fmt(tok['p50_ms'], '.0f')} / {fmt(tok['p99_ms'], '.0f')}" if tok["n"] else "n/a"
        ps = r["per_second"]
        print(f"| {r['label']} | {rss} | {r['client_maxrss_mib']:.0f} | {r['connects']} | {r['retries']} | {tokc} "
              f"| {min(ps) if ps else 'n/a'} / {max(ps) if ps else 'n/a'} |")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument("--url", required=True, help="registry base URL, http://host:port")
    run.add_argument("--repo", required=True)
    run.add_argument("--tag", default="v1")
    run.add_argument("--manifest-digest", required=True)
    run.add_argument("--creds", default="", help="USER:PASS for the token service (none: no auth)")
    run.add_argument("--redirect-to", default="", help="blob GETs must answer 307 to this URL prefix")
    run.add_argument("--clients", type=int, default=200)
    run.add_argument("--procs", type=int, default=2)
    run.add_argument("--duration", type=float, default=60)
    run.add_argument("--timeout", type=float, default=60, help="seconds per request")
    run.add_argument("--login-timeout", type=float, default=600)
    run.add_argument("--watch", action="append", default=[], help="NAME=PID: process tree to sample")
    run.add_argument("--cache-stats", default="", help="a cache node's /stats URL")
    run.add_argument("--audit-db", default="", help="MSR's SQLite file: count pull audit rows")
    run.add_argument("--label", required=True)
    run.add_argument("--out", required=True)
    rep = sub.add_parser("report")
    rep.add_argument("files", nargs="+")
    args = ap.parse_args()
    if args.cmd == "run":
        if args.clients < 1 or args.procs < 1 or args.procs > args.clients or args.duration <= 0:
            ap.error("--clients >= --procs >= 1 and --duration > 0")
        return cmd_run(args)
    return cmd_report(args)


if __name__ == "__main__":
    sys.exit(main())
