"""Replay input: readings from CSV (long or wide) and from InfluxDB 1.x. Pure
parsing apart from the HTTP query; bad rows are counted, not raised.

- CSV, long format: header ``ts,site,device,metric,value[,status]``; rows of
  one reading (same ts, site, device) must be adjacent.
- CSV, wide format: header ``ts,site,device,<metric>,...[,status][,seq]``;
  empty cells are missing values.
- ``ts``: milliseconds since the epoch, or ISO 8601 (``Z`` or an offset;
  naive times are UTC).
- InfluxDB 1.x: ``SELECT * FROM telemetry WHERE time >= .. AND time < ..``
  over HTTP ``/query`` (chunked, epoch=ms); numeric columns other than
  seq/interval_s are metrics, ``<metric>_flag`` columns their flags
  (``rules.sink.points`` stores status and flags as tags).

Speed: the CSV is split with ``str.split`` wherever the csv module would
read it the same way (no quotes, NULs or bare CRs), and a wide row is
converted only for the metrics some rule reads (the other cells are still
checked). ``dustgate replay`` reads ahead in a second process
(:mod:`rules.history.readahead`).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

# A reading: (ts seconds, site, device, values, status, per-metric flags or None)
Reading = tuple[float, str, str, dict[str, float], str, dict[str, str] | None]

NON_METRIC_COLUMNS = frozenset(
    {"ts", "time", "site", "device", "model", "status", "seq", "gateway", "quality", "interval_s"}
)


class ReplayError(Exception):
    """Input that cannot be replayed (bad header, unreadable timestamp, HTTP error)."""


# What reading the input may raise for bad input (the CLI reports them in one line).
INPUT_ERRORS = (ReplayError, OSError, UnicodeDecodeError, csv.Error, json.JSONDecodeError)


# ---------------------------------------------------------------- parsing


def parse_time(text: str) -> float:
    """Milliseconds since the epoch, or ISO 8601 -> seconds since the epoch."""
    t = text.strip()
    if not t:
        raise ReplayError("empty timestamp")
    if t.isdigit():
        return int(t) / 1000.0
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ReplayError(
            f"timestamp {text!r} is neither ms since the epoch nor ISO 8601"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _ts_parser(sample: str) -> Any:
    # decided once per file: the hot loop must not try both
    if sample.strip().isdigit():
        return lambda s: int(s) / 1000.0
    return parse_time


_BATCH_HINT = 1 << 16  # characters of whole lines read at a time


def _row_batches(stream: TextIO) -> Iterator[list[list[str]]]:
    """The rows ``csv.reader(stream)`` gives, in batches of whole lines.

    Plain batches (no quote, NUL or bare CR, no line beyond the field size
    limit) are split with ``str.split``, which for such text is exactly what
    the csv module does and about twice as fast. From the first batch that is
    not plain on, the csv module reads the rest of the stream itself, so
    quoted fields (even ones spanning lines) keep its semantics and errors.
    """
    limit = csv.field_size_limit()
    while True:
        lines = stream.readlines(_BATCH_HINT)
        if not lines:
            return
        text = "".join(lines)
        if (
            '"' in text
            or "\x00" in text
            or ("\r" in text and text.count("\r") != text.count("\r\n"))
            or (len(text) > limit and max(map(len, lines)) > limit)
        ):
            reader = csv.reader(itertools.chain(lines, stream))
            batch: list[list[str]] = []
            try:
                for row in reader:
                    batch.append(row)
                    if len(batch) >= 1024:
                        yield batch
                        batch = []
            except csv.Error:
                if batch:  # the rows before the error count, as when read row by row
                    yield batch
                raise
            if batch:
                yield batch
            return
        if "\r" in text:
            text = text.replace("\r\n", "\n")  # line ends only (bare CRs were ruled out)
        parts = text.split("\n")
        if not parts[-1]:
            parts.pop()  # the text ended with a line end
        yield [p.split(",") if p else [] for p in parts]


def read_csv(
    stream: TextIO, counters: Counter[str] | None = None, start: float = -math.inf,
    end: float = math.inf,
) -> CsvReadings:  # fmt: skip
    """Readings from a long or wide CSV (detected by the header)."""
    return CsvReadings(stream, counters if counters is not None else Counter(), start, end)


MetricsFor = Callable[[str, str], Collection[str]]


class CsvReadings:
    """An iterator of :data:`Reading` over a CSV stream (lazy: the header is read on the
    first ``next``).

    :meth:`select` is the replay's way in: the same readings, but the values of
    a wide row hold only the metrics somebody reads from that device (the
    other cells are still checked, so a row is bad or good exactly as
    without the selection).
    """

    def __init__(self, stream: TextIO, counters: Counter[str], start: float, end: float) -> None:
        self._stream = stream
        self.counters = counters  # bad_rows, ... (updated as the rows are read)
        self._start = start
        self._end = end
        self._it: Iterator[Reading] | None = None

    def __iter__(self) -> CsvReadings:
        return self

    def __next__(self) -> Reading:
        if self._it is None:
            self._it = self._readings(None)
        return next(self._it)

    def select(self, metrics_for: MetricsFor) -> Iterator[Reading]:
        """The readings, with wide rows cut down to ``metrics_for(site, device)``.

        Unlike plain iteration, this reads the header at once (a bad header raises
        :class:`ReplayError` here)."""
        if self._it is not None:
            raise RuntimeError("select() on a CSV reader that was already iterated")
        self._it = it = self._readings(metrics_for)
        return it

    def _readings(self, metrics_for: MetricsFor | None) -> Iterator[Reading]:
        """Reads the header now and returns the row generator (one generator, not two,
        between the rows and the replay loop)."""
        batches = _row_batches(self._stream)
        header: list[str] | None = None
        first: list[list[str]] = []
        for batch in batches:
            if batch:
                header = [h.strip().lower() for h in batch[0]]
                first = batch[1:]
                break
        if header is None:
            return iter(())
        for need in ("ts", "site", "device"):
            if need not in header:
                raise ReplayError(f"CSV header lacks {need!r}: {','.join(header)}")
        rows = itertools.chain([first], batches)
        c, start, end = self.counters, self._start, self._end
        if "metric" in header and "value" in header:
            return _read_long(itertools.chain.from_iterable(rows), header, c, start, end)
        return _read_wide(rows, header, c, start, end, metrics_for)


def _read_wide(
    batches: Iterable[list[list[str]]], header: list[str], counters: Counter[str], start: float,
    end: float, metrics_for: MetricsFor | None = None,
) -> Iterator[Reading]:  # fmt: skip
    i_ts, i_site, i_dev = header.index("ts"), header.index("site"), header.index("device")
    with_status = "status" in header
    i_status = header.index("status") if with_status else 0
    metrics = tuple((i, h) for i, h in enumerate(header) if h not in NON_METRIC_COLUMNS)
    # per (site, device): the cells to convert, and the other metric cells to check
    plans: dict[tuple[str, str], tuple[tuple[tuple[int, str], ...], tuple[int, ...]]] = {}
    parse_ts: Callable[[str], float] | None = None
    ts_text: str | None = None  # rows of one second share the timestamp: parse it once
    ts = 0.0
    ncols = len(header)
    bounded = start > -math.inf or end < math.inf
    for rows in batches:
        for row in rows:
            if len(row) != ncols:
                counters["bad_rows"] += 1
                continue
            site, device = row[i_site], row[i_dev]
            plan = plans.get((site, device))
            if plan is None:
                if metrics_for is None:
                    plan = (metrics, ())
                else:
                    want = metrics_for(site, device)
                    plan = (
                        tuple((i, m) for i, m in metrics if m in want),
                        tuple(i for i, m in metrics if m not in want),
                    )
                plans[(site, device)] = plan
            try:
                text = row[i_ts]
                if text != ts_text:
                    if parse_ts is None:
                        parse_ts = _ts_parser(text)
                    ts = parse_ts(text)
                    ts_text = text
                values = {}
                for i, m in plan[0]:
                    cell = row[i]
                    if cell:
                        v = float(cell)
                        if v - v:  # nan, inf: float() takes them, the engine must not
                            counters["non_finite"] += 1
                        else:
                            values[m] = v
                for i in plan[1]:
                    if row[i]:
                        v = float(row[i])
                        if v - v:
                            counters["non_finite"] += 1
            except (ValueError, ReplayError):
                counters["bad_rows"] += 1
                continue
            if bounded and (ts < start or ts >= end):
                continue
            yield ts, site, device, values, (row[i_status] or "ok") if with_status else "ok", None


def _read_long(
    reader: Iterable[list[str]], header: list[str], counters: Counter[str], start: float,
    end: float,
) -> Iterator[Reading]:  # fmt: skip
    i_ts, i_site, i_dev = header.index("ts"), header.index("site"), header.index("device")
    i_metric, i_value = header.index("metric"), header.index("value")
    i_status = header.index("status") if "status" in header else None
    parse_ts = None
    key: tuple[str, str, str] | None = None
    ts = 0.0
    values: dict[str, float] = {}
    flags: dict[str, str] = {}
    for row in reader:
        if len(row) < len(header):
            counters["bad_rows"] += 1
            continue
        if parse_ts is None:
            parse_ts = _ts_parser(row[i_ts])
        k = (row[i_ts], row[i_site], row[i_dev])
        if k != key:
            if key is not None and (values or flags):
                yield ts, key[1], key[2], values, "ok", flags or None
            key, values, flags = k, {}, {}
            try:
                ts = parse_ts(row[i_ts])
            except (ValueError, ReplayError):
                counters["bad_rows"] += 1
                key = None
                continue
            if ts < start or ts >= end:
                key = None
                continue
        elif key is None:
            continue
        try:
            v = float(row[i_value])
        except ValueError:
            counters["bad_rows"] += 1
            continue
        if v - v:  # nan, inf
            counters["non_finite"] += 1
            continue
        metric = row[i_metric]
        values[metric] = v
        if i_status is not None and row[i_status] and row[i_status] != "ok":
            flags[metric] = row[i_status]
    if key is not None and (values or flags):
        yield ts, key[1], key[2], values, "ok", flags or None


def read_influx(
    url: str, db: str, start: float, end: float, user: str | None = None,
    password: str | None = None, measurement: str = "telemetry", chunk_size: int = 10000,
    timeout: float = 60.0, devices: Iterable[tuple[str, str]] | None = None,
    counters: Counter[str] | None = None,
) -> Iterator[Reading]:  # fmt: skip
    """Readings from InfluxDB 1.x (InfluxQL over HTTP, chunked JSON); ``devices``: only
    these (site, device) pairs (bound parameters). Counted in ``counters``: ``non_finite`` values
    (``NaN``/``Infinity`` tokens or numbers beyond the float range, left out of their
    reading) and ``bad_rows`` (no integer time)."""
    c = counters if counters is not None else Counter()
    where, bound = "", {}
    if devices is not None:
        pairs = sorted(set(devices))
        if not pairs:
            return
        terms = [f'("site" = $s{i} AND "device" = $d{i})' for i in range(len(pairs))]
        where = " AND (" + " OR ".join(terms) + ")"
        for i, (site, device) in enumerate(pairs):
            bound[f"s{i}"], bound[f"d{i}"] = site, device
    q = (
        f'SELECT * FROM "{measurement}" WHERE time >= {int(start * 1000)}ms '
        f"AND time < {int(end * 1000)}ms{where}"
    )
    params = {"db": db, "q": q, "epoch": "ms", "chunked": "true", "chunk_size": str(chunk_size)}
    if bound:
        params["params"] = json.dumps(bound)
    if user:
        params["u"] = user
    if password:
        params["p"] = password
    full = url.rstrip("/") + "/query?" + urllib.parse.urlencode(params)
    try:
        resp = urllib.request.urlopen(full, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise ReplayError(f"InfluxDB query failed: HTTP {exc.code} {exc.read()[:200]!r}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ReplayError(f"cannot reach InfluxDB at {url}: {exc}") from None
    with resp:
        for line in io.TextIOWrapper(resp, encoding="utf-8"):
            if not line.strip():
                continue
            chunk = json.loads(line)
            for result in chunk.get("results", []):
                if "error" in result:
                    raise ReplayError(f"InfluxDB: {result['error']}")
                for series in result.get("series", []):
                    yield from _influx_rows(series, c)


def _number(x: Any, counters: Counter[str]) -> float | None:
    """A JSON number of a metric column as a finite float; None (counted) otherwise."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None  # a string (a flag, a note) or null: not a value
    try:
        v = float(x)
    except OverflowError:  # an integer beyond the float range
        v = math.inf
    if v - v:
        counters["non_finite"] += 1
        return None
    return v


def _influx_rows(series: dict[str, Any], counters: Counter[str]) -> Iterator[Reading]:
    cols: list[str] = series["columns"]
    tags = series.get("tags") or {}
    i_time = cols.index("time")
    i_site = cols.index("site") if "site" in cols else None
    i_dev = cols.index("device") if "device" in cols else None
    i_status = cols.index("status") if "status" in cols else None
    metrics = [
        (i, c) for i, c in enumerate(cols)
        if c not in NON_METRIC_COLUMNS and not c.endswith("_raw")  # a calibrated metric's raw
    ]  # fmt: skip
    flag_cols = [(i, c[: -len("_flag")]) for i, c in enumerate(cols) if c.endswith("_flag")]
    for row in series.get("values", []):
        site = row[i_site] if i_site is not None else tags.get("site")
        dev = row[i_dev] if i_dev is not None else tags.get("device")
        if not site or not dev:
            continue
        t = row[i_time]
        if isinstance(t, bool) or not isinstance(t, int):
            counters["bad_rows"] += 1
            continue
        values = {}
        for i, m in metrics:
            v = _number(row[i], counters)
            if v is not None:
                values[m] = v
        status = (row[i_status] if i_status is not None else None) or "ok"
        flags = {m: str(row[i]) for i, m in flag_cols if row[i]} if flag_cols else None
        yield t / 1000.0, site, dev, values, str(status), flags or None
