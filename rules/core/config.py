"""The whole ``rules.yaml`` file: connections, actuators, notifiers, defaults, rules.

``load_rules_file(path)`` reads, validates and cross-checks it and returns a
:class:`RulesFile`, or raises :class:`gateway.configfile.ConfigError` listing
every problem as ``file:line:col: path: message`` (unknown keys, wrong types,
``clear`` on the wrong side of the threshold, a rule leasing an actuator that
is not declared, an undefined notifier, duplicate rule ids, a rule for a site
this engine does not serve).

Actuators may be written as a map keyed ``site/actuator`` or as a list of
``{site, id, ...}``; both become :attr:`RulesFile.actuator_list`.

Relative paths (``state_dir``, ``influx.spool_dir``, ``influx.dead_letter_file``)
are relative to the directory of the rules file, not to the working
directory of whoever starts the engine (systemd, a shell in another
directory, ``dustgate replay`` from anywhere all find the same state).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from gateway.configfile import Duration, MqttSettings, Secret, StrictModel, load
from rules.core.limits import (
    DEFAULT_LIMITS,
    FLOAT_MAX,
    NO_BOUNDS,
    Bounds,
    LimitsSection,
    limit_table,
)
from rules.core.model import Id, Rule
from rules.sink.settings import InfluxSettings


class ActuatorSpec(StrictModel):
    """One fog cannon / spray valve, as the rule engine needs to know it."""

    litres_per_minute: Annotated[float, Field(ge=0)] = 0.0  # for water estimates
    max_on: Duration | None = None  # default max_on for rules leasing it
    description: str = ""


class ActuatorEntry(ActuatorSpec):
    site: Id
    id: Id


def _actuator_form(value: Any) -> str:
    return "[list]" if isinstance(value, list) else "[map]"


ActuatorKey = Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,64}/[a-z0-9_-]{1,64}$")]
# The bracketed tags are dropped from error paths by gateway.configfile.
Actuators = Annotated[
    Annotated[dict[ActuatorKey, ActuatorSpec | None], Tag("[map]")]
    | Annotated[list[ActuatorEntry], Tag("[list]")],
    Discriminator(_actuator_form),
]


class Defaults(StrictModel):
    """Engine-wide defaults.

    A reading is stale after ``stale_factor`` x the device's observed poll
    interval, clamped to ``[min_staleness, max_staleness]``.
    """

    stale_factor: Annotated[float, Field(ge=1.0, le=100.0)] = 3.0
    min_staleness: Duration = 10.0
    max_staleness: Duration = 600.0
    lease_s: Annotated[Duration, Field(ge=3.0, le=3600.0)] = 60.0
    override_lease_s: Annotated[Duration, Field(ge=3.0, le=3600.0)] = 60.0

    @model_validator(mode="after")
    def _order(self) -> Defaults:
        if self.min_staleness > self.max_staleness:
            raise ValueError("min_staleness must not exceed max_staleness")
        return self


class WebhookNotifier(StrictModel):
    """Generic JSON POST: ``{"rule", "site", "severity", "text", "ts"}``."""

    type: Literal["webhook"]
    url: Annotated[str, Field(pattern=r"^https?://")]
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: Duration = 10.0
    min_interval: Duration = 60.0


ROBOT_HOSTS = {"dingtalk": "dingtalk.com", "wecom": "weixin.qq.com"}


class RobotNotifier(StrictModel):
    """WeCom/DingTalk-style text robot: ``{"msgtype":"text","text":{"content":...}}``.

    ``vendor`` (``dingtalk`` / ``wecom``; taken from the URL's host when it is
    one of theirs) is needed for what the two do differently: ``secret``
    (DingTalk's signing, 加签: an HMAC-SHA256 signature of the time on every
    request) and @mentions (``at_mobiles``, ``at_all``).
    """

    type: Literal["robot"]
    url: Annotated[str, Field(pattern=r"^https?://")]
    timeout: Duration = 10.0
    min_interval: Duration = 60.0
    keyword: str = ""  # prefixed to the text (DingTalk "custom keyword" security)
    vendor: Literal["dingtalk", "wecom"] | None = None
    secret: Secret | None = None  # DingTalk signing secret ("SEC..."): {env: NAME} or {file: PATH}
    at_mobiles: list[Annotated[str, Field(pattern=r"^\+?[0-9-]{5,20}$")]] = Field(
        default_factory=list, max_length=50
    )
    at_all: bool = False

    @model_validator(mode="after")
    def _vendor(self) -> RobotNotifier:
        if self.vendor is None:
            host = self.url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0].lower()
            for vendor, domain in ROBOT_HOSTS.items():
                if host == domain or host.endswith("." + domain):
                    object.__setattr__(self, "vendor", vendor)
        if self.vendor is None and (self.secret is not None or self.at_mobiles or self.at_all):
            raise ValueError(
                "secret, at_mobiles and at_all need vendor: dingtalk or wecom "
                "(not recognisable from the URL)"
            )
        if self.secret is not None and self.vendor != "dingtalk":
            raise ValueError("secret (request signing) is DingTalk's; WeCom robots have none")
        return self


def _notifier_type(value: Any) -> str:
    t = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return "[robot]" if t == "robot" else "[webhook]"


Notifier = Annotated[
    Annotated[WebhookNotifier, Tag("[webhook]")] | Annotated[RobotNotifier, Tag("[robot]")],
    Discriminator(_notifier_type),
]


SHARED_GROUP_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


SHARED_GROUP_REFUSED = (
    "shared subscriptions ($share) hand out messages, not sites: with two engines each"
    " would see every other reading of every device and both would spray the same site;"
    " run one engine per partition instead (service: {partition: K/N} or --partition K/N,"
    " see docs/DESIGN.md, Scale-out)"
)


class ServiceSettings(StrictModel):
    """How ``dustgate rules`` runs (rules.yaml ``service:``)."""

    # This engine's share of the sites: "K/N" owns the sites with slot(site, N) == K
    # (rules.core.partition). The --partition command line flag overrides it.
    partition: str | None = None
    # Refused (SHARED_GROUP_REFUSED): kept as a key so the message can say why.
    shared_group: Annotated[str, Field(pattern=SHARED_GROUP_PATTERN)] | None = None

    @field_validator("partition")
    @classmethod
    def _partition(cls, value: str | None) -> str | None:
        if value is not None:
            from rules.core.partition import parse_partition

            parse_partition(value)
        return value

    @field_validator("shared_group")
    @classmethod
    def _no_shared_group(cls, value: str | None) -> str | None:
        if value is not None:
            raise ValueError(SHARED_GROUP_REFUSED)
        return value


class RulesFile(StrictModel):
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    influx: InfluxSettings | None = None
    service: ServiceSettings = Field(default_factory=ServiceSettings)
    state_dir: Path = Path("./state/rules")
    sites: list[Id] | None = None  # None: serve every site that has rules
    actuators: Actuators = Field(default_factory=dict)
    defaults: Defaults = Field(default_factory=Defaults)
    # plausibility limits per metric over the defaults (rules.core.limits)
    limits: LimitsSection = Field(default_factory=dict)
    notifiers: dict[Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,64}$")], Notifier] = Field(
        default_factory=dict
    )
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _actuator_defaults(self) -> RulesFile:
        # A rule without max_on inherits the smallest max_on of the actuators it leases.
        acts = {(a.site, a.id): a for a in self.actuator_list}
        for rule in self.rules:
            if rule.actions.max_on is not None:
                continue
            limits = [
                a.max_on
                for site in rule.site
                for act in rule.actions.lease
                if (a := acts.get((site, act))) is not None and a.max_on is not None
            ]
            if limits:
                rule.actions.max_on = min(limits)
        return self

    @property
    def limit_table(self) -> dict[str, Bounds]:
        """metric -> (min, max): the default limits with ``limits:`` applied."""
        return limit_table(self.limits)

    @property
    def actuator_list(self) -> list[ActuatorEntry]:
        if isinstance(self.actuators, list):
            return list(self.actuators)
        out = []
        for key, spec in self.actuators.items():
            site, _, act = key.partition("/")
            data = spec.model_dump() if spec is not None else {}
            out.append(ActuatorEntry(site=site, id=act, **data))
        return out

    def actuator(self, site: str, actuator: str) -> ActuatorEntry | None:
        for a in self.actuator_list:
            if a.site == site and a.id == actuator:
                return a
        return None

    def served_sites(self) -> set[str]:
        if self.sites is not None:
            return set(self.sites)
        return {s for r in self.rules for s in r.site}


# ------------------------------------------------------------ cross-references


def _as_list(v: Any) -> list[Any]:
    if isinstance(v, list):
        return v
    return [v] if v is not None else []


def _declared_actuators(data: dict[str, Any]) -> set[tuple[str, str]] | None:
    acts = data.get("actuators")
    out: set[tuple[str, str]] = set()
    if acts is None:
        return out
    if isinstance(acts, dict):
        for key in acts:
            site, _, act = str(key).partition("/")
            out.add((site, act))
        return out
    if isinstance(acts, list):
        for a in acts:
            if isinstance(a, dict):
                a_site, a_id = a.get("site"), a.get("id")
                if isinstance(a_site, str) and isinstance(a_id, str):
                    out.add((a_site, a_id))
        return out
    return None  # the type error is reported by validation


def check_references(data: Any) -> list[tuple[tuple[str | int, ...], str]]:
    """Problems pydantic cannot see: names that must refer to something declared."""
    issues: list[tuple[tuple[str | int, ...], str]] = []
    if not isinstance(data, dict):
        return issues
    rules = data.get("rules")
    if not isinstance(rules, list):
        return issues
    actuators = _declared_actuators(data)
    notifiers = data.get("notifiers")
    notifier_names = set(notifiers) if isinstance(notifiers, dict) else None
    sites = data.get("sites")
    site_set = None
    if isinstance(sites, list) and all(isinstance(s, str) for s in sites):
        site_set = set(sites)
    seen: dict[str, int] = {}
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict):
            continue
        rid = rule.get("id")
        if isinstance(rid, str):
            if rid in seen:
                msg = f"duplicate rule id {rid!r} (first used by rules[{seen[rid]}])"
                issues.append((("rules", i, "id"), msg))
            else:
                seen[rid] = i
        rule_sites = [s for s in _as_list(rule.get("site")) if isinstance(s, str)]
        if site_set is not None:
            for s in rule_sites:
                if s not in site_set:
                    issues.append(
                        (
                            ("rules", i, "site"),
                            f"site {s!r} is not in the top-level sites: {sorted(site_set)}",
                        )
                    )
        acts = rule.get("actions")
        if isinstance(acts, dict) and actuators is not None:
            lease = _as_list(acts.get("lease"))
            for j, act in enumerate(lease):
                if not isinstance(act, str):
                    continue
                for s in rule_sites:
                    if (s, act) not in actuators:
                        loc: tuple[str | int, ...] = ("rules", i, "actions", "lease")
                        if isinstance(acts.get("lease"), list):
                            loc = (*loc, j)
                        issues.append((loc, f"actuator {s}/{act} is not declared under actuators:"))
        if notifier_names is not None or rule.get("notify") is not None:
            names = notifier_names or set()
            raw = rule.get("notify")
            for j, name in enumerate(_as_list(raw)):
                if isinstance(name, str) and name not in names:
                    loc = ("rules", i, "notify")
                    if isinstance(raw, list):
                        loc = (*loc, j)
                    known = ", ".join(sorted(names)) or "none defined"
                    msg = f"notifier {name!r} is not defined under notifiers: ({known})"
                    issues.append((loc, msg))
    return issues


def _number(x: Any) -> float | None:
    """A bound as validation will read it (YAML 1.1 leaves ``1e308`` a string), else None."""
    if isinstance(x, bool):
        return None
    try:
        return float(x)
    except (TypeError, ValueError, OverflowError):
        return None


def check_limits(data: Any) -> list[tuple[tuple[str | int, ...], str]]:
    """``limits:`` bounds that cross once the defaults fill in the bound not given."""
    issues: list[tuple[tuple[str | int, ...], str]] = []
    limits = data.get("limits") if isinstance(data, dict) else None
    if not isinstance(limits, dict):
        return issues
    for metric, spec in limits.items():
        if not isinstance(spec, dict) or ("min" in spec and "max" in spec):
            continue  # both given: the model checks them
        default = DEFAULT_LIMITS.get(str(metric))
        bounds = default if default is not None else NO_BOUNDS
        lo = (
            _number(spec["min"] if spec["min"] is not None else -FLOAT_MAX)
            if "min" in spec
            else bounds[0]
        )
        hi = (
            _number(spec["max"] if spec["max"] is not None else FLOAT_MAX)
            if "max" in spec
            else bounds[1]
        )
        if lo is not None and hi is not None and not lo < hi:
            which = "max" if "max" in spec else "min"
            known = (
                f"the default {metric} limits are {default[0]:g}..{default[1]:g}"
                if default is not None
                else f"{metric} has no default limits"
            )
            issues.append(
                (("limits", str(metric), which), f"min {lo:g} must be below max {hi:g} ({known})")
            )
    return issues
    for metric, spec in limits.items():
        default = DEFAULT_LIMITS.get(str(metric))
        if default is None or not isinstance(spec, dict) or ("min" in spec and "max" in spec):
            continue  # both given: the model checks them
        lo = spec.get("min", default[0]) if "min" in spec else default[0]
        hi = spec.get("max", default[1]) if "max" in spec else default[1]
        lo, hi = _number(lo), _number(hi)
        if lo is not None and hi is not None and not lo < hi:
            which = "max" if "max" in spec else "min"
            issues.append(
                (
                    ("limits", str(metric), which),
                    f"min {lo:g} must be below max {hi:g} (the default {metric} limits "
                    f"are {default[0]:g}..{default[1]:g})",
                )
            )
    return issues


def load_rules_file(
    path: Path | str, text: str | None = None, context: dict[str, Any] | None = None
) -> RulesFile:
    """Read and validate ``rules.yaml``; raise ConfigError with file:line:col issues.

    Relative paths in it are resolved against the directory of ``path``.
    """
    rf = load(
        RulesFile, path, ref_checks=[check_references, check_limits], text=text, context=context
    )
    return resolve_paths(rf, Path(path).parent)


def resolve_paths(rf: RulesFile, base: Path) -> RulesFile:
    """``rf`` with its relative paths made relative to ``base`` (the rules file's directory)."""

    def under(p: Path) -> Path:
        return p if p.is_absolute() else base / p

    rf.state_dir = under(rf.state_dir)
    if rf.influx is not None:
        if rf.influx.spool_dir is not None:
            rf.influx.spool_dir = under(rf.influx.spool_dir)
        if rf.influx.dead_letter_file is not None:
            rf.influx.dead_letter_file = under(rf.influx.dead_letter_file)
    return rf
