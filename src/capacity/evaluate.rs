//! The verdicts on growth and storage: pure functions of observations and
//! sample history, so every rule is tested without servers. (XIDs,
//! sequences, connections and coverage are in `limits`.)

use super::forecast::{
    daily_last, fit_rate, increments_from_samples, Increment, Point, RateModel, Shortfall,
};
use super::model::{PartitionedTable, RdsStorage};
use super::report::{Chart, DatabaseReport, RdsDates, State, StorageReport, TableReport};
use crate::partitions::model::{KEY_MAX, KEY_MIN};

/// Storage full within this many days is a warning (critical within 3).
pub const STORAGE_WARN_DAYS: f64 = 14.0;
pub const STORAGE_CRITICAL_DAYS: f64 = 3.0;
/// RDS `max_allocated_storage` reached within this many days is a warning.
pub const RDS_MAX_ALLOCATED_WARN_DAYS: f64 = 30.0;

/// Closed periods a partitioned table needs before its growth is forecast.
pub const PERIODS_NEEDED: usize = 3;
/// Day-apart sample increments a sampled quantity needs.
pub const SAMPLE_INCREMENTS_NEEDED: usize = 2;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
/// RDS storage autoscaling: the smallest step, the free fraction that
/// triggers it, the pause between two changes, the growth a step covers.
const AUTOSCALE_MIN_STEP: f64 = 10.0 * GIB;
const AUTOSCALE_FREE_FRACTION: f64 = 0.10;
const AUTOSCALE_PAUSE_DAYS: f64 = 6.0 / 24.0;
const AUTOSCALE_GROWTH_DAYS: f64 = 7.0 / 24.0;

/// Key microseconds to days since the epoch.
pub fn key_days(k: i64) -> f64 {
    k as f64 / 86_400e6
}

/// How far ahead to look for a date: the horizon or the warning window,
/// whichever is longer (each resource keeps its own window).
pub fn search_days(horizon: f64, window: f64) -> f64 {
    horizon.max(window)
}

/// A growth forecast from a fitted (or not) model, in report terms.
struct Growth {
    model: Option<RateModel>,
    state: State,
    detail: Option<String>,
}

fn growth(fit: Result<RateModel, Shortfall>, unit: &str) -> Growth {
    match fit {
        Ok(m) if m.rate_now() > 0.0 => Growth {
            model: Some(m),
            state: State::Ok,
            detail: None,
        },
        Ok(m) => Growth {
            model: Some(m),
            state: State::NotGrowing,
            detail: Some("not growing (flat or shrinking): no date".into()),
        },
        Err(s) => Growth {
            model: None,
            state: State::NotEnoughHistory,
            detail: Some(format!(
                "not enough history: {} {unit}, {} more needed",
                s.have,
                s.more()
            )),
        },
    }
}

/// The growth of a managed partitioned table from its closed periods: each
/// is an exact sample of the bytes written in its period.
pub struct PartitionedInput<'a> {
    pub table: &'a PartitionedTable,
    /// Word for one period in messages ("monthly period").
    pub period_word: &'a str,
    /// `retention` in days, when configured.
    pub retention_days: Option<f64>,
    /// The key value of now, in the table's key space.
    pub now_key: i64,
    /// Now, days since the epoch.
    pub now: f64,
    pub horizon: f64,
    /// Free bytes under the storage limit, when known.
    pub free_bytes: Option<f64>,
}

pub fn partitioned_table(input: &PartitionedInput) -> (TableReport, Chart) {
    let t = input.table;
    let bytes: f64 = t.partitions.iter().map(|p| p.bytes as f64).sum();
    let mut closed: Vec<(Increment, f64)> = t
        .partitions
        .iter()
        .filter_map(|p| {
            let r = p.range?;
            (r.lo != KEY_MIN && r.hi != KEY_MAX && r.hi <= input.now_key && r.hi > r.lo).then(
                || {
                    (
                        Increment {
                            t0: key_days(r.lo),
                            t1: key_days(r.hi),
                            amount: p.bytes as f64,
                        },
                        p.bytes as f64,
                    )
                },
            )
        })
        .collect();
    closed.sort_by(|a, b| a.0.t0.total_cmp(&b.0.t0));
    let incs: Vec<Increment> = closed.iter().map(|c| c.0).collect();
    let word = format!("closed {}s", input.period_word);
    let g = growth(fit_rate(&incs, input.now, PERIODS_NEEDED), &word);
    let search = search_days(input.horizon, STORAGE_WARN_DAYS);
    let m = g.model.as_ref();
    let rate = m.map(RateModel::rate_now);
    let days_until_full = match (m, input.free_bytes) {
        (Some(m), Some(free)) if m.rate_now() > 0.0 => m.days_until(0.0, free, search),
        _ => None,
    };
    let (projected, steady) = match m {
        Some(m) => {
            let h = input.horizon;
            match input.retention_days {
                None => (Some(bytes + m.grown(h)), None),
                Some(r) => {
                    // Existing partitions still kept at the horizon, plus
                    // what is written in the last `r` days before it.
                    let cut = input.now + h - r;
                    let kept: f64 = t
                        .partitions
                        .iter()
                        .filter(|p| p.range.map_or(true, |rg| key_days(rg.hi) > cut))
                        .map(|p| p.bytes as f64)
                        .sum();
                    let new = m.grown(h) - m.grown((h - r).max(0.0));
                    let steady = (m.a + m.b * h).max(0.0) * r;
                    (Some(kept + new), Some(steady))
                }
            }
        }
        None => (None, None),
    };
    let report = TableReport {
        table: t.table.to_string(),
        kind: "partitioned",
        bytes,
        growth_bytes_per_day: rate,
        days_until_full,
        confidence: m.map(RateModel::confidence),
        state: g.state,
        projected_bytes: projected,
        steady_state_bytes: steady,
        observations: incs.len(),
        detail: g.detail,
        history: incs.iter().map(Increment::rate).collect(),
    };
    // History as the cumulative size of the closed periods, then the forecast.
    let mut cum = 0.0;
    let history: Vec<(f64, f64)> = incs
        .iter()
        .map(|i| {
            cum += i.amount;
            (i.t1, cum)
        })
        .collect();
    let chart = chart(
        format!("{} (bytes)", t.table),
        history,
        (input.now, bytes),
        m,
        input.free_bytes.map(|f| bytes + f),
        days_until_full,
        input.horizon,
    );
    (report, chart)
}

/// A quantity that grows, from its samples (`(days, value)`): plain tables,
/// databases, storage.
pub fn sampled(points: &[Point], now: f64) -> (Vec<Increment>, Result<RateModel, Shortfall>) {
    let incs = increments_from_samples(&daily_last(points));
    let fit = fit_rate(&incs, now, SAMPLE_INCREMENTS_NEEDED);
    (incs, fit)
}

pub fn plain_table(
    table: &str,
    bytes: f64,
    points: &[Point],
    now: f64,
    horizon: f64,
    free_bytes: Option<f64>,
) -> (TableReport, Chart) {
    let (incs, fit) = sampled(points, now);
    let g = growth(fit, "day-apart sample intervals");
    let m = g.model.as_ref();
    let days_until_full = match (m, free_bytes) {
        (Some(m), Some(free)) if m.rate_now() > 0.0 => {
            m.days_until(0.0, free, search_days(horizon, STORAGE_WARN_DAYS))
        }
        _ => None,
    };
    let report = TableReport {
        table: table.to_string(),
        kind: "plain",
        bytes,
        growth_bytes_per_day: m.map(RateModel::rate_now),
        days_until_full,
        confidence: m.map(RateModel::confidence),
        state: g.state,
        projected_bytes: m.map(|m| bytes + m.grown(horizon)),
        steady_state_bytes: None,
        observations: incs.len(),
        detail: g.detail,
        history: incs.iter().map(Increment::rate).collect(),
    };
    let history = daily_last(points).iter().map(|p| (p.t, p.v)).collect();
    let chart = chart(
        format!("{table} (bytes)"),
        history,
        (now, bytes),
        m,
        free_bytes.map(|f| bytes + f),
        days_until_full,
        horizon,
    );
    (report, chart)
}

pub fn database(name: &str, bytes: Option<f64>, points: &[Point], now: f64) -> DatabaseReport {
    let (_, fit) = sampled(points, now);
    let g = growth(fit, "day-apart sample intervals");
    let m = g.model.as_ref();
    DatabaseReport {
        database: name.to_string(),
        bytes,
        growth_bytes_per_day: m.map(RateModel::rate_now),
        confidence: m.map(RateModel::confidence),
        state: if bytes.is_none() {
            State::Unknown
        } else {
            g.state
        },
    }
}

/// Self-managed storage: everything SQL sees against `capacity.storage_limit`.
pub fn storage_local(
    used: Option<f64>,
    limit: Option<f64>,
    points: &[Point],
    now: f64,
    horizon: f64,
) -> (StorageReport, Chart) {
    let counted = "every database of the cluster (pg_database_size) plus WAL (pg_ls_waldir); \
                   not server logs, temporary files or other files on the volume"
        .to_string();
    let (_, fit) = sampled(points, now);
    let g = growth(fit, "day-apart sample intervals");
    let m = g.model.as_ref();
    let search = search_days(horizon, STORAGE_WARN_DAYS);
    let days = match (m, used, limit) {
        (Some(m), Some(u), Some(l)) => m.days_until(u, l, search),
        _ => None,
    };
    let earliest = match (m, used, limit) {
        (Some(m), Some(u), Some(l)) => m.days_until_upper(u, l, search),
        _ => None,
    };
    let (state, detail) = match (used, limit) {
        (None, _) => (
            State::Unknown,
            Some("a database's size is unreadable: GRANT pg_monitor TO the steward".to_string()),
        ),
        (_, None) => (
            State::NoLimit,
            Some("no storage limit: set capacity.storage_limit to the volume's size".to_string()),
        ),
        _ => match earliest {
            Some(e) if e <= STORAGE_WARN_DAYS => (State::Warning, Some(full_in(days, e))),
            _ => (g.state, g.detail),
        },
    };
    let report = StorageReport {
        source: if limit.is_some() { "config" } else { "none" },
        used_bytes: used,
        limit_bytes: limit,
        days_until_full: days,
        days_until_full_earliest: earliest,
        growth_bytes_per_day: m.map(RateModel::rate_now),
        confidence: m.map(RateModel::confidence),
        state,
        counted,
        detail,
        rds: None,
    };
    let history = daily_last(points).iter().map(|p| (p.t, p.v)).collect();
    let c = chart(
        "storage (bytes)".into(),
        history,
        (now, used.unwrap_or(0.0)),
        m,
        limit,
        days,
        search,
    );
    (report, c)
}

fn full_in(days: Option<f64>, earliest: f64) -> String {
    match days {
        Some(d) => {
            format!("storage full in {d:.1} days (possibly in {earliest:.1}: the 95 % band)")
        }
        None => format!("storage possibly full in {earliest:.1} days (the 95 % band)"),
    }
}

/// Used bytes over time from `FreeStorageSpace` and today's allocation.
/// A rise of free space by at least the smallest autoscaling step, from at
/// most ~10 % free, is an autoscaling event: before it the allocation was
/// smaller by the jump, so used = (allocated − later jumps) − free. Any other
/// rise (a big DELETE and VACUUM FULL) is real shrinkage and kept.
pub fn rds_used_series(free: &[Point], allocated: f64) -> Vec<Point> {
    let mut pts = free.to_vec();
    pts.sort_by(|a, b| a.t.total_cmp(&b.t));
    let mut out = vec![Point { t: 0.0, v: 0.0 }; pts.len()];
    let mut alloc = allocated;
    for i in (0..pts.len()).rev() {
        out[i] = Point {
            t: pts[i].t,
            v: alloc - pts[i].v,
        };
        if i > 0 {
            // The step is at least 10 GiB and 10 % of the allocation before
            // it; the rise in free space is the step less what was written
            // meanwhile, so half a minimum step is enough to recognise one.
            let jump = pts[i].v - pts[i - 1].v;
            let step = jump
                .max(AUTOSCALE_MIN_STEP)
                .max(alloc * AUTOSCALE_FREE_FRACTION / (1.0 + AUTOSCALE_FREE_FRACTION));
            let before = alloc - step;
            if jump >= AUTOSCALE_MIN_STEP * 0.5
                && pts[i - 1].v <= before * AUTOSCALE_FREE_FRACTION * 1.05
            {
                alloc = before;
            }
        }
    }
    out
}

/// Simulates RDS storage autoscaling hour by hour on the forecast: the next
/// step (free ≤ 10 %, at least 6 h after the last change, by max(10 GiB,
/// 10 % of allocated, 7 h of growth), capped at the maximum), the day the
/// maximum is reached, and the day the disk is full. Returns (dates, full).
pub fn rds_dates(
    model: Option<&RateModel>,
    used: f64,
    allocated: f64,
    max_allocated: Option<f64>,
    max_days: f64,
) -> (RdsDates, Option<f64>) {
    let cap = max_allocated.filter(|m| *m > allocated);
    let mut dates = RdsDates {
        allocated_bytes: allocated,
        max_allocated_bytes: max_allocated,
        days_until_autoscale: None,
        autoscale_step_bytes: None,
        days_until_max_allocated: None,
    };
    let mut alloc = allocated;
    let mut used = used;
    let mut last_change = f64::NEG_INFINITY;
    let mut full = None;
    let dt = 1.0 / 24.0;
    let mut t = 0.0;
    loop {
        if let Some(cap) = cap {
            if alloc < cap
                && alloc - used <= AUTOSCALE_FREE_FRACTION * alloc
                && t - last_change >= AUTOSCALE_PAUSE_DAYS
            {
                let seven_hours =
                    model.map_or(0.0, |m| m.rate_at(m.t_ref + t)) * AUTOSCALE_GROWTH_DAYS;
                let step = AUTOSCALE_MIN_STEP
                    .max(0.1 * alloc)
                    .max(seven_hours)
                    .min(cap - alloc);
                if dates.days_until_autoscale.is_none() {
                    dates.days_until_autoscale = Some(t);
                    dates.autoscale_step_bytes = Some(step);
                }
                alloc += step;
                last_change = t;
                if alloc >= cap {
                    dates.days_until_max_allocated = Some(t);
                }
            }
        }
        if used >= alloc {
            full = Some(t);
            break;
        }
        let Some(m) = model else { break };
        if t >= max_days {
            break;
        }
        used += m.rate_at(m.t_ref + t + dt / 2.0) * dt;
        t += dt;
    }
    (dates, full)
}

pub fn storage_rds(rds: &RdsStorage, now: f64, horizon: f64) -> (StorageReport, Chart) {
    let used_series = rds_used_series(&rds.free_history, rds.allocated_bytes);
    let used = used_series.last().map(|p| p.v);
    let (_, fit) = sampled(&used_series, now);
    let g = growth(fit, "days of FreeStorageSpace");
    let m = g.model.as_ref();
    let search = search_days(horizon, RDS_MAX_ALLOCATED_WARN_DAYS);
    let (dates, full) = match used {
        Some(u) => rds_dates(m, u, rds.allocated_bytes, rds.max_allocated_bytes, search),
        None => (
            RdsDates {
                allocated_bytes: rds.allocated_bytes,
                max_allocated_bytes: rds.max_allocated_bytes,
                days_until_autoscale: None,
                autoscale_step_bytes: None,
                days_until_max_allocated: None,
            },
            None,
        ),
    };
    let limit = rds
        .max_allocated_bytes
        .filter(|m| *m > rds.allocated_bytes)
        .unwrap_or(rds.allocated_bytes);
    // Full happens at the final allocation whatever the steps before it.
    let earliest = match (m, used) {
        (Some(m), Some(u)) => m.days_until_upper(u, limit, search),
        _ => None,
    };
    let (state, detail) = if used.is_none() {
        (
            State::Unknown,
            Some(format!(
                "no FreeStorageSpace data points for {} in CloudWatch",
                rds.instance
            )),
        )
    } else if let Some(e) = earliest.filter(|e| *e <= STORAGE_WARN_DAYS) {
        (State::Warning, Some(full_in(full, e)))
    } else if let Some(d) = dates
        .days_until_max_allocated
        .filter(|d| *d <= RDS_MAX_ALLOCATED_WARN_DAYS)
    {
        (
            State::Warning,
            Some(format!(
                "max_allocated_storage reached in {d:.1} days; past it the instance fills up"
            )),
        )
    } else {
        (g.state, g.detail)
    };
    let report = StorageReport {
        source: "rds",
        used_bytes: used,
        limit_bytes: Some(limit),
        days_until_full: full,
        days_until_full_earliest: earliest,
        growth_bytes_per_day: m.map(RateModel::rate_now),
        confidence: m.map(RateModel::confidence),
        state,
        counted: format!(
            "RDS instance {}: AllocatedStorage minus CloudWatch FreeStorageSpace",
            rds.instance
        ),
        detail,
        rds: Some(dates),
    };
    let history = daily_last(&used_series)
        .iter()
        .map(|p| (p.t, p.v))
        .collect();
    let c = chart(
        format!("storage of {} (bytes)", rds.instance),
        history,
        (now, used.unwrap_or(0.0)),
        m,
        Some(limit),
        full,
        search,
    );
    (report, c)
}

/// A chart: history, then the forecast from `(now, current)` with its band
/// over `days` (at least the horizon, and past the crossing when there is one).
pub fn chart(
    title: String,
    history: Vec<(f64, f64)>,
    (now, current): (f64, f64),
    model: Option<&RateModel>,
    limit: Option<f64>,
    days_until: Option<f64>,
    days: f64,
) -> Chart {
    let forecast = match model {
        Some(m) => {
            let span = days.max(days_until.map_or(0.0, |d| d * 1.2));
            let steps = 60;
            (0..=steps)
                .map(|k| {
                    let h = span * k as f64 / steps as f64;
                    let v = current + m.grown(h);
                    let b = m.band(h);
                    (now + h, v, (v - b).max(0.0), v + b)
                })
                .collect()
        }
        None => Vec::new(),
    };
    Chart {
        title,
        unit: "bytes",
        history,
        forecast,
        limit,
        crossing: days_until.map(|d| now + d),
    }
}

#[cfg(test)]
#[path = "evaluate_tests.rs"]
mod tests;
