"""The web console of promotion and mirroring in a real browser (Debian's Chromium driven
by Playwright): policies of a repository, running one, and the jobs pages.

The session's MSR server runs no Celery worker, so a job that is created stays waiting;
the test moves it along in the (shared, committed) database where it needs a running or
finished job. Screenshots go to the folder tests/test_ui.py uses."""


import pytest

from tests.processes import free_port
from tests.fixtures.ui import browser, check_accessibility_basics, shot, sign_in  # noqa: F401  (fixtures)

@pytest.fixture
def repository(personas, unique):
    """A private repository of acme (alice owns acme) whose name has a slash in it."""
    from accounts.models import Namespace
    from msr.models import Repository

    return Repository.objects.create(namespace=Namespace.objects.get(name="acme"), name=f"mirr-{unique}/app")


def submit(page, form, button):
    """Click a form's button; returns the HTTP status of the page that answers."""
    with page.expect_navigation() as navigation:
        form.get_by_role("button", name=button, exact=True).click()
    return navigation.value.status


def new_policy_form(page, kind):
    """The create form of `kind` ("promotion", "push mirroring", …), opened if folded."""
    summary = page.locator("summary", has_text=f"Add a {kind} policy")
    if page.locator("details", has=summary).get_attribute("open") is None:
        summary.click()
    return page.locator("form", has=page.get_by_role("heading", name=f"New {kind} policy"))


def section(page, heading):
    return page.locator("section", has=page.get_by_role("heading", name=heading, exact=True, level=2))


def test_an_admin_creates_policies_and_bad_input_is_explained_next_to_the_form(sign_in, repository, unique):
    page = sign_in("alice")
    page.goto(f"/repositories/{repository.full_name}/")
    page.get_by_role("link", name="Promotion and mirroring policies").click()
    page.wait_for_url(f"**/repositories/{repository.full_name}/policies/")
    assert page.get_by_role("heading", level=1).inner_text() == f"Policies of {repository.full_name}"
    check_accessibility_basics(page)

    # A malformed regular expression: a readable error next to the form, not a 500.
    promotion = new_policy_form(page, "promotion")
    promotion.get_by_label("Rule 1: tag").select_option(label="matches (regular expression)")
    promotion.get_by_label("Rule 1 values").fill("^v[0-9")
    promotion.get_by_label("Target repository").fill(f"acme/promoted-{unique}")
    assert submit(page, promotion, "Create promotion policy") == 400
    promotion = new_policy_form(page, "promotion")
    errors = promotion.get_by_role("alert").all_inner_texts()
    assert any("Rule 1:" in e and "is not a regular expression" in e for e in errors), errors
    assert section(page, "Promotion").get_by_text("No promotion policies yet.").is_visible()
    assert promotion.get_by_label("Target repository").input_value() == f"acme/promoted-{unique}"  # kept
    check_accessibility_basics(page)

    # One more rule row, keeping what was typed.
    assert submit(page, promotion, "Add a rule row") == 200
    promotion = new_policy_form(page, "promotion")
    assert promotion.get_by_label("Rule 4 values").input_value() == ""
    assert promotion.get_by_label("Rule 1 values").input_value() == "^v[0-9"

    # Corrected: saved and listed, with the rules in words.
    promotion.get_by_label("Rule 1 values").fill("^v[0-9]+$")
    promotion.get_by_label("Rule 2: tag").select_option(label="not one of")
    promotion.get_by_label("Rule 2 values").fill("v0 v00")
    promotion.get_by_label("Tag template").fill("%n-rc")
    assert submit(page, promotion, "Create promotion policy") == 200
    assert "Created the promotion policy" in page.get_by_role("status").inner_text()
    row = section(page, "Promotion").get_by_role("row").filter(has_text=f"acme/promoted-{unique}")
    text = row.inner_text()
    assert "tag matches (regular expression) “^v[0-9]+$”" in text
    assert "tag not one of “v0”, “v00”" in text
    assert "%n-rc" in text and "enabled" in text and "never run" in text

    # A push mirror whose remote refuses (nothing listens there): the remote's refusal is
    # shown, the secret is not echoed, and nothing is saved.
    secret = f"s3cret-{unique}"
    push = new_policy_form(page, "push mirroring")
    push.get_by_label("Remote registry").fill(f"http://127.0.0.1:{free_port()}")
    push.get_by_label("Remote repository").fill("mirror/app")
    push.get_by_label("Username").fill("robot")
    push.get_by_label("Password", exact=True).fill(secret)
    assert submit(page, push, "Create push mirroring policy") == 400
    push = new_policy_form(page, "push mirroring")
    errors = push.get_by_role("alert").all_inner_texts()
    assert any(e.startswith("The remote registry refused:") for e in errors), errors
    assert section(page, "Push mirroring").get_by_text("No push mirroring policies yet.").is_visible()
    assert secret not in page.content()
    check_accessibility_basics(page)
    shot(page, "10-policies-remote-refused")
    page.goto(f"/repositories/{repository.full_name}/policies/")
    assert section(page, "Push mirroring").get_by_text("No push mirroring policies yet.").is_visible()

    # Saved disabled, the remote is not tried; enabling it tries it, and it refuses.
    push = new_policy_form(page, "push mirroring")
    push.get_by_label("Remote registry").fill(f"http://127.0.0.1:{free_port()}")
    push.get_by_label("Remote repository").fill("mirror/app")
    push.get_by_label("Username").fill("robot")
    push.get_by_label("Password", exact=True).fill(secret)
    push.get_by_label("Enabled").uncheck()
    assert submit(page, push, "Create push mirroring policy") == 200
    row = section(page, "Push mirroring").get_by_role("row").filter(has_text="mirror/app")
    assert "robot" in row.inner_text() and "stored (password)" in row.inner_text()
    assert "disabled" in row.inner_text() and secret not in page.content()
    row.get_by_role("button", name="Enable").click()
    assert "was not enabled: The remote registry refused" in page.get_by_role("status").inner_text()
    row = section(page, "Push mirroring").get_by_role("row").filter(has_text="mirror/app")
    assert "disabled" in row.inner_text()
    row.get_by_role("button", name="Delete").click()
    assert "Deleted the push mirroring policy" in page.get_by_role("status").inner_text()
    assert section(page, "Push mirroring").get_by_text("No push mirroring policies yet.").is_visible()

    # A bad address is explained too.
    push = new_policy_form(page, "push mirroring")
    push.get_by_label("Remote registry").fill("ftp://example.com")
    push.get_by_label("Remote repository").fill("mirror/app")
    assert submit(page, push, "Create push mirroring policy") == 400
    push = new_policy_form(page, "push mirroring")
    assert "Use a registry address like" in push.get_by_role("alert").first.inner_text()

    # Disable and enable again.
    page.goto(f"/repositories/{repository.full_name}/policies/")
    row = section(page, "Promotion").get_by_role("row").filter(has_text=f"acme/promoted-{unique}")
    row.get_by_role("button", name="Disable").click()
    assert "Disabled the promotion policy" in page.get_by_role("status").inner_text()
    row = section(page, "Promotion").get_by_role("row").filter(has_text=f"acme/promoted-{unique}")
    assert "disabled" in row.inner_text()
    row.get_by_role("button", name="Enable").click()
    assert "Enabled the promotion policy" in page.get_by_role("status").inner_text()
    check_accessibility_basics(page)
    shot(page, "10-policies")


def _promotion_policy(repository, unique):
    from mirroring.models import Policy

    return Policy.objects.create(kind=Policy.PROMOTION, repository=repository, rules=[],
                                 target_repository=f"acme/promoted-{unique}", tag_template="%n-rc")


def test_run_now_opens_the_job_which_can_be_canceled_and_is_listed(sign_in, repository, unique):
    _promotion_policy(repository, unique)
    page = sign_in("alice")
    page.goto(f"/repositories/{repository.full_name}/policies/")
    row = section(page, "Promotion").get_by_role("row").filter(has_text=f"acme/promoted-{unique}")
    row.get_by_role("button", name="Run now").click()
    page.wait_for_url("**/console/jobs/*/")
    job_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
    assert page.get_by_role("heading", level=1).inner_text() == \
        f"Job {job_id}: Promotion of {repository.full_name}"
    assert page.get_by_role("heading", name="Status: waiting").is_visible()
    assert "queued" in page.locator("pre").inner_text()
    assert "not started" in page.locator("#job-progress").inner_text()
    check_accessibility_basics(page)

    page.get_by_role("button", name="Cancel job").click()
    assert f"Canceled job {job_id}." in page.get_by_role("status").inner_text()
    assert page.get_by_role("heading", name="Status: canceled").is_visible()
    assert page.get_by_role("button", name="Cancel job").count() == 0
    assert "canceled before it ran" in page.locator("pre").inner_text()

    # The jobs list shows it with its status; filters narrow it down.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Jobs").click()
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=f"Job {job_id}", exact=True))
    assert "canceled" in row.inner_text() and repository.full_name in row.inner_text()
    assert row.locator("progress").count() == 1
    check_accessibility_basics(page)
    page.get_by_label("Status").select_option("waiting")
    page.get_by_role("button", name="Filter").click()
    assert page.get_by_role("link", name=f"Job {job_id}", exact=True).count() == 0
    page.get_by_label("Status").select_option("canceled")
    page.get_by_label("Action").select_option("promote")
    page.get_by_role("button", name="Filter").click()
    assert page.get_by_role("link", name=f"Job {job_id}", exact=True).is_visible()
    shot(page, "12-jobs")

    # The policies page shows the last job's status.
    page.goto(f"/repositories/{repository.full_name}/policies/")
    row = section(page, "Promotion").get_by_role("row").filter(has_text=f"acme/promoted-{unique}")
    assert f"job {job_id}: canceled" in row.inner_text()


def test_the_job_page_follows_a_running_job_and_stops_when_it_ends(sign_in, repository, unique):
    from playwright.sync_api import expect

    from mirroring.models import Job

    _promotion_policy(repository, unique)
    page = sign_in("alice")
    page.goto(f"/repositories/{repository.full_name}/policies/")
    section(page, "Promotion").get_by_role("button", name="Run now").click()
    page.wait_for_url("**/console/jobs/*/")
    job_id = int(page.url.rstrip("/").rsplit("/", 1)[1])

    # A worker would do this; the page shows it without being reloaded.
    Job.objects.filter(pk=job_id).update(status=Job.RUNNING, attempts=1, bytes_done=1024 * 1024,
                                         bytes_total=4 * 1024 * 1024)
    progress = page.locator("#job-progress")
    expect(progress).to_contain_text("1.0 MiB of 4.0 MiB", timeout=10_000)
    expect(page.get_by_role("heading", name="Status: running")).to_be_visible()
    assert progress.locator("progress").get_attribute("value") == str(1024 * 1024)
    shot(page, "11-job")

    Job.objects.filter(pk=job_id).update(status=Job.DONE, bytes_done=4 * 1024 * 1024, results=[
        {"tag": "v1", "targetTag": "v1-rc", "digest": "sha256:" + "a" * 64, "target": f"acme/promoted-{unique}"}])
    expect(page.get_by_role("heading", name="Status: done")).to_be_visible(timeout=10_000)
    assert "4.0 MiB of 4.0 MiB" in progress.inner_text()
    assert f"acme/promoted-{unique}:v1-rc" in progress.get_by_role("row").filter(has_text="v1-rc").inner_text()
    assert page.get_by_role("button", name="Cancel job").count() == 0
    # Finished: no more refreshing.
    refreshes = []
    page.on("request", lambda request: refreshes.append(request.url) if "/progress/" in request.url else None)
    page.wait_for_timeout(4500)
    assert refreshes == []
    check_accessibility_basics(page)


def test_a_read_only_user_cannot_see_or_open_the_policies(sign_in, repository, personas, unique):
    from mirroring.models import Job

    policy = _promotion_policy(repository, unique)
    job = Job.objects.create(action=Job.PROMOTE, policy=policy, repository=repository.full_name)
    bob = sign_in("bob")  # read-only on acme/private-app, nothing on the new repository
    response = bob.goto("/repositories/acme/private-app/policies/")
    assert response.status == 403
    assert bob.get_by_role("heading", level=1).inner_text() == "Not allowed"
    bob.goto("/repositories/acme/private-app/")
    assert bob.get_by_role("link", name="Promotion and mirroring policies").count() == 0
    response = bob.goto(f"/repositories/{repository.full_name}/policies/")
    assert response.status == 404
    assert bob.get_by_role("heading", level=1).inner_text() == "Not found"
    assert bob.goto(f"/console/jobs/{job.pk}/").status == 404
    bob.goto("/console/jobs/")
    assert bob.get_by_role("heading", name="Jobs", level=1).is_visible()
    assert bob.get_by_role("link", name=f"Job {job.pk}", exact=True).count() == 0
