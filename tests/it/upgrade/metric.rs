//! `pgsteward_upgrade_step` as the service reports it: the upgrade runs in
//! its own process, and the service reads the step from the primary's guard
//! row, so the stuck-upgrade and paused-writes alerts see an upgrade whose
//! runner died.

use super::*;
use crate::service::{metric, Service};

/// A service on `primary` with a lag check every second.
fn service_on(t: &Topology, primary: &str, name: &str) -> Service {
    let port = must(pgsteward::localpg::free_port());
    let config = harness::write_config(
        &t.dir().join(name),
        &format!(
            "[database]\nprimary = {primary:?}\nconnect_timeout = \"1s\"\n\
             [lag]\nschedule = \"*/1 * * * * *\"\nquery_timeout = \"1s\"\n\
             [http]\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    );
    Service::start(&config, port, t.dir().join(format!("{name}.log")))
}

/// The gauge once it reads `want`, within 20 s; what it last read otherwise.
async fn wait_step(svc: &Service, want: f64) -> Option<f64> {
    let mut last = None;
    for _ in 0..200 {
        last = svc
            .get("/metrics")
            .and_then(|(_, body)| metric(&body, "pgsteward_upgrade_step"));
        if last == Some(want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

/// A runner killed after wait_catchup: the service on the primary reports
/// that step (its 1-based position in the saga) until `upgrade resume`
/// finishes; on the new primary it then reports 0.
#[tokio::test(flavor = "multi_thread")]
async fn the_service_reports_the_step_of_an_upgrade_whose_runner_died() {
    let mut t = Topology::new();
    std::fs::create_dir_all(t.dir().join("svc-old")).unwrap();
    std::fs::create_dir_all(t.dir().join("svc-new")).unwrap();
    let on_old = service_on(&t, &t.primary_url, "svc-old");
    assert_eq!(
        wait_step(&on_old, 0.0).await,
        Some(0.0),
        "{}",
        on_old.log_text()
    );

    let out = t.upgrade(Some("wait_catchup-done=kill"));
    assert!(killed(&out), "expected SIGKILL\n{}", text(&out));
    let position = pgsteward::upgrade::step::Step::WaitCatchup.index() as f64 + 1.0;
    assert_eq!(
        wait_step(&on_old, position).await,
        Some(position),
        "{}",
        on_old.log_text()
    );
    // What the alerts read: the step by name, and not in the write pause.
    let body = on_old.get("/metrics").map(|(_, b)| b).unwrap_or_default();
    assert!(
        body.contains("pgsteward_upgrade_step_info{step=\"wait_catchup\",region=\"prepare\"} 1"),
        "{body}"
    );
    assert_eq!(
        metric(&body, "pgsteward_upgrade_in_write_pause"),
        Some(0.0),
        "{body}"
    );
    drop(on_old);

    let out = t.pgsteward(&["upgrade", "resume"], None);
    assert!(out.status.success(), "resume failed\n{}", text(&out));
    t.follow_upgrade();
    let on_new = service_on(&t, &t.primary_url, "svc-new");
    assert_eq!(
        wait_step(&on_new, 0.0).await,
        Some(0.0),
        "{}",
        on_new.log_text()
    );
}

/// A runner lost inside the write pause together with its keeper (a pod or
/// host lost; here: killed with no keeper armed): the service on the
/// primary sees the guard row in the pause and no runner holding the guard,
/// and RESUMEs PgBouncer once pause_timeout + the keeper's bound passed.
/// Writes go on without an error; `upgrade resume` then finishes.
#[tokio::test(flavor = "multi_thread")]
async fn the_service_resumes_writes_a_lost_runner_left_paused() {
    let mut t = Topology::new();
    t.pause_timeout = "1s";
    t.write_config();
    std::fs::create_dir_all(t.dir().join("svc")).unwrap();
    // The service reads the same [upgrade] and [cutover] as the runner.
    let base = std::fs::read_to_string(&t.config).unwrap();
    let port = must(pgsteward::localpg::free_port());
    let config = harness::write_config(
        &t.dir().join("svc"),
        &format!(
            "{base}\n[lag]\nschedule = \"*/1 * * * * *\"\nquery_timeout = \"1s\"\n\
             [http]\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    );
    let svc = Service::start(&config, port, t.dir().join("svc.log"));
    let load = Load::start(
        &t.pooler_url(),
        2,
        Duration::from_millis(5),
        Duration::from_secs(300),
    );
    load.wait_progress(20).await;
    let mut cmd = harness::pgsteward();
    cmd.arg("--config")
        .arg(&t.config)
        .args(["upgrade", "start", "--target-class", t.next_class()])
        .env("PGSTEWARD_LOCAL_OWNER_PID", std::process::id().to_string())
        .env("PGSTEWARD_FAILPOINT", "pause_writes-done=kill")
        .env(pgsteward::upgrade::keeper::KEEPER_ENV, "1");
    let out = must(cmd.output().map_err(|e| e.to_string()));
    assert!(killed(&out), "{}", text(&out));
    let t0 = Instant::now();
    let before = load.acked_ids().len();
    while load.acked_ids().len() < before + 10 {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "writes still paused after 90 s; service log:\n{}",
            svc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cfg = pgsteward::config::load(&t.config).unwrap().cluster;
    let bound = cfg.upgrade.pause_timeout.0 + pgsteward::upgrade::keeper::bound(&cfg);
    println!(
        "writes resumed by the service {:.1} s after the runner died (bound {bound:?} + one lag pass)",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        t0.elapsed() < bound + Duration::from_secs(10),
        "{}",
        svc.log_text()
    );
    assert!(
        svc.log_text().contains("RESUMEd every PgBouncer"),
        "{}",
        svc.log_text()
    );
    drop(svc);
    let out = t.pgsteward(&["upgrade", "resume"], None);
    if !out.status.success() {
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("rolled back"),
            "{}",
            text(&out)
        );
        let out = t.pgsteward(&["upgrade", "resume"], None);
        assert!(out.status.success(), "{}", text(&out));
    }
    t.follow_upgrade();
    load.wait_progress(10).await;
    load.finish_clean(&t).await;
}
