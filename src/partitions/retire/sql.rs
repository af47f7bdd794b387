//! The retirement table's statements, one named constant each (the table
//! itself is migration 2 of `schema`, `sql/schema_0002_retirements.sql`). DDL that
//! names a partition is built at run time in `retire::steps` (identifiers
//! quoted, the row id an integer).

/// Unfinished retirements of the parent `$1`.`$2`, oldest first (the
/// columns `retire::record::Retirement::from_row` reads). The expected ETag
/// (migration 4) through `to_jsonb`: NULL, not an error, where the schema
/// is older (`status` and `archives` read without migrating).
pub const OPEN_OF_TABLE: &str = "SELECT id, table_schema, table_name, partition_schema, partition_name, \
     range_from, range_to, object_key, state, upload_id, rows, bytes, sha256, attempts, last_error, \
     extract(epoch FROM now() - started_at)::float8, extract(epoch FROM now() - updated_at)::float8, \
     to_jsonb(r) ->> 'etag' \
     FROM pgsteward.retirements r \
     WHERE table_schema = $1 AND table_name = $2 AND state <> 'dropped' ORDER BY id";
/// Every retirement, finished or not (`partitions archives`, `status`).
pub const ALL: &str = "SELECT id, table_schema, table_name, partition_schema, partition_name, \
     range_from, range_to, object_key, state, upload_id, rows, bytes, sha256, attempts, last_error, \
     extract(epoch FROM now() - started_at)::float8, extract(epoch FROM now() - updated_at)::float8, \
     to_jsonb(r) ->> 'etag' \
     FROM pgsteward.retirements r ORDER BY id";
/// Whether the table exists (a database no archive retirement ran in has none).
pub const EXISTS: &str = "SELECT to_regclass('pgsteward.retirements') IS NOT NULL";
/// Parents with an unfinished retirement (`schema`, `name`).
pub const OPEN_TABLES: &str =
    "SELECT DISTINCT table_schema, table_name FROM pgsteward.retirements WHERE state <> 'dropped'";
/// The unfinished retirement of partition `$1`.`$2`, if any.
pub const OPEN_OF_PARTITION: &str = "SELECT id, table_schema, table_name, partition_schema, partition_name, \
     range_from, range_to, object_key, state, upload_id, rows, bytes, sha256, attempts, last_error, \
     extract(epoch FROM now() - started_at)::float8, extract(epoch FROM now() - updated_at)::float8, \
     to_jsonb(r) ->> 'etag' \
     FROM pgsteward.retirements r \
     WHERE partition_schema = $1 AND partition_name = $2 AND state <> 'dropped'";
/// The intent, before any DDL: parent, partition, bounds, object key.
pub const INSERT_DETACHING: &str = "INSERT INTO pgsteward.retirements \
     (table_schema, table_name, partition_schema, partition_name, range_from, range_to, object_key, state) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, 'detaching') RETURNING id";
/// A multipart upload `$2` started for retirement `$1`.
pub const SET_UPLOAD_ID: &str =
    "UPDATE pgsteward.retirements SET upload_id = $2, updated_at = now() WHERE id = $1";
/// Uploaded: rows `$2`, bytes `$3`, sha256 `$4`, the expected ETag `$5`
/// (NULL: verify by reading back).
pub const RECORD_UPLOADED: &str = "UPDATE pgsteward.retirements SET state = 'uploaded', \
     rows = $2, bytes = $3, sha256 = $4, etag = $5, upload_id = NULL, last_error = NULL, \
     updated_at = now() WHERE id = $1 AND state = 'detached'";
pub const RECORD_VERIFIED: &str = "UPDATE pgsteward.retirements SET state = 'verified', \
     last_error = NULL, updated_at = now() WHERE id = $1 AND state = 'uploaded'";
/// Back to `detached` (the archive did not verify: upload it again).
pub const RECORD_REDO_UPLOAD: &str = "UPDATE pgsteward.retirements SET state = 'detached', \
     last_error = $2, attempts = attempts + 1, updated_at = now() WHERE id = $1";
/// Dropped outside the retirement after the archive verified.
pub const RECORD_DROPPED: &str = "UPDATE pgsteward.retirements SET state = 'dropped', \
     last_error = $2, updated_at = now() WHERE id = $1 AND state = 'verified'";
/// A failed attempt: kept with its error; `updated_at` is left alone so a
/// retirement that fails every pass shows as stuck.
pub const RECORD_ERROR: &str = "UPDATE pgsteward.retirements SET last_error = $2, \
     attempts = attempts + 1 WHERE id = $1";
/// What the catalog shows about partition `$1` (regclass text): exists,
/// attached, half-detached.
pub const FACTS: &str = "SELECT c.oid IS NOT NULL, i.inhrelid IS NOT NULL, \
       coalesce((to_jsonb(i) ->> 'inhdetachpending')::bool, false) \
     FROM (SELECT to_regclass($1) AS oid) c LEFT JOIN pg_inherits i ON i.inhrelid = c.oid";
/// How a detach can run on parent `$1`: whether it has a DEFAULT partition
/// (which forbids CONCURRENTLY), and the server version.
pub const DETACH_FACTS: &str = "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table p \
       WHERE p.partrelid = to_regclass($1) AND p.partdefid <> 0), \
     current_setting('server_version_num')::int4";
/// A relation's total size on disk (`$1` regclass text).
pub const TOTAL_SIZE: &str = "SELECT coalesce(pg_total_relation_size(to_regclass($1)), 0)::int8";
pub const SERVER_VERSION: &str = "SELECT current_setting('server_version')";

/// Whether a relation of that name exists (restore never overwrites).
pub const TAKEN: &str = "SELECT to_regclass($1) IS NOT NULL";
