"""Policies and jobs through the REST API of a real `msr serve`: who may create what,
what bad input gets back, secrets never returned. (No Celery worker runs here, so jobs
stay waiting; tests/test_mirroring.py runs them.) Plus the tag rules and templates."""

from datetime import datetime

import pytest
import requests

from mirroring import criteria


def api(msr, persona, method, path, **kwargs):
    return requests.request(method, f"{msr}/api/v0/{path}", auth=(persona.name, persona.password),
                            timeout=30, **kwargs)


PROMOTE = {"rules": [{"field": "tag", "operator": "sw", "values": ["1."]}], "targetRepository": "acme/public-app",
           "tagTemplate": "%n-rc"}


@pytest.mark.parametrize("who, status", [("admin", 201), ("alice", 201), ("adam", 201), ("wanda", 403),
                                         ("bob", 403), ("mel", 404), ("carol", 404)])
def test_creating_a_promotion_policy_takes_admin_on_the_source(msr, personas, who, status):
    response = api(msr, personas[who], "POST", "repositories/acme/private-app/promotionPolicies", json=PROMOTE)
    assert response.status_code == status, response.text
    if status == 201:
        assert response.json()["targetRepository"] == "acme/public-app"
        assert api(msr, personas[who], "DELETE",
                   f"repositories/acme/private-app/promotionPolicies/{response.json()['id']}").status_code == 204


def test_promotion_needs_write_on_the_target(msr, personas):
    # adam administers acme's repositories but may not write into carol's namespace
    response = api(msr, personas["adam"], "POST", "repositories/acme/private-app/promotionPolicies",
                   json={**PROMOTE, "targetRepository": "carol/anything"})
    assert response.status_code == 403 and "write access to carol/anything" in response.json()["detail"]


@pytest.mark.parametrize("body, field, words", [
    ({"rules": [{"field": "tag", "operator": "like", "values": ["x"]}]}, "rules", "unknown operator"),
    ({"rules": [{"field": "tag", "operator": "matches", "values": ["(unclosed"]}]}, "rules", "not a regular expression"),
    ({"rules": [{"field": "digest", "operator": "eq", "values": ["x"]}]}, "rules", "unknown field"),
    ({"rules": [{"field": "tag", "operator": "eq", "values": []}]}, "rules", "non-empty list"),
    ({"rules": "tag=1"}, "rules", "must be a list"),
    ({"tagTemplate": "%n-%q"}, "tagTemplate", "unknown template part %q"),
    ({"tagTemplate": "%n/x"}, "tagTemplate", "invalid tag"),
    ({"targetRepository": "no-namespace"}, "targetRepository", "namespace/repository"),
    ({"targetRepository": "acme/private-app", "tagTemplate": "%n"}, "targetRepository", "does nothing"),
])
def test_bad_policies_get_a_json_error_naming_the_field(msr, personas, body, field, words):
    response = api(msr, personas["alice"], "POST", "repositories/acme/private-app/promotionPolicies",
                   json={**PROMOTE, **body})
    assert response.status_code == 400, response.text
    assert words in str(response.json()[field]), response.json()


def test_mirror_secrets_are_write_only_and_encrypted_at_rest(msr, personas):
    from mirroring.models import Policy

    # a poll mirror of this very MSR (a registry that answers) with alice's password
    response = api(msr, personas["alice"], "POST", "repositories/acme/private-app/pollMirroringPolicies", json={
        "remoteHost": msr, "remoteRepository": "acme/public-app", "username": "alice",
        "password": personas["alice"].password, "interval": 600})
    assert response.status_code == 201, response.text
    body = response.json()
    assert "password" not in body and "authToken" not in body and body["hasCredentials"] is True
    listed = api(msr, personas["alice"], "GET", "repositories/acme/private-app/pollMirroringPolicies").text
    assert personas["alice"].password not in listed
    stored = Policy.objects.get(pk=body["id"])
    assert personas["alice"].password not in stored.secret_encrypted
    from msr.crypto import decrypt

    assert decrypt(stored.secret_encrypted) == personas["alice"].password
    api(msr, personas["alice"], "DELETE", f"repositories/acme/private-app/pollMirroringPolicies/{body['id']}")


def test_a_remote_that_cannot_be_reached_is_a_readable_400(msr, personas):
    from tests.processes import free_port

    response = api(msr, personas["alice"], "POST", "repositories/acme/private-app/pushMirroringPolicies", json={
        "remoteHost": f"http://127.0.0.1:{free_port()}", "remoteRepository": "x/y"})
    assert response.status_code == 400
    assert "The remote registry refused" in response.json()["remoteHost"][0]
    assert api(msr, personas["alice"], "POST", "repositories/acme/private-app/pushMirroringPolicies", json={
        "remoteHost": "ftp://example.com", "remoteRepository": "x/y"}).status_code == 400


def test_jobs_run_now_filter_and_cancel(msr, personas):
    policy = api(msr, personas["alice"], "POST", "repositories/acme/private-app/promotionPolicies",
                 json=PROMOTE).json()
    wrong = api(msr, personas["alice"], "POST", "jobs", json={"action": "push_mirror", "policy": policy["id"]})
    assert wrong.status_code == 400 and "runs promote jobs" in str(wrong.json()["action"])
    assert api(msr, personas["alice"], "POST", "jobs", json={"action": "promote", "policy": 10 ** 9}).status_code == 400
    # someone who does not administer the repository cannot run its policy
    assert api(msr, personas["wanda"], "POST", "jobs",
               json={"action": "promote", "policy": policy["id"]}).status_code == 400

    job = api(msr, personas["alice"], "POST", "jobs", json={"action": "promote", "policy": policy["id"]})
    assert job.status_code == 202 and job.json()["status"] == "waiting"
    job = job.json()
    listed = api(msr, personas["alice"], "GET", f"jobs?policy={policy['id']}&status=waiting").json()
    assert [j["id"] for j in listed["results"]] == [job["id"]]
    assert api(msr, personas["alice"], "GET", "jobs?status=bogus").status_code == 400
    assert job["id"] not in [j["id"] for j in api(msr, personas["carol"], "GET", "jobs").json()["results"]]
    assert api(msr, personas["carol"], "GET", f"jobs/{job['id']}").status_code == 404

    canceled = api(msr, personas["alice"], "POST", f"jobs/{job['id']}/cancel")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    assert "canceled before it ran" in canceled.json()["log"]
    assert api(msr, personas["alice"], "POST", f"jobs/{job['id']}/cancel").status_code == 409


# -- rules and templates -------------------------------------------------------------------------


@pytest.mark.parametrize("operator, values, tag, expected", [
    ("eq", ["1.4"], "1.4", True), ("eq", ["1.4"], "1.4.1", False),
    ("sw", ["1."], "1.4", True), ("sw", ["2."], "1.4", False),
    ("ew", ["-rc"], "1.4-rc", True), ("ew", ["-rc"], "1.4", False),
    ("c", ["beta"], "2.0-beta1", True), ("c", ["beta"], "2.0", False),
    ("oneof", ["a", "b"], "b", True), ("oneof", ["a", "b"], "c", False),
    ("noneof", ["latest"], "1.0", True), ("noneof", ["latest"], "latest", False),
    ("matches", [r"^\d+\.\d+$"], "1.4", True), ("matches", [r"^\d+\.\d+$"], "1.4-rc", False),
])
def test_each_operator(operator, values, tag, expected):
    rules = criteria.validate_rules([{"field": "tag", "operator": operator, "values": values}])
    assert criteria.matches(rules, tag) is expected


def test_all_rules_must_hold_and_no_rules_match_everything():
    rules = criteria.validate_rules([{"field": "tag", "operator": "sw", "values": ["1."]},
                                     {"field": "tag", "operator": "noneof", "values": ["1.0"]}])
    assert criteria.matches(rules, "1.1") and not criteria.matches(rules, "1.0") and not criteria.matches(rules, "2.1")
    assert criteria.matches([], "anything")


def test_templates():
    now = datetime(2026, 11, 27, 8, 5, 9)
    assert criteria.render("%n", "1.4", now) == "1.4"
    assert criteria.render("%n-%Y%m%d-%H%M%S", "1.4", now) == "1.4-20261127-080509"
    assert criteria.render("release-%n-100%%", "1.4", now) == "release-1.4-100%"
