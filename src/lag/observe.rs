//! Reading the primary and the replicas. Every query runs on a pooled
//! connection under `lag.query_timeout` (client-side deadline plus a server-side
//! `statement_timeout`), so a hung node costs one timeout, never a hung check.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio_postgres::Row;
use tokio_util::sync::CancellationToken;

use crate::config::{ConnString, DatabaseConfig, LagConfig};
use crate::pg::{ConnSpec, PgError};

use super::sql;

/// How long a streaming replica that is a little behind is watched to see it
/// reach the primary's LSN; see `evaluate` rule 5.
const SETTLE_WINDOW: Duration = Duration::from_secs(1);
const SETTLE_POLL: Duration = Duration::from_millis(50);

/// Why a node could not be read. In the report it is a state of that node
/// (its text), never an error of the check; only a missing password is the
/// operator's to fix ([`ObserveError::password_missing`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ObserveError {
    #[error("cannot connect to {node}: {message}")]
    Connect { node: String, message: String },
    #[error("cannot connect to {target}: the server asks for a password and none was found; looked in: {looked}")]
    PasswordMissing { target: String, looked: String },
    #[error("query failed on {node}: {message}")]
    Query { node: String, message: String },
    #[error("unexpected result column {column}: {message}")]
    Column { column: String, message: String },
    #[error(transparent)]
    Lsn(#[from] LsnError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl ObserveError {
    /// The configuration error inside: a node the server asks a password for
    /// and none was configured (exit 2, naming where it looked).
    pub fn password_missing(&self) -> Option<PgError> {
        match self {
            ObserveError::PasswordMissing { target, looked } => Some(PgError::PasswordMissing {
                target: target.clone(),
                looked: looked.clone(),
            }),
            _ => None,
        }
    }
}

/// A WAL position (`pg_lsn`), as the 64-bit byte offset it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lsn(pub u64);

/// A text that is not a `pg_lsn`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LsnError {
    #[error("{0:?} is not an LSN like 0/3000148")]
    NoSlash(String),
    #[error("{0:?}: bad high half")]
    High(String),
    #[error("{0:?}: bad low half")]
    Low(String),
}

impl FromStr for Lsn {
    type Err = LsnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (hi, lo) = s
            .split_once('/')
            .ok_or_else(|| LsnError::NoSlash(s.to_string()))?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| LsnError::High(s.to_string()))?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| LsnError::Low(s.to_string()))?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrimaryObservation {
    pub in_recovery: bool,
    /// None when the node is in recovery (it is not a primary).
    pub current_lsn: Option<Lsn>,
    pub observed_at: DateTime<Utc>,
    pub connections: i64,
    pub max_connections: i64,
    /// `pg_stat_replication`, one row per connected replica.
    pub senders: Vec<SenderObservation>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SenderObservation {
    pub application_name: String,
    pub client_addr: Option<String>,
    pub state: Option<String>,
    pub sent_lsn: Option<Lsn>,
    pub write_lsn: Option<Lsn>,
    pub flush_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    pub write_lag_seconds: Option<f64>,
    pub flush_lag_seconds: Option<f64>,
    pub replay_lag_seconds: Option<f64>,
    pub sync_state: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaObservation {
    pub in_recovery: bool,
    pub receive_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    pub replay_paused: bool,
    /// Commit time (primary's clock) of the last replayed transaction.
    pub last_replay_at: Option<DateTime<Utc>>,
    /// `pg_stat_wal_receiver.status`; None when there is no WAL receiver.
    pub receiver_status: Option<String>,
    pub last_msg_receipt_at: Option<DateTime<Utc>>,
    /// The `application_name` its WAL receiver reports to the primary, used to
    /// find its row in `pg_stat_replication` (matched only when unambiguous).
    #[serde(default)]
    pub sender_name: Option<String>,
    /// The replica's clock when it was read.
    pub observed_at: DateTime<Utc>,
    pub connections: i64,
    pub max_connections: i64,
    /// When the replica was streaming, replaying and behind the primary's LSN:
    /// seconds it took to reach that LSN while we watched (None: it did not
    /// within the settle window, or was not watched).
    #[serde(default)]
    pub settled_after_seconds: Option<f64>,
}

/// One node to read: its redacted name (metric label, report key) and pool.
pub struct Node {
    pub name: String,
    pool: deadpool_postgres::Pool,
    /// Kept to say where a missing password was looked for.
    spec: ConnSpec,
}

impl Node {
    /// A pooled session on this node, for the service's other reads of it
    /// (the upgrade guard row); its statements carry the lag query timeout.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, ObserveError> {
        self.pool.get().await.map_err(|e| pool_error(self, e))
    }
}

/// Pools for the primary and every replica, made once per process (the
/// service reuses them on every check).
pub struct LagPools {
    pub primary: Node,
    pub replicas: Vec<Node>,
    query_timeout: Duration,
}

impl LagPools {
    pub fn new(database: &DatabaseConfig, lag: &LagConfig) -> Result<LagPools, PgError> {
        let query_timeout = lag.query_timeout.0;
        let connect_timeout = database.connect_timeout.0.min(query_timeout);
        let node = |c: &ConnString| -> Result<Node, PgError> {
            let mut spec = c.spec()?;
            with_statement_timeout(&mut spec, query_timeout);
            Ok(Node {
                name: spec.display.clone(),
                pool: spec.pool(2, connect_timeout),
                spec,
            })
        };
        Ok(LagPools {
            primary: node(&database.primary)?,
            replicas: database
                .replicas
                .iter()
                .map(node)
                .collect::<Result<_, _>>()?,
            query_timeout,
        })
    }

    pub async fn observe_primary(&self) -> Result<PrimaryObservation, ObserveError> {
        let node = &self.primary;
        self.bounded(async {
            let client = node.pool.get().await.map_err(|e| pool_error(node, e))?;
            let row = client
                .query_one(sql::PRIMARY_WAL_POSITION, &[])
                .await
                .map_err(|e| query_error(&node.name, e))?;
            let senders = if row.try_get::<_, bool>("in_recovery").unwrap_or(true) {
                Vec::new()
            } else {
                client
                    .query(sql::WAL_SENDERS, &[])
                    .await
                    .map_err(|e| query_error(&node.name, e))?
                    .iter()
                    .map(sender_from_row)
                    .collect::<Result<_, _>>()?
            };
            primary_from_row(&row, senders)
        })
        .await
    }

    /// Reads one replica. When it is streaming and a little behind `target`
    /// (the primary's LSN), it is watched for up to [`SETTLE_WINDOW`] to tell
    /// "in flight" from "late"; `cancel` cuts that short.
    pub async fn observe_replica(
        &self,
        node: &Node,
        target: Option<Lsn>,
        cancel: &CancellationToken,
    ) -> Result<ReplicaObservation, ObserveError> {
        let mut obs = self
            .bounded(async {
                let client = node.pool.get().await.map_err(|e| pool_error(node, e))?;
                let row = client
                    .query_one(sql::REPLICA_STATE, &[])
                    .await
                    .map_err(|e| query_error(&node.name, e))?;
                replica_from_row(&row)
            })
            .await?;
        let Some(target) = target else {
            return Ok(obs);
        };
        let behind = obs.replay_lsn.map_or(true, |r| r < target);
        let replaying = obs.in_recovery
            && !obs.replay_paused
            && obs.receiver_status.as_deref() == Some("streaming");
        if !(behind && replaying) {
            return Ok(obs);
        }
        let started = tokio::time::Instant::now();
        let deadline = started + SETTLE_WINDOW;
        while tokio::time::Instant::now() < deadline {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(SETTLE_POLL) => {}
            }
            let lsn = self
                .bounded(async {
                    let client = node.pool.get().await.map_err(|e| pool_error(node, e))?;
                    let row = client
                        .query_one(sql::REPLAY_LSN, &[])
                        .await
                        .map_err(|e| query_error(&node.name, e))?;
                    opt_lsn(&row, "replay_lsn")
                })
                .await;
            match lsn {
                Ok(Some(lsn)) if lsn >= target => {
                    obs.settled_after_seconds = Some(started.elapsed().as_secs_f64());
                    break;
                }
                Ok(_) => {}
                // The first read succeeded; a failing re-read only means we stop watching.
                Err(_) => break,
            }
        }
        Ok(obs)
    }

    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, ObserveError>>,
    ) -> Result<T, ObserveError> {
        match tokio::time::timeout(self.query_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(ObserveError::Timeout(self.query_timeout)),
        }
    }
}

/// Adds `-c statement_timeout=…` to the connection's options, keeping any given.
fn with_statement_timeout(spec: &mut ConnSpec, timeout: Duration) {
    let ms = timeout.as_millis().max(1);
    let opt = format!("-c statement_timeout={ms}");
    let options = match spec.config.get_options() {
        Some(existing) if !existing.is_empty() => format!("{existing} {opt}"),
        _ => opt,
    };
    spec.config.options(&options);
}

fn pool_error(node: &Node, e: deadpool_postgres::PoolError) -> ObserveError {
    let message = match e {
        // Where the password was looked for is the spec's to say.
        deadpool_postgres::PoolError::Backend(e) if crate::pg::is_password_missing(&e) => {
            match node.spec.password_missing() {
                PgError::PasswordMissing { target, looked } => {
                    return ObserveError::PasswordMissing { target, looked }
                }
                other => other.to_string(),
            }
        }
        deadpool_postgres::PoolError::Backend(e) => crate::pg::server_message(&e),
        deadpool_postgres::PoolError::Timeout(_) => "timed out".to_string(),
        other => other.to_string(),
    };
    ObserveError::Connect {
        node: node.name.clone(),
        message,
    }
}

fn query_error(node: &str, e: tokio_postgres::Error) -> ObserveError {
    ObserveError::Query {
        node: node.to_string(),
        message: crate::pg::server_message(&e),
    }
}

fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    name: &str,
) -> Result<T, ObserveError> {
    row.try_get(name).map_err(|e| ObserveError::Column {
        column: name.to_string(),
        message: e.to_string(),
    })
}

fn opt_lsn(row: &Row, name: &str) -> Result<Option<Lsn>, ObserveError> {
    Ok(col::<Option<String>>(row, name)?
        .map(|s| s.parse())
        .transpose()?)
}

fn primary_from_row(
    row: &Row,
    senders: Vec<SenderObservation>,
) -> Result<PrimaryObservation, ObserveError> {
    Ok(PrimaryObservation {
        in_recovery: col(row, "in_recovery")?,
        current_lsn: opt_lsn(row, "current_lsn")?,
        observed_at: col(row, "observed_at")?,
        connections: col(row, "connections")?,
        max_connections: col(row, "max_connections")?,
        senders,
    })
}

fn sender_from_row(row: &Row) -> Result<SenderObservation, ObserveError> {
    Ok(SenderObservation {
        application_name: col(row, "application_name")?,
        client_addr: col(row, "client_addr")?,
        state: col(row, "state")?,
        sent_lsn: opt_lsn(row, "sent_lsn")?,
        write_lsn: opt_lsn(row, "write_lsn")?,
        flush_lsn: opt_lsn(row, "flush_lsn")?,
        replay_lsn: opt_lsn(row, "replay_lsn")?,
        write_lag_seconds: col(row, "write_lag_seconds")?,
        flush_lag_seconds: col(row, "flush_lag_seconds")?,
        replay_lag_seconds: col(row, "replay_lag_seconds")?,
        sync_state: col(row, "sync_state")?,
    })
}

fn replica_from_row(row: &Row) -> Result<ReplicaObservation, ObserveError> {
    Ok(ReplicaObservation {
        in_recovery: col(row, "in_recovery")?,
        receive_lsn: opt_lsn(row, "receive_lsn")?,
        replay_lsn: opt_lsn(row, "replay_lsn")?,
        replay_paused: col(row, "replay_paused")?,
        last_replay_at: col(row, "last_replay_at")?,
        receiver_status: col(row, "receiver_status")?,
        last_msg_receipt_at: col(row, "last_msg_receipt_at")?,
        sender_name: Some(walreceiver_name(
            col::<Option<String>>(row, "receiver_conninfo")?.as_deref(),
            col::<Option<String>>(row, "cluster_name")?.as_deref(),
        )),
        observed_at: col(row, "observed_at")?,
        connections: col(row, "connections")?,
        max_connections: col(row, "max_connections")?,
        settled_after_seconds: None,
    })
}

/// The name a WAL receiver gives the primary: `application_name` from its
/// conninfo, else `cluster_name`, else PostgreSQL's fallback `walreceiver`.
pub fn walreceiver_name(conninfo: Option<&str>, cluster_name: Option<&str>) -> String {
    let from_conninfo = conninfo.and_then(|c| {
        c.split_whitespace()
            .find_map(|kv| kv.strip_prefix("application_name="))
            .map(|v| v.trim_matches('\'').to_string())
    });
    from_conninfo
        .or_else(|| cluster_name.filter(|c| !c.is_empty()).map(str::to_string))
        .unwrap_or_else(|| "walreceiver".to_string())
}

#[cfg(test)]
mod tests {
    use super::{walreceiver_name, Lsn};

    #[test]
    fn walreceiver_names() {
        let ci = "user=postgres dbname=replication host=127.0.0.1 port=5432 application_name=replica1 sslmode=prefer";
        assert_eq!(walreceiver_name(Some(ci), Some("main")), "replica1");
        assert_eq!(walreceiver_name(Some("host=x"), Some("main")), "main");
        assert_eq!(walreceiver_name(None, Some("")), "walreceiver");
    }

    #[test]
    fn lsn_round_trips() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn(0));
        assert!("zz".parse::<Lsn>().is_err());
        assert!("0/G".parse::<Lsn>().is_err());
    }
}
