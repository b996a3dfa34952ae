from django.core.management.base import BaseCommand, CommandError

from accounts.models import Namespace, Team
from accounts.permissions import ACCESS_LEVELS
from accounts.services import set_team_access
from msr.services import ensure_repository


class Command(BaseCommand):
    help = ("Grant a team an access level on a repository (org/repo) or on every repository "
            "of its organization (org); 'none' removes the grant.")

    def add_arguments(self, parser):
        parser.add_argument("team", help="org/team")
        parser.add_argument("target", help="org/repository, or org for the whole organization")
        parser.add_argument("level", choices=[*ACCESS_LEVELS, "none"])

    def handle(self, team, target, level, **options):
        org_name, _, team_name = team.partition("/")
        try:
            found = Team.objects.get(organization__name=org_name, name=team_name)
        except Team.DoesNotExist:
            raise CommandError(f"no team {team}") from None
        if "/" in target:
            if not target.startswith(f"{org_name}/"):
                raise CommandError("a team only gets access to its organization's repositories")
            obj = ensure_repository(target)
        else:
            obj = Namespace.objects.get(name=target, is_org=True)
        set_team_access(found, obj, None if level == "none" else level)
        self.stdout.write(f"{team} has {level} on {target}")
