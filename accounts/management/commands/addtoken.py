from django.core.management.base import BaseCommand, CommandError

from accounts.models import AccessToken, User


class Command(BaseCommand):
    help = "Create a personal access token for a user and print its secret (shown once)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="cli")

    def handle(self, username, name, **options):
        try:
            user = User.objects.get(username=username)
        except User.DoesNotExist:
            raise CommandError(f"no user {username}") from None
        _, secret = AccessToken.issue(user, AccessToken.PERSONAL, name)
        self.stdout.write(secret)
