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

use pgsteward::localpg::{Cluster, LocalPgBouncer, StopMode};
use pgsteward::upgrade::journal;
use pgsteward::workload::{Plan, Workload, LEDGER_TABLE};

use crate::harness::{self, must, text, TestCluster};

pub use pgsteward::workload::Ledger;

mod after_promote;
mod completes;
mod crashes;
mod metric;
mod rolls_back;

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

    /// The invariants every run ends on: stop the writers, no client saw an
    /// error, and every acknowledged commit is on the one writable node.
    pub async fn finish_clean(self, t: &Topology) {
        self.finish_clean_with(t, &[]).await;
    }

    /// [`Load::finish_clean`], where the test also wrote the ledger `ids`
    /// itself (outside the writers) and they must be there too.
    pub async fn finish_clean_with(self, t: &Topology, ids: &[i64]) {
        let mut ledger = self.stop().await;
        assert!(
            ledger.errors.is_empty(),
            "client errors: {:?}",
            ledger.errors
        );
        ledger.acked.extend_from_slice(ids);
        t.check_nothing_lost(&ledger.acked).await;
    }
}

/// One topology for a whole test: the original primary + replica, PgBouncer,
/// a state dir and a data root; `primary_url` follows the upgrades.
pub struct Topology {
    pub cluster: TestCluster,
    pub pooler: LocalPgBouncer,
    /// More PgBouncer instances in front of the same primary (the config
    /// lists them all: `cutover.admin`, `cutover.config_file`).
    pub more_poolers: Vec<LocalPgBouncer>,
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
        // As an operator following docs/privileges.md sets an upgrade up: the
        // steward with exactly the upgrade grants, the application's tables
        // owned by app_owner, the application role writing them.
        harness::make_roles(&cluster.primary, harness::Grants::UpgradeLocal);
        must(cluster.primary.psql("postgres", "CREATE DATABASE app"));
        harness::prepare_db_with(&cluster.primary, "app", harness::Grants::UpgradeLocal);
        must(cluster.primary.psql(
            "app",
            &format!(
                "{LEDGER_TABLE}; ALTER TABLE ledger OWNER TO {}",
                harness::OWNER_USER
            ),
        ));
        harness::grant_app(&cluster.primary, "app");
        cluster.wait_replicas_caught_up();
        let pooler = harness::pooler(
            cluster.path(),
            &cluster.primary,
            "app",
            &[("query_wait_timeout", "60")],
        );
        let primary_url = harness::steward_url(&cluster.primary, "app");
        let mut t = Topology {
            nodes: vec![primary_url.clone()],
            primary_url,
            config: PathBuf::new(),
            cluster,
            pooler,
            more_poolers: Vec::new(),
            classes_used: 0,
            pause_timeout: "5s",
            retire_after: "0s",
            step_timeout: "60s",
        };
        t.write_config();
        t
    }

    /// Every PgBouncer instance, the first one first.
    pub fn poolers(&self) -> impl Iterator<Item = &LocalPgBouncer> {
        std::iter::once(&self.pooler).chain(self.more_poolers.iter())
    }

    /// `n` PgBouncer instances in all, each with the entries `app` and
    /// `batch` on the primary's database `app` (two entries per instance
    /// that reach the primary).
    pub fn with_poolers(n: usize) -> Topology {
        let mut t = Topology::new();
        let mut all = Vec::new();
        for i in 0..n {
            let port = must(pgsteward::localpg::free_port());
            let db = |name: &str| pgsteward::localpg::PgBouncerDatabase {
                name: name.into(),
                host: "127.0.0.1".into(),
                port: t.cluster.primary.port,
                dbname: "app".into(),
            };
            all.push(must(LocalPgBouncer::start(
                &t.dir().join(format!("pgbouncer-{i}")),
                port,
                &[db("app"), db("batch")],
                &harness::pooler_auth(),
                &[("query_wait_timeout", "60")],
            )));
        }
        let mut all = all.into_iter();
        if let Some(first) = all.next() {
            t.pooler = first;
        }
        t.more_poolers = all.collect();
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
# Retiring deletes the old primary's data: the crash test upgrades 36
# times, and kept directories would fill a CI machine's disk (5 GB).
keep_old_data = false
{bin_dir}

[upgrade.local.classes.large]
max_wal_size = "64MB"
min_wal_size = "32MB"
shared_buffers = "40MB"
fsync = "off"
full_page_writes = "off"
wal_receiver_status_interval = "1s"
log_min_messages = "warning"

[upgrade.local.classes.larger]
max_wal_size = "64MB"
min_wal_size = "32MB"
shared_buffers = "48MB"
fsync = "off"
full_page_writes = "off"
wal_receiver_status_interval = "1s"
log_min_messages = "warning"

[cutover]
kind = "pgbouncer"
admin = ["{admin}"]
config_file = ["{ini}"]
database = "app"
"#,
            primary = self.primary_url,
            replica = harness::steward_url(&self.cluster.replicas[0], "app"),
            state = self.state_dir().display(),
            pause = self.pause_timeout,
            retire = self.retire_after,
            step = self.step_timeout,
            root = dir.join("clusters").display(),
            admin = self
                .poolers()
                .map(|p| p.admin_url())
                .collect::<Vec<_>>()
                .join("\", \""),
            ini = self
                .poolers()
                .map(|p| p.ini.display().to_string())
                .collect::<Vec<_>>()
                .join("\", \""),
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

    /// The application's URL through PgBouncer (the `app` role, not a superuser).
    pub fn pooler_url(&self) -> String {
        harness::app_pooler_url(&self.pooler, "app")
    }

    /// Exactly one node accepts writes and PgBouncer points at it; returns its URL.
    pub async fn check_one_writable(&self) -> String {
        let mut writable = Vec::new();
        for url in self.all_nodes() {
            let url = &url;
            let Some(c) = self.connect_own(url).await else {
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
        let w = pgsteward::pg::ConnSpec::parse(&writable[0]).unwrap();
        for p in self.poolers() {
            let text = std::fs::read_to_string(&p.ini).unwrap();
            for (name, _, port) in pgsteward::pooler::ini_entries(&text) {
                assert_eq!(
                    w.host_port().1,
                    port,
                    "{}: entry {name} points elsewhere than the writable node",
                    p.ini.display()
                );
            }
        }
        writable.pop().unwrap()
    }

    /// A session on `url` if the server there is one of this topology's.
    /// A retired node's port is free again, and a test running beside this
    /// one may start its own server on it (same roles, same passwords, a
    /// database `app` too): that server is writable and not ours. Ours keep
    /// their data directories under [`Topology::dir`].
    pub async fn connect_own(&self, url: &str) -> Option<tokio_postgres::Client> {
        let spec = pgsteward::pg::ConnSpec::parse_with(url, &harness::pg_env()).ok()?;
        let c = spec.connect(Duration::from_secs(3)).await.ok()?;
        let row = c
            .query_one("SELECT current_setting('data_directory')", &[])
            .await
            .ok()?;
        let data: String = row.get(0);
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        canon(Path::new(&data))
            .starts_with(canon(self.dir()))
            .then_some(c)
    }

    /// Every node that was or may be primary, one URL per server (port).
    pub fn all_nodes(&self) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        self.nodes
            .iter()
            .cloned()
            .chain(self.new_nodes())
            .filter(|u| {
                let port = pgsteward::pg::ConnSpec::parse_with(u, &harness::pg_env())
                    .map(|s| s.host_port().1)
                    .unwrap_or(0);
                seen.insert(port)
            })
            .collect()
    }

    /// An aborted (or wholly rolled back) upgrade left none of its servers;
    /// `label` says after what.
    pub fn assert_no_new_servers(&self, label: &str) {
        let left = self.new_nodes();
        assert!(left.is_empty(), "{label}servers left: {left:?}");
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
                    "postgres://{}@127.0.0.1:{port}/app?sslmode=disable",
                    harness::STEWARD_USER
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

/// Waits (bounded) until no pause keeper of `state_dir` is alive: after a
/// runner died or stopped inside the write pause, its keeper closes the
/// window (see `upgrade::keeper`). Returns how long that took.
pub fn wait_keeper(state_dir: &Path) -> Duration {
    let t0 = Instant::now();
    while pgsteward::upgrade::keeper::live_keeper(state_dir).is_some() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the pause keeper still runs after 120 s: {}",
            std::fs::read_to_string(state_dir.join("keeper.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    t0.elapsed()
}

fn killed(o: &Output) -> bool {
    use std::os::unix::process::ExitStatusExt;
    o.status.signal() == Some(9)
}

/// The steps' names, from the saga's one table.
pub fn step_names() -> Vec<&'static str> {
    pgsteward::upgrade::table::SAGA
        .iter()
        .map(|r| r.step.name())
        .collect()
}

impl Topology {
    /// Right after a crash the pooler may be paused; still at most one node may accept writes.
    pub async fn check_one_writable_or_paused(&self, label: &str) {
        let mut writable = 0;
        for url in &self.all_nodes() {
            let Some(c) = self.connect_own(url).await else {
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
