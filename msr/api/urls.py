"""The core's routes of /api/v0/ (the apps' own come first: msr/project/urls.py). Repository
names may hold slashes, so repository routes are matched by their fixed suffix (the most
specific first); anything unmatched answers a JSON 404 here."""

from django.http import JsonResponse
from django.urls import path, re_path
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from msr.api import accounts, events, meta, pruning, repositories, tokens, webhooks


@csrf_exempt
def not_found(request, *args, **kwargs):
    """Unknown API paths answer JSON, like every other API error."""
    return JsonResponse({"detail": "Not found."}, status=404)


NS = r"(?P<namespace>[^/]+)"
REPO = r"(?P<repository>.+?)"
# What follows /repositories/<namespace>/<repository>, most specific first.
AFTER_REPOSITORY = {
    "/teamAccess": repositories.RepositoryTeamAccessList,
    "/teamAccess/(?P<team>[^/]+)": repositories.RepositoryTeamAccess,
    "/pruningPolicies": pruning.PruningPolicyList,
    "/pruningPolicies/test": pruning.PruningPolicyTest,
    r"/pruningPolicies/(?P<policy_id>\d+)": pruning.PruningPolicyDetail,
    r"/pruningPolicies/(?P<policy_id>\d+)/run": pruning.PruningPolicyRun,
    "/pruningRuns": pruning.PruningRunList,
    r"/pruningRuns/(?P<run_id>\d+)": pruning.PruningRunDetail,
    "/tags": repositories.TagList,
    "/tags/(?P<tag>[^/]+)": repositories.TagDetail,
    "": repositories.RepositoryDetail,
}

urlpatterns = [
    path("schema", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view loads its start-up script from a URL, so the page needs no inline script (CSP).
    path("docs", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
    path("accounts", accounts.AccountList.as_view()),
    path("accounts/<str:name>", accounts.AccountDetail.as_view()),
    path("accounts/<str:name>/settings", accounts.AccountSettings.as_view()),
    path("accounts/<str:org>/members", accounts.OrganizationMembers.as_view()),
    path("accounts/<str:org>/members/<str:member>", accounts.OrganizationMember.as_view()),
    path("accounts/<str:org>/teams", accounts.TeamList.as_view()),
    path("accounts/<str:org>/teams/<str:team>", accounts.TeamDetail.as_view()),
    path("accounts/<str:org>/teams/<str:team>/members", accounts.TeamMembers.as_view()),
    path("accounts/<str:org>/teams/<str:team>/members/<str:member>", accounts.TeamMember.as_view()),
    path("directory/syncs", accounts.DirectorySyncList.as_view()),
    path("directory/syncs/<int:sync_id>", accounts.DirectorySyncDetail.as_view()),
    path("repositories", repositories.RepositoryList.as_view()),
    re_path(rf"^repositories/{NS}$", repositories.NamespaceRepositories.as_view()),
    *(re_path(rf"^repositories/{NS}/{REPO}{suffix}$", view.as_view()) for suffix, view in AFTER_REPOSITORY.items()),
    re_path(rf"^repositoryNamespaces/{NS}/teamAccess$", repositories.NamespaceTeamAccessList.as_view()),
    re_path(rf"^repositoryNamespaces/{NS}/teamAccess/(?P<team>[^/]+)$", repositories.NamespaceTeamAccess.as_view()),
    path("tokens", tokens.TokenList.as_view()),
    path("tokens/<int:token_id>", tokens.TokenDetail.as_view()),
    path("refreshTokens", tokens.RefreshTokenList.as_view()),
    path("refreshTokens/<int:token_id>", tokens.RefreshTokenDetail.as_view()),
    path("sessions", tokens.SessionList.as_view()),
    path("sessions/<str:session_id>", tokens.SessionDetail.as_view()),
    path("webhooks", webhooks.WebhookList.as_view()),
    path("webhooks/<int:webhook_id>", webhooks.WebhookDetail.as_view()),
    path("webhooks/<int:webhook_id>/deliveries", webhooks.WebhookDeliveries.as_view()),
    path("webhooks/<int:webhook_id>/test", webhooks.WebhookTest.as_view()),
    path("events", events.EventList.as_view()),
    path("meta/settings", meta.MetaSettings.as_view()),
    re_path(r"^", not_found),
]
