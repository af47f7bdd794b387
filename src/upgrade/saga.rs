//! What a step runs with: the saga's context (configuration, journal,
//! provider, poolers, guard, the sessions and facts the steps share) and
//! its progress lines. The runner drives it (runner.rs); the steps act
//! through it (steps.rs, cutover.rs, fence.rs, swap.rs, finish.rs).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::error::UpgradeError;
use super::guard::Guard;
use super::journal::Journal;
use super::record::{Step, UpgradeRecord};
use crate::config::{Config, ConnString};
use crate::pooler::Poolers;
use crate::provider::Provider;

/// Prints progress lines: elapsed time, step, detail.
pub struct Progress {
    pub quiet: bool,
    start: Instant,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        Progress {
            quiet,
            start: Instant::now(),
        }
    }
    pub fn say(&self, step: Step, msg: &str) {
        if !self.quiet {
            println!(
                "{:>8.3}s  {:<18} {msg}",
                self.start.elapsed().as_secs_f64(),
                step.name()
            );
        }
    }
}

pub struct Saga {
    pub cfg: Config,
    pub journal: Journal,
    pub provider: Box<dyn Provider>,
    pub poolers: Poolers,
    pub cancel: CancellationToken,
    pub progress: Progress,
    /// One upgrade per primary (guard.rs): checked before every acting step.
    pub guard: Option<Guard>,
    pub(crate) old: Option<Client>,
    pub(crate) new: Option<Client>,
    pub(crate) new_endpoint: Option<ConnString>,
    /// Shared by the pause-deadline steps (pause_writes to final_sync), set when PAUSE is sent.
    pub(crate) deadline: Option<tokio::time::Instant>,
    pub(crate) window_start: Option<Instant>,
    /// This process wrote the fence into postgresql.auto.conf before PAUSE.
    pub(crate) fence_staged: bool,
    /// What the pg_hba.conf fence needs, read before PAUSE (fence.rs).
    pub(crate) hba: Option<HbaPlan>,
    /// Backend pid of `old`: the fence spares it.
    pub(crate) old_pid: Option<i32>,
    /// PAUSE sent → RESUME returned, when this process ran the whole window.
    pub pause_window: Option<Duration>,
    pub(super) step_started: Option<Instant>,
    /// Armed while this run holds (or undoes) a write pause (keeper.rs).
    pub(crate) keeper: Option<super::keeper::Keeper>,
    /// The step `forward` was last asked to run (the one that failed when
    /// none is running: its start could not be recorded).
    pub(crate) attempting: Option<Step>,
    /// RDS fence: the databases read-only on purpose, read before PAUSE.
    pub(crate) kept_read_only: Option<Vec<String>>,
    /// A roll back's unfence that failed: the undos after it do not wait
    /// for the old primary a second time.
    pub(crate) unfence_failed: Option<String>,
}

impl Saga {
    pub fn new(
        cfg: Config,
        journal: Journal,
        provider: Box<dyn Provider>,
        cancel: CancellationToken,
        quiet: bool,
    ) -> Saga {
        let poolers = Poolers::from_config(&cfg);
        Saga {
            cfg,
            journal,
            provider,
            poolers,
            cancel,
            progress: Progress::new(quiet),
            guard: None,
            old: None,
            new: None,
            new_endpoint: None,
            deadline: None,
            window_start: None,
            fence_staged: false,
            hba: None,
            old_pid: None,
            pause_window: None,
            step_started: None,
            keeper: None,
            attempting: None,
            kept_read_only: None,
            unfence_failed: None,
        }
    }

    /// Arms the pause keeper before this run pauses writes or undoes a
    /// pause (once; only with PgBouncer in front).
    pub(crate) fn arm_keeper(&mut self) {
        if self.keeper.is_none() && self.cfg.cutover.kind == crate::config::CutoverKind::Pgbouncer {
            self.keeper = super::keeper::Keeper::arm(&self.cfg);
        }
    }

    /// RESUME reached every PgBouncer: the window is closed, the keeper exits.
    pub(crate) fn disarm_keeper(&mut self) {
        if let Some(k) = self.keeper.take() {
            k.disarm();
        }
    }

    /// What the armed keeper will do once this run exits ("" when none).
    pub(crate) fn keeper_note(&self) -> String {
        match &self.keeper {
            Some(k) => format!(
                "The pause keeper (pid {}) retries the roll back for up to {:?} once this run has exited. ",
                k.pid(),
                super::keeper::PERSIST
            ),
            None => String::new(),
        }
    }

    pub fn record(&self) -> &UpgradeRecord {
        self.journal.record()
    }
}

/// What the fence needs that can be read before the pause.
#[derive(Debug, Clone)]
pub(crate) struct HbaPlan {
    pub path: PathBuf,
    pub roles: Vec<String>,
    /// A fenced role the loaded rules did not refuse before the fence: the
    /// probe login that proves the fence took effect (fence.rs).
    pub probe: Option<String>,
}

/// A query error on `target`, as the steps report it.
pub(crate) fn q(target: &ConnString, e: tokio_postgres::Error) -> UpgradeError {
    UpgradeError::Pg(crate::pg::PgError::Query {
        target: target.to_string(),
        source: e,
    })
}
