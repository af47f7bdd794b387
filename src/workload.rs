//! Client load with a ledger: writers that record every acknowledged commit
//! and every error, readers that time their queries. `pgsteward demo` runs one
//! through PgBouncer during its upgrade, and the integration tests and
//! benchmarks run the same one, so what the demo reports is what the tests check.
//!
//! Every statement is one simple-protocol query: one transaction per statement,
//! which is what PgBouncer's transaction pooling passes through. A failed
//! statement is recorded and its connection dropped; the worker reconnects.
//! Each worker is bounded in count (`max_ops` statements) and time (`max_run`),
//! and stops at once when the workload is stopped.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::pg::{server_message, ConnSpec};

/// The table [`Plan::ledger_writers`] inserts into; the demo and the tests create it.
pub const LEDGER_TABLE: &str =
    "CREATE TABLE ledger (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())";

/// One acknowledged id into [`LEDGER_TABLE`].
pub fn ledger_insert(id: i64) -> String {
    format!("INSERT INTO ledger (id) VALUES ({id})")
}

/// A worker's turn, for the statement builder.
#[derive(Debug, Clone, Copy)]
pub struct Turn {
    /// Which worker (0-based, writers and readers counted together).
    pub worker: usize,
    /// How many statements this worker ran before.
    pub n: u64,
    /// A fresh id, unique across every workload of this process (writers record it when acknowledged).
    pub id: i64,
}

type Builder = Arc<dyn Fn(&Turn) -> String + Send + Sync>;

#[derive(Clone)]
enum Kind {
    Write,
    Read,
}

/// What to run: the workers, their pace and their bounds. Build it, then [`Plan::start`].
#[derive(Clone)]
pub struct Plan {
    workers: Vec<(Kind, Builder)>,
    pace: Duration,
    max_run: Duration,
    max_ops: u64,
    connect_timeout: Duration,
}

impl Default for Plan {
    fn default() -> Plan {
        Plan {
            workers: Vec::new(),
            pace: Duration::from_millis(5),
            max_run: Duration::from_secs(120),
            max_ops: 2_000_000,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl Plan {
    /// `n` writers, one [`ledger_insert`] per transaction.
    pub fn ledger_writers(n: usize) -> Plan {
        (0..n).fold(Plan::default(), |p, _| p.writer(|t| ledger_insert(t.id)))
    }

    /// One more writer: its acknowledged statements are commits, recorded with `Turn::id`.
    pub fn writer(mut self, sql: impl Fn(&Turn) -> String + Send + Sync + 'static) -> Plan {
        self.workers.push((Kind::Write, Arc::new(sql)));
        self
    }

    /// One more reader: its statements are timed and counted, their rows ignored.
    pub fn reader(mut self, sql: impl Fn(&Turn) -> String + Send + Sync + 'static) -> Plan {
        self.workers.push((Kind::Read, Arc::new(sql)));
        self
    }

    /// Wait between two statements of one worker.
    pub fn pace(mut self, d: Duration) -> Plan {
        self.pace = d;
        self
    }

    /// Longest a worker runs.
    pub fn max_run(mut self, d: Duration) -> Plan {
        self.max_run = d;
        self
    }

    /// Most statements (and connection attempts) one worker makes.
    pub fn max_ops(mut self, n: u64) -> Plan {
        self.max_ops = n;
        self
    }

    pub fn connect_timeout(mut self, d: Duration) -> Plan {
        self.connect_timeout = d;
        self
    }

    /// Starts every worker against `spec` (each with its own connection).
    pub fn start(self, spec: &ConnSpec) -> Workload {
        // Ids unique across every workload of this process: a second load on
        // the same table must not collide with the first one's rows.
        static BASE: AtomicI64 = AtomicI64::new(0);
        let base = BASE.fetch_add(100_000_000, Ordering::SeqCst);
        let next = Arc::new(AtomicI64::new(base + 1));
        let cancel = CancellationToken::new();
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let tasks = self
            .workers
            .iter()
            .enumerate()
            .map(|(worker, (kind, sql))| {
                let w = Worker {
                    worker,
                    kind: kind.clone(),
                    sql: sql.clone(),
                    spec: spec.clone(),
                    next: next.clone(),
                    cancel: cancel.clone(),
                    ledger: ledger.clone(),
                    plan: self.clone(),
                };
                tokio::spawn(w.run())
            })
            .collect();
        Workload {
            cancel,
            ledger,
            tasks,
        }
    }
}

/// One acknowledged write.
#[derive(Debug, Clone, Copy)]
pub struct Commit {
    /// When the acknowledgement arrived.
    pub at: Instant,
    /// The same moment on the wall clock (to compare with journal timestamps).
    pub wall: SystemTime,
    /// How long the statement took.
    pub latency: Duration,
}

/// What the clients saw.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    /// Every acknowledged write's id, in acknowledgement order.
    pub acked: Vec<i64>,
    /// Every failed statement or connection attempt, in order.
    pub errors: Vec<String>,
    /// Every acknowledged write (same order as `acked`).
    pub commits: Vec<Commit>,
    /// Reads answered.
    pub reads: u64,
    /// The longest answered read.
    pub read_max: Duration,
}

impl Ledger {
    /// The longest acknowledged write.
    pub fn max_latency(&self) -> Duration {
        self.commits
            .iter()
            .map(|c| c.latency)
            .max()
            .unwrap_or_default()
    }

    /// The largest gap between two consecutive acknowledgements (any worker).
    pub fn max_gap(&self) -> Duration {
        let mut at: Vec<Instant> = self.commits.iter().map(|c| c.at).collect();
        at.sort();
        at.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("writes stopped: {acked} acknowledged, fewer than {wanted} more within {waited:?}; last errors: {last_errors:?}")]
    Stalled {
        acked: usize,
        wanted: usize,
        waited: Duration,
        last_errors: Vec<String>,
    },
}

/// Running workers and their shared ledger. Dropping it stops the workers at
/// their next statement; [`Workload::stop`] also waits for them.
pub struct Workload {
    cancel: CancellationToken,
    ledger: Arc<Mutex<Ledger>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Workload {
    /// Acknowledged writes so far.
    pub fn acked(&self) -> usize {
        lock(&self.ledger).acked.len()
    }

    /// A copy of the ledger so far (the workers go on).
    pub fn snapshot(&self) -> Ledger {
        lock(&self.ledger).clone()
    }

    /// Waits until `more` writes beyond those acknowledged now are
    /// acknowledged; fails after `within` with what the writers saw.
    pub async fn wait_acked(&self, more: usize, within: Duration) -> Result<(), WorkloadError> {
        let wanted = self.acked() + more;
        let t0 = Instant::now();
        loop {
            let acked = self.acked();
            if acked >= wanted {
                return Ok(());
            }
            if t0.elapsed() >= within {
                let l = lock(&self.ledger);
                return Err(WorkloadError::Stalled {
                    acked,
                    wanted: more,
                    waited: t0.elapsed(),
                    last_errors: l.errors.iter().rev().take(5).cloned().collect(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops every worker, waits for them and returns the ledger.
    pub async fn stop(mut self) -> Ledger {
        self.cancel.cancel();
        for t in self.tasks.drain(..) {
            // A worker that panicked recorded nothing more; the ledger stands.
            let _ = t.await;
        }
        std::mem::take(&mut *lock(&self.ledger))
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The ledger stays readable after a worker panicked while holding it.
fn lock(ledger: &Mutex<Ledger>) -> MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(|e| e.into_inner())
}

struct Worker {
    worker: usize,
    kind: Kind,
    sql: Builder,
    spec: ConnSpec,
    next: Arc<AtomicI64>,
    cancel: CancellationToken,
    ledger: Arc<Mutex<Ledger>>,
    plan: Plan,
}

impl Worker {
    async fn run(self) {
        let until = Instant::now() + self.plan.max_run;
        let mut client = None;
        let mut n = 0u64;
        while n < self.plan.max_ops && Instant::now() < until && !self.cancel.is_cancelled() {
            n += 1;
            let Some(c) = client.as_ref() else {
                match self.spec.connect(self.plan.connect_timeout).await {
                    Ok(c) => client = Some(c),
                    Err(e) => {
                        lock(&self.ledger).errors.push(e.to_string());
                        self.pause(Duration::from_millis(50)).await;
                    }
                }
                continue;
            };
            let turn = Turn {
                worker: self.worker,
                n: n - 1,
                id: self.next.fetch_add(1, Ordering::SeqCst),
            };
            let sql = (self.sql)(&turn);
            let t0 = Instant::now();
            let result = c.simple_query(&sql).await;
            let latency = t0.elapsed();
            if !self.record(&turn, result, latency) {
                client = None;
            }
            self.pause(self.plan.pace).await;
        }
    }

    /// Writes down how a statement ended; false when its connection is to be dropped.
    fn record(
        &self,
        turn: &Turn,
        result: Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>,
        latency: Duration,
    ) -> bool {
        let mut l = lock(&self.ledger);
        match (result, &self.kind) {
            (Ok(_), Kind::Write) => {
                l.acked.push(turn.id);
                l.commits.push(Commit {
                    at: Instant::now(),
                    wall: SystemTime::now(),
                    latency,
                });
                true
            }
            (Ok(_), Kind::Read) => {
                l.reads += 1;
                l.read_max = l.read_max.max(latency);
                true
            }
            (Err(e), Kind::Write) => {
                l.errors
                    .push(format!("id {}: {}", turn.id, server_message(&e)));
                false
            }
            (Err(e), Kind::Read) => {
                l.errors.push(format!("read: {}", server_message(&e)));
                false
            }
        }
    }

    async fn pause(&self, d: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.cancel.cancelled() => {}
        }
    }
}
