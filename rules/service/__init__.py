"""``dustgate rules``: the rule engine as a long-running MQTT service.

The decisions are made by the pure :class:`rules.core.engine.Engine`; this
package is the imperative shell around it, one module per part:

- :mod:`rules.service.service` -- the service: what a message does (checks,
  sink, engine), overrides, timers, the order of a stop;
- :mod:`rules.service.session` -- the MQTT session and its subscriptions;
- :mod:`rules.service.receive` -- the receive loop and its batching during a
  backlog, and the messages left when a session ends;
- :mod:`rules.service.outbound` -- engine actions to the wire: commands,
  events, notifications, publishing;
- :mod:`rules.service.reload` -- hot reload of the rules file;
- :mod:`rules.service.state` -- the state file a restart resumes from;
- :mod:`rules.service.health` -- the service's counters as points and logs;
- :mod:`rules.service.notify` -- webhook and robot notifications;
- :mod:`rules.service.override` -- manual overrides (``dustgate override``)
  and their wire format;
- :mod:`rules.service.main` -- the command line.
"""
