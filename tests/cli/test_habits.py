"""oneosctl as kubectl users type it: files without -f, `delete -f`, global options after the subcommand.

In this process (oneosctl's main(), as the console script calls it) against the session's
Name Server: these commands only read and write manifests there.
"""

from __future__ import annotations

import json
import uuid

import pytest

from oneos import manifests, state
from oneos.cli.oneosctl import main
from tests.procs import free_port

MANIFEST = """\
apiVersion: oneos/v1
kind: Pipeline
metadata: {{name: {name}}}
spec:
  agents:
    - name: numbers
      run: [seq, "3"]
"""


@pytest.fixture
def names(ns):
    """Two pipeline names no other test uses; their manifests are removed afterwards."""
    made = [f"habit-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    yield made
    for name in made:
        ns.delete(state.pipeline_key(name))


@pytest.fixture
def ctl(capsys, monkeypatch):
    """oneosctl ARGS -> (exit status, stdout, stderr); no $ONEOS_NAMESERVER: the command line says where."""
    monkeypatch.delenv("ONEOS_NAMESERVER", raising=False)

    def run(*argv: str) -> tuple[int, str, str]:
        status = main(list(argv))
        out, err = capsys.readouterr()
        return status, out, err
    return run


def write(tmp_path, name: str, text: str | None = None) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text if text is not None else MANIFEST.format(name=name))
    return str(path)


def stored(ns, name: str) -> bool:
    return ns.get(state.pipeline_key(name))[1] is not None


def test_apply_and_validate_take_files_as_arguments_and_after_f_mixed(ctl, ns, nameserver_url, names, tmp_path):
    first, second = (write(tmp_path, n) for n in names)
    assert ctl("validate", first, "-f", second) == (0, f"{first}: valid\n{second}: valid\n", "")
    status, out, err = ctl("apply", first, "-f", second, "--nameserver", nameserver_url)
    assert (status, out, err) == (0, f"pipeline/{names[0]} created\npipeline/{names[1]} created\n", "")
    assert all(stored(ns, n) for n in names)
    assert ctl("apply", "--nameserver", nameserver_url, second)[1] == f"pipeline/{names[1]} unchanged\n"


def test_apply_without_files_says_how_to_name_them(ctl, nameserver_url):
    status, out, err = ctl("apply", "--nameserver", nameserver_url)
    assert (status, out) == (2, "")
    assert err == "oneosctl: apply: name the manifests: `oneosctl apply FILE...` or `oneosctl apply -f FILE`\n"


def test_delete_f_deletes_the_pipelines_the_manifests_name_and_says_which_are_not_found(
        ctl, ns, nameserver_url, names, tmp_path):
    both = write(tmp_path, "both", MANIFEST.format(name=names[0]) + "---\n" + MANIFEST.format(name=names[1]))
    assert ctl("apply", both, "--nameserver", nameserver_url)[0] == 0
    only_first = write(tmp_path, names[0])
    assert ctl("delete", "-f", only_first, "--nameserver", nameserver_url) == (
        0, f"pipeline/{names[0]} deleted\n", "")
    assert not stored(ns, names[0]) and stored(ns, names[1])
    # As kubectl: what is there is deleted, what is not is "not found", and the status says so.
    status, out, err = ctl("delete", "-f", both, "--nameserver", nameserver_url)
    assert (status, out, err) == (1, f"pipeline/{names[1]} deleted\n", f"oneosctl: pipeline {names[0]!r} not found\n")
    assert not stored(ns, names[1])


def test_delete_takes_names_or_files_not_both_and_a_bad_file_deletes_nothing(ctl, ns, nameserver_url, names,
                                                                             tmp_path):
    path = write(tmp_path, names[0])
    assert ctl("apply", path, "--nameserver", nameserver_url)[0] == 0
    status, out, err = ctl("delete", "pipeline", names[0], "-f", path, "--nameserver", nameserver_url)
    assert (status, out) == (2, "") and "either -f FILE or RESOURCE NAME..., not both" in err
    broken = write(tmp_path, "broken", MANIFEST.format(name=names[1]).replace("run:", "runn:"))
    status, out, err = ctl("delete", "-f", path, "-f", broken, "--nameserver", nameserver_url)
    assert (status, out) == (2, "") and err.startswith(f"{broken}: ") and len(err.splitlines()) >= 1
    assert stored(ns, names[0])   # nothing was deleted: the manifests are checked first
    assert ctl("delete", "--nameserver", nameserver_url)[0] == 2


def test_nameserver_and_output_go_before_or_after_the_subcommand(ctl, ns, nameserver_url, names, tmp_path):
    manifests.apply_pipeline(ns, {
        "apiVersion": "oneos/v1", "kind": "Pipeline", "metadata": {"name": names[0]},
        "spec": {"agents": [{"name": "numbers", "run": ["seq", "3"]}]}}, tmp_path)
    for argv in (["get", "pipeline", names[0], "--nameserver", nameserver_url, "-o", "json"],
                 ["--nameserver", nameserver_url, "-o", "json", "get", "pipeline", names[0]],
                 ["-o", "json", "get", "pipeline", names[0], "--nameserver", nameserver_url]):
        status, out, err = ctl(*argv)
        assert (status, err) == (0, ""), argv
        assert json.loads(out)["metadata"]["name"] == names[0], argv
    # The option after the subcommand wins over the one before it, as it does in kubectl.
    nowhere = f"http://127.0.0.1:{free_port()}"
    status, out, err = ctl("--nameserver", nameserver_url, "get", "pipelines", "--nameserver", nowhere)
    assert status != 0 and nowhere in err and len(err.splitlines()) == 1
    assert ctl("-o", "json", "compile", "seq 3")[1].startswith("{")
    assert ctl("compile", "seq 3", "-o", "json", "--nameserver", nowhere)[0] == 0


def test_output_is_refused_where_it_does_not_apply(ctl, nameserver_url):
    status, out, err = ctl("-o", "table", "compile", "seq 3")
    assert (status, out) == (2, "") and err.splitlines()[-1] == (
        "oneosctl: error: compile -o/--output: 'table' is not one of yaml, json")
    status, out, err = ctl("-o", "json", "delete", "pipeline", "x", "--nameserver", nameserver_url)
    assert (status, out) == (2, "") and "-o/--output is for the commands that print documents" in err
