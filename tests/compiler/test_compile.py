"""compile_pipeline: one-liners to Pipeline manifests, and every refusal with its column."""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import pytest

from oneos.compiler import INTERPRETERS, CompileError, compile_pipeline, stage_name
from oneos.documents import validate
from oneos.errors import UsageError
from oneos.selectors import SelectorError
from oneos.selectors import parse as parse_selector
from tests.compiler.test_lexer import ARGV

BASH = shutil.which("bash")
FIRST_LINE = re.compile(r"^oneosctl: cannot compile: (.+) at column (\d+)$")


def compiled(line: str, **kwargs) -> dict:
    """The manifest of `line`, which must be a valid Pipeline."""
    doc = compile_pipeline(line, **kwargs)
    assert validate(doc, base_dir=kwargs.get("base_dir")) == []
    return doc


def agents(line: str, **kwargs) -> list[dict]:
    return compiled(line, **kwargs)["spec"]["agents"]


def refused(line: str, **kwargs) -> CompileError:
    with pytest.raises(CompileError) as err:
        compile_pipeline(line, **kwargs)
    return err.value


def assert_caret(err: CompileError, line: str, column: int) -> None:
    """The three-line message: what and where, the line, a caret under the column."""
    first, shown, caret = str(err).split("\n")
    assert FIRST_LINE.match(first) and FIRST_LINE.match(first).group(2) == str(column), first
    assert shown == "    " + line
    assert caret == "    " + " " * (column - 1) + "^"


# ------------------------------------------------------------------ accepted


def test_a_pipeline_of_three_stages():
    doc = compiled("seq 1 100000 | grep 7 | wc -l")
    assert doc == {
        "apiVersion": "oneos/v1",
        "kind": "Pipeline",
        "metadata": {"name": "seq-grep-wc"},
        "spec": {
            "agents": [
                {"name": "seq", "run": ["seq", "1", "100000"], "stdin": {}},
                {"name": "grep", "run": ["grep", "7"]},
                {"name": "wc", "run": ["wc", "-l"], "stdout": {}},
            ],
            "links": [{"from": "seq", "to": "grep"}, {"from": "grep", "to": "wc"}],
        },
    }


def test_one_stage_reads_and_writes_the_pipelines_stdio():
    assert agents("cat") == [{"name": "cat", "run": ["cat"], "stdin": {}, "stdout": {}}]
    assert compiled("cat")["spec"]["links"] == []


def test_the_design_example():
    doc = compiled("oneos-gpio watch D4 | python3 controller.py | oneos-gpio write D7")
    assert [a["run"] for a in doc["spec"]["agents"]] == [
        ["oneos-gpio", "watch", "D4"], ["python3", "controller.py"], ["oneos-gpio", "write", "D7"]]
    assert [a["name"] for a in doc["spec"]["agents"]] == ["oneos-gpio", "python3", "oneos-gpio-2"]


@pytest.mark.parametrize("line, argv", ARGV, ids=[line[:40] for line, _ in ARGV])
def test_each_stage_runs_the_argv_bash_would(line, argv):
    assert agents(line)[0]["run"] == argv


def test_stages_keep_their_words_with_pipes_attached():
    assert [a["run"] for a in agents("echo 'a|b'|tr '|' x|cat")] == [["echo", "a|b"], ["tr", "|", "x"], ["cat"]]


# ------------------------------------------------------------ env prefixes


def test_env_prefixes():
    stage = agents("A=1 B='x y' C= D=\"q\\\"\" E=a=b env")[0]
    assert stage["run"] == ["env"]
    assert stage["env"] == {"A": "1", "B": "x y", "C": "", "D": 'q"', "E": "a=b"}


def test_assignments_after_the_command_word_are_arguments():
    stage = agents("env A=1 B=2")[0]
    assert stage["run"] == ["env", "A=1", "B=2"] and "env" not in stage


def test_a_quoted_name_is_not_an_assignment():
    assert agents("'A'=1 x")[0]["run"] == ["A=1", "x"]
    assert agents("A\\=1 x")[0]["run"] == ["A=1", "x"]


def test_assignments_and_redirections_interleave_before_the_command():
    stage = agents("A=1 >out B=2 env")[0]
    assert (stage["env"], stage["run"], stage["stdout"]) == ({"A": "1", "B": "2"}, ["env"], {"file": "out"})


def test_the_last_assignment_of_a_name_wins():
    assert agents("A=1 A=2 env")[0]["env"] == {"A": "2"}


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
@pytest.mark.parametrize("prefix", ["A=1 B='x y' C=", "A=1 A=2 B=\"a\\\"b\" C=a=b", "A='it'\\''s' B=$/"])
def test_env_matches_what_bash_sets(prefix, tmp_path):
    out = subprocess.run([BASH, "-c", prefix + " /usr/bin/env -0"], cwd=tmp_path, env={"PATH": "/usr/bin:/bin"},
                         capture_output=True, check=True)
    env = dict(item.split("=", 1) for item in out.stdout.decode().split("\0") if item)
    ours = agents(prefix + " env")[0]["env"]
    assert {k: env[k] for k in ours} == ours


# ------------------------------------------------------------ redirections


@pytest.mark.parametrize("line, stream, value", [
    ("cat <in", "stdin", {"file": "in"}),
    ("cat < in", "stdin", {"file": "in"}),
    ("<in cat", "stdin", {"file": "in"}),
    ("cat >out", "stdout", {"file": "out"}),
    ("cat > 'my out'", "stdout", {"file": "my out"}),
    ("cat >>out", "stdout", {"file": "out", "append": True}),
    ("cat >> out", "stdout", {"file": "out", "append": True}),
    ("cat 2>err", "stderr", {"file": "err"}),
    ("cat 2> err", "stderr", {"file": "err"}),
    ("cat 2>>err", "stderr", {"file": "err", "append": True}),
    ("cat 2>> /tmp/e", "stderr", {"file": "/tmp/e", "append": True}),
])
def test_redirections(line, stream, value):
    stage = agents(line)[0]
    assert stage["run"] == ["cat"]
    assert stage[stream] == value


def test_redirections_anywhere_in_a_stage():
    stage = agents("echo a >out b 2>err c")[0]
    assert stage["run"] == ["echo", "a", "b", "c"]
    assert (stage["stdout"], stage["stderr"]) == ({"file": "out"}, {"file": "err"})


def test_a_redirected_stage_does_not_get_the_pipelines_stdio():
    first, middle, last = agents("grep x < in.txt | sort 2> sort.err | uniq -c >> counts")
    assert first["stdin"] == {"file": "in.txt"} and "stdout" not in first
    assert middle["stderr"] == {"file": "sort.err"} and "stdin" not in middle and "stdout" not in middle
    assert last["stdout"] == {"file": "counts", "append": True} and "stdin" not in last


def test_one_stage_with_both_ends_redirected():
    assert agents("sort < a > b")[0] == {"name": "sort", "run": ["sort"], "stdin": {"file": "a"},
                                         "stdout": {"file": "b"}}


def test_digits_inside_a_word_or_quoted_are_arguments():
    stage = agents("echo a2>f")[0]
    assert (stage["run"], stage["stdout"]) == (["echo", "a2"], {"file": "f"})
    stage = agents('echo "2">f')[0]
    assert (stage["run"], stage["stdout"]) == (["echo", "2"], {"file": "f"})


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_redirection_file_names_are_the_ones_bash_opens(tmp_path):
    line = "echo hi >'my out' 2>\"e\"\\ r"
    subprocess.run([BASH, "-c", line], cwd=tmp_path, check=True)
    stage = agents(line)[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([stage["stdout"]["file"], stage["stderr"]["file"]])


# --------------------------------------------------------------- placement


def test_placement_on_a_node():
    assert agents("cat @ node-1.local_2")[0]["requires"] == {"node": "node-1.local_2"}


def test_placement_by_labels():
    first, second = agents("oneos-gpio watch D4 @ gpio=true,zone=north | tee log @ kubernetes.io/arch=arm64")
    assert first["requires"] == {"labels": {"gpio": "true", "zone": "north"}}
    assert first["run"] == ["oneos-gpio", "watch", "D4"]
    assert second["requires"] == {"labels": {"kubernetes.io/arch": "arm64"}}


def test_placement_with_redirections_before_or_after():
    for line in ("cat > out @ n1", "cat @ n1 > out"):
        stage = agents(line)[0]
        assert (stage["run"], stage["stdout"], stage["requires"]) == (["cat"], {"file": "out"}, {"node": "n1"})


def test_a_quoted_or_attached_at_sign_is_an_ordinary_word():
    assert agents("echo '@' x@y @z \\@ \"@\"")[0]["run"] == ["echo", "@", "x@y", "@z", "@", "@"]
    assert "requires" not in agents("echo '@' n1")[0]


def test_a_quoted_criterion():
    assert agents("cat @ 'room=living room'")[0]["requires"] == {"labels": {"room": "living room"}}


@pytest.mark.parametrize("criterion, requires", [
    ("zone!=north", {"selector": "zone!=north"}),
    ("gpio", {"node": "gpio"}),                                # a lone word is a node id, as before
    ("kubernetes.io/arch", {"selector": "kubernetes.io/arch"}),  # cannot be a node id: the label exists
    ("!broken", {"selector": "!broken"}),
    ("gpio,!broken", {"selector": "gpio,!broken"}),
    ("gpio=true,zone!=north,camera,!broken",
     {"labels": {"gpio": "true"}, "selector": "zone!=north,camera,!broken"}),
    ("gpio==true", {"labels": {"gpio": "true"}}),              # == is = (Kubernetes reads it so)
    ("zone!=", {"selector": "zone!="}),
    ("'room=living room',!broken", {"labels": {"room": "living room"}, "selector": "!broken"}),
])
def test_placement_by_selector_operators(criterion, requires):
    assert agents(f"cat @ {criterion}")[0]["requires"] == requires


def test_placement_selectors_compile_to_what_the_scheduler_reads():
    from oneos.controller.scheduler import Demand, NodeInfo, Usage, place

    nodes = [NodeInfo("pi-1", {"gpio": "true", "zone": "north"}, set(), 4, 2**30),
             NodeInfo("pi-2", {"gpio": "true", "zone": "south"}, set(), 4, 2**30),
             NodeInfo("pi-3", {"gpio": "true", "zone": "south", "broken": "yes"}, set(), 4, 2**30)]
    [agent] = agents("oneos-gpio watch D4 @ gpio=true,zone!=north,!broken")
    assert place(Demand.from_spec("p.sensor", agent), nodes, Usage()).node == "pi-2"



@pytest.mark.parametrize("criterion", ["gpu==true=x", "zone!=a=b", "a=b=c", "gpio,!-x", "gpio=true,,x", "=1"])
def test_a_requirement_after_at_is_refused_when_a_manifests_selector_is(criterion):
    """One parser: what `@` refuses, a manifest's requires.selector refuses too (and the reverse, below)."""
    refused(f"cat @ {criterion}")
    with pytest.raises(SelectorError):
        parse_selector(criterion)


@pytest.mark.parametrize("criterion", ["gpu==true", "zone!=north,camera,!broken", "kubernetes.io/arch=arm64"])
def test_a_requirement_after_at_means_what_the_same_selector_means(criterion):
    requires = agents(f"cat @ {criterion}")[0]["requires"]
    written = [f"{key}={value}" for key, value in requires.get("labels", {}).items()]
    written += [requires["selector"]] if "selector" in requires else []
    assert parse_selector(",".join(written)) == tuple(
        r for r in parse_selector(criterion.replace("==", "=")))

# ---------------------------------------------------------- shipped files


@pytest.fixture
def project(tmp_path):
    for name in ("ctl.py", "sub/tool.sh", "app.js", "x.pl", "x.rb", "x.R", "run.sh", "ignore"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    return tmp_path


@pytest.mark.parametrize("line, files", [
    ("./ctl.py", ["ctl.py"]),
    ("./ctl.py --verbose", ["ctl.py"]),
    ("sub/tool.sh x", ["sub/tool.sh"]),
    ("./sub//./tool.sh", ["sub/tool.sh"]),
    ("python3 ctl.py", ["ctl.py"]),
    ("python3 -u ctl.py arg", ["ctl.py"]),
    ("python3 -W ignore ctl.py", ["ctl.py"]),
    ("python3 -- ctl.py", ["ctl.py"]),
    ("python ./ctl.py", ["ctl.py"]),
    ("/usr/bin/python3 ctl.py", ["ctl.py"]),
    ("bash ./run.sh", ["run.sh"]),
    ("bash -e run.sh", ["run.sh"]),
    ("sh sub/tool.sh", ["sub/tool.sh"]),
    ("node app.js", ["app.js"]),
    ("perl x.pl", ["x.pl"]),
    ("ruby x.rb", ["x.rb"]),
    ("Rscript x.R", ["x.R"]),
    ("./sub/tool.sh ./ctl.py", ["sub/tool.sh"]),
    ("python3 -c ctl.py", []),
    ("python3 -uc ctl.py", []),
    ("python3 -Wignore ctl.py", ["ctl.py"]),
    ("python3 -uW ignore ctl.py", ["ctl.py"]),
    ("bash -euxo pipefail run.sh", ["run.sh"]),
    ("bash -ec run.sh", []),
    ("perl -lane x.pl", []),
    ("ruby -rjson x.rb", ["x.rb"]),
    ("node --require ./app.js app.js", ["app.js"]),
    ("node --eval app.js", []),
    ("python3 -cctl.py", []),
    ("python3 -m ctl.py", []),
    ("bash -c ./run.sh", []),
    ("python3 - ctl.py", []),
    ("python3 missing.py", []),
    ("python3 /abs/ctl.py", []),
    ("cat ctl.py", []),
    ("./missing", []),
    ("/bin/cat ctl.py", []),
    ("./sub", []),
    ("ctl.py", []),
])
def test_shipped_files(project, line, files):
    stage = agents(line, base_dir=project)[0]
    assert stage.get("files", []) == files
    assert stage["run"][0] == line.split()[0]  # the argv word stays as written


def test_files_are_looked_up_in_the_current_directory_by_default(project, monkeypatch):
    monkeypatch.chdir(project)
    assert agents("python3 ctl.py | ./ctl.py")[0]["files"] == ["ctl.py"]
    assert compile_pipeline("python3 ctl.py", base_dir=project / "sub")["spec"]["agents"][0].get("files") is None


def test_each_stage_ships_its_own_files(project):
    first, second = agents("python3 ctl.py | python3 ctl.py", base_dir=project)
    assert first["files"] == second["files"] == ["ctl.py"]
    assert (first["name"], second["name"]) == ("python3", "python3-2")


def test_interpreters_are_a_constant():
    assert set(INTERPRETERS) == {"python3", "python", "node", "bash", "sh", "perl", "ruby", "Rscript"}


@pytest.mark.parametrize("line, column", [
    ("../x.py", 1), ("./a/../ctl.py", 1), ("python3 ../ctl.py", 9), ("cat | python3 -u sub/../ctl.py", 18),
    ("bash ..", 6),
])
def test_paths_with_dot_dot_are_not_shipped(project, line, column):
    err = refused(line, base_dir=project)
    assert err.column == column and "'..'" in err.what


# -------------------------------------------------------------------- names


@pytest.mark.parametrize("program, name", [
    ("grep", "grep"), ("wc", "wc"), ("python3", "python3"), ("./ctl.py", "ctl-py"), ("/usr/bin/Foo_Bar", "foo-bar"),
    ("python3.11", "python3-11"), (".hidden", "hidden"), ("[", "stage"), ("@@", "stage"), ("ÉCHO", "cho"),
    ("a" * 70, "a" * 63), ("x" + "-" * 70 + "y", "x"), ("dir/", "stage"), ("--x--", "x"),
])
def test_stage_names(program, name):
    assert stage_name(program) == name


def test_duplicate_names_are_numbered_in_order():
    assert [a["name"] for a in agents("cat | cat | grep x | cat | cat-2")] == ["cat", "cat-2", "grep", "cat-3", "cat-2-2"]


def test_numbered_names_stay_within_63_characters():
    long = "a" * 70
    names = [a["name"] for a in agents(f"{long} | {long} | {long}")]
    assert names == ["a" * 63, "a" * 61 + "-2", "a" * 61 + "-3"]


def test_pipeline_names():
    assert compiled("cat | cat")["metadata"]["name"] == "cat-cat-2"
    assert compiled("cat", name="mine")["metadata"]["name"] == "mine"
    long = compiled(" | ".join(["abcdefghij"] * 10))["metadata"]["name"]
    assert len(long) <= 63 and long.startswith("abcdefghij-abcdefghij-2-") and not long.endswith("-")


@pytest.mark.parametrize("name", ["Mine", "my_pipe", "-x", "x-", "", "a" * 64, "a b"])
def test_an_invalid_pipeline_name_is_refused(name):
    err = refused("cat", name=name)
    assert err.column is None and "\n" not in str(err)
    assert str(err).startswith("oneosctl: cannot compile: ") and "not a valid pipeline name" in str(err)


# ------------------------------------------------------------------ refused


REFUSED = [
    # line, column, words the message contains
    ("a ; b", 3, "';'"),
    ("a;", 2, "';'"),
    ("a && b", 3, "'&&'"),
    ("a || b", 3, "'||'"),
    ("a &", 3, "background"),
    ("a & b", 3, "background"),
    ("a &> f", 3, "'&>'"),
    ("a |& b", 3, "'|&'"),
    ("(a)", 1, "subshell"),
    ("a | (b)", 5, "subshell"),
    ("echo a)", 7, "subshell"),
    ("{ echo hi }", 1, "group"),
    ("echo hi | } x", 11, "group"),
    ("echo $(date)", 6, "command substitution"),
    ("echo `date`", 6, "command substitution"),
    ('echo "$(date)"', 7, "command substitution"),
    ('echo "`date`"', 7, "command substitution"),
    ("echo $HOME", 6, "the node's environment is not yours"),
    ("echo ${HOME}", 6, "the node's environment is not yours"),
    ('echo "$HOME"', 7, "VAR=value"),
    ("echo x$HOME", 7, "'$HOME'"),
    ("echo $1", 6, "variable"),
    ("echo $?", 6, "variable"),
    ("echo $$", 6, "variable"),
    ("echo $@", 6, "variable"),
    ("echo $*", 6, "variable"),
    ("echo $#", 6, "variable"),
    ("echo $!", 6, "variable"),
    ("echo $-", 6, "variable"),
    ("echo $_", 6, "variable"),
    ("echo $((1+2))", 6, "arithmetic"),
    ('echo "$((1+2))"', 7, "arithmetic"),
    ("echo $[1+2]", 6, "arithmetic"),
    ("echo $'a'", 6, "ANSI-C"),
    ('echo $"a"', 6, "locale"),
    ("cat <<EOF", 5, "here-document"),
    ("cat <<-EOF", 5, "here-document"),
    ("cat <<< hi", 5, "here-string"),
    ("cat <(ls)", 5, "process substitution"),
    ("tee >(cat)", 5, "process substitution"),
    ("ls *.py", 4, "pattern"),
    ("ls a?", 5, "pattern"),
    ("ls [ab]", 4, "pattern"),
    ("ls x[ab]y", 5, "pattern"),
    ("ls [a']'", 4, "pattern"),
    ("cat > *.txt", 7, "pattern"),
    ("cat ~/x", 5, "'~'"),
    ("cat ~", 5, "'~'"),
    ("cat ~root/x", 5, "'~'"),
    ("A=~/x cmd", 3, "'~'"),
    ("echo a=b:~", 10, "'~'"),
    ("echo PATH=/a:~/b", 14, "'~'"),
    ("echo {a,b}", 6, "brace expansion"),
    ("echo {1..3}", 6, "brace expansion"),
    ("echo x{,}", 7, "brace expansion"),
    ("echo {a,{b,c}}", 9, "brace expansion"),
    ("echo {'a',b}", 6, "brace expansion"),
    ("echo hi # a comment", 9, "comments are not supported"),
    ("#echo", 1, "comments are not supported"),
    ("echo hi|#x", 9, "comments are not supported"),
    ("echo a\nb", 7, "newline"),
    ("echo a\\\nb", 7, "continuation"),
    ("! echo", 1, "'!'"),
    ("!echo", 1, "'!'"),
    ("echo | ! cat", 8, "'!'"),
    ("if true", 1, "keyword"),
    ("while x", 1, "keyword"),
    ("for x in y", 1, "keyword"),
    ("[[ -f x ]]", 1, "keyword"),
    ("time ls", 1, "time oneosctl run"),
    ("coproc x", 1, "keyword"),
    ("cd /tmp", 1, "builtin"),
    ("export A=1", 1, "builtin"),
    ("A=1 exec cat", 5, "builtin"),
    ("'eval' x", 1, "builtin"),
    ("cat | . ./x.sh", 7, "builtin"),
    ("cat 1> f", 5, "descriptor 1"),
    ("cat 0< f", 5, "descriptor 0"),
    ("cat 3>f", 5, "descriptor 3"),
    ("cat 10>f", 5, "descriptor 10"),
    ("cat 2< f", 5, "'2<'"),
    ("cat >& f", 5, "'>&'"),
    ("cat 2>&1", 5, "'2>&'"),
    ("cat <> f", 5, "'<>'"),
    ("cat >| f", 5, "'>|'"),
    ("cat <&0", 5, "'<&'"),
    ("echo hi {fd}>f", 9, "file descriptor"),
    ("cat >", 5, "needs a file name"),
    ("cat > | wc", 5, "needs a file name"),
    ("cat 2>", 5, "needs a file name"),
    ("cat > ''", 7, "empty file name"),
    ("cat < a | cat < b", 15, "after the first"),
    ("cat > a | cat", 5, "before the last"),
    ("cat >> a | cat", 5, "before the last"),
    ("cat | cat > a | cat", 11, "before the last"),
    ("cat > a > b", 9, "already redirected"),
    ("cat < a <b", 9, "already redirected"),
    ("cat 2> a 2>> b", 10, "already redirected"),
    ("''", 1, "empty command name"),
    ("'' x", 1, "empty command name"),
    ("A=1", 1, "no command in this stage"),
    ("cat | A=1 > x", 7, "no command in this stage"),
    ("> out", 1, "no command in this stage"),
    ("A+=1 cmd", 1, "appends"),
    ("|", 1, "no command before this '|'"),
    ("| x", 1, "no command before this '|'"),
    ("x |", 3, "no command after this '|'"),
    ("x | | y", 5, "no command between"),
    ("x||", 2, "'||'"),
    ("", 1, "nothing to run"),
    ("   \t ", 1, "nothing to run"),
    ("@ n1", 1, "needs a command before it"),
    ("cat @", 5, "needs a node id"),
    ("cat @ @", 5, "needs a node id"),
    ("cat @ | wc", 5, "needs a node id"),
    ("cat @ bad!id", 7, "not a node id"),
    ("cat @ -n1", 7, "not a node id"),
    ("cat @ " + "n" * 64, 7, "not a node id"),
    ("cat @ gpio=true,", 17, "not LABEL=VALUE"),
    ("cat @ gpio=true,,a=b", 17, "not LABEL=VALUE"),
    ("cat @ gpio=1,,x", 14, "not LABEL=VALUE"),
    ("cat @ gpio,!", 13, "not a valid label key"),
    ("cat @ gpio,!-x", 13, "not a valid label key"),
    ("cat @ zone!=a,!x=1", 15, "puts '!' before a comparison"),
    ("cat @ 'zone!=a b'", 7, "cannot follow '!='"),
    ("cat @ zone!=a=b", 7, "cannot follow '!='"),
    ("cat @ 'zone in (a,b)'", 7, "a set of values"),
    ("cat @ 'gpio,zone notin (a)'", 7, "a set of values"),
    ("cat @ !gpio,-zone", 13, "not a valid label key"),
    ("cat @ gpio=1,gpio=2", 14, "given twice"),
    ("cat @ -x=1", 7, "not a valid label key"),
    ("cat @ gpu==true=x", 16, "expected ',' or the end of the selector"),
    ("cat @ =1", 7, "not a valid label key"),
    ("cat @ 'a b=1'", 7, "not a valid label key"),
    ("cat @ n1 extra", 10, "after the placement"),
    ("cat @ n1 @ n2", 10, "after the placement"),
    ("echo 'a", 6, "no closing '"),
    ('echo "a', 6, 'no closing "'),
    ("echo \0", 6, "NUL"),
    ("echo '\0'", 7, "NUL"),
    ("echo \x01", 6, "U+0001"),
    ("echo \x1b[31m", 6, "U+001B"),
    ("echo 'a\rb'", 8, "U+000D"),
    ("echo \x0b", 6, "U+000B"),
    ("echo \x7f", 6, "U+007F"),
    ("echo \x85", 6, "U+0085"),
    ("echo \udcff", 6, "not UTF-8"),
]


@pytest.mark.parametrize("line, column, words", REFUSED, ids=[repr(line)[:40] for line, _, _ in REFUSED])
def test_refused_with_the_column_and_what_to_do(line, column, words):
    err = refused(line)
    assert err.column == column, str(err)
    assert words in err.what
    assert "(" in err.what or words == "nothing to run", "every refusal says what to do instead"
    first, shown, caret = str(err).split("\n")
    assert FIRST_LINE.match(first).groups() == (err.what, str(column))
    assert caret == "    " + " " * (column - 1) + "^"
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or 0xD800 <= ord(c) < 0xE000 for c in shown + caret)


def test_the_caret_sits_under_the_column():
    line = "seq 10 | grep 1 && wc -l"
    assert_caret(refused(line), line, 17)


def test_the_caret_counts_wide_characters_twice():
    _, shown, caret = str(refused("echo 世界 $x")).split("\n")
    assert shown == "    echo 世界 $x"
    assert caret == "    " + " " * 10 + "^"


def test_control_characters_are_shown_one_picture_each():
    _, shown, caret = str(refused("a 'b\tc\nd' \x1b e")).split("\n")
    assert shown == "    a 'b\u2409c\u240ad' \u241b e"
    assert caret == "    " + " " * 10 + "^"


def test_tabs_and_newlines_inside_quotes_are_allowed():
    assert agents("printf '%s\\n' 'a\tb\nc' \"d\ne\"")[0]["run"] == ["printf", "%s\\n", "a\tb\nc", "d\ne"]


# ----------------------------------------------------------------- hostile


def test_a_100kb_line_compiles():
    started = time.monotonic()
    doc = compiled("echo " + "a" * 100_000 + " | cat")
    assert doc["spec"]["agents"][0]["run"] == ["echo", "a" * 100_000]
    print(f"100 KB word: {time.monotonic() - started:.3f}s")  # loosely watched, never asserted


def test_100kb_of_quoted_words_and_escapes_compile():
    line = "printf %s " + " ".join(["'a b'", '"c\\"d"', "e\\ f", "g'h'\"i\""] * 6_000)
    assert len(line) > 100_000
    assert compile_pipeline(line)["spec"]["agents"][0]["run"][2:6] == ["a b", 'c"d', "e f", "ghi"]


def test_100kb_of_stages_is_refused_past_the_stage_limit():
    line = "|".join(["cat"] * 25_000)
    with pytest.raises(CompileError) as err:
        compile_pipeline(line)
    assert err.value.what.startswith("25000 stages; a pipeline may have at most 1000")
    assert err.value.column == 4 * 1000 + 1          # the first stage past the limit
    names = [a["name"] for a in compile_pipeline("|".join(["cat"] * 1000))["spec"]["agents"]]
    assert names[:3] == ["cat", "cat-2", "cat-3"] and names[-1] == "cat-1000" and len(set(names)) == 1000


def test_a_long_pipeline_validates():
    assert len(agents(" | ".join(["cat"] * 300))) == 300


def test_deeply_nested_looking_input_is_read_without_recursion():
    for line in ["echo " + "'\"'\"'\"" * 20_000, "echo " + "{" * 50_000, "echo " + "[" * 50_000,
                 "echo " + "$/" * 50_000, "echo " + '"' + "'" * 100_000 + '"']:
        compiled(line)
    assert refused("echo " + "{" * 50_000 + "a,b" + "}" * 50_000).column == 6 + 50_000 - 1


@pytest.mark.parametrize("line, column", [
    ("'" + "a" * 100_000, 1),
    ("echo " + "a" * 100_000 + "'", 100_006),
    ("echo " + "a" * 100_000 + " ;", 100_007),
    ("echo " + "a" * 50_000 + " $HOME " + "b" * 50_000, 50_007),
])
def test_long_lines_show_a_window_around_the_column(line, column):
    err = refused(line)
    assert err.column == column
    first, shown, caret = str(err).split("\n")
    assert len(shown) < 140 and len(caret) < 140
    # The character above the caret is the one at the column.
    picture = shown[len(caret) - 1]
    assert picture == line[column - 1]
    assert shown.startswith("    ...") == (column > 61)
    assert shown.endswith("...") == (column + 60 < len(line))


def test_every_c0_control_character_is_refused_where_it_is():
    for code in [*range(0, 9), *range(11, 32), 127]:
        for line, column in ((f"echo x{chr(code)}y", 7), (f"echo 'x{chr(code)}y'", 8)):
            err = refused(line)
            assert (err.column, "control character" in err.what) == (column, True), repr(line)


def test_errors_are_usage_errors_with_exit_status_2():
    err = refused("a;b")
    assert isinstance(err, UsageError) and err.exit_code == 2


# ------------------------------------------------------------------ devices as files

DEVICES = {"gpio/D4", "gpio/D7"}


def test_a_registered_device_named_as_a_file_becomes_a_requirement():
    found = agents("cat /dev/gpio/D4 | tr 01 xy", devices=DEVICES)
    assert found[0] == {"name": "cat", "run": ["cat", "/dev/gpio/D4"], "requires": {"devices": ["gpio/D4"]},
                        "stdin": {}}
    assert "requires" not in found[1]


def test_redirections_to_devices_join_the_stage_to_the_device_not_to_the_client():
    found = agents("cat < /dev/gpio/D4 | tr 01 xy > /dev/gpio/D7", devices=DEVICES)
    assert (found[0]["stdin"], found[0]["requires"]) == ({"device": "gpio/D4"}, {"devices": ["gpio/D4"]})
    assert (found[1]["stdout"], found[1]["requires"]) == ({"device": "gpio/D7"}, {"devices": ["gpio/D7"]})


def test_oneos_gpio_pins_are_devices_too_and_placement_merges():
    found = agents("oneos-gpio watch D4 @ room=shed | cat | oneos-gpio write D7", devices=DEVICES)
    assert found[0]["requires"] == {"labels": {"room": "shed"}, "devices": ["gpio/D4"]}
    assert found[2]["requires"] == {"devices": ["gpio/D7"]}


def test_other_dev_paths_and_unregistered_devices_are_the_nodes_own():
    assert "requires" not in agents("cat /dev/null /dev/gpio/D9", devices=DEVICES)[0]
    assert agents("cat < /dev/null")[0]["stdin"] == {"file": "/dev/null"}
    assert "requires" not in agents("cat /dev/gpio/D4")[0]     # no registry given: a plain path


@pytest.mark.parametrize("line, what", [
    ("seq 3 2> /dev/gpio/D7", "not stderr"),
    ("seq 3 >> /dev/gpio/D7", "not with >>"),
])
def test_a_device_takes_stdin_or_stdout_only(line, what):
    with pytest.raises(CompileError, match=what):
        compile_pipeline(line, devices=DEVICES)
