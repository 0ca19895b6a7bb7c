"""The manifest loader: YAML reading, schemas, semantic checks, stored documents, shipped manifests."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import jsonschema
import pytest

import oneos.documents as documents
from oneos import paths
from oneos.documents import (
    DOCUMENTS,
    DocumentError,
    Problem,
    check,
    dump_yaml,
    load_file,
    load_text,
    load_yaml,
    schema,
    validate,
)
from oneos.durations import parse_seconds
from oneos.errors import OneOSError
from oneos.quantities import parse_memory

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = REPO / "manifests"

PIPELINE = """\
apiVersion: oneos/v1
kind: Pipeline
metadata:
  name: count-sevens
spec:
  agents:
    - name: numbers
      run: [seq, "1", "100"]
    - name: sevens
      run: [grep, "7"]
    - name: count
      run: [wc, -l]
  links:
    - {from: numbers, to: sevens}
    - {from: sevens, to: count}
"""


def pipeline(**agent_fields) -> dict:
    """A valid one-agent pipeline whose agent has `agent_fields` added or replaced."""
    agent = {"name": "worker", "run": ["cat"], **agent_fields}
    return {"apiVersion": "oneos/v1", "kind": "Pipeline", "metadata": {"name": "p"}, "spec": {"agents": [agent]}}


def problems_of(doc, **kwargs) -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in validate(doc, **kwargs)]


# ----------------------------------------------------------------------- YAML


@pytest.mark.parametrize("word", ["no", "No", "NO", "yes", "on", "off", "On", "y", "n", "Off"])
def test_yaml_1_1_boolean_words_stay_strings(word):
    assert load_yaml(f"restart: {word}\n", "f.yaml") == [{"restart": word}]


@pytest.mark.parametrize("word, value", [("true", True), ("True", True), ("TRUE", True),
                                         ("false", False), ("False", False), ("FALSE", False)])
def test_only_true_and_false_are_booleans(word, value):
    assert load_yaml(f"kernel: {word}\n", "f.yaml") == [{"kernel": value}]


@pytest.mark.parametrize("text, value", [
    ("010", 10),          # YAML 1.1 read this as octal 8
    ("0o17", 15),
    ("0x1f", 31),
    ("-3", -3),
    ("1:30", "1:30"),     # YAML 1.1 read this as 90 (base 60)
    ("2024-05-01", "2024-05-01"),  # YAML 1.1 read this as a date
    ("1e3", 1000.0),      # YAML 1.1 read this as a string
    ("0.5", 0.5),
    ("~", None),
    ("null", None),
])
def test_scalars_follow_yaml_1_2(text, value):
    assert load_yaml(f"v: {text}\n", "f.yaml") == [{"v": value}]


def test_syntax_error_is_one_line_with_file_line_and_column():
    with pytest.raises(DocumentError) as err:
        load_yaml("a: 1\nb: [1, 2\nc: 3\n", "broken.yaml")
    assert str(err.value) == (
        "broken.yaml:3:2: expected ',' or ']', but got ':' (while parsing a flow sequence at line 2, column 4)"
    )


def test_bad_indentation_points_at_the_line():
    with pytest.raises(DocumentError) as err:
        load_yaml("metadata:\n  name: x\n labels: {}\n", "m.yaml")
    assert str(err.value).startswith("m.yaml:3:2: ")
    assert "\n" not in str(err.value)


def test_tab_indentation_says_to_use_spaces():
    with pytest.raises(DocumentError) as err:
        load_yaml("spec:\n\tagents: []\n", "t.yaml")
    assert str(err.value) == "t.yaml:2:1: found character '\\t' that cannot start any token; indent with spaces, not tabs"


def test_control_character_is_located():
    with pytest.raises(DocumentError) as err:
        load_yaml("a: 1\nb: x\x00\n", "c.yaml")
    assert str(err.value) == "c.yaml:2:5: character #x0000 is not allowed in YAML"


def test_duplicate_key_is_an_error_naming_both_places():
    with pytest.raises(DocumentError) as err:
        load_yaml("name: a\nrun: [x]\nrun: [y]\n", "d.yaml")
    assert str(err.value) == "d.yaml:3:1: duplicate key 'run'; the first is at line 2, column 1"


def test_merge_keys_work_and_explicit_keys_win():
    [doc] = load_yaml("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\n", "m.yaml")
    assert doc["other"] == {"x": 1, "y": 3}


def test_recursive_alias_is_rejected():
    with pytest.raises(DocumentError, match=r"^r.yaml:1:\d+: an alias refers to a value that contains it"):
        load_yaml("a: &a [*a]\n", "r.yaml")


def test_python_tags_are_not_constructed():
    with pytest.raises(DocumentError, match=r"^p.yaml:1:4: could not determine a constructor"):
        load_yaml("a: !!python/object/apply:os.system [true]\n", "p.yaml")


def test_all_documents_are_returned_and_empty_ones_skipped():
    assert load_yaml("---\na: 1\n---\n---\nb: 2\n---\n", "f.yaml") == [{"a": 1}, {"b": 2}]
    assert load_yaml("", "f.yaml") == []


def test_marks_map_paths_to_lines_and_columns():
    [doc] = load_yaml(PIPELINE, "p.yaml")
    assert doc.marks[("spec", "agents", 1, "run")] == (10, 12)
    assert doc.marks[("spec", "links", 0, "to")] == (14, 27)
    assert doc.key_marks[("spec", "agents", 2, "name")] == (11, 7)


def test_dump_yaml_keeps_order_and_reads_back_the_same():
    doc = {"z": 1, "a": ["no", "on", "1e3", "010", "1:30", "2024-05-01", "true", "x"], "m": {"k": True}}
    text = dump_yaml(doc)
    assert text.splitlines()[0] == "z: 1"
    assert "{" not in text  # block style
    assert load_yaml(text, "round-trip") == [doc]


def test_dump_yaml_of_a_loaded_manifest():
    [doc] = load_yaml(PIPELINE, "p.yaml")
    assert load_yaml(dump_yaml(doc), "again") == [doc]


# -------------------------------------------------------------------- schemas


@pytest.mark.parametrize("path", sorted((REPO / "schemas").glob("*.schema.json")), ids=lambda p: p.name)
def test_schema_files_are_draft_2020_12_with_id_and_no_open_objects(path):
    doc = json.loads(path.read_text())
    jsonschema.Draft202012Validator.check_schema(doc)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert doc["$id"].endswith("/" + path.name)

    def walk(node, where):
        if isinstance(node, dict):
            if "properties" in node:
                assert node.get("additionalProperties") is False, f"{path.name}: {where} accepts unknown fields"
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}/{i}")

    walk(doc, "#")


def test_a_pipeline_with_every_agent_field_is_valid():
    doc = pipeline(
        files=["controller.py", "lib/helpers.py"],
        env={"MODE": "fast", "_X1": ""},
        requires={"labels": {"gpio": "true", "oneos.dev/zone": "north"}, "devices": ["gpio/D4", "i2c/1"]},
        resources={"memory": "128Mi", "cpu": "500m"},
        restart="on-failure",
        restartSec="100ms",
        restartMaxDelaySec=60,
        startLimitBurst=5,
        startLimitIntervalSec="1m30s",
    )
    doc["metadata"]["labels"] = {"team": "garden"}
    doc["spec"]["links"] = []
    assert validate(doc) == []


@pytest.mark.parametrize("field, value", [
    ("memory", 1048576), ("memory", "1Gi"), ("memory", "500M"), ("memory", "1.5Gi"), ("memory", "64k"), ("memory", "64K"),
    ("cpu", 1), ("cpu", 0.25), ("cpu", "500m"), ("cpu", "2"),
])
def test_resource_quantities_that_are_valid(field, value):
    assert validate(pipeline(resources={field: value})) == []


@pytest.mark.parametrize("value", [0, 2.5, "0", "100ms", "5s", "1m", "1m30s", "2h", "1.5s", ".5s", "250us", "250µs"])
def test_restart_sec_accepts_seconds_or_durations(value):
    assert validate(pipeline(restartSec=value)) == []


@pytest.mark.parametrize("fields, path, message", [
    ({"restrat": "always"}, "spec.agents[0]",
     "Additional properties are not allowed ('restrat' was unexpected); did you mean 'restart'?"),
    ({"command": ["ls"]}, "spec.agents[0]",
     "Additional properties are not allowed ('command' was unexpected); did you mean 'run'?"),
    ({"restart": "sometimes"}, "spec.agents[0].restart",
     "'sometimes' is not one of ['no', 'on-failure', 'always']"),
    ({"restart": False}, "spec.agents[0].restart", "False is not one of ['no', 'on-failure', 'always']"),
    ({"run": []}, "spec.agents[0].run", "[] should be non-empty"),
    ({"run": ["", "x"]}, "spec.agents[0].run[0]", "'' should be non-empty"),
    ({"run": "seq 1 10"}, "spec.agents[0].run", "'seq 1 10' is not of type 'array'"),
    ({"run": ["sleep", 5]}, "spec.agents[0].run[1]",
     "5 is not of type 'string'; put the value in quotes to make it a string"),
    ({"name": "Sensor"}, "spec.agents[0].name",
     "'Sensor' is not a valid name; a name is lowercase letters, digits and '-', starting and ending "
     "with a letter or digit, at most 63 characters"),
    ({"name": "-x"}, "spec.agents[0].name", "'-x' is not a valid name; a name is lowercase"),
    ({"name": "a" * 64}, "spec.agents[0].name", f"{'a' * 64!r} is not a valid name;"),
    ({"name": None}, "spec.agents[0].name", "None is not of type 'string'; the field is empty"),
    ({"files": ["../secret"]}, "spec.agents[0].files[0]", "'../secret' is not a valid file path"),
    ({"files": ["a/../../b"]}, "spec.agents[0].files[0]", "'a/../../b' is not a valid file path"),
    ({"files": ["/etc/passwd"]}, "spec.agents[0].files[0]", "'/etc/passwd' is not a valid file path"),
    ({"files": ["a\x00b"]}, "spec.agents[0].files[0]", "'a\\x00b' is not a valid file path"),
    ({"files": ["tool.py\n"]}, "spec.agents[0].files[0]", "'tool.py\\n' is not a valid file path"),
    ({"name": "worker\n"}, "spec.agents[0].name", "'worker\\n' is not a valid name"),
    ({"env": {"1X": "a"}}, "spec.agents[0].env", "'1X' is not a valid environment variable name"),
    ({"env": {"DEBUG": 1}}, "spec.agents[0].env.DEBUG",
     "1 is not of type 'string'; put the value in quotes to make it a string"),
    ({"requires": {"devices": ["D4"]}}, "spec.agents[0].requires.devices[0]",
     "'D4' is not a valid device; a device is KIND/NAME, such as gpio/D4 or i2c/1"),
    ({"requires": {"label": {}}}, "spec.agents[0].requires",
     "Additional properties are not allowed ('label' was unexpected); did you mean 'labels'?"),
    ({"resources": {"memory": "128MB"}}, "spec.agents[0].resources.memory",
     "'128MB' is not a valid memory quantity; use a number of bytes or a quantity such as 128Mi, 1Gi or 500M"),
    ({"resources": {"memory": -1}}, "spec.agents[0].resources.memory", "-1 is less than the minimum of 0"),
    ({"resources": {"cpu": "half"}}, "spec.agents[0].resources.cpu", "'half' is not a valid cpu amount"),
    ({"restartSec": "5 s"}, "spec.agents[0].restartSec", "'5 s' is not a valid duration"),
    ({"restartSec": -1}, "spec.agents[0].restartSec", "-1 is less than the minimum of 0"),
    ({"startLimitBurst": 1.5}, "spec.agents[0].startLimitBurst", "1.5 is not of type 'integer'"),
    ({"startLimitIntervalSec": "forever"}, "spec.agents[0].startLimitIntervalSec", "'forever' is not a valid duration"),
])
def test_agent_field_errors_name_the_field(fields, path, message):
    found = problems_of(pipeline(**fields))
    assert len(found) == 1, found
    assert found[0][0] == path
    assert found[0][1].startswith(message)


@pytest.mark.parametrize("change, path, message", [
    (lambda d: d.update(apiVersion="v1"), "apiVersion", "'oneos/v1' was expected"),
    (lambda d: d.update(specs=d.pop("spec")), "",
     "Additional properties are not allowed ('specs' was unexpected); did you mean 'spec'?"),
    (lambda d: d["metadata"].pop("name"), "metadata", "'name' is a required property"),
    (lambda d: d["metadata"].update(name="My Pipeline"), "metadata.name", "'My Pipeline' is not a valid name"),
    (lambda d: d["metadata"].update(labels={"bad key": "x"}), "metadata.labels", "'bad key' is not a valid label key"),
    (lambda d: d["spec"].update(agents=[]), "spec.agents", "[] should be non-empty"),
    (lambda d: d["spec"].update(links=[{"from": "worker"}]), "spec.links[0]", "'to' is a required property"),
    (lambda d: d["spec"].update(links=[{"from": "worker", "too": "x"}]), "spec.links[0]",
     "Additional properties are not allowed ('too' was unexpected); did you mean 'to'?"),
])
def test_pipeline_errors_name_the_field(change, path, message):
    doc = pipeline()
    change(doc)
    found = problems_of(doc)
    assert (path, message) in found or any(p == path and m.startswith(message) for p, m in found), found


def test_one_problem_per_place_but_each_missing_and_unexpected_field():
    doc = pipeline()
    doc["spec"]["agents"][0] = {"name": "", "comand": ["ls"]}
    assert sorted(problems_of(doc)) == [
        ("spec.agents[0]", "'run' is a required property"),
        ("spec.agents[0]", "Additional properties are not allowed ('comand' was unexpected); did you mean 'run'?"),
        ("spec.agents[0].name", "'' is not a valid name; a name is lowercase letters, digits and '-', "
                                "starting and ending with a letter or digit, at most 63 characters"),
    ]


def test_problems_carry_line_and_column_of_the_offending_value():
    text = PIPELINE.replace('run: [grep, "7"]', "run: []")
    [doc] = load_yaml(text, "p.yaml")
    assert validate(doc, "p.yaml") == [Problem("spec.agents[1].run", "[] should be non-empty", 10, 12, "p.yaml")]
    assert str(validate(doc, "p.yaml")[0]) == "p.yaml: spec.agents[1].run: [] should be non-empty (line 10, column 12)"


def test_unexpected_field_is_located_at_its_key():
    text = PIPELINE.replace("      run: [wc, -l]\n", "      run: [wc, -l]\n      restrat: always\n")
    [doc] = load_yaml(text, "p.yaml")
    [problem] = validate(doc, "p.yaml")
    assert (problem.path, problem.line, problem.column) == ("spec.agents[2]", 13, 7)


def test_missing_field_is_located_at_its_parent():
    text = PIPELINE.replace("      run: [wc, -l]\n", "")
    [doc] = load_yaml(text, "p.yaml")
    assert validate(doc, "p.yaml") == [
        Problem("spec.agents[2]", "'run' is a required property", 11, 7, "p.yaml")]


def test_init_manifest_has_agents_but_no_links():
    doc = {"apiVersion": "oneos/v1", "kind": "Init", "metadata": {"name": "init"},
           "spec": {"agents": [{"name": "pulsar", "run": ["oneos-broker"], "restart": "always"}]}}
    assert validate(doc) == []
    doc["spec"]["links"] = []
    assert problems_of(doc) == [("spec", "Additional properties are not allowed ('links' was unexpected); "
                                         "allowed fields: agents")]


# ---------------------------------------------------------------------- kinds


def test_missing_kind_names_the_allowed_kinds():
    doc = pipeline()
    del doc["kind"]
    assert problems_of(doc) == [("", "'kind' is a required property; kind is one of Init, Pipeline")]


def test_unknown_kind_suggests_the_nearest():
    doc = pipeline()
    doc["kind"] = "pipeline"
    assert problems_of(doc) == [("kind", "unknown kind 'pipeline'; kind is one of Init, Pipeline; did you mean 'Pipeline'?")]


def test_a_document_that_is_not_a_mapping():
    assert problems_of(["a", "b"]) == [
        ("", "a manifest is a mapping with apiVersion, kind, metadata and spec, not a list")]


# ------------------------------------------------------------ semantic checks


def two_agents(links, names=("a", "b", "c")) -> dict:
    doc = pipeline()
    doc["spec"]["agents"] = [{"name": n, "run": ["cat"]} for n in names]
    doc["spec"]["links"] = [{"from": f, "to": t} for f, t in links]
    return doc


def test_agent_names_must_be_unique():
    assert problems_of(two_agents([], names=("a", "b", "a"))) == [
        ("spec.agents[2].name", "duplicate agent name 'a' (also spec.agents[0]); give each agent its own name")]


def test_link_to_an_unknown_agent_lists_the_agents():
    assert problems_of(two_agents([("a", "d"), ("x", "b")])) == [
        ("spec.links[0].to", "no agent named 'd'; the agents are a, b, c"),
        ("spec.links[1].from", "no agent named 'x'; the agents are a, b, c"),
    ]


def test_link_from_an_agent_to_itself():
    assert problems_of(two_agents([("a", "b"), ("b", "b")])) == [
        ("spec.links[1]", "link from 'b' to itself; a link joins two different agents")]


def test_duplicate_link():
    assert problems_of(two_agents([("a", "b"), ("a", "b")])) == [
        ("spec.links[1]", "duplicate link from 'a' to 'b' (also spec.links[0])")]


def test_links_must_not_form_a_cycle():
    assert problems_of(two_agents([("a", "b"), ("b", "c"), ("c", "a")])) == [
        ("spec.links[2]", "links form a cycle a -> b -> c -> a; a pipeline's links must not loop back")]


def test_fan_out_and_fan_in_are_not_cycles():
    assert validate(two_agents([("a", "b"), ("a", "c"), ("b", "c")])) == []


def test_files_must_exist_next_to_the_manifest(tmp_path):
    doc = pipeline(files=["controller.py"])
    assert problems_of(doc, base_dir=tmp_path) == [
        ("spec.agents[0].files[0]",
         f"no such file 'controller.py' in {tmp_path}; files are relative to the manifest")]
    (tmp_path / "controller.py").write_text("print('hi')\n")
    assert validate(doc, base_dir=tmp_path) == []


def test_files_are_not_looked_up_without_a_base_dir():
    assert validate(pipeline(files=["nowhere.py"])) == []


def test_semantic_problems_are_located_in_the_file():
    text = PIPELINE.replace("{from: sevens, to: count}", "{from: sevens, to: counter}")
    with pytest.raises(DocumentError) as err:
        load_text(text, "p.yaml")
    assert str(err.value) == (
        "p.yaml: spec.links[1].to: no agent named 'counter'; the agents are numbers, sevens, count (line 15, column 26)")


# ----------------------------------------------------------- stored documents

NOW = "2024-05-01T12:00:00Z"


def boot(**changes) -> dict:
    doc = {"schemaVersion": 1, "cluster": "home", "pulsar": {"url": "pulsar://127.0.0.1:6650", "namespace": "public/oneos"},
           "kernelNodes": ["pi-1"], "initManifest": "oneos/init", "sessionTTL": "15s", "lockDelay": "1s", "createdAt": NOW}
    doc.update(changes)
    return doc


def node(**changes) -> dict:
    doc = {"id": str(uuid.uuid4()), "host": "pi-1", "address": "192.168.1.20", "pid": 4242, "kernel": False,
           "state": "Ready", "labels": {"gpio": "true", "arch": "arm64"}, "devices": {"gpio/D4": {"direction": "in"}},
           "capacity": {"cpu": 4, "memory": 4 * 2**30}, "arch": "aarch64", "os": "linux",
           "versions": {"oneos": "0.1.0", "python": "3.11.2"}, "startedAt": "2024-05-01T12:00:00.123+02:00"}
    doc.update(changes)
    return doc


@pytest.mark.parametrize("name, value", [
    ("boot", boot()),
    ("boot", {k: v for k, v in boot().items() if k != "kernelNodes"}),
    ("boot", boot(pulsar={"url": "pulsar+ssl://bus.example:6651", "namespace": "tenant/ns"}, sessionTTL="1m30s")),
    ("node", node()),
    ("node", node(id="pi-1.local", devices={}, labels={})),
    ("config", {}),
    ("config", {"id": "pi-1", "nameserver": "https://ns.example:8501", "kernel": True, "memory": "512Mi",
                "labels": {"room": "greenhouse"}, "devices": {"gpio/D7": {}}}),
    ("leader", {"node": "pi-1", "host": "pi-1", "pid": 812, "since": NOW}),
    ("agent", {"name": "pulsar", "run": ["oneos-broker"]}),
    ("pipeline", pipeline()),
])
def test_check_returns_a_valid_document(name, value):
    assert check(name, value, f"oneos/{name}") is value


@pytest.mark.parametrize("name, value, message", [
    ("boot", boot(schemaVersion=2), "oneos/boot: schemaVersion: 1 was expected"),
    ("boot", boot(sessionTTL="5s"), "oneos/boot: sessionTTL: '5s' is out of range; a session TTL is 10s to 86400s"),
    ("boot", boot(sessionTTL="25h"), "oneos/boot: sessionTTL: '25h' is out of range; a session TTL is 10s to 86400s"),
    ("boot", boot(sessionTTL=15), "oneos/boot: sessionTTL: 15 is not of type 'string'"),
    ("boot", boot(lockDelay="soon"), "oneos/boot: lockDelay: 'soon' is not a valid duration; use a number and a unit"),
    ("boot", boot(pulsar={"url": "http://x:6650", "namespace": "public/oneos"}),
     "oneos/boot: pulsar.url: 'http://x:6650' is not a valid Pulsar URL"),
    ("boot", boot(pulsar={"url": "pulsar://x:6650", "namespace": "oneos"}),
     "oneos/boot: pulsar.namespace: 'oneos' is not a valid Pulsar namespace"),
    ("boot", boot(createdAt="yesterday"), "oneos/boot: createdAt: 'yesterday' is not a valid timestamp; use RFC 3339"),
    ("boot", boot(createdAt="2024-13-01T00:00:00Z"), "oneos/boot: createdAt: '2024-13-01T00:00:00Z' is not a valid timestamp"),
    ("boot", {k: v for k, v in boot().items() if k != "cluster"}, "oneos/boot: 'cluster' is a required property"),
    ("node", node(state="Running"), "'Running' is not one of ['Ready', 'Stopping']"),
    ("node", node(id="-bad"), "id: '-bad' is not a valid node id"),
    ("node", node(id="pi-1\n"), "id: 'pi-1\\n' is not a valid node id"),
    ("node", node(capacity={"cpu": 4, "memory": "4Gi"}), "capacity.memory: '4Gi' is not of type 'integer'"),
    ("node", node(labels={"gpio": True}), "labels.gpio: True is not of type 'string'"),
    ("node", node(devices={"D4": {}}), "devices: 'D4' is not a valid device"),
    ("node", node(pid="4242"), "pid: '4242' is not of type 'integer'"),
    ("config", {"nameserver": "127.0.0.1:8500"}, "nameserver: '127.0.0.1:8500' is not a valid URL"),
    ("config", {"memroy": "1Gi"}, "Additional properties are not allowed ('memroy' was unexpected); did you mean 'memory'?"),
    ("leader", {"node": "pi-1", "host": "pi-1", "pid": 812}, "oneos/leader: 'since' is a required property"),
    ("pipeline", two_agents([("a", "z")]), "oneos/pipeline: spec.links[0].to: no agent named 'z'; the agents are a, b, c"),
])
def test_check_raises_one_line_naming_where_and_what(name, value, message):
    with pytest.raises(DocumentError) as err:
        check(name, value, f"oneos/{name}")
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"oneos/{name}: ")
    assert message in text


ESCAPES = ["../x", "a/../../x", "/etc/passwd", "..", "a\x00b", "x\n"]


@pytest.mark.parametrize("name", ESCAPES)
def test_a_shipped_file_name_that_would_leave_the_working_directory_is_refused_wherever_it_is_stored(name):
    """The file names of a stored pipeline (fileDigests) and of an assignment become paths on a node:
    their schemas refuse what apply's would (and the node checks each again, oneos.paths.inside)."""
    digest = "0" * 64
    stored = pipeline(files=["tool.py"])
    stored["metadata"]["fileDigests"] = {name: digest}
    with pytest.raises(DocumentError, match="is not a valid file path"):
        check("pipeline", stored, "oneos/manifests/Pipeline/worker")
    assignment = {"pipeline": "p", "uid": "0" * 32, "generation": 1, "epoch": 1, "agent": {"name": "a", "run": ["x"]},
                  "inputs": [], "outputs": [], "attached": False, "files": {name: digest}}
    with pytest.raises(DocumentError, match="is not a valid file path"):
        check("assignment", assignment, "oneos/assign/n1/p.a")
    assignment["files"] = {"tool.py": digest, "lib/util.py": digest}
    assert check("assignment", assignment, "oneos/assign/n1/p.a") is assignment


def test_check_counts_further_problems():
    with pytest.raises(DocumentError) as err:
        check("leader", {"node": "-x"}, "oneos/leader")
    assert str(err.value) == "oneos/leader: 'host' is a required property (and 3 more)"
    assert len(err.value.problems) == 4


def test_check_knows_every_document_and_no_other():
    assert set(DOCUMENTS) == {"agent", "assignment", "boot", "config", "device", "heartbeat", "init", "invalid",
                              "joinrequest", "jointoken", "key", "leader", "node", "pipeline", "status"}
    with pytest.raises(KeyError):
        check("common", {}, "x")
    assert schema("boot")["$id"].endswith("/boot.schema.json")


def test_check_does_not_modify_the_document():
    doc = boot()
    before = copy.deepcopy(doc)
    check("boot", doc, "oneos/boot")
    assert doc == before


# -------------------------------------------------------------- shipped manifests

SHIPPED = sorted(MANIFESTS.rglob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_every_shipped_manifest_is_valid(path):
    assert load_file(path)


def test_the_examples_are_at_least_three_pipelines():
    examples = [doc for path in SHIPPED if path.parent.name == "examples" for doc in load_file(path)]
    assert len(examples) >= 3
    assert {doc["kind"] for doc in examples} == {"Pipeline"}
    assert {"count-sevens", "word-frequencies", "greenhouse"} <= {doc["metadata"]["name"] for doc in examples}


def test_the_default_init_manifest_runs_the_broker_always():
    [init] = load_file(MANIFESTS / "init.yaml")
    assert init["kind"] == "Init"
    pulsar = {a["name"]: a for a in init["spec"]["agents"]}["pulsar"]
    assert pulsar["run"] == ["oneos-broker"]
    assert pulsar["restart"] == "always"


def run_linear_pipeline(doc: dict, cwd: Path) -> str:
    """Run a chain-shaped pipeline here with OS pipes, joining agents as its links say."""
    agents = {a["name"]: a for a in doc["spec"]["agents"]}
    after = {link["from"]: link["to"] for link in doc["spec"]["links"]}
    first = (set(agents) - set(after.values())).pop()
    order = [first]
    while order[-1] in after:
        order.append(after[order[-1]])
    assert sorted(order) == sorted(agents), "not a chain"
    procs: list[subprocess.Popen] = []
    for name in order:
        stdin = procs[-1].stdout if procs else subprocess.DEVNULL
        procs.append(subprocess.Popen(agents[name]["run"], stdin=stdin, stdout=subprocess.PIPE, cwd=cwd))
        if stdin is not subprocess.DEVNULL:
            stdin.close()
    out = procs[-1].communicate(timeout=60)[0]
    for p in procs:
        p.wait(timeout=60)
    return out.decode()


@pytest.mark.parametrize("name, bash", [
    ("count-sevens", "seq 1 100000 | grep 7 | wc -l"),
    ("word-frequencies", "python3 -c 'import this' | tr -cs A-Za-z '\\n' | tr A-Z a-z | sort | uniq -c | sort -rn | head -n 10"),
])
def test_example_pipelines_print_what_bash_prints(name, bash):
    [doc] = load_file(MANIFESTS / "examples" / f"{name}.yaml")
    expected = subprocess.run(["bash", "-c", bash], capture_output=True, text=True, check=True).stdout
    assert expected.strip()
    assert run_linear_pipeline(doc, MANIFESTS / "examples") == expected


def test_greenhouse_controller_turns_readings_into_commands():
    result = subprocess.run([sys.executable, str(MANIFESTS / "examples" / "controller.py")],
                            input="1\n0\n1\n\nx\n", capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert result.stdout == "ON\nOFF\nON\nOFF\nOFF\n"


def test_greenhouse_controller_answers_each_line_as_it_arrives():
    proc = subprocess.Popen([sys.executable, str(MANIFESTS / "examples" / "controller.py")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        for reading, command in (("1", "ON"), ("0", "OFF")):
            proc.stdin.write(reading + "\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == command + "\n"  # would hang (timeout) if buffered
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)


def test_installed_schemas_are_found_beside_the_installed_package(tmp_path, monkeypatch):
    """A wheel's data files land in PREFIX/share/oneos, PREFIX being where the package was installed:
    a virtual environment (sys.prefix) or not (`pip install --user`: ~/.local)."""
    installed = tmp_path / "user" / "share" / "oneos" / "schemas"
    shutil.copytree(REPO / "schemas", installed)
    monkeypatch.setattr(paths, "_PACKAGE", tmp_path / "user" / "lib" / "python3.11" / "site-packages" / "oneos")
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    for cached in (documents._schemas, documents._validator):
        cached.cache_clear()
    try:
        assert paths.shared("schemas") == installed
        assert problems_of(pipeline(run=[])) == [("spec.agents[0].run", "[] should be non-empty")]
        shutil.rmtree(installed)
        with pytest.raises(OneOSError) as missing:
            paths.shared("schemas")
        assert str(missing.value) == (f"cannot find OneOS's schemas in {installed} or {tmp_path}/venv/share/oneos/schemas; "
                                      "reinstall oneos")
    finally:
        for cached in (documents._schemas, documents._validator):
            cached.cache_clear()


@pytest.mark.parametrize("value", ["1", "128Mi", "1Gi", "500M", "1.5Gi", "64k", "64K", "2Ti", "3G"])
def test_every_memory_quantity_the_schema_accepts_is_one_the_scheduler_can_read(value):
    assert check("config", {"memory": value}, "config.yaml")
    assert parse_memory(value) > 0


@pytest.mark.parametrize("value", ["0", "10s", "1m30s", "100ms", "1.5h", ".5s", "250µs"])
def test_every_duration_the_schema_accepts_is_one_go_and_consul_read(value):
    assert check("boot", boot(lockDelay=value), "oneos/boot")
    assert parse_seconds(value) >= 0


# ---------------------------------------------------------------- placement

PLACED = """\
apiVersion: oneos/v1
kind: Pipeline
metadata:
  name: greenhouse
spec:
  placement: {distinctNodes: true, spreadBy: zone}
  agents:
    - name: sensor
      run: [oneos-gpio, watch, D4]
      requires:
        labels: {gpio: "true"}
        selector: "room in (greenhouse, shed), !broken"
      prefers:
        - {weight: 80, selector: "tier=edge"}
        - {weight: 20, selector: "kubernetes.io/arch=arm64"}
    - name: log
      run: [tee, log]
      requires: {selector: "room notin (cellar),gpio!=false,camera"}
"""


def test_a_pipeline_with_selectors_prefers_and_placement_is_valid():
    [doc] = load_text(PLACED, "p.yaml")
    assert doc["spec"]["placement"] == {"distinctNodes": True, "spreadBy": "zone"}


@pytest.mark.parametrize("fields, path, message", [
    ({"requires": {"selector": "room in (a,b"}}, "spec.agents[0].requires.selector",
     "no ')' closes the '(' at column 9 of the selector 'room in (a,b'; write room in (A,B)"),
    ({"requires": {"selector": "room is cellar"}}, "spec.agents[0].requires.selector",
     "expected '=', '!=', 'in', 'notin', ',' or the end after label key 'room', found 'is' at column 6 of the "
     "selector 'room is cellar'; write KEY=VALUE, KEY!=VALUE, KEY in (A,B), KEY notin (A,B), KEY or !KEY, joined by ','"),
    ({"requires": {"selector": ""}}, "spec.agents[0].requires.selector", "'' is not a valid label selector; a label selector is"),
    ({"requires": {"selector": ["gpio"]}}, "spec.agents[0].requires.selector", "['gpio'] is not of type 'string'"),
    ({"prefers": [{"weight": 10, "selector": "-x"}]}, "spec.agents[0].prefers[0].selector",
     "'-x' is not a valid label key at column 1 of the selector '-x'; a label key is letters"),
    ({"prefers": [{"weight": 0, "selector": "a"}]}, "spec.agents[0].prefers[0].weight", "0 is less than the minimum of 1"),
    ({"prefers": [{"weight": 101, "selector": "a"}]}, "spec.agents[0].prefers[0].weight",
     "101 is greater than the maximum of 100"),
    ({"prefers": [{"selector": "a"}]}, "spec.agents[0].prefers[0]", "'weight' is a required property"),
    ({"prefers": [{"weight": 5, "selecter": "a"}]}, "spec.agents[0].prefers[0]",
     "'selector' is a required property"),
    ({"prefers": {"weight": 5, "selector": "a"}}, "spec.agents[0].prefers", "{'weight': 5, 'selector': 'a'} is not of type 'array'"),
    ({"requires": {"selectors": "a"}}, "spec.agents[0].requires",
     "Additional properties are not allowed ('selectors' was unexpected); did you mean 'selector'?"),
])
def test_placement_errors_name_the_field(fields, path, message):
    found = problems_of(pipeline(**fields))
    assert any(p == path and m.startswith(message) for p, m in found), found


@pytest.mark.parametrize("placement, path, message", [
    ({"distinctHosts": True}, "spec.placement",
     "Additional properties are not allowed ('distinctHosts' was unexpected); did you mean 'distinctNodes'?"),
    ({"distinctNodes": "yes"}, "spec.placement.distinctNodes", "'yes' is not of type 'boolean'"),
    ({"spreadBy": "bad key"}, "spec.placement.spreadBy", "'bad key' is not a valid label key"),
    ({"spreadBy": ""}, "spec.placement.spreadBy", "'' is not a valid label key"),
])
def test_pipeline_placement_errors_name_the_field(placement, path, message):
    doc = pipeline()
    doc["spec"]["placement"] = placement
    found = problems_of(doc)
    assert any(p == path and m.startswith(message) for p, m in found), found


def test_a_selector_error_is_located_in_the_file_and_in_the_selector():
    text = PLACED.replace("camera", "camera,")
    with pytest.raises(DocumentError) as err:
        load_text(text, "p.yaml")
    assert str(err.value) == (
        "p.yaml: spec.agents[1].requires.selector: nothing after ',' at column 40 of the selector "
        "'room notin (cellar),gpio!=false,camera,'; write KEY=VALUE, KEY!=VALUE, KEY in (A,B), KEY notin (A,B), "
        "KEY or !KEY, joined by ',' (line 18, column 28)")


def test_init_manifest_agents_get_their_selectors_checked_too():
    doc = {"apiVersion": "oneos/v1", "kind": "Init", "metadata": {"name": "init"},
           "spec": {"agents": [{"name": "k", "run": ["x"], "requires": {"selector": "a in ()"}}]}}
    assert problems_of(doc) == [("spec.agents[0].requires.selector",
                                 "an empty list after 'a in' at column 7 of the selector 'a in ()'; write a in (A,B)")]
