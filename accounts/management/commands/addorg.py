from django.core.management.base import BaseCommand, CommandError

from accounts.models import User
from accounts.services import AccountError, add_member, create_organization


class Command(BaseCommand):
    help = "Create an organization, or add members and owners to one."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--owner", action="append", default=[], help="username (repeatable)")
        parser.add_argument("--member", action="append", default=[], help="username (repeatable)")

    def handle(self, name, owner, member, **options):
        from accounts.models import Namespace

        org = Namespace.objects.filter(name=name, is_org=True).first()
        try:
            if org is None:
                org = create_organization(name)
                self.stdout.write(f"created organization {name}")
            for username, is_owner in [(u, True) for u in owner] + [(u, False) for u in member]:
                add_member(org, User.objects.get(username=username), is_owner=is_owner)
        except (AccountError, User.DoesNotExist) as e:
            raise CommandError(str(e)) from e
