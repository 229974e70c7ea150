-- The review loop (issue 21, ARCHITECTURE decision 12): sampled frames, the review queue, labels.
-- Runs unchanged on ClickHouse 18.16 and current releases (no DateTime64, no Map, no codecs).
--
-- review_frames is the durable store of sampled frames: the camera's bytes, kept after the frames
-- topic's retention dropped the original, until an operator deletes old partitions. One row per
-- frame_id (ReplacingMergeTree; queries de-duplicate with argMax/GROUP BY frame_id). A small
-- index_granularity, because a granule of 8192 images would be read to show one frame.
CREATE TABLE IF NOT EXISTS review_frames
(
    frame_id String,
    schema_version UInt16,
    camera_id String,
    line_id String,
    part_id String,
    frame_seq Int64,
    frame_index Int32,
    capture_ts UInt64,
    encoding String,
    width Int32,
    height Int32,
    channels Int32,
    image String,
    model_version String,
    run_id String,
    det_class Array(String),
    det_confidence Array(Float32),
    det_x0 Array(Int32),
    det_y0 Array(Int32),
    det_x1 Array(Int32),
    det_y1 Array(Int32),
    sampled_at UInt64,
    event_time DateTime DEFAULT toDateTime(intDiv(capture_ts, 1000)),
    ingested_at UInt64,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(event_time)
ORDER BY (frame_id)
SETTINGS index_granularity = 64;
-- One row per candidate (a frame may be queued for several reasons); candidate_id = hash(frame_id, reason).
CREATE TABLE IF NOT EXISTS review_queue
(
    candidate_id String,
    schema_version UInt16,
    frame_id String,
    reason String,
    score Float32,
    camera_id String,
    line_id String,
    part_id String,
    frame_seq Int64,
    capture_ts UInt64,
    model_version String,
    run_id String,
    defect_class String,
    confidence Float32,
    bbox_x0 Int32,
    bbox_y0 Int32,
    bbox_x1 Int32,
    bbox_y1 Int32,
    note String,
    created_at UInt64,
    event_time DateTime DEFAULT toDateTime(intDiv(capture_ts, 1000)),
    ingested_at UInt64,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(event_time)
ORDER BY (camera_id, candidate_id)
SETTINGS index_granularity = 8192;
-- A reviewer's judgement of a frame: action confirm | reject | relabel | missed (a box the model
-- did not find). label_id = hash(frame_id, candidate_id, reviewer, action, class, box, created_at),
-- so a form posted twice is one row; a later judgement of the same frame by anyone is a new row
-- and the latest (created_at) wins when a data set is exported.
CREATE TABLE IF NOT EXISTS labels
(
    label_id String,
    frame_id String,
    candidate_id String,
    camera_id String,
    line_id String,
    part_id String,
    action String,
    defect_class String,
    bbox_x0 Int32,
    bbox_y0 Int32,
    bbox_x1 Int32,
    bbox_y1 Int32,
    model_version String,
    reviewer String,
    created_at UInt64,
    event_time DateTime DEFAULT toDateTime(intDiv(created_at, 1000)),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(event_time)
ORDER BY (frame_id, label_id)
SETTINGS index_granularity = 8192;
