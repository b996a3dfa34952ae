"""Web console pages for promotion and mirroring policies and their jobs.

Input goes through the REST API's serializers (mirroring.api) and is saved the way the
API saves it (a mirror is tried against the remote before the transaction commits), so
the two accept exactly the same things. Permissions come from msr.access like every
other page: a repository the user may not read is a 404, one they may read but not
administer a 403."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db import transaction
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST
from rest_framework import serializers
from rest_framework.exceptions import PermissionDenied as ApiPermissionDenied

from accounts.permissions import ADMIN
from mirroring import criteria
from mirroring import forms as policy_forms
from mirroring.api import (
    PollMirroringPolicySerializer, PromotionPolicySerializer, PushMirroringPolicySerializer, _visible_jobs,
    incoming_policies, set_enabled,
)
from mirroring.jobs import cancel, create_job
from mirroring.models import Job, Policy
from msr.access import repository_for

MIB = 1024 * 1024

# kind → (form prefix and section id, serializer, form, a person's name for it)
KINDS = {
    Policy.PROMOTION: ("promotion", PromotionPolicySerializer, policy_forms.PromotionForm, "promotion"),
    Policy.PUSH_MIRROR: ("push", PushMirroringPolicySerializer, policy_forms.PushMirroringForm, "push mirroring"),
    Policy.POLL_MIRROR: ("poll", PollMirroringPolicySerializer, policy_forms.PollMirroringForm, "poll mirroring"),
}


def _admin_repository(request, namespace, repository):
    """The repository, if the user administers it (404 if they cannot read it, 403 if
    they can read but not administer it)."""
    return repository_for(request.user, namespace, repository, ADMIN)


def describe_rules(rules) -> list[str]:
    if not rules:
        return ["every tag"]
    return [f"{rule.get('field', 'tag')} {criteria.OPERATORS.get(rule.get('operator'), rule.get('operator'))} "
            + ", ".join(f"“{v}”" for v in rule.get("values", [])) for rule in rules]


def save_policy(request, repository, kind, data, instance=None):
    """Validate `data` with the API's serializer and save it as the API does. Returns
    (policy, None) or (None, errors in the serializer's shape)."""
    _, serializer_class, _, _ = KINDS[kind]
    serializer = serializer_class(instance, data=data, partial=instance is not None,
                                  context={"request": request, "repository": repository})
    extra = {} if instance is not None else {"created_by": request.user}
    try:
        if not serializer.is_valid():
            return None, serializer.errors
        with transaction.atomic():
            policy = serializer.save(kind=kind, repository=repository, updated_at=timezone.now(), **extra)
            if hasattr(serializer, "check_remote"):
                serializer.check_remote(policy)  # raises (and rolls back) if the remote refuses
    except serializers.ValidationError as e:
        return None, e.detail
    except ApiPermissionDenied as e:  # the promotion target is not writable by this user
        return None, {"targetRepository": [str(e.detail)]}
    return policy, None


def _policies_url(repository, anchor=""):
    url = reverse("mirroring:policies", kwargs={"namespace": repository.namespace.name,
                                                "repository": repository.name})
    return f"{url}#{anchor}" if anchor else url


def _unbound_form(kind):
    prefix, _, form_class, _ = KINDS[kind]
    return form_class(prefix=prefix)


@login_required
def policies(request, namespace, repository):
    found = _admin_repository(request, namespace, repository)
    forms = {kind: None for kind in KINDS}
    status = 200
    if request.method == "POST":
        kind = request.POST.get("kind", "")
        if kind not in KINDS:
            raise Http404("no such kind of policy")
        prefix, _, form_class, label = KINDS[kind]
        adding_row = "add_rule" in request.POST
        form = form_class(request.POST, prefix=prefix,
                          rows=form_class.rows_in(request.POST, prefix, add=adding_row))
        if not adding_row:
            policy, errors = save_policy(request, found, kind, form.api_data())
            if policy is not None:
                messages.success(request, f"Created the {label} policy {policy.pk}.")
                return redirect(_policies_url(found, prefix))
            form.add_api_errors(errors)
            status = 400
        forms[kind] = form
    for kind in KINDS:
        forms[kind] = forms[kind] or _unbound_form(kind)

    listed = {kind: [] for kind in KINDS}
    for policy in Policy.objects.filter(repository=found).select_related("created_by").order_by("pk"):
        policy.rules_text = describe_rules(policy.rules)
        policy.last_job = policy.jobs.order_by("-pk").first()
        listed[policy.kind].append(policy)
    incoming = [p for p in incoming_policies(found) if p.kind == Policy.PROMOTION and p.repository_id != found.pk]
    for policy in incoming:
        policy.rules_text = describe_rules(policy.rules)
        policy.last_job = policy.jobs.order_by("-pk").first()
    return render(request, "mirroring/policies.html", {
        "repository": found,
        "promotion_policies": listed[Policy.PROMOTION], "promotion_form": forms[Policy.PROMOTION],
        "push_policies": listed[Policy.PUSH_MIRROR], "push_form": forms[Policy.PUSH_MIRROR],
        "poll_policies": listed[Policy.POLL_MIRROR], "poll_form": forms[Policy.POLL_MIRROR],
        "incoming_policies": incoming,
    }, status=status)


@login_required
@require_POST
def incoming_action(request, namespace, repository, policy_id, action):
    """The admins of a repository stop (or start again) a promotion of another repository
    that writes into theirs."""
    found = _admin_repository(request, namespace, repository)
    policy = get_object_or_404(incoming_policies(found), pk=policy_id)
    set_enabled(policy, action == "enable", request)
    messages.success(request, f"{action.capitalize()}d promotion policy {policy.pk} from {policy.repository}.")
    return redirect(_policies_url(found, "incoming"))


@login_required
@require_POST
def policy_action(request, namespace, repository, policy_id, action):
    found = _admin_repository(request, namespace, repository)
    policy = get_object_or_404(Policy, pk=policy_id, repository=found)
    prefix, _, _, label = KINDS[policy.kind]
    if action == "run":
        with transaction.atomic():
            job = create_job(policy, triggered_by=request.user.username)
        messages.success(request, f"Job {job.pk} is queued.")
        return redirect("mirroring:job", job_id=job.pk)
    if action == "delete":
        policy.delete()
        messages.success(request, f"Deleted the {label} policy {policy_id}.")
    elif action in ("enable", "disable"):
        _, errors = save_policy(request, found, policy.kind, {"enabled": action == "enable"}, instance=policy)
        if errors:
            text = "; ".join(policy_forms._flatten(errors))
            messages.error(request, f"The {label} policy {policy.pk} was not {action}d: {text}")
        else:
            messages.success(request, f"{action.capitalize()}d the {label} policy {policy.pk}.")
    else:
        raise Http404("no such action")
    return redirect(_policies_url(found, prefix))


# -- jobs ------------------------------------------------------------------------------------


def _mib(n: int) -> str:
    return f"{n / MIB:.1f}"


def _with_progress(job: Job) -> Job:
    """Attributes the progress bar needs: value and max, and the same in words."""
    job.is_active = job.status in Job.ACTIVE
    if job.bytes_total:
        job.progress_value, job.progress_max = job.bytes_done, job.bytes_total
        job.progress_text = f"{_mib(job.bytes_done)} MiB of {_mib(job.bytes_total)} MiB"
        job.progress_percent = round(100 * job.bytes_done / job.bytes_total)
    elif job.status == Job.DONE:
        job.progress_value, job.progress_max, job.progress_text, job.progress_percent = 1, 1, "nothing to copy", 100
    else:
        job.progress_value, job.progress_max, job.progress_percent = 0, 1, 0
        job.progress_text = {Job.WAITING: "not started", Job.RUNNING: "size not known yet"}.get(
            job.status, "nothing copied")
    return job


def _visible_job(request, job_id) -> Job:
    return _with_progress(get_object_or_404(
        _visible_jobs(request.user, pk=job_id).select_related("policy__repository__namespace"), pk=job_id))


@login_required
def jobs(request):
    found = _visible_jobs(request.user).select_related("policy__repository__namespace")
    status, action, policy = (request.GET.get("status", ""), request.GET.get("action", ""),
                              request.GET.get("policy", ""))
    if status in dict(Job.STATUSES):
        found = found.filter(status=status)
    else:
        status = ""
    if action in dict(Job.ACTIONS):
        found = found.filter(action=action)
    else:
        action = ""
    if policy.isdigit():
        found = found.filter(policy_id=int(policy))
    else:
        policy = ""
    page = Paginator(found.order_by("-pk"), 50).get_page(request.GET.get("page"))
    for job in page:
        _with_progress(job)
    query = "&".join(f"{k}={v}" for k, v in (("status", status), ("action", action), ("policy", policy)) if v)
    return render(request, "mirroring/jobs.html", {
        "page": page, "status": status, "action": action, "policy": policy, "query": query,
        "statuses": [s for s, _ in Job.STATUSES], "actions": Job.ACTIONS,
    })


@login_required
def job(request, job_id):
    return render(request, "mirroring/job.html", {"job": _visible_job(request, job_id)})


@login_required
def job_progress(request, job_id):
    """The part of the job page that refreshes itself (htmx) while the job is active."""
    return render(request, "mirroring/_job_progress.html", {"job": _visible_job(request, job_id)})


@login_required
@require_POST
def job_cancel(request, job_id):
    found = _visible_job(request, job_id)
    if found.status not in Job.ACTIVE:
        messages.error(request, f"The job is already {found.status}.")
    else:
        found = cancel(found)
        if found.status == Job.CANCELED:
            messages.success(request, f"Canceled job {found.pk}.")
        else:
            messages.success(request, f"Asked job {found.pk} to stop: the worker stops at the next piece.")
    return redirect("mirroring:job", job_id=found.pk)
