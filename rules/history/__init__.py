"""Rules over history: ``dustgate replay`` (its input sources and read-ahead
process) and ``dustgate report`` (the weekly ranking read from InfluxDB)."""
