"""Edits of one rule in ``rules.yaml`` that keep the operator's file as it was.

The thresholds form edits a few fields of one rule (:data:`FIELDS`). The
edit is made on a round-trip parse (ruamel.yaml), so comments, key order,
flow or block style and the rest of the file stay as the operator wrote
them; only the edited values change. The result is then checked with the
engine's own loader (:func:`rules.core.config.load_rules_file`), and its
problems are mapped back to form fields with the line in the rules file.

Pure (text in, text out) apart from :func:`write_atomic`.
"""

from __future__ import annotations

import difflib
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from gateway.configfile import ConfigError, parse_duration
from gateway.yamlsafe import parse_yaml
from rules.core.config import RulesFile, load_rules_file
from rules.service.state import write_atomic

__all__ = [
    "FIELDS",
    "EditError",
    "Field",
    "apply_edit",
    "current_values",
    "diff",
    "parse_form",
    "validate",
    "write_atomic",
]


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    label: str
    kind: str  # number | duration | hours
    path: tuple[str, ...]  # inside the rule; ("@threshold",) = above: or below:
    required: bool = False
    help: str = ""


FIELDS: tuple[Field, ...] = (
    Field("threshold", "ON threshold", "number", ("@threshold",), True, "above: (or below:)"),
    Field("clear", "Clear level", "number", ("clear",), help="empty: the threshold"),
    Field("for", "On-delay (for)", "duration", ("for",), help="e.g. 1m; empty: none"),
    Field("window", "Window", "duration", ("window",), True, "rolling window, e.g. 15m"),
    Field("run_for", "Run for", "duration", ("actions", "run_for"), help="minimum run"),
    Field("cooldown", "Cooldown", "duration", ("actions", "cooldown"), help="rest after OFF"),
    Field(
        "active_hours",
        "Active hours",
        "hours",
        ("active", "hours"),
        help='"06:00-22:00"; empty: all day',
    ),
)
FIELD_NAMES = tuple(f.name for f in FIELDS)
_BY_PATH = {f.path: f.name for f in FIELDS}
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_DURATION_TEXT = re.compile(r"^(\d+(\.\d+)?(ms|s|m|h|d))+$|^\d+(\.\d+)?$")
MAX_VALUE = 1e9


class EditError(ValueError):
    """The rule is not in the file, or the file is not a mapping with ``rules:``."""


@dataclass
class Validation:
    fields: dict[str, list[str]] = field(default_factory=dict)
    general: list[str] = field(default_factory=list)
    rules_file: RulesFile | None = None

    @property
    def ok(self) -> bool:
        return not self.fields and not self.general


# ------------------------------------------------------------------ form


def parse_form(form: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Form strings -> YAML values per field (None: remove the key) and per-field errors.

    Numbers become int when written as integers, else float; durations stay the
    text the operator typed (``90s``, ``1h30m``) once checked, so the file keeps
    their way of writing them.
    """
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for f in FIELDS:
        raw = form.get(f.name, "")
        text = raw.strip() if isinstance(raw, str) else ""
        if not text:
            if f.required:
                errors[f.name] = "required"
            else:
                values[f.name] = None
            continue
        if len(text) > 40:
            errors[f.name] = "too long"
            continue
        if f.kind == "number":
            if not _NUMBER.match(text):
                errors[f.name] = f"expected a number, got {text!r}"
                continue
            num = float(text)
            if not math.isfinite(num) or abs(num) > MAX_VALUE:
                errors[f.name] = "out of range"
                continue
            values[f.name] = int(num) if re.match(r"^[+-]?\d+$", text) else num
        elif f.kind == "duration":
            compact = text.replace(" ", "")
            if not _DURATION_TEXT.match(compact):
                errors[f.name] = f"expected a duration such as 30s, 5m or 1h, got {text!r}"
                continue
            seconds = float(parse_duration(compact))
            if seconds > 7 * 86400:
                errors[f.name] = "at most 7 days"
                continue
            values[f.name] = int(compact) if compact.isdigit() else compact
        else:
            values[f.name] = text
    return values, errors


# ------------------------------------------------------------------ YAML


def _yaml(indent: tuple[int, int] | None = None) -> YAML:
    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 4096  # never re-wrap the operator's long lines
    if indent is not None:
        mapping, offset = indent
        y.indent(mapping=mapping, sequence=mapping + offset, offset=offset)
    return y


def _load(text: str) -> Any:
    """The round-trip parse, of text the one safe loader accepted first: ruamel
    itself recurses per nesting level, expands nothing lazily and raises its own
    errors (NUL, bad tags), so hostile text is refused here with its line."""
    try:
        parse_yaml(text, "rules.yaml")
    except ConfigError as exc:
        raise EditError(str(exc)) from None
    return _yaml().load(text)


_KEY_ONLY = re.compile(r"^(\s*)[A-Za-z0-9_\"'-]+:\s*(#.*)?$")
_DASH = re.compile(r"^(\s*)- ")
_INDENTED = re.compile(r"^(\s+)\S")


def guess_indent(text: str) -> tuple[int, int]:
    """(mapping indent, dash offset of block sequences) as the file writes them: the
    first block mapping under a bare ``key:`` line and the first block sequence."""
    mapping: int | None = None
    offset: int | None = None
    parent: int | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if parent is not None:
            dash = _DASH.match(line)
            if dash and offset is None:
                offset = len(dash.group(1)) - parent
            elif not dash and mapping is None and indent > parent:
                mapping = indent - parent
            parent = None
        if _KEY_ONLY.match(line) or (_DASH.match(line) and line.rstrip().endswith(":")):
            parent = indent
        if mapping is not None and offset is not None:
            break
    return (mapping or 2), max(0, offset if offset is not None else 0)


_SCALAR = re.compile(
    r"\"(?:[^\"\\]|\\.)*\"|'(?:[^']|'')*'|[^,}\]\n#]*?(?=\s*(?:[,}\]]|\s#|$))",
    re.MULTILINE,
)


def _splice(text: str, line: int, col: int, value: str) -> str | None:
    """Replace the scalar starting at (line, col) (0-based) with ``value``."""
    lines = text.splitlines(keepends=True)
    if line >= len(lines):
        return None
    start = sum(len(x) for x in lines[:line]) + col
    m = _SCALAR.match(text, start)
    if m is None or not m.group(0).strip() or "\n" in m.group(0):
        return None
    return text[:start] + value + text[m.end() :]


def _plain(value: Any) -> str:
    if isinstance(value, str) and not re.match(r"^[0-9A-Za-z.:+-]+$", value):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, str) and ":" in value:
        return '"' + value + '"'
    return str(value)


def _dump(doc: Any, indent: tuple[int, int]) -> str:
    out = io.StringIO()
    _yaml(indent).dump(doc, out)
    return out.getvalue()


def _find_rule(doc: Any, rule_id: str) -> tuple[int, Any]:
    if not isinstance(doc, dict) or not isinstance(doc.get("rules"), list):
        raise EditError("the rules file has no rules: list")
    for i, rule in enumerate(doc["rules"]):
        if isinstance(rule, dict) and rule.get("id") == rule_id:
            return i, rule
    raise EditError(f"no rule {rule_id!r} in the rules file")


def rule_index(text: str, rule_id: str) -> int:
    return _find_rule(_load(text), rule_id)[0]


def current_values(text: str, rule_id: str) -> dict[str, str]:
    """The form's fields as the file has them now (text, as written)."""
    _, rule = _find_rule(_load(text), rule_id)
    out: dict[str, str] = {}
    for f in FIELDS:
        if f.path == ("@threshold",):
            v = rule.get("above", rule.get("below"))
        else:
            cur: Any = rule
            for key in f.path:
                cur = cur.get(key) if isinstance(cur, dict) else None
            v = cur
        out[f.name] = "" if v is None else str(v)
    return out


def apply_edit(text: str, rule_id: str, values: dict[str, Any]) -> str:
    """``text`` with the rule's fields set to ``values`` (None: key removed); only the
    fields present in ``values`` are touched.

    A value that replaces an existing scalar is spliced into the text where it
    stands (the file is otherwise byte for byte the same); adding or removing a
    key goes through ruamel.yaml's round trip, dumped with the file's own
    indentation (:func:`guess_indent`).
    """
    spliced = _splice_values(text, rule_id, values)
    if spliced is not None:
        return spliced
    return _roundtrip_edit(text, rule_id, values)


def _splice_values(text: str, rule_id: str, values: dict[str, Any]) -> str | None:
    _, rule = _find_rule(_load(text), rule_id)
    spots: list[tuple[int, int, str]] = []
    for f in FIELDS:
        if f.name not in values:
            continue
        value = values[f.name]
        parent: Any = rule
        keys = list(f.path)
        if f.path == ("@threshold",):
            keys = ["below" if "below" in rule and "above" not in rule else "above"]
        for key in keys[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        last = keys[-1]
        present = isinstance(parent, dict) and last in parent
        if value is None and not present:
            continue
        if value is None or not present:
            return None  # a key comes or goes: round trip
        current = parent[last]
        if str(current) == str(value) and type(current) is type(value):
            continue
        if isinstance(current, dict | list):
            return None
        line, col = parent.lc.value(last)
        spots.append((line, col, _plain(value)))
    for line, col, new in sorted(spots, reverse=True):
        out = _splice(text, line, col, new)
        if out is None:
            return None
        text = out
    return text


def _roundtrip_edit(text: str, rule_id: str, values: dict[str, Any]) -> str:
    doc = _load(text)
    _, rule = _find_rule(doc, rule_id)
    for f in FIELDS:
        if f.name not in values:
            continue
        value = values[f.name]
        if f.path == ("@threshold",):
            key = "below" if "below" in rule and "above" not in rule else "above"
            if value is None:
                rule.pop(key, None)
            else:
                rule[key] = value
            continue
        parent: Any = rule
        for key in f.path[:-1]:
            child = parent.get(key)
            if not isinstance(child, dict):
                if value is None:
                    parent = None
                    break
                child = CommentedMap()
                parent[key] = child
            parent = child
        if parent is None:
            continue
        last = f.path[-1]
        if value is None:
            parent.pop(last, None)
            active = rule.get("active")
            if f.path == ("active", "hours") and isinstance(active, dict) and not active:
                rule.pop("active")
        else:
            parent[last] = value
    return _dump(doc, guess_indent(text))


def validate(path: Path, text: str, rule_id: str) -> Validation:
    """Check ``text`` as the rules file at ``path`` with the engine's loader; problems
    of the edited rule's form fields go to ``fields``, the rest to ``general``,
    each with its line in the file."""
    result = Validation()
    try:
        result.rules_file = load_rules_file(path, text=text)
        return result
    except ConfigError as exc:
        issues = exc.issues
    try:
        index: int | None = rule_index(text, rule_id)
    except (EditError, Exception):  # unparsable text: every problem is general
        index = None
    prefix = f"rules[{index}]." if index is not None else None
    for issue in issues:
        msg = f"line {issue.line}: {issue.message}"
        name = None
        if prefix is not None and issue.path.startswith(prefix):
            rest = tuple(issue.path[len(prefix) :].split("."))
            if rest in (("above",), ("below",)):
                name = "threshold"
            else:
                name = _BY_PATH.get(rest)
                if name is None and rest[:1] == ("active",):
                    name = "active_hours"
        if name is not None:
            result.fields.setdefault(name, []).append(msg)
        else:
            where = f"{issue.path}: " if issue.path else ""
            result.general.append(f"line {issue.line}: {where}{issue.message}")
    return result


def diff(old: str, new: str, old_name: str = "before", new_name: str = "after") -> str:
    """Unified diff of two texts ('' when they are the same)."""
    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=old_name,
            tofile=new_name,
            n=2,
        )
    )
