-- Migration 1: capacity samples. The service and the CronJob are stateless,
-- so the history growth is drawn from lives on the primary it describes.
-- One row per measured value: `kind` is a fixed vocabulary of the capacity
-- module (database_bytes, table_bytes, storage_used_bytes, next_xid,
-- next_mxid, sequence_value, connections), `subject` names what was measured
-- ('' when the kind has one subject per cluster).
CREATE TABLE IF NOT EXISTS pgsteward.capacity_samples (
    kind     text        NOT NULL,
    subject  text        NOT NULL,
    taken_at timestamptz NOT NULL,
    value    float8      NOT NULL,
    PRIMARY KEY (kind, subject, taken_at)
);
-- Pruning and the history read select by age.
CREATE INDEX IF NOT EXISTS capacity_samples_taken_at ON pgsteward.capacity_samples (taken_at);
-- Read by the dashboards' and operators' own queries, like the upgrade guard.
GRANT SELECT ON pgsteward.capacity_samples TO PUBLIC;
