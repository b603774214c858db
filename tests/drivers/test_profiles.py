"""Device profiles: every shipped profile loads; overrides deep-merge; errors name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers import modbus_pdu as pdu
from drivers.profiles import (
    DEFAULT_SEARCH,
    PROFILE_DIR,
    ProfileError,
    ProfileSearch,
    deep_merge,
    profile_names,
    resolve_profile,
)
from gateway.cli import main
from gateway.config import ModbusDevice, load_site_config
from gateway.devices import modbus_spec


def test_every_shipped_profile_validates_and_plans() -> None:
    names = profile_names()
    for expected in ("dust-station", "generic-pm", "wind-speed", "wind-direction", "noise"):
        assert expected in names
    assert "relay-8ch" in names
    for name in names:
        profile = resolve_profile(name)
        assert profile.name == name
        assert profile.plan(), name


def test_station_profile_reads_the_documented_block_in_one_request() -> None:
    profile = resolve_profile("dust-station")
    (request,) = profile.plan()
    assert (request.function, request.address) == (3, 0x01F4)
    frame = pdu.build_rtu(profile.slave_id, pdu.read_request(3, request.address, 14))
    assert frame == bytes.fromhex("01 03 01 F4 00 0E 84 00")
    assert profile.field("temp").type == "int16"


def test_vendor_b_is_one_register_higher_with_finer_wind() -> None:
    a, b = resolve_profile("dust-station"), resolve_profile("dust-station-b")
    for f in a.fields:
        assert b.field(f.name).address == f.address + 1
    assert b.field("wind_speed").scale == 0.01
    assert b.field("temp").type == "int16"  # inherited


def test_generic_pm_sensor_registers() -> None:
    p = resolve_profile("generic-pm")
    assert p.slave_id == 255
    assert [(f.name, f.address) for f in p.fields] == [
        ("pm25", 7),
        ("pm10", 8),
        ("temp", 9),
        ("rh", 10),
    ]


def test_site_overrides_any_field() -> None:
    p = resolve_profile(
        "dust-station",
        {
            "slave_id": 7,
            "timeout": 2.5,
            "fields": {"pm10": {"address": 0x0300, "scale": 0.1}, "pressure": None},
            "serial": {"baudrate": 4800},
        },
    )
    assert p.slave_id == 7
    assert p.timeout == 2.5
    assert p.serial.baudrate == 4800
    assert p.serial.parity == "N"
    pm10 = p.field("pm10")
    assert (pm10.address, pm10.scale, pm10.unit) == (0x0300, 0.1, "ug/m3")
    with pytest.raises(KeyError):
        p.field("pressure")
    # the shipped profile itself is untouched
    assert resolve_profile("dust-station").field("pm10").address == 0x01FC


def test_relay_profile_overrides() -> None:
    p = resolve_profile("relay-8ch", {"relay": {"coil_base": 1, "write_function": 15}})
    assert p.relay is not None
    assert (p.relay.coil_base, p.relay.write_function, p.relay.flash_base) == (1, 15, 0x0200)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"fields": {"pm10": {"type": "int99"}}}, "fields.pm10.type"),
        ({"fields": {"pm10": {"colour": "red"}}}, "fields.pm10.colour"),
        ({"slave_id": 300}, "slave_id"),
        ({"fields": {"pm10": {"table": "coil"}}}, "bool"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_overrides_name_the_profile_and_field(overrides: dict, message: str) -> None:
    with pytest.raises(ProfileError) as info:
        resolve_profile("dust-station", overrides)
    text = str(info.value)
    assert "dust-station" in text
    assert message in text


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(ProfileError, match="relay-8ch"):
        resolve_profile("no-such-sensor")
    with pytest.raises(ProfileError):
        resolve_profile("../etc/passwd")


def test_deep_merge_semantics() -> None:
    base = {"a": {"b": 1, "c": 2}, "d": [1, 2], "e": 3}
    assert deep_merge(base, {"a": {"c": 5}, "d": [9], "e": None}) == {
        "a": {"b": 1, "c": 5},
        "d": [9],
    }
    assert base == {"a": {"b": 1, "c": 2}, "d": [1, 2], "e": 3}


# ------------------------------------------------------------ where profiles come from


def _site(tmp_path: Path, devices: str, extra: str = "") -> Path:
    site = tmp_path / "site" / "site.yaml"
    site.parent.mkdir(parents=True, exist_ok=True)
    site.write_text(
        "site: s1\n"
        f"{extra}"
        "buses:\n  - {id: bus1, type: rtu, port: /dev/ttyUSB0}\n"
        f"devices:\n{devices}"
    )
    return site


def test_a_site_profile_in_its_own_folder_wins_over_the_shipped_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    own = tmp_path / "site" / "profiles"
    own.mkdir(parents=True)
    # the same name as a shipped profile, one address changed, the rest inherited
    (own / "dust-station.yaml").write_text(
        "extends: dust-station\nfields:\n  pm10: {address: 0x0200, unit: ug/m3}\n"
    )
    (own / "my-station.yaml").write_text("slave_id: 7\nfields:\n  tsp: {address: 3, scale: 0.1}\n")
    site_file = _site(
        tmp_path,
        "  - {id: gate, bus: bus1, profile: dust-station}\n"
        "  - {id: north, bus: bus1, profile: my-station}\n"
        "  - {id: south, bus: bus1, profile: profiles/my-station.yaml, slave_id: 8}\n"
        f"  - {{id: east, bus: bus1, profile: {own / 'my-station.yaml'}, slave_id: 9}}\n",
        extra="profile_paths: [profiles]\n",
    )
    site = load_site_config(site_file)
    search = site.profile_search()
    gate = resolve_profile("dust-station", None, search)
    assert gate.field("pm10").address == 0x0200  # the site's
    assert gate.field("pm25").address == 0x01FB  # inherited from the shipped one
    assert resolve_profile("dust-station").field("pm10").address == 0x01FC  # shipped unchanged
    specs = {d.id: modbus_spec(d, search) for d in site.devices if isinstance(d, ModbusDevice)}
    assert specs["north"].slave_id == 7 and specs["north"].field("tsp").scale == 0.1
    assert specs["south"].slave_id == 8 and specs["south"].name == "my-station"
    assert specs["east"].slave_id == 9 and specs["east"].field("tsp").address == 3
    # dustgate check says where each came from
    assert main(["check", str(site_file)]) == 0
    out = capsys.readouterr().out
    assert f"gate: profile dust-station from {own / 'dust-station.yaml'}" in out
    assert f"north: profile my-station from {own / 'my-station.yaml'}" in out
    assert f"south: profile profiles/my-station.yaml from {own / 'my-station.yaml'}" in out


def test_the_default_search_puts_etc_ahead_of_the_package() -> None:
    dirs = ProfileSearch.for_site([Path("own")], Path("/srv/site")).dirs
    assert dirs == (Path("/srv/site/own"), Path("/etc/dustgate/profiles"), PROFILE_DIR)
    assert DEFAULT_SEARCH.dirs == (Path("/etc/dustgate/profiles"), PROFILE_DIR)


def test_profile_mistakes_are_reported_at_the_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    own = tmp_path / "site" / "profiles"
    own.mkdir(parents=True)
    (own / "loop-a.yaml").write_text("extends: loop-b\n")
    (own / "loop-b.yaml").write_text("extends: loop-a\n")
    (own / "bad.yaml").write_text("slave_id: 1\nfields: {pm10: {address: -1}}\n")
    site_file = _site(
        tmp_path,
        "  - {id: a, bus: bus1, profile: profiles/missing.yaml}\n"
        "  - {id: b, bus: bus1, profile: loop-a}\n"
        "  - {id: c, bus: bus1, profile: bad}\n"
        "  - {id: d, bus: bus1, profile: ../../etc/passwd}\n",
        extra="profile_paths: [profiles]\n",
    )
    assert main(["check", str(site_file)]) == 1
    err = capsys.readouterr().err
    lines = {line.split(": ", 1)[0]: line for line in err.splitlines()}
    assert "not found" in lines[f"{site_file}:6:33"]
    assert "extends itself" in lines[f"{site_file}:7:33"]
    assert f"{own / 'bad.yaml'}" in lines[f"{site_file}:8:33"]
    assert "fields.pm10.address" in lines[f"{site_file}:8:33"]
    assert "unknown profile '../../etc/passwd'" in lines[f"{site_file}:9:33"]


def test_a_site_profile_is_read_by_the_safe_loader(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    own = tmp_path / "site" / "profiles"
    own.mkdir(parents=True)
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    (own / "laughs.yaml").write_text(laughs)
    (own / "tagged.yaml").write_text("slave_id: !!python/object:os.system 1\n")
    site_file = _site(
        tmp_path,
        "  - {id: a, bus: bus1, profile: laughs}\n  - {id: b, bus: bus1, profile: tagged}\n",
        extra="profile_paths: [profiles]\n",
    )
    assert main(["check", str(site_file)]) == 1
    err = capsys.readouterr().err
    lines = {line.split(": ", 1)[0]: line for line in err.splitlines()}
    assert f"{own / 'laughs.yaml'}:" in lines[f"{site_file}:6:33"]
    assert "alias" in lines[f"{site_file}:6:33"]
    assert f"{own / 'tagged.yaml'}:1:" in lines[f"{site_file}:7:33"]
