//! The body of each step. Every body observes before it acts and does
//! nothing when its effect is already there, because a step found `running`
//! after a crash runs again (runner.rs).

use std::time::Duration;

use tokio_postgres::Client;

use super::cutover::{ready, remaining, Readiness};
use super::precheck::{judge, Facts, LocalUpgrade};
use super::record::{Output, Step};
use super::runner::Saga;
use super::{journal, UpgradeError};
use crate::config::{Config, ConnString, CutoverKind};
use crate::pooler::Poolers;
use crate::provider::{replica_id, Check, Follow, Precheck, Provider, ServerState};

const PRIMARY_FACTS: &str = "SELECT pg_is_in_recovery(), \
     current_setting('max_wal_senders')::int - (SELECT count(*) FROM pg_stat_replication)::int, \
     current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots)::int, \
     current_setting('server_version_num')::int";
const LONG_TRANSACTIONS: &str =
    "SELECT count(*)::bigint, coalesce(max(extract(epoch FROM now() - xact_start)), 0)::float8 \
     FROM pg_stat_activity WHERE xact_start < now() - make_interval(secs => $1) \
     AND pid <> pg_backend_pid() AND backend_type = 'client backend'";
const DDL_LOCKS: &str = "SELECT count(*)::bigint FROM pg_locks \
     WHERE mode = 'AccessExclusiveLock' AND locktype = 'relation' AND granted AND pid <> pg_backend_pid()";
const IN_RECOVERY: &str = "SELECT pg_is_in_recovery()";
const LAG_SOURCE: &str = "SELECT pg_current_wal_lsn()::text";
pub(crate) const REPLAYED_ENOUGH: &str =
    "SELECT coalesce(pg_wal_lsn_diff($1::text::pg_lsn, pg_last_wal_replay_lsn()), 0)::float8";
/// Through the pooler, in one statement (transaction pooling: the next
/// statement may run on another server connection).
const VERIFY_THROUGH_POOLER: &str = "SELECT a.pid, a.backend_start::text, pg_is_in_recovery(), \
     current_setting('transaction_read_only'), txid_current()::text \
     FROM pg_stat_activity a WHERE a.pid = pg_backend_pid()";
const SESSION_EXISTS: &str =
    "SELECT count(*)::bigint FROM pg_stat_activity WHERE pid = $1 AND backend_start::text = $2";

/// Every precheck: the provider's, then the source's and the pooler's.
/// Changes nothing. `own_id` is the upgrade doing the check (it does not count as "another").
pub async fn prechecks(
    cfg: &Config,
    provider: &dyn Provider,
    poolers: &mut Poolers,
    target_class: &str,
    own_id: Option<&str>,
) -> Result<Precheck, UpgradeError> {
    // Reads only, each bounded by the servers' own timeouts and this one.
    let after = query_timeout(cfg) * 3;
    match tokio::time::timeout(after, observe(cfg, provider, poolers, target_class, own_id)).await {
        Ok(r) => r,
        Err(_) => Err(UpgradeError::Timeout {
            what: "the prechecks' answers".into(),
            after,
        }),
    }
}

async fn observe(
    cfg: &Config,
    provider: &dyn Provider,
    poolers: &mut Poolers,
    target_class: &str,
    own_id: Option<&str>,
) -> Result<Precheck, UpgradeError> {
    let mut pre = provider.precheck(target_class).await?;
    let primary = connect(&cfg.database.primary, cfg).await?;
    let row = primary
        .query_one(PRIMARY_FACTS, &[])
        .await
        .map_err(|e| q(&cfg.database.primary, e))?;
    let pause_seconds = cfg.upgrade.pause_timeout.0.as_secs_f64();
    let long = primary
        .query_one(LONG_TRANSACTIONS, &[&pause_seconds])
        .await
        .map_err(|e| q(&cfg.database.primary, e))?;
    let access_exclusive_locks: i64 = primary
        .query_one(DDL_LOCKS, &[])
        .await
        .map_err(|e| q(&cfg.database.primary, e))?
        .get(0);
    let local = match journal::latest(&cfg.upgrade.state_dir)? {
        Some(path) => {
            let rec = journal::read(&path)?;
            Some(LocalUpgrade {
                in_flight: rec.in_flight(),
                phase: format!("{:?}", rec.phase),
                id: rec.id,
                path: path.display().to_string(),
            })
        }
        None => None,
    };
    // The same question asked of the primary itself: runners elsewhere.
    let guard = super::guard::read(
        &primary,
        &cfg.database.primary.to_string(),
        query_timeout(cfg),
    )
    .await?;
    let facts = Facts {
        primary: cfg.database.primary.to_string(),
        in_recovery: row.get(0),
        free_senders: row.get(1),
        free_slots: row.get(2),
        server_version_num: row.get(3),
        pause_seconds,
        long_transactions: long.get(0),
        oldest_transaction_seconds: long.get(1),
        access_exclusive_locks,
        local,
        guard,
    };
    pre.checks.extend(judge(&facts, own_id));
    let checks = &mut pre.checks;
    if cfg.cutover.kind == CutoverKind::Pgbouncer {
        pooler_checks(cfg, poolers, checks).await;
    }
    Ok(pre)
}

async fn pooler_checks(cfg: &Config, poolers: &mut Poolers, checks: &mut Vec<Check>) {
    if poolers.is_empty() {
        checks.push(Check::new(
            "pooler configured",
            false,
            "cutover.admin is empty; list the PgBouncer admin consoles (or set cutover.kind = \"none\")",
        ));
        return;
    }
    if !Poolers::valid_database_name(&poolers.database) {
        checks.push(Check::new(
            "pooler database name",
            false,
            format!(
                "cutover.database {:?}: PgBouncer's console takes letters, digits and _ only",
                poolers.database
            ),
        ));
    }
    let configs = match poolers.configs().await {
        Ok(c) => c,
        Err(e) => {
            checks.push(Check::new("pooler reachable", false, e.to_string()));
            return;
        }
    };
    checks.push(Check::new(
        "pooler reachable",
        true,
        format!("{} admin endpoint(s)", configs.len()),
    ));
    let pause = cfg.upgrade.pause_timeout.0;
    for (admin, conf) in configs {
        let mode = conf.get("pool_mode").cloned().unwrap_or_default();
        checks.push(Check::new(
            format!("pooler {admin} in transaction mode"),
            mode == "transaction",
            format!("pool_mode = {mode}; session pooling keeps server connections, so PAUSE would wait for every client to disconnect"),
        ));
        let wait: f64 = conf
            .get("query_wait_timeout")
            .and_then(|v| v.trim_end_matches('s').parse().ok())
            .unwrap_or(120.0);
        let ok = wait == 0.0 || Duration::from_secs_f64(wait) > pause;
        checks.push(Check::new(
            format!("pooler {admin} query_wait_timeout > pause_timeout"),
            ok,
            format!("query_wait_timeout = {wait}s, pause_timeout = {pause:?}; clients waiting in the pause would get errors: raise query_wait_timeout"),
        ));
    }
    match poolers.entries().await {
        Ok(entries) => {
            for (admin, entry) in entries {
                checks.push(Check::new(
                    format!("pooler {admin} has database {}", poolers.database),
                    entry.is_some(),
                    match entry {
                        Some(e) => format!("{} -> {}:{}/{}", e.name, e.host, e.port, e.database),
                        None => "no such [databases] entry; fix cutover.database".into(),
                    },
                ));
            }
        }
        Err(e) => checks.push(Check::new("pooler databases", false, e.to_string())),
    }
    for i in 0..cfg.cutover.admin.len() {
        let (ok, detail) = match cfg.pooler_config_file(i) {
            None => (
                false,
                "no cutover.config_file for this endpoint".to_string(),
            ),
            Some(p) => match std::fs::read_to_string(p) {
                Ok(text) => match crate::pooler::ini_target(&text, &poolers.database) {
                    Some(_) => (true, p.display().to_string()),
                    None => (
                        false,
                        format!(
                            "{}: no `{} =` entry under [databases]",
                            p.display(),
                            poolers.database
                        ),
                    ),
                },
                Err(e) => (false, format!("{}: {e}", p.display())),
            },
        };
        checks.push(Check::new(
            format!("pooler config file {i} writable"),
            ok,
            detail,
        ));
    }
}

pub use crate::pooler::query_timeout;

/// A client-side deadline for one query (or a short exchange of them).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limit {
    pub until: tokio::time::Instant,
    /// The pause deadline is what binds: missing it is a pause timeout.
    pub pause: bool,
    pub after: Duration,
}

impl Limit {
    fn expired(&self, what: String) -> UpgradeError {
        if self.pause {
            UpgradeError::PauseTimeout { what }
        } else {
            UpgradeError::Timeout {
                what,
                after: self.after,
            }
        }
    }

    /// `f` against `target`, or a timeout error at the deadline.
    pub async fn run<T>(
        self,
        target: &ConnString,
        f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, UpgradeError> {
        match tokio::time::timeout_at(self.until, f).await {
            Ok(r) => r.map_err(|e| q(target, e)),
            Err(_) => Err(self.expired(format!("an answer from {target}"))),
        }
    }

    /// Any other wait (provider, pooler, connect) under the same deadline.
    pub async fn wrap<T, E: Into<UpgradeError>>(
        self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, UpgradeError> {
        match tokio::time::timeout_at(self.until, f).await {
            Ok(r) => r.map_err(Into::into),
            Err(_) => Err(self.expired(what.to_string())),
        }
    }
}

/// A saga session: TCP keepalives (a peer that vanished is noticed in
/// seconds, not hours) and a server-side `statement_timeout` matching the
/// client-side bound, both in the startup packet (no extra round trip).
pub(crate) async fn connect(target: &ConnString, cfg: &Config) -> Result<Client, UpgradeError> {
    let spec = target.spec()?;
    let mut config = spec.config.clone();
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(5));
    config.keepalives_interval(Duration::from_secs(2));
    config.keepalives_retries(3);
    let mut options = config.get_options().unwrap_or_default().to_string();
    options.push_str(&format!(
        " -c statement_timeout={}ms",
        query_timeout(cfg).as_millis()
    ));
    config.options(options.trim());
    let timeout = cfg.database.connect_timeout.0;
    // The connect timeout of ConnSpec covers TCP and the startup exchange.
    Ok(spec.connect_with(config, timeout).await?)
}

pub(crate) fn q(target: &ConnString, e: tokio_postgres::Error) -> UpgradeError {
    UpgradeError::Pg(crate::pg::PgError::Query {
        target: target.to_string(),
        source: e,
    })
}

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
    pub(crate) async fn new_endpoint_for_guard(&mut self) -> Result<ConnString, UpgradeError> {
        self.new_endpoint().await
    }

    async fn new_endpoint(&mut self) -> Result<ConnString, UpgradeError> {
        if let Some(e) = &self.new_endpoint {
            return Ok(e.clone());
        }
        let id = self.replica()?;
        let info = self.provider.describe(&id).await?;
        let endpoint = info.endpoint.ok_or_else(|| UpgradeError::Step {
            step: Step::WaitAvailable,
            detail: format!("{id} has no endpoint yet (state {:?})", info.state),
        })?;
        self.new_endpoint = Some(endpoint.clone());
        Ok(endpoint)
    }

    /// The deadline of the next query: `query_timeout` from now, or the
    /// pause deadline inside the pause when that comes first.
    pub(crate) fn query_limit(&self) -> Limit {
        let after = query_timeout(&self.cfg);
        let plain = tokio::time::Instant::now() + after;
        match self.deadline {
            Some(d) if d < plain => Limit {
                until: d,
                pause: true,
                after,
            },
            _ => Limit {
                until: plain,
                pause: false,
                after,
            },
        }
    }

    /// The session on the old primary (the fence spares it), opened when
    /// there is none or it closed.
    pub(crate) async fn old_client(&mut self) -> Result<&Client, UpgradeError> {
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
                    .run(&primary, client.query_one("SELECT pg_backend_pid()", &[]))
                    .await?
                    .get(0);
                self.old_pid = Some(pid);
                client
            }
        };
        Ok(self.old.insert(client))
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
        let failed: Vec<String> = pre
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect();
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
                        detail: format!("{id} is {other:?}"),
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
                .run(&primary, old.query_one(LAG_SOURCE, &[]))
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
                Readiness::Go(reason) => return Ok(Output::note(reason)),
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
        if self.cfg.cutover.kind == CutoverKind::Pgbouncer {
            limit
                .wrap("the pooler's connections", self.poolers.connect())
                .await?;
        }
        let deadline = tokio::time::Instant::now() + self.cfg.upgrade.pause_timeout.0;
        self.set_pause_deadline(Some(deadline));
        self.window_start = Some(std::time::Instant::now());
        if self.cfg.cutover.kind == CutoverKind::Pgbouncer {
            let left = remaining(deadline, "PAUSE")?;
            self.poolers.pause(left).await.map_err(|e| match e {
                crate::pooler::PoolerError::PauseTimeout { .. } => UpgradeError::PauseTimeout {
                    what: format!("PAUSE ({e})"),
                },
                other => other.into(),
            })?;
        }
        Ok(Output::default())
    }

    /// Sets (at PAUSE) or clears (once promote starts) the pause deadline
    /// every wait of steps 5–7 shares, the pooler's included.
    pub(crate) fn set_pause_deadline(&mut self, deadline: Option<tokio::time::Instant>) {
        self.deadline = deadline;
        self.poolers.set_deadline(deadline);
        if let Some(g) = self.guard.as_mut() {
            g.set_deadline(deadline);
        }
    }

    pub(crate) fn window_deadline(&self) -> tokio::time::Instant {
        // Resumed after a crash (forward only happens past promote): no deadline left to keep.
        self.deadline
            .unwrap_or_else(|| tokio::time::Instant::now() + self.cfg.upgrade.pause_timeout.0)
    }

    /// Waits until the new server replayed the fenced old primary's final
    /// position *flushed*: an asynchronous commit is acknowledged once it is
    /// in the WAL buffers, before it is written, and the walsender streams
    /// only what is flushed; so the old primary first flushes everything
    /// (fence.rs `flushed_position`), and its flush position is the target.
    pub(crate) async fn final_sync(&mut self) -> Result<Output, UpgradeError> {
        let deadline = self.window_deadline();
        let primary = self.cfg.database.primary.clone();
        let ours = self.own_pids();
        let t0 = std::time::Instant::now();
        let id = self.record().id.clone();
        let guarded = self.guard.is_some();
        let limit = self.query_limit();
        let old = self.old_client().await?;
        let (lsn, ended) = limit
            .run(
                &primary,
                super::fence::flushed_position(old, &ours, guarded.then_some(id.as_str())),
            )
            .await?
            .map_err(|detail| UpgradeError::Step {
                step: Step::FinalSync,
                detail,
            })?;
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
        Ok(Output {
            final_lsn: Some(lsn.clone()),
            note: Some(format!(
                "flushed {lsn} in {:.1} ms, {ended} late sessions ended; replayed after {polls} polls",
                flushed_in.as_secs_f64() * 1000.0
            )),
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
        self.point_pooler_at(Step::Repoint, &host, port).await?;
        Ok(Output::note(format!("pooler -> {host}:{port}")))
    }

    /// Rewrites the cutover database's entry to `host:port`, RELOADs, and
    /// checks every PgBouncer shows it.
    pub(crate) async fn point_pooler_at(
        &mut self,
        step: Step,
        host: &str,
        port: u16,
    ) -> Result<(), UpgradeError> {
        self.poolers.rewrite(host, port)?;
        self.poolers.reload().await?;
        for (admin, entry) in self.poolers.entries().await? {
            match entry {
                Some(e) if e.host == host && e.port == port => {}
                other => {
                    return Err(UpgradeError::Step {
                        step,
                        detail: format!("pgbouncer {admin} still shows {other:?} after RELOAD, expected {host}:{port}"),
                    })
                }
            }
        }
        Ok(())
    }

    pub(crate) async fn resume_writes(&mut self) -> Result<Output, UpgradeError> {
        if self.cfg.cutover.kind == CutoverKind::Pgbouncer {
            self.poolers.resume().await?;
        }
        Ok(Output::default())
    }

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

    pub(crate) async fn verify_through_pooler(
        &mut self,
        endpoint: &ConnString,
    ) -> Result<String, UpgradeError> {
        // The steward's own login, against the pooler's application database.
        let steward = self.cfg.database.primary.spec()?;
        let Some(url) = self.poolers.client_url(&steward) else {
            return Err(UpgradeError::Step {
                step: Step::Verify,
                detail: "no pooler endpoint".into(),
            });
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut last_err = String::new();
        while tokio::time::Instant::now() < deadline {
            let limit = self.query_limit();
            let once = limit.wrap(
                "a write through the pooler",
                self.verify_once(&url, endpoint),
            );
            match once.await {
                Ok(true) => {
                    let servers = self.poolers.servers().await.unwrap_or_default();
                    return Ok(format!("write through the pooler landed on the new primary; pooler servers {servers:?}"));
                }
                Ok(false) => last_err = "the pooler's session is not on the new primary".into(),
                Err(e) => last_err = e.to_string(),
            }
            self.tick(Duration::from_millis(100)).await?;
        }
        Err(UpgradeError::Step {
            step: Step::Verify,
            detail: last_err,
        })
    }

    async fn verify_once(
        &mut self,
        url: &ConnString,
        endpoint: &ConnString,
    ) -> Result<bool, UpgradeError> {
        let client = connect(url, &self.cfg).await?;
        let msgs = client
            .simple_query(VERIFY_THROUGH_POOLER)
            .await
            .map_err(|e| q(url, e))?;
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
                &format!("waiting {wait:?} (upgrade.retire_after)"),
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

/// `conninfo` (key=value form) with host and port replaced: the one parser
/// of `pg::conninfo` ([`crate::provider::with_address`]), kept here by name.
pub fn retarget_conninfo(conninfo: &str, host: &str, port: u16) -> String {
    crate::provider::with_address(conninfo, host, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_keeps_user_and_options() {
        let out = retarget_conninfo(
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
