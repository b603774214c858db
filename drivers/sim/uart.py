"""Wire-level simulators of the UART particulate sensors on a pseudo-terminal.

``Sds011Sim`` and ``Pms5003Sim`` sit on the master side of a pty and behave like the real
sensors on the slave side: in active mode they write a real data frame every ``period``
seconds (about 1 s by default), and they answer the commands they read (mode, query/read,
sleep, wake, SDS011 work period, with the SDS011 ``AA C5`` confirmations). Asleep, the
SDS011 ignores everything but wake, and the PMS ignores everything but mode, sleep and
wake. The values come from ``source()``, a callable returning ``(pm1, pm25, pm10)`` in ug/m3
(the site plume model feeds it); the SDS011 has no PM1 channel and ignores the first value.

The driver under test opens the slave path (``os.ttyname(slave_fd)``) with pyserial just like
``/dev/ttyUSB0``. ``stop()`` closes the master: the reader sees the port die like an
unplugged USB adapter. The pty is put in raw mode so every byte passes untouched.

Use ``open_pty_sim("sds011" | "pms5003", source)`` to get ``(sim, slave_path)``, then
``sim.start()`` (returns the asyncio task) and ``await sim.stop()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Literal

from drivers import pms5003, sds011
from drivers.serial_reader import ReportingMode, StreamParser

PmSource = Callable[[], tuple[float, float, float]]


class _PtySensorSim(ABC):
    """Common pty plumbing: periodic active frames plus a command reader."""

    def __init__(
        self,
        master_fd: int,
        source: PmSource,
        *,
        period: float = 1.0,
        slave_fd: int | None = None,
    ) -> None:
        self.master_fd = master_fd
        self.source = source
        self.period = period
        self.mode = ReportingMode.ACTIVE
        self.asleep = False
        self.frames_sent = 0
        self.commands_seen = 0
        self.writes_dropped = 0
        self.source_errors = 0
        self.drop_commands = 0  # set > 0 to make the sensor miss that many commands
        self._slave_fd = slave_fd  # held so the master never sees EIO while no reader is open
        self._parser = self._make_parser()
        self._task: asyncio.Task[None] | None = None
        self._reading = False
        self._closed = False
        os.set_blocking(master_fd, False)

    @abstractmethod
    def _make_parser(self) -> StreamParser[object]: ...

    @abstractmethod
    def _data_frame(self) -> bytes: ...

    @abstractmethod
    def _handle(self, frame: object) -> None: ...

    def _frame_interval(self) -> float:
        return self.period

    def _streaming(self) -> bool:
        return self.mode is ReportingMode.ACTIVE and not self.asleep

    def _values(self) -> tuple[float, float, float]:
        pm1, pm25, pm10 = self.source()
        return max(0.0, pm1), max(0.0, pm25), max(0.0, pm10)

    def _write(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            os.write(self.master_fd, data)
        except BlockingIOError:
            self.writes_dropped += 1  # nobody reads the line: a real UART loses bytes too
        except OSError:
            self.writes_dropped += 1

    def _send_data_frame(self) -> None:
        try:
            frame = self._data_frame()
        except Exception:  # a broken source is a silent sensor, not a dead simulator
            self.source_errors += 1
            return
        self._write(frame)
        self.frames_sent += 1

    def _on_readable(self) -> None:
        try:
            data = os.read(self.master_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            # EIO: no slave open. Stop watching (a level-triggered reader would spin);
            # the run loop re-arms it on its next tick.
            self._unwatch()
            return
        if not data:
            self._unwatch()
            return
        for frame in self._parser.feed(data):
            self.commands_seen += 1
            if self.drop_commands > 0:  # fault injection: the command is lost on the line
                self.drop_commands -= 1
                continue
            self._handle(frame)

    def _watch(self) -> None:
        if not self._reading and not self._closed:
            asyncio.get_running_loop().add_reader(self.master_fd, self._on_readable)
            self._reading = True

    def _unwatch(self) -> None:
        if self._reading:
            asyncio.get_running_loop().remove_reader(self.master_fd)
            self._reading = False

    async def run(self) -> None:
        """Serve until cancelled: a frame per interval in active mode, commands any time."""
        try:
            while not self._closed:
                self._watch()
                if self._streaming():
                    self._send_data_frame()
                await asyncio.sleep(self._frame_interval())
        finally:
            self._unwatch()

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run())
        return self._task

    async def stop(self) -> None:
        """Stop and close the pty (the reader sees the port vanish)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._unwatch()
        if not self._closed:
            self._closed = True
            for fd in (self.master_fd, self._slave_fd):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)


class Sds011Sim(_PtySensorSim):
    """An SDS011 on the master side of a pty (see module docstring)."""

    def __init__(
        self,
        master_fd: int,
        source: PmSource,
        *,
        period: float = 1.0,
        device_id: int = 0xA160,
        slave_fd: int | None = None,
    ) -> None:
        self.device_id = device_id
        self.work_period = 0  # minutes; 0 = continuous
        super().__init__(master_fd, source, period=period, slave_fd=slave_fd)

    def _make_parser(self) -> StreamParser[object]:
        return sds011.Sds011Parser(from_host=True)  # type: ignore[return-value]

    def _frame_interval(self) -> float:
        return self.work_period * 60.0 if self.work_period else self.period

    def _data_frame(self) -> bytes:
        _, pm25, pm10 = self._values()
        return sds011.encode_reading(
            sds011.Sds011Reading(
                pm25=min(pm25, sds011.MAX_PM),
                pm10=min(pm10, sds011.MAX_PM),
                device_id=self.device_id,
            )
        )

    def _reply(self, command: int, d1: int, d2: int) -> None:
        reply = sds011.Sds011Reply(command, bytes([d1, d2, 0]), self.device_id)
        self._write(sds011.encode_reply(reply))

    def _handle(self, frame: object) -> None:
        if not isinstance(frame, sds011.Sds011Command) or not frame.addresses(self.device_id):
            return
        cmd, setting, value = frame.command, frame.data[0], frame.data[1]
        if self.asleep and not (cmd == sds011.CMD_SLEEP_WORK and setting == 1 and value == 1):
            return
        if cmd == sds011.CMD_QUERY:
            self._send_data_frame()
        elif cmd == sds011.CMD_REPORTING_MODE:
            if setting == 1:
                self.mode = ReportingMode.PASSIVE if value else ReportingMode.ACTIVE
            self._reply(cmd, setting, int(self.mode is ReportingMode.PASSIVE))
        elif cmd == sds011.CMD_SLEEP_WORK:
            if setting == 1:
                self.asleep = value == 0
            self._reply(cmd, setting, int(not self.asleep))
        elif cmd == sds011.CMD_WORK_PERIOD:
            if setting == 1 and value <= sds011.MAX_WORK_PERIOD_MIN:
                self.work_period = value
            self._reply(cmd, setting, self.work_period)
        elif cmd == sds011.CMD_FIRMWARE:
            self._write(
                sds011.encode_reply(sds011.Sds011Reply(cmd, bytes([18, 11, 16]), self.device_id))
            )


def _synthetic_counts(pm1: float, pm25: float, pm10: float) -> tuple[int, ...]:
    """Particle counts per 0.1 L that grow with the mass values (shape only, not physics)."""
    raw = (pm25 * 60, pm25 * 18, pm1 * 4, pm25 * 0.6, pm10 * 0.12, pm10 * 0.04)
    return tuple(min(0xFFFF, round(v)) for v in raw)


class Pms5003Sim(_PtySensorSim):
    """A PMS5003/PMS7003 on the master side of a pty (see module docstring)."""

    def _make_parser(self) -> StreamParser[object]:
        return pms5003.PmsParser(from_host=True)  # type: ignore[return-value]

    def _data_frame(self) -> bytes:
        pm1, pm25, pm10 = (min(v, 0xFFFF) for v in self._values())
        reading = pms5003.PmsReading(
            pm1, pm25, pm10, pm1, pm25, pm10, *_synthetic_counts(pm1, pm25, pm10)
        )
        return pms5003.encode_reading(reading)

    def _handle(self, frame: object) -> None:
        if not isinstance(frame, pms5003.PmsCommand):
            return
        if frame.command == pms5003.CMD_MODE:
            self.mode = ReportingMode.ACTIVE if frame.data else ReportingMode.PASSIVE
        elif frame.command == pms5003.CMD_SLEEP:
            self.asleep = frame.data == 0
        elif frame.command == pms5003.CMD_READ and not self.asleep:
            self._send_data_frame()


def open_pty_pair() -> tuple[int, int, str]:
    """A raw-mode pty: (master_fd, slave_fd, slave_path)."""
    master_fd, slave_fd = os.openpty()
    tty.setraw(slave_fd)
    return master_fd, slave_fd, os.ttyname(slave_fd)


def open_pty_sim(
    kind: Literal["sds011", "pms5003", "pms7003"],
    source: PmSource,
    *,
    period: float = 1.0,
) -> tuple[Sds011Sim | Pms5003Sim, str]:
    """Create a pty and a simulator on it; returns (sim, slave_path). Call ``sim.start()``."""
    master_fd, slave_fd, path = open_pty_pair()
    sim: Sds011Sim | Pms5003Sim
    if kind == "sds011":
        sim = Sds011Sim(master_fd, source, period=period, slave_fd=slave_fd)
    elif kind in ("pms5003", "pms7003"):
        sim = Pms5003Sim(master_fd, source, period=period, slave_fd=slave_fd)
    else:
        os.close(master_fd)
        os.close(slave_fd)
        raise ValueError(f"unknown UART sensor kind {kind!r}")
    return sim, path
