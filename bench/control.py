"""Benchmark of the control plane: apply -> Running, a dead node's agents moved, placements/s, idle cost.

    .venv/bin/python bench/control.py [--quick] [--apply-runs 20] [--cli-runs 5] [--failover-runs 3]
                                      [--idle-seconds 30] [--agents 10000] [--nodes 1000] [--only ...]

It starts its own cluster on free ports, with its data in a temporary folder: the built-in
Name Server, pulsar-lite (`oneos-broker`), a boot record (session TTL 10s, lock-delay 1s,
an init manifest without kernel agents: the benchmark owns the broker) and four `oneosd`
runtimes n1 (kernel, so the leader), n2, n3, n4, each with an ONEOS_HOME of its own.
Every process it starts is stopped at the end, on an error, SIGTERM or Ctrl-C too.
It prints, never asserts:
- apply -> all Running: a three-stage long-running pipeline (python ticker | tr | cat)
  applied through the API `oneosctl apply` calls, and through `oneosctl apply` itself, until
  the Name Server shows the three agents Running (watched with blocking queries); deleted
  in between until gone. Baseline: the same three programs started joined by UNIX pipes.
- node killed -> its agents Running elsewhere: a six-stage pipeline spread over the nodes,
  kill -9 (at a random point of the session's renewal cycle) of the non-leader oneosd that
  runs the most of its agents, until every agent it ran is Running on another node; split
  into the session expiry (the node record disappears: Consul's TTL) and what OneOS takes
  after that. Agents that outlive their node are counted (and killed).
- scheduler placements/s, at the function level: bench/placement.py's workload and `run()`
  (baseline: its naive scan of every node).
- idle RSS and CPU of oneosd (kernel/leader and non-kernel, with no pipeline): VmRSS and
  utime+stime from /proc, children included, beside idle Python processes that only sleep,
  only import pulsar and requests, and only import what oneosd imports.
Targets (the issue): apply -> Running <= 1 s; node killed -> Running elsewhere <= 2xTTL + 2 s;
>= 10,000 placements/s; idle oneosd <= 40 MB and <= 1 % of one CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from oneos import manifests, state  # noqa: E402
from oneos.documents import load_file  # noqa: E402
from oneos.identity import Identity  # noqa: E402
from oneos.durations import parse_seconds  # noqa: E402
from oneos.nameserver.client import NameServer  # noqa: E402
from tests.procs import (BrokerProc, NameServerProc, OneosdProc, Proc, children_by_parent,  # noqa: E402
                         descendants, start_time, stat_fields, wait_until)
from tests.procs import cli as command  # noqa: E402 - sh: a failure raises with its stderr

BIN = Path(sys.executable).parent                 # the venv's console scripts
PYTHON = os.path.realpath(sys.executable)         # the interpreter itself, not a pyenv shim on PATH
TICKER = "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.1)\n"
STAGES = [("ticker", [PYTHON, "-u", "-c", TICKER]), ("upper", ["tr", "a-z", "A-Z"]), ("sink", ["cat"])]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def say(text: str) -> None:
    """Progress, on stderr: the report itself goes to stdout."""
    print(f"control: {text}", file=sys.stderr, flush=True)


# -- /proc (what a process started: tests/procs.py) -------------------------------------------

def cpu_ticks(pid: int) -> int:
    fields = stat_fields(pid)
    return int(fields[11]) + int(fields[12]) if fields else 0


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# -- processes --------------------------------------------------------------------------------

class Processes:
    """Every process this benchmark starts (tests/procs.py's Proc, each in a session of its own);
    stop_all() ends them all, and whatever they started that outlived them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[tuple[str, Proc]] = []
        self.seen: dict[int, int] = {}       # descendant pid -> its start time (pids are reused)

    def start(self, name: str, proc: Proc) -> Proc:
        """Start `proc` (it waits until ready where it can tell) and own it from then on."""
        self.started.append((name, proc))
        proc.start()
        return proc

    def run(self, name: str, argv: list[str]) -> Proc:
        """A plain program, its output in a log of its own."""
        return self.start(name, Proc([str(a) for a in argv], self.root / f"{name.replace(' ', '-')}.log"))

    def note_descendants(self) -> None:
        """Remember what the live processes started (agents run in sessions of their own)."""
        for _, proc in self.started:
            if proc.alive():
                for pid in descendants(proc.pid):
                    self.seen.setdefault(pid, start_time(pid) or 0)

    def stop_all(self) -> None:
        self.note_descendants()
        for name, proc in reversed(self.started):   # nodes first, then the broker, then the Name Server
            try:
                proc.stop()
            except Exception as exc:  # noqa: BLE001 - carry on with the others
                say(f"stopping {name} (pid {proc.pid}): {exc}")
        time.sleep(0.2)
        for pid, started in self.seen.items():
            if started and start_time(pid) == started:
                say(f"pid {pid} outlived its parent; killing it")
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


# -- the cluster ------------------------------------------------------------------------------

class Cluster:
    """Name Server, pulsar-lite, a boot record and oneosd runtimes, all on free ports under `root`."""

    def __init__(self, procs: Processes, root: Path, node_ids: list[str], ttl: int, lock_delay: int) -> None:
        self.procs = procs
        self.root = root
        self.node_ids = node_ids
        self.kernel = node_ids[0]
        self.ttl = ttl
        self.lock_delay = lock_delay
        self.nodes: dict[str, OneosdProc] = {}
        self.url = ""
        self.ns: NameServer | None = None

    def start(self) -> None:
        self.nameserver = self.procs.start("nameserver", NameServerProc(self.root / "nameserver"))
        self.url = self.nameserver.url
        self.ns = NameServer(self.url)
        self.broker = self.procs.start("broker", BrokerProc(self.root / "pulsar"))
        # No kernel agents: this benchmark owns the broker (the default init manifest would have n1 run a
        # second one on the same port), as the tests do.
        init = self.root / "init.json"
        init.write_text(json.dumps({"apiVersion": "oneos/v1", "kind": "Init", "metadata": {"name": "oneos-init"},
                                    "spec": {"agents": []}}))
        self.ctl("bootstrap", "--cluster", "bench", "--pulsar-url", self.broker.url,
                 "--session-ttl", f"{self.ttl}s", "--lock-delay", f"{self.lock_delay}s", "--init", str(init))
        for node_id in self.node_ids:
            self.start_node(node_id, wait=False)
        wait_until(lambda: self._alive() and self.live_nodes() >= set(self.node_ids), 30, "every runtime to join")
        wait_until(lambda: self.leader() == self.kernel, 30, f"{self.kernel} to lead")

    def _alive(self) -> bool:
        """True, or SystemExit naming the first of the cluster's processes that exited."""
        for proc in [self.nameserver, self.broker, *self.nodes.values()]:
            if not proc.alive():
                raise SystemExit(f"{' '.join(proc.argv[:2])} exited with {proc.popen.returncode}; "
                                 f"see its log {proc.log_path}")
        return True

    def start_node(self, node_id: str, wait: bool = True) -> OneosdProc:
        role = "--kernel" if node_id == self.kernel else "--no-kernel"
        # Enrolled before it starts, as an operator's approval would: only registered nodes are placed on.
        identity = Identity.load_or_create(self.root / f"home-{node_id}" / "runtimes" / node_id / "node.key")
        state.put_document(self.ns, state.key_key(node_id), "key", state.new_key_record(
            node_id, identity.signing_key, identity.box_key, kernel=node_id == self.kernel, approved_by="bench"))
        # Agents run as this user, as in the tests (tests/cluster.py): as root the node's default agent user
        # could not reach this benchmark's 0700 folder, nor a Python kept under /root.
        proc = self.procs.start(f"oneosd {node_id}",
                                OneosdProc(node_id, self.root / f"home-{node_id}", self.url, [role],
                                           env={"ONEOS_AGENT_USER": pwd.getpwuid(os.geteuid()).pw_name}))
        self.nodes[node_id] = proc
        if wait:
            wait_until(lambda: self._alive() and node_id in self.live_nodes(), 30, f"{node_id} to join")
        return proc

    def ctl(self, *argv: str) -> subprocess.CompletedProcess:
        """`oneosctl ARGV`; a failure raises, with its stderr."""
        return command("oneosctl", *argv, env={"ONEOS_NAMESERVER": self.url})

    def live_nodes(self) -> set[str]:
        return {n.record["id"] for n in state.read_nodes(self.ns)[0]}

    def leader(self) -> str | None:
        doc = state.read_leader(self.ns)
        return doc["node"] if doc else None

    def watch(self, until: Callable[["Snapshot"], Any], timeout: float) -> Any:
        """Call `until` on the cluster state each time anything under oneos/ changes (blocking queries),
        until it returns something truthy; fail at the deadline."""
        snap = [self._snapshot(0, 0)]

        def wake(seconds_left: float) -> None:
            snap[0] = self._snapshot(snap[0].index, min(1.0, seconds_left))

        return wait_until(lambda: until(snap[0]), timeout, f"the cluster state (logs in {self.root})", wake=wake)

    def _snapshot(self, index: int, wait: float) -> "Snapshot":
        new_index, entries = self.ns.get_tree(state.PREFIX, index=index or None, wait=f"{int(wait * 1000)}ms")
        return Snapshot(time.perf_counter(), entries, new_index if new_index >= index else 0)


class Snapshot:
    """The cluster's keys at one instant, parsed without schema checks (the watcher must stay cheap)."""

    def __init__(self, at: float, entries: list, index: int = 0) -> None:
        self.at = at
        self.index = index
        self.keys = {e.key: e for e in entries}

    def doc(self, key: str) -> dict | None:
        entry = self.keys.get(key)
        return json.loads(entry.value) if entry is not None and entry.value else None

    def uid(self, pipeline: str) -> str | None:
        doc = self.doc(state.pipeline_key(pipeline))
        return doc["metadata"]["uid"] if doc else None

    def assigned(self, pipeline: str) -> dict[str, str]:
        """agent name -> node, for the pipeline's assignments of its current uid."""
        uid, found = self.uid(pipeline), {}
        for key in self.keys:
            if key.startswith(state.ASSIGN):
                node, _, agent_key = key[len(state.ASSIGN):].partition("/")
                name, agent = state.split_agent_id(agent_key)
                if name == pipeline and uid and self.doc(key)["uid"] == uid:
                    found[agent] = node
        return found

    def statuses(self, pipeline: str) -> dict[str, dict]:
        prefix = state.STATUS + pipeline + "."
        return {k[len(prefix):]: self.doc(k) for k in self.keys if k.startswith(prefix)}

    def running(self, pipeline: str, agents: list[str]) -> dict[str, dict] | None:
        """The statuses when every agent is Running in the current uid, else None."""
        uid, statuses = self.uid(pipeline), self.statuses(pipeline)
        if uid and all(statuses.get(a, {}).get("state") == "Running" and statuses[a]["uid"] == uid for a in agents):
            return statuses
        return None

    def gone(self, pipeline: str) -> bool:
        return not any(k.startswith(state.STATUS + pipeline + ".") or
                       (k.startswith(state.ASSIGN) and k.split("/")[3].startswith(pipeline + "."))
                       for k in self.keys)


# The failover pipeline is longer, so that with four nodes the one killed runs two agents.
FAILOVER_STAGES = STAGES[:2] + [(f"cat{i}", ["cat"]) for i in range(1, 4)] + STAGES[2:]


def write_manifest(root: Path, name: str, stages: list[tuple[str, list[str]]] = STAGES) -> Path:
    doc = {"apiVersion": "oneos/v1", "kind": "Pipeline", "metadata": {"name": name},
           "spec": {"agents": [{"name": n, "run": run} for n, run in stages],
                    "links": [{"from": a[0], "to": b[0]} for a, b in zip(stages, stages[1:])]}}
    path = root / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2))
    return path


def apply_and_wait(cluster: Cluster, path: Path, name: str, cli: bool,
                   agents: list[str] = [n for n, _ in STAGES]) -> dict[str, float]:
    """Apply the manifest (API or `oneosctl apply`) and time it until all its agents are Running."""
    marks: dict[str, float] = {}
    docs = None if cli else load_file(path)
    start = time.perf_counter()
    if cli:
        ctl = subprocess.Popen([str(BIN / "oneosctl"), "apply", "-f", str(path)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env=dict(os.environ, ONEOS_NAMESERVER=cluster.url))
        threading.Thread(target=lambda: (ctl.wait(), marks.setdefault("cli_exit", time.perf_counter())),
                         daemon=True).start()
    else:
        manifests.apply_pipeline(cluster.ns, docs[0], path.parent)
        marks["applied"] = time.perf_counter()

    def until(snap: Snapshot):
        if "assigned" not in marks and len(snap.assigned(name)) == len(agents):
            marks["assigned"] = snap.at
        statuses = snap.running(name, agents)
        if statuses:
            marks.setdefault("assigned", snap.at)
            marks["running"] = snap.at
            marks["nodes"] = sorted({s["node"] for s in statuses.values()})
        return statuses

    cluster.watch(until, 60)
    if cli:
        ctl.wait(30)
        if ctl.returncode != 0:
            raise RuntimeError(f"oneosctl apply: {ctl.stderr.read().decode()}")
    return {k: (v - start if isinstance(v, float) else v) for k, v in marks.items()}


def delete_and_wait(cluster: Cluster, name: str) -> float:
    start = time.perf_counter()
    manifests.delete_pipeline(cluster.ns, name)
    return cluster.watch(lambda snap: snap.gone(name) and snap.at, 60) - start


def unix_pipeline_start() -> float:
    """The baseline: the same three programs joined by UNIX pipes, until all three have started (exec'd)."""
    procs: list[subprocess.Popen] = []
    try:
        start = time.perf_counter()
        stdin = subprocess.DEVNULL
        for i, (_, run) in enumerate(STAGES):
            last = i == len(STAGES) - 1
            procs.append(subprocess.Popen(run, stdin=stdin, stdout=subprocess.DEVNULL if last else subprocess.PIPE))
            if i:
                procs[-2].stdout.close()
            stdin = procs[-1].stdout
        return time.perf_counter() - start
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


# -- measurements -----------------------------------------------------------------------------

def measure_apply(cluster: Cluster, runs: int, cli_runs: int) -> dict[str, Any]:
    path = write_manifest(cluster.root, "bench-apply")
    api, cli, deletes, nodes_used, got = [], [], [], set(), None
    for i in range(runs):
        marks = apply_and_wait(cluster, path, "bench-apply", cli=False)
        api.append(marks)
        nodes_used.update(marks["nodes"])
        if i == runs - 1:
            got = time_cli_get(cluster)
        deletes.append(delete_and_wait(cluster, "bench-apply"))
        say(f"apply -> Running {marks['running'] * 1e3:.0f} ms (assigned at {marks['assigned'] * 1e3:.0f} ms, "
            f"on {','.join(marks['nodes'])}); delete -> gone {deletes[-1] * 1e3:.0f} ms")
    for _ in range(cli_runs):
        marks = apply_and_wait(cluster, path, "bench-apply", cli=True)
        cli.append(marks)
        nodes_used.update(marks["nodes"])
        deletes.append(delete_and_wait(cluster, "bench-apply"))
        say(f"oneosctl apply -> Running {marks['running'] * 1e3:.0f} ms (oneosctl exited at "
            f"{marks.get('cli_exit', float('nan')) * 1e3:.0f} ms)")
    unix = [unix_pipeline_start() for _ in range(max(runs, 5))]
    return {"api": api, "cli": cli, "deletes": deletes, "unix": unix, "get": got, "nodes_used": nodes_used}


def time_cli_get(cluster: Cluster, calls: int = 3) -> dict[str, float]:
    """One `oneosctl get agents -o json` as a user runs it, beside the same read in this process."""
    cli = []
    for _ in range(calls):
        start = time.perf_counter()
        cluster.ctl("get", "agents", "-o", "json")
        cli.append(time.perf_counter() - start)
    api = []
    for _ in range(calls * 10):
        start = time.perf_counter()
        state.read_statuses(cluster.ns)
        api.append(time.perf_counter() - start)
    return {"cli": statistics.median(cli), "api": statistics.median(api)}


def measure_failover(cluster: Cluster, procs: Processes, runs: int, seed: int) -> list[dict[str, Any]]:
    path = write_manifest(cluster.root, "bench-failover", FAILOVER_STAGES)
    results = []
    rng = random.Random(seed)
    for _ in range(runs):
        apply_and_wait(cluster, path, "bench-failover", cli=False, agents=[n for n, _ in FAILOVER_STAGES])
        snap = cluster.watch(lambda s: s, 5)
        statuses = snap.statuses("bench-failover")
        leader = cluster.leader()
        by_node: dict[str, list[str]] = defaultdict(list)
        for agent, st in statuses.items():
            by_node[st["node"]].append(agent)
        victims = sorted((n for n in by_node if n != leader), key=lambda n: (-len(by_node[n]), n))
        if not victims:
            raise RuntimeError(f"every agent runs on the leader {leader}: nothing to fail over")
        victim = victims[0]
        moved = by_node[victim]
        agent_pids = [statuses[a]["pid"] for a in moved]
        agent_starts = {pid: start_time(pid) for pid in agent_pids}
        procs.note_descendants()
        proc = cluster.nodes[victim]
        # The record goes 2xTTL after the session's last renewal (every TTL/2): kill at a random point
        # of that cycle, not always at the same delay after the runtime (re)started.
        time.sleep(rng.uniform(0, cluster.ttl / 2))
        marks: dict[str, float] = {}
        start = time.perf_counter()
        os.kill(proc.pid, signal.SIGKILL)              # kill -9 oneosd: a node that crashed
        proc.popen.wait(10)
        marks["reaped"] = time.perf_counter() - start

        def until(snap: Snapshot):
            if "gone" not in marks and state.node_key(victim) not in snap.keys:
                marks["gone"] = snap.at - start
            assigned = snap.assigned("bench-failover")
            if "reassigned" not in marks and all(assigned.get(a, victim) != victim for a in moved):
                marks["reassigned"] = snap.at - start
            sts, uid = snap.statuses("bench-failover"), snap.uid("bench-failover")
            if all(sts.get(a, {}).get("state") == "Running" and sts[a]["node"] != victim and sts[a]["uid"] == uid
                   for a in moved):
                marks["running"] = snap.at - start
                marks["to"] = sorted({sts[a]["node"] for a in moved})
                return True
            return False

        cluster.watch(until, 4 * cluster.ttl + 30)
        orphans = [pid for pid, st in agent_starts.items() if st and start_time(pid) == st]
        for pid in orphans:
            os.kill(pid, signal.SIGKILL)
        say(f"killed {victim} (ran {', '.join(moved)}): its record gone after {marks['gone']:.2f} s, "
            f"reassigned after {marks['reassigned']:.2f} s, Running on {','.join(marks['to'])} after "
            f"{marks['running']:.2f} s; agents that outlived it: {len(orphans)}")
        results.append(dict(marks, victim=victim, moved=moved, orphans=len(orphans)))
        cluster.start_node(victim)                     # the same id and home, as systemd would restart it
        delete_and_wait(cluster, "bench-failover")
    return results


IDLE_BASELINES = {
    "python3, sleeping": "import time; time.sleep(1e6)",
    "python3, import pulsar, requests": "import pulsar, requests, time; time.sleep(1e6)",
    "python3, oneosd's imports only": "import oneos.cli.oneosd, time; time.sleep(1e6)",
}


def sample_idle(targets: dict[str, int], seconds: float, interval: float = 0.5) -> dict[str, dict[str, float]]:
    """RSS (each sample: the process and its descendants) and CPU time over `seconds`, per process."""
    def trees() -> dict[str, list[int]]:
        children = children_by_parent()
        return {label: [pid] + descendants(pid, children) for label, pid in targets.items()}

    def ticks() -> dict[str, int]:
        return {label: sum(cpu_ticks(p) for p in tree) for label, tree in trees().items()}

    first = ticks()
    rss: dict[str, list[int]] = {label: [] for label in targets}
    children: dict[str, int] = {label: 0 for label in targets}
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        for label, tree in trees().items():
            children[label] = max(children[label], len(tree) - 1)
            rss[label].append(sum(rss_bytes(p) for p in tree))
        time.sleep(interval)
    elapsed = time.monotonic() - start
    last = ticks()
    return {label: {"rss_max": max(rss[label]) / 1e6, "rss_median": statistics.median(rss[label]) / 1e6,
                    "cpu": 100 * (last[label] - first[label]) / CLK_TCK / elapsed, "children": children[label]}
            for label in targets}


def measure_idle(cluster: Cluster, procs: Processes, seconds: float, non_kernel: str,
                 baselines: dict[str, Proc] | None, settle: float) -> dict[str, dict[str, float]]:
    targets = {f"oneosd {cluster.kernel} (kernel, leader)": cluster.nodes[cluster.kernel].pid,
               f"oneosd {non_kernel} (non-kernel)": cluster.nodes[non_kernel].pid}
    if baselines is not None:
        for label, code in IDLE_BASELINES.items():
            baselines[label] = procs.run(label, [sys.executable, "-c", code])
        targets.update({label: proc.pid for label, proc in baselines.items()})
        targets["the Name Server (oneos-nameserver), for scale"] = cluster.nameserver.pid
        targets["pulsar-lite (oneos-broker), for scale"] = cluster.broker.pid
    time.sleep(settle)
    result = sample_idle(targets, seconds)
    if baselines is not None:
        for proc in baselines.values():
            proc.stop()
    return result


# -- placements -------------------------------------------------------------------------------

def measure_placement(agents: int, nodes: int, seed: int) -> dict[str, Any]:
    """bench/placement.py's workload and figures (its naive scan is the baseline), with where they come from."""
    import placement  # bench/placement.py: this file's folder is on sys.path

    return dict(placement.run(agents=agents, nodes=nodes, seed=seed), source="bench/placement.py run()")


# -- report -----------------------------------------------------------------------------------

def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms"


def p50_max(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), max(values)


def row(figure: str, measured: str, target: str, met: bool | None, baseline: str = "", ratio: str = "") -> list[str]:
    return [figure, measured, target, "-" if met is None else ("yes" if met else "NO"), baseline, ratio]


def print_table(rows: list[list[str]]) -> None:
    head = ["figure", "measured", "target", "met", "baseline (same run)", "ratio"]
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    print(line(head))
    print(line(["-" * w for w in widths]))
    for r in rows:
        print(line(r))


def report(args: argparse.Namespace, apply: dict | None, failover: list | None, idle: dict | None,
           idle_after: dict | None, placed: dict | None, ttl: int) -> None:
    rows: list[list[str]] = []
    notes: list[str] = []
    if apply:
        unix = statistics.median(apply["unix"])
        base = f"UNIX pipes, 3 started: {unix * 1e3:.1f} ms"
        for label, runs in (("API (what oneosctl apply calls)", apply["api"]), ("`oneosctl apply` (process)", apply["cli"])):
            if not runs:
                continue
            p50, top = p50_max([r["running"] for r in runs])
            rows.append(row(f"apply -> 3 Running, {label}, p50 / max of {len(runs)}", f"{ms(p50)} / {ms(top)}",
                            "<= 1 s", top <= 1.0, base, f"{p50 / unix:.0f}x"))
        api = apply["api"]
        if api:
            a50, amax = p50_max([r["assigned"] for r in api])
            r50, rmax = p50_max([r["running"] - r["assigned"] for r in api])
            notes.append(f"apply -> assigned (controller) p50 {ms(a50)}, max {ms(amax)}; assigned -> Running "
                         f"(oneosd) p50 {ms(r50)}, max {ms(rmax)}; first apply on the fresh cluster "
                         f"{ms(api[0]['running'])}")
        if apply["cli"]:
            exits = [r["cli_exit"] for r in apply["cli"] if "cli_exit" in r]
            if exits:
                notes.append(f"`oneosctl apply` process exited after {ms(statistics.median(exits))} (p50): "
                             "mostly interpreter start and imports")
        d50, dmax = p50_max(apply["deletes"])
        notes.append(f"delete -> every agent stopped and its assignment and status gone: p50 {ms(d50)}, max {ms(dmax)}")
        if apply["get"]:
            notes.append(f"`oneosctl get agents -o json`, one call: {ms(apply['get']['cli'])}; the same read "
                         f"in-process (state.read_statuses): {apply['get']['api'] * 1e3:.1f} ms")
    if failover:
        target = 2 * ttl + 2
        p50, top = p50_max([r["running"] for r in failover])
        g50, gmax = p50_max([r["gone"] for r in failover])
        o50, omax = p50_max([r["running"] - r["gone"] for r in failover])
        rows.append(row(f"node killed -> its agents Running elsewhere, p50 / max of {len(failover)}",
                        f"{p50:.2f} s / {top:.2f} s", f"<= {target} s (2xTTL+2)", top <= target,
                        f"session expiry: {g50:.2f} s", f"OneOS part: {o50:.2f} s"))
        rows.append(row("  of which: kill -> node record gone (TTL, Consul's part)", f"{g50:.2f} s / {gmax:.2f} s",
                        f"<= {2 * ttl} s (2xTTL)", gmax <= 2 * ttl))
        rows.append(row("  of which: node gone -> agents Running elsewhere (OneOS)", f"{o50:.2f} s / {omax:.2f} s",
                        "<= 2 s", omax <= 2))
        for r in failover:
            notes.append(f"failover: killed {r['victim']} running {', '.join(r['moved'])}; record gone {r['gone']:.2f} s, "
                         f"reassigned {r['reassigned']:.2f} s, Running on {','.join(r['to'])} {r['running']:.2f} s; "
                         f"agents left running on the dead node: {r['orphans']}")
    if placed:
        rate, naive = placed["placements_per_s"], placed["naive_placements_per_s"]
        rows.append(row(f"scheduler placements/s, {args.agents:,} agents on {args.nodes:,} nodes", f"{rate:,.0f}/s",
                        ">= 10,000/s", rate >= 10_000, f"place_naive (full scan): {naive:,.0f}/s",
                        f"{rate / naive:.2f}x"))
        notes.append(f"placements measured by {placed['source']}: {placed['seconds']:.2f} s, {placed['pending']} "
                     f"pending")
    for when, data in (("idle", idle), ("idle after pipelines ran", idle_after)):
        if not data:
            continue
        base = {k: v for k, v in data.items() if not k.startswith("oneosd")}
        imports = base.get("python3, import pulsar, requests")
        for label, v in data.items():
            if not label.startswith("oneosd"):
                continue
            rows.append(row(f"{when} RSS, {label}", f"{v['rss_max']:.1f} MB", "<= 40 MB", v["rss_max"] <= 40,
                            f"import pulsar, requests: {imports['rss_max']:.1f} MB" if imports else "",
                            f"{v['rss_max'] / imports['rss_max']:.2f}" if imports else ""))
            rows.append(row(f"{when} CPU, {label}", f"{v['cpu']:.2f} %", "<= 1 %", v["cpu"] <= 1))
            if v["children"]:
                notes.append(f"{when}: {label} had {v['children']} child processes (counted)")
        for label, v in base.items():
            notes.append(f"{when}, {label}: RSS {v['rss_max']:.1f} MB, CPU {v['cpu']:.2f} %")
    print()
    print_table(rows)
    if notes:
        print()
        for note in notes:
            print(f"- {note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a CI-sized run (under a minute): 3 applies, 1 by oneosctl, 1 failover, 4 s idle, 1,000 agents")
    parser.add_argument("--apply-runs", type=int, default=20, help="applies through the API (default 20)")
    parser.add_argument("--cli-runs", type=int, default=5, help="applies by `oneosctl apply` (default 5)")
    parser.add_argument("--failover-runs", type=int, default=3, help="nodes killed, one at a time (default 3)")
    parser.add_argument("--idle-seconds", type=float, default=30, help="how long idle RSS and CPU are sampled (default 30)")
    parser.add_argument("--agents", type=int, default=10_000, help="agents placed (default 10000)")
    parser.add_argument("--nodes", type=int, default=1_000, help="simulated nodes (default 1000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ttl", type=int, default=10, help="session TTL of the boot record, >= 10 (default 10)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (the processes' logs)")
    parser.add_argument("--only", default="idle,apply,failover,placement",
                        help="sections to run, comma-separated (default idle,apply,failover,placement)")
    args = parser.parse_args()
    if args.quick:
        args.apply_runs, args.cli_runs, args.failover_runs, args.idle_seconds = 3, 1, 1, 4
        args.agents = min(args.agents, 1_000)
    only = set(args.only.split(","))

    def interrupted(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)

    root = Path(tempfile.mkdtemp(prefix="oneos-bench-control-"))
    procs = Processes(root)
    keep = False
    apply = failover = idle = idle_after = placed = None
    ttl = args.ttl
    try:
        print(f"{platform.node()}: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start, "
              f"Python {platform.python_version()}; four oneosd runtimes, built-in Name Server, pulsar-lite", flush=True)
        if only & {"idle", "apply", "failover"}:
            cluster = Cluster(procs, root, ["n1", "n2", "n3", "n4"], args.ttl, lock_delay=1)
            started = time.perf_counter()
            cluster.start()
            boot = state.read_boot(cluster.ns)
            ttl = round(parse_seconds(boot["sessionTTL"]))
            say(f"cluster up in {time.perf_counter() - started:.1f} s (TTL {boot['sessionTTL']}, lock-delay "
                f"{boot['lockDelay']}; logs in {root})")
            if "idle" in only:
                say(f"sampling idle oneosd and baselines for {args.idle_seconds:g} s")
                idle = measure_idle(cluster, procs, args.idle_seconds, "n4", {}, settle=3)
            if "apply" in only:
                apply = measure_apply(cluster, args.apply_runs, args.cli_runs)
            if "failover" in only:
                failover = measure_failover(cluster, procs, args.failover_runs, args.seed)
            if "idle" in only and "apply" in only and not args.quick:
                restarted = {r["victim"] for r in failover or []}
                ran = sorted(n for n in apply["nodes_used"] if n != cluster.kernel and n not in restarted)
                if ran:
                    say(f"sampling idle oneosd again, after pipelines ran on {ran[0]} and were deleted")
                    idle_after = measure_idle(cluster, procs, args.idle_seconds, ran[0], None, settle=1)
            procs.stop_all()
        if "placement" in only:
            say(f"placing {args.agents:,} agents on {args.nodes:,} simulated nodes")
            placed = measure_placement(args.agents, args.nodes, args.seed)
        report(args, apply, failover, idle, idle_after, placed, ttl)
        print(f"\nload average {os.getloadavg()[0]:.2f} at the end: other processes on this machine share its CPUs")
        return 0
    except KeyboardInterrupt:
        say("interrupted; stopping everything this benchmark started")
        return 130
    except BaseException:
        keep = True
        raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        procs.stop_all()
        if keep or args.keep:
            say(f"logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
