"""``dustgate check``: validate site.yaml, rules.yaml, console.yaml and incidents.yaml files."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from gateway.configfile import ConfigError, ConfigIssue, load_yaml


def detect_kind(path: Path) -> str:
    """'site', 'rules', 'console' or 'incidents', from the top-level keys (rules files have
    ``rules:``, console files ``console:`` or ``rules_file:``, incident files ``incidents:``
    without ``console:``)."""
    data, _ = load_yaml(path)
    if isinstance(data, dict) and "site" in data:
        return "site"
    if isinstance(data, dict) and "incidents" in data and "console" not in data:
        return "incidents"
    if isinstance(data, dict) and ("console" in data or "rules_file" in data):
        return "console"
    if isinstance(data, dict) and ("rules" in data or "influx" in data):
        return "rules"
    raise ConfigError(
        [
            ConfigIssue(
                str(path),
                1,
                1,
                "",
                "cannot tell the kind of file: a site.yaml has a "
                "top-level 'site:' key, a rules.yaml a 'rules:' key, "
                "a console.yaml a 'console:' key, an incidents.yaml an 'incidents:' key",
            )
        ]
    )


def check_file(path: Path) -> tuple[str, list[ConfigIssue], list[str]]:
    """(kind, problems, notes). Secrets that cannot be resolved on this machine
    (an unset environment variable) are notes: the target machine has them."""
    kind, issues, notes, _ = _check(path)
    return kind, issues, notes


def _check(path: Path) -> tuple[str, list[ConfigIssue], list[str], list[str]]:
    """As :func:`check_file`, plus the lines that say where each device profile came from."""
    notes: list[str] = []
    context = {"lenient_secrets": notes}
    sources: list[str] = []
    try:
        kind = detect_kind(path)
        if kind == "site":
            from gateway.config import load_site_config, profile_sources

            site = load_site_config(path, context=context)
            sources = [
                f"{ident}: profile {ref} from {file}" for ident, ref, file in profile_sources(site)
            ]
            sources += [
                f"{ident}: {metric} calibrated, value = raw x {f.scale:.6g} {f.offset:+.6g}"
                f" ({where})"
                for ident, metric, f, where in site.calibration_sources()
            ]
        elif kind == "console":
            from rules.console.config import load_console_file

            load_console_file(path, context=context)
        elif kind == "incidents":
            from rules.incidents.settings import load_incidents_file

            f = load_incidents_file(path, context=context)
            if f.rules_file is not None:
                from rules.core.config import load_rules_file

                load_rules_file(f.rules_file, context=context)
        else:
            from rules.core.config import load_rules_file

            load_rules_file(path, context=context)
    except ConfigError as exc:
        return "?", exc.issues, notes, []
    return kind, [], notes, sources


def check_files(paths: list[Path], out: TextIO, err: TextIO) -> int:
    bad = 0
    for path in paths:
        kind, issues, notes, sources = _check(path)
        for note in notes:
            print(f"{path}: note: {note} here (needed at run time)", file=err)
        if issues:
            bad += 1
            for issue in issues:
                print(issue, file=err)
            print(f"{path}: {len(issues)} problem(s)", file=err)
        else:
            print(f"{path}: ok ({kind} config)", file=out)
            for line in sources:
                print(f"  {line}", file=out)
            out.flush()
    return 1 if bad else 0


def explain_partitions(paths: list[Path], count: int, out: TextIO, err: TextIO) -> int:
    """Print, for ``--explain-partition N``, which engine K of N owns each rule site
    (the same :func:`rules.core.partition.slot` every engine computes)."""
    from rules.core.config import load_rules_file
    from rules.core.partition import MAX_PARTITIONS, explain, rule_sites

    if not 1 <= count <= MAX_PARTITIONS:
        print(f"--explain-partition: N must be 1..{MAX_PARTITIONS}, got {count}", file=err)
        return 2
    sites: set[str] = set()
    for path in paths:  # check_files has validated them: only the kind is needed
        if detect_kind(path) == "rules":
            sites |= rule_sites(load_rules_file(path, context={"lenient_secrets": []}))
    for k, owned in explain(sites, count).items():
        print(f"partition {k}/{count}: {len(owned)} site(s): {' '.join(owned) or '-'}", file=out)
    return 0
