"""The shell around one relay output: commands in, relay writes out, state published.

The decisions are all made by ``gateway.lease`` (pure lease machine);
this module only moves them to the relay through the bus scheduler (writes
jump ahead of queued polls), reads the relay back after every write, and
publishes ``ack`` and the retained ``state``. Between writes the relay is
read back every ``VERIFY_S`` seconds. A write or read-back that fails counts
as losing the bus: the machine goes OFF (failsafe) and refuses ON until the
relay answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime

from drivers.errors import DriverError
from drivers.relay import RelayMismatch, RelayOutput
from gateway import protocol as p
from gateway.config import Actuator
from gateway.lease import LeaseMachine, to_ack, to_state_payload
from gateway.logthrottle import ThrottledLog
from gateway.scheduler import BusScheduler

log = logging.getLogger(__name__)
peer_log = ThrottledLog(log)  # what a broker peer can make us log: one line per kind a minute

Post = Callable[[str, bytes, int, bool], None]  # queue a message; never blocks
VERIFY_S = 5.0  # read the relay back this often even when nothing is written


class ActuatorController:
    def __init__(
        self,
        site: str,
        cfg: Actuator,
        relay: RelayOutput,
        bus: BusScheduler,
        post: Post,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = datetime.now,
    ) -> None:
        self.site = site
        self.cfg = cfg
        self.relay = relay
        self.bus = bus
        self._post = post
        self._lock = asyncio.Lock()  # one apply at a time: tick and commands interleave
        self._mono = monotonic
        self._wall = wall
        self.machine = LeaseMachine(cfg.limits, monotonic(), wall())
        self.written: bool | None = None  # last state confirmed by read-back
        self.write_failures = 0
        self.commands = 0
        self.refused = 0
        self._armed_at = 0.0
        self._verified_at = monotonic()
        self._last_published: p.ActuatorState | None = None

    @property
    def id(self) -> str:
        return self.cfg.id

    @property
    def bus_ok(self) -> bool:
        return self.bus.link_up and self.write_failures == 0

    # ------------------------------------------------------------ inputs

    async def handle_command(self, cmd: p.Command) -> p.Ack:
        self.commands += 1
        _, decision = self.machine.on_command(cmd, self._mono(), self._wall())
        if not decision.accepted:
            self.refused += 1
            peer_log.info(
                f"{self.id}:refused",
                "%s: refused %s %.64s: %s",  # the id is the peer's text
                self.id,
                cmd.action,
                cmd.id,
                decision.reason,
            )
        ack = to_ack(decision, cmd, p.now_ms(time.time()))
        self._post(p.ack_topic(self.site, self.id), p.encode(ack), 1, False)
        await self.apply()
        return ack

    async def refuse(self, cmd_id: str, reason: str) -> None:
        """Ack a command that never reached the machine (malformed, foreign site)."""
        self.refused += 1
        ack = p.Ack(
            cmd_id=cmd_id[:64], accepted=False, reason=reason[:200], ts=p.now_ms(time.time())
        )
        self._post(p.ack_topic(self.site, self.id), p.encode(ack), 1, False)

    async def tick(self, broker_up: bool, broker_down_since: float | None) -> None:
        if self._mono() - self._verified_at >= VERIFY_S:
            await self.verify()
        self.machine.tick(self._mono(), self._wall(), broker_up, broker_down_since, self.bus_ok)
        await self.apply()

    async def verify(self) -> None:
        """Read the relay back between writes: a board that stopped answering is a lost
        bus (failsafe OFF), a relay switched by someone else is put back."""
        self._verified_at = self._mono()
        async with self._lock:
            try:
                actual = await self.bus.submit(self.relay.read)
            except (DriverError, TimeoutError) as exc:
                self.write_failures += 1
                self.written = None
                if self.write_failures == 1:
                    log.warning("%s: relay read-back failed: %s", self.id, exc)
                return
            self.write_failures = 0
            self.written = actual
            self.machine.on_readback(actual, self._mono())

    async def shutdown(self) -> None:
        self.machine.on_shutdown(self._mono(), self._wall())
        await self.apply(force=True)

    # ------------------------------------------------------------ outputs

    async def apply(self, force: bool = False) -> None:
        """Bring the relay to the machine's output; read it back; publish state."""
        async with self._lock:
            want = self.machine.state.output
            timer = self.cfg.hardware_timer if self.relay.has_hardware_timer else 0.0
            rearm = want and timer > 0 and self._mono() - self._armed_at > timer / 2
            if force or want != self.written or rearm:
                await self._write(want, timer)
        self.publish_state()

    async def _write(self, on: bool, timer: float) -> None:
        try:
            actual = await self.bus.submit(lambda: self.relay.switch(on, hardware_timer_s=timer))
        except RelayMismatch as exc:
            actual = exc.got
            self.machine.on_readback(actual, self._mono())
            self.written = actual
            log.warning("%s: read-back mismatch: wrote %s, relay is %s", self.id, on, actual)
            return
        except (DriverError, TimeoutError) as exc:
            self.write_failures += 1
            self.written = None  # unknown: write again on the next tick
            log.warning("%s: relay write failed: %s", self.id, exc)
            return
        self.write_failures = 0
        if on and timer:
            self._armed_at = self._mono()
        self.written = actual
        self.machine.on_readback(actual, self._mono())

    def publish_state(self, force: bool = False) -> None:
        payload = to_state_payload(self.machine.state, p.now_ms(time.time()))
        if not force and payload == self._last_published:
            return
        self._post(p.state_topic(self.site, self.id), p.encode(payload), 1, True)
        self._last_published = payload
