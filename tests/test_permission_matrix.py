"""Who may pull, push and delete, asserted cell by cell on the /v2/ API with real tokens.

Rows are the personas of conftest.py; anonymous has no credentials at all."""

import pytest

from tests.client import Registry, sha256

PULL, PUSH, DELETE = "pull", "push", "delete"
EVERYTHING = {PULL, PUSH, DELETE}

# persona → {visibility: allowed actions}
MATRIX = {
    "alice": {"public": EVERYTHING, "private": EVERYTHING},      # organization owner
    "adam": {"public": EVERYTHING, "private": EVERYTHING},       # team admin
    "wanda": {"public": EVERYTHING, "private": EVERYTHING},      # team read-write
    "bob": {"public": {PULL}, "private": {PULL}},                # team read-only
    "mel": {"public": {PULL}, "private": set()},                 # member, no grant
    "carol": {"public": {PULL}, "private": set()},               # outsider
    None: {"public": {PULL}, "private": set()},                  # anonymous
    "admin": {"public": EVERYTHING, "private": EVERYTHING},      # system admin
}
CELLS = [(persona, visibility, action)
         for persona in MATRIX for visibility in ("public", "private") for action in (PULL, PUSH, DELETE)]


@pytest.fixture(scope="module")
def seeded(msr, personas):
    """Each repository holds an image tagged `base`, pushed by the owner."""
    owner = Registry(msr, "alice", personas["alice"].token)
    for visibility in ("public", "private"):
        _, response = owner.push_image(f"acme/{visibility}-app", "base")
        assert response.status_code == 201, response.text
    return owner


def _client(msr, personas, persona):
    return Registry(msr) if persona is None else Registry(msr, persona, personas[persona].token)


@pytest.mark.parametrize("persona,visibility,action", CELLS,
                         ids=[f"{p or 'anonymous'}-{v}-{a}" for p, v, a in CELLS])
def test_permission_matrix(msr, personas, seeded, unique, persona, visibility, action):
    name = f"acme/{visibility}-app"
    client = _client(msr, personas, persona)
    allowed = action in MATRIX[persona][visibility]

    # The token grants exactly what the matrix says, whatever was asked for.
    assert (action in client.granted(name, action)) == allowed

    token = client.token(f"repository:{name}:{action}")
    if action == PULL:
        response = client.request("GET", f"/v2/{name}/manifests/base", token=token,
                                  headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        expected = 200
    elif action == PUSH:
        blob = f"blob for {persona} {unique}".encode()
        push_token = client.token(f"repository:{name}:pull,push")
        response = client.request("POST", f"/v2/{name}/blobs/uploads/?digest={sha256(blob)}",
                                  token=push_token, data=blob)
        expected = 201
    else:
        tag = f"doomed-{unique}"
        _, pushed = seeded.push_image(name, tag)
        assert pushed.status_code == 201
        response = client.request("DELETE", f"/v2/{name}/manifests/{tag}", token=token)
        expected = 202
        still_there = seeded.request("GET", f"/v2/{name}/manifests/{tag}",
                                     scope=f"repository:{name}:pull").status_code
        assert still_there == (404 if allowed else 200)

    if allowed:
        assert response.status_code == expected, response.text
    else:
        assert response.status_code == 401, response.text
        assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
        assert response.json()["errors"][0]["code"] == "UNAUTHORIZED"
        # docker shows the challenge's description, MSR's message (tests/test_docker_cli.py)
        message = response.json()["errors"][0]["message"]
        assert message.startswith("insufficient scope: the token does not grant ")
        assert f'error_description="{message}"' in response.headers["WWW-Authenticate"]


def test_a_user_creates_repositories_in_their_own_namespace_by_pushing(msr, personas, unique):
    carol = Registry(msr, "carol", personas["carol"].token)
    _, response = carol.push_image(f"carol/app-{unique}", "v1")
    assert response.status_code == 201
    bob = Registry(msr, "bob", personas["bob"].token)
    assert bob.granted(f"carol/app-{unique}", "pull", "push") == set()  # private by default


def test_only_owners_and_org_admin_teams_create_repositories_in_an_organization(msr, personas, unique):
    from accounts.models import Namespace, Team
    from accounts.services import set_team_access

    name = f"acme/new-{unique}"
    for persona in ("wanda", "bob", "mel", "carol"):
        assert "push" not in _client(msr, personas, persona).granted(name, "push")
    assert "push" in _client(msr, personas, "alice").granted(name, "push")
    # A team with admin on the whole organization may create repositories in it.
    acme = Namespace.objects.get(name="acme")
    team = Team.objects.get(organization=acme, name="writers")
    set_team_access(team, acme, "admin")
    try:
        assert "push" in _client(msr, personas, "wanda").granted(name, "push")
    finally:
        set_team_access(team, acme, None)


def test_catalog_lists_only_what_the_caller_may_pull(msr, personas, seeded):
    def catalog(persona):
        client = _client(msr, personas, persona)
        response = client.request("GET", "/v2/_catalog?n=10000", scope="registry:catalog:*")
        assert response.status_code == 200
        return set(response.json()["repositories"])

    assert {"acme/public-app", "acme/private-app"} <= catalog("bob")
    for persona in ("carol", "mel", None):
        names = catalog(persona)
        assert "acme/public-app" in names
        assert "acme/private-app" not in names
