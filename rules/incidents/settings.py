"""The incidents' configuration: contacts per site, notifiers, per-cause times.

It is the ``incidents:`` section of ``console.yaml`` (:class:`IncidentsSettings`);
``dustgate incidents --config FILE`` also reads a file of its own
(:class:`IncidentsFile`: the section plus ``mqtt:``, ``influx:`` and
``rules_file:``). Example::

    incidents:
      db: ./state/incidents.db
      base_url: https://console.district.example
      notifiers:
        site-01-robot: {type: robot, url: https://qyapi.weixin.qq.com/..., keyword: dust}
        district: {type: webhook, url: http://127.0.0.1:9000/hook}
      sites:
        site-01:
          contacts:
            - {name: Li Wei, role: site manager, notify: site-01-robot}
            - {name: Zhang Min, role: district inspector, notify: district, level: 1}
      causes:
        gateway_offline: {open_after: 5m, overdue_after: 30m}

Contacts of ``level`` 0 are told at once when an incident opens; those of
level 1 when it turns overdue (the escalation, once). ``min_interval`` of a
notifier does not apply here: every incident notification is sent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, model_validator

from gateway.configfile import Duration, MqttSettings, StrictModel, load
from rules.core.config import Notifier
from rules.core.model import Id
from rules.incidents.machine import CAUSES, DEFAULT_POLICIES, CausePolicy
from rules.sink.settings import InfluxSettings

NotifierName = Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,64}$")]
CauseName = Literal["rule_active", "unsprayed", "gateway_offline", "data_incomplete"]


class Contact(StrictModel):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    role: Annotated[str, Field(max_length=64)] = ""
    notify: NotifierName
    level: Annotated[int, Field(ge=0, le=1)] = 0


class SiteContacts(StrictModel):
    contacts: list[Contact] = Field(default_factory=list)


class CauseSettings(StrictModel):
    open_after: Duration | None = None  # default per cause: machine.DEFAULT_POLICIES
    overdue_after: Duration = 1800.0


class Completeness(StrictModel):
    """A device is incomplete while it delivered fewer than ``below_pct`` % of the
    readings expected over the last ``window`` (its poll interval from the gateway's
    status, else ``interval``)."""

    below_pct: Annotated[float, Field(gt=0, le=100)] = 80.0
    window: Duration = 3600.0
    interval: Duration = 10.0


class Delivery(StrictModel):
    """Retries of a notification: ``attempts`` in all, backoff doubling from ``backoff``
    up to ``backoff_max`` (with jitter)."""

    attempts: Annotated[int, Field(ge=1, le=50)] = 8
    backoff: Duration = 5.0
    backoff_max: Duration = 600.0


class IncidentsSettings(StrictModel):
    db: Path = Path("./state/incidents.db")
    base_url: Annotated[str, Field(pattern=r"^https?://")] = "http://127.0.0.1:8480"
    notifiers: dict[NotifierName, Notifier] = Field(default_factory=dict)
    sites: dict[Id, SiteContacts] = Field(default_factory=dict)
    causes: dict[CauseName, CauseSettings] = Field(default_factory=dict)
    completeness: Completeness = Field(default_factory=Completeness)
    delivery: Delivery = Field(default_factory=Delivery)

    @model_validator(mode="after")
    def _references(self) -> IncidentsSettings:
        for site, sc in self.sites.items():
            for c in sc.contacts:
                if c.notify not in self.notifiers:
                    raise ValueError(
                        f"sites.{site}: contact {c.name!r} names notifier {c.notify!r},"
                        " which is not under notifiers:"
                    )
        return self

    def policies(self) -> dict[str, CausePolicy]:
        out = dict(DEFAULT_POLICIES)
        for cause, cs in self.causes.items():
            base = DEFAULT_POLICIES.get(cause, CausePolicy())
            out[cause] = CausePolicy(
                base.open_after if cs.open_after is None else cs.open_after, cs.overdue_after
            )
        return out

    def contacts(self, site: str, level: int) -> list[Contact]:
        sc = self.sites.get(site)
        return [c for c in sc.contacts if c.level == level] if sc is not None else []

    def link(self, incident_id: int) -> str:
        return f"{self.base_url.rstrip('/')}/incidents/{incident_id}"


class IncidentsFile(StrictModel):
    """``dustgate incidents --config FILE``: the section and what the service connects to."""

    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    influx: InfluxSettings | None = None
    rules_file: Path | None = None  # which rules lease which cannons (the unsprayed cause)
    incidents: IncidentsSettings = Field(default_factory=IncidentsSettings)


def load_incidents_file(
    path: Path | str, text: str | None = None, context: dict[str, Any] | None = None
) -> IncidentsFile:
    """Read and validate; relative paths start at the file's folder."""
    f = load(IncidentsFile, path, text=text, context=context)
    base = Path(path).resolve().parent
    updates: dict[str, Any] = {}
    if not f.incidents.db.is_absolute():
        f.incidents.db = base / f.incidents.db
    if f.rules_file is not None and not f.rules_file.is_absolute():
        updates["rules_file"] = base / f.rules_file
    return f.model_copy(update=updates)


if get_args(CauseName) != CAUSES:  # one list of causes
    raise ImportError("rules.incidents.settings.CauseName differs from machine.CAUSES")
