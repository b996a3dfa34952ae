"""A user's choice of content cache, as a setting the caches app adds to the account
settings (API `/api/v0/accounts/{name}/settings` and the settings page) through the
core's registry (msr/extensions.py), so the core's settings code knows nothing of caches.

Three states (UserCacheChoice): not chosen (the network rules decide, else MSR), "MSR
itself" (no rule redirects this user) and a cache."""

from django import forms
from rest_framework import serializers

from caches.models import ContentCache, UserCacheChoice
from msr.extensions import AccountSetting

# Values of the page's select that no cache name can take (names are DNS-like labels).
NETWORK, NONE = "", ":none"
PAGE_CHOICES = [(NETWORK, "Not chosen: the cache for my network, if any"), (NONE, "MSR itself (no cache)")]


def _api_fields() -> dict:
    return {
        "contentCacheChoice": serializers.ChoiceField(
            choices=["network", "none", "cache"], required=False,
            help_text="users only. network: not chosen, the network rules pick a cache (else MSR); "
                      "none: MSR itself, whatever the network; cache: defaultContentCache"),
        "defaultContentCache": serializers.CharField(
            required=False, allow_null=True, allow_blank=True,
            help_text="a content cache's name (contentCacheChoice becomes cache); empty or null: MSR "
                      "itself (contentCacheChoice none)"),
    }


def _read(user) -> dict:
    kind, cache = UserCacheChoice.of(user) if user else (None, None)
    return {"contentCacheChoice": kind, "defaultContentCache": cache.name if cache else None}


def _write(user, data: dict) -> None:
    if "defaultContentCache" not in data and "contentCacheChoice" not in data:
        return
    wanted = data.get("defaultContentCache")
    kind = data.get("contentCacheChoice") or (UserCacheChoice.CACHE if wanted else UserCacheChoice.NONE)
    cache = None
    if kind == UserCacheChoice.CACHE:
        if not wanted:
            raise serializers.ValidationError({"defaultContentCache": [
                "contentCacheChoice cache needs the cache's name here."]})
        cache = ContentCache.objects.filter(name=wanted).first()
        if cache is None:
            raise serializers.ValidationError({"defaultContentCache": [f"No cache named {wanted!r}."]})
    elif wanted:
        raise serializers.ValidationError({"defaultContentCache": [
            f"A cache name goes with contentCacheChoice cache, not {kind}."]})
    UserCacheChoice.set(user, kind, cache)


def _form_fields(user) -> dict:
    caches = ContentCache.objects.filter(enabled=True).order_by("name")
    return {"default_content_cache": forms.ChoiceField(
        choices=PAGE_CHOICES + [(c.name, f"{c.name} ({c.region})" if c.region else c.name) for c in caches],
        required=False, label="Default content cache",
        help_text="Where your layer pulls are served from: the cache nearest to you. Not chosen, "
                  "the cache an administrator set for your network serves them (else MSR); "
                  "“MSR itself” always pulls from MSR. Regional caches appear here once an "
                  "administrator adds them.")}


def _initial(user) -> dict:
    kind, chosen = UserCacheChoice.of(user)
    return {"default_content_cache": chosen.name if chosen else NONE if kind == UserCacheChoice.NONE else NETWORK}


def _save(user, cleaned: dict) -> None:
    wanted = cleaned["default_content_cache"]
    if wanted == NETWORK:
        UserCacheChoice.set(user, UserCacheChoice.NETWORK)
    elif wanted == NONE:
        UserCacheChoice.set(user, UserCacheChoice.NONE)
    else:
        UserCacheChoice.set(user, UserCacheChoice.CACHE, ContentCache.objects.get(name=wanted))


CACHE_CHOICE = AccountSetting(
    name="content cache", users_only="Only users choose a cache.", api_fields=_api_fields, read=_read,
    write=_write, form_fields=_form_fields, initial=_initial, save=_save)
