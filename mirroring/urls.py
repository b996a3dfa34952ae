"""Web console pages of promotion and mirroring (included before msr.ui.urls, whose
repository page would otherwise take …/policies/ as part of a repository name)."""

from django.urls import path, re_path

from mirroring import views

app_name = "mirroring"

REPO = r"(?P<namespace>[^/]+)/(?P<repository>.+?)"

urlpatterns = [
    re_path(rf"^repositories/{REPO}/policies/$", views.policies, name="policies"),
    re_path(rf"^repositories/{REPO}/policies/(?P<policy_id>[0-9]+)/(?P<action>run|enable|disable|delete)/$",
            views.policy_action, name="policy-action"),
    re_path(rf"^repositories/{REPO}/incoming/(?P<policy_id>[0-9]+)/(?P<action>enable|disable)/$",
            views.incoming_action, name="incoming-action"),
    path("console/jobs/", views.jobs, name="jobs"),
    path("console/jobs/<int:job_id>/", views.job, name="job"),
    path("console/jobs/<int:job_id>/progress/", views.job_progress, name="job-progress"),
    path("console/jobs/<int:job_id>/cancel/", views.job_cancel, name="job-cancel"),
]
