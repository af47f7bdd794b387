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
use std::time::{Duration, Instant};

use pgsteward::localpg::{Cluster, Pooler, StopMode};
use pgsteward::upgrade::journal;
use pgsteward::workload::{Plan, Workload, LEDGER_TABLE};

use crate::harness::{self, must, TestCluster};

pub use pgsteward::workload::Ledger;

/// Writers through PgBouncer (the library's [`pgsteward::workload`]): one
/// ledger id per transaction, every acknowledged id and every error recorded.
/// Bounded: they stop when told or after `max_run`.
pub struct Load(Workload);

impl Load {
    pub fn start(url: &str, workers: usize, pace: Duration, max_run: Duration) -> Load {
        let spec = must(pgsteward::pg::ConnSpec::parse(url));
        Load(
            Plan::ledger_writers(workers)
                .pace(pace)
                .max_run(max_run)
                .connect_timeout(Duration::from_secs(10))
                .start(&spec),
        )
    }

    /// Every id acknowledged so far (the writers go on).
    pub fn acked_ids(&self) -> Vec<i64> {
        self.0.snapshot().acked
    }

    /// Waits until `n` more commits were acknowledged (writes go on), or
    /// fails with what the writers saw.
    pub async fn wait_progress(&self, n: usize) {
        must(self.0.wait_acked(n, Duration::from_secs(30)).await);
    }

    pub async fn stop(self) -> Ledger {
        self.0.stop().await
    }
}

/// One topology for a whole test: the original primary + replica, PgBouncer,
/// a state dir and a data root; `primary_url` follows the upgrades.
pub struct Topology {
    pub cluster: TestCluster,
    pub pooler: Pooler,
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
        must(cluster.primary.psql("app", LEDGER_TABLE));
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

pub(crate) fn text(o: &Output) -> String {
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
            t.check_one_writable_or_paused(&format!("{fp}, after resume"))
                .await;
            t.follow_upgrade();
            load.wait_progress(10).await;
            let acked = load.acked_ids();
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
