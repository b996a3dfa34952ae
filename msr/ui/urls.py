from django.contrib.auth.decorators import login_required
from django.urls import path, re_path

from msr.ui import pruning, views

app_name = "ui"

REPO = r"(?P<namespace>[^/]+)/(?P<repository>.+?)"

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", views.SignInView.as_view(), name="login"),
    path("logout/", views.SignOutView.as_view(), name="logout"),
    path("repositories/", views.repositories, name="repositories"),
    path("repositories/new/", views.new_repository, name="new-repository"),
    re_path(rf"^repositories/{REPO}/tags/(?P<tag>[^/]+)/delete/$", views.delete_tag, name="delete-tag"),
    re_path(rf"^repositories/{REPO}/access/$", views.repository_access, name="repository-access"),
    re_path(rf"^repositories/{REPO}/tag-rules/$", views.repository_tag_rules, name="repository-tag-rules"),
    re_path(rf"^repositories/{REPO}/pruning/$", pruning.add_policy, name="repository-pruning"),
    re_path(rf"^repositories/{REPO}/pruning/(?P<policy_id>[0-9]+)/edit/$", pruning.edit_policy,
            name="repository-pruning-edit"),
    re_path(rf"^repositories/{REPO}/pruning/(?P<policy_id>[0-9]+)/(?P<action>preview|dry-run|run|enable|disable|delete)/$",
            pruning.policy_action, name="repository-pruning-policy"),
    re_path(rf"^repositories/{REPO}/$", views.repository, name="repository"),
    path("orgs/", views.organizations, name="organizations"),
    path("orgs/<str:org>/", views.organization, name="organization"),
    path("orgs/<str:org>/<str:action>/", views.organization_action, name="organization-action"),
    path("tokens/", views.tokens, name="tokens"),
    path("tokens/<int:token_id>/revoke/", views.revoke_token, name="revoke-token"),
    path("settings/", views.profile, name="profile"),
    path("settings/password/", login_required(views.ChangePasswordView.as_view()), name="password"),
    path("settings/sign-ins/", views.sign_ins, name="sign-ins"),
    path("settings/sign-ins/<str:kind>/<str:item>/end/", views.end_sign_in, name="end-sign-in"),
    path("console/", views.console, name="console"),
    path("console/read-only/", views.read_only, name="read-only"),
    path("console/directory-syncs/", views.directory_sync_now, name="directory-sync-now"),
    path("console/directory-syncs/<int:sync_id>/", views.directory_sync, name="directory-sync"),
]
