"""The repository page's "Pruning" section (msr/pruning.py): its admins add, edit, enable,
disable, run and delete pruning policies and preview what a policy would prune."""

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.shortcuts import get_object_or_404, redirect
from django.utils import timezone
from django.views.decorators.http import require_POST

from accounts.permissions import ADMIN
from msr import pruning
from msr.access import repository_for
from msr.events import record
from msr.models import Event, PruningPolicy, PruningRun

RULE_ROWS = 3
ACTIONS = [("preview", "Dry run"), ("run", "Run now"), ("delete", "Delete")]
TOGGLES = {"enable": True, "disable": False}
FIELD_CHOICES = [("", "—"), ("tag", "tag"), ("last_pushed", "last pushed"), ("last_pulled", "last pulled")]
OPERATOR_CHOICES = [("", "—")] + [(op, f"{op} ({label})") for op, label in
                                  {**pruning.TAG_OPERATORS, **pruning.TIME_OPERATORS}.items()]


class PruningPolicyForm(forms.Form):
    """Up to RULE_ROWS rules (field, operator, comma-separated values); all must hold."""

    enabled = forms.BooleanField(required=False, initial=True, label="Run on the schedule")

    def __init__(self, *args, rows=RULE_ROWS, **kwargs):
        super().__init__(*args, **kwargs)
        self.rows = rows
        for i in range(rows):
            self.fields[f"field_{i}"] = forms.ChoiceField(choices=FIELD_CHOICES, required=False,
                                                          label=f"Rule {i + 1}: field")
            self.fields[f"operator_{i}"] = forms.ChoiceField(choices=OPERATOR_CHOICES, required=False,
                                                             label=f"Rule {i + 1}: operator")
            self.fields[f"values_{i}"] = forms.CharField(required=False, label=f"Rule {i + 1}: values",
                                                         help_text="comma-separated; ages like 30d or dates")

    def clean(self):
        data = super().clean()
        rules = [{"field": data[f"field_{i}"], "operator": data[f"operator_{i}"],
                  "values": [v.strip() for v in data[f"values_{i}"].split(",") if v.strip()]}
                 for i in range(self.rows) if data.get(f"field_{i}")]
        try:
            data["rules"] = pruning.validate_rules(rules)
        except pruning.InvalidRules as e:
            raise forms.ValidationError(str(e)) from None
        return data

    def rule_rows(self):
        return [(self[f"field_{i}"], self[f"operator_{i}"], self[f"values_{i}"]) for i in range(self.rows)]

    @classmethod
    def of(cls, policy, data=None):
        """The edit form of a policy (its own prefix: one per policy on the page), filled
        with its rules, or with what was sent; None when a value holds a comma (the form
        separates values by commas: such a policy is edited through the API)."""
        if any("," in value for rule in policy.rules for value in rule["values"]):
            return None
        initial = {"enabled": policy.enabled}
        for i, rule in enumerate(policy.rules):
            initial.update({f"field_{i}": rule["field"], f"operator_{i}": rule["operator"],
                            f"values_{i}": ", ".join(rule["values"])})
        return cls(data, initial=initial, prefix=f"policy-{policy.pk}", rows=max(RULE_ROWS, len(policy.rules)))


def context(found, editing=None) -> dict:
    """What the section shows to a repository admin; `editing`: (policy id, the edit form
    that was sent and did not hold)."""
    policies = list(found.pruning_policies.all())
    edits = [(policy, editing[1] if editing and editing[0] == policy.pk else PruningPolicyForm.of(policy))
             for policy in policies]
    return {"pruning_form": PruningPolicyForm(), "pruning_actions": ACTIONS,
            "pruning_policies": policies, "pruning_edits": edits,
            "pruning_runs": list(found.pruning_runs.order_by("-created_at", "-pk")[:10])}


@login_required
@require_POST
def add_policy(request, namespace, repository):
    from msr.ui.views import _repository_page

    found = repository_for(request.user, namespace, repository, ADMIN)
    form = PruningPolicyForm(request.POST)
    if not form.is_valid():
        return _repository_page(request, found, status=400, pruning_form=form)
    with transaction.atomic():
        policy = PruningPolicy.objects.create(repository=found, rules=form.cleaned_data["rules"],
                                              enabled=form.cleaned_data["enabled"], created_by=request.user)
        record(Event.REPOSITORY, request.user.username, found.full_name, request=request,
               detail={"action": "pruning policy created", "policy": policy.pk, "rules": policy.rules,
                       "enabled": policy.enabled})
    messages.success(request, f"Added pruning policy {policy.pk}.")
    return redirect("ui:repository", namespace=namespace, repository=repository)


@login_required
@require_POST
def edit_policy(request, namespace, repository, policy_id):
    """New rules and schedule for a policy (the same form and checks as a new one)."""
    from msr.ui.views import _repository_page

    found = repository_for(request.user, namespace, repository, ADMIN)
    policy = get_object_or_404(PruningPolicy, pk=policy_id, repository=found)
    form = PruningPolicyForm.of(policy, request.POST)
    if form is None:
        messages.error(request, f"Pruning policy {policy.pk} has values with commas: edit it through the API.")
        return redirect("ui:repository", namespace=namespace, repository=repository)
    if not form.is_valid():
        return _repository_page(request, found, status=400, **context(found, editing=(policy.pk, form)))
    with transaction.atomic():
        policy = PruningPolicy.objects.select_for_update().get(pk=policy.pk)
        policy.rules, policy.enabled = form.cleaned_data["rules"], form.cleaned_data["enabled"]
        policy.updated_at = timezone.now()
        policy.save(update_fields=["rules", "enabled", "updated_at"])
        record(Event.REPOSITORY, request.user.username, found.full_name, request=request,
               detail={"action": "pruning policy updated", "policy": policy.pk, "rules": policy.rules,
                       "enabled": policy.enabled})
    messages.success(request, f"Saved pruning policy {policy.pk}.")
    return redirect("ui:repository", namespace=namespace, repository=repository)


@login_required
@require_POST
def policy_action(request, namespace, repository, policy_id, action):
    """preview (evaluate now, nothing saved), dry-run and run (queued runs), enable and
    disable (the schedule), delete."""
    from msr.ui.views import _repository_page

    found = repository_for(request.user, namespace, repository, ADMIN)
    policy = get_object_or_404(PruningPolicy, pk=policy_id, repository=found)
    if action == "preview":
        selection = pruning.select(found, [policy.rules], timezone.now())
        return _repository_page(request, found, pruning_preview={"policy": policy, "selection": selection})
    with transaction.atomic():
        if action in TOGGLES:
            policy.enabled, policy.updated_at = TOGGLES[action], timezone.now()
            policy.save(update_fields=["enabled", "updated_at"])
            record(Event.REPOSITORY, request.user.username, found.full_name, request=request,
                   detail={"action": "pruning policy updated", "policy": policy.pk, "rules": policy.rules,
                           "enabled": policy.enabled})
            schedule = "runs on the schedule" if policy.enabled else "runs on demand only"
            messages.success(request, f"Pruning policy {policy.pk} {schedule} now.")
        elif action == "delete":
            record(Event.REPOSITORY, request.user.username, found.full_name, request=request,
                   detail={"action": "pruning policy deleted", "policy": policy.pk, "rules": policy.rules})
            policy.delete()
            messages.success(request, f"Deleted pruning policy {policy_id}.")
        else:
            run = pruning.start(policy, action == "dry-run", PruningRun.UI, request.user.username)
            messages.success(request, f"Queued {'dry run' if run.dry_run else 'run'} {run.pk}.")
    return redirect("ui:repository", namespace=namespace, repository=repository)
