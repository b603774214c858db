"""Incidents: the district's 30-minute loop from "found" to "fixed" (issue 18).

The rule engine stays the one place where rule decisions are made; incidents
are derived from what it and the gateways publish:

- ``machine``: the pure incident state machine (signals and inspector actions
  in, incidents and effects out; clock injected);
- ``signals``: engine events, gateway status and telemetry -> signals (pure);
- ``store``: the incidents, their history and notifications in SQLite;
- ``dispatch``: notifications to the site's contacts, recorded and retried;
- ``ranking``: the weekly figures per site (pure) and their InfluxQL;
- ``points``: the ``incident`` measurement written to InfluxDB;
- ``settings``: the ``incidents:`` configuration (contacts, per-cause times);
- ``service``: the MQTT + clock shell that runs it all (``dustgate incidents``);
- ``pages``: the console's incident pages, board badges, and the service
  running inside the console (``templates/``).
"""
