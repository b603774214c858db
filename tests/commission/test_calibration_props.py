"""Hypothesis properties of the calibration maths (``gateway.calibration``) and of a change
planned from published values (``gateway.commission.calibrate.plan_change``)."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.calibration import CalibrationError, Factors, calibrate, fit
from gateway.commission.calibrate import plan_change

# concentrations and their calibrations as they occur: 0..5000 ug/m3, gains 0.05..20
value = st.floats(-50, 5000, allow_nan=False)
scale = st.floats(0.05, 20)
offset = st.floats(-100, 100)
factors = st.builds(Factors, scale, offset)
SETTINGS = settings(max_examples=300, deadline=None)


def close(a: float, b: float, of: float = 1.0) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9 * max(1.0, abs(of)))


@SETTINGS
@given(factors, value)
def test_the_inverse_recovers_the_raw_value(f: Factors, raw: float) -> None:
    published = f.apply(raw)
    assert close(f.invert(published), raw, of=published / f.scale)


@SETTINGS
@given(value, value, value, value)
def test_two_points_give_the_line_through_both(x1: float, y1: float, x2: float, y2: float) -> None:
    assume(abs(x2 - x1) > 1e-3 * max(1.0, abs(x1), abs(x2)))
    assume((y2 - y1) / (x2 - x1) > 1e-6)  # a rising line (a falling one is refused)
    result = fit([(x1, y1), (x2, y2)])
    assert result.method == "two-point" and result.r2 == 1.0
    span = max(abs(y1), abs(y2), abs(x1), abs(x2), 1.0) * max(1.0, result.factors.scale)
    assert close(result.factors.apply(x1), y1, of=span)
    assert close(result.factors.apply(x2), y2, of=span)
    assert result.max_residual <= 1e-9 * span


@SETTINGS
@given(factors, st.lists(value, min_size=3, max_size=30, unique=True))
def test_points_on_a_line_give_that_line_back(f: Factors, xs: list[float]) -> None:
    assume(max(xs) - min(xs) > 1.0)
    result = fit([(x, f.apply(x)) for x in xs])
    assert result.method == "linear"
    assert math.isclose(result.factors.scale, f.scale, rel_tol=1e-7)
    assert math.isclose(result.factors.offset, f.offset, rel_tol=1e-6, abs_tol=1e-6 * 5000)
    assert result.r2 > 0.999999


@SETTINGS
@given(st.lists(st.tuples(value, value), min_size=3, max_size=30))
def test_least_squares_is_no_worse_than_any_line_through_the_mean(
    pairs: list[tuple[float, float]],
) -> None:
    xs = [x for x, _ in pairs]
    assume(max(xs) - min(xs) > 1.0)
    try:
        result = fit(pairs)
    except CalibrationError:
        return  # a falling cloud: refused, with words
    ss = sum((y - result.factors.apply(x)) ** 2 for x, y in pairs)
    # nudging the fitted gain either way only makes the squared error grow
    mx = sum(xs) / len(xs)
    my = sum(y for _, y in pairs) / len(pairs)
    for k in (0.9, 1.1):
        s = result.factors.scale * k
        other = sum((y - (my + s * (x - mx))) ** 2 for x, y in pairs)
        assert ss <= other * (1 + 1e-9) + 1e-6


@SETTINGS
@given(factors, factors, value)
def test_factors_compose(first: Factors, second: Factors, raw: float) -> None:
    both = first.then(second)
    assert close(both.apply(raw), second.apply(first.apply(raw)), of=both.apply(raw) + 1e4)


@SETTINGS
@given(factors, value, value, scale, offset)
def test_pairs_of_published_values_correct_the_device_from_where_it_stands(
    old: Factors, x1: float, x2: float, true_scale: float, true_offset: float
) -> None:
    assume(abs(x2 - x1) > 1.0)
    truth = Factors(true_scale, true_offset)  # raw -> reference
    pairs = [(old.apply(x), truth.apply(x)) for x in (x1, x2)]  # (published, reference)
    change = plan_change("d", "pm10", old, pairs=pairs)
    assert change.new is not None
    assert math.isclose(change.new.scale, truth.scale, rel_tol=1e-6)
    assert math.isclose(change.new.offset, truth.offset, rel_tol=1e-6, abs_tol=1e-5 * 5000)
    # the same pairs read as raw values: a different, wrong answer unless old is identity
    as_raw = plan_change(
        "d", "pm10", old, pairs=[(old.invert(p), r) for p, r in pairs], source="raw"
    )
    assert as_raw.new is not None and math.isclose(as_raw.new.scale, change.new.scale, rel_tol=1e-6)


@given(st.dictionaries(st.sampled_from(["pm1", "pm25", "pm10", "noise"]), value), factors)
def test_only_calibrated_metrics_change(values: dict[str, float], f: Factors) -> None:
    out = calibrate(values, {"pm10": f})
    assert out.keys() == values.keys()
    for k, v in values.items():
        assert out[k] == (f.apply(v) if k == "pm10" else v)


@pytest.mark.parametrize(
    ("pairs", "why"),
    [
        ([(10.0, 12.0)], "at least two"),
        ([(10.0, 12.0), (10.0, 30.0)], "all the same"),
        ([(10.0, 30.0), (50.0, 12.0)], "above 0"),
        ([(10.0, math.nan), (50.0, 12.0)], "finite"),
        ([(10.0, 1e308), (11.0, -1e308)], "finite"),
    ],
)
def test_pairs_that_make_no_calibration_are_refused_in_words(
    pairs: list[tuple[float, float]], why: str
) -> None:
    with pytest.raises(CalibrationError, match=why):
        fit(pairs)


def test_factors_are_checked() -> None:
    for bad in ((0.0, 1.0), (-1.0, 0.0), (math.inf, 0.0), (1.0, math.nan)):
        with pytest.raises(CalibrationError):
            Factors(*bad)
