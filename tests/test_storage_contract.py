"""The storage contract (msr/storage/base.py), run against both stores: the filesystem
and S3 (moto's S3 emulator on 127.0.0.1). Every test gets a fresh store (a temporary
folder, a new bucket).

"Another process" is played by a second store object on the same folder or bucket: it
shares nothing in memory (not the hash state a process keeps for its uploads), exactly
like a second gunicorn worker or a web process on another host."""

import hashlib
import os
import threading
import time
from datetime import timedelta

import pytest
import requests
from django.utils import timezone

from msr.storage import DigestMismatch, FilesystemStorage, UploadBusy
from msr.storage.s3 import MIN_PART_SIZE, S3Storage
from tests.s3 import CREDENTIALS

PART = MIN_PART_SIZE  # the smallest part S3 allows: several parts with little data


@pytest.fixture(params=["filesystem", "s3"])
def make_store(request, tmp_path):
    """A factory: each call is a new "process" on the same store."""
    if request.param == "filesystem":
        return lambda: FilesystemStorage(tmp_path / "storage", fsync=False)
    return request.getfixturevalue("make_s3_store")


@pytest.fixture
def make_s3_store(s3_emulator):
    emulator = s3_emulator
    bucket = emulator.bucket()
    return lambda: S3Storage(bucket, prefix="registry", endpoint_url=emulator.url, addressing_style="path",
                             access_key=CREDENTIALS["aws_access_key_id"],
                             secret_key=CREDENTIALS["aws_secret_access_key"], part_size=PART)


@pytest.fixture
def store(make_store):
    return make_store()


def digest_of(data: bytes, algorithm="sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def upload(store, upload_id, data: bytes, digest=None, pieces=1):
    store.start_upload(upload_id)
    with store.locked(upload_id) as handle:
        step = max(1, -(-len(data) // pieces))
        store.append(handle, upload_id, (data[i:i + step] for i in range(0, len(data), step)))
        return store.commit_upload(handle, upload_id, digest or digest_of(data))


def read(store, digest, offset=0) -> bytes:
    blob = store.open_blob(digest, offset)
    try:
        return b"".join(iter(lambda: blob.read(1 << 20), b""))
    finally:
        blob.close()


@pytest.mark.parametrize("size", [0, 1, 1000, PART - 1, PART, 2 * PART + 12345])
def test_an_upload_becomes_a_blob_with_the_same_bytes(store, size):
    data = os.urandom(size)
    digest = digest_of(data)
    assert store.blob_size(digest) is None
    assert upload(store, "u1", data, pieces=3) == size
    assert store.blob_size(digest) == size
    assert read(store, digest) == data
    assert store.upload_size("u1") is None  # its bytes are the blob now
    store.discard_upload("u1")  # as uploads.py does after the commit
    assert "u1" not in store.list_uploads()
    assert (digest, size) in list(store.iter_blobs())


def test_reads_start_at_an_offset(store):
    data = os.urandom(PART + 5000)
    digest = digest_of(data)
    upload(store, "u1", data)
    for offset in (1, 4999, PART, len(data) - 1):
        assert read(store, digest, offset) == data[offset:]
    blob = store.open_blob(digest, PART - 10, 20)  # a range across the part boundary
    try:
        assert blob.read(20) == data[PART - 10:PART + 10]
    finally:
        blob.close()


def test_chunks_that_arrive_at_different_processes_add_up(make_store):
    """A chunked upload whose PATCH requests each reach another process (and, for S3, do
    not line up with parts): the bytes and the digest are still right."""
    data = os.urandom(3 * PART + 777)
    digest = digest_of(data)
    make_store().start_upload("u1")
    offset = 0
    for size in (100, PART - 50, 3 * 1024 * 1024, 2 * PART, 677):
        store = make_store()
        with store.locked("u1") as handle:
            assert store.handle_size(handle) == offset
            offset = store.append(handle, "u1", [data[offset:offset + size]])
        assert make_store().upload_size("u1") == offset
    assert offset == len(data)
    store = make_store()
    with store.locked("u1") as handle:
        assert store.commit_upload(handle, "u1", digest) == len(data)
    assert read(make_store(), digest) == data


def test_sha512_digests_are_verified(store):
    data = os.urandom(PART + 1)
    digest = digest_of(data, "sha512")
    upload(store, "u1", data, digest=digest, pieces=2)
    assert read(store, digest) == data


def test_a_wrong_digest_publishes_nothing(store):
    data = os.urandom(PART + 10)
    wrong = digest_of(b"something else")
    store.start_upload("u1")
    with store.locked("u1") as handle:
        store.append(handle, "u1", [data])
        with pytest.raises(DigestMismatch) as raised:
            store.commit_upload(handle, "u1", wrong)
    assert raised.value.actual == digest_of(data)
    assert store.blob_size(wrong) is None and store.blob_size(digest_of(data)) is None
    assert store.upload_size("u1") == len(data)  # for the caller to discard
    store.discard_upload("u1")
    assert store.upload_size("u1") is None and "u1" not in store.list_uploads()
    assert list(store.iter_blobs()) == []


def test_what_arrived_before_a_client_went_away_stays(make_store):
    """The body stops mid-way (the client disconnected): the bytes received stay, the
    status request reports them and the client resumes from there."""
    data = os.urandom(2 * PART + 3)
    cut = PART + 1000

    def body():
        yield data[:cut]
        raise ConnectionResetError("client gone")

    store = make_store()
    store.start_upload("u1")
    with store.locked("u1") as handle:
        with pytest.raises(ConnectionResetError):
            store.append(handle, "u1", body())
    store = make_store()
    assert store.upload_size("u1") == cut
    with store.locked("u1") as handle:
        store.append(handle, "u1", [data[cut:]])
        store.commit_upload(handle, "u1", digest_of(data))
    assert read(store, digest_of(data)) == data


def test_one_writer_at_a_time(make_store):
    first, second = make_store(), make_store()
    first.start_upload("u1")
    with first.locked("u1"):
        with pytest.raises(UploadBusy):
            with second.locked("u1"):
                pass
    with second.locked("u1") as handle:  # free again
        assert second.handle_size(handle) == 0


def test_an_unknown_upload_cannot_be_locked(store):
    for _ in range(2):  # and the first attempt released its lock
        with pytest.raises(FileNotFoundError):
            with store.locked("nope"):
                pass


def test_an_upload_of_a_stored_blob_stays_until_asked_again(store):
    """Completing an upload whose blob is already stored keeps the stored bytes and
    leaves the upload (uploads.py republishes from it if the collector removed the blob
    meanwhile)."""
    data = os.urandom(PART + 99)
    digest = digest_of(data)
    upload(store, "u1", data)
    store.start_upload("u2")
    with store.locked("u2") as handle:
        store.append(handle, "u2", [data])
        assert store.commit_upload(handle, "u2", digest) == len(data)
        assert store.upload_size("u2") == len(data)  # not published: it was there
        store.delete_blob(digest)  # the collector took the stored copy
        assert store.blob_size(digest) is None
        assert store.commit_upload(handle, "u2", digest) == len(data)  # republished
    assert store.upload_size("u2") is None
    assert read(store, digest) == data


def test_deleted_blobs_are_gone(store):
    data = b"x" * 100
    upload(store, "u1", data)
    store.delete_blob(digest_of(data))
    assert store.blob_size(digest_of(data)) is None
    with pytest.raises(FileNotFoundError):
        store.open_blob(digest_of(data))
    store.delete_blob(digest_of(data))  # twice is fine


def test_blobs_set_aside_go_back_or_go(store):
    kept, dropped = os.urandom(PART + 1), b"dropped"
    upload(store, "u1", kept)
    upload(store, "u2", dropped)
    aside_kept = store.set_aside(digest_of(kept))
    aside_dropped = store.set_aside(digest_of(dropped))
    assert store.set_aside(digest_of(b"never stored")) is None
    assert store.blob_size(digest_of(kept)) is None and store.blob_size(digest_of(dropped)) is None
    assert sorted(digest for _, digest in store.list_aside()) == sorted([digest_of(kept), digest_of(dropped)])
    store.put_back(digest_of(kept), aside_kept)
    store.drop_aside(aside_dropped)
    assert read(store, digest_of(kept)) == kept
    assert store.blob_size(digest_of(dropped)) is None
    assert list(store.list_aside()) == []


def test_store_blob_puts_a_file_under_its_digest(store, tmp_path):
    data = os.urandom(PART + 3)
    path = tmp_path / "blob"
    path.write_bytes(data)
    store.store_blob(digest_of(data), path)
    assert read(store, digest_of(data)) == data


def test_uploads_are_listed_with_their_last_write(make_store):
    store = make_store()
    before = time.time() - 1
    store.start_upload("u1")
    store.start_upload("u2")
    with store.locked("u2") as handle:
        store.append(handle, "u2", [b"abc"])
    assert sorted(store.list_uploads()) == ["u1", "u2"]
    assert before <= make_store().upload_last_write("u2") <= time.time() + 1
    assert make_store().upload_last_write("missing") is None
    store.discard_upload("u1")
    store.discard_upload("u2")
    assert store.list_uploads() == []


def test_check_passes_on_a_usable_store(store):
    store.check()


def test_blob_url_fetches_the_same_bytes_or_is_none(store):
    data = os.urandom(1000)
    upload(store, "u1", data)
    url = store.blob_url(digest_of(data))
    if isinstance(store, FilesystemStorage):
        assert url is None  # MSR serves it
        return
    response = requests.get(url, timeout=10)
    assert response.status_code == 200 and response.content == data
    ranged = requests.get(url, headers={"Range": "bytes=10-19"}, timeout=10)
    assert ranged.status_code == 206 and ranged.content == data[10:20]


# -- S3 only ---------------------------------------------------------------------------------


def test_s3_check_fails_for_a_missing_bucket(s3_emulator):
    store = S3Storage("no-such-bucket", endpoint_url=s3_emulator.url, addressing_style="path",
                      access_key="x", secret_key="y", part_size=PART)
    with pytest.raises(Exception, match="404|Not Found|NoSuchBucket"):
        store.check()


def test_s3_part_size_below_the_minimum_is_refused():
    with pytest.raises(ValueError, match="at least 5242880"):
        S3Storage("bucket", part_size=PART - 1)


def test_s3_a_dead_holders_lease_expires(make_s3_store):
    """A process that died holding an upload blocks it until the lease expires, no longer
    (a file lock dies with its process)."""
    from msr.models import StorageLease

    store = make_s3_store()
    store.start_upload("u1")
    StorageLease.objects.create(name="upload:u1", holder="dead", expires_at=timezone.now() + timedelta(seconds=60))
    try:
        with pytest.raises(UploadBusy):
            with store.locked("u1"):
                pass
        StorageLease.objects.filter(name="upload:u1").update(expires_at=timezone.now() - timedelta(seconds=1))
        with store.locked("u1") as handle:
            store.append(handle, "u1", [b"abc"])
        assert not StorageLease.objects.filter(name="upload:u1").exists()  # released
    finally:
        StorageLease.objects.filter(name="upload:u1").delete()


def test_s3_concurrent_writers_one_wins(make_s3_store):
    """Four processes race for the same upload: exactly one appends."""
    store = make_s3_store()
    store.start_upload("u1")
    results, barrier = [], threading.Barrier(4)

    def write():
        own = make_s3_store()
        barrier.wait()
        try:
            with own.locked("u1") as handle:
                time.sleep(0.3)
                own.append(handle, "u1", [b"z" * 10])
                results.append("wrote")
        except UploadBusy:
            results.append("busy")
        finally:
            from django.db import connection

            connection.close()

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["busy", "busy", "busy", "wrote"]
    assert store.upload_size("u1") == 10


def test_s3_the_lease_is_renewed_while_held_and_a_lost_lease_stops_the_writer(make_s3_store, monkeypatch):
    """A long request (a slow client, completion's server-side copy of a big blob) keeps
    its upload; a request whose lease was taken over stops writing."""
    from msr.models import StorageLease
    from msr.storage import s3

    monkeypatch.setattr(s3, "LEASE_SECONDS", 1)
    monkeypatch.setattr(s3, "LEASE_RENEW_SECONDS", 0.2)
    store, other = make_s3_store(), make_s3_store()
    store.start_upload("u1")
    with store.locked("u1") as handle:
        time.sleep(2.5)  # more than twice the lease
        with pytest.raises(UploadBusy):
            with other.locked("u1"):
                pass
        store.append(handle, "u1", [b"still mine"])
        # the lease is taken from under it (it had expired on a stalled host, say)
        StorageLease.objects.filter(name="upload:u1").update(holder="someone else")
        time.sleep(0.6)

        def more():
            yield b"x" * 10
            time.sleep(0.1)
            yield b"y" * 10

        with pytest.raises(UploadBusy):
            store.append(handle, "u1", more())
    StorageLease.objects.filter(name="upload:u1").delete()
    assert store.upload_size("u1") == 10  # the writer that lost its lease recorded nothing
