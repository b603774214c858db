"""The ``uplinks:`` entry of site.yaml for an HJ 212 platform, and its dialects.

::

    uplinks:
      - type: hj212
        name: city                  # keeps its backlog across address changes
        host: 203.0.113.10          # the platform
        port: 8212
        mn: "SITE0001DUST00000001"  # device number the platform issued
        pw: {env: HJ212_PW}         # or inline, or {file: /etc/dustgate/hj212.pw}
        st: "39"                    # construction-site dust
        dialect: hj212-2017         # or hj212-2025 (with version_bits), hj212-2005
        realtime_interval: 60s
        minute: true
        hourly: true
        devices: [dust1, weather]   # default: every device
        factors: {noise: NOIS}      # override / add codes; null drops a metric
        heartbeat: {interval: 60s, cn: "9015"}   # only if the platform wants one
        reply: true                 # Flag A: wait for 9014 (what makes backfill exact)
        realtime_reply: false       # for platforms that acknowledge records only

A dialect bundles what differs between platforms: the Flag version bits and
the factor names. ``hj212-2017`` is the 2017 standard (version bits 000001,
codes a34002 PM10, a34004 PM2.5, a34001 TSP, LA noise ...). ``hj212-2005`` is
what older platforms still speak: no version bits in Flag and names such as
``PM25``, ``TSP`` and ``NOIS``. ``hj212-2025`` replaces 2017 from 2026-01-01;
its text was not available to us, so its version bits must be given
(``version_bits``) and its factor codes are assumed to be 2017's until the
platform says otherwise (``factors``). ``version_bits`` and ``factors``
override any dialect.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from gateway.configfile import Duration, Secret, StrictModel
from gateway.protocol import ID_PATTERN
from gateway.uplinks import hj212

Id = Annotated[str, Field(pattern=ID_PATTERN)]
# printable ASCII without the separators ; = &
HeaderText = Annotated[str, Field(pattern=r"^[\x21-\x25\x27-\x3a\x3c\x3e-\x7e]{1,64}$")]
FactorCode = Annotated[str, Field(pattern=hj212.FACTOR_CODE.pattern)]
Cn = Annotated[str, Field(pattern=r"^[0-9]{4}$")]

Dialect = Literal["hj212-2017", "hj212-2025", "hj212-2005"]
DIALECT_VERSION_BITS: dict[str, int | None] = {
    "hj212-2017": 0b000001,
    "hj212-2025": None,  # unknown to us: must be configured
    "hj212-2005": 0,
}
DIALECT_FACTORS: dict[str, dict[str, str]] = {
    "hj212-2017": hj212.DEFAULT_FACTORS,
    "hj212-2025": hj212.DEFAULT_FACTORS,
    "hj212-2005": hj212.LEGACY_FACTORS,
}
MINUTE_INTERVALS = (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60)
"""Minute-record intervals (in minutes) that divide an hour."""


def uplink_key(name: object, host: object, port: object) -> str:
    """An uplink's name, else ``host:port``: it keys the backlog on disk (also checked
    on the raw site.yaml, before validation)."""
    return str(name or f"{host}:{port}")


class Heartbeat(StrictModel):
    """A keep-alive packet (``CP=&&&&``) sent when the link was idle for ``interval``.

    HJ 212 defines none, but many platforms (and 4G carrier NATs, which drop
    idle TCP flows) want one; the platform's documentation names its CN.
    """

    interval: Annotated[Duration, Field(gt=0)]
    cn: Cn
    st: Annotated[str, Field(pattern=r"^[0-9]{2}$")] = hj212.ST_SYSTEM


class Hj212Settings(StrictModel):
    """One HJ 212 platform connection (an entry of ``uplinks`` in site.yaml)."""

    type: Literal["hj212"] = "hj212"
    name: Id | None = None
    host: str
    port: Annotated[int, Field(ge=1, le=65535)]
    mn: HeaderText
    pw: Secret
    st: Annotated[str, Field(pattern=r"^[0-9]{2}$")] = hj212.ST_DUST
    dialect: Dialect = "hj212-2017"
    version_bits: Annotated[int, Field(ge=0, le=63)] | None = None
    realtime: bool = True
    realtime_interval: Annotated[Duration, Field(gt=0)] = 60.0
    minute: bool = True
    minute_interval: Annotated[Duration, Field(gt=0)] = 60.0
    hourly: bool = True
    daily: bool = False
    factors: dict[Annotated[str, Field(pattern=r"^[a-z0-9_]{1,32}$")], FactorCode | None] | None = (
        None
    )
    decimals: Annotated[int, Field(ge=0, le=6)] = 1
    devices: list[Id] | None = None
    reply: bool = True
    # real-time data may go without Flag A where a platform acknowledges only records
    realtime_reply: bool | None = None  # default: as ``reply``
    reply_timeout: Annotated[Duration, Field(gt=0)] = 10.0
    retries: Annotated[int, Field(ge=0, le=10)] = 3
    utc_offset_h: Annotated[float, Field(ge=-12, le=14)] = 8.0  # platforms run on Beijing time
    grace: Duration = 5.0  # wait this long after a period ends for late readings
    stale_after: Duration | None = None  # real-time values older than this are left out
    heartbeat: Heartbeat | None = None
    # ask the platform for its time on connect (CN 1013); the skew is logged and shown
    request_time: bool = False
    connect_timeout: Annotated[Duration, Field(gt=0)] = 15.0
    reconnect_min: Annotated[Duration, Field(gt=0)] = 1.0
    reconnect_max: Annotated[Duration, Field(gt=0)] = 120.0
    # aggregate records kept for the platform while it cannot take them (on disk);
    # 10,000 is about a week of 1-minute records plus the hours
    backlog_max: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000

    @model_validator(mode="after")
    def _check(self) -> Hj212Settings:
        if DIALECT_VERSION_BITS[self.dialect] is None and self.version_bits is None:
            raise ValueError(
                f"dialect {self.dialect}: set version_bits (its Flag version is not known "
                "to dustgate; the platform's documentation gives it)"
            )
        if self.minute_interval % 60 or round(self.minute_interval / 60) not in MINUTE_INTERVALS:
            raise ValueError("minute_interval must be whole minutes dividing an hour")
        return self

    @property
    def key(self) -> str:
        """What names this uplink's backlog and state on disk."""
        return uplink_key(self.name, self.host, self.port)

    @property
    def flag_version(self) -> int:
        if self.version_bits is not None:
            return self.version_bits
        bits = DIALECT_VERSION_BITS[self.dialect]
        assert bits is not None  # the validator requires version_bits otherwise
        return bits

    def factor_map(self) -> dict[str, str]:
        """Metric name to factor code, in upload order."""
        out = dict(DIALECT_FACTORS[self.dialect])
        for metric, code in (self.factors or {}).items():
            if code is None:
                out.pop(metric, None)
            else:
                out[metric] = code
        return out
