"""``dustgate calibrate`` and calibration in site.yaml: what a technician types and reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import load_site_config

SITE = """\
site: s1
buses:
  - {id: bus1, type: rtu, port: /dev/ttyUSB0}
devices:
  - {id: gate, bus: bus1, profile: dust-station}
  - id: sds
    driver: sds011
    port: /dev/ttyUSB1
  - id: pms
    driver: pms5003
    port: /dev/ttyUSB2
    calibration:
      pm25: {scale: 0.8, offset: 1.5, reference: bureau BJ-07}
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(SITE)
    return path


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    got = capsys.readouterr()
    return rc, got.out, got.err


def _log(site: Path) -> list[dict]:
    lines = (site.parent / "calibration-log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_calibrate_writes_the_factors_and_logs_who_when_what(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ("calibrate", "--config", str(site), "--reference", "bureau BJ-07", "--by", "Li Wei")
    rc, out, err = _run(
        capsys, *common, "sds", "pm10", "--pair", "50:42", "--pair", "150:122", "--yes"
    )
    assert rc == 0, err
    assert "sds.pm10 against bureau BJ-07: two-point" in out
    assert "old: none" in out and "new: scale 0.8, offset 2" in out
    site_cfg = load_site_config(site)
    sds = next(d for d in site_cfg.devices if d.id == "sds")
    f = sds.calibration_factors()["pm10"]
    assert f.apply(50) == pytest.approx(42) and f.apply(150) == pytest.approx(122)
    (entry,) = _log(site)
    assert entry["by"] == "Li Wei" and entry["reference"] == "bureau BJ-07"
    assert entry["device"] == "sds" and entry["metric"] == "pm10" and entry["from"] == "published"
    assert entry["old"] is None and entry["new"] == pytest.approx([0.8, 2.0])
    assert entry["pairs"] == [[50, 42], [150, 122]] and entry["method"] == "two-point"
    assert entry["ts"].endswith("Z") and entry["r2"] == 1.0

    # a month later: the sensor drifted; the pairs are what dustgate now publishes
    csv = site.parent / "colocation.csv"
    csv.write_text("device,reference\n40,44\n100,110\n160,176\n")
    rc, out, err = _run(
        capsys, *common, "sds", "pm10", "--csv", str(csv), "--yes", "--note", "drift"
    )
    assert rc == 0, err
    assert "linear" in out and "old: scale 0.8, offset 2" in out
    g = next(d for d in load_site_config(site).devices if d.id == "sds").calibration_factors()[
        "pm10"
    ]
    # published = f(raw); reference = 1.1 * published: the new factors take raw to reference
    for raw in (10.0, 100.0, 700.0):
        assert g.apply(raw) == pytest.approx(1.1 * f.apply(raw))
    second = _log(site)[1]
    assert second["old"] == pytest.approx([0.8, 2.0]) and second["note"] == "drift"
    assert second["new"] == pytest.approx([0.88, 2.2])

    # factors set by hand on a Modbus device; then removed
    rc, _, err = _run(capsys, *common, "gate", "noise", "--scale", "1", "--offset", "-1.5", "-y")
    assert rc == 0, err
    rc, out, _ = _run(capsys, "check", str(site))
    assert rc == 0 and "ok (site config)" in out
    cal_file = site.parent / "calibration.yaml"
    assert f"sds: pm10 calibrated, value = raw x 0.88 +2.2 ({cal_file})" in out
    assert f"gate: noise calibrated, value = raw x 1 -1.5 ({cal_file})" in out
    assert f"pms: pm25 calibrated, value = raw x 0.8 +1.5 ({site})" in out
    rc, _, _ = _run(
        capsys,
        "calibrate",
        "--config",
        str(site),
        "gate",
        "noise",
        "--reset",
        "--by",
        "Li Wei",
        "-y",
    )
    assert rc == 0
    assert "noise" not in (site.parent / "calibration.yaml").read_text()
    assert [e["method"] for e in _log(site)] == ["two-point", "linear", "factors", "reset"]
    rc, out, _ = _run(capsys, "calibrate", "--config", str(site), "--log")
    assert rc == 0 and out.count("sds.pm10") == 2 and "gate.noise" in out and "drift" in out


def test_calibrate_refuses_what_it_cannot_do_well(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ("calibrate", "--config", str(site), "--reference", "ref", "--by", "me")
    # not a tty and no --yes: shown, not written
    rc, out, err = _run(capsys, *common, "sds", "pm10", "--pair", "1:2", "--pair", "3:5")
    assert rc == 1 and "new: scale 1.5" in out and "--yes" in err
    assert not (site.parent / "calibration.yaml").exists()
    # the same device value twice
    rc, _, err = _run(capsys, *common, "sds", "pm10", "--pair", "10:2", "--pair", "10:5", "-y")
    assert rc == 1 and "all the same" in err
    # a metric the device does not have; a device that is not there
    with pytest.raises(SystemExit):
        main([*common, "sds", "pm1", "--pair", "1:2", "--pair", "3:5", "-y"])
    assert "no metric 'pm1' (pm10, pm25)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*common, "nope", "pm10", "--scale", "2", "-y"])
    assert "no device 'nope'" in capsys.readouterr().err
    # calibrated in site.yaml itself: the command does not write a second source
    with pytest.raises(SystemExit):
        main([*common, "pms", "pm25", "--scale", "2", "-y"])
    assert "calibrated in" in capsys.readouterr().err
    # who and against what are required
    with pytest.raises(SystemExit):
        main(["calibrate", "--config", str(site), "sds", "pm10", "--scale", "2", "-y"])
    assert "--reference and --by are required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["calibrate", "--config", str(site), "sds", "pm10", "--reset", "-y"])
    assert "--by are required" in capsys.readouterr().err
    assert not (site.parent / "calibration-log.jsonl").exists()


def test_calibration_mistakes_are_reported_at_their_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(
        SITE
        + "  - id: sds2\n"
        + "    driver: sds011\n"
        + "    port: /dev/ttyUSB3\n"
        + "    overrides: {fields: {pm10: {scale: 0.9}}}\n"
        + "  - id: sds3\n"
        + "    driver: sds011\n"
        + "    port: /dev/ttyUSB4\n"
        + "    calibration:\n"
        + "      pm10: {points: [[10, 12], [10, 30]]}\n"
        + "      pm25: {scale: 0.9, points: [[1, 2], [3, 4]]}\n"
        + "      tsp: {scale: 1.2}\n"
        + "      pm1: {scale: -1}\n"
    )
    rc, _, err = _run(capsys, "check", str(site))
    assert rc == 1
    lines = {line.split(": ", 1)[0]: line for line in err.splitlines()}
    assert "devices[3].overrides: a serial sensor has no register map" in lines[f"{site}:17:16"]
    assert "all the same" in lines[f"{site}:22:13"]
    assert "either points or scale/offset" in lines[f"{site}:23:13"]
    tsp = "'tsp' is not a metric of this device (its metrics: pm10, pm25)"
    assert tsp in lines[f"{site}:24:12"]
    assert "scale must be above 0" in err and f"{site}:25:12" in lines

    # the file written by the command is checked with site.yaml, at its own lines
    site.write_text(SITE)
    cal = tmp_path / "calibration.yaml"
    cal.write_text(
        "devices:\n"
        "  sds: {pm10: {scale: 0}}\n"
        "  pms: {pm25: {scale: 2}}\n"
        "  ghost: {pm10: {scale: 2}}\n"
        "  gate: {pm100: {scale: 2}}\n"
    )
    rc, _, err = _run(capsys, "check", str(site))
    assert rc == 1
    lines = {line.split(": ", 1)[0]: line for line in err.splitlines()}
    assert "scale must be above 0 (got 0)" in lines[f"{cal}:2:15"]
    assert "also calibrated in site.yaml" in lines[f"{cal}:3:15"]
    assert "no device 'ghost' in site.yaml (gate, sds, pms)" in lines[f"{cal}:4:10"]
    assert "'pm100' is not a metric of gate" in lines[f"{cal}:5:17"]
