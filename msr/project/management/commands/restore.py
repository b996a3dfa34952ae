"""`msr manage restore DIR`: bring back what `msr manage backup DIR` saved, into a
deployment whose processes are stopped (web, workers, beat).

It refuses to overwrite a database that holds repositories unless `--force`. PostgreSQL:
`pg_restore --clean --if-exists` into the configured database; SQLite: the file is put in
place atomically. Then the keys go back into the data dir (the same tokens, sessions and
encrypted secrets stay valid), the blobs into the store, and the migrations run (a backup
of an older version is upgraded on the way).
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, connections

from msr.project.management.commands.backup import import_blobs, maintenance_lock, pg_args


def _has_repositories() -> bool:
    from django.db.utils import DatabaseError

    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM msr_repository")
            return cursor.fetchone()[0] > 0
    except DatabaseError:  # no tables yet
        return False


class Command(BaseCommand):
    help = "Restore a backup made by `msr manage backup` (stop MSR's processes first)."

    def add_arguments(self, parser):
        parser.add_argument("directory")
        parser.add_argument("--force", action="store_true", help="replace a database that holds repositories")

    def handle(self, directory, force, **options):
        source = Path(directory)
        try:
            meta = json.loads((source / "backup.json").read_text())
        except (OSError, ValueError):
            raise CommandError(f"{source} is not a backup made by `msr manage backup` (no backup.json)") from None
        engine = connection.vendor
        if meta["engine"] != engine:
            raise CommandError(f"the backup is of a {meta['engine']} database; this deployment uses {engine}")
        if _has_repositories() and not force:
            raise CommandError("this deployment's database holds repositories; restore into an empty one "
                               "or pass --force to replace it")
        # The file lock only: the database, where the cross-host lease lives, is replaced.
        with maintenance_lock("restore", database=False):
            dump = source / meta["database"]
            if engine == "postgresql":
                args, env = pg_args(connection.settings_dict)
                connections.close_all()
                result = subprocess.run(["pg_restore", "--clean", "--if-exists", "--no-owner", "--no-privileges",
                                         "--single-transaction", *args, str(dump)],
                                        env=env, capture_output=True, text=True)
                if result.returncode != 0:
                    raise CommandError(f"pg_restore failed: {result.stderr.strip()}")
            else:
                target = Path(connection.settings_dict["NAME"])
                connections.close_all()
                partial = target.with_name(target.name + ".restoring")
                shutil.copyfile(dump, partial)
                for suffix in ("-wal", "-shm"):
                    Path(str(target) + suffix).unlink(missing_ok=True)
                os.replace(partial, target)
            restored_keys = []
            for name in meta.get("keys", []):
                path = Path(settings.TOKEN_KEY_FILE) if name == "token_key.pem" else Path(settings.DATA_DIR) / name
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / "keys" / name, path)
                os.chmod(path, 0o600)
                restored_keys.append(name)
            from msr.storage import get_storage

            files, size = import_blobs(get_storage(), source / "blobs")
        call_command("migrate", interactive=False, verbosity=0)
        self.stdout.write(f"restored from {source}: database, keys {', '.join(restored_keys) or 'none'}, "
                          f"{files} blob file(s), {size} bytes; migrations applied")
