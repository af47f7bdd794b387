//! The write pause across three PgBouncer instances behind one name, against
//! the hand-scripted cutover through one instance (the floor).

use std::time::Duration;

use super::upgrade::{hand_cutover, median, mmm, RunFigures};
use crate::harness::{self, text};
use crate::upgrade::{latest_record, Load, Topology};
use crate::upgrade_safety::members::Fleet;

/// The number after `key` in `line` (`... skew 1.2 ms ...`), NaN when absent.
fn figure(text: &str, key: &str) -> f64 {
    text.split(key)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.trim_end_matches([',', ';']).parse().ok())
        .unwrap_or(f64::NAN)
}

async fn lost(t: &Topology, acked: &[i64]) -> usize {
    let primary = t.check_one_writable().await;
    let rows = harness::query(&primary, "SELECT id FROM ledger").await;
    let have: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    acked.iter().filter(|id| !have.contains(id)).count()
}

/// Benchmark (issue 26): three instances on 127.0.0.2–4 behind one name,
/// clients on each at ~200 transactions/s in total; `pgsteward upgrade`
/// pauses, repoints and resumes all three. Figures per run: each
/// instance's client-visible pause (its clients' longest acknowledged
/// transaction around the window), the server-side overall window, the skew
/// between the instances' PAUSE completions; against the hand-scripted
/// cutover through one instance at the same rate. Goal: overall ≤ 1.2x the
/// floor, skew ≤ 10 ms, 0 errors, 0 lost. Asserts only correctness.
///
/// `cargo test --release --features failpoints --test it bench::poolers:: -- --ignored --nocapture`
/// (`BENCH_RUNS`, default 3 per variant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_pause_across_three_instances_vs_one_instance_floor() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    // Both hand-scripted variants: `pg_promote(wait => true)` (the
    // reference's procedure as specified) and polling `pg_is_in_recovery()`
    // (its faster variant, the stricter floor).
    let mut floor = Vec::new();
    let mut poll_floor = Vec::new();
    for poll in [false, true] {
        let mut t = Topology::new();
        for run in 0..runs {
            // 2 writers, one transaction each per 10 ms: ~200 tx/s.
            let load = Load::start(
                &t.pooler_url(),
                2,
                Duration::from_millis(10),
                Duration::from_secs(300),
            );
            load.wait_progress(100).await;
            let (window, steps, from, to) = hand_cutover(&mut t, poll, run).await;
            load.wait_progress(100).await;
            let ledger = load.stop().await;
            let lost = lost(&t, &ledger.acked).await;
            let fig = RunFigures::new(&ledger, window, steps, from, to, lost);
            let name = if poll { "poll" } else { "wait" };
            println!("floor ({name}) run {run}: {fig}");
            let row = (fig.max_latency, window, ledger.errors.len(), lost);
            if poll {
                poll_floor.push(row);
            } else {
                floor.push(row);
            }
        }
    }
    let mut f = Fleet::new("bench", 3, "5s");
    let mut fleet = Vec::new();
    for run in 0..runs {
        // One writer per instance, one transaction per 15 ms: ~200 tx/s in all.
        let loads: Vec<(String, Load)> =
            f.t.poolers()
                .map(|p| {
                    let url = harness::app_pooler_url(p, "app");
                    (
                        p.addr.clone(),
                        Load::start(&url, 1, Duration::from_millis(15), Duration::from_secs(300)),
                    )
                })
                .collect();
        for (_, l) in &loads {
            l.wait_progress(50).await;
        }
        let out = f.t.upgrade(None);
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let window = figure(&stdout, "write pause (PAUSE sent -> RESUME returned): ");
        let paused = stdout
            .lines()
            .find(|l| l.contains("PAUSE confirmed on"))
            .unwrap_or_default()
            .to_string();
        let resumed = stdout
            .lines()
            .find(|l| l.contains("writes resumed on"))
            .unwrap_or_default()
            .to_string();
        let skew = figure(&paused, "skew ");
        let overall = figure(&resumed, "overall ");
        let rec = latest_record(&f.t.state_dir());
        let from: std::time::SystemTime = rec
            .step(pgsteward::upgrade::record::Step::PauseWrites)
            .started_at
            .expect("pause_writes started")
            .into();
        let to: std::time::SystemTime = rec
            .step(pgsteward::upgrade::record::Step::ResumeWrites)
            .finished_at
            .expect("resume_writes finished")
            .into();
        f.t.follow_upgrade();
        f.write_config();
        let mut acked = Vec::new();
        let mut errors = 0;
        let mut per = Vec::new();
        for (addr, l) in loads {
            l.wait_progress(50).await;
            let ledger = l.stop().await;
            let fig = RunFigures::new(&ledger, window, Vec::new(), from, to, 0);
            per.push((addr, fig.max_latency));
            errors += ledger.errors.len();
            acked.extend(ledger.acked);
        }
        let lost = lost(&f.t, &acked).await;
        let worst = per.iter().map(|p| p.1).fold(0.0, f64::max);
        println!(
            "fleet run {run}: client-visible pause per instance {}; overall {worst:.1} ms; server window {window:.1} ms (report: overall {overall:.1} ms); PAUSE skew {skew:.2} ms; errors {errors}; lost {lost}",
            per.iter()
                .map(|(a, ms)| format!("{a} {ms:.1} ms"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!("  {paused}\n  {resumed}");
        fleet.push((worst, window, skew, errors, lost));
    }
    let col = |v: &[(f64, f64)], i: usize| -> Vec<f64> {
        v.iter().map(|x| if i == 0 { x.0 } else { x.1 }).collect()
    };
    let fs: Vec<(f64, f64)> = fleet.iter().map(|x| (x.0, x.1)).collect();
    println!("\n| variant | client-visible pause (ms) min/median/max | server window (ms) min/median/max | PAUSE skew (ms) median | errors | lost |");
    println!("|---|---|---|---|---|---|");
    for (name, rows) in [
        (
            "hand-scripted, 1 instance, `pg_promote(wait => true)` (floor)",
            &floor,
        ),
        ("hand-scripted, 1 instance, polling promote", &poll_floor),
    ] {
        let fl: Vec<(f64, f64)> = rows.iter().map(|x| (x.0, x.1)).collect();
        println!(
            "| {name} | {} | {} | - | {} | {} |",
            mmm(&col(&fl, 0)),
            mmm(&col(&fl, 1)),
            rows.iter().map(|x| x.2).sum::<usize>(),
            rows.iter().map(|x| x.3).sum::<usize>()
        );
    }
    println!(
        "| pgsteward, 3 instances, one name | {} | {} | {:.2} | {} | {} |",
        mmm(&col(&fs, 0)),
        mmm(&col(&fs, 1)),
        median(&fleet.iter().map(|x| x.2).collect::<Vec<_>>()),
        fleet.iter().map(|x| x.3).sum::<usize>(),
        fleet.iter().map(|x| x.4).sum::<usize>()
    );
    for (name, rows) in [("wait => true", &floor), ("polling", &poll_floor)] {
        let fl: Vec<(f64, f64)> = rows.iter().map(|x| (x.0, x.1)).collect();
        println!(
            "overall client-visible pause / floor {name} (medians): {:.2}x (goal <= 1.2x)",
            median(&col(&fs, 0)) / median(&col(&fl, 0))
        );
    }
    assert_eq!(fleet.iter().map(|x| x.4).sum::<usize>(), 0, "lost commits");
}
