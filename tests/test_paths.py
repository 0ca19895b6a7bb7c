"""oneos.paths.inside: a name that becomes a path stays inside its folder, or is refused saying
which name leaves which folder."""

from __future__ import annotations

import os

import pytest

from oneos.errors import OneOSError
from oneos.paths import PathEscape, inside


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "agents"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", root / "out")             # leads out
    os.symlink(root / "sub", root / "in")                         # stays inside
    os.symlink(tmp_path / "elsewhere" / "f", root / "dangling")  # leads out, to nothing yet
    return root


@pytest.mark.parametrize("parts", [("p.a",), ("sub", "x.py"), ("sub/x.py",), ("in/x.py",), ("a/../b",),
                                   ("./tool.py",), ("a..b",)])
def test_names_that_stay_inside_are_joined_as_given(folder, parts):
    assert inside(folder, *parts) == folder.joinpath(*parts)


@pytest.mark.parametrize("parts, why", [
    (("../x",), "leads out of .* \\(through '..'\\)"),
    (("a/../../x",), "through '..'"),
    (("sub", "..", "..", "x"), "through '..'"),
    (("/etc/passwd",), "is an absolute path"),
    (("sub", "/etc"), "is an absolute path"),
    (("",), "is empty"),
    (("sub", ""), "is empty"),
    (("a\0b",), "NUL"),
    ((".",), "names .* itself"),
    (("sub/..",), "names .* itself"),
    (("out",), "through a symbolic link"),
    (("out/x",), "through a symbolic link"),
    (("dangling",), "through a symbolic link"),
])
def test_names_that_would_leave_are_refused_saying_which_and_where(folder, parts, why):
    with pytest.raises(PathEscape, match=why) as err:
        inside(folder, *parts, what="shipped file")
    assert isinstance(err.value, OneOSError)
    text = str(err.value)
    assert text.startswith("shipped file ") and "\n" not in text
