"""A TLS terminator in front of pulsar-lite, which speaks no TLS: what a Pulsar proxy does.

It accepts pulsar+ssl:// connections with a certificate of tests/tlsfiles.py and forwards
the bytes to the broker. Two things a byte pipe cannot do, it does: a topic lookup's answer
names the broker's own plain URL (pulsar-lite knows of no TLS port), so its TLS URL is
set to this terminator's, as a Pulsar proxy answers; and it keeps the first bytes each
client sent (its CONNECT command, where a token travels), for a test to look into.

It runs an asyncio loop in a thread of the test's process, owned by a fixture (`start`, `stop`).
"""

from __future__ import annotations

import asyncio
import ssl
import struct
import threading

from tests.procs import free_port
from tests.tlsfiles import TLSFiles

LOOKUP_RESPONSE = 24          # BaseCommand.Type.LOOKUP_RESPONSE, and BaseCommand's field of that number
BROKER_SERVICE_URL_TLS = 2    # CommandLookupTopicResponse.brokerServiceUrlTls
FIRST_BYTES = 4096


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _fields(data: bytes):
    """(number, wire type, start, end) of each field of a protobuf message: enough to find one."""
    at = 0
    while at < len(data):
        start = at
        key, at = _read_varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, at = _read_varint(data, at)
        elif wire == 1:
            at += 8
        elif wire == 2:
            length, at = _read_varint(data, at)
            at += length
        elif wire == 5:
            at += 4
        else:
            raise ValueError(f"protobuf wire type {wire} not expected in a Pulsar command")
        yield number, wire, start, at


def with_tls_url(command: bytes, url: str) -> bytes:
    """A BaseCommand; a lookup answer gets `url` as its brokerServiceUrlTls (the last value of a field wins)."""
    out = bytearray()
    for number, wire, start, end in _fields(command):
        if number == LOOKUP_RESPONSE and wire == 2:
            _, after_key = _read_varint(command, start)
            length, body_at = _read_varint(command, after_key)
            body = command[body_at:body_at + length] + _varint(BROKER_SERVICE_URL_TLS << 3 | 2) \
                + _varint(len(url)) + url.encode()
            out += _varint(LOOKUP_RESPONSE << 3 | 2) + _varint(len(body)) + body
        else:
            out += command[start:end]
    return bytes(out)


class TLSProxy:
    """pulsar+ssl://127.0.0.1:PORT in front of a broker at 127.0.0.1:`broker_port`."""

    def __init__(self, broker_port: int, tls: TLSFiles) -> None:
        self.broker_port = broker_port
        self.port = free_port()
        self.url = f"pulsar+ssl://127.0.0.1:{self.port}"
        self.hostname_url = f"pulsar+ssl://localhost:{self.port}"
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(tls.server_cert, tls.server_key)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tls proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._lock = threading.Lock()
        self._first: list[bytes] = []
        self.handshakes_failed = 0

    def start(self) -> "TLSProxy":
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self._context), self._loop).result(10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def first_bytes(self) -> list[bytes]:
        """What each connection's client sent first, decrypted (up to 4 KiB each)."""
        with self._lock:
            return list(self._first)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            broker_r, broker_w = await asyncio.open_connection("127.0.0.1", self.broker_port)
        except OSError:
            client_w.close()
            return
        slot = len(self._first)
        with self._lock:
            self._first.append(b"")
        await asyncio.gather(self._upstream(client_r, broker_w, slot), self._downstream(broker_r, client_w),
                             return_exceptions=True)
        for w in (client_w, broker_w):
            w.close()

    async def _upstream(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, slot: int) -> None:
        try:
            while data := await src.read(65536):
                with self._lock:
                    if len(self._first[slot]) < FIRST_BYTES:
                        self._first[slot] += data[:FIRST_BYTES - len(self._first[slot])]
                dst.write(data)
                await dst.drain()
        finally:
            dst.close()

    async def _downstream(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """Frame by frame: [total size][command size][command][payload...] (Pulsar's binary protocol)."""
        try:
            while True:
                total, = struct.unpack(">I", await src.readexactly(4))
                body = await src.readexactly(total)
                size, = struct.unpack(">I", body[:4])
                command, rest = body[4:4 + size], body[4 + size:]
                kind, _ = _read_varint(command, 1) if command[:1] == b"\x08" else (0, 0)
                if kind == LOOKUP_RESPONSE:
                    command = with_tls_url(command, self.url)
                dst.write(struct.pack(">II", 4 + len(command) + len(rest), len(command)) + command + rest)
                await dst.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            dst.close()
