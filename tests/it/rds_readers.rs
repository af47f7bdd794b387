//! The platform's own RDS topology end to end: a primary with two read
//! replicas, upgraded under a writer that records every acknowledged commit
//! and readers reading through PgBouncer's read entries.
//!
//! The control plane is the scripted RDS (rds_scripted.rs) with simulated
//! time: every rename takes four simulated minutes, a new reader is slow to
//! become available, and the new server spends a minute `modifying` when its
//! automated backups are turned on. Local clusters stand in for the
//! instances: the source is a primary, the old readers and the new server are
//! its streaming replicas, the new readers are cascading replicas of the new
//! server (what `CreateDBInstanceReadReplica` from a read replica makes).
//!
//! Checked: nothing acknowledged is lost, the write pause is the same with
//! `identifier-swap` as with `pgbouncer` (under a second: no rename in it),
//! reads are answered throughout, the new readers follow the new primary,
//! the old readers are deleted without a snapshot and the old primary with
//! one, and a crash between any two renames resumes with the next.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgsteward::config;
use pgsteward::localpg::{Cluster, LocalPgBouncer, PgBouncerDatabase};
use pgsteward::provider::rds::{
    final_snapshot_id, rds_old_id, rds_replica_id, Instance, RdsProvider, UPGRADE_TAG,
};
use pgsteward::upgrade::{journal, observe, record, runner};

use crate::harness::{self, must, TestCluster};
use crate::rds_scripted::{Scripted, SOURCE};
use crate::upgrade::Load;

const UID: &str = "u1";
pub(crate) const READERS: [&str; 2] = ["platform-postgres-ro-1", "platform-postgres-ro-2"];
const RENAME_MINUTES: u64 = 4;

struct Stage {
    cluster: TestCluster,
    new_readers: Vec<Cluster>,
    pooler: LocalPgBouncer,
    api: Arc<Scripted>,
    cfg: config::Cluster,
}

impl Stage {
    fn new(repoint: &str) -> Stage {
        let cluster = TestCluster::start(3);
        let p = &cluster.primary;
        // The steward as on RDS (the master user's grants), the tables the owner's.
        harness::make_roles(p, harness::Grants::UpgradeRds);
        must(p.psql("postgres", "CREATE DATABASE app"));
        harness::prepare_db_with(p, "app", harness::Grants::UpgradeRds);
        must(p.psql(
            "app",
            "CREATE TABLE ledger (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now()); \
             ALTER TABLE ledger OWNER TO app_owner",
        ));
        harness::grant_app(p, "app");
        // A base backup taken on a standby needs full-page writes since its
        // last restartpoint (the test servers run without them).
        must(p.psql("postgres", "ALTER SYSTEM SET full_page_writes = on"));
        must(p.psql("postgres", "SELECT pg_reload_conf()"));
        must(p.psql("postgres", "CHECKPOINT"));
        cluster.wait_replicas_caught_up();
        must(cluster.replicas[0].psql("postgres", "CHECKPOINT"));
        // What RDS makes from the new server while it is still a replica.
        let new_readers: Vec<Cluster> = (0..2)
            .map(|i| {
                harness::new_replica(
                    cluster.path(),
                    &format!("newreader{i}"),
                    &cluster.replicas[0],
                )
            })
            .collect();
        let entry = |name: &str, port: u16| PgBouncerDatabase {
            name: name.into(),
            host: "127.0.0.1".into(),
            port,
            dbname: "app".into(),
        };
        let pooler = must(LocalPgBouncer::start(
            &cluster.path().join("pgbouncer"),
            must(pgsteward::localpg::free_port()),
            &[
                entry("app", p.port),
                entry("app_ro1", cluster.replicas[1].port),
                entry("app_ro2", cluster.replicas[2].port),
            ],
            &harness::pooler_auth(),
            &[("query_wait_timeout", "60")],
        ));

        let api = Scripted::with_source();
        {
            let mut st = api.state.lock().unwrap();
            st.tick = 30;
            st.rename_takes = RENAME_MINUTES * 60;
            st.modify_takes = 60;
            st.delete_takes = Some(300);
            st.instances
                .get_mut(SOURCE)
                .unwrap()
                .read_replicas
                .extend(READERS.iter().map(|r| r.to_string()));
        }
        for r in READERS {
            api.put(Instance {
                id: r.into(),
                status: "available".into(),
                class: "db.r5.large".into(),
                engine: "postgres".into(),
                engine_version: "15.4".into(),
                replica_source: Some(SOURCE.into()),
                ..Instance::default()
            });
        }
        api.bind(SOURCE, p);
        api.bind(READERS[0], &cluster.replicas[1]);
        api.bind(READERS[1], &cluster.replicas[2]);
        api.bind(&rds_replica_id(SOURCE, UID), &cluster.replicas[0]);
        for (i, r) in READERS.iter().enumerate() {
            api.bind(&rds_replica_id(r, UID), &new_readers[i]);
        }
        // A reader slow to become available: creating, then its first backup.
        let mut slow = vec!["creating"; 6];
        slow.extend(["backing-up", "backing-up", "available"]);
        api.script(&rds_replica_id(READERS[1], UID), &slow);

        let toml = format!(
            r#"
[database]
primary = "{primary}"
connect_timeout = "5s"
[upgrade]
provider = "rds"
state_dir = "{state}"
catchup_max_bytes = "1MB"
pause_timeout = "5s"
retire_after = "0s"
step_timeout = "60s"
[upgrade.rds]
source_instance = "{SOURCE}"
region = "us-east-1"
endpoint_url = "http://127.0.0.1:9"
repoint = "{repoint}"
poll_interval = "5ms"
reader_class = "db.r5.xlarge"
[cutover]
kind = "pgbouncer"
admin = ["{admin}"]
config_file = "{ini}"
database = "app"
"#,
            primary = harness::steward_url(p, "app"),
            state = cluster.path().join("state").display(),
            admin = pooler.admin_url(),
            ini = pooler.ini.display(),
        );
        let cfg = must(pgsteward::config::from_figment(
            figment::Figment::from(
                <figment::providers::Toml as figment::providers::Format>::string(&toml),
            ),
            None,
        ))
        .cluster;
        Stage {
            cluster,
            new_readers,
            pooler,
            api,
            cfg,
        }
    }

    fn provider(&self) -> Box<RdsProvider> {
        Box::new(must(RdsProvider::with_api(&self.cfg, self.api.clone())))
    }

    async fn saga(&self, guarded: bool) -> runner::Saga {
        let state = &self.cfg.state_dir;
        let journal = match journal::latest(state).unwrap() {
            Some(path) => journal::Journal::open(&path).unwrap(),
            None => journal::Journal::create(
                state,
                record::Event::Created {
                    kind: record::UPGRADE_KIND.into(),
                    id: UID.into(),
                    target_class: "db.r5.2xlarge".into(),
                    provider: "rds".into(),
                    source_primary: self.cfg.database.primary.without_password(),
                    saga: record::SAGA_VERSION,
                },
            )
            .unwrap(),
        };
        let mut saga = runner::Saga::new(
            self.cfg.clone(),
            journal,
            self.provider(),
            tokio_util::sync::CancellationToken::new(),
            true,
        );
        if guarded {
            let mut g = pgsteward::upgrade::guard::Guard::acquire(
                &self.cfg.database.primary,
                UID,
                &state.display().to_string(),
                Duration::from_secs(5),
                pgsteward::pooler::query_timeout(&self.cfg),
            )
            .await
            .unwrap();
            g.claim().await.unwrap();
            saga.guard = Some(g);
        }
        saga
    }
}

/// One statement, failing with the server's own message. Tried three
/// times: right after the old readers are deleted PgBouncer may hand out
/// one idle server connection to a server that just went away.
async fn query(url: &str, sql: &str) -> Vec<tokio_postgres::Row> {
    let mut last = String::new();
    for _ in 0..3 {
        let client = harness::connect(url).await;
        match client.query(sql, &[]).await {
            Ok(rows) => return rows,
            Err(e) => last = pgsteward::pg::server_message(&e),
        }
        eprintln!("{sql}: {last}; trying again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{sql}: {last}")
}

/// Reads through PgBouncer's read entries until stopped: answers and errors.
struct Reads {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Reads {
    fn start(pooler: &LocalPgBouncer) -> Reads {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let handles = ["app_ro1", "app_ro2"]
            .iter()
            .map(|db| {
                let url = pooler.url(db, "postgres");
                let (stop, ok, errors) = (stop.clone(), ok.clone(), errors.clone());
                tokio::spawn(async move {
                    let began = std::time::Instant::now();
                    while !stop.load(Ordering::SeqCst) && began.elapsed() < Duration::from_secs(300)
                    {
                        let r = async {
                            let c = must(pgsteward::pg::ConnSpec::parse(&url))
                                .connect(Duration::from_secs(10))
                                .await
                                .map_err(|e| e.to_string())?;
                            c.simple_query("SELECT count(*) FROM ledger")
                                .await
                                .map_err(|e| pgsteward::pg::server_message(&e))
                        }
                        .await;
                        match r {
                            Ok(_) => {
                                ok.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => errors.lock().unwrap().push(e),
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
            })
            .collect();
        Reads {
            stop,
            ok,
            errors,
            handles,
        }
    }

    async fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.handles {
            let _ = h.await;
        }
        let errors = self.errors.lock().unwrap().clone();
        (self.ok.load(Ordering::SeqCst), errors)
    }
}

/// The three whole upgrades run one at a time: nine servers each on two
/// cores, and the write pause is what they measure.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The whole upgrade under load; returns the write pause.
async fn upgrade_under_load(s: &Stage, guarded: bool) -> Duration {
    let provider = s.provider();
    let mut poolers = pgsteward::pooler::Poolers::from_config(&s.cfg);
    let pre = observe::prechecks(
        &s.cfg,
        provider.as_ref(),
        &mut poolers,
        "db.r5.2xlarge",
        None,
    )
    .await
    .unwrap();
    let failed: Vec<_> = pre.checks.iter().filter(|c| !c.ok).collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(pre.source.readers.len(), 2, "{:?}", pre.source);

    let load = Load::start(
        &s.pooler.url("app", "postgres"),
        3,
        Duration::from_millis(4),
        Duration::from_secs(300),
    );
    load.wait_progress(20).await;
    let reads = Reads::start(&s.pooler);
    let mut saga = s.saga(guarded).await;
    saga.drive().await.unwrap();
    assert_eq!(saga.record().phase, record::Phase::Completed);
    let pause = saga
        .pause_window()
        .expect("one process ran the whole window");
    let rec = saga.record().clone();
    drop(saga);
    load.wait_progress(50).await;
    let ledger = load.stop().await;
    let (answered, read_errors) = reads.stop().await;

    // Nothing acknowledged is lost; writes never failed, they waited.
    let new_primary = &s.cluster.replicas[0];
    let rows = query(&new_primary.url("app"), "SELECT id FROM ledger").await;
    let have: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    let missing: Vec<&i64> = ledger.acked.iter().filter(|i| !have.contains(i)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged commits lost",
        missing.len()
    );
    assert!(
        ledger.errors.is_empty(),
        "write errors: {:?}",
        ledger.errors
    );
    assert!(answered > 20, "reads answered: {answered}");
    assert!(read_errors.is_empty(), "read errors: {read_errors:?}");

    // Reads now reach the new readers, which follow the new primary.
    // Negative: the writers' ids are positive.
    let marker: i64 = -1;
    query(
        &s.pooler.url("app", "postgres"),
        &format!("INSERT INTO ledger (id) VALUES ({marker})"),
    )
    .await;
    for (i, db) in ["app_ro1", "app_ro2"].iter().enumerate() {
        let url = s.pooler.url(db, "postgres");
        let mut seen = false;
        for _ in 0..200 {
            let rows = query(
                &url,
                &format!("SELECT inet_server_port(), count(*) FROM ledger WHERE id = {marker}"),
            )
            .await;
            assert_eq!(
                rows[0].get::<_, i32>(0) as u16,
                s.new_readers[i].port,
                "{db}"
            );
            if rows[0].get::<_, i64>(1) == 1 {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(seen, "{db}: the new reader does not follow the new primary");
    }

    // No slow step inside the window: every rename after RESUME.
    let paused = rec.step(record::Step::PauseWrites).started_at.unwrap();
    let resumed = rec.step(record::Step::ResumeWrites).finished_at.unwrap();
    for at in &s.api.state.lock().unwrap().renamed_at {
        assert!(
            *at < paused || *at > resumed,
            "a rename at {at} inside the pause"
        );
    }
    for step in [
        record::Step::RenameOldAside,
        record::Step::RenameNewIn,
        record::Step::MoveReads,
    ] {
        assert!(rec.step(step).started_at.unwrap() >= resumed, "{step}");
    }
    let st = s.api.state.lock().unwrap();
    // Old readers: deleted with SkipFinalSnapshot; the old primary with a final snapshot.
    assert_eq!(
        st.calls.iter().filter(|c| *c == "snapshot SKIP").count(),
        2,
        "{:?}",
        st.calls
    );
    assert!(st
        .calls
        .iter()
        .any(|c| c.starts_with("snapshot ") && c.ends_with("-final")));
    for r in READERS {
        let holder = st.instances.get(r);
        if s.cfg.upgrade.rds.as_ref().unwrap().repoint
            == pgsteward::config::RdsRepoint::IdentifierSwap
        {
            let h = holder.expect("the reader's name is held");
            assert_eq!(
                h.tags.get(UPGRADE_TAG).map(String::as_str),
                Some(UID),
                "{r}"
            );
            assert_eq!(h.class, "db.r5.xlarge", "reader_class");
        }
    }
    pause
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_primary_with_two_readers_identifier_swap_pause_excludes_renames() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Stage::new("identifier-swap");
    let pause = upgrade_under_load(&s, true).await;
    let renames = s.api.state.lock().unwrap().renames.clone();
    assert_eq!(renames.len(), 6, "{renames:?}");
    // Old name aside first, then the new server in, for each name.
    assert_eq!(renames[0].from, SOURCE);
    assert_eq!(renames[1].to, SOURCE);
    let simulated: u64 = renames.iter().map(|r| r.done - r.at).sum();
    assert!(simulated >= 6 * RENAME_MINUTES * 60, "{renames:?}");
    println!(
        "identifier-swap: write pause {:.1} ms; 6 renames took {} simulated minutes",
        pause.as_secs_f64() * 1000.0,
        simulated / 60
    );
    assert!(pause < Duration::from_secs(1), "write pause {pause:?}");
    let st = s.api.state.lock().unwrap();
    let new_primary = st.instances.get(SOURCE).expect("the source's name is held");
    assert_eq!(
        new_primary.tags.get(UPGRADE_TAG).map(String::as_str),
        Some(UID)
    );
    assert!(
        st.calls
            .iter()
            .any(|c| c == &format!("snapshot {}", final_snapshot_id(&rds_old_id(SOURCE, UID)))),
        "{:?}",
        st.calls
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_primary_with_two_readers_pgbouncer_moves_read_entries() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Stage::new("pgbouncer");
    let pause = upgrade_under_load(&s, true).await;
    println!(
        "pgbouncer: write pause {:.1} ms",
        pause.as_secs_f64() * 1000.0
    );
    assert!(pause < Duration::from_secs(1), "write pause {pause:?}");
    let st = s.api.state.lock().unwrap();
    assert!(st.renames.is_empty(), "pgbouncer renames nothing");
    assert!(st
        .calls
        .contains(&format!("snapshot {}", final_snapshot_id(SOURCE))));
}

/// The process dies after RDS accepted each rename, before it heard back:
/// every resume goes on with the rename it finds done or under way and never
/// issues one twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_crash_after_every_rename_then_resume() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Stage::new("identifier-swap");
    {
        let mut st = s.api.state.lock().unwrap();
        st.lose_answer.insert(SOURCE.to_string());
        st.lose_answer.insert(rds_replica_id(SOURCE, UID));
        for r in READERS {
            st.lose_answer.insert(r.to_string());
            st.lose_answer.insert(rds_replica_id(r, UID));
        }
    }
    let mut resumes = 0;
    loop {
        let mut saga = s.saga(false).await;
        match saga.drive().await {
            Ok(()) => break,
            Err(pgsteward::upgrade::UpgradeError::NeedsResume { reason, .. }) => {
                assert!(reason.contains("RequestSentAnswerLost"), "{reason}");
                resumes += 1;
                assert!(resumes <= 6, "more resumes than renames");
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(resumes, 6);
    {
        let st = s.api.state.lock().unwrap();
        assert_eq!(
            st.renames.len(),
            6,
            "no rename issued twice: {:?}",
            st.renames
        );
        assert!(st.instances.get(SOURCE).is_some_and(|i| i
            .tags
            .get(UPGRADE_TAG)
            .map(String::as_str)
            == Some(UID)));
        for r in READERS {
            assert!(
                st.instances
                    .get(r)
                    .is_some_and(|i| i.tags.get(UPGRADE_TAG).map(String::as_str) == Some(UID)),
                "{r}"
            );
        }
    }
    // The readers still answer through PgBouncer, from the new readers.
    let rows = query(
        &s.pooler.url("app_ro1", "postgres"),
        "SELECT inet_server_port()",
    )
    .await;
    assert_eq!(rows[0].get::<_, i32>(0) as u16, s.new_readers[0].port);
}
