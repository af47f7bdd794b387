//! The error every PostgreSQL call here returns, and the classification of
//! server errors callers decide on (retry after a lost lock race, reconnect
//! after a lost connection).

use std::time::Duration;

use tokio_postgres::error::SqlState;

use super::{SslMode, TlsSetupError};

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("invalid connection string {redacted}: {reason}")]
    InvalidConnString { redacted: String, reason: String },
    #[error("cannot connect to {target}: {}", error_chain(.source))]
    Connect {
        target: String,
        source: tokio_postgres::Error,
    },
    #[error("cannot connect to {target}: the server asks for a password and none was found; looked in: {looked}")]
    PasswordMissing { target: String, looked: String },
    /// The server refused the password (28P01): says where the password came
    /// from, so the operator knows which one to fix.
    #[error("cannot connect to {target}: {reason}; the password came from {password_source}")]
    PasswordRefused {
        target: String,
        reason: String,
        password_source: String,
    },
    #[error("cannot connect to {target}: no answer within {timeout:?}")]
    ConnectTimeout { target: String, timeout: Duration },
    #[error("cannot connect to {target}: {source}")]
    IamToken {
        target: String,
        source: super::iam::IamError,
    },
    #[error("cannot connect to {target}: {source}")]
    TlsSetup {
        target: String,
        source: TlsSetupError,
    },
    #[error(
        "cannot connect to {target}: TLS verification failed (sslmode={mode}): {reason}; {hint}"
    )]
    TlsVerify {
        target: String,
        mode: SslMode,
        reason: String,
        hint: &'static str,
    },
    #[error("query failed on {target}: {}", server_message(.source))]
    Query {
        target: String,
        source: tokio_postgres::Error,
    },
}

impl PgError {
    /// The failure kind for metrics: one per subsystem.
    pub fn metric_label(&self) -> crate::outcome::ErrorLabel {
        crate::outcome::ErrorLabel::Postgres
    }
}

/// Whether a failed statement is worth retrying after a pause: it lost a lock
/// race (lock_timeout, deadlock, serialization) rather than being wrong.
pub fn is_transient_lock_error(err: &tokio_postgres::Error) -> bool {
    err.code().is_some_and(super::retry::is_transient)
}

/// Whether a failure means the server (or the path to it) went away, as
/// opposed to the statement being refused.
pub fn is_connection_error(err: &tokio_postgres::Error) -> bool {
    if err.is_closed() {
        return true;
    }
    match err.code() {
        Some(c) => {
            c.code().starts_with("08")
                || *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
        }
        None => true,
    }
}

/// The server's message and code of an error, without the driver's wrapping;
/// for client-side failures the whole cause chain ("error connecting: refused").
pub fn server_message(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => error_chain(err),
    }
}

impl PgError {
    /// Whether the operator must fix the configuration or environment (exit 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            PgError::InvalidConnString { .. } | PgError::PasswordMissing { .. }
        )
    }
}

/// `outer: inner: innermost`.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let msg = e.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = e.source();
    }
    s
}
