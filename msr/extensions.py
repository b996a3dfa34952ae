"""What the apps add to the registry core. The core imports no app (`shared/design.md`):
each app registers here, in its `AppConfig.ready()`, what the core's generic machinery
needs of it, and the core reads these lists when it acts.

| registry            | an entry                                              | read by                      |
|---------------------|-------------------------------------------------------|------------------------------|
| metric_collectors   | a prometheus_client collector (reads the database)    | `/metrics` (msr/project/metrics.py)  |
| retention_kinds     | `kind -> (setting days default, queryset(cutoff))`    | msr/retention.py             |
| encrypted_fields    | `("app.Model", "field")` holding msr.crypto tokens    | `msr manage reencrypt`       |
| account_settings    | an AccountSetting (a user's setting an app owns)      | settings API and page        |
| tag_protectors      | `(repository) -> {tag: reason}`: tags pruning keeps   | msr/pruning.py               |
"""

from dataclasses import dataclass, field
from typing import Any, Callable

metric_collectors: list[Any] = []
retention_kinds: dict[str, Callable] = {}
encrypted_fields: list[tuple[str, str]] = []
account_settings: list["AccountSetting"] = []
tag_protectors: list[Callable[[Any], dict[str, str]]] = []


@dataclass
class AccountSetting:
    """A user's setting owned by an app (the cache choice, say): its API fields, and its
    field on the settings page.

    - `users_only`: the API's refusal when an organization's settings name these fields;
    - `api_fields`: DRF serializer fields by name, merged into the settings serializer;
    - `read(user) -> dict`: the API representation (keys of api_fields);
    - `write(user, data)`: apply validated API data (only keys present); raise a DRF
      ValidationError for bad combinations;
    - `form_fields(user) -> dict`: Django form fields for the settings page, by name;
    - `initial(user) -> dict`, `save(user, cleaned_data)`: the page's side.
    """

    name: str
    users_only: str = ""  # set: organizations have no such setting; the API's refusal message
    api_fields: Callable[[], dict] = field(default=lambda: {})
    read: Callable[[Any], dict] = field(default=lambda user: {})
    write: Callable[[Any, dict], None] = field(default=lambda user, data: None)
    form_fields: Callable[[Any], dict] = field(default=lambda user: {})
    initial: Callable[[Any], dict] = field(default=lambda user: {})
    save: Callable[[Any, dict], None] = field(default=lambda user, data: None)
