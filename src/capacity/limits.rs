//! Verdicts on hard limits: transaction IDs and multixacts, sequences
//! against their columns, connections, partition coverage. Pure.

use chrono::{DateTime, Utc};

use super::evaluate::{key_days, sampled, search_days};
use super::forecast::{daily_peak, fit_level, Point, RateModel};
use super::model::{DatabaseFacts, SequenceFacts, Settings};
use super::report::{ConnectionsReport, CoverageReport, SequenceReport, State, XidReport};
use crate::partitions::model::Range;

/// Wraparound within this many days is a warning.
pub const WRAPAROUND_WARN_DAYS: f64 = 30.0;
/// Sequence exhaustion within this many days is a warning.
pub const SEQUENCE_WARN_DAYS: f64 = 90.0;
/// A sequence this full with no rate yet is a warning all the same.
pub const SEQUENCE_WARN_RATIO: f64 = 0.9;
/// Connections exhausted (daily peak trend) within this many days.
pub const CONNECTIONS_WARN_DAYS: f64 = 14.0;
/// Daily peaks before a connection trend is drawn.
const PEAKS_NEEDED: usize = 3;

/// The age at which the server stops assigning XIDs (or multixacts): the
/// wrap limit is 2^31 − 1 past the oldest; the stop limit 3 million before
/// it since PostgreSQL 14 (1 million XIDs and 100 multixacts before).
pub fn stop_age(server_version_num: i32, multixact: bool) -> i64 {
    let margin = match (server_version_num >= 140_000, multixact) {
        (true, _) => 3_000_000,
        (false, false) => 1_000_000,
        (false, true) => 100,
    };
    i64::from(i32::MAX) - margin
}

/// XIDs and multixacts per database. The rates are the cluster's (the
/// counters are shared); each database's age runs to the limits from its own
/// oldest unfrozen XID, as if vacuum froze nothing meanwhile.
pub fn xid(
    databases: &[DatabaseFacts],
    settings: &Settings,
    xid_points: &[Point],
    mxid_points: &[Point],
    now: f64,
    horizon: f64,
) -> Vec<XidReport> {
    let search = search_days(horizon, WRAPAROUND_WARN_DAYS);
    let xid_model = sampled(xid_points, now).1.ok();
    // The multixact counter is 32-bit and wraps: a fall is not a rate.
    let mxid_model = {
        let (incs, _) = sampled(mxid_points, now);
        let incs: Vec<_> = incs.into_iter().filter(|i| i.amount >= 0.0).collect();
        super::forecast::fit_rate(&incs, now, super::evaluate::SAMPLE_INCREMENTS_NEEDED).ok()
    };
    let xid_stop = stop_age(settings.server_version_num, false) as f64;
    let mxid_stop = stop_age(settings.server_version_num, true) as f64;
    databases
        .iter()
        .map(|d| {
            let until = |m: &Option<RateModel>, age: i64, limit: f64| {
                m.as_ref()
                    .filter(|m| m.rate_now() > 0.0)
                    .and_then(|m| m.days_until(age as f64, limit, search))
            };
            let wrap = until(&xid_model, d.xid_age, xid_stop);
            let mwrap = until(&mxid_model, d.mxid_age, mxid_stop);
            let soonest = [wrap, mwrap].into_iter().flatten().reduce(f64::min);
            let state = match (soonest, &xid_model) {
                (Some(s), _) if s <= WRAPAROUND_WARN_DAYS => State::Warning,
                (_, None) => State::NotEnoughHistory,
                (_, Some(m)) if m.rate_now() <= 0.0 => State::NotGrowing,
                _ => State::Ok,
            };
            XidReport {
                database: d.name.clone(),
                age: d.xid_age,
                mxid_age: d.mxid_age,
                xids_per_day: xid_model.as_ref().map(RateModel::rate_now),
                days_until_freeze_max_age: until(
                    &xid_model,
                    d.xid_age,
                    settings.autovacuum_freeze_max_age as f64,
                ),
                days_until_wraparound: wrap,
                mxids_per_day: mxid_model.as_ref().map(RateModel::rate_now),
                mxid_days_until_wraparound: mwrap,
                state,
            }
        })
        .collect()
}

/// The range of a column type, `None` for types sequences do not feed.
pub fn type_range(type_name: &str) -> Option<(i64, i64)> {
    match type_name {
        "smallint" | "int2" => Some((i64::from(i16::MIN), i64::from(i16::MAX))),
        "integer" | "int4" | "int" => Some((i64::from(i32::MIN), i64::from(i32::MAX))),
        "bigint" | "int8" => Some((i64::MIN, i64::MAX)),
        _ => None,
    }
}

/// How far a sequence has gone: (used, available, limit, limited by the
/// column). Ascending sequences run from `min_value` up to the smaller of
/// their maximum and the column type's; descending ones the other way.
pub fn sequence_usage(s: &SequenceFacts) -> (f64, f64, i64, bool) {
    let col = s.column_type.as_deref().and_then(type_range);
    if s.increment >= 0 {
        let col_max = col.map_or(i64::MAX, |c| c.1);
        let limit = s.max_value.min(col_max);
        let origin = s.min_value;
        let used = s.last_value.map_or(0.0, |v| v as f64 - origin as f64);
        let avail = limit as f64 - origin as f64;
        (used.max(0.0), avail, limit, col_max < s.max_value)
    } else {
        let col_min = col.map_or(i64::MIN, |c| c.0);
        let limit = s.min_value.max(col_min);
        let origin = s.max_value;
        let used = s.last_value.map_or(0.0, |v| origin as f64 - v as f64);
        let avail = origin as f64 - limit as f64;
        (used.max(0.0), avail, limit, col_min > s.min_value)
    }
}

/// The values `s` had consumed at each sample of its value, whichever way
/// it runs: the distance from where it starts (`min_value` going up,
/// `max_value` going down), as [`sequence_usage`] counts `used`.
pub fn sequence_consumed(s: &SequenceFacts, values: &[Point]) -> Vec<Point> {
    values
        .iter()
        .map(|p| Point {
            t: p.t,
            v: if s.increment >= 0 {
                p.v - s.min_value as f64
            } else {
                s.max_value as f64 - p.v
            },
        })
        .collect()
}

pub fn sequence(
    s: &SequenceFacts,
    points: &[Point],
    now: f64,
    horizon: f64,
    user: &str,
) -> SequenceReport {
    let (used, avail, limit, by_column) = sequence_usage(s);
    let mut report = SequenceReport {
        sequence: s.name.clone(),
        column: s.column.clone(),
        last_value: s.last_value,
        used_ratio: None,
        limited_by: if by_column { "column" } else { "sequence" },
        limit,
        per_day: None,
        days_until_exhausted: None,
        state: State::Ok,
        detail: None,
    };
    if !s.readable {
        report.state = State::Unknown;
        report.detail = Some(format!(
            "the steward may not read {}: GRANT SELECT ON SEQUENCE {} TO {}",
            s.name,
            s.name,
            crate::pg::quote_ident(user)
        ));
        return report;
    }
    let ratio = if avail > 0.0 { used / avail } else { 1.0 };
    report.used_ratio = Some((ratio * 1e6).round() / 1e6);
    let consumed = sequence_consumed(s, points);
    let fit = sampled(&consumed, now).1;
    let search = search_days(horizon, SEQUENCE_WARN_DAYS);
    report.per_day = fit.as_ref().ok().map(RateModel::rate_now);
    let cycles_first = s.cycle && !by_column;
    let days = match &fit {
        Ok(m) if m.rate_now() > 0.0 && !cycles_first => m.days_until(used, avail, search),
        _ => None,
    };
    report.days_until_exhausted = days;
    report.state = match (&fit, days) {
        _ if cycles_first => State::Ok,
        (_, Some(d)) if d <= SEQUENCE_WARN_DAYS => State::Warning,
        (Err(_), _) if ratio >= SEQUENCE_WARN_RATIO => State::Warning,
        (Err(_), _) => State::NotEnoughHistory,
        (Ok(m), _) if m.rate_now() <= 0.0 => State::NotGrowing,
        _ => State::Ok,
    };
    report.detail = if cycles_first {
        Some("CYCLE: wraps to its start at its limit rather than failing".into())
    } else if by_column {
        Some(format!(
            "the column's type ({}) is the limit, not the sequence's maximum",
            s.column_type.as_deref().unwrap_or("?")
        ))
    } else {
        None
    };
    report
}

/// Connections against what applications may have, with the daily peak's trend.
pub fn connections(
    settings: &Settings,
    used: i64,
    points: &[Point],
    now: f64,
    horizon: f64,
) -> ConnectionsReport {
    let max = settings.max_connections
        - settings.superuser_reserved_connections
        - settings.reserved_connections;
    let peaks = daily_peak(points);
    let today = peaks
        .last()
        .filter(|p| p.t.floor() == now.floor())
        .map(|p| p.v);
    let fit = fit_level(&peaks, now, PEAKS_NEEDED);
    let search = search_days(horizon, CONNECTIONS_WARN_DAYS);
    let current = today.unwrap_or(used as f64).max(used as f64);
    let days = fit
        .as_ref()
        .ok()
        .and_then(|t| t.days_until(current, max as f64, search));
    let state = match (&fit, days) {
        (_, Some(d)) if d <= CONNECTIONS_WARN_DAYS => State::Warning,
        (Err(_), _) => State::NotEnoughHistory,
        (Ok(t), None) if t.slope <= 0.0 => State::NotGrowing,
        _ => State::Ok,
    };
    ConnectionsReport {
        used,
        max,
        peak_today: today,
        peak_growth_per_day: fit.as_ref().ok().map(|t| t.slope),
        days_until_exhausted: days,
        state,
    }
}

/// Days covered ahead of `now_key` by contiguous partitions, and whether
/// they run out before the next pass can add more.
pub fn coverage(
    table: &str,
    ranges: &[Range],
    now_key: i64,
    now: DateTime<Utc>,
    next_pass: Option<DateTime<Utc>>,
) -> CoverageReport {
    let mut rs: Vec<Range> = ranges.to_vec();
    rs.sort();
    let mut until: Option<i64> = None;
    for r in &rs {
        match until {
            None if r.lo <= now_key && now_key < r.hi => until = Some(r.hi),
            Some(u) if r.lo == u => until = Some(r.hi),
            _ => {}
        }
    }
    let ahead = until.map_or(0.0, |u| (key_days(u) - key_days(now_key)).max(0.0));
    let exhausted = match next_pass {
        Some(next) => {
            let until_days = key_days(now_key) + ahead;
            let next_days = key_days(now_key) + (next - now).num_seconds() as f64 / 86_400.0;
            until.is_none() || until_days <= next_days
        }
        None => until.is_none(),
    };
    CoverageReport {
        table: table.to_string(),
        days_covered_ahead: (ahead * 1000.0).round() / 1000.0,
        next_pass,
        exhausted_before_next_pass: exhausted,
        state: if exhausted { State::Warning } else { State::Ok },
    }
}

#[cfg(test)]
#[path = "limits_tests.rs"]
mod tests;
