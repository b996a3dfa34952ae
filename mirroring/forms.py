"""Forms of the policies page. They only render fields and carry what was typed: every
rule is checked by the REST API's serializers (mirroring.api), so the web console and the
API accept exactly the same input. Field names are the API's own (targetRepository,
remoteHost, …), so what a person typed goes to the serializer as is and the serializer's
errors land next to the field they are about."""

import re

from django import forms

from mirroring import criteria

RULE_ROWS = 3
MAX_RULE_ROWS = 20
_RULE_INDEX = re.compile(r"^rule (\d+):")


def _flatten(messages) -> list[str]:
    if isinstance(messages, dict):
        return [m for value in messages.values() for m in _flatten(value)]
    if isinstance(messages, (list, tuple)):
        return [m for value in messages for m in _flatten(value)]
    return [str(messages)]


class PolicyForm(forms.Form):
    """Rule rows (operator + values) and the fields every kind has. Nothing here is
    required or limited: the serializer decides."""

    # Fields sent to the serializer when left empty are omitted, so its default applies.
    omit_when_blank: tuple[str, ...] = ()
    passed: tuple[str, ...] = ()

    enabled = forms.BooleanField(required=False, initial=True, label="Enabled")

    def __init__(self, *args, rows: int = RULE_ROWS, **kwargs):
        super().__init__(*args, **kwargs)
        self.rows = max(1, min(rows, MAX_RULE_ROWS))
        self.rule_errors: list[str] = []
        self._row_of_rule: list[int] = []
        choices = list(criteria.OPERATORS.items())
        for i in range(self.rows):
            self.fields[f"rule_operator_{i}"] = forms.ChoiceField(
                choices=choices, required=False, label=f"Rule {i + 1}: tag")
            self.fields[f"rule_values_{i}"] = forms.CharField(
                required=False, label=f"Rule {i + 1} values",
                widget=forms.TextInput(attrs={"placeholder": "value(s)", "autocomplete": "off"}))

    @staticmethod
    def rows_in(data, prefix: str, add: bool = False) -> int:
        try:
            rows = int(data.get(f"{prefix}-rule_rows", RULE_ROWS))
        except (TypeError, ValueError):
            rows = RULE_ROWS
        return max(1, min(rows + (1 if add else 0), MAX_RULE_ROWS))

    @property
    def rule_rows(self):
        return [(i + 1, self[f"rule_operator_{i}"], self[f"rule_values_{i}"]) for i in range(self.rows)]

    @property
    def other_fields(self):
        return [self[name] for name in self.passed if name != "enabled"]

    def rules(self) -> list[dict]:
        """The filled rows as the API's rules; values are separated by white space (a
        tag never contains any)."""
        rules, self._row_of_rule = [], []
        for i in range(self.rows):
            values = (self.data.get(self.add_prefix(f"rule_values_{i}")) or "").split()
            if not values:
                continue
            operator = self.data.get(self.add_prefix(f"rule_operator_{i}")) or ""
            rules.append({"field": "tag", "operator": operator, "values": values})
            self._row_of_rule.append(i)
        return rules

    def api_data(self) -> dict:
        """What the person typed, in the API's shape."""
        data = {"enabled": bool(self["enabled"].value()), "rules": self.rules()}
        for name in self.passed:
            if name == "enabled":
                continue
            value = self[name].value()
            if isinstance(value, str) and value.strip() == "" and name in self.omit_when_blank:
                continue
            data[name] = value
        return data

    def add_api_errors(self, detail) -> None:
        """The serializer's errors, each next to its field (rules: numbered as on the page)."""
        if not isinstance(detail, dict):
            detail = {None: detail}
        for name, messages in detail.items():
            texts = _flatten(messages)
            if name == "rules":
                self.rule_errors += [self._renumber(t) for t in texts]
            elif name in self.fields:
                self.add_error(name, texts)
            else:
                self.add_error(None, texts)

    def _renumber(self, text: str) -> str:
        def row(match):
            i = int(match.group(1))
            return f"Rule {self._row_of_rule[i] + 1 if i < len(self._row_of_rule) else i + 1}:"

        return _RULE_INDEX.sub(row, text)

    @property
    def has_errors(self) -> bool:
        return bool(self.rule_errors) or bool(self.is_bound and self.errors)


TEMPLATE_HELP = "%n: the original tag; %Y %m %d %H %M %S: the date (UTC). Empty: %n."


class PromotionForm(PolicyForm):
    passed = ("targetRepository", "tagTemplate", "enabled")
    omit_when_blank = ("tagTemplate",)

    targetRepository = forms.CharField(
        required=False, label="Target repository",
        help_text="namespace/repository: created on the first promotion; you need write access to it.")
    tagTemplate = forms.CharField(required=False, initial="%n", label="Tag template", help_text=TEMPLATE_HELP)


class RemoteForm(PolicyForm):
    omit_when_blank = ("tagTemplate", "interval", "password", "authToken")

    remoteHost = forms.CharField(required=False, label="Remote registry",
                                 help_text="https://registry.example.com[:port]")
    remoteRepository = forms.CharField(required=False, label="Remote repository",
                                       help_text="namespace/repository on the remote registry")
    username = forms.CharField(required=False, label="Username",
                               widget=forms.TextInput(attrs={"autocomplete": "off"}))
    password = forms.CharField(required=False, label="Password",
                               help_text="Stored encrypted and never shown again.",
                               widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))
    authToken = forms.CharField(required=False, label="Token (instead of a password)",
                                help_text="A token of the remote, e.g. an MSR personal access token.",
                                widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))
    remoteCA = forms.CharField(required=False, label="CA certificates (PEM)",
                               help_text="Only if the remote's TLS certificate is signed by a private CA.",
                               widget=forms.Textarea(attrs={"rows": 3}))
    skipTLSVerification = forms.BooleanField(required=False, label="Skip TLS verification (insecure)")


class PushMirroringForm(RemoteForm):
    passed = ("remoteHost", "remoteRepository", "username", "password", "authToken", "remoteCA",
              "skipTLSVerification", "tagTemplate", "enabled")

    tagTemplate = forms.CharField(required=False, initial="%n", label="Tag template on the remote",
                                  help_text=TEMPLATE_HELP)


class PollMirroringForm(RemoteForm):
    passed = ("remoteHost", "remoteRepository", "username", "password", "authToken", "remoteCA",
              "skipTLSVerification", "interval", "enabled")

    interval = forms.CharField(required=False, initial="1800", label="Poll every (seconds)",
                               help_text="At least 10; empty: 1800 (30 minutes).",
                               widget=forms.NumberInput(attrs={"min": 10}))
