"""Typed errors raised by every driver in ``drivers/``.

All of them subclass :class:`DriverError` so that a caller (the bus scheduler) can catch one
type, count the failure by class name and carry on. Nothing else may escape a driver call.
"""

from __future__ import annotations

from typing import ClassVar


class DriverError(Exception):
    """Base of every error a driver raises."""


class FrameError(DriverError):
    """A reply or stream frame is malformed (bad length, header, checksum, garbage)."""


class DeviceTimeout(DriverError):
    """The device did not answer (completely) within the request timeout."""


class LinkDown(DriverError):
    """The link (serial port, TCP connection) is not open or broke during the request."""


class CrcError(FrameError):
    """An RTU frame's CRC-16/MODBUS does not match its content."""


class WrongSlave(FrameError):
    """A reply came from another unit id than the one addressed."""

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"reply from unit {got}, expected unit {expected}")
        self.expected = expected
        self.got = got


class ModbusExceptionResponse(DriverError):
    """The device answered with a Modbus exception (function code | 0x80)."""

    NAMES: ClassVar[dict[int, str]] = {
        1: "illegal function",
        2: "illegal data address",
        3: "illegal data value",
        4: "server device failure",
        5: "acknowledge",
        6: "server device busy",
        8: "memory parity error",
        10: "gateway path unavailable",
        11: "gateway target device failed to respond",
    }

    def __init__(self, code: int, function_code: int = 0) -> None:
        name = self.NAMES.get(code, "unknown")
        super().__init__(f"modbus exception {code} ({name}) for function {function_code}")
        self.code = code
        self.function_code = function_code


class RelayMismatch(DriverError):
    """A relay's read-back state differs from the state just written."""

    def __init__(self, wanted: bool, got: bool) -> None:
        super().__init__(f"relay readback {got}, wanted {wanted}")
        self.wanted = wanted
        self.got = got


class EncodeError(DriverError, ValueError):
    """A value does not fit the register type it is to be written as."""
