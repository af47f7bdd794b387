//! The vertical upgrade: `pgsteward upgrade` against the hand-scripted
//! cutover, on the topology and load of the `upgrade` suite.

use std::path::Path;
use std::time::{Duration, Instant};

use pgsteward::localpg::{Cluster, StopMode};

use crate::harness::{self, must, text};
use crate::upgrade::{latest_record, Ledger, Load, Topology};

/// Benchmark: `pgsteward upgrade` against the hand-scripted cutover of
/// `shared/reference/switchover/` (PAUSE → LSN → replay wait → promote →
/// rewrite ini → RELOAD → RESUME, then stop the old primary), reimplemented
/// here, both promote variants, alternating on one topology under ~300 write
/// tx/s through PgBouncer. Prints figures; asserts only correctness.
///
/// `cargo test --release --features failpoints --test it bench::upgrade::bench_ -- --ignored --nocapture`
/// (`BENCH_RUNS`, default 5 per variant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_upgrade_vs_hand_scripted_cutover() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut t = Topology::new();
    let mut results: std::collections::BTreeMap<&str, Vec<RunFigures>> = Default::default();
    for run in 0..runs {
        for variant in ["pgsteward", "hand_wait", "hand_poll"] {
            let load = Load::start(
                &t.pooler_url(),
                8,
                Duration::from_millis(25),
                Duration::from_secs(300),
            );
            load.wait_progress(200).await;
            let (window, steps, from, to) = match variant {
                "pgsteward" => {
                    let out = t.upgrade(None);
                    assert!(out.status.success(), "{}", text(&out));
                    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
                    let window = stdout
                        .lines()
                        .find_map(|l| {
                            l.strip_prefix("write pause (PAUSE sent -> RESUME returned): ")
                        })
                        .and_then(|v| v.trim_end_matches(" ms").parse::<f64>().ok())
                        .unwrap_or(f64::NAN);
                    let rec = latest_record(&t.state_dir());
                    print_window_detail(&rec);
                    let steps: Vec<(String, f64)> = pgsteward::upgrade::step_timings(&rec)
                        .into_iter()
                        .map(|(s, d, _)| {
                            (
                                s.name().to_string(),
                                d.map(|d| d.as_secs_f64() * 1000.0).unwrap_or(f64::NAN),
                            )
                        })
                        .collect();
                    let from: std::time::SystemTime = rec
                        .step(pgsteward::upgrade::record::Step::PauseWrites)
                        .started_at
                        .unwrap()
                        .into();
                    let to: std::time::SystemTime = rec
                        .step(pgsteward::upgrade::record::Step::ResumeWrites)
                        .finished_at
                        .unwrap()
                        .into();
                    t.follow_upgrade();
                    (window, steps, from, to)
                }
                v => hand_cutover(&mut t, v == "hand_poll", run).await,
            };
            load.wait_progress(200).await;
            let ledger = load.stop().await;
            let lost = {
                let primary = t.check_one_writable().await;
                let rows = harness::query(&primary, "SELECT id FROM ledger").await;
                let have: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
                ledger.acked.iter().filter(|id| !have.contains(id)).count()
            };
            let figures = RunFigures::new(&ledger, window, steps, from, to, lost);
            println!("run {run} {variant:<10} {figures}");
            results.entry(variant).or_default().push(figures);
        }
    }
    println!("\n| variant | client max tx latency (ms) min/median/max | largest commit gap (ms) min/median/max | server window (ms) median | errors | lost |");
    println!("|---|---|---|---|---|---|");
    for (variant, runs) in &results {
        let lat: Vec<f64> = runs.iter().map(|r| r.max_latency).collect();
        let gap: Vec<f64> = runs.iter().map(|r| r.max_gap).collect();
        let win: Vec<f64> = runs.iter().map(|r| r.window).collect();
        println!(
            "| {variant} | {} | {} | {:.1} | {} | {} |",
            mmm(&lat),
            mmm(&gap),
            median(&win),
            runs.iter().map(|r| r.errors).sum::<usize>(),
            runs.iter().map(|r| r.lost).sum::<usize>()
        );
    }
    for (variant, runs) in &results {
        let names: Vec<String> = runs[0].steps.iter().map(|s| s.0.clone()).collect();
        let medians: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                format!(
                    "{n} {:.1}",
                    median(&runs.iter().map(|r| r.steps[i].1).collect::<Vec<_>>())
                )
            })
            .collect();
        println!("step medians (ms) {variant}: {}", medians.join(", "));
    }
}

/// Inside the window: each step's note, and the time between one step's
/// end and the next one's start (the journal and the guard's share).
fn print_window_detail(rec: &pgsteward::upgrade::record::UpgradeRecord) {
    use pgsteward::upgrade::record::STEPS;
    let window: Vec<_> = STEPS.iter().filter(|s| s.in_pause_window()).collect();
    let mut between = Vec::new();
    for pair in window.windows(2) {
        let (a, b) = (rec.step(*pair[0]), rec.step(*pair[1]));
        if let (Some(end), Some(start)) = (a.finished_at, b.started_at) {
            between.push(format!(
                "{}>{} {:.1}",
                pair[0].name(),
                pair[1].name(),
                (start - end).num_microseconds().unwrap_or(0) as f64 / 1000.0
            ));
        }
    }
    println!("  between steps (ms): {}", between.join(", "));
    for s in window {
        if let Some(n) = &rec.step(*s).output.note {
            println!("  {}: {n}", s.name());
        }
    }
}

pub(super) struct RunFigures {
    pub max_latency: f64,
    pub max_gap: f64,
    window: f64,
    errors: usize,
    lost: usize,
    steps: Vec<(String, f64)>,
}

impl RunFigures {
    /// Latency and gaps of the commits acknowledged around the cutover window.
    pub(super) fn new(
        l: &Ledger,
        window: f64,
        steps: Vec<(String, f64)>,
        from: std::time::SystemTime,
        to: std::time::SystemTime,
        lost: usize,
    ) -> RunFigures {
        let lo = from - Duration::from_millis(200);
        let hi = to + Duration::from_millis(1000);
        let mut acks: Vec<std::time::SystemTime> = Vec::new();
        let mut max_latency = Duration::ZERO;
        for c in &l.commits {
            if c.wall >= lo && c.wall <= hi {
                acks.push(c.wall);
                max_latency = max_latency.max(c.latency);
            }
        }
        acks.sort();
        let max_gap = acks
            .windows(2)
            .map(|w| w[1].duration_since(w[0]).unwrap_or_default())
            .max()
            .unwrap_or_default();
        RunFigures {
            max_latency: max_latency.as_secs_f64() * 1000.0,
            max_gap: max_gap.as_secs_f64() * 1000.0,
            window,
            errors: l.errors.len(),
            lost,
            steps,
        }
    }
}

impl std::fmt::Display for RunFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "max tx latency {:.1} ms, largest gap {:.1} ms, window {:.1} ms, errors {}, lost {}; steps {}",
            self.max_latency,
            self.max_gap,
            self.window,
            self.errors,
            self.lost,
            self.steps.iter().map(|(n, d)| format!("{n} {d:.1}")).collect::<Vec<_>>().join(", ")
        )
    }
}

pub(super) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

pub(super) fn mmm(v: &[f64]) -> String {
    let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.1} / {:.1} / {max:.1}", median(v))
}

/// The reference's sequence, by hand: returns (window ms, step timings, window start, end).
pub(super) async fn hand_cutover(
    t: &mut Topology,
    poll: bool,
    run: usize,
) -> (
    f64,
    Vec<(String, f64)>,
    std::time::SystemTime,
    std::time::SystemTime,
) {
    let class = t.next_class();
    let sb = if class == "large" { "40MB" } else { "48MB" };
    // The harness's settings (a standby refuses to start below its
    // primary's max_wal_senders and the like), with the class's buffers.
    let settings: Vec<(String, String)> = harness::test_settings()
        .into_iter()
        .map(|(k, v)| {
            if k == "shared_buffers" {
                (k, sb.to_string())
            } else {
                (k, v)
            }
        })
        .collect();
    let old_spec = pgsteward::pg::ConnSpec::parse(&t.primary_url).unwrap();
    let old_port = old_spec.host_port().1;
    let old = harness::connect(&t.primary_url).await;
    let old_dir: String = old
        .query_one("SHOW data_directory", &[])
        .await
        .unwrap()
        .get(0);
    let dir = t
        .dir()
        .join("clusters")
        .join(format!("hand{run}{}", if poll { "p" } else { "w" }));
    let port = pgsteward::localpg::free_port().unwrap();
    let login = must(pgsteward::localpg::ChildLogin::new(
        "127.0.0.1",
        old_port,
        harness::SUPER_USER,
        Some(harness::SUPER_PASSWORD),
        must(pgsteward::localpg::ServerUser::detect()),
    ));
    let replica = must(Cluster::basebackup_as(
        &login,
        &dir,
        port,
        harness::bin_dir(),
        &settings,
    ))
    .with_superuser_password(harness::SUPER_PASSWORD);
    must(replica.start());
    must(pgsteward::localpg::stop_when_gone(
        &replica,
        std::process::id(),
    ));
    let new_url = replica.url("app");
    let new = harness::connect(&new_url).await;
    // Caught up before the cutover, as pgsteward's wait_catchup does.
    loop {
        let lsn: String = old
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        let ok: bool = new
            .query_one(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&lsn],
            )
            .await
            .unwrap()
            .get(0);
        if ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admin = harness::connect(&t.pooler.admin_url()).await;
    let ini = t.pooler.ini.clone();
    let ini_text = std::fs::read_to_string(&ini).unwrap();
    let mut steps = Vec::new();
    let mut mark = Instant::now();
    let mut lap = |name: &str, steps: &mut Vec<(String, f64)>| {
        steps.push((name.to_string(), mark.elapsed().as_secs_f64() * 1000.0));
        mark = Instant::now();
    };
    let from = std::time::SystemTime::now();
    let t0 = Instant::now();
    admin.simple_query("PAUSE app").await.unwrap();
    lap("pause", &mut steps);
    let lsn: String = old
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    lap("read_lsn", &mut steps);
    loop {
        let ok: bool = new
            .query_one(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&lsn],
            )
            .await
            .unwrap()
            .get(0);
        if ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    lap("wait_replay", &mut steps);
    if poll {
        new.query_one("SELECT pg_promote(wait => false)", &[])
            .await
            .unwrap();
        loop {
            let r: bool = new
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await
                .unwrap()
                .get(0);
            if !r {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    } else {
        let r: bool = new
            .query_one("SELECT pg_promote(wait => true, wait_seconds => 60)", &[])
            .await
            .unwrap()
            .get(0);
        assert!(r);
    }
    lap("promote", &mut steps);
    let txt = pgsteward::pooler::retarget_ini(&ini_text, "app", "127.0.0.1", port).unwrap();
    let tmp = ini.with_extension("tmp");
    std::fs::write(&tmp, txt).unwrap();
    if let Some(u) = t.pooler.user {
        std::os::unix::fs::chown(&tmp, Some(u.uid), Some(u.gid)).unwrap();
    }
    std::fs::rename(&tmp, &ini).unwrap();
    lap("rewrite_ini", &mut steps);
    admin.simple_query("RELOAD").await.unwrap();
    lap("reload", &mut steps);
    admin.simple_query("RESUME app").await.unwrap();
    lap("resume", &mut steps);
    let window = t0.elapsed().as_secs_f64() * 1000.0;
    let to = std::time::SystemTime::now();
    // Fence after the window, as the reference does (stop the old primary after 1 s).
    drop(old);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let old_cluster = Cluster::at(Path::new(&old_dir), old_port, harness::bin_dir()).unwrap();
    must(old_cluster.stop(StopMode::Fast));
    t.primary_url = new_url.clone();
    t.nodes.push(new_url);
    t.classes_used += 1;
    t.write_config();
    (window, steps, from, to)
}
