"""Line protocol: escaping, value types, NaN handling, encode -> parse round trips."""

from __future__ import annotations

import contextlib
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rules.sink.lineprotocol import (
    LineProtocolError,
    Point,
    encode_line,
    measurement_of,
    parse_line,
)

names = st.text(min_size=1, max_size=20)  # any unicode, incl. space , = " \ newline
tag_values = st.text(min_size=1, max_size=20)
field_values = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.text(max_size=30),
)


@given(
    meas=names.filter(lambda m: not m.startswith("#")),  # a comment line: refused (below)
    tags=st.dictionaries(names, tag_values, max_size=4),
    fields=st.dictionaries(names, field_values, min_size=1, max_size=5),
    ts=st.one_of(st.none(), st.integers(min_value=0, max_value=10**13)),
)
def test_round_trip(meas: str, tags: dict[str, str], fields: dict[str, object], ts: int | None):
    line = encode_line(meas, tags, fields, ts)  # type: ignore[arg-type]
    assert line is not None
    assert "\n" not in line and "\r" not in line  # one point, one physical line
    assert parse_line(line) == Point(meas, tags, fields, ts)  # type: ignore[arg-type]
    assert measurement_of(line) == meas


def test_a_measurement_that_would_read_as_a_comment_is_refused() -> None:
    with pytest.raises(LineProtocolError, match="starts with '#'"):
        encode_line("#telemetry", {}, {"pm10": 1.0}, 1)
    assert parse_line(encode_line("te#lemetry", {}, {"pm10": 1.0}, 1) or "").measurement == (
        "te#lemetry"
    )


@given(
    fields=st.dictionaries(
        st.text(min_size=1, max_size=5),
        st.one_of(st.floats(), st.integers(min_value=-5, max_value=5)),
        min_size=1,
        max_size=6,
    )
)
def test_non_finite_fields_are_dropped_never_emitted(fields: dict[str, float]):
    line = encode_line("m", {}, fields, 1)
    finite = {
        k: v for k, v in fields.items() if not (isinstance(v, float) and not math.isfinite(v))
    }
    if not finite:
        assert line is None
        return
    assert line is not None
    # the parser refuses nan/inf values, so this also proves none was emitted
    assert parse_line(line).fields == finite


def test_exact_encoding_of_the_awkward_cases():
    line = encode_line(
        "my meas,x",
        {"tag key": "a=b,c", "empty": "", "b": "z"},
        {"f=1": 1, "s": 'say "hi"\\ now\n', "b": True, "x": 2.5},
        1700000000123,
    )
    assert line == (
        'my\\ meas\\,x,b=z,tag\\ key=a\\=b\\,c f\\=1=1i,s="say \\"hi\\"\\\\ now\\n",b=true,x=2.5'
        " 1700000000123"
    )


def test_float_keeps_its_type_even_when_integral():
    assert encode_line("m", {}, {"v": 3.0}, None) == "m v=3.0"
    assert encode_line("m", {}, {"v": 3}, None) == "m v=3i"


@pytest.mark.parametrize(
    "bad",
    ["", "m", "m ", "m,t= f=1", "m f=", 'm f="open', "m f=1 12x", "m f=1i2", "m f=nan", "m f=1\\"],
)
def test_parse_errors_are_typed(bad: str):
    with pytest.raises(LineProtocolError):
        parse_line(bad)


@given(st.text(max_size=60))
def test_parser_on_garbage_raises_only_its_error(text: str):
    with contextlib.suppress(LineProtocolError):
        parse_line(text)


def test_encoder_refuses_what_influx_cannot_hold():
    with pytest.raises(LineProtocolError):
        encode_line("", {}, {"f": 1.0}, None)
    with pytest.raises(LineProtocolError):
        encode_line("m", {}, {"f": 2**64}, None)
    with pytest.raises(LineProtocolError):
        encode_line("m", {}, {"f": 1.0}, 1.5)  # type: ignore[arg-type]
