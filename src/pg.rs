//! PostgreSQL plumbing shared by every subsystem: connection strings (parsed,
//! redacted), connecting with a deadline, identifier quoting, and
//! classification of server errors.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use tokio_postgres::error::SqlState;

pub mod conninfo;
pub mod iam;
pub mod libpq;
mod spec;
mod tls;
use conninfo::ConnParams;
pub use libpq::{PasswordLookup, PgEnv};
pub use spec::{is_password_missing, ConnSpec, IamAuth, SslMode};
pub use tls::TlsSetupError;

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
    #[error("cannot connect to {target}: no answer within {timeout:?}")]
    ConnectTimeout { target: String, timeout: Duration },
    #[error("cannot connect to {target}: {reason}")]
    IamToken { target: String, reason: String },
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

/// The connection string with its password (and any other secret) masked;
/// parsed, so no quoting, escaping or encoding can hide a password from it.
pub fn redact(s: &str) -> String {
    conninfo::redact(s)
}

/// The connection string without its password (and other secrets), for
/// records kept on disk: what is left logs in with the password found by
/// libpq's rules (`PGPASSWORD`, the password file) when it is used again.
pub fn without_password(s: &str) -> String {
    match ConnParams::parse(s) {
        Ok(mut p) => {
            p.take("password");
            p.take("sslpassword");
            p.render_redacted()
        }
        Err(_) => redact(s),
    }
}

/// `"name"` with embedded quotes doubled: safe for any identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'value'` with embedded quotes doubled, for the few places SQL cannot take a
/// bound parameter (partition bounds in DDL). Requires standard_conforming_strings
/// (the default since 9.1), which [`DDL_SESSION_SETUP`] sets explicitly.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A schema-qualified relation name. Parsed like SQL: unquoted parts fold to
/// lower case, `"Quoted"` parts keep case and may contain `""`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

impl QualifiedName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        QualifiedName {
            schema: schema.into(),
            name: name.into(),
        }
    }
    /// `"schema"."name"`, ready to splice into SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

pub const QUALIFIED_NAME_EXPECTED: &str =
    "a table name such as \"public.audit_log\" or '\"My Schema\".\"Audit Log\"'";

impl FromStr for QualifiedName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("{s:?} is not {QUALIFIED_NAME_EXPECTED}: {why}");
        let mut parts = Vec::new();
        let mut chars = s.trim().chars().peekable();
        loop {
            let mut part = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            part.push('"');
                        }
                        Some('"') => break,
                        Some(c) => part.push(c),
                        None => return Err(bad("unterminated quote")),
                    }
                }
                if part.is_empty() {
                    return Err(bad("empty quoted name"));
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == '.' {
                        break;
                    }
                    if !(c.is_alphanumeric() || c == '_' || c == '$') {
                        return Err(bad(&format!("{c:?} needs double quotes around the name")));
                    }
                    part.push(c.to_ascii_lowercase());
                    chars.next();
                }
                if part.is_empty() {
                    return Err(bad("empty name"));
                }
                if part.starts_with(|c: char| c.is_ascii_digit() || c == '$') {
                    return Err(bad("an unquoted name cannot start with a digit"));
                }
            }
            if part.len() > 63 {
                return Err(bad("names are at most 63 bytes"));
            }
            parts.push(part);
            match chars.next() {
                None => break,
                Some('.') => continue,
                Some(c) => return Err(bad(&format!("unexpected {c:?} after a name"))),
            }
        }
        match parts.len() {
            1 => Ok(QualifiedName::new("public", parts.remove(0))),
            2 => {
                let name = parts.remove(1);
                Ok(QualifiedName::new(parts.remove(0), name))
            }
            _ => Err(bad("expected schema.table")),
        }
    }
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = |s: &str| {
            let plain = s
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if plain {
                s.to_string()
            } else {
                quote_ident(s)
            }
        };
        write!(f, "{}.{}", part(&self.schema), part(&self.name))
    }
}

impl<'de> Deserialize<'de> for QualifiedName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for QualifiedName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Settings every DDL session starts with. `lock_timeout` is set per statement.
pub const DDL_SESSION_SETUP: &str =
    "SET standard_conforming_strings = on; SET statement_timeout = 0";

/// Whether a failed statement is worth retrying after a pause: it lost a lock
/// race (lock_timeout, deadlock, serialization) rather than being wrong.
pub fn is_transient_lock_error(err: &tokio_postgres::Error) -> bool {
    matches!(
        err.code(),
        Some(c) if *c == SqlState::LOCK_NOT_AVAILABLE
            || *c == SqlState::T_R_DEADLOCK_DETECTED
            || *c == SqlState::T_R_SERIALIZATION_FAILURE
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_keep_no_password() {
        assert_eq!(
            without_password("postgres://u:s3cret@h:5432/db?sslmode=require"),
            "postgres://u@h:5432/db?sslmode=require"
        );
        assert_eq!(
            without_password("host=h password='s 3' user=u"),
            "host=h user=u"
        );
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://u:s3cret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            redact("host=h password=s3cret user=u"),
            "host=h password=*** user=u"
        );
        assert!(!redact("postgres://u@h/db?password=s3cret").contains("s3cret"));
    }

    #[test]
    fn conn_spec_takes_out_tls_settings() {
        let spec =
            ConnSpec::parse("postgres://u:pw@db:6543/app?sslmode=verify-full&sslrootcert=/ca.pem")
                .unwrap();
        assert_eq!(spec.ssl_mode, SslMode::VerifyFull);
        assert_eq!(
            spec.ssl_root_cert.as_deref(),
            Some(std::path::Path::new("/ca.pem"))
        );
        assert_eq!(spec.display, "u@db:6543/app");
        let err = ConnSpec::parse("postgres://u:pw@db/app?sslmode=sometimes")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sslmode=sometimes") && !err.contains("pw@"),
            "{err}"
        );
    }

    #[test]
    fn iam_auth_needs_tls_and_a_user() {
        let spec = ConnSpec::parse(
            "postgres://steward@db:5432/app?sslmode=verify-full&aws_iam=true&aws_region=eu-west-1",
        )
        .unwrap();
        assert_eq!(
            spec.aws_iam,
            Some(IamAuth {
                region: Some("eu-west-1".into())
            })
        );
        for bad in [
            "postgres://steward@db/app?aws_iam=true",
            "postgres://steward@db/app?aws_iam=true&sslmode=disable",
            "host=db dbname=app sslmode=require aws_iam=true",
            "postgres://steward@db/app?aws_iam=true&sslmode=require",
            "postgres://steward@db/app?aws_iam=maybe&sslmode=verify-full",
        ] {
            assert!(ConnSpec::parse(bad).is_err(), "{bad} must be refused");
        }
        let err = ConnSpec::parse("host=db user=s sslmode=require aws_iam=true")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sslmode=verify-full"), "{err}");
        assert!(
            ConnSpec::parse("host=db user=s sslmode=verify-ca aws_iam=true")
                .unwrap()
                .aws_iam
                .is_some()
        );
    }

    #[test]
    fn libpq_environment_fills_the_gaps() {
        let env = PgEnv::with_vars([
            ("PGHOST", "envhost"),
            ("PGPORT", "6543"),
            ("PGUSER", "envuser"),
            ("PGDATABASE", "envdb"),
            ("PGSSLMODE", "require"),
            ("PGCONNECT_TIMEOUT", "1"),
            ("PGAPPNAME", "envapp"),
            ("PGPASSWORD", "envpw"),
        ]);
        let spec = ConnSpec::parse_with("dbname=own", &env).unwrap();
        assert_eq!(spec.display, "envuser@envhost:6543/own");
        assert_eq!(spec.ssl_mode, SslMode::Require);
        assert_eq!(spec.connect_timeout, Some(Duration::from_secs(2)));
        assert_eq!(spec.config.get_application_name(), Some("envapp"));
        assert_eq!(spec.password(), Some("envpw"));
        assert_eq!(spec.password_source.as_deref(), Some("PGPASSWORD"));
        // Explicit settings win over the environment, in both forms.
        let spec = ConnSpec::parse_with(
            "postgres://u:p%20w@h:1/d?sslmode=disable&application_name=mine&connect_timeout=9",
            &env,
        )
        .unwrap();
        assert_eq!(spec.display, "u@h:1/d");
        assert_eq!(spec.ssl_mode, SslMode::Disable);
        assert_eq!(spec.password(), Some("p w"));
        assert_eq!(spec.config.get_application_name(), Some("mine"));
        assert_eq!(spec.connect_timeout, Some(Duration::from_secs(9)));
        let spec = ConnSpec::parse_with("host=h user=u password='a \\'' b'", &PgEnv::with_vars([]))
            .unwrap_err();
        assert!(!spec.to_string().contains(" b"), "{spec}");
        let spec =
            ConnSpec::parse_with(r"host=h user=u password='a \\ \' b'", &PgEnv::with_vars([]))
                .unwrap();
        assert_eq!(spec.password(), Some(r"a \ ' b"));
        // Without a password anywhere, every place is named; dbname defaults to the user.
        let spec = ConnSpec::parse_with("host=h user=u", &PgEnv::with_vars([])).unwrap();
        assert_eq!(spec.dbname(), "u");
        let e = spec.password_missing().to_string();
        assert!(
            e.contains("PGPASSWORD: not set") && e.contains("u@h:5432/u"),
            "{e}"
        );
        assert!(spec.password_missing().is_usage());
    }

    #[test]
    fn qualified_names() {
        assert_eq!(
            "public.audit_log".parse::<QualifiedName>().unwrap(),
            QualifiedName::new("public", "audit_log")
        );
        assert_eq!(
            "Audit_Log".parse::<QualifiedName>().unwrap(),
            QualifiedName::new("public", "audit_log")
        );
        let odd: QualifiedName = r#""Weird-Schema"."Audit ""Log""""#.parse().unwrap();
        assert_eq!(odd, QualifiedName::new("Weird-Schema", "Audit \"Log\""));
        assert_eq!(odd.quoted(), r#""Weird-Schema"."Audit ""Log""""#);
        for bad in [
            "",
            "a.b.c",
            "audit log",
            "\"open",
            "a;drop table x",
            "1abc",
            "a.",
        ] {
            assert!(
                bad.parse::<QualifiedName>().is_err(),
                "{bad:?} must be rejected"
            );
        }
    }
}
