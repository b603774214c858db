"""Small builders shared by the rule engine tests."""

from __future__ import annotations

from typing import Any

from rules.core.config import RulesFile, load_rules_file
from rules.core.evaluator import Action, EmitEvent, LeaseOn, SwitchOff
from rules.core.model import Rule
from rules.sink.lineprotocol import parse_line


def make_rule(**kw: Any) -> Rule:
    data: dict[str, Any] = {
        "id": "pm10",
        "site": "site-01",
        "metric": "pm10",
        "devices": ["gate-monitor"],
        "aggregate": "last",
        "window": "1m",
        "above": 150,
        "clear": 100,
    }
    data.update(kw)
    return Rule.model_validate(data)


def rules_file(yaml_text: str) -> RulesFile:
    return load_rules_file("test-rules.yaml", text=yaml_text)


def kinds(actions: list[Action]) -> list[str]:
    out = []
    for a in actions:
        if isinstance(a, EmitEvent):
            out.append(f"event:{a.event.kind}")
        elif isinstance(a, LeaseOn):
            out.append(f"on:{a.actuator}")
        elif isinstance(a, SwitchOff):
            out.append(f"off:{a.actuator}")
        else:
            out.append(type(a).__name__.lower())
    return out


def events(actions: list[Action], kind: str | None = None) -> list[EmitEvent]:
    return [
        a for a in actions if isinstance(a, EmitEvent) and (kind is None or a.event.kind == kind)
    ]


class ListSink:
    """Records the lines a rules service hands to its sink (no influxd needed)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, line: str | None) -> None:
        if line is not None:
            self.lines.append(line)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def points(self, measurement: str) -> list[Any]:
        return [pt for pt in map(parse_line, self.lines) if pt.measurement == measurement]

    def seqs(self) -> list[int]:
        """The ``seq`` of every telemetry point, in order."""
        return [int(pt.fields["seq"]) for pt in self.points("telemetry")]
