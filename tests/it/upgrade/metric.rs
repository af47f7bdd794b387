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
    let position = pgsteward::upgrade::step::SAGA
        .iter()
        .position(|s| s.name == "wait_catchup")
        .unwrap() as f64
        + 1.0;
    assert_eq!(
        wait_step(&on_old, position).await,
        Some(position),
        "{}",
        on_old.log_text()
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
