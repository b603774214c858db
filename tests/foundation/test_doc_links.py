"""Every link in the user-facing Markdown resolves inside the repository.

A user has the repository and nothing else: README.md, docs/*.md and the deploy READMEs
may link to files and folders in it (relative paths, optionally with a ``#heading``), and to
web pages (``http(s)``, not fetched here). A link climbing out of the repository (``../``
past its root), an absolute file path, another scheme (``file:``), a missing file or a
missing heading fails. Markdown links are inline (``[text](path)``, images too) and
reference-style (``[text][label]`` with ``[label]: path``); code blocks and code spans are
not links. A reader takes a code span naming a path as a place to look, though, so one
naming a path above the repository (the old README's ```../shared/DESIGN.md```) fails, and
one naming a path from the repository's root (``drivers/profiles/*.yaml``) must exist: a
glob or a ``<placeholder>`` must match something, and a path a ``.gitignore`` beside it
ignores (a secret or certificate the reader makes) may be missing.
"""

from __future__ import annotations

import re
import shutil
from fnmatch import fnmatch
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^\s)]+)(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^ {0,3}\[([^\]]+)\]:\s*(<[^>]*>|\S+)")
REF_USE = re.compile(r"\[((?:[^\[\]]|\[[^\[\]]*\])+)\]\[([^\]]*)\]")
WEB = ("http://", "https://", "mailto:")
REPO_TOP = ("gateway", "drivers", "rules", "deploy", "docs", "examples", "tests")
"""The repository's top-level folders: a code span starting with one names a repository path."""


def user_docs(root: Path) -> list[Path]:
    """README.md, docs/*.md and every README.md under deploy/."""
    docs = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    return [d for d in docs if d.is_file()] + sorted((root / "deploy").rglob("README.md"))


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out: list[tuple[int, str]] = []
    fence: str | None = None
    for n, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)[0] * 3
        elif fence is not None and line.lstrip().startswith(fence):
            fence = None
        elif fence is None:
            out.append((n, line))
    return out


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"`|\*\*|__", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose_lines(doc.read_text()):
        m = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = _slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(text: str) -> list[tuple[int, str]]:
    """(line, target) of every Markdown link in ``text`` (inline, images, reference-style)."""
    lines = _prose_lines(text)
    defs: dict[str, tuple[int, str]] = {}
    found: list[tuple[int, str]] = []
    for n, line in lines:
        m = REF_DEF.match(line)
        if m:
            defs[m.group(1).strip().lower()] = (n, m.group(2).strip("<>"))
    for n, line in lines:
        if REF_DEF.match(line):
            continue
        prose = CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)
        found += [(n, m.group(1).strip("<>")) for m in INLINE.finditer(prose)]
        for m in REF_USE.finditer(prose):
            label = (m.group(2) or m.group(1)).strip().lower()
            if label in defs:
                found.append(defs[label])
            else:
                found.append((n, f"[undefined reference {label!r}]"))
    return found


def code_paths(text: str) -> list[tuple[int, str]]:
    """(line, path) of code spans that start with ``../`` (a place above the document)."""
    return [
        (n, m.group(2).strip())
        for n, line in _prose_lines(text)
        for m in CODE_SPAN.finditer(line)
        if m.group(2).strip().startswith("../")
    ]


def repo_paths(text: str) -> list[tuple[int, str]]:
    """(line, path) of code spans naming a path from the repository's root."""
    return [
        (n, span)
        for n, line in _prose_lines(text)
        for m in CODE_SPAN.finditer(line)
        if (span := m.group(2).strip()).split("/")[0] in REPO_TOP
        and "/" in span
        and not re.search(r"\s", span)
    ]


def made_by_the_reader(root: Path, path: Path) -> bool:
    """Ignored by a ``.gitignore`` in its folder or above (a password file, certificates)."""
    for folder in [path.parent, *path.parent.parents]:
        if not folder.is_relative_to(root):
            break
        ignore = folder / ".gitignore"
        if ignore.is_file():
            rel = path.relative_to(folder).as_posix()
            for pattern in ignore.read_text().splitlines():
                pat = pattern.strip().rstrip("/")
                if pat and not pat.startswith(("#", "!")) and fnmatch(rel.split("/")[0], pat):
                    return True
    return False


def problems(root: Path, doc: Path, text: str | None = None) -> list[str]:
    """What is wrong with the links of ``doc`` (or of ``text`` put in its place), one
    ``file:line: target: why`` per link."""
    text = doc.read_text() if text is None else text
    root = root.resolve()
    where = doc.relative_to(root)
    out: list[str] = []

    def resolve(target: str) -> Path | str:
        path = (doc.parent / unquote(target)).resolve()
        if not path.is_relative_to(root):
            return "outside the repository"
        if not path.exists():
            return "no such file in the repository"
        return path

    for n, target in links(text):
        if target.startswith("[undefined reference"):
            out.append(f"{where}:{n}: {target}")
            continue
        if target.startswith(WEB):
            continue
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("/", "\\", "~")):
            out.append(f"{where}:{n}: {target}: not a path inside the repository")
            continue
        path_part, _, anchor = target.partition("#")
        dest: Path | str = doc if not path_part else resolve(path_part)
        if isinstance(dest, str):
            out.append(f"{where}:{n}: {target}: {dest}")
        elif anchor and dest.suffix == ".md" and anchor.lower() not in anchors(dest):
            out.append(f"{where}:{n}: {target}: no heading #{anchor} in {dest.relative_to(root)}")
    for n, target in code_paths(text):
        dest = resolve(target.split()[0])
        if dest == "outside the repository":
            out.append(f"{where}:{n}: {target}: {dest}")
    for n, span in repo_paths(text):
        pattern = re.sub(r"<[^>]*>", "*", span.split(":")[0]).rstrip("/")
        if any(c in pattern for c in "*?["):
            if not any(root.glob(pattern)):
                out.append(f"{where}:{n}: {span}: matches nothing in the repository")
        elif not (root / pattern).exists() and not made_by_the_reader(root, root / pattern):
            out.append(f"{where}:{n}: {span}: no such file in the repository")
    return out


def test_user_docs_link_only_inside_the_repository() -> None:
    docs = user_docs(ROOT)
    assert ROOT / "README.md" in docs and ROOT / "docs" / "DESIGN.md" in docs
    assert ROOT / "deploy" / "pi" / "README.md" in docs
    found = [msg for d in docs for msg in problems(ROOT, d)]
    assert found == [], "\n".join(found)
    assert sum(len(links(d.read_text())) for d in docs) >= 10  # the check checks something


def test_readme_points_to_the_design_in_the_repository() -> None:
    targets = [t for _, t in links((ROOT / "README.md").read_text())]
    assert "docs/DESIGN.md" in targets
    assert not any("shared" in t for t in targets)


OLD_NEXT = """## Where to go next

- `deploy/pi/README.md` — install on a Raspberry Pi at the gate
  (`deploy/pi/install.sh`, systemd units in `deploy/systemd/`).
- `deploy/mosquitto/README.md` — per-site broker users, ACL, TLS.
- `deploy/central/README.md` — broker, InfluxDB, Grafana and the rule engine
  for a district, with Docker compose.
- `deploy/grafana/` — dashboards: site, district ranking, gateway health.
- `drivers/profiles/` — add a device: copy a profile, change addresses and scales.
- `../shared/DESIGN.md` in the project space — the design these parts follow.
"""
"""The README's last section before it linked docs/DESIGN.md."""


def test_the_old_readme_fails() -> None:
    text = (ROOT / "README.md").read_text()
    old = text[: text.index("## Where to go next")] + OLD_NEXT
    line = old.count("\n")  # the last line
    assert problems(ROOT, ROOT / "README.md", old) == [
        f"README.md:{line}: ../shared/DESIGN.md: outside the repository"
    ]
    # the same place written as a Markdown link fails as well
    assert problems(ROOT, ROOT / "README.md", "[design](../shared/DESIGN.md)\n") == [
        "README.md:1: ../shared/DESIGN.md: outside the repository"
    ]


def _tree(tmp_path: Path, readme: str) -> Path:
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    shutil.copy(ROOT / "docs" / "DESIGN.md", repo / "docs" / "DESIGN.md")
    (repo / "README.md").write_text(readme)
    return repo


@pytest.mark.parametrize(
    ("markdown", "why"),
    [
        ("[x](/etc/dustgate/site.yaml)", "not a path inside the repository"),
        ("[x](file:///work/docs/DESIGN.md)", "not a path inside the repository"),
        ("[x](docs/NOPE.md)", "no such file in the repository"),
        ("[x](docs/../../outside.md)", "outside the repository"),
        ("[x](docs/DESIGN.md#no-such-heading)", "no heading #no-such-heading"),
        ("[x][d]\n\n[d]: ../../DESIGN.md", "outside the repository"),
        ("![img](docs/missing.png)", "no such file in the repository"),
        ("[x][nowhere]", "undefined reference 'nowhere'"),
        ("see `docs/NOPE.md`", "docs/NOPE.md: no such file in the repository"),
        ("see `docs/*.yaml`", "docs/*.yaml: matches nothing in the repository"),
    ],
)
def test_bad_links_are_found(tmp_path: Path, markdown: str, why: str) -> None:
    repo = _tree(tmp_path, markdown + "\n")
    found = problems(repo, repo / "README.md")
    assert len(found) == 1 and why in found[0], found


@pytest.mark.parametrize(
    "markdown",
    [
        "[x](https://example.org/nowhere) and <https://example.org>",
        "[x](docs/DESIGN.md#scale-out) [y](#top) and [z](docs/)",
        "[x][d]\n\n[d]: docs/DESIGN.md",
        "```\n[x](../outside.md)\n```\n`[x](../outside.md)` is code",
        "# Top\n\n[x](<docs/DESIGN.md>)",
        "see `docs/DESIGN.md`, `docs/*.md`, `docs/<name>.md`, `docs/secrets/ca.crt` and "
        "`docs/` (made by you: docs/.gitignore), `/etc/dustgate/site.yaml`, `nothing/x.md`",
    ],
)
def test_good_links_pass(tmp_path: Path, markdown: str) -> None:
    text = markdown if "# Top" in markdown else "# Top\n\n" + markdown
    repo = _tree(tmp_path, text + "\n")
    (repo / "docs" / ".gitignore").write_text("# made on the machine\nsecrets/\n")
    assert problems(repo, repo / "README.md") == []
