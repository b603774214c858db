"""Upward reporting: the site's readings sent on to outside platforms.

Each uplink takes the agent's readings as they are made (a cheap synchronous
``on_reading``), keeps what it must send in the outbox database, and runs its
own connection, so a dead platform never slows the bus or the MQTT session.

- :mod:`gateway.uplinks.hj212`: HJ 212 packets (pure codec).
- :mod:`gateway.uplinks.hj212_periods`: minute/hour/day statistics (pure).
- :mod:`gateway.uplinks.hj212_settings`: the ``uplinks:`` entry in site.yaml, dialects.
- :mod:`gateway.uplinks.hj212_station`: what a site says and how it answers (pure).
- :mod:`gateway.uplinks.hj212_store`: backlog and runtime settings on disk.
- :mod:`gateway.uplinks.hj212_link`: the TCP connection per platform.
"""
