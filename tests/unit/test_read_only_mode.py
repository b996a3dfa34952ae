"""Read-only mode in-process: which requests pass the middleware, the switches, the
per-process cache and the audit event (the real clients: tests/test_read_only.py)."""

import pytest

from msr import readonly
from msr.models import Event
from msr.project.readonly_middleware import allowed


@pytest.mark.parametrize("method,path,passes", [
    ("GET", "/api/v0/repositories", True),
    ("HEAD", "/repositories/", True),
    ("POST", "/v2/team/app/blobs/uploads/", True),        # the protocol's views answer for themselves
    ("POST", "/auth/token", True),
    ("PATCH", "/api/v0/meta/settings", True),
    ("DELETE", "/api/v0/tokens/3", True),
    ("PATCH", "/api/v0/tokens/3", False),
    ("POST", "/api/v0/tokens", False),
    ("DELETE", "/api/v0/sessions/abc", True),
    ("POST", "/api/v0/content_caches/pulls", True),
    ("POST", "/api/v0/jobs", True),
    ("POST", "/api/v0/repositories/team", False),
    ("DELETE", "/api/v0/repositories/team/app/tags/v1", False),
    ("POST", "/api/v0/repositories/team/app/promotionPolicies", False),
    ("POST", "/login/", True),
    ("POST", "/console/read-only/", True),
    ("POST", "/tokens/", False),
    ("POST", "/repositories/team/app/tags/v1/delete/", False),
    ("POST", "/admin/accounts/user/add/", False),
    ("POST", "/api/v0/directory/syncs", True),             # locks leavers out; no registry content
    ("PATCH", "/api/v0/accounts/acme/teams/devs", False),  # a team's binding is a change
])
def test_it_lets_reads_and_the_listed_writes_through(method, path, passes):
    assert allowed(method, path) is passes


@pytest.fixture
def fresh():
    readonly.forget()
    yield
    readonly.forget()


def test_the_switch_is_audited_and_seen_after_the_cache(db, django_user_model, settings, fresh):
    settings.READ_ONLY_CACHE_SECONDS = 60
    admin = django_user_model.objects.create_user("root", is_superuser=True, is_staff=True)
    assert not readonly.is_read_only()
    assert readonly.set_read_only(True, admin)
    assert readonly.is_read_only()  # the process that changed it forgets its cached answer
    assert not readonly.set_read_only(True, admin)  # no change, no second event
    events = list(Event.objects.filter(type=Event.SETTINGS).values_list("actor", "detail"))
    assert events == [("root", {"readOnly": True, "action": "entered read-only mode"})]
    from msr.models import SystemSettings

    assert readonly.is_read_only()  # read and cached
    SystemSettings.objects.filter(pk=1).update(read_only=False)  # another process leaves it
    assert readonly.is_read_only()  # still cached here
    readonly.forget()
    assert not readonly.is_read_only()


def test_the_environment_holds_it_on(db, django_user_model, settings, fresh):
    settings.READ_ONLY = True
    admin = django_user_model.objects.create_user("root", is_superuser=True, is_staff=True)
    assert readonly.is_read_only()
    with pytest.raises(readonly.ReadOnlyLocked, match="MSR_READ_ONLY"):
        readonly.set_read_only(False, admin)
    assert readonly.state()["readOnlyFromEnvironment"] and not readonly.state()["readOnlyRuntime"]


def test_a_job_that_writes_here_waits_without_spending_an_attempt(db, settings, fresh):
    from datetime import timedelta

    from django.utils import timezone

    from mirroring import jobs
    from mirroring.models import Job

    settings.READ_ONLY = True
    poll = Job.objects.create(action=Job.POLL_MIRROR, repository="team/app")
    push = Job.objects.create(action=Job.PUSH_MIRROR, repository="team/app")
    assert jobs.execute(poll.pk) == Job.WAITING
    Job.objects.filter(pk=poll.pk).update(next_run_at=timezone.now() - timedelta(seconds=1))
    assert jobs.execute(poll.pk) == Job.WAITING  # the next look: still waiting, no second log line
    poll.refresh_from_db()
    assert (poll.status, poll.attempts, poll.log.count(readonly.MESSAGE)) == (Job.WAITING, 0, 1)
    assert poll.next_run_at > timezone.now()
    assert not jobs.wait_while_read_only(push.pk)  # push mirroring only reads here: it runs
    with pytest.raises(jobs.ReadOnlyWait):  # a run that began before read-only stops at its next check
        jobs.Run(Job(pk=poll.pk, action=Job.PROMOTE), "claim").check()
    settings.READ_ONLY = False
    assert not jobs.wait_while_read_only(poll.pk)
