"""Device profiles: every shipped profile loads; overrides deep-merge; errors name the field."""

from __future__ import annotations

import pytest

from drivers import modbus_pdu as pdu
from drivers.profiles import ProfileError, deep_merge, profile_names, resolve_profile


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
