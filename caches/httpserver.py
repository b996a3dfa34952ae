"""The gunicorn worker of MSR's web process and of the cache node: gunicorn's threaded
worker, guarded against slow clients. (Django-free: the cache node loads it too.)

gunicorn's gthread worker hands a connection to a thread as soon as its first bytes
arrive; the thread then blocks until the request's headers are complete, and reads the
body and writes the response on a socket without a timeout. A few dozen clients that
send their headers a byte at a time (slowloris), trickle an upload, or stop reading a
response hold every thread, and nobody else is answered, not even /healthz.

This worker:
- reads each request's headers in the event loop, without a thread, and gives up on a
  connection whose headers are not complete within MSR_HTTP_HEADER_TIMEOUT seconds
  (default 10; a keep-alive connection's next request likewise);
- reads bodies of up to 256 KiB there too, whole (API calls, sign-in forms, token
  requests, manifests), and the first 64 KiB of larger ones, before a thread takes the
  request, within the time a client at the minimum rate needs;
- then, in the thread, bounds every read and write: no progress for MSR_HTTP_IO_TIMEOUT
  seconds (default 60), or less than MSR_HTTP_MIN_RATE bytes per second (default 1024)
  on average over the time spent waiting for the client, once that passes 10 s, ends
  the connection. (Time the application spends working, say on a long server-side copy
  before it answers, does not count against the client.)
A thread is therefore only ever held by a client that moves data at a useful rate. What
the event loop holds for requests still arriving is capped (32 MiB per process), so slow
clients cannot exhaust memory instead.
Put a reverse proxy in front as well where one is at hand: it is the first line.
"""

import errno
import os
import re
import selectors
import socket
import time
from collections import deque
from functools import partial

from gunicorn.workers.gthread import TConn, ThreadWorker

HEADER_TIMEOUT = float(os.environ.get("MSR_HTTP_HEADER_TIMEOUT", "10"))
IO_TIMEOUT = float(os.environ.get("MSR_HTTP_IO_TIMEOUT", "60"))
MIN_RATE = int(os.environ.get("MSR_HTTP_MIN_RATE", "1024"))
PREREAD_BODY = 64 * 1024  # read before a thread takes a large body
PREREAD_WHOLE = 256 * 1024  # bodies up to this size are read whole first (API calls, forms, manifests)
# The minimum rate is enforced once a request has waited this long on its client in all.
RATE_GRACE = min(IO_TIMEOUT, 10.0)
MAX_HEAD = 128 * 1024
# Bytes a worker process holds for requests still arriving, at most: beyond it a body goes
# to a thread with what has arrived (and the rate rules), and large unfinished headers are
# refused, so that many connections sending slowly cannot exhaust memory either.
BUFFER_BUDGET = int(os.environ.get("MSR_HTTP_BUFFER_BUDGET", str(32 * 1024 * 1024)))
PIECE = 1024 * 1024  # sendfile: each call waits for progress, not for the whole piece
SEND_PIECE = 64 * 1024  # sendall's timeout covers the whole call: a piece a slow client can take in time


class ClientTooSlow(ConnectionError):
    """The client stalled or moved data below the minimum rate: the connection is shut.
    (ENOTCONN: gunicorn then treats it as a client that went away, which it is.)"""

    def __init__(self, why: str):
        super().__init__(errno.ENOTCONN, why)


class GuardedSocket(socket.socket):
    """A client socket whose blocking mode has a timeout, and whose transfers keep a
    minimum rate: over the time a request's reads and writes spent waiting for the client
    (not the time the application spent working), MIN_RATE bytes per second."""

    def setblocking(self, flag):
        # gunicorn sets connections to blocking mode in the thread; this makes that mode
        # "blocking with a timeout" (a stalled peer ends the wait).
        if flag:
            self.settimeout(IO_TIMEOUT)
        else:
            super().setblocking(False)

    def begin_request(self) -> None:
        self._waited = 0.0
        self._moved = 0

    def _give_up(self, why: str):
        try:
            self.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        return ClientTooSlow(why)

    def _account(self, started: float, moved: int) -> None:
        self._waited = getattr(self, "_waited", 0.0) + time.monotonic() - started
        self._moved = getattr(self, "_moved", 0) + moved
        if self._waited > RATE_GRACE and self._moved < MIN_RATE * self._waited:
            raise self._give_up(f"client below {MIN_RATE} bytes/s")

    def recv(self, size, *args):
        started = time.monotonic()
        try:
            data = super().recv(size, *args)
        except socket.timeout:
            raise self._give_up(f"no data from the client for {IO_TIMEOUT:g} s") from None
        self._account(started, len(data))
        return data

    def sendall(self, data, *args):
        view = memoryview(data)
        for start in range(0, len(view), SEND_PIECE):
            piece = view[start:start + SEND_PIECE]
            started = time.monotonic()
            try:
                super().sendall(piece, *args)
            except socket.timeout:
                raise self._give_up(f"the client read nothing for {IO_TIMEOUT:g} s") from None
            self._account(started, len(piece))

    def sendfile(self, file, offset=0, count=None):
        sent = 0
        while count is None or sent < count:
            piece = PIECE if count is None else min(PIECE, count - sent)
            started = time.monotonic()
            try:
                n = super().sendfile(file, offset + sent, piece)
            except socket.timeout:
                raise self._give_up(f"the client read nothing for {IO_TIMEOUT:g} s") from None
            self._account(started, n)
            if not n:
                break
            sent += n
        return sent


def _guarded(sock: socket.socket) -> GuardedSocket:
    guarded = GuardedSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    guarded.setblocking(False)
    return guarded


_METHOD = re.compile(rb"[A-Z]{1,20}(?: |$)")


def _looks_like_http(buffer: bytearray) -> bool:
    """The start of an HTTP/1 request line: a method in capitals, then a space."""
    return _METHOD.match(bytes(buffer[:21])) is not None


def _body_wanted(head: bytes) -> tuple[int | None, bool]:
    """How many body bytes to read before a thread takes the request: the Content-Length
    (at most PREREAD_BODY), PREREAD_BODY for a chunked body (or its end, if sooner), 0 for
    none; None when the client waits for `100 Continue` (sent by gunicorn once a thread
    has the request). And whether the body is chunked."""
    lowered = head.lower()
    if b"content-length" not in lowered and b"transfer-encoding" not in lowered:
        return 0, False  # most requests: a GET or HEAD without a body
    length, chunked = 0, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return 0, False  # gunicorn answers the malformed header
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"expect" and value.strip().lower() == b"100-continue":
            return None, False
    if chunked:
        return PREREAD_BODY, True
    length = max(length, 0)
    return (length if length <= PREREAD_WHOLE else PREREAD_BODY), False


class GuardedThreadWorker(ThreadWorker):
    """gunicorn's gthread worker, reading headers (and the start of bodies) in its event
    loop; see the module's docstring."""

    def init_process(self):
        self.reading = deque()  # connections whose request is being read, by deadline
        self.buffered = 0  # bytes of theirs held
        super().init_process()

    def accept(self, listener):
        try:
            client, address = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        if self.cfg.is_ssl:  # TLS bytes cannot be read here; gunicorn's own way then
            client.setblocking(True)
            return super().enqueue_req(TConn(self.cfg, client, address, listener.getsockname()))
        conn = TConn(self.cfg, _guarded(client), address, listener.getsockname())
        self._read_request(conn, b"")

    def enqueue_req(self, conn):
        """Every way a connection reaches the thread pool (a kept-alive connection that
        became readable, bytes left over from the last request) goes through reading
        first, unless its request has been read."""
        if self.cfg.is_ssl or getattr(conn, "msr_request", None) is not None:
            return super().enqueue_req(conn)
        leftover = b""
        if conn.parser is not None:
            leftover = conn.parser.unreader.buf.getvalue()
            conn.parser.unreader.buf.seek(0)
            conn.parser.unreader.buf.truncate()
        self._read_request(conn, leftover)

    def _read_request(self, conn, data: bytes) -> None:
        conn.sock.setblocking(False)
        conn.msr_buffer = bytearray(data)
        self.buffered += len(data)
        conn.msr_wanted = None  # the buffer length to reach; None: the headers are not in yet
        conn.msr_deadline = time.monotonic() + HEADER_TIMEOUT
        if self._progress(conn):
            return
        # Most requests are already there (a kept-alive connection that became readable, a
        # client that wrote as soon as it connected): read now, and wait in the poller
        # only for what has not arrived.
        if self._receive(conn) and not self._progress(conn):
            self.reading.append(conn)
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def _receive(self, conn) -> bool:
        """Append what the socket holds to the buffer; False if the connection is over."""
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return False
        conn.msr_buffer += data
        self.buffered += len(data)
        return True

    def _on_readable(self, conn, sock):
        self._forget(conn)
        if self._receive(conn) and not self._progress(conn):
            self.reading.append(conn)
            self.poller.register(sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def _progress(self, conn) -> bool:
        """Look at what has arrived: hand the request to a thread once its headers and the
        start of its body are in, or refuse oversized headers. True when the connection
        left the reading stage (handed over or closed)."""
        buffer = conn.msr_buffer
        if conn.msr_wanted is None and buffer and not _looks_like_http(buffer):
            # Not an HTTP/1 request: most often a TLS ClientHello from a client that tries
            # https first (Go's registry clients do). Refused at once, so the client falls
            # back to http without waiting out a timeout, and no thread waits on bytes
            # that will never make a request line.
            self._close(conn, b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            return True
        if conn.msr_wanted is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) <= MAX_HEAD and (self.buffered <= BUFFER_BUDGET or len(buffer) <= 16 * 1024):
                    return False
                self._close(conn, b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                                  b"Connection: close\r\nContent-Length: 0\r\n\r\n")
                return True
            body, chunked = _body_wanted(bytes(buffer[:end]))
            conn.msr_wanted = end + 4 + (body or 0)
            conn.msr_chunked_from = end + 4 if chunked else None
            # The body gets the time a client at the minimum rate needs for it.
            conn.msr_deadline = time.monotonic() + max(HEADER_TIMEOUT, (body or 0) / max(MIN_RATE, 1))
        if len(buffer) < conn.msr_wanted and not self._chunked_body_ended(conn, buffer) \
                and self.buffered <= BUFFER_BUDGET:
            return False
        conn.msr_request = bytes(buffer)
        self._release(conn)
        conn.data_ready = True
        super().enqueue_req(conn)
        return True

    @staticmethod
    def _chunked_body_ended(conn, buffer) -> bool:
        """A chunked body shorter than PREREAD_BODY has arrived whole (its last chunk)."""
        start = conn.msr_chunked_from
        return start is not None and len(buffer) >= start + 5 and buffer.endswith(b"0\r\n\r\n")

    def _forget(self, conn) -> None:
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        try:
            self.reading.remove(conn)
        except ValueError:
            pass

    def _release(self, conn) -> None:
        self.buffered -= len(conn.msr_buffer)
        del conn.msr_buffer

    def _close(self, conn, answer: bytes = b"") -> None:
        if hasattr(conn, "msr_buffer"):
            self._release(conn)
        if answer:
            try:
                conn.sock.send(answer)
            except OSError:
                pass
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self):
        """gunicorn's, plus: close connections whose request did not arrive in time (all of
        them when the worker is stopping: no request of theirs is in progress)."""
        super().murder_pending()
        now = time.monotonic()
        for conn in [c for c in self.reading if c.msr_deadline <= now or not self.alive]:
            self._forget(conn)
            self._close(conn, b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")

    def handle(self, conn):
        request = getattr(conn, "msr_request", None)
        if request is not None:
            conn.msr_request = None
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(request)
            if isinstance(conn.sock, GuardedSocket):
                conn.sock.begin_request()
        return super().handle(conn)
