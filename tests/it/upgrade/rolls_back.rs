//! Failures before promote roll back: the old primary serves writes again.

use super::*;

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
    let before_promote: Vec<&str> = pgsteward::upgrade::record::STEPS
        .iter()
        .filter(|s| s.before_promote())
        .map(|s| s.name())
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
        t.assert_no_new_servers(&format!("{fp}: "));
    }
    // A crash in the middle of the roll back: the pause keeper finishes it.
    let fp = "final_sync-done=error,fence_old_primary-undo=kill";
    let out = t.upgrade(Some(fp));
    assert!(killed(&out), "{fp}\n{}", text(&out));
    wait_keeper(&t.state_dir());
    let rec = latest_record(&t.state_dir());
    assert!(
        matches!(rec.phase, pgsteward::upgrade::record::Phase::RolledBack(_)),
        "the keeper did not finish the roll back: {:?}\n{}",
        rec.phase,
        std::fs::read_to_string(t.state_dir().join("keeper.log")).unwrap_or_default()
    );
    // Writes flow again once the keeper is done (the next run's health gate
    // would otherwise see the clients still waiting for a server login).
    load.wait_progress(10).await;
    // Without a keeper (it is the one process that may not arm another),
    // `upgrade resume` finishes an interrupted roll back.
    let out = must(
        harness::pgsteward()
            .arg("--config")
            .arg(&t.config)
            .args(["upgrade", "resume"])
            .env("PGSTEWARD_LOCAL_OWNER_PID", std::process::id().to_string())
            .env("PGSTEWARD_FAILPOINT", fp)
            .env(pgsteward::upgrade::keeper::KEEPER_ENV, "1")
            .output()
            .map_err(|e| e.to_string()),
    );
    if !killed(&out) {
        let keeper = std::fs::read_to_string(t.state_dir().join("keeper.log")).unwrap_or_default();
        let bouncer =
            std::fs::read_to_string(t.pooler.dir.join("pgbouncer.log")).unwrap_or_default();
        let tail: Vec<&str> = bouncer.lines().rev().take(60).collect();
        panic!(
            "{fp}\n{}\nkeeper.log:\n{keeper}\npgbouncer.log (last 60, newest first):\n{}",
            text(&out),
            tail.join("\n")
        );
    }
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
    t.assert_no_new_servers("");

    load.finish_clean(&t).await;
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
    // The precheck refuses a transaction older than pause_timeout, so the
    // transaction opens once the precheck has passed (opened before the
    // upgrade, a slow start on a busy machine made it too old already at
    // precheck): the runner holds 5 s after wait_catchup (room for a poller
    // starved of CPU), so it is old at PAUSE.
    let t0 = Instant::now();
    let mut runner = must(
        crate::upgrade_safety::upgrade_cmd(
            &t.config,
            t.next_class(),
            Some("wait_catchup-done=sleep:5000"),
        )
        .spawn()
        .map_err(|e| e.to_string()),
    );
    crate::upgrade_safety::wait_for_step(
        &t.state_dir(),
        pgsteward::upgrade::record::Step::WaitCatchup,
        &mut runner,
    );
    let holder = harness::connect(&t.pooler_url()).await;
    holder
        .simple_query("BEGIN; INSERT INTO ledger (id) VALUES (-100)")
        .await
        .unwrap();
    let out = must(runner.wait_with_output().map_err(|e| e.to_string()));
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
    load.finish_clean_with(&t, &[-100]).await;
}
