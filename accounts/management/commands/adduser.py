from django.core.management.base import BaseCommand, CommandError

from django.core.exceptions import ValidationError

from accounts.services import AccountError, create_user


class Command(BaseCommand):
    help = "Create a user (and the user's namespace)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--password", help="default: the MSR_NEW_USER_PASSWORD environment variable")
        parser.add_argument("--admin", action="store_true", help="make the user a system admin")
        parser.add_argument("--full-name", default="")
        parser.add_argument("--if-missing", action="store_true",
                            help="do nothing if the user exists (for deployment scripts run at every start)")

    def handle(self, username, password, admin, full_name, if_missing=False, **options):
        import os

        from accounts.models import User

        if if_missing and User.objects.filter(username=username).exists():
            self.stdout.write(f"user {username} exists")
            return
        from django.contrib.auth.password_validation import validate_password

        password = password or os.environ.get("MSR_NEW_USER_PASSWORD")
        try:
            if password:
                validate_password(password, User(username=username, full_name=full_name))
            create_user(username, password, is_admin=admin, full_name=full_name)
        except ValidationError as e:
            raise CommandError(" ".join(e.messages)) from e
        except AccountError as e:
            raise CommandError(str(e)) from e
        self.stdout.write(f"created user {username}")
