"""The site technician's commissioning kit: commands run by hand at the gate, not by the agent.

- ``scan``: ``dustgate scan``, who answers on a Modbus bus, at which line settings, how fast;
- ``probe``: ``dustgate probe``, one live read of one device of a site.yaml, shown beside its
  raw registers and its profile's field table;
- ``calibrate``: ``dustgate calibrate``, a device's calibration factors from co-location with
  a reference monitor, written next to site.yaml with a log of every change.

They talk to devices only through ``drivers.modbus_client.ModbusClient`` (as the agent does)
and never write to a device.
"""
