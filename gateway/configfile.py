"""Config files: YAML with line numbers, pydantic validation, readable errors.

The YAML itself is read by :mod:`gateway.yamlsafe` (the one safe loader, with its
limits); this module validates what it returns.

Every problem in a config file is reported as
``file:line:col: path.to.field: what was expected``, and all of them at once:
YAML syntax, duplicate keys, unknown keys, wrong types, out-of-range values
and cross-references (a rule naming an undefined actuator). Shared by the
agent's ``site.yaml`` and the engine's ``rules.yaml``; also defines the small
types both use (durations, secrets, MQTT connection settings).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
)

from gateway.yamlsafe import (
    ConfigError,
    ConfigIssue,
    Loc,
    NodeMark,
    YamlDocument,
    parse_yaml,
    read_yaml,
)
from gateway.yamlsafe import dotted as _dotted

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "Duration",
    "Loc",
    "MqttSettings",
    "Secret",
    "StrictModel",
    "TlsSettings",
    "issue_at",
    "load",
    "load_yaml",
    "parse_duration",
    "validate",
]


class StrictModel(BaseModel):
    """Base for config models: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# ------------------------------------------------------------------ types

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> Any:
    """``30s``, ``5m``, ``1h30m``, ``500ms`` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        pos, total = 0, 0.0
        for m in _DURATION.finditer(text):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if text and pos == len(text):
            return total
        try:
            return float(text)
        except ValueError:
            pass
    raise ValueError(f"expected a duration such as 30s, 5m or 1h, got {value!r}")


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
"""Seconds; written in YAML as ``30s``, ``5m``, ``1h`` or a number."""


MAX_SECRET_BYTES = 64 * 1024
"""A secret file is a password or a token: more is a wrong path (a device, a log)."""


def _resolve_secret(value: Any, info: ValidationInfo) -> Any:
    """A secret inline, or ``{env: NAME}``, or ``{file: PATH}`` (read, stripped).

    With ``context={"lenient_secrets": [...]}`` (``dustgate check`` on a machine
    that is not the target) an unresolvable secret is noted there, not an error.
    """
    if isinstance(value, dict):
        problem = None
        if set(value) == {"env"}:
            name = str(value["env"])
            if name in os.environ:
                return os.environ[name]
            problem = f"environment variable {name} is not set"
        elif set(value) == {"file"}:
            p = Path(str(value["file"])).expanduser()
            try:
                with open(p, "rb") as f:
                    raw = f.read(MAX_SECRET_BYTES + 1)  # /dev/zero must not eat the memory
                if len(raw) > MAX_SECRET_BYTES:
                    problem = f"secret file {p} is longer than {MAX_SECRET_BYTES} bytes"
                else:
                    return raw.decode("utf-8").strip()
            except OSError as exc:
                problem = f"cannot read secret file {p}: {exc.strerror}"
            except UnicodeDecodeError:
                problem = f"secret file {p} is not UTF-8 text"
        if problem is not None:
            notes = (info.context or {}).get("lenient_secrets")
            if notes is None:
                raise ValueError(problem)
            notes.append(problem)
            return ""
        raise ValueError("expected a string, {env: NAME} or {file: PATH}")
    return value


Secret = Annotated[SecretStr, BeforeValidator(_resolve_secret)]  # type: ignore[arg-type]


class TlsSettings(StrictModel):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False  # skip hostname check (test CAs only)


class MqttSettings(StrictModel):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    username: str | None = None
    password: Secret | None = None
    client_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    keepalive: Duration = 30.0
    tls: TlsSettings | None = None
    reconnect_min: Duration = 1.0
    reconnect_max: Duration = 60.0


# ------------------------------------------------------------------ YAML


def load_yaml(path: Path | str, text: str | None = None) -> tuple[Any, dict[Loc, NodeMark]]:
    """Parse YAML (the file, or ``text`` named ``path``) keeping the position of every
    node, through the one safe loader (:mod:`gateway.yamlsafe`); raise ConfigError."""
    doc = _parse_yaml(path, text)
    if doc.issues:
        raise ConfigError(doc.issues)
    return doc.data, doc.positions


def _parse_yaml(path: Path | str, text: str | None) -> YamlDocument:
    """Syntax errors and limits raise; structural problems (duplicate keys, bad tags)
    come back in ``issues`` to be reported with the validation's."""
    return read_yaml(path) if text is None else parse_yaml(text, str(path))


# ------------------------------------------------------------- validation

M = TypeVar("M", bound=BaseModel)
RefCheck = Callable[[Any], list[tuple[Loc, str]]]


def issue_at(
    fname: str, positions: dict[Loc, NodeMark], loc: Loc, message: str, at_key: bool = False
) -> ConfigIssue:
    """An issue placed at the deepest existing node along ``loc``."""
    probe = tuple(loc)
    while probe not in positions and probe:
        probe = probe[:-1]
    node = positions.get(probe)
    if node is None:
        return ConfigIssue(fname, 1, 1, _dotted(loc), message)
    exact = probe == tuple(loc)
    line, col = (node.key_line, node.key_col) if (at_key and exact) else (node.line, node.col)
    return ConfigIssue(fname, line, col, _dotted(loc), message)


def _clean_loc(loc: tuple[Any, ...], data: Any) -> Loc:
    """Drop the parts pydantic adds for unions and tags (``modbus``, ``str``,
    ``function-after[...]``): walk the user's data and keep only real keys,
    plus a final key that is missing or unknown."""
    out: list[str | int] = []
    cur = data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if (isinstance(part, int) and isinstance(cur, list) and 0 <= part < len(cur)) or (
            isinstance(cur, dict) and part in cur
        ):
            out.append(part)
            cur = cur[part]
        elif last and isinstance(cur, dict) and not isinstance(part, int):
            out.append(part)
    return tuple(out)


def _message(err: dict[str, Any]) -> str:
    kind = err["type"]
    msg = str(err["msg"])
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see the example config)"
    if kind == "missing":
        return "required key is missing"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if "input" in err and "got " not in msg and not isinstance(err["input"], dict | list):
        return f"{msg} (got {err['input']!r})"
    return msg


def validate(
    model: type[M],
    data: Any,
    positions: dict[Loc, NodeMark],
    fname: str,
    ref_checks: Sequence[RefCheck] = (),
    context: dict[str, Any] | None = None,
    issues: list[ConfigIssue] | None = None,
) -> M:
    """Validate ``data`` as ``model``; raise ConfigError listing every problem."""
    issues = list(issues or [])
    # a value the loader already refused (bad tag, huge integer) is not reported twice
    refused = tuple(i.path for i in issues if i.path)
    result: M | None = None
    try:
        result = model.model_validate(data, context=context)
    except ValidationError as exc:
        for err in exc.errors():
            loc = _clean_loc(err["loc"], data)
            if _under(_dotted(loc), refused):
                continue
            issues.append(
                issue_at(
                    fname,
                    positions,
                    loc,
                    _message(dict(err)),
                    at_key=err["type"] == "extra_forbidden",
                )
            )
    for check in ref_checks:
        for loc, msg in check(data):
            issues.append(issue_at(fname, positions, loc, msg))
    if issues:
        issues.sort(key=lambda i: (i.line, i.col))
        raise ConfigError(_dedupe(issues))
    assert result is not None
    return result


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith((p + ".", p + "[")) for p in prefixes)


def _dedupe(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    seen: set[tuple[int, int, str, str]] = set()
    out = []
    for i in issues:
        key = (i.line, i.col, i.path, i.message)
        if key not in seen:
            seen.add(key)
            out.append(i)
    return out


def load(
    model: type[M],
    path: Path | str,
    ref_checks: Sequence[RefCheck] = (),
    text: str | None = None,
    context: dict[str, Any] | None = None,
) -> M:
    """Read, parse and validate a config file in one go."""
    doc = _parse_yaml(path, text)
    if not isinstance(doc.data, dict):
        raise ConfigError(
            [issue_at(str(path), doc.positions, (), "expected a mapping at top level")]
        )
    return validate(model, doc.data, doc.positions, str(path), ref_checks, context, doc.issues)
