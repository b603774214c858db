"""What the browser loads ships in the package, and markup from the wire stays text."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

from consolehelpers import make_console
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import protocol as p
from rules.console.web import make_templates

ROOT = Path(__file__).resolve().parents[2]
CONSOLE = ROOT / "rules" / "console"


def test_every_template_and_asset_is_package_data() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    patterns = data["rules.console"]
    files = [
        f for f in CONSOLE.rglob("*") if f.is_file() and f.parent.name in ("templates", "static")
    ]
    assert files
    for f in files:
        rel = f.relative_to(CONSOLE).as_posix()
        assert any(fnmatch.fnmatch(rel, pat) for pat in patterns), rel


def test_pages_load_nothing_from_elsewhere(tmp_path: Path) -> None:
    from consolehelpers import login

    _ctx, client = make_console(tmp_path)
    with client:
        login(client, "ada")
        for path in ("/", "/site/site-01", "/rules", "/rules/pm10-gate", "/users", "/login"):
            page = client.get(path).text
            for url in re.findall(r'(?:src|href)="([^"]+)"', page):
                assert url.startswith(("/", "#")) and not url.startswith("//"), (path, url)
                if url.startswith("/static/"):
                    assert client.get(url).status_code == 200, url
            assert "<script>" not in page  # no inline script (the CSP forbids it too)
        csp = client.get("/").headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(
        alphabet=st.sampled_from("<>&\"'/=abc script img onerror"), min_size=1, max_size=60
    )
)
def test_markup_from_the_wire_is_rendered_as_text(text: str) -> None:
    env = make_templates().env
    event = p.Event(ts=1_800_000_000_000, kind="override", text=text)
    html = env.get_template("_event.html").render(e=event)
    body = re.search(r"</b> (.*)</li>", html, re.S)
    assert body is not None
    assert "<" not in body.group(1) and ">" not in body.group(1)
    assert (
        body.group(1)
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#34;", '"')
        .replace("&#39;", "'")
        .replace("&amp;", "&")
        == text
    )
