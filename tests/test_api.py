"""The REST API (/api/v0) through HTTP: each endpoint's happy path and its refusals
(401 without credentials, 403 without permission, 404 that does not reveal a private
repository, 400 with a field-level message)."""

import re
import time

import pytest
import requests

from tests.client import Registry


@pytest.fixture
def api(msr, personas):
    """api(persona or None) → a requests session for /api/v0 authenticated with the
    persona's personal access token (Basic username:token)."""
    def make(persona=None):
        session = requests.Session()
        if persona:
            session.auth = (persona, personas[persona].token)
        session.base = f"{msr}/api/v0"
        original = session.request
        session.request = lambda method, path, **kw: original(method, session.base + path, timeout=30, **kw)
        return session
    return make


# -- accounts ----------------------------------------------------------------------------


def test_admin_creates_users_and_organizations(api, unique):
    admin = api("admin")
    response = admin.post("/accounts", json={"name": f"u{unique}", "password": "a-long-password",
                                             "fullName": "U Ser", "isOrg": False})
    assert response.status_code == 201, response.text
    assert response.json()["name"] == f"u{unique}" and response.json()["isOrg"] is False
    org = admin.post("/accounts", json={"name": f"org{unique}", "isOrg": True})
    assert org.status_code == 201 and org.json()["isOrg"] is True
    assert admin.get(f"/accounts/org{unique}").json()["fullName"] == ""
    listed = admin.get("/accounts", params={"name": f"u{unique}"}).json()
    assert [a["name"] for a in listed["results"]] == [f"u{unique}"]
    # The new user logs in with the password.
    assert requests.get(f"{admin.base}/accounts/u{unique}", auth=(f"u{unique}", "a-long-password")).status_code == 200


def test_account_creation_refusals(api, unique):
    assert api().get("/accounts").status_code == 401
    assert api("alice").post("/accounts", json={"name": f"x{unique}", "password": "a-long-password"}).status_code == 403
    admin = api("admin")
    for body, field in [
        ({"name": "Bad Name", "password": "a-long-password"}, "name"),
        ({"name": "alice", "password": "a-long-password"}, "name"),
        ({"name": f"nopw{unique}"}, "password"),
        ({"name": f"short{unique}", "password": "short"}, "password"),
        ({"name": f"o{unique}", "isOrg": True, "password": "a-long-password"}, "isOrg"),
    ]:
        response = admin.post("/accounts", json=body)
        assert response.status_code == 400, body
        assert field in response.json(), response.json()


def test_account_update_and_delete(api, unique):
    admin = api("admin")
    admin.post("/accounts", json={"name": f"d{unique}", "password": "a-long-password"})
    me = requests.Session()
    me.auth = (f"d{unique}", "a-long-password")
    url = f"{admin.base}/accounts/d{unique}"
    assert me.patch(url, json={"fullName": "Dee"}).json()["fullName"] == "Dee"
    assert me.patch(url, json={"isAdmin": True}).status_code == 403
    assert api("carol").patch(f"/accounts/d{unique}", json={"fullName": "hacked"}).status_code == 403
    assert admin.get("/accounts/nobody-here").status_code == 404
    assert api("carol").delete(f"/accounts/d{unique}").status_code == 403
    assert admin.delete(f"/accounts/d{unique}").status_code == 204
    assert admin.get(f"/accounts/d{unique}").status_code == 404


def test_settings_default_visibility_applies_to_repositories_created_by_push(api, msr, personas, unique):
    admin = api("admin")
    admin.post("/accounts", json={"name": f"s{unique}", "password": "a-long-password"})
    user = requests.Session()
    user.auth = (f"s{unique}", "a-long-password")
    url = f"{admin.base}/accounts/s{unique}/settings"
    assert user.get(url).json() == {"defaultRepositoryVisibility": "private", "contentCacheChoice": "network",
                                 "defaultContentCache": None}
    assert api("carol").get(f"/accounts/s{unique}/settings").status_code == 403
    bad = user.patch(url, json={"defaultRepositoryVisibility": "everyone"})
    assert bad.status_code == 400 and "defaultRepositoryVisibility" in bad.json()
    assert user.patch(url, json={"defaultRepositoryVisibility": "public"}).status_code == 200
    Registry(msr, f"s{unique}", "a-long-password").push_image(f"s{unique}/app", "v1")
    assert api().get(f"/repositories/s{unique}/app").json()["visibility"] == "public"


# -- organizations, members, teams ---------------------------------------------------------


@pytest.fixture
def org(api, unique):
    name = f"org{unique}"
    assert api("admin").post("/accounts", json={"name": name, "isOrg": True}).status_code == 201
    assert api("admin").put(f"/accounts/{name}/members/alice", json={"isAdmin": True}).status_code == 200
    return name


def test_organization_members(api, org):
    alice = api("alice")
    response = alice.put(f"/accounts/{org}/members/bob", json={"isAdmin": False})
    assert response.status_code == 200 and response.json() == {"name": "bob", "fullName": "", "isAdmin": False}
    members = {m["name"]: m["isAdmin"] for m in api("bob").get(f"/accounts/{org}/members").json()["results"]}
    assert members == {"alice": True, "bob": False}
    assert api("bob").put(f"/accounts/{org}/members/carol", json={}).status_code == 403
    assert api("carol").get(f"/accounts/{org}/members").status_code == 403
    assert alice.put(f"/accounts/{org}/members/nobody", json={}).status_code == 404
    assert alice.delete(f"/accounts/{org}/members/carol").status_code == 404
    assert alice.delete(f"/accounts/{org}/members/bob").status_code == 204
    assert api("alice").get("/accounts/alice/members").status_code == 404  # a user, not an org


def test_teams_and_team_members(api, org):
    alice = api("alice")
    created = alice.post(f"/accounts/{org}/teams", json={"name": "devs", "description": "developers"})
    assert created.status_code == 201 and created.json()["name"] == "devs"
    assert alice.post(f"/accounts/{org}/teams", json={"name": "devs"}).status_code == 400
    bad = alice.post(f"/accounts/{org}/teams", json={"name": "No Spaces"})
    assert bad.status_code == 400 and "name" in bad.json()
    assert alice.put(f"/accounts/{org}/teams/devs/members/wanda").status_code == 200
    assert [m["name"] for m in alice.get(f"/accounts/{org}/teams/devs/members").json()["results"]] == ["wanda"]
    # Joining a team joins the organization.
    assert api("wanda").get(f"/accounts/{org}/teams").status_code == 200
    assert api("wanda").post(f"/accounts/{org}/teams", json={"name": "mine"}).status_code == 403
    assert api("wanda").put(f"/accounts/{org}/teams/devs/members/carol").status_code == 403
    assert alice.patch(f"/accounts/{org}/teams/devs", json={"description": "d2"}).json()["description"] == "d2"
    assert alice.get(f"/accounts/{org}/teams/devs").json()["membersCount"] == 1
    assert alice.get(f"/accounts/{org}/teams/nope").status_code == 404
    assert alice.delete(f"/accounts/{org}/teams/devs/members/wanda").status_code == 204
    assert alice.delete(f"/accounts/{org}/teams/devs/members/wanda").status_code == 404
    assert alice.delete(f"/accounts/{org}/teams/devs").status_code == 204
    assert alice.get(f"/accounts/{org}/teams/devs").status_code == 404


# -- repositories ------------------------------------------------------------------------


def test_repository_lists_show_only_what_the_caller_may_pull(api):
    def names(persona, path="/repositories"):
        return {f"{r['namespace']}/{r['name']}" for r in api(persona).get(path, params={"limit": 1000}).json()["results"]}

    assert {"acme/public-app", "acme/private-app"} <= names("bob")
    for persona in ("carol", None):
        assert "acme/public-app" in names(persona)
        assert "acme/private-app" not in names(persona)
        assert "acme/private-app" not in names(persona, "/repositories/acme")


def test_repository_create_read_update_delete(api, unique):
    alice = api("alice")
    created = alice.post("/repositories/acme", json={"name": f"r{unique}", "visibility": "private",
                                                     "shortDescription": "a repository"})
    assert created.status_code == 201, created.text
    assert created.json()["namespace"] == "acme" and created.json()["visibility"] == "private"
    assert alice.post("/repositories/acme", json={"name": f"r{unique}"}).status_code == 400
    bad = alice.post("/repositories/acme", json={"name": "UPPER"})
    assert bad.status_code == 400 and "name" in bad.json()
    assert api("wanda").post("/repositories/acme", json={"name": f"w{unique}"}).status_code == 403
    assert api().post("/repositories/acme", json={"name": f"a{unique}"}).status_code == 401
    assert api("carol").post("/repositories/carol", json={"name": f"mine{unique}"}).status_code == 201

    path = f"/repositories/acme/r{unique}"
    # An outsider gets the same 404 for a private repository as for a missing one.
    hidden, missing = api("carol").get(path), api("carol").get(f"/repositories/acme/missing{unique}")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == missing.json()
    assert api().get(path).status_code == 404
    assert alice.get(path).json()["shortDescription"] == "a repository"
    assert alice.patch(path, json={"visibility": "public"}).json()["visibility"] == "public"
    assert api("carol").get(path).status_code == 200
    assert api("carol").patch(path, json={"shortDescription": "x"}).status_code == 403
    assert api().patch(path, json={"shortDescription": "x"}).status_code == 401
    assert alice.patch(path, json={"visibility": "secret"}).status_code == 400
    assert alice.delete(path).status_code == 204
    assert alice.get(path).status_code == 404


def test_repository_team_access(api, personas, unique, msr):
    alice = api("alice")
    alice.post("/repositories/acme", json={"name": f"t{unique}"})
    path = f"/repositories/acme/t{unique}/teamAccess"
    assert "pull" not in Registry(msr, "bob", personas["bob"].token).granted(f"acme/t{unique}", "pull")
    granted = alice.put(f"{path}/readers", json={"accessLevel": "read-only"})
    assert granted.status_code == 200 and granted.json() == {"team": {"name": "readers"}, "accessLevel": "read-only"}
    assert Registry(msr, "bob", personas["bob"].token).granted(f"acme/t{unique}", "pull", "push") == {"pull"}
    assert alice.get(path).json() == [{"team": {"name": "readers"}, "accessLevel": "read-only"}]
    bad = alice.put(f"{path}/readers", json={"accessLevel": "owner"})
    assert bad.status_code == 400 and "accessLevel" in bad.json()
    assert alice.put(f"{path}/nobody", json={"accessLevel": "admin"}).status_code == 404
    assert api("bob").put(f"{path}/readers", json={"accessLevel": "admin"}).status_code == 403
    assert api("carol").get(path).status_code == 404
    assert alice.delete(f"{path}/readers").status_code == 204
    assert Registry(msr, "bob", personas["bob"].token).granted(f"acme/t{unique}", "pull") == set()
    mine = api("carol")
    mine.post("/repositories/carol", json={"name": f"solo{unique}"})
    assert mine.put(f"/repositories/carol/solo{unique}/teamAccess/readers",
                    json={"accessLevel": "read-only"}).status_code == 400


def test_namespace_team_access(api, org, personas, msr):
    alice = api("alice")
    alice.post(f"/accounts/{org}/teams", json={"name": "builders"})
    alice.put(f"/accounts/{org}/teams/builders/members/wanda")
    path = f"/repositoryNamespaces/{org}/teamAccess"
    assert "push" not in Registry(msr, "wanda", personas["wanda"].token).granted(f"{org}/new", "push")
    assert alice.put(f"{path}/builders", json={"accessLevel": "admin"}).status_code == 200
    assert "push" in Registry(msr, "wanda", personas["wanda"].token).granted(f"{org}/new", "push")
    assert alice.get(path).json() == [{"team": {"name": "builders"}, "accessLevel": "admin"}]
    assert api("wanda").put(f"{path}/builders", json={"accessLevel": "admin"}).status_code == 403
    assert alice.delete(f"{path}/builders").status_code == 204
    assert api("carol").get(path).status_code == 403


def test_tags_list_details_and_delete(api, msr, personas, unique):
    alice = Registry(msr, "alice", personas["alice"].token)
    name = f"acme/tags-{unique}"
    digest, _ = alice.push_image(name, "v1", layers=(b"one", b"two"))
    from accounts.models import Team
    from accounts.services import set_team_access
    from msr.services import find_repository

    repository = find_repository(name)
    set_team_access(Team.objects.get(organization__name="acme", name="readers"), repository, "read-only")
    set_team_access(Team.objects.get(organization__name="acme", name="writers"), repository, "read-write")
    tags = api("bob").get(f"/repositories/{name}/tags").json()
    assert len(tags) == 1
    tag = tags[0]
    assert tag["name"] == "v1" and tag["digest"] == digest and tag["pushedBy"] == "alice"
    assert tag["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert tag["platforms"] == [{"os": "linux", "architecture": "amd64"}]
    assert tag["size"] > len(b"onetwo")
    assert api("bob").get(f"/repositories/{name}/tags/v1").json()["digest"] == digest
    assert api("bob").get(f"/repositories/{name}/tags/nope").status_code == 404
    assert api("carol").get(f"/repositories/{name}/tags").status_code == 404
    assert api("bob").delete(f"/repositories/{name}/tags/v1").status_code == 403
    assert api("wanda").delete(f"/repositories/{name}/tags/v1").status_code == 204
    assert api("bob").get(f"/repositories/{name}/tags").json() == []


# -- tokens ------------------------------------------------------------------------------


def test_personal_access_tokens(api, msr):
    carol = requests.Session()
    carol.auth = ("carol", "carol-password")
    created = carol.post(f"{msr}/api/v0/tokens", json={"name": "ci", "expiresInDays": 30})
    assert created.status_code == 201
    body = created.json()
    secret, token_id = body["token"], body["id"]
    assert secret.startswith("msrpat_") and body["hint"] == secret[:11]
    listed = carol.get(f"{msr}/api/v0/tokens").json()["results"]
    assert token_id in [t["id"] for t in listed] and all("token" not in t for t in listed)
    # The token authenticates the API as Basic password and as Bearer, and logs in to /v2/.
    assert requests.get(f"{msr}/api/v0/tokens", auth=("carol", secret)).status_code == 200
    assert requests.get(f"{msr}/api/v0/tokens", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    assert requests.get(f"{msr}/auth/token", auth=("carol", secret)).status_code == 200
    assert api("bob").get(f"/tokens/{token_id}").status_code == 404
    assert api("bob").delete(f"/tokens/{token_id}").status_code == 404
    assert api("bob").get("/tokens", params={"user": "carol"}).status_code == 403
    assert api("admin").get("/tokens", params={"user": "carol"}).status_code == 200
    assert carol.delete(f"{msr}/api/v0/tokens/{token_id}").status_code == 204
    assert requests.get(f"{msr}/api/v0/tokens", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    assert requests.get(f"{msr}/auth/token", auth=("carol", secret)).status_code == 401
    bad = carol.post(f"{msr}/api/v0/tokens", json={"expiresInDays": 0})
    assert bad.status_code == 400 and {"name", "expiresInDays"} <= bad.json().keys()


def test_session_authentication_requires_csrf(msr):
    session = requests.Session()
    login = session.get(f"{msr}/admin/login/")
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text).group(1)
    response = session.post(f"{msr}/admin/login/", data={
        "csrfmiddlewaretoken": csrf, "username": "admin", "password": "admin-password", "next": "/admin/"},
        headers={"Referer": f"{msr}/admin/login/"})
    assert response.status_code == 200 and "sessionid" in session.cookies
    assert session.get(f"{msr}/api/v0/tokens").status_code == 200
    refused = session.post(f"{msr}/api/v0/tokens", json={"name": "no-csrf"})
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    allowed = session.post(f"{msr}/api/v0/tokens", json={"name": "with-csrf"},
                           headers={"X-CSRFToken": session.cookies["csrftoken"], "Referer": f"{msr}/"})
    assert allowed.status_code == 201


# -- events ------------------------------------------------------------------------------


def test_events_record_pushes_pulls_deletes_logins_and_permission_changes(api, msr, personas, unique):
    alice = Registry(msr, "alice", personas["alice"].token)
    name = f"acme/audit-{unique}"
    digest, _ = alice.push_image(name, "v1")
    alice.request("GET", f"/v2/{name}/manifests/v1", scope=f"repository:{name}:pull")
    alice.request("DELETE", f"/v2/{name}/manifests/v1", scope=f"repository:{name}:delete")
    api("alice").put(f"/repositories/{name}/teamAccess/readers", json={"accessLevel": "read-only"})
    admin = api("admin")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # pulls are written in batches, about a second late
        events = admin.get("/events", params={"repository": name, "limit": 100}).json()["results"]
        if "pull" in {e["type"] for e in events}:
            break
        time.sleep(0.3)
    by_type = {e["type"]: e for e in events}
    assert set(by_type) == {"push", "pull", "delete", "permission"}
    assert by_type["push"]["actor"] == "alice" and by_type["push"]["digest"] == digest
    assert by_type["pull"]["tag"] == "v1" and by_type["pull"]["clientIp"] == "127.0.0.1"
    assert by_type["permission"]["detail"]["accessLevel"] == "read-only"
    logins = admin.get("/events", params={"type": "login", "user": "alice"}).json()["results"]
    assert logins and logins[0]["detail"]["succeeded"] is True
    assert admin.get("/events", params={"type": "nonsense"}).status_code == 400
    assert api("alice").get("/events").status_code == 403
    assert api().get("/events").status_code == 401


# -- webhooks (subscriptions; delivery is tested with a real worker in test_webhooks.py) ---


def test_webhook_subscriptions(api, unique):
    alice = api("alice")
    body = {"type": "TAG_PUSH", "key": "acme/private-app", "endpoint": "http://127.0.0.1:9/hook",
            "secret": "s3cret"}
    created = alice.post("/webhooks", json=body)
    assert created.status_code == 201, created.text
    hook = created.json()
    assert "secret" not in hook and hook["key"] == "acme/private-app" and hook["createdBy"] == "alice"
    assert alice.post("/webhooks", json={**body, "key": "acme"}).status_code == 201
    assert api("bob").post("/webhooks", json=body).status_code == 403
    assert api("carol").post("/webhooks", json=body).status_code == 400  # not revealed
    for bad, field in [({**body, "type": "NOPE"}, "type"), ({**body, "endpoint": "ftp://x/y"}, "endpoint"),
                       ({**body, "key": f"ghost{unique}/x"}, "key")]:
        response = alice.post("/webhooks", json=bad)
        assert response.status_code == 400 and field in response.json(), bad
    path = f"/webhooks/{hook['id']}"
    assert alice.patch(path, json={"enabled": False}).json()["enabled"] is False
    assert api("bob").get(path).status_code == 404
    tested = alice.post(f"{path}/test")
    assert tested.status_code == 202 and tested.json()["status"] == "pending"
    assert alice.get(f"{path}/deliveries").json()["results"][0]["payload"]["contents"]["test"] is True
    assert alice.delete(path).status_code == 204
    assert alice.get(path).status_code == 404


def test_webhook_secret_is_encrypted_at_rest(api):
    from msr.models import Webhook

    created = api("alice").post("/webhooks", json={
        "type": "TAG_PUSH", "key": "acme/public-app", "endpoint": "http://127.0.0.1:9/x", "secret": "plain-secret"})
    stored = Webhook.objects.get(pk=created.json()["id"]).secret_encrypted
    assert stored and "plain-secret" not in stored


# -- schema and docs ----------------------------------------------------------------------


def test_openapi_schema_and_docs_are_served_without_a_cdn(msr, personas):
    schema = requests.get(f"{msr}/api/v0/schema", params={"format": "json"}, auth=("bob", personas["bob"].token))
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/api/v0/repositories/{namespace}/{repository}/teamAccess/{team}" in paths
    docs = requests.get(f"{msr}/api/v0/docs", auth=("bob", personas["bob"].token))
    assert docs.status_code == 200
    external = [u for u in re.findall(r'(?:src|href)="(https?://[^"]+)"', docs.text) if not u.startswith(msr)]
    assert external == []
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', docs.text):
        assert requests.get(f"{msr}{asset}").status_code == 200, asset
