"""defectstream event contracts: Avro schemas, the codec, ClickHouse migrations."""
