from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from accounts.models import TOKEN_SCOPES, AccessToken, User


class Command(BaseCommand):
    help = "Create a personal access token for a user and print its secret (shown once)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="cli")
        parser.add_argument("--scope", action="append", choices=TOKEN_SCOPES, dest="scopes",
                            help="what the token may do (repeat; default: every scope)")
        parser.add_argument("--expires-in-days", type=int, help="default: never")

    def handle(self, username, name, scopes=None, expires_in_days=None, **options):
        try:
            user = User.objects.get(username=username)
        except User.DoesNotExist:
            raise CommandError(f"no user {username}") from None
        expires = timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None
        _, secret = AccessToken.issue(user, AccessToken.PERSONAL, name, expires, scopes=scopes or TOKEN_SCOPES)
        self.stdout.write(secret)
