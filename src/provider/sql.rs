//! Every statement the providers run, named for what it does or returns.
//! Static text is bound (`$1`...); the two statement kinds that take no
//! parameters (`ALTER SYSTEM`, `ALTER DATABASE ... SET`) are built by the
//! functions at the end, identifiers and literals quoted.
//!
//! The first three are shared with `upgrade::sql`, which re-exports them:
//! one definition for the whole upgrade.

// ---- shared with the saga ----

/// Whether the server is a standby (in recovery); any role may run it.
pub(crate) const IN_RECOVERY: &str = "SELECT pg_is_in_recovery()";
/// Applies configuration-file changes; needs EXECUTE on `pg_reload_conf()`
/// (superuser or granted). Returns at once: the postmaster reloads afterwards.
pub(crate) const RELOAD_CONF: &str = "SELECT pg_reload_conf()";
/// Makes our own session writable whatever a fence (database, role or
/// server default) says, so the steward can lift the fence it put up.
pub(crate) const SESSION_WRITABLE: &str = "SET default_transaction_read_only = off";

// ---- local (`provider::local`) ----

/// The source's data directory, whether it is in recovery, and its version
/// number; `data_directory` needs `pg_read_all_settings` (`pg_monitor`).
pub(crate) const SOURCE_FACTS: &str = "SELECT current_setting('data_directory'), \
     pg_is_in_recovery(), current_setting('server_version_num')::int4";
/// One setting (`$1`) of a class as the server knows it: raw value, unit,
/// and the displayed value (no row: not a server setting).
pub(crate) const CLASS_SETTING: &str =
    "SELECT setting, unit, current_setting(name) FROM pg_settings WHERE name = $1";
/// Promotes without waiting (`pg_promote(wait => true)` sleeps in 100 ms
/// steps); the saga polls [`IN_RECOVERY`] instead. Needs EXECUTE on pg_promote.
pub(crate) const PROMOTE: &str = "SELECT pg_promote(wait => false)";
/// A standby's `primary_conninfo` (superuser or `pg_read_all_settings`).
pub(crate) const PRIMARY_CONNINFO: &str = "SELECT current_setting('primary_conninfo')";

// ---- settings (`provider::settings`) ----

/// The source's values of the settings named in `$1` (text array), read
/// before its copy is made: a standby may not run below them.
pub(crate) const STANDBY_FLOOR_SETTINGS: &str =
    "SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[])";

// ---- slot synchronization (`provider::slotsync`) ----

/// Makes slot `$1` before the base backup copies anything, reserving WAL at
/// once, so the copy streams every record from its start through it.
/// Idempotent: a retried create (after a crash mid-backup) finds it.
pub(crate) const MAKE_STANDBY_SLOT: &str = "SELECT pg_create_physical_replication_slot($1, true) \
     WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)";
/// Whether slot `$1` exists and something streams through it (no row: gone).
pub(crate) const STANDBY_SLOT_ACTIVE: &str =
    "SELECT active FROM pg_replication_slots WHERE slot_name = $1";
/// Drops slot `$1`; only when nothing streams through it (the new server was stopped first).
pub(crate) const DROP_STANDBY_SLOT: &str = "SELECT pg_drop_replication_slot($1)";

// ---- fences (`provider::fence`) ----

/// Databases fenced on RDS: every one that takes connections, except
/// templates and the one RDS keeps for itself.
pub(crate) const FENCEABLE_DATABASES: &str = "SELECT datname FROM pg_database \
     WHERE datallowconn AND NOT datistemplate AND datname <> 'rdsadmin' ORDER BY datname";
/// Ends application sessions, i.e. everything but superusers' (on RDS:
/// `rdsadmin`, whose backends an `rds_superuser` may not signal; one refusal
/// would fail the whole statement). Needs `pg_signal_backend`.
pub(crate) const TERMINATE_APPLICATION_SESSIONS: &str =
    "SELECT count(pg_terminate_backend(a.pid))::bigint FROM pg_stat_activity a \
     JOIN pg_roles r ON r.oid = a.usesysid \
     WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid() AND NOT r.rolsuper";
/// Databases read-only on purpose: a database-level (any role)
/// `default_transaction_read_only` that is on. The RDS fence leaves them
/// alone and its undo does not make them writable.
pub(crate) const READ_ONLY_DATABASES: &str = "SELECT d.datname::text FROM pg_db_role_setting s \
     JOIN pg_database d ON d.oid = s.setdatabase WHERE s.setrole = 0 AND EXISTS ( \
       SELECT 1 FROM unnest(s.setconfig) c WHERE lower(c) IN ('default_transaction_read_only=on', \
         'default_transaction_read_only=true', 'default_transaction_read_only=1', \
         'default_transaction_read_only=yes')) ORDER BY 1";

// ---- built: statements that take no parameters ----

/// `ALTER SYSTEM SET primary_conninfo = '<conninfo>'` (ALTER SYSTEM takes
/// no parameters); needs superuser or `ALTER SYSTEM` on the parameter (15+).
pub(crate) fn alter_primary_conninfo(conninfo: &str) -> String {
    format!(
        "ALTER SYSTEM SET primary_conninfo = {}",
        crate::pg::quote_literal(conninfo)
    )
}

/// Fences database `db` (RDS): new transactions there default to read-only.
/// Needs ownership of the database or membership in its owner role.
pub(crate) fn fence_database(db: &str) -> String {
    format!(
        "ALTER DATABASE {} SET default_transaction_read_only = on",
        crate::pg::quote_ident(db)
    )
}

/// Lifts [`fence_database`] from `db`; idempotent (a RESET of nothing is no error).
pub(crate) fn unfence_database(db: &str) -> String {
    format!(
        "ALTER DATABASE {} RESET default_transaction_read_only",
        crate::pg::quote_ident(db)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_statements_quote_what_they_embed() {
        assert_eq!(
            alter_primary_conninfo("host=a user='x'"),
            "ALTER SYSTEM SET primary_conninfo = 'host=a user=''x'''"
        );
        assert_eq!(
            fence_database("my \"db\""),
            "ALTER DATABASE \"my \"\"db\"\"\" SET default_transaction_read_only = on"
        );
        assert_eq!(
            unfence_database("app"),
            "ALTER DATABASE \"app\" RESET default_transaction_read_only"
        );
    }
}
