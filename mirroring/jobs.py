"""Creating, running and finishing jobs. A job row is written (in the caller's
transaction) before its task is queued (on commit), so no queued task lacks its row and
no row is lost with a lost message: beat's tick queues again what waits too long."""

import logging
import threading
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from mirroring import criteria
from mirroring.client import Permanent, RegistryError, Remote
from mirroring.engine import Canceled, LocalEnd, Progress, RemoteEnd, copy_image
from mirroring.models import Job, Policy
from msr import readonly, services
from msr.crypto import decrypt
from msr.exceptions import DomainError, RepositoryNotFound

log = logging.getLogger(__name__)


def create_job(policy: Policy, tag: str = "", digest: str = "", depth: int = 0, triggered_by: str = "") -> Job:
    """A waiting job for `policy`; its task is queued when the transaction commits."""
    job = Job.objects.create(action=policy.action, policy=policy, repository=policy.repository.full_name,
                             target=policy.local_target, tag=tag, digest=digest, depth=depth,
                             triggered_by=triggered_by)
    job.append_log(f"queued: {policy} ({'tag ' + tag if tag else 'every matching tag'}"
                   f"{', by ' + triggered_by if triggered_by else ''})")
    queue(job.pk)
    return job


def queue(job_id: int, countdown: float = 0) -> None:
    from mirroring.tasks import run_job
    from msr import outbox

    outbox.send(run_job, job_id, countdown=countdown)


def cancel(job: Job) -> Job:
    """Cancel a waiting job at once; ask a running one to stop (it does between pieces)."""
    now = timezone.now()
    if Job.objects.filter(pk=job.pk, status=Job.WAITING).update(status=Job.CANCELED, finished_at=now,
                                                                   cancel_requested=True):
        job.append_log("canceled before it ran")
    elif Job.objects.filter(pk=job.pk, status=Job.RUNNING).update(cancel_requested=True):
        job.append_log("cancel requested; the worker stops at the next piece")
    job.refresh_from_db()
    return job


def remote_for(policy: Policy) -> Remote:
    return Remote(policy.remote_host, policy.remote_repository, username=policy.username,
                  secret=decrypt(policy.secret_encrypted) if policy.secret_encrypted else "",
                  secret_is_token=policy.secret_is_token, ca_pem=policy.remote_ca,
                  skip_tls_verify=policy.skip_tls_verify, timeout=settings.MIRROR_TIMEOUT_SECONDS)


# Jobs that write into this deployment: they wait while it is read-only. Push mirroring
# only reads here (it writes to the remote) and goes on.
WRITES_HERE = (Job.PROMOTE, Job.POLL_MIRROR)
READ_ONLY_WAIT = "waiting: the registry is in read-only mode"


class ReadOnlyWait(Exception):
    """Read-only mode began while the job ran: it goes back to waiting."""


def wait_while_read_only(job_id: int) -> bool:
    """In read-only mode, put a due job that writes here back to waiting for
    READ_ONLY_JOB_WAIT_SECONDS (compare-and-set: one of duplicate messages does it) and
    queue its next look. Not failed, no attempt spent. True when the job was put back."""
    if not readonly.is_read_only():
        return False
    now = timezone.now()
    delay = settings.READ_ONLY_JOB_WAIT_SECONDS
    previous = Job.objects.filter(pk=job_id).values_list("error", flat=True).first()
    with transaction.atomic():
        postponed = Job.objects.filter(
            pk=job_id, status=Job.WAITING, action__in=WRITES_HERE, cancel_requested=False,
            next_run_at__lte=now + timedelta(seconds=1),
        ).update(next_run_at=now + timedelta(seconds=delay), queued_at=now, error=READ_ONLY_WAIT)
        if postponed:
            queue(job_id, countdown=delay)
    if postponed and previous != READ_ONLY_WAIT:  # one log line per wait, not one per look
        Job(pk=job_id).append_log(f"{readonly.MESSAGE}: the job waits and runs when it ends "
                                  f"(looking again every {delay:g} s)")
        log.info("job %s waits: read-only mode", job_id)
    return bool(postponed)


class ClaimLost(Exception):
    """Another run took the job over (this one was thought dead)."""


class Run:
    """One attempt at a job by this worker: the claim, the heartbeat that carries
    progress to the row, and the log."""

    def __init__(self, job: Job, claim: str):
        self.job, self.claim = job, claim
        self.progress = Progress()
        self.canceled = self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"job-{job.pk}-heartbeat", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.flush()

    def log(self, message: str) -> None:
        self.job.append_log(message, claim=self.claim)

    def flush(self) -> None:
        from django.db import connection

        done, total = self.progress.snapshot()
        updated = Job.objects.filter(pk=self.job.pk, claim=self.claim).update(
            heartbeat_at=timezone.now(), bytes_done=done, bytes_total=total)
        if not updated:
            self.lost = True
        elif Job.objects.filter(pk=self.job.pk, cancel_requested=True).exists():
            self.canceled = True
        if threading.current_thread() is self._thread:
            connection.close()

    def _beat(self) -> None:
        while not self._stop.wait(settings.MIRROR_HEARTBEAT_SECONDS):
            try:
                self.flush()
            except Exception:  # a database hiccup must not end the copy; the next beat retries
                log.exception("job %s: heartbeat failed", self.job.pk)

    def check(self) -> None:
        if self.lost:
            raise ClaimLost()
        if self.canceled:
            raise Canceled()
        if self.job.action in WRITES_HERE and readonly.is_read_only():
            raise ReadOnlyWait()


def claim(job_id: int) -> tuple[Job | None, str]:
    """Compare-and-set: take a waiting job that is due, or a running one whose worker
    stopped beating. Returns (job, claim) or (None, "") if someone else has it."""
    now = timezone.now()
    token = uuid.uuid4().hex
    stale = now - timedelta(seconds=settings.MIRROR_STALE_SECONDS)
    previous = Job.objects.filter(pk=job_id).values_list("status", flat=True).first()
    taken = Job.objects.filter(
        Q(status=Job.WAITING, next_run_at__lte=now + timedelta(seconds=1))
        | Q(status=Job.RUNNING, heartbeat_at__lt=stale),
        pk=job_id, cancel_requested=False,
    ).update(status=Job.RUNNING, claim=token, attempts=F("attempts") + 1, heartbeat_at=now,
             started_at=now, bytes_done=0, bytes_total=0, error="")
    if not taken:
        return None, ""
    job = Job.objects.select_related("policy__repository__namespace", "policy__created_by").get(pk=job_id)
    if previous == Job.RUNNING:
        job.append_log("the worker running this job stopped answering; starting again", claim=token)
    job.append_log(f"attempt {job.attempts} started", claim=token)
    return job, token


def owner_refusal(policy: Policy) -> str:
    """Why `policy` may not act now (empty if it may). A policy acts for the user who
    created it, with that user's rights of this moment, not of the day it was saved:
    read on the repository it copies from, write on the repository it writes into."""
    from accounts.models import Namespace
    from accounts.permissions import PULL, PUSH, repository_actions
    from msr.references import split_name

    owner = policy.created_by
    if owner is None or not owner.is_active:
        return "refused: the user who created this policy no longer exists or is deactivated"
    local = policy.repository
    needs = {Policy.PROMOTION: [(PULL, local)], Policy.PUSH_MIRROR: [(PULL, local)],
             Policy.POLL_MIRROR: [(PUSH, local)]}[policy.kind]
    for action, repository in needs:
        if action not in repository_actions(owner, repository.namespace, repository):
            return (f"refused: {owner.username}, who created this policy, no longer has "
                    f"{'read' if action == PULL else 'write'} access to {repository.full_name}")
    if policy.kind == Policy.PROMOTION:
        namespace_name, rest = split_name(policy.target_repository)
        namespace = Namespace.objects.filter(name=namespace_name).first()
        target = services.find_repository(policy.target_repository)
        if PUSH not in repository_actions(owner, namespace, target):
            return (f"refused: {owner.username}, who created this policy, no longer has write access "
                    f"to {policy.target_repository}")
    return ""


def _check_owner(policy: Policy) -> None:
    refusal = owner_refusal(policy)
    if refusal:
        raise Permanent(refusal)


def _tags_to_do(job: Job, end, rules) -> list[tuple[str, str]]:
    """(tag, reference to copy) pairs: the job's tag at the digest that was pushed, or
    every tag of the source that matches the rules."""
    if job.tag:
        return [(job.tag, job.digest or job.tag)]
    if isinstance(end, LocalEnd):
        tags = sorted(end.repository.tags.values_list("name", flat=True))
    else:
        tags = sorted(end.remote.tags())
    return [(t, t) for t in tags if criteria.matches(rules, t)]


def perform(job: Job, run: Run) -> list[dict]:
    policy = job.policy
    if policy is None:
        raise Permanent("the policy was deleted")
    _check_owner(policy)
    now = timezone.now()
    results = []
    owner = policy.created_by
    if policy.kind == Policy.PROMOTION:
        source = LocalEnd(policy.repository, owner)
        try:
            target = services.ensure_repository(policy.target_repository)
        except RepositoryNotFound:
            raise Permanent(f"the target repository {policy.target_repository} cannot be created "
                            "(its namespace does not exist)") from None
        for tag, reference in _tags_to_do(job, source, policy.rules):
            run.check()
            _check_owner(policy)
            digest = reference if ":" in reference else source.manifest(reference)[2]
            target_tag = criteria.render(policy.tag_template, tag, now)
            try:
                _, changed = services.link_manifest(policy.repository, digest, target, target_tag,
                                                    policy.created_by, depth=job.depth + 1)
            except DomainError as e:
                raise Permanent(f"{policy.repository}:{tag}: {e.message}") from None
            run.log(f"{policy.repository}:{tag} → {target}:{target_tag} = {digest}"
                    f"{'' if changed else ' (already there)'}")
            results.append({"tag": tag, "targetTag": target_tag, "digest": digest,
                            "target": target.full_name})
        return results

    remote = remote_for(policy)
    with remote:
        if policy.kind == Policy.PUSH_MIRROR:
            source, destination = LocalEnd(policy.repository, owner), RemoteEnd(remote)
            remote.login(push=True)
        else:
            source, destination = RemoteEnd(remote), LocalEnd(policy.repository, owner)
            remote.login(push=False)
        todo = _tags_to_do(job, source, policy.rules)
        run.log(f"{len(todo)} tag(s) to {'push to' if policy.kind == Policy.PUSH_MIRROR else 'poll from'} "
                f"{remote.name}")
        for tag, reference in todo:
            run.check()
            _check_owner(policy)
            if policy.kind == Policy.PUSH_MIRROR:
                target_tag = criteria.render(policy.tag_template, tag, now)
            else:
                target_tag = tag
                remote_digest = source.manifest_digest(tag)
                if remote_digest is None:
                    run.log(f"{tag}: gone from the remote; skipped")
                    continue
                if destination.manifest_digest(tag) == remote_digest:
                    run.log(f"{tag}: up to date ({remote_digest})")
                    continue
                try:  # before copying a byte: an immutable tag here fails the job cleanly
                    services.refuse_tag_move(destination.repository, tag, remote_digest)
                except DomainError as e:
                    raise Permanent(f"{destination.name}: {e.message}") from None
                reference = remote_digest
            digest = copy_image(source, destination, reference, target_tag, run.progress, run.log, run.check)
            results.append({"tag": tag, "targetTag": target_tag, "digest": digest})
    return results


def finish(job: Job, token: str, status: str, results=None, error: str = "", retry_in: float | None = None) -> None:
    """Write the outcome (only if this run still owns the job) and announce it."""
    from msr.events import enqueue_deliveries
    from msr.models import Webhook

    now = timezone.now()
    fields = {"status": status, "error": error[:1000]}
    if results is not None:
        fields["results"] = results
    if retry_in is not None:
        fields.update(next_run_at=now + timedelta(seconds=retry_in), queued_at=now)
    else:
        fields["finished_at"] = now
    with transaction.atomic():
        if not Job.objects.filter(pk=job.pk, claim=token).update(**fields):
            return
        # Metrics of jobs come from these rows (msr/project/metrics.py); this line is the log's.
        log.info("job %s %s: %s", job.pk, job.action, status, extra={
            "job": job.pk, "action": job.action, "status": status, "attempts": job.attempts,
            "duration_ms": round((now - job.started_at).total_seconds() * 1000) if job.started_at else None,
            "error": error[:300]})
        if retry_in is not None:
            queue(job.pk, countdown=retry_in)
            return
        policy = job.policy
        if policy is not None and status in (Job.DONE, Job.FAILED):
            event = {Job.PROMOTE: Webhook.PROMOTION, Job.PUSH_MIRROR: Webhook.PUSH_MIRRORING,
                     Job.POLL_MIRROR: Webhook.POLL_MIRRORING}[job.action]
            contents = {"jobId": job.pk, "policyId": policy.pk, "action": job.action, "status": status,
                        "repository": job.repository, "tag": job.tag, "results": results or [],
                        "error": error, "attempts": job.attempts}
            if policy.kind == Policy.PROMOTION:
                contents["targetRepository"] = policy.target_repository
            else:
                contents["remote"] = f"{policy.remote_host}/{policy.remote_repository}"
            enqueue_deliveries(policy.repository, event, contents)


def execute(job_id: int) -> str:
    """Claim and run one job; the outcome is in the row. Returns the status, for logs."""
    if wait_while_read_only(job_id):
        return Job.WAITING
    job, token = claim(job_id)
    if job is None:
        return "not claimed"
    results = None
    try:
        with Run(job, token) as run:
            results = perform(job, run)
    except ClaimLost:
        return "taken over"
    except ReadOnlyWait:
        # What was linked before stays (each tag is linked atomically); the next run skips it.
        job.append_log(f"{readonly.MESSAGE}: stopped before the next tag; the job waits", claim=token)
        finish(job, token, Job.WAITING, results, error=READ_ONLY_WAIT,
               retry_in=settings.READ_ONLY_JOB_WAIT_SECONDS)
        return Job.WAITING
    except Canceled:
        job.append_log("canceled", claim=token)
        finish(job, token, Job.CANCELED, results)
        return Job.CANCELED
    except RegistryError as e:
        message = str(e)
        if e.transient and job.attempts < settings.MIRROR_MAX_ATTEMPTS:
            delay = settings.MIRROR_RETRY_BASE_SECONDS * 2 ** (job.attempts - 1)
            job.append_log(f"attempt {job.attempts} failed: {message}; retrying in {delay:g} s", claim=token)
            finish(job, token, Job.WAITING, error=message, retry_in=delay)
            return Job.WAITING
        job.append_log(f"failed: {message}" + (" (transient; no attempts left)" if e.transient else ""),
                       claim=token)
        finish(job, token, Job.FAILED, results, error=message)
        return Job.FAILED
    except Exception as e:  # a bug: record it readably rather than retry it forever
        log.exception("job %s failed", job_id)
        job.append_log(f"failed: internal error: {type(e).__name__}: {e}", claim=token)
        finish(job, token, Job.FAILED, results, error=f"internal error: {type(e).__name__}")
        return Job.FAILED
    done, total = run.progress.snapshot()
    job.append_log(f"done: {len(results)} image(s), {done} of {total} bytes copied", claim=token)
    finish(job, token, Job.DONE, results)
    return Job.DONE


def tick() -> dict:
    """Beat's periodic work: start poll policies that are due, and queue again jobs whose
    worker was lost (heartbeat stale) or whose message never arrived."""
    now = timezone.now()
    started = 0
    for policy in Policy.objects.filter(kind=Policy.POLL_MIRROR, enabled=True).select_related(
            "repository__namespace"):
        if policy.last_polled_at and policy.last_polled_at + timedelta(seconds=policy.interval) > now:
            continue
        with transaction.atomic():
            if Job.objects.filter(policy=policy, status__in=Job.ACTIVE).exists():
                continue
            Policy.objects.filter(pk=policy.pk).update(last_polled_at=now)
            create_job(policy, triggered_by="schedule")
            started += 1
    requeued = 0
    stale = now - timedelta(seconds=settings.MIRROR_STALE_SECONDS)
    late = now - timedelta(seconds=max(60.0, 4 * settings.MIRROR_TICK_SECONDS))
    lost = Job.objects.filter(
        Q(status=Job.RUNNING, heartbeat_at__lt=stale, queued_at__lt=stale)
        | Q(status=Job.WAITING, next_run_at__lt=late, queued_at__lt=late))
    for job_id in lost.values_list("pk", flat=True):
        with transaction.atomic():
            Job.objects.filter(pk=job_id).update(queued_at=now)
            queue(job_id)
        requeued += 1
    return {"started": started, "requeued": requeued}
