-- SPC alerts (Alert) raised by the monitor: SPIKE and RECOVERY. camera_id / defect_class are ''
-- for "the whole line" / "any class" (the Avro null). limit_value is the Avro `limit`.
CREATE TABLE IF NOT EXISTS alerts
(
    alert_id String,
    schema_version UInt16,
    kind String,
    line_id String,
    camera_id String,
    defect_class String,
    metric String,
    rate Float64,
    center Float64,
    limit_value Float64,
    rule String,
    inspected UInt64,
    defective UInt64,
    window_start UInt64,
    window_end UInt64,
    created_at UInt64,
    message String,
    model_version String,
    run_id String,
    event_time DateTime DEFAULT toDateTime(intDiv(created_at, 1000)),
    ingested_at UInt64,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(event_time)
ORDER BY (run_id, line_id, camera_id, alert_id)
SETTINGS index_granularity = 8192;
