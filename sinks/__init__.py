"""defectstream sinks: the sink contract and the ClickHouse sink."""
