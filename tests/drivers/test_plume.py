"""The plume model: deterministic, and the shape the demo and rules rely on."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.sim.plume import PlumeState, readings, start_event, step


def _run(state: PlumeState, seconds: int, dt: float = 1.0) -> PlumeState:
    for _ in range(int(seconds / dt)):
        state = step(state, dt)
    return state


def test_same_seed_same_trajectory() -> None:
    a = _run(start_event(PlumeState(seed=42)), 50)
    b = _run(start_event(PlumeState(seed=42)), 50)
    c = _run(start_event(PlumeState(seed=43)), 50)
    assert a == b
    assert readings(a) != readings(c)


def test_background_event_and_spray() -> None:
    for seed in range(1, 6):
        state = _run(PlumeState(seed=seed), 60)
        assert 45 <= readings(state)["pm10"] <= 75
        quiet_noise = readings(state)["noise"]
        state = _run(start_event(state), 90)
        during = readings(state)
        assert 200 <= during["pm10"] <= 400, seed
        assert during["noise"] > quiet_noise + 10
        assert during["pm25"] < during["pm10"] < during["tsp"]
        sprayed = _run(replace(state, cannons=2), 60)
        assert readings(sprayed)["pm10"] < 80, seed
        unsprayed = _run(state, 60)
        assert readings(unsprayed)["pm10"] > 200, seed


def test_wind_blowing_away_from_the_monitor_carries_less_dust() -> None:
    towards = _run(start_event(PlumeState(seed=7)), 60)
    away = _run(start_event(PlumeState(seed=7, wind_dir=20.0)), 60)
    assert readings(away)["pm10"] < readings(towards)["pm10"] - 100


def test_event_ends() -> None:
    state = _run(start_event(PlumeState(seed=3), hold_s=30), 300)
    assert readings(state)["pm10"] < 80


@settings(max_examples=30, deadline=None)
@given(
    st.integers(0, 2**32),
    st.lists(st.floats(0.01, 20.0), min_size=1, max_size=30),
    st.integers(0, 4),
)
def test_readings_stay_physical(seed: int, dts: list[float], cannons: int) -> None:
    state = start_event(PlumeState(seed=seed, cannons=cannons))
    for dt in dts:
        state = step(state, dt)
        r = readings(state)
        assert r["pm10"] >= 0 and r["pm25"] >= 0
        assert 0 <= r["wind_dir"] <= 360
        assert 0 <= r["wind_speed"] <= 15
    assert abs(state.t - sum(dts)) < 1e-6
