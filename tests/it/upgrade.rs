//! The vertical upgrade against real servers: a primary with a streaming
//! replica, PgBouncer in front, and a writer that records every acknowledged
//! commit while `pgsteward upgrade` runs as a child process (so it can be
//! killed with SIGKILL at any step boundary).
//!
//! Invariants checked after every run: every acknowledged id is on the node
//! that is primary now, exactly one node accepts writes, PgBouncer points at it,
//! and writes through PgBouncer go on.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgsteward::localpg::{Cluster, LocalPgBouncer, StopMode};
use pgsteward::upgrade::journal;

use crate::harness::{self, must, TestCluster};

/// Every acknowledged id, every error, and per-transaction latencies.
#[derive(Default)]
pub struct Ledger {
    pub acked: Vec<i64>,
    pub errors: Vec<String>,
    /// (when the commit was acknowledged, how long the transaction took)
    pub latencies: Vec<(Instant, Duration)>,
    /// Wall-clock time of each acknowledgement (same order as `latencies`).
    pub wall: Vec<std::time::SystemTime>,
}

/// Writers through PgBouncer: `BEGIN; INSERT; COMMIT` as one simple-protocol
/// statement (transaction pooling), ids from a shared counter. Bounded: they
/// stop when told or after `max_run`.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub ledger: Arc<Mutex<Ledger>>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(url: &str, workers: usize, pace: Duration, max_run: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        // Ids unique across every load of this process: a second load on the
        // same table must not collide with the first one's rows.
        static BASE: AtomicI64 = AtomicI64::new(0);
        let base = BASE.fetch_add(100_000_000, Ordering::SeqCst);
        let next = Arc::new(AtomicI64::new(base + 1));
        let handles = (0..workers)
            .map(|_| {
                let (stop, ledger, next, url) =
                    (stop.clone(), ledger.clone(), next.clone(), url.to_string());
                tokio::spawn(async move {
                    let began = Instant::now();
                    let mut client = None;
                    while !stop.load(Ordering::SeqCst) && began.elapsed() < max_run {
                        if client.is_none() {
                            let spec = must(pgsteward::pg::ConnSpec::parse(&url));
                            match spec.connect(Duration::from_secs(10)).await {
                                Ok(c) => client = Some(c),
                                Err(e) => {
                                    ledger.lock().unwrap().errors.push(e.to_string());
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                    continue;
                                }
                            }
                        }
                        let c = client.as_ref().unwrap();
                        let id = next.fetch_add(1, Ordering::SeqCst);
                        let t0 = Instant::now();
                        let r = c
                            .simple_query(&format!("INSERT INTO ledger (id) VALUES ({id})"))
                            .await;
                        let failed = {
                            let mut l = ledger.lock().unwrap();
                            match r {
                                Ok(_) => {
                                    l.acked.push(id);
                                    l.latencies.push((Instant::now(), t0.elapsed()));
                                    l.wall.push(std::time::SystemTime::now());
                                    false
                                }
                                Err(e) => {
                                    l.errors.push(format!(
                                        "id {id}: {}",
                                        pgsteward::pg::server_message(&e)
                                    ));
                                    true
                                }
                            }
                        };
                        if failed {
                            client = None;
                        }
                        tokio::time::sleep(pace).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            ledger,
            handles,
        }
    }

    pub fn acked(&self) -> usize {
        self.ledger.lock().unwrap().acked.len()
    }

    /// Waits until `n` more commits were acknowledged (writes go on).
    pub async fn wait_progress(&self, n: usize) {
        let start = self.acked();
        let t0 = Instant::now();
        while self.acked() < start + n {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "writes through PgBouncer stopped: {} acked, errors {:?}",
                self.acked(),
                self.ledger
                    .lock()
                    .unwrap()
                    .errors
                    .iter()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) -> Ledger {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.handles {
            let _ = h.await;
        }
        Arc::try_unwrap(self.ledger)
            .ok()
            .map(|m| m.into_inner().unwrap())
            .unwrap_or_default()
    }
}

/// One topology for a whole test: the original primary + replica, PgBouncer,
/// a state dir and a data root; `primary_url` follows the upgrades.
pub struct Topology {
    pub cluster: TestCluster,
    pub pooler: LocalPgBouncer,
    pub primary_url: String,
    /// Every node that was primary at some point.
    pub nodes: Vec<String>,
    pub config: PathBuf,
    pub classes_used: usize,
    pub pause_timeout: &'static str,
    pub retire_after: &'static str,
    pub step_timeout: &'static str,
}

pub const CLASSES: [&str; 2] = ["large", "larger"];

impl Topology {
    pub fn new() -> Topology {
        let cluster = TestCluster::start(1);
        must(cluster.primary.psql("postgres", "CREATE DATABASE app"));
        must(cluster.primary.psql(
            "app",
            "CREATE TABLE ledger (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())",
        ));
        cluster.wait_replicas_caught_up();
        let pooler = harness::pooler(
            cluster.path(),
            &cluster.primary,
            "app",
            &[("query_wait_timeout", "60")],
        );
        let primary_url = cluster.primary.url("app");
        let mut t = Topology {
            nodes: vec![primary_url.clone()],
            primary_url,
            config: PathBuf::new(),
            cluster,
            pooler,
            classes_used: 0,
            pause_timeout: "5s",
            retire_after: "0s",
            step_timeout: "60s",
        };
        t.write_config();
        t
    }

    pub fn dir(&self) -> &Path {
        self.cluster.path()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir().join("state")
    }

    pub fn next_class(&self) -> &'static str {
        CLASSES[self.classes_used % 2]
    }

    pub fn write_config(&mut self) {
        let dir = self.dir().to_path_buf();
        let toml = format!(
            r#"
[database]
primary = "{primary}"
replicas = ["{replica}"]
connect_timeout = "5s"

[upgrade]
provider = "local"
state_dir = "{state}"
catchup_max_bytes = "1MB"
pause_timeout = "{pause}"
retire_after = "{retire}"
step_timeout = "{step}"

[upgrade.local]
data_root = "{root}"
{bin_dir}

[upgrade.local.classes.large]
shared_buffers = "40MB"
fsync = "off"
full_page_writes = "off"
wal_receiver_status_interval = "1s"
log_min_messages = "warning"

[upgrade.local.classes.larger]
shared_buffers = "48MB"
fsync = "off"
full_page_writes = "off"
wal_receiver_status_interval = "1s"
log_min_messages = "warning"

[cutover]
kind = "pgbouncer"
admin = ["{admin}"]
config_file = "{ini}"
database = "app"
"#,
            primary = self.primary_url,
            replica = self.cluster.replicas[0].url("app"),
            state = self.state_dir().display(),
            pause = self.pause_timeout,
            retire = self.retire_after,
            step = self.step_timeout,
            root = dir.join("clusters").display(),
            admin = self.pooler.admin_url(),
            ini = self.pooler.ini.display(),
            bin_dir = harness::bin_dir()
                .map(|d| format!("bin_dir = \"{}\"", d.display()))
                .unwrap_or_default(),
        );
        self.config = harness::write_config(&dir, &toml);
    }

    pub fn pgsteward(&self, args: &[&str], failpoint: Option<&str>) -> Output {
        let mut cmd = harness::pgsteward();
        cmd.arg("--config").arg(&self.config).args(args);
        cmd.env("PGSTEWARD_LOCAL_OWNER_PID", std::process::id().to_string());
        if let Some(fp) = failpoint {
            cmd.env("PGSTEWARD_FAILPOINT", fp);
        }
        must(cmd.output().map_err(|e| e.to_string()))
    }

    pub fn upgrade(&self, failpoint: Option<&str>) -> Output {
        self.pgsteward(
            &["upgrade", "start", "--target-class", self.next_class()],
            failpoint,
        )
    }

    /// After an upgrade completed: the new primary becomes `database.primary`.
    pub fn follow_upgrade(&mut self) {
        let rec = latest_record(&self.state_dir());
        assert_eq!(
            rec.phase,
            journal_phase_completed(),
            "upgrade not completed: {rec:?}"
        );
        let url = rec
            .replica_endpoint()
            .expect("new endpoint recorded")
            .to_string();
        self.primary_url = url.clone();
        self.nodes.push(url);
        self.classes_used += 1;
        self.write_config();
    }

    pub fn pooler_url(&self) -> String {
        self.pooler.url("app", "postgres")
    }

    /// Exactly one node accepts writes and PgBouncer points at it; returns its URL.
    pub async fn check_one_writable(&self) -> String {
        let mut writable = Vec::new();
        for url in self.nodes.iter().chain(self.new_nodes().iter()) {
            if writable.contains(url) {
                continue;
            }
            let Ok(spec) = pgsteward::pg::ConnSpec::parse_with(url, &harness::pg_env()) else {
                continue;
            };
            let Ok(c) = spec.connect(Duration::from_secs(3)).await else {
                continue;
            };
            let row = c
                .query_one(
                    "SELECT NOT pg_is_in_recovery() AND current_setting('default_transaction_read_only') = 'off'",
                    &[],
                )
                .await;
            if let Ok(r) = row {
                if r.get::<_, bool>(0) {
                    writable.push(url.clone());
                }
            }
        }
        assert_eq!(writable.len(), 1, "writable nodes: {writable:?}");
        let text = std::fs::read_to_string(&self.pooler.ini).unwrap();
        let (_, port) = pgsteward::pooler::ini_target(&text, "app").unwrap();
        let w = pgsteward::pg::ConnSpec::parse(&writable[0]).unwrap();
        assert_eq!(
            w.host_port().1,
            port,
            "pgbouncer.ini points elsewhere than the writable node"
        );
        writable.pop().unwrap()
    }

    /// URLs of the servers the local provider made under data_root.
    pub fn new_nodes(&self) -> Vec<String> {
        let root = self.dir().join("clusters");
        let Ok(entries) = std::fs::read_dir(&root) else {
            return vec![];
        };
        entries
            .flatten()
            .filter_map(|e| {
                let conf = std::fs::read_to_string(e.path().join("pgsteward.conf")).ok()?;
                let port = conf.lines().find_map(|l| {
                    let (k, v) = l.split_once('=')?;
                    (k.trim() == "port").then(|| v.trim().parse::<u16>().ok())?
                })?;
                Some(format!(
                    "postgres://postgres@127.0.0.1:{port}/app?sslmode=disable"
                ))
            })
            .collect()
    }

    /// Every acknowledged id is on the current primary.
    pub async fn check_nothing_lost(&self, acked: &[i64]) {
        let primary = self.check_one_writable().await;
        let rows = harness::query(&primary, "SELECT id FROM ledger").await;
        let have: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
        let missing: Vec<&i64> = acked.iter().filter(|id| !have.contains(id)).collect();
        assert!(
            missing.is_empty(),
            "{} acknowledged commits missing on {primary}: {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let root = self.dir().join("clusters");
        if let Ok(entries) = std::fs::read_dir(&root) {
            for e in entries.flatten() {
                if e.path().join("postmaster.pid").exists() {
                    if let Ok(c) = Cluster::at(&e.path(), 0, harness::bin_dir()) {
                        let _ = c.stop(StopMode::Immediate);
                    }
                }
            }
        }
    }
}

fn journal_phase_completed() -> pgsteward::upgrade::record::Phase {
    pgsteward::upgrade::record::Phase::Completed
}

pub fn latest_record(state_dir: &Path) -> pgsteward::upgrade::record::UpgradeRecord {
    let path = journal::latest(state_dir).unwrap().expect("a journal");
    journal::read(&path).unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn killed(o: &Output) -> bool {
    use std::os::unix::process::ExitStatusExt;
    o.status.signal() == Some(9)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_under_load_loses_nothing_and_repoints_replicas() {
    let mut t = Topology::new();
    let load = Load::start(
        &t.pooler_url(),
        4,
        Duration::from_millis(3),
        Duration::from_secs(120),
    );
    load.wait_progress(50).await;
    let old = t.primary_url.clone();

    let plan = t.pgsteward(&["upgrade", "plan", "--target-class", "large"], None);
    assert!(plan.status.success(), "{}", text(&plan));
    let same = t.pgsteward(&["upgrade", "plan", "--target-class", "nope"], None);
    assert_eq!(same.status.code(), Some(2), "{}", text(&same));

    let out = t.upgrade(None);
    assert!(out.status.success(), "{}", text(&out));
    load.wait_progress(50).await;
    t.follow_upgrade();
    let ledger = load.stop().await;
    assert!(
        ledger.errors.is_empty(),
        "client errors: {:?}",
        ledger.errors
    );
    t.check_nothing_lost(&ledger.acked).await;

    // The old primary was retired: it accepts no connection, let alone a write.
    let spec = pgsteward::pg::ConnSpec::parse_with(&old, &harness::pg_env()).unwrap();
    assert!(
        spec.connect(Duration::from_secs(2)).await.is_err(),
        "old primary still up"
    );

    // The other replica follows the new primary.
    harness::query(&t.primary_url, "INSERT INTO ledger (id) VALUES (-1)").await;
    let replica = t.cluster.replicas[0].url("app");
    let mut seen = false;
    for _ in 0..200 {
        let rows = harness::query(&replica, "SELECT count(*) FROM ledger WHERE id = -1").await;
        if rows[0].get::<_, i64>(0) == 1 {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        seen,
        "the replica did not follow the new primary; its log:\n{}",
        std::fs::read_to_string(&t.cluster.replicas[0].log_file).unwrap_or_default()
    );

    // Status renders the journal; other commands notice the moved primary.
    let status = t.pgsteward(&["upgrade", "status", "--output", "json"], None);
    assert!(status.status.success(), "{}", text(&status));
    let mut cfg = pgsteward::config::load(&t.config).unwrap();
    cfg.database.primary = pgsteward::config::ConnString::new(old.clone());
    let err = pgsteward::upgrade::ensure_primary_current(&cfg)
        .await
        .unwrap_err();
    assert!(
        matches!(err, pgsteward::upgrade::UpgradeError::PrimaryMoved { .. }),
        "{err}"
    );
    assert!(!pgsteward::upgrade::cutover_in_progress(&cfg));

    // Through the binary: partition DDL against the moved primary is refused, naming the new one.
    let new = t.primary_url.clone();
    t.primary_url = old.clone();
    t.write_config();
    let out = t.pgsteward(&["partitions", "apply"], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("moved the primary to") && stderr.contains(&new),
        "{}",
        text(&out)
    );
    t.primary_url = new;
    t.write_config();
}

/// Every step run twice in a row (PGSTEWARD_FAILPOINT_REPEAT=1) still upgrades
/// cleanly: each step observes before it acts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_step_is_idempotent() {
    let mut t = Topology::new();
    let load = Load::start(
        &t.pooler_url(),
        3,
        Duration::from_millis(3),
        Duration::from_secs(120),
    );
    load.wait_progress(30).await;
    let mut cmd = harness::pgsteward();
    cmd.arg("--config")
        .arg(&t.config)
        .args(["upgrade", "start", "--target-class", t.next_class()])
        .env("PGSTEWARD_LOCAL_OWNER_PID", std::process::id().to_string())
        .env("PGSTEWARD_FAILPOINT_REPEAT", "1");
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    t.follow_upgrade();
    load.wait_progress(30).await;
    let ledger = load.stop().await;
    assert!(
        ledger.errors.is_empty(),
        "client errors: {:?}",
        ledger.errors
    );
    t.check_nothing_lost(&ledger.acked).await;
}

/// The steps' names, from the saga's one table.
pub fn step_names() -> Vec<&'static str> {
    pgsteward::upgrade::record::SAGA
        .iter()
        .map(|s| s.name)
        .collect()
}

/// kill -9 of `pgsteward upgrade start` at every step boundary, then
/// `upgrade resume` (twice when the first resume rolls back a crashed write
/// pause): nothing acknowledged is lost and exactly one node is writable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_at_every_step_boundary_then_resume() {
    let mut t = Topology::new();
    let load = Load::start(
        &t.pooler_url(),
        3,
        Duration::from_millis(4),
        Duration::from_secs(600),
    );
    load.wait_progress(20).await;
    for step in step_names() {
        for at in ["start", "done"] {
            let fp = format!("{step}-{at}=kill");
            let out = t.upgrade(Some(&fp));
            assert!(killed(&out), "{fp}: expected SIGKILL\n{}", text(&out));
            let rec = latest_record(&t.state_dir());
            // Between the crash and the resume: never two writable nodes.
            t.check_one_writable_or_paused(&fp).await;
            let out = t.pgsteward(&["upgrade", "resume"], None);
            if !out.status.success() {
                let rolled_back = String::from_utf8_lossy(&out.stderr).contains("rolled back");
                assert!(rolled_back, "{fp}: resume failed\n{}", text(&out));
                assert!(!rec.promote_started(), "{fp}: rolled back after promote");
                load.wait_progress(10).await;
                t.check_one_writable().await;
                let out = t.pgsteward(&["upgrade", "resume"], None);
                assert!(out.status.success(), "{fp}: retry failed\n{}", text(&out));
            }
            t.follow_upgrade();
            load.wait_progress(10).await;
            let acked = load.ledger.lock().unwrap().acked.clone();
            t.check_nothing_lost(&acked).await;
        }
    }
    let ledger = load.stop().await;
    assert!(
        ledger.errors.is_empty(),
        "client errors: {:?}",
        ledger.errors
    );
    t.check_nothing_lost(&ledger.acked).await;
}

impl Topology {
    /// Right after a crash the pooler may be paused; still at most one node may accept writes.
    pub async fn check_one_writable_or_paused(&self, label: &str) {
        let mut writable = 0;
        let mut urls: Vec<String> = self.nodes.iter().cloned().chain(self.new_nodes()).collect();
        urls.sort();
        urls.dedup();
        for url in &urls {
            let Ok(spec) = pgsteward::pg::ConnSpec::parse_with(url, &harness::pg_env()) else {
                continue;
            };
            let Ok(c) = spec.connect(Duration::from_secs(3)).await else {
                continue;
            };
            if let Ok(r) = c
                .query_one(
                    "SELECT NOT pg_is_in_recovery() AND current_setting('default_transaction_read_only') = 'off'",
                    &[],
                )
                .await
            {
                if r.get::<_, bool>(0) {
                    writable += 1;
                }
            }
        }
        assert!(writable <= 1, "{label}: {writable} writable nodes");
    }
}

/// An error injected at each step before promote rolls back: the old primary
/// serves writes, nothing is lost; `upgrade abort` then removes the replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_before_promote_rolls_back_and_abort_removes_the_replica() {
    let t = Topology::new();
    let load = Load::start(
        &t.pooler_url(),
        3,
        Duration::from_millis(4),
        Duration::from_secs(600),
    );
    load.wait_progress(20).await;
    let before_promote: Vec<&str> = pgsteward::upgrade::record::SAGA
        .iter()
        .filter(|s| s.step.before_promote())
        .map(|s| s.name)
        .collect();
    for step in &before_promote {
        let fp = format!("{step}-done=error");
        let out = t.upgrade(Some(&fp));
        assert_eq!(out.status.code(), Some(1), "{fp}\n{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("rolled back"),
            "{fp}\n{}",
            text(&out)
        );
        load.wait_progress(10).await;
        assert_eq!(t.check_one_writable().await, t.primary_url, "{fp}");
        let rec = latest_record(&t.state_dir());
        let abort = t.pgsteward(&["upgrade", "abort"], None);
        assert!(abort.status.success(), "{fp}\n{}", text(&abort));
        if let Some(id) = rec.replica_id() {
            assert!(
                !t.dir().join("clusters").join(id).exists(),
                "{fp}: replica not removed"
            );
        }
        assert!(
            t.new_nodes().is_empty(),
            "{fp}: servers left: {:?}",
            t.new_nodes()
        );
    }
    // A crash in the middle of the roll back: resume finishes it.
    let fp = "final_sync-done=error,fence_old_primary-undo=kill";
    let out = t.upgrade(Some(fp));
    assert!(killed(&out), "{fp}\n{}", text(&out));
    let out = t.pgsteward(&["upgrade", "resume"], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rolled back"),
        "{}",
        text(&out)
    );
    load.wait_progress(10).await;
    assert_eq!(t.check_one_writable().await, t.primary_url);
    let abort = t.pgsteward(&["upgrade", "abort"], None);
    assert!(abort.status.success(), "{}", text(&abort));
    assert!(
        t.new_nodes().is_empty(),
        "servers left: {:?}",
        t.new_nodes()
    );

    let ledger = load.stop().await;
    assert!(
        ledger.errors.is_empty(),
        "client errors: {:?}",
        ledger.errors
    );
    t.check_nothing_lost(&ledger.acked).await;
}

/// A transaction held open through PgBouncer keeps PAUSE from finishing:
/// past pause_timeout the upgrade rolls back and writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_timeout_rolls_back_and_writes_continue() {
    let mut t = Topology::new();
    t.pause_timeout = "1s";
    t.write_config();
    let load = Load::start(
        &t.pooler_url(),
        3,
        Duration::from_millis(4),
        Duration::from_secs(120),
    );
    load.wait_progress(20).await;
    let holder = harness::connect(&t.pooler_url()).await;
    holder
        .simple_query("BEGIN; INSERT INTO ledger (id) VALUES (-100)")
        .await
        .unwrap();
    // The upgrade's precheck would refuse a transaction older than pause_timeout:
    // start right away so the transaction is young at precheck and old at PAUSE.
    let t0 = Instant::now();
    let out = t.upgrade(None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("rolled back") && stderr.contains("pause"),
        "{}",
        text(&out)
    );
    assert!(t0.elapsed() < Duration::from_secs(60));
    holder.simple_query("COMMIT").await.unwrap();
    load.wait_progress(20).await;
    assert_eq!(t.check_one_writable().await, t.primary_url);
    let abort = t.pgsteward(&["upgrade", "abort"], None);
    assert!(abort.status.success(), "{}", text(&abort));
    let mut ledger = load.stop().await;
    assert!(
        ledger.errors.is_empty(),
        "client errors: {:?}",
        ledger.errors
    );
    ledger.acked.push(-100);
    t.check_nothing_lost(&ledger.acked).await;
}

/// Benchmark: `pgsteward upgrade` against the hand-scripted cutover of
/// `shared/reference/switchover/` (PAUSE → LSN → replay wait → promote →
/// rewrite ini → RELOAD → RESUME, then stop the old primary), reimplemented
/// here, both promote variants, alternating on one topology under ~300 write
/// tx/s through PgBouncer. Prints figures; asserts only correctness.
///
/// `cargo test --release --features failpoints --test it upgrade::bench_ -- --ignored --nocapture`
/// (`BENCH_RUNS`, default 5 per variant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_upgrade_vs_hand_scripted_cutover() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut t = Topology::new();
    let mut results: std::collections::BTreeMap<&str, Vec<RunFigures>> = Default::default();
    for run in 0..runs {
        for variant in ["pgsteward", "hand_wait", "hand_poll"] {
            let load = Load::start(
                &t.pooler_url(),
                8,
                Duration::from_millis(25),
                Duration::from_secs(300),
            );
            load.wait_progress(200).await;
            let (window, steps, from, to) = match variant {
                "pgsteward" => {
                    let out = t.upgrade(None);
                    assert!(out.status.success(), "{}", text(&out));
                    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
                    let window = stdout
                        .lines()
                        .find_map(|l| {
                            l.strip_prefix("write pause (PAUSE sent -> RESUME returned): ")
                        })
                        .and_then(|v| v.trim_end_matches(" ms").parse::<f64>().ok())
                        .unwrap_or(f64::NAN);
                    let rec = latest_record(&t.state_dir());
                    let steps: Vec<(String, f64)> = pgsteward::upgrade::step_timings(&rec)
                        .into_iter()
                        .map(|(s, d, _)| {
                            (
                                s.name().to_string(),
                                d.map(|d| d.as_secs_f64() * 1000.0).unwrap_or(f64::NAN),
                            )
                        })
                        .collect();
                    let from: std::time::SystemTime = rec
                        .step(pgsteward::upgrade::record::Step::PauseWrites)
                        .started_at
                        .unwrap()
                        .into();
                    let to: std::time::SystemTime = rec
                        .step(pgsteward::upgrade::record::Step::ResumeWrites)
                        .finished_at
                        .unwrap()
                        .into();
                    t.follow_upgrade();
                    (window, steps, from, to)
                }
                v => hand_cutover(&mut t, v == "hand_poll", run).await,
            };
            load.wait_progress(200).await;
            let ledger = load.stop().await;
            let lost = {
                let primary = t.check_one_writable().await;
                let rows = harness::query(&primary, "SELECT id FROM ledger").await;
                let have: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
                ledger.acked.iter().filter(|id| !have.contains(id)).count()
            };
            let figures = RunFigures::new(&ledger, window, steps, from, to, lost);
            println!("run {run} {variant:<10} {figures}");
            results.entry(variant).or_default().push(figures);
        }
    }
    println!("\n| variant | client max tx latency (ms) min/median/max | largest commit gap (ms) min/median/max | server window (ms) median | errors | lost |");
    println!("|---|---|---|---|---|---|");
    for (variant, runs) in &results {
        let lat: Vec<f64> = runs.iter().map(|r| r.max_latency).collect();
        let gap: Vec<f64> = runs.iter().map(|r| r.max_gap).collect();
        let win: Vec<f64> = runs.iter().map(|r| r.window).collect();
        println!(
            "| {variant} | {} | {} | {:.1} | {} | {} |",
            mmm(&lat),
            mmm(&gap),
            median(&win),
            runs.iter().map(|r| r.errors).sum::<usize>(),
            runs.iter().map(|r| r.lost).sum::<usize>()
        );
    }
    for (variant, runs) in &results {
        let names: Vec<String> = runs[0].steps.iter().map(|s| s.0.clone()).collect();
        let medians: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                format!(
                    "{n} {:.1}",
                    median(&runs.iter().map(|r| r.steps[i].1).collect::<Vec<_>>())
                )
            })
            .collect();
        println!("step medians (ms) {variant}: {}", medians.join(", "));
    }
}

struct RunFigures {
    max_latency: f64,
    max_gap: f64,
    window: f64,
    errors: usize,
    lost: usize,
    steps: Vec<(String, f64)>,
}

impl RunFigures {
    /// Latency and gaps of the commits acknowledged around the cutover window.
    fn new(
        l: &Ledger,
        window: f64,
        steps: Vec<(String, f64)>,
        from: std::time::SystemTime,
        to: std::time::SystemTime,
        lost: usize,
    ) -> RunFigures {
        let lo = from - Duration::from_millis(200);
        let hi = to + Duration::from_millis(1000);
        let mut acks: Vec<std::time::SystemTime> = Vec::new();
        let mut max_latency = Duration::ZERO;
        for (i, (_, lat)) in l.latencies.iter().enumerate() {
            let at = l.wall[i];
            if at >= lo && at <= hi {
                acks.push(at);
                max_latency = max_latency.max(*lat);
            }
        }
        acks.sort();
        let max_gap = acks
            .windows(2)
            .map(|w| w[1].duration_since(w[0]).unwrap_or_default())
            .max()
            .unwrap_or_default();
        RunFigures {
            max_latency: max_latency.as_secs_f64() * 1000.0,
            max_gap: max_gap.as_secs_f64() * 1000.0,
            window,
            errors: l.errors.len(),
            lost,
            steps,
        }
    }
}

impl std::fmt::Display for RunFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "max tx latency {:.1} ms, largest gap {:.1} ms, window {:.1} ms, errors {}, lost {}; steps {}",
            self.max_latency,
            self.max_gap,
            self.window,
            self.errors,
            self.lost,
            self.steps.iter().map(|(n, d)| format!("{n} {d:.1}")).collect::<Vec<_>>().join(", ")
        )
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn mmm(v: &[f64]) -> String {
    let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.1} / {:.1} / {max:.1}", median(v))
}

/// The reference's sequence, by hand: returns (window ms, step timings, window start, end).
async fn hand_cutover(
    t: &mut Topology,
    poll: bool,
    run: usize,
) -> (
    f64,
    Vec<(String, f64)>,
    std::time::SystemTime,
    std::time::SystemTime,
) {
    let class = t.next_class();
    let sb = if class == "large" { "40MB" } else { "48MB" };
    let settings: Vec<(String, String)> = [
        ("shared_buffers", sb),
        ("fsync", "off"),
        ("full_page_writes", "off"),
        ("wal_receiver_status_interval", "1s"),
        ("log_min_messages", "warning"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let old_spec = pgsteward::pg::ConnSpec::parse(&t.primary_url).unwrap();
    let old_port = old_spec.host_port().1;
    let old = harness::connect(&t.primary_url).await;
    let old_dir: String = old
        .query_one("SHOW data_directory", &[])
        .await
        .unwrap()
        .get(0);
    let dir = t
        .dir()
        .join("clusters")
        .join(format!("hand{run}{}", if poll { "p" } else { "w" }));
    let port = pgsteward::localpg::free_port().unwrap();
    let login = must(pgsteward::localpg::ChildLogin::new(
        "127.0.0.1",
        old_port,
        harness::STEWARD_USER,
        Some(harness::STEWARD_PASSWORD),
        must(pgsteward::localpg::ServerUser::detect()),
    ));
    let replica = must(Cluster::basebackup_as(
        &login,
        &dir,
        port,
        harness::bin_dir(),
        &settings,
    ))
    .with_superuser_password(harness::STEWARD_PASSWORD);
    must(replica.start());
    must(pgsteward::localpg::stop_when_gone(
        &replica,
        std::process::id(),
    ));
    let new_url = replica.url("app");
    let new = harness::connect(&new_url).await;
    // Caught up before the cutover, as pgsteward's wait_catchup does.
    loop {
        let lsn: String = old
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        let ok: bool = new
            .query_one(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&lsn],
            )
            .await
            .unwrap()
            .get(0);
        if ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admin = harness::connect(&t.pooler.admin_url()).await;
    let ini = t.pooler.ini.clone();
    let ini_text = std::fs::read_to_string(&ini).unwrap();
    let mut steps = Vec::new();
    let mut mark = Instant::now();
    let mut lap = |name: &str, steps: &mut Vec<(String, f64)>| {
        steps.push((name.to_string(), mark.elapsed().as_secs_f64() * 1000.0));
        mark = Instant::now();
    };
    let from = std::time::SystemTime::now();
    let t0 = Instant::now();
    admin.simple_query("PAUSE app").await.unwrap();
    lap("pause", &mut steps);
    let lsn: String = old
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    lap("read_lsn", &mut steps);
    loop {
        let ok: bool = new
            .query_one(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&lsn],
            )
            .await
            .unwrap()
            .get(0);
        if ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    lap("wait_replay", &mut steps);
    if poll {
        new.query_one("SELECT pg_promote(wait => false)", &[])
            .await
            .unwrap();
        loop {
            let r: bool = new
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await
                .unwrap()
                .get(0);
            if !r {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    } else {
        let r: bool = new
            .query_one("SELECT pg_promote(wait => true, wait_seconds => 60)", &[])
            .await
            .unwrap()
            .get(0);
        assert!(r);
    }
    lap("promote", &mut steps);
    let txt = pgsteward::pooler::retarget_ini(&ini_text, "app", "127.0.0.1", port).unwrap();
    let tmp = ini.with_extension("tmp");
    std::fs::write(&tmp, txt).unwrap();
    if let Some(u) = t.pooler.user {
        std::os::unix::fs::chown(&tmp, Some(u.uid), Some(u.gid)).unwrap();
    }
    std::fs::rename(&tmp, &ini).unwrap();
    lap("rewrite_ini", &mut steps);
    admin.simple_query("RELOAD").await.unwrap();
    lap("reload", &mut steps);
    admin.simple_query("RESUME app").await.unwrap();
    lap("resume", &mut steps);
    let window = t0.elapsed().as_secs_f64() * 1000.0;
    let to = std::time::SystemTime::now();
    // Fence after the window, as the reference does (stop the old primary after 1 s).
    drop(old);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let old_cluster = Cluster::at(Path::new(&old_dir), old_port, harness::bin_dir()).unwrap();
    must(old_cluster.stop(StopMode::Fast));
    t.primary_url = new_url.clone();
    t.nodes.push(new_url);
    t.classes_used += 1;
    t.write_config();
    (window, steps, from, to)
}
