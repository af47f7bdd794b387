//! Reading the catalog: one query for every managed table (no per-table round
//! trips, so a pass with nothing to do stays fast at thousands of tables).

use serde::Deserialize;
use tokio_postgres::Client;

use super::plan::{parse_bound, DefaultPartition, ExistingPartition, Grant, KeyType, TableState};
use super::PartitionError;
use crate::pg::QualifiedName;

const CATALOG_SQL: &str = include_str!("../../sql/partitions_catalog.sql");

/// What the catalog says about one configured table: its state, or why it
/// cannot be managed (the operator's fix is in the message).
pub type TableLookup = Result<TableState, String>;

pub struct Catalog {
    pub in_recovery: bool,
    /// The role DDL runs as: new partitions change owner only when it differs.
    pub current_user: String,
    /// In the order of the request.
    pub tables: Vec<(QualifiedName, TableLookup)>,
}

#[derive(Deserialize)]
struct PartRow {
    schema: String,
    name: String,
    bound: Option<String>,
    is_default: Option<bool>,
    detach_pending: bool,
    fk_referenced: bool,
    reltuples: f64,
    checks: Option<Vec<String>>,
}

pub async fn read(client: &Client, tables: &[QualifiedName]) -> Result<Catalog, PartitionError> {
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let rows = client
        .query(CATALOG_SQL, &[&schemas, &names])
        .await
        .map_err(|e| PartitionError::query("read the catalog", e))?;
    let mut in_recovery = false;
    let mut current_user = String::new();
    let mut out = Vec::with_capacity(tables.len());
    for (row, table) in rows.iter().zip(tables) {
        in_recovery = row.get("in_recovery");
        current_user = row.get("current_user_name");
        out.push((table.clone(), table_state(table, row)));
    }
    if rows.is_empty() {
        // No tables configured: still learn whether this is a replica.
        let r = client
            .query_one("SELECT pg_is_in_recovery(), current_user::text", &[])
            .await
            .map_err(|e| PartitionError::query("read the catalog", e))?;
        in_recovery = r.get(0);
        current_user = r.get(1);
    }
    Ok(Catalog {
        in_recovery,
        current_user,
        tables: out,
    })
}

fn table_state(table: &QualifiedName, row: &tokio_postgres::Row) -> TableLookup {
    let oid: Option<i64> = row.get("oid");
    let Some(oid) = oid else {
        return Err(format!(
            "table {table} does not exist; create it PARTITION BY RANGE on a timestamptz, timestamp or date column, or remove it from partitions.tables"
        ));
    };
    let relkind: Option<String> = row.get("relkind");
    let strategy: Option<String> = row.get("strategy");
    if relkind.as_deref() != Some("p") {
        return Err(format!(
            "{table} is not a partitioned table; recreate it with PARTITION BY RANGE (column)"
        ));
    }
    if strategy.as_deref() != Some("r") {
        return Err(format!(
            "{table} is not partitioned BY RANGE; only range partitioning on one column is managed"
        ));
    }
    let key_count: Option<i32> = row.get("key_count");
    let key_column: Option<String> = row.get("key_column");
    let key_column = match (key_count, key_column) {
        (Some(1), Some(c)) => c,
        _ => {
            return Err(format!(
                "{table} is partitioned on more than one column or an expression; only one plain column is managed"
            ))
        }
    };
    let key_type_name: Option<String> = row.get("key_type");
    let key_type_name = key_type_name.unwrap_or_default();
    let Some(key_type) = KeyType::from_sql(&key_type_name) else {
        return Err(format!(
            "{table} is partitioned on {key_column:?} of type {key_type_name}; only timestamptz, timestamp and date keys are managed"
        ));
    };
    let grants: serde_json::Value = row.get("grants");
    let grants: Vec<Grant> = serde_json::from_value::<Vec<GrantRow>>(grants)
        .map_err(|e| format!("{table}: unexpected privileges in the catalog: {e}"))?
        .into_iter()
        .map(|g| Grant {
            grantee: g.grantee,
            privilege: g.privilege,
            grantable: g.grantable,
        })
        .collect();
    let parts: serde_json::Value = row.get("partitions");
    let parts: Vec<PartRow> = serde_json::from_value(parts)
        .map_err(|e| format!("{table}: unexpected partition list in the catalog: {e}"))?;
    let mut partitions = Vec::new();
    let mut default = None;
    for p in parts {
        let name = QualifiedName::new(p.schema, p.name);
        if p.is_default == Some(true) {
            default = Some(DefaultPartition {
                name,
                // -1 until the first ANALYZE: reported as 0, `status` counts exactly.
                rows_estimate: p.reltuples.max(0.0) as u64,
                pgsteward_checks: p.checks.unwrap_or_default(),
            });
            continue;
        }
        partitions.push(ExistingPartition {
            name,
            range: p.bound.as_deref().and_then(|b| parse_bound(key_type, b)),
            detach_pending: p.detach_pending,
            fk_referenced: p.fk_referenced,
        });
    }
    Ok(TableState {
        table: table.clone(),
        oid: oid as u32,
        key_column,
        key_type,
        owner: row.get("owner"),
        grants,
        partitions,
        default,
    })
}

#[derive(Deserialize)]
struct GrantRow {
    grantee: String,
    privilege: String,
    grantable: bool,
}
