//! The service at rest: idle resource use of `pgsteward run`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use pgsteward::localpg;

use crate::harness::{must, TestCluster};
use crate::service::{http_get, metric, metric_with};

/// Idle resource use of `pgsteward run` with the example configuration pointed
/// at a harness cluster (primary + 1 replica, both example tables created).
/// Prints peak/final RSS and CPU share; not an assertion.
///
/// STEWARD_BENCH_BIN=target/release/pgsteward STEWARD_BENCH_SECS=150 \
///   cargo test --features failpoints --test it bench::service::bench_service_idle_resources -- --ignored --nocapture
#[test]
#[ignore]
fn bench_service_idle_resources() {
    let tc = TestCluster::start(1);
    must(tc.primary.psql(
        "postgres",
        "CREATE TABLE public.audit_log (created_at timestamptz NOT NULL, body text) PARTITION BY RANGE (created_at);
         CREATE TABLE public.workflow_events (at timestamptz NOT NULL, body text) PARTITION BY RANGE (at)",
    ));
    let dir = tempfile::tempdir().unwrap();
    let port = must(localpg::free_port());
    let example = include_str!("../../../config/pgsteward.example.toml");
    let config: String = example
        .lines()
        .map(|l| {
            if l.starts_with("primary = ") {
                format!(
                    "primary = {:?}",
                    crate::harness::steward_url(&tc.primary, "postgres")
                )
            } else if l.starts_with("replicas = ") {
                format!(
                    "replicas = [{:?}]",
                    crate::harness::steward_url(&tc.replicas[0], "postgres")
                )
            } else if l.starts_with("schedule = \"*/1 * * * *\"") {
                // STEWARD_BENCH_LAG_SCHEDULE="* * * * * *" measures a check every second.
                match std::env::var("STEWARD_BENCH_LAG_SCHEDULE") {
                    Ok(s) => format!("schedule = {s:?}"),
                    Err(_) => l.to_string(),
                }
            } else if l.starts_with("listen = ") {
                format!("listen = \"127.0.0.1:{port}\"")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = dir.path().join("pgsteward.toml");
    must(std::fs::write(&path, config));
    let bin = std::env::var("STEWARD_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_pgsteward").to_string());
    let secs: u64 = std::env::var("STEWARD_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    let log = dir.path().join("svc.log");
    let mut child = std::process::Command::new(&bin)
        .env("PGSTEWARD_LOG_LEVEL", "info")
        .arg("--config")
        .arg(&path)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(must(std::fs::File::create(&log).map_err(|e| e.to_string())))
        .spawn()
        .unwrap();
    let pid = child.id();
    let started = Instant::now();
    while http_get(port, "/readyz").map(|x| x.0) != Some(200) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not ready; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ticks = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after = stat.rsplit_once(") ").unwrap().1;
        let f: Vec<&str> = after.split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let rss_kb = || -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    let clk = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let (t0, c0) = (Instant::now(), ticks());
    let mut peak = 0;
    // A scrape every 15 s, as Prometheus would, plus a readiness probe.
    while t0.elapsed() < Duration::from_secs(secs) {
        peak = peak.max(rss_kb());
        let _ = http_get(port, "/metrics");
        let _ = http_get(port, "/readyz");
        std::thread::sleep(Duration::from_secs(15).min(Duration::from_secs(secs)));
    }
    let (elapsed, c1, rss) = (t0.elapsed().as_secs_f64(), ticks(), rss_kb());
    peak = peak.max(rss);
    let cpu = (c1 - c0) as f64 / clk / elapsed * 100.0;
    let (_, body) = http_get(port, "/metrics").unwrap();
    eprintln!(
        "bench: binary {bin}\nbench: {elapsed:.0} s, RSS final {:.1} MB, peak {:.1} MB, CPU {:.3}% of one core ({} ticks)\nbench: lag runs {:?}, leader {:?}",
        rss as f64 / 1024.0,
        peak as f64 / 1024.0,
        cpu,
        c1 - c0,
        metric_with(&body, "pgsteward_job_runs_total", "lag"),
        metric(&body, "pgsteward_leader"),
    );
    must(nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    ));
    let _ = child.wait();
}
