"""Simulated Modbus units: four tables of values and a pure request handler.

:class:`SimUnit` holds coils, discrete inputs, holding and input registers as dicts (an address
missing from a table answers exception 2, like a real device). :class:`ProfileUnit` fills its
registers from a :class:`drivers.modbus.DeviceSpec` and a callable giving the current metric
values, re-encoding them on every read, so any profile becomes a live simulator.

:func:`handle_request` answers one request PDU (FC 01-06, 15, 16) and returns the reply PDU;
the transports in ``drivers.sim.modbus_server`` only add framing.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping

from drivers import modbus_pdu as pdu
from drivers.errors import EncodeError
from drivers.modbus import BIT_TABLES, DeviceSpec, Value, encode_field

ILLEGAL_FUNCTION = 1
ILLEGAL_ADDRESS = 2
ILLEGAL_VALUE = 3

_TABLE_OF_FUNCTION = {
    pdu.READ_COILS: "coil",
    pdu.READ_DISCRETE_INPUTS: "discrete",
    pdu.READ_HOLDING_REGISTERS: "holding",
    pdu.READ_INPUT_REGISTERS: "input",
    pdu.WRITE_SINGLE_COIL: "coil",
    pdu.WRITE_MULTIPLE_COILS: "coil",
    pdu.WRITE_SINGLE_REGISTER: "holding",
    pdu.WRITE_MULTIPLE_REGISTERS: "holding",
}


class SimException(Exception):
    """A Modbus exception code to answer with."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class SimUnit:
    """One simulated slave. Override :meth:`refresh` / :meth:`write` for live behaviour."""

    def __init__(self, unit_id: int) -> None:
        self.unit_id = unit_id
        self.tables: dict[str, dict[int, int]] = {
            "coil": {},
            "discrete": {},
            "holding": {},
            "input": {},
        }
        self.writable = {"coil", "holding"}

    def refresh(self, now: float) -> None:
        """Bring live values up to date before a read (``now`` is the loop clock)."""

    def read(self, table: str, address: int, count: int, now: float) -> list[int]:
        self.refresh(now)
        values = self.tables[table]
        try:
            return [values[a] for a in range(address, address + count)]
        except KeyError:
            raise SimException(ILLEGAL_ADDRESS) from None

    def write(self, table: str, address: int, values: list[int], now: float) -> None:
        target = self.tables[table]
        if table not in self.writable or any(
            a not in target for a in range(address, address + len(values))
        ):
            raise SimException(ILLEGAL_ADDRESS)
        for i, value in enumerate(values):
            target[address + i] = value

    def write_single_coil_raw(self, address: int, raw: int, now: float) -> None:
        """FC05 with its raw value: only 0xFF00 and 0x0000 are legal on a plain device."""
        if raw not in (0, pdu.COIL_ON):
            raise SimException(ILLEGAL_VALUE)
        self.write("coil", address, [int(raw == pdu.COIL_ON)], now)


class ProfileUnit(SimUnit):
    """A unit whose registers hold the fields of ``spec``, fed by ``source()`` on each read."""

    def __init__(
        self,
        spec: DeviceSpec,
        source: Callable[[], Mapping[str, Value]],
        unit_id: int | None = None,
    ) -> None:
        super().__init__(spec.slave_id if unit_id is None else unit_id)
        self.spec = spec
        self.source = source
        # every address the client's planned reads touch exists (gaps read as 0), as on a
        # device whose register block is contiguous
        for request in spec.plan():
            table = self.tables[request.table]
            for a in range(request.address, request.address + request.count):
                table.setdefault(a, 0)
        self.writable = set()  # a sensor: read-only

    def refresh(self, now: float) -> None:
        values = self.source()
        cleared: set[tuple[str, int]] = set()
        for f in self.spec.fields:
            if f.name not in values:
                continue
            try:
                words = encode_field(f, values[f.name])
            except EncodeError:
                continue  # out of range for the register: keep the last value
            table = self.tables[f.table]
            if f.bit is not None and f.table not in BIT_TABLES:
                if (f.table, f.address) not in cleared:
                    table[f.address] = 0
                    cleared.add((f.table, f.address))
                table[f.address] |= words[0]
                continue
            for i, word in enumerate(words):
                table[f.address + i] = word


def handle_request(unit: SimUnit, request: bytes, now: float) -> bytes:
    """The reply PDU of ``unit`` to ``request`` (an exception PDU on any refusal)."""
    function = request[0] if request else 0
    try:
        return _dispatch(unit, function, request, now)
    except SimException as exc:
        return bytes([function | 0x80, exc.code])
    except (struct.error, IndexError):
        return bytes([function | 0x80, ILLEGAL_VALUE])


def _dispatch(unit: SimUnit, function: int, request: bytes, now: float) -> bytes:
    table = _TABLE_OF_FUNCTION.get(function)
    if table is None:
        raise SimException(ILLEGAL_FUNCTION)
    address, value = struct.unpack_from(">HH", request, 1)
    if function in pdu.BIT_READS or function in pdu.REGISTER_READS:
        limit = pdu.MAX_READ_BITS if function in pdu.BIT_READS else pdu.MAX_READ_REGISTERS
        if not 1 <= value <= limit:
            raise SimException(ILLEGAL_VALUE)
        values = unit.read(table, address, value, now)
        if function in pdu.BIT_READS:
            data = pdu.pack_bits([bool(v) for v in values])
        else:
            data = struct.pack(f">{value}H", *values)
        return bytes([function, len(data)]) + data
    if function == pdu.WRITE_SINGLE_COIL:
        unit.write_single_coil_raw(address, value, now)
        return request[:5]
    if function == pdu.WRITE_SINGLE_REGISTER:
        unit.write(table, address, [value], now)
        return request[:5]
    nbytes = request[5]
    data = request[6 : 6 + nbytes]
    if len(data) != nbytes or value == 0:
        raise SimException(ILLEGAL_VALUE)
    if function == pdu.WRITE_MULTIPLE_COILS:
        if nbytes != (value + 7) // 8:
            raise SimException(ILLEGAL_VALUE)
        unit.write(table, address, [int(b) for b in pdu.unpack_bits(data, value)], now)
    else:
        if nbytes != 2 * value:
            raise SimException(ILLEGAL_VALUE)
        unit.write(table, address, list(struct.unpack(f">{value}H", data)), now)
    return request[:5]
