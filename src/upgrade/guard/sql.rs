//! The guard's statements (see the module doc of `upgrade::guard`).

pub(super) const TRY_LOCK: &str = "SELECT pg_try_advisory_lock($1, $2), pg_backend_pid()";
pub(super) const SETUP: &str = "CREATE SCHEMA IF NOT EXISTS pgsteward; \
     CREATE TABLE IF NOT EXISTS pgsteward.upgrade_guard ( \
       singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton), \
       epoch bigint NOT NULL, \
       upgrade_id text NOT NULL, \
       host text NOT NULL, \
       state_dir text NOT NULL, \
       started timestamptz NOT NULL, \
       step text NOT NULL, \
       since timestamptz NOT NULL, \
       cutover boolean NOT NULL DEFAULT false, \
       finished boolean NOT NULL DEFAULT false, \
       new_primary text); \
     ALTER TABLE pgsteward.upgrade_guard ADD COLUMN IF NOT EXISTS system_identifier text; \
     GRANT USAGE ON SCHEMA pgsteward TO PUBLIC; \
     GRANT SELECT ON pgsteward.upgrade_guard TO PUBLIC";
/// Takes the row over: a new epoch, our id, host and step.
pub(super) const CLAIM: &str = "INSERT INTO pgsteward.upgrade_guard AS g \
     (epoch, upgrade_id, host, state_dir, started, step, since, system_identifier) \
     VALUES (1, $1, $2, $3, now(), $4, now(), \
       (SELECT system_identifier::text FROM pg_control_system())) \
     ON CONFLICT (singleton) DO UPDATE SET epoch = g.epoch + 1, upgrade_id = $1, host = $2, \
       system_identifier = EXCLUDED.system_identifier, \
       state_dir = $3, started = CASE WHEN g.upgrade_id = $1 THEN g.started ELSE now() END, \
       step = $4, since = now(), finished = false, \
       cutover = CASE WHEN g.upgrade_id = $1 THEN g.cutover ELSE false END, \
       new_primary = CASE WHEN g.upgrade_id = $1 THEN g.new_primary END \
     RETURNING epoch";
/// The check before every acting step and the record of the step, in one
/// round trip: no row is updated unless our epoch is current and this session
/// holds the lock.
pub(super) const STEP: &str = "UPDATE pgsteward.upgrade_guard SET step = $3, since = now(), \
       cutover = coalesce($4, cutover), finished = coalesce($5, finished), \
       new_primary = coalesce($6, new_primary) \
     WHERE epoch = $1 AND upgrade_id = $2 AND EXISTS (SELECT 1 FROM pg_locks \
       WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted \
       AND classid = $7::int::oid AND objid = $8::int::oid AND objsubid = 2) \
     RETURNING epoch";
/// The check on a node whose WAL must not move any more (the old primary
/// after the final sync: a write there would be streamed to its replicas
/// and keep them from following the new primary): lock and owner only.
pub(super) const CHECK_ONLY: &str = "SELECT 1 FROM pgsteward.upgrade_guard WHERE upgrade_id = $1 \
     AND EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() \
       AND granted AND classid = $2::int::oid AND objid = $3::int::oid AND objsubid = 2)";
/// Our sessions write even on a fenced node (the fence is for applications).
pub(super) const SESSION_SETUP: &str = "SET default_transaction_read_only = off";

// ---- the moved-primary marker and the readers' side (`read`) ----

/// The moved-primary marker (`"<upgrade id> <new primary>"`), NULL or empty when unset.
pub(super) const MOVED_MARK: &str = "SELECT current_setting('pgsteward.moved_to', true)";
/// The guard row. The system identifier through `to_jsonb`: a table an older
/// pgsteward made has no such column until the next claim adds it.
pub(super) const READ: &str =
    "SELECT epoch, upgrade_id, host, state_dir, started, step, since, cutover, \
     finished, new_primary, to_jsonb(g) ->> 'system_identifier' FROM pgsteward.upgrade_guard g";
/// A session placeholder for the marker: before 17, ALTER SYSTEM refuses a
/// custom setting the session has never seen.
pub(super) const MOVED_PLACEHOLDER: &str = "SET pgsteward.moved_to = ''";
/// After promote, on every writable lock session: both rows at epoch `$1`
/// (upgrade `$2`).
pub(super) const BUMP_EPOCH: &str =
    "UPDATE pgsteward.upgrade_guard SET epoch = $1 WHERE upgrade_id = $2";
/// Gives the guard lock (`$1`, `$2`: its two keys) back at the end of a run.
pub(super) const UNLOCK: &str = "SELECT pg_advisory_unlock($1, $2)";

/// `ALTER SYSTEM SET pgsteward.moved_to = '<id> <new_primary>'` (ALTER
/// SYSTEM takes no parameters): on the old primary only, needs superuser
/// or `ALTER SYSTEM` on the parameter (15+).
pub(super) fn mark_moved(id: &str, new_primary: &str) -> String {
    format!(
        "ALTER SYSTEM SET pgsteward.moved_to = {}",
        crate::pg::quote_literal(&format!("{id} {new_primary}"))
    )
}
