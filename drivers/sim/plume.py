"""A small dust-plume model of a construction-site gate, for the simulators and the demo.

Not physics, just the shape a dust controller must cope with:

- background PM10 around 50-70 ug/m3 with slow noise;
- an earthwork event near the gate: its emission ramps up, holds, then decays; without spray the
  monitor reads PM10 around 200-400;
- the wind carries the plume: the monitor sees most of it when the wind blows from the gate
  towards it, less across or against, and stronger wind dilutes it;
- each active fog cannon suppresses emission and scavenges airborne dust, so two cannons bring
  PM10 below ~80 within roughly 30-60 s;
- machine noise rises during the event.

The excess concentration E above background follows
``dE/dt = (target - E) / MIX_TIME_S - SCAVENGE_PER_CANNON * cannons * E`` with
``target = peak * profile(t) * wind_factor / (1 + SUPPRESS_PER_CANNON * cannons)``.

:func:`step` is pure and deterministic: randomness comes from a splitmix64 counter carried in
the state, so a seed and a list of ``dt`` values always give the same trajectory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

MIX_TIME_S = 15.0
SCAVENGE_PER_CANNON = 0.06  # 1/s
SUPPRESS_PER_CANNON = 4.0
RAMP_S = 20.0
DECAY_S = 60.0
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class PlumeState:
    t: float = 0.0
    seed: int = 1
    cannons: int = 0
    background_pm10: float = 60.0
    excess_pm10: float = 0.0
    event_start: float | None = None
    event_hold_s: float = 120.0
    event_peak_pm10: float = 280.0
    wind_speed: float = 2.0  # m/s
    wind_dir: float = 200.0  # degrees the wind comes from
    gate_bearing: float = 200.0  # direction from the monitor to the gate
    temp: float = 18.0
    rh: float = 55.0
    pressure: float = 1013.0
    noise: float = 55.0  # dB(A)


def _splitmix(x: int) -> tuple[int, float]:
    """Next counter and a uniform number in [0, 1)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return x, z / 2.0**64


def _gauss(seed: int) -> tuple[int, float]:
    seed, u1 = _splitmix(seed)
    seed, u2 = _splitmix(seed)
    return seed, math.sqrt(-2.0 * math.log(1.0 - u1)) * math.cos(2 * math.pi * u2)


def event_profile(state: PlumeState) -> float:
    """Emission of the current event, 0..1: ramp up, hold, exponential decay."""
    if state.event_start is None:
        return 0.0
    age = state.t - state.event_start
    if age < 0:
        return 0.0
    if age < RAMP_S:
        return age / RAMP_S
    if age < RAMP_S + state.event_hold_s:
        return 1.0
    return math.exp(-(age - RAMP_S - state.event_hold_s) / (DECAY_S / 3))


def wind_factor(state: PlumeState) -> float:
    """Share of the plume reaching the monitor: direction (gate upwind) and dilution."""
    angle = math.radians(state.wind_dir - state.gate_bearing)
    direction = 0.55 + 0.45 * math.cos(angle)
    return direction * 2.0 / (1.0 + 0.5 * state.wind_speed)


def start_event(state: PlumeState, hold_s: float = 120.0, peak_pm10: float = 280.0) -> PlumeState:
    return replace(state, event_start=state.t, event_hold_s=hold_s, event_peak_pm10=peak_pm10)


def step(state: PlumeState, dt: float) -> PlumeState:
    """Advance the model by ``dt`` seconds (sub-stepped so large ``dt`` stays stable)."""
    substeps = max(1, math.ceil(dt / 0.5))
    h = dt / substeps
    for _ in range(substeps):
        state = _substep(state, h)
    return state


def _substep(s: PlumeState, h: float) -> PlumeState:
    seed, g_bg = _gauss(s.seed)
    seed, g_speed = _gauss(seed)
    seed, g_dir = _gauss(seed)
    seed, g_noise = _gauss(seed)
    cannons = max(0, s.cannons)
    profile = event_profile(s)
    target = s.event_peak_pm10 * profile * wind_factor(s) / (1 + SUPPRESS_PER_CANNON * cannons)
    rate = 1.0 / MIX_TIME_S + SCAVENGE_PER_CANNON * cannons
    # exact solution of dE/dt = target/MIX - rate*E over h (stable for any h)
    e_inf = target / MIX_TIME_S / rate
    excess = e_inf + (s.excess_pm10 - e_inf) * math.exp(-rate * h)
    root_h = math.sqrt(h)
    background = s.background_pm10 + 0.02 * (60.0 - s.background_pm10) * h + 0.8 * g_bg * root_h
    speed = s.wind_speed + 0.05 * (2.0 - s.wind_speed) * h + 0.15 * g_speed * root_h
    noise_target = 55.0 + 22.0 * profile
    noise = noise_target + (s.noise - noise_target) * math.exp(-h / 3.0) + 0.5 * g_noise * root_h
    return replace(
        s,
        t=s.t + h,
        seed=seed,
        excess_pm10=max(0.0, excess),
        background_pm10=min(75.0, max(45.0, background)),
        wind_speed=min(15.0, max(0.0, speed)),
        wind_dir=(s.wind_dir + 2.0 * g_dir * root_h) % 360.0,
        noise=noise,
    )


_BEAUFORT_UPPER_MS = (0.3, 1.6, 3.4, 5.5, 8.0, 10.8, 13.9, 17.2, 20.8, 24.5, 28.5, 32.7)


def beaufort(speed: float) -> int:
    """Beaufort force of a wind speed in m/s."""
    return next((i for i, top in enumerate(_BEAUFORT_UPPER_MS) if speed < top), 12)


def readings(s: PlumeState) -> dict[str, float]:
    """What a monitor at the gate reads now (ug/m3, m/s, degrees, C, %RH, hPa, dB(A))."""
    pm10 = s.background_pm10 + s.excess_pm10
    pm25 = 0.45 * s.background_pm10 + 0.25 * s.excess_pm10  # earthwork dust is coarse
    return {
        "pm1": round(0.7 * pm25, 1),
        "pm25": round(pm25, 1),
        "pm10": round(pm10, 1),
        "tsp": round(1.5 * s.background_pm10 + 1.8 * s.excess_pm10, 1),
        "noise": round(s.noise, 1),
        "wind_speed": round(s.wind_speed, 1),
        "wind_dir": round(s.wind_dir, 0),
        "wind_sector": round(s.wind_dir / 45.0) % 8,  # 0 = N, 1 = NE, ...
        "wind_force": beaufort(s.wind_speed),
        "temp": round(s.temp, 1),
        "rh": round(s.rh, 1),
        "pressure": round(s.pressure, 1),
    }
