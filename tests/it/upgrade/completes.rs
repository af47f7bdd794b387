//! Upgrades that run to the end: under load, and with every step run twice.

use super::*;

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
    // Only what this upgrade runs (local, PgBouncer), and where the new server listens.
    let plan_text = text(&plan);
    assert!(
        plan_text.contains("new server address: 127.0.0.1"),
        "{plan_text}"
    );
    for absent in [
        "create_readers",
        "rename_old_aside",
        "repoint_stable",
        "move_reads",
    ] {
        assert!(!plan_text.contains(absent), "{absent}: {plan_text}");
    }
    assert!(plan_text.contains("resume_writes"), "{plan_text}");
    let same = t.pgsteward(&["upgrade", "plan", "--target-class", "nope"], None);
    assert_eq!(same.status.code(), Some(2), "{}", text(&same));

    let out = t.upgrade(None);
    assert!(out.status.success(), "{}", text(&out));
    load.wait_progress(50).await;
    t.follow_upgrade();
    load.finish_clean(&t).await;

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
    let mut cfg = pgsteward::config::load(&t.config).unwrap().cluster;
    cfg.database.primary = pgsteward::config::ConnString::new(old.clone());
    let err = pgsteward::upgrade::ensure_primary_current(&cfg)
        .await
        .unwrap_err();
    assert!(
        matches!(err, pgsteward::upgrade::UpgradeError::PrimaryMoved { .. }),
        "{err}"
    );
    // The cutover is over: the DDL gate does not say wait (the old
    // primary is retired, so its guard row may not be readable at all).
    let gate = pgsteward::upgrade::DdlGate::new(&cfg).ask().await;
    assert!(
        !matches!(gate, Ok(pgsteward::upgrade::Gate::Wait(_))),
        "{gate:?}"
    );

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
    load.finish_clean(&t).await;
}
