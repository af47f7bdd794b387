//! The body of each step. Every body observes before it acts and does
//! nothing when its effect is already there, because a step found `running`
//! after a crash runs again (runner.rs).
//!
//! The prechecks' observations are in `observe`, verify and retire_old in
//! `finish`, the readers and the identifier swap in `swap`.

use std::time::Duration;

use tokio_postgres::Client;

use super::cutover::{ready, Readiness};
use super::error::UpgradeError;
use super::fence::Fence;
use super::observe::prechecks;
use super::record::{Output, Step};
use super::runner::Saga;
use super::session::connect;
use super::sql::{BACKEND_PID, CURRENT_LSN, IN_RECOVERY, REPLAYED_ENOUGH};
use super::window::{remaining, Limit};
use crate::config::{ConnString, CutoverKind};
use crate::pooler::query_timeout;
use crate::provider::{replica_id, ServerState};

impl Saga {
    /// Sleeps `d` unless cancelled first.
    pub(crate) async fn tick(&self, d: Duration) -> Result<(), UpgradeError> {
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = self.cancel.cancelled() => Err(UpgradeError::Cancelled),
        }
    }

    pub(crate) fn source(&self) -> Result<crate::provider::SourceFacts, UpgradeError> {
        self.record()
            .source()
            .cloned()
            .ok_or_else(|| UpgradeError::MissingFact {
                journal: self.journal.path().to_path_buf(),
                what: "the source",
                step: Step::Precheck,
            })
    }

    pub(crate) fn replica(&self) -> Result<String, UpgradeError> {
        let source = self.source()?;
        Ok(replica_id(&source.id, &self.record().id))
    }

    /// The new server's SQL endpoint, from the provider (never from the journal,
    /// which holds no passwords).
    pub(crate) async fn new_endpoint(&mut self) -> Result<ConnString, UpgradeError> {
        if let Some(e) = &self.new_endpoint {
            return Ok(e.clone());
        }
        let id = self.replica()?;
        let info = self.provider.describe(&id).await?;
        let endpoint = info.endpoint.ok_or_else(|| UpgradeError::Step {
            step: Step::WaitAvailable,
            detail: format!("{id} has no endpoint yet ({})", info.state),
        })?;
        // Entries already pointing there (a run that crashed after repoint)
        // are cut over too: their RESUME and verify are this upgrade's.
        let (host, port) = endpoint.spec()?.host_port();
        self.poolers.add_server(&host, port);
        self.new_endpoint = Some(endpoint.clone());
        Ok(endpoint)
    }

    /// The deadline of the next query: `query_timeout` from now, or the
    /// pause deadline inside the pause when that comes first.
    pub(crate) fn query_limit(&self) -> Limit {
        self.window.query_limit(query_timeout(&self.cfg))
    }

    /// Our sessions on the old primary the fence must spare.
    pub(crate) fn own_pids(&self) -> Vec<i32> {
        let mut v = self
            .guard
            .as_ref()
            .map(|g| g.pids_on(&self.cfg.database.primary.to_string()))
            .unwrap_or_default();
        v.extend(self.old_pid);
        v
    }

    /// The session on the old primary (the fence spares it), opened when
    /// there is none or it closed.
    pub(crate) async fn old_client(&mut self) -> Result<&Client, UpgradeError> {
        Ok(self.old_and_fence().await?.0)
    }

    /// [`Saga::old_client`] and the fence, borrowed apart: the fence's
    /// methods that change its state act on that session.
    pub(crate) async fn old_and_fence(&mut self) -> Result<(&Client, &mut Fence), UpgradeError> {
        let client = match self.old.take() {
            Some(c) if !c.is_closed() => c,
            _ => {
                let limit = self.query_limit();
                let primary = self.cfg.database.primary.clone();
                let client = limit
                    .wrap(
                        "a connection to the old primary",
                        connect(&primary, &self.cfg),
                    )
                    .await?;
                let pid: i32 = limit
                    .run(&primary, client.query_one(BACKEND_PID, &[]))
                    .await?
                    .get(0);
                self.old_pid = Some(pid);
                client
            }
        };
        Ok((self.old.insert(client), &mut self.fence))
    }

    /// The session on the new server, opened when there is none or it closed.
    pub(crate) async fn new_client(&mut self) -> Result<&Client, UpgradeError> {
        let client = match self.new.take() {
            Some(c) if !c.is_closed() => c,
            _ => {
                let endpoint = self.new_endpoint().await?;
                connect(&endpoint, &self.cfg).await?
            }
        };
        Ok(self.new.insert(client))
    }

    pub(crate) async fn precheck_step(&mut self) -> Result<Output, UpgradeError> {
        let class = self.record().target_class.clone();
        let id = self.record().id.clone();
        let pre = prechecks(
            &self.cfg,
            self.provider.as_ref(),
            &mut self.poolers,
            &class,
            Some(&id),
        )
        .await?;
        let failed = pre.failures();
        if !failed.is_empty() {
            return Err(UpgradeError::PrecheckFailed(failed));
        }
        let mut source = pre.source;
        // The new readers' names depend on this upgrade: fixed here, journaled.
        for r in &mut source.readers {
            r.new_id = self.provider.reader_id(&r.id, &id);
        }
        Ok(Output {
            source: Some(source),
            ..Output::default()
        })
    }

    pub(crate) async fn create_replica(&mut self) -> Result<Output, UpgradeError> {
        let source = self.source()?;
        let id = replica_id(&source.id, &self.record().id);
        let class = self.record().target_class.clone();
        let seen = self.provider.describe(&id).await?;
        let info = match seen.state {
            ServerState::Creating | ServerState::Available => {
                self.progress
                    .say(Step::CreateReplica, &format!("adopting existing {id}"));
                seen
            }
            ServerState::Deleting => {
                return Err(UpgradeError::Step {
                    step: Step::CreateReplica,
                    detail: format!("{id} is being deleted; wait and resume"),
                })
            }
            ServerState::Missing | ServerState::Failed(_) => {
                self.progress.say(
                    Step::CreateReplica,
                    &format!("creating {id} on class {class}"),
                );
                self.provider
                    .create_replica(&source, &self.record().id, &class)
                    .await?
            }
        };
        Ok(Output {
            replica_id: Some(info.id.clone()),
            replica_endpoint: info.endpoint.as_ref().map(|e| e.without_password()),
            ..Output::default()
        })
    }

    pub(crate) async fn wait_available(&mut self) -> Result<Output, UpgradeError> {
        let id = self.replica()?;
        let deadline = tokio::time::Instant::now() + self.cfg.upgrade.step_timeout.0;
        loop {
            let limit = self.query_limit();
            let info = limit
                .wrap("the provider's description", self.provider.describe(&id))
                .await?;
            match info.state {
                ServerState::Available => break,
                ServerState::Creating => {}
                other => {
                    return Err(UpgradeError::Step {
                        step: Step::WaitAvailable,
                        detail: format!("{id} is {other}"),
                    })
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(UpgradeError::Timeout {
                    what: format!("{id} available"),
                    after: self.cfg.upgrade.step_timeout.0,
                });
            }
            self.tick(Duration::from_secs(2)).await?;
        }
        self.new_endpoint = None;
        let endpoint = self.new_endpoint().await?;
        let limit = self.query_limit();
        let client = self.new_client().await?;
        let in_recovery: bool = limit
            .run(&endpoint, client.query_one(IN_RECOVERY, &[]))
            .await?
            .get(0);
        if !in_recovery {
            // Before promote the new server must be a replica: a writable one now
            // would be a second primary, and commits made on it would be lost.
            return Err(UpgradeError::Step {
                step: Step::WaitAvailable,
                detail: format!("{id} is not in recovery before promote; delete it (`upgrade abort`) and start again"),
            });
        }
        Ok(Output::note(endpoint.without_password()))
    }

    pub(crate) async fn wait_catchup(&mut self) -> Result<Output, UpgradeError> {
        let max = self.cfg.upgrade.catchup_max_bytes.0;
        let deadline = tokio::time::Instant::now() + self.cfg.upgrade.step_timeout.0;
        let mut history: Vec<u64> = Vec::new();
        let mut last_print = std::time::Instant::now() - Duration::from_secs(10);
        loop {
            let primary = self.cfg.database.primary.clone();
            let limit = self.query_limit();
            let old = self.old_client().await?;
            let lsn: String = limit
                .run(&primary, old.query_one(CURRENT_LSN, &[]))
                .await?
                .get(0);
            let endpoint = self.new_endpoint().await?;
            let new = self.new_client().await?;
            let lag: f64 = limit
                .run(&endpoint, new.query_one(REPLAYED_ENOUGH, &[&lsn]))
                .await?
                .get(0);
            let lag = lag.max(0.0) as u64;
            match ready(lag, &history, max) {
                Readiness::Go(reason) => {
                    self.carry_physical_slots().await?;
                    self.wait_logical_slots_synced().await?;
                    return Ok(Output::note(reason));
                }
                Readiness::NoGo(reason) => {
                    if last_print.elapsed() >= Duration::from_secs(1) {
                        self.progress.say(Step::WaitCatchup, &reason);
                        last_print = std::time::Instant::now();
                    }
                }
            }
            history.push(lag);
            if history.len() > 16 {
                history.remove(0);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(UpgradeError::Timeout {
                    what: "replica caught up".into(),
                    after: self.cfg.upgrade.step_timeout.0,
                });
            }
            self.tick(Duration::from_millis(100)).await?;
        }
    }

    /// Opens the window's connections, then PAUSE under `pause_timeout`.
    pub(crate) async fn pause_writes(&mut self) -> Result<Output, UpgradeError> {
        self.old_client().await?;
        self.new_client().await?;
        let id = self.replica()?;
        let limit = self.query_limit();
        limit
            .wrap(
                "the provider's promote preparation",
                self.provider.prepare_promote(&id),
            )
            .await?;
        self.stage_fence().await?;
        let pooled = self.cfg.cutover.kind == CutoverKind::Pgbouncer;
        if pooled {
            // Membership read again right before PAUSE: what a rollout or a
            // scale-up changed since the precheck is paused too. Then the
            // health gate: a saturated pool would turn the pause into
            // client timeouts.
            let limits = crate::pooler::GateLimits::from_config(&self.cfg.cutover);
            limit
                .wrap("the pooler's instances", self.poolers.refresh_members())
                .await?;
            limit
                .wrap("the pooler's connections", self.poolers.connect())
                .await?;
            limit
                .wrap("the pooler's health", self.poolers.health_gate(&limits))
                .await?;
        }
        let deadline = tokio::time::Instant::now() + self.cfg.upgrade.pause_timeout.0;
        self.set_pause_deadline(Some(deadline));
        self.window.open();
        let mut note = None;
        if pooled {
            let left = remaining(deadline, "PAUSE")?;
            self.poolers.pause(left).await.map_err(|e| match e {
                crate::pooler::PoolerError::PauseTimeout { .. } => UpgradeError::PauseTimeout {
                    what: format!("PAUSE ({e})"),
                },
                other => other.into(),
            })?;
            note = Some(format!(
                "PAUSE confirmed on {}",
                self.poolers.pause_report()
            ));
        }
        Ok(Output {
            kept_read_only: self.fence.read_only_seen(),
            note,
            ..Output::default()
        })
    }

    /// Waits until the new server replayed the fenced old primary's final
    /// position *flushed*: an asynchronous commit is acknowledged once it is
    /// in the WAL buffers, before it is written, and the walsender streams
    /// only what is flushed; so the old primary first flushes everything
    /// (`fence::flush::flushed_position`), and its flush position is the target.
    pub(crate) async fn final_sync(&mut self) -> Result<Output, UpgradeError> {
        let deadline = self.window_deadline();
        let primary = self.cfg.database.primary.clone();
        let ours = self.own_pids();
        let t0 = std::time::Instant::now();
        let id = self.record().id.clone();
        let guarded = self.guard.is_some();
        let limit = self.query_limit();
        // The flushing commit updates the guard row: on the guard's own
        // session (the row is in the guard database, WAL is the server's);
        // without a guard, a temporary table on the old-primary session.
        let target = primary.to_string();
        let on_guard = guarded
            && self
                .guard
                .as_ref()
                .and_then(|g| g.writable_session(&target))
                .is_some();
        if !on_guard {
            self.old_client().await?;
        }
        let session = match (on_guard, self.guard.as_ref(), self.old.as_ref()) {
            (true, Some(g), _) => g.writable_session(&target),
            (_, _, old) => old,
        };
        let Some(session) = session else {
            return Err(UpgradeError::Step {
                step: Step::FinalSync,
                detail: "no session on the old primary".into(),
            });
        };
        let (lsn, ended) = limit
            .run(
                &primary,
                super::fence::flush::flushed_position(
                    session,
                    &ours,
                    on_guard.then_some(id.as_str()),
                ),
            )
            .await??;
        let flushed_in = t0.elapsed();
        let endpoint = self.new_endpoint().await?;
        let cancel = self.cancel.clone();
        let limit = self.query_limit();
        let new = self.new_client().await?;
        let mut polls = 0u32;
        loop {
            polls += 1;
            let behind: f64 = limit
                .run(&endpoint, new.query_one(REPLAYED_ENOUGH, &[&lsn]))
                .await?
                .get(0);
            if behind <= 0.0 {
                break;
            }
            remaining(deadline, "final sync")?;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(1)) => {}
                _ = cancel.cancelled() => return Err(UpgradeError::Cancelled),
            }
        }
        // The last moment to roll back: an instance that appeared since
        // PAUSE is paused now, or the upgrade rolls back; a carried logical
        // slot the new server lost since the pause began rolls back too.
        let newcomers = self.pause_newcomers(Some(deadline)).await?;
        self.check_logical_slots_synced().await?;
        // The fence's probe login and its file's sync ran beside the flush
        // and the replay; no promote before the block is enforced and durable.
        let probed = self.fence.confirm_settled(deadline).await?;
        let mut note = format!(
            "flushed {lsn} in {:.1} ms, {ended} late sessions ended; replayed after {polls} polls",
            flushed_in.as_secs_f64() * 1000.0
        );
        if let Some(p) = probed {
            note.push_str(&format!("; {p}"));
        }
        if let Some(n) = newcomers {
            note.push_str(&format!("; {n}"));
        }
        Ok(Output {
            final_lsn: Some(lsn.clone()),
            note: Some(note),
            ..Output::default()
        })
    }

    /// Point of no return. Idempotent: a server already out of recovery is left alone.
    pub(crate) async fn promote(&mut self) -> Result<Output, UpgradeError> {
        let id = self.replica()?;
        let endpoint = self.new_endpoint().await?;
        let limit = self.query_limit();
        let new = self.new_client().await?;
        let in_recovery: bool = limit
            .run(&endpoint, new.query_one(IN_RECOVERY, &[]))
            .await?
            .get(0);
        if !in_recovery {
            self.unfence_new(&endpoint).await?;
            return Ok(Output::note("already promoted"));
        }
        limit
            .wrap("the provider's promote", self.provider.promote(&id))
            .await?;
        let after = query_timeout(&self.cfg);
        let limit = tokio::time::Instant::now() + after;
        let mut polls = 0u32;
        loop {
            polls += 1;
            let client = self.new_client().await?;
            match tokio::time::timeout_at(limit, client.query_one(IN_RECOVERY, &[])).await {
                Ok(Ok(row)) if !row.get::<_, bool>(0) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "promote poll"),
                Err(_) => {}
            }
            if tokio::time::Instant::now() >= limit {
                return Err(UpgradeError::Timeout {
                    what: format!("{id} promoted"),
                    after,
                });
            }
            // No cancellation here: past the point of no return the window runs to the end.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.unfence_new(&endpoint).await?;
        Ok(Output::note(format!("writable after {polls} polls")))
    }

    /// Inside the pause: PgBouncer to the new server's own endpoint, for
    /// every provider. An identifier swap (minutes per rename on RDS) runs
    /// only after RESUME (rename_old_aside, rename_new_in, repoint_stable).
    pub(crate) async fn repoint(&mut self) -> Result<Output, UpgradeError> {
        if self.cfg.cutover.kind != CutoverKind::Pgbouncer {
            return Ok(Output::note(
                "cutover.kind = none: clients repoint themselves",
            ));
        }
        let endpoint = self.new_endpoint().await?;
        let (host, port) = endpoint.spec()?.host_port();
        // After promote: a newcomer is paused and repointed with the others.
        let newcomers = self.pause_newcomers(None).await?;
        self.point_pooler_at(Step::Repoint, &host, port).await?;
        let n = self.poolers.len();
        Ok(Output::note(match newcomers {
            Some(nc) => format!("pooler ({n} instances) -> {host}:{port}; {nc}"),
            None => format!("pooler ({n} instances) -> {host}:{port}"),
        }))
    }

    /// Rewrites the cutover database's entry to `host:port`, RELOADs, and
    /// checks every PgBouncer shows it. Inside the pause window the files
    /// are synced after RESUME (`resume_writes`), outside it before return.
    pub(crate) async fn point_pooler_at(
        &mut self,
        step: Step,
        host: &str,
        port: u16,
    ) -> Result<(), UpgradeError> {
        let durability = if step.in_pause_window() {
            crate::pooler::Durability::Later
        } else {
            crate::pooler::Durability::Now
        };
        self.poolers.rewrite(host, port, durability).await?;
        self.poolers.reload().await?;
        for (admin, db, entry) in self.poolers.entries().await? {
            match entry {
                Some(e) if e.host == host && e.port == port => {}
                other => {
                    return Err(UpgradeError::Step {
                        step,
                        detail: format!("pgbouncer {admin} database {db} still shows {other:?} after RELOAD, expected {host}:{port}"),
                    })
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn conninfo_keeps_user_and_options() {
        let out = crate::provider::with_address(
            "user=postgres passfile='/x y' host=127.0.0.1 port=5000 sslmode=prefer",
            "127.0.0.1",
            6000,
        );
        let p = crate::pg::conninfo::ConnParams::parse(&out).unwrap();
        assert_eq!(p.get("passfile"), Some("/x y"));
        assert_eq!(p.get("sslmode"), Some("prefer"));
        assert_eq!(p.get("port"), Some("6000"));
    }
}
