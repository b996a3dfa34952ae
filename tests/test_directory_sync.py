"""Team sync with the company directory (accounts/directory_sync.py) against a real slapd
(tests/fixtures/ldap.py), in a deployment of its own: `msr serve`, and a Celery worker
with beat on Redis (a sync every 3 s, MSR_LDAP_SYNC_INTERVAL). Teams of the organization
`platform` are bound to LDAP groups and filters; people join and leave groups and the
directory, and MSR's permissions follow. Directory people: dora, erin, frank in
cn=developers; gina, hank in cn=admins (MSR_LDAP_ADMIN_GROUP)."""

import os

import pytest
import redis
import requests

from tests.client import Registry
from tests.deployments import Deployment, wait_for
from tests.fixtures.ldap import ADMINS_GROUP, GROUPS, PEOPLE_IN_DIRECTORY, slapd  # noqa: F401
from tests.fixtures.ui import browser, password_sign_in, shot  # noqa: F401  (fixtures)
from tests.processes import need

REDIS = os.environ.get("MSR_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
DEVELOPERS = f"cn=developers,{GROUPS}"
PRIVATE = "platform/app"


@pytest.fixture(scope="module")
def deployment(slapd, db_url, tmp_path_factory):
    need("redis-server")
    broker = f"{REDIS.rpartition('/')[0]}/14"
    redis.Redis.from_url(broker).flushdb()
    made = Deployment("dirsync", tmp_path_factory.mktemp("dirsync"), db_url, broker,
                      extra_env=slapd.env(MSR_LDAP_SYNC_INTERVAL="3"))
    try:
        token = made.with_admin("platform")
        made.start(beat=True)
        made.admin_token = token
        digest, response = Registry(made.url, "admin", token).push_image(PRIVATE, "v1")
        assert response.status_code == 201, response.text
        yield made
    finally:
        made.stop()


def _sync_now(deployment) -> dict:
    """Ask for a sync that reads the directory as it is now, and wait for it to finish.
    (A run already reading, the schedule's, may have read before the test's change.)"""
    def runs():
        return deployment.api("GET", "directory/syncs").json()["results"]

    wait_for(lambda: not any(r["status"] == "running" for r in runs()), timeout=60, what="no sync reading")
    response = deployment.api("POST", "directory/syncs")
    assert response.status_code == 202, response.text
    asked = response.json()["id"]

    def finished():
        done = [r for r in runs() if r["id"] >= asked and r["status"] in ("done", "failed")]
        return done[-1] if done else None

    run = wait_for(finished, timeout=60, what="a directory sync")
    return deployment.api("GET", f"directory/syncs/{run['id']}").json()


def _team(deployment, name, binding=None) -> dict:
    if deployment.api("GET", f"accounts/platform/teams/{name}").status_code == 404:
        response = deployment.api("POST", "accounts/platform/teams", json={"name": name})
        assert response.status_code == 201, response.text
        response = deployment.api("PUT", f"repositories/{PRIVATE}/teamAccess/{name}",
                                  json={"accessLevel": "read-only"})
        assert response.status_code == 200, response.text
    if binding is not None:
        response = deployment.api("PATCH", f"accounts/platform/teams/{name}", json={"sync": binding})
        assert response.status_code == 200, response.text
        return response.json()
    return deployment.api("GET", f"accounts/platform/teams/{name}").json()


def _members(deployment, team) -> set[str]:
    response = deployment.api("GET", f"accounts/platform/teams/{team}/members")
    assert response.status_code == 200, response.text
    return {m["name"] for m in response.json()["results"]}


def _refresh_token(deployment, uid) -> str:
    """`docker login` as a directory user: a refresh token from the password grant."""
    response = requests.post(f"{deployment.url}/auth/token", timeout=30, data={
        "grant_type": "password", "service": "msr", "client_id": "tests", "access_type": "offline",
        "username": uid, "password": PEOPLE_IN_DIRECTORY[uid].password})
    assert response.status_code == 200, response.text
    return response.json()["refresh_token"]


def _pull_with_refresh_token(deployment, refresh) -> int:
    """Status of a manifest GET of the private repository with a token from `refresh`;
    the token service's own status when it refuses the refresh token."""
    response = requests.post(f"{deployment.url}/auth/token", timeout=30, data={
        "grant_type": "refresh_token", "refresh_token": refresh, "service": "msr", "client_id": "tests",
        "scope": f"repository:{PRIVATE}:pull"})
    if response.status_code != 200:
        return response.status_code
    return requests.get(f"{deployment.url}/v2/{PRIVATE}/manifests/v1", timeout=30, headers={
        "Authorization": f"Bearer {response.json()['access_token']}",
        "Accept": "application/vnd.oci.image.manifest.v1+json"}).status_code


def test_a_team_bound_to_a_group_follows_it_and_permissions_follow(deployment, slapd):
    team = _team(deployment, "developers", {"kind": "ldap-group", "value": DEVELOPERS})
    assert team["sync"]["kind"] == "ldap-group" and team["sync"]["value"] == DEVELOPERS

    # Binding queues a sync: accounts are created on first sight, before anyone signs in.
    wait_for(lambda: _members(deployment, "developers") == {"dora", "erin", "frank"}, timeout=60,
             what="developers synced")
    erin = deployment.api("GET", "accounts/erin").json()
    assert erin["source"] == "ldap" and erin["fullName"] == "Erin Engineer" and erin["isActive"]
    synced = deployment.api("GET", "accounts/platform/teams/developers").json()["sync"]
    assert synced["syncedAt"] and "3 in the directory" in synced["result"], synced

    refresh = _refresh_token(deployment, "dora")
    assert _pull_with_refresh_token(deployment, refresh) == 200

    # Members of a bound team change only through the directory.
    response = deployment.api("PUT", "accounts/platform/teams/developers/members/admin")
    assert response.status_code == 409 and "ldap group" in response.json()["detail"].lower()

    slapd.set_member(DEVELOPERS, PEOPLE_IN_DIRECTORY["dora"].dn, present=False)
    slapd.add_person("ivan", "Ivan Newcomer")
    slapd.set_member(DEVELOPERS, "uid=ivan,ou=people,dc=example,dc=org", present=True)
    run = _sync_now(deployment)
    assert run["status"] == "done", run
    assert _members(deployment, "developers") == {"erin", "frank", "ivan"}
    assert "team platform/developers: dora removed" in run["log"], run["log"]
    assert "team platform/developers: ivan added" in run["log"], run["log"]

    # dora is still a directory user who may sign in, but the team's pull is gone: the
    # token her refresh token gets no longer opens the private repository.
    assert deployment.api("GET", "accounts/dora").json()["isActive"]
    assert _pull_with_refresh_token(deployment, refresh) == 401
    events = deployment.api("GET", "events", params={"type": "account"}).json()["results"]
    assert any(e["detail"].get("action") == "directory sync" and e["detail"].get("sync") == run["id"]
               for e in events), events


def test_a_team_bound_to_a_filter_and_system_admins_follow_the_directory(deployment):
    _team(deployment, "operators", {"kind": "ldap-filter", "value": "(|(uid=gina)(uid=hank))"})
    wait_for(lambda: _members(deployment, "operators") == {"gina", "hank"}, timeout=60, what="operators synced")
    # MSR_LDAP_ADMIN_GROUP holds gina and hank: the sync makes them admins without a sign-in.
    assert deployment.api("GET", "accounts/hank").json()["isAdmin"]


def test_a_user_who_left_the_directory_is_deactivated_and_their_credentials_stop(deployment, slapd):
    _team(deployment, "developers", {"kind": "ldap-group", "value": DEVELOPERS})
    wait_for(lambda: "frank" in _members(deployment, "developers"), timeout=60, what="frank in developers")
    refresh = _refresh_token(deployment, "frank")
    password = PEOPLE_IN_DIRECTORY["frank"].password
    response = requests.post(f"{deployment.url}/api/v0/tokens", auth=("frank", password), timeout=30,
                             json={"name": "ci"})
    assert response.status_code == 201, response.text
    pat = response.json()["token"]
    assert Registry(deployment.url, "frank", pat).token_response(f"repository:{PRIVATE}:pull").status_code == 200

    slapd.delete(PEOPLE_IN_DIRECTORY["frank"].dn)  # cn=developers still names him
    run = _sync_now(deployment)
    assert run["status"] == "done" and run["summary"]["deactivated"] == 1, run
    assert "frank: no longer in the directory; deactivated" in run["log"]
    assert not deployment.api("GET", "accounts/frank").json()["isActive"]
    assert "frank" not in _members(deployment, "developers")
    assert _pull_with_refresh_token(deployment, refresh) == 400  # OAuth's invalid_grant
    assert Registry(deployment.url, "frank", pat).token_response(f"repository:{PRIVATE}:pull").status_code == 401
    # The others are untouched.
    assert deployment.api("GET", "accounts/erin").json()["isActive"]


def test_a_directory_that_cannot_be_reached_changes_nothing(deployment, slapd):
    _team(deployment, "developers", {"kind": "ldap-group", "value": DEVELOPERS})
    wait_for(lambda: _members(deployment, "developers") >= {"erin"}, timeout=60, what="developers synced")
    before = _members(deployment, "developers")
    slapd.pause()
    try:
        run = _sync_now(deployment)
        assert run["status"] == "failed", run
        assert "could not be read, nothing changed" in run["error"], run
        assert _members(deployment, "developers") == before
        assert deployment.api("GET", "accounts/erin").json()["isActive"]
        # Directory users cannot sign in with a password, and are told why; the local admin can.
        response = Registry(deployment.url, "erin", PEOPLE_IN_DIRECTORY["erin"].password).token_response()
        assert response.status_code == 503 and "directory" in response.text, response.text
        assert deployment.api("GET", "accounts/erin").status_code == 200
    finally:
        slapd.resume()


def test_a_group_that_is_not_in_the_directory_keeps_its_team_as_it_is(deployment):
    _team(deployment, "ghosts", {"kind": "ldap-group", "value": f"cn=nobody,{GROUPS}"})
    run = _sync_now(deployment)
    assert run["status"] == "done" and run["summary"]["failedTeams"] >= 1, run
    team = deployment.api("GET", "accounts/platform/teams/ghosts").json()
    assert team["sync"]["result"] == "not synced: the group is not in the directory", team


def test_bad_bindings_are_refused_with_a_reason(deployment):
    _team(deployment, "misc")
    for binding, field in [({"kind": "ldap-group", "value": "not a dn"}, "value"),
                           ({"kind": "ldap-filter", "value": "(uid=a"}, "value"),
                           ({"kind": "ldap-group", "value": ""}, "value"),
                           ({"kind": "martian", "value": "x"}, "kind")]:
        response = deployment.api("PATCH", "accounts/platform/teams/misc", json={"sync": binding})
        assert response.status_code == 400, (binding, response.text)
        assert field in response.json().get("sync", response.json()), response.text
    # Only system admins see or start syncs.
    erin = ("erin", PEOPLE_IN_DIRECTORY["erin"].password)
    assert deployment.api("POST", "directory/syncs", auth=erin).status_code == 403
    assert deployment.api("GET", "directory/syncs", auth=erin).status_code == 403


def test_the_schedule_syncs_under_beat(deployment):
    def scheduled():
        runs = deployment.api("GET", "directory/syncs").json()["results"]
        return [r for r in runs if r["triggeredBy"] == "" and r["status"] == "done"]

    assert wait_for(scheduled, timeout=60, what="a scheduled directory sync")


def test_owners_bind_a_team_and_admins_sync_from_the_ui(deployment, browser):
    _team(deployment, "misc", {"kind": "", "value": ""})
    context = browser.new_context(base_url=deployment.url, viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        password_sign_in(page, "admin", "admin-password")
        page.wait_for_url("**/repositories/")

        page.goto("/orgs/platform/")
        page.get_by_label("Members of misc come from").select_option("ldap-filter")
        page.get_by_label("Group DN, filter or group name").nth(
            [t.strip() for t in page.locator("article.team h3").all_inner_texts()].index("misc")).fill("(uid=erin)")
        page.locator("form", has=page.get_by_label("Members of misc come from")).get_by_role(
            "button", name="Save binding").click()
        page.get_by_text("Team misc: members come from the LDAP filter (uid=erin).").wait_for()
        wait_for(lambda: _members(deployment, "misc") == {"erin"}, timeout=60, what="misc synced")

        page.reload()
        misc = page.locator("article.team", has=page.locator("h3", has_text="misc"))
        misc.get_by_text("Members come from").wait_for()
        assert "(uid=erin)" in misc.inner_text() and "1 in the directory" in misc.inner_text(), misc.inner_text()
        # A bound team's members are not edited by hand.
        assert misc.get_by_role("button", name="Remove").count() == 0
        assert misc.get_by_role("button", name="Add").count() == 0
        shot(page, "directory-team-binding")

        page.goto("/console/")
        page.get_by_role("heading", name="Company directory").wait_for()
        bound = page.locator("section", has=page.get_by_role("heading", name="Teams whose members come from"))
        assert "the LDAP group cn=developers" in bound.inner_text(), bound.inner_text()
        page.get_by_role("button", name="Sync teams now").click()
        message = page.get_by_text("Directory sync").first
        message.wait_for()
        page.locator("a", has_text="#").first.click()
        page.get_by_role("heading", name="Log").wait_for()
        shot(page, "directory-sync-log")
    finally:
        context.close()
