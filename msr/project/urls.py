from django.contrib import admin
from django.urls import include, path

from msr import auth_views, sso
from msr.project import health, metrics

urlpatterns = [
    path("auth/token", auth_views.token, name="token"),
    path("auth/jwks.json", auth_views.jwks_view, name="jwks"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="metrics"),
    # Single sign-on (msr/sso.py); the provider must know the callback's exact URL.
    path("oidc/login/", sso.start, name="oidc-login"),
    path("oidc/callback/", sso.callback, name="oidc-callback"),
    path("admin/", admin.site.urls),
    # Each app owns its API routes and pages. The apps' API routes come before the core's:
    # mirroring's policies end in a suffix that the core's repository route would take as
    # part of a repository name, and the core's catch-all answers unknown paths.
    path("api/v0/", include("mirroring.api_urls")),
    path("api/v0/", include("caches.api_urls")),
    path("api/v0/", include("msr.api.urls")),
    path("", include("msr.registry.urls")),
    path("", include("mirroring.urls")),
    path("", include("caches.urls")),
    path("", include("msr.ui.urls")),
]

handler403 = "msr.ui.views.error_403"
handler404 = "msr.ui.views.error_404"
