//! Reading the catalog: one query for every managed table (no per-table round
//! trips, so a pass with nothing to do stays fast at thousands of tables).

use crate::partitions::sql;
use serde::Deserialize;
use tokio_postgres::Client;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Utc};

use super::error::{PartitionError, TableError};
use super::model::{
    Action, DefaultPartition, DetachHow, ExistingPartition, Grant, Key, KeyType, PartitionAccess,
    Range, TablePlan, TableState, KEY_MAX, KEY_MIN,
};
use crate::pg::QualifiedName;

/// What the catalog says about one configured table: its state, or why it
/// cannot be managed (the operator's fix is in the message).
pub type TableLookup = Result<TableState, TableError>;

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
        .query(sql::MANAGED_TABLES, &[&schemas, &names])
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
            .query(sql::BOUND_EXPRS, &[&oids])
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
            .query_one(sql::RECOVERY_USER_VERSION, &[])
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
        return Err(TableError::Missing(table.clone()));
    };
    let relkind: Option<String> = row.get("relkind");
    let strategy: Option<String> = row.get("strategy");
    if relkind.as_deref() != Some("p") {
        return Err(TableError::NotPartitioned(table.clone()));
    }
    if strategy.as_deref() != Some("r") {
        return Err(TableError::NotRange(table.clone()));
    }
    let key_count: Option<i32> = row.get("key_count");
    let key_column: Option<String> = row.get("key_column");
    let key_column = match (key_count, key_column) {
        (Some(1), Some(c)) => c,
        _ => return Err(TableError::NotOneColumn(table.clone())),
    };
    let key_type_name: Option<String> = row.get("key_type");
    let key_type_name = key_type_name.unwrap_or_default();
    let Some(key_type) = KeyType::from_sql(&key_type_name) else {
        return Err(TableError::KeyType {
            table: table.clone(),
            column: key_column,
            type_name: key_type_name,
        });
    };
    let grants: serde_json::Value = row.get("grants");
    let grants: Vec<Grant> = serde_json::from_value::<Vec<GrantRow>>(grants)
        .map_err(|e| TableError::Grants {
            table: table.clone(),
            message: e.to_string(),
        })?
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
    let access_drift: Vec<PartitionAccess> = match row.get::<_, Option<serde_json::Value>>("drift")
    {
        Some(v) => serde_json::from_value(v).map_err(|e| TableError::Grants {
            table: table.clone(),
            message: e.to_string(),
        })?,
        None => Vec::new(),
    };
    Ok(TableState {
        table: table.clone(),
        oid: oid as u32,
        key_column,
        key_type,
        owner: row.get("owner"),
        grants,
        partitions,
        default,
        row_security: row.get::<_, Option<bool>>("row_security").unwrap_or(false),
        force_row_security: row
            .get::<_, Option<bool>>("force_row_security")
            .unwrap_or(false),
        replica_identity: row
            .get::<_, Option<String>>("replica_identity")
            .unwrap_or_else(|| "d".into()),
        owner_can_create: row
            .get::<_, Option<bool>>("owner_can_create")
            .unwrap_or(true),
        access_drift,
    })
}

#[derive(Deserialize)]
struct GrantRow {
    grantee: String,
    privilege: String,
    grantable: bool,
}

// ---------------------------------------------------------------------------
// Decoding partition bounds

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

#[cfg(test)]
mod tests {
    use super::super::test_fixtures::*;
    use super::*;

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
}
