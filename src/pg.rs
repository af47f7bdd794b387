//! PostgreSQL plumbing shared by every subsystem: connection strings (parsed,
//! redacted), connecting with a deadline, identifier quoting, and
//! classification of server errors.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

pub mod iam;
mod tls;
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

/// How TLS is negotiated, as libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// RDS IAM authentication settings of a connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IamAuth {
    pub region: Option<String>,
}

/// A parsed connection string: the driver config plus the TLS settings
/// tokio-postgres does not understand itself.
#[derive(Clone)]
pub struct ConnSpec {
    pub config: tokio_postgres::Config,
    pub ssl_mode: SslMode,
    pub ssl_root_cert: Option<std::path::PathBuf>,
    /// `aws_iam=true`: log in with an RDS IAM auth token made per connection
    /// (`aws_region=...` overrides the region of the AWS configuration).
    pub aws_iam: Option<IamAuth>,
    /// `user@host:port/dbname`, no password: for logs, errors and metric labels.
    pub display: String,
}

impl fmt::Debug for ConnSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnSpec({})", self.display)
    }
}

impl ConnSpec {
    /// Parses a `postgres://` URL or a `key=value` string. `sslmode` and
    /// `sslrootcert` are taken out before the rest goes to tokio-postgres.
    pub fn parse(s: &str) -> Result<ConnSpec, PgError> {
        let invalid = |reason: String| PgError::InvalidConnString {
            redacted: redact(s),
            reason,
        };
        let mut ssl_mode = None;
        let mut ssl_root_cert = None;
        let mut aws_iam = None;
        let mut aws_region = None;
        let rest = if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            let mut url = url::Url::parse(s).map_err(|e| invalid(e.to_string()))?;
            let mut kept = Vec::new();
            for (k, v) in url.query_pairs() {
                match k.as_ref() {
                    "sslmode" => ssl_mode = Some(v.to_string()),
                    "sslrootcert" => ssl_root_cert = Some(v.to_string()),
                    "aws_iam" => aws_iam = Some(v.to_string()),
                    "aws_region" => aws_region = Some(v.to_string()),
                    _ => kept.push((k.to_string(), v.to_string())),
                }
            }
            if kept.is_empty() {
                url.set_query(None);
            } else {
                url.query_pairs_mut().clear().extend_pairs(kept);
            }
            url.to_string()
        } else {
            let mut kept = Vec::new();
            for pair in s.split_whitespace() {
                match pair.split_once('=') {
                    Some(("sslmode", v)) => ssl_mode = Some(v.to_string()),
                    Some(("sslrootcert", v)) => ssl_root_cert = Some(v.to_string()),
                    Some(("aws_iam", v)) => aws_iam = Some(v.to_string()),
                    Some(("aws_region", v)) => aws_region = Some(v.to_string()),
                    _ => kept.push(pair),
                }
            }
            kept.join(" ")
        };
        let mut config =
            tokio_postgres::Config::from_str(&rest).map_err(|e| invalid(e.to_string()))?;
        if config.get_hosts().is_empty() {
            return Err(invalid("no host given".into()));
        }
        let ssl_mode = match ssl_mode.as_deref() {
            None | Some("prefer") => SslMode::Prefer,
            Some("disable") => SslMode::Disable,
            Some("require") => SslMode::Require,
            Some("verify-ca") => SslMode::VerifyCa,
            Some("verify-full") => SslMode::VerifyFull,
            Some(other) => {
                return Err(invalid(format!(
                    "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                )))
            }
        };
        let aws_iam = match aws_iam.as_deref() {
            None | Some("false") | Some("0") | Some("off") => None,
            Some("true") | Some("1") | Some("on") => Some(IamAuth { region: aws_region }),
            Some(other) => return Err(invalid(format!("aws_iam={other} is not true or false"))),
        };
        if aws_iam.is_some() {
            if matches!(ssl_mode, SslMode::Disable | SslMode::Prefer) {
                return Err(invalid(
                    "aws_iam=true sends a login token, a credential: set sslmode=verify-full (or require, verify-ca)".into(),
                ));
            }
            if config.get_user().is_none() {
                return Err(invalid(
                    "aws_iam=true needs a user: the token is made for one database user".into(),
                ));
            }
        }
        if config.get_application_name().is_none() {
            config.application_name("pgsteward");
        }
        let display = describe(&config);
        Ok(ConnSpec {
            config,
            ssl_mode,
            ssl_root_cert: ssl_root_cert.map(Into::into),
            aws_iam,
            display,
        })
    }

    pub fn dbname(&self) -> &str {
        self.config.get_dbname().unwrap_or("postgres")
    }

    pub fn user(&self) -> Option<&str> {
        self.config.get_user()
    }

    /// The first host and port, as `host:port`.
    pub fn host_port(&self) -> (String, u16) {
        let host = match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        (host, port)
    }

    /// The TLS connector for this spec's `sslmode` and `sslrootcert`. Built
    /// per connection or per pool, so a rotated CA bundle is picked up.
    fn connector(&self) -> tls::Connector {
        tls::Connector::new(self.ssl_mode, self.ssl_root_cert.as_deref())
    }

    /// One connection attempt under the `sslmode` rules; the connection's I/O
    /// runs on its own task, which ends when the client is dropped.
    async fn establish(
        &self,
        config: &tokio_postgres::Config,
        connector: &tls::Connector,
        iam_token: Option<String>,
    ) -> Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
        use tokio_postgres::config::SslMode as Wire;
        let mut config = config.clone();
        if let Some(token) = iam_token {
            config.password(token);
        }
        match self.ssl_mode {
            SslMode::Disable => {
                config.ssl_mode(Wire::Disable);
                Ok(drive(config.connect(NoTls).await?))
            }
            SslMode::Prefer => {
                // tokio-postgres itself continues in plaintext when the server
                // refuses TLS; a failed handshake is retried in plaintext here,
                // as libpq does.
                config.ssl_mode(Wire::Prefer);
                match config.connect(connector.clone()).await {
                    Ok(conn) => Ok(drive(conn)),
                    Err(e) => match tls::handshake_error(&e) {
                        Some(tls_error) => {
                            tracing::warn!(target = %self.display, error = %tls_error,
                                "tls handshake failed; sslmode=prefer continues without encryption");
                            config.ssl_mode(Wire::Disable);
                            Ok(drive(config.connect(NoTls).await?))
                        }
                        None => Err(e),
                    },
                }
            }
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                config.ssl_mode(Wire::Require);
                Ok(drive(config.connect(connector.clone()).await?))
            }
        }
    }

    /// A fresh IAM token when `aws_iam` is set.
    async fn iam_token(&self) -> Result<Option<String>, PgError> {
        let Some(iam) = self.aws_iam.as_ref() else {
            return Ok(None);
        };
        let (host, port) = self.host_port();
        let user = self.user().unwrap_or_default();
        iam::auth_token(&host, port, user, iam.region.as_deref())
            .await
            .map(Some)
            .map_err(|reason| PgError::IamToken {
                target: self.display.clone(),
                reason,
            })
    }

    /// Opens one connection, bounded by `timeout`; the connection's I/O runs on
    /// its own task and ends when the client is dropped.
    pub async fn connect(&self, timeout: Duration) -> Result<Client, PgError> {
        self.connect_with(self.config.clone(), timeout).await
    }

    /// [`ConnSpec::connect`] with a driver configuration the caller adjusted
    /// (startup `options`, ...): same TLS, IAM and error handling.
    pub async fn connect_with(
        &self,
        mut config: tokio_postgres::Config,
        timeout: Duration,
    ) -> Result<Client, PgError> {
        config.connect_timeout(timeout);
        let connector = self.connector();
        if self.ssl_mode != SslMode::Disable {
            if let Some(e) = connector.setup_error() {
                return Err(PgError::TlsSetup {
                    target: self.display.clone(),
                    source: e.clone(),
                });
            }
        }
        let token = self.iam_token().await?;
        match tokio::time::timeout(timeout, self.establish(&config, &connector, token)).await {
            Ok(Ok((client, _io))) => Ok(client),
            Ok(Err(source)) => match tls::handshake_error(&source) {
                Some(tls_error) => Err(PgError::TlsVerify {
                    target: self.display.clone(),
                    mode: self.ssl_mode,
                    reason: tls_error.to_string(),
                    hint: tls::verify_hint(tls_error),
                }),
                None => Err(PgError::Connect {
                    target: self.display.clone(),
                    source,
                }),
            },
            Err(_) => Err(PgError::ConnectTimeout {
                target: self.display.clone(),
                timeout,
            }),
        }
    }

    /// A deadpool pool of connections made like [`ConnSpec::connect`]. A TLS
    /// setup problem (unreadable `sslrootcert`) surfaces on the first `get()`.
    pub fn pool(&self, max_size: usize, timeout: Duration) -> deadpool_postgres::Pool {
        let mut config = self.config.clone();
        config.connect_timeout(timeout);
        let manager = deadpool_postgres::Manager::from_connect(
            config,
            PoolConnect {
                spec: self.clone(),
                connector: self.connector(),
            },
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        match deadpool_postgres::Pool::builder(manager)
            .max_size(max_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .create_timeout(Some(timeout))
            .wait_timeout(Some(timeout))
            .build()
        {
            Ok(p) => p,
            // build() fails only when a timeout is set without a runtime, which is set above.
            Err(e) => panic!("pool configuration is inconsistent: {e}"),
        }
    }
}

/// Pool connections go through [`ConnSpec::establish`], so they follow the
/// same `sslmode` rules (and fallback) as single connections.
struct PoolConnect {
    spec: ConnSpec,
    connector: tls::Connector,
}

impl deadpool_postgres::Connect for PoolConnect {
    fn connect(
        &self,
        pg_config: &tokio_postgres::Config,
    ) -> futures::future::BoxFuture<
        '_,
        Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
    > {
        let pg_config = pg_config.clone();
        Box::pin(async move {
            // A pool cannot report a token failure in its own terms: it is
            // logged, and the login then fails with the server's refusal.
            let token = match self.spec.iam_token().await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "no rds iam token for a pool connection");
                    None
                }
            };
            self.spec
                .establish(&pg_config, &self.connector, token)
                .await
        })
    }
}

/// Spawns the connection's I/O task.
fn drive<S, T>(
    (client, conn): (Client, tokio_postgres::Connection<S, T>),
) -> (Client, tokio::task::JoinHandle<()>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // Server notices (e.g. DEBUG1 "... is implied by existing constraints"
    // when the operator sets client_min_messages) become debug logs.
    let io = tokio::spawn(async move {
        let mut conn = conn;
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = futures::StreamExt::next(&mut messages).await {
            match m {
                Ok(tokio_postgres::AsyncMessage::Notice(n)) => {
                    tracing::debug!(
                        severity = n.severity(),
                        message = n.message(),
                        "server notice"
                    )
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "connection closed");
                    break;
                }
            }
        }
    });
    (client, io)
}

fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "?".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config
        .get_user()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let db = config.get_dbname().unwrap_or("");
    format!("{user}{host}:{port}/{db}")
}

/// Replaces the password in a URL or `key=value` connection string with `***`.
pub fn redact(s: &str) -> String {
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        if let Ok(mut url) = url::Url::parse(s) {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k == "password" {
                        "***".to_string()
                    } else {
                        v.to_string()
                    };
                    (k.to_string(), v)
                })
                .collect();
            if !pairs.is_empty() {
                url.query_pairs_mut().clear().extend_pairs(pairs);
            }
            return url.to_string();
        }
        // Unparseable URL: keep the scheme and nothing that might be a secret.
        return "postgres://(unparseable)".to_string();
    }
    s.split_whitespace()
        .map(|pair| match pair.split_once('=') {
            Some(("password", _)) => "password=***".to_string(),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
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
            "postgres://steward@db/app?aws_iam=maybe&sslmode=require",
        ] {
            assert!(ConnSpec::parse(bad).is_err(), "{bad} must be refused");
        }
        assert!(
            ConnSpec::parse("host=db user=s sslmode=require aws_iam=true")
                .unwrap()
                .aws_iam
                .is_some()
        );
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
