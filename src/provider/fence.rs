//! The fences themselves, below the saga: the `pg_hba.conf` block that
//! rejects application roles (local provider) and the per-database
//! `default_transaction_read_only` of RDS, which refuses `ALTER SYSTEM`.
//! `upgrade::fence` decides when they are put up and taken down; this module
//! only knows how, so providers need nothing from the saga above them.

use super::sql::{
    fence_database, unfence_database, FENCEABLE_DATABASES, READ_ONLY_DATABASES, SESSION_WRITABLE,
    TERMINATE_APPLICATION_SESSIONS,
};
use super::ProviderError;

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
/// pg_hba.conf); refused when a role name cannot be written as an hba token.
pub fn with_block(text: &str, id: &str, roles: &[String]) -> Result<String, ProviderError> {
    let mut block = format!(
        "{BLOCK_BEGIN} (upgrade {id}): roles that are not superusers are refused; \
         `pgsteward upgrade resume`/`abort` removes this block\n"
    );
    for r in roles {
        if r.contains('"') || r.chars().any(char::is_control) {
            return Err(ProviderError::UnnameableRole { role: r.clone() });
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

/// The databases read-only on purpose (`sql::READ_ONLY_DATABASES`).
pub async fn read_only_databases(
    client: &tokio_postgres::Client,
) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(client
        .query(READ_ONLY_DATABASES, &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Fencing without `ALTER SYSTEM` (refused on RDS): every fenceable database
/// but those in `keep` (read-only already, on purpose) defaults new
/// transactions to read-only. Needs ownership of each database (or
/// membership in its owner role). Returns the databases fenced.
///
/// The setting lives in `pg_db_role_setting`, a shared catalog that streams
/// to replicas: the new primary inherits the fence and must be unfenced with
/// [`unfence_databases`] after promotion, before writes resume.
pub async fn fence_databases(
    client: &tokio_postgres::Client,
    keep: &[String],
) -> Result<Vec<String>, tokio_postgres::Error> {
    client.batch_execute(SESSION_WRITABLE).await?;
    let mut fenced = Vec::new();
    for row in client.query(FENCEABLE_DATABASES, &[]).await? {
        let db: String = row.get(0);
        if keep.contains(&db) {
            continue;
        }
        client.batch_execute(&fence_database(&db)).await?;
        fenced.push(db);
    }
    Ok(fenced)
}

/// Undoes [`fence_databases`]: on the old primary when rolling back, on the
/// new primary after promotion; the databases in `keep` stay read-only.
/// Idempotent.
pub async fn unfence_databases(
    client: &tokio_postgres::Client,
    keep: &[String],
) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(SESSION_WRITABLE).await?;
    for row in client.query(FENCEABLE_DATABASES, &[]).await? {
        let db: String = row.get(0);
        if keep.contains(&db) {
            continue;
        }
        client.batch_execute(&unfence_database(&db)).await?;
    }
    Ok(())
}

/// Ends every application session (see `sql::TERMINATE_APPLICATION_SESSIONS`).
pub async fn terminate_application_sessions(
    client: &tokio_postgres::Client,
) -> Result<i64, tokio_postgres::Error> {
    Ok(client
        .query_one(TERMINATE_APPLICATION_SESSIONS, &[])
        .await?
        .get(0))
}

// ---- the pg_hba.conf fence, verified without privileges ----

/// What the server answered a login that carries no password (see
/// [`probe_login`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginProbe {
    /// Refused before any authentication exchange (SQLSTATE 28000,
    /// `invalid_authorization_specification`): a `reject` line, or no line
    /// at all, matched in the rules the postmaster has loaded.
    Refused,
    /// Anything else (asked for a password, let in, another error): the
    /// loaded rules do not refuse this role here.
    NotRefused(String),
}

/// Tries to log in as `role` at `primary`'s address without any password
/// (none from the string, the environment or a password file), and
/// classifies the answer by SQLSTATE only (server messages may be
/// translated). A fenced role is refused before authentication; an unfenced
/// one is asked for its password, which this probe does not have. Nothing
/// logs in, so the probe needs no privilege at all, and it tests what the
/// postmaster enforces, not what a file says: this is how the fence is
/// verified without `pg_hba_file_rules` (superuser-only by default).
pub async fn probe_login(
    primary: &crate::config::ConnString,
    role: &str,
    timeout: std::time::Duration,
) -> Result<LoginProbe, crate::pg::PgError> {
    use crate::pg::conninfo::ConnParams;
    let invalid = |reason: String| crate::pg::PgError::InvalidConnString {
        redacted: primary.to_string(),
        reason,
    };
    let mut p = ConnParams::parse(primary.expose()).map_err(|e| invalid(e.to_string()))?;
    for key in ["password", "passfile", "aws_iam", "aws_region", "options"] {
        p.take(key);
    }
    p.set("user", role);
    p.set("passfile", "/dev/null");
    p.set("application_name", "pgsteward-fence-probe");
    // The process's libpq defaults (host, sslmode...) but never its password.
    let vars: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("PG") && k != "PGPASSWORD" && k != "PGPASSFILE")
        .collect();
    let env = crate::pg::PgEnv::with_vars(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let spec = crate::pg::ConnSpec::parse_with(&p.to_key_value(), &env)?;
    match spec.connect(timeout).await {
        Ok(_) => Ok(LoginProbe::NotRefused("logged in".into())),
        Err(crate::pg::PgError::Connect { source, .. })
            if source.code()
                == Some(&tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION) =>
        {
            Ok(LoginProbe::Refused)
        }
        Err(e @ crate::pg::PgError::ConnectTimeout { .. }) => Err(e),
        Err(e) => Ok(LoginProbe::NotRefused(e.to_string())),
    }
}
