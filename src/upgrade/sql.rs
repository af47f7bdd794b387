//! Every statement the upgrade saga runs, named for what it does or returns
//! (the guard's own are in `guard::sql`). Values are bound (`$1`...); the
//! few statements that must embed a value are built by the functions at the
//! end: integers only, or literals quoted with `pg::quote_literal`.

/// Shared with the providers: defined once, in `provider::sql`.
pub(crate) use crate::provider::sql::{IN_RECOVERY, RELOAD_CONF, SESSION_WRITABLE};

// ---- sessions and WAL positions (`steps`, `swap`) ----

/// This session's backend pid: spared by our own terminate sweeps.
pub(crate) const BACKEND_PID: &str = "SELECT pg_backend_pid()";
/// The primary's current WAL position, as text (`X/Y`): what a standby must replay.
pub(crate) const CURRENT_LSN: &str = "SELECT pg_current_wal_lsn()::text";
/// On a standby: bytes still to replay up to `$1` (an LSN as text), 0 when
/// past it or when nothing was replayed yet (NULL coalesced).
pub(crate) const REPLAYED_ENOUGH: &str =
    "SELECT coalesce(pg_wal_lsn_diff($1::text::pg_lsn, pg_last_wal_replay_lsn()), 0)::float8";
/// Whether `database.primary` is in recovery and its read-only default
/// (`current`: is it still the writable primary).
pub(crate) const PRIMARY_WRITABLE: &str =
    "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only')";

// ---- prechecks (`observe`) ----

/// The source: in recovery, free WAL senders, free slots, version number.
pub(crate) const PRIMARY_FACTS: &str = "SELECT pg_is_in_recovery(), \
     current_setting('max_wal_senders')::int - (SELECT count(*) FROM pg_stat_replication)::int, \
     current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots)::int, \
     current_setting('server_version_num')::int";
/// Client transactions older than `$1` seconds (other than ours): count and
/// the oldest's age; another session's `xact_start` needs `pg_monitor`.
pub(crate) const LONG_TRANSACTIONS: &str =
    "SELECT count(*)::bigint, coalesce(max(extract(epoch FROM now() - xact_start)), 0)::float8 \
     FROM pg_stat_activity WHERE xact_start < now() - make_interval(secs => $1) \
     AND pid <> pg_backend_pid() AND backend_type = 'client backend'";
/// Granted ACCESS EXCLUSIVE relation locks held by other sessions (DDL in flight).
pub(crate) const DDL_LOCKS: &str = "SELECT count(*)::bigint FROM pg_locks \
     WHERE mode = 'AccessExclusiveLock' AND locktype = 'relation' AND granted AND pid <> pg_backend_pid()";

// ---- slots (`slots`, `carry`, `carry_logical`) ----

/// Every slot of the source, and who streams from it (`false`: no
/// `failover` column before PostgreSQL 17).
pub(crate) const READ_SLOTS: &str = "SELECT s.slot_name::text, s.slot_type, s.plugin::text, s.database::text, \
     s.active, s.temporary, s.restart_lsn::text, s.confirmed_flush_lsn::text, false, \
     CASE WHEN r.pid IS NOT NULL THEN concat_ws(' ', coalesce(nullif(r.application_name, ''), 'walsender'), \
       'at ' || coalesce(host(r.client_addr), 'local socket'), '(' || r.state || ')') END \
     FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid \
     ORDER BY s.slot_name";
/// [`READ_SLOTS`] on PostgreSQL 17+, with the slot's `failover` flag.
pub(crate) const READ_SLOTS_17: &str = "SELECT s.slot_name::text, s.slot_type, s.plugin::text, s.database::text, \
     s.active, s.temporary, s.restart_lsn::text, s.confirmed_flush_lsn::text, s.failover, \
     CASE WHEN r.pid IS NOT NULL THEN concat_ws(' ', coalesce(nullif(r.application_name, ''), 'walsender'), \
       'at ' || coalesce(host(r.client_addr), 'local socket'), '(' || r.state || ')') END \
     FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid \
     ORDER BY s.slot_name";
/// On the new server: the `restart_lsn` of physical slot `$1` (no row: not made yet).
pub(crate) const PHYSICAL_SLOT_ON_NEW: &str =
    "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = $1 AND slot_type = 'physical'";
/// Makes physical slot `$1`, reserving WAL at once (`immediately_reserve`)
/// from the standby's last restart point: older than anything its user still needs.
pub(crate) const CREATE_PHYSICAL_SLOT: &str =
    "SELECT pg_create_physical_replication_slot($1, true)";
/// On the old primary: how far slot `$1`'s user stands past `$2` (the new
/// slot's start), its `restart_lsn` and whether it streams. No row: the
/// slot is gone or never reserved WAL (its user asks for nothing older).
pub(crate) const PHYSICAL_SLOT_OLD_MINUS_NEW: &str = "SELECT pg_wal_lsn_diff(restart_lsn, $2::text::pg_lsn)::float8, \
     restart_lsn::text, active FROM pg_replication_slots WHERE slot_name = $1 AND restart_lsn IS NOT NULL";
/// The new server's logical slots (PostgreSQL 17+ columns: `synced`, `invalidation_reason`).
pub(crate) const LOGICAL_SLOTS_ON_NEW: &str =
    "SELECT slot_name::text, synced, temporary, invalidation_reason::text \
     FROM pg_replication_slots WHERE slot_type = 'logical'";
/// A carried slot `$1` on the old primary and its consumer's last answer.
pub(crate) const CARRIED_SLOT_ON_OLD: &str = "SELECT s.active, s.confirmed_flush_lsn::text, \
     extract(epoch FROM r.reply_time)::float8 \
     FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid \
     WHERE s.slot_name = $1";
/// A carried slot `$1` on the new primary: streamed from, and its position.
pub(crate) const CARRIED_SLOT_ON_NEW: &str =
    "SELECT active, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1";
/// Moves slot `$1` forward to `$2` (never backward; the server stops at
/// what it has); needs REPLICATION.
pub(crate) const ADVANCE_SLOT: &str =
    "SELECT end_lsn::text FROM pg_replication_slot_advance($1, $2::text::pg_lsn)";

// ---- the steward's privileges (`privileges`, read by `observe`) ----

/// What the steward holds, read in `database.primary`'s database and in
/// the guard's (`postgres`).
pub(crate) const READ_PRIVILEGES: &str =
    "SELECT current_user::text, r.rolsuper, r.rolreplication, \
     pg_has_role(current_user, 'pg_monitor', 'USAGE'), \
     pg_has_role(current_user, 'pg_signal_backend', 'USAGE'), \
     has_function_privilege('pg_reload_conf()', 'EXECUTE'), \
     has_function_privilege('pg_promote(boolean, integer)', 'EXECUTE'), \
     current_setting('server_version_num')::int \
     FROM pg_roles r WHERE r.rolname = current_user";
/// PostgreSQL 15+: `ALTER SYSTEM` on each parameter the local fence and repoint set.
pub(crate) const READ_PARAMETER_PRIVILEGES: &str =
    "SELECT has_parameter_privilege('default_transaction_read_only', 'ALTER SYSTEM'), \
     has_parameter_privilege('primary_conninfo', 'ALTER SYSTEM'), \
     has_parameter_privilege('pgsteward.moved_to', 'ALTER SYSTEM')";
/// In the guard database: may the guard's schema be made there, or is it
/// usable already; and the reload the moved-primary marker runs there.
pub(crate) const READ_GUARD_PRIVILEGES: &str =
    "SELECT has_database_privilege(current_database(), 'CREATE'), \
     coalesce((SELECT has_schema_privilege(n.oid, 'USAGE') \
       AND has_table_privilege('pgsteward.upgrade_guard', 'SELECT, INSERT, UPDATE') \
       FROM pg_namespace n WHERE n.nspname = 'pgsteward' \
       AND to_regclass('pgsteward.upgrade_guard') IS NOT NULL), false), \
     has_function_privilege('pg_reload_conf()', 'EXECUTE')";
/// RDS fence: the databases whose `default_transaction_read_only` the
/// steward may not set (it must own them or be a member of their owner).
pub(crate) const UNFENCEABLE_DATABASES: &str =
    "SELECT datname::text, pg_get_userbyid(datdba)::text \
     FROM pg_database WHERE datallowconn AND NOT datistemplate AND datname <> 'rdsadmin' \
     AND NOT pg_has_role(datdba, 'USAGE') ORDER BY datname";

// ---- the local fence (`fence`) ----

/// Stages the soft fence (applied by the next reload); superuser or
/// `ALTER SYSTEM` on the parameter (15+).
pub(crate) const FENCE: &str = "ALTER SYSTEM SET default_transaction_read_only = on";
/// Removes [`FENCE`] from postgresql.auto.conf (applied by the next reload).
pub(crate) const UNFENCE: &str = "ALTER SYSTEM RESET default_transaction_read_only";
/// When this backend last processed a reload. It advancing past the value
/// read before `pg_reload_conf()` proves the postmaster has reloaded: it
/// signals its children, then loads pg_hba.conf, before it forks another
/// backend. (Not the session's view of default_transaction_read_only: a
/// database or role setting overrides the server's, so it proves nothing.)
pub(crate) const CONF_LOAD_TIME: &str = "SELECT pg_conf_load_time()::text";
/// [`CONF_LOAD_TIME`] and `pg_reload_conf()` in one round trip (inside the
/// pause). The value read is this backend's, which changes only when it
/// processes the postmaster's signal between two commands, never while
/// this statement runs: it is the value from before the reload whatever
/// the order the two are evaluated in.
pub(crate) const LOAD_TIME_THEN_RELOAD: &str = "SELECT pg_conf_load_time()::text, pg_reload_conf()";
/// Where the two files live (readable through `pg_monitor`'s
/// `pg_read_all_settings`): pg_hba.conf and the data directory, whose
/// postgresql.auto.conf `ALTER SYSTEM` writes.
pub(crate) const HBA_FILE: &str =
    "SELECT current_setting('hba_file'), current_setting('data_directory')";
/// Every role that can log in and is neither a superuser nor the steward's
/// own (the role this session logged in as): each gets a reject line.
pub(crate) const APPLICATION_ROLES: &str = "SELECT rolname FROM pg_roles \
     WHERE rolcanlogin AND NOT rolsuper AND rolname <> session_user ORDER BY rolname";
/// Leaves an aborted transaction block (the final flush failed inside it),
/// so the session can be reused to unfence.
pub(crate) const ROLLBACK: &str = "ROLLBACK";

// ---- after the pause (`finish`) and the pause keeper (`rescue`) ----

/// Whether backend `$1` started at `$2` (text) still exists on the new
/// primary: the pooled session of verify really ran there.
pub(crate) const SESSION_EXISTS: &str =
    "SELECT count(*)::bigint FROM pg_stat_activity WHERE pid = $1 AND backend_start::text = $2";
/// Whether a runner holds the guard lock (`$1`, `$2`: its two keys), and how
/// old the row's step is (the server's clock), in the guard database.
pub(crate) const WINDOW_AGE: &str =
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
       AND granted AND classid = $1::int::oid AND objid = $2::int::oid AND objsubid = 2), \
     extract(epoch FROM now() - since)::float8 FROM pgsteward.upgrade_guard";

// ---- built: statements that must embed a value ----

/// Terminates every client session on the old primary but `ours` and
/// superusers' (which `pg_signal_backend` may not end: one refusal would
/// fail the whole statement; the soft read-only default covers them).
pub(crate) fn terminate_sql(ours: &[i32]) -> String {
    // Integers only: nothing from outside goes into this text.
    let list: Vec<String> = ours.iter().map(|p| p.to_string()).collect();
    format!(
        "SELECT count(pg_terminate_backend(a.pid))::bigint FROM pg_stat_activity a \
         JOIN pg_roles r ON r.oid = a.usesysid \
         WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid() \
         AND NOT r.rolsuper AND a.pid <> ALL ('{{{}}}'::int[])",
        list.join(",")
    )
}

/// The final flush of the fenced old primary in one simple-query round trip
/// (see `fence::flush::flushed_position`): the insert position, then a transaction
/// that terminates what is left (`terminate_sql(ours)`) and writes WAL with
/// `synchronous_commit = local` (the guard row of upgrade `guarded_upgrade`,
/// else a temporary table's catalog rows), then the flush position.
pub(crate) fn final_flush(ours: &[i32], guarded_upgrade: Option<&str>) -> String {
    let wal_write = match guarded_upgrade {
        Some(id) => format!(
            "UPDATE pgsteward.upgrade_guard SET step = 'final_sync flush', since = now() \
             WHERE upgrade_id = {}",
            crate::pg::quote_literal(id)
        ),
        None => "CREATE TEMPORARY TABLE pgsteward_final_flush () ON COMMIT DROP".to_string(),
    };
    format!(
        "SELECT pg_current_wal_insert_lsn()::text; COMMIT; \
         BEGIN READ WRITE; SET LOCAL synchronous_commit = local; {}; \
         {wal_write}; COMMIT; \
         SELECT pg_current_wal_flush_lsn()::text",
        terminate_sql(ours),
    )
}

/// Verify's probe through the pooler, in one transaction (transaction
/// pooling: the next one may run on another server connection), its
/// statement timeout of `timeout_ms` set inside it (`SET LOCAL`: no startup
/// options, nothing left on the server connection for the next client).
pub(crate) fn verify_through_pooler(timeout_ms: u128) -> String {
    format!(
        "BEGIN; SET LOCAL statement_timeout = {timeout_ms}; \
         SELECT a.pid, a.backend_start::text, pg_is_in_recovery(), \
         current_setting('transaction_read_only'), txid_current()::text \
         FROM pg_stat_activity a WHERE a.pid = pg_backend_pid(); COMMIT"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminate_spares_our_sessions() {
        assert!(terminate_sql(&[12, 34]).contains("'{12,34}'::int[]"));
        assert!(terminate_sql(&[]).contains("'{}'::int[]"));
    }

    #[test]
    fn the_final_flush_quotes_the_upgrade_id() {
        let sql = final_flush(&[7], Some("it's"));
        assert!(sql.contains("WHERE upgrade_id = 'it''s'; COMMIT;"), "{sql}");
        assert!(sql.contains("'{7}'::int[]); UPDATE"), "{sql}");
        let sql = final_flush(&[], None);
        assert!(sql.contains("ON COMMIT DROP; COMMIT;"), "{sql}");
    }

    #[test]
    fn verify_sets_its_timeout_inside_the_transaction() {
        assert_eq!(
            verify_through_pooler(2500),
            "BEGIN; SET LOCAL statement_timeout = 2500; \
             SELECT a.pid, a.backend_start::text, pg_is_in_recovery(), \
             current_setting('transaction_read_only'), txid_current()::text \
             FROM pg_stat_activity a WHERE a.pid = pg_backend_pid(); COMMIT"
        );
    }
}
