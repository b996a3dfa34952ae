"""/api/v0/ routes of promotion and mirroring (included by msr/api/urls.py before the
core's repository routes, whose repository name would otherwise take the suffix)."""

from django.urls import path, re_path

from mirroring import api

NS = r"(?P<namespace>[^/]+)"
REPO = r"(?P<repository>.+?)"

# (the suffix of the collection, its list view, its detail view)
POLICIES = [
    ("promotionPolicies", api.PromotionPolicyList, api.PromotionPolicyDetail),
    ("pushMirroringPolicies", api.PushMirroringPolicyList, api.PushMirroringPolicyDetail),
    ("pollMirroringPolicies", api.PollMirroringPolicyList, api.PollMirroringPolicyDetail),
    ("incomingPolicies", api.IncomingPolicyList, api.IncomingPolicyDetail),
]

urlpatterns = [
    *(route for suffix, listing, detail in POLICIES for route in (
        re_path(rf"^repositories/{NS}/{REPO}/{suffix}$", listing.as_view()),
        re_path(rf"^repositories/{NS}/{REPO}/{suffix}/(?P<policy_id>[0-9]+)$", detail.as_view()),
    )),
    path("jobs", api.JobList.as_view()),
    path("jobs/<int:job_id>", api.JobDetail.as_view()),
    path("jobs/<int:job_id>/cancel", api.JobCancel.as_view()),
]
