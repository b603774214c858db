"""From site.yaml entries to links and poll functions the bus scheduler runs.

Modbus devices share the link of their bus (one ``ModbusClient`` per bus);
a UART particulate sensor owns its serial port, so it is a bus of its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from drivers.modbus import DeviceSpec
from drivers.modbus_client import ModbusClient
from drivers.profiles import DEFAULT_SEARCH, Profile, ProfileSearch, is_path_ref
from gateway.config import ModbusDevice, SerialBus, TcpBus, UartDevice

Poll = Callable[[], Awaitable[dict[str, float]]]


def modbus_client_for(bus: SerialBus | TcpBus) -> ModbusClient:
    if isinstance(bus, SerialBus):
        return ModbusClient.rtu(
            bus.port,
            baudrate=bus.baudrate,
            bytesize=bus.bytesize,
            parity=bus.parity,
            stopbits=bus.stopbits,
        )
    if bus.type == "tcp":
        return ModbusClient.tcp(bus.host, bus.port)
    return ModbusClient.rtu_over_tcp(bus.host, bus.port)


def modbus_spec(dev: ModbusDevice, search: ProfileSearch = DEFAULT_SEARCH) -> Profile:
    """The device's profile with its site overrides (and ``slave_id``) merged in."""
    from drivers.profiles import resolve_profile

    overrides = dict(dev.overrides)
    if dev.slave_id is not None:
        overrides["slave_id"] = dev.slave_id
    return resolve_profile(dev.profile, overrides, search)


def modbus_poll(client: ModbusClient, spec: DeviceSpec) -> Poll:
    async def poll() -> dict[str, float]:
        raw = await client.read_device(spec)
        return {k: float(v) for k, v in raw.items()}

    return poll


def modbus_probe(client: ModbusClient, spec: DeviceSpec) -> Poll:
    """The poll of a device in backoff: one try per request, not the retry count (a dead
    unit then holds the bus for one timeout per probe)."""
    return modbus_poll(client, spec.model_copy(update={"retries": 0}) if spec.retries else spec)


def poll_budget(spec: DeviceSpec) -> float:
    """Upper bound of one poll: every request may time out on every try."""
    per_try = spec.timeout + spec.pause_between_requests
    return max(1.0, len(spec.plan()) * per_try * (spec.retries + 1) + 1.0)


@dataclass
class UartLink:
    """Adapts a UART reader (open/close/is_open) to the scheduler's Link."""

    reader: object

    @property
    def connected(self) -> bool:
        return bool(self.reader.is_open)  # type: ignore[attr-defined]

    async def connect(self) -> None:
        await self.reader.open()  # type: ignore[attr-defined]

    async def close(self) -> None:
        await self.reader.close()  # type: ignore[attr-defined]


def uart_reader(dev: UartDevice) -> object:
    if dev.driver == "sds011":
        from drivers.sds011 import Sds011Reader

        return Sds011Reader(dev.port, baudrate=dev.baudrate)
    from drivers.pms5003 import Pms5003Reader

    return Pms5003Reader(dev.port, baudrate=dev.baudrate)


def uart_poll(dev: UartDevice, reader: object) -> Poll:
    async def poll() -> dict[str, float]:
        if dev.mode == "query":
            frame = await reader.query(timeout=dev.timeout)  # type: ignore[attr-defined]
        else:
            # the newest frame the sensor sent since the last poll
            frame = await reader.read(timeout=dev.timeout, max_age=max(dev.interval, dev.timeout))  # type: ignore[attr-defined]
        return dict(frame.values())

    return poll


def model_name(dev: ModbusDevice | UartDevice) -> str:
    if dev.model:
        return dev.model
    if isinstance(dev, ModbusDevice):
        return Path(dev.profile).stem if is_path_ref(dev.profile) else dev.profile
    return dev.driver
