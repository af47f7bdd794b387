//! One report from one observation, the sample history and (on RDS) the
//! storage facts: pure, so the whole report is tested on made-up inputs.

use chrono::{DateTime, Utc};

use super::evaluate::{self, PartitionedInput};
use super::forecast::DAY_SECONDS;
use super::limits;
use super::model::{Observation, RdsStorage};
use super::report::{CapacityReport, Chart, OldTableReport, State};
use super::samples::{self, History};
use crate::config::{Cluster, Interval, TableConfig};
use crate::partitions::period::now_key;

pub struct Inputs<'a> {
    pub cfg: &'a Cluster,
    pub obs: &'a Observation,
    pub history: &'a History,
    /// `None` off RDS; the error when the API could not be read.
    pub rds: Option<Result<RdsStorage, super::CapacityError>>,
    pub now: DateTime<Utc>,
    pub horizon_days: f64,
    /// The steward's role, for GRANT hints.
    pub user: &'a str,
    pub samples_recorded: bool,
    /// Problems found before assembly (schema, recording).
    pub problems: Vec<String>,
}

pub fn period_word(i: Interval) -> &'static str {
    match i {
        Interval::Daily => "daily period",
        Interval::Weekly => "weekly period",
        Interval::Monthly => "monthly period",
        Interval::Quarterly => "quarterly period",
        Interval::Yearly => "yearly period",
    }
}

/// Days in one period, roughly (months of 30.44 days).
pub fn period_days(i: Interval) -> f64 {
    match i {
        Interval::Daily => 1.0,
        Interval::Weekly => 7.0,
        Interval::Monthly => 30.44,
        Interval::Quarterly => 91.31,
        Interval::Yearly => 365.25,
    }
}

fn table_cfg<'a>(cfg: &'a Cluster, table: &crate::pg::QualifiedName) -> Option<&'a TableConfig> {
    cfg.partitions.tables.iter().find(|t| &t.table == table)
}

pub fn assemble(i: Inputs) -> (CapacityReport, Vec<Chart>) {
    let obs = i.obs;
    let h = i.history;
    let now = i.now.timestamp_micros() as f64 / 1e6 / DAY_SECONDS;
    let horizon = i.horizon_days;
    let mut charts = Vec::new();
    let mut problems = i.problems;
    let mut notes = Vec::new();

    let (storage, chart) = match &i.rds {
        Some(Ok(rds)) => evaluate::storage_rds(rds, now, horizon),
        Some(Err(e)) => {
            let (mut s, c) = evaluate::storage_local(None, None, &[], now, horizon);
            s.source = "rds";
            s.state = State::Unknown;
            s.detail = Some(format!("RDS storage unreadable: {e}"));
            s.counted = "RDS AllocatedStorage minus CloudWatch FreeStorageSpace".into();
            (s, c)
        }
        None => evaluate::storage_local(
            obs.storage_used().map(|b| b as f64),
            i.cfg.capacity.storage_limit.map(|l| l.0 as f64),
            h.last(samples::STORAGE_USED, ""),
            now,
            horizon,
        ),
    };
    charts.push(chart);
    let free = match (storage.used_bytes, storage.limit_bytes) {
        (Some(u), Some(l)) => Some((l - u).max(0.0)),
        _ => None,
    };

    let mut tables = Vec::new();
    let mut partitions = Vec::new();
    for t in &obs.partitioned {
        let tc = table_cfg(i.cfg, &t.table);
        let interval = tc.map_or(Interval::Monthly, |c| c.interval);
        let tz = tc.map_or(chrono_tz::UTC, |c| c.timezone);
        let key_now = now_key(t.key_type, tz, i.now);
        let retention_days = tc
            .and_then(|c| c.retention)
            .map(|r| f64::from(r.months) * 30.44 + f64::from(r.days));
        let (report, chart) = evaluate::partitioned_table(&PartitionedInput {
            table: t,
            period_word: period_word(interval),
            retention_days,
            now_key: key_now,
            now,
            horizon,
            free_bytes: free,
        });
        tables.push(report);
        charts.push(chart);
        let ranges: Vec<_> = t.partitions.iter().filter_map(|p| p.range).collect();
        let next_pass = i.cfg.partitions.schedule.next_after(i.now);
        partitions.push(limits::coverage(
            &t.table.to_string(),
            &ranges,
            key_now,
            i.now,
            next_pass,
        ));
    }
    for (name, bytes) in &obs.plain {
        let (report, chart) = evaluate::plain_table(
            name,
            *bytes as f64,
            h.last(samples::TABLE_BYTES, name),
            now,
            horizon,
            free,
        );
        tables.push(report);
        charts.push(chart);
    }
    for m in &obs.missing_tables {
        notes.push(format!(
            "{m}: configured in partitions.tables but not a partitioned table with partitions here"
        ));
    }

    let databases = obs
        .databases
        .iter()
        .map(|d| {
            evaluate::database(
                &d.name,
                d.bytes.map(|b| b as f64),
                h.last(samples::DATABASE_BYTES, &d.name),
                now,
            )
        })
        .collect();

    let xid = limits::xid(
        &obs.databases,
        &obs.settings,
        h.last(samples::NEXT_XID, ""),
        h.last(samples::NEXT_MXID, ""),
        now,
        horizon,
    );
    if let Some(worst) = obs.databases.iter().max_by_key(|d| d.xid_age) {
        let stop = limits::stop_age(obs.settings.server_version_num, false) as f64;
        let pts = h.last(samples::NEXT_XID, "");
        let model = evaluate::sampled(pts, now).1.ok();
        let days = xid
            .iter()
            .find(|x| x.database == worst.name)
            .and_then(|x| x.days_until_wraparound);
        let mut c = evaluate::chart(
            format!("XID age of {} (wraparound stop limit)", worst.name),
            Vec::new(),
            (now, worst.xid_age as f64),
            model.as_ref(),
            Some(stop),
            days,
            horizon,
        );
        c.unit = "XIDs";
        charts.push(c);
    }

    let mut sequences: Vec<_> = obs
        .sequences
        .iter()
        .map(|s| {
            limits::sequence(
                s,
                h.last(samples::SEQUENCE_VALUE, &s.name),
                now,
                horizon,
                i.user,
            )
        })
        .collect();
    sequences.sort_by(|a, b| {
        b.used_ratio
            .unwrap_or(0.0)
            .total_cmp(&a.used_ratio.unwrap_or(0.0))
    });
    for s in sequences.iter().take(3) {
        let Some(f) = obs.sequences.iter().find(|f| f.name == s.sequence) else {
            continue;
        };
        let (used, avail, ..) = limits::sequence_usage(f);
        let pts = limits::sequence_consumed(f, h.last(samples::SEQUENCE_VALUE, &s.sequence));
        let model = evaluate::sampled(&pts, now).1.ok();
        let mut c = evaluate::chart(
            format!("sequence {} (values used)", s.sequence),
            pts.iter().map(|p| (p.t, p.v)).collect(),
            (now, used),
            model.as_ref(),
            Some(avail),
            s.days_until_exhausted,
            horizon,
        );
        c.unit = "values";
        charts.push(c);
    }

    let conn_points = h.peak(samples::CONNECTIONS, "");
    let connections = limits::connections(
        &obs.settings,
        obs.client_connections,
        conn_points,
        now,
        horizon,
    );
    charts.push(Chart {
        title: "connections (daily peak)".into(),
        unit: "connections",
        history: super::forecast::daily_peak(conn_points)
            .iter()
            .map(|p| (p.t, p.v))
            .collect(),
        forecast: match connections.peak_growth_per_day {
            Some(slope) => {
                let start = connections.peak_today.unwrap_or(connections.used as f64);
                (0..=10)
                    .map(|k| {
                        let d = horizon * f64::from(k) / 10.0;
                        let v = start + slope * d;
                        (now + d, v, v, v)
                    })
                    .collect()
            }
            None => Vec::new(),
        },
        limit: Some(connections.max as f64),
        crossing: connections.days_until_exhausted.map(|d| now + d),
    });

    // Findings in words: every warning, every resource that could not be read.
    if matches!(storage.state, State::Warning | State::Unknown) {
        problems.push(format!(
            "storage: {}",
            storage.detail.clone().unwrap_or_default()
        ));
    }
    for x in &xid {
        if x.state == State::Warning {
            problems.push(format!(
                "database {}: transaction ID wraparound in {} days (age {})",
                x.database,
                fmt_days(x.days_until_wraparound.or(x.mxid_days_until_wraparound)),
                x.age
            ));
        }
    }
    for s in &sequences {
        match s.state {
            State::Warning => problems.push(format!(
                "sequence {}: {:.1} % used, exhausted in {} days",
                s.sequence,
                s.used_ratio.unwrap_or(0.0) * 100.0,
                fmt_days(s.days_until_exhausted)
            )),
            State::Unknown => problems.push(format!(
                "sequence {}: {}",
                s.sequence,
                s.detail.clone().unwrap_or_default()
            )),
            _ => {}
        }
    }
    for p in &partitions {
        if p.exhausted_before_next_pass {
            problems.push(format!(
                "{}: the premade partitions ({:.1} days ahead) run out before the next pass; raise premake or run the pass more often",
                p.table, p.days_covered_ahead
            ));
        }
    }
    if connections.state == State::Warning {
        problems.push(format!(
            "connections: the daily peak reaches {} in {} days",
            connections.max,
            fmt_days(connections.days_until_exhausted)
        ));
    }
    let short: Vec<&str> = tables
        .iter()
        .filter(|t| t.state == State::NotEnoughHistory)
        .map(|t| t.table.as_str())
        .collect();
    if !short.is_empty() {
        notes.push(format!(
            "not enough history yet for {}: each run records a sample; partitioned tables need closed periods",
            short.join(", ")
        ));
    }
    let report = CapacityReport {
        healthy: problems.is_empty(),
        checked_at: i.now,
        horizon_days: horizon,
        tables,
        databases,
        storage,
        xid,
        sequences,
        partitions,
        connections,
        oldest_tables: obs
            .oldest_tables
            .iter()
            .map(|t| OldTableReport {
                table: t.table.clone(),
                xid_age: t.xid_age,
            })
            .collect(),
        size_method: obs.size_method.clone(),
        samples_recorded: i.samples_recorded,
        problems,
        notes,
    };
    (report, charts)
}

pub fn fmt_days(d: Option<f64>) -> String {
    d.map_or_else(|| "?".into(), |d| format!("{d:.1}"))
}
