use super::*;
use crate::capacity::model::PartitionSize;
use crate::partitions::model::{KeyType, Range};
use crate::pg::QualifiedName;

const GIB_F: f64 = GIB;
/// 2025-01-06 (a Monday), days since the epoch.
const T0: f64 = 20094.0;

fn key(days: f64) -> i64 {
    (days * 86_400e6) as i64
}

fn part(lo: f64, hi: f64, bytes: i64) -> PartitionSize {
    PartitionSize {
        name: format!("p{lo}"),
        range: Some(Range {
            lo: key(lo),
            hi: key(hi),
        }),
        bytes,
        estimated: false,
    }
}

fn table(parts: Vec<PartitionSize>) -> PartitionedTable {
    PartitionedTable {
        table: QualifiedName::new("public", "events"),
        key_type: KeyType::Timestamptz,
        partitions: parts,
    }
}

fn input(t: &PartitionedTable, now: f64, free: Option<f64>) -> PartitionedInput<'_> {
    PartitionedInput {
        table: t,
        period_word: "monthly period",
        retention_days: None,
        now_key: key(now),
        now,
        horizon: 90.0,
        free_bytes: free,
    }
}

#[test]
fn closed_periods_give_bytes_per_day() {
    // 30-day periods of 30, 60, 90, 120 MB: 1, 2, 3, 4 MB/day; the open one is ignored.
    let mb = 1 << 20;
    let parts: Vec<_> = (0..5)
        .map(|k| {
            part(
                T0 + 30.0 * k as f64,
                T0 + 30.0 * (k + 1) as f64,
                30 * mb * (k + 1),
            )
        })
        .collect();
    let t = table(parts);
    let (r, chart) = partitioned_table(&input(&t, T0 + 135.0, Some(2e8)));
    assert_eq!(r.observations, 4);
    // Midpoints at 15, 45, 75, 105 → rate 1/30 MB per day per day; at 135: 5 MB/day.
    let rate = r.growth_bytes_per_day.unwrap();
    assert!((rate / mb as f64 - 5.0).abs() < 1e-6, "{rate}");
    assert_eq!(r.state, State::Ok);
    assert!(r.days_until_full.is_some());
    assert_eq!(chart.history.len(), 4);
    assert!(!chart.forecast.is_empty());
}

#[test]
fn too_few_closed_periods_say_how_many_more() {
    let t = table(vec![
        part(T0, T0 + 30.0, 100),
        part(T0 + 30.0, T0 + 60.0, 100),
    ]);
    let (r, _) = partitioned_table(&input(&t, T0 + 45.0, None));
    assert_eq!(r.state, State::NotEnoughHistory);
    assert_eq!(r.growth_bytes_per_day, None);
    assert_eq!(r.days_until_full, None);
    let d = r.detail.unwrap();
    assert!(d.contains("1 closed monthly periods, 2 more needed"), "{d}");
}

#[test]
fn a_partition_dropped_by_hand_and_shrinking_tables_give_no_negative_days() {
    // A gap (dropped by hand) and falling sizes.
    let t = table(vec![
        part(T0, T0 + 30.0, 300),
        part(T0 + 60.0, T0 + 90.0, 200),
        part(T0 + 90.0, T0 + 120.0, 100),
        part(T0 + 120.0, T0 + 150.0, 50),
    ]);
    let (r, _) = partitioned_table(&input(&t, T0 + 151.0, Some(1e9)));
    assert_eq!(r.days_until_full, None);
    assert!(r.projected_bytes.unwrap() >= 0.0);
}

#[test]
fn retention_bounds_the_projection_and_gives_a_steady_state() {
    let parts: Vec<_> = (0..6)
        .map(|k| part(T0 + 30.0 * k as f64, T0 + 30.0 * (k + 1) as f64, 30_000))
        .collect();
    let t = table(parts);
    let mut i = input(&t, T0 + 180.0, None);
    i.retention_days = Some(60.0);
    let (r, _) = partitioned_table(&i);
    // 1000 bytes/day kept for 60 days.
    assert!((r.steady_state_bytes.unwrap() - 60_000.0).abs() < 1.0);
    assert!((r.projected_bytes.unwrap() - 60_000.0).abs() < 1.0, "{r:?}");
}

#[test]
fn storage_without_a_limit_says_so() {
    let (s, _) = storage_local(Some(1e9), None, &[], T0, 90.0);
    assert_eq!(s.state, State::NoLimit);
    assert!(s.detail.unwrap().contains("capacity.storage_limit"));
}

#[test]
fn storage_full_within_two_weeks_is_a_warning() {
    let pts: Vec<Point> = (0..10)
        .map(|d| Point {
            t: T0 + d as f64,
            v: 100.0 * GIB_F + d as f64 * GIB_F,
        })
        .collect();
    let (s, _) = storage_local(
        Some(109.0 * GIB_F),
        Some(119.0 * GIB_F),
        &pts,
        T0 + 9.0,
        90.0,
    );
    assert_eq!(s.state, State::Warning);
    assert!((s.days_until_full.unwrap() - 10.0).abs() < 0.01);
}

#[test]
fn autoscaling_jumps_are_not_shrinkage() {
    // 100 GiB allocated, 1 GiB/day used; at day 5 free is 9 GiB (< 10 %) and
    // the allocation grows by 10 GiB.
    let mut free = Vec::new();
    for d in 0..10 {
        let used = 86.0 + d as f64;
        let alloc = if d >= 5 { 110.0 } else { 100.0 };
        free.push(Point {
            t: T0 + d as f64,
            v: (alloc - used) * GIB_F,
        });
    }
    let used = rds_used_series(&free, 110.0 * GIB_F);
    for (d, p) in used.iter().enumerate() {
        assert!(
            (p.v / GIB_F - (86.0 + d as f64)).abs() < 1e-9,
            "day {d}: {}",
            p.v / GIB_F
        );
    }
}

#[test]
fn rds_dates_step_through_autoscaling_to_the_maximum() {
    let incs: Vec<Increment> = (0..10)
        .map(|d| Increment {
            t0: T0 + d as f64,
            t1: T0 + d as f64 + 1.0,
            amount: 10.0 * GIB_F,
        })
        .collect();
    let m = fit_rate(&incs, T0 + 10.0, 2).unwrap();
    // 500 GiB allocated, 400 used, max 700: 10 % free at 450 → 5 days.
    let (d, full) = rds_dates(
        Some(&m),
        400.0 * GIB_F,
        500.0 * GIB_F,
        Some(700.0 * GIB_F),
        365.0,
    );
    let a = d.days_until_autoscale.unwrap();
    assert!((a - 5.0).abs() < 0.05, "{a}");
    assert!((d.autoscale_step_bytes.unwrap() / GIB_F - 50.0).abs() < 1e-6);
    let max = d.days_until_max_allocated.unwrap();
    let full = full.unwrap();
    assert!(max > a && full > max, "{a} {max} {full}");
    // Full when 700 GiB are used: 30 days.
    assert!((full - 30.0).abs() < 0.1, "{full}");
    // Without autoscaling: full at the allocation, no autoscale date.
    let (d, full) = rds_dates(Some(&m), 400.0 * GIB_F, 500.0 * GIB_F, None, 365.0);
    assert_eq!(d.days_until_autoscale, None);
    assert!((full.unwrap() - 10.0).abs() < 0.1);
}
