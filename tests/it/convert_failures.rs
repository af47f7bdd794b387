//! `convert` when something outside it fails (issue 22, point 10): killed
//! during its concurrent index build, and stopped by a lock another session
//! holds, or stopped by a signal, or by a second runner. Either way the
//! operator is told who, and what to run.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::consumers::{Consumers, Kind};
use crate::convert::{config, relkind, run, setup, Run};
use crate::harness::{connect, fresh_db, pgsteward, query, write_config};
use crate::partitions::{as_owner, as_steward, as_super};

async fn status_json(cfg: &std::path::Path) -> serde_json::Value {
    let cfg = cfg.to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        run(
            &cfg,
            &[
                "convert",
                "status",
                "--table",
                "public.events",
                "--output",
                "json",
            ],
            None,
        )
    })
    .await
    .unwrap();
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", out.stdout, out.stderr))
}

/// pgsteward killed (-9) while its unique index build waits for a writer:
/// the build's backend notices its client is gone (14+:
/// `client_connection_check_interval`) and ends, so `convert status` names
/// no driver — not the orphan backend — and says to resume, which finishes.
#[tokio::test]
async fn killed_during_the_index_build_status_names_no_orphan_as_driver() {
    let url = fresh_db("convert_kill_build");
    setup(&url, 200).await;
    // Before the open transaction (a slot waits for running ones).
    let mut consumers = Consumers::attach(&url, Kind::ViaRoot, &["events"]).await;
    // A writer's open transaction: the concurrent build waits for it
    // ("waiting for writers before build").
    let writer = connect(&as_owner(&url)).await;
    writer
        .batch_execute(
            "SET application_name = 'the-writer'; BEGIN; \
             INSERT INTO public.events (payload, other_id) VALUES ('held', 1)",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &url, &["public.events"]);
    let mut child = pgsteward()
        .arg("--config")
        .arg(&cfg)
        .args(["convert", "start", "--table", "public.events"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let observer = connect(&as_super(&url)).await;
    let t0 = Instant::now();
    let builder: i32 = loop {
        let rows = observer
            .query(
                "SELECT pid FROM pg_stat_progress_create_index WHERE relid = 'public.events'::regclass \
                 AND phase LIKE 'waiting%'",
                &[],
            )
            .await
            .unwrap();
        if let Some(r) = rows.first() {
            break r.get(0);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the build never waited"
        );
        assert!(child.try_wait().unwrap().is_none(), "convert ended early");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();
    // The orphan ends within its check interval (1 s); status is read
    // until it does, for at most 10 s.
    let v = loop {
        let v = status_json(&cfg).await;
        if v["driver"].is_null() || killed.elapsed() > Duration::from_secs(10) {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "driver gone {:?} after kill -9 (builder pid {builder})",
        killed.elapsed()
    );
    assert!(
        v["driver"].is_null(),
        "the orphan backend {builder} is named as the driver: {v:#}"
    );
    assert_eq!(v["conversion"]["state"], "active", "{v:#}");
    let text = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || {
            run(
                &cfg,
                &["convert", "status", "--table", "public.events"],
                None,
            )
        })
        .await
        .unwrap()
    };
    assert_eq!(text.code, Some(1), "{}", text.stdout);
    assert!(
        text.stdout
            .contains("not running: run `pgsteward convert resume"),
        "{}",
        text.stdout
    );
    writer.batch_execute("COMMIT").await.unwrap();
    let out = tokio::task::spawn_blocking(move || {
        run(
            &cfg,
            &["convert", "resume", "--table", "public.events"],
            None,
        )
    })
    .await
    .unwrap();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(relkind(&url, "public.events").await, "p");
    consumers
        .assert_same("killed during the index build, resumed")
        .await;
}

/// Runs `convert <cmd>` on `cfg`, under `failpoint` if any.
async fn convert(cfg: &std::path::Path, cmd: &'static str, failpoint: Option<&'static str>) -> Run {
    let cfg = cfg.to_path_buf();
    tokio::task::spawn_blocking(move || {
        run(
            &cfg,
            &["convert", cmd, "--table", "public.events"],
            failpoint,
        )
    })
    .await
    .unwrap()
}

/// A reader's open transaction holds the table when a step needs its lock
/// (the concurrent index build, bounded by `index_build_wait`; a step in a
/// transaction, bounded by `lock_timeout`): after `lock_retries` the step
/// fails naming that session (pid, application_name, state), nothing is
/// left half-made, and `resume` finishes once it is gone.
#[tokio::test]
async fn a_lock_error_names_the_blocking_session() {
    let url = fresh_db("convert_blocked");
    setup(&url, 50).await;
    let mut consumers = Consumers::attach(&url, Kind::ViaRoot, &["events"]).await;
    let block = || async {
        let blocker = connect(&as_owner(&url)).await;
        blocker
            .batch_execute(
                "SET application_name = 'the-report'; BEGIN; LOCK TABLE public.events IN ACCESS SHARE MODE",
            )
            .await
            .unwrap();
        let pid: i32 = blocker
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        (blocker, pid)
    };
    let dir = tempfile::tempdir().unwrap();
    let steward = as_steward(&url);
    let cfg = write_config(
        dir.path(),
        &format!(
            "[database]\nprimary = \"{steward}\"\n\n[partitions]\nlock_timeout = \"50ms\"\nlock_retries = 2\n\
             index_build_wait = \"1s\"\n\
             [[partitions.tables]]\ntable = 'public.events'\ninterval = 'daily'\npremake = 2\n"
        ),
    );
    let named = |out: &Run, pid: i32, step: &str| {
        assert_eq!(out.code, Some(1), "{step}: {}{}", out.stdout, out.stderr);
        let err = &out.stderr;
        assert!(err.contains("lock timeout"), "{step}: {err}");
        assert!(
            err.contains(&format!("pid {pid} ")) && err.contains("the-report"),
            "{step}: the blocker is named: {err}"
        );
        assert!(!err.contains("already exists"), "{step}: {err}");
    };
    // The unique index build waits for the reader's transaction.
    let (blocker, pid) = block().await;
    let out = convert(&cfg, "start", None).await;
    named(&out, pid, "index build");
    assert_eq!(relkind(&url, "public.events").await, "r");
    blocker.batch_execute("COMMIT").await.unwrap();
    // Past the index: stop before the CHECK, then hold the table again.
    let out = convert(&cfg, "resume", Some("convert-check_added-start=error")).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let (blocker, pid) = block().await;
    let out = convert(&cfg, "resume", None).await;
    named(&out, pid, "check");
    assert!(out.stderr.contains("convert resume"), "{}", out.stderr);
    blocker.batch_execute("COMMIT").await.unwrap();
    let out = convert(&cfg, "resume", None).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let state: String = query(&url, "SELECT state FROM pgsteward.conversions").await[0].get(0);
    assert_eq!(state, "done");
    let invalid: i64 =
        query(&url, "SELECT count(*) FROM pg_index WHERE NOT indisvalid").await[0].get(0);
    assert_eq!(invalid, 0, "no invalid index left");
    consumers.assert_same("blocked twice, resumed").await;
}

/// SIGTERM while the CHECK's transaction keeps losing its lock race with a
/// reader's (it waits up to 3 s between attempts): the conversion stops at
/// once, says that `resume` continues, and `resume` finishes once the reader
/// is gone.
#[tokio::test]
async fn a_signal_stops_the_retries_at_a_safe_point_and_resume_continues() {
    let url = fresh_db("convert_signal");
    setup(&url, 50).await;
    let mut consumers = Consumers::attach(&url, Kind::Schema, &["events"]).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "[database]\nprimary = \"{}\"\n\n[partitions]\nlock_timeout = \"50ms\"\nlock_retries = 1000\n\
             [[partitions.tables]]\ntable = 'public.events'\ninterval = 'daily'\npremake = 2\n",
            as_steward(&url)
        ),
    );
    // Past the index builds, stopped before the CHECK.
    let out = convert(&cfg, "start", Some("convert-check_added-start=error")).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let blocker = connect(&as_owner(&url)).await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE public.events IN ACCESS SHARE MODE")
        .await
        .unwrap();
    let child = pgsteward()
        .arg("--config")
        .arg(&cfg)
        .args(["convert", "resume", "--table", "public.events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Long enough for the backoff to reach its 2 s cap.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let t0 = Instant::now();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stopped = t0.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("stopped on a signal") && stderr.contains("convert resume"),
        "{stderr}"
    );
    assert!(
        stopped < Duration::from_millis(1500),
        "stopped after {stopped:?}"
    );
    blocker.batch_execute("COMMIT").await.unwrap();
    assert_eq!(relkind(&url, "public.events").await, "r");
    let out = convert(&cfg, "resume", None).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(relkind(&url, "public.events").await, "p");
    consumers.assert_same("stopped on a signal, resumed").await;
}

#[tokio::test]
async fn a_second_runner_is_refused_and_named() {
    let url = fresh_db("convert_busy");
    setup(&url, 10).await;
    let holder = connect(&url).await;
    holder
        .batch_execute("SELECT pg_advisory_lock(x'70676376'::int4, hashtext('public.events'))")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &url, &["public.events"]);
    let out = tokio::task::spawn_blocking(move || {
        run(
            &cfg,
            &["convert", "start", "--table", "public.events"],
            None,
        )
    })
    .await
    .unwrap();
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .contains("another pgsteward is converting public.events (backend pid"),
        "{}",
        out.stderr
    );
    assert_eq!(relkind(&url, "public.events").await, "r");
}
