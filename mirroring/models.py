"""Policies that move images between repositories and registries, and the jobs that run
them.

One table holds the three kinds of policy (one id space, so a job names its policy by id
alone); the fields a kind does not use stay empty. Secrets (a remote's password or
token) are Fernet-encrypted with msr.crypto and never leave the server.
"""

from django.conf import settings
from django.db import models
from django.db.models import F, Value
from django.db.models.functions import Concat
from django.utils import timezone

from msr.models import Repository


class Policy(models.Model):
    PROMOTION, PUSH_MIRROR, POLL_MIRROR = "promotion", "push_mirror", "poll_mirror"
    KINDS = [(PROMOTION, "Promotion"), (PUSH_MIRROR, "Push mirroring"), (POLL_MIRROR, "Poll mirroring")]

    kind = models.CharField(max_length=12, choices=KINDS)
    # The source repository (promotion, push mirroring) or the local one (poll mirroring).
    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="policies")
    enabled = models.BooleanField(default=True)
    # [{"field": "tag", "operator": "sw", "values": ["1."]}, ...]; all must hold.
    rules = models.JSONField(default=list, blank=True)
    # Promotion: the target repository ("ns/repo", created on first promotion).
    target_repository = models.CharField(max_length=300, blank=True, db_index=True)
    tag_template = models.CharField(max_length=200, default="%n", blank=True)
    # Mirroring: the other registry.
    remote_host = models.CharField(max_length=500, blank=True, help_text="https://registry.example.com")
    remote_repository = models.CharField(max_length=300, blank=True)
    username = models.CharField(max_length=150, blank=True)
    secret_encrypted = models.TextField(blank=True)
    secret_is_token = models.BooleanField(default=False)
    remote_ca = models.TextField(blank=True, help_text="PEM certificates the remote's TLS chain ends in")
    skip_tls_verify = models.BooleanField(default=False)
    # Poll mirroring: seconds between polls.
    interval = models.PositiveIntegerField(default=1800)
    last_polled_at = models.DateTimeField(null=True, blank=True)
    # The policy acts for this user, with their rights at the time it acts (jobs.owner_refusal).
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "policies"
        indexes = [models.Index(fields=["repository", "kind"], name="policy_repo_kind_idx")]

    def __str__(self):
        if self.kind == self.PROMOTION:
            return f"promote {self.repository} → {self.target_repository}"
        if self.kind == self.PUSH_MIRROR:
            return f"push {self.repository} → {self.remote_host}/{self.remote_repository}"
        return f"poll {self.remote_host}/{self.remote_repository} → {self.repository}"

    @property
    def local_target(self) -> str:
        """The repository of this deployment the policy writes into ("" for a push mirror,
        which writes elsewhere): its admins see the policy and its jobs, and may stop it."""
        if self.kind == self.PROMOTION:
            return self.target_repository
        if self.kind == self.POLL_MIRROR:
            return self.repository.full_name
        return ""

    @property
    def action(self) -> str:
        return {self.PROMOTION: Job.PROMOTE, self.PUSH_MIRROR: Job.PUSH_MIRROR,
                self.POLL_MIRROR: Job.POLL_MIRROR}[self.kind]


class PromotionPolicy(Policy):
    class Meta:
        proxy = True
        verbose_name_plural = "promotion policies"


class PushMirroringPolicy(Policy):
    class Meta:
        proxy = True
        verbose_name_plural = "push mirroring policies"


class PollMirroringPolicy(Policy):
    class Meta:
        proxy = True
        verbose_name_plural = "poll mirroring policies"


class Job(models.Model):
    """One run of a policy. The row is written before the task is queued; a worker claims
    it with a compare-and-set on its status, keeps `heartbeat_at` fresh while it works,
    and records progress (bytes done of total) and a log a person can read."""

    PROMOTE, PUSH_MIRROR, POLL_MIRROR = "promote", "push_mirror", "poll_mirror"
    ACTIONS = [(PROMOTE, "Promotion"), (PUSH_MIRROR, "Push mirroring"), (POLL_MIRROR, "Poll mirroring")]
    WAITING, RUNNING, DONE, FAILED, CANCELED = "waiting", "running", "done", "failed", "canceled"
    STATUSES = [(s, s) for s in (WAITING, RUNNING, DONE, FAILED, CANCELED)]
    ACTIVE = (WAITING, RUNNING)

    action = models.CharField(max_length=12, choices=ACTIONS)
    policy = models.ForeignKey(Policy, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs")
    repository = models.CharField(max_length=300, help_text="the policy's repository, kept if it is deleted")
    # The repository of this deployment the job writes into (promotion, poll mirroring).
    target = models.CharField(max_length=300, blank=True, db_index=True)
    # The tag (and its digest when triggered by a push) to work on; empty: every tag that
    # matches the policy's rules.
    tag = models.CharField(max_length=128, blank=True)
    digest = models.CharField(max_length=150, blank=True)
    # How many promotions led to this one (chains are bounded).
    depth = models.PositiveSmallIntegerField(default=0)
    triggered_by = models.CharField(max_length=150, blank=True)
    status = models.CharField(max_length=8, choices=STATUSES, default=WAITING, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    cancel_requested = models.BooleanField(default=False)
    claim = models.CharField(max_length=64, blank=True)
    bytes_total = models.BigIntegerField(default=0)
    bytes_done = models.BigIntegerField(default=0)
    # What the job produced: {"tag": ..., "digest": ...} per image copied or promoted.
    results = models.JSONField(default=list, blank=True)
    error = models.CharField(max_length=1000, blank=True)
    log = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    next_run_at = models.DateTimeField(default=timezone.now)
    queued_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["policy", "status"], name="job_policy_status_idx")]

    def __str__(self):
        return f"job {self.pk} {self.action} {self.repository} ({self.status})"

    def append_log(self, message: str, claim: str | None = None) -> None:
        """Add a timestamped line; with `claim`, only while this run still owns the job."""
        line = f"{timezone.now().strftime('%Y-%m-%d %H:%M:%S')} {message}\n"
        jobs = Job.objects.filter(pk=self.pk)
        if claim is not None:
            jobs = jobs.filter(claim=claim)
        jobs.update(log=Concat(F("log"), Value(line), output_field=models.TextField()))
