"""Who may see and change what acts on a repository: policies, the policies that write into
it, jobs, webhooks and their deliveries, cell by cell over the REST API (the personas of
tests/conftest.py; the repositories acme/public-app and acme/private-app).

Everything here is administration: the organization's owner, its admin team and system
admins; nobody else, whatever they may pull or push, and a refusal shows nothing of it."""

import pytest
import requests

ADMINS = {"alice", "adam", "admin"}
PERSONAS = ["alice", "adam", "wanda", "bob", "mel", "carol", None, "admin"]
ACTIONS = ["list policies", "create policy", "list incoming policies", "see a job", "list jobs",
           "cancel a job", "create webhook", "see a webhook", "read deliveries", "edit a webhook"]
CELLS = [(p, v, a) for p in PERSONAS for v in ("public", "private") for a in ACTIONS]
MARK = "rbac-matrix-marker"


@pytest.fixture(scope="module")
def fixtures_by_visibility(msr, personas):
    """Per repository: a promotion policy, a waiting job and a webhook with a delivery,
    all made by alice (the owner)."""
    from mirroring.models import Job, Policy
    from msr.models import Repository, Webhook, WebhookDelivery

    made = {}
    for visibility in ("public", "private"):
        repository = Repository.objects.select_related("namespace").get(namespace__name="acme",
                                                                        name=f"{visibility}-app")
        other = "acme/private-app" if visibility == "public" else "acme/public-app"
        policy = Policy.objects.create(kind=Policy.PROMOTION, repository=repository, target_repository=other,
                                       tag_template=f"%n-{MARK}", created_by=personas["alice"].user, enabled=False)
        job = Job.objects.create(action=Job.PROMOTE, policy=policy, repository=repository.full_name,
                                 target=other, tag=MARK, triggered_by="alice")
        hook = Webhook.objects.create(event_type=Webhook.TAG_PUSH, namespace=repository.namespace,
                                      repository=repository, endpoint=f"http://127.0.0.1:9/{MARK}",
                                      created_by=personas["alice"].user)
        WebhookDelivery.objects.create(webhook=hook, event_type=Webhook.TAG_PUSH,
                                       payload={"contents": {"tag": MARK}}, status="failed")
        made[visibility] = {"repository": repository.full_name, "policy": policy.pk, "job": job.pk,
                            "webhook": hook.pk, "target": other}
    yield made
    Job.objects.filter(tag=MARK).delete()
    Policy.objects.filter(tag_template__endswith=MARK).delete()
    Webhook.objects.filter(endpoint__endswith=MARK).delete()


def _request(msr, personas, persona, method, path, **kwargs):
    auth = (persona, personas[persona].password) if persona else None
    return requests.request(method, f"{msr}/api/v0/{path}", auth=auth, timeout=30, **kwargs)


@pytest.mark.parametrize("persona,visibility,action", CELLS,
                         ids=[f"{p or 'anonymous'}-{v}-{a.replace(' ', '_')}" for p, v, a in CELLS])
def test_administration_of_what_acts_on_a_repository(msr, personas, fixtures_by_visibility, persona, visibility,
                                                     action):
    made = fixtures_by_visibility[visibility]
    repo = made["repository"]
    allowed = persona in ADMINS
    call = {
        "list policies": ("GET", f"repositories/{repo}/promotionPolicies", None),
        "create policy": ("POST", f"repositories/{repo}/promotionPolicies",
                          {"targetRepository": made["target"], "tagTemplate": "%n-created", "enabled": False}),
        "list incoming policies": ("GET", f"repositories/{made['target']}/incomingPolicies", None),
        "see a job": ("GET", f"jobs/{made['job']}", None),
        "list jobs": ("GET", "jobs", None),
        "cancel a job": ("POST", f"jobs/{made['job']}/cancel", None),
        "create webhook": ("POST", "webhooks", {"type": "TAG_PUSH", "key": repo,
                                                "endpoint": "http://127.0.0.1:9/created"}),
        "see a webhook": ("GET", f"webhooks/{made['webhook']}", None),
        "read deliveries": ("GET", f"webhooks/{made['webhook']}/deliveries", None),
        "edit a webhook": ("PATCH", f"webhooks/{made['webhook']}", {"enabled": False}),
    }[action]
    method, path, body = call
    response = _request(msr, personas, persona, method, path, json=body)
    if action == "list jobs" and persona is not None:
        # Everyone may list; the list holds only jobs of what they administer.
        assert response.status_code == 200
        assert (made["job"] in [j["id"] for j in response.json()["results"]]) == allowed
        return
    if action == "cancel a job" and allowed:
        # Cancelling is administration too (the job is waiting: no worker runs here).
        assert response.status_code == 200 and response.json()["status"] == "canceled"
        from mirroring.models import Job

        Job.objects.filter(pk=made["job"]).update(status="waiting", cancel_requested=False, finished_at=None)
        return
    if allowed:
        assert 200 <= response.status_code < 300, response.text
        if method == "POST" and action == "create policy":
            _request(msr, personas, persona, "DELETE", f"{path}/{response.json()['id']}")
        if action == "create webhook":
            _request(msr, personas, persona, "DELETE", f"webhooks/{response.json()['id']}")
    else:
        assert 400 <= response.status_code < 500, response.text
        assert MARK not in response.text
        if action == "list incoming policies" and persona is not None:
            # Those who may read the target but not administer it are told so; others see nothing.
            assert response.status_code in (403, 404)
