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

Where profiles come from: a :class:`ProfileSearch` looks a name up in a list of folders, first
match wins: a site's own folders (``profile_paths:`` in site.yaml), then
``/etc/dustgate/profiles``, then the ones shipped here. So a technician adds or replaces a
profile without touching the installed package. A reference ending in ``.yaml`` (or ``.yml``)
and holding a ``/`` is a file path (relative to the site.yaml's folder), e.g.
``profile: profiles/my-station.yaml``. A profile that ``extends`` its own name starts from the
next profile of that name down the search path (a site's ``dust-station.yaml`` can change one
address of the shipped one).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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


class ProfileSource(BaseModel):
    """The vendor document a profile's register map comes from, as a user can look it up.

    ``version`` is the document's revision where known, else it says that it was not
    recorded; ``verify`` what was not confirmed against a real unit."""

    model_config = ConfigDict(extra="forbid")

    vendor: str = Field(min_length=1)
    document: str = Field(min_length=1)
    model: str = Field(min_length=1)
    version: str = Field(min_length=1)
    verify: str = ""


class Profile(DeviceSpec):
    """A device template: a :class:`DeviceSpec` plus what a person needs to wire it."""

    name: str
    description: str = ""
    source: ProfileSource | None = None  # where the register map comes from
    model: str = ""  # InfluxDB "model" tag
    serial: SerialSettings = Field(default_factory=SerialSettings)
    relay: RelaySpec | None = None

    @model_validator(mode="after")
    def _relay_channels_fit(self) -> Profile:
        r = self.relay
        if r is not None and r.mode == "coil" and r.coil_base + r.channels > 0x10000:
            raise ValueError("relay coils run past address 65535")
        return self


SYSTEM_PROFILE_DIR = Path("/etc/dustgate/profiles")


@dataclass(frozen=True)
class ProfileSearch:
    """Where profile names are looked up (first match wins) and where relative paths start."""

    dirs: tuple[Path, ...] = (SYSTEM_PROFILE_DIR, PROFILE_DIR)
    base: Path = Path(".")
    # how a profile file becomes data: the caller's hardened YAML loader (the agent's
    # gateway.yamlsafe: a site's own profiles are files a person wrote), raising
    # ProfileError; None: PyYAML's safe_load
    loader: Callable[[Path], Any] | None = None

    @classmethod
    def for_site(
        cls,
        profile_paths: Sequence[Path],
        base: Path,
        loader: Callable[[Path], Any] | None = None,
    ) -> ProfileSearch:
        """A site's own folders (relative to ``base``, its site.yaml's folder) ahead of
        ``/etc/dustgate/profiles`` and the shipped profiles."""
        own = tuple(p if p.is_absolute() else base / p for p in profile_paths)
        return cls((*own, SYSTEM_PROFILE_DIR, PROFILE_DIR), base, loader)

    def names(self) -> list[str]:
        """Every profile name the search finds."""
        found: set[str] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError):
                found.update(p.stem for p in d.glob("*.yaml"))
        return sorted(found)

    def locate(self, ref: str, after: Path | None = None) -> Path:
        """The file ``ref`` (a name or a ``.yaml`` path) stands for; with ``after``, only
        folders after the one holding that file are searched (``extends`` of its own name)."""
        if is_path_ref(ref):
            path = Path(ref).expanduser()
            path = path if path.is_absolute() else self.base / path
            if not path.is_file():
                raise ProfileError(f"profile file {str(path)!r} not found")
            return path
        if not _NAME.fullmatch(ref):
            raise ProfileError(f"unknown profile {ref[:80]!r} (known: {', '.join(self.names())})")
        dirs = self.dirs
        if after is not None:
            folders = [d.resolve() for d in dirs]
            here = after.parent.resolve()
            dirs = dirs[folders.index(here) + 1 :] if here in folders else ()
        for d in dirs:
            path = d / f"{ref}.yaml"
            if path.is_file():
                return path
        if after is not None:
            raise ProfileError(f"{after}: extends {ref!r}, found nowhere further down the path")
        where = ", ".join(str(d) for d in self.dirs)
        raise ProfileError(
            f"unknown profile {ref!r} (known: {', '.join(self.names())}; searched {where})"
        )


DEFAULT_SEARCH = ProfileSearch()
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def is_path_ref(ref: str) -> bool:
    """A profile reference is a file path if it names a ``.yaml``/``.yml`` file with a folder."""
    return "/" in ref and ref.endswith((".yaml", ".yml"))


def profile_names(search: ProfileSearch = DEFAULT_SEARCH) -> list[str]:
    return search.names()


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


def _read(
    ref: str, search: ProfileSearch, after: Path | None = None, chain: tuple[Path, ...] = ()
) -> tuple[dict[str, Any], Path]:
    path = search.locate(ref, after)
    if path in chain:
        raise ProfileError(f"{path}: extends itself (through {', '.join(map(str, chain))})")
    try:
        stat = path.stat()
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read: {exc.strerror}") from None
    data = dict(_load(path, stat.st_mtime_ns, stat.st_size, search.loader))
    parent = data.pop("extends", None)
    if parent is not None:
        parent = str(parent)
        # a profile extending its own name starts from the next one down the path
        same = parent == _stem(ref) and not is_path_ref(parent) and not is_path_ref(ref)
        base, _ = _read(parent, search, path if same else None, (*chain, path))
        data = deep_merge(base, data)
    data["name"] = _stem(ref)
    return data, path


def _stem(ref: str) -> str:
    return Path(ref).stem if is_path_ref(ref) else ref


@lru_cache(maxsize=64)
def _load(
    path: Path, _mtime_ns: int, _size: int, loader: Callable[[Path], Any] | None
) -> dict[str, Any]:
    """One profile file's YAML (cached while the file is unchanged)."""
    try:
        if loader is not None:
            data = loader(path)
        else:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a mapping at the top")
    return data


def profile_source(name: str, search: ProfileSearch = DEFAULT_SEARCH) -> Path:
    """The file a profile reference resolves to (``dustgate check`` shows it)."""
    return search.locate(name)


def _copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_copy(v) for v in data]
    return data


def resolve_profile(
    name: str,
    overrides: Mapping[str, Any] | None = None,
    search: ProfileSearch = DEFAULT_SEARCH,
) -> Profile:
    """Profile ``name`` with a site's ``overrides`` deep-merged in, validated."""
    data, path = _read(name, search)
    data = _copy(data)
    if overrides:
        if not isinstance(overrides, Mapping):
            raise ProfileError(f"profile {name!r}: overrides must be a mapping")
        data = deep_merge(data, overrides)
        data["name"] = _stem(name)
    fields = data.get("fields")
    if isinstance(fields, Mapping):
        data["fields"] = [
            {"name": key, **value} if isinstance(value, Mapping) else value
            for key, value in fields.items()
        ]
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        where = f"profile {name!r} ({path})"
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
