from django.core.management.base import BaseCommand, CommandError

from accounts.models import Namespace, Team, User
from accounts.services import AccountError, add_team_member, create_team


class Command(BaseCommand):
    help = "Create a team in an organization, or add members to it."

    def add_arguments(self, parser):
        parser.add_argument("organization")
        parser.add_argument("team")
        parser.add_argument("--member", action="append", default=[], help="username (repeatable)")

    def handle(self, organization, team, member, **options):
        try:
            org = Namespace.objects.get(name=organization, is_org=True)
            found = Team.objects.filter(organization=org, name=team).first()
            if found is None:
                found = create_team(org, team)
                self.stdout.write(f"created team {organization}/{team}")
            for username in member:
                add_team_member(found, User.objects.get(username=username))
        except (AccountError, Namespace.DoesNotExist, User.DoesNotExist) as e:
            raise CommandError(str(e)) from e
