"""dustgate edge agent: config, bus scheduler, outbox, MQTT session, actuation.

``gateway.protocol`` is the wire contract shared with the rule engine.
"""

__version__ = "0.1.0"
