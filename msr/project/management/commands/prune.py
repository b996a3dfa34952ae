import json

from django.conf import settings
from django.core.management.base import BaseCommand

from msr import retention


class Command(BaseCommand):
    help = ("Delete records past their retention: pull and audit events, finished jobs and "
            "webhook deliveries, cache metric samples (MSR_RETENTION_*_DAYS; 0 keeps a kind).")

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="count what would go; delete nothing")
        parser.add_argument("--json", dest="as_json", action="store_true", help="print the counts as JSON")

    def handle(self, dry_run, as_json, **options):
        counts = retention.prune(dry_run=dry_run)
        if as_json:
            self.stdout.write(json.dumps(counts))
            return
        verb = "would delete" if dry_run else "deleted"
        for kind, count in counts.items():
            days = settings.RETENTION_DAYS.get(kind)
            if days is None:
                kept = "expired"  # sessions and sign-in counters past their end
            else:
                kept = f"older than {days} days" if days else "kept forever (0 days)"
            self.stdout.write(f"  {kind:<20} {verb} {count:>9}   ({kept})")
