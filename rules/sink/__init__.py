"""The InfluxDB sink: wire messages to points, line protocol, the batching
writer with its disk spool and dead letters, and the connection settings."""
