//! A hot standby serving a long report while a pass runs (issue 22, point
//! 8): what the pass's replayed ACCESS EXCLUSIVE locks do to replay and to
//! the standby's queries, with and without `partitions.standby_lock_wait`,
//! and what `check` says about the standby's settings. Figures printed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::*;
use crate::consumers::{Consumers, Kind};

const KEYED: &str = "CREATE TABLE events (id bigint GENERATED ALWAYS AS IDENTITY, \
    created_at timestamptz NOT NULL, payload text, PRIMARY KEY (id, created_at)) \
    PARTITION BY RANGE (created_at); \
    CREATE TABLE events_default PARTITION OF events DEFAULT";

/// How long replay of `lsn` took to reach the standby, polled every 20 ms
/// (at most 60 s).
async fn replayed_after(standby: &tokio_postgres::Client, lsn: &str) -> Duration {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        let r = standby
            .query_one(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&lsn],
            )
            .await
            .unwrap();
        if r.get::<_, bool>(0) {
            return t.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the standby did not replay {lsn} within 60 s");
}

/// A report on the standby reading the whole table (every partition and
/// DEFAULT locked), then sleeping: `Ok(duration)` or the server's error.
fn report(
    url: String,
    secs: u32,
) -> tokio::task::JoinHandle<Result<Duration, tokio_postgres::Error>> {
    tokio::spawn(async move {
        let c = connect(&url).await;
        c.batch_execute("SET application_name = 'the-report'")
            .await
            .unwrap();
        let t = Instant::now();
        c.query_one(
            &format!("SELECT (SELECT count(*) FROM events), pg_sleep({secs})"),
            &[],
        )
        .await
        .map(|_| t.elapsed())
    })
}

/// Waits (at most 30 s) until the report runs on the standby, its locks taken.
async fn report_running(standby: &tokio_postgres::Client) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        let n: i64 = standby
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'the-report' \
                 AND state = 'active' AND query LIKE '%pg_sleep%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the report did not start on the standby within 30 s");
}

/// Short standby reads of the table (one row by key, every 50 ms) until
/// stopped: the longest one and the errors.
fn short_reads(
    url: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Duration, u32, Vec<String>)> {
    tokio::spawn(async move {
        let c = connect(&url).await;
        let (mut worst, mut n, mut errors) = (Duration::ZERO, 0u32, Vec::new());
        let start = Instant::now();
        while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(90) {
            let t = Instant::now();
            match c
                .query_one("SELECT count(*) FROM events WHERE id = 1", &[])
                .await
            {
                Ok(_) => n += 1,
                Err(e) => errors.push(pgsteward::pg::server_message(&e)),
            }
            worst = worst.max(t.elapsed());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (worst, n, errors)
    })
}

fn toml(primary: &str, replica: &str, extra: &str, premake: u32) -> String {
    format!(
        "[database]\nprimary = \"{}\"\nreplicas = [\"{}\"]\n\n[partitions]\nlock_timeout = \"200ms\"\n{extra}\n{}",
        as_steward(primary),
        as_steward(replica),
        table("events", &format!("premake = {premake}"))
    )
}

fn cfg_of(toml: &str) -> Cluster {
    must(config::from_figment(
        figment::Figment::new()
            .merge(<figment::providers::Toml as figment::providers::Format>::string(toml)),
        None,
    ))
    .cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_standby_report_during_a_pass_is_waited_for_or_cancelled_as_documented() {
    let cluster = harness::TestCluster::start(1);
    let (primary, replica) = (&cluster.primary, &cluster.replicas[0]);
    harness::create_app_db(primary, "app");
    let url = primary.url("app");
    exec(
        &url,
        &format!(
            "{KEYED}; CREATE TABLE {cur} PARTITION OF events FOR VALUES FROM ('{a}') TO ('{b}'); \
             INSERT INTO events (created_at, payload) SELECT '{a}'::timestamptz + i * interval '1 minute', 'now' \
             FROM generate_series(1, 1000) i; \
             INSERT INTO events (created_at, payload) SELECT '{b}'::timestamptz + i * interval '1 minute', 'next' \
             FROM generate_series(1, 100) i",
            cur = month_name("events", 0),
            a = month_start(0),
            b = month_start(1),
        ),
    )
    .await;
    // Reports longer than this are cancelled when a lock replays; 5 s keeps
    // the test short (the default is 30 s).
    must(replica.psql(
        "postgres",
        "ALTER SYSTEM SET max_standby_streaming_delay = '5s'",
    ));
    must(replica.psql("postgres", "SELECT pg_reload_conf()"));
    cluster.wait_replicas_caught_up();
    // A subscriber and a CDC consumer of both moves (issue 22).
    let mut consumers = Consumers::attach(&url, Kind::AllTables, &["events"]).await;
    let standby_url = replica.url("app");
    let standby = connect(&standby_url).await;
    let dir = tempfile::tempdir().unwrap();

    // `check` names the conflict while the pass does not wait for standbys.
    let run_check = |toml: &str| {
        let path = write_config(dir.path(), toml);
        pgsteward()
            .arg("--config")
            .arg(&path)
            .arg("check")
            .output()
            .unwrap()
    };
    let out = run_check(&toml(&url, &standby_url, "", 1));
    let text = harness::text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("WARN")
            && text.contains("max_standby_streaming_delay 5s")
            && text.contains("partitions.standby_lock_wait"),
        "{text}"
    );
    let guarded = "standby_lock_wait = \"2s\"";
    let out = run_check(&toml(&url, &standby_url, guarded, 2));
    let text = harness::text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    // Only the FOR ALL TABLES publication of the consumers is left to warn about.
    assert!(
        !text
            .lines()
            .any(|l| l.contains("WARN") && !l.contains("FOR ALL TABLES"))
            && text.contains("waits up to 2s")
            && text.contains("(FOR ALL TABLES) also publish pgsteward's own tables"),
        "{text}"
    );

    // 1. Without standby_lock_wait: the ATTACH next to DEFAULT (rows move,
    // so the parent is locked too) replays on the standby, waits for the
    // report up to max_standby_streaming_delay, then cancels it; the
    // standby's short reads of the table queue behind the replayed lock.
    let rep = report(as_owner(&standby_url), 20);
    report_running(&standby).await;
    let stop = Arc::new(AtomicBool::new(false));
    let reads = short_reads(as_owner(&standby_url), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let r = pass(&cfg_of(&toml(&url, &standby_url, "", 1))).await;
    let pass_took = t.elapsed();
    assert_eq!(r.outcome(), pgsteward::Outcome::Healthy, "{r:#?}");
    assert_eq!((r.tables[0].created, r.tables[0].rows_moved), (1, 100));
    let lsn: String = query(&url, "SELECT pg_current_wal_lsn()::text").await[0].get(0);
    let replay = replayed_after(&standby, &lsn).await;
    let report_result = rep
        .await
        .unwrap()
        .map_err(|e| pgsteward::pg::server_message(&e));
    stop.store(true, Ordering::Relaxed);
    let (worst, n, errors) = reads.await.unwrap();
    println!(
        "no standby_lock_wait: pass {pass_took:?} on the primary; the standby replayed it {replay:?} later; \
         the 20 s report: {report_result:?}; standby short reads: {n}, longest {worst:?}, errors {errors:?}"
    );
    let err = report_result.expect_err("the report outlived max_standby_streaming_delay");
    assert!(err.contains("conflict with recovery"), "{err}");
    // A short read holding the table when the delay runs out is cancelled
    // with the report: that too is what the docs say, and nothing else.
    assert!(
        errors.iter().all(|e| e.contains("conflict with recovery")),
        "short reads failed otherwise: {errors:?}"
    );

    // 2. With standby_lock_wait = 2s: the pass sees the report on the
    // standby, waits 2 s, and leaves the table for the next pass naming it;
    // replay never waits and the report completes.
    exec(
        &url,
        &format!(
            "INSERT INTO events (created_at, payload) SELECT '{}'::timestamptz + i * interval '1 minute', 'later' \
             FROM generate_series(1, 10) i",
            month_start(2)
        ),
    )
    .await;
    cluster.wait_replicas_caught_up();
    let guarded_cfg = cfg_of(&toml(&url, &standby_url, guarded, 2));
    let rep = report(as_owner(&standby_url), 10);
    report_running(&standby).await;
    let stop = Arc::new(AtomicBool::new(false));
    let reads = short_reads(as_owner(&standby_url), stop.clone());
    let t = Instant::now();
    let r = pass(&guarded_cfg).await;
    let pass_took = t.elapsed();
    let lsn: String = query(&url, "SELECT pg_current_wal_lsn()::text").await[0].get(0);
    let replay = replayed_after(&standby, &lsn).await;
    let t0 = r.tables[0].clone();
    let err = t0.error.clone().unwrap_or_default();
    assert_eq!(t0.created, 0, "{t0:#?}");
    assert!(
        err.contains("hot standby queries hold") && err.contains("the-report"),
        "{err}"
    );
    let report_result = rep
        .await
        .unwrap()
        .map_err(|e| pgsteward::pg::server_message(&e));
    stop.store(true, Ordering::Relaxed);
    let (worst, n, errors) = reads.await.unwrap();
    println!(
        "standby_lock_wait = 2s: pass {pass_took:?} (left the table); replayed {replay:?} later; \
         the 10 s report: {report_result:?}; standby short reads: {n}, longest {worst:?}"
    );
    assert!(report_result.is_ok(), "{report_result:?}");
    assert!(errors.is_empty(), "short reads failed: {errors:?}");
    // The report is over: the next pass makes the partition.
    let r = pass(&guarded_cfg).await;
    assert_eq!(r.outcome(), pgsteward::Outcome::Healthy, "{r:#?}");
    assert_eq!((r.tables[0].created, r.tables[0].rows_moved), (1, 10));
    consumers
        .assert_same("moves waited for or left by standbys")
        .await;
}
