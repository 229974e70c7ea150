-- One verdict per inspected part (PartInspected): the denominator of every defect rate.
-- shift_name / shift_start come from the event (the plant calendar applied at ingest);
-- shift_date is the plant-local date the shift starts on (a night shift belongs to its start day).
CREATE TABLE IF NOT EXISTS parts
(
    event_id String,
    schema_version UInt16,
    camera_id String,
    line_id String,
    part_id String,
    verdict String,
    defect_classes Array(String),
    defect_class_counts Array(UInt32),
    defects_total UInt32,
    frames UInt32,
    first_frame_ts UInt64,
    last_frame_ts UInt64,
    closed_reason String,
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
ORDER BY (run_id, line_id, shift_start, camera_id, event_id)
SETTINGS index_granularity = 8192;
