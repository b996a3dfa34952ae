import argparse
import json

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from msr import gc


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _seconds(value: str) -> int:
    try:
        seconds = int(value)
    except ValueError:
        seconds = -1
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a number of seconds, 0 or more")
    return seconds


class Command(BaseCommand):
    help = ("Delete blobs no manifest references, unused links, stale uploads and (with the "
            "'delete' policy) untagged manifests no tag reaches; nothing younger than the grace "
            "period. Safe while pushes go on.")

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="report what would go; delete nothing")
        parser.add_argument("--grace", type=_seconds, default=None, metavar="SECONDS",
                            help=f"keep what was pushed this recently (default MSR_GC_GRACE, "
                                 f"{settings.GC_GRACE_SECONDS})")
        parser.add_argument("--untagged", choices=gc.UNTAGGED_POLICIES, default=None,
                            help=f"untagged manifests: keep or delete (default MSR_GC_UNTAGGED, "
                                 f"{settings.GC_UNTAGGED})")
        parser.add_argument("--upload-age", type=_seconds, default=None, metavar="SECONDS",
                            help=f"remove uploads idle this long (default MSR_GC_UPLOAD_AGE, "
                                 f"{settings.GC_UPLOAD_AGE_SECONDS})")
        parser.add_argument("--json", dest="as_json", action="store_true", help="print the report as JSON")

    def handle(self, dry_run, grace, untagged, upload_age, as_json, **options):
        from msr.maintenance import Busy

        try:
            report = gc.collect(dry_run=dry_run, grace=grace, untagged=untagged, upload_age=upload_age)
        except Busy as e:
            raise CommandError(str(e)) from None
        if as_json:
            self.stdout.write(json.dumps(report.as_dict()))
            return
        verb = "would free" if dry_run else "freed"
        self.stdout.write(
            f"Garbage collection{' (dry run: nothing deleted)' if dry_run else ''}: grace "
            f"{report.grace_seconds} s, untagged manifests: {report.untagged}")
        self.stdout.write(f"  manifests {report.manifests:>8}  {_size(report.manifest_bytes)} in the database")
        self.stdout.write(f"  links     {report.links:>8}")
        self.stdout.write(f"  blobs     {report.blobs:>8}  {_size(report.blob_bytes)}")
        self.stdout.write(f"  uploads   {report.uploads:>8}  {_size(report.upload_bytes)}")
        if report.spared:
            self.stdout.write(f"  spared    {report.spared:>8}  (used by a push during the run)")
        self.stdout.write(f"{verb} {_size(report.bytes_freed)} of storage in {report.seconds:.1f} s")

