"""Benchmark of the Name Server's access control: what checking every request costs.

    .venv/bin/python bench/nameserver_access.py [--writes 2000] [--threads 4] [--wakeups 200]

It starts two `oneos-nameserver` processes on free ports, with their data in a temporary
folder: one without ACLs (the baseline), one with `--acl` and an initial management token,
where the writer uses a token of its own with a policy of a few rules (`key_prefix` write on
its prefix, a `key` deny, a `session_prefix`), as a node's token would be. In one run, for each:
- KV writes/s: `--writes` PUTs through OneOS's client (py-consul), from `--threads` threads;
- blocking-query wake-up: a GET ?index= waiting on a key, woken by a PUT of it; the time from
  the PUT being sent to the waiting GET's answer, `--wakeups` times (median and 99th percentile).
It prints, never asserts; the ratio column is ACLs on / off. Every process it starts is stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from oneos.nameserver.client import NameServer  # noqa: E402
from oneos.secretfiles import write_secret  # noqa: E402
from tests.procs import NameServerProc  # noqa: E402


def writes_per_second(ns: NameServer, prefix: str, writes: int, threads: int) -> float:
    def run(n: int, offset: int) -> None:
        client = ns.clone()
        for i in range(n):
            client.put(f"{prefix}k{offset + i % 50}", b"x" * 64)
    share = writes // threads
    workers = [threading.Thread(target=run, args=(share, t * 50)) for t in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return share * threads / (time.perf_counter() - started)


def wakeups(ns: NameServer, key: str, count: int) -> list[float]:
    """Seconds from a PUT being sent to the answer of a blocking GET it wakes, `count` times."""
    waiter, writer = ns.clone(), ns.clone()
    writer.put(key, b"0")
    took = []
    for i in range(count):
        index, _ = waiter.get(key)
        answered = threading.Event()
        at: list[float] = []

        def wait() -> None:
            waiter.get(key, index=index, wait="10s")
            at.append(time.perf_counter())
            answered.set()
        thread = threading.Thread(target=wait)
        thread.start()
        time.sleep(0.002)          # let the GET reach the server and block (not a readiness wait: a pacing gap)
        sent = time.perf_counter()
        writer.put(key, str(i + 1).encode())
        answered.wait(15)
        thread.join()
        took.append(at[0] - sent)
    return took


def measure(ns: NameServer, args: argparse.Namespace) -> dict[str, float]:
    prefix = f"bench/{uuid.uuid4().hex[:8]}/"
    writes_per_second(ns, prefix, min(200, args.writes), args.threads)       # warm-up
    rate = writes_per_second(ns, prefix, args.writes, args.threads)
    took = wakeups(ns, f"{prefix}watched", args.wakeups)
    return {"writes/s": rate, "wake-up median ms": 1000 * statistics.median(took),
            "wake-up p99 ms": 1000 * statistics.quantiles(took, n=100)[98]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--wakeups", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="oneos-bench-acl-") as tmp:
        root = Path(tmp)
        management = str(uuid.uuid4())
        write_secret(root / "management", management)
        plain = NameServerProc(root / "plain")
        guarded = NameServerProc(root / "acl", extra=["--acl", "--acl-initial-management-token-file",
                                                      str(root / "management")])
        try:
            plain.start()
            guarded.start()
            admin = NameServer(guarded.url, token=management)
            rules = ('key_prefix "bench/" { policy = "write" }\nkey "bench/secret" { policy = "deny" }\n'
                     'key_prefix "oneos/" { policy = "read" }\nsession_prefix "" { policy = "write" }')
            admin._check(admin._raw("put", "/v1/acl/policy", data=json.dumps({"Name": "bench", "Rules": rules})),
                         "create the bench policy")
            made = admin._raw("put", "/v1/acl/token", data=json.dumps({"Policies": [{"Name": "bench"}]}))
            admin._check(made, "create the bench token")
            token = json.loads(made.body)["SecretID"]
            results = {"ACLs off": measure(NameServer(plain.url, token=None), args),
                       "ACLs on": measure(NameServer(guarded.url, token=token), args)}
        finally:
            guarded.stop()
            plain.stop()
    off, on = results["ACLs off"], results["ACLs on"]
    print(f"Name Server, {args.writes} KV writes from {args.threads} threads, {args.wakeups} blocking-query wake-ups")
    print(f"{'':22}{'ACLs off':>12}{'ACLs on':>12}{'on / off':>10}")
    for name in off:
        print(f"{name:22}{off[name]:12.1f}{on[name]:12.1f}{on[name] / off[name]:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
