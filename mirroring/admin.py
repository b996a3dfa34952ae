"""Django admin for policies (one page per kind) and jobs (read-only: jobs are written by
the workers). Secrets are neither shown nor editable here; use the API or the console."""

from django.contrib import admin

from mirroring.models import Job, PollMirroringPolicy, PromotionPolicy, PushMirroringPolicy


class _PolicyAdmin(admin.ModelAdmin):
    kind = ""
    list_display = ["id", "repository", "enabled", "created_by", "created_at"]
    list_filter = ["enabled"]
    search_fields = ["repository__name", "repository__namespace__name"]
    exclude = ["kind", "secret_encrypted", "secret_is_token"]
    readonly_fields = ["created_by", "created_at", "updated_at"]
    raw_id_fields = ["repository"]

    def get_queryset(self, request):
        return super().get_queryset(request).filter(kind=self.kind).select_related("repository__namespace",
                                                                                    "created_by")

    def save_model(self, request, obj, form, change):
        obj.kind = self.kind
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)


@admin.register(PromotionPolicy)
class PromotionPolicyAdmin(_PolicyAdmin):
    kind = PromotionPolicy.PROMOTION
    list_display = _PolicyAdmin.list_display[:2] + ["target_repository", "tag_template"] + _PolicyAdmin.list_display[2:]
    exclude = _PolicyAdmin.exclude + ["remote_host", "remote_repository", "username", "remote_ca",
                                      "skip_tls_verify", "interval", "last_polled_at"]


@admin.register(PushMirroringPolicy)
class PushMirroringPolicyAdmin(_PolicyAdmin):
    kind = PushMirroringPolicy.PUSH_MIRROR
    list_display = _PolicyAdmin.list_display[:2] + ["remote_host", "remote_repository"] + _PolicyAdmin.list_display[2:]
    exclude = _PolicyAdmin.exclude + ["target_repository", "interval", "last_polled_at"]


@admin.register(PollMirroringPolicy)
class PollMirroringPolicyAdmin(_PolicyAdmin):
    kind = PollMirroringPolicy.POLL_MIRROR
    list_display = _PolicyAdmin.list_display[:2] + ["remote_host", "remote_repository", "interval"] + \
        _PolicyAdmin.list_display[2:]
    exclude = _PolicyAdmin.exclude + ["target_repository", "tag_template"]


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["id", "action", "repository", "tag", "status", "attempts", "bytes_done", "bytes_total",
                    "created_at", "finished_at"]
    list_filter = ["action", "status"]
    search_fields = ["repository", "tag", "digest"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
