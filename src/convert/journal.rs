//! The conversion journal: a row per conversion in `pgsteward.conversions`,
//! in the database being converted.
//!
//! Why in the database and not in `state_dir` like the upgrade: a step's DDL
//! and the record that it happened commit in the same transaction (the CHECK,
//! its validation, the swap), so after a crash the journal can never say a
//! step happened that did not, or miss one that did. The two steps that cannot
//! run in a transaction (`CREATE INDEX CONCURRENTLY`) are recorded right
//! after, and observed on resume (is the index there and valid?). Any host
//! that reaches the database sees the same journal, and the partial unique
//! index allows one active conversion per table.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::GenericClient;

use super::plan::ConvertPlan;
use super::{sql, ConvertError};
use crate::pg::QualifiedName;

/// The steps, in order; the journal's `step` is the last one completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Prepared,
    UniqueIndexes,
    CheckAdded,
    CheckValidated,
    /// The point of no return.
    Swapped,
    PartitionsMade,
}

impl Step {
    pub const ALL: [Step; 6] = [
        Step::Prepared,
        Step::UniqueIndexes,
        Step::CheckAdded,
        Step::CheckValidated,
        Step::Swapped,
        Step::PartitionsMade,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Prepared => "prepared",
            Step::UniqueIndexes => "unique_indexes",
            Step::CheckAdded => "check_added",
            Step::CheckValidated => "check_validated",
            Step::Swapped => "swapped",
            Step::PartitionsMade => "partitions_made",
        }
    }
    pub fn parse(s: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub id: i64,
    pub state: String,
    pub step: Step,
    pub plan: ConvertPlan,
    pub events: serde_json::Value,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Brings the `pgsteward` schema, the journal table with it, to this
/// binary's version (`schema`: migration 3; safe with two first runs at
/// once, refuses a newer schema).
pub async fn ensure(client: &tokio_postgres::Client, target: &str) -> Result<(), ConvertError> {
    crate::schema::ensure(client, target).await?;
    Ok(())
}

/// Whether the journal may be written: `Some(refusal)` while a publication
/// publishes `pgsteward.conversions` to subscribers not declared to have it
/// (`schema::published`); asked by `plan` and by `start` before [`ensure`],
/// so a refused conversion writes nothing.
pub async fn published(
    client: &tokio_postgres::Client,
    database: &crate::config::DatabaseConfig,
    server_version_num: Option<i32>,
) -> Result<Option<super::plan::Refusal>, ConvertError> {
    match crate::schema::published::check(
        client,
        server_version_num,
        &database.subscribers_have_pgsteward_schema,
        crate::schema::published::Writer::Convert,
        &database.primary.to_string(),
    )
    .await
    {
        Ok(()) => Ok(None),
        Err(crate::schema::SchemaError::Published { reason, fix, .. }) => {
            Ok(Some(super::plan::Refusal { reason, fix }))
        }
        Err(e) => Err(e.into()),
    }
}

async fn exists(client: &impl GenericClient) -> Result<bool, ConvertError> {
    let row = client
        .query_one(sql::JOURNAL_EXISTS, &[])
        .await
        .map_err(|e| ConvertError::query("look for the journal", e))?;
    Ok(row.get(0))
}

fn record(row: &tokio_postgres::Row) -> Result<Record, ConvertError> {
    let step: String = row.get(2);
    let plan: String = row.get(3);
    Ok(Record {
        id: row.get(0),
        state: row.get(1),
        step: Step::parse(&step)
            .ok_or_else(|| ConvertError::Catalog(format!("journal: unknown step {step:?}")))?,
        plan: serde_json::from_str(&plan)
            .map_err(|e| ConvertError::Catalog(format!("journal: plan unreadable: {e}")))?,
        events: row.get(4),
        started_at: row.get(5),
        updated_at: row.get(6),
    })
}

/// The active conversion of `table`, or else its latest one.
pub async fn latest(
    client: &impl GenericClient,
    table: &QualifiedName,
) -> Result<Option<Record>, ConvertError> {
    if !exists(client).await? {
        return Ok(None);
    }
    let row = client
        .query_opt(sql::JOURNAL_LATEST, &[&table.schema, &table.name])
        .await
        .map_err(|e| ConvertError::query("read the journal", e))?;
    row.as_ref().map(record).transpose()
}

/// Starts a conversion: its first entry, `prepared`.
pub async fn create(
    client: &impl GenericClient,
    plan: &ConvertPlan,
) -> Result<Record, ConvertError> {
    let plan_json = serde_json::to_value(plan).map_err(|e| ConvertError::Catalog(e.to_string()))?;
    let events = serde_json::json!([event(Step::Prepared, "done", None)]);
    let row = client
        .query_one(
            sql::JOURNAL_CREATED,
            &[&plan.schema, &plan.table, &plan_json, &events],
        )
        .await
        .map_err(|e| ConvertError::query("write the journal", e))?;
    record(&row)
}

fn event(step: Step, what: &str, detail: Option<&str>) -> serde_json::Value {
    serde_json::json!({ "at": Utc::now(), "step": step.as_str(), "event": what, "detail": detail })
}

/// Records that `step` completed; in the caller's transaction when it has one.
pub async fn advance(
    client: &impl GenericClient,
    id: i64,
    step: Step,
    detail: Option<&str>,
) -> Result<(), ConvertError> {
    let ev = serde_json::json!([event(step, "done", detail)]);
    client
        .execute(sql::JOURNAL_ADVANCED, &[&id, &step.as_str(), &ev])
        .await
        .map_err(|e| ConvertError::query("write the journal", e))?;
    Ok(())
}

/// Appends an event without changing the step (a failure, a retry).
pub async fn note(client: &impl GenericClient, id: i64, step: Step, what: &str, detail: &str) {
    let ev = serde_json::json!([event(step, what, Some(detail))]);
    if let Err(e) = client.execute(sql::JOURNAL_NOTED, &[&id, &ev]).await {
        tracing::warn!(error = %crate::pg::server_message(&e), "journal note not written");
    }
}

/// Ends a conversion: `done` or `aborted`.
pub async fn finish(client: &impl GenericClient, id: i64, state: &str) -> Result<(), ConvertError> {
    let ev = serde_json::json!([{ "at": Utc::now(), "event": state }]);
    client
        .execute(sql::JOURNAL_FINISHED, &[&id, &state, &ev])
        .await
        .map_err(|e| ConvertError::query("write the journal", e))?;
    Ok(())
}

/// Back to `prepared`, in the abort's transaction that dropped the CHECK.
pub async fn reset(client: &impl GenericClient, id: i64) -> Result<(), ConvertError> {
    client
        .execute(sql::JOURNAL_RESET, &[&id])
        .await
        .map_err(|e| ConvertError::query("write the journal", e))?;
    Ok(())
}
