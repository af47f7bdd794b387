//! Reading the catalog: one query for every managed table (no per-table round
//! trips, so a pass with nothing to do stays fast at thousands of tables).

use serde::Deserialize;
use tokio_postgres::Client;

use super::plan::{
    parse_bound, parse_bound_node, Action, DefaultPartition, DetachHow, ExistingPartition, Grant,
    KeyType, TablePlan, TableState,
};
use super::PartitionError;
use crate::pg::QualifiedName;

const CATALOG_SQL: &str = include_str!("../../sql/partitions_catalog.sql");
const BOUND_EXPRS_SQL: &str = include_str!("../../sql/partitions_bound_exprs.sql");

/// What the catalog says about one configured table: its state, or why it
/// cannot be managed (the operator's fix is in the message).
pub type TableLookup = Result<TableState, String>;

pub struct Catalog {
    pub in_recovery: bool,
    /// The role DDL runs as: new partitions change owner only when it differs.
    pub current_user: String,
    /// In the order of the request.
    pub tables: Vec<(QualifiedName, TableLookup)>,
    /// `server_version_num`: what the server can do (13 has no DETACH CONCURRENTLY).
    pub server_version_num: i32,
}

/// The first major with `DETACH PARTITION ... CONCURRENTLY`.
const CONCURRENT_DETACH_VERSION: i32 = 140000;

/// The plan as a server of `server_version_num` can run it: before 14
/// retention detaches plainly (ACCESS EXCLUSIVE on the parent for a moment,
/// under `lock_timeout` and retried like every statement of the pass).
pub fn fit(server_version_num: i32, mut plan: TablePlan) -> TablePlan {
    if server_version_num < CONCURRENT_DETACH_VERSION {
        for action in &mut plan.actions {
            if let Action::Retire { how, .. } = action {
                if *how == DetachHow::Concurrently {
                    *how = DetachHow::Plain;
                }
            }
        }
    }
    plan
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
    let mut server_version_num = 0;
    let mut out = Vec::with_capacity(tables.len());
    // (table, partition) positions whose bound node text was not understood.
    let mut unparsed: Vec<(usize, usize, i64)> = Vec::new();
    for (t, (row, table)) in rows.iter().zip(tables).enumerate() {
        in_recovery = row.get("in_recovery");
        current_user = row.get("current_user_name");
        server_version_num = row.get("server_version_num");
        let (lookup, missing) = table_state(table, row);
        unparsed.extend(missing.into_iter().map(|(p, oid)| (t, p, oid)));
        out.push((table.clone(), lookup));
    }
    if !unparsed.is_empty() {
        let oids: Vec<i64> = unparsed.iter().map(|u| u.2).collect();
        let exprs = client
            .query(BOUND_EXPRS_SQL, &[&oids])
            .await
            .map_err(|e| PartitionError::query("read partition bounds", e))?;
        let by_oid: std::collections::HashMap<i64, String> = exprs
            .iter()
            .filter_map(|r| Some((r.get(0), r.get::<_, Option<String>>(1)?)))
            .collect();
        for (t, p, oid) in unparsed {
            if let (Some(expr), Some((_, Ok(state)))) = (by_oid.get(&oid), out.get_mut(t)) {
                let kt = state.key_type;
                if let Some(part) = state.partitions.get_mut(p) {
                    part.range = parse_bound(kt, expr);
                }
            }
        }
    }
    // Deterministic order for plans, notes and output.
    for (_, lookup) in out.iter_mut() {
        if let Ok(state) = lookup {
            state.partitions.sort_by(|a, b| a.name.cmp(&b.name));
        }
    }
    if rows.is_empty() {
        // No tables configured: still learn whether this is a replica.
        let r = client
            .query_one(
                "SELECT pg_is_in_recovery(), current_user::text, \
                 current_setting('server_version_num')::int4",
                &[],
            )
            .await
            .map_err(|e| PartitionError::query("read the catalog", e))?;
        in_recovery = r.get(0);
        current_user = r.get(1);
        server_version_num = r.get(2);
    }
    if server_version_num < crate::localpg::MIN_MAJOR as i32 * 10000 {
        return Err(PartitionError::Unsupported {
            version: server_version_num,
        });
    }
    Ok(Catalog {
        in_recovery,
        current_user,
        tables: out,
        server_version_num,
    })
}

/// The table's state, plus `(partition index, oid)` of bounds to read with pg_get_expr.
fn table_state(
    table: &QualifiedName,
    row: &tokio_postgres::Row,
) -> (TableLookup, Vec<(usize, i64)>) {
    let mut missing = Vec::new();
    let state = table_state_inner(table, row, &mut missing);
    (state, missing)
}

fn table_state_inner(
    table: &QualifiedName,
    row: &tokio_postgres::Row,
    missing: &mut Vec<(usize, i64)>,
) -> TableLookup {
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
    let names: Vec<String> = row
        .get::<_, Option<Vec<String>>>("names")
        .unwrap_or_default();
    let schemas: Vec<String> = row
        .get::<_, Option<Vec<String>>>("schemas")
        .unwrap_or_default();
    let bounds: Vec<Option<String>> = row
        .get::<_, Option<Vec<Option<String>>>>("bounds")
        .unwrap_or_default();
    let oids: Vec<i64> = row.get::<_, Option<Vec<i64>>>("oids").unwrap_or_default();
    let pending: Vec<bool> = row
        .get::<_, Option<Vec<bool>>>("pending")
        .unwrap_or_default();
    let fk: Vec<bool> = row.get::<_, Option<Vec<bool>>>("fk").unwrap_or_default();
    let mut partitions = Vec::with_capacity(names.len());
    for (i, name) in names.into_iter().enumerate() {
        let range = bounds
            .get(i)
            .and_then(|b| b.as_deref())
            .and_then(|b| parse_bound_node(key_type, b));
        partitions.push(ExistingPartition {
            name: QualifiedName::new(schemas.get(i).cloned().unwrap_or_default(), name),
            range,
            detach_pending: pending.get(i).copied().unwrap_or(false),
            fk_referenced: fk.get(i).copied().unwrap_or(false),
        });
    }
    for (i, p) in partitions.iter().enumerate() {
        if p.range.is_none() {
            missing.push((i, oids.get(i).copied().unwrap_or(0)));
        }
    }
    let default_name: Option<String> = row.get("default_name");
    let default = default_name.map(|name| DefaultPartition {
        name: QualifiedName::new(
            row.get::<_, Option<String>>("default_schema")
                .unwrap_or_default(),
            name,
        ),
        // -1 until the first ANALYZE: reported as 0; `status` counts exactly.
        rows_estimate: row
            .get::<_, Option<f64>>("default_reltuples")
            .unwrap_or(0.0)
            .max(0.0) as u64,
        pgsteward_checks: row
            .get::<_, Option<Vec<String>>>("default_checks")
            .unwrap_or_default(),
    });
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
