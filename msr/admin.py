from django.contrib import admin
from guardian.admin import GuardedModelAdmin

from msr.models import Manifest, Repository, Tag


@admin.register(Repository)
class RepositoryAdmin(GuardedModelAdmin):
    list_display = ("__str__", "visibility", "immutable_tags", "tag_limit", "created_at")
    list_filter = ("visibility", "immutable_tags")
    search_fields = ("name", "namespace__name")


@admin.register(Tag)
class TagAdmin(admin.ModelAdmin):
    list_display = ("__str__", "manifest", "updated_at")
    search_fields = ("name", "repository__name")


@admin.register(Manifest)
class ManifestAdmin(admin.ModelAdmin):
    list_display = ("__str__", "media_type", "size", "created_at")
    exclude = ("content",)
