//! The text report: a few aligned tables a person reads in seconds, with a
//! sparkline of each table's growth history.

use chrono::{DateTime, Utc};

use super::assemble::fmt_days;
use super::report::{CapacityReport, State};
use crate::output::table;

const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
/// Sparkline points shown: the most recent ones.
const SPARK_WIDTH: usize = 24;

/// A sparkline of the last [`SPARK_WIDTH`] values, scaled from 0 (or the
/// lowest value when negative) to the highest.
pub fn sparkline(values: &[f64]) -> String {
    let v = &values[values.len().saturating_sub(SPARK_WIDTH)..];
    if v.is_empty() {
        return "-".into();
    }
    let lo = v.iter().copied().fold(0.0_f64, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    v.iter()
        .map(|x| {
            if hi <= lo {
                BARS[0]
            } else {
                let i = ((x - lo) / (hi - lo) * 7.0).round() as usize;
                BARS[i.min(7)]
            }
        })
        .collect()
}

/// Bytes in 1024-based units, as PostgreSQL's `pg_size_pretty`.
pub fn bytes(b: f64) -> String {
    let units = ["bytes", "kB", "MB", "GB", "TB", "PB"];
    let mut v = b;
    let mut u = 0;
    while v.abs() >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} bytes")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn opt_bytes(b: Option<f64>) -> String {
    b.map_or_else(|| "-".into(), bytes)
}

/// "12.3 days (2027-01-01)", "-" when there is no date.
fn days(d: Option<f64>, now: DateTime<Utc>) -> String {
    match d {
        Some(d) => {
            let at = now + chrono::Duration::seconds((d * 86_400.0) as i64);
            format!("{d:.1}d ({})", at.format("%Y-%m-%d"))
        }
        None => "-".into(),
    }
}

fn state(s: State, detail: Option<&str>) -> String {
    match detail {
        Some(d) if d.starts_with(s.as_str()) => d.to_string(),
        Some(d) if s != State::Ok => format!("{}: {d}", s.as_str()),
        _ => s.as_str().to_string(),
    }
}

pub fn text(r: &CapacityReport) -> String {
    let now = r.checked_at;
    let mut out = format!(
        "capacity at {} (horizon {} days; dates past it are not shown)\n\n",
        now.format("%Y-%m-%d %H:%M UTC"),
        r.horizon_days
    );
    let s = &r.storage;
    out.push_str(&format!(
        "storage ({}): {} used of {}, {}/day (confidence {}), full in {}: {}\n  counted: {}\n",
        s.source,
        opt_bytes(s.used_bytes),
        opt_bytes(s.limit_bytes),
        opt_bytes(s.growth_bytes_per_day),
        s.confidence
            .map_or_else(|| "-".into(), |c| format!("{c:.2}")),
        days(s.days_until_full, now),
        state(s.state, s.detail.as_deref()),
        s.counted
    ));
    if let Some(d) = &s.rds {
        out.push_str(&format!(
            "  rds: allocated {}, max_allocated_storage {}; next autoscaling in {}{}; maximum reached in {}\n",
            bytes(d.allocated_bytes),
            opt_bytes(d.max_allocated_bytes),
            days(d.days_until_autoscale, now),
            d.autoscale_step_bytes
                .map_or_else(String::new, |b| format!(" (+{})", bytes(b))),
            days(d.days_until_max_allocated, now)
        ));
    }
    out.push('\n');
    if !r.tables.is_empty() {
        let rows: Vec<Vec<String>> = r
            .tables
            .iter()
            .map(|t| {
                vec![
                    t.table.clone(),
                    t.kind.to_string(),
                    bytes(t.bytes),
                    opt_bytes(t.growth_bytes_per_day),
                    sparkline(&t.history),
                    opt_bytes(t.projected_bytes),
                    days(t.days_until_full, now),
                    t.confidence
                        .map_or_else(|| "-".into(), |c| format!("{c:.2}")),
                    state(t.state, t.detail.as_deref()),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "TABLE",
                "KIND",
                "SIZE",
                "GROWTH/DAY",
                "HISTORY",
                "AT HORIZON",
                "FILLS DISK ALONE IN",
                "CONF",
                "STATE",
            ],
            &rows,
        ));
        out.push('\n');
    }
    let rows: Vec<Vec<String>> = r
        .xid
        .iter()
        .map(|x| {
            vec![
                x.database.clone(),
                x.age.to_string(),
                x.xids_per_day
                    .map_or_else(|| "-".into(), |v| format!("{v:.0}")),
                days(x.days_until_freeze_max_age, now),
                days(x.days_until_wraparound, now),
                x.mxid_age.to_string(),
                days(x.mxid_days_until_wraparound, now),
                x.state.as_str().to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "DATABASE",
            "XID AGE",
            "XIDS/DAY",
            "FREEZE_MAX_AGE IN",
            "WRAPAROUND IN",
            "MXID AGE",
            "MXID WRAP IN",
            "STATE",
        ],
        &rows,
    ));
    out.push('\n');
    let shown: Vec<_> = r
        .sequences
        .iter()
        .filter(|s| s.state != State::Ok || s.used_ratio.unwrap_or(0.0) >= 0.01)
        .take(20)
        .collect();
    if !shown.is_empty() {
        let rows: Vec<Vec<String>> = shown
            .iter()
            .map(|s| {
                vec![
                    s.sequence.clone(),
                    s.column.clone().unwrap_or_else(|| "-".into()),
                    s.used_ratio
                        .map_or_else(|| "?".into(), |u| format!("{:.1}%", u * 100.0)),
                    format!("{} ({})", s.limit, s.limited_by),
                    s.per_day.map_or_else(|| "-".into(), |v| format!("{v:.0}")),
                    days(s.days_until_exhausted, now),
                    state(s.state, s.detail.as_deref()),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "SEQUENCE",
                "COLUMN",
                "USED",
                "LIMIT",
                "PER DAY",
                "EXHAUSTED IN",
                "STATE",
            ],
            &rows,
        ));
        out.push('\n');
    }
    if !r.partitions.is_empty() {
        let rows: Vec<Vec<String>> = r
            .partitions
            .iter()
            .map(|p| {
                vec![
                    p.table.clone(),
                    format!("{:.1}d", p.days_covered_ahead),
                    p.next_pass
                        .map_or_else(|| "-".into(), |t| t.format("%Y-%m-%d %H:%M").to_string()),
                    p.state.as_str().to_string(),
                ]
            })
            .collect();
        out.push_str(&table(
            &["PARTITIONED TABLE", "COVERED AHEAD", "NEXT PASS", "STATE"],
            &rows,
        ));
        out.push('\n');
    }
    let c = &r.connections;
    out.push_str(&format!(
        "connections: {} of {} (peak today {}, trend {}/day), exhausted in {}: {}\n",
        c.used,
        c.max,
        c.peak_today
            .map_or_else(|| "-".into(), |p| format!("{p:.0}")),
        c.peak_growth_per_day
            .map_or_else(|| "-".into(), |g| format!("{g:+.2}")),
        fmt_days(c.days_until_exhausted),
        c.state.as_str()
    ));
    for p in &r.problems {
        out.push_str(&format!("PROBLEM: {p}\n"));
    }
    for n in &r.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out.push_str(if r.healthy {
        "nothing runs out within its warning window\n"
    } else {
        "PROBLEM\n"
    });
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn sparkline_scales_to_its_highest() {
        assert_eq!(super::sparkline(&[0.0, 1.0, 2.0, 7.0]), "▁▂▃█");
        assert_eq!(super::sparkline(&[]), "-");
        assert_eq!(super::sparkline(&[5.0, 5.0]), "██");
    }

    #[test]
    fn bytes_are_1024_based() {
        assert_eq!(super::bytes(512.0), "512 bytes");
        assert_eq!(super::bytes(1536.0 * 1024.0 * 1024.0), "1.5 GB");
    }
}
