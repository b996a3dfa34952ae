"""`msr manage reencrypt`: after adding a new key in front of MSR_ENCRYPTION_KEY
("new,old"), re-encrypt every stored secret with it, so that the old key can be dropped.
Row by row, each in its own transaction with the row locked; a secret no key can read is
reported (and the command fails) without touching the others."""

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from msr.crypto import encrypted_fields, rotate


class Command(BaseCommand):
    help = "Re-encrypt stored secrets (webhook keys, remote registry passwords) with the newest encryption key."

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="check every secret decrypts; change nothing")

    def handle(self, dry_run, **options):
        done, unreadable = 0, []
        for label, field in encrypted_fields():
            model = apps.get_model(label)
            for pk in model.objects.exclude(**{field: ""}).values_list("pk", flat=True):
                with transaction.atomic():
                    row = model.objects.select_for_update().filter(pk=pk).first()
                    if row is None:
                        continue
                    try:
                        rotated = rotate(getattr(row, field))
                    except ValueError:
                        unreadable.append(f"{label} {pk}")
                        continue
                    if not dry_run:
                        model.objects.filter(pk=pk).update(**{field: rotated})
                    done += 1
        verb = "readable" if dry_run else "re-encrypted with the newest key"
        self.stdout.write(f"{done} secret(s) {verb}")
        if unreadable:
            raise CommandError(f"{len(unreadable)} secret(s) no key can decrypt: {', '.join(unreadable)}; "
                               "add the key they were written with to MSR_ENCRYPTION_KEY")
