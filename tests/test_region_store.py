"""A region's shared store (caches/region.py) against moto's S3 server: the fill lease
(one holder, taken over only once it ran out, never released by a node it was taken
from), eviction by last use and budget across the region, purge, heartbeats. The nodes
as processes behind a load balancer: tests/test_region.py."""

import hashlib
import time

import pytest

from caches.region import RegionStore, lease_name
from protocol.blobstore import S3Bucket
from tests.s3 import CREDENTIALS


def _store(emulator, bucket, node, lease_ttl=30, ttl=3600, max_size=1 << 30) -> RegionStore:
    s3 = S3Bucket(bucket, "region", endpoint_url=emulator.url, addressing_style="path",
                  access_key=CREDENTIALS["aws_access_key_id"], secret_key=CREDENTIALS["aws_secret_access_key"],
                  region=CREDENTIALS["region_name"])
    return RegionStore(s3, "emea", node, f"http://127.0.0.1:1{len(node)}", lease_ttl, ttl, max_size)


def _put(store: RegionStore, tmp_path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = tmp_path / digest[7:]
    path.write_bytes(data)
    store.publish(digest, path)
    return digest


@pytest.fixture
def bucket(s3_emulator):
    return s3_emulator.bucket()


def test_one_node_holds_a_fill_lease_and_the_others_see_who(s3_emulator, bucket):
    one, two = _store(s3_emulator, bucket, "one"), _store(s3_emulator, bucket, "two")
    name = lease_name("sha256:" + "a" * 64)
    lease, holder = one.acquire(name, length=123)
    assert lease is not None and holder is None
    second, holder = two.acquire(name)
    assert second is None
    assert holder["node"] == "one" and holder["url"] == one.url and holder["length"] == 123
    lease.release()
    again, holder = two.acquire(name)  # released: the next asker gets it
    assert again is not None and holder is None
    again.release()
    assert s3_emulator.keys(bucket, "region/leases/") == []


def test_a_lease_not_renewed_is_taken_over_and_the_old_holder_does_not_release_it(s3_emulator, bucket):
    one, two = _store(s3_emulator, bucket, "one", lease_ttl=2), _store(s3_emulator, bucket, "two", lease_ttl=2)
    name = lease_name("sha256:" + "b" * 64)
    lease, _ = one.acquire(name)
    lease._released.set()  # the holder hangs: no more renewals (as if SIGSTOPped)
    lease._thread.join()
    assert two.acquire(name)[0] is None  # still within its time
    time.sleep(3.2)  # Last-Modified has one-second steps
    taken, holder = two.acquire(name)
    assert taken is not None and holder is None
    lease.release()  # the old holder wakes up and lets go: the new holder's lease stays
    document, _, _ = two.bucket.read_json(two.bucket.key(name))
    assert document["node"] == "two"
    taken.release()


def test_a_live_holder_keeps_its_lease_by_renewing_it(s3_emulator, bucket):
    one, two = _store(s3_emulator, bucket, "one", lease_ttl=2), _store(s3_emulator, bucket, "two", lease_ttl=2)
    name = lease_name("sha256:" + "c" * 64)
    lease, _ = one.acquire(name)
    time.sleep(4.5)  # two lease times: renewed meanwhile
    assert two.acquire(name)[0] is None
    assert not lease.lost.is_set()
    lease.release()


def test_a_nodes_own_leftover_lease_is_taken_at_once(s3_emulator, bucket):
    """A node restarted after a crash finds a lease in its own name: the caller holds the
    node's lock for the digest, so it is a leftover, not a fill in progress."""
    before, after = _store(s3_emulator, bucket, "one"), _store(s3_emulator, bucket, "one")
    name = lease_name("sha256:" + "d" * 64)
    lease, _ = before.acquire(name)
    lease._released.set()
    assert after.acquire(name)[0] is None
    taken, _ = after.acquire(name, stale_if_mine=True)
    assert taken is not None
    taken.release()


def test_eviction_keeps_the_region_under_its_budget_least_recently_used_first(s3_emulator, bucket, tmp_path):
    one = _store(s3_emulator, bucket, "one", max_size=250_000)
    two = _store(s3_emulator, bucket, "two", max_size=250_000)
    old = _put(one, tmp_path, b"o" * 100_000)
    used = _put(one, tmp_path, b"u" * 100_000)
    new = _put(two, tmp_path, b"n" * 100_000)
    with one._used_lock:  # node one's record says `old` was last used ten minutes ago
        one._used_at[old] = time.time() - 600
        one._used_dirty = True
    one.save_use()
    two.touch(used)  # node two served `used` just now
    two.save_use()
    assert one.evict() == 100_000
    assert one.head(old) is None and one.head(used) is not None and one.head(new) is not None
    assert one.used() == 200_000
    # A fill of 100 kB more: room is made first.
    one.make_room(100_000)
    assert one.used() <= 150_000


def test_a_blob_written_this_second_is_newer_than_one_merely_used_this_second(s3_emulator, bucket, tmp_path):
    """S3 dates objects in whole seconds: the filler's own use must reach the bucket with
    the blob, or another node evicting would take the new blob for the oldest."""
    one = _store(s3_emulator, bucket, "one", max_size=150_000)
    two = _store(s3_emulator, bucket, "two", max_size=150_000)
    used = _put(two, tmp_path, b"u" * 100_000)
    time.sleep(1.05 - time.time() % 1)  # just past the start of a second
    two.touch(used)  # node two serves `used`...
    two.save_use()
    time.sleep(0.2)
    new = _put(one, tmp_path, b"n" * 100_000)  # ...and node one fills `new`, in the same second
    assert two.evict() == 100_000  # node two evicts, over the budget by one blob
    assert two.head(new) is not None and two.head(used) is None


def test_eviction_by_ttl_uses_the_last_use_any_node_recorded(s3_emulator, bucket, tmp_path):
    one = _store(s3_emulator, bucket, "one", ttl=2)
    two = _store(s3_emulator, bucket, "two", ttl=2)
    kept = _put(one, tmp_path, b"k" * 1000)
    gone = _put(one, tmp_path, b"g" * 1000)
    one._used_at.clear()
    time.sleep(2.5)
    two.touch(kept)
    two.save_use()
    one.evict()
    assert one.head(kept) is not None and one.head(gone) is None


def test_one_node_evicts_at_a_time(s3_emulator, bucket):
    one, two = _store(s3_emulator, bucket, "one"), _store(s3_emulator, bucket, "two")
    lease, _ = one.acquire("leases/evict.json")
    assert two.evict() is None  # busy elsewhere: not now
    lease.release()
    assert two.evict() == 0


def test_a_purge_leaves_a_mark_that_fills_under_way_see(s3_emulator, bucket, tmp_path):
    one, two = _store(s3_emulator, bucket, "one"), _store(s3_emulator, bucket, "two")
    purged = _put(one, tmp_path, b"p" * 1000)
    other = "sha256:" + "0" * 64
    before, other_before = one.purges(purged)(), one.purges(other)()
    assert before == (None, None)
    assert two.purge(purged) == 1
    after = one.purges(purged)()
    assert after != before and one.purges(other)() == other_before  # a fill of `purged` under way sees it
    assert one.purges(purged)() == after  # unchanged until the next purge
    two.purge(purged)
    assert one.purges(purged)() != after  # a purge of the same digest again moves it too
    two.purge(None)
    assert one.purges(other)() != other_before  # every blob


def test_purge_removes_a_blob_or_all_of_them_for_the_whole_region(s3_emulator, bucket, tmp_path):
    one, two = _store(s3_emulator, bucket, "one"), _store(s3_emulator, bucket, "two")
    first = _put(one, tmp_path, b"1" * 1000)
    second = _put(one, tmp_path, b"2" * 1000)
    assert two.purge(first) == 1 and one.head(first) is None and one.head(second) is not None
    assert two.purge(first) == 0
    assert two.purge(None) == 1
    assert s3_emulator.keys(bucket, "region/blobs/") == []


def test_heartbeats_show_each_node_and_its_health(s3_emulator, bucket):
    one, two = _store(s3_emulator, bucket, "one"), _store(s3_emulator, bucket, "two")
    one.heartbeat({"hits": 3})
    two.heartbeat({"hits": 4})
    nodes = one.nodes()
    assert [(n["node"], n["healthy"], n["counters"]["hits"]) for n in nodes] == [("one", True, 3), ("two", True, 4)]
    # Junk in the heartbeat prefix is skipped, not a crash of /stats.
    one.bucket.s3.put_object(Bucket=bucket, Key="region/nodes/junk.json", Body=b"[1, 2")
    one._view = (0.0, [])
    assert [n["node"] for n in one.nodes()] == ["one", "two"]

