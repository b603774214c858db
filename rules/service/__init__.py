"""``dustgate rules --config rules.yaml``: the rule engine as a long-running MQTT service.

The decisions are made by the pure :class:`rules.core.engine.Engine`; this module
is the imperative shell around it:

- **MQTT 5** (aiomqtt, persistent session so QoS 1 readings queued while the
  service restarts still reach InfluxDB). Subscriptions, QoS 1, per served
  site (``sites:``) or ``+``: ``telemetry`` (into the engine and the sink),
  ``state`` (actuator changes -> ``actuator`` points), ``status`` (gateway
  health -> ``gateway`` points), ``events`` (agent events -> ``rule_event``
  points; *no local*, our own events are written directly) and ``override``
  (:mod:`rules.service.override`). ``service: {shared_group: G}`` in rules.yaml (or
  ``--shared-group G``, which wins) subscribes telemetry, state, status and
  events as ``$share/G/...`` to spread sites over several engines.
  Subscriptions dropped from the config are unsubscribed on the next start
  (they are remembered in the state file, the session being persistent).
- **Actions -> wire**: ``LeaseOn`` -> ``Command(action="on", lease_s, ...)``
  on ``{site}/{actuator}/cmd`` (QoS 1, MQTT 5 message expiry = lease_s: a
  command is never delivered after its lease would have ended),
  ``SwitchOff`` -> an ``off`` command, ``EmitEvent`` -> ``{site}/events``
  (and the sink), ``Notify`` -> :class:`rules.service.notify.Notifier`. While the
  broker is away, commands and events are dropped and counted (a late
  command is worse than none: leases run out on the agent by themselves).
- **Bad input** never crashes or sprays: undecodable payloads and topics
  (``decode_errors``, and ``refused_<reason>`` per
  ``gateway.protocol.REFUSAL_REASONS``: a wrong JSON type, a non-finite or
  out-of-range number, a string InfluxDB could not store as it is ...),
  readings stamped more than ``max_future_s`` ahead of our clock
  (``future_ts``: one such reading would otherwise make every later, correct
  reading of that device look out of order), telemetry for a site we do not
  serve (``other_site``, not stored either); the engine itself drops
  duplicates / out-of-order readings and leaves values outside their
  plausibility limits (``rules.core.limits``) out of its windows; those are
  stored flagged (``<metric>_flag=over_range`` over the upper limit, HJ 212
  ``T``, else ``fault``; counted as ``stored_<flag>``). Readings of devices no
  rule reads are still stored.
- **Timers**: ``engine.tick(now)`` every ``tick_interval`` (1 s).
- **Session end** (stop, resubscribe, lost connection): paho acknowledged
  every message it queued, so the broker will not send those again; after
  the disconnect they are stored and sunk (rules not evaluated: the next
  tick does), with the one aiomqtt's cancelled iterator had taken
  (``handled_after_session``).
- **Hot path**: each reading is evaluated as it arrives (decision latency);
  while a backlog of ``COALESCE_BACKLOG`` or more messages is queued (after a
  reconnect, a burst) telemetry is held back undecoded, then decoded,
  checked, sunk and stored into the windows in one batch just before the
  rules are evaluated, once per ``COALESCE_MAX`` messages / ``COALESCE_S``
  or when the backlog is gone (a tight loop over a thousand readings runs
  far faster than the same work interleaved with the MQTT client's: each
  keeps its own working set in the CPU caches; any other message, and any
  use of the engine, handles them first). Messages already queued by the
  client are taken in batches (``gateway.mqttclient.Inbox``), not one by one
  through aiomqtt's iterator, whose per-message task and wait cost more than
  the engine's own work. TCP_NODELAY is set on the broker socket (paho does
  not), so a command does not wait for the ACK of our previous packet.
- **State**: ``engine.snapshot()`` is written atomically (temp file, fsync,
  rename, fsync of the directory) to ``<state_dir>/engine-state.json`` (a
  relative ``state_dir`` is relative to the rules file's directory) when
  it changed (checked every ``persist_interval``) and on shutdown, and
  restored on start, so a restart in the middle of ``for`` or a cooldown
  resumes the timers. An unreadable state file is kept aside as
  ``engine-state.json.bad`` and the engine starts fresh.
- **Hot reload**: the rules file is polled (mtime, size, inode; then a hash
  of the text) every ``watch_interval`` and must be unchanged for one more
  poll before it is read (no half-written files). Valid -> ``engine.reload``
  (unchanged rules keep their state), a ``reload`` event; invalid -> every
  ``file:line:col`` error logged, a ``reload_error`` event (warning) and the
  running rules stay. Changes of ``mqtt:``, ``influx:`` or ``state_dir:``
  need a restart (logged); changed ``sites:`` or ``service.shared_group``
  resubscribe.
- **Health**: every ``stats_interval`` (10 s) a ``gateway`` point tagged
  ``engine=<name>``: ``messages_per_s``, cumulative ``messages``,
  ``decode_errors``, ``dropped``, ``commands_sent``, ``events_sent``,
  ``publish_failures``, ``notify_*`` and the sink's counters as ``sink_*``;
  a summary log line every minute.
- **Stop**: SIGTERM/SIGINT -> timers stop, then an explicit OFF (reason
  ``engine stopping``) for every actuator the engine holds on, sent while the
  session is still up (the leases would run out on the agent anyway, but the
  cannons should stop now); the engine records those actuators as off, so the
  restarted engine switches them on again with its next renewal (within
  ``lease_s / 3``) if a rule still holds them -- rule timers resume as saved.
  Then state saved, notifications given a few seconds, sink flushed (unsent
  points go to its disk spool). A killed engine sends nothing: its leases run
  out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import os
import random
import re
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway import protocol as p
from gateway.backoff import Backoff
from gateway.configfile import ConfigError
from gateway.mqttclient import Inbox, make_client
from rules.core.config import SHARED_GROUP_PATTERN, RulesFile, load_rules_file
from rules.core.engine import (
    Action,
    DeviceIngest,
    EmitEvent,
    Engine,
    LeaseOn,
    Notify,
    SwitchOff,
    rule_digest,
)
from rules.core.limits import outside
from rules.service.notify import Message, Notifier
from rules.service.override import (
    EVENT_APPLIED,
    EVENT_REFUSED,
    MAX_AGE_S,
    OverrideRequest,
    decode_request,
    override_subscription,
    parse_override_topic,
)
from rules.sink.lineprotocol import FieldValue, encode_line
from rules.sink.points import GATEWAY, actuator_line, event_line, gateway_line, telemetry_line

log = logging.getLogger("rules.service")

STATE_FILE = "engine-state.json"
STATE_VERSION = 1
PUBLISH_TIMEOUT_S = 10.0
OFF_EXPIRY_S = 60  # an OFF that could not be delivered within a minute is moot
RELEASE_TIMEOUT_S = 3.0  # stopping: how long the OFFs for held actuators may take
EVENT_EXPIRY_S = 3600
WARN_EVERY_S = 60.0  # bad-input warnings: at most one per kind per minute
SUMMARY_EVERY_S = 60.0
TOPIC_CACHE_MAX = 100_000
_OK = p.Status.OK
COALESCE_BACKLOG = 64  # queued messages that count as a backlog
COALESCE_MAX = 5000  # readings stored before the rules are evaluated, with a backlog
COALESCE_S = 0.25  # ... or this long
DEFER_MAX = 10_000  # held-back telemetry handled at once even if nobody evaluates
_BYTES = (bytes, bytearray)


def _payload(message: aiomqtt.Message) -> bytes:
    """The payload as bytes (paho gives bytes; aiomqtt's type allows more)."""
    payload = message.payload
    if not isinstance(payload, _BYTES):
        return b"" if payload is None else str(payload).encode()
    return bytes(payload)


class LineSink(Protocol):
    """What the service needs of :class:`rules.sink.writer.InfluxSink`."""

    def add(self, line: str | None) -> None: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...


@dataclass
class ServiceOptions:
    tick_interval: float = 1.0
    persist_interval: float = 5.0
    persist_max_age: float = 60.0  # rewrite at least this often while counters move
    watch_interval: float = 1.0
    stats_interval: float = 10.0
    max_future_s: float = 300.0
    client_id: str | None = None  # default: mqtt.client_id or dustgate-rules-<host>
    shared_group: str | None = None
    engine_name: str | None = None  # the `engine` tag of the health points


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int = 1
    expiry_s: int | None = None
    kind: str = "event"  # "command" | "event": for counters and logs


# ------------------------------------------------------------------ helpers


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # not every file system lets us fsync a directory
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class FileWatch:
    """Change detection for the rules file by polling (robust on SD cards and editors).

    :meth:`poll` returns the new text once a change has been seen on two
    consecutive polls with the same (mtime, size, inode) and the text's hash
    differs from the last one returned or given as ``text``.
    """

    def __init__(self, path: Path, text: str | None = None) -> None:
        self.path = path
        self._sig = self._stat()
        self._pending: tuple[int, int, int] | None = None
        self._hash = _digest(text) if text is not None else None
        self.missing = False

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def poll(self) -> str | None:
        sig = self._stat()
        if sig is None:
            if not self.missing:
                log.warning("rules file %s is missing; keeping the running rules", self.path)
            self.missing = True
            return None
        self.missing = False
        if sig == self._sig:
            self._pending = None
            return None
        if sig != self._pending:
            self._pending = sig  # wait one more poll: the editor may still be writing
            return None
        self._sig, self._pending = sig, None
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("cannot read %s: %s; keeping the running rules", self.path, exc)
            return None
        h = _digest(text)
        if h == self._hash:
            return None
        self._hash = h
        return text


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def served_sites(rf: RulesFile) -> frozenset[str]:
    """Sites whose telemetry we take: ``sites:``, or every site a rule reads
    (its own, its background's and its interlocks')."""
    if rf.sites is not None:
        return frozenset(rf.sites)
    out: set[str] = set()
    for r in rf.rules:
        out.update(r.site)
        if r.relative_to is not None and r.relative_to.site:
            out.add(r.relative_to.site)
        out.update(il.site for il in r.unless if il.site)
    return frozenset(out)


def default_client_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())
    return f"dustgate-rules-{host}"[:64]


def set_nodelay(client: aiomqtt.Client) -> bool:
    """Disable Nagle on the client's socket (paho leaves it on): a small command
    must not wait for the ACK of the previous packet (tens of ms with delayed
    ACKs). Returns False if the socket is not reachable (nothing changes)."""
    paho_client = getattr(client, "_client", None)  # aiomqtt keeps paho's client here
    sock = paho_client.socket() if paho_client is not None else None
    if sock is None or not hasattr(sock, "setsockopt"):
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        return False
    return True


def _expiry_props(seconds: int) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = max(1, seconds)
    return props


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], timeout: float = 10.0) -> None:
    """Cancel ``tasks`` and wait for them, cancelling again while they live on.

    Python 3.11's ``asyncio.wait_for`` (used inside aiomqtt's publish) can
    swallow a cancellation that races with the awaited future completing.
    """
    pending = [t for t in tasks if not t.done()]
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for t in pending:
            t.cancel()
        await asyncio.wait(pending, timeout=0.1)
        pending = [t for t in pending if not t.done()]
    if pending:
        log.error("%d task(s) did not stop: %s", len(pending), [t.get_name() for t in pending])


# ------------------------------------------------------------------ service


@dataclass
class _Rate:
    last_t: float
    last_n: int = 0
    rate: float = 0.0


class RulesService:
    """The engine plus its MQTT, sink, notifier, persistence and reload shell.

    The synchronous methods (:meth:`on_message`, :meth:`on_tick`,
    :meth:`reload_text`, :meth:`apply`) take ``now`` and return the MQTT
    publishes to make; :meth:`run` is the asynchronous shell that does them.
    """

    def __init__(
        self,
        rules_path: Path,
        rules_file: RulesFile,
        options: ServiceOptions | None = None,
        *,
        sink: LineSink | None = None,
        notifier: Notifier | None = None,
        now: float | None = None,
        rules_text: str | None = None,
    ) -> None:
        self.rules_path = Path(rules_path)
        self.rules_file = rules_file
        self.options = options or ServiceOptions()
        self.sink = sink
        self.notifier = notifier if notifier is not None else Notifier(rules_file.notifiers)
        self.counters: Counter[str] = Counter()
        self.state_path = Path(rules_file.state_dir) / STATE_FILE
        self.client_id = self.options.client_id or rules_file.mqtt.client_id or default_client_id()
        self.engine_name = self.options.engine_name or self.client_id
        self._boot = format(int(time.time()) % 36**6, "x")
        self._off_seq = 0
        self._served = served_sites(rules_file)
        # telemetry topic -> (site, device, the engine's ingest for that device or None);
        # cleared when the rules are reloaded (the engine's device bindings change)
        self._topic_cache: dict[str, tuple[str, str, DeviceIngest | None]] = {}
        # (site, device) -> read interval from the gateways' status, stored with readings
        # that do not carry their own (gateways from before telemetry had interval_s)
        self._intervals: dict[tuple[str, str], float] = {}
        self._warned: dict[str, tuple[float, int]] = {}
        self._old_subscriptions: list[str] = []
        t = time.time() if now is None else now
        # telemetry held back during a backlog, undecoded (see `engine`): where, payload, now
        self._deferred: list[tuple[tuple[str, str, DeviceIngest | None], bytes, float]] = []
        self._engine = self._restore(t)
        self._saved_key: str | None = None
        self._state_lock = threading.Lock()
        self._saved_at = -1e18
        self.watch = FileWatch(self.rules_path, rules_text)
        self._client: aiomqtt.Client | None = None
        self._publishing: set[asyncio.Task[None]] = set()
        self._reconnect = asyncio.Event()
        self._release = asyncio.Event()  # stopping: switch off what we hold, then disconnect
        self._rate = _Rate(time.monotonic())
        self._last_summary = time.monotonic()
        self.connected = asyncio.Event()  # set while the broker session is up

    # ----------------------------------------------------------- state file

    def _restore(self, now: float) -> Engine:
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            log.info("no saved state at %s: starting fresh", self.state_path)
            return Engine(self.rules_file, now)
        except OSError as exc:
            log.warning("cannot read %s (%s): starting fresh", self.state_path, exc)
            return Engine(self.rules_file, now)
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
                raise ValueError(f"state file version {doc.get('version')!r} is not supported")
            subs = doc.get("subscriptions", [])
            self._old_subscriptions = [s for s in subs if isinstance(s, str)]
            engine = Engine.restore(self.rules_file, doc["engine"], now)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            bad = self.state_path.with_name(self.state_path.name + ".bad")
            log.error(
                "saved state %s is unreadable (%s): kept as %s, starting fresh",
                self.state_path,
                exc,
                bad,
            )
            with contextlib.suppress(OSError):
                os.replace(self.state_path, bad)
            return Engine(self.rules_file, now)
        busy = [
            f"{r}@{s}: {st.phase}" for (r, s), st in engine.states.items() if st.phase != "idle"
        ]
        log.info(
            "restored state from %s (saved %s)%s",
            self.state_path,
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(doc.get("saved_at", 0))),
            ("; resuming " + ", ".join(busy)) if busy else "",
        )
        return engine

    @property
    def engine(self) -> Engine:
        """The rule engine, with every deferred reading handled first: whatever reads or
        changes the engine (a tick, an override, a reload, a snapshot, counters) sees
        the readings in the order they came."""
        if self._deferred:
            self._store_deferred()
        return self._engine

    def _store_deferred(self) -> None:
        """Decode, check, sink and store the telemetry held back during a backlog, in
        the order it came (one tight loop: see the module's *Hot path*)."""
        deferred, self._deferred = self._deferred, []
        handle = self._telemetry_message
        for where, payload, now in deferred:
            try:
                handle(where, payload, now, False)
            except Exception:  # a bug must not cost the other readings
                self.counters["internal_errors"] += 1
                log.exception("storing a deferred reading failed")

    def state_snapshot(self, now: float) -> dict[str, Any]:
        """The state file's content as plain data (built on the event loop: consistent)."""
        snap = self.engine.snapshot()
        counters = snap.pop("counters", {})  # informative only: not a reason to rewrite
        return {
            "version": STATE_VERSION,
            "saved_at": now,
            "rules_file": str(self.rules_path),
            "subscriptions": self.subscriptions(),
            "counters": counters,
            "engine": snap,
        }

    def state_bytes_due(self, doc: dict[str, Any], force: bool = False) -> bytes | None:
        """The file bytes if the state changed since the last write (or ``force`` / max
        age), else None. Pure JSON work: may run in a thread."""
        key = json.dumps(doc["engine"], sort_keys=True, separators=(",", ":"))
        now = float(doc["saved_at"])
        stale = now - self._saved_at >= self.options.persist_max_age
        if not force and key == self._saved_key and not stale:
            return None
        self._saved_key, self._saved_at = key, now
        head = json.dumps({k: v for k, v in doc.items() if k != "engine"}, sort_keys=True)
        return f'{head[:-1]}, "engine": {key}}}'.encode()

    def save_state_due(self, now: float, force: bool = False) -> bytes | None:
        return self.state_bytes_due(self.state_snapshot(now), force)

    def _persist_doc(self, doc: dict[str, Any]) -> None:
        with self._state_lock:  # a cancelled save may still run while we shut down
            data = self.state_bytes_due(doc)
            if data is not None:
                try:
                    write_atomic(self.state_path, data)
                except OSError as exc:
                    self._saved_key = None  # try again next time
                    log.error("cannot save state to %s: %s", self.state_path, exc)

    def save_state(self, now: float) -> None:
        """Write the state now (blocking; used on shutdown)."""
        doc = self.state_snapshot(now)
        with self._state_lock:
            data = self.state_bytes_due(doc, force=True)
            assert data is not None
            write_atomic(self.state_path, data)

    # -------------------------------------------------------- subscriptions

    @property
    def shared_group(self) -> str | None:
        """The shared subscription group: ``--shared-group``, else rules.yaml ``service:``."""
        if self.options.shared_group is not None:
            return self.options.shared_group
        return self.rules_file.service.shared_group

    def subscriptions(self) -> list[str]:
        sites = sorted(self.rules_file.sites) if self.rules_file.sites is not None else ["+"]
        out = []
        group = self.shared_group
        share = f"$share/{group}/" if group else ""
        for s in sites:
            out.append(share + p.subscription("telemetry", s))
            out.append(share + p.subscription("state", s))
            out.append(share + p.subscription("status", s))
            out.append(share + p.subscription("events", s))
            out.append(override_subscription(s))
        return out

    def _subscribe_options(self, topic: str) -> SubscribeOptions:
        # our own events are written to the sink directly; no_local is not
        # allowed on shared subscriptions
        no_local = topic.endswith(f"/{p.EVENTS_SEGMENT}") and not topic.startswith("$share/")
        return SubscribeOptions(qos=1, noLocal=no_local)

    # -------------------------------------------------------------- inbound

    def _warn(self, kind: str, now: float, fmt: str, *args: object) -> None:
        """Log bad input at most once per kind per minute, with the count in between."""
        last, skipped = self._warned.get(kind, (-1e18, 0))
        if now - last >= WARN_EVERY_S:
            more = f" (+{skipped} more since the last warning)" if skipped else ""
            log.warning(fmt + more, *args)
            self._warned[kind] = (now, 0)
        else:
            self._warned[kind] = (last, skipped + 1)

    def on_message(
        self, topic: str, payload: bytes, now: float, evaluate: bool = True
    ) -> list[Publish]:
        """Handle one inbound message; never raises for bad input.

        ``evaluate=False`` holds a telemetry message of a known topic back, to be
        handled without evaluating the rules that read it once the engine is next
        used (the caller runs :meth:`on_tick` soon after: backlog coalescing).
        """
        self.counters["messages"] += 1
        where = self._topic_cache.get(topic)  # the hot path: a telemetry topic seen before
        if where is not None and not evaluate:
            # a backlog: handled in one batch before the next evaluation (see `engine`)
            deferred = self._deferred
            deferred.append((where, payload, now))
            if len(deferred) >= DEFER_MAX:
                self._store_deferred()
            return []
        if self._deferred:  # whatever comes next comes after them (sink lines included)
            self._store_deferred()
        if where is None:
            if not topic.endswith("/telemetry"):
                return self._other_message(topic, payload, now)
            where = self._telemetry_topic(topic)
            if where is None:
                self.counters["decode_errors"] += 1
                self.counters["refused_topic"] += 1
                self._warn("topic", now, "ignored message on malformed topic %r", topic[:200])
                return []
        return self._telemetry_message(where, payload, now, evaluate)

    def _telemetry_message(
        self,
        where: tuple[str, str, DeviceIngest | None],
        payload: bytes,
        now: float,
        evaluate: bool,
    ) -> list[Publish]:
        try:
            msg = p.decode(p.Telemetry, payload)
        except p.ProtocolError as exc:
            self.counters["decode_errors"] += 1
            self.counters[f"refused_{exc.reason}"] += 1
            self._warn(
                "telemetry",
                now,
                "dropped undecodable telemetry of %s/%s: %s",
                where[0],
                where[1],
                exc,
            )
            return []
        return self.on_telemetry(where[0], where[1], msg, now, evaluate, where[2])

    def _other_message(self, topic: str, payload: bytes, now: float) -> list[Publish]:
        try:
            if topic.endswith(f"/{p.EVENTS_SEGMENT}") or topic.endswith(("/state", "/status")):
                return self._other(p.parse_topic(topic), payload, now)
            if topic.endswith("/override"):
                site, actuator = parse_override_topic(topic)
                return self.on_override(site, actuator, decode_request(payload), now)
            raise p.ProtocolError(f"unexpected topic {topic!r}")
        except p.ProtocolError as exc:
            self.counters["decode_errors"] += 1
            self.counters[f"refused_{exc.reason}"] += 1
            self._warn("other", now, "dropped message on %s: %s", topic[:200], exc)
            return []

    def _telemetry_topic(self, topic: str) -> tuple[str, str, DeviceIngest | None] | None:
        """(site, device, ingest) of a valid telemetry topic, remembered; None if malformed."""
        try:
            t = p.parse_topic(topic)
        except p.ProtocolError:
            return None
        if t.kind != "telemetry" or not t.name:
            return None
        cache = self._topic_cache
        if len(cache) >= TOPIC_CACHE_MAX:  # bounded even if someone sprays random device ids
            cache.clear()
        where = cache[topic] = (t.site, t.name, self.engine.device_ingest(t.site, t.name))
        return where

    def on_telemetry(
        self,
        site: str,
        device: str,
        msg: p.Telemetry,
        now: float,
        evaluate: bool = True,
        ingest: DeviceIngest | None = None,
    ) -> list[Publish]:
        """One decoded reading, the second half of :meth:`on_message` (which has handled
        any telemetry held back before it). ``ingest``: the engine's ingest bound to
        this device (from :meth:`Engine.device_ingest`, cached per topic), else looked up."""
        if site not in self._served:
            self.counters["other_site"] += 1
            self._warn("site", now, "dropped telemetry from %s/%s: site not served", site, device)
            return []
        if msg.ts > (now + self.options.max_future_s) * 1000.0:
            self.counters["future_ts"] += 1
            self._warn(
                "future",
                now,
                "dropped reading of %s/%s stamped %.0fs in the future (clock wrong?)",
                site,
                device,
                msg.ts / 1000.0 - now,
            )
            return []
        sink = self.sink
        if sink is not None:
            stored = msg
            marks = outside(msg.values, self._engine.limits)  # implausible: stored flagged
            if marks:
                stored = self._flagged(msg, marks)
            iv = None if msg.interval_s is not None else self._intervals.get((site, device))
            sink.add(telemetry_line(site, device, stored, interval_s=iv))
        flags = msg.flags
        status = "ok" if msg.status is _OK else msg.status.value
        flag_map = {k: v.value for k, v in flags.items()} if flags else None
        if ingest is not None:
            actions = ingest(msg.ts / 1000.0, msg.seq, msg.values, now, status, flag_map, evaluate)
        else:  # a device no rule reads (counted by the engine), or not cached
            actions = self.engine.ingest_values(
                site, device, msg.ts / 1000.0, msg.seq, msg.values, now, status, flag_map, evaluate
            )
        return self.apply(actions, now) if actions else []

    def _flagged(self, msg: p.Telemetry, marks: dict[str, p.Status]) -> p.Telemetry:
        """``msg`` with its implausible values flagged (where the gateway said ok)."""
        flags = dict(msg.flags or {})
        for m, flag in marks.items():
            if msg.metric_status(m) is _OK:
                flags[m] = flag
                self.counters[f"stored_{flag.value}"] += 1
        return msg.model_copy(update={"flags": flags})

    def _other(self, t: p.Topic, payload: bytes, now: float) -> list[Publish]:
        sink = self.sink
        if t.kind == "state" and t.name:
            st = p.decode(p.ActuatorState, payload)
            self.counters["states"] += 1
            log.debug("%s/%s is %s (%s)", t.site, t.name, st.state, st.source)
            if sink is not None:
                sink.add(actuator_line(t.site, t.name, st))
        elif t.kind == "status" and t.name:
            gs = p.decode(p.GatewayStatus, payload)
            self.counters["statuses"] += 1
            if gs.state == "offline":
                log.warning("gateway %s of site %s is offline", t.name, t.site)
            if sink is not None:
                sink.add(gateway_line(t.site, t.name, gs))
            if len(self._intervals) >= TOPIC_CACHE_MAX:  # bounded whatever ids come in
                self._intervals.clear()
            for dev, health in gs.devices.items():
                if health.poll_interval_s and health.poll_interval_s > 0:
                    self._intervals[(t.site, dev)] = health.poll_interval_s
        elif t.kind == "events":
            ev = p.decode(p.Event, payload)
            self.counters["events_in"] += 1
            if sink is not None:
                sink.add(event_line(t.site, ev))
        else:
            raise p.ProtocolError(f"unexpected {t.kind} message")
        return []

    # ------------------------------------------------------------- override

    def on_override(
        self, site: str, actuator: str, req: OverrideRequest, now: float
    ) -> list[Publish]:
        if site not in self._served:
            return []  # another engine's site
        age = now - req.ts / 1000.0
        why = ""
        if age > MAX_AGE_S:
            why = f"request is {age:.0f}s old (limit {MAX_AGE_S:g}s)"
        elif self.rules_file.actuator(site, actuator) is None:
            why = f"actuator {site}/{actuator} is not declared in {self.rules_path.name}"
        if why:
            self.counters["override_refused"] += 1
            log.warning(
                "override %s of %s/%s by %s refused: %s", req.mode, site, actuator, req.who, why
            )
            ev = p.Event(
                ts=p.now_ms(now),
                kind=EVENT_REFUSED,
                text=f"override {req.mode} of {actuator} by {req.who} refused: {why}"[:1000],
                severity="warning",
                actuator=actuator,
                data={"request": req.id, "mode": req.mode, "who": req.who, "why": why},
            )
            return self.apply([EmitEvent(site, ev)], now)
        until = None if req.mode == "auto" or req.for_s is None else now + req.for_s
        try:
            actions = self.engine.set_override(site, actuator, req.mode, until, req.who, now)
        except (KeyError, ValueError) as exc:  # raced with a reload
            self.counters["override_refused"] += 1
            ev = p.Event(
                ts=p.now_ms(now),
                kind=EVENT_REFUSED,
                text=f"override refused: {exc}"[:1000],
                severity="warning",
                actuator=actuator,
                data={"request": req.id, "why": str(exc)[:200]},
            )
            return self.apply([EmitEvent(site, ev)], now)
        self.counters["overrides"] += 1
        log.warning(
            "override: %s/%s %s%s by %s%s",
            site,
            actuator,
            req.mode,
            f" for {req.for_s:g}s" if until is not None and req.for_s else "",
            req.who,
            f" ({req.reason})" if req.reason else "",
        )
        tagged: list[Action] = []
        for a in actions:
            if isinstance(a, EmitEvent) and a.event.kind == EVENT_APPLIED:
                data = dict(a.event.data or {})
                data["request"] = req.id
                if until is not None:
                    data["until"] = p.now_ms(until)
                if req.reason:
                    data["reason"] = req.reason
                a = EmitEvent(a.site, a.event.model_copy(update={"data": data}))
            tagged.append(a)
        return self.apply(tagged, now, override=True)

    # -------------------------------------------------------------- actions

    def on_tick(self, now: float) -> list[Publish]:
        actions = self.engine.tick(now)
        return self.apply(actions, now) if actions else []

    def apply(self, actions: Iterable[Action], now: float, override: bool = False) -> list[Publish]:
        """Turn engine actions into publishes (and sink lines, notifications)."""
        out: list[Publish] = []
        ts = p.now_ms(now)
        for a in actions:
            if isinstance(a, LeaseOn):
                source = "rule" if a.rule is not None and not override else "override"
                cmd = p.Command(
                    id=a.cmd_id or self._off_id(a.rule),
                    action="on",
                    lease_s=a.lease_s,
                    reason=a.reason[:200],
                    source=source,  # type: ignore[arg-type]
                    ts=ts,
                    rule=a.rule,
                )
                level = logging.DEBUG if a.reason.endswith(": renew") else logging.INFO
                log.log(
                    level, "cmd %s/%s on, lease %gs: %s", a.site, a.actuator, a.lease_s, a.reason
                )
                out.append(
                    Publish(
                        p.cmd_topic(a.site, a.actuator),
                        p.encode(cmd),
                        1,
                        max(1, int(a.lease_s)),
                        "command",
                    )
                )
            elif isinstance(a, SwitchOff):
                cmd = p.Command(
                    id=self._off_id(a.rule),
                    action="off",
                    reason=a.reason[:200],
                    source="override" if override else "rule",
                    ts=ts,
                    rule=a.rule,
                )
                log.info("cmd %s/%s off: %s", a.site, a.actuator, a.reason)
                out.append(
                    Publish(
                        p.cmd_topic(a.site, a.actuator), p.encode(cmd), 1, OFF_EXPIRY_S, "command"
                    )
                )
            elif isinstance(a, EmitEvent):
                ev = a.event
                level = logging.INFO if ev.severity == "info" else logging.WARNING
                log.log(level, "event %s %s: %s", a.site, ev.kind, ev.text)
                if self.sink is not None:
                    self.sink.add(event_line(a.site, ev))
                out.append(
                    Publish(p.events_topic(a.site), p.encode(ev), 1, EVENT_EXPIRY_S, "event")
                )
            elif isinstance(a, Notify):
                self.counters["notify_requested"] += 1
                self.notifier.submit(Message(a.notifier, a.rule, a.site, a.text, a.severity, ts))
        return out

    def _off_id(self, rule: str | None) -> str:
        self._off_seq += 1
        return f"{rule or 'engine'}-off-{self._boot}-{self._off_seq}"[-64:]

    # --------------------------------------------------------------- reload

    def check_reload(self, now: float) -> list[Publish]:
        text = self.watch.poll()
        if text is None:
            return []
        return self.reload_text(text, now)

    def reload_text(self, text: str, now: float) -> list[Publish]:
        """Validate ``text`` as the new rules file; swap it in or report why not."""
        old = self.rules_file
        old_subscriptions = self.subscriptions()
        sites = sorted(self._served)
        try:
            new = load_rules_file(self.rules_path, text=text)
        except ConfigError as exc:
            self.counters["reload_errors"] += 1
            log.error(
                "rules file %s has %d error(s); keeping the running rules:",
                self.rules_path,
                len(exc.issues),
            )
            for issue in exc.issues:
                log.error("  %s", issue)
            lines = [str(i) for i in exc.issues]
            body = "\n".join(lines)
            text_ = f"rules not reloaded, {len(lines)} error(s); running rules kept:\n{body}"
            events: list[Action] = [
                EmitEvent(
                    s,
                    p.Event(
                        ts=p.now_ms(now),
                        kind="reload_error",
                        text=text_[:1000],
                        severity="warning",
                        data={"file": str(self.rules_path), "errors": lines[:20]},
                    ),
                )
                for s in sites
            ]
            return self.apply(events, now)
        old_d = {r.id: rule_digest(r) for r in old.rules}
        new_d = {r.id: rule_digest(r) for r in new.rules}
        added = sorted(set(new_d) - set(old_d))
        removed = sorted(set(old_d) - set(new_d))
        changed = sorted(r for r in set(old_d) & set(new_d) if old_d[r] != new_d[r])
        kept = len(new_d) - len(added) - len(changed)
        actions = self.engine.reload(new, now)
        self._topic_cache.clear()  # the engine's per-device ingest bindings are new
        self.rules_file = new
        self._served = served_sites(new)
        self.notifier.update(new.notifiers)
        self.counters["reloads"] += 1
        for what in ("mqtt", "influx", "state_dir"):
            if getattr(old, what) != getattr(new, what):
                log.warning(
                    "%s: changed in %s; restart the service to apply", what, self.rules_path
                )
        if self.subscriptions() != old_subscriptions:
            self._reconnect.set()  # sites or shared group changed: resubscribe
        parts = [f"{len(new_d)} rules, {kept} unchanged (state kept)"]
        for label, ids in (("added", added), ("changed", changed), ("removed", removed)):
            if ids:
                parts.append(f"{label}: {', '.join(ids)}")
        summary = f"rules reloaded from {self.rules_path.name}: " + "; ".join(parts)
        data: dict[str, Any] = {"added": added, "changed": changed, "removed": removed}
        out_actions: list[Action] = [
            EmitEvent(s, p.Event(ts=p.now_ms(now), kind="reload", text=summary[:1000], data=data))
            for s in sorted(self._served | set(sites))
        ]
        return self.apply([*out_actions, *actions], now)

    # ---------------------------------------------------------------- stats

    def stats_line(self, now: float) -> str:
        mono = time.monotonic()
        r = self._rate
        n = self.counters["messages"]
        dt = mono - r.last_t
        if dt > 0:
            r.rate = (n - r.last_n) / dt
        r.last_t, r.last_n = mono, n
        ec = self.engine.counters
        fields: dict[str, FieldValue] = {
            "messages_per_s": float(r.rate),
            "messages": int(n),
            "readings": int(ec["readings"]),
            "decode_errors": int(self.counters["decode_errors"]),
            "dropped": int(self.dropped()),
            "commands_sent": int(self.counters["commands_sent"]),
            "events_sent": int(self.counters["events_sent"]),
            "publish_failures": int(self.counters["publish_failures"]),
            "publish_dropped_offline": int(self.counters["publish_dropped_offline"]),
            "reloads": int(self.counters["reloads"]),
            "reload_errors": int(self.counters["reload_errors"]),
        }
        # why readings and messages were refused or left out (gateway.protocol, rules.core.limits)
        for k, v in self.counters.items():
            if k.startswith(("refused_", "stored_")):
                fields[k] = int(v)
        for k in ("non_finite", "below_limit", "over_limit"):
            fields[f"engine_{k}"] = int(ec[k])
        for k in ("sent", "failed", "retried", "dropped_full"):
            fields[f"notify_{k}"] = int(self.notifier.counters[k])
        # held back by the per-(site, rule) limit and folded into a later message: not lost
        fields["notify_suppressed"] = int(ec["notify_suppressed"])
        fields["notify_flushed"] = int(ec["notify_flushed"])
        counters = getattr(getattr(self.sink, "counters", None), "as_dict", None)
        if callable(counters):
            for k, v in counters().items():
                fields[f"sink_{k}"] = int(v)
        line = encode_line(GATEWAY, {"engine": self.engine_name}, fields, p.now_ms(now))
        assert line is not None
        return line

    def dropped(self) -> int:
        ec = self.engine.counters
        return (
            self.counters["other_site"]
            + self.counters["future_ts"]
            + ec["duplicate"]
            + ec["out_of_order"]
            + ec["other_site"]
        )

    def summary(self) -> str:
        ec = self.engine.counters
        return (
            f"{self._rate.rate:.1f} msg/s, {self.counters['messages']} messages, "
            f"{ec['readings']} readings, {self.counters['decode_errors']} decode errors, "
            f"{self.dropped()} dropped (dup {ec['duplicate']}, out of order "
            f"{ec['out_of_order']}, other site {self.counters['other_site']}, future "
            f"{self.counters['future_ts']}), {ec['below_limit'] + ec['over_limit']} "
            f"implausible, {ec['non_finite']} non-finite, "
            f"{ec['unknown_device']} from devices no rule reads, "
            f"{self.counters['commands_sent']} commands, {self.counters['events_sent']} events"
        )

    # ------------------------------------------------------------ the shell

    def _send(self, pubs: list[Publish]) -> None:
        if not pubs:
            return
        client = self._client
        if client is None:
            self.counters["publish_dropped_offline"] += len(pubs)
            for pub in pubs:
                if pub.kind == "command":
                    log.warning("broker unreachable: command to %s dropped", pub.topic)
            return
        for pub in pubs:
            # tasks start in creation order, so paho queues the publishes in order
            task = asyncio.create_task(self._publish(client, pub))
            self._publishing.add(task)
            task.add_done_callback(self._publishing.discard)

    async def _publish(self, client: aiomqtt.Client, pub: Publish) -> None:
        props = _expiry_props(pub.expiry_s) if pub.expiry_s else None
        try:
            await client.publish(
                pub.topic, pub.payload, qos=pub.qos, properties=props, timeout=PUBLISH_TIMEOUT_S
            )
        except aiomqtt.MqttError as exc:
            self.counters["publish_failures"] += 1
            log.warning("publish to %s failed: %s", pub.topic, exc)
            return
        self.counters["commands_sent" if pub.kind == "command" else "events_sent"] += 1

    async def _receive(self, client: aiomqtt.Client, inbox: Inbox) -> None:
        """Feed the engine. With a backlog queued behind the current message
        (COALESCE_BACKLOG or more: after a reconnect, a burst), rule evaluation
        is coalesced: readings are stored, and every rule is evaluated once the
        backlog is gone or after COALESCE_MAX messages / COALESCE_S seconds.
        Otherwise each reading is evaluated at once (decision latency).

        The client's iterator hands over the first message of a batch; what is
        queued behind it is taken directly (``inbox``, see
        :class:`gateway.mqttclient.Inbox`: the iterator's per-message task cost
        more than the engine's own work)."""
        clock = time.time
        deferred = 0
        deferred_since = 0.0
        backlog_known = 0  # messages still surely queued behind the current one
        for_tick: list[Publish] = []
        async for first in client.messages:
            batch = inbox.queued(first)
            left = len(batch)  # taken, not yet handled
            for message in batch:
                left -= 1
                now = clock()
                if backlog_known > COALESCE_BACKLOG:
                    # only this loop takes messages off the queue: it cannot have
                    # shrunk by more than one since it was counted
                    backlog_known -= 1
                    backlog = backlog_known
                else:
                    backlog = backlog_known = left + len(inbox)
                evaluate = backlog < COALESCE_BACKLOG or (
                    deferred > 0
                    and (deferred >= COALESCE_MAX or now - deferred_since >= COALESCE_S)
                )
                try:
                    pubs = self.on_message(message.topic.value, _payload(message), now, evaluate)
                    if not evaluate:
                        if deferred == 0:
                            deferred_since = now
                        deferred += 1
                    elif deferred:
                        deferred = 0
                        self.counters["coalesced_ticks"] += 1
                        for_tick = self.on_tick(now)
                        if for_tick:
                            pubs = [*pubs, *for_tick]
                except Exception:  # a bug must not take the service down
                    self.counters["internal_errors"] += 1
                    log.exception("handling a message on %s failed", message.topic.value)
                    continue
                if pubs:
                    self._send(pubs)

    def _handle_left(self, inbox: Inbox) -> None:
        """Handle the messages still queued when the session ends (stop, resubscribe,
        a lost connection). paho acknowledged each as it arrived, so the broker will
        not send them again: dropped here, they would be lost to the sink too. Stored
        without evaluating the rules (the session that would carry the commands is
        gone); the next tick evaluates."""
        left = inbox.take_all()
        if not left:
            return
        now = time.time()
        for message in left:
            try:
                self._send(self.on_message(message.topic.value, _payload(message), now, False))
            except Exception:  # a bug must not cost the other messages
                self.counters["internal_errors"] += 1
                log.exception("handling a message on %s failed", message.topic.value)
        self.counters["handled_after_session"] += len(left)
        log.info("handled %d message(s) still queued when the MQTT session ended", len(left))

    async def _connection(self, stop: asyncio.Event) -> None:
        settings = self.rules_file.mqtt
        backoff = Backoff(settings.reconnect_min, settings.reconnect_max)
        rng = random.Random()
        failures = 0
        while not stop.is_set():
            inbox = Inbox()
            client = make_client(settings, self.client_id, persistent=True, inbox=inbox)
            try:
                async with client:
                    set_nodelay(client)
                    self._client = client
                    self._reconnect.clear()
                    # a persistent session's queued messages come right after CONNACK,
                    # ahead of the SUBACKs: taken as they come, not after all of them
                    # were read into memory (an hour's backlog would not fit)
                    receiver = asyncio.create_task(self._receive(client, inbox))
                    others: list[asyncio.Task[Any]] = []
                    try:
                        subs = self.subscriptions()
                        stale = [s for s in self._old_subscriptions if s not in subs]
                        if stale:
                            await client.unsubscribe(stale)
                        for sub in subs:
                            await client.subscribe(sub, options=self._subscribe_options(sub))
                        self._old_subscriptions = subs
                        if failures:
                            log.info("reconnected to mqtt %s:%d", settings.host, settings.port)
                        else:
                            log.info(
                                "connected to mqtt %s:%d as %s; subscribed to %s",
                                settings.host,
                                settings.port,
                                self.client_id,
                                ", ".join(subs),
                            )
                        failures = 0
                        self.connected.set()
                        waiter = asyncio.create_task(self._reconnect.wait())
                        release = asyncio.create_task(self._release.wait())
                        others = [waiter, release]
                        done, _ = await asyncio.wait(
                            {receiver, *others}, return_when=asyncio.FIRST_COMPLETED
                        )
                    finally:
                        await cancel_and_wait([receiver, *others])
                    if release in done:
                        await self._switch_off_held(client)
                        return
                    if receiver in done and receiver.exception() is not None:
                        raise receiver.exception()  # type: ignore[misc]
                    log.info("resubscribing (sites or shared group changed)")
            except aiomqtt.MqttError as exc:
                failures += 1
                if failures == 1 or failures % 10 == 0:
                    log.warning(
                        "mqtt %s:%d: %s (attempt %d)", settings.host, settings.port, exc, failures
                    )
            except Exception:  # a bug must not leave us running without a broker session
                failures += 1
                self.counters["internal_errors"] += 1
                log.exception("mqtt session failed; reconnecting")
            finally:
                self._client = None
                self.connected.clear()
                # after the disconnect: paho reads (and acknowledges) until then
                self._handle_left(inbox)
            if failures:
                delay = backoff.delay(failures, rng.random())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()

    async def _switch_off_held(self, client: aiomqtt.Client) -> None:
        """Stopping, still connected (nothing else runs any more): OFF for every
        actuator the engine holds on, each awaited up to RELEASE_TIMEOUT_S."""
        pubs = self.apply(self.engine.release_all("engine stopping"), time.time())
        if not pubs:
            return
        log.info("stopping: switching off %d actuator(s) the engine holds", len(pubs))
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT_S):
                await asyncio.gather(*(self._publish(client, pub) for pub in pubs))
        except TimeoutError:
            log.warning("stopping: OFF commands not confirmed within %gs", RELEASE_TIMEOUT_S)

    async def _every(self, interval: float, what: str, fn: Any) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.counters["internal_errors"] += 1
                log.exception("%s failed", what)

    async def _tick(self) -> None:
        self._send(self.on_tick(time.time()))

    async def _persist(self) -> None:
        # the snapshot is taken here, serialising and fsync happen off the event loop
        await asyncio.to_thread(self._persist_doc, self.state_snapshot(time.time()))

    async def _watch(self) -> None:
        self._send(self.check_reload(time.time()))

    async def _stats(self) -> None:
        now = time.time()
        line = self.stats_line(now)
        if self.sink is not None:
            self.sink.add(line)
        mono = time.monotonic()
        if mono - self._last_summary >= SUMMARY_EVERY_S:
            self._last_summary = mono
            log.info("engine: %s", self.summary())

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; then save state and flush."""
        o = self.options
        if self.sink is not None:
            await self.sink.start()
        await self.notifier.start()
        # The rules, windows and config are long-lived: moved out of the cyclic
        # collector's generations, full collections no longer rescan them on
        # the hot path (they cost several microseconds per message otherwise).
        gc.collect()
        gc.freeze()
        tasks = [
            asyncio.create_task(self._connection(stop), name="mqtt"),
            asyncio.create_task(self._every(o.tick_interval, "tick", self._tick), name="tick"),
            asyncio.create_task(
                self._every(o.persist_interval, "saving state", self._persist), name="persist"
            ),
            asyncio.create_task(
                self._every(o.watch_interval, "rules file watch", self._watch), name="watch"
            ),
            asyncio.create_task(self._every(o.stats_interval, "stats", self._stats), name="stats"),
        ]
        log.info(
            "rule engine %s: %d rules for sites %s from %s",
            self.engine_name,
            len(self.rules_file.rules),
            ", ".join(sorted(self._served)) or "(none)",
            self.rules_path,
        )
        try:
            await stop.wait()
        finally:
            log.info("stopping: saving state, flushing")
            connection, timers = tasks[0], tasks[1:]
            # no tick may lease anything between the OFFs and the end of the session
            await cancel_and_wait(timers)
            if self._publishing:
                await asyncio.wait(list(self._publishing), timeout=2.0)
            self._release.set()  # the connection sends the OFFs and ends (or is not up)
            await asyncio.wait([connection], timeout=RELEASE_TIMEOUT_S + 2.0)
            await cancel_and_wait([connection])
            try:
                self.save_state(time.time())
            except OSError as exc:
                log.error("cannot save state to %s: %s", self.state_path, exc)
            await self.notifier.close(timeout=3.0)
            if self.sink is not None:
                await self.sink.close()
            log.info("stopped: %s", self.summary())


# ------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="dustgate rules",
        description="Run the rule engine: telemetry in over MQTT, lease commands and events out.",
    )
    ap.add_argument("--config", type=Path, required=True, help="rules.yaml")
    ap.add_argument("--client-id", default=None, help="MQTT client id (default from config/host)")
    ap.add_argument(
        "--shared-group",
        default=None,
        help="subscribe via $share/GROUP/... to spread sites over several engines "
        "(overrides service.shared_group in the rules file)",
    )
    ap.add_argument(
        "--tick", type=float, default=1.0, help="seconds between timer ticks (0.05-1, default 1)"
    )
    ap.add_argument(
        "--watch-interval", type=float, default=1.0, help="rules file poll interval (1 s)"
    )
    ap.add_argument(
        "--persist-interval", type=float, default=5.0, help="state save check interval (5 s)"
    )
    ap.add_argument("--stats-interval", type=float, default=10.0, help="health points (10 s)")
    ap.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return ap


def build_sink(rules_file: RulesFile) -> LineSink | None:
    if rules_file.influx is None:
        return None
    from rules.sink.writer import InfluxSink

    return InfluxSink(rules_file.influx, rules_file.state_dir)


async def serve(service: RulesService) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await service.run(stop)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not 0.05 <= args.tick <= 1.0:
        print("dustgate rules: --tick must be between 0.05 and 1 second", file=sys.stderr)
        return 2
    if args.shared_group is not None and not re.fullmatch(SHARED_GROUP_PATTERN, args.shared_group):
        print("dustgate rules: --shared-group must be [A-Za-z0-9_-]{1,64}", file=sys.stderr)
        return 2
    try:
        text = args.config.read_text(encoding="utf-8")
        rules_file = load_rules_file(args.config, text=text)
    except ConfigError as exc:
        print(f"dustgate rules: {args.config} has errors:\n{exc}", file=sys.stderr)
        return 2
    except (OSError, UnicodeDecodeError) as exc:
        print(f"dustgate rules: cannot read {args.config}: {exc}", file=sys.stderr)
        return 2
    options = ServiceOptions(
        tick_interval=args.tick,
        persist_interval=args.persist_interval,
        watch_interval=args.watch_interval,
        stats_interval=args.stats_interval,
        client_id=args.client_id,
        shared_group=args.shared_group,
    )
    service = RulesService(
        args.config, rules_file, options, sink=build_sink(rules_file), rules_text=text
    )
    asyncio.run(serve(service))
    return 0
