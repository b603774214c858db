"""Device profiles: YAML templates of Modbus devices, merged with a site's overrides.

A profile file ``drivers/profiles/<name>.yaml`` holds a :class:`Profile`: the Modbus device
spec (``slave_id``, polling limits, ``fields``), the device's usual serial settings, and for
relay boards a ``relay`` section. ``fields`` is a mapping from metric name to its register so
that a site can override one attribute of one field::

    profile: dust-station
    overrides:
      slave_id: 3
      fields:
        pm10: {address: 0x01FD, scale: 0.1}
        pressure: null          # this unit has no barometer

:func:`resolve_profile` deep-merges: mappings merge key by key, anything else replaces, and
``null`` deletes. A profile may start from another with ``extends: <name>``. Every error names
the profile file (and the override) and the offending field.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from drivers.modbus import DeviceSpec

PROFILE_DIR = Path(__file__).parent


class ProfileError(ValueError):
    """A profile is missing, unreadable or invalid (with its overrides)."""


class SerialSettings(BaseModel):
    """The line settings the device ships with (its bus in site.yaml must match)."""

    model_config = ConfigDict(extra="forbid")

    baudrate: int = Field(default=9600, ge=300, le=921600)
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1


class RelaySpec(BaseModel):
    """How a relay board is switched and read back."""

    model_config = ConfigDict(extra="forbid")

    channels: int = Field(default=8, ge=1, le=256)
    # "coil": FC05/FC15 writes, FC01 read-back; "register": FC06 writes, FC03 read-back
    mode: Literal["coil", "register"] = "coil"
    coil_base: int = Field(default=0, ge=0, le=0xFFFF)  # coil of channel 0 (some boards: 1)
    write_function: Literal[5, 15] = 5  # 15 for boards that reject FC05
    register_base: int = Field(default=0, ge=0, le=0xFFFF)  # register mode: register of ch 0
    on_value: int = Field(default=1, ge=1, le=0xFFFF)  # register mode: value meaning "on"
    # hardware off-timer ("flash"): switch on now, the board switches off after value x 100 ms
    flash_base: int | None = Field(default=None, ge=0, le=0xFFFF)
    flash_function: Literal[5, 6] = 5


class Profile(DeviceSpec):
    """A device template: a :class:`DeviceSpec` plus what a person needs to wire it."""

    name: str
    description: str = ""
    model: str = ""  # InfluxDB "model" tag
    serial: SerialSettings = Field(default_factory=SerialSettings)
    relay: RelaySpec | None = None

    @model_validator(mode="after")
    def _relay_channels_fit(self) -> Profile:
        r = self.relay
        if r is not None and r.mode == "coil" and r.coil_base + r.channels > 0x10000:
            raise ValueError("relay coils run past address 65535")
        return self


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in: mappings recurse, ``None`` deletes, rest replaces."""
    out = dict(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


@lru_cache(maxsize=64)
def _read(name: str) -> dict[str, Any]:
    path = PROFILE_DIR / f"{name}.yaml"
    if not name or "/" in name or not path.is_file():
        known = ", ".join(profile_names())
        raise ProfileError(f"unknown profile {name!r} (known: {known})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a mapping at the top")
    parent = data.pop("extends", None)
    if parent is not None:
        if parent == name:
            raise ProfileError(f"{path}: extends itself")
        data = deep_merge(_read(str(parent)), data)
    data["name"] = name
    return data


def raw_profile(name: str) -> dict[str, Any]:
    """The merged YAML data of a profile (``extends`` resolved), before validation."""
    return _copy(_read(name))


def _copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_copy(v) for v in data]
    return data


def resolve_profile(name: str, overrides: Mapping[str, Any] | None = None) -> Profile:
    """Profile ``name`` with a site's ``overrides`` deep-merged in, validated."""
    data = raw_profile(name)
    if overrides:
        if not isinstance(overrides, Mapping):
            raise ProfileError(f"profile {name!r}: overrides must be a mapping")
        data = deep_merge(data, overrides)
        data["name"] = name
    fields = data.get("fields")
    if isinstance(fields, Mapping):
        data["fields"] = [
            {"name": key, **value} if isinstance(value, Mapping) else value
            for key, value in fields.items()
        ]
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        where = f"profile {name!r} ({PROFILE_DIR / (name + '.yaml')})"
        if overrides:
            where += " with site overrides"
        raise ProfileError(f"{where}: {_describe(exc, data)}") from None


def _describe(exc: ValidationError, data: dict[str, Any]) -> str:
    """Validation errors with field positions given by field name, not list index."""
    parts = []
    for err in exc.errors():
        loc = list(err["loc"])
        if len(loc) >= 2 and loc[0] == "fields" and isinstance(loc[1], int):
            fields = data.get("fields") or []
            if loc[1] < len(fields) and isinstance(fields[loc[1]], Mapping):
                loc[1] = str(fields[loc[1]].get("name", loc[1]))
        parts.append(f"{'.'.join(str(x) for x in loc) or '(top)'}: {err['msg']}")
    return "; ".join(parts)
