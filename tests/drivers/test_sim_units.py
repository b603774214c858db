"""Simulated units and the TCP responder: request handling, bit fields, pipelining."""

from __future__ import annotations

import asyncio

from drivers import modbus_pdu as pdu
from drivers.modbus import DeviceSpec, FieldSpec
from drivers.sim.modbus_server import TcpServer
from drivers.sim.units import ILLEGAL_FUNCTION, ProfileUnit, SimUnit, handle_request

FLAGS = DeviceSpec(
    slave_id=3,
    fields=[
        FieldSpec(name="level", address=10, type="float32", order="CDAB"),
        FieldSpec(name="pump", address=12, bit=0, type="bool"),
        FieldSpec(name="low_water", address=12, bit=5, type="bool"),
        FieldSpec(name="door", table="discrete", address=4, type="bool"),
    ],
)


def test_profile_unit_encodes_live_values_including_shared_bit_words() -> None:
    values: dict[str, float | bool] = {"level": 2.5, "pump": True, "low_water": True, "door": True}
    unit = ProfileUnit(FLAGS, lambda: values)
    assert unit.read("holding", 12, 1, now=0.0) == [0b10_0001]
    values["pump"] = False
    assert unit.read("holding", 12, 1, now=1.0) == [0b10_0000]
    assert unit.read("discrete", 4, 1, now=1.0) == [1]
    reply = handle_request(unit, pdu.read_request(3, 10, 2), now=1.0)
    assert reply == bytes([3, 4, 0x00, 0x00, 0x40, 0x20])  # 2.5 = 40 20 00 00, word-swapped


def test_unknown_function_and_read_only_sensor() -> None:
    unit = ProfileUnit(FLAGS, dict)
    assert handle_request(unit, bytes([0x2B, 0x0E, 1, 0]), 0.0) == bytes([0xAB, ILLEGAL_FUNCTION])
    reply = handle_request(unit, pdu.write_single_register_request(10, 1), 0.0)
    assert reply == bytes([0x86, 2])


async def test_tcp_responder_answers_pipelined_requests() -> None:
    unit = SimUnit(1)
    unit.tables["holding"].update({0: 11, 1: 22})
    server = TcpServer([unit])
    port = await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        burst = b"".join(pdu.build_mbap(t, 1, pdu.read_request(3, t % 2, 1)) for t in (1, 2, 3))
        writer.write(burst)  # three requests in one packet
        replies = []
        for _ in range(3):
            head = await asyncio.wait_for(reader.readexactly(6), 5)
            length = pdu.mbap_length(head)
            assert length is not None
            replies.append(pdu.parse_mbap(head + await reader.readexactly(length - 6)))
        assert [(t, pdu.decode_read_registers(p, 3, 1)) for t, _u, p in replies] == [
            (1, (22,)),
            (2, (11,)),
            (3, (22,)),
        ]
    finally:
        writer.close()
        await server.stop()
