"""The outside world: file and stdin sources; Parquet, audit-store and dead-letter sinks."""
