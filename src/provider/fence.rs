//! The fences themselves, below the saga: the `pg_hba.conf` block that
//! rejects application roles (local provider) and the per-database
//! `default_transaction_read_only` of RDS, which refuses `ALTER SYSTEM`.
//! `upgrade::fence` decides when they are put up and taken down; this module
//! only knows how, so providers need nothing from the saga above them.

const SESSION_WRITABLE: &str = "SET default_transaction_read_only = off";

pub const BLOCK_BEGIN: &str = "# pgsteward fence begin";
pub const BLOCK_END: &str = "# pgsteward fence end";

/// `text` with our block (if any) removed.
pub fn without_block(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut inside = false;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with(BLOCK_BEGIN) {
            inside = true;
            continue;
        }
        if inside {
            if t.starts_with(BLOCK_END) {
                inside = false;
            }
            continue;
        }
        out.push_str(line);
    }
    out
}

/// `text` with the fence block for `roles` at its top (first match wins in
/// pg_hba.conf). `None` when a role name cannot be written as an hba token.
pub fn with_block(text: &str, id: &str, roles: &[String]) -> Result<String, String> {
    let mut block = format!(
        "{BLOCK_BEGIN} (upgrade {id}): roles that are not superusers are refused; \
         `pgsteward upgrade resume`/`abort` removes this block\n"
    );
    for r in roles {
        if r.contains('"') || r.chars().any(char::is_control) {
            return Err(format!(
                "role {r:?} cannot be named in pg_hba.conf; rename it or make it NOLOGIN before the upgrade"
            ));
        }
        block.push_str(&format!(
            "local all \"{r}\" reject\nhost all \"{r}\" all reject\n"
        ));
    }
    block.push_str(BLOCK_END);
    block.push('\n');
    Ok(block + &without_block(text))
}

// ---- RDS (`AlterDatabase`) ----

/// Databases fenced on RDS: every one that takes connections, except
/// templates and the one RDS keeps for itself.
pub const FENCEABLE_DATABASES: &str = "SELECT datname FROM pg_database \
     WHERE datallowconn AND NOT datistemplate AND datname <> 'rdsadmin' ORDER BY datname";
/// Application sessions, i.e. everything but superusers' (on RDS: `rdsadmin`,
/// whose backends an `rds_superuser` may not signal; one refusal would fail
/// the whole statement).
pub const TERMINATE_APPLICATION_SESSIONS: &str =
    "SELECT count(pg_terminate_backend(a.pid))::bigint FROM pg_stat_activity a \
     JOIN pg_roles r ON r.oid = a.usesysid \
     WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid() AND NOT r.rolsuper";

/// Fencing without `ALTER SYSTEM` (refused on RDS): every fenceable database
/// defaults new transactions to read-only. Needs ownership of each database
/// (or membership in its owner role). Returns the databases fenced.
///
/// The setting lives in `pg_db_role_setting`, a shared catalog that streams
/// to replicas: the new primary inherits the fence and must be unfenced with
/// [`unfence_databases`] after promotion, before writes resume.
pub async fn fence_databases(
    client: &tokio_postgres::Client,
) -> Result<Vec<String>, tokio_postgres::Error> {
    client.batch_execute(SESSION_WRITABLE).await?;
    let mut fenced = Vec::new();
    for row in client.query(FENCEABLE_DATABASES, &[]).await? {
        let db: String = row.get(0);
        client
            .batch_execute(&format!(
                "ALTER DATABASE {} SET default_transaction_read_only = on",
                crate::pg::quote_ident(&db)
            ))
            .await?;
        fenced.push(db);
    }
    Ok(fenced)
}

/// Undoes [`fence_databases`]: on the old primary when rolling back, on the
/// new primary after promotion. Idempotent.
pub async fn unfence_databases(
    client: &tokio_postgres::Client,
) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(SESSION_WRITABLE).await?;
    for row in client.query(FENCEABLE_DATABASES, &[]).await? {
        let db: String = row.get(0);
        client
            .batch_execute(&format!(
                "ALTER DATABASE {} RESET default_transaction_read_only",
                crate::pg::quote_ident(&db)
            ))
            .await?;
    }
    Ok(())
}

/// Ends every application session (see [`TERMINATE_APPLICATION_SESSIONS`]).
pub async fn terminate_application_sessions(
    client: &tokio_postgres::Client,
) -> Result<i64, tokio_postgres::Error> {
    Ok(client
        .query_one(TERMINATE_APPLICATION_SESSIONS, &[])
        .await?
        .get(0))
}
