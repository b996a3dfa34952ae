"""A CI pipeline's story end to end, over the REST API and with skopeo: an admin sets up
an organization, two teams and a repository; a member of each team gets a token; the
read-write token pushes, the read-only token only pulls."""

import json

import requests

from tests.images import make_image_layout
from tests.processes import need, run


def test_admin_sets_up_an_organization_and_tokens_push_or_pull_as_granted(msr, personas, unique, tmp_path):
    need("skopeo")
    api = f"{msr}/api/v0"
    admin = requests.Session()
    # Creating tokens takes the password (a token cannot mint tokens that outlive it).
    admin.auth = ("admin", personas["admin"].password)
    org, repo = f"ci{unique}", "service"

    def ok(response, status):
        assert response.status_code == status, response.text
        return response.json() if response.content else None

    ok(admin.post(f"{api}/accounts", json={"name": org, "isOrg": True}), 201)
    for user in ("dev", "qa"):
        ok(admin.post(f"{api}/accounts", json={"name": f"{user}{unique}", "password": "pipeline-password"}), 201)
    for team, member in (("developers", f"dev{unique}"), ("testers", f"qa{unique}")):
        ok(admin.post(f"{api}/accounts/{org}/teams", json={"name": team}), 201)
        ok(admin.put(f"{api}/accounts/{org}/teams/{team}/members/{member}"), 200)
    ok(admin.post(f"{api}/repositories/{org}", json={"name": repo, "visibility": "private"}), 201)
    ok(admin.put(f"{api}/repositories/{org}/{repo}/teamAccess/developers", json={"accessLevel": "read-write"}), 200)
    ok(admin.put(f"{api}/repositories/{org}/{repo}/teamAccess/testers", json={"accessLevel": "read-only"}), 200)
    tokens = {}
    for user in (f"dev{unique}", f"qa{unique}"):
        tokens[user] = ok(admin.post(f"{api}/tokens", json={"name": "pipeline", "user": user}), 201)["token"]

    host = msr.removeprefix("http://")
    image = f"docker://{host}/{org}/{repo}:1.0"
    source = tmp_path / "image"
    digest = make_image_layout(source, layer_sizes=(50_000, 70_000))
    dev_creds, qa_creds = f"dev{unique}:{tokens[f'dev{unique}']}", f"qa{unique}:{tokens[f'qa{unique}']}"

    run(["skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", dev_creds, f"oci:{source}:v1", image])
    refused = run(["skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", qa_creds,
                   f"oci:{source}:v1", f"docker://{host}/{org}/{repo}:qa"], check=False)
    assert refused.returncode != 0
    pulled = json.loads(run(["skopeo", "inspect", "--tls-verify=false", "--creds", qa_creds, image]).stdout)
    assert pulled["Digest"] == digest
    run(["skopeo", "copy", "--src-tls-verify=false", "--src-creds", qa_creds, image, f"oci:{tmp_path / 'qa'}:v1"])
    outsider = run(["skopeo", "inspect", "--tls-verify=false", "--creds", f"carol:{personas['carol'].token}", image],
                   check=False)
    assert outsider.returncode != 0
    tags = ok(admin.get(f"{api}/repositories/{org}/{repo}/tags"), 200)
    assert [(t["name"], t["digest"], t["pushedBy"]) for t in tags] == [("1.0", digest, f"dev{unique}")]
