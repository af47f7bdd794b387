//! After the write pause: `verify` (a write through PgBouncer lands on the
//! new primary; `database.replicas` follow it where the provider allows)
//! and `retire_old` (old readers, then the old primary, after `retire_after`).

use std::time::Duration;

use super::error::q;
use super::error::UpgradeError;
use super::record::{Output, Step};
use super::runner::Saga;
use super::sql::{verify_through_pooler, IN_RECOVERY, SESSION_EXISTS};
use crate::config::{ConnString, CutoverKind};
use crate::provider::Follow;

impl Saga {
    /// A write through the pooler lands on the new primary; then the other
    /// replicas are told to follow it.
    pub(crate) async fn verify(&mut self) -> Result<Output, UpgradeError> {
        let endpoint = self.new_endpoint().await?;
        let mut notes = Vec::new();
        if self.cfg.cutover.kind == CutoverKind::Pgbouncer {
            notes.push(self.verify_through_pooler(&endpoint).await?);
        } else {
            let writable: bool = !self
                .new_client()
                .await?
                .query_one(IN_RECOVERY, &[])
                .await
                .map_err(|e| q(&endpoint, e))?
                .get::<_, bool>(0);
            if !writable {
                return Err(UpgradeError::Step {
                    step: Step::Verify,
                    detail: "the new server is still in recovery".into(),
                });
            }
        }
        let repointed = self.repoint_replicas(&endpoint).await?;
        notes.push(format!("{repointed} replica(s) follow the new primary"));
        Ok(Output::note(notes.join("; ")))
    }

    /// A write through every cut-over entry of every PgBouncer instance
    /// (every address the configured names resolve to now)
    /// (`cutover.database` and every other entry that reached the old
    /// primary) lands on the new primary, as the steward.
    pub(crate) async fn verify_through_pooler(
        &mut self,
        endpoint: &ConnString,
    ) -> Result<String, UpgradeError> {
        let steward = self.cfg.database.primary.spec()?;
        // Membership read again: an instance that appeared since RESUME is
        // verified too (one still reaching the old server fails the step).
        let added = self.poolers.refresh_members().await?;
        if !added.is_empty() {
            tracing::info!(instances = ?added, "PgBouncer instances appeared since RESUME; verified too");
        }
        self.poolers.discover().await?;
        let mut verified = Vec::new();
        for (i, (admin, dbs)) in self.poolers.targets().into_iter().enumerate() {
            for db in dbs {
                let Some(url) = self.poolers.client_url_of(i, &db, &steward) else {
                    return Err(UpgradeError::Step {
                        step: Step::Verify,
                        detail: format!("no client address for pgbouncer {admin}"),
                    });
                };
                self.verify_entry(&url, endpoint, &format!("pgbouncer {admin} database {db}"))
                    .await?;
                verified.push(db);
            }
        }
        if verified.is_empty() {
            return Err(UpgradeError::Step {
                step: Step::Verify,
                detail: "no pooler endpoint".into(),
            });
        }
        let servers = self.poolers.servers().await.unwrap_or_default();
        Ok(format!(
            "writes through {} pooler entries ({}) landed on the new primary; pooler servers {servers:?}",
            verified.len(),
            verified.join(", ")
        ))
    }

    /// One entry (`what`, for the error), retried for up to 30 s (PgBouncer
    /// reconnects after RELOAD).
    async fn verify_entry(
        &mut self,
        url: &ConnString,
        endpoint: &ConnString,
        what: &str,
    ) -> Result<(), UpgradeError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut last_err = String::new();
        while tokio::time::Instant::now() < deadline {
            let limit = self.query_limit();
            let once = limit.wrap(
                "a write through the pooler",
                self.verify_once(url, endpoint),
            );
            match once.await {
                Ok(true) => return Ok(()),
                Ok(false) => last_err = "the pooler's session is not on the new primary".into(),
                Err(e) => last_err = e.to_string(),
            }
            self.tick(Duration::from_millis(100)).await?;
        }
        Err(UpgradeError::Step {
            step: Step::Verify,
            detail: format!("{what}: {last_err}"),
        })
    }

    async fn verify_once(
        &mut self,
        url: &ConnString,
        endpoint: &ConnString,
    ) -> Result<bool, UpgradeError> {
        let client =
            crate::pooler::pooled_session(url, self.cfg.database.connect_timeout.0).await?;
        let sql = verify_through_pooler(crate::pooler::query_timeout(&self.cfg).as_millis());
        let msgs = client.simple_query(&sql).await.map_err(|e| q(url, e))?;
        let Some(row) = msgs.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        }) else {
            return Ok(false);
        };
        let pid: i32 = row.get(0).and_then(|p| p.parse().ok()).unwrap_or(0);
        let started = row.get(1).unwrap_or_default().to_string();
        let writable = row.get(2) == Some("f") && row.get(3) == Some("off");
        if !writable {
            return Ok(false);
        }
        let n: i64 = self
            .new_client()
            .await?
            .query_one(SESSION_EXISTS, &[&pid, &started])
            .await
            .map_err(|e| q(endpoint, e))?
            .get(0);
        Ok(n == 1)
    }

    /// `database.replicas` follow the new primary where the provider lets
    /// SQL do it (local: `primary_conninfo`); RDS replicas are never changed
    /// over SQL (RDS refuses ALTER SYSTEM): they are replaced by new readers.
    async fn repoint_replicas(&mut self, endpoint: &ConnString) -> Result<usize, UpgradeError> {
        let outcomes = self
            .provider
            .follow_new_primary(&self.cfg.database.replicas, endpoint)
            .await;
        let mut n = 0;
        for (replica, outcome) in outcomes {
            match outcome {
                Follow::Repointed => n += 1,
                Follow::NotAReplica | Follow::Managed => {}
                Follow::Unreachable(e) => self.progress.say(
                    Step::Verify,
                    &format!("replica {replica} unreachable, not repointed: {e}"),
                ),
            }
        }
        Ok(n)
    }

    pub(crate) async fn retire_old(&mut self) -> Result<Output, UpgradeError> {
        let wait = self.cfg.upgrade.retire_after.0;
        if !wait.is_zero() {
            self.flush()?;
            self.progress.say(
                Step::RetireOld,
                &format!(
                    "waiting {} (upgrade.retire_after)",
                    crate::output::human_duration(wait)
                ),
            );
            // Measured from the end of verify, so a resume does not wait the whole grace again.
            let since = self
                .record()
                .step(Step::Verify)
                .finished_at
                .map(|t| (chrono::Utc::now() - t).to_std().unwrap_or_default())
                .unwrap_or_default();
            if since < wait {
                self.tick(wait - since).await?;
            }
        }
        self.old = None;
        let source = self.source()?;
        if let Some(g) = self.guard.as_mut() {
            // The old primary goes away now; its row already names the new one.
            g.release(&self.cfg.database.primary.to_string());
        }
        // Readers before their primary: deleting a primary that still feeds
        // replicas would turn them into writable instances.
        let upgrade_id = self.record().id.clone();
        let mut notes = Vec::new();
        for r in &source.readers {
            let note = self.provider.retire_reader(&source, &upgrade_id, r).await?;
            self.progress.say(Step::RetireOld, &note);
            notes.push(note);
        }
        self.provider.retire_old(&source).await?;
        notes.push(format!("{} retired", source.id));
        Ok(Output::note(notes.join("; ")))
    }
}
