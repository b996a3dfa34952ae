"""Routes of the OCI distribution API. The repository name may hold slashes, so routes
are matched by their fixed suffix, most specific first; names are validated by the view
(NAME_INVALID) rather than by the route (which would answer a bare 404)."""

from django.urls import re_path

from msr.registry import views

NAME = r"(?P<name>.+?)"
ID = r"[^/]+"

# What follows /v2/<name>/, most specific first.
AFTER_NAME = {
    rf"manifests/(?P<reference>{ID})": views.ManifestView,
    r"blobs/uploads/?": views.UploadStartView,
    rf"blobs/uploads/(?P<upload_id>{ID})": views.UploadView,
    rf"blobs/(?P<digest>{ID})": views.BlobView,
    r"tags/list": views.TagsListView,
    rf"referrers/(?P<digest>{ID})": views.ReferrersView,
}

urlpatterns = [
    re_path(r"^v2/?$", views.BaseView.as_view()),
    re_path(r"^v2/_catalog$", views.CatalogView.as_view()),
    *(re_path(rf"^v2/{NAME}/{suffix}$", view.as_view()) for suffix, view in AFTER_NAME.items()),
    re_path(r"^v2/", views.NotFoundView.as_view()),
]
