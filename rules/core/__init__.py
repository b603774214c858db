"""The rule engine's pure core: the rules model and file, rolling windows, the
per-rule state machine and the engine facade (telemetry and a clock in, actions
out). Nothing here does I/O beyond reading ``rules.yaml``."""
