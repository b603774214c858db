"""Harness for the agent's integration tests: simulators, site.yaml, the agent process, a watcher.

- :class:`SimThread` runs simulated Modbus units (``drivers.sim``) on an event loop of their
  own in a background thread, so they keep answering while the test blocks or the agent
  shuts down.
- :class:`AgentProcess` runs ``python -m gateway.cli agent --config site.yaml`` as a child
  process (SIGTERM, SIGKILL, restart), its log in the test's directory.
- :class:`Watcher` is a paho client on a persistent session (clean_session off, QoS 1), so
  it survives a broker restart without missing what the agent sends meanwhile; it records
  every message with its arrival time.

Tests are synchronous: they poll with deadlines (``wait_until``), never sleep to wait for
logic.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as paho
import yaml

from drivers.profiles import resolve_profile
from drivers.sim.modbus_server import RtuPtyServer, TcpServer
from drivers.sim.relay_board import RelayBoardUnit
from drivers.sim.units import ProfileUnit

ROOT = Path(__file__).resolve().parents[2]
SITE = "site-t"
T = TypeVar("T")


def wait_until(pred: Callable[[], T], timeout: float, what: str, step: float = 0.05) -> T:
    """Poll ``pred`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(step)


# ------------------------------------------------------------------ simulators


class SimThread:
    """An event loop in a daemon thread for the simulators."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T]) -> T:
        async def wrap() -> T:
            return fn()

        return self.run(wrap())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class Counter:
    """A live value source: every read gives new values (no stuck-value flags)."""

    def __init__(self, base: float) -> None:
        self.base = base
        self._n = itertools.count()

    def __call__(self) -> dict[str, float]:
        n = next(self._n) % 50
        return {"pm25": self.base + n, "pm10": self.base * 2 + n, "temp": 12.5, "rh": 55.0}


def pm_units(ids: Iterable[int]) -> list[ProfileUnit]:
    """Generic PM sensors (profile ``generic-pm``) with the given unit ids."""
    spec = resolve_profile("generic-pm")
    return [ProfileUnit(spec, Counter(10.0 * i), unit_id=i) for i in ids]


@dataclass
class Servers:
    sim: SimThread
    pm_tcp: TcpServer | None = None
    pm_rtu: RtuPtyServer | None = None
    relay: TcpServer | None = None
    board: RelayBoardUnit | None = None

    def coil(self, channel: int) -> bool:
        """The relay as the board has it now (its flash off-timers included)."""
        board = self.board
        assert board is not None
        return self.sim.call(lambda: board.is_on(channel, self.sim.loop.time()))

    def stop(self) -> None:
        for server in (self.pm_tcp, self.pm_rtu, self.relay):
            if server is not None:
                with contextlib.suppress(Exception):
                    self.sim.run(server.stop())
        self.sim.close()


def start_servers(
    pm_tcp_units: int = 0, pm_rtu_units: int = 0, relay: bool = False, rtu_gap_s: float = 0.05
) -> Servers:
    sim = SimThread()
    servers = Servers(sim)
    if pm_tcp_units:
        servers.pm_tcp = TcpServer(pm_units(range(1, pm_tcp_units + 1)))
        sim.run(servers.pm_tcp.start())
    if pm_rtu_units:
        servers.pm_rtu = RtuPtyServer(pm_units(range(1, pm_rtu_units + 1)), gap_s=rtu_gap_s)
        sim.run(servers.pm_rtu.start())
    if relay:
        servers.board = RelayBoardUnit(1, channels=8, flash_base=0x0200)
        servers.relay = TcpServer([servers.board])
        sim.run(servers.relay.start())
    return servers


def pm_devices(
    bus: str, n: int, interval: float, timeout: float = 0.5, retries: int = 0
) -> list[dict[str, Any]]:
    return [
        {
            "id": f"pm-{i}",
            "bus": bus,
            "profile": "generic-pm",
            "slave_id": i,
            "interval": interval,
            "overrides": {"timeout": timeout, "retries": retries},
        }
        for i in range(1, n + 1)
    ]


def write_site(
    path: Path,
    mqtt_port: int,
    servers: Servers,
    devices: list[dict[str, Any]] | None = None,
    actuators: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> Path:
    """A site.yaml for ``servers``; ``extra`` overrides top-level sections."""
    buses: list[dict[str, Any]] = []
    if servers.pm_tcp is not None:
        buses.append(
            {"id": "tcp-1", "type": "tcp", "host": "127.0.0.1", "port": servers.pm_tcp.port}
        )
    if servers.pm_rtu is not None:
        buses.append({"id": "rs485-1", "type": "rtu", "port": servers.pm_rtu.path})
    if servers.relay is not None:
        buses.append(
            {"id": "relays", "type": "tcp", "host": "127.0.0.1", "port": servers.relay.port}
        )
    cfg: dict[str, Any] = {
        "site": SITE,
        "gateway": "gw",
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "reconnect_min": 0.2, "reconnect_max": 1},
        "buses": buses,
        "devices": devices or [],
        "actuators": actuators or [],
        "outbox": {"path": str(path.parent / "outbox.db")},
        "status": {"interval": "1s"},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# ------------------------------------------------------------------ the agent


class AgentProcess:
    """``dustgate agent --config X`` in a child process."""

    def __init__(self, config: Path, log_path: Path | None = None) -> None:
        self.config = config
        self.log_path = log_path or config.parent / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        log = self.log_path.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "agent", "--config", str(self.config)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        log.close()
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Cleanup: SIGTERM, then SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.terminate(10)
        except subprocess.TimeoutExpired:
            self.kill()


# ------------------------------------------------------------------ the broker side


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float  # time.time() on arrival

    def json(self) -> Any:
        return json.loads(self.payload)


class Watcher:
    """Records everything under ``dustgate/v1/#`` on a persistent session."""

    _ids = itertools.count()

    def __init__(self, port: int, topic: str = "dustgate/v1/#") -> None:
        self.port = port
        self.topic = topic
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=f"watcher-{os.getpid()}-{next(self._ids)}",
            clean_session=False,
            protocol=paho.MQTTv311,
        )
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()

    def _on_connect(self, client: paho.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if not flags.session_present:
            client.subscribe(self.topic, qos=1)
        else:
            self._subscribed.set()

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Received(msg.topic, bytes(msg.payload), msg.retain, time.time()))

    def start(self) -> Watcher:
        self.client.connect("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise AssertionError("watcher could not subscribe")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.messages)

    def on(self, suffix: str) -> list[Received]:
        return [m for m in self.snapshot() if m.topic.endswith(suffix)]

    def telemetry(self, device: str) -> list[dict[str, Any]]:
        return [m.json() for m in self.on(f"/{device}/telemetry")]

    def last(self, suffix: str) -> dict[str, Any] | None:
        got = self.on(suffix)
        return got[-1].json() if got else None

    def status(self) -> dict[str, Any] | None:
        return self.last("/gateway/gw/status")

    def acks(self, actuator: str) -> list[dict[str, Any]]:
        return [m.json() for m in self.on(f"/{actuator}/ack")]

    def ack_for(self, actuator: str, cmd_id: str, timeout: float = 10.0) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((a for a in self.acks(actuator) if a["cmd_id"] == cmd_id), None)

        return wait_until(find, timeout, f"ack of {cmd_id} on {actuator}")

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos).wait_for_publish(5)


def command(
    actuator: str, cmd_id: str, action: str, lease_s: float | None = None
) -> tuple[str, bytes]:
    doc: dict[str, Any] = {"id": cmd_id, "action": action, "source": "rule"}
    if lease_s is not None:
        doc["lease_s"] = lease_s
    return f"dustgate/v1/{SITE}/{actuator}/cmd", json.dumps(doc).encode()


def seq_report(readings: list[dict[str, Any]]) -> tuple[list[int], dict[int, set[int]]]:
    """(missing seqs in 0..max, seq -> distinct ts seen)."""
    by_seq: dict[int, set[int]] = {}
    for r in readings:
        by_seq.setdefault(r["seq"], set()).add(r["ts"])
    top = max(by_seq, default=-1)
    return [s for s in range(top + 1) if s not in by_seq], by_seq


def first_seen_order(readings: list[dict[str, Any]]) -> list[int]:
    """Seqs in arrival order, duplicates dropped (a redelivery may repeat older ones)."""
    seen: set[int] = set()
    out = []
    for r in readings:
        if r["seq"] not in seen:
            seen.add(r["seq"])
            out.append(r["seq"])
    return out
