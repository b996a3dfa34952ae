"""A region's shared store: several cache nodes (same name, behind one address) keep the
region's blobs in one S3-compatible bucket, and coordinate through it.

Keys under the store's prefix (`msr cache --store s3://bucket/prefix`):
    blobs/<algorithm>/<2 hex>/<hex>   published blobs, verified before they are written
                                     (MSR's own S3 layout, protocol.blobstore)
    leases/<algorithm>-<hex>.json    the fill lease of one digest: which node fetches it
                                     from the upstream, and where the others stream it from
    leases/evict.json                the eviction lease: one node at a time evicts
    nodes/<node id>.json             each node's heartbeat (address, counters)
    access/<node id>-<pid>.json      when each process last served each blob (for TTL/LRU)
    purged/<algorithm>-<hex>.json    a purge of one digest, purged/all.json of every blob:
                                     a fill that began before it does not write its blob

A lease is an object created with a conditional write (PUT If-None-Match: *): of nodes
racing for a digest, one creates it and the others read who holds it. The holder rewrites
it (PUT If-Match: its ETag) every third of the lease's time to live; a lease not
rewritten for that long (by the store's clock: Last-Modified against the answer's Date)
belongs to a node that died or hung, and is taken over with If-Match on the ETag read,
so two nodes taking over at once still end with one holder. Releasing is a DELETE
If-Match: a node never removes a lease that was taken from it.

Django-free, like the rest of the node (tests/unit/test_dependencies.py).
"""

import ipaddress
import logging
import os
import secrets
import socket
import threading
import time
from urllib.parse import urlsplit

from protocol.blobstore import S3Bucket

log = logging.getLogger("msr.cache")
HEARTBEAT_SECONDS = 5
NODE_HEALTHY_SECONDS = 15
VIEW_SECONDS = 2  # how long /stats reuses one read of the nodes' heartbeats
USAGE_SECONDS = 30  # how long a listing of the bucket's blobs counts as its usage
PURGE_MARK_SECONDS = 86400  # a purge's mark is kept this long (a fill older than that is not stopped)


# Where a node may stream a fill from (it sends the client's grant or token along): the
# addresses a region's nodes have on its own network, not wherever a lease says.
DEFAULT_PEER_NETWORKS = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,127.0.0.0/8,::1/128,fc00::/7"


def parse_networks(value: str) -> list:
    """`10.0.0.0/8,fd00::/8` → networks; ValueError names the bad one."""
    networks = []
    for item in (value or "").split(","):
        if item.strip():
            try:
                networks.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError:
                raise ValueError(f"not a network: {item.strip()!r} (e.g. 10.0.0.0/8)") from None
    return networks


def peer_allowed(url: str, networks) -> bool:
    """Every address the peer's host name resolves to lies in one of `networks`."""
    try:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, parts.port or 80,
                                                              proto=socket.IPPROTO_TCP)}
    except (OSError, ValueError):
        return False
    try:
        found = [ipaddress.ip_address(address.split("%", 1)[0]) for address in addresses]
    except ValueError:
        return False
    return bool(found) and all(any(address in network for network in networks) for address in found)


def lease_name(digest: str) -> str:
    return "leases/" + digest.replace(":", "-", 1) + ".json"


def node_id(bind_url: str) -> str:
    """A node's default id: its host name and port (unique among a region's nodes, also
    for several nodes on one host)."""
    port = bind_url.rsplit(":", 1)[-1].strip("/")
    return f"{socket.gethostname()}-{port}"[:100]


class Lease:
    """A lease held by this process: rewritten in the background until released."""

    def __init__(self, store: "RegionStore", key: str, document: dict, etag: str):
        self.store, self.key, self.document, self.etag = store, key, document, etag
        self.purges: tuple | None = None  # a fill lease: RegionStore.purges when its fetch began
        self.lost = threading.Event()
        self._released = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"lease-{key[-20:]}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        interval = max(0.5, self.store.lease_ttl / 3)
        while not self._released.wait(interval):
            try:
                etag = self.store.bucket.write_json(self.key, self.document, etag=self.etag)
            except Exception as e:  # the store is away for a moment: try again next time
                log.warning("cannot renew the lease %s: %s", self.key, e)
                continue
            if etag is None:
                log.warning("lost the lease %s: it was taken over", self.key)
                self.lost.set()
                return
            self.etag = etag

    def say_length(self, length: int) -> None:
        """The size of the blob being fetched, for the region's budget (written with the
        next renewal)."""
        self.document = {**self.document, "length": length}

    def release(self) -> None:
        self._released.set()
        self._thread.join(timeout=5)
        if not self.lost.is_set():
            try:
                self.store.bucket.delete_json(self.key, etag=self.etag)
            except Exception as e:  # it expires by itself
                log.warning("cannot release the lease %s: %s", self.key, e)


class RegionStore:
    def __init__(self, bucket: S3Bucket, name: str, node: str, url: str, lease_ttl: int, ttl: int,
                 max_size: int):
        self.bucket, self.name, self.node, self.url = bucket, name, node, url
        self.lease_ttl, self.ttl, self.max_size = lease_ttl, ttl, max_size
        self._used_at: dict[str, float] = {}
        self._used_dirty = False
        self._used_lock = threading.Lock()
        self._save_lock = threading.Lock()
        self._view: tuple[float, list] = (0.0, [])
        self._usage: tuple[float, int] = (0.0, -1)

    # -- blobs ---------------------------------------------------------------------------

    def head(self, digest: str) -> dict | None:
        return self.bucket.blob_head(digest)

    def open(self, digest: str, offset: int = 0, length: int | None = None):
        return self.bucket.open_blob(digest, offset, length)

    def publish(self, digest: str, path) -> None:
        # The use is recorded in the bucket before the blob appears: a node evicting in
        # between must not take a blob written this second (S3's Last-Modified is whole
        # seconds) for older than one merely used this second.
        self.touch(digest)
        try:
            self.save_use()
        except Exception as e:  # the keep-warm loop saves it again within seconds
            log.warning("cannot record the use of %s in the region's store: %s", digest, e)
        self.bucket.put_blob_file(digest, path)
        size = os.stat(path).st_size
        moment, used = self._usage
        if used >= 0:
            self._usage = (moment, used + size)

    def _purge_mark(self, digest: str | None) -> str:
        return self.bucket.key(f"purged/{digest.replace(':', '-')}.json" if digest else "purged/all.json")

    def purges(self, digest: str):
        """Where the purges of this digest and of every blob stand (their marks' ETags): a
        fill reads it before it fetches and again before it writes the blob; if it moved,
        a purge landed in between. No clocks are compared. Returns a function that waits
        for the answer: both marks are read at once, in the background, so a caller can do
        its own request meanwhile."""
        keys = (self._purge_mark(digest), self._purge_mark(None))
        etags: list = [None, None]

        def read(i: int) -> None:
            try:
                etags[i] = self.bucket.read_json(keys[i])[1]
            except Exception as e:  # raised by the waiter, not lost in the thread
                etags[i] = e

        readers = [threading.Thread(target=read, args=(i,), name="purge-marks", daemon=True) for i in (0, 1)]
        for reader in readers:
            reader.start()

        def wait() -> tuple:
            for reader in readers:
                reader.join()
            for etag in etags:
                if isinstance(etag, Exception):
                    raise etag
            return tuple(etags)

        return wait

    def purge(self, digest: str | None) -> int:
        """Remove one blob, or every blob, from the region: whichever node is asked. The
        mark is written first: a fill under way anywhere in the region then keeps its
        blob out of the bucket (its own clients still get it whole)."""
        self.bucket.write_json(self._purge_mark(digest), {"node": self.node, "at": time.time(),
                                                          "mark": secrets.token_hex(8)})  # a new ETag each time
        if digest:
            existed = self.head(digest) is not None
            self.bucket.delete_blob(digest)
            self._usage = (0.0, -1)
            return int(existed)
        keys = [{"Key": item["Key"]} for item in self.bucket.list(self.bucket.key("blobs/"))]
        for i in range(0, len(keys), 1000):
            self.bucket.s3.delete_objects(Bucket=self.bucket.bucket,
                                          Delete={"Objects": keys[i:i + 1000], "Quiet": True})
        self._usage = (0.0, -1)
        return len(keys)

    def touch(self, digest: str) -> None:
        with self._used_lock:
            self._used_at[digest] = time.time()
            self._used_dirty = True

    # -- leases --------------------------------------------------------------------------

    def acquire(self, name: str, length: int | None = None, stale_if_mine: bool = False
                ) -> tuple[Lease | None, dict | None]:
        """(the lease, None) when this process now holds `name`; (None, the holder's
        document) when a live holder has it. `stale_if_mine`: a lease in this node's name
        is a leftover of a process that died (the caller holds the node's own lock for
        the digest, so no other process of the node can be filling it)."""
        key = self.bucket.key(name)
        document = {"owner": secrets.token_hex(8), "node": self.node, "url": self.url, "pid": os.getpid(),
                    "ttl": self.lease_ttl, "length": length}
        holder = None
        for _ in range(5):
            etag = self.bucket.write_json(key, document, create=True)
            if etag is not None:
                return Lease(self, key, document, etag), None
            holder, held_etag, age = self.bucket.read_json(key)
            if holder is None:
                continue  # released in between: race for it again
            mine_from_before = stale_if_mine and holder.get("node") == self.node
            if age <= self.lease_ttl and not mine_from_before:
                return None, holder
            etag = self.bucket.write_json(key, document, etag=held_etag)
            if etag is not None:
                log.info("took over the lease %s from %s (not renewed for %.0f s)", name, holder.get("node"), age)
                return Lease(self, key, document, etag), None
        return None, holder

    # -- heartbeat, last use, eviction ---------------------------------------------------

    def heartbeat(self, counters: dict) -> None:
        self.bucket.write_json(self.bucket.key(f"nodes/{self.node}.json"), {
            "node": self.node, "url": self.url, "name": self.name, "seen": time.time(), "counters": counters})

    def save_use(self) -> None:
        """This process's last-use times, for whichever node evicts next."""
        with self._save_lock:  # one writer at a time: an older snapshot never lands last
            with self._used_lock:
                if not self._used_dirty:
                    return
                horizon = time.time() - self.ttl
                self._used_at = {d: t for d, t in self._used_at.items() if t > horizon}
                document, self._used_dirty = dict(self._used_at), False
            try:
                self.bucket.write_json(self.bucket.key(f"access/{self.node}-{os.getpid()}.json"), document)
            except Exception:
                with self._used_lock:
                    self._used_dirty = True  # the next save tries again
                raise

    def nodes(self) -> list[dict]:
        """Every node's last heartbeat, with its age and whether it counts as healthy."""
        moment, view = self._view
        if time.monotonic() - moment < VIEW_SECONDS:
            return view
        view = []
        for item in self.bucket.list(self.bucket.key("nodes/")):
            document, _, age = self.bucket.read_json(item["Key"])
            if not document or not isinstance(document.get("node"), str):
                continue
            if age > 86400:  # a node gone for a day: forgotten
                self.bucket.delete_json(item["Key"])
                continue
            counters = document.get("counters") if isinstance(document.get("counters"), dict) else {}
            view.append({"node": document["node"][:100], "url": str(document.get("url", ""))[:300],
                         "seen": document.get("seen"), "age": round(age, 1),
                         "healthy": age < NODE_HEALTHY_SECONDS, "counters": counters})
        view.sort(key=lambda entry: entry["node"])
        self._view = (time.monotonic(), view)
        return view

    def used(self) -> int:
        """The region's bytes in the bucket (a listing at most USAGE_SECONDS old)."""
        moment, used = self._usage
        if used < 0 or time.monotonic() - moment > USAGE_SECONDS:
            used = sum(size for _, size in self.bucket.iter_blobs())
            self._usage = (time.monotonic(), used)
        return used

    def _last_use(self) -> dict[str, float]:
        last: dict[str, float] = {}
        for item in self.bucket.list(self.bucket.key("access/")):
            document, _, age = self.bucket.read_json(item["Key"])
            if age > self.ttl:  # a process gone longer than the TTL: nothing it says counts
                self.bucket.delete_json(item["Key"])
                continue
            for digest, moment in (document or {}).items():
                if isinstance(moment, (int, float)) and moment > last.get(digest, 0):
                    last[digest] = moment
        with self._used_lock:
            for digest, moment in self._used_at.items():
                if moment > last.get(digest, 0):
                    last[digest] = moment
        return last

    def _filling(self) -> int:
        """Bytes the region's fills in progress will add (their leases say how many)."""
        total = 0
        for item in self.bucket.list(self.bucket.key("leases/")):
            if item["Key"].endswith("/evict.json"):
                continue
            document, _, age = self.bucket.read_json(item["Key"])
            if document and age <= self.lease_ttl and isinstance(document.get("length"), int):
                total += max(0, document["length"])
        return total

    def evict(self, incoming: int = 0, wait: float = 0.0) -> int | None:
        """One node at a time (the eviction lease): remove blobs unused for the TTL (by the
        last use any node recorded, else their upload), then the least recently used until
        the bucket, the region's fills in progress and `incoming` fit the budget. Bytes
        freed; None when another node is evicting (and did not finish within `wait`)."""
        deadline = time.monotonic() + wait
        while True:
            lease, _ = self.acquire("leases/evict.json")
            if lease is not None:
                break
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.2)
        try:
            now, freed, entries = time.time(), 0, []
            last = self._last_use()
            for digest, size, modified in self.bucket.iter_blobs(with_modified=True):
                used = max(modified, last.get(digest, 0))
                if now - used > self.ttl:
                    self.bucket.delete_blob(digest)
                    freed += size
                else:
                    entries.append((used, size, digest))
            for item in self.bucket.list(self.bucket.key("purged/")):
                if now - item["LastModified"].timestamp() > PURGE_MARK_SECONDS:
                    self.bucket.delete_json(item["Key"])
            total = sum(size for _, size, _ in entries)
            self._usage = (time.monotonic(), total)
            total += incoming + self._filling()
            for _, size, digest in sorted(entries):
                if total <= self.max_size:
                    break
                self.bucket.delete_blob(digest)
                total -= size
                freed += size
            if freed:
                self._usage = (0.0, -1)
                log.info("evicted %d bytes from the region's store", freed)
            return freed
        finally:
            lease.release()

    def make_room(self, incoming: int) -> None:
        """Before a fill of `incoming` bytes: evict now if the region's usage as last
        listed, plus those bytes, would pass the budget."""
        moment, used = self._usage
        if used >= 0 and time.monotonic() - moment < USAGE_SECONDS and used + incoming <= self.max_size:
            return
        self.evict(incoming, wait=5)

    def describe(self) -> dict:
        return {"store": self.bucket.url, "node": self.node}


def stats_document(region: RegionStore, own: dict) -> dict:
    """What /stats says of a region: the region's counters (every node's last heartbeat,
    this node's live), its usage and budget, and each node's health."""
    nodes = region.nodes()
    totals = dict.fromkeys(own, 0)
    seen_self = False
    entries = []
    for entry in nodes:
        entry = dict(entry)  # the view is shared with the next /stats
        counters = entry.pop("counters")
        if entry["node"] == region.node:
            counters = own
        seen_self = seen_self or entry["node"] == region.node
        for name in totals:
            value = counters.get(name, 0)
            totals[name] += value if isinstance(value, int) else 0
        entries.append({**entry, **{name: counters.get(name, 0) for name in ("hits", "misses", "upstream_fetches")}})
    if not seen_self:
        for name in totals:
            totals[name] += own.get(name, 0)
    return {**totals, "self": own, **region.describe(),
            "region": {"used": region.used(), "budget": region.max_size, "nodes": entries}}

