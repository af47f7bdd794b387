//! Planner tests: every rule of the plan, without a server.

use super::*;
use crate::config::CalendarSpan;
use crate::partitions::test_fixtures::*;
use chrono_tz::Tz;

/// An existing monthly partition `name` of the month starting `start`.
fn monthly(name: impl Into<String>, kt: KeyType, tz: Tz, start: NaiveDate) -> ExistingPartition {
    ExistingPartition {
        name: QualifiedName::new("public", name),
        range: Some(period_range(Interval::Monthly, kt, tz, start)),
        detach_pending: false,
        fk_referenced: false,
    }
}

/// A monthly date-keyed table whose partition `audit_log_2025_05` holds
/// the month starting `start` (which may not be May 2025).
fn with_audit_log_2025_05(start: NaiveDate) -> (TableConfig, TableState) {
    let mut s = state(KeyType::Date);
    s.partitions
        .push(monthly("audit_log_2025_05", KeyType::Date, Tz::UTC, start));
    (cfg(Interval::Monthly, 0), s)
}

#[test]
fn now_is_read_in_the_tables_zone() {
    // 23:30 UTC on Jan 31 is already February in Berlin.
    let mut c = cfg(Interval::Monthly, 0);
    c.timezone = "Europe/Berlin".parse().unwrap();
    let p = plan(&c, &state(KeyType::Timestamptz), utc(2025, 1, 31, 23));
    assert_eq!(created(&p), vec!["audit_log_2025_02"]);
}

#[test]
fn first_pass_creates_current_and_premake_then_nothing() {
    for (interval, expected) in [
        (
            Interval::Monthly,
            vec![
                "audit_log_2025_05",
                "audit_log_2025_06",
                "audit_log_2025_07",
            ],
        ),
        (
            Interval::Daily,
            vec![
                "audit_log_2025_05_14",
                "audit_log_2025_05_15",
                "audit_log_2025_05_16",
            ],
        ),
        (
            Interval::Weekly,
            vec![
                "audit_log_2025w20",
                "audit_log_2025w21",
                "audit_log_2025w22",
            ],
        ),
        (
            Interval::Quarterly,
            vec!["audit_log_2025q2", "audit_log_2025q3", "audit_log_2025q4"],
        ),
        (
            Interval::Yearly,
            vec!["audit_log_2025", "audit_log_2026", "audit_log_2027"],
        ),
    ] {
        let c = cfg(interval, 2);
        let s = state(KeyType::Date);
        let now = utc(2025, 5, 14, 12);
        let p = plan(&c, &s, now);
        assert_eq!(created(&p), expected, "{interval:?}");
        assert!(matches!(
            p.actions[0],
            Action::Create {
                reason: CreateReason::Current,
                ..
            }
        ));
        let again = plan(&c, &applied(s, &p), now);
        assert!(
            again.actions.is_empty(),
            "{interval:?}: {:?}",
            again.actions
        );
        assert!(again.notes.is_empty());
    }
}

#[test]
fn gaps_after_downtime_are_filled_and_on_grid_partitions_adopted() {
    let c = cfg(Interval::Monthly, 1);
    let mut s = state(KeyType::Timestamptz);
    let tz = Tz::UTC;
    // An on-grid partition with a foreign name is adopted as January.
    s.partitions.push(monthly(
        "legacy_jan",
        KeyType::Timestamptz,
        tz,
        d(2025, 1, 1),
    ));
    let p = plan(&c, &s, utc(2025, 4, 10, 0));
    assert_eq!(
        created(&p),
        vec![
            "audit_log_2025_04",
            "audit_log_2025_02",
            "audit_log_2025_03",
            "audit_log_2025_05"
        ]
    );
    assert!(p
        .actions
        .iter()
        .any(|a| matches!(a, Action::Create { reason: CreateReason::Gap, period, .. } if period == "2025_02")));
    assert!(plan(&c, &applied(s, &p), utc(2025, 4, 10, 0))
        .actions
        .is_empty());
}

#[test]
fn off_grid_partitions_are_left_alone_and_the_holes_beside_them_filled() {
    let c = cfg(Interval::Monthly, 2);
    let mut s = state(KeyType::Date);
    let tz = Tz::UTC;
    let day = |m, dd| day_start_key(KeyType::Date, tz, d(2025, m, dd));
    // May 15 .. June 15: off the monthly grid, half of May (the current
    // period) and half of June.
    s.partitions.push(ExistingPartition {
        name: QualifiedName::new("public", "odd"),
        range: Some(Range {
            lo: day(5, 15),
            hi: day(6, 15),
        }),
        detach_pending: false,
        fk_referenced: false,
    });
    let now = utc(2025, 5, 20, 0);
    let before = coverage_of(&c, &s, &[], now);
    assert!(!before.current_covered);
    assert_eq!(
        before.holes,
        vec![
            "2025-05-01 .. 2025-05-15",
            "2025-06-15 .. 2025-07-01",
            "2025-07-01 .. 2025-08-01"
        ]
    );
    let p = plan(&c, &s, now);
    assert_eq!(
        created(&p),
        vec![
            "audit_log_2025_05_fill1",
            "audit_log_2025_06_fill1",
            "audit_log_2025_07"
        ]
    );
    let ranges: Vec<Range> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Create { range, .. } => Some(*range),
            _ => None,
        })
        .collect();
    assert_eq!(
        ranges[0],
        Range {
            lo: day(5, 1),
            hi: day(5, 15)
        }
    );
    assert_eq!(
        ranges[1],
        Range {
            lo: day(6, 15),
            hi: day(7, 1)
        }
    );
    let kinds: Vec<NoteKind> = p.notes.iter().map(|n| n.kind).collect();
    assert_eq!(
        kinds,
        vec![NoteKind::OffGrid, NoteKind::Overlap, NoteKind::Overlap]
    );
    assert!(!p.actions.iter().any(|a| matches!(a, Action::Retire { .. })));
    let s = applied(s, &p);
    let again = plan(&c, &s, now);
    assert!(again.actions.is_empty(), "{:?}", again.actions);
    // odd is off the grid: still reported, still untouched; the fills are ours.
    assert_eq!(again.notes.len(), 1, "{:?}", again.notes);
    let after = coverage_of(&c, &s, &[], now);
    assert!(after.current_covered && after.holes.is_empty(), "{after:?}");
}

#[test]
fn uncovered_pieces() {
    let r = |lo, hi| Range { lo, hi };
    assert_eq!(uncovered(r(0, 10), &[]), vec![r(0, 10)]);
    assert_eq!(uncovered(r(0, 10), &[r(-5, 20)]), vec![]);
    assert_eq!(
        uncovered(r(0, 10), &[r(2, 4), r(3, 5), r(8, 12)]),
        vec![r(0, 2), r(5, 8)]
    );
    assert_eq!(uncovered(r(0, 10), &[r(10, 20), r(-3, 0)]), vec![r(0, 10)]);
}

#[test]
fn name_taken_by_another_partition_is_reported() {
    let (c, s) = with_audit_log_2025_05(d(2024, 5, 1));
    let p = plan(&c, &s, utc(2025, 5, 20, 0));
    // 2024-05 is adopted; the gap months are created; May 2025 cannot be.
    assert!(!created(&p).contains(&"audit_log_2025_05".to_string()));
    assert!(p.notes.iter().any(|n| n.kind == NoteKind::NameTaken));
}

#[test]
fn retention_cutoffs() {
    let mut c = cfg(Interval::Monthly, 1);
    c.retention = Some(CalendarSpan { months: 3, days: 0 });
    c.retention_mode = RetentionMode::Drop;
    let mut s = state(KeyType::Timestamptz);
    for (i, m) in [1u32, 2, 3, 4, 5].iter().enumerate() {
        s.partitions.push(ExistingPartition {
            fk_referenced: i == 0,
            ..monthly(
                format!("p{m}"),
                KeyType::Timestamptz,
                Tz::UTC,
                d(2025, *m, 1),
            )
        });
    }
    // Now 2025-05-10: cut-off 2025-02-10; Jan ends before it, Feb does not.
    let p = plan(&c, &s, utc(2025, 5, 10, 0));
    let retired: Vec<_> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Retire {
                partition,
                how,
                drop,
                ..
            } => Some((partition.name.clone(), *how, *drop)),
            _ => None,
        })
        .collect();
    assert!(retired.is_empty(), "Jan is FK-referenced: {retired:?}");
    assert_eq!(p.notes[0].kind, NoteKind::FkReferenced);
    // A month later Feb is past the cut-off too, and there is no DEFAULT.
    let p = plan(&c, &s, utc(2025, 6, 10, 0));
    assert!(p.actions.contains(&Action::Retire {
        partition: QualifiedName::new("public", "p2"),
        how: DetachHow::Concurrently,
        drop: true,
        archive: false,
        reason: "whole range ends before the retention cut-off 2025-03-10 00:00:00+00:00".into(),
    }));
    // Archive mode: detach, archive, then drop (never `drop` alone).
    let mut a = c.clone();
    a.retention_mode = RetentionMode::Archive;
    let p = plan(&a, &s, utc(2025, 6, 10, 0));
    assert!(p.actions.iter().any(|x| matches!(
        x,
        Action::Retire {
            archive: true,
            drop: false,
            ..
        }
    )));
    // With a DEFAULT partition CONCURRENTLY is not allowed.
    s.default = Some(DefaultPartition {
        name: QualifiedName::new("public", "audit_log_default"),
        rows_estimate: 0,
        pgsteward_checks: vec![],
    });
    let p = plan(&c, &s, utc(2025, 6, 10, 0));
    assert!(p.actions.iter().any(|a| matches!(
        a,
        Action::Retire {
            how: DetachHow::Plain,
            ..
        }
    )));
    // A pending detach is finalized whatever its age.
    s.partitions[4].detach_pending = true;
    let p = plan(&c, &s, utc(2025, 6, 10, 0));
    assert!(p.actions.iter().any(|a| matches!(a, Action::Retire { how: DetachHow::Finalize, drop: false, partition, .. } if partition.name == "p5")));
    // Gaps are never filled below the cut-off.
    let s1 = applied(s, &p);
    let p = plan(&c, &s1, utc(2025, 6, 10, 0));
    assert!(!created(&p)
        .iter()
        .any(|n| n.contains("2025_01") || n.contains("2025_02")));
    let s2 = applied(s1, &p);
    assert!(plan(&c, &s2, utc(2025, 6, 10, 0)).actions.is_empty());
}

#[test]
fn stale_default_checks_are_dropped() {
    let (c, mut s) = with_audit_log_2025_05(d(2025, 5, 1));
    s.default = Some(DefaultPartition {
        name: QualifiedName::new("public", "audit_log_default"),
        rows_estimate: 0,
        pgsteward_checks: vec!["pgsteward_excl_1234abcd".into()],
    });
    let p = plan(&c, &s, utc(2025, 5, 20, 0));
    assert_eq!(
        p.actions,
        vec![Action::DropDefaultCheck {
            constraint: "pgsteward_excl_1234abcd".into()
        }]
    );
}
