"""`oneosctl compile` as a user runs it: the installed console script, piped into validate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from oneos.compiler import compile_pipeline
from oneos.cli.oneosctl import main
from tests.procs import in_process

ONEOSCTL = Path(sys.executable).parent / "oneosctl"


def oneosctl(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    """oneosctl ARGS in this process (compile_then_validate runs the installed command)."""
    return in_process(main, *args, cwd=cwd, stdin=stdin)


def compile_then_validate(pipeline: str, cwd: Path) -> subprocess.CompletedProcess:
    """`oneosctl compile PIPELINE | oneosctl validate -f -`, with a real pipe between the two."""
    compiler = subprocess.Popen([str(ONEOSCTL), "compile", pipeline], cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    validator = subprocess.run([str(ONEOSCTL), "validate", "-f", "-"], cwd=cwd, stdin=compiler.stdout,
                               capture_output=True, text=True, timeout=60)
    compiler.stdout.close()
    assert compiler.wait(timeout=60) == 0, compiler.stderr.read()
    compiler.stderr.close()
    return validator


def test_compiled_yaml_passes_validate_through_a_pipe(tmp_path):
    validator = compile_then_validate("seq 1 100000 | grep 7 | wc -l > count 2>>errors @ zone=a", tmp_path)
    assert (validator.returncode, validator.stdout, validator.stderr) == (0, "<stdin>: valid\n", "")


def test_shipped_files_are_found_next_to_the_command(tmp_path):
    (tmp_path / "ctl.py").write_text("print('hi')\n")
    result = oneosctl("compile", "oneos-gpio watch D4 | python3 -u ctl.py | ./ctl.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "files:\n    - ctl.py\n" in result.stdout
    validator = compile_then_validate("python3 ctl.py | ./ctl.py", tmp_path)
    assert validator.returncode == 0, validator.stderr


def test_prints_the_same_manifest_as_the_compiler(tmp_path):
    line = "A='x y' grep -v '#' < in.txt | sort @ node-1 | uniq -c"
    result = oneosctl("compile", line, "--name", "uniq-lines", "-o", "json", cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == ""
    assert json.loads(result.stdout) == compile_pipeline(line, name="uniq-lines", base_dir=tmp_path)
    yaml_out = oneosctl("compile", line, "--name", "uniq-lines", cwd=tmp_path).stdout
    assert yaml_out.startswith("apiVersion: oneos/v1\nkind: Pipeline\nmetadata:\n  name: uniq-lines\n")


def test_an_error_shows_a_caret_under_the_column_and_exits_2(tmp_path):
    result = oneosctl("compile", "seq 10 | grep $PATTERN | wc -l", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "oneosctl: cannot compile: '$PATTERN' expands a shell variable, which is not supported (the node's "
        "environment is not yours: pass values with VAR=value or literally) at column 15",
        "    seq 10 | grep $PATTERN | wc -l",
        "                  ^",
    ]


def test_nothing_to_run(tmp_path):
    result = oneosctl("compile", "", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("oneosctl: cannot compile: nothing to run")


def test_an_invalid_name_is_one_line(tmp_path):
    result = oneosctl("compile", "cat", "--name", "Not_Valid", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "not a valid pipeline name" in result.stderr


def test_hostile_input_is_refused_without_reaching_the_terminal(tmp_path):
    result = oneosctl("compile", "echo \x1b]0;pwned\x07 | cat", cwd=tmp_path)
    assert result.returncode == 2 and "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert "control character U+001B" in result.stderr
    not_utf8 = subprocess.run([ONEOSCTL, "compile", b"echo \xff"], cwd=tmp_path, capture_output=True, timeout=60)
    assert not_utf8.returncode == 2 and b"not UTF-8" in not_utf8.stderr and b"Traceback" not in not_utf8.stderr


def test_a_100kb_pipeline_on_the_command_line(tmp_path):
    result = oneosctl("compile", "echo " + "x" * 100_000 + " | wc -c", cwd=tmp_path)
    assert result.returncode == 0 and "x" * 100_000 in result.stdout
    result = oneosctl("compile", "echo " + "x" * 100_000 + " && wc -c", cwd=tmp_path)
    assert result.returncode == 2
    first, shown, caret = result.stderr.splitlines()
    assert first.endswith("at column 100007") and len(shown) < 140 and shown[len(caret) - 1] == "&"
