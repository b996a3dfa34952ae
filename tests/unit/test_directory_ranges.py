"""Active Directory's ranged retrieval of a large group's `member` (more than MaxValRange,
1500 by default, values): slapd never answers this way, so a fake connection plays AD
here, behind the real search and membership code of accounts/directory_sync.py."""

import re

import ldap
import pytest
from ldap.cidict import cidict
from ldap.controls import SimplePagedResultsControl

from accounts.directory_sync import _Directory

GROUP = "CN=Everyone,OU=Groups,DC=corp,DC=example"


class ActiveDirectory:
    """search_ext/result3 of one group entry, its `member` cut into ranges as AD does."""

    def __init__(self, members: list[bytes], max_range: int = 1500, skip_from: int | None = None):
        self.members, self.max_range, self.skip_from = members, max_range, skip_from
        self.asked: list[list[str]] = []
        self._answers = []

    def search_ext(self, base, scope, filterstr, attributes, serverctrls=()):
        assert base == GROUP and scope == ldap.SCOPE_BASE
        self.asked.append(list(attributes))
        attrs = {}
        for attribute in attributes:
            match = re.fullmatch(r"member;range=(\d+)-\*", attribute, re.IGNORECASE)
            if attribute.lower() == "member" or match:
                low = int(match[1]) if match else 0
                if self.skip_from is not None and low >= self.skip_from:
                    low += self.max_range  # a broken server: a range goes missing
                part = self.members[low:low + self.max_range]
                if low == 0 and len(self.members) <= self.max_range:
                    attrs["member"] = part
                else:
                    last = low + len(part) >= len(self.members)
                    attrs[f"member;range={low}-{'*' if last else low + len(part) - 1}"] = part
        self._answers.append([(GROUP, attrs)])
        return len(self._answers) - 1

    def result3(self, message):
        return None, self._answers[message], None, [SimplePagedResultsControl(True, size=500, cookie=b"")]


def _directory(connection) -> _Directory:
    directory = object.__new__(_Directory)  # no bind: the connection is the fake's
    directory.connection = connection
    return directory


def _members(count):
    return [f"CN=User {i},OU=People,DC=corp,DC=example".encode() for i in range(count)]


def test_a_group_larger_than_one_range_is_read_whole():
    server = ActiveDirectory(_members(3456))
    dns, names = _directory(server).group_members(GROUP)
    assert len(dns) == 3456 and "cn=user 3455,ou=people,dc=corp,dc=example" in dns and not names
    assert [asked for asked in server.asked[1:]] == [["member;range=1500-*"], ["member;range=3000-*"]]


def test_a_group_within_one_range_takes_one_search():
    server = ActiveDirectory(_members(1500))
    dns, _ = _directory(server).group_members(GROUP)
    assert len(dns) == 1500 and len(server.asked) == 1


def test_a_range_that_does_not_follow_fails_instead_of_shrinking_the_group():
    server = ActiveDirectory(_members(4000), skip_from=1500)
    with pytest.raises(ldap.PROTOCOL_ERROR):
        _directory(server).group_members(GROUP)


def test_ranged_values_are_found_whatever_the_case_of_the_attribute():
    server = ActiveDirectory(_members(10), max_range=4)
    attrs = cidict({"Member;Range=0-3": _members(10)[:4]})
    values = _directory(server)._all_values(GROUP, attrs, "member")
    assert values == _members(10)
