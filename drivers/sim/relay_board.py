"""Simulated relay board (Waveshare / LCTech style) driving fog cannons.

- ``channels`` relays as coils ``coil_base .. coil_base+channels-1`` (FC01/05/15);
- optional register mode: holding registers at ``register_base + ch`` where writing
  ``on_value`` (e.g. 0x0100) switches on and 0 switches off (FC03/06/16);
- optional flash timers: FC05 (Waveshare "flash on", value in 100 ms units) or FC06 to
  ``flash_base + ch`` switches the relay on and the board itself switches it off after
  ``value x 100 ms`` - the hardware fail-safe a driver may arm;
- ``reject_fc05`` imitates boards that only take FC15.

Flash expiry is evaluated lazily against the clock passed in, so the unit needs no task of its
own: every read, write or :meth:`active_count` call first expires what is due.
"""

from __future__ import annotations

from drivers.profiles import Profile
from drivers.sim.units import (
    ILLEGAL_ADDRESS,
    ILLEGAL_FUNCTION,
    ILLEGAL_VALUE,
    SimException,
    SimUnit,
)


class RelayBoardUnit(SimUnit):
    def __init__(
        self,
        unit_id: int = 1,
        *,
        channels: int = 8,
        coil_base: int = 0,
        register_base: int | None = None,
        on_value: int = 1,
        flash_base: int | None = 0x0200,
        reject_fc05: bool = False,
    ) -> None:
        super().__init__(unit_id)
        self.channels = channels
        self.coil_base = coil_base
        self.register_base = register_base
        self.on_value = on_value
        self.flash_base = flash_base
        self.reject_fc05 = reject_fc05
        self.flash_deadline: dict[int, float] = {}
        self.switch_count = 0
        for ch in range(channels):
            self.tables["coil"][coil_base + ch] = 0
            if register_base is not None:
                self.tables["holding"][register_base + ch] = 0
            if flash_base is not None:
                self.tables["holding"][flash_base + ch] = 0

    @classmethod
    def from_profile(cls, profile: Profile) -> RelayBoardUnit:
        """The board a relay profile (``relay:`` section) describes."""
        r = profile.relay
        if r is None:
            raise ValueError(f"profile {profile.name!r} is not a relay board")
        return cls(
            profile.slave_id,
            channels=r.channels,
            coil_base=r.coil_base,
            register_base=r.register_base if r.mode == "register" else None,
            on_value=r.on_value,
            flash_base=r.flash_base,
            reject_fc05=False,
        )

    # ------------------------------------------------------------ state

    def is_on(self, channel: int, now: float) -> bool:
        self.refresh(now)
        return bool(self.tables["coil"][self.coil_base + channel])

    def active_count(self, now: float) -> int:
        """Relays on at ``now`` (the plume's active cannons)."""
        self.refresh(now)
        return sum(self.tables["coil"][self.coil_base + ch] for ch in range(self.channels))

    def _set(self, channel: int, on: bool) -> None:
        if bool(self.tables["coil"][self.coil_base + channel]) != on:
            self.switch_count += 1
        self.tables["coil"][self.coil_base + channel] = int(on)
        if self.register_base is not None:
            self.tables["holding"][self.register_base + channel] = self.on_value if on else 0
        self.flash_deadline.pop(channel, None)

    def _flash(self, channel: int, tenths: int, now: float) -> None:
        self._set(channel, tenths > 0)
        if tenths > 0:
            self.flash_deadline[channel] = now + tenths / 10.0

    def refresh(self, now: float) -> None:
        for channel, deadline in list(self.flash_deadline.items()):
            if now >= deadline:
                self._set(channel, False)

    # ------------------------------------------------------------ Modbus side

    def _channel(self, base: int | None, address: int) -> int | None:
        if base is not None and base <= address < base + self.channels:
            return address - base
        return None

    def write(self, table: str, address: int, values: list[int], now: float) -> None:
        self.refresh(now)
        if table == "coil":
            coils = self.tables["coil"]
            if any(a not in coils for a in range(address, address + len(values))):
                raise SimException(ILLEGAL_ADDRESS)
            for i, value in enumerate(values):
                self._set(address + i - self.coil_base, bool(value))
            return
        for i, value in enumerate(values):
            a = address + i
            if (ch := self._channel(self.flash_base, a)) is not None:
                self._flash(ch, value, now)
            elif (ch := self._channel(self.register_base, a)) is not None:
                if value not in (0, self.on_value):
                    raise SimException(ILLEGAL_VALUE)
                self._set(ch, value == self.on_value)
            else:
                super().write(table, a, [value], now)  # raises illegal address

    def write_single_coil_raw(self, address: int, raw: int, now: float) -> None:
        if self.reject_fc05:
            raise SimException(ILLEGAL_FUNCTION)
        self.refresh(now)
        if (ch := self._channel(self.flash_base, address)) is not None:
            self._flash(ch, raw, now)
            return
        super().write_single_coil_raw(address, raw, now)

    def describe(self) -> str:
        modes = [f"coils {self.coil_base}..{self.coil_base + self.channels - 1}"]
        if self.register_base is not None:
            modes.append(f"registers {self.register_base:#06x}+ch on={self.on_value:#06x}")
        if self.flash_base is not None:
            modes.append(f"flash {self.flash_base:#06x}+ch x100ms")
        return f"relay board unit {self.unit_id}: " + ", ".join(modes)
