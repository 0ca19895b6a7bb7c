"""The lexer reads words the way bash does: checked against a table, and against bash itself."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from oneos.compiler import CompileError, Operator, Word, tokenize

BASH = shutil.which("bash")

# A simple command as written -> the argv bash gives it (the command word included).
ARGV = [
    ("echo hello world", ["echo", "hello", "world"]),
    ("  echo   spaced    out  ", ["echo", "spaced", "out"]),
    ("echo\ta\t\tb", ["echo", "a", "b"]),
    ("echo 'single $x \"q\" \\n `date`'", ["echo", 'single $x "q" \\n `date`']),
    ('echo "double \'q\' \\$x \\" \\\\ \\`"', ["echo", "double 'q' $x \" \\ `"]),
    ('echo "a\\qb\\nc\\t"', ["echo", "a\\qb\\nc\\t"]),
    ("echo a'b'\"c\"d", ["echo", "abcd"]),
    ("echo a\\ b\\\\c\\'d\\\"e", ["echo", "a b\\c'd\"e"]),
    ("echo '' \"\" x", ["echo", "", "", "x"]),
    ("echo 'it'\\''s'", ["echo", "it's"]),
    ("echo \"it's\" 'say \"hi\"'", ["echo", "it's", 'say "hi"']),
    ("echo 'two\nlines' \"and\nthese\"", ["echo", "two\nlines", "and\nthese"]),
    ('echo "joined\\\nline"', ["echo", "joinedline"]),
    ("echo a$ $ \"$\" $/ $. $% $:x \"a$\" $é $, $=",
     ["echo", "a$", "$", "$", "$/", "$.", "$%", "$:x", "a$", "$é", "$,", "$="]),
    ("echo \"$\"'x' \"$ x\" \"$'x'\"", ["echo", "$x", "$ x", "$'x'"]),
    ("echo a#b x# 'a'#", ["echo", "a#b", "x#", "a#"]),
    ("echo {x} {} x{y}z {a,b a,b} }", ["echo", "{x}", "{}", "x{y}z", "{a,b", "a,b}", "}"]),
    ("echo {a','b} \"{a,b}\" '{1..3}' {a},{b}", ["echo", "{a,b}", "{a,b}", "{1..3}", "{a},{b}"]),
    ("echo x~ a~b --prefix=~ '~' \\~ \"~/x\" a=b=~", ["echo", "x~", "a~b", "--prefix=~", "~", "~", "~/x", "a=b=~"]),
    ("echo \\* '*' \"?\" \\[a] [ ] a] '[x]'", ["echo", "*", "*", "?", "[a]", "[", "]", "a]", "[x]"]),
    ("echo a!b hi! !x", ["echo", "a!b", "hi!", "!x"]),
    ("echo x@y @z a@ \\@", ["echo", "x@y", "@z", "a@", "@"]),
    ("echo -n -- --flag=value -", ["echo", "-n", "--", "--flag=value", "-"]),
    ("awk '{print $1}' -F:", ["awk", "{print $1}", "-F:"]),
    ("grep -E '^(a|b)$'", ["grep", "-E", "^(a|b)$"]),
    ("sed -e 's/a/b/g;s/c/d/'", ["sed", "-e", "s/a/b/g;s/c/d/"]),
    ("printf '%s\\n' \"tab\tinside\" tab\\\tescaped", ["printf", "%s\\n", "tab\tinside", "tab\tescaped"]),
    ("echo \"ünï 世界 🎉\" ünï", ["echo", "ünï 世界 🎉", "ünï"]),
    ("find . -name '*.py' -exec cat {} \\; -exec ls {} +", ["find", ".", "-name", "*.py", "-exec", "cat", "{}", ";",
                                                            "-exec", "ls", "{}", "+"]),
    ("echo trailing\\", ["echo", "trailing\\"]),
    ("echo \"\\$HOME\" '$HOME' \\$HOME", ["echo", "$HOME", "$HOME", "$HOME"]),
    ("echo \\` \"\\`\" '`'", ["echo", "`", "`", "`"]),
    ("echo = =x == a=b A=1", ["echo", "=", "=x", "==", "a=b", "A=1"]),
    ("echo \"'\" '\"' \"\\\"'\\\"\"", ["echo", "'", '"', "\"'\""]),
    ("echo \"a b\" c\\ \\ d", ["echo", "a b", "c  d"]),
    ("echo '#'x \\#y", ["echo", "#x", "#y"]),
    ("echo %s ^x +x :x x: ,", ["echo", "%s", "^x", "+x", ":x", "x:", ","]),
    ("[ -n x ]", ["[", "-n", "x", "]"]),
    ("echo a\"\"b '''' \"\"\"\"", ["echo", "ab", "", ""]),
    ("echo \"\\a\\b\\\\\\\\\"", ["echo", "\\a\\b\\\\"]),
    ("echo " + "'a'\"b\"" * 200, ["echo", "ab" * 200]),
    ("echo \\'\\\"\\\\ \\\\\\\\", ["echo", "'\"\\", "\\\\"]),
    ("env -i A=1 ./x", ["env", "-i", "A=1", "./x"]),
]


def words(line: str) -> list[str]:
    tokens = tokenize(line)
    assert all(isinstance(t, Word) for t in tokens), tokens
    return [t.text for t in tokens]


def bash_argv(line: str, cwd) -> list[str]:
    """What bash passes as argv for the words of `line`: printf prints each, NUL-terminated."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent-home", "LC_ALL": "C.UTF-8"}
    out = subprocess.run([BASH, "-c", "printf '%s\\0' " + line], cwd=cwd, env=env, capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.decode("utf-8").split("\0")[:-1]


@pytest.mark.parametrize("line, argv", ARGV, ids=[line[:40] for line, _ in ARGV])
def test_words_are_what_bash_passes(line, argv):
    assert words(line) == argv


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
@pytest.mark.parametrize("line, argv", ARGV, ids=[line[:40] for line, _ in ARGV])
def test_the_table_agrees_with_bash(line, argv, tmp_path):
    # An empty directory, so that nothing bash does could depend on files.
    assert bash_argv(line, tmp_path) == argv


def test_operators_and_columns():
    tokens = tokenize("seq 10|grep 1 >out 2>>err <in")
    assert tokens == [
        Word("seq", "seq", 1), Word("10", "10", 5), Operator("|", 7), Word("grep", "grep", 8), Word("1", "1", 13),
        Operator(">", 15), Word("out", "out", 16), Operator("2>>", 20), Word("err", "err", 23),
        Operator("<", 27), Word("in", "in", 28),
    ]


@pytest.mark.parametrize("line, ops", [
    ("a >f", [">"]), ("a > f", [">"]), ("a>f", [">"]), ("a >>f", [">>"]), ("a>>f", [">>"]),
    ("a <f", ["<"]), ("a<f", ["<"]), ("a 2>f", ["2>"]), ("a 2> f", ["2>"]), ("a 2>>f", ["2>>"]),
])
def test_redirection_operators_attached_or_spaced(line, ops):
    assert [t.op for t in tokenize(line) if isinstance(t, Operator)] == ops
    assert [t.text for t in tokenize(line) if isinstance(t, Word)] == ["a", "f"]


def test_a_number_inside_a_word_or_quoted_is_an_argument_not_a_descriptor():
    assert tokenize("echo a2>f") == [Word("echo", "echo", 1), Word("a2", "a2", 6), Operator(">", 8), Word("f", "f", 9)]
    assert tokenize('echo "2">f') == [Word("echo", "echo", 1), Word("2", '"2"', 6), Operator(">", 9), Word("f", "f", 10)]
    assert tokenize("echo 2 >f")[1] == Word("2", "2", 6)


def test_raw_keeps_the_quotes():
    assert tokenize("A='x y' cmd")[0] == Word("A=x y", "A='x y'", 1)


def test_columns_count_characters_not_bytes():
    assert tokenize("echo 世界 x")[2].column == 9


def test_a_word_is_read_in_linear_time_without_recursion():
    # Quotes alternating 100 000 times, and a 100 KB word: no recursion, no quadratic copies.
    line = "echo " + "'\"'\"'\"" * 16_000
    assert len(line) > 95_000
    assert words(line) == ["echo", '"\'' * 16_000]
    assert words("x " + "a" * 100_000) == ["x", "a" * 100_000]
    assert words("x " + '"' + '\\"' * 50_000 + '"') == ["x", '"' * 50_000]


@pytest.mark.parametrize("line, column", [
    ("'abc", 1), ("echo abc'", 9), ('echo "abc', 6), ("echo \"it's", 6), ("echo 'a\"b", 6),
    ("echo \"a'b'c", 6), ("echo 'a' 'b", 10), ('echo "a" "b\\"', 10), ("\"", 1), ("'", 1),
])
def test_unbalanced_quotes_point_at_the_opening_quote(line, column):
    with pytest.raises(CompileError) as err:
        tokenize(line)
    assert err.value.column == column
    assert "no closing" in err.value.what
