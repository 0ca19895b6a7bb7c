"""Hardware detection at oneosd start: labels from device files and the board's ids, under the node's own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from oneos.documents import check
from oneos.errors import UsageError
from oneos.nodeagent import config as runtime_config
from oneos.nodeagent import hardware
from oneos.nodeagent.daemon import Runtime

# A Kubernetes label value; also free of what a selector's grammar uses (spaces, !=(),<>).
LABEL_VALUE = re.compile(r"^[a-z0-9]([-a-z0-9_.]{0,61}[a-z0-9])?$")
PI = lambda: ("RASPBERRY_PI_4B", "BCM2XXX")   # noqa: E731 - what adafruit_platformdetect says on a Pi 4
NOTHING = lambda: (None, None)                 # noqa: E731


def fake_tree(root: Path, *files: str) -> Path:
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    return root


@pytest.fixture(autouse=True)
def no_simulated_board(monkeypatch):
    monkeypatch.delenv("ONEOS_GPIO_SIM", raising=False)
    monkeypatch.delenv("ONEOS_HW_ROOT", raising=False)


def test_a_pi_with_gpio_i2c_spi_and_pwm(tmp_path):
    root = fake_tree(tmp_path, "dev/gpiochip0", "dev/gpiochip1", "dev/i2c-1", "dev/spidev0.0",
                     "sys/class/pwm/pwmchip0/npwm")
    assert hardware.detect_labels(root, ids=PI) == {
        "board": "raspberry_pi_4b", "chip": "bcm2xxx", "gpio": "true", "i2c": "true", "spi": "true", "pwm": "true"}


def test_absent_hardware_gets_no_label(tmp_path):
    root = fake_tree(tmp_path, "dev/null", "dev/ttyS0", "dev/gpiomem", "sys/class/pwm/README")
    assert hardware.detect_labels(root, ids=NOTHING) == {}
    assert hardware.detect_labels(tmp_path / "missing", ids=PI) == {"board": "raspberry_pi_4b", "chip": "bcm2xxx"}


def test_the_root_comes_from_ONEOS_HW_ROOT(tmp_path, monkeypatch):
    monkeypatch.setenv("ONEOS_HW_ROOT", str(fake_tree(tmp_path, "dev/i2c-3")))
    assert hardware.detect_labels(ids=NOTHING) == {"i2c": "true"}


def test_a_simulated_board_has_gpio(tmp_path, monkeypatch):
    assert hardware.detect_labels(tmp_path, ids=NOTHING, simulated_gpio=tmp_path / "board") == {"gpio": "true"}
    assert hardware.detect_labels(tmp_path, ids=NOTHING, environ={"ONEOS_GPIO_SIM": "/b"}) == {"gpio": "true"}
    assert hardware.detect_labels(tmp_path, ids=NOTHING, environ={"ONEOS_GPIO_SIM": ""}) == {}
    monkeypatch.setenv("ONEOS_GPIO_SIM", str(tmp_path / "board"))
    assert hardware.detect_labels(tmp_path, ids=NOTHING) == {"gpio": "true"}


@pytest.mark.parametrize("raw, value", [
    ("GENERIC_LINUX_PC", "generic_linux_pc"),
    ("RASPBERRY_PI_5", "raspberry_pi_5"),
    ("Orange Pi (Zero) 2W!", "orange_pi_zero_2w"),
    ("__JETSON.NANO__", "jetson.nano"),
    ("x" * 80, "x" * 63),
    ("a" * 62 + "-b", "a" * 62),
    ("---", None),
    ("", None),
    (None, None),
])
def test_ids_become_label_values(raw, value):
    assert hardware.label_value(raw) == value
    assert value is None or LABEL_VALUE.match(value)


def test_this_machine(monkeypatch):
    labels = hardware.detect_labels()
    assert all(LABEL_VALUE.match(v) for v in labels.values()), labels
    assert "board" in labels and "chip" in labels   # generic_linux_pc / generic_x86 on a PC
    has_gpio = bool(list(Path("/dev").glob("gpiochip*")))
    assert ("gpio" in labels) == has_gpio


def test_a_failing_detector_costs_the_board_label_only(tmp_path, monkeypatch, caplog):
    import adafruit_platformdetect

    def broken():
        raise OSError("no /proc here")
    monkeypatch.setattr(adafruit_platformdetect, "Detector", broken)
    assert hardware.detect_labels(fake_tree(tmp_path, "dev/spidev0.1")) == {"spi": "true"}
    assert "board detection failed" in caplog.text


def config(tmp_path, text: str = "", **overrides) -> runtime_config.RuntimeConfig:
    path = tmp_path / "conf" / "node.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    flags = runtime_config.Overrides(id="n1", nameserver="http://127.0.0.1:9", config_file=path, **overrides)
    return runtime_config.load(flags, interactive=False)


def test_the_node_record_has_detected_labels_under_configured_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("ONEOS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ONEOS_HW_ROOT", str(fake_tree(tmp_path / "hw", "dev/gpiochip0", "dev/i2c-1")))
    monkeypatch.setenv("ONEOS_LABELS", "room=lab")
    cfg = config(tmp_path, "labels: {board: my-pi, i2c: 'false'}\n")
    record = Runtime(cfg).record()
    detected = hardware.detect_labels()
    assert detected["gpio"] == detected["i2c"] == "true"
    # The config file, ONEOS_LABELS and --label win over what was detected.
    assert record["labels"] == {**detected, "board": "my-pi", "i2c": "false", "room": "lab"}
    check("node", record, "the node record")

    flagged = config(tmp_path, "labels: {board: my-pi}\n", labels={"gpio": "false"})
    assert Runtime(flagged).record()["labels"]["gpio"] == "false"


def test_node_labels_merge():
    assert hardware.node_labels({"board": "a", "gpio": "true"}, {"board": "b", "room": "x"}) == {
        "board": "b", "gpio": "true", "room": "x"}


def test_gpio_simulate_in_the_config_gives_the_agents_a_simulated_board(tmp_path, monkeypatch):
    monkeypatch.setenv("ONEOS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ONEOS_HW_ROOT", str(tmp_path / "empty"))
    cfg = config(tmp_path, "gpio: {simulate: board-a}\n")
    assert cfg.gpio_simulate == tmp_path / "conf" / "board-a"     # relative to the config file
    runtime = Runtime(cfg)
    assert runtime.record()["labels"]["gpio"] == "true"
    assert runtime.agent_env() == {"ONEOS_GPIO_SIM": str(tmp_path / "conf" / "board-a")}

    # $ONEOS_GPIO_SIM wins over the config, made absolute: agents run in directories of their own.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ONEOS_GPIO_SIM", "elsewhere")
    assert config(tmp_path, "gpio: {simulate: board-a}\n").gpio_simulate == tmp_path / "elsewhere"

    monkeypatch.delenv("ONEOS_GPIO_SIM")
    plain = Runtime(config(tmp_path, ""))
    assert plain.agent_env() == {} and "gpio" not in plain.record()["labels"]


def test_a_misspelt_gpio_setting_names_the_field(tmp_path, monkeypatch):
    monkeypatch.setenv("ONEOS_HOME", str(tmp_path / "home"))
    with pytest.raises(UsageError, match="simulat"):
        config(tmp_path, "gpio: {simulat: board}\n")
