"""/api/v0/ routes of content caches (system admins, but the pulls a node reports; included by
msr/project/urls.py)."""

from django.urls import path

from caches import api

urlpatterns = [
    path("content_caches", api.ContentCacheList.as_view()),
    path("content_caches/pulls", api.RegionalPulls.as_view()),
    path("content_caches/<int:pk>", api.ContentCacheDetail.as_view()),
    path("content_caches/<int:pk>/metrics", api.ContentCacheMetrics.as_view()),
    path("content_caches/<int:pk>/purge", api.ContentCachePurge.as_view()),
    path("content_caches/<int:pk>/prewarm", api.ContentCachePrewarm.as_view()),
    path("cache_network_rules", api.NetworkRuleList.as_view()),
    path("cache_network_rules/<int:pk>", api.NetworkRuleDetail.as_view()),
    path("prewarm_policies", api.PrewarmPolicyList.as_view()),
    path("prewarm_policies/<int:pk>", api.PrewarmPolicyDetail.as_view()),
]
