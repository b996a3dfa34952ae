"""Pages of the caches app (included by the project's URLconf)."""

from django.urls import path

from caches import views

app_name = "caches"

urlpatterns = [
    path("console/caches/", views.console_caches, name="console"),
]
