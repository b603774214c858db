"""Site partitions: which rule engine owns which site. Pure.

A city runs N engines, each started with ``--partition K/N`` (or
``service: {partition: K/N}`` in rules.yaml). Engine K owns the sites with
``slot(site, N) == K``: all of a site's rule state, leases, events,
notifications and sink writes happen there, and nowhere else. Every engine
reads the same rules file; each keeps only the rule instances of its own sites
(:func:`own_rules`), and subscribes to the telemetry those rules read — a
background or interlock device on another site included (:func:`read_sites`).

The slot is stable across hosts, Python versions and restarts (no ``hash()``,
which is salted per process)::

    slot(site, N) = int.from_bytes(sha256(site.encode("utf-8"))[:8], "big") % N

Changing N moves sites between engines; that is a planned operation (see
DESIGN.md, "Scale-out"). Failover is the supervisor's job: systemd
``Restart=always`` or a Kubernetes StatefulSet restarts engine K with its own
state directory, and the cannons it leased stop by their leases meanwhile.

Presence (:func:`presence_topic`, :class:`Presence`, :func:`conflicts`): each
engine publishes a retained presence with a last will, so an engine that
starts while another member serves the same partition, or a different
partition count, sees it and waits instead of spraying the same sites twice.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from rules.core.config import RulesFile

PARTITION_PATTERN = r"^([0-9]{1,4})/([0-9]{1,4})$"
MAX_PARTITIONS = 1024
PRESENCE_ROOT = "dustgate/engines"


@dataclass(frozen=True, slots=True)
class Partition:
    """Engine ``index`` of ``count`` (0 <= index < count)."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, site: str) -> bool:
        return slot(site, self.count) == self.index


WHOLE = Partition(0, 1)  # one engine owns every site


def parse_partition(text: str) -> Partition:
    """``"K/N"`` -> :class:`Partition`; ValueError with a message a person can act on."""
    m = re.fullmatch(PARTITION_PATTERN, text.strip())
    if m is None:
        raise ValueError(f"partition must look like K/N (e.g. 0/3), got {text!r}")
    k, n = int(m.group(1)), int(m.group(2))
    if not 1 <= n <= MAX_PARTITIONS:
        raise ValueError(f"partition count N must be 1..{MAX_PARTITIONS}, got {n}")
    if not 0 <= k < n:
        raise ValueError(f"partition index K must be 0..{n - 1} for N={n}, got {k}")
    return Partition(k, n)


def slot(site: str, count: int) -> int:
    """The partition index that owns ``site`` among ``count`` engines."""
    digest = hashlib.sha256(site.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def rule_sites(rf: RulesFile) -> frozenset[str]:
    """Every site some rule acts on (a rule's own ``site:`` list)."""
    return frozenset(s for r in rf.rules for s in r.site)


def own_rules(rf: RulesFile, part: Partition) -> RulesFile:
    """``rf`` cut down to ``part``'s sites: each rule keeps its owned sites (rules
    with none left are dropped), actuators and ``sites:`` keep the owned ones."""
    if part.count == 1:
        return rf
    rules = []
    for r in rf.rules:
        mine = [s for s in r.site if part.owns(s)]
        if mine:
            rules.append(r if mine == r.site else r.model_copy(update={"site": mine}))
    acts = rf.actuators
    if isinstance(acts, dict):
        acts = {k: v for k, v in acts.items() if part.owns(k.split("/", 1)[0])}
    else:
        acts = [a for a in acts if part.owns(a.site)]
    sites = None if rf.sites is None else [s for s in rf.sites if part.owns(s)]
    return rf.model_copy(update={"rules": rules, "actuators": acts, "sites": sites})


def read_sites(rf: RulesFile) -> frozenset[str]:
    """Sites whose telemetry ``rf``'s rules read: their own, their backgrounds'
    and their interlocks'. Apply it to :func:`own_rules`' result."""
    out: set[str] = set()
    for r in rf.rules:
        out.update(r.site)
        if r.relative_to is not None and r.relative_to.site:
            out.add(r.relative_to.site)
        out.update(il.site for il in r.unless if il.site)
    return frozenset(out)


def explain(sites: frozenset[str] | set[str], count: int) -> dict[int, list[str]]:
    """Partition index -> the sites it owns, for ``dustgate check --explain-partition``."""
    out: dict[int, list[str]] = {k: [] for k in range(count)}
    for s in sorted(sites):
        out[slot(s, count)].append(s)
    return out


# -- presence ---------------------------------------------------------------


class Presence(BaseModel):
    """An engine's retained presence on ``dustgate/engines/<member>``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    member: str = Field(max_length=128)
    partition: str = Field(pattern=PARTITION_PATTERN)
    online: bool
    since: int = Field(ge=0, lt=2**63)  # ms


def presence_topic(member: str) -> str:
    return f"{PRESENCE_ROOT}/{member}"


Verdict = Literal["ok", "overlap", "layout"]


def conflicts(me: str, part: Partition, others: list[Presence]) -> tuple[Verdict, list[str]]:
    """Whether ``me`` may act on ``part`` given the other members' presences.

    - ``overlap``: another online member serves the same partition (K/N);
    - ``layout``: another online member runs with a different N (a partition
      change in progress: its sites and ours overlap);
    - ``ok`` otherwise. Returns the verdict and the members concerned."""
    online = [o for o in others if o.online and o.member != me]
    same = sorted(o.member for o in online if o.partition == str(part))
    if same:
        return "overlap", same
    other_n = sorted(o.member for o in online if parse_partition(o.partition).count != part.count)
    if other_n:
        return "layout", other_n
    return "ok", []


def missing(part: Partition, others: list[Presence], me: str) -> list[int]:
    """Partition indexes of ``part.count`` that no online member (nor ``me``) serves."""
    served = {part.index}
    for o in others:
        if o.online and o.member != me:
            p = parse_partition(o.partition)
            if p.count == part.count:
                served.add(p.index)
    return [k for k in range(part.count) if k not in served]
