//! Leadership: a session-level advisory lock on the primary, held on a
//! connection of its own for as long as this instance leads.
//!
//! Invariant: `is_leader()` is true only while the session that took the lock
//! was alive at the last refresh. When the session dies (the primary restarts,
//! the network drops, the process is killed) the server releases the lock and
//! another instance takes it at its next refresh, which every scheduled job
//! tick performs: handover within one tick.
//!
//! The lock guards *who schedules* DDL; the partition pass additionally takes
//! per-table locks, so a leader that lost its session mid-pass and a new one
//! cannot run DDL on the same table at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::Client;

use crate::metrics::Metrics;
use crate::pg::ConnSpec;

/// The leader lock key: "pgstewar" in ASCII, distinct from the partition
/// pass's per-table keys (which use the two-int form with class 0x70677374).
pub const LEADER_LOCK_KEY: i64 = 0x7067_7374_6577_6172;

use super::sql::{
    ALIVE as ALIVE_SQL, TRY_LEADER_LOCK as TRY_LOCK_SQL, UNLOCK_LEADER as UNLOCK_SQL,
};

/// Why the lock could not be tried; logged, and this instance follows.
#[derive(Debug, thiserror::Error)]
enum LockError {
    #[error(transparent)]
    Connect(#[from] crate::pg::PgError),
    #[error("{}", crate::pg::server_message(.0))]
    Query(#[from] tokio_postgres::Error),
}

pub struct Leader {
    spec: ConnSpec,
    timeout: Duration,
    session: Mutex<Option<Client>>,
    leader: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Leader {
    pub fn new(mut spec: ConnSpec, timeout: Duration, metrics: Arc<Metrics>) -> Leader {
        // A half-open TCP connection would otherwise keep the server-side
        // session (and the lock) for the kernel's two-hour default.
        spec.config.keepalives(true);
        spec.config.keepalives_idle(Duration::from_secs(15));
        spec.config.application_name("pgsteward-leader");
        Leader {
            spec,
            timeout,
            session: Mutex::new(None),
            leader: AtomicBool::new(false),
            metrics,
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    /// Confirms a held lock is still held, or tries to take it. Never fails:
    /// any error means "not leader now", retried at the next tick.
    pub async fn refresh(&self) -> bool {
        let mut session = self.session.lock().await;
        if let Some(client) = session.as_ref() {
            let alive = !client.is_closed()
                && matches!(
                    tokio::time::timeout(self.timeout, client.simple_query(ALIVE_SQL)).await,
                    Ok(Ok(_))
                );
            if alive {
                self.set(true);
                return true;
            }
            tracing::warn!(primary = %self.spec.display, "leader session lost; leadership released");
            *session = None;
            self.set(false);
        }
        match tokio::time::timeout(self.timeout, self.try_acquire()).await {
            Ok(Ok(Some(client))) => {
                tracing::info!(primary = %self.spec.display, "became leader");
                *session = Some(client);
                self.set(true);
                true
            }
            Ok(Ok(None)) => {
                self.set(false);
                false
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "leader lock not taken");
                self.set(false);
                false
            }
            Err(_) => {
                self.set(false);
                false
            }
        }
    }

    async fn try_acquire(&self) -> Result<Option<Client>, LockError> {
        let client = self.spec.connect(self.timeout).await?;
        let row = client.query_one(TRY_LOCK_SQL, &[&LEADER_LOCK_KEY]).await?;
        let got: bool = row.try_get(0)?;
        // Not taken: the client drops here and its session ends.
        Ok(got.then_some(client))
    }

    /// Gives the lock back (shutdown). Closing the session would release it
    /// too; unlocking first makes the handover immediate and visible in logs.
    pub async fn release(&self) {
        let mut session = self.session.lock().await;
        if let Some(client) = session.take() {
            let r = tokio::time::timeout(
                self.timeout,
                client.query_one(UNLOCK_SQL, &[&LEADER_LOCK_KEY]),
            )
            .await;
            match r {
                Ok(Ok(_)) => tracing::info!("leader lock released"),
                _ => tracing::warn!("leader lock not released cleanly; the session close frees it"),
            }
        }
        self.set(false);
    }

    fn set(&self, leader: bool) {
        self.leader.store(leader, Ordering::SeqCst);
        self.metrics.set_leader(leader);
    }
}
