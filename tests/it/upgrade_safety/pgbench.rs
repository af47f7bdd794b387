//! A real client nobody here wrote: the stock `pgbench` (TPC-B, several
//! clients) through the stock PgBouncer during `upgrade start`.

use super::*;

/// Clients and threads of the run (2 cores are shared with other suites).
const CLIENTS: &str = "8";
const THREADS: &str = "2";
/// Bounded in time and rate: long enough that the whole upgrade happens
/// inside the run, rate-limited so the shared machine is not saturated.
const SECONDS: u64 = 30;
/// Warm-up before the upgrade starts.
const WARMUP: Duration = Duration::from_secs(3);
const RATE_TPS: &str = "1500";

/// `pgbench` from the PostgreSQL install the harness uses, or a failure
/// naming the install command.
fn pgbench() -> Command {
    let bin = must(pgsteward::localpg::find_program(
        "pgbench",
        harness::bin_dir(),
    ));
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    // Passwords from the harness's password file, not the command line.
    cmd.env("PGPASSFILE", harness::passfile());
    cmd.env("PGSSLMODE", "disable");
    cmd
}

/// The figure `label: N` of pgbench's report.
fn figure(report: &str, label: &str) -> Option<u64> {
    let line = report.lines().find(|l| l.starts_with(label))?;
    let rest = line[label.len()..].trim_start_matches(':').trim();
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[test]
fn figures_are_parsed() {
    let report = "number of transactions actually processed: 61367\n\
                  number of failed transactions: 0 (0.000%)\n";
    assert_eq!(
        figure(report, "number of transactions actually processed"),
        Some(61367)
    );
    assert_eq!(figure(report, "number of failed transactions"), Some(0));
}

/// pgbench (TPC-B, simple protocol as transaction pooling allows, no
/// prepared statements, one try per transaction so no retry hides an
/// error) runs as the application role through PgBouncer
/// while the least-privilege steward upgrades: the upgrade completes,
/// pgbench reports 0 failed transactions, and `pgbench_history` on the new
/// primary holds one row per transaction pgbench counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_through_pgbouncer_during_upgrade() {
    let mut t = Topology::new();
    let p = &t.cluster.primary;
    let port = p.port.to_string();
    // Initialised by the owner role, as a migration would; the application
    // role gets what TPC-B needs (SELECT, UPDATE, INSERT) through grant_app.
    let init = must(
        pgbench()
            .args(["-i", "-s", "2", "-q", "-h", "127.0.0.1", "-p", &port])
            .args(["-U", harness::OWNER_USER, "app"])
            .output()
            .map_err(|e| e.to_string()),
    );
    assert!(init.status.success(), "pgbench -i: {}", text(&init));
    harness::grant_app(p, "app");
    t.cluster.wait_replicas_caught_up();

    let pooler_port = t.pooler.port.to_string();
    let mut cmd = pgbench();
    cmd.args(["-n", "--protocol=simple", "-c", CLIENTS, "-j", THREADS])
        .args(["-T", &SECONDS.to_string(), "-R", RATE_TPS])
        .args(["-h", &t.pooler.addr, "-p", &pooler_port])
        .args(["-U", harness::APP_USER, "app"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let bench = spawn(cmd);
    // Let the clients warm up before the upgrade begins.
    std::thread::sleep(WARMUP);
    let t0 = Instant::now();
    let out = t.upgrade(None);
    let upgrade_took = t0.elapsed();
    let bench = wait(bench);
    let report = String::from_utf8_lossy(&bench.stdout).to_string();
    assert!(out.status.success(), "upgrade: {}", text(&out));
    assert!(bench.status.success(), "pgbench: {}", text(&bench));
    // The whole upgrade happened while pgbench ran (else this proves little).
    assert!(
        WARMUP + upgrade_took < Duration::from_secs(SECONDS),
        "the upgrade took {upgrade_took:?}, longer than pgbench ran"
    );
    let processed = figure(&report, "number of transactions actually processed");
    let failed = figure(&report, "number of failed transactions");
    let processed = processed.unwrap_or_else(|| panic!("no count in: {report}"));
    assert_eq!(failed, Some(0), "{report}");
    t.follow_upgrade();
    let rows = harness::query(&t.primary_url, "SELECT count(*) FROM pgbench_history").await;
    let on_new = rows[0].get::<_, i64>(0);
    let upgrade_stdout = String::from_utf8_lossy(&out.stdout);
    let pause = upgrade_stdout
        .lines()
        .find(|l| l.starts_with("write pause"))
        .unwrap_or("write pause: not reported");
    eprintln!(
        "pgbench through PgBouncer during the upgrade: {processed} transactions, 0 failed, \
         {on_new} in pgbench_history on the new primary; upgrade {upgrade_took:?}; \
         {pause}\n{report}"
    );
    assert_eq!(on_new, processed as i64, "{report}");
    assert_eq!(t.check_one_writable().await, t.primary_url);
}
