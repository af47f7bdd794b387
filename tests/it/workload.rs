//! The shared client load (`pgsteward::workload`) against the shared server:
//! what the demo and the upgrade tests rely on it to record.

use std::time::{Duration, Instant};

use pgsteward::workload::{Plan, LEDGER_TABLE};

use crate::harness::{self, fresh_db, must, query};

fn spec(url: &str) -> pgsteward::pg::ConnSpec {
    must(pgsteward::pg::ConnSpec::parse_with(url, &harness::pg_env()))
}

/// Writers' acknowledged ids are exactly the rows on the server; readers are
/// counted; each worker stops at `max_ops`.
#[tokio::test]
async fn every_acknowledged_write_is_a_row_and_workers_stop_at_their_bound() {
    let url = fresh_db("workload_ledger");
    query(&url, LEDGER_TABLE).await;
    let load = Plan::ledger_writers(3)
        .reader(|_| "SELECT count(*) FROM ledger".into())
        .pace(Duration::from_millis(1))
        .max_ops(40)
        .start(&spec(&url));
    must(load.wait_acked(30, Duration::from_secs(30)).await);
    // Bounded in count: the writers end by themselves (40 statements each,
    // the first turn of each is its connection).
    let t0 = Instant::now();
    while (load.acked() < 3 * 39 || load.snapshot().reads < 39)
        && t0.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ledger = load.stop().await;
    assert!(ledger.errors.is_empty(), "{:?}", ledger.errors);
    assert_eq!(ledger.acked.len(), 3 * 39);
    assert_eq!(ledger.commits.len(), ledger.acked.len());
    assert_eq!(ledger.reads, 39);
    let rows = query(&url, "SELECT id FROM ledger ORDER BY id").await;
    let mut have: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    let mut acked = ledger.acked.clone();
    acked.sort();
    have.sort();
    assert_eq!(have, acked);
    assert!(ledger.max_latency() > Duration::ZERO);
}

/// A failing statement is recorded with its id and the server's message, the
/// worker reconnects and goes on; a stall is reported with those errors.
#[tokio::test]
async fn server_errors_are_recorded_not_raised_and_a_stall_names_them() {
    let url = fresh_db("workload_errors");
    let load = Plan::ledger_writers(1)
        .pace(Duration::from_millis(5))
        .max_run(Duration::from_secs(20))
        .start(&spec(&url));
    let err = load
        .wait_acked(1, Duration::from_millis(500))
        .await
        .expect_err("no ledger table: nothing can be acknowledged");
    let text = err.to_string();
    assert!(
        text.contains("0 acknowledged") && text.contains("ledger"),
        "{text}"
    );
    // Once the table exists the same workers succeed.
    query(&url, LEDGER_TABLE).await;
    must(load.wait_acked(5, Duration::from_secs(30)).await);
    let ledger = load.stop().await;
    assert!(
        ledger.errors.iter().all(|e| e.contains("ledger")),
        "{:?}",
        ledger.errors
    );
    assert!(!ledger.errors.is_empty());
    assert!(ledger.acked.len() >= 5);
}
