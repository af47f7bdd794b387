//! The hard fence on the old primary: no application role commits there.

use super::*;

async fn app_connect(
    port: u16,
    options: Option<&str>,
) -> Result<tokio_postgres::Client, pgsteward::pg::PgError> {
    let mut url = harness::with_password(
        &format!("postgres://app@127.0.0.1:{port}/app?sslmode=disable"),
        harness::APP_USER,
        harness::APP_PASSWORD,
    );
    if let Some(o) = options {
        url.push_str(&format!("&options={}", o.replace(' ', "%20")));
    }
    let spec = pgsteward::pg::ConnSpec::parse(&url)?;
    spec.connect(Duration::from_secs(5)).await
}

/// Every way an application role could try to commit on the fenced old
/// primary, while it waits out retire_after, and after a restart of it.
async fn assert_fenced(port: u16, label: &str) {
    for options in [None, Some("-c default_transaction_read_only=off")] {
        match app_connect(port, options).await {
            Err(e) => assert!(
                e.to_string().contains("pg_hba.conf rejects") || e.to_string().contains("reject"),
                "{label}: refused for another reason: {e}"
            ),
            Ok(c) => {
                let r = c
                    .batch_execute(
                        "SET default_transaction_read_only = off; BEGIN READ WRITE; \
                         INSERT INTO ledger (id) VALUES (-7); COMMIT",
                    )
                    .await;
                panic!("{label}: an application session got in ({options:?}): {r:?}");
            }
        }
    }
}

/// The hard fence (upgrade/fence/): from the fence on no application role commits
/// on the old primary whatever it sets (session SET, BEGIN READ WRITE,
/// startup options, role and database settings), its sessions are ended,
/// new ones refused, also after a restart of the old node; a roll back
/// lifts it completely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_fence_holds_and_rolls_back_completely() {
    let mut t = Topology::new();
    let p = &t.cluster.primary;
    // The harness's application role (scram, not a superuser), made if missing.
    must(p.psql(
        "postgres",
        "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app') \
         THEN CREATE ROLE app LOGIN; END IF; END$$",
    ));
    must(p.psql("app", "GRANT SELECT, INSERT ON ledger TO app"));
    // Settings that soften a default_transaction_read_only fence.
    must(p.psql(
        "postgres",
        "ALTER ROLE app SET default_transaction_read_only = off",
    ));
    must(p.psql(
        "postgres",
        "ALTER DATABASE app SET default_transaction_read_only = off",
    ));
    t.cluster.wait_replicas_caught_up();
    // `upgrade plan` checks every documented privilege and prints the GRANT
    // of each one missing (exit 1); with them all, it passes.
    must(p.psql(
        "postgres",
        "REVOKE pg_signal_backend FROM steward; \
         REVOKE ALTER SYSTEM ON PARAMETER pgsteward.moved_to FROM steward; \
         REVOKE CREATE ON DATABASE postgres FROM steward",
    ));
    let plan = t.pgsteward(&["upgrade", "plan", "--target-class", "large"], None);
    assert_eq!(plan.status.code(), Some(1), "{}", text(&plan));
    let stdout = String::from_utf8_lossy(&plan.stdout);
    for grant in [
        "GRANT pg_signal_backend TO steward;",
        "GRANT ALTER SYSTEM ON PARAMETER pgsteward.moved_to TO steward;",
        "GRANT CREATE ON DATABASE postgres TO steward;",
    ] {
        assert!(
            stdout.contains(grant),
            "plan names {grant}:\n{}",
            text(&plan)
        );
    }
    let out = t.upgrade(None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    must(p.psql(
        "postgres",
        "GRANT pg_signal_backend TO steward; \
         GRANT ALTER SYSTEM ON PARAMETER pgsteward.moved_to TO steward; \
         GRANT CREATE ON DATABASE postgres TO steward",
    ));
    let plan = t.pgsteward(&["upgrade", "plan", "--target-class", "large"], None);
    assert!(plan.status.success(), "{}", text(&plan));
    // A FOR ALL TABLES publication in the guard database would publish the
    // guard row to subscribers that may lack its table: refused, named.
    must(p.psql("postgres", "CREATE PUBLICATION everything FOR ALL TABLES"));
    let plan = t.pgsteward(&["upgrade", "plan", "--target-class", "large"], None);
    assert_eq!(plan.status.code(), Some(1), "{}", text(&plan));
    for want in [
        "guard database publications",
        "everything (FOR ALL TABLES)",
        "pgsteward.upgrade_guard",
    ] {
        assert!(
            text(&plan).contains(want),
            "plan names {want}:\n{}",
            text(&plan)
        );
    }
    must(p.psql("postgres", "DROP PUBLICATION everything"));
    let old_port = p.port;
    let load = Load::start(
        &t.pooler_url(),
        3,
        Duration::from_millis(4),
        Duration::from_secs(300),
    );
    load.wait_progress(20).await;

    // Roll back: fenced, then lifted completely.
    let out = t.upgrade(Some("final_sync-done=error"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let app = app_connect(old_port, None)
        .await
        .expect("app connects after the roll back");
    app.batch_execute("INSERT INTO ledger (id) VALUES (-1)")
        .await
        .expect("app writes after the roll back");
    let hba = std::fs::read_to_string(t.cluster.primary.data_dir.join("pg_hba.conf")).unwrap();
    assert!(!hba.contains("pgsteward fence"), "{hba}");
    let abort = t.pgsteward(&["upgrade", "abort"], None);
    assert!(abort.status.success(), "{}", text(&abort));

    // Complete, with the old primary kept for retire_after.
    t.retire_after = "6s";
    t.write_config();
    let held = app_connect(old_port, None).await.expect("app connects");
    let mut runner = spawn(upgrade_cmd(&t.config, t.next_class(), None));
    wait_for_step(
        &t.state_dir(),
        pgsteward::upgrade::record::Step::RetireOld,
        &mut runner,
    );
    let err = held
        .batch_execute(
            "SET default_transaction_read_only = off; INSERT INTO ledger (id) VALUES (-2)",
        )
        .await;
    assert!(err.is_err(), "an application session survived the fence");
    assert_fenced(old_port, "fenced").await;
    // A superuser session that is not ours starts read-only (where no
    // database setting overrides the server's: the second, soft line).
    let su = harness::connect(&t.cluster.primary.url("postgres")).await;
    let ro: String = su
        .query_one("SHOW default_transaction_read_only", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ro, "on");
    drop(su);
    // The fence survives a restart of the old node.
    must(t.cluster.primary.stop(pgsteward::localpg::StopMode::Fast));
    must(t.cluster.primary.start());
    assert_fenced(old_port, "after restart").await;
    let out = wait(runner);
    assert!(out.status.success(), "{}", text(&out));
    let rec = latest_record(&t.state_dir());
    let fence = rec.step(pgsteward::upgrade::record::Step::FenceOldPrimary);
    let sync = rec.step(pgsteward::upgrade::record::Step::FinalSync);
    let ms = |s: &pgsteward::upgrade::record::StepState| {
        (s.finished_at.unwrap() - s.started_at.unwrap())
            .num_microseconds()
            .unwrap_or(0) as f64
            / 1000.0
    };
    println!(
        "fence_old_primary {:.1} ms ({}); final_sync {:.1} ms ({})",
        ms(fence),
        fence.output.note.clone().unwrap_or_default(),
        ms(sync),
        sync.output.note.clone().unwrap_or_default()
    );
    t.follow_upgrade();
    load.wait_progress(20).await;
    // The new primary is not fenced: the application role writes there.
    let new_port = pgsteward::pg::ConnSpec::parse(&t.primary_url)
        .unwrap()
        .host_port()
        .1;
    let app = app_connect(new_port, None)
        .await
        .expect("app on the new primary");
    app.batch_execute("INSERT INTO ledger (id) VALUES (-3)")
        .await
        .expect("app writes on the new primary");
    load.finish_clean_with(&t, &[-1, -3]).await;
}

/// The fence never locks the steward out: a runner killed -9 inside
/// final_sync (fence up, PgBouncer paused, and no pause keeper, so nothing
/// else lifts it) leaves the old primary open to the steward's role only;
/// `upgrade resume` then rolls back through the fence, and after a second
/// such crash `upgrade abort` does. Writes go on, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_and_abort_get_through_the_fence() {
    let t = Topology::new();
    let old_port = t.cluster.primary.port;
    let load = Load::start(
        &t.pooler_url(),
        3,
        Duration::from_millis(4),
        Duration::from_secs(300),
    );
    load.wait_progress(20).await;
    let crash = || {
        let mut cmd = upgrade_cmd(&t.config, t.next_class(), Some("final_sync-start=kill"));
        cmd.env(pgsteward::upgrade::keeper::KEEPER_ENV, "1");
        let out = wait(spawn(cmd));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
    };
    let resume_cmd = |args: &[&str]| {
        must(
            harness::pgsteward()
                .arg("--config")
                .arg(&t.config)
                .args(args)
                .env("PGSTEWARD_LOCAL_OWNER_PID", std::process::id().to_string())
                .env(pgsteward::upgrade::keeper::KEEPER_ENV, "1")
                .output()
                .map_err(|e| e.to_string()),
        )
    };

    crash();
    // Fenced for the application, open to the steward.
    assert_fenced(old_port, "after the crash").await;
    let steward = harness::connect(&t.primary_url).await;
    steward
        .simple_query("SELECT 1")
        .await
        .expect("the steward gets in");
    drop(steward);
    let out = resume_cmd(&["upgrade", "resume"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rolled back"),
        "{}",
        text(&out)
    );
    load.wait_progress(20).await;
    let out = resume_cmd(&["upgrade", "abort"]);
    assert!(out.status.success(), "{}", text(&out));

    crash();
    assert_fenced(old_port, "after the second crash").await;
    let out = resume_cmd(&["upgrade", "abort"]);
    assert!(out.status.success(), "{}", text(&out));
    load.wait_progress(20).await;
    assert_eq!(t.check_one_writable().await, t.primary_url);
    let hba = std::fs::read_to_string(t.cluster.primary.data_dir.join("pg_hba.conf")).unwrap();
    assert!(!hba.contains("pgsteward fence"), "{hba}");
    t.assert_no_new_servers("");
    load.finish_clean(&t).await;
}

/// The fence's probe login runs beside the final flush (upgrade/fence/probe.rs);
/// when it does not see a fenced role refused (here injected: a block the
/// server did not load), nothing is promoted: the upgrade rolls back, the
/// fence comes off, writes resume on the old primary, nothing is lost and
/// no client sees an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_the_probe_does_not_see_rolls_back_before_promote() {
    let t = Topology::new();
    let load = Load::start(
        &t.pooler_url(),
        3,
        Duration::from_millis(4),
        Duration::from_secs(300),
    );
    load.wait_progress(20).await;
    let out = t.upgrade(Some("fence_probe=error"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("does not enforce it") && all.contains("rolled back"),
        "{all}"
    );
    let rec = latest_record(&t.state_dir());
    assert!(!rec.promote_started(), "promoted: {rec:?}");
    load.wait_progress(20).await;
    assert_eq!(t.check_one_writable().await, t.primary_url);
    let data = &t.cluster.primary.data_dir;
    let hba = std::fs::read_to_string(data.join("pg_hba.conf")).unwrap();
    assert!(!hba.contains("pgsteward fence"), "{hba}");
    // Neither the prepared file nor the temporary one is left beside it.
    for name in [".pg_hba.conf.pgsteward-fence", ".pg_hba.conf.pgsteward-tmp"] {
        assert!(
            !data.join(name).exists(),
            "{name} left in {}",
            data.display()
        );
    }
    load.finish_clean(&t).await;
}
