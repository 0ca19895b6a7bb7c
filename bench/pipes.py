"""Benchmark of the pipe protocol: chains of `cat` joined by topics, beside UNIX pipes and raw Pulsar.

    .venv/bin/python bench/pipes.py [--megabytes 50] [--samples 2000] [--hops 0,1,3,5]

It starts its own pulsar-lite on free ports (data in a temporary folder; tests/procs.py's
BrokerProc, as the tests start theirs) and prints:
- throughput (MB/s, lines/s) of ~50 MB of text lines through chains of N hops, where a hop
  is `StreamReader -> cat's stdin, cat's stdout -> StreamWriter` (0 hops: one writer straight
  to one reader), the same `cat` chain joined by UNIX pipes, and a raw pulsar-client producer
  -> consumer moving the same 64 KiB chunks;
- latency (p50/p99) of single short lines sent one at a time through the same chains;
- the cost of frame MACs: each chain's throughput with MACs (as pipelines run) and without
  (a baseline only this bench makes: OneOS always sends MACs), in rounds that measure both in
  alternating order; the median of the rounds' ratios, with their range (see `mac_report`),
  and the MACs' CPU cost per frame. `--only-macs` runs just that part.
Bus chains carry MACs under a random pipeline key, as a pipeline's pipes do.
Ratios are of figures measured in the same run. Targets: throughput of a 0-hop pipe at least
0.5 of raw pulsar-client; at most 2 ms of p50 latency added per link; with MACs at least 0.90
of the throughput without. It prints, never asserts.
Everything runs in this process (one Pulsar client, as a node agent has) plus the `cat`s.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import queue
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pulsar  # noqa: E402

from oneos.bus import client as bus_client  # noqa: E402
from oneos.bus import frames  # noqa: E402
from oneos.bus.reader import StreamReader  # noqa: E402
from oneos.bus.writer import StreamWriter  # noqa: E402
from tests.procs import BrokerProc  # noqa: E402

CHUNK = frames.MAX_DATA
STALLS = [0]  # times a reader subscribed again after an idle spell (see oneos/bus/reader.py)


def make_lines(megabytes: int) -> tuple[bytes, int]:
    line = b"%09d the quick brown fox jumps over the lazy dog\n"
    count = megabytes * 1_000_000 // len(line % 0)
    return b"".join(line % i for i in range(count)), count


def topic(run: str, i: int) -> str:
    return f"persistent://public/default/oneos-bench.{run}.{i}"


class BusChain:
    """source writer -> t0 -> [reader -> cat -> writer] x hops -> t_hops -> sink reader, in this process."""

    def __init__(self, client: pulsar.Client, hops: int, on_data, batching: bool = False, mac: bool = True) -> None:
        run = uuid.uuid4().hex[:12]
        key = secrets.token_bytes(frames.KEY_SIZE) if mac else None   # as apply makes a pipeline's
        self.cats: list[subprocess.Popen] = []
        self.writers: list[StreamWriter] = []
        self.readers: list[StreamReader] = []
        for i in range(hops):
            cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            self.cats.append(cat)
            stdin, stdout = os.dup(cat.stdin.fileno()), os.dup(cat.stdout.fileno())
            cat.stdin.close()
            cat.stdout.close()
            self.readers.append(StreamReader(client, [topic(run, i)], "bench", name=f"cat{i}", fd=stdin,
                                             key=key).start())
            writer = StreamWriter(client, [topic(run, i + 1)], 0, name=f"cat{i}", batching=batching, key=key)
            writer.pump(stdout)
            self.writers.append(writer)
        self.sink = StreamReader(client, [topic(run, hops)], "bench", name="sink", on_data=on_data, key=key).start()
        self.source = StreamWriter(client, [topic(run, 0)], 0, name="source", batching=batching, key=key)
        self.writers.append(self.source)
        self.readers.append(self.sink)

    def close(self) -> None:
        for reader in self.readers:
            reader.stop()
            STALLS[0] += reader.resubscribed
        for writer in self.writers:
            writer.flush(5)  # receipts still on their way would be logged as for an unknown producer
            writer.close()
        for cat in self.cats:
            cat.kill()
            cat.wait()


class UnixChain:
    """bench -> pipe -> cat | cat ... -> pipe -> bench (0 hops: one pipe)."""

    def __init__(self, hops: int) -> None:
        self.cats: list[subprocess.Popen] = []
        if hops == 0:
            self.read_fd, self.write_fd = os.pipe()
            return
        first_r, self.write_fd = os.pipe()
        stdin = first_r
        for i in range(hops):
            cat = subprocess.Popen(["cat"], stdin=stdin, stdout=subprocess.PIPE)
            if i == 0:
                os.close(first_r)
            stdin = cat.stdout  # the next cat reads this one's stdout
            self.cats.append(cat)
        self.read_fd = os.dup(self.cats[-1].stdout.fileno())
        for cat in self.cats:
            cat.stdout.close()

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        for cat in self.cats:
            cat.kill()
            cat.wait()


# -- throughput ------------------------------------------------------------------------------

def bus_throughput(client: pulsar.Client, hops: int, data: bytes, batching: bool = False, mac: bool = True) -> float:
    digest = hashlib.blake2b()
    chain = BusChain(client, hops, digest.update, batching, mac)
    try:
        start = time.perf_counter()
        chain.source.write(data)
        chain.source.finish()
        if not chain.sink.wait(600):
            raise SystemExit(f"bus chain of {hops} hops did not finish")
        elapsed = time.perf_counter() - start
        if digest.digest() != hashlib.blake2b(data).digest() or chain.sink.error:
            raise SystemExit(f"bus chain of {hops} hops delivered something else ({chain.sink.error})")
        return elapsed
    finally:
        chain.close()


def unix_throughput(hops: int, data: bytes) -> float:
    chain = UnixChain(hops)
    got = 0

    def feed():
        view = memoryview(data)
        for start in range(0, len(view), CHUNK):
            os.write(chain.write_fd, view[start:start + CHUNK])
        os.close(chain.write_fd)
        chain.write_fd = -1

    try:
        start = time.perf_counter()
        threading.Thread(target=feed, daemon=True).start()
        while chunk := os.read(chain.read_fd, 1 << 20):
            got += len(chunk)
        elapsed = time.perf_counter() - start
        assert got == len(data)
        return elapsed
    finally:
        chain.close()


class RawConsumer:
    """A plain consumer that, like StreamReader, subscribes again when pulsar-lite stops dispatching."""

    def __init__(self, client: pulsar.Client, name: str) -> None:
        self._subscribe = lambda: client.subscribe(name, "bench", consumer_type=pulsar.ConsumerType.Shared,
                                                   initial_position=pulsar.InitialPosition.Earliest,
                                                   receiver_queue_size=64)
        self.consumer = self._subscribe()

    def receive(self) -> pulsar.Message:
        idle = 0
        while True:
            try:
                return self.consumer.receive(100)
            except pulsar.Timeout:
                idle += 1
                if idle % 3 == 0:
                    STALLS[0] += 1
                    self.consumer.close()
                    self.consumer = self._subscribe()

    def close(self) -> None:
        self.consumer.close()


def raw_throughput(client: pulsar.Client, data: bytes, ack: bool = True) -> float:
    name = topic(uuid.uuid4().hex[:12], 0)
    consumer = RawConsumer(client, name)
    producer = client.create_producer(name, block_if_queue_full=True, send_timeout_millis=0,
                                      max_pending_messages=128, batching_enabled=False)
    count = (len(data) + CHUNK - 1) // CHUNK
    seen: set[bytes] = set()
    got = 0

    def consume():
        nonlocal got
        while len(seen) < count:
            msg = consumer.receive()
            if msg.message_id().serialize() not in seen:  # a resubscription redelivers
                seen.add(msg.message_id().serialize())
                got += len(msg.data())
            if ack:
                consumer.consumer.acknowledge(msg)

    try:
        reader = threading.Thread(target=consume, daemon=True)
        start = time.perf_counter()
        reader.start()
        view = memoryview(data)
        for i in range(count):
            producer.send_async(bytes(view[i * CHUNK:(i + 1) * CHUNK]), None)
        reader.join()
        elapsed = time.perf_counter() - start
        assert got == len(data)
        return elapsed
    finally:
        producer.close()
        consumer.close()


# -- latency ---------------------------------------------------------------------------------

LINE = b"hello, world\n"


def percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return statistics.median(samples) * 1e3, samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e3


def bus_latency(client: pulsar.Client, hops: int, samples: int, batching: bool = False) -> tuple[float, float]:
    arrived: queue.Queue[bytes] = queue.Queue()
    chain = BusChain(client, hops, arrived.put, batching)
    try:
        took = []
        for _ in range(samples + samples // 10):
            start = time.perf_counter()
            chain.source.write(LINE)
            got = arrived.get(timeout=30)
            took.append(time.perf_counter() - start)
            assert got == LINE, got
        return percentiles(took[samples // 10:])
    finally:
        chain.close()


def unix_latency(hops: int, samples: int) -> tuple[float, float]:
    chain = UnixChain(hops)
    try:
        took = []
        for _ in range(samples + samples // 10):
            start = time.perf_counter()
            os.write(chain.write_fd, LINE)
            got = os.read(chain.read_fd, 100)
            took.append(time.perf_counter() - start)
            assert got == LINE, got
        return percentiles(took[samples // 10:])
    finally:
        chain.close()


def raw_latency(client: pulsar.Client, samples: int) -> tuple[float, float]:
    name = topic(uuid.uuid4().hex[:12], 0)
    consumer = RawConsumer(client, name)
    producer = client.create_producer(name, block_if_queue_full=True, send_timeout_millis=0, batching_enabled=False)
    try:
        took = []
        for i in range(samples + samples // 10):
            start = time.perf_counter()
            producer.send_async(b"%d\n" % i, None)
            while (msg := consumer.receive()).data() != b"%d\n" % i:  # a resubscription redelivers
                consumer.consumer.acknowledge(msg)
            took.append(time.perf_counter() - start)
            consumer.consumer.acknowledge(msg)
        return percentiles(took[samples // 10:])
    finally:
        producer.close()
        consumer.close()


# -- report ----------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=50, help="size of the throughput payload (default 50)")
    parser.add_argument("--samples", type=int, default=2000, help="latency samples per chain (default 2000)")
    parser.add_argument("--hops", default="0,1,3,5", help="chain lengths, comma-separated (default 0,1,3,5)")
    parser.add_argument("--runs", type=int, default=3, help="throughput runs per figure, the median is shown (default 3)")
    parser.add_argument("--mac-rounds", type=int, default=MAC_ROUNDS,
                        help=f"rounds of the MAC comparison, each with and without MACs (default {MAC_ROUNDS})")
    parser.add_argument("--only-macs", action="store_true",
                        help="only the MAC comparison (with --hops, --megabytes, --mac-rounds)")
    args = parser.parse_args()
    hops_list = [int(h) for h in args.hops.split(",")]

    with tempfile.TemporaryDirectory(prefix="oneos-bench-") as tmp:
        broker = BrokerProc(Path(tmp) / "pulsar").start()
        try:
            client = bus_client.connect(broker.url)
            try:
                if args.only_macs:
                    data, _ = make_lines(args.megabytes)
                    mac_report(client, [(f"bus, {h} hop{'s' * (h != 1)}", h, False) for h in hops_list],
                               data, args.mac_rounds, broker.pid)
                else:
                    report(client, hops_list, args.megabytes, args.samples, args.runs, args.mac_rounds, broker.pid)
            finally:
                bus_client.close(client)
        finally:
            broker.stop()
    return 0


MAC_ROUNDS = 7


def mac_report(client: pulsar.Client, rows: list[tuple[str, int, bool]], data: bytes, rounds: int,
               broker_pid: int | None = None) -> None:
    """Throughput with MACs over throughput without, as pairs measured side by side.

    A round measures both variants, in turn, in an order that alternates (with-without, then
    without-with) so that a drift of the machine (another process, the broker's storage
    growing) weighs on both alike; each round gives one ratio, and the median of the rounds'
    ratios is the figure, with their quartiles to show how much one run can be trusted. On a
    shared machine the wall clock swings with what else runs; the CPU time the pipe took
    (this process, where every reader and writer runs, and the broker) swings much less, and
    a pipe that has the machine to itself is bound by it: its ratio is shown beside. The
    MACs' CPU cost alone, per 64 KiB frame, does not depend on the broker at all.
    """
    mb = len(data) / 1e6
    seal_us, open_us = mac_cpu_cost()
    print(f"\nframe MACs ({frames.Seal.ALGORITHM}): {seal_us:.1f} us to seal and {open_us:.1f} us to check "
          f"a 64 KiB frame (one core: {CHUNK / (seal_us + open_us):.0f} MB/s per link)")
    print(f"                                MB/s with  MB/s without  with/without: median (quartiles)"
          f"   CPU: median (quartiles)")
    for label, hops, batching in rows:
        ratios, cpu_ratios, with_s, without_s = [], [], [], []
        for i in range(rounds):
            order = (True, False) if i % 2 == 0 else (False, True)
            took, cpu = {}, {}
            for mac in order:
                before = cpu_seconds(broker_pid)
                took[mac] = bus_throughput(client, hops, data, batching, mac=mac)
                cpu[mac] = cpu_seconds(broker_pid) - before
            with_s.append(took[True])
            without_s.append(took[False])
            ratios.append(took[False] / took[True])
            cpu_ratios.append(cpu[False] / cpu[True])
        on, off = statistics.median(with_s), statistics.median(without_s)
        print(f"  {label:30s}{mb / on:9.1f}   {mb / off:11.1f}   {spread(ratios):>27s}   {spread(cpu_ratios):>20s}")
    print(f"  ({rounds} rounds, each with and without MACs in turn; CPU: of this process and the broker)"
          f"\n  target: with/without >= 0.90 (issue 12)")


def spread(values: list[float]) -> str:
    """The median, and the quartiles: half of the rounds gave a figure between them."""
    low, median, high = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return f"{median:.3f} ({low:.3f}-{high:.3f})"


def cpu_seconds(broker_pid: int | None) -> float:
    """CPU time (user and system) of this process so far, and of the broker's process if given."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    total = usage.ru_utime + usage.ru_stime
    if broker_pid is not None:
        with open(f"/proc/{broker_pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime, stime
    return total


def mac_cpu_cost(frames_n: int = 5000) -> tuple[float, float]:
    """Microseconds to seal (encode with a MAC) and to check (decode) one full frame, beyond a frame without."""
    key, data = secrets.token_bytes(frames.KEY_SIZE), os.urandom(CHUNK)
    seal = frames.Seal(key, topic("cpu", 0))
    sealed = frames.encode(1, 0, data, seal=seal)
    plain = frames.encode(1, 0, data)

    def per_frame(work) -> float:
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(frames_n):
                work()
            best = min(best, (time.perf_counter() - start) / frames_n)
        return best * 1e6

    encode_plain = per_frame(lambda: frames.encode(1, 0, data))
    decode_plain = per_frame(lambda: frames.decode(plain))
    return (per_frame(lambda: frames.encode(1, 0, data, seal=seal)) - encode_plain,
            per_frame(lambda: frames.decode(sealed, seal)) - decode_plain)


def median_of(runs: int, measure) -> float:
    return statistics.median(measure() for _ in range(runs))


def report(client: pulsar.Client, hops_list: list[int], megabytes: int, samples: int, runs: int,
           mac_rounds: int = MAC_ROUNDS, broker_pid: int | None = None) -> None:
    data, lines = make_lines(megabytes)
    mb = len(data) / 1e6
    print(f"pulsar-lite on this machine, pulsar-client {pulsar.__version__}, {os.cpu_count()} CPUs, one client; "
          f"{mb:.0f} MB in {lines} lines (median of {runs} runs); {samples} latency samples of {len(LINE)}-byte lines\n")

    raw_s = median_of(runs, lambda: raw_throughput(client, data))
    raw_noack_s = median_of(runs, lambda: raw_throughput(client, data, ack=False))
    print("throughput                         MB/s     lines/s  vs raw   link-MB/s   unix MB/s  vs unix")
    print(f"  raw pulsar-client, 1 link     {mb / raw_s:7.1f}  {lines / raw_s:10.0f}    1.00   {mb / raw_s:9.1f}")
    print(f"  raw, no acknowledgements      {mb / raw_noack_s:7.1f}  {lines / raw_noack_s:10.0f}  {raw_s / raw_noack_s:6.2f}"
          f"   {mb / raw_noack_s:9.1f}")
    rows = [(f"bus, {h} hop{'s' * (h != 1)}", h, False) for h in hops_list]
    if 0 in hops_list:
        rows.append(("bus, 0 hops, Pulsar batching", 0, True))
    for label, hops, batching in rows:
        bus_s = median_of(runs, lambda: bus_throughput(client, hops, data, batching))
        unix_s = median_of(runs, lambda: unix_throughput(hops, data))
        links = hops + 1
        print(f"  {label:30s}{mb / bus_s:7.1f}  {lines / bus_s:10.0f}  {raw_s / bus_s:6.2f}   {links * mb / bus_s:9.1f}"
              f"   {mb / unix_s:9.0f}  {unix_s / bus_s:7.3f}")

    print("\nlatency, ms                        p50     p99   unix p50  unix p99   added p50 per link")
    raw_p50, raw_p99 = raw_latency(client, samples)
    print(f"  raw pulsar-client, 1 link     {raw_p50:6.2f}  {raw_p99:6.2f}")
    for label, hops, batching in rows:
        p50, p99 = bus_latency(client, hops, samples, batching)
        u50, u99 = unix_latency(hops, samples)
        links = hops + 1
        print(f"  {label:30s}{p50:6.2f}  {p99:6.2f}    {u50:6.3f}    {u99:6.3f}    {(p50 - u50) / links:6.2f}"
              f"  ({links} link{'s' * (links > 1)})")
    mac_report(client, rows, data, mac_rounds, broker_pid)
    print(f"\nhops are `StreamReader -> cat -> StreamWriter`; a chain of N hops has N+1 links through the broker,"
          f"\nso link-MB/s (MB/s x links) is what the broker moved. Targets: 0-hop throughput >= 0.5 x raw"
          f"\npulsar-client; added p50 latency <= 2 ms per link. Readers that subscribed again (pulsar-lite"
          f"\nleft messages undispatched, or no first message yet after 0.1 s): {STALLS[0]}")


if __name__ == "__main__":
    sys.exit(main())
