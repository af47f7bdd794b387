//! The pure half of partition maintenance: what a table's partitions should
//! be (the grid of periods in the table's zone), how they are named, and the
//! actions that take the catalog's state there. No I/O: every function here
//! is unit-tested without a server, and `apply` only executes what this plans.
//!
//! Key values are `i64` microseconds: UTC instants for `timestamptz` keys and
//! wall-clock values read as if UTC for `timestamp`/`date` keys. One ordering
//! serves every key type, and MINVALUE/MAXVALUE are `i64::MIN`/`i64::MAX`.

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::config::{Interval, RetentionMode, TableConfig};
use crate::pg::{quote_ident, quote_literal, QualifiedName};

/// PostgreSQL's NAMEDATALEN - 1: longer identifiers are silently truncated by
/// the server, which would make two of our names collide.
pub const MAX_IDENT_BYTES: usize = 63;
/// The CHECK on a new partition that lets ATTACH skip scanning it.
pub const BOUNDS_CHECK: &str = "pgsteward_bounds";
/// Prefix of the CHECK on the DEFAULT partition that excludes a range being attached.
pub const DEFAULT_CHECK_PREFIX: &str = "pgsteward_excl";
/// Periods planned at most per table and pass; a gap longer than this (daily
/// partitions after years of downtime) is filled over several passes.
const MAX_PERIODS_PER_PASS: usize = 5000;

pub type Key = i64;
pub const KEY_MIN: Key = i64::MIN;
pub const KEY_MAX: Key = i64::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    Timestamptz,
    Timestamp,
    Date,
}

impl KeyType {
    /// From `format_type`/`regtype` output; `None` for key types we do not manage.
    pub fn from_sql(name: &str) -> Option<KeyType> {
        match name {
            "timestamp with time zone" | "timestamptz" => Some(KeyType::Timestamptz),
            "timestamp without time zone" | "timestamp" => Some(KeyType::Timestamp),
            "date" => Some(KeyType::Date),
            _ => None,
        }
    }
    fn sql_type(self) -> &'static str {
        match self {
            KeyType::Timestamptz => "timestamp with time zone",
            KeyType::Timestamp => "timestamp without time zone",
            KeyType::Date => "date",
        }
    }
}

/// A half-open key range `[lo, hi)`, as a range partition's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Range {
    pub lo: Key,
    pub hi: Key,
}

impl Range {
    pub fn overlaps(&self, other: &Range) -> bool {
        self.lo < other.hi && other.lo < self.hi
    }
}

/// One attached partition as the catalog shows it.
#[derive(Debug, Clone)]
pub struct ExistingPartition {
    pub name: QualifiedName,
    /// `None` when the bound expression could not be read (reported, never touched).
    pub range: Option<Range>,
    /// Left by an interrupted `DETACH ... CONCURRENTLY`.
    pub detach_pending: bool,
    /// Some foreign key references this partition: retention leaves it alone.
    pub fk_referenced: bool,
}

#[derive(Debug, Clone)]
pub struct DefaultPartition {
    pub name: QualifiedName,
    /// Exact 0 when the relation is empty on disk, else the planner's estimate.
    pub rows_estimate: u64,
    /// Our exclusion CHECKs left behind by an interrupted attach.
    pub pgsteward_checks: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    /// A role name, or `PUBLIC`.
    pub grantee: String,
    pub privilege: String,
    pub grantable: bool,
}

/// What the catalog says about one managed, validly partitioned table.
#[derive(Debug, Clone)]
pub struct TableState {
    pub table: QualifiedName,
    pub oid: u32,
    pub key_column: String,
    pub key_type: KeyType,
    pub owner: String,
    pub grants: Vec<Grant>,
    pub partitions: Vec<ExistingPartition>,
    pub default: Option<DefaultPartition>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CreateReason {
    /// The period "now" falls in.
    Current,
    /// Ahead of the current period, up to `premake`.
    Premake,
    /// Between existing partitions and now: left by downtime.
    Gap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DetachHow {
    /// PG14+, no DEFAULT partition: never takes ACCESS EXCLUSIVE on the parent.
    Concurrently,
    /// A DEFAULT partition exists, which forbids CONCURRENTLY.
    Plain,
    /// An interrupted concurrent detach is completed.
    Finalize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Create {
        #[serde(serialize_with = "ser_name")]
        partition: QualifiedName,
        period: String,
        #[serde(skip)]
        range: Range,
        reason: CreateReason,
    },
    Retire {
        #[serde(serialize_with = "ser_name")]
        partition: QualifiedName,
        how: DetachHow,
        /// Drop after detaching (`retention_mode = "drop"`).
        drop: bool,
        reason: String,
    },
    /// An exclusion CHECK on the DEFAULT left by an interrupted attach; it
    /// would make inserts of that range fail.
    DropDefaultCheck { constraint: String },
}

fn ser_name<S: serde::Serializer>(n: &QualifiedName, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(n)
}

/// Something the plan will not touch but the operator should know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Note {
    pub partition: String,
    pub kind: NoteKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoteKind {
    OffGrid,
    Overlap,
    FkReferenced,
    NameTaken,
    GapTruncated,
}

#[derive(Debug, Clone, Serialize)]
pub struct TablePlan {
    pub actions: Vec<Action>,
    pub notes: Vec<Note>,
}

// ---------------------------------------------------------------------------
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
fn period_label(interval: Interval, start: NaiveDate) -> String {
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
    let hash = format!("_{:08x}", fnv1a(parent.as_bytes()) as u32);
    let mut keep = MAX_IDENT_BYTES.saturating_sub(suffix.len() + hash.len());
    while keep > 0 && !parent.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}{hash}{suffix}", &parent[..keep])
}

/// FNV-1a: stable across builds and platforms (unlike `DefaultHasher`), so a
/// shortened name is the same on every pass.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
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
fn local_to_utc(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
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

// ---------------------------------------------------------------------------
// Reading bounds and writing literals

/// Parses `pg_get_expr(relpartbound)` of a single-column range partition, as a
/// session with `TimeZone=UTC, DateStyle=ISO` prints it. `None` for DEFAULT or
/// anything else (list bounds, multi-column bounds).
pub fn parse_bound(key_type: KeyType, expr: &str) -> Option<Range> {
    let rest = expr.strip_prefix("FOR VALUES FROM (")?;
    let (lo, hi) = rest.split_once(") TO (")?;
    let hi = hi.strip_suffix(')')?;
    Some(Range {
        lo: parse_value(key_type, lo)?,
        hi: parse_value(key_type, hi)?,
    })
}

/// Decodes a range bound from its stored node text (`relpartbound::text`),
/// which needs no catalog lookups on the server, unlike `pg_get_expr`.
/// Understands one-column bounds whose constants are a `timestamptz`
/// (OID 1184), `timestamp` (1114) or `date` (1082) printed little-endian, as
/// on every x86-64 and ARM server; anything else returns `None` and the
/// caller falls back to `pg_get_expr` + [`parse_bound`].
pub fn parse_bound_node(key_type: KeyType, node: &str) -> Option<Range> {
    if !node.starts_with("{PARTITIONBOUNDSPEC :strategy r ") {
        return None;
    }
    let lower = node.split(":lowerdatums (").nth(1)?;
    let upper = lower.split(":upperdatums (").nth(1)?;
    let lower = lower.split(":upperdatums (").next()?;
    Some(Range {
        lo: datum_node(key_type, lower)?,
        hi: datum_node(key_type, upper)?,
    })
}

/// Microseconds from the Unix epoch to PostgreSQL's 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

fn datum_node(key_type: KeyType, list: &str) -> Option<Key> {
    // Exactly one column: one PARTITIONRANGEDATUM before the list closes.
    if list.matches("{PARTITIONRANGEDATUM").count() < 1 {
        return None;
    }
    let first = list.split("{PARTITIONRANGEDATUM").nth(1)?;
    if list.split("{PARTITIONRANGEDATUM").count() > 2 {
        // A second datum could belong to the other list only if ours closed first.
        let ours = list.split(")").next()?;
        if ours.matches("{PARTITIONRANGEDATUM").count() != 1 {
            return None;
        }
    }
    let kind = first.strip_prefix(" :kind ")?.split(' ').next()?;
    match kind {
        "-1" => return Some(KEY_MIN),
        "1" => return Some(KEY_MAX),
        "0" => {}
        _ => return None,
    }
    let (type_oid, len) = match key_type {
        KeyType::Timestamptz => ("1184", 8),
        KeyType::Timestamp => ("1114", 8),
        KeyType::Date => ("1082", 4),
    };
    if !first.contains(&format!(":consttype {type_oid} ")) || !first.contains(":constisnull false ")
    {
        return None;
    }
    let bytes = first.split(&format!(":constvalue {len} [ ")).nth(1)?;
    let bytes = bytes.split(" ]").next()?;
    let mut raw = [0u8; 8];
    let mut n = 0;
    for b in bytes.split(' ') {
        if n == 8 {
            return None;
        }
        // Printed as C chars: signed on x86, unsigned on ARM; the byte is the same.
        raw[n] = b.parse::<i32>().ok()? as u8;
        n += 1;
    }
    if n != 8 {
        return None;
    }
    let micros = match key_type {
        KeyType::Timestamptz | KeyType::Timestamp => match i64::from_le_bytes(raw) {
            i64::MIN => return Some(KEY_MIN),
            i64::MAX => return Some(KEY_MAX),
            v => v.checked_add(PG_EPOCH_MICROS)?,
        },
        KeyType::Date => {
            let days = i32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
            match days {
                i32::MIN => return Some(KEY_MIN),
                i32::MAX => return Some(KEY_MAX),
                d => i64::from(d) * 86_400_000_000 + PG_EPOCH_MICROS,
            }
        }
    };
    // A value from a big-endian server decodes to nonsense: let pg_get_expr read it.
    let year = DateTime::<Utc>::from_timestamp_micros(micros)?.year();
    (1800..=2500).contains(&year).then_some(micros)
}

fn parse_value(key_type: KeyType, v: &str) -> Option<Key> {
    match v {
        "MINVALUE" | "'-infinity'" => return Some(KEY_MIN),
        "MAXVALUE" | "'infinity'" => return Some(KEY_MAX),
        _ => {}
    }
    let s = v.strip_prefix('\'')?.strip_suffix('\'')?;
    match key_type {
        KeyType::Timestamptz => DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z")
            .ok()
            .map(|t| t.timestamp_micros()),
        KeyType::Timestamp => NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
            .ok()
            .map(|t| t.and_utc().timestamp_micros()),
        KeyType::Date => NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc().timestamp_micros()),
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

// ---------------------------------------------------------------------------
// Planning

/// Desired vs. existing for one table at `now`. Idempotent: planning against
/// the state that executing this plan produces yields no actions.
pub fn plan(cfg: &TableConfig, state: &TableState, now: DateTime<Utc>) -> TablePlan {
    let (interval, kt, tz) = (cfg.interval, state.key_type, cfg.timezone);
    let mut actions = Vec::new();
    let mut notes = Vec::new();
    let cutoff = cfg
        .retention
        .map(|span| retention_cutoff(kt, tz, now, span));

    let attached: Vec<&ExistingPartition> = state
        .partitions
        .iter()
        .filter(|p| !p.detach_pending)
        .collect();
    for p in &attached {
        match p.range {
            None => notes.push(Note {
                partition: p.name.to_string(),
                kind: NoteKind::OffGrid,
                message: "bound is not a single-column range; left alone".into(),
            }),
            // A converted table's first partition (`pgsteward convert`): everything
            // before a period start; retention retires it once that start is past.
            Some(r) if r.lo == KEY_MIN && r.hi != KEY_MAX => notes.push(Note {
                partition: p.name.to_string(),
                kind: NoteKind::OffGrid,
                message: format!(
                    "holds every row before {} (first partition of a converted table); retired when that is past retention",
                    key_text(kt, tz, r.hi)
                ),
            }),
            Some(r) if !on_grid(interval, kt, tz, r) => notes.push(Note {
                partition: p.name.to_string(),
                kind: NoteKind::OffGrid,
                message: format!(
                    "range {} .. {} is not one {:?} period in {tz}; left alone",
                    key_text(kt, tz, r.lo),
                    key_text(kt, tz, r.hi),
                    interval
                )
                .to_lowercase(),
            }),
            Some(_) => {}
        }
    }

    // Retention first in the plan: it never overlaps what is created.
    for p in &state.partitions {
        let expired = match (p.range, cutoff) {
            (Some(r), Some(c)) => r.hi != KEY_MAX && r.hi <= c,
            _ => false,
        };
        let drop = expired && cfg.retention_mode == RetentionMode::Drop;
        if p.detach_pending {
            actions.push(Action::Retire {
                partition: p.name.clone(),
                how: DetachHow::Finalize,
                drop,
                reason: "an earlier concurrent detach was interrupted".into(),
            });
            continue;
        }
        if !expired {
            continue;
        }
        if p.fk_referenced {
            notes.push(Note {
                partition: p.name.to_string(),
                kind: NoteKind::FkReferenced,
                message: "past retention but referenced by a foreign key; not detached or dropped"
                    .into(),
            });
            continue;
        }
        actions.push(Action::Retire {
            partition: p.name.clone(),
            how: if state.default.is_some() {
                DetachHow::Plain
            } else {
                DetachHow::Concurrently
            },
            drop,
            reason: format!(
                "whole range ends before the retention cut-off {}",
                key_text(kt, tz, cutoff.unwrap_or(KEY_MIN))
            ),
        });
    }

    // Creation: from the oldest existing partition's period (gaps after
    // downtime) or the current one, through `premake` periods ahead.
    let now_day = key_day(KeyType::Timestamptz, tz, now.timestamp_micros());
    let current = period_start(interval, now_day);
    let mut last = current;
    for _ in 0..cfg.premake {
        last = next_period(interval, last);
    }
    let oldest = attached
        .iter()
        .filter_map(|p| p.range)
        .filter(|r| r.lo != KEY_MIN)
        .map(|r| r.lo)
        .min();
    let mut start = current;
    if let Some(lo) = oldest {
        let first = period_start(interval, key_day(kt, tz, lo));
        if first < current {
            start = first;
        }
    }
    let taken: Vec<&str> = state
        .partitions
        .iter()
        .map(|p| p.name.name.as_str())
        .chain(state.default.iter().map(|d| d.name.name.as_str()))
        .collect();
    let mut period = start;
    let mut count = 0;
    let mut planned: Vec<Action> = Vec::new();
    while period <= last {
        count += 1;
        if count > MAX_PERIODS_PER_PASS {
            notes.push(Note {
                partition: String::new(),
                kind: NoteKind::GapTruncated,
                message: format!("more than {MAX_PERIODS_PER_PASS} missing periods; the rest follow on later passes"),
            });
            break;
        }
        let range = period_range(interval, kt, tz, period);
        let reason = if period < current {
            CreateReason::Gap
        } else if period == current {
            CreateReason::Current
        } else {
            CreateReason::Premake
        };
        let expired = cutoff.is_some_and(|c| range.hi <= c);
        // A first partition from MINVALUE covers every period before its bound.
        let covered = attached.iter().any(|p| {
            p.range
                .is_some_and(|r| r == range || (r.lo == KEY_MIN && range.hi <= r.hi))
        });
        if !expired && !covered {
            let name = partition_name(&state.table.name, &suffix(interval, period));
            if let Some(other) = attached
                .iter()
                .find(|p| p.range.is_some_and(|r| r.overlaps(&range)))
            {
                notes.push(Note {
                    partition: other.name.to_string(),
                    kind: NoteKind::Overlap,
                    message: format!(
                        "period {} overlaps it; {name} is not created",
                        period_label(interval, period)
                    ),
                });
            } else if taken.contains(&name.as_str()) {
                notes.push(Note {
                    partition: name.clone(),
                    kind: NoteKind::NameTaken,
                    message: format!(
                        "the name is used by another partition; period {} is not created",
                        period_label(interval, period)
                    ),
                });
            } else {
                planned.push(Action::Create {
                    partition: QualifiedName::new(state.table.schema.clone(), name),
                    period: period_label(interval, period),
                    range,
                    reason,
                });
            }
        }
        period = next_period(interval, period);
    }
    // The current period first: it is the one inserts need now.
    planned.sort_by_key(|a| match a {
        Action::Create { reason, range, .. } => (*reason != CreateReason::Current, range.lo),
        _ => (true, 0),
    });
    actions.extend(planned);

    if let Some(d) = &state.default {
        for c in &d.pgsteward_checks {
            actions.push(Action::DropDefaultCheck {
                constraint: c.clone(),
            });
        }
    }
    TablePlan { actions, notes }
}

fn on_grid(interval: Interval, kt: KeyType, tz: Tz, r: Range) -> bool {
    if r.lo == KEY_MIN || r.hi == KEY_MAX {
        return false;
    }
    let start = period_start(interval, key_day(kt, tz, r.lo));
    period_range(interval, kt, tz, start) == r
}

/// Coverage of a table by its partitions, for `status` and the pass report.
#[derive(Debug, Clone, Serialize)]
pub struct Coverage {
    pub partitions: usize,
    /// Lowest and highest bound over all partitions, as text in the table's zone.
    pub covered_from: Option<String>,
    pub covered_to: Option<String>,
    /// Whole periods after the current one covered without a hole.
    pub periods_ahead: u32,
    /// Holes between the lowest and highest bound, as `from .. to`.
    pub gaps: Vec<String>,
}

pub fn coverage(
    interval: Interval,
    kt: KeyType,
    tz: Tz,
    ranges: &[Range],
    now: DateTime<Utc>,
) -> Coverage {
    let mut sorted: Vec<Range> = ranges.to_vec();
    sorted.sort();
    let mut gaps = Vec::new();
    for w in sorted.windows(2) {
        if w[0].hi < w[1].lo {
            gaps.push(format!(
                "{} .. {}",
                key_text(kt, tz, w[0].hi),
                key_text(kt, tz, w[1].lo)
            ));
        }
    }
    let now_day = key_day(KeyType::Timestamptz, tz, now.timestamp_micros());
    let mut p = next_period(interval, period_start(interval, now_day));
    let mut ahead = 0;
    while ahead < 100_000 {
        let r = period_range(interval, kt, tz, p);
        if !sorted.iter().any(|s| s.lo <= r.lo && r.hi <= s.hi) {
            break;
        }
        ahead += 1;
        p = next_period(interval, p);
    }
    Coverage {
        partitions: ranges.len(),
        covered_from: sorted.first().map(|r| key_text(kt, tz, r.lo)),
        covered_to: sorted
            .iter()
            .map(|r| r.hi)
            .max()
            .map(|k| key_text(kt, tz, k)),
        periods_ahead: ahead,
        gaps,
    }
}

// ---------------------------------------------------------------------------
// SQL. Identifiers are quoted with `quote_ident`, values are literals we
// computed ourselves (never text from configuration or the catalog).

/// Clauses of `CREATE TABLE child (LIKE parent ...)`: what an attached
/// partition must share with its parent. Indexes are left to ATTACH, which
/// creates (empty, instant) matching ones; identity stays on the parent.
const LIKE_OPTIONS: &str = "INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED \
                            INCLUDING STORAGE INCLUDING COMMENTS";

fn range_predicate(key: &str, kt: KeyType, tz: Tz, r: Range) -> String {
    format!(
        "{k} IS NOT NULL AND {k} >= {lo} AND {k} < {hi}",
        k = quote_ident(key),
        lo = key_literal(kt, tz, r.lo),
        hi = key_literal(kt, tz, r.hi)
    )
}

pub fn sql_create_child(parent: &QualifiedName, child: &QualifiedName) -> String {
    format!(
        "CREATE TABLE {} (LIKE {} {LIKE_OPTIONS})",
        child.quoted(),
        parent.quoted()
    )
}

pub fn sql_add_bounds_check(
    child: &QualifiedName,
    key: &str,
    kt: KeyType,
    tz: Tz,
    r: Range,
) -> String {
    format!(
        "ALTER TABLE {} ADD CONSTRAINT {} CHECK ({})",
        child.quoted(),
        quote_ident(BOUNDS_CHECK),
        range_predicate(key, kt, tz, r)
    )
}

pub fn sql_grant(child: &QualifiedName, g: &Grant) -> String {
    let grantee = if g.grantee == "PUBLIC" {
        "PUBLIC".to_string()
    } else {
        quote_ident(&g.grantee)
    };
    // The privilege names come from aclexplode(): a fixed set of keywords.
    let privilege: String = g
        .privilege
        .chars()
        .filter(|c| c.is_ascii_alphabetic() || *c == ' ')
        .collect();
    format!(
        "GRANT {privilege} ON TABLE {} TO {grantee}{}",
        child.quoted(),
        if g.grantable {
            " WITH GRANT OPTION"
        } else {
            ""
        }
    )
}

pub fn sql_owner(child: &QualifiedName, owner: &str) -> String {
    format!(
        "ALTER TABLE {} OWNER TO {}",
        child.quoted(),
        quote_ident(owner)
    )
}

pub fn default_check_name(child: &QualifiedName) -> String {
    // The child's name is unique per parent; hashing keeps it within 63 bytes.
    format!(
        "{DEFAULT_CHECK_PREFIX}_{:08x}",
        fnv1a(child.name.as_bytes()) as u32
    )
}

pub fn sql_add_default_check(
    default: &QualifiedName,
    constraint: &str,
    key: &str,
    kt: KeyType,
    tz: Tz,
    r: Range,
) -> String {
    // The exact negation of the new partition's constraint, so the planner's
    // implication proof in ATTACH recognises it and skips scanning DEFAULT.
    format!(
        "ALTER TABLE {} ADD CONSTRAINT {} CHECK (NOT ({})) NOT VALID",
        default.quoted(),
        quote_ident(constraint),
        range_predicate(key, kt, tz, r)
    )
}

/// The same CHECK added valid in one statement: it scans DEFAULT under ACCESS
/// EXCLUSIVE, so it is used only when DEFAULT is known to be tiny.
pub fn sql_add_default_check_valid(
    default: &QualifiedName,
    constraint: &str,
    key: &str,
    kt: KeyType,
    tz: Tz,
    r: Range,
) -> String {
    sql_add_default_check(default, constraint, key, kt, tz, r)
        .trim_end_matches(" NOT VALID")
        .to_string()
}

/// Rows of the range in DEFAULT, and DEFAULT's size on disk in bytes.
pub fn sql_probe_default(
    default: &QualifiedName,
    key: &str,
    kt: KeyType,
    tz: Tz,
    r: Range,
) -> String {
    format!(
        "SELECT (SELECT count(*) FROM {d} WHERE {pred}), pg_relation_size({lit}::regclass)",
        d = default.quoted(),
        pred = range_predicate(key, kt, tz, r),
        lit = quote_literal(&default.quoted())
    )
}

/// Drops several of our CHECKs from one table in one statement.
pub fn sql_drop_constraints(table: &QualifiedName, constraints: &[String]) -> String {
    let drops = constraints
        .iter()
        .map(|c| format!("DROP CONSTRAINT IF EXISTS {}", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    format!("ALTER TABLE {} {drops}", table.quoted())
}

pub fn sql_validate(table: &QualifiedName, constraint: &str) -> String {
    format!(
        "ALTER TABLE {} VALIDATE CONSTRAINT {}",
        table.quoted(),
        quote_ident(constraint)
    )
}

pub fn sql_drop_constraint(table: &QualifiedName, constraint: &str) -> String {
    format!(
        "ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}",
        table.quoted(),
        quote_ident(constraint)
    )
}

pub fn sql_attach(
    parent: &QualifiedName,
    child: &QualifiedName,
    kt: KeyType,
    tz: Tz,
    r: Range,
) -> String {
    format!(
        "ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})",
        parent.quoted(),
        child.quoted(),
        key_literal(kt, tz, r.lo),
        key_literal(kt, tz, r.hi)
    )
}

/// Moves up to `$1` rows of range `r` from DEFAULT into the standalone child
/// in one statement: the DELETE and the INSERT commit together, so a row is
/// never lost or in both places.
pub fn sql_move_batch(
    default: &QualifiedName,
    child: &QualifiedName,
    columns: &[String],
    key: &str,
    kt: KeyType,
    tz: Tz,
    r: Range,
) -> String {
    let cols = columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "WITH moved AS (DELETE FROM {d} WHERE ctid = ANY (ARRAY(SELECT ctid FROM {d} WHERE {pred} LIMIT $1)) RETURNING {cols}) \
         INSERT INTO {c} ({cols}) SELECT {cols} FROM moved",
        d = default.quoted(),
        c = child.quoted(),
        pred = range_predicate(key, kt, tz, r)
    )
}

pub fn sql_detach(parent: &QualifiedName, child: &QualifiedName, how: DetachHow) -> String {
    let tail = match how {
        DetachHow::Concurrently => " CONCURRENTLY",
        DetachHow::Plain => "",
        DetachHow::Finalize => " FINALIZE",
    };
    format!(
        "ALTER TABLE {} DETACH PARTITION {}{tail}",
        parent.quoted(),
        child.quoted()
    )
}

pub fn sql_drop_table(t: &QualifiedName) -> String {
    format!("DROP TABLE {}", t.quoted())
}

/// The statements `apply` runs for an action, in order, for `partitions plan`.
/// Moving DEFAULT rows is data-dependent and shown as a comment.
pub fn action_sql(state: &TableState, tz: Tz, action: &Action) -> Vec<String> {
    let (parent, key, kt) = (&state.table, state.key_column.as_str(), state.key_type);
    match action {
        Action::Create {
            partition, range, ..
        } => {
            let mut v = vec![
                sql_create_child(parent, partition),
                sql_add_bounds_check(partition, key, kt, tz, *range),
            ];
            v.extend(state.grants.iter().map(|g| sql_grant(partition, g)));
            v.push(sql_owner(partition, &state.owner));
            if let Some(d) = &state.default {
                let c = default_check_name(partition);
                v.push(sql_probe_default(&d.name, key, kt, tz, *range));
                v.push(format!(
                    "-- rows of this range in {} are moved into {} in batches; \
                     when DEFAULT is tiny the CHECK below is added valid in one statement",
                    d.name, partition
                ));
                v.push(sql_add_default_check(&d.name, &c, key, kt, tz, *range));
                v.push(sql_validate(&d.name, &c));
                v.push(sql_attach(parent, partition, kt, tz, *range));
                v.push(sql_drop_constraint(partition, BOUNDS_CHECK));
                v.push(sql_drop_constraint(&d.name, &c));
            } else {
                v.push(sql_attach(parent, partition, kt, tz, *range));
                v.push(sql_drop_constraint(partition, BOUNDS_CHECK));
            }
            v
        }
        Action::Retire {
            partition,
            how,
            drop,
            ..
        } => {
            let mut v = vec![sql_detach(parent, partition, *how)];
            if *drop {
                v.push(sql_drop_table(partition));
            }
            v
        }
        Action::DropDefaultCheck { constraint } => match &state.default {
            Some(d) => vec![sql_drop_constraint(&d.name, constraint)],
            None => vec![],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CalendarSpan;

    fn d(y: i32, m: u32, dd: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, dd).unwrap()
    }
    fn utc(y: i32, m: u32, dd: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, dd, h, 0, 0).unwrap()
    }
    fn cfg(interval: Interval, premake: u32) -> TableConfig {
        TableConfig {
            table: "public.audit_log".parse().unwrap(),
            interval,
            premake,
            retention: None,
            retention_mode: RetentionMode::Detach,
            timezone: Tz::UTC,
        }
    }
    fn state(kt: KeyType) -> TableState {
        TableState {
            table: QualifiedName::new("public", "audit_log"),
            oid: 1,
            key_column: "created_at".into(),
            key_type: kt,
            owner: "app".into(),
            grants: vec![],
            partitions: vec![],
            default: None,
        }
    }
    /// The state after executing `p` against `s`: what a second pass sees.
    fn applied(mut s: TableState, p: &TablePlan) -> TableState {
        for a in &p.actions {
            match a {
                Action::Create {
                    partition, range, ..
                } => s.partitions.push(ExistingPartition {
                    name: partition.clone(),
                    range: Some(*range),
                    detach_pending: false,
                    fk_referenced: false,
                }),
                Action::Retire { partition, .. } => s.partitions.retain(|e| &e.name != partition),
                Action::DropDefaultCheck { .. } => {
                    if let Some(d) = s.default.as_mut() {
                        d.pgsteward_checks.clear()
                    }
                }
            }
        }
        s
    }
    fn created(p: &TablePlan) -> Vec<String> {
        p.actions
            .iter()
            .filter_map(|a| match a {
                Action::Create { partition, .. } => Some(partition.name.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn names_for_every_interval() {
        assert_eq!(suffix(Interval::Monthly, d(2025, 1, 1)), "_2025_01");
        assert_eq!(suffix(Interval::Daily, d(2025, 1, 31)), "_2025_01_31");
        assert_eq!(
            suffix(
                Interval::Weekly,
                period_start(Interval::Weekly, d(2025, 1, 29))
            ),
            "_2025w05"
        );
        // ISO week 1 of 2025 starts on Monday 2024-12-30.
        assert_eq!(
            period_start(Interval::Weekly, d(2025, 1, 1)),
            d(2024, 12, 30)
        );
        assert_eq!(suffix(Interval::Weekly, d(2024, 12, 30)), "_2025w01");
        assert_eq!(
            suffix(
                Interval::Quarterly,
                period_start(Interval::Quarterly, d(2025, 8, 15))
            ),
            "_2025q3"
        );
        assert_eq!(suffix(Interval::Yearly, d(2025, 1, 1)), "_2025");
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

    #[test]
    fn now_is_read_in_the_tables_zone() {
        // 23:30 UTC on Jan 31 is already February in Berlin.
        let mut c = cfg(Interval::Monthly, 0);
        c.timezone = "Europe/Berlin".parse().unwrap();
        let p = plan(&c, &state(KeyType::Timestamptz), utc(2025, 1, 31, 23));
        assert_eq!(created(&p), vec!["audit_log_2025_02"]);
    }

    #[test]
    fn parses_bounds_as_printed_by_postgres() {
        let r = parse_bound(
            KeyType::Timestamptz,
            "FOR VALUES FROM ('2025-01-01 00:00:00+00') TO ('2025-02-01 00:00:00+00')",
        )
        .unwrap();
        assert_eq!(r.lo, utc(2025, 1, 1, 0).timestamp_micros());
        assert_eq!(
            parse_bound(
                KeyType::Date,
                "FOR VALUES FROM (MINVALUE) TO ('2025-02-01')"
            )
            .unwrap()
            .lo,
            KEY_MIN
        );
        assert!(parse_bound(KeyType::Date, "DEFAULT").is_none());
        assert!(parse_bound(KeyType::Date, "FOR VALUES IN ('2025-02-01')").is_none());
        let r = parse_bound(
            KeyType::Timestamp,
            "FOR VALUES FROM ('2025-01-01 00:00:00') TO ('2025-01-01 12:30:00.5')",
        )
        .unwrap();
        assert_eq!(r.hi - r.lo, 45_000_500_000);
    }

    #[test]
    fn decodes_stored_bound_nodes_like_pg_get_expr() {
        let tz_node = "{PARTITIONBOUNDSPEC :strategy r :is_default false :modulus 0 :remainder 0 :listdatums <> :lowerdatums ({PARTITIONRANGEDATUM :kind 0 :value {CONST :consttype 1184 :consttypmod -1 :constcollid 0 :constlen 8 :constbyval true :constisnull false :location 59 :constvalue 8 [ 0 96 -86 122 42 2 3 0 ]} :location 59}) :upperdatums ({PARTITIONRANGEDATUM :kind 0 :value {CONST :consttype 1184 :consttypmod -1 :constcollid 0 :constlen 8 :constbyval true :constisnull false :location 89 :constvalue 8 [ 0 -96 -25 -7 -123 4 3 0 ]} :location 89}) :location 53}";
        let r = parse_bound_node(KeyType::Timestamptz, tz_node).unwrap();
        assert_eq!(r.lo, utc(2026, 11, 1, 0).timestamp_micros());
        assert_eq!(r.hi, utc(2026, 12, 1, 0).timestamp_micros());
        // The key type must match the constant's type.
        assert!(parse_bound_node(KeyType::Date, tz_node).is_none());
        let min_node = "{PARTITIONBOUNDSPEC :strategy r :is_default false :modulus 0 :remainder 0 :listdatums <> :lowerdatums ({PARTITIONRANGEDATUM :kind -1 :value <> :location 99}) :upperdatums ({PARTITIONRANGEDATUM :kind 0 :value {CONST :consttype 1082 :consttypmod -1 :constcollid 0 :constlen 4 :constbyval true :constisnull false :location 113 :constvalue 4 [ -25 35 0 0 0 0 0 0 ]} :location 113}) :location 93}";
        let r = parse_bound_node(KeyType::Date, min_node).unwrap();
        assert_eq!(r.lo, KEY_MIN);
        assert_eq!(r.hi, utc(2025, 3, 1, 0).timestamp_micros());
        let inf_node = "{PARTITIONBOUNDSPEC :strategy r :is_default false :modulus 0 :remainder 0 :listdatums <> :lowerdatums ({PARTITIONRANGEDATUM :kind 0 :value {CONST :consttype 1082 :consttypmod -1 :constcollid 0 :constlen 4 :constbyval true :constisnull false :location 178 :constvalue 4 [ -25 35 0 0 0 0 0 0 ]} :location 178}) :upperdatums ({PARTITIONRANGEDATUM :kind 0 :value {CONST :consttype 1082 :consttypmod -1 :constcollid 0 :constlen 4 :constbyval true :constisnull false :location 196 :constvalue 4 [ -1 -1 -1 127 0 0 0 0 ]} :location 196}) :location 172}";
        assert_eq!(
            parse_bound_node(KeyType::Date, inf_node).unwrap().hi,
            KEY_MAX
        );
        // Big-endian bytes decode to nonsense years and are refused.
        let be = tz_node.replace("[ 0 96 -86 122 42 2 3 0 ]", "[ 0 3 2 42 122 -86 96 0 ]");
        assert!(parse_bound_node(KeyType::Timestamptz, &be).is_none());
        // Two-column bounds are not ours.
        let two = tz_node.replace(
            ":location 59}) :upperdatums",
            ":location 59} {PARTITIONRANGEDATUM :kind 1 :value <> :location 1}) :upperdatums",
        );
        assert!(parse_bound_node(KeyType::Timestamptz, &two).is_none());
        assert!(parse_bound_node(
            KeyType::Timestamptz,
            "{PARTITIONBOUNDSPEC :strategy l :is_default false}"
        )
        .is_none());
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
        s.partitions.push(ExistingPartition {
            name: QualifiedName::new("public", "legacy_jan"),
            range: Some(period_range(
                Interval::Monthly,
                KeyType::Timestamptz,
                tz,
                d(2025, 1, 1),
            )),
            detach_pending: false,
            fk_referenced: false,
        });
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
    fn off_grid_and_overlapping_partitions_are_reported_not_touched() {
        let c = cfg(Interval::Monthly, 2);
        let mut s = state(KeyType::Date);
        let tz = Tz::UTC;
        // May 15 .. June 15: off the monthly grid, overlapping May and June.
        s.partitions.push(ExistingPartition {
            name: QualifiedName::new("public", "odd"),
            range: Some(Range {
                lo: day_start_key(KeyType::Date, tz, d(2025, 5, 15)),
                hi: day_start_key(KeyType::Date, tz, d(2025, 6, 15)),
            }),
            detach_pending: false,
            fk_referenced: false,
        });
        let p = plan(&c, &s, utc(2025, 5, 20, 0));
        assert_eq!(created(&p), vec!["audit_log_2025_07"]);
        let kinds: Vec<NoteKind> = p.notes.iter().map(|n| n.kind).collect();
        assert_eq!(
            kinds,
            vec![NoteKind::OffGrid, NoteKind::Overlap, NoteKind::Overlap]
        );
        assert!(!p.actions.iter().any(|a| matches!(a, Action::Retire { .. })));
        let again = plan(&c, &applied(s, &p), utc(2025, 5, 20, 0));
        assert!(again.actions.is_empty());
        assert_eq!(again.notes.len(), 3, "still reported, still untouched");
    }

    #[test]
    fn name_taken_by_another_partition_is_reported() {
        let c = cfg(Interval::Monthly, 0);
        let mut s = state(KeyType::Date);
        s.partitions.push(ExistingPartition {
            name: QualifiedName::new("public", "audit_log_2025_05"),
            range: Some(period_range(
                Interval::Monthly,
                KeyType::Date,
                Tz::UTC,
                d(2024, 5, 1),
            )),
            detach_pending: false,
            fk_referenced: false,
        });
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
                name: QualifiedName::new("public", format!("p{m}")),
                range: Some(period_range(
                    Interval::Monthly,
                    KeyType::Timestamptz,
                    Tz::UTC,
                    d(2025, *m, 1),
                )),
                detach_pending: false,
                fk_referenced: i == 0,
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
            reason: "whole range ends before the retention cut-off 2025-03-10 00:00:00+00:00"
                .into(),
        }));
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
        let c = cfg(Interval::Monthly, 0);
        let mut s = state(KeyType::Date);
        s.partitions.push(ExistingPartition {
            name: QualifiedName::new("public", "audit_log_2025_05"),
            range: Some(period_range(
                Interval::Monthly,
                KeyType::Date,
                Tz::UTC,
                d(2025, 5, 1),
            )),
            detach_pending: false,
            fk_referenced: false,
        });
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

    #[test]
    fn odd_identifiers_are_quoted_in_every_statement() {
        let mut s = state(KeyType::Timestamptz);
        s.table = QualifiedName::new("Weird-Schema", "Audit \"Log\"");
        s.key_column = "Created At\"; DROP TABLE x; --".into();
        s.grants = vec![Grant {
            grantee: "app\"role".into(),
            privilege: "SELECT".into(),
            grantable: false,
        }];
        s.default = Some(DefaultPartition {
            name: QualifiedName::new("Weird-Schema", "Audit \"Log\" default"),
            rows_estimate: 0,
            pgsteward_checks: vec![],
        });
        let c = cfg(Interval::Monthly, 0);
        let p = plan(&c, &s, utc(2025, 5, 20, 0));
        let sql = action_sql(&s, Tz::UTC, &p.actions[0]).join(";\n");
        assert!(sql.contains(r#"CREATE TABLE "Weird-Schema"."Audit ""Log""_2025_05" (LIKE "Weird-Schema"."Audit ""Log"""#), "{sql}");
        assert!(
            sql.contains(r#""Created At""; DROP TABLE x; --" IS NOT NULL"#),
            "{sql}"
        );
        assert!(sql.contains(r#"TO "app""role""#), "{sql}");
    }
}
