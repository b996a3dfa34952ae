"""`msr manage backup DIR`: a copy of a deployment that `msr manage restore DIR` brings back.

Order gives consistency without stopping MSR: the database first (PostgreSQL: `pg_dump
--format=custom`, one consistent snapshot; SQLite: the online backup API), then the data
dir's generated keys, then the blob store (filesystem or S3 bucket, streamed either way). Blobs are content-addressed and never change,
so every blob the database snapshot references is still there to copy afterwards —
unless garbage collection deletes it in between: the command refuses to run while a GC
holds the maintenance lock (msr/maintenance.py), and GC skips its run while a backup
holds it.
Copies are incremental: a blob already in DIR (same name = same bytes) is not copied
again, so DIR can be kept and refreshed. Upload areas are not backed up (clients retry).

DIR gets: backup.json (what, when, from which engine), database.dump or database.sqlite3,
keys/ (secret_key, token_key.pem, encryption_key — only those generated into the data
dir; keys given by environment variables are the operator's to keep), blobs/.
"""

import json
import os
import shutil
import sqlite3
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection

KEY_FILES = ("secret_key", "token_key.pem", "encryption_key")


@contextmanager
def maintenance_lock(what: str, database: bool = True):
    """msr.maintenance's lock (exclusive with garbage collection), as a CommandError."""
    from msr.maintenance import Busy
    from msr.maintenance import maintenance_lock as lock

    try:
        with lock(what, database=database):
            yield
    except Busy as e:
        raise CommandError(str(e)) from None


def pg_args(settings_dict) -> tuple[list[str], dict]:
    """Connection arguments for pg_dump/pg_restore; the password goes by environment."""
    args = ["--host", settings_dict.get("HOST") or "127.0.0.1", "--port", str(settings_dict.get("PORT") or 5432),
            "--username", settings_dict.get("USER") or "postgres", "--dbname", settings_dict["NAME"]]
    env = dict(os.environ)
    if settings_dict.get("PASSWORD"):
        env["PGPASSWORD"] = settings_dict["PASSWORD"]
    return args, env


def blob_relpath(digest: str) -> Path:
    """Where a blob sits under DIR/blobs (the filesystem store's layout)."""
    algorithm, _, encoded = digest.partition(":")
    return Path(algorithm) / encoded[:2] / encoded


def export_blobs(storage, target: Path) -> tuple[int, int]:
    """Copy the store's blobs missing (or of another size) in `target`, streamed from
    whichever store (filesystem or S3); (files copied, bytes)."""
    copied = size = 0
    for digest, length in storage.iter_blobs():
        dest = target / blob_relpath(digest)
        if dest.exists() and dest.stat().st_size == length:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".partial")
        source = storage.open_blob(digest)
        try:
            with open(partial, "wb") as out:
                shutil.copyfileobj(source, out, 1024 * 1024)
        finally:
            source.close()
        os.replace(partial, dest)
        copied += 1
        size += length
    return copied, size


def import_blobs(storage, source: Path) -> tuple[int, int]:
    """Put the blobs of `source` the store lacks (or holds with another size); (files, bytes)."""
    copied = size = 0
    for path in sorted(source.glob("*/*/*")) if source.is_dir() else []:
        if not path.is_file() or path.name.endswith(".partial"):
            continue
        digest, length = f"{path.parent.parent.name}:{path.name}", path.stat().st_size
        if storage.blob_size(digest) == length:
            continue
        storage.store_blob(digest, path)
        copied += 1
        size += length
    return copied, size


class Command(BaseCommand):
    help = "Back up the database, the generated keys and the blob store into DIR."

    def add_arguments(self, parser):
        parser.add_argument("directory")

    def handle(self, directory, **options):
        # The dump holds password hashes and the keys sign tokens: owner-only files.
        os.umask(0o077)
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        started = time.time()
        with maintenance_lock("back up"):
            engine = connection.vendor
            self.stdout.write(f"backing up the {engine} database")
            if engine == "postgresql":
                args, env = pg_args(connection.settings_dict)
                dump = target / "database.dump"
                partial = target / "database.dump.partial"
                # Leases (this backup's own maintenance lease, uploads' locks) mean nothing
                # in a restored deployment.
                result = subprocess.run(["pg_dump", "--format=custom", "--no-owner", "--no-privileges",
                                         "--exclude-table-data=msr_storagelease",
                                         "--file", str(partial), *args], env=env, capture_output=True, text=True)
                if result.returncode != 0:
                    partial.unlink(missing_ok=True)
                    raise CommandError(f"pg_dump failed: {result.stderr.strip()}")
                os.replace(partial, dump)
            elif engine == "sqlite":
                dump = target / "database.sqlite3"
                partial = target / "database.sqlite3.partial"
                partial.unlink(missing_ok=True)
                source = sqlite3.connect(connection.settings_dict["NAME"])
                copy = sqlite3.connect(partial)
                with copy:
                    source.backup(copy)
                copy.close()
                source.close()
                os.replace(partial, dump)
            else:
                raise CommandError(f"no backup method for the {engine} database")
            keys = []
            (target / "keys").mkdir(exist_ok=True)
            for name in KEY_FILES:
                path = Path(settings.DATA_DIR) / name
                if name == "token_key.pem":
                    path = Path(settings.TOKEN_KEY_FILE)
                if path.is_file():
                    shutil.copyfile(path, target / "keys" / name)
                    os.chmod(target / "keys" / name, 0o600)
                    keys.append(name)
            from msr.models import Blob
            from msr.storage import get_storage

            files, size = export_blobs(get_storage(), target / "blobs")
            missing = [d for d in Blob.objects.filter(created_at__lte=_aware(started))
                       .values_list("digest", flat=True)
                       if not (target / "blobs" / blob_relpath(d)).exists()]
            if missing:
                raise CommandError(f"{len(missing)} blob(s) of the database are missing from the store, "
                                   f"e.g. {missing[0]}: the backup is incomplete")
            (target / "backup.json").write_text(json.dumps({
                "format": 1, "engine": engine, "database": dump.name, "keys": keys,
                "startedAt": started, "finishedAt": time.time(),
            }, indent=2))
        self.stdout.write(f"backup in {target}: database {dump.name}, keys {', '.join(keys) or 'none'}, "
                          f"{files} new blob file(s), {size} bytes copied")


def _aware(timestamp: float):
    from datetime import datetime, timezone

    return datetime.fromtimestamp(timestamp, tz=timezone.utc)
