//! The deployment's sizing: the service's memory footprint.

use std::time::{Duration, Instant};

use crate::deploy::http_get;
use crate::harness::{self, pgsteward, write_config};

/// Benchmark, prints figures: the memory footprint the Deployment's resources
/// are set from. `pgsteward run` against a primary with one streaming replica,
/// lag checks every second and a partition pass every 10 seconds over one
/// monthly table, for 60 seconds. Run with
/// `cargo test --features failpoints --test it bench::deploy::bench_ -- --ignored --nocapture`
/// (add `--release` for the image's figures).
#[test]
#[ignore = "benchmark: prints the service's RSS"]
fn bench_service_memory_footprint() {
    let cluster = harness::TestCluster::start(1);
    harness::create_app_db(&cluster.primary, "app");
    harness::owner_psql(
        &cluster.primary,
        "app",
        "CREATE TABLE public.audit_log (id bigint, at timestamptz NOT NULL) PARTITION BY RANGE (at)",
    );
    let primary = harness::steward_url(&cluster.primary, "app");
    let replica = harness::steward_url(&cluster.replicas[0], "postgres");
    let port = pgsteward::localpg::free_port().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &format!(
            "[database]\nprimary = \"{primary}\"\nreplicas = [\"{replica}\"]\n\
             [http]\nlisten = \"127.0.0.1:{port}\"\n\
             [lag]\nschedule = \"* * * * * *\"\n\
             [partitions]\nschedule = \"*/10 * * * * *\"\n\
             [[partitions.tables]]\ntable = \"public.audit_log\"\ninterval = \"monthly\"\npremake = 3\n"
        ),
    );
    let mut child = pgsteward()
        .arg("--config")
        .arg(&path)
        .arg("run")
        .spawn()
        .unwrap();
    let status = |field: &str| -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok()?;
        let line = s.lines().find(|l| l.starts_with(field))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut scrapes = 0;
    while start.elapsed() < Duration::from_secs(60) {
        if http_get(port, "/metrics").is_some_and(|(s, _)| s == 200) {
            scrapes += 1;
        }
        if let Some(kb) = status("VmRSS:") {
            samples.push(kb);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let hwm = status("VmHWM:");
    let threads = status("Threads:");
    // utime + stime, in clock ticks (100 per second on Linux).
    let cpu_ticks: Option<u64> = std::fs::read_to_string(format!("/proc/{}/stat", child.id()))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            Some(after.get(11)?.parse::<u64>().ok()? + after.get(12)?.parse::<u64>().ok()?)
        });
    let _ = child.kill();
    let _ = child.wait();
    assert!(!samples.is_empty(), "the service stayed up");
    samples.sort_unstable();
    println!(
        "pgsteward run, 60 s, {scrapes} scrapes: RSS median {} KiB, max {} KiB, peak (VmHWM) {:?} KiB, threads {:?}, CPU {:?} ticks of 10 ms, build {}",
        samples[samples.len() / 2],
        samples[samples.len() - 1],
        hwm,
        threads,
        cpu_ticks,
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );
}
