use super::*;

const T0: f64 = 20094.0;

fn seq(last: Option<i64>, max: i64, column_type: Option<&str>) -> SequenceFacts {
    SequenceFacts {
        name: "public.orders_id_seq".into(),
        min_value: 1,
        max_value: max,
        increment: 1,
        cycle: false,
        last_value: last,
        readable: true,
        column: column_type.map(|_| "public.orders.id".into()),
        column_type: column_type.map(str::to_string),
    }
}

#[test]
fn an_int4_column_fed_by_a_bigint_sequence_is_limited_by_the_column() {
    let last = (0.8 * f64::from(i32::MAX)) as i64;
    let s = seq(Some(last), i64::MAX, Some("integer"));
    let (used, avail, limit, by_column) = sequence_usage(&s);
    assert!(by_column);
    assert_eq!(limit, i64::from(i32::MAX));
    assert!((used / avail - 0.8).abs() < 1e-6);
    // The sequence's own measure would say ~0 %: pgwatch's blind spot.
    assert!(last as f64 / i64::MAX as f64 <= 1e-9);
    // 10 million a day: the rest (about 429 million) in about 43 days.
    let pts: Vec<Point> = (0..5)
        .map(|d| Point {
            t: T0 + d as f64,
            v: (last - (4 - d) * 10_000_000) as f64,
        })
        .collect();
    let r = sequence(&s, &pts, T0 + 4.0, 90.0, "steward");
    assert_eq!(r.state, State::Warning);
    assert_eq!(r.limited_by, "column");
    let days = r.days_until_exhausted.unwrap();
    assert!((days - 42.9).abs() < 0.5, "{days}");
}

#[test]
fn an_unreadable_sequence_names_the_grant() {
    let mut s = seq(None, i64::MAX, None);
    s.readable = false;
    let r = sequence(&s, &[], T0, 90.0, "steward");
    assert_eq!(r.state, State::Unknown);
    let d = r.detail.unwrap();
    assert!(
        d.contains("GRANT SELECT ON SEQUENCE public.orders_id_seq TO \"steward\""),
        "{d}"
    );
}

#[test]
fn descending_and_cycling_sequences() {
    let mut s = seq(Some(-100), -1, Some("smallint"));
    s.increment = -1;
    s.min_value = i64::MIN;
    let (used, avail, limit, by_column) = sequence_usage(&s);
    assert!(by_column);
    assert_eq!(limit, i64::from(i16::MIN));
    assert_eq!(used, 99.0);
    assert_eq!(avail, 32767.0);
    let mut c = seq(Some(90), 100, Some("bigint"));
    c.cycle = true;
    let pts: Vec<Point> = (0..5)
        .map(|d| Point {
            t: T0 + d as f64,
            v: 50.0 + 10.0 * d as f64,
        })
        .collect();
    let r = sequence(&c, &pts, T0 + 4.0, 90.0, "steward");
    assert_eq!(r.days_until_exhausted, None);
    assert_eq!(r.state, State::Ok);
}

#[test]
fn xid_wraparound_from_the_consumption_rate() {
    let settings = Settings {
        server_version_num: 150_000,
        autovacuum_freeze_max_age: 200_000_000,
        ..Settings::default()
    };
    let db = DatabaseFacts {
        name: "app".into(),
        bytes: Some(1),
        xid_age: 2_000_000_000,
        mxid_age: 10,
    };
    // 10 million XIDs a day.
    let pts: Vec<Point> = (0..4)
        .map(|d| Point {
            t: T0 + d as f64,
            v: 1e9 + 1e7 * d as f64,
        })
        .collect();
    let r = &xid(
        std::slice::from_ref(&db),
        &settings,
        &pts,
        &[],
        T0 + 3.0,
        90.0,
    )[0];
    let stop = stop_age(150_000, false) as f64;
    let want = (stop - 2e9) / 1e7;
    assert!((r.days_until_wraparound.unwrap() - want).abs() < 0.01);
    assert_eq!(r.state, State::Warning);
    assert_eq!(r.days_until_freeze_max_age, Some(0.0));
    // No history: no date, no warning.
    let r = &xid(&[db], &settings, &[], &[], T0, 90.0)[0];
    assert_eq!(r.state, State::NotEnoughHistory);
    assert_eq!(r.days_until_wraparound, None);
}

#[test]
fn stop_limits_follow_the_server_version() {
    assert_eq!(stop_age(140_000, false), 2_147_483_647 - 3_000_000);
    assert_eq!(stop_age(130_000, false), 2_147_483_647 - 1_000_000);
    assert_eq!(stop_age(130_000, true), 2_147_483_647 - 100);
}

#[test]
fn connections_trend_of_daily_peaks() {
    let settings = Settings {
        max_connections: 100,
        superuser_reserved_connections: 3,
        reserved_connections: 2,
        ..Settings::default()
    };
    let pts: Vec<Point> = (0..10)
        .flat_map(|d| {
            [0.1, 0.6].map(|f| Point {
                t: T0 + d as f64 + f,
                v: if f > 0.5 { 50.0 + 4.0 * d as f64 } else { 10.0 },
            })
        })
        .collect();
    let r = connections(&settings, 60, &pts, T0 + 9.7, 90.0);
    assert_eq!(r.max, 95);
    assert_eq!(r.peak_today, Some(86.0));
    assert!((r.peak_growth_per_day.unwrap() - 4.0).abs() < 1e-9);
    // The trend stands at 86.8 now (t_ref is past today's noon): 95 at 4 a day.
    let d = r.days_until_exhausted.unwrap();
    assert!((d - 2.05).abs() < 0.01, "{d}");
    assert_eq!(r.state, State::Warning);
}

#[test]
fn coverage_counts_contiguous_partitions_ahead() {
    let day = 86_400_000_000_i64;
    let now_key = 100 * day + day / 2;
    let now = DateTime::from_timestamp_micros(now_key).unwrap();
    let ranges = [
        Range {
            lo: 100 * day,
            hi: 101 * day,
        },
        Range {
            lo: 101 * day,
            hi: 102 * day,
        },
        // A hole, then more: not covered contiguously.
        Range {
            lo: 103 * day,
            hi: 104 * day,
        },
    ];
    let r = coverage(
        "t",
        &ranges,
        now_key,
        now,
        Some(now + chrono::Duration::hours(1)),
    );
    assert!((r.days_covered_ahead - 1.5).abs() < 1e-9);
    assert!(!r.exhausted_before_next_pass);
    let r = coverage(
        "t",
        &ranges,
        now_key,
        now,
        Some(now + chrono::Duration::days(2)),
    );
    assert!(r.exhausted_before_next_pass);
    assert_eq!(r.state, State::Warning);
    let r = coverage("t", &ranges, 102 * day + 5, now, None);
    assert_eq!(r.days_covered_ahead, 0.0);
}
