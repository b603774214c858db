"""The console in a real browser (Debian's chromium) against the real loop.

Real mosquitto and influxd, the agent and the rule engine as their own
processes, the site simulated at the wire (drivers.sim.site, as `make demo`),
the console as `dustgate console`. An operator signs in, sees the site,
lowers the threshold, the preview over last week's stored data shows more
triggers than before, saves; the engine reloads (its event is seen on the
page); a dust spike turns the site red and the cannons show ON with their
lease. The spike also opens an incident: the site's card shows it within 5 s
of the rule going on, a webhook receiver started by the test gets the
notification with the incident's link, an inspector acknowledges and resolves
it in the browser and the ranking shows the times. Screenshots of the board,
the rule page, the site page and the incident go to tests/output/ for a person
to look at.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest
import yaml

from gateway import protocol as p
from gateway.demo import SITE, demo_rules, demo_site
from gateway.localservices import Influxd, Mosquitto, free_port, stop_groups

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "console"))
from consolehelpers import week_lines
from webhooks import Hook

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "output"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync",
]  # fmt: skip
PASSWORD = "e2e-operator-pw"


def _spawn(
    args: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", *args],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )


async def _wait_http(
    url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"console exited: {log.read_text()[-2000:]}")
        try:
            await asyncio.to_thread(urllib.request.urlopen, url, None, 1)
            return
        except OSError:
            await asyncio.sleep(0.2)
    raise AssertionError(f"console did not answer on {url}: {log.read_text()[-2000:]}")


@pytest.fixture
async def stack(tmp_path: Path, hook: Hook) -> AsyncIterator[dict[str, object]]:
    if shutil.which("chromium") is None and not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (Makefile DEBS)")
    from drivers.sim.site import FakeSite

    mq = Mosquitto(tmp_path / "mosquitto")
    influx = Influxd(tmp_path / "influxdb")
    site = FakeSite(seed=7, cannons=2)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        mq.start()
        influx.start()
        influx.create_database("dustgate")
        # last week at the site, as the sink stored it (ends before the live data starts)
        influx.write("dustgate", week_lines(SITE, "station", time.time() - 600))
        endpoints = await site.start()
        rules_yaml = tmp_path / "rules.yaml"
        rules_yaml.write_text(
            "# demo rules, edited by the console test\n"
            + yaml.safe_dump(
                demo_rules(mq.port, influx.url, tmp_path / "rules-state"), sort_keys=False
            )
        )
        site_yaml = tmp_path / "site.yaml"
        site_yaml.write_text(
            yaml.safe_dump(
                demo_site(mq.port, endpoints.agent_config(), tmp_path / "outbox.db"),
                sort_keys=False,
            )
        )
        port = free_port()
        console_yaml = tmp_path / "console.yaml"
        console_yaml.write_text(
            f"console: {{listen: 127.0.0.1, port: {port}, stale_after: 30s}}\n"
            f"mqtt: {{host: 127.0.0.1, port: {mq.port}}}\n"
            f"influx: {{url: '{influx.url}', database: dustgate}}\n"
            "rules_file: rules.yaml\nstore: console.db\n"
            "incidents:\n"
            f"  notifiers: {{hook: {{type: webhook, url: '{hook.url}'}}}}\n"
            f"  sites: {{{SITE}: {{contacts: [{{name: Li Wei, role: site manager, notify: hook}}]}}}}\n"
        )
        env = {**os.environ, "DUSTGATE_CONSOLE_PASSWORD": PASSWORD}
        added = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "console", "adduser", "--config", str(console_yaml), "otto", "--role", "operator"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        added = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "console", "adduser", "--config", str(console_yaml), "ines", "--role", "inspector"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        procs.append(_spawn(["agent", "--config", str(site_yaml)], tmp_path / "agent.log"))
        procs.append(_spawn(["rules", "--config", str(rules_yaml)], tmp_path / "rules.log"))
        console_log = tmp_path / "console.log"
        procs.append(_spawn(["console", "--config", str(console_yaml)], console_log))
        url = f"http://127.0.0.1:{port}"
        await _wait_http(url + "/login", procs[-1], console_log)
        yield {
            "url": url,
            "site": site,
            "mq": mq,
            "rules": rules_yaml,
            "tmp": tmp_path,
            "influx": influx,
        }
    finally:
        stop_groups(procs)
        await site.stop()
        influx.stop()
        mq.stop()


async def test_operator_lowers_a_threshold_and_sees_the_spray(
    stack: dict[str, object], hook: Hook
) -> None:
    from playwright.async_api import async_playwright

    url = str(stack["url"])
    mq = stack["mq"]
    assert isinstance(mq, Mosquitto)
    OUT.mkdir(parents=True, exist_ok=True)
    cannon_on_at: dict[str, float] = {}

    async def watch_states() -> None:
        async with aiomqtt.Client("127.0.0.1", mq.port) as client:
            await client.subscribe(p.subscription("state", SITE), qos=1)
            async for m in client.messages:
                st = p.decode(p.ActuatorState, bytes(m.payload))  # type: ignore[arg-type]
                if st.state == "on":
                    cannon_on_at.setdefault(str(m.topic).split("/")[-2], time.monotonic())

    rule_on_at: list[float] = []

    async def watch_events() -> None:
        async with aiomqtt.Client("127.0.0.1", mq.port) as client:
            await client.subscribe(p.subscription("events", SITE), qos=1)
            async for m in client.messages:
                if p.decode(p.Event, bytes(m.payload)).kind == "on":  # type: ignore[arg-type]
                    rule_on_at.append(time.monotonic())

    watcher = asyncio.create_task(watch_states())
    events_watcher = asyncio.create_task(watch_events())
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await page.goto(url + "/")
            assert page.url.endswith("/login?next=/")
            await page.fill("input[name=username]", "otto")
            await page.fill("input[name=password]", PASSWORD)
            await page.click("button[type=submit]")
            await page.wait_for_url(url + "/")
            # the site appears with its gateway online (retained status) and is not spraying
            card = f"#site-{SITE}"
            await page.wait_for_selector(f"{card} >> text=gateway online", timeout=20_000)
            assert await page.get_attribute(card, "data-state") in (
                "ok",
                "stale",
                "pending",
                "over",
            )
            await page.wait_for_selector(f"{card} li[data-actuator=cannon-1]", timeout=20_000)
            await page.screenshot(path=str(OUT / "console-board-before.png"), full_page=True)

            # lower the threshold: the preview over last week shows more triggers
            await page.goto(url + "/rules/pm10-gate")
            assert (
                await page.input_value("#f-threshold") == "150.0"
                or await page.input_value("#f-threshold") == "150"
            )
            await page.fill("#f-threshold", "120")
            await page.click("#preview-btn")
            await page.wait_for_selector("#preview", timeout=60_000)
            before = int(await page.inner_text("tr.before td.triggers"))
            after = int(await page.inner_text("tr.after td.triggers"))
            assert after > before >= 1, (before, after)
            await page.screenshot(path=str(OUT / "console-rule-preview.png"), full_page=True)

            # save: the engine reloads and its event shows on the page
            await page.click("#save-btn")
            await page.wait_for_selector("#saved", timeout=10_000)
            await page.wait_for_selector(
                "#reloads li.kind-reload >> text=rules reloaded", timeout=20_000
            )
            text = Path(str(stack["rules"])).read_text()
            assert "above: 120" in text and text.startswith("# demo rules")

            # a dust spike: the site turns red, the cannons show ON with their lease
            await page.goto(url + "/")
            site = stack["site"]
            site.trigger_event(hold_s=40.0, peak_pm10=320.0)  # type: ignore[attr-defined]
            t_spike = time.monotonic()
            await page.wait_for_selector(f"{card}[data-state=spraying]", timeout=90_000)
            t_page = time.monotonic()
            assert cannon_on_at, "the page says spraying before any cannon said so"
            lag = t_page - min(cannon_on_at.values())
            assert lag < 5.0, f"the page showed the spray {lag:.1f}s after the cannon's state"
            on = page.locator(f"{card} li.on")
            assert await on.count() >= 1
            first = await on.first.inner_text()
            assert "ON" in first and "lease" in first, first
            await page.wait_for_selector("#counts .st-spraying", timeout=5_000)
            await page.screenshot(path=str(OUT / "console-board-spraying.png"), full_page=True)
            # the spike opened an incident: on the card within 5 s of the rule going on
            await page.wait_for_selector(f"{card} a.badge.incident", timeout=10_000)
            t_badge = time.monotonic()
            assert rule_on_at, "an incident without the rule going on"
            incident_lag = t_badge - rule_on_at[0]
            assert incident_lag < 5.0, f"incident shown {incident_lag:.1f}s after the rule went on"
            await page.goto(url + f"/site/{SITE}?hours=1")
            await page.wait_for_selector("svg.chart", timeout=10_000)
            await page.wait_for_selector("#events li", timeout=10_000)
            await page.screenshot(path=str(OUT / "console-site.png"), full_page=True)

            # the site's contact got the notification with the incident's link
            deadline = time.monotonic() + 10
            while not hook.received and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            (note,) = hook.received
            assert f"{SITE}" in note["text"] and "/incidents/1" in note["text"], note

            # an inspector acknowledges and resolves it; the ranking shows the times
            inspector = await (await browser.new_context()).new_page()
            await inspector.goto(url + "/login")
            await inspector.fill("input[name=username]", "ines")
            await inspector.fill("input[name=password]", PASSWORD)
            await inspector.click("button[type=submit]")
            await inspector.wait_for_url(url + "/")
            await inspector.click(f"{card} a.badge.incident")
            await inspector.click("tr.inc a[href='/incidents/1']")
            await inspector.click("#acknowledge")
            await inspector.wait_for_selector("#incident[data-status=acknowledged]")
            await inspector.fill("#note-text", "<b>water truck</b> sent")
            await inspector.click("#add-note")
            await inspector.wait_for_selector("span.note >> text=<b>water truck</b> sent")
            await inspector.fill("#resolve-text", "road washed, cannons on")
            await inspector.click("#resolve")
            await inspector.wait_for_selector("#incident[data-status=resolved]")
            await inspector.screenshot(path=str(OUT / "console-incident.png"), full_page=True)
            await inspector.goto(url + "/incidents/ranking")
            row = inspector.locator(f"#ranking tr[data-site={SITE}]")
            assert (await row.locator("td").nth(1).inner_text()) == "1"
            assert "min" in await row.locator("td.ack-median").inner_text()
            assert "–" not in await row.locator("td.resolve-median").inner_text()
            await inspector.screenshot(path=str(OUT / "console-ranking.png"), full_page=True)
            # the steps reached InfluxDB (Grafana's annotations and ranking read them)
            influx = stack["influx"]
            assert isinstance(influx, Influxd)
            kinds: set[str] = set()
            deadline = time.monotonic() + 10
            while not {"opened", "acknowledged", "resolved"} <= kinds:
                assert time.monotonic() < deadline, f"incident points in InfluxDB: {kinds}"
                await asyncio.sleep(0.5)
                answer = await asyncio.to_thread(
                    influx.query, 'SELECT "id", "kind" FROM "incident"', "dustgate"
                )
                for series in answer["results"][0].get("series", []):  # type: ignore[index]
                    kinds |= {row[2] for row in series["values"]}
            print(
                f"preview triggers {before} -> {after}; spray shown {t_page - t_spike:.1f}s after the spike, {lag:.2f}s after the cannon's state; incident shown {incident_lag:.2f}s after the rule went on"
            )
        finally:
            await browser.close()
            for task in (watcher, events_watcher):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await task
