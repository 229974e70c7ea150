-- Which (run_id, model_version) pairs produced rows: `production` and replay runs. The sink adds a
-- row when it first sees a pair; replay tooling may add rows with a note. Several rows per pair are
-- fine: read it with min(first_event_ts) / max(last_event_ts) GROUP BY run_id, model_version.
CREATE TABLE IF NOT EXISTS model_runs
(
    run_id String,
    model_version String,
    kind String,
    first_event_ts UInt64,
    last_event_ts UInt64,
    note String,
    recorded_at UInt64,
    event_time DateTime DEFAULT toDateTime(intDiv(recorded_at, 1000)),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(event_time)
ORDER BY (run_id, model_version, recorded_at)
SETTINGS index_granularity = 8192;
