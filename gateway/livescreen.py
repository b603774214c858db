"""The live views in a terminal: ``dustgate status`` and ``make demo`` drawn with rich.

Owns only the drawing: :func:`status_tables` turns the rows of
:func:`gateway.statusview.board` (pure, built from the status, state, telemetry and
events messages) into rich tables, each state in its colour (:data:`STYLES`), and
:class:`Screen` redraws them in place (``rich.live.Live``) instead of clearing the
screen. Nothing here decides a state. It is used only when the output is a terminal;
the plain text of :func:`gateway.statusview.render` stays what pipes and logs get.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from gateway.statusview import (
    ACTUATOR_HEADER,
    DEVICE_HEADER,
    RULE_HEADER,
    GatewayLine,
    Row,
    SiteBoard,
)

STYLES: dict[str, str] = {
    "ok": "green",
    "pending": "yellow",
    "spraying": "bold cyan",
    "interlocked": "bold magenta",
    "stale": "dark_orange",
    "offline": "bold red",
    "off": "dim",
}
"""The colour of each state (:data:`gateway.statusview.STATES`)."""


def state_text(state: str, label: str | None = None) -> Text:
    """``label`` (default: the state's name) in the state's colour."""
    return Text(label if label is not None else state, style=STYLES.get(state, ""))


def _gateways(gateways: Sequence[GatewayLine]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("GATEWAY", "STATE", "VERSION", "UP", "BACKLOG", "EVICTED", "POLL ERR", "REFUSED"):
        table.add_column(col)
    table.add_column("STATUS AGE")
    for gw in gateways:
        table.add_row(
            gw.name,
            state_text("ok" if gw.online else "offline", "ONLINE" if gw.online else "OFFLINE"),
            gw.version,
            f"{gw.uptime_s:.0f}s",
            Text(str(gw.backlog), style="yellow" if gw.backlog else ""),
            Text(str(gw.evicted), style="red" if gw.evicted else ""),
            str(gw.poll_errors),
            str(gw.refused),
            gw.age,
        )
        for up in gw.uplinks:
            skew = "" if up.skew_s is None else f"clock {up.skew_s:+.0f}s"
            table.add_row(
                f"  uplink {up.name}",
                state_text(*(("ok", "connected") if up.connected else ("offline", "DOWN"))),
                skew,
                f"sent {up.sent}",
                Text(str(up.backlog), style="yellow" if up.backlog else ""),
                Text(str(up.evicted), style="red" if up.evicted else ""),
            )
    return table


def _rows(header: Sequence[str], rows: Iterable[Row], state_col: int) -> Table:
    """A table of ``rows``; the cell at ``state_col`` and the row's name take its colour."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in header:
        table.add_column(col)
    for row in rows:
        cells: list[RenderableType] = list(row.cells)
        cells[0] = Text(row.cells[0], style="bold" if row.state != "off" else "")
        cells[state_col] = state_text(row.state, row.cells[state_col])
        if "MISMATCH" in row.cells:
            i = row.cells.index("MISMATCH")
            cells[i] = Text("MISMATCH", style="bold red")
        table.add_row(*cells)
    return table


def status_tables(boards: Sequence[SiteBoard]) -> RenderableType:
    """Every site: its name and state, gateways with backlog, devices, cannons, rules."""
    if not boards:
        return Text("no dustgate site seen on this broker yet", style="yellow")
    parts: list[RenderableType] = []
    for site in boards:
        title = Text.assemble(("site ", "bold"), (site.site, "bold"), "  ")
        title.append_text(state_text(site.state, site.state.upper()))
        parts.append(title)
        if site.gateways:
            parts.append(_gateways(site.gateways))
        if site.devices:
            parts.append(_rows(DEVICE_HEADER, site.devices, 1))
        if site.actuators:
            parts.append(_rows(ACTUATOR_HEADER, site.actuators, 1))
        if site.rules:
            parts.append(_rows(RULE_HEADER, site.rules, 1))
        parts.append(Text(""))
    return Group(*parts)


def _level_style(value: float | None, threshold: float, clear: float) -> str:
    if value is None or value <= clear:
        return "green"
    return "yellow" if value <= threshold else "bold red"


def pm10_bar(mean: float | None, threshold: float, clear: float, top: float = 300.0) -> Text:
    """A 41-character bar of ``mean`` against ``top``: green up to ``clear``, yellow up to
    the threshold, red beyond it; the threshold marked with ``|``."""
    width = 0 if mean is None else int(min(mean, top) / top * 40)
    mark = int(threshold / top * 40)
    style = _level_style(mean, threshold, clear)
    bar = Text("[")
    for i in range(41):
        if i < width:
            bar.append("#", style=style)
        else:
            bar.append("|" if i == mark else ".", style="bold" if i == mark else "dim")
    bar.append("]")
    return bar


def console_for(out: TextIO) -> Console:
    """A rich console writing to ``out`` (a terminal: colours, in-place redraws)."""
    return Console(file=out, highlight=False)


class Screen:
    """A region of the terminal redrawn in place: ``with Screen(out) as s: s.show(x)``."""

    def __init__(self, out: TextIO, console: Console | None = None) -> None:
        self.console = console if console is not None else console_for(out)
        self._live = Live(
            Text(""),
            console=self.console,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )

    def start(self) -> Screen:
        self._live.start()
        return self

    def stop(self) -> None:
        """Leave the last frame on the terminal; again is harmless."""
        self._live.stop()

    def __enter__(self) -> Screen:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._live.stop()

    def show(self, renderable: RenderableType) -> None:
        self._live.update(renderable, refresh=True)


def demo_screen(
    title: str,
    note: str | None,
    pm10: float | None,
    limits: tuple[float, float, float],
    boards: Sequence[SiteBoard],
    events: Iterable[str],
    verdict: Iterable[tuple[str, bool]],
) -> RenderableType:
    """``make demo``'s live view: the title, PM10's rolling mean against the rule's ON and
    clear thresholds (``limits`` = window s, ON, clear), the site's tables, the last events
    and the loop's verdict so far."""
    window_s, threshold, clear = limits
    parts: list[RenderableType] = [Text(title, style="bold")]
    if note:
        parts.append(Text(note, style="yellow"))
    line = Text(f"PM10 {window_s:.0f}s mean ")
    line.append(f"{pm10 or 0:6.1f}", style=_level_style(pm10, threshold, clear))
    line.append(" ug/m3  ")
    line.append_text(pm10_bar(pm10, threshold, clear))
    line.append(f"  ON above {threshold:.0f}, clear at {clear:.0f}")
    parts += [line, Text(""), status_tables(boards)]
    parts += [Text(f"event {e}", style="dim") for e in events]
    loop = Text("loop: ")
    for name, done in verdict:
        loop.append(f"[{'x' if done else ' '}] {name}  ", style="bold green" if done else "dim")
    parts.append(loop)
    return Group(*parts)
