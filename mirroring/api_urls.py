"""/api/v0/ routes of promotion and mirroring (included by msr/api/urls.py before the
core's repository routes, whose repository name would otherwise take the suffix)."""

from django.urls import path, re_path

from mirroring import api

NS = r"(?P<namespace>[^/]+)"
REPO = r"(?P<repository>.+?)"

urlpatterns = [
    re_path(rf"^repositories/{NS}/{REPO}/promotionPolicies$", api.PromotionPolicyList.as_view()),
    re_path(rf"^repositories/{NS}/{REPO}/promotionPolicies/(?P<policy_id>[0-9]+)$",
            api.PromotionPolicyDetail.as_view()),
    re_path(rf"^repositories/{NS}/{REPO}/pushMirroringPolicies$", api.PushMirroringPolicyList.as_view()),
    re_path(rf"^repositories/{NS}/{REPO}/pushMirroringPolicies/(?P<policy_id>[0-9]+)$",
            api.PushMirroringPolicyDetail.as_view()),
    re_path(rf"^repositories/{NS}/{REPO}/pollMirroringPolicies$", api.PollMirroringPolicyList.as_view()),
    re_path(rf"^repositories/{NS}/{REPO}/pollMirroringPolicies/(?P<policy_id>[0-9]+)$",
            api.PollMirroringPolicyDetail.as_view()),
    re_path(rf"^repositories/{NS}/{REPO}/incomingPolicies$", api.IncomingPolicyList.as_view()),
    re_path(rf"^repositories/{NS}/{REPO}/incomingPolicies/(?P<policy_id>[0-9]+)$",
            api.IncomingPolicyDetail.as_view()),
    path("jobs", api.JobList.as_view()),
    path("jobs/<int:job_id>", api.JobDetail.as_view()),
    path("jobs/<int:job_id>/cancel", api.JobCancel.as_view()),
]
