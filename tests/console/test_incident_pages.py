"""The incidents' pages in the console: list, incident page, acknowledge / note /
resolve with versions (two inspectors), inert markup, board badges, ranking."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from consolehelpers import login, make_console
from starlette.testclient import TestClient

from rules.console.web import Ctx
from rules.incidents.machine import Signal
from rules.incidents.pages import service_of
from rules.incidents.service import IncidentService

SITE = "site-01"


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def console(tmp_path: Path) -> Iterator[tuple[Ctx, TestClient, IncidentService, Clock]]:
    ctx, client = make_console(tmp_path)
    with client:
        svc = service_of(ctx)
        clock = Clock()
        svc.clock = clock
        yield ctx, client, svc, clock


def spike(svc: IncidentService, clock: Clock) -> int:
    svc.signals([Signal(SITE, "rule_active", "pm10-gate", True, clock(), "pm10-gate: on, 320")])
    inc = svc.book.open_incident(SITE, "rule_active")
    assert inc is not None
    return inc.id


def form_version(page: str) -> str:
    m = re.search(r'name="version" value="(\d+)"', page)
    assert m is not None
    return m.group(1)


def csrf(page: str) -> str:
    m = re.search(r'data-csrf="([^"]+)"', page)
    assert m is not None
    return m.group(1)


def test_list_and_page_need_an_inspector(console: Any) -> None:
    _ctx, client, svc, clock = console
    inc = spike(svc, clock)
    r = client.get("/incidents", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    login(client, "vera")
    assert client.get("/incidents").status_code == 403
    assert client.get(f"/incidents/{inc}").status_code == 403
    client.cookies.clear()
    login(client, "ines")
    page = client.get("/incidents").text
    assert f'data-incident="{inc}"' in page and "a rule is spraying" in page
    assert "incident opened 1" in page  # the service's counters
    assert client.get("/incidents/999").status_code == 404


def test_acknowledge_note_resolve(console: Any) -> None:
    ctx, client, svc, clock = console
    inc = spike(svc, clock)
    login(client, "ines")
    page = client.get(f"/incidents/{inc}").text
    clock.t += 120
    r = client.post(
        f"/incidents/{inc}/acknowledge",
        data={"csrf": csrf(page), "version": form_version(page)},
        follow_redirects=False,
    )
    assert r.status_code == 303
    page = client.get(f"/incidents/{inc}").text
    assert 'data-status="acknowledged"' in page and "by ines (after 2m00s)" in page
    evil = "<script>alert(1)</script> hose <b>fixed</b>"
    r = client.post(
        f"/incidents/{inc}/note",
        data={"csrf": csrf(page), "version": form_version(page), "text": evil},
    )
    page = r.text
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    clock.t += 600
    r = client.post(
        f"/incidents/{inc}/resolve",
        data={"csrf": csrf(page), "version": form_version(page), "text": "washed the road"},
    )
    assert 'data-status="resolved"' in r.text and "after 12m00s" in r.text
    assert 'id="resolve"' not in r.text  # nothing left to do
    kinds = [row.kind for row in svc.store.log(inc)]
    assert kinds == ["opened", "acknowledged", "noted", "resolved"]
    audit = ctx.store.query("SELECT action, user FROM audit WHERE target = ?", (f"incident:{inc}",))
    assert audit == [
        ("incident_acknowledge", "ines"),
        ("incident_note", "ines"),
        ("incident_resolve", "ines"),
    ]


def test_the_second_inspector_sees_the_first_action(console: Any) -> None:
    _ctx, client, svc, clock = console
    inc = spike(svc, clock)
    other = TestClient(client.app, base_url="http://127.0.0.1")
    login(client, "ines")
    login(other, "otto")  # an operator is an inspector too
    mine = client.get(f"/incidents/{inc}").text
    theirs = other.get(f"/incidents/{inc}").text
    r = client.post(
        f"/incidents/{inc}/acknowledge",
        data={"csrf": csrf(mine), "version": form_version(mine)},
        follow_redirects=False,
    )
    assert r.status_code == 303
    r = other.post(
        f"/incidents/{inc}/resolve",
        data={"csrf": csrf(theirs), "version": form_version(theirs), "text": "done"},
    )
    assert r.status_code == 409
    assert "changed after you opened the page" in r.text and "last by ines" in r.text
    assert 'data-status="acknowledged"' in r.text
    stored = svc.store.incident(inc)
    assert stored is not None and stored.status == "acknowledged"


def test_a_bad_version_or_state_is_refused_with_a_reason(console: Any) -> None:
    _ctx, client, svc, clock = console
    inc = spike(svc, clock)
    login(client, "ines")
    page = client.get(f"/incidents/{inc}").text
    r = client.post(f"/incidents/{inc}/acknowledge", data={"csrf": csrf(page), "version": "x"})
    assert r.status_code == 400 and "no valid version" in r.text
    r = client.post(
        f"/incidents/{inc}/note",
        data={"csrf": csrf(page), "version": form_version(page), "text": "   "},
    )
    assert r.status_code == 400 and "a note must be" in r.text


def test_board_badge_turns_red_when_overdue_and_ranking_shows_times(console: Any) -> None:
    _ctx, client, svc, clock = console
    inc = spike(svc, clock)
    login(client, "ines")
    board = client.get("/").text
    assert "1 open incident" in board
    clock.t += 31 * 60
    svc.tick()
    board = client.get("/").text
    assert 'class="badge incident overdue"' in board and "1 overdue incident" in board
    listing = client.get("/incidents").text
    assert 'class="inc st-open overdue"' in listing
    version = svc.book.incidents[inc].version
    clock.t += 60
    svc.acknowledge(inc, "ines", version)
    clock.t += 60
    svc.resolve(inc, "ines", version + 1)
    ranking = client.get("/incidents/ranking").text
    row = re.search(rf'<tr data-site="{SITE}">(.*?)</tr>', ranking, re.S)
    assert row is not None
    assert '<td class="ack-median">32.0 min</td>' in row.group(1)
    assert '<td class="resolve-median">33.0 min</td>' in row.group(1)
    assert "open incident" not in client.get("/").text


def test_links_point_at_this_console_unless_configured(console: Any) -> None:
    _ctx, _client, svc, _clock = console
    assert svc.settings.link(7) == "http://127.0.0.1:8480/incidents/7"


def test_the_site_page_lists_its_incidents(console: Any) -> None:
    ctx, client, svc, clock = console
    from gateway import protocol as p

    ctx.live.on_message(
        p.status_topic(SITE, "gw"), p.encode(p.GatewayStatus(state="online", ts=1)), clock()
    )
    inc = spike(svc, clock)
    login(client, "vera")
    assert 'id="site-incidents"' not in client.get(f"/site/{SITE}").text  # viewers: no incidents
    client.cookies.clear()
    login(client, "ines")
    page = client.get(f"/site/{SITE}").text
    assert 'id="site-incidents"' in page and f'href="/incidents/{inc}"' in page
