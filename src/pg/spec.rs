//! A parsed connection string ([`ConnSpec`]): libpq's parsing and defaults,
//! the `sslmode` and the RDS IAM settings. Connecting under it is in
//! `pg::connect`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::conninfo::{self, ConnParams};
use super::libpq::{self, PasswordLookup, PgEnv};
use super::{error_chain, redact, PgError};
use serde::Serialize;

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
    /// `connect_timeout` of the string or `PGCONNECT_TIMEOUT`: overrides
    /// `database.connect_timeout` for this connection.
    pub connect_timeout: Option<Duration>,
    /// Where the password came from; `None` when there is none.
    pub password_source: Option<String>,
    /// Every place looked in for a password, when none was found.
    pub password_looked: Vec<String>,
}

impl fmt::Debug for ConnSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnSpec({})", self.display)
    }
}

impl ConnSpec {
    /// Parses a `postgres://` URL or a `key=value` string, filling what it
    /// leaves out the way libpq does (see [`libpq`]) from this process's
    /// environment. `sslmode`, `sslrootcert`, `passfile`, `connect_timeout`
    /// and the `aws_*` keys are taken out before the rest goes to tokio-postgres.
    pub fn parse(s: &str) -> Result<ConnSpec, PgError> {
        ConnSpec::parse_with(s, &PgEnv::from_process())
    }

    /// [`ConnSpec::parse`] with the libpq environment given.
    pub fn parse_with(s: &str, env: &PgEnv) -> Result<ConnSpec, PgError> {
        let invalid = |reason: String| PgError::InvalidConnString {
            redacted: redact(s),
            reason,
        };
        let mut params = ConnParams::parse(s).map_err(|e| invalid(e.to_string()))?;
        libpq::apply_env_defaults(&mut params, env);
        let ssl_mode = params.take("sslmode");
        let ssl_root_cert = params.take("sslrootcert");
        let aws_iam = params.take("aws_iam");
        let aws_region = params.take("aws_region");
        let passfile = params.take("passfile");
        let fallback_app = params.take("fallback_application_name");
        let connect_timeout = match params.take("connect_timeout") {
            None => None,
            Some(t) => match t.trim().parse::<i64>() {
                // libpq: zero or negative waits forever, and less than 2 s is 2 s.
                Ok(n) if n <= 0 => None,
                Ok(n) => Some(Duration::from_secs(n.max(2) as u64)),
                Err(_) => {
                    return Err(invalid(format!(
                        "connect_timeout={t} is not a number of seconds"
                    )))
                }
            },
        };
        if params.get("host").is_none() && params.get("hostaddr").is_none() {
            return Err(invalid(
                "no host given (set host in the connection string, or PGHOST)".into(),
            ));
        }
        if params.get("user").is_none() {
            match env.os_user_name() {
                Some(u) => params.set("user", u),
                None => {
                    return Err(invalid(
                        "no user given (set user in the connection string, or PGUSER)".into(),
                    ))
                }
            }
        }
        let user = params.get("user").unwrap_or_default().to_string();
        if params.get("dbname").is_none() {
            params.set("dbname", user.clone());
        }
        if params
            .get("dbname")
            .is_some_and(|d| d.contains('=') || conninfo::is_url(d))
        {
            return Err(invalid(
                "dbname holds a connection string; give its parameters directly".into(),
            ));
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
        if aws_iam.is_some() && !matches!(ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull) {
            return Err(invalid(format!(
                "aws_iam=true sends a login token, a credential, which sslmode={ssl_mode} would hand to \
                 anyone on the path: set sslmode=verify-full and sslrootcert=/path/to/global-bundle.pem \
                 (AWS's RDS CA bundle)"
            )));
        }
        let explicit = params.take("password");
        let (password_source, password_looked) = if aws_iam.is_some() {
            (Some("an RDS IAM auth token".to_string()), Vec::new())
        } else {
            let first = |key: &str| {
                params
                    .get(key)
                    .and_then(|v| v.split(',').next())
                    .unwrap_or_default()
                    .to_string()
            };
            let host = match first("host") {
                h if h.is_empty() => first("hostaddr"),
                h => h,
            };
            match libpq::find_password(
                explicit.as_deref(),
                passfile.as_deref(),
                &host,
                &first("port"),
                params.get("dbname").unwrap_or_default(),
                &user,
                env,
            ) {
                PasswordLookup::Found { password, source } => {
                    params.set("password", password);
                    (Some(source), Vec::new())
                }
                PasswordLookup::NotFound { looked } => (None, looked),
            }
        };
        if params.get("application_name").is_none() {
            params.set(
                "application_name",
                fallback_app.unwrap_or_else(|| "pgsteward".into()),
            );
        }
        let config = tokio_postgres::Config::from_str(&params.to_key_value())
            .map_err(|e| invalid(error_chain(&e)))?;
        let display = describe(&config);
        Ok(ConnSpec {
            config,
            ssl_mode,
            ssl_root_cert: ssl_root_cert.map(Into::into),
            aws_iam,
            display,
            connect_timeout,
            password_source,
            password_looked,
        })
    }

    /// The password this connection logs in with, wherever it came from
    /// (for handing to a child process through a password file, never its arguments).
    pub fn password(&self) -> Option<&str> {
        self.config
            .get_password()
            .and_then(|p| std::str::from_utf8(p).ok())
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

    /// The error for a server that asked for a password this spec does not have.
    pub fn password_missing(&self) -> PgError {
        PgError::PasswordMissing {
            target: self.display.clone(),
            looked: self.password_looked.join("; "),
        }
    }

    /// The server refused the password: where it came from (the connection
    /// string, `PGPASSWORD`, which password file line), never the password.
    pub fn password_refused(&self, err: &tokio_postgres::Error) -> PgError {
        PgError::PasswordRefused {
            target: self.display.clone(),
            reason: super::error::server_message(err),
            password_source: self
                .password_source
                .clone()
                .unwrap_or_else(|| "nowhere pgsteward knows of".into()),
        }
    }
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
