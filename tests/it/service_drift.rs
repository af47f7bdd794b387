//! The access-drift alert's input as the service exports it: drift a pass
//! must not repair by itself (a partition's own row-level security policy
//! under a parent with row-level security) shows in
//! `pgsteward_partitions_access_drift{table}`, the metric the
//! `PgstewardPartitionAccessDrift` alert watches, while it lasts, and goes
//! back to 0 once the operator fixed it.

use std::time::Duration;

use pgsteward::localpg;

use crate::harness::{must, owner_psql, TestCluster};
use crate::service::{create_events, metric_with, service_config, wait_for, Service};

const DRIFT: &str = "pgsteward_partitions_access_drift";
const FIRST_PARTITION: &str =
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
     WHERE i.inhparent = 'public.events'::regclass ORDER BY 1 LIMIT 1";

/// The alert's expression names the exported metric, in both deployments.
fn alert_watches(metric: &str) {
    for file in [
        "deploy/kubernetes/service/prometheusrule.yaml",
        "deploy/helm/pgsteward/files/alerts.yaml",
    ] {
        let text = must(std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}")));
        let rule = text
            .split("- alert: ")
            .find(|r| r.starts_with("PgstewardPartitionAccessDrift"))
            .unwrap_or_else(|| panic!("{file}: no PgstewardPartitionAccessDrift alert"));
        assert!(
            rule.contains(&format!("max by (table) ({metric}) > 0")),
            "{file}: {rule}"
        );
    }
}

#[test]
fn service_exports_access_drift_it_must_not_repair_until_it_is_fixed() {
    alert_watches(DRIFT);
    let tc = TestCluster::start(0);
    create_events(&tc);
    let dir = must(tempfile::tempdir().map_err(|e| e.to_string()));
    let port = must(localpg::free_port());
    let config = service_config(
        dir.path(),
        &tc,
        port,
        "[[partitions.tables]]\ntable = \"public.events\"\ninterval = \"daily\"\npremake = 2\n",
    );
    let svc = Service::start(&config, port, dir.path().join("svc.log"));
    let partition = wait_for(
        Duration::from_secs(30),
        "a partition made by a pass",
        || {
            let name = must(tc.primary.psql("app", FIRST_PARTITION));
            let name = name.trim().to_string();
            (!name.is_empty()).then_some(name)
        },
    );
    let body = wait_for(Duration::from_secs(20), "the drift metric at 0", || {
        let (_, body) = svc.get("/metrics")?;
        (metric_with(&body, DRIFT, "public.events")? == 0.0).then_some(body)
    });
    assert!(body.contains(DRIFT), "{body}");

    // Row-level security on the parent, and a policy of the partition's
    // own: a role could reach through it what the parent denies. Not ours
    // to drop: reported, kept.
    owner_psql(
        &tc.primary,
        "app",
        &format!(
            "ALTER TABLE public.events ENABLE ROW LEVEL SECURITY; \
             CREATE POLICY own ON public.{partition} USING (true)"
        ),
    );
    wait_for(Duration::from_secs(20), "the drift metric at 1", || {
        let (_, body) = svc.get("/metrics")?;
        (metric_with(&body, DRIFT, "public.events")? >= 1.0).then_some(())
    });
    let policies = must(tc.primary.psql(
        "app",
        &format!("SELECT count(*) FROM pg_policy WHERE polrelid = 'public.{partition}'::regclass"),
    ));
    assert_eq!(policies.trim(), "1", "the operator's policy was kept");

    owner_psql(
        &tc.primary,
        "app",
        &format!("DROP POLICY own ON public.{partition}"),
    );
    wait_for(
        Duration::from_secs(20),
        "the drift metric back at 0",
        || {
            let (_, body) = svc.get("/metrics")?;
            (metric_with(&body, DRIFT, "public.events")? == 0.0).then_some(())
        },
    );
    assert!(!svc.log_text().contains("panicked"));
}
