"""Modbus register maps: what a device's fields are, how to fetch them, how to decode them.

A :class:`DeviceSpec` lists :class:`FieldSpec` entries (metric name, table, address, type,
word/byte order, scale, offset). Three pure functions work on them:

- :func:`plan_reads` groups the fields into the fewest read requests per table, bridging gaps
  of at most ``max_gap`` unused registers and never exceeding ``max_registers_per_request``;
- :func:`decode_field` turns register words (or coil bits) into ``raw * scale + offset``; a
  float register holding NaN or +-inf decodes to NaN, never to a number (:func:`rejected`);
- :func:`encode_field` does the reverse, for writes and for the simulators.

Word/byte order names the byte sequence on the wire for a value whose big-endian bytes are
A B C D: ``ABCD`` big-endian, ``CDAB`` word-swapped, ``BADC`` byte-swapped, ``DCBA``
little-endian. 16-bit values only honour the byte swap; 64-bit values extend the same rule.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from drivers import modbus_pdu as pdu
from drivers.errors import EncodeError

Table = Literal["holding", "input", "coil", "discrete"]
ValueType = Literal[
    "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "bool"
]
WordOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]
Value = float | int | bool
NAN = math.nan

READ_FUNCTION: dict[str, int] = {
    "coil": pdu.READ_COILS,
    "discrete": pdu.READ_DISCRETE_INPUTS,
    "holding": pdu.READ_HOLDING_REGISTERS,
    "input": pdu.READ_INPUT_REGISTERS,
}
BIT_TABLES = frozenset({"coil", "discrete"})
# struct code and width in registers of each type held in registers
_TYPE_LAYOUT: dict[str, tuple[str, int]] = {
    "int16": ("h", 1),
    "uint16": ("H", 1),
    "bool": ("H", 1),
    "int32": ("i", 2),
    "uint32": ("I", 2),
    "float32": ("f", 2),
    "int64": ("q", 4),
    "uint64": ("Q", 4),
    "float64": ("d", 4),
}
_STRUCTS = {code: struct.Struct(">" + code) for code, _ in _TYPE_LAYOUT.values()}
_WORDS = {n: struct.Struct(f">{n}H") for n in (1, 2, 4)}


class FieldSpec(BaseModel):
    """One value of a device: a metric read from (or written to) one place."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    table: Table = "holding"
    address: int = Field(ge=0, le=0xFFFF)
    type: ValueType = "uint16"
    bit: int | None = Field(default=None, ge=0, le=15)
    order: WordOrder = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> FieldSpec:
        if self.table in BIT_TABLES and self.type != "bool":
            raise ValueError(f"field {self.name!r}: {self.table} values are type bool")
        if self.table in BIT_TABLES and self.bit is not None:
            raise ValueError(f"field {self.name!r}: bit applies to registers, not {self.table}")
        if self.bit is not None and self.type not in ("bool", "uint16"):
            raise ValueError(f"field {self.name!r}: a bit field is type bool or uint16")
        if self.scale == 0 or not math.isfinite(self.scale) or not math.isfinite(self.offset):
            raise ValueError(f"field {self.name!r}: scale must be finite and non-zero")
        if self.address + self.width > 0x10000:
            raise ValueError(f"field {self.name!r}: runs past address 65535")
        return self

    @property
    def width(self) -> int:
        """Registers (or bits, for coil/discrete) this field occupies."""
        return 1 if self.table in BIT_TABLES else _TYPE_LAYOUT[self.type][1]


class DeviceSpec(BaseModel):
    """A Modbus device: its unit id, its fields and how gently it must be polled."""

    model_config = ConfigDict(extra="forbid")

    slave_id: int = Field(ge=0, le=255)
    fields: list[FieldSpec] = Field(min_length=1)
    max_registers_per_request: int = Field(default=125, ge=1, le=pdu.MAX_READ_REGISTERS)
    max_gap: int = Field(default=10, ge=0)
    timeout: float = Field(default=1.0, gt=0, le=60)
    retries: int = Field(default=1, ge=0, le=10)
    pause_between_requests: float = Field(default=0.0, ge=0, le=10)
    pause_after_connect: float = Field(default=0.0, ge=0, le=60)

    _plan: tuple[ReadRequest, ...] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _unique_and_fitting(self) -> DeviceSpec:
        names = [f.name for f in self.fields]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate field names: {', '.join(duplicates)}")
        for f in self.fields:
            if f.table not in BIT_TABLES and f.width > self.max_registers_per_request:
                raise ValueError(
                    f"field {f.name!r} needs {f.width} registers, more than "
                    f"max_registers_per_request={self.max_registers_per_request}"
                )
        return self

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def plan(self) -> tuple[ReadRequest, ...]:
        """The read plan, computed once per spec."""
        if self._plan is None:
            self._plan = plan_reads(self.fields, self.max_registers_per_request, self.max_gap)
        return self._plan


Block = tuple[int, ...] | list[int] | list[bool]
Decoder = Callable[[Block], Value]


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One read: ``count`` registers/bits of ``table`` from ``address``, feeding ``fields``.

    ``pdu`` is the request PDU and ``decoders`` turn the reply block into the fields' values,
    both built once with the plan so that a poll only sends and decodes.
    """

    table: str
    function: int
    address: int
    count: int
    fields: tuple[FieldSpec, ...]
    pdu: bytes = b""
    decoders: tuple[tuple[str, Decoder], ...] = ()

    @classmethod
    def build(
        cls, table: str, address: int, count: int, fields: tuple[FieldSpec, ...]
    ) -> ReadRequest:
        function = READ_FUNCTION[table]
        decoders = tuple((f.name, field_decoder(f, address)) for f in fields)
        request = pdu.read_request(function, address, count)
        return cls(table, function, address, count, fields, request, decoders)


def plan_reads(
    fields: list[FieldSpec] | tuple[FieldSpec, ...], max_registers: int, max_gap: int
) -> tuple[ReadRequest, ...]:
    """Fewest read requests covering every field once.

    Fields are sorted by address per table and grown greedily into runs: a field joins the
    current run if the run would still span at most the per-request limit and the hole before
    the field is at most ``max_gap``. Greedy is optimal here because both limits only tighten as
    a run grows.
    """
    requests: list[ReadRequest] = []
    for table in ("coil", "discrete", "holding", "input"):
        in_table = sorted((f for f in fields if f.table == table), key=lambda f: f.address)
        if not in_table:
            continue
        limit = pdu.MAX_READ_BITS if table in BIT_TABLES else max_registers
        run: list[FieldSpec] = []
        start = end = 0
        for f in in_table:
            f_end = f.address + f.width
            if run and f.address - end <= max_gap and max(end, f_end) - start <= limit:
                run.append(f)
                end = max(end, f_end)
                continue
            if run:
                requests.append(ReadRequest.build(table, start, end - start, tuple(run)))
            run, start, end = [f], f.address, f_end
        requests.append(ReadRequest.build(table, start, end - start, tuple(run)))
    return tuple(requests)


def _reorder(words: tuple[int, ...] | list[int], order: str) -> tuple[int, ...] | list[int]:
    """Map between wire order and big-endian (ABCD) order; the mapping is its own inverse."""
    if order == "ABCD":
        return words
    if order in ("BADC", "DCBA"):
        words = [(w >> 8) | (w & 0xFF) << 8 for w in words]
    if order in ("CDAB", "DCBA"):
        words = words[::-1]
    return words


def field_decoder(f: FieldSpec, start: int) -> Decoder:
    """A function giving the value of ``f`` from a block of registers (or bits) read from
    address ``start``; everything that depends only on the field is worked out here, once."""
    i = f.address - start
    if f.table in BIT_TABLES:
        return lambda block: bool(block[i])
    if f.bit is not None:
        mask = 1 << f.bit
        if f.type == "bool":
            return lambda block: bool(block[i] & mask)
        return lambda block: int(bool(block[i] & mask))
    if f.type == "bool":
        return lambda block: block[i] != 0
    code, n = _TYPE_LAYOUT[f.type]
    raw: Callable[[Block], int | float]
    if code == "H" and f.order in ("ABCD", "CDAB"):
        raw = lambda block: block[i]  # noqa: E731 - the common case, no struct round trip
    elif code == "h" and f.order in ("ABCD", "CDAB"):
        raw = lambda block: block[i] - 0x10000 if block[i] & 0x8000 else block[i]  # noqa: E731
    else:
        value_struct, words_struct, order = _STRUCTS[code], _WORDS[n], f.order

        def raw(block: Block) -> int | float:
            words = block[i : i + n]
            if order != "ABCD":
                words = _reorder(words, order)  # type: ignore[arg-type]
            return value_struct.unpack(words_struct.pack(*words))[0]  # type: ignore[no-any-return]

    if code in ("f", "d"):
        return _finite_or_nan(raw, f.scale, f.offset)
    if f.scale == 1.0 and f.offset == 0.0:
        return raw
    scale, offset = f.scale, f.offset
    return lambda block: round(raw(block) * scale + offset, 6)


def _finite_or_nan(raw: Callable[[Block], int | float], scale: float, offset: float) -> Decoder:
    """A float field's decoder: NaN or +-inf in the registers (a sensor's "no value", a
    misread word order) or a value the scale overflows is never a reading: it decodes to NaN,
    the one marker callers must treat as a rejected value (see :func:`rejected`)."""
    plain = scale == 1.0 and offset == 0.0

    def decode(block: Block) -> float:
        value = raw(block)
        if not plain:
            value = value * scale + offset
        if value - value != 0.0:  # inf - inf and nan - nan are nan; any finite x - x is 0
            return NAN
        return value if plain else round(value, 6)

    return decode


def rejected(values: dict[str, Value]) -> list[str]:
    """Names of the decoded values that are the NaN marker (non-finite float registers)."""
    return [name for name, v in values.items() if v != v]


def decode_field(f: FieldSpec, block: Block, start: int) -> Value:
    """Value of ``f`` from a block of registers (or bits) read from address ``start``."""
    return field_decoder(f, start)(block)


def decode_values(request: ReadRequest, block: Block) -> dict[str, Value]:
    return {name: decode(block) for name, decode in request.decoders}


def encode_field(f: FieldSpec, value: Value) -> list[int]:
    """Register words (wire order) holding ``value``; bit fields give the word with that bit.

    Raises :class:`EncodeError` when the value does not fit the type.
    """
    if f.table in BIT_TABLES:
        return [int(bool(value))]
    if f.bit is not None:
        return [int(bool(value)) << f.bit]
    if f.type == "bool":
        return [int(bool(value))]
    code, n = _TYPE_LAYOUT[f.type]
    raw: float
    if isinstance(value, int) and f.scale == 1.0 and f.offset == 0.0:
        raw = value  # exact, even for 64-bit integers beyond float precision
    else:
        raw = (float(value) - f.offset) / f.scale
    if code not in ("f", "d") and not isinstance(raw, int):
        if not math.isfinite(raw):
            raise EncodeError(f"field {f.name!r}: {value!r} is not a finite number")
        raw = round(raw)
    try:
        words = list(_WORDS[n].unpack(_STRUCTS[code].pack(raw)))
    except (struct.error, OverflowError) as exc:
        raise EncodeError(f"field {f.name!r}: {value!r} does not fit {f.type}: {exc}") from None
    return list(_reorder(words, f.order))
