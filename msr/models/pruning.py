"""Tag pruning policies (issue 17): rules that pick the tags of a repository to delete,
and the runs that apply them (msr/pruning.py). Pruning deletes tags only; garbage
collection frees the bytes later."""

from django.conf import settings
from django.db import models
from django.db.models.functions import Concat
from django.utils import timezone

from msr.models.registry import Repository


class PruningPolicy(models.Model):
    """A repository's pruning policy: a tag goes when every rule holds for it (rule shape
    `{"field": "tag" | "last_pushed" | "last_pulled", "operator": ..., "values": [...]}`,
    validated by msr.pruning.validate_rules). A tag goes if any enabled policy of its
    repository picks it, unless it is protected."""

    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="pruning_policies")
    rules = models.JSONField(default=list)
    enabled = models.BooleanField(default=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "pruning policies"
        ordering = ["pk"]

    def __str__(self):
        return f"pruning policy {self.pk} of {self.repository}"


class PruningRun(models.Model):
    """One run of a policy (dry or real): the tags it picked, those it deleted, the tags
    it kept because they are protected, and a log a person can read."""

    WAITING, RUNNING, DONE, FAILED = "waiting", "running", "done", "failed"
    STATUSES = [(s, s) for s in (WAITING, RUNNING, DONE, FAILED)]
    SCHEDULE, API, UI = "schedule", "api", "ui"
    TRIGGERS = [(t, t) for t in (SCHEDULE, API, UI)]

    policy = models.ForeignKey(PruningPolicy, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs")
    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="pruning_runs")
    rules = models.JSONField(default=list)  # the policy's rules when the run began
    dry_run = models.BooleanField(default=False)
    status = models.CharField(max_length=8, choices=STATUSES, default=WAITING, db_index=True)
    trigger = models.CharField(max_length=8, choices=TRIGGERS, default=API)
    triggered_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    candidates = models.JSONField(default=list, blank=True)  # [{"tag", "digest"}] the rules picked
    protected = models.JSONField(default=list, blank=True)  # [{"tag", "digest", "reason"}]
    pruned = models.JSONField(default=list, blank=True)  # [{"tag", "digest"}] deleted (real runs)
    log = models.TextField(blank=True)
    error = models.CharField(max_length=1000, blank=True)

    class Meta:
        indexes = [models.Index(fields=["repository", "-created_at"], name="pruning_run_repo_idx")]

    def __str__(self):
        return f"pruning run {self.pk} of {self.repository}"

    def append_log(self, message: str) -> None:
        line = f"{timezone.now():%Y-%m-%d %H:%M:%S} {message}\n"
        self.log += line
        PruningRun.objects.filter(pk=self.pk).update(
            log=Concat(models.F("log"), models.Value(line), output_field=models.TextField()))
