"""The web UI in a real browser: Debian's Chromium driven by Playwright.

Screenshots of each main page are written to the folder printed at the end of the run
(MSR_SCREENSHOT_DIR, or a temporary folder), for a person to look at."""

import requests

from tests.client import Registry
from tests.fixtures.ui import browser, check_accessibility_basics, password_sign_in, shot, sign_in  # noqa: F401  (fixtures)
from tests.images import make_image_layout
from tests.processes import need, run

def _push(msr, personas, name, tmp_path):
    need("skopeo")
    source = tmp_path / name.replace("/", "_")
    digest = make_image_layout(source, layer_sizes=(10_000, 20_000))
    run(["skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", f"alice:{personas['alice'].token}",
         f"oci:{source}:v1", f"docker://{msr.removeprefix('http://')}/{name}:v1"])
    return digest


def test_sign_in_and_browse_to_a_repository_pushed_with_skopeo(sign_in, msr, personas, unique, tmp_path):
    name = f"acme/ui-{unique}"
    digest = _push(msr, personas, name, tmp_path)
    login = sign_in(None)
    login.goto("/login/")
    check_accessibility_basics(login)
    shot(login, "01-sign-in")
    page = sign_in("alice")
    page.get_by_label("Search").fill(f"ui-{unique}")
    page.get_by_role("button", name="Filter").click()
    check_accessibility_basics(page)
    shot(page, "02-repositories")
    page.get_by_role("link", name=name).click()
    page.wait_for_url(f"**/repositories/{name}/")
    assert page.get_by_role("heading", level=1).inner_text().startswith(name)
    row = page.get_by_role("row").filter(has_text="v1")
    assert digest[:19] in row.inner_text()
    assert "linux/amd64" in row.inner_text() and "alice" in row.inner_text()
    assert f"docker pull {msr.removeprefix('http://')}/{name}:v1" in page.locator("pre.command").first.inner_text()
    check_accessibility_basics(page)
    shot(page, "03-repository")


def test_a_bad_password_shows_an_error_next_to_the_form(sign_in):
    page = sign_in(None)
    page.goto("/login/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("wrong")
    page.get_by_role("button", name="Sign in").click()
    assert "correct username and password" in page.get_by_role("alert").first.inner_text()


def test_an_owner_grants_a_team_read_only_and_its_member_then_sees_the_repository(sign_in, msr, personas, unique, tmp_path):
    name = f"acme/granted-{unique}"
    _push(msr, personas, name, tmp_path)
    bob = sign_in("bob")
    bob.goto(f"/repositories/?q=granted-{unique}")
    assert bob.get_by_role("link", name=name).count() == 0
    assert bob.goto(f"/repositories/{name}/").status == 404

    alice = sign_in("alice")
    alice.goto("/orgs/acme/")
    check_accessibility_basics(alice)
    form = alice.locator("form", has=alice.get_by_role("heading", name="Grant a team access to a repository"))
    form.get_by_label("Team").select_option("readers")
    form.get_by_label("Repository").select_option(f"granted-{unique}")
    form.get_by_label("Access level").select_option("read-only")
    form.get_by_role("button", name="Grant access").click()
    assert f"Team readers now has read-only access to {name}" in alice.get_by_role("status").inner_text()
    shot(alice, "04-organization")

    bob.goto(f"/repositories/?q=granted-{unique}")
    bob.get_by_role("link", name=name).click()
    assert bob.get_by_role("heading", level=1).inner_text().startswith(name)
    assert bob.get_by_role("link", name="Delete tag v1").count() == 0  # read-only


def test_create_and_revoke_a_token_and_the_revoked_token_no_longer_logs_in(sign_in, msr, unique):
    page = sign_in("carol")
    page.goto("/tokens/")
    page.get_by_label("Token name").fill(f"laptop-{unique}")
    page.get_by_role("button", name="Create token").click()
    secret = page.locator("#new-token").inner_text().strip()
    assert secret.startswith("msrpat_")
    check_accessibility_basics(page)
    shot(page, "05-tokens")
    assert requests.get(f"{msr}/auth/token", auth=("carol", secret)).status_code == 200
    page.reload()
    assert page.locator("#new-token").count() == 0  # shown once
    page.get_by_role("button", name=f"Revoke token laptop-{unique}").click()
    assert "no longer works" in page.get_by_role("status").inner_text()
    assert requests.get(f"{msr}/auth/token", auth=("carol", secret)).status_code == 401
    page.get_by_role("button", name="Create token").click()  # empty name
    assert page.get_by_role("alert").first.inner_text() == "This field is required."


def test_a_user_without_access_gets_a_404_for_a_private_repository(sign_in):
    page = sign_in("carol")
    response = page.goto("/repositories/acme/private-app/")
    assert response.status == 404
    assert page.get_by_role("heading", level=1).inner_text() == "Not found"
    shot(page, "06-not-found")
    anonymous = sign_in(None)
    assert anonymous.goto("/repositories/acme/private-app/").status == 404
    assert anonymous.goto("/repositories/acme/public-app/").status == 200


def test_settings_console_and_delete_with_confirmation(sign_in, msr, personas, unique, tmp_path):
    name = f"acme/doomed-{unique}"
    _push(msr, personas, name, tmp_path)
    page = sign_in("alice")
    page.goto("/settings/")
    select = page.get_by_label("Default content cache")
    assert select.input_value() == ""  # not chosen: the network rules decide (else MSR)
    assert [o.inner_text() for o in select.locator("option").all()][:2] == [
        "Not chosen: the cache for my network, if any", "MSR itself (no cache)"]
    select.select_option(label="MSR itself (no cache)")
    page.get_by_role("button", name="Save settings").click()
    assert "Settings saved." in page.get_by_role("status").inner_text()
    from caches.models import UserCacheChoice

    assert UserCacheChoice.of(personas["alice"].user) == ("none", None)
    page.get_by_label("Default content cache").select_option(label="Not chosen: the cache for my network, if any")
    with page.expect_navigation():  # the saved page, before looking at it (not the one being left)
        page.get_by_role("button", name="Save settings").click()
    assert UserCacheChoice.of(personas["alice"].user) == ("network", None)
    check_accessibility_basics(page)
    shot(page, "07-settings")
    page.goto(f"/repositories/{name}/")
    page.get_by_role("link", name="Delete tag v1").click()
    check_accessibility_basics(page)
    page.get_by_role("button", name="Delete tag v1").click()
    assert "Deleted tag v1" in page.get_by_role("status").inner_text()
    assert "No tags yet" in page.content()
    assert sign_in("mel").goto("/console/").status == 403
    admin = sign_in("admin")
    admin.goto("/console/")
    assert admin.get_by_role("heading", name="Admin console").is_visible()
    check_accessibility_basics(admin)
    shot(admin, "08-console")


def test_keyboard_reaches_the_skip_link_navigation_and_forms(sign_in):
    page = sign_in("carol")
    page.goto("/tokens/")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    reached = []
    for _ in range(15):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.textContent || document.activeElement.name"))
    assert "Repositories" in reached and "Create token" in reached, reached


def test_the_basic_flows_work_without_javascript(browser, msr, personas):
    context = browser.new_context(base_url=msr, java_script_enabled=False)
    try:
        page = context.new_page()
        password_sign_in(page, "bob", "bob-password")
        page.get_by_label("Search").fill("private-app")
        page.get_by_label("Visibility").select_option("private")
        page.get_by_role("button", name="Filter").click()
        assert "visibility=private" in page.url
        page.get_by_role("link", name="acme/private-app").click()
        assert page.get_by_role("heading", level=1).inner_text().startswith("acme/private-app")
        page.get_by_role("button", name="Sign out").click()
        assert page.url.endswith("/login/")
    finally:
        context.close()


def test_console_shows_each_caches_health_hit_ratio_and_traffic(sign_in, unique):
    from datetime import timedelta

    from django.utils import timezone

    from caches.models import CacheMetrics, ContentCache

    cache = ContentCache.objects.create(name=f"ui{unique}", region="Antarctica", url="http://127.0.0.1:9",
                                        healthy=False, last_error="ConnectionError: refused")
    now = timezone.now()
    for i, (hits, misses, disk, upstream) in enumerate([(0, 2, 0, 2000), (3, 2, 3000, 2000), (9, 3, 9000, 3000)]):
        CacheMetrics.objects.create(cache=cache, at=now - timedelta(minutes=3 - i), hits=hits, misses=misses,
                                    bytes_from_disk=disk, bytes_from_upstream=upstream, disk_used=5000)
    page = sign_in("admin")
    page.goto("/console/")
    page.get_by_role("link", name="Content caches: health, hit ratio, traffic, pre-warming").click()
    row = page.get_by_role("row").filter(has_text=f"ui{unique}")
    text = row.inner_text()
    assert "failing" in text and "refused" in text and "75%" in text and "Antarctica" in text
    assert row.locator("svg polyline").count() == 1
    check_accessibility_basics(page)
    form = page.locator("form", has=page.get_by_role("heading", name="Pre-warm a cache"))
    form.get_by_label("Cache").select_option(f"ui{unique}")
    form.get_by_label("Repository").fill("acme/public-app")
    form.get_by_label("Tag").fill(f"missing-{unique}")
    form.get_by_role("button", name="Pre-warm").click()
    assert page.get_by_role("alert").first.inner_text() == "No such image in this repository."
    shot(page, "09-console-caches")
    cache.delete()


def test_console_says_why_a_cache_is_down_in_a_sentence_and_its_table_fits_the_page(sign_in, unique, msr, tmp_path,
                                                                                   artifacts_dir):
    from caches.models import ContentCache
    from caches.tasks import check_cache
    from tests.processes import start_cache

    process, url = start_cache(f"down{unique}", msr, tmp_path / "node", artifacts_dir / "logs", workers=1)
    process.stop()  # the node is down: its port refuses connections
    down = ContentCache.objects.create(name=f"down{unique}", region="Somewhere with a rather long region name", url=url)
    far = ContentCache.objects.create(name=f"far{unique}", region="Far away", healthy=False,
                                      url="http://" + "cache-node-" * 8 + "in.a.long.region.example.com:5100/prefix")
    try:
        assert check_cache(down) is False  # the health check, for real: nothing listens there
        down.refresh_from_db()
        page = sign_in("admin")
        page.set_viewport_size({"width": 1024, "height": 800})
        page.goto("/console/caches/")
        row = page.get_by_role("row").filter(has_text=f"down{unique}")
        assert f"Cannot reach the cache node at {url}: connection refused." in row.inner_text()
        # The raw error is there for whoever debugs it, folded away.
        details = row.locator("details")
        assert details.count() == 1 and not details.locator("code").is_visible()
        details.get_by_text("Error details").click()
        raw = details.locator("code").inner_text()
        assert raw.startswith("ConnectionError: ") and "Connection refused" in raw and raw == down.last_error_detail
        shot(page, "09b-console-caches-down-1024")
        for width in (1280, 1024):
            page.set_viewport_size({"width": width, "height": 800})
            frame = page.locator("main").bounding_box()
            table = page.locator("main table").bounding_box()
            assert frame["x"] <= table["x"] and table["x"] + table["width"] <= frame["x"] + frame["width"], (
                width, frame, table)
            # Long addresses and errors wrap: neither the table nor the page scrolls sideways.
            assert page.evaluate("() => [...document.querySelectorAll('main table')].every("
                                 "t => t.parentElement.scrollWidth <= t.parentElement.clientWidth)")
            assert page.evaluate("() => document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    finally:
        down.delete()
        far.delete()


def test_a_repository_admin_adds_a_pruning_policy_and_sees_its_dry_run(sign_in, msr, personas, unique):
    """The repository page's Pruning section in a browser: a policy from the form, its dry
    run listing what would go and what is protected, nothing deleted by it."""
    from msr.models import Repository

    name = f"acme/prune-{unique}"
    client = Registry(msr, "alice", personas["alice"].token)
    for tag in ("dev-1", "dev-2", "release-1"):
        assert client.push_image(name, tag, layers=(f"{tag}-{unique}".encode(),))[1].status_code == 201
    repository = Repository.objects.get(namespace__name="acme", name=f"prune-{unique}")
    repository.immutable_tag_patterns = ["dev-2"]
    repository.save()

    page = sign_in("alice")
    page.goto(f"/repositories/{name}/")
    page.get_by_text("New pruning policy").click()
    page.get_by_label("Rule 1: field").select_option("tag")
    page.get_by_label("Rule 1: operator").select_option("sw")
    page.get_by_label("Rule 1: values").fill("dev-")
    page.get_by_label("Run on the schedule").uncheck()
    page.get_by_role("button", name="Add pruning policy").click()
    policies = page.get_by_role("table", name="Pruning policies")
    policies.get_by_text("tag sw dev-").wait_for()
    assert "on demand only" in policies.inner_text()

    policies.get_by_role("button", name="Dry run").click()
    preview = page.get_by_role("status").filter(has_text="Dry run of policy")
    preview.wait_for()
    assert "1 tag(s) would be pruned: dev-1" in preview.inner_text(), preview.inner_text()
    assert "dev-2: immutable" in preview.inner_text(), preview.inner_text()
    check_accessibility_basics(page)
    shot(page, "pruning-dry-run")
    assert set(repository.tags.values_list("name", flat=True)) == {"dev-1", "dev-2", "release-1"}

    # Edit the policy in its own form, then put it on the schedule.
    policy = repository.pruning_policies.get()
    page.get_by_text(f"Edit policy {policy.pk}").click()
    edit = page.get_by_role("form", name=f"Edit policy {policy.pk}")
    assert edit.get_by_label("Rule 1: values").input_value() == "dev-"
    edit.get_by_label("Rule 1: values").fill("release-")
    shot(page, "pruning-edit")
    edit.get_by_role("button", name=f"Save policy {policy.pk}").click()
    policies.get_by_text("tag sw release-").wait_for()
    policies.get_by_role("button", name="Enable").click()
    policies.get_by_role("button", name="Disable").wait_for()
    assert "enabled" in policies.inner_text()
    policy.refresh_from_db()
    assert policy.enabled and policy.rules == [{"field": "tag", "operator": "sw", "values": ["release-"]}]
    check_accessibility_basics(page)
