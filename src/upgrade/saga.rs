//! What a step runs with: the saga's context (configuration, journal,
//! provider, poolers, guard, the sessions and facts the steps share, and
//! its two components: the [`Fence`] and the [`PauseWindow`]) and its
//! progress lines. The runner drives it (runner.rs); the steps act through
//! it (steps.rs, cutover.rs, swap.rs, finish.rs).

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::fence::Fence;
use super::guard::Guard;
use super::journal::Journal;
use super::record::{Step, UpgradeRecord};
use super::window::PauseWindow;
use crate::config::{Cluster, ConnString};
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
    pub cfg: Cluster,
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
    /// The fence of the old primary: staged before PAUSE, put up by step 6,
    /// lifted by the roll back (fence/).
    pub(crate) fence: Fence,
    /// Backend pid of `old` (a property of that session, set when it is
    /// opened): the fence spares it.
    pub(crate) old_pid: Option<i32>,
    pub(super) step_started: Option<Instant>,
    /// The write pause: its deadline, its measured length, the pause keeper
    /// (window.rs). Where the keeper was, so the keeper is dropped at the
    /// same point of the saga's drop as before.
    pub(crate) window: PauseWindow,
}

impl Saga {
    pub fn new(
        cfg: Cluster,
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
            fence: Fence::default(),
            old_pid: None,
            step_started: None,
            window: PauseWindow::default(),
        }
    }

    /// PAUSE sent → RESUME returned, when this process ran the whole window.
    pub fn pause_window(&self) -> Option<Duration> {
        self.window.length()
    }

    pub fn record(&self) -> &UpgradeRecord {
        self.journal.record()
    }
}
