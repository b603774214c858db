"""A whole fake construction site in one asyncio program, for the demo and end-to-end tests.

What runs (all on this machine, no hardware):

- RS485 bus 1 (a pty, Modbus RTU 9600): the integrated dust/weather station (profile
  ``dust-station``, unit 1) and a generic PM sensor (profile ``generic-pm``, unit 255);
- RS485 bus 2 (a pty) or Modbus TCP on 127.0.0.1: an 8-channel relay board (profile
  ``relay-8ch``, unit 1) with fog cannons on channels 0 .. cannons-1, flash timers included;
- an SDS011 and a PMS5003 on their own ptys (``drivers.sim.uart``);
- the plume model (``drivers.sim.plume``) stepping every ``tick`` seconds: the sensors read its
  current values, the relays that are on are its active cannons.

:meth:`FakeSite.trigger_event` starts an earthwork dust event. :meth:`FakeSite.start` returns
:class:`SiteEndpoints` (pty paths, TCP port) and :meth:`SiteEndpoints.agent_config` gives the
matching ``buses/devices/actuators`` part of a ``site.yaml``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from drivers.profiles import resolve_profile
from drivers.sim.modbus_server import RtuPtyServer, TcpServer
from drivers.sim.plume import PlumeState, readings, start_event, step
from drivers.sim.relay_board import RelayBoardUnit
from drivers.sim.units import ProfileUnit

SENSOR_BUS_BAUD = 9600


@dataclass
class SiteEndpoints:
    """Where the agent finds the fake site's devices."""

    sensor_bus: str  # pty path: dust-station (unit 1) + generic-pm (unit 255)
    relay_bus: str | None = None  # pty path of the relay board, or None when on TCP
    relay_tcp: tuple[str, int] | None = None
    uart: dict[str, str] = field(default_factory=dict)  # driver name -> pty path
    cannons: int = 2

    def agent_config(self) -> dict[str, Any]:
        """``buses``, ``devices`` and ``actuators`` for a site.yaml pointing at this site."""
        buses: list[dict[str, Any]] = [
            {"id": "rs485-1", "type": "rtu", "port": self.sensor_bus, "baudrate": SENSOR_BUS_BAUD}
        ]
        if self.relay_tcp is not None:
            host, port = self.relay_tcp
            buses.append({"id": "relays", "type": "tcp", "host": host, "port": port})
        else:
            buses.append({"id": "relays", "type": "rtu", "port": self.relay_bus, "baudrate": 9600})
        devices: list[dict[str, Any]] = [
            {"id": "station", "bus": "rs485-1", "profile": "dust-station", "interval": 1.0},
            {"id": "gate-pm", "bus": "rs485-1", "profile": "generic-pm", "interval": 2.0},
        ]
        for driver, path in sorted(self.uart.items()):
            devices.append({"id": driver, "driver": driver, "port": path})
        actuators = [
            {"id": f"cannon-{ch + 1}", "bus": "relays", "profile": "relay-8ch", "channel": ch}
            for ch in range(self.cannons)
        ]
        return {"buses": buses, "devices": devices, "actuators": actuators}


class LivePlume:
    """The plume model stepped in real time (``tick`` seconds, sped up by ``time_scale``)."""

    def __init__(
        self,
        *,
        seed: int = 1,
        tick: float = 0.5,
        time_scale: float = 1.0,
        active_cannons: Callable[[], int] = lambda: 0,
    ) -> None:
        self.state = PlumeState(seed=seed)
        self.tick = tick
        self.time_scale = time_scale
        self.active_cannons = active_cannons
        self._readings = readings(self.state)
        self._task: asyncio.Task[None] | None = None

    def readings(self) -> dict[str, float]:
        return self._readings

    def trigger_event(self, hold_s: float = 120.0, peak_pm10: float = 280.0) -> None:
        self.state = start_event(self.state, hold_s=hold_s, peak_pm10=peak_pm10)

    def advance(self, seconds: float) -> None:
        """Step the model by ``seconds`` of site time with the cannons now on."""
        self.state = step(replace(self.state, cannons=self.active_cannons()), seconds)
        self._readings = readings(self.state)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.tick)
            now = loop.time()
            self.advance((now - last) * self.time_scale)
            last = now

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class FakeSite:
    def __init__(
        self,
        *,
        seed: int = 1,
        cannons: int = 2,
        relay_transport: Literal["rtu", "tcp"] = "rtu",
        relay_tcp_port: int = 0,
        uart: bool = True,
        tick: float = 0.5,
        time_scale: float = 1.0,
    ) -> None:
        self.plume = LivePlume(
            seed=seed, tick=tick, time_scale=time_scale, active_cannons=self.active_cannons
        )
        self.cannons = cannons
        self.relay_board = RelayBoardUnit(1, channels=8, flash_base=0x0200)
        self.station = ProfileUnit(resolve_profile("dust-station"), self.readings)
        self.gate_pm = ProfileUnit(resolve_profile("generic-pm"), self._gate_pm_readings)
        self.sensor_bus = RtuPtyServer([self.station, self.gate_pm])
        self.relay_server: RtuPtyServer | TcpServer
        if relay_transport == "tcp":
            self.relay_server = TcpServer([self.relay_board], port=relay_tcp_port)
        else:
            self.relay_server = RtuPtyServer([self.relay_board])
        self._want_uart = uart
        self._uart_sims: list[Any] = []

    # ------------------------------------------------------------ model side

    def readings(self) -> dict[str, float]:
        """Current values at the gate monitor (what every simulated sensor reports)."""
        return self.plume.readings()

    def _gate_pm_readings(self) -> dict[str, float]:
        r = self.plume.readings()
        # a cheaper sensor a few metres away: reads a little low
        return {"pm25": r["pm25"] * 0.9, "pm10": r["pm10"] * 0.92, "temp": r["temp"], "rh": r["rh"]}

    def _pm_triple(self) -> tuple[float, float, float]:
        r = self.plume.readings()
        return r["pm1"], r["pm25"], r["pm10"]

    def trigger_event(self, hold_s: float = 120.0, peak_pm10: float = 280.0) -> None:
        """Start an earthwork dust event near the gate now."""
        self.plume.trigger_event(hold_s, peak_pm10)

    def active_cannons(self) -> int:
        """Cannon relays (channels 0 .. cannons-1) on now; flash timers expire on the way."""
        now = asyncio.get_running_loop().time()
        return sum(self.relay_board.is_on(ch, now) for ch in range(self.cannons))

    def advance(self, seconds: float) -> None:
        """Step the model by ``seconds`` of site time (tests; the site also steps by itself)."""
        self.plume.advance(seconds)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> SiteEndpoints:
        endpoints = SiteEndpoints(sensor_bus=await self.sensor_bus.start(), cannons=self.cannons)
        if isinstance(self.relay_server, TcpServer):
            endpoints.relay_tcp = ("127.0.0.1", await self.relay_server.start())
        else:
            endpoints.relay_bus = await self.relay_server.start()
        if self._want_uart:
            endpoints.uart = self._start_uart()
        self.plume.start()
        return endpoints

    def _start_uart(self) -> dict[str, str]:
        try:
            from drivers.sim.uart import open_pty_sim
        except ImportError:  # the UART simulators are optional for the Modbus side
            return {}
        paths = {}
        for kind in ("sds011", "pms5003"):
            sim, path = open_pty_sim(kind, self._pm_triple)  # type: ignore[arg-type]
            sim.start()
            self._uart_sims.append(sim)
            paths[kind] = path
        return paths

    async def stop(self) -> None:
        await self.plume.stop()
        for sim in self._uart_sims:
            await sim.stop()
        self._uart_sims.clear()
        await self.relay_server.stop()
        await self.sensor_bus.stop()
