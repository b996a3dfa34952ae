"""Pruning rules (msr/pruning.py): validation and evaluation, without a database."""

from datetime import datetime, timedelta, timezone

import pytest

from msr.pruning import InvalidRules, holds, validate_rules

NOW = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)
DAY = timedelta(days=1)


def rule(field, operator, *values):
    return {"field": field, "operator": operator, "values": list(values)}


@pytest.mark.parametrize("operator, values, tag, expected", [
    ("eq", ["v1"], "v1", True), ("eq", ["v1"], "v10", False),
    ("neq", ["v1"], "v2", True), ("neq", ["v1", "v2"], "v2", False),
    ("sw", ["dev-", "tmp-"], "tmp-3", True), ("sw", ["dev-"], "prod-dev-", False),
    ("ew", ["-rc"], "1.0-rc", True), ("ew", ["-rc"], "1.0", False),
    ("c", ["snap"], "1-snapshot", True), ("contains", ["snap"], "1.0", False),
    ("oneof", ["a", "b"], "b", True), ("noneof", ["a", "b"], "b", False),
    ("matches", [r"^pr-\d+$"], "pr-12", True), ("matches", [r"^pr-\d+$"], "pr-12-x", False),
])
def test_tag_operators(operator, values, tag, expected):
    rules = validate_rules([rule("tag", operator, *values)])
    assert holds(rules, tag, NOW, None, NOW) is expected


@pytest.mark.parametrize("operator, value, age, expected", [
    ("lte", "30d", 31 * DAY, True), ("lte", "30d", 29 * DAY, False),
    ("before", "2026-05-01", 40 * DAY, True), ("gte", "12h", timedelta(hours=1), True),
    ("after", "2026-05-31T00:00:00Z", 2 * DAY, False), ("gte", "2w", 15 * DAY, False),
])
def test_time_operators_take_ages_or_dates(operator, value, age, expected):
    rules = validate_rules([rule("last_pushed", operator, value)])
    assert holds(rules, "t", NOW - age, None, NOW) is expected


def test_a_tag_never_pulled_counts_as_pulled_long_ago():
    assert holds(validate_rules([rule("last_pulled", "lte", "30d")]), "t", NOW, None, NOW)
    assert not holds(validate_rules([rule("last_pulled", "gte", "30d")]), "t", NOW, None, NOW)


def test_every_rule_must_hold():
    rules = validate_rules([rule("tag", "sw", "dev-"), rule("last_pushed", "lte", "7d")])
    assert holds(rules, "dev-1", NOW - 8 * DAY, None, NOW)
    assert not holds(rules, "dev-1", NOW - DAY, None, NOW)
    assert not holds(rules, "prod-1", NOW - 8 * DAY, None, NOW)


@pytest.mark.parametrize("rules", [
    None, [], [rule("digest", "eq", "x")], [rule("tag", "gte", "x")], [rule("last_pulled", "eq", "1d")],
    [rule("last_pushed", "lte", "1d", "2d")], [rule("last_pushed", "lte", "yesterday")],
    [rule("tag", "matches", "[")], [rule("tag", "eq")], [{"field": "tag", "operator": "eq", "values": ["a"], "x": 1}],
])
def test_malformed_rules_are_refused(rules):
    with pytest.raises(InvalidRules):
        validate_rules(rules)


def test_contains_is_normalized_to_msrs_c():
    assert validate_rules([rule("tag", "contains", "x")]) == [rule("tag", "c", "x")]
