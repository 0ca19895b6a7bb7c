"""A runtime's own configuration: its id, where the Name Server is, kernel or not, limits, labels.

Kept in `$ONEOS_HOME/config.yaml` (default ~/.oneos). Like the original OneOS runtime,
the first run asks on a terminal and saves the answers; without a terminal it takes
flags, then environment variables, then the config file, then defaults.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from oneos.documents import DocumentError, check, dump_yaml, load_yaml
from oneos.errors import UsageError
from oneos.nameserver.client import find_token, nameserver_url
from oneos.paths import inside, oneos_home
from oneos.nodeagent.logfiles import LogLimits
from oneos.quantities import format_memory, parse_memory
from oneos.secretfiles import read_secret

DEFAULT_AGENT_USER = "oneos-agent"
NODE_ID = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.]{0,62}$")


def check_id(node_id: str, what: str) -> None:
    """UsageError unless `node_id` is a valid runtime id (`what` names it in the message)."""
    if not NODE_ID.fullmatch(node_id):   # fullmatch: `$` alone would let a final newline through
        raise UsageError(f"{what} {node_id!r} is not valid: use letters, digits, '-', '_' or '.', "
                         "starting with a letter or digit, at most 63 characters")


@dataclass
class RuntimeConfig:
    id: str
    nameserver: str
    kernel: bool
    memory: int | None
    labels: dict[str, str] = field(default_factory=dict)
    devices: dict[str, Any] = field(default_factory=dict)
    home: Path = field(default_factory=oneos_home)
    gpio_simulate: Path | None = None   # a simulated GPIO board's directory, for this node's agents
    logs: LogLimits = field(default_factory=LogLimits)   # how much of each agent's log is kept here
    token: str | None = None    # the Name Server ACL token to send, as find_token finds it (None: anonymous)
    agent_user: str = DEFAULT_AGENT_USER   # the user agents run as, when the node runs as root
    pulsar_token_file: Path | None = None        # this node's Pulsar token (a file of mode 0600)
    pulsar_trust_certs_file: Path | None = None  # CA certificates of the brokers, where this node keeps them
    join_token: str | None = None   # ID.SECRET from `oneosctl token create`: asks to join with it (enrollment.py)

    @property
    def data_dir(self) -> Path:
        """This runtime's private folder (agents' working directories live under it)."""
        return inside(self.home / "runtimes", self.id, what="runtime id")

    @property
    def folders(self) -> tuple[Path, ...]:
        """$ONEOS_HOME, its runtimes folder and this runtime's: made 0711 (agents pass through, list nothing)."""
        return (self.home, self.home / "runtimes", self.data_dir)

    @property
    def key_file(self) -> Path:
        """This runtime's private keys (mode 0600; see oneos/identity.py), made at its first start."""
        return self.data_dir / "node.key"


@dataclass
class Overrides:
    """What the command line and the environment say; None means "not given"."""

    id: str | None = None
    nameserver: str | None = None
    kernel: bool | None = None
    memory: str | None = None
    labels: dict[str, str] | None = None
    config_file: Path | None = None
    agent_user: str | None = None
    join_token: str | None = None


def parse_labels(text: str, where: str) -> dict[str, str]:
    """`k=v,k=v` (or repeated --label k=v) into a dict; UsageError names the bad part."""
    labels: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{where}: label {part!r} is not KEY=VALUE")
        labels[key.strip()] = value.strip()
    return labels


def from_environment() -> Overrides:
    """ONEOS_NAMESERVER, ONEOS_KERNEL, ONEOS_MEMORY, ONEOS_LABELS, ONEOS_AGENT_USER."""
    kernel = os.environ.get("ONEOS_KERNEL")
    labels = os.environ.get("ONEOS_LABELS")
    return Overrides(
        nameserver=os.environ.get("ONEOS_NAMESERVER") or None,
        kernel=None if kernel is None else kernel.strip().lower() in ("1", "true", "yes", "y", "on"),
        memory=os.environ.get("ONEOS_MEMORY") or None,
        labels=None if labels is None else parse_labels(labels, "ONEOS_LABELS"),
        agent_user=os.environ.get("ONEOS_AGENT_USER") or None,
    )


def join_token(given: str | None) -> str | None:
    """The join token: --join-token, else ONEOS_JOIN_TOKEN, else the file ONEOS_JOIN_TOKEN_FILE names (0600)."""
    if given:
        return given.strip()
    if os.environ.get("ONEOS_JOIN_TOKEN"):
        return os.environ["ONEOS_JOIN_TOKEN"].strip()
    if os.environ.get("ONEOS_JOIN_TOKEN_FILE"):
        return read_secret(os.environ["ONEOS_JOIN_TOKEN_FILE"], "the join token file (ONEOS_JOIN_TOKEN_FILE)")
    return None


def _merge(flags: Overrides, env: Overrides) -> Overrides:
    return Overrides(**{name: getattr(flags, name) if getattr(flags, name) is not None else getattr(env, name)
                        for name in Overrides.__dataclass_fields__})


def read_file(path: Path) -> dict[str, Any]:
    """The saved config (empty when there is none); UsageError when it is not valid."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the config file ({exc.strerror})") from None
    try:
        docs = load_yaml(text, str(path))
    except DocumentError as exc:
        raise UsageError(f"{exc}; fix or delete the config file") from None
    if not docs or docs[0] is None:
        return {}
    try:
        return check("config", docs[0], str(path))
    except DocumentError as exc:
        raise UsageError(f"{exc}; fix or delete the config file") from None


def write_file(path: Path, saved: dict[str, Any]) -> None:
    check("config", saved, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    if saved.get("token"):   # a secret: the file is its owner's alone from the start
        tmp.unlink(missing_ok=True)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    tmp.write_text("# OneOS runtime configuration (oneosd). Flags and ONEOS_* variables override it.\n"
                   + dump_yaml(saved))
    os.replace(tmp, path)


def ask_first_run(saved: dict[str, Any], given: Overrides, ask: Callable[[str], str] = input,
                  say: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> dict[str, Any]:
    """Ask for what the original runtime asked: Name Server, kernel, memory limit, labels."""
    say("First run of this OneOS runtime: a few questions (Enter keeps the default in brackets).")
    answers = dict(saved)

    def prompt(question: str, default: str, parse: Callable[[str], Any]) -> Any:
        while True:
            raw = ask(f"{question} [{default}]: ").strip() or default
            try:
                return parse(raw)
            except (ValueError, UsageError) as exc:
                say(f"  {exc}")

    answers["nameserver"] = prompt("Name Server URL", given.nameserver or nameserver_url(), _parse_url)
    answers["kernel"] = prompt("Kernel runtime (may host kernel agents)? y/n",
                               "y" if given.kernel else "n", _parse_yes_no)
    memory = prompt("Memory limit for agents (e.g. 512Mi; 'none' for all of it)",
                    given.memory or "none", lambda s: None if s.lower() == "none" else format_memory(parse_memory(s)))
    if memory is None:
        answers.pop("memory", None)
    else:
        answers["memory"] = memory
    labels = prompt("Labels (key=value, comma-separated; 'none' for none)",
                    ",".join(f"{k}={v}" for k, v in (given.labels or {}).items()) or "none",
                    lambda s: {} if s.lower() == "none" else parse_labels(s, "labels"))
    if labels:
        answers["labels"] = labels
    else:
        answers.pop("labels", None)
    return answers


def _parse_url(text: str) -> str:
    if not re.match(r"^https?://[^/\s:]+(:\d+)?/?$", text):
        raise ValueError(f"{text!r} is not an http(s)://HOST:PORT address")
    return text.rstrip("/")


def _parse_yes_no(text: str) -> bool:
    if text.lower() in ("y", "yes", "true"):
        return True
    if text.lower() in ("n", "no", "false"):
        return False
    raise ValueError("answer y or n")


def load(flags: Overrides, *, interactive: bool | None = None, save: bool = True) -> RuntimeConfig:
    """Resolve this runtime's configuration; saves a generated id and first-run answers. With save=False
    (`oneosd --make-key`) it asks nothing and writes nothing: the id must be given or saved."""
    home = oneos_home()
    path = flags.config_file or home / "config.yaml"
    given = _merge(flags, from_environment())
    saved = read_file(path)
    if interactive is None:
        interactive = save and sys.stdin.isatty() and flags.config_file is None
    changed = False
    if interactive and not path.exists():
        saved = ask_first_run(saved, given)
        changed = True

    node_id = given.id or saved.get("id")
    if node_id is None and not save:
        raise UsageError(f"no runtime id given, and none saved in {path}: give one (`oneosd ID ...`)")
    if node_id is None:
        node_id = str(uuid.uuid4())
        saved["id"] = node_id
        changed = True
    check_id(node_id, "runtime id")
    if changed:
        write_file(path, saved)

    memory_text = given.memory if given.memory is not None else saved.get("memory")
    try:
        memory = None if memory_text in (None, "") else parse_memory(memory_text)
    except ValueError as exc:
        raise UsageError(f"memory limit: {exc}") from None
    labels = dict(saved.get("labels") or {})
    labels.update(given.labels or {})
    try:
        logs = LogLimits.from_config(saved.get("logs"), str(path))
    except ValueError as exc:
        raise UsageError(f"{exc}; fix the config file") from None
    if saved.get("token") and path.stat().st_mode & 0o077:
        raise UsageError(f"{path} holds a Name Server token and may be read by others "
                         f"(mode {path.stat().st_mode & 0o777:04o}); run `chmod 600 {path}`")
    return RuntimeConfig(
        id=node_id,
        nameserver=nameserver_url(given.nameserver or saved.get("nameserver")),
        kernel=bool(given.kernel if given.kernel is not None else saved.get("kernel", False)),
        memory=memory,
        labels=labels,
        devices=dict(saved.get("devices") or {}),
        home=home,
        gpio_simulate=gpio_simulate(saved, path),
        logs=logs,
        token=find_token(configured=saved.get("token")),
        agent_user=given.agent_user or saved.get("agentUser") or DEFAULT_AGENT_USER,
        pulsar_token_file=_config_path(saved, "pulsar", "tokenFile", path),
        pulsar_trust_certs_file=_config_path(saved, "pulsar", "tlsTrustCertsFile", path),
        join_token=join_token(flags.join_token),
    )


def _config_path(saved: dict[str, Any], section: str, name: str, path: Path) -> Path | None:
    """A file the config names in `section.name`, absolute (relative to the config file)."""
    configured = (saved.get(section) or {}).get(name)
    if not configured:
        return None
    return Path(os.path.abspath(path.parent / Path(configured).expanduser()))


def gpio_simulate(saved: dict[str, Any], path: Path) -> Path | None:
    """The simulated GPIO board: $ONEOS_GPIO_SIM, else the config's `gpio.simulate` (relative
    to the config file); absolute, since agents run in directories of their own."""
    from oneos.gpio.pins import SIM_ENV
    given = os.environ.get(SIM_ENV, "").strip()
    if given:
        return Path(os.path.abspath(Path(given).expanduser()))
    configured = (saved.get("gpio") or {}).get("simulate")
    if not configured:
        return None
    return Path(os.path.abspath(path.parent / Path(configured).expanduser()))
