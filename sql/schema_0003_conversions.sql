-- Migration 3: the conversion journal. It lives in the database it
-- describes, so a step's DDL and the record that it happened commit in one
-- transaction. IF NOT EXISTS: releases before versioned migrations made it
-- ad hoc.
CREATE TABLE IF NOT EXISTS pgsteward.conversions (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_schema text NOT NULL,
    table_name   text NOT NULL,
    -- active | done | aborted
    state        text NOT NULL,
    -- the last step that completed
    step         text NOT NULL,
    plan         jsonb NOT NULL,
    events       jsonb NOT NULL DEFAULT '[]',
    started_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS conversions_one_active
    ON pgsteward.conversions (table_schema, table_name) WHERE state = 'active';
