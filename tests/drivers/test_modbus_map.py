"""Register maps: field validation, encode/decode round trips, read planning."""

from __future__ import annotations

import itertools
import math
import struct

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers.errors import EncodeError
from drivers.modbus import (
    DeviceSpec,
    FieldSpec,
    decode_field,
    decode_values,
    encode_field,
    plan_reads,
)

INT_RANGES = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}
ORDERS = ["ABCD", "CDAB", "BADC", "DCBA"]


def test_word_orders_on_a_known_float() -> None:
    # 123.456 as float32 is 42 F6 E9 79 (A B C D)
    assert struct.pack(">f", 123.456).hex() == "42f6e979"
    expected = {
        "ABCD": [0x42F6, 0xE979],
        "CDAB": [0xE979, 0x42F6],
        "BADC": [0xF642, 0x79E9],
        "DCBA": [0x79E9, 0xF642],
    }
    for order, words in expected.items():
        f = FieldSpec.model_validate({"name": "x", "address": 0, "type": "float32", "order": order})
        assert encode_field(f, 123.456) == words
        assert decode_field(f, words, 0) == pytest.approx(123.456, rel=1e-6)


def test_scaled_signed_temperature() -> None:
    f = FieldSpec(name="temp", address=0x1F9, type="int16", scale=0.1)
    assert decode_field(f, [0xFFDE], 0x1F9) == -3.4
    assert encode_field(f, -3.4) == [0xFFDE]


def test_bit_fields_share_a_word() -> None:
    spec = DeviceSpec(
        slave_id=1,
        fields=[
            FieldSpec(name="alarm", address=4, bit=0, type="bool"),
            FieldSpec(name="door", address=4, bit=15, type="bool"),
            FieldSpec(name="pump", address=4, bit=3),
        ],
    )
    (request,) = spec.plan()
    assert (request.address, request.count) == (4, 1)
    assert decode_values(request, (0b1000_0000_0000_1000,)) == {
        "alarm": False,
        "door": True,
        "pump": 1,
    }


def test_encode_rejects_values_that_do_not_fit() -> None:
    with pytest.raises(EncodeError):
        encode_field(FieldSpec(name="x", address=0, type="uint16"), -1)
    with pytest.raises(EncodeError):
        encode_field(FieldSpec(name="x", address=0, type="int16", scale=0.1), 4000)
    with pytest.raises(EncodeError):
        encode_field(FieldSpec(name="x", address=0, type="int32"), math.inf)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "x", "address": 0, "table": "coil", "type": "uint16"},
        {"name": "x", "address": 0, "bit": 3, "type": "float32"},
        {"name": "x", "address": 0, "scale": 0},
        {"name": "x", "address": 0xFFFF, "type": "int32"},
        {"name": "x", "address": 0, "colour": "red"},
    ],
)
def test_invalid_fields_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        FieldSpec.model_validate(kwargs)


def test_duplicate_names_and_oversized_fields_rejected() -> None:
    with pytest.raises(ValidationError, match="duplicate"):
        DeviceSpec(slave_id=1, fields=[FieldSpec(name="a", address=0)] * 2)
    with pytest.raises(ValidationError, match="max_registers_per_request"):
        DeviceSpec(
            slave_id=1,
            fields=[FieldSpec(name="a", address=0, type="float64")],
            max_registers_per_request=2,
        )


@st.composite
def typed_values(draw: st.DrawFn) -> tuple[FieldSpec, float | int]:
    vtype = draw(st.sampled_from([*INT_RANGES, "float32", "float64"]))
    order = draw(st.sampled_from(ORDERS))
    scale = draw(st.sampled_from([1.0, 0.1, 0.01, 10.0, 0.5]))
    offset = draw(st.sampled_from([0.0, -40.0, 273.15]))
    f = FieldSpec.model_validate(
        {
            "name": "v",
            "address": 100,
            "type": vtype,
            "order": order,
            "scale": scale,
            "offset": offset,
        }
    )
    if vtype in INT_RANGES:
        lo, hi = INT_RANGES[vtype]
        if (scale, offset) != (1.0, 0.0):
            # a scaled value travels as a float: exact only within 53 bits
            lo, hi = max(lo, -(2**53)), min(hi, 2**53)
        raw = draw(st.integers(lo, hi))
        value: float | int = raw if (scale, offset) == (1.0, 0.0) else raw * scale + offset
        return f, value
    if vtype == "float32":
        raw_float = draw(st.floats(allow_nan=False, allow_infinity=False, width=32))
    else:
        raw_float = draw(st.floats(allow_nan=False, allow_infinity=False))
    assume(abs(raw_float) < 1e30)
    return f, raw_float * scale + offset


@given(typed_values())
def test_every_type_order_and_scale_round_trips(case: tuple[FieldSpec, float | int]) -> None:
    f, value = case
    words = encode_field(f, value)
    assert len(words) == f.width
    assert all(0 <= w <= 0xFFFF for w in words)
    padded = [0x1111, *words, 0x2222]
    decoded = decode_field(f, padded, f.address - 1)
    if f.type in INT_RANGES and (f.scale, f.offset) == (1.0, 0.0):
        assert decoded == value
        assert isinstance(decoded, int)
    else:
        # scaled values are rounded to 6 decimals; float32 keeps ~7 significant digits
        rel = 1e-6 if f.type == "float32" else 1e-9
        assert decoded == pytest.approx(value, rel=rel, abs=1e-6 + abs(f.offset) * 1e-9)
        # and re-encoding the decoded value gives the same words back for integer types
        if f.type in INT_RANGES and abs(value) < 1e9:
            assert encode_field(f, decoded) == words


@st.composite
def field_strategy(draw: st.DrawFn) -> FieldSpec:
    table = draw(st.sampled_from(["holding", "input", "coil", "discrete"]))
    vtype = "bool"
    if table in ("holding", "input"):
        vtype = draw(st.sampled_from(["uint16", "int32", "float64", "bool"]))
    address = draw(st.integers(0, 400))
    return FieldSpec.model_validate(
        {"name": "placeholder", "table": table, "address": address, "type": vtype}
    )


@given(
    st.lists(field_strategy(), min_size=1, max_size=40),
    st.integers(4, 125),
    st.integers(0, 20),
)
def test_planner_covers_every_field_once_within_limits(
    fields: list[FieldSpec], max_registers: int, max_gap: int
) -> None:
    fields = [f.model_copy(update={"name": f"f{i}"}) for i, f in enumerate(fields)]
    plan = plan_reads(fields, max_registers, max_gap)
    seen = [f.name for request in plan for f in request.fields]
    assert sorted(seen) == sorted(f.name for f in fields)
    for request in plan:
        limit = 2000 if request.table in ("coil", "discrete") else max_registers
        assert 1 <= request.count <= limit
        for f in request.fields:
            assert f.table == request.table
            assert request.address <= f.address
            assert f.address + f.width <= request.address + request.count
    # fewest requests: no two neighbouring requests of a table could have been one
    for a, b in itertools.pairwise(plan):
        if a.table != b.table:
            continue
        limit = 2000 if a.table in ("coil", "discrete") else max_registers
        merged_span = max(a.address + a.count, b.address + b.count) - a.address
        gap = b.address - (a.address + a.count)
        assert merged_span > limit or gap > max_gap


def test_planner_bridges_small_gaps_only() -> None:
    fields = [
        FieldSpec(name="a", address=0),
        FieldSpec(name="b", address=5),
        FieldSpec(name="c", address=40),
        FieldSpec(name="d", address=0, table="input"),
    ]
    plan = plan_reads(fields, 125, 10)
    assert [(r.table, r.address, r.count) for r in plan] == [
        ("holding", 0, 6),
        ("holding", 40, 1),
        ("input", 0, 1),
    ]


@given(
    kind=st.sampled_from(["float32", "float64"]),
    order=st.sampled_from(ORDERS),
    words=st.lists(st.integers(0, 0xFFFF), min_size=4, max_size=4),
    scale=st.sampled_from([1.0, 0.1, 10.0, 1e300, -2.5]),
    offset=st.sampled_from([0.0, -40.0, 1e308]),
)
def test_float_registers_never_decode_to_a_non_finite_number(
    kind: str, order: str, words: list[int], scale: float, offset: float
) -> None:
    """NaN/+-inf in the registers, or a value the scale overflows, decode to the NaN marker
    (and :func:`rejected` names it); everything else to the finite ``raw * scale + offset``."""
    from drivers.modbus import rejected

    f = FieldSpec(name="x", address=0, type=kind, order=order, scale=scale, offset=offset)  # type: ignore[arg-type]
    n = 2 if kind == "float32" else 4
    value = decode_field(f, words[:n], 0)
    assert isinstance(value, float)
    assert not math.isinf(value)
    wire = (
        [(w >> 8) | (w & 0xFF) << 8 for w in words[:n]] if order in ("BADC", "DCBA") else words[:n]
    )
    if order in ("CDAB", "DCBA"):
        wire = wire[::-1]
    raw = struct.unpack(">f" if n == 2 else ">d", struct.pack(f">{n}H", *wire))[0]
    expected = raw if scale == 1.0 and offset == 0.0 else raw * scale + offset
    if math.isfinite(expected):
        assert value == (expected if scale == 1.0 and offset == 0.0 else round(expected, 6))
        assert rejected({"x": value}) == []
    else:
        assert math.isnan(value) and rejected({"x": value, "y": 1.0}) == ["x"]


def test_nan_and_inf_registers_are_rejected_not_values() -> None:
    from drivers.modbus import rejected

    f = FieldSpec(name="pm10", address=0, type="float32")
    for special in (math.nan, math.inf, -math.inf):
        words = list(struct.unpack(">2H", struct.pack(">f", special)))
        assert rejected({"pm10": decode_field(f, words, 0)}) == ["pm10"]
