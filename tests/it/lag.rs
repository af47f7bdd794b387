//! `pgsteward lag` against a real primary with two streaming replicas.
//!
//! `STEWARD_RECORD_LAG=DIR` writes the reports of the idle, paused and promoted
//! cases to DIR; copies live in tests/fixtures/lag/, re-evaluated by the
//! `lag::evaluate` unit tests.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::harness::{must, pgsteward, write_config, TestCluster};

/// A config naming the cluster's primary and replicas, with `lag_extra` in `[lag]`.
pub fn lag_config(tc: &TestCluster, lag_extra: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let replicas: Vec<String> = tc
        .replicas
        .iter()
        .map(|r| format!("{:?}", crate::harness::steward_url(r, "postgres")))
        .collect();
    let path = write_config(
        dir.path(),
        &format!(
            "[database]\nprimary = {:?}\nreplicas = [{}]\nconnect_timeout = \"2s\"\n\n[lag]\nquery_timeout = \"3s\"\n{lag_extra}\n",
            crate::harness::steward_url(&tc.primary, "postgres"),
            replicas.join(", ")
        ),
    );
    (dir, path)
}

/// Runs `pgsteward lag --output json`: exit code and the report.
fn lag_json(config: &std::path::Path) -> (i32, Value) {
    let out = pgsteward()
        .arg("--config")
        .arg(config)
        .args(["lag", "--output", "json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "lag --output json is not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

fn replica(report: &Value, i: usize) -> &Value {
    &report["replicas"][i]
}

fn write_some(tc: &TestCluster, rows: u32) {
    must(tc.primary.psql(
        "postgres",
        &format!(
            "CREATE TABLE IF NOT EXISTS lag_load (id bigserial, pad text);
             INSERT INTO lag_load (pad) SELECT repeat('x', 200) FROM generate_series(1, {rows})"
        ),
    ));
}

#[test]
fn lag_caught_up_and_idle_longer_than_max_delay_is_healthy() {
    let tc = TestCluster::start(2);
    write_some(&tc, 100);
    tc.wait_replicas_caught_up();
    let (_dir, cfg) = lag_config(&tc, "max_bytes = \"1MB\"\nmax_delay = \"1s\"");
    let (code, report) = lag_json(&cfg);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["healthy"], true);
    // Bytes may be a standby-snapshot record in flight, never a real delay.
    for i in 0..2 {
        let r = replica(&report, i);
        assert_eq!(r["state"], "streaming", "{r:#}");
        assert!(r["bytes_behind"].as_u64().unwrap() < 64 << 10, "{r:#}");
        assert!(r["seconds_behind"].as_f64().unwrap() < 1.0, "{r:#}");
        assert_eq!(r["healthy"], true);
    }

    // Nothing committed for three times max_delay: the last replay timestamp is
    // old, yet a caught-up replica is not late.
    std::thread::sleep(Duration::from_secs(3));
    let (code, report) = lag_json(&cfg);
    if let Ok(dir) = std::env::var("STEWARD_RECORD_LAG") {
        std::fs::write(format!("{dir}/idle.json"), report.to_string()).unwrap();
    }
    assert_eq!(code, 0, "idle primary must stay healthy: {report:#}");
    for i in 0..2 {
        let r = replica(&report, i);
        assert!(r["seconds_behind"].as_f64().unwrap() < 1.0, "{r:#}");
        let last: chrono::DateTime<chrono::Utc> = r["observation"]["last_replay_at"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            chrono::Utc::now() - last > chrono::Duration::seconds(2),
            "the test needs an old last-replay timestamp: {r:#}"
        );
    }

    // The text table says the same, exit 0.
    let out = pgsteward()
        .arg("--config")
        .arg(&cfg)
        .arg("lag")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("REPLICA") && text.contains("streaming"),
        "{text}"
    );
}

#[test]
fn lag_paused_replay_with_writes_grows_and_fails() {
    let tc = TestCluster::start(2);
    tc.wait_replicas_caught_up();
    let (_dir, cfg) = lag_config(&tc, "max_bytes = \"64kB\"\nmax_delay = \"2s\"");
    write_some(&tc, 10);
    tc.wait_replicas_caught_up();
    must(tc.replicas[0].psql("postgres", "SELECT pg_wal_replay_pause()"));

    write_some(&tc, 2000);
    let (code1, first) = lag_json(&cfg);
    std::thread::sleep(Duration::from_millis(2500));
    write_some(&tc, 2000);
    let (code2, second) = lag_json(&cfg);

    if let Ok(dir) = std::env::var("STEWARD_RECORD_LAG") {
        std::fs::write(format!("{dir}/paused.json"), second.to_string()).unwrap();
    }
    let (a, b) = (replica(&first, 0), replica(&second, 0));
    assert_eq!(b["replay_paused"], true, "{b:#}");
    let (bytes_a, bytes_b) = (
        a["bytes_behind"].as_u64().unwrap(),
        b["bytes_behind"].as_u64().unwrap(),
    );
    let (secs_a, secs_b) = (
        a["seconds_behind"].as_f64().unwrap(),
        b["seconds_behind"].as_f64().unwrap(),
    );
    assert!(bytes_a > 64 << 10 && bytes_b > bytes_a, "{a:#}\n{b:#}");
    assert!(secs_b >= secs_a + 2.0 && secs_b > 2.0, "{a:#}\n{b:#}");
    assert_eq!(code1, 1, "{first:#}");
    assert_eq!(code2, 1, "{second:#}");
    let kinds: Vec<&str> = b["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["bytes_over_threshold", "delay_over_threshold"],
        "{b:#}"
    );
    // The other replica kept replaying.
    assert_eq!(replica(&second, 1)["replay_paused"], false);

    // Resumed, it catches up and the check passes again.
    must(tc.replicas[0].psql("postgres", "SELECT pg_wal_replay_resume()"));
    tc.wait_replicas_caught_up();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, report) = lag_json(&cfg);
        if code == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "never healthy again: {report:#}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn lag_stopped_replica_is_unreachable_and_promoted_one_is_second_writable_node() {
    let tc = TestCluster::start(2);
    tc.wait_replicas_caught_up();
    let (_dir, cfg) = lag_config(&tc, "max_bytes = \"64MB\"\nmax_delay = \"30s\"");
    let (code, report) = lag_json(&cfg);
    assert_eq!(code, 0, "{report:#}");

    must(tc.replicas[0].stop(pgsteward::localpg::StopMode::Fast));
    let started = Instant::now();
    let (code, report) = lag_json(&cfg);
    assert_eq!(code, 1, "{report:#}");
    let r = replica(&report, 0);
    assert_eq!(r["state"], "unreachable", "{r:#}");
    assert_eq!(r["problems"][0]["kind"], "unreachable", "{r:#}");
    assert_eq!(replica(&report, 1)["healthy"], true, "{report:#}");
    assert!(started.elapsed() < Duration::from_secs(10));

    must(tc.replicas[1].psql("postgres", "SELECT pg_promote(true, 30)"));
    let (code, report) = lag_json(&cfg);
    assert_eq!(code, 1, "{report:#}");
    if let Ok(dir) = std::env::var("STEWARD_RECORD_LAG") {
        std::fs::write(format!("{dir}/promoted.json"), report.to_string()).unwrap();
    }
    let r = replica(&report, 1);
    assert_eq!(r["state"], "writable", "{r:#}");
    assert_eq!(r["problems"][0]["kind"], "second_writable_node", "{r:#}");

    let out = pgsteward()
        .arg("--config")
        .arg(&cfg)
        .arg("lag")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text.contains("SECOND WRITABLE NODE") && text.contains("unreachable"),
        "{text}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
