"""Benchmark of `oneos-nameserver`: KV writes/s, blocking-query wake-up, the longest write in a compaction.

    .venv/bin/python bench/nameserver.py [--quick] [--writers 16 64] [--seconds 3] [--rounds 4]
                                         [--wakeups 200] [--compaction-keys 100000] [--only NAME ...]

Each variant in VARIANTS is a server (its flags) and how a client talks to it (extra headers,
https and a CA file); all are started in the same run, on free ports, with their data in a
temporary folder, and stopped at the end (on an error or Ctrl-C too). For each variant:
- KV writes/s: `--writers` threads (each count in turn), each with its own keep-alive
  connection, PUT new keys (100-byte values) for `--seconds`; the rounds alternate between
  the variants and the median is kept, so that a neighbour's load on this shared machine
  hits all of them alike;
- blocking-query wake-up: a GET blocked on a key (?index=) and a PUT of that key: the time
  from sending the PUT to the blocked GET's answer, p50 and p99 over `--wakeups` PUTs.
Printed as ratios beside a base variant measured in the same run: fsync (the default) beside
`--no-fsync` (or, with `--before DIR`, the server of an older checkout: `git archive COMMIT
oneos | tar -x -C DIR`, with its own defaults); ACLs on (the writer holds a token whose policy
has four rules, as a node's would), TLS (HTTPS, the CA checked) and both, beside the default
server with neither.
Then, on one server (fsync on): the longest write during a compaction of a store of
`--compaction-keys` keys, with writers running, beside the compaction's own duration (before
compaction ran beside writers, a write waited for all of it) and the writes outside it.
It prints, never asserts.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import shutil
import ssl
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from oneos.secretfiles import write_secret  # noqa: E402
from tests.procs import NameServerProc, wait_until  # noqa: E402
from tests.tlsfiles import make_tls  # noqa: E402

VALUE = b"v" * 100
BASE_VALUE = base64.b64encode(b"b" * 120).decode()


def say(text: str) -> None:
    """Progress, on stderr: the report itself goes to stdout."""
    print(f"nameserver: {text}", file=sys.stderr, flush=True)


@dataclass
class Variant:
    """A server to measure: its flags, and what a client needs to talk to it.

    `prepare(variant, workdir)` runs before the server starts (to write certificates, say) and
    may change the variant: its flags, headers, `https`, `ca_file`; `ready(variant)` runs once
    it has started (to make a token, say). Its ratios are against the variant named `base`
    (default: the first)."""

    name: str
    server_args: list[str] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    https: bool = False
    ca_file: str | None = None
    prepare: Callable[["Variant", Path], None] | None = None
    ready: Callable[["Variant"], None] | None = None
    base: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    server: NameServerProc | None = None

    def connect(self) -> http.client.HTTPConnection:
        port = self.server.port
        if self.https:
            context = ssl.create_default_context(cafile=self.ca_file)
            return http.client.HTTPSConnection("127.0.0.1", port, timeout=60, context=context)
        return http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def request(self, conn: http.client.HTTPConnection, method: str, path: str,
                body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        conn.request(method, path, body=body, headers=self.headers)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()


def acl_prepare(variant: Variant, work: Path) -> None:
    """--acl with an initial management token; the writer's token is made once the server runs."""
    management = str(uuid.uuid4())
    write_secret(work / "management-token", management)
    variant.server_args += ["--acl", "--acl-initial-management-token-file", str(work / "management-token")]
    variant.headers["X-Consul-Token"] = management


def acl_ready(variant: Variant) -> None:
    """A policy of a few rules, as a node's token would have, and the writer's token holding it."""
    rules = ('key_prefix "bench/" { policy = "write" }\nkey "bench/secret" { policy = "deny" }\n'
             'key_prefix "oneos/" { policy = "read" }\nsession_prefix "" { policy = "write" }')
    conn = variant.connect()
    status, _, body = variant.request(conn, "PUT", "/v1/acl/policy",
                                      json.dumps({"Name": "bench", "Rules": rules}).encode())
    assert status == 200, body
    status, _, body = variant.request(conn, "PUT", "/v1/acl/token",
                                      json.dumps({"Policies": [{"Name": "bench"}]}).encode())
    assert status == 200, body
    conn.close()
    variant.headers["X-Consul-Token"] = json.loads(body)["SecretID"]


def tls_prepare(variant: Variant, work: Path) -> None:
    """HTTPS with a CA of its own, which the client checks the server against."""
    files = make_tls(work / "tls")
    variant.server_args += files.server_args()
    variant.https, variant.ca_file = True, str(files.ca)


def acl_tls_prepare(variant: Variant, work: Path) -> None:
    acl_prepare(variant, work)
    tls_prepare(variant, work)


DEFAULT = "fsync (default), group commit"
# The first is the baseline of the ones that name no base.
VARIANTS = [
    Variant("--no-fsync, group commit", ["--no-fsync"]),
    Variant(DEFAULT),
    Variant("ACLs on", prepare=acl_prepare, ready=acl_ready, base=DEFAULT),
    Variant("TLS", prepare=tls_prepare, base=DEFAULT),
    Variant("ACLs on and TLS", prepare=acl_tls_prepare, ready=acl_ready, base=DEFAULT),
]


class Servers:
    """The variants' servers, each with a data directory under `root`; stop() stops them all."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[NameServerProc] = []

    def start(self, variant: Variant, name: str, extra: list[str] | None = None) -> NameServerProc:
        work = self.root / name
        work.mkdir(parents=True, exist_ok=True)
        proc = NameServerProc(work / "data", extra=variant.server_args + (extra or []))
        proc.env = variant.env
        self.started.append(proc)
        if variant.https:   # NameServerProc polls plain http: wait for the ready line instead
            proc.url = f"https://127.0.0.1:{proc.port}"
            super(NameServerProc, proc).start()
            wait_until(lambda: "serving" in proc.log(), 20, f"{variant.name} (log: {proc.log_path})")
        else:
            proc.start()
        return proc

    def stop(self) -> None:
        for proc in self.started:
            proc.stop()


# -- measurements ------------------------------------------------------------------------------

def writes_per_second(variant: Variant, writers: int, seconds: float, tag: str) -> float:
    counts = [0] * writers
    failures: list[str] = []
    start = threading.Barrier(writers + 1)
    deadline = [0.0]

    def write(n: int) -> None:
        conn = variant.connect()
        start.wait()
        i = 0
        while time.perf_counter() < deadline[0]:
            status, _, body = variant.request(conn, "PUT", f"/v1/kv/bench/{tag}/{n}/{i}", VALUE)
            if status != 200 or body.strip() != b"true":
                failures.append(f"{status} {body[:200]!r}")
                return
            i += 1
        counts[n] = i
        conn.close()

    threads = [threading.Thread(target=write, args=(n,), daemon=True) for n in range(writers)]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + seconds
    begun = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    if failures:
        raise SystemExit(f"{variant.name}: a write failed: {failures[0]}")
    return sum(counts) / (time.perf_counter() - begun)


def wakeups(variant: Variant, samples: int) -> list[float]:
    """Seconds from sending a PUT to the answer of a GET blocked on its key, for each PUT."""
    key = "/v1/kv/bench/watched"
    writer, watcher = variant.connect(), variant.connect()
    status, _, _ = variant.request(writer, "PUT", key, b"0")
    assert status == 200, status
    _, headers, _ = variant.request(watcher, "GET", key)
    index = int(headers["X-Consul-Index"])
    results: list[float] = []
    woke = threading.Event()
    answered = [0.0]

    def watch() -> None:
        nonlocal index
        for _ in range(samples):
            _, headers, _ = variant.request(watcher, "GET", f"{key}?index={index}&wait=30s")
            answered[0] = time.perf_counter()
            index = int(headers["X-Consul-Index"])
            woke.set()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    for i in range(samples):
        time.sleep(0.005)      # let the GET reach the server and block (a bench, not a test)
        woke.clear()
        sent = time.perf_counter()
        variant.request(writer, "PUT", key, str(i + 1).encode())   # a new value: an unchanged one is no write
        if not woke.wait(30):
            raise SystemExit(f"{variant.name}: the blocked GET did not wake up")
        results.append(answered[0] - sent)
    thread.join()
    return results


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def compaction(servers: Servers, keys: int, writers: int) -> dict[str, float]:
    """The longest write while a store of `keys` keys is compacted, writers running (fsync on)."""
    variant = Variant("compaction")
    proc = variant.server = servers.start(variant, "compaction-load", ["--compact-bytes", str(1 << 40)])
    conn = variant.connect()
    say(f"compaction: storing {keys} keys")
    for start in range(0, keys, 128):
        ops = [{"KV": {"Verb": "set", "Key": f"base/{i:07d}", "Value": BASE_VALUE}}
               for i in range(start, min(start + 128, keys))]
        status, _, body = variant.request(conn, "PUT", "/v1/txn", json.dumps(ops).encode())
        assert status == 200, body
    conn.close()
    proc.stop()
    data = proc.data_dir
    log_size = (data / "log.jsonl").stat().st_size
    # Started again so that the log compacts after a few hundred more writes.
    say("compaction: restarting, writing until the log is compacted")
    proc = NameServerProc(data, extra=["--compact-bytes", str(log_size + 300_000)])
    servers.started.append(proc)
    proc.start()
    variant.server = proc
    writes: list[tuple[float, float]] = []
    window: list[float] = []
    stop = threading.Event()

    def write(n: int) -> None:
        c = variant.connect()
        i = 0
        while not stop.is_set():
            began = time.perf_counter()
            status, _, _ = variant.request(c, "PUT", f"/v1/kv/load/{n}/{i}", b"w" * 1000)
            writes.append((began, time.perf_counter()))
            i += 1

    threads = [threading.Thread(target=write, args=(n,), daemon=True) for n in range(writers)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: any(data.glob("log-*.jsonl")), 120, "the compaction to start", interval=0.001)
        window.append(time.perf_counter())
        wait_until(lambda: not any(data.glob("log-*.jsonl")), 120, "the compaction to end", interval=0.001)
        window.append(time.perf_counter())
        time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    began, ended = window
    during = [end - start for start, end in writes if end >= began and start <= ended]
    other = [end - start for start, end in writes if end < began or start > ended]
    return {"compaction_s": ended - began, "longest_s": max(during), "writes_during": len(during),
            "median_s": statistics.median(other), "p99_s": percentile(other, 99), "longest_other_s": max(other),
            "snapshot_mb": (data / "snapshot.json").stat().st_size / 1e6}


# -- report ------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter runs, 20,000 keys to compact")
    parser.add_argument("--writers", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--wakeups", type=int, default=200)
    parser.add_argument("--compaction-keys", type=int, default=100_000)
    parser.add_argument("--compaction-only", action="store_true", help="only the compaction figure")
    parser.add_argument("--only", nargs="*", help="variants to run (names as printed), the first kept")
    parser.add_argument("--before", metavar="DIR",
                        help="also run, first, the server whose `oneos` package is in DIR (an older "
                             "checkout: `git archive COMMIT oneos | tar -x -C DIR`), with its default flags")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds, args.wakeups, args.compaction_keys = 1.0, 1, 50, 20_000
        args.writers = args.writers[:1]
    variants = [v for i, v in enumerate(VARIANTS) if i == 0 or not args.only or v.name in args.only]
    if args.before:
        variants.insert(0, Variant(f"before ({Path(args.before).name})", env={"PYTHONPATH": args.before}))
    root = Path(tempfile.mkdtemp(prefix="oneos-bench-nameserver-"))
    servers = Servers(root)
    try:
        for n, v in enumerate([] if args.compaction_only else variants):
            if v.prepare:
                v.prepare(v, root / f"variant-{n}")
            v.server = servers.start(v, f"variant-{n}")
            if v.ready:
                v.ready(v)
        rates: dict[tuple[str, int], list[float]] = {(v.name, w): [] for v in variants for w in args.writers}
        for writers in args.writers:
            for r in range(0 if args.compaction_only else args.rounds):
                for v in variants if r % 2 == 0 else list(reversed(variants)):
                    say(f"writes/s, {writers} writers, round {r + 1}: {v.name}")
                    rates[v.name, writers].append(writes_per_second(v, writers, args.seconds, f"w{writers}r{r}"))
        wake = {}
        for v in [] if args.compaction_only else variants:
            say(f"wake-up latency: {v.name}")
            wake[v.name] = wakeups(v, args.wakeups)
        servers.stop()
        servers.started.clear()
        comp = compaction(servers, args.compaction_keys, 4)
    finally:
        servers.stop()
        if not os.environ.get("KEEP"):
            shutil.rmtree(root, ignore_errors=True)

    if args.compaction_only:
        variants = []
    else:
        report_variants(variants, rates, wake, args)
    report_compaction(comp, args)
    return 0


def report_variants(variants: list[Variant], rates: dict[tuple[str, int], list[float]],
                    wake: dict[str, list[float]], args: argparse.Namespace) -> None:
    names = {v.name for v in variants}

    def base_of(v: Variant) -> str:
        return v.base if v.base in names else variants[0].name

    print(f"oneos-nameserver on this machine ({os.cpu_count()} CPUs, shared, load average "
          f"{os.getloadavg()[0]:.1f}): writes/s, median of {args.rounds} x {args.seconds:g}s; "
          f"wake-up over {args.wakeups} PUTs")
    head = "".join(f"{f'{w} writers':>11s}{'vs base':>9s}" for w in args.writers)
    print(f"  {'variant':34s}{head}{'wake p50 ms':>13s}{'p99 ms':>8s}{'p50 vs base':>13s}   base")
    for v in variants:
        base = base_of(v)
        cells = ""
        for w in args.writers:
            rate = statistics.median(rates[v.name, w])
            cells += f"{rate:11.0f}{rate / statistics.median(rates[base, w]):9.2f}"
        p50, p99 = percentile(wake[v.name], 50), percentile(wake[v.name], 99)
        shown = "-" if base == v.name else base
        print(f"  {v.name:34s}{cells}{p50 * 1e3:13.2f}{p99 * 1e3:8.2f}{p50 / percentile(wake[base], 50):13.2f}"
              f"   {shown}")


def report_compaction(comp: dict[str, float], args: argparse.Namespace) -> None:
    print(f"compaction of {args.compaction_keys} keys (snapshot {comp['snapshot_mb']:.1f} MB, fsync on, "
          f"4 writers): it took {comp['compaction_s'] * 1e3:.0f} ms; the longest write during it "
          f"{comp['longest_s'] * 1e3:.1f} ms ({comp['writes_during']} writes during it; "
          f"otherwise: median {comp['median_s'] * 1e3:.2f} ms, p99 {comp['p99_s'] * 1e3:.1f} ms, "
          f"longest {comp['longest_other_s'] * 1e3:.1f} ms)")


if __name__ == "__main__":
    sys.exit(main())
