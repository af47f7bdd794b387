//! The pure half of a conversion: the cut-over boundary, the names, what the
//! operator must be told changes, what is refused and why. No I/O; the SQL
//! of each step is in `sql.rs`. Everything we take from partition
//! maintenance (the period grid, names, literals) comes through this file's
//! imports, so a refactor of `partitions` touches one place here.

use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::inspect::TableInfo;
use super::refuse::refusals;
use crate::config::{Interval, TableConfig};
use crate::partitions::model::Key;
use crate::partitions::model::KeyType;
use crate::partitions::period::{
    day_start_key, key_day, key_literal, key_text, next_period, now_key, partition_name,
    period_start, suffix,
};
use crate::pg::QualifiedName;

// Defined beside the refusals that look for them (an object of these names
// left by someone else refuses), used by the plan and the steps.
pub use super::refuse::{Refusal, CHECK_NAME, INDEX_PREFIX};
/// Below this much time before the boundary the swap is not attempted: writers
/// reaching the boundary would be refused by the CHECK.
pub const SWAP_GUARD: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// What a conversion will do; written to the journal at the start, so a
/// resume uses the same boundary and names whatever the clock says then.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConvertPlan {
    pub schema: String,
    pub table: String,
    pub key: String,
    /// As `format_type` prints it.
    pub key_type: String,
    pub interval: Interval,
    pub timezone: String,
    /// The first period start after which rows go to new partitions (µs key value).
    pub boundary: Key,
    pub boundary_text: String,
    pub boundary_literal: String,
    pub first_partition: String,
    pub unique_builds: Vec<UniqueBuild>,
    /// What changes, in words: "primary key (id) becomes (id, created_at)".
    pub changes: Vec<String>,
    /// Carried over as they are.
    pub carried: Vec<String>,
    pub notes: Vec<String>,
}

/// A primary key, unique constraint or unique index without the partition
/// key: a unique index on its columns plus the key is built concurrently
/// before the swap and takes its place.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UniqueBuild {
    /// The constraint (or, for a bare unique index, the index) replaced.
    pub replaces: String,
    /// `p` primary key, `u` unique constraint, `i` unique index without a constraint.
    pub kind: String,
    pub columns: Vec<String>,
    /// The index built concurrently.
    pub index: String,
}

impl ConvertPlan {
    pub fn name(&self) -> QualifiedName {
        QualifiedName::new(self.schema.clone(), self.table.clone())
    }
    pub fn first(&self) -> QualifiedName {
        QualifiedName::new(self.schema.clone(), self.first_partition.clone())
    }
    /// The DEFAULT partition the swap makes, so that every row the plain
    /// table accepted is still accepted.
    pub fn default_partition(&self) -> String {
        partition_name(&self.table, "_default")
    }
    pub fn kt(&self) -> KeyType {
        KeyType::from_sql(&self.key_type).unwrap_or(KeyType::Timestamptz)
    }
    pub fn tz(&self) -> Tz {
        self.timezone.parse().unwrap_or(Tz::UTC)
    }
    /// The name an existing index takes on the first partition; the parent's
    /// index takes the original name. The same rule as every other partition
    /// index pgsteward names (`events_payload_idx` becomes
    /// `events_before_2027_01_payload_idx`, as on `events_2027_01`): the
    /// swap renames and attaches in one transaction, so a conversion
    /// journalled by a release that named them otherwise stays consistent.
    pub fn child_index_name(&self, index: &str) -> String {
        crate::config::indexes::child_index_name(&self.table, &self.first_partition, index)
    }
    /// Time left before the boundary at `now`, as the table's writers see it.
    pub fn lead(&self, now: DateTime<Utc>) -> ChronoDuration {
        ChronoDuration::microseconds(self.boundary.saturating_sub(now_key(
            self.kt(),
            self.tz(),
            now,
        )))
    }
}

/// The least time between the start of a conversion and its boundary: a
/// quarter of a period, at least an hour. The pre-swap steps (index and CHECK
/// builds) must finish inside it; past [`SWAP_GUARD`] the conversion undoes itself.
pub fn min_lead(interval: Interval) -> ChronoDuration {
    let quarter = match interval {
        Interval::Daily => ChronoDuration::hours(6),
        Interval::Weekly => ChronoDuration::hours(42),
        Interval::Monthly => ChronoDuration::days(7),
        Interval::Quarterly => ChronoDuration::days(22),
        Interval::Yearly => ChronoDuration::days(91),
    };
    quarter.max(ChronoDuration::hours(1))
}

/// The boundary: the start of the next period, or of the one after when the
/// next starts in less than [`min_lead`].
pub fn choose_boundary(
    interval: Interval,
    kt: KeyType,
    tz: Tz,
    now: DateTime<Utc>,
) -> (NaiveDate, Key) {
    let today = key_day(KeyType::Timestamptz, tz, now.timestamp_micros());
    let mut start = next_period(interval, period_start(interval, today));
    let floor = now_key(kt, tz, now) + min_lead(interval).num_microseconds().unwrap_or(i64::MAX);
    for _ in 0..8 {
        let k = day_start_key(kt, tz, start);
        if k >= floor {
            return (start, k);
        }
        start = next_period(interval, start);
    }
    (start, day_start_key(kt, tz, start))
}

/// Picks the partition key: the given column, or the only date/time column.
pub fn pick_key(info: &TableInfo, given: Option<&str>) -> Result<(String, KeyType), Refusal> {
    let candidates: Vec<(&str, KeyType)> = info
        .columns
        .iter()
        .filter_map(|c| KeyType::from_sql(&c.type_name).map(|k| (c.name.as_str(), k)))
        .collect();
    if let Some(g) = given {
        return match info.column(g) {
            None => Err(Refusal {
                reason: format!("the table has no column {g:?}"),
                fix: "pass --key with one of its timestamptz, timestamp or date columns".into(),
            }),
            Some(c) => match KeyType::from_sql(&c.type_name) {
                Some(k) => Ok((g.to_string(), k)),
                None => Err(Refusal {
                    reason: format!("column {g:?} is of type {}", c.type_name),
                    fix: "partition keys must be timestamptz, timestamp or date; pass --key with such a column".into(),
                }),
            },
        };
    }
    match candidates.as_slice() {
        [(name, kt)] => Ok((name.to_string(), *kt)),
        [] => Err(Refusal {
            reason: "the table has no timestamptz, timestamp or date column to partition on".into(),
            fix: "add one (and fill it), then convert".into(),
        }),
        many => Err(Refusal {
            reason: format!(
                "several columns could be the partition key: {}",
                many.iter().map(|c| c.0).collect::<Vec<_>>().join(", ")
            ),
            fix: "pass --key COLUMN".into(),
        }),
    }
}

/// Builds the plan for `info` at `now`. Refusals are returned alongside: a
/// plan with refusals is shown but never started.
pub fn build(
    tcfg: &TableConfig,
    info: &TableInfo,
    key: &str,
    kt: KeyType,
    now: DateTime<Utc>,
) -> (ConvertPlan, Vec<Refusal>) {
    let tz = tcfg.timezone;
    let (start, boundary) = choose_boundary(tcfg.interval, kt, tz, now);
    let table = &tcfg.table;
    let first_partition = partition_name(
        &table.name,
        &format!("_before{}", suffix(tcfg.interval, start)),
    );
    let mut plan = ConvertPlan {
        schema: table.schema.clone(),
        table: table.name.clone(),
        key: key.to_string(),
        key_type: info
            .column(key)
            .map(|c| c.type_name.clone())
            .unwrap_or_default(),
        interval: tcfg.interval,
        timezone: tz.name().to_string(),
        boundary,
        boundary_text: key_text(kt, tz, boundary),
        boundary_literal: key_literal(kt, tz, boundary),
        first_partition,
        unique_builds: Vec::new(),
        changes: Vec::new(),
        carried: Vec::new(),
        notes: Vec::new(),
    };
    let refusals = refusals(info, key);
    describe(&mut plan, info);
    (plan, refusals)
}

/// Fills `unique_builds`, `changes`, `carried` and `notes` from the table.
pub fn describe(plan: &mut ConvertPlan, info: &TableInfo) {
    let key = plan.key.clone();
    let with_key = |cols: &[String]| -> Vec<String> {
        let mut v = cols.to_vec();
        v.push(key.clone());
        v
    };
    plan.changes.clear();
    plan.carried.clear();
    plan.notes.clear();
    plan.unique_builds.clear();
    plan.changes.push(format!(
        "{} becomes partition {} FOR VALUES FROM (MINVALUE) TO ({}): every row stays where it is, none is copied",
        plan.name(),
        plan.first(),
        plan.boundary_text
    ));
    for c in &info.constraints {
        if !matches!(c.kind.as_str(), "p" | "u") {
            continue;
        }
        let cols = c.columns.clone().unwrap_or_default();
        if cols.contains(&key) {
            continue;
        }
        let what = if c.kind == "p" {
            "primary key"
        } else {
            "unique constraint"
        };
        plan.changes.push(format!(
            "{what} {} ({}) becomes ({}): a partitioned table's keys must include the partition key; \
             its unique index is built concurrently before the swap",
            c.name,
            cols.join(", "),
            with_key(&cols).join(", ")
        ));
        plan.unique_builds.push(UniqueBuild {
            replaces: c.name.clone(),
            kind: c.kind.clone(),
            columns: with_key(&cols),
            index: build_index_name(&c.name),
        });
    }
    for i in &info.indexes {
        if !i.unique || i.constraint.is_some() || i.name.starts_with(INDEX_PREFIX) {
            continue;
        }
        let cols = i.columns.clone().unwrap_or_default();
        if cols.contains(&key) {
            continue;
        }
        plan.changes.push(format!(
            "unique index {} ({}) becomes ({}), built concurrently before the swap",
            i.name,
            cols.join(", "),
            with_key(&cols).join(", ")
        ));
        plan.unique_builds.push(UniqueBuild {
            replaces: i.name.clone(),
            kind: "i".into(),
            columns: with_key(&cols),
            index: build_index_name(&i.name),
        });
    }
    for col in &info.columns {
        if col.identity.is_empty() {
            continue;
        }
        let seq = col.sequence.clone().unwrap_or_default();
        if info.server_version_num >= 170_000 {
            plan.carried.push(format!(
                "identity column {} (continues from the current value of {seq})",
                col.name
            ));
        } else {
            plan.changes.push(format!(
                "identity column {} ({}) becomes DEFAULT nextval('{seq}'), an owned sequence continuing \
                 from the current value: identity columns on partitioned tables need PostgreSQL 17",
                col.name,
                if col.identity == "a" { "GENERATED ALWAYS" } else { "GENERATED BY DEFAULT" }
            ));
        }
    }
    if let Some(c) = info.column(&key) {
        if !c.not_null {
            plan.changes.push(format!(
                "rows with {key} NULL are refused from the CHECK's addition on (no partition can hold them); \
                 if the application writes such rows, give them a value or do not convert"
            ));
        }
        if !c.not_null && plan.unique_builds.iter().any(|b| b.kind == "p") {
            plan.changes.push(format!(
                "column {key} becomes NOT NULL (the primary key includes it)"
            ));
        }
    }
    let carried_indexes = info
        .indexes
        .iter()
        .filter(|i| !i.name.starts_with(INDEX_PREFIX))
        .filter(|i| {
            !plan
                .unique_builds
                .iter()
                .any(|b| b.replaces == i.name || Some(&b.replaces) == i.constraint.as_ref())
        })
        .count();
    plan.changes.push(format!(
        "a DEFAULT partition {}.{} takes the rows no partition covers (keys beyond the premade periods, NULL keys \
         once the conversion is done), as the plain table accepted them; passes move them into their periods as \
         they make them. With a DEFAULT, retention detaches without CONCURRENTLY (a brief ACCESS EXCLUSIVE on the \
         parent, under lock_timeout)",
        plan.schema,
        plan.default_partition()
    ));
    if carried_indexes > 0 {
        plan.changes.push(format!(
            "the table's {carried_indexes} index(es) keep working as the first partition's, renamed as every \
             partition index is (the prefix {} swapped for {}); the parent's matching indexes take the \
             original names",
            plan.table, plan.first_partition
        ));
    }
    let count = |n: usize, what: &str| (n > 0).then(|| format!("{n} {what}"));
    let views: Vec<String> = info.views.iter().map(|v| v.quoted.clone()).collect();
    let fks = info.constraints.iter().filter(|c| c.kind == "f").count();
    let checks = info
        .constraints
        .iter()
        .filter(|c| c.kind == "c" && c.name != CHECK_NAME)
        .count();
    plan.carried.extend(
        [
            Some(format!("{} column(s) with their defaults, NOT NULL, storage and comments", info.columns.len())),
            count(checks, "CHECK constraint(s)"),
            count(fks, "foreign key(s) to other tables (no re-validation)"),
            count(info.triggers.len(), "trigger(s)"),
            count(info.policies.len(), "row-level security polic(ies)"),
            info.row_security.then(|| "row-level security enabled".to_string()),
            info.force_row_security.then(|| "row-level security forced".to_string()),
            count(info.grants.len(), "table privilege(s)"),
            Some(format!("owner {}", info.owner)),
            info.comment.as_ref().map(|_| "the table's comment".to_string()),
            count(
                info.publications.iter().filter(|p| p.listed).count(),
                "publication membership(s) (published through the root)",
            ),
            (info.replica_identity != "d").then(|| format!("replica identity {}", info.replica_identity)),
            count(
                info.columns.iter().filter(|c| c.stattarget >= 0).count(),
                "column statistics target(s)",
            ),
            (!views.is_empty()).then(|| {
                format!(
                    "view(s) {} recreated in the swap to read the new parent, with their owner and grants",
                    views.join(", ")
                )
            }),
        ]
        .into_iter()
        .flatten(),
    );
    plan.notes.push(format!(
        "the table is {} MB (~{} rows): the online steps read it {} time(s) without blocking writes \
         ({} unique index build(s) twice each, the CHECK validation once); no row is copied",
        info.table_bytes >> 20,
        info.rows_estimate.max(0.0) as u64,
        1 + 2 * plan.unique_builds.len(),
        plan.unique_builds.len()
    ));
    if !info.reloptions.is_empty() {
        plan.notes.push(format!(
            "storage options ({}) stay on the first partition: a partitioned table has none",
            info.reloptions.join(", ")
        ));
    }
    plan.notes.push(format!(
        "until the swap commits, a CHECK refuses rows with {key} >= {b}; the boundary leaves at least {} for the \
         conversion, and past {} minutes before it the conversion undoes itself. If pgsteward is killed before \
         the swap, run `pgsteward convert resume` or `abort` before {b}",
        human(min_lead(plan.interval)),
        SWAP_GUARD.as_secs() / 60,
        b = plan.boundary_text
    ));
    plan.notes.push(
        "the swap is the point of no return: after it, `abort` is refused and `resume` finishes the conversion".into(),
    );
}

fn human(d: ChronoDuration) -> String {
    if d.num_days() >= 1 {
        format!("{} days", d.num_days())
    } else {
        format!("{} hours", d.num_hours())
    }
}

/// `pgsteward_cv_` + a stable hash of what it replaces: short, and the same on every run.
pub fn build_index_name(replaces: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in replaces.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{INDEX_PREFIX}{:08x}", h as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn boundary_is_next_period_unless_too_close() {
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 22, 0, 0).unwrap();
        let (d, _) = choose_boundary(Interval::Monthly, KeyType::Timestamptz, Tz::UTC, now);
        assert_eq!(d, NaiveDate::from_ymd_opt(2027, 1, 1).unwrap());
        let late = Utc.with_ymd_and_hms(2026, 12, 29, 0, 0, 0).unwrap();
        let (d, _) = choose_boundary(Interval::Monthly, KeyType::Timestamptz, Tz::UTC, late);
        assert_eq!(d, NaiveDate::from_ymd_opt(2027, 2, 1).unwrap());
        // Daily at 20:00: tomorrow is 4 h away (< 6 h), so the day after.
        let (d, _) = choose_boundary(Interval::Daily, KeyType::Timestamptz, Tz::UTC, now);
        assert_eq!(d, NaiveDate::from_ymd_opt(2026, 12, 3).unwrap());
        let morning = Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap();
        let (d, _) = choose_boundary(Interval::Daily, KeyType::Date, Tz::UTC, morning);
        assert_eq!(d, NaiveDate::from_ymd_opt(2026, 12, 2).unwrap());
    }

    #[test]
    fn build_index_names_are_stable_and_short() {
        assert_eq!(
            build_index_name("events_pkey"),
            build_index_name("events_pkey")
        );
        assert_ne!(
            build_index_name("events_pkey"),
            build_index_name("events_key")
        );
        assert!(build_index_name(&"x".repeat(200)).len() <= 63);
    }
}
