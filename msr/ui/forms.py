from django import forms
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError

from accounts.models import NAMESPACE_PATTERN
from accounts.permissions import ACCESS_LEVELS


class SignInForm(AuthenticationForm):
    """Django's sign-in form, checking the password through msr.signin (throttled,
    audited). Only the password signs in here: a personal access token is for clients,
    and a session made from one could mint tokens that outlive it."""

    throttled = None

    def clean(self):
        from msr.signin import UI, DirectoryUnavailable, Throttled, sign_in

        username = self.cleaned_data.get("username")
        password = self.cleaned_data.get("password")
        if username is not None and password:
            try:
                credential = sign_in(self.request, username, password, UI, audit_success=True, allow_tokens=False)
            except Throttled as e:
                self.throttled = e
                minutes = max(1, round(e.retry_after / 60))
                raise ValidationError(f"Too many failed sign-ins {e.reason}. Try again in about "
                                      f"{minutes} minute{'s' if minutes > 1 else ''}.", code="throttled") from None
            except DirectoryUnavailable:
                raise ValidationError(DirectoryUnavailable.message, code="directory_unavailable") from None
            if credential is None:
                raise self.get_invalid_login_error()
            self.user_cache = credential.user
            self.user_cache.backend = "django.contrib.auth.backends.ModelBackend"
        return self.cleaned_data


TOKEN_SCOPE_CHOICES = [
    ("registry:pull", "Pull images (registry:pull)"),
    ("registry:push", "Push and delete images (registry:push)"),
    ("api", "Use the REST API (api)"),
]


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, label="Token name",
                           help_text="What the token is for, e.g. “CI pipeline”.")
    expires_in_days = forms.IntegerField(min_value=1, max_value=3650, required=False,
                                         label="Expires after (days)", help_text="Empty: never.")
    scopes = forms.MultipleChoiceField(choices=TOKEN_SCOPE_CHOICES, widget=forms.CheckboxSelectMultiple,
                                       initial=[c for c, _ in TOKEN_SCOPE_CHOICES], label="What it may do",
                                       help_text="A token that only pulls cannot push, even where you may.")


class SettingsForm(forms.Form):
    """The settings page: the core's fields, then those the apps add (msr/extensions.py),
    in `app_fields` order between the name and the visibility."""

    def __init__(self, *args, user=None, **kwargs):
        from msr import extensions

        super().__init__(*args, **kwargs)
        self.app_fields = []
        for setting in extensions.account_settings:
            for name, field in setting.form_fields(user).items():
                self.fields[name] = field
                self.app_fields.append(name)

    full_name = forms.CharField(max_length=200, required=False, label="Full name")
    default_visibility = forms.ChoiceField(
        choices=[("private", "Private"), ("public", "Public")], label="Visibility of repositories you create by pushing")

    def app_bound_fields(self):
        return [self[name] for name in self.app_fields]


class TeamAccessForm(forms.Form):
    team = forms.ChoiceField(label="Team")
    access_level = forms.ChoiceField(choices=[(level, level) for level in ACCESS_LEVELS], label="Access level")

    def __init__(self, *args, teams=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["team"].choices = [(t.name, t.name) for t in teams]


class RepositoryTeamAccessForm(TeamAccessForm):
    field_order = ["team", "repository", "access_level"]
    repository = forms.ChoiceField(label="Repository")

    def __init__(self, *args, repositories=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["repository"].choices = [(r.name, r.name) for r in repositories]


class MemberForm(forms.Form):
    username = forms.CharField(max_length=150, label="Username")
    is_owner = forms.BooleanField(required=False, label="Owner (administers the organization)")


class TeamForm(forms.Form):
    name = forms.RegexField(NAMESPACE_PATTERN, max_length=100, label="Team name",
                            error_messages={"invalid": "Use lowercase letters, digits and . _ - between them."})
    description = forms.CharField(max_length=500, required=False, label="Description")


class TeamMemberForm(forms.Form):
    username = forms.CharField(max_length=150, label="Username")


class TagRulesForm(forms.Form):
    """A repository's tag rules (see Repository): the same fields and limits as the API."""

    immutable_tags = forms.BooleanField(required=False, label="Every tag is immutable")
    immutable_tag_patterns = forms.CharField(
        required=False, label="Immutable tag patterns", widget=forms.Textarea(attrs={"rows": 3}),
        help_text="One per line, with * and ? wildcards (release-*). Matching tags are immutable "
                  "even when not every tag is.")
    tag_limit = forms.IntegerField(min_value=0, max_value=100_000, label="Tag limit",
                                   help_text="0: no limit. A new tag beyond the limit removes the oldest "
                                             "tags that are not immutable.")

    def clean_immutable_tag_patterns(self):
        import re

        from msr.api.repositories import MAX_TAG_PATTERNS, TAG_PATTERN

        patterns = list(dict.fromkeys(line.strip() for line in self.cleaned_data["immutable_tag_patterns"].splitlines()
                                      if line.strip()))
        bad = [p for p in patterns if not re.match(TAG_PATTERN, p)]
        if bad:
            raise ValidationError(f"Not a tag pattern: {', '.join(bad)}. Use tag characters "
                                  "(letters, digits, _ . -) with * and ? wildcards.")
        if len(patterns) > MAX_TAG_PATTERNS:
            raise ValidationError(f"At most {MAX_TAG_PATTERNS} patterns.")
        return patterns


class NewRepositoryForm(TagRulesForm):
    """A new repository: where, its name and visibility, and its tag rules from the start.
    The API's serializer validates it (msr.api.repositories.create_repository)."""

    field_order = ["namespace", "name", "visibility", "short_description"]
    namespace = forms.ChoiceField(label="Namespace")
    name = forms.CharField(max_length=200, label="Name", help_text="Lowercase: app, team/app, my-app.")
    visibility = forms.ChoiceField(choices=[("private", "Private"), ("public", "Public")], label="Visibility")
    short_description = forms.CharField(max_length=140, required=False, label="Short description")
    # The API's names of the fields, for its errors.
    API_FIELDS = {"name": "name", "visibility": "visibility", "shortDescription": "short_description",
                  "immutableTags": "immutable_tags", "immutableTagPatterns": "immutable_tag_patterns",
                  "tagLimit": "tag_limit"}

    def __init__(self, *args, namespaces=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["namespace"].choices = [(n, n) for n in namespaces]

    def api_data(self) -> dict:
        return {api: self.cleaned_data[field] for api, field in self.API_FIELDS.items()}

    def add_api_errors(self, errors: dict) -> None:
        for api, messages in errors.items():
            for message in messages if isinstance(messages, list) else [messages]:
                self.add_error(self.API_FIELDS.get(api), str(message))
