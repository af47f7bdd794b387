//! The lock promise with a 1 GB DEFAULT (issue 22, point 7): a pass premakes
//! three periods next to it under a writer and a reader; prints the longest
//! client statement against `lock_timeout` (200 ms). Asserts only
//! correctness (no client error, no acknowledged row lost, the CHECK path).
//! `cargo test --release --features failpoints --test it bench::large_default:: -- --ignored --nocapture`
//! (`PGSTEWARD_BENCH_DEFAULT_MB`, default 1024).

use crate::harness::{self, must};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: fills 1 GB, takes minutes; docs/benchmarks.md has the figures"]
async fn bench_a_pass_next_to_a_1gb_default() {
    let mb: i64 = std::env::var("PGSTEWARD_BENCH_DEFAULT_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let dir = harness::server_tempdir();
    let server = harness::new_primary(dir.path(), "bench");
    let version = must(server.psql("postgres", "SELECT version()"));
    println!("server: {}", version.trim());
    // pgsteward as configured (64MB: the CHECK path), then the same with
    // max_default_scan above the DEFAULT's size: each ATTACH scans it under
    // ACCESS EXCLUSIVE, what a plain ATTACH next to a DEFAULT does.
    for (db, max_scan, what) in [
        (
            "app",
            "64MB",
            "pgsteward, max_default_scan 64MB (validated CHECK, no scan)",
        ),
        (
            "scan",
            "1TB",
            "the ATTACH scans DEFAULT (max_default_scan 1TB)",
        ),
    ] {
        harness::create_app_db(&server, db);
        let f = crate::partitions::large_default::under_load(&server.url(db), mb, max_scan).await;
        println!("{what}: {f}");
        if db == "app" {
            println!("statements:\n{}", f.statements.join("\n"));
        }
        must(server.psql("postgres", &format!("DROP DATABASE {db}")));
    }
    let _ = server.stop(pgsteward::localpg::StopMode::Fast);
}
