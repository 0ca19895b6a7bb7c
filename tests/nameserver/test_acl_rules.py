"""The ACL rule language and Consul's matching, without a server (oneos/nameserver/acl.py)."""

from __future__ import annotations

import pytest

from oneos.nameserver.acl import ACLError, Authorizer, PermissionDenied, management_rules, parse_rules


def authz(*rules: str) -> Authorizer:
    return Authorizer("acc", [parse_rules(r) for r in rules])


def test_hcl_and_json_rules_are_the_same_rules():
    hcl = 'key_prefix "a/" { policy = "write" }\nkey "a/b" { policy = "deny" }\nsession_prefix "" { policy = "read" }'
    json = '{"key_prefix": {"a/": {"policy": "write"}}, "key": [{"a/b": {"policy": "deny"}}], ' \
           '"session_prefix": {"": {"policy": "read"}}}'
    assert parse_rules(hcl) == parse_rules(json)


def test_an_exact_rule_beats_the_longest_prefix_which_beats_a_shorter_one():
    a = authz('key_prefix "" { policy = "read" }\nkey_prefix "a/" { policy = "write" }\n'
              'key_prefix "a/b/" { policy = "deny" }\nkey "a/b/c" { policy = "write" }')
    assert a.allowed("key", "read", "z") and not a.allowed("key", "write", "z")
    assert a.allowed("key", "write", "a/x")
    assert not a.allowed("key", "read", "a/b/x")
    assert a.allowed("key", "write", "a/b/c") and not a.allowed("key", "write", "a/b/cd")
    # An exact rule is for that key alone; its name as a prefix rule is another rule.
    assert not authz('key "k" { policy = "write" }').allowed("key", "read", "k2")


def test_write_implies_list_and_read_list_implies_read_and_nothing_is_denied():
    a = authz('key "w" { policy = "write" }\nkey "l" { policy = "list" }\nkey "r" { policy = "read" }')
    assert [a.allowed("key", need, "w") for need in ("read", "list", "write")] == [True, True, True]
    assert [a.allowed("key", need, "l") for need in ("read", "list", "write")] == [True, True, False]
    assert [a.allowed("key", need, "r") for need in ("read", "list", "write")] == [True, False, False]
    assert [a.allowed("key", need, "other") for need in ("read", "list", "write")] == [False, False, False]


@pytest.mark.parametrize("first, second, wins", [
    ("write", "deny", "deny"), ("read", "write", "write"), ("list", "read", "list"), ("read", "read", "read")])
def test_where_two_policies_name_the_same_key_deny_then_write_then_list_then_read_wins(first, second, wins):
    a = authz(f'key_prefix "p/" {{ policy = "{first}" }}', f'key_prefix "p/" {{ policy = "{second}" }}')
    b = authz(f'key_prefix "p/" {{ policy = "{wins}" }}')
    for need in ("read", "list", "write"):
        assert a.allowed("key", need, "p/x") == b.allowed("key", need, "p/x")


def test_a_recursive_delete_needs_write_on_the_prefix_and_on_every_rule_under_it():
    a = authz('key_prefix "a/" { policy = "write" }\nkey "a/keep/x" { policy = "read" }')
    assert a.key_write_prefix("a/other/") and not a.key_write_prefix("a/") and not a.key_write_prefix("a/keep/")
    assert not a.key_write_prefix("")            # no rule for "" itself: deny by default
    assert authz('key_prefix "" { policy = "write" }').key_write_prefix("")
    with pytest.raises(PermissionDenied, match="""lacks permission 'key:write' on "a/\""""):
        a.require_key_write_prefix("a/")


def test_the_management_rules_allow_everything_this_server_checks():
    a = Authorizer("root", [management_rules()])
    assert a.allowed("key", "write", "any") and a.key_write_prefix("")
    assert a.allowed("session", "write", "node") and a.allowed("agent", "read", "node")
    assert a.scalar("acl", "write")


def test_the_anonymous_tokens_refusal_says_that_it_is_the_anonymous_token():
    with pytest.raises(PermissionDenied) as denied:
        Authorizer("00000000-0000-0000-0000-000000000002", []).require("session", "write", "n1")
    assert str(denied.value) == ("Permission denied: anonymous token lacks permission 'session:write' on \"n1\". "
                                 "The anonymous token is used implicitly when a request does not specify a token.")


@pytest.mark.parametrize("rules, says", [
    ('key_prefix "" { policy = "sudo" }', 'Invalid key_prefix policy: "sudo"'),
    ('session "n" { policy = "list" }', 'Invalid session policy: "list"'),
    ('kee_prefix "" { policy = "read" }', "unknown rule 'kee_prefix'"),
    ('operator = "all"', 'Invalid operator policy: "all"'),
    ('key_prefix "" { policy = ', "Failed to parse ACL rules"),
    ('key_prefix = "read"', "key_prefix must be a block"),
])
def test_invalid_rules_say_what_is_wrong(rules, says):
    with pytest.raises(ACLError) as refused:
        parse_rules(rules)
    assert refused.value.status == 400 and says in str(refused.value)
