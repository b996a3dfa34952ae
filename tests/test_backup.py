"""Backup → wipe → restore → pull: a whole deployment (its own database, data dir and
port) is backed up with `msr manage backup`, destroyed, restored with `msr manage
restore`, and every image pulls back with skopeo with the same digest; the same
personal access token still logs in (keys and database came back)."""

import json
import os
import shutil

import pytest

from tests.deployments import Deployment
from tests.images import make_image_layout, make_index_layout
from tests.processes import need, run

REDIS = os.environ.get("MSR_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")


def _skopeo(*args, check=True):
    need("skopeo")
    return run(["skopeo", *args], check=check)


@pytest.mark.parametrize("storage", ["filesystem", "s3"])
def test_backup_wipe_restore_and_pull_every_image_back(db_url, tmp_path, storage, request):
    base, _, _ = REDIS.rpartition("/")
    bucket = extra = None
    if storage == "s3":  # blobs in a bucket of the S3 emulator: backed up from it, restored into it
        emulator = request.getfixturevalue("s3_emulator")
        bucket = emulator.bucket()
        extra = emulator.env(bucket)
    deployment = Deployment("backup", tmp_path / "deployment", db_url, f"{base}/15", extra_env=extra)
    try:
        token = deployment.with_admin("shop")
        url = deployment.start_web()
        host = url.removeprefix("http://")
        creds = f"admin:{token}"
        images = {}
        for i, sizes in enumerate([(50_000, 70_000), (123_456,), (10_000, 20_000, 30_000)]):
            layout = tmp_path / f"image{i}"
            images[f"shop/app{i}:v{i}"] = make_image_layout(layout, layer_sizes=sizes, tag="v1")
            _skopeo("copy", "--dest-tls-verify=false", "--dest-creds", creds, f"oci:{layout}:v1",
                    f"docker://{host}/shop/app{i}:v{i}")
        index_layout = tmp_path / "index"
        images["shop/multi:latest"] = make_index_layout(index_layout, tag="v1")
        _skopeo("copy", "--all", "--dest-tls-verify=false", "--dest-creds", creds, f"oci:{index_layout}:v1",
                f"docker://{host}/shop/multi:latest")

        backup = tmp_path / "backup"
        out = deployment.manage("backup", str(backup)).stdout
        meta = json.loads((backup / "backup.json").read_text())
        assert "backup in" in out and meta["keys"]
        # password hashes and signing keys: readable by the owner only
        assert (backup / meta["database"]).stat().st_mode & 0o077 == 0
        assert all((backup / "keys" / k).stat().st_mode & 0o077 == 0 for k in meta["keys"])
        # a second run copies no blob again (incremental)
        assert "0 new blob file(s)" in deployment.manage("backup", str(backup)).stdout

        # wipe: processes, database, data dir
        deployment.web.stop()
        deployment.web = None
        if deployment.pg_name:
            deployment._pg("DROP DATABASE {0} WITH (FORCE)", "CREATE DATABASE {0}")
        shutil.rmtree(deployment.data_dir)
        deployment.data_dir.mkdir()
        if bucket:
            for key in emulator.keys(bucket):
                emulator.client.delete_object(Bucket=bucket, Key=key)
        refused = _skopeo("inspect", "--tls-verify=false", "--creds", creds,
                          f"docker://{host}/shop/app0:v0", check=False)
        assert refused.returncode != 0  # it is really gone

        deployment.manage("restore", str(backup))
        if bucket:
            assert len(emulator.keys(bucket, "blobs/")) == len(list((backup / "blobs").glob("*/*/*")))
        url = deployment.start_web()
        host = url.removeprefix("http://")
        for reference, digest in images.items():
            pulled = tmp_path / f"pulled-{reference.replace('/', '-').replace(':', '-')}"
            _skopeo("copy", "--all", "--src-tls-verify=false", "--src-creds", creds, f"docker://{host}/{reference}",
                    f"oci:{pulled}:x")
            assert json.loads((pulled / "index.json").read_text())["manifests"][0]["digest"] == digest, reference

        # restoring over a deployment that has data is refused without --force
        import subprocess

        from tests.processes import MSR

        result = subprocess.run([MSR, "manage", "restore", str(backup)], env=deployment.env,
                                capture_output=True, text=True)
        assert result.returncode != 0 and "holds repositories" in result.stderr
    finally:
        deployment.stop()


def test_garbage_collection_waits_for_a_running_backup():
    """A backup copies the blobs its database snapshot references after the snapshot: no
    GC may delete in between. (grace: a day, so even a broken lock deletes nothing here.)"""
    from msr import gc
    from msr.maintenance import Busy, maintenance_lock
    from msr.tasks import collect_garbage

    with maintenance_lock("back up"):
        with pytest.raises(Busy, match="a backup or a restore is running"):
            gc.collect(grace=86400)
        assert "skipped" in collect_garbage()
        assert gc.collect(dry_run=True, grace=86400).dry_run  # a dry run deletes nothing: allowed
    assert gc.collect(grace=86400).dry_run is False


def test_a_backup_on_another_host_keeps_garbage_collection_out():
    """The file lock only covers one host; the database lease covers the deployment. A
    holder that died (its lease no longer renewed) frees it when the lease expires."""
    from datetime import timedelta

    from django.utils import timezone

    from msr import gc
    from msr.maintenance import LEASE_NAME, Busy, maintenance_lock
    from msr.models import StorageLease

    other_host = StorageLease.objects.create(name=LEASE_NAME, holder="backup-on-host-b",
                                             expires_at=timezone.now() + timedelta(seconds=120))
    try:
        with pytest.raises(Busy, match="database lease 'maintenance'"):
            gc.collect(grace=86400)
        other_host.expires_at = timezone.now() - timedelta(seconds=1)  # host b died two minutes ago
        other_host.save()
        with maintenance_lock("collect garbage"):
            held = StorageLease.objects.get(name=LEASE_NAME)
            assert held.holder != "backup-on-host-b" and held.expires_at > timezone.now()
        assert not StorageLease.objects.filter(name=LEASE_NAME).exists()  # released
    finally:
        StorageLease.objects.filter(name=LEASE_NAME).delete()
