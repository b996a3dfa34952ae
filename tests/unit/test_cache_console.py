"""The caches console tells an admin how to point each client at a cache as its region's
registry endpoint (caches/views.py, templates/caches/console.html): containerd's
hosts.toml, podman's and CRI-O's registries.conf, and a plain client's commands, with the
cache's address and MSR's. Rendered in-process for a system admin, on a rolled-back
database."""

import html
import re
import uuid

import pytest
from django.test import Client, override_settings


@pytest.fixture
def console(db):
    """A system admin's client, and a cache behind TLS and one on plain HTTP."""
    from accounts.services import create_user
    from caches.models import ContentCache

    suffix = uuid.uuid4().hex[:8]
    client = Client()
    client.force_login(create_user(f"root-{suffix}", is_admin=True))
    secure = ContentCache.objects.create(name=f"eu-{suffix}", region="Europe", url="https://cache-eu.example.com")
    plain = ContentCache.objects.create(name=f"lab-{suffix}", region="Lab", url="http://10.20.0.5:5100/")
    return client, secure, plain


def setup_of(page: str, cache) -> str:
    """The text of one cache's endpoint setup on the page (its details element)."""
    for block in re.findall(r'<details class="endpoint".*?</details>', page, re.S):
        if f"<summary>{cache.name}:" in block:
            return html.unescape(re.sub(r"<[^>]+>", "", block))
    raise AssertionError(f"no endpoint setup for {cache.name} on the page")


@override_settings(PUBLIC_URL="https://registry.example.com")
def test_each_cache_shows_its_client_setups_with_its_url_and_msrs_host(console):
    client, secure, _ = console
    response = client.get("/console/caches/")
    assert response.status_code == 200
    setup = setup_of(response.content.decode(), secure)
    assert "/etc/containerd/certs.d/registry.example.com/hosts.toml" in setup
    assert 'server = "https://registry.example.com"\n\n[host."https://cache-eu.example.com"]\n' \
           '  capabilities = ["pull", "resolve"]' in setup
    assert '[[registry]]\nlocation = "registry.example.com"\n\n' \
           '[[registry.mirror]]\nlocation = "cache-eu.example.com"' in setup
    assert "docker login cache-eu.example.com\ndocker pull cache-eu.example.com/NAMESPACE/REPOSITORY:TAG" in setup


@override_settings(PUBLIC_URL="https://registry.example.com")
def test_only_a_plain_http_cache_is_marked_insecure(console):
    client, secure, plain = console
    page = client.get("/console/caches/").content.decode()
    assert "insecure = true" not in setup_of(page, secure)
    plain_setup = setup_of(page, plain)
    assert '[[registry.mirror]]\nlocation = "10.20.0.5:5100"\ninsecure = true' in plain_setup
    assert '[[registry]]\nlocation = "registry.example.com"\n\n' in plain_setup  # MSR itself is https
    assert '[host."http://10.20.0.5:5100"]' in plain_setup


@override_settings(PUBLIC_URL="")
def test_without_a_public_url_msrs_address_is_the_one_the_admin_used(console):
    client, secure, _ = console
    page = client.get("/console/caches/", HTTP_HOST="msr.internal:5000").content.decode()
    setup = setup_of(page, secure)
    assert 'server = "http://msr.internal:5000"' in setup
    assert "/etc/containerd/certs.d/msr.internal:5000/hosts.toml" in setup
    assert '[[registry]]\nlocation = "msr.internal:5000"\ninsecure = true' in setup
