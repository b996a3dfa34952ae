"""Routes of the OCI distribution API. The repository name may hold slashes, so routes
are matched by their fixed suffix, most specific first; names are validated by the view
(NAME_INVALID) rather than by the route (which would answer a bare 404)."""

from django.urls import re_path

from msr.registry import views

NAME = r"(?P<name>.+?)"
REFERENCE = r"(?P<reference>[^/]+)"
DIGEST = r"(?P<digest>[^/]+)"
UPLOAD_ID = r"(?P<upload_id>[^/]+)"

urlpatterns = [
    re_path(r"^v2/?$", views.BaseView.as_view()),
    re_path(r"^v2/_catalog$", views.CatalogView.as_view()),
    re_path(rf"^v2/{NAME}/manifests/{REFERENCE}$", views.ManifestView.as_view()),
    re_path(rf"^v2/{NAME}/blobs/uploads/?$", views.UploadStartView.as_view()),
    re_path(rf"^v2/{NAME}/blobs/uploads/{UPLOAD_ID}$", views.UploadView.as_view()),
    re_path(rf"^v2/{NAME}/blobs/{DIGEST}$", views.BlobView.as_view()),
    re_path(rf"^v2/{NAME}/tags/list$", views.TagsListView.as_view()),
    re_path(rf"^v2/{NAME}/referrers/{DIGEST}$", views.ReferrersView.as_view()),
    re_path(r"^v2/", views.NotFoundView.as_view()),
]
