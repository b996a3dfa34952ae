from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin

from accounts.models import AccessToken, Namespace, OrganizationMembership, Team, User


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    fieldsets = BaseUserAdmin.fieldsets + (("MSR", {"fields": ("full_name", "source", "external_id")}),)
    readonly_fields = ("source", "external_id")
    list_display = (*BaseUserAdmin.list_display, "source")
    list_filter = (*BaseUserAdmin.list_filter, "source")


class MembershipInline(admin.TabularInline):
    model = OrganizationMembership
    extra = 0


@admin.register(Namespace)
class NamespaceAdmin(admin.ModelAdmin):
    list_display = ("name", "is_org", "user", "created_at")
    list_filter = ("is_org",)
    search_fields = ("name",)
    inlines = [MembershipInline]


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ("name", "organization", "sync_kind", "sync_value", "synced_at", "sync_result")
    list_filter = ("sync_kind",)
    search_fields = ("name", "organization__name")
    readonly_fields = ("synced_at", "sync_result")


@admin.register(AccessToken)
class AccessTokenAdmin(admin.ModelAdmin):
    list_display = ("user", "kind", "name", "hint", "created_at", "last_used_at", "revoked_at")
    list_filter = ("kind",)
    readonly_fields = ("token_hash", "hint")
