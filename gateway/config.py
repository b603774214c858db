"""``site.yaml``: what the edge agent of one site talks to and how.

A site has buses (RS485 serial lines, Modbus TCP device servers), devices on
them (a device names a profile, looked up in the site's ``profile_paths``,
``/etc/dustgate/profiles`` and ``drivers/profiles``, and may override any
field of it), UART particulate sensors on their own ports, actuators (relay
channels driving fog cannons) with local safety limits that no command can
exceed, the MQTT uplink, and the outbox. See ``examples/site.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    field_validator,
    model_validator,
)

from gateway.calibration import Factors, fit
from gateway.configfile import (
    ConfigError,
    Duration,
    Loc,
    MqttSettings,
    StrictModel,
    load,
    parse_duration,
)
from gateway.lease import ActuatorLimits
from gateway.protocol import ID_PATTERN, METRIC_PATTERN, Status, TagText
from gateway.uplinks.hj212_settings import Hj212Settings, uplink_key

if TYPE_CHECKING:
    from drivers.profiles import ProfileSearch

Id = Annotated[str, Field(pattern=ID_PATTERN)]
RESERVED_IDS = {"gateway", "events"}  # topic segments of their own


class SerialBus(StrictModel):
    """An RS485 line (USB adapter or UART) carrying Modbus RTU."""

    id: Id
    type: Literal["rtu"] = "rtu"
    port: str
    baudrate: Annotated[int, Field(ge=300, le=921600)] = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    # cap of the retry backoff of a failing device or link (a dead slave is retried at
    # least this often; the link at least every min(60s, backoff_max))
    backoff_max: Duration = 300.0


class TcpBus(StrictModel):
    """Modbus TCP, or RTU framing tunnelled through a serial device server."""

    id: Id
    type: Literal["tcp", "rtu_over_tcp"]
    host: str
    port: Annotated[int, Field(ge=1, le=65535)] = 502
    backoff_max: Duration = 300.0  # as SerialBus.backoff_max


def _tag(key: str, default: str) -> Any:
    # the tag may be left out (type: rtu, driver: modbus are the usual case)
    return Discriminator(
        lambda v: v.get(key, default) if isinstance(v, dict) else getattr(v, key, default)
    )


Bus = Annotated[
    Annotated[SerialBus, Tag("rtu")]
    | Annotated[TcpBus, Tag("tcp")]
    | Annotated[TcpBus, Tag("rtu_over_tcp")],
    _tag("type", "rtu"),
]


class Quality(StrictModel):
    """Data-quality checks applied by the agent before publishing."""

    # metric -> [low, high]; outside -> over_range for that metric
    valid_range: dict[str, tuple[float, float]] = Field(default_factory=dict)
    # the same value for this long -> fault (a frozen sensor); 0 = off
    stuck_after: Duration = 0.0
    stuck_metrics: list[str] | None = None  # default: all metrics of the device
    # operator-set state for the whole device (HJ 212 M / C flags)
    mode: Literal["normal", "maintenance", "calibrating", "stopped"] = "normal"


class MetricCalibration(StrictModel):
    """One metric's calibration, ``value = raw * scale + offset``: the factors, or the
    (device, reference) pairs of a co-location to fit them to (two: the line through
    both; more: the least-squares line). See ``gateway.calibration``."""

    scale: float | None = None
    offset: float | None = None
    points: list[tuple[float, float]] | None = None
    reference: str | None = None  # the reference monitor, for the reader of this file

    @model_validator(mode="after")
    def _valid(self) -> MetricCalibration:
        if self.points is not None and (self.scale is not None or self.offset is not None):
            raise ValueError("give either points or scale/offset, not both")
        self.factors()  # raises CalibrationError (a ValueError) with the reason
        return self

    def factors(self) -> Factors:
        if self.points is not None:
            return fit(self.points).factors
        return Factors(1.0 if self.scale is None else self.scale, self.offset or 0.0)


Calibrations = dict[Annotated[str, Field(pattern=METRIC_PATTERN)], MetricCalibration]


class _DeviceBase(StrictModel):
    id: Id
    interval: Annotated[float, BeforeValidator(parse_duration), Field(ge=0.05)] = 10.0
    quality: Quality = Field(default_factory=Quality)
    enabled: bool = True
    model: TagText | None = None  # InfluxDB tag; defaults to the profile or driver name
    # metric -> its calibration against a reference monitor (also from calibration_file)
    calibration: Calibrations = Field(default_factory=dict)

    def calibration_factors(self) -> dict[str, Factors]:
        """metric -> factors of every calibrated metric (identity ones left out)."""
        out = {m: c.factors() for m, c in self.calibration.items()}
        return {m: f for m, f in out.items() if not f.identity}

    @model_validator(mode="after")
    def _not_reserved(self) -> _DeviceBase:
        if self.id in RESERVED_IDS:
            raise ValueError(f"id {self.id!r} is reserved (it is a topic segment)")
        return self


class ModbusDevice(_DeviceBase):
    driver: Literal["modbus"] = "modbus"
    bus: Id
    profile: str
    slave_id: Annotated[int, Field(ge=0, le=255)] | None = None
    # Any field of the profile may be overridden here (deep-merged).
    overrides: dict[str, Any] = Field(default_factory=dict)


UART_METRICS = {"sds011": ("pm25", "pm10"), "pms5003": ("pm1", "pm25", "pm10")}
UART_METRICS["pms7003"] = UART_METRICS["pms5003"]


class UartDevice(_DeviceBase):
    driver: Literal["sds011", "pms5003", "pms7003"]
    port: str
    baudrate: int = 9600
    mode: Literal["active", "query"] = "active"
    timeout: Duration = 3.0

    # not a setting: here to say what to use instead (site.yaml writers try it)
    overrides: Any = Field(default=None, exclude=True)

    @field_validator("overrides")
    @classmethod
    def _no_overrides(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError(
                "a serial sensor has no register map to override; correct its readings "
                "with calibration: {pm10: {scale: 0.9, offset: 2}} (or points:)"
            )
        return value


Device = Annotated[
    Annotated[ModbusDevice, Tag("modbus")]
    | Annotated[UartDevice, Tag("sds011")]
    | Annotated[UartDevice, Tag("pms5003")]
    | Annotated[UartDevice, Tag("pms7003")],
    _tag("driver", "modbus"),
]


class Actuator(StrictModel):
    """A relay channel switching a fog cannon or a spray valve."""

    id: Id
    bus: Id
    profile: str = "relay-8ch"
    slave_id: Annotated[int, Field(ge=0, le=255)] | None = None
    channel: Annotated[int, Field(ge=0, le=255)] = 0
    overrides: dict[str, Any] = Field(default_factory=dict)
    limits: ActuatorLimits = Field(default_factory=ActuatorLimits)
    # arm the board's own off-timer (Waveshare "flash") so the relay drops even
    # if this process dies; seconds, 0 = off
    hardware_timer: Duration = 0.0
    description: str = ""

    @model_validator(mode="after")
    def _not_reserved(self) -> Actuator:
        if self.id in RESERVED_IDS:
            raise ValueError(f"id {self.id!r} is reserved (it is a topic segment)")
        return self


class OutboxSettings(StrictModel):
    path: Path = Path("state/outbox.db")
    max_rows: Annotated[int, Field(ge=100)] = 2_000_000
    max_age: Duration = 7 * 86400.0
    commit_interval: Duration = 1.0
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"


class StatusSettings(StrictModel):
    interval: Duration = 30.0


class SiteConfig(StrictModel):
    site: Id
    gateway: Id = "gw"
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    buses: list[Bus] = Field(default_factory=list)
    devices: list[Device] = Field(default_factory=list)
    actuators: list[Actuator] = Field(default_factory=list)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    status: StatusSettings = Field(default_factory=StatusSettings)
    # upward reporting to environmental platforms (HJ 212 over TCP)
    uplinks: list[Hj212Settings] = Field(default_factory=list)
    # off-timer armed on each lease, in the board where supported
    state_dir: Path = Path("state")
    # folders of the site's own device profiles, searched (in order) ahead of
    # /etc/dustgate/profiles and the shipped ones; relative to this file's folder
    profile_paths: list[Path] = Field(default_factory=list)
    # calibration factors written by `dustgate calibrate` (read if present; relative to
    # this file's folder); its log of changes is calibration-log.jsonl beside it
    calibration_file: Path = Path("calibration.yaml")

    _base: Path = PrivateAttr(default_factory=Path.cwd)
    _calibrated_in: dict[tuple[str, str], Path] = PrivateAttr(default_factory=dict)

    def calibration_sources(self) -> list[tuple[str, str, Factors, Path | None]]:
        """(device, metric, factors, file they are written in) of every calibration."""
        return [
            (d.id, m, c.factors(), self._calibrated_in.get((d.id, m)))
            for d in self.devices
            for m, c in d.calibration.items()
        ]

    @property
    def base_dir(self) -> Path:
        """The folder of the site.yaml this came from (where relative paths start)."""
        return self._base

    def calibration_path(self) -> Path:
        f = self.calibration_file
        return f if f.is_absolute() else self._base / f

    def profile_search(self) -> ProfileSearch:
        """Where this site's profile references are looked up."""
        from drivers.profiles import ProfileSearch

        return ProfileSearch.for_site(self.profile_paths, self._base, read_profile_yaml)

    def bus(self, bus_id: str) -> SerialBus | TcpBus:
        for b in self.buses:
            if b.id == bus_id:
                return b
        raise KeyError(bus_id)


def _check_references(data: Any, base: Path | None = None) -> list[tuple[Loc, str]]:
    """Cross-references and uniqueness, on the raw data so positions are known."""
    out: list[tuple[Loc, str]] = []
    if not isinstance(data, dict):
        return out
    search = _search_of(data, base or Path.cwd())
    # only well-typed values are looked up: a mapping where an id belongs is the
    # model's type error, not an unhashable key here
    bus_ids = {
        b["id"]
        for b in _list(data, "buses")
        if isinstance(b, dict) and isinstance(b.get("id"), str)
    }
    seen: dict[str, str] = {}
    for section in ("buses", "devices", "actuators"):
        for i, item in enumerate(_list(data, section)):
            if not isinstance(item, dict):
                continue
            ident = item.get("id")
            if isinstance(ident, str) and section != "buses":
                if ident in seen:
                    out.append(
                        ((section, i, "id"), f"duplicate id {ident!r} (also in {seen[ident]})")
                    )
                seen.setdefault(ident, section)
            bus = item.get("bus")
            if section != "buses" and isinstance(bus, str) and bus not in bus_ids:
                known = ", ".join(sorted(str(b) for b in bus_ids)) or "none defined"
                out.append(((section, i, "bus"), f"undefined bus {item['bus']!r} (buses: {known})"))
            if "profile" in item:
                out.extend(_check_profile(section, i, item, search))
            calibration = item.get("calibration")
            if section == "devices" and isinstance(calibration, dict):
                metrics = device_metrics(item, search)
                for metric in calibration:
                    if metrics is not None and metric not in metrics:
                        out.append(
                            (
                                (section, i, "calibration", metric),
                                f"{metric!r} is not a metric of this device "
                                f"(its metrics: {', '.join(sorted(metrics))})",
                            )
                        )
    device_ids = {
        d["id"]
        for d in _list(data, "devices")
        if isinstance(d, dict) and isinstance(d.get("id"), str)
    }
    uplink_keys: dict[str, int] = {}
    for i, up in enumerate(_list(data, "uplinks")):
        if isinstance(up, dict):
            # the backlog on disk is kept under this key: two uplinks must not share it
            key = uplink_key(up.get("name"), up.get("host"), up.get("port"))
            if key in uplink_keys:
                where = ("uplinks", i, "name" if up.get("name") else "host")
                out.append((where, f"uplink {key!r} repeats uplinks[{uplink_keys[key]}]"))
            uplink_keys.setdefault(key, i)
        if isinstance(up, dict) and isinstance(up.get("devices"), list):
            for j, dev in enumerate(up["devices"]):
                if isinstance(dev, str) and dev not in device_ids:
                    out.append((("uplinks", i, "devices", j), f"undefined device {dev!r}"))
    return out


def _list(data: dict[str, Any], key: str) -> list[Any]:
    value = data.get(key)
    return value if isinstance(value, list) else []


def _search_of(data: dict[str, Any], base: Path) -> ProfileSearch:
    from drivers.profiles import ProfileSearch

    paths = data.get("profile_paths")
    own = [Path(p) for p in paths if isinstance(p, str)] if isinstance(paths, list) else []
    return ProfileSearch.for_site(own, base, read_profile_yaml)


def read_profile_yaml(path: Path) -> Any:
    """A profile file through the one safe YAML loader (site profiles are written by
    people: the same limits as site.yaml); any problem is a ProfileError."""
    from drivers.profiles import ProfileError
    from gateway.yamlsafe import ConfigError as YamlError
    from gateway.yamlsafe import read_yaml

    try:
        doc = read_yaml(path)
    except YamlError as exc:
        raise ProfileError(str(exc)) from None
    if doc.issues:
        raise ProfileError("; ".join(str(i) for i in doc.issues))
    return doc.data


def _check_profile(
    section: str, i: int, item: dict[str, Any], search: ProfileSearch
) -> list[tuple[Loc, str]]:
    from drivers.profiles import ProfileError, resolve_profile

    try:
        profile = resolve_profile(str(item["profile"]), _profile_overrides(item), search)
    except ProfileError as exc:
        return [((section, i, "profile"), str(exc))]
    except OSError as exc:  # a path the system refuses (too long, a loop): not a crash
        return [((section, i, "profile"), f"cannot read profile: {exc.strerror or exc}")]
    if section == "actuators":
        if profile.relay is None:
            return [((section, i, "profile"), f"profile {profile.name!r} is not a relay board")]
        channel = item.get("channel", 0)
        if isinstance(channel, int) and not 0 <= channel < profile.relay.channels:
            return [
                (
                    (section, i, "channel"),
                    f"channel {channel} outside 0..{profile.relay.channels - 1} of {profile.name}",
                )
            ]
    return []


def device_metrics(item: dict[str, Any], search: ProfileSearch) -> set[str] | None:
    """The metric names a device (as raw site.yaml data) publishes; None if unknown."""
    driver = item.get("driver", "modbus")
    if not isinstance(driver, str):
        return None  # the model's type error
    if driver in UART_METRICS:
        return set(UART_METRICS[driver])
    if driver != "modbus" or not isinstance(item.get("profile"), str):
        return None
    from drivers.profiles import ProfileError, resolve_profile

    try:
        profile = resolve_profile(item["profile"], _profile_overrides(item), search)
    except (ProfileError, TypeError, OSError):
        return None  # reported as the profile's own problem
    return {f.name for f in profile.fields}


def _profile_overrides(item: dict[str, Any]) -> dict[str, Any]:
    given = item.get("overrides")
    overrides = dict(given) if isinstance(given, dict) else {}  # else: the model's error
    if item.get("slave_id") is not None:
        overrides["slave_id"] = item["slave_id"]
    return overrides


def load_site_config(
    path: Path | str, text: str | None = None, context: dict[str, Any] | None = None
) -> SiteConfig:
    """Load and validate a site.yaml; raise ConfigError with every problem.

    Relative paths in it (``profile_paths``, profile files) start at its folder."""
    base = Path(path).resolve().parent
    site = load(
        SiteConfig,
        path,
        ref_checks=[lambda data: _check_references(data, base)],
        text=text,
        context=context,
    )
    site._base = base
    for dev in site.devices:
        site._calibrated_in.update(((dev.id, m), Path(path)) for m in dev.calibration)
    cal_path = site.calibration_path()
    if cal_path.is_file():
        cal = load(
            CalibrationFile,
            cal_path,
            ref_checks=[lambda data: _check_calibration_file(data, site)],
            context=context,
        )
        for dev in site.devices:
            from_file = cal.devices.get(dev.id, {})
            dev.calibration.update(from_file)
            site._calibrated_in.update(((dev.id, m), cal_path) for m in from_file)
    return site


class CalibrationFile(StrictModel):
    """``calibration.yaml``: device -> metric -> calibration, as ``dustgate calibrate``
    writes it (a person may edit it too; ``dustgate check site.yaml`` checks it)."""

    devices: dict[Id, Calibrations] = Field(default_factory=dict)


def _check_calibration_file(data: Any, site: SiteConfig) -> list[tuple[Loc, str]]:
    out: list[tuple[Loc, str]] = []
    devices = data.get("devices") if isinstance(data, dict) else None
    if not isinstance(devices, dict):
        return out
    by_id = {d.id: d for d in site.devices}
    search = site.profile_search()
    for dev_id, metrics in devices.items():
        dev = by_id.get(dev_id)
        if dev is None:
            known = ", ".join(by_id) or "none"
            out.append((("devices", dev_id), f"no device {dev_id!r} in site.yaml ({known})"))
            continue
        if not isinstance(metrics, dict):
            continue
        known_metrics = device_metrics(dev.model_dump(exclude_none=True), search)
        for metric in metrics:
            if metric in dev.calibration:
                out.append(
                    (
                        ("devices", dev_id, metric),
                        f"{dev_id}.{metric} is also calibrated in site.yaml "
                        "(devices: calibration); keep one of the two",
                    )
                )
            elif known_metrics is not None and metric not in known_metrics:
                out.append(
                    (
                        ("devices", dev_id, metric),
                        f"{metric!r} is not a metric of {dev_id} "
                        f"(its metrics: {', '.join(sorted(known_metrics))})",
                    )
                )
    return out


def profile_sources(site: SiteConfig) -> list[tuple[str, str, Path]]:
    """(device or actuator id, profile reference, file it came from) for every profile used."""
    from drivers.profiles import profile_source

    search = site.profile_search()
    items: list[ModbusDevice | Actuator] = [d for d in site.devices if isinstance(d, ModbusDevice)]
    items.extend(site.actuators)
    return [(item.id, item.profile, profile_source(item.profile, search)) for item in items]


def device_status_mode(dev: _DeviceBase) -> Status | None:
    return {
        "maintenance": Status.MAINTENANCE,
        "calibrating": Status.CALIBRATING,
        "stopped": Status.STOPPED,
    }.get(dev.quality.mode)


__all__ = ["ConfigError", "SiteConfig", "load_site_config"]
