//! Connecting under a parsed [`ConnSpec`]: one connection or a deadpool
//! pool, each with a deadline, TLS per `sslmode` (with libpq's `prefer`
//! fallback) and a fresh RDS IAM token per login.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use super::{error_chain, iam, tls, ConnSpec, PgError, SslMode};

impl ConnSpec {
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
            .map_err(|source| PgError::IamToken {
                target: self.display.clone(),
                source,
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
        let timeout = self.connect_timeout.unwrap_or(timeout);
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
                None if is_password_missing(&source) => Err(self.password_missing()),
                None if is_password_refused(&source) => Err(self.password_refused(&source)),
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
        let timeout = self.connect_timeout.unwrap_or(timeout);
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
            let result = self
                .spec
                .establish(&pg_config, &self.connector, token)
                .await;
            if let Err(e) = &result {
                if is_password_missing(e) {
                    tracing::warn!(error = %self.spec.password_missing(), "pool connection refused");
                } else if is_password_refused(e) {
                    tracing::warn!(error = %self.spec.password_refused(e), "pool connection refused");
                }
            }
            result
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
/// Whether the server refused the password given (`invalid_password`, 28P01).
pub fn is_password_refused(err: &tokio_postgres::Error) -> bool {
    err.code() == Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD)
}

/// Whether the server asked for a password the client did not have
/// (tokio-postgres reports it as a configuration error).
pub fn is_password_missing(err: &tokio_postgres::Error) -> bool {
    err.as_db_error().is_none() && error_chain(err).contains("password missing")
}
