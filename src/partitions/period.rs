//! The grid of periods in a table's zone, partition names, and key values as
//! SQL literals. Pure: unit-tested without a server.

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

use super::model::{Key, KeyType, Range, KEY_MAX, KEY_MIN};
use crate::config::Interval;
use crate::pg::quote_literal;

/// PostgreSQL's NAMEDATALEN - 1: longer identifiers are silently truncated by
/// the server, which would make two of our names collide.
pub const MAX_IDENT_BYTES: usize = 63;

// The grid of periods

/// The first day of the period containing `d`.
pub fn period_start(interval: Interval, d: NaiveDate) -> NaiveDate {
    let ymd = |y, m, dd| NaiveDate::from_ymd_opt(y, m, dd).unwrap_or(d);
    match interval {
        Interval::Daily => d,
        Interval::Weekly => d - Days::new(u64::from(d.weekday().num_days_from_monday())),
        Interval::Monthly => ymd(d.year(), d.month(), 1),
        Interval::Quarterly => ymd(d.year(), (d.month() - 1) / 3 * 3 + 1, 1),
        Interval::Yearly => ymd(d.year(), 1, 1),
    }
}

/// The first day of the period after the one starting at `start`.
pub fn next_period(interval: Interval, start: NaiveDate) -> NaiveDate {
    match interval {
        Interval::Daily => start + Days::new(1),
        Interval::Weekly => start + Days::new(7),
        Interval::Monthly => start + Months::new(1),
        Interval::Quarterly => start + Months::new(3),
        Interval::Yearly => start + Months::new(12),
    }
}

/// The name suffix of a period: `_2025_01`, `_2025_01_31`, `_2025w05` (ISO
/// week and ISO year), `_2025q1`, `_2025`.
pub fn suffix(interval: Interval, start: NaiveDate) -> String {
    match interval {
        Interval::Daily => start.format("_%Y_%m_%d").to_string(),
        Interval::Weekly => {
            let w = start.iso_week();
            format!("_{:04}w{:02}", w.year(), w.week())
        }
        Interval::Monthly => start.format("_%Y_%m").to_string(),
        Interval::Quarterly => format!("_{:04}q{}", start.year(), (start.month() - 1) / 3 + 1),
        Interval::Yearly => format!("_{:04}", start.year()),
    }
}

/// A human label for a period (its first day), used in reports.
pub(crate) fn period_label(interval: Interval, start: NaiveDate) -> String {
    suffix(interval, start).trim_start_matches('_').to_string()
}

/// `parent` + `suffix`, at most 63 bytes. Names that would be longer keep a
/// prefix of the parent plus a hash of the whole parent name, so two long
/// parents sharing a prefix still get distinct partition names, and the
/// suffix (the period) is never cut.
pub fn partition_name(parent: &str, suffix: &str) -> String {
    if parent.len() + suffix.len() <= MAX_IDENT_BYTES {
        return format!("{parent}{suffix}");
    }
    let hash = format!("_{:08x}", crate::pg::fnv1a_64(parent) as u32);
    let mut keep = MAX_IDENT_BYTES.saturating_sub(suffix.len() + hash.len());
    while keep > 0 && !parent.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}{hash}{suffix}", &parent[..keep])
}

/// The key value at which the local day `d` starts. For `timestamptz` keys
/// that is local midnight in `tz`, or the first instant after a DST gap that
/// swallows midnight; for zone-less keys the wall-clock midnight itself.
pub fn day_start_key(key_type: KeyType, tz: Tz, d: NaiveDate) -> Key {
    let midnight = d.and_hms_opt(0, 0, 0).unwrap_or_default();
    match key_type {
        KeyType::Timestamp | KeyType::Date => midnight.and_utc().timestamp_micros(),
        KeyType::Timestamptz => local_to_utc(tz, midnight).timestamp_micros(),
    }
}

/// `local` in `tz` as an instant: the earlier one when ambiguous (a repeated
/// hour), the first valid one after a gap (a skipped hour).
pub(crate) fn local_to_utc(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    // DST gaps are at most a few hours; step in 15-minute increments.
    for step in 0..=4 * 24 {
        let t = local + chrono::Duration::minutes(15 * step);
        if let Some(dt) = tz.from_local_datetime(&t).earliest() {
            if step == 0 {
                return dt.with_timezone(&Utc);
            }
            // The first instant after the gap: the gap ends on a whole
            // quarter hour in every zone's rules, so search back minute by minute.
            let mut best = dt;
            for m in 1..15 {
                let back = t - chrono::Duration::minutes(m);
                match tz.from_local_datetime(&back).earliest() {
                    Some(b) => best = b,
                    None => break,
                }
            }
            return best.with_timezone(&Utc);
        }
    }
    local.and_utc()
}

/// The local day a key value falls on (in `tz` for `timestamptz` keys).
pub fn key_day(key_type: KeyType, tz: Tz, k: Key) -> NaiveDate {
    let utc = DateTime::<Utc>::from_timestamp_micros(k).unwrap_or_default();
    match key_type {
        KeyType::Timestamptz => utc.with_timezone(&tz).date_naive(),
        KeyType::Timestamp | KeyType::Date => utc.date_naive(),
    }
}

/// The key range of the period starting on `start`.
pub fn period_range(interval: Interval, key_type: KeyType, tz: Tz, start: NaiveDate) -> Range {
    Range {
        lo: day_start_key(key_type, tz, start),
        hi: day_start_key(key_type, tz, next_period(interval, start)),
    }
}

/// "Now" as a key value: the instant for `timestamptz`, the wall clock in
/// the table's zone for `timestamp`/`date` keys (what `now()::timestamp`
/// writes).
pub fn now_key(key_type: KeyType, tz: Tz, now: DateTime<Utc>) -> Key {
    match key_type {
        KeyType::Timestamptz => now.timestamp_micros(),
        KeyType::Timestamp | KeyType::Date => now
            .with_timezone(&tz)
            .naive_local()
            .and_utc()
            .timestamp_micros(),
    }
}

/// Retention cut-off: `now - span` in the table's zone, as a key value.
pub fn retention_cutoff(
    key_type: KeyType,
    tz: Tz,
    now: DateTime<Utc>,
    span: crate::config::CalendarSpan,
) -> Key {
    let local = now.with_timezone(&tz).naive_local();
    let back = local
        .checked_sub_months(Months::new(span.months))
        .and_then(|t| t.checked_sub_days(Days::new(u64::from(span.days))))
        .unwrap_or(NaiveDateTime::MIN);
    match key_type {
        KeyType::Timestamptz => local_to_utc(tz, back).timestamp_micros(),
        KeyType::Timestamp | KeyType::Date => back.and_utc().timestamp_micros(),
    }
}

/// A key value as SQL: a typed literal, shown in the table's zone with its
/// offset so the value never depends on the session's `TimeZone`.
pub fn key_literal(key_type: KeyType, tz: Tz, k: Key) -> String {
    match k {
        KEY_MIN => return "MINVALUE".into(),
        KEY_MAX => return "MAXVALUE".into(),
        _ => {}
    }
    let utc = DateTime::<Utc>::from_timestamp_micros(k).unwrap_or_default();
    let text = match key_type {
        KeyType::Timestamptz => utc
            .with_timezone(&tz)
            .format("%Y-%m-%d %H:%M:%S%:z")
            .to_string(),
        KeyType::Timestamp => utc.naive_utc().format("%Y-%m-%d %H:%M:%S").to_string(),
        KeyType::Date => utc.date_naive().format("%Y-%m-%d").to_string(),
    };
    format!("{}::{}", quote_literal(&text), key_type.sql_type())
}

/// A key value for people: the literal's text without quotes and cast.
pub fn key_text(key_type: KeyType, tz: Tz, k: Key) -> String {
    match k {
        KEY_MIN => "MINVALUE".into(),
        KEY_MAX => "MAXVALUE".into(),
        _ => {
            let lit = key_literal(key_type, tz, k);
            lit.split("'").nth(1).unwrap_or_default().to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_fixtures::*;
    use super::*;

    #[test]
    fn names_for_every_interval() {
        // Each suffix names the period the day falls in.
        for (interval, day, suffix_is) in [
            (Interval::Monthly, d(2025, 1, 1), "_2025_01"),
            (Interval::Daily, d(2025, 1, 31), "_2025_01_31"),
            (Interval::Weekly, d(2025, 1, 29), "_2025w05"),
            (Interval::Weekly, d(2024, 12, 30), "_2025w01"),
            (Interval::Quarterly, d(2025, 8, 15), "_2025q3"),
            (Interval::Yearly, d(2025, 1, 1), "_2025"),
        ] {
            let start = period_start(interval, day);
            assert_eq!(suffix(interval, start), suffix_is, "{interval:?} {day}");
        }
        // ISO week 1 of 2025 starts on Monday 2024-12-30.
        assert_eq!(
            period_start(Interval::Weekly, d(2025, 1, 1)),
            d(2024, 12, 30)
        );
        assert_eq!(partition_name("audit_log", "_2025_01"), "audit_log_2025_01");
    }

    #[test]
    fn long_names_are_shortened_without_collisions() {
        let a = "a".repeat(60) + "_one";
        let b = "a".repeat(60) + "_two";
        let na = partition_name(&a, "_2025_01_31");
        let nb = partition_name(&b, "_2025_01_31");
        assert!(na.len() <= 63 && nb.len() <= 63, "{na} {nb}");
        assert_ne!(na, nb);
        assert!(na.ends_with("_2025_01_31"));
        assert_eq!(na, partition_name(&a, "_2025_01_31"), "stable");
        // Multi-byte characters are never cut in half.
        let wide = "ü".repeat(31);
        let n = partition_name(&wide, "_2025_01");
        assert!(n.len() <= 63 && n.ends_with("_2025_01"), "{n}");
        // Exactly 63 bytes stays as is.
        let exact = "x".repeat(55);
        assert_eq!(partition_name(&exact, "_2025_01").len(), 63);
        assert_eq!(
            partition_name(&exact, "_2025_01"),
            format!("{exact}_2025_01")
        );
    }

    #[test]
    fn bounds_are_in_the_tables_zone_across_dst() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let r = period_range(
            Interval::Monthly,
            KeyType::Timestamptz,
            berlin,
            d(2025, 3, 1),
        );
        // March starts in CET (+01), April in CEST (+02): 743 hours, not 744.
        assert_eq!(r.lo, utc(2025, 2, 28, 23).timestamp_micros());
        assert_eq!(r.hi, utc(2025, 3, 31, 22).timestamp_micros());
        assert_eq!(
            key_literal(KeyType::Timestamptz, berlin, r.hi),
            "'2025-04-01 00:00:00+02:00'::timestamp with time zone"
        );
        // Sao Paulo 2018-11-04: clocks jumped from 00:00 to 01:00, so the day starts at 01:00 -02.
        let sp: Tz = "America/Sao_Paulo".parse().unwrap();
        let k = day_start_key(KeyType::Timestamptz, sp, d(2018, 11, 4));
        assert_eq!(k, utc(2018, 11, 4, 3).timestamp_micros());
        let daily = period_range(Interval::Daily, KeyType::Timestamptz, sp, d(2018, 11, 3));
        assert_eq!(
            daily.hi, k,
            "the day before ends where the short day starts"
        );
        // Zone-less keys ignore the zone for bounds.
        let r = period_range(Interval::Monthly, KeyType::Timestamp, berlin, d(2025, 3, 1));
        assert_eq!(
            key_literal(KeyType::Timestamp, berlin, r.lo),
            "'2025-03-01 00:00:00'::timestamp without time zone"
        );
    }
}
