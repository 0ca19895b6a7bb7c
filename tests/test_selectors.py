"""Label selectors in Kubernetes' syntax: what each requirement matches, and errors that name the column."""

from __future__ import annotations

import pytest

from oneos.selectors import Requirement, SelectorError, matches, parse

GREENHOUSE = {"room": "greenhouse", "gpio": "true"}
CELLAR = {"room": "cellar"}
BARE: dict[str, str] = {}


@pytest.mark.parametrize("selector, greenhouse, cellar, bare", [
    ("room=greenhouse", True, False, False),
    ("room==greenhouse", True, False, False),
    ("room!=greenhouse", False, True, True),          # != also matches a node without the label
    ("room in (greenhouse,shed)", True, False, False),
    ("room notin (greenhouse,shed)", False, True, True),
    ("room", True, True, False),
    ("!room", False, False, True),
    ("gpio", True, False, False),
    ("room,!gpio", False, True, False),
    ("room in (cellar, greenhouse), gpio=true", True, False, False),
    ("room=", False, False, False),                     # the label with an empty value
])
def test_each_operator_matches_as_kubernetes_does(selector, greenhouse, cellar, bare):
    requirements = parse(selector)
    assert [matches(requirements, labels) for labels in (GREENHOUSE, CELLAR, BARE)] == [greenhouse, cellar, bare]


@pytest.mark.parametrize("selector, shown", [
    ("room = greenhouse", ["room=greenhouse"]),
    ("room==greenhouse", ["room=greenhouse"]),
    ("  room in ( shed ,greenhouse,shed )", ["room in (greenhouse,shed)"]),
    ("room notin (b,a)", ["room notin (a,b)"]),
    ("! broken,kubernetes.io/arch", ["!broken", "kubernetes.io/arch"]),
    ("zone!=north", ["zone!=north"]),
])
def test_requirements_are_shown_in_one_canonical_form(selector, shown):
    assert [str(r) for r in parse(selector)] == shown


@pytest.mark.parametrize("selector, failure", [
    ("gpio=true", "missing label gpio=true"),          # the same words as requires.labels
    ("room in (shed,greenhouse)", "missing label room in (greenhouse,shed)"),
    ("room notin (cellar)", "has label room in (cellar)"),
    ("room!=cellar", "has label room=cellar"),
    ("gpio", "missing label gpio"),
    ("!broken", "has label broken"),
])
def test_a_failure_reads_the_same_whatever_the_nodes_own_value(selector, failure):
    [requirement] = parse(selector)
    assert requirement.failure() == failure


@pytest.mark.parametrize("selector, column, what", [
    ("", 1, "an empty selector"),
    ("   ", 1, "an empty selector"),
    ("!", 2, "expected a label key after '!'"),
    ("room in", 8, "expected '(' after 'room in'"),
    ("room in (a", 9, "no ')' closes the '('"),
    ("room in ()", 10, "an empty list"),
    ("room in (a b)", 12, "expected ',' or ')'"),
    ("room in (a,)", 12, "expected a value in the list"),
    ("room notin a", 12, "expected '(' after 'room notin'"),
    ("gpio,", 6, "nothing after ','"),
    (",gpio", 1, "expected a label key, found ','"),
    ("gpio=true,,x", 11, "expected a label key, found ','"),
    ("room is cellar", 6, "expected '=', '!=', 'in', 'notin'"),
    ("cores>2", 6, "'>' (compare numbers) is not supported"),
    ("-x=1", 1, "'-x' is not a valid label key"),
    ("a=b=c", 4, "expected ',' or the end of the selector"),
    ("a=(", 3, "expected a value after 'a='"),
    ("gpio=true, room in (a,b), !", 28, "expected a label key after '!'"),
])
def test_errors_name_the_column(selector, column, what):
    with pytest.raises(SelectorError) as err:
        parse(selector)
    assert (err.value.column, err.value.what[:len(what)]) == (column, what), str(err.value)
    text = str(err.value)
    assert f" at column {column}; " in text and "\n" not in text
    assert "write" in err.value.hint or "a label key is" in err.value.hint   # says what to do


def test_label_values_may_hold_spaces_inside_an_equality_only():
    assert parse("room=living room, gpio", label_values=True) == (
        Requirement("room", "=", ("living room",), 1), Requirement("gpio", "exists", (), 19))
    with pytest.raises(SelectorError) as err:
        parse("room=living room")
    assert err.value.column == 13
    for text in ("zone!=a b", "gpu==true=x", "room=living (room)"):
        with pytest.raises(SelectorError):
            parse(text, label_values=True)
