"""``dustgate agent --config site.yaml``: the edge agent of one site.

Wiring only: bus schedulers (``gateway.scheduler``) read devices and hand
each result here; a result becomes a telemetry message with its read time,
a per-device ``seq`` and a data-quality status, and goes into the outbox
(``gateway.outbox``), from which the MQTT session (``gateway.session``)
publishes it. Commands from the broker go to the actuator controllers
(``gateway.actuators``). A tick every 0.5 s enforces leases and the broker grace,
publishes the retained status, and feeds the systemd watchdog.

Per reading this is the hot path, so the telemetry JSON is written by
:func:`encode_telemetry` (plain ``json``, the same document as the
``gateway.protocol.Telemetry`` model, checked against it by a test) after
the values have been checked for what the wire requires.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

import aiomqtt

from drivers.errors import DriverError
from gateway import __version__
from gateway import protocol as p
from gateway.actuators import ActuatorController
from gateway.backoff import Backoff
from gateway.backoffstore import FILE_NAME as BACKOFF_FILE
from gateway.backoffstore import BackoffStore
from gateway.calibration import Factors, calibrate
from gateway.config import ModbusDevice, SiteConfig, UartDevice, device_status_mode
from gateway.configfile import ConfigError
from gateway.devices import (
    UartLink,
    modbus_client_for,
    modbus_poll,
    modbus_probe,
    modbus_spec,
    model_name,
    poll_budget,
    uart_poll,
    uart_reader,
)
from gateway.logthrottle import ThrottledLog
from gateway.outbox import Outbox
from gateway.quality import StuckTracker, assess
from gateway.scheduler import BusScheduler
from gateway.session import AgentSession
from gateway.uplinks.hj212_link import Hj212Uplink

log = logging.getLogger("dustgate.agent")
peer_log = ThrottledLog(log)  # what a broker peer can make us log: one line per kind a minute

TICK_S = 0.5


class Agent:
    def __init__(self, site: SiteConfig, base_dir: Path | None = None) -> None:
        self.site = site
        self.started = time.monotonic()
        base = base_dir or Path.cwd()
        path = site.outbox.path if site.outbox.path.is_absolute() else base / site.outbox.path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(
            path,
            max_rows=site.outbox.max_rows,
            max_age_s=site.outbox.max_age,
            commit_interval_s=site.outbox.commit_interval,
            synchronous=site.outbox.synchronous,
        )
        self.backoff = BackoffStore(path.with_name(BACKOFF_FILE))
        # commands_refused: refusals no actuator counts (unknown actuator, bad topic);
        # commands_bad: malformed payloads (also refused, and counted by their actuator)
        self.counters = {
            "commands_refused": 0,
            "commands_bad": 0,
            "readings": 0,
            "poll_errors": 0,
            "values_rejected": 0,  # non-finite values (float registers holding NaN/inf)
        }
        self.buses: dict[str, BusScheduler] = {}
        self._devices: dict[str, ModbusDevice | UartDevice] = {}
        self._models: dict[str, str | None] = {}
        self._stuck: dict[str, StuckTracker] = {}
        self._topics: dict[str, str] = {}
        self._plain: set[str] = set()  # devices without quality checks (the fast path)
        self._cal: dict[str, dict[str, Factors]] = {}  # device -> metric -> calibration
        self._names_ok: dict[str, object] = {}  # device -> keys of its last valid reading
        self._names_warned: set[str] = set()
        self.actuators: dict[str, ActuatorController] = {}
        # upward reporting (HJ 212); each keeps its own connection and backlog
        self.uplinks = [
            Hj212Uplink(settings, site.site, store_path=path) for settings in site.uplinks
        ]
        will = aiomqtt.Will(
            p.status_topic(site.site, site.gateway),
            p.encode(self._status("offline")),
            qos=1,
            retain=True,
        )
        self.session = AgentSession(
            settings=site.mqtt,
            client_id=site.mqtt.client_id or f"dustgate-{site.site}-{site.gateway}",
            outbox=self.outbox,
            will=will,
            subscriptions=[p.subscription("cmd", site.site)],
            on_message=self._on_message,
            on_connect=self._on_connect,
        )
        self._build()
        self._tasks: set[asyncio.Task[object]] = set()

    # ------------------------------------------------------------ building

    def _build(self) -> None:
        site = self.site
        search = site.profile_search()
        clients = {}
        for bus in site.buses:
            client = modbus_client_for(bus)
            clients[bus.id] = client
            self.buses[bus.id] = BusScheduler(
                bus.id,
                client,
                self._on_result,
                device_backoff=Backoff(base=min(2.0, bus.backoff_max), maximum=bus.backoff_max),
                link_backoff=Backoff(
                    base=min(1.0, bus.backoff_max), maximum=min(60.0, bus.backoff_max)
                ),
                on_backoff=self.backoff.update,
            )
        for dev in site.devices:
            if not dev.enabled:
                continue
            self._devices[dev.id] = dev
            model: str | None = model_name(dev)[:64]
            why = p.tag_text_problem(model) if model else "it is empty"
            if why is not None:  # a profile's file name: the engine would refuse every reading
                log.error("%s: model %r is not sent (%s)", dev.id, model, why)
                model = None
            self._models[dev.id] = model
            self._topics[dev.id] = p.telemetry_topic(site.site, dev.id)
            q = dev.quality
            if not q.valid_range and not q.stuck_after and device_status_mode(dev) is None:
                self._plain.add(dev.id)
            self._stuck[dev.id] = StuckTracker()
            factors = dev.calibration_factors()
            if factors:
                self._cal[dev.id] = factors
            if isinstance(dev, ModbusDevice):
                spec = modbus_spec(dev, search)
                sched = self.buses[dev.bus]
                sched.pause_after_connect = max(sched.pause_after_connect, spec.pause_after_connect)
                sched.add_device(
                    dev.id,
                    dev.interval,
                    modbus_poll(clients[dev.bus], spec),
                    poll_budget(spec),
                    probe=modbus_probe(clients[dev.bus], spec),
                    probe_hold=spec.timeout,
                    resume=self.backoff.resume(dev.id),
                )
            else:
                reader = uart_reader(dev)
                sched = BusScheduler(f"uart:{dev.id}", UartLink(reader), self._on_result)
                sched.add_device(
                    dev.id, dev.interval, uart_poll(dev, reader), dev.timeout * 2 + 1.0
                )
                self.buses[f"uart:{dev.id}"] = sched
        from drivers.profiles import resolve_profile
        from drivers.relay import RelayOutput

        for act in site.actuators:
            overrides = dict(act.overrides)
            if act.slave_id is not None:
                overrides["slave_id"] = act.slave_id
            profile = resolve_profile(act.profile, overrides, search)
            relay = RelayOutput.from_profile(clients[act.bus], profile, act.channel)
            self.actuators[act.id] = ActuatorController(
                site.site, act, relay, self.buses[act.bus], self.session.post
            )

    # ------------------------------------------------------------ readings

    def _on_result(
        self,
        device_id: str,
        wall: float,
        values: dict[str, float] | None,
        error: DriverError | None,
    ) -> None:
        dev = self._devices.get(device_id)
        if dev is None:
            return
        flags = None
        factors = self._cal.get(device_id)
        if factors is not None and values is not None:
            values = calibrate(values, factors)
        if error is not None or values is None:
            self.counters["poll_errors"] += 1
            status, values = p.Status.COMM_ERROR, {}
        elif device_id in self._plain and self._names_ok.get(device_id) == values.keys():
            # no quality checks configured: only what the wire needs
            status = p.Status.OK
            if not all(math.isfinite(v) for v in values.values()):
                values, flags = self._checked(device_id, values)
                status = p.Status.FAULT if not values else p.Status.OK
        else:
            values, flags = self._checked(device_id, values)
            status, flags = assess(
                values,
                wall,
                self._stuck[device_id],
                dev.quality.valid_range,
                dev.quality.stuck_after,
                dev.quality.stuck_metrics,
                device_status_mode(dev),
                flags,
            )
        now = time.time()
        # Commit what is due first (this reading waits for the next commit), so
        # the session is woken only when there are new publishable rows. Not
        # between next_seq and put: a seq must be saved with its row, or a
        # crash would leave a gap.
        if self.outbox.maybe_commit(now):
            self.session.notify_data()
        seq = self.outbox.next_seq(device_id)
        ts = p.now_ms(wall)
        cal = None
        if factors is not None and values:
            cal = {m: (f.scale, f.offset) for m, f in factors.items() if m in values} or None
        payload = encode_telemetry(
            ts, seq, values, status, flags, self._models[device_id], dev.interval, cal
        )
        self.outbox.put(device_id, self._topics[device_id], payload, ts, now)
        self.counters["readings"] += 1
        if self.uplinks:
            reading = p.Telemetry.model_construct(
                ts=ts, seq=seq, values=values, status=status, flags=flags, model=None
            )
            for uplink in self.uplinks:
                uplink.on_reading(device_id, reading)

    def _checked(
        self, device_id: str, values: dict[str, float]
    ) -> tuple[dict[str, float], dict[str, p.Status] | None]:
        """Drop what the wire cannot carry: non-finite values (flagged ``fault``) and
        metric names outside ``[a-z0-9_]{1,32}`` (a profile mistake, logged once)."""
        if self._names_ok.get(device_id) != values.keys():
            bad = [k for k in values if not _METRIC_NAME.match(k)]
            if bad:
                if device_id not in self._names_warned:
                    self._names_warned.add(device_id)
                    log.error("%s: metric names %s invalid on the wire: dropped", device_id, bad)
                values = {k: v for k, v in values.items() if k not in bad}
            else:
                self._names_ok[device_id] = values.keys()
        if all(math.isfinite(v) for v in values.values()):
            return values, None
        # a float register's NaN/inf (drivers.modbus decodes it to NaN): never a value
        flags = {k: p.Status.FAULT for k, v in values.items() if not math.isfinite(v)}
        self.counters["values_rejected"] += len(flags)
        return {k: v for k, v in values.items() if k not in flags}, flags

    # ------------------------------------------------------------ commands

    def _on_message(self, topic: str, payload: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._handle_command(topic, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle_command(self, topic: str, payload: bytes) -> None:
        try:
            t = p.parse_topic(topic)
        except p.ProtocolError as exc:
            self.counters["commands_refused"] += 1
            peer_log.warning("bad-topic", "ignored message on %.200s: %.200s", topic, exc)
            return
        if t.kind != "cmd" or t.name is None:
            return
        ctl = self.actuators.get(t.name)
        if t.site != self.site.site or ctl is None:
            self.counters["commands_refused"] += 1
            peer_log.warning(
                "foreign-command",
                "refused command on %.200s: not an actuator of site %s",
                topic,
                self.site.site,
            )
            return
        try:
            cmd = p.decode(p.Command, payload)
        except p.ProtocolError as exc:
            self.counters["commands_bad"] += 1
            await ctl.refuse(_cmd_id_hint(payload), f"malformed command: {exc}")
            return
        await ctl.handle_command(cmd)

    # ------------------------------------------------------------ status

    def _status(self, state: str = "online") -> p.GatewayStatus:
        devices = {}
        for sched in self.buses.values():
            for slot in sched.devices.values():
                devices[slot.id] = p.DeviceHealth(
                    state=sched.health(slot),  # type: ignore[arg-type]
                    last_ok_ts=p.now_ms(slot.last_ok_wall) if slot.last_ok_wall else None,
                    errors=slot.errors,
                    consecutive_failures=slot.failures,
                    last_error=slot.last_error,
                    poll_interval_s=slot.interval,
                )
        stats = self.outbox.stats()
        return p.GatewayStatus(
            state=state,  # type: ignore[arg-type]
            ts=p.now_ms(time.time()),
            version=__version__,
            uptime_s=round(time.monotonic() - self.started, 1),
            backlog=stats.backlog,
            evicted=stats.evicted,
            poll_errors=self.counters["poll_errors"],
            refused_commands=self.counters["commands_refused"]
            + sum(a.refused for a in self.actuators.values()),
            devices=devices,
            uplinks={u.name: _uplink_health(u) for u in self.uplinks},
        )

    def publish_status(self) -> None:
        self.session.post(
            p.status_topic(self.site.site, self.site.gateway), p.encode(self._status()), 1, True
        )

    def _on_connect(self) -> None:
        # the will (offline) may have replaced our status while we were away
        self.publish_status()
        for ctl in self.actuators.values():
            ctl.publish_state(force=True)

    # ------------------------------------------------------------ run

    async def run(self, stop: asyncio.Event) -> None:
        notify = SdNotify()
        async with asyncio.TaskGroup() as tg:
            workers = [tg.create_task(s.run()) for s in self.buses.values()]
            workers.append(tg.create_task(self.session.run()))
            workers.extend(tg.create_task(u.run()) for u in self.uplinks)
            for ctl in self.actuators.values():
                await ctl.apply(force=True)  # a known OFF at start-up
            notify.send("READY=1")
            last_status = 0.0
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(TICK_S):
                        await stop.wait()
                stats = self.session.stats
                # concurrently: a relay on a stalled bus must not delay the others
                await asyncio.gather(
                    *(
                        ctl.tick(self.session.connected, stats.down_since)
                        for ctl in self.actuators.values()
                    )
                )
                if self.outbox.maybe_commit(time.time()):
                    self.session.notify_data()
                if time.monotonic() - last_status >= self.site.status.interval:
                    last_status = time.monotonic()
                    self.publish_status()
                notify.send("WATCHDOG=1")
            notify.send("STOPPING=1")

            async def off(ctl: ActuatorController) -> None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        await ctl.shutdown()

            await asyncio.gather(*(off(ctl) for ctl in self.actuators.values()))
            self.session.post(
                p.status_topic(self.site.site, self.site.gateway),
                p.encode(self._status("offline")),
                1,
                True,
            )
            await self.session.flush(timeout=3.0)
            for w in workers:
                w.cancel()
        self.outbox.close()


_METRIC_NAME = re.compile(r"^[a-z0-9_]{1,32}$")
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def encode_telemetry(
    ts: int,
    seq: int,
    values: dict[str, float],
    status: p.Status,
    flags: dict[str, p.Status] | None,
    model: str | None,
    interval_s: float | None = None,
    cal: dict[str, tuple[float, float]] | None = None,
) -> bytes:
    """The JSON of ``p.encode(p.Telemetry(...))`` without building a pydantic model.

    This runs for every reading; the caller has already made sure of what the
    model would check (finite values, metric names, model length). A test
    compares it with the pydantic encoding on random readings.
    """
    doc: dict[str, object] = {"ts": ts, "seq": seq, "values": values, "status": status.value}
    if flags:
        doc["flags"] = {k: v.value for k, v in flags.items()}
    if model is not None:
        doc["model"] = model
    if interval_s is not None:
        doc["interval_s"] = interval_s
    if cal:
        doc["cal"] = cal
    return _dumps(doc).encode()


def _cmd_id_hint(payload: bytes) -> str:
    if len(payload) > 16 * p.MAX_PAYLOAD:
        return ""  # not worth parsing just to quote an id
    try:
        doc = json.loads(payload)
        if isinstance(doc, dict) and isinstance(doc.get("id"), str):
            return str(doc["id"])[:64]
    except (ValueError, UnicodeDecodeError, RecursionError):
        pass
    return ""


class SdNotify:
    """systemd notifications (READY, WATCHDOG) when run under Type=notify."""

    def __init__(self) -> None:
        addr = os.environ.get("NOTIFY_SOCKET")
        self._addr = ("\0" + addr[1:]) if addr and addr.startswith("@") else addr
        self._sock: socket.socket | None = None
        if self._addr:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def send(self, msg: str) -> None:
        if self._sock and self._addr:
            with contextlib.suppress(OSError):
                self._sock.sendto(msg.encode(), self._addr)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dustgate agent", description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", type=Path, required=True, help="site.yaml")
    parser.add_argument("--log-level", default=os.environ.get("DUSTGATE_LOG", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from gateway.config import load_site_config

    try:
        site = load_site_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    agent = Agent(site, base_dir=args.config.resolve().parent)

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await agent.run(stop)

    asyncio.run(runner())
    return 0


def _uplink_health(uplink: Hj212Uplink) -> p.UplinkHealth:
    s = uplink.stats()
    skew = s["platform_skew"]
    return p.UplinkHealth(
        connected=bool(s["connected"]),
        backlog=int(s["backlog"] or 0),
        evicted=int(s["evicted"] or 0),
        records_sent=int(s["records_sent"] or 0),
        link_timeouts=int(s["link_timeouts"] or 0),
        platform_skew_s=None if skew is None else float(skew),
    )
