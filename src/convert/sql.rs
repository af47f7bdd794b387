//! The static queries of a conversion, one named constant each (names say
//! what comes back). The larger ones live in `sql/convert_*.sql`. DDL built at
//! run time (quoted identifiers, values from the catalog) is in `ddl`.

/// One JSON document with everything a conversion needs to know about a
/// table: $1 schema, $2 table, $3 key column; no row when it does not exist.
pub const TABLE_INFO: &str = include_str!("../../sql/convert_table_info.sql");
/// The session holding a table's conversion lock: pid, address, application, since.
pub const LOCK_HOLDER: &str = include_str!("../../sql/convert_lock_holder.sql");

/// Whether this session got the table's conversion lock ($1 namespace, $2 `schema.table`).
pub const LOCK_TAKEN: &str = "SELECT pg_try_advisory_lock($1, hashtext($2))";
/// Settings of a conversion session on top of the partition session's: an
/// empty search_path, so every definition the catalog prints is schema-qualified.
/// On 14+ the server also checks the client is still there every second
/// during a long statement: a killed pgsteward's backend (a concurrent index
/// build, say) ends within a second and releases the conversion lock, so
/// `convert status` does not name an orphan as the driver.
pub const SESSION_SETTINGS: &str =
    "SET search_path = ''; SET application_name = 'pgsteward convert'; \
     SELECT set_config('client_connection_check_interval', '1s', false) \
     WHERE current_setting('server_version_num')::int >= 140000";
/// Which of the names $2 are taken by some relation in schema $1.
pub const RELATIONS_TAKEN: &str =
    "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname = $1 AND c.relname = ANY($2::text[])";
/// Whether the conversion CHECK $2 on table $1 is validated; no row when it is missing.
pub const CHECK_VALIDATED: &str = "SELECT convalidated FROM pg_constraint \
     WHERE conrelid = to_regclass($1) AND conname = $2";
/// Inside the transaction of a statement that blocks no reads or writes
/// (VALIDATE): waiting for its lock queues no traffic, a timeout would waste the scan.
pub const NO_LOCK_TIMEOUT_IN_TX: &str = "SET LOCAL lock_timeout = 0";
/// A sequence's type, start, increment, min, max, cache and cycle ($1 its name).
pub const SEQUENCE_PARAMETERS: &str = "SELECT format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, \
     s.seqmin, s.seqmax, s.seqcache, s.seqcycle FROM pg_sequence s WHERE s.seqrelid = $1::text::regclass";
/// Raises this session's `maintenance_work_mem` to 256MB, never lowering a
/// larger setting: the unique index build sorts in memory when it fits
/// (measured 1.44 s -> 0.97 s for a million rows against the 64MB default).
pub const RAISE_MAINTENANCE_WORK_MEM: &str = "SELECT set_config('maintenance_work_mem', \
     CASE WHEN pg_size_bytes(current_setting('maintenance_work_mem')) < 256 * 1024 * 1024 \
     THEN '256MB' ELSE current_setting('maintenance_work_mem') END, false)";
/// The first partition's bound (NULL when detached) and total size ($1 its quoted name).
pub const PARTITION_BOUND_AND_SIZE: &str = "SELECT pg_get_expr(c.relpartbound, c.oid), \
     pg_total_relation_size(c.oid)::int8 FROM pg_class c WHERE c.oid = to_regclass($1)";

/// Whether the journal table exists.
pub const JOURNAL_EXISTS: &str = "SELECT to_regclass('pgsteward.conversions') IS NOT NULL";
/// The active conversion of table ($1 schema, $2 name), or else its latest one.
pub const JOURNAL_LATEST: &str =
    "SELECT id, state, step, plan::text, events, started_at, updated_at \
     FROM pgsteward.conversions WHERE table_schema = $1 AND table_name = $2 \
     ORDER BY (state = 'active') DESC, id DESC LIMIT 1";
/// A new conversion at step `prepared`, returned as `JOURNAL_LATEST` returns it.
pub const JOURNAL_CREATED: &str =
    "INSERT INTO pgsteward.conversions (table_schema, table_name, state, step, plan, events) \
     VALUES ($1, $2, 'active', 'prepared', $3, $4) \
     RETURNING id, state, step, plan::text, events, started_at, updated_at";
/// Records step $2 done with event $3, for an active conversion $1.
pub const JOURNAL_ADVANCED: &str =
    "UPDATE pgsteward.conversions SET step = $2, events = events || $3::jsonb, \
     updated_at = now() WHERE id = $1 AND state = 'active'";
/// Appends event $2 to conversion $1 without changing its step.
pub const JOURNAL_NOTED: &str =
    "UPDATE pgsteward.conversions SET events = events || $2::jsonb, updated_at = now() WHERE id = $1";
/// Ends conversion $1 in state $2 with event $3.
pub const JOURNAL_FINISHED: &str =
    "UPDATE pgsteward.conversions SET state = $2, events = events || $3::jsonb, \
     updated_at = now() WHERE id = $1";
/// Conversion $1 back to `prepared` (the abort dropped its CHECK in the same transaction).
pub const JOURNAL_RESET: &str =
    "UPDATE pgsteward.conversions SET step = 'prepared', updated_at = now() WHERE id = $1";
