//! Credentials: the client-side cost of a SCRAM login.

use std::time::{Duration, Instant};

use crate::harness::{self, must};

/// Figures: the client-side cost of a SCRAM login (4096 HMAC rounds) in this
/// build. `cargo test --features failpoints --test it bench::secrets::bench_scram_login -- --ignored --nocapture`
#[tokio::test]
#[ignore = "benchmark: prints figures"]
async fn bench_scram_login() {
    let url = harness::shared().url("postgres");
    let spec = must(pgsteward::pg::ConnSpec::parse(&url));
    let n = 20;
    let t = Instant::now();
    for _ in 0..n {
        must(spec.connect(Duration::from_secs(10)).await);
    }
    let scram = t.elapsed() / n;
    println!(
        "scram-sha-256 login: {:.1} ms each ({n} logins)",
        scram.as_secs_f64() * 1000.0
    );
}
