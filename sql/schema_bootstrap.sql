-- The schema and its version row, made under the migration lock before any
-- migration runs. IF NOT EXISTS throughout: the schema may already exist,
-- made by an older release (the upgrade guard, the conversion journal).
CREATE SCHEMA IF NOT EXISTS pgsteward;
GRANT USAGE ON SCHEMA pgsteward TO PUBLIC;
CREATE TABLE IF NOT EXISTS pgsteward.schema_version (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    version    int4        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    -- `pgsteward <version>` of the binary that applied the last migration.
    applied_by text        NOT NULL
);
GRANT SELECT ON pgsteward.schema_version TO PUBLIC;
