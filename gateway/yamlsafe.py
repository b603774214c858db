"""The one YAML loader of dustgate: plain data with positions, bounded, never a traceback.

Every YAML text dustgate reads from a person goes through :func:`parse_yaml` (a string
or bytes, e.g. a snippet typed in a form) or :func:`read_yaml` (a file): site.yaml,
rules.yaml and whatever validates YAML for them. The result is plain data (``dict``,
``list``, ``str``, ``int``, ``float``, ``bool``, ``None``; ``datetime`` for an explicit
or implicit timestamp) plus the ``line:col`` of every node, so that a validator can name
the place of each problem.

What it guarantees, whatever the input (see :class:`YamlLimits`):

- every problem is a :class:`ConfigIssue` printed ``file:line:col: path: message``;
  fatal ones raise :class:`ConfigError`, the others (duplicate keys, keys that are
  mappings or lists, a tag whose value does not fit it) come back in
  :attr:`YamlDocument.issues` so that a caller reports them with its own at once;
- invalid UTF-8 and characters YAML forbids (NUL, other control characters) are
  reported at their own line and column, not at the start of the file;
- nesting deeper than ``max_depth`` is refused at the node that goes too deep (no
  ``RecursionError``), also when the depth comes from aliases;
- aliases are expanded only up to ``max_alias_nodes`` nodes in all: a "billion laughs"
  is refused at the alias that would cross the limit, before anything is built, in time
  linear in the text; an alias inside its own anchor is refused too;
- merge keys (``<<: *base`` or ``<<: [*a, *b]``, as in Home Assistant and compose
  files) are supported: keys written in the mapping win, then the merged mappings in
  order; a merged key keeps the position where it is written;
- explicit tags are checked: ``!!str``, ``!!int``, ``!!float``, ``!!bool``, ``!!null``,
  ``!!timestamp``, ``!!map``, ``!!seq`` are accepted when the value fits them; any other
  tag (``!!binary``, ``!!set``, ``!!python/...``, ``!custom``) is refused with its place;
- integers are bounded: at most :data:`MAX_NUMBER_CHARS` characters and within a
  signed 64-bit range (larger ones raise in float conversions later; quote text that
  happens to be digits).

The composition is PyYAML's (safe, pure Python, keeps marks); the construction is ours.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "MAX_NUMBER_CHARS",
    "ConfigError",
    "ConfigIssue",
    "Loc",
    "NodeMark",
    "YamlDocument",
    "YamlLimits",
    "dotted",
    "parse_yaml",
    "read_yaml",
]

Loc = tuple[str | int, ...]
"""Where a value sits in the document: keys and list indexes from the root."""

MAX_NUMBER_CHARS = 64
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem at one place of one file (``line``, ``col``: 1-based)."""

    file: str
    line: int
    col: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}:{self.col}: {where}{self.message}"


class ConfigError(Exception):
    """One or more problems in a config file (``issues`` holds all of them)."""

    def __init__(self, issues: Sequence[ConfigIssue]):
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


@dataclass(frozen=True, slots=True)
class YamlLimits:
    """Bounds on what one document may cost; the defaults fit any real config file."""

    max_bytes: int = 4 * 1024 * 1024
    max_depth: int = 64  # nested mappings/lists, aliases expanded
    max_alias_nodes: int = 100_000  # nodes that aliases (and merges) add, in all


DEFAULT_LIMITS = YamlLimits()


class NodeMark:
    """Where one node starts, and where the key holding it starts (1-based)."""

    __slots__ = ("col", "key_col", "key_line", "line")

    def __init__(self, line: int, col: int, key_line: int, key_col: int):
        self.line, self.col, self.key_line, self.key_col = line, col, key_line, key_col

    def __repr__(self) -> str:
        return f"NodeMark({self.line}:{self.col}, key {self.key_line}:{self.key_col})"


@dataclass(slots=True)
class YamlDocument:
    """A parsed document: its data, the mark of every node by location, and the
    problems that did not stop parsing (to report together with the caller's own)."""

    data: Any
    positions: dict[Loc, NodeMark] = field(default_factory=dict)
    issues: list[ConfigIssue] = field(default_factory=list)


def read_yaml(path: Path | str, limits: YamlLimits = DEFAULT_LIMITS) -> YamlDocument:
    """Read and parse the file at ``path``; raise :class:`ConfigError` naming it."""
    fname = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(limits.max_bytes + 1)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([ConfigIssue(fname, 1, 1, "", f"cannot read file: {reason}")]) from None
    return parse_yaml(raw, fname, limits)


def parse_yaml(
    source: str | bytes, name: str = "<string>", limits: YamlLimits = DEFAULT_LIMITS
) -> YamlDocument:
    """Parse one YAML document from text or UTF-8 bytes; ``name`` is used in messages.

    An empty document is ``{}``. Raises :class:`ConfigError` (one issue) when the text
    cannot be parsed at all; see the module docstring for what is refused.
    """
    size = len(source.encode("utf-8", "surrogatepass") if isinstance(source, str) else source)
    if size > limits.max_bytes:
        raise _fatal(name, 1, 1, f"{size} bytes: more than the {limits.max_bytes} allowed")
    text = _decode(source, name) if isinstance(source, bytes) else source
    bad = _NON_PRINTABLE.search(text)
    if bad is not None:
        line, col = _line_col(text, bad.start())
        raise _fatal(name, line, col, f"character {_describe_char(bad.group())} is not allowed")
    root = _compose(text, name, limits.max_depth)
    if root is None:
        return YamlDocument({})
    builder = _Builder(name, limits)
    builder.measure(root)
    data = builder.build(root, (), None, 1)
    return YamlDocument(data, builder.positions, builder.issues)


def dotted(loc: Loc) -> str:
    """``("devices", 0, "interval")`` -> ``devices[0].interval``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


# ------------------------------------------------------------------ text


# what the YAML 1.1 reader accepts (PyYAML's own test): everything else is refused here
# with a position, where PyYAML would report only an offset in the stream
_NON_PRINTABLE = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)
_BREAKS = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


def _fatal(name: str, line: int, col: int, message: str, path: str = "") -> ConfigError:
    return ConfigError([ConfigIssue(name, line, col, path, message)])


def _describe_char(ch: str) -> str:
    return "NUL (U+0000)" if ch == "\0" else f"U+{ord(ch):04X}"


def _line_col(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of ``text[index]``, counting breaks as YAML does."""
    line, start = 1, 0
    for m in _BREAKS.finditer(text, 0, index):
        line, start = line + 1, m.end()
    return line, index - start + 1


def _decode(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        good = raw[: exc.start].decode("utf-8")
        line, col = _line_col(good, len(good))
        raise _fatal(
            name, line, col, f"not UTF-8: byte 0x{raw[exc.start]:02X} cannot be decoded"
        ) from None


# ------------------------------------------------------------------ composing


class _Alias:
    """An alias as it appears in the document: the anchored node, and where ``*name`` is."""

    __slots__ = ("mark", "name", "target")

    def __init__(self, target: yaml.Node, mark: yaml.Mark, name: str):
        self.target, self.mark, self.name = target, mark, name


class _Loader(yaml.SafeLoader):
    """PyYAML's safe composer with a depth bound and aliases kept visible."""

    def __init__(self, text: str, max_depth: int):
        super().__init__(text)
        self._depth = 0
        self._max_depth = max_depth

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)  # the anchored node
            assert node is not None
            return _Alias(node, event.start_mark, str(event.anchor))
        if self.check_event(yaml.MappingStartEvent, yaml.SequenceStartEvent):
            self._depth += 1
            if self._depth > self._max_depth:
                mark = self.peek_event().start_mark
                raise _TooDeep(mark)
            try:
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1
        return super().compose_node(parent, index)


class _TooDeep(Exception):
    def __init__(self, mark: yaml.Mark):
        self.mark = mark


def _compose(text: str, name: str, max_depth: int) -> yaml.Node | None:
    loader = _Loader(text, max_depth)
    try:
        return loader.get_single_node()  # type: ignore[no-any-return]
    except _TooDeep as exc:
        raise _fatal(
            name,
            exc.mark.line + 1,
            exc.mark.column + 1,
            f"nested more than {max_depth} levels deep",
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        msg = " ".join(p for p in (exc.context, exc.problem) if p)
        raise _fatal(name, line, col, f"YAML syntax: {msg}") from None
    except yaml.YAMLError as exc:  # no mark: PyYAML has none to give
        raise _fatal(name, 1, 1, f"YAML: {exc}") from None
    finally:
        loader.dispose()


# ------------------------------------------------------------------ building

_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null", "timestamp")}
_MERGE, _VALUE = _TAG + "merge", _TAG + "value"
_NULLS = {"", "~", "null", "Null", "NULL"}


def _regex(tag: str) -> re.Pattern[str]:
    for rules in yaml.SafeLoader.yaml_implicit_resolvers.values():
        for t, rx in rules:
            if t == tag:
                return rx
    raise LookupError(tag)  # pragma: no cover - PyYAML always has these


_INT_RX, _FLOAT_RX, _TIMESTAMP_RX = (_regex(_TAG + t) for t in ("int", "float", "timestamp"))


def _short(tag: str) -> str:
    return "!!" + tag[len(_TAG) :] if tag.startswith(_TAG) else tag


class _Builder:
    """Turns composed nodes into plain data with marks, within the limits."""

    def __init__(self, name: str, limits: YamlLimits):
        self.name = name
        self.limits = limits
        self.positions: dict[Loc, NodeMark] = {}
        self.issues: list[ConfigIssue] = []
        # per node: (nodes in it, depth of it), aliases expanded, capped past the limits
        self.cost: dict[int, tuple[int, int]] = {}
        self.alias_budget = limits.max_alias_nodes
        self.expanding = 0  # > 0 while building the inside of an expanded alias
        self.constructor = yaml.SafeLoader("")

    # -- measuring, before anything is built

    def measure(self, node: yaml.Node | _Alias) -> tuple[int, int]:
        """Size and depth of ``node`` with aliases expanded (memoised per node).

        The document is measured in order, so an alias's anchor is measured before it
        (an anchor precedes its aliases) unless the alias sits inside it: a cycle.
        """
        if isinstance(node, _Alias):
            got = self.cost.get(id(node.target))
            if got is None:
                raise self._at(node.mark, f"alias *{node.name} refers to a node that contains it")
            return got
        if isinstance(node, yaml.ScalarNode):
            self.cost[id(node)] = (1, 0)
            return (1, 0)
        size, depth = 1, 0
        cap = self.limits.max_alias_nodes + 1
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                for child in (k, v):
                    s, d = self.measure(child)
                    size, depth = min(size + s, cap), max(depth, d)
        elif isinstance(node, yaml.SequenceNode):
            for child in node.value:
                s, d = self.measure(child)
                size, depth = min(size + s, cap), max(depth, d)
        got = (size, min(depth + 1, self.limits.max_depth + 1))
        self.cost[id(node)] = got
        return got

    def _at(self, mark: yaml.Mark, message: str, loc: Loc = ()) -> ConfigError:
        return _fatal(self.name, mark.line + 1, mark.column + 1, message, dotted(loc))

    def _issue(self, node: yaml.Node, loc: Loc, message: str) -> None:
        self._issue_at(node.start_mark, loc, message)

    def _issue_at(self, m: yaml.Mark, loc: Loc, message: str) -> None:
        self.issues.append(ConfigIssue(self.name, m.line + 1, m.column + 1, dotted(loc), message))

    def _expand(self, alias: _Alias, loc: Loc, level: int) -> yaml.Node:
        size, depth = self.cost[id(alias.target)]
        if level - 1 + depth > self.limits.max_depth:  # level - 1 collections hold it
            raise self._at(
                alias.mark,
                f"alias *{alias.name} nests the data more than {self.limits.max_depth} levels deep",
                loc,
            )
        if self.expanding:  # already paid for by the outermost alias
            return alias.target
        self.alias_budget -= size
        if self.alias_budget < 0:
            raise self._at(
                alias.mark,
                f"alias *{alias.name} expands the document past "
                f"{self.limits.max_alias_nodes} nodes (too many aliases of aliases)",
                loc,
            )
        return alias.target

    # -- building

    def build(
        self, item: yaml.Node | _Alias, loc: Loc, key_mark: yaml.Mark | None, level: int
    ) -> Any:
        if isinstance(item, _Alias):
            node = self._expand(item, loc, level)
            self.expanding += 1
            try:
                return self._build(node, item.mark, loc, key_mark, level)
            finally:
                self.expanding -= 1
        return self._build(item, item.start_mark, loc, key_mark, level)

    def _build(
        self, node: yaml.Node, mark: yaml.Mark, loc: Loc, key_mark: yaml.Mark | None, level: int
    ) -> Any:
        km = key_mark or mark
        self.positions[loc] = NodeMark(mark.line + 1, mark.column + 1, km.line + 1, km.column + 1)
        if isinstance(node, yaml.MappingNode):
            if node.tag != _TAG + "map":
                self._issue(node, loc, f"tag {_short(node.tag)} is not supported on a mapping")
            return self._mapping(node, loc, level)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _TAG + "seq":
                self._issue(node, loc, f"tag {_short(node.tag)} is not supported on a list")
            return [self.build(v, (*loc, i), None, level + 1) for i, v in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        return self._scalar(node, loc)

    def _entries(
        self, node: yaml.MappingNode, loc: Loc, level: int, seen: set[int]
    ) -> tuple[list[tuple[yaml.Node | _Alias, yaml.Node | _Alias]], list[tuple[Any, Any]]]:
        """(written entries, merged entries in priority order) of one mapping."""
        own: list[tuple[Any, Any]] = []
        merged: list[tuple[Any, Any]] = []
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.tag == _MERGE:
                merged.extend(self._merge_sources(v, loc, level, seen))
            else:
                own.append((k, v))
        return own, merged

    def _merge_sources(
        self, value: yaml.Node | _Alias, loc: Loc, level: int, seen: set[int]
    ) -> list[tuple[Any, Any]]:
        sources = (
            list(value.value)
            if isinstance(value, yaml.SequenceNode) and value.tag == _TAG + "seq"
            else [value]
        )
        out: list[tuple[Any, Any]] = []
        for src in sources:
            node = self._expand(src, loc, level) if isinstance(src, _Alias) else src
            # (its entries are built later, outside the expansion: a merged alias is paid
            # for here, and its inner aliases again when they are built; an upper bound)
            if not isinstance(node, yaml.MappingNode) or id(node) in seen:
                where = src.mark if isinstance(src, _Alias) else src.start_mark
                what = "merges itself" if id(node) in seen else "needs a mapping or a list of them"
                raise self._at(where, f"merge key << {what}", loc)
            own, inner = self._entries(node, loc, level, seen | {id(node)})
            out.extend(own)
            out.extend(inner)
        return out

    def _mapping(self, node: yaml.MappingNode, loc: Loc, level: int) -> dict[Any, Any]:
        own, merged = self._entries(node, loc, level, {id(node)})
        out: dict[Any, Any] = {}
        for written, entries in ((True, own), (False, merged)):
            for k, v in entries:
                key = self._key(k, loc)
                if key is _BAD_KEY:
                    continue
                if key in out:
                    if written:
                        self._issue(_node_of(k), (*loc, str(key)), "duplicate key")
                    continue  # a merged key never overrides
                key_mark = k.mark if isinstance(k, _Alias) else k.start_mark
                out[key] = self.build(v, (*loc, str(key)), key_mark, level + 1)
        return out

    def _key(self, k: yaml.Node | _Alias, loc: Loc) -> Any:
        node = _node_of(k)
        if not isinstance(node, yaml.ScalarNode):
            mark = k.mark if isinstance(k, _Alias) else k.start_mark
            self._issue_at(mark, loc, "keys must be plain scalars")
            return _BAD_KEY
        key = self._scalar(node, loc)
        if key is None or not isinstance(key, str | int | float | bool):
            self._issue(node, loc, "keys must be plain scalars")
            return _BAD_KEY
        return key

    def _scalar(self, node: yaml.ScalarNode, loc: Loc) -> Any:
        tag, value = node.tag, str(node.value)
        if tag in (_MERGE, _VALUE):  # "<<" or "=" where no key is: text
            return value
        if tag not in _SCALAR_TAGS:
            self._issue(node, loc, f"tag {_short(tag)} is not supported")
            return value
        c = self.constructor
        if tag == _TAG + "str":
            return value
        if tag == _TAG + "null":
            if value not in _NULLS:
                self._issue(node, loc, f"!!null cannot be {value!r}")
                return value
            return None
        if tag == _TAG + "bool":
            if value.lower() not in c.bool_values:
                self._issue(node, loc, f"!!bool cannot be {value!r} (true or false)")
                return value
            return c.bool_values[value.lower()]
        if tag == _TAG + "timestamp":
            if not _TIMESTAMP_RX.match(value):
                self._issue(node, loc, f"!!timestamp cannot be {value!r} (YYYY-MM-DD[ hh:mm:ss])")
                return value
            try:
                return c.construct_yaml_timestamp(node)
            except (ValueError, OverflowError) as exc:
                self._issue(node, loc, f"bad date or time {value!r}: {exc}")
                return value
        is_int = tag == _TAG + "int"
        if not (_INT_RX.match(value) or (not is_int and _FLOAT_RX.match(value))):
            kind = "an integer" if is_int else "a number"
            self._issue(node, loc, f"{_short(tag)} {value!r} is not {kind}")
            return value
        if len(value) > MAX_NUMBER_CHARS:
            self._issue(
                node, loc, f"number of {len(value)} characters (at most {MAX_NUMBER_CHARS})"
            )
            return value
        try:
            number = c.construct_yaml_int(node) if is_int else c.construct_yaml_float(node)
        except (ValueError, OverflowError) as exc:  # pragma: no cover - the regexes vet it
            self._issue(node, loc, f"not a number: {exc}")
            return value
        if isinstance(number, int) and not INT64_MIN <= number <= INT64_MAX:
            self._issue(
                node, loc, "integer out of the 64-bit range (quote it if it is text, not a number)"
            )
            return value
        return number


_BAD_KEY = object()


def _node_of(item: yaml.Node | _Alias) -> yaml.Node:
    return item.target if isinstance(item, _Alias) else item
