-- Test fixture: the retirement table exactly as builds before the versioned
-- migrations made it on their own ("migration 0003", now schema migration 2).
-- Kept verbatim (but for this header) so the upgrade path from such an
-- install stays tested.
--
-- One row per partition being retired. `state` moves
--   detaching -> detached -> uploaded -> verified -> dropped
-- and each move is written in the transaction of the DDL that makes it true
-- (detached: the DETACH or, after a concurrent one, the write barrier below;
-- dropped: the DROP). `detaching` is the intent recorded before a
-- `DETACH ... CONCURRENTLY`, which cannot run inside a transaction.
CREATE SCHEMA IF NOT EXISTS pgsteward;
CREATE TABLE IF NOT EXISTS pgsteward.retirements (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_schema     text NOT NULL,
    table_name       text NOT NULL,
    partition_schema text NOT NULL,
    partition_name   text NOT NULL,
    -- the bounds as SQL literals (MINVALUE unquoted), for --attach
    range_from       text NOT NULL,
    range_to         text NOT NULL,
    -- the data object; the manifest is beside it
    object_key       text NOT NULL,
    state            text NOT NULL
        CHECK (state IN ('detaching', 'detached', 'uploaded', 'verified', 'dropped')),
    -- a multipart upload in flight, aborted if the process died under it
    upload_id        text,
    rows             bigint,
    bytes            bigint,
    sha256           text,
    attempts         integer NOT NULL DEFAULT 0,
    last_error       text,
    started_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS retirements_one_open
    ON pgsteward.retirements (partition_schema, partition_name) WHERE state <> 'dropped';
GRANT USAGE ON SCHEMA pgsteward TO PUBLIC;
-- A retiring partition is read-only from the moment it is detached until it
-- is dropped, so the archive holds exactly the rows that are dropped.
CREATE OR REPLACE FUNCTION pgsteward.refuse_write_to_retiring() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'table %.% is being archived and dropped by pgsteward (retention); it is read-only',
        TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'read_only_sql_transaction',
              HINT = 'pgsteward partitions status lists retirements in flight';
END $$;
