"""A relay output (fog cannon, spray valve) on a Modbus relay board, written and read back.

Board styles, all set by :class:`drivers.profiles.RelaySpec`:

- coil mode: FC05 ``addr FF00/0000`` (or FC15 with one coil for boards that reject FC05) to
  coil ``coil_base + channel``; read back with FC01;
- register mode: FC06 ``on_value``/0 to holding register ``register_base + channel``; read
  back with FC03 (on = the register equals ``on_value``);
- hardware off-timer ("flash", Waveshare): FC05 or FC06 to ``flash_base + channel`` with the
  time in 100 ms units switches the relay on and makes the board itself switch it off when the
  time runs out, so the spray stops even if the agent dies.

:meth:`RelayOutput.switch` returns the read-back state and raises :class:`RelayMismatch` when it
differs from what was written. Channels count from 0.
"""

from __future__ import annotations

import math

from drivers import modbus_pdu as pdu
from drivers.errors import DriverError, RelayMismatch
from drivers.modbus_client import ModbusClient
from drivers.profiles import Profile, ProfileError, RelaySpec

MAX_FLASH_S = 0xFFFF / 10.0


class RelayOutput:
    """Channel ``channel`` of the relay board ``unit`` reached through ``client``."""

    def __init__(
        self,
        client: ModbusClient,
        unit: int,
        channel: int,
        spec: RelaySpec,
        *,
        timeout: float = 1.0,
        retries: int = 1,
        pause_after_connect: float = 0.0,
    ) -> None:
        if not 0 <= channel < spec.channels:
            raise ValueError(f"channel {channel} outside 0..{spec.channels - 1}")
        self.client = client
        self.unit = unit
        self.channel = channel
        self.spec = spec
        self.timeout = timeout
        self.retries = retries
        self.pause_after_connect = pause_after_connect

    @classmethod
    def from_profile(cls, client: ModbusClient, profile: Profile, channel: int) -> RelayOutput:
        """The output ``channel`` of a relay-board profile (its unit id, timeout, retries)."""
        if profile.relay is None:
            raise ProfileError(f"profile {profile.name!r} has no relay section")
        return cls(
            client,
            profile.slave_id,
            channel,
            profile.relay,
            timeout=profile.timeout,
            retries=profile.retries,
            pause_after_connect=profile.pause_after_connect,
        )

    @property
    def has_hardware_timer(self) -> bool:
        return self.spec.flash_base is not None

    async def read(self) -> bool:
        """Current state of the relay as the board reports it."""
        s = self.spec
        if s.mode == "register":
            words = await self.client.read_registers(
                self.unit,
                s.register_base + self.channel,
                1,
                timeout=self.timeout,
                retries=self.retries,
            )
            return words[0] == s.on_value
        bits = await self.client.read_bits(
            self.unit, s.coil_base + self.channel, 1, timeout=self.timeout, retries=self.retries
        )
        return bits[0]

    async def switch(self, on: bool, *, hardware_timer_s: float = 0.0) -> bool:
        """Switch on/off and return the read-back state.

        With ``hardware_timer_s > 0`` (and a board with a flash timer) "on" arms the board's own
        off-timer instead of a plain on; renew it by calling again before it runs out.
        """
        await self.client.settle(self.pause_after_connect)
        if on and hardware_timer_s > 0 and self.has_hardware_timer:
            await self._write_flash(hardware_timer_s)
        else:
            await self._write_plain(on)
        state = await self.read()
        if state != on:
            raise RelayMismatch(on, state)
        return state

    async def _write_plain(self, on: bool) -> None:
        s = self.spec
        if s.mode == "register":
            address = s.register_base + self.channel
            request = pdu.write_single_register_request(address, s.on_value if on else 0)
        elif s.write_function == pdu.WRITE_MULTIPLE_COILS:
            request = pdu.write_multiple_coils_request(s.coil_base + self.channel, [on])
        else:
            request = pdu.write_single_coil_request(s.coil_base + self.channel, on)
        await self.client.write(self.unit, request, timeout=self.timeout, retries=self.retries)

    async def _write_flash(self, seconds: float) -> None:
        s = self.spec
        assert s.flash_base is not None
        if not 0 < seconds <= MAX_FLASH_S or math.isnan(seconds):
            raise DriverError(f"hardware timer {seconds}s outside 0.1..{MAX_FLASH_S}s")
        tenths = max(1, round(seconds * 10))
        address = s.flash_base + self.channel
        if s.flash_function == pdu.WRITE_SINGLE_REGISTER:
            request = pdu.write_single_register_request(address, tenths)
        else:  # Waveshare: FC05 with the time instead of FF00, echoed like any FC05
            request = pdu.write_single_coil_value_request(address, tenths)
        await self.client.write(self.unit, request, timeout=self.timeout, retries=self.retries)
