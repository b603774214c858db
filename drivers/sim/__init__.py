"""Simulated devices for tests, the demo and people without hardware.

- ``plume``: pure model of dust at a site gate (events, wind, fog cannons);
- ``units``: simulated Modbus units (any profile becomes one) and the request handler;
- ``relay_board``: a relay board with flash off-timers, coil or register style;
- ``modbus_server``: RTU on a pty, Modbus TCP and RTU-over-TCP responders (with fault
  injection); ``pymodbus_tcp``: the same units behind pymodbus's own TCP server;
- ``uart``: SDS011 / PMS5003 on ptys;
- ``site``: a whole fake site; ``cli``: ``dustgate sim site|modbus|relay``.
"""
