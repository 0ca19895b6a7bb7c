"""`oneosctl validate` as a user runs it: the installed console script once, then its main() in this process."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from oneos.cli.oneosctl import main
from tests.procs import ANY_EXIT, cli, in_process

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
apiVersion: oneos/v1
kind: Pipeline
metadata: {name: count-sevens}
spec:
  agents:
    - name: numbers
      run: [seq, "1", "100000"]
    - name: sevens
      run: [grep, "7"]
    - name: count
      run: [wc, -l]
  links:
    - {from: numbers, to: sevens}
    - {from: sevens, to: count}
"""


def oneosctl(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    """oneosctl ARGS in this process (the installed command itself is checked once, below)."""
    return in_process(main, *args, cwd=cwd, stdin=stdin)


def installed_oneosctl(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it."""
    result = cli("oneosctl", *args, cwd=cwd, input=stdin, ok_code=ANY_EXIT)
    assert "Traceback" not in result.stderr
    return result


@pytest.fixture
def workdir(tmp_path) -> Path:
    (tmp_path / "good.yaml").write_text(GOOD)
    return tmp_path


def test_valid_file(workdir):
    result = installed_oneosctl("validate", "-f", "good.yaml", cwd=workdir)
    assert (result.returncode, result.stdout, result.stderr) == (0, "good.yaml: valid\n", "")


def test_several_files_after_one_f_and_repeated_f(workdir):
    (workdir / "also.yaml").write_text(GOOD.replace("count-sevens", "again"))
    result = oneosctl("validate", "-f", "good.yaml", "also.yaml", "--filename", "good.yaml", cwd=workdir)
    assert result.returncode == 0
    assert result.stdout == "good.yaml: valid\nalso.yaml: valid\ngood.yaml: valid\n"


def test_empty_run_is_reported_with_path_line_and_column(workdir):
    (workdir / "bad.yaml").write_text(GOOD.replace('run: [grep, "7"]', "run: []"))
    result = oneosctl("validate", "-f", "bad.yaml", cwd=workdir)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == "bad.yaml: spec.agents[1].run: [] should be non-empty (line 9, column 12)\n"


def test_every_problem_is_one_line(workdir):
    bad = GOOD.replace("run: [wc, -l]", "comand: [wc, -l]").replace("name: sevens", "name: Sevens")
    (workdir / "bad.yaml").write_text(bad.replace("to: count}", "to: counter}"))
    result = oneosctl("validate", "-f", "bad.yaml", cwd=workdir)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "bad.yaml: spec.agents[1].name: 'Sevens' is not a valid name; a name is lowercase letters, digits and '-', "
        "starting and ending with a letter or digit, at most 63 characters (line 8, column 13)",
        "bad.yaml: spec.agents[2]: 'run' is a required property (line 10, column 7)",
        "bad.yaml: spec.agents[2]: Additional properties are not allowed ('comand' was unexpected); "
        "did you mean 'run'? (line 11, column 7)",
    ]


def test_link_to_a_missing_agent(workdir):
    (workdir / "bad.yaml").write_text(GOOD.replace("to: count}", "to: counter}"))
    result = oneosctl("validate", "-f", "bad.yaml", cwd=workdir)
    assert result.returncode == 2
    assert result.stderr == (
        "bad.yaml: spec.links[1].to: no agent named 'counter'; the agents are numbers, sevens, count (line 14, column 26)\n")


def test_yaml_syntax_error_is_file_line_column(workdir):
    (workdir / "broken.yaml").write_text("apiVersion: oneos/v1\nkind: Pipeline\nmetadata: {name: x\nspec: {}\n")
    result = oneosctl("validate", "-f", "broken.yaml", cwd=workdir)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        "broken.yaml:4:5: expected ',' or '}', but got ':' (while parsing a flow mapping at line 3, column 11)\n")


def test_missing_file(workdir):
    result = oneosctl("validate", "-f", "nope.yaml", cwd=workdir)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", "nope.yaml: no such file\n")


def test_stdin(workdir):
    result = oneosctl("validate", "-f", "-", cwd=workdir, stdin=GOOD)
    assert (result.returncode, result.stdout, result.stderr) == (0, "<stdin>: valid\n", "")
    result = oneosctl("validate", "-f", "-", cwd=workdir, stdin=GOOD.replace("kind: Pipeline", "kind: Pipe"))
    assert result.returncode == 2
    assert result.stderr == "<stdin>: kind: unknown kind 'Pipe'; kind is one of Init, Pipeline; did you mean 'Pipeline'? (line 2, column 7)\n"


def test_valid_and_invalid_files_together(workdir):
    (workdir / "bad.yaml").write_text(GOOD.replace("restart", "").replace("run: [wc, -l]", "run: [wc, -l]\n      restart: sometimes"))
    result = oneosctl("validate", "-f", "good.yaml", "bad.yaml", "missing.yaml", cwd=workdir)
    assert result.returncode == 2
    assert result.stdout == "good.yaml: valid\n"
    assert result.stderr.splitlines() == [
        "bad.yaml: spec.agents[2].restart: 'sometimes' is not one of ['no', 'on-failure', 'always'] (line 12, column 16)",
        "missing.yaml: no such file",
    ]


def test_restart_no_is_the_word_no(workdir):
    (workdir / "p.yaml").write_text(GOOD.replace("run: [wc, -l]", "run: [wc, -l]\n      restart: no"))
    assert oneosctl("validate", "-f", "p.yaml", cwd=workdir).returncode == 0


def test_files_are_found_next_to_the_manifest_not_the_working_directory(workdir):
    pipeline_dir = workdir / "garden"
    pipeline_dir.mkdir()
    text = GOOD.replace("run: [wc, -l]", "run: [python3, count.py]\n      files: [count.py]")
    (pipeline_dir / "p.yaml").write_text(text)
    result = oneosctl("validate", "-f", "garden/p.yaml", cwd=workdir)
    assert result.returncode == 2
    assert result.stderr == (
        "garden/p.yaml: spec.agents[2].files[0]: no such file 'count.py' in garden; "
        "files are relative to the manifest (line 12, column 15)\n")
    (pipeline_dir / "count.py").write_text("print(sum(1 for _ in open(0)))\n")
    assert oneosctl("validate", "-f", "garden/p.yaml", cwd=workdir).stdout == "garden/p.yaml: valid\n"


def test_a_directory_means_its_manifests(workdir):
    (workdir / "notes.txt").write_text("not a manifest")
    (workdir / "second.yml").write_text(GOOD)
    result = oneosctl("validate", "-f", ".", cwd=workdir)
    assert (result.returncode, result.stdout) == (0, "good.yaml: valid\nsecond.yml: valid\n")


def test_empty_file(workdir):
    (workdir / "empty.yaml").write_text("# nothing yet\n")
    result = oneosctl("validate", "-f", "empty.yaml", cwd=workdir)
    assert result.returncode == 2
    assert result.stderr == (
        "empty.yaml: no manifest found; expected a document with apiVersion, kind, metadata and spec\n")


def test_not_utf8(workdir):
    (workdir / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    result = oneosctl("validate", "-f", "latin1.yaml", cwd=workdir)
    assert (result.returncode, result.stderr) == (2, "latin1.yaml: not UTF-8 text (byte 0xe9 at offset 9)\n")


def test_multi_document_file_reports_each_document(workdir):
    second = GOOD.replace("count-sevens", "second").replace('run: [seq, "1", "100000"]', "run: []")
    (workdir / "two.yaml").write_text(GOOD + "---\n" + second)
    result = oneosctl("validate", "-f", "two.yaml", cwd=workdir)
    assert result.returncode == 2
    assert result.stderr == "two.yaml: spec.agents[0].run: [] should be non-empty (line 22, column 12)\n"


def test_shipped_manifests_are_valid():
    result = oneosctl("validate", "-f", "manifests", "manifests/examples", cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "manifests/init.yaml: valid",
        "manifests/examples/count-sevens.yaml: valid",
        "manifests/examples/greenhouse.yaml: valid",
        "manifests/examples/word-frequencies.yaml: valid",
    ]


def test_without_files_says_how_to_name_them(workdir):
    result = oneosctl("validate", cwd=workdir)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == ("oneosctl: validate: name the manifests: `oneosctl validate FILE...` or "
                             "`oneosctl validate -f FILE`\n")


def test_help_lists_validate(workdir):
    result = oneosctl("--help", cwd=workdir)
    assert result.returncode == 0
    assert "validate" in result.stdout


def test_the_oneos_shell_names_itself_in_its_usage(tmp_path):
    from oneos.cli import shell
    result = in_process(shell.main, "--help", cwd=tmp_path, name="oneos")
    assert result.returncode == 0 and result.stdout.startswith("usage: oneos [-h]"), result.stdout
