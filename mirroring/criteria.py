"""Which tags a policy acts on (rules) and what the copy is called (tag templates)."""

import re
from datetime import datetime

from msr.references import bad_pattern, is_valid_tag, tag_rule_holds

OPERATORS = {
    "eq": "equals", "sw": "starts with", "ew": "ends with", "c": "contains",
    "oneof": "one of", "noneof": "not one of", "matches": "matches (regular expression)",
}
FIELDS = {"tag"}
# strftime directives a template may use, besides %n (the original tag) and %%.
DATE_PARTS = set("YmdHMS")
_DIRECTIVE = re.compile(r"%(.)")


def validate_rules(rules) -> list[dict]:
    """The rules, normalized; ValueError with a readable reason if they are malformed."""
    if rules is None:
        return []
    if not isinstance(rules, list):
        raise ValueError("rules must be a list")
    clean = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict):
            raise ValueError(f"rule {i}: an object with field, operator and values")
        field, operator, values = rule.get("field", "tag"), rule.get("operator"), rule.get("values")
        if field not in FIELDS:
            raise ValueError(f"rule {i}: unknown field {field!r} (supported: tag)")
        if operator not in OPERATORS:
            raise ValueError(f"rule {i}: unknown operator {operator!r} (one of {', '.join(OPERATORS)})")
        if (not isinstance(values, list) or not values
                or not all(isinstance(v, str) and v for v in values)):
            raise ValueError(f"rule {i}: values must be a non-empty list of non-empty strings")
        if operator == "matches" and (problem := bad_pattern(values)):
            raise ValueError(f"rule {i}: {problem}")
        clean.append({"field": field, "operator": operator, "values": list(values)})
    return clean


def matches(rules: list[dict], tag: str) -> bool:
    """True if every rule holds for `tag` (no rules: every tag)."""
    return all(tag_rule_holds(rule["operator"], rule["values"], tag) for rule in rules)


def validate_template(template: str) -> str:
    if not template:
        return "%n"
    for directive in _DIRECTIVE.findall(template):
        if directive != "n" and directive != "%" and directive not in DATE_PARTS:
            raise ValueError(f"unknown template part %{directive} (use %n, %Y, %m, %d, %H, %M, %S, %%)")
    sample = render(template, "1.0", datetime(2026, 1, 1))
    if not is_valid_tag(sample):
        raise ValueError(f"the template makes an invalid tag ({sample!r} for tag 1.0)")
    return template


def render(template: str, tag: str, now: datetime) -> str:
    """`%n` → the original tag, `%Y`… → the date parts of `now`, `%%` → `%`."""

    def part(match):
        d = match.group(1)
        if d == "n":
            return tag
        if d == "%":
            return "%"
        if d in DATE_PARTS:
            return now.strftime("%" + d)
        return match.group(0)

    return _DIRECTIVE.sub(part, template or "%n")
