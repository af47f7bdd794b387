//! The service's capacity job: samples recorded on the primary at every
//! scheduled run (the leader's), metrics with bounded labels.

use std::time::Duration;

use super::db_name;
use crate::harness::{fresh_db, must, owner_psql, shared, steward_url};
use crate::service::{metric_with, wait_for, Service};

#[test]
fn service_capacity_job_records_samples_and_exports_metrics() {
    let db = db_name(&fresh_db("cap_svc"));
    owner_psql(
        shared(),
        &db,
        "CREATE SEQUENCE public.order_ids; CREATE TABLE public.orders (id int4 DEFAULT nextval('public.order_ids'));\n\
         SELECT setval('public.order_ids', 1073741824);",
    );
    let dir = tempfile::tempdir().unwrap();
    let port = pgsteward::localpg::free_port().unwrap();
    let cfg = dir.path().join("pgsteward.toml");
    must(std::fs::write(
        &cfg,
        format!(
            "[database]\nprimary = {:?}\nconnect_timeout = \"2s\"\n\n\
             [partitions]\nschedule = \"0 0 1 1 *\"\n[lag]\nschedule = \"*/1 * * * * *\"\n\
             [capacity]\nschedule = \"*/2 * * * * *\"\nstorage_limit = \"1TB\"\n\
             [http]\nlisten = \"127.0.0.1:{port}\"\n",
            steward_url(shared(), &db)
        ),
    ));
    let svc = Service::start(&cfg, port, dir.path().join("service.log"));
    let body = wait_for(Duration::from_secs(30), "capacity metrics", || {
        let (_, body) = svc.get("/metrics")?;
        metric_with(
            &body,
            "pgsteward_capacity_sequence_used_ratio",
            "public.order_ids",
        )?;
        Some(body)
    });
    let ratio = metric_with(
        &body,
        "pgsteward_capacity_sequence_used_ratio",
        "sequence=\"public.order_ids\"",
    )
    .unwrap();
    assert!((ratio - 0.5).abs() < 1e-3, "{ratio}");
    assert_eq!(
        metric_with(&body, "pgsteward_capacity_storage_bytes", "kind=\"limit\""),
        Some(1099511627776.0)
    );
    // No history yet: no storage date (absent, not 0 and not +Inf).
    assert_eq!(
        metric_with(
            &body,
            "pgsteward_capacity_days_until",
            "resource=\"storage_full\""
        ),
        None,
        "{body}"
    );
    assert!(metric_with(
        &body,
        "pgsteward_capacity_xid_age",
        &format!("database=\"{db}\"")
    )
    .is_some());
    // Runs every 2 s: several samples, one per run.
    let runs = wait_for(Duration::from_secs(30), "three capacity runs", || {
        let (_, body) = svc.get("/metrics")?;
        let n = metric_with(&body, "pgsteward_job_runs_total", "job=\"capacity\"")?;
        (n >= 3.0).then_some(n)
    });
    let samples: f64 = must(shared().psql(
        &db,
        "SELECT count(DISTINCT taken_at) FROM pgsteward.capacity_samples WHERE kind = 'next_xid'",
    ))
    .trim()
    .parse()
    .unwrap();
    assert!(
        samples >= 3.0 && samples <= runs + 1.0,
        "{samples} samples for {runs} runs"
    );
    let (_, body) = svc.get("/metrics").unwrap();
    assert_eq!(
        metric_with(&body, "pgsteward_job_failures_total", "job=\"capacity\""),
        None,
        "{}",
        svc.log_text()
    );
}
