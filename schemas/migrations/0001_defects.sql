-- Confirmed defects (DefectEvent), one row per delivery; queries de-duplicate on event_id.
-- Runs unchanged on ClickHouse 18.16 and current releases: no DateTime64 (epoch ms in UInt64),
-- no Map (parallel arrays), no LowCardinality (experimental in 18.16).
-- ReplacingMergeTree(version) folds duplicate deliveries on merge; every query still
-- de-duplicates with GROUP BY event_id because merges happen whenever they happen.
CREATE TABLE IF NOT EXISTS defects
(
    event_id String,
    schema_version UInt16,
    camera_id String,
    line_id String,
    part_id String,
    track_id Int32,
    defect_class String,
    severity Float32,
    severity_max Float32,
    confidence Float32,
    bbox_x0 Int32,
    bbox_y0 Int32,
    bbox_x1 Int32,
    bbox_y1 Int32,
    best_frame_seq Int64,
    area_px Int32,
    frames_seen Int32,
    frames_total Int32,
    first_frame_ts UInt64,
    last_frame_ts UInt64,
    class_votes_class Array(String),
    class_votes_weight Array(Float32),
    model_version String,
    run_id String,
    shift_name String,
    shift_start UInt64,
    shift_date Date,
    event_time DateTime DEFAULT toDateTime(intDiv(first_frame_ts, 1000)),
    ingested_at UInt64,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(event_time)
ORDER BY (run_id, line_id, shift_start, camera_id, defect_class, event_id)
SETTINGS index_granularity = 8192;
