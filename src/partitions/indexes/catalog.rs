//! Reading the indexes of managed parents and of their partitions: two
//! queries for all tables, whatever their number.

use crate::partitions::sql;
use std::collections::HashMap;

use tokio_postgres::Client;

use super::IndexError;
use crate::pg::QualifiedName;

/// An index of a partitioned parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentIndex {
    pub oid: i64,
    pub name: String,
    pub valid: bool,
    pub unique: bool,
    /// The primary key / unique / exclusion constraint it backs.
    pub constraint: Option<String>,
    /// The definition after `USING`; `None` when it could not be cut out.
    pub tail: Option<String>,
}

/// An index of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionIndex {
    pub oid: i64,
    pub name: String,
    pub valid: bool,
    pub unique: bool,
    /// The parent index it is attached to.
    pub attached_to: Option<i64>,
    pub tail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: QualifiedName,
    /// `r` plain table, `p` partitioned itself, `f` foreign.
    pub kind: String,
    pub detach_pending: bool,
    pub indexes: Vec<PartitionIndex>,
}

/// The indexes of one managed parent and of each of its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableIndexes {
    pub table: QualifiedName,
    pub oid: u32,
    pub parent: Vec<ParentIndex>,
    pub partitions: Vec<Partition>,
}

/// Reads every `(table, oid)` given, in that order. `declared[i]`: table
/// `i` has declared indexes (missing entries count as true). The partitions
/// of a table with no index and none declared are read only for invalid
/// indexes (all the drift check can find there), which keeps a no-op pass
/// over thousands of unindexed partitions cheap.
pub async fn read(
    client: &Client,
    tables: &[(QualifiedName, u32)],
    declared: &[bool],
) -> Result<Vec<TableIndexes>, IndexError> {
    let oids: Vec<i64> = tables.iter().map(|t| i64::from(t.1)).collect();
    let mut out: Vec<TableIndexes> = tables
        .iter()
        .map(|(t, oid)| TableIndexes {
            table: t.clone(),
            oid: *oid,
            parent: Vec::new(),
            partitions: Vec::new(),
        })
        .collect();
    if oids.is_empty() {
        return Ok(out);
    }
    let at: HashMap<i64, usize> = oids.iter().enumerate().map(|(i, o)| (*o, i)).collect();
    let parents = client
        .query(sql::PARENT_INDEXES, &[&oids])
        .await
        .map_err(|e| IndexError::query("read the indexes of managed tables", e))?;
    for r in parents {
        let Some(&i) = at.get(&r.get::<_, i64>("parent")) else {
            continue;
        };
        out[i].parent.push(ParentIndex {
            oid: r.get("oid"),
            name: r.get("name"),
            valid: r.get("valid"),
            unique: r.get("is_unique"),
            constraint: r.get("constraint_name"),
            tail: r.get("tail"),
        });
    }
    // Tables whose partitions are read whole: indexed or declared ones.
    let whole = |i: usize| declared.get(i).copied().unwrap_or(true) || !out[i].parent.is_empty();
    let (mut full, mut bare) = (Vec::new(), Vec::new());
    for (i, oid) in oids.iter().enumerate() {
        if whole(i) {
            full.push(*oid);
        } else {
            bare.push(*oid);
        }
    }
    let mut children = Vec::new();
    for (sql, set) in [
        (sql::CHILD_INDEXES, full),
        (sql::CHILD_INVALID_INDEXES, bare),
    ] {
        if set.is_empty() {
            continue;
        }
        children.extend(
            client
                .query(sql, &[&set])
                .await
                .map_err(|e| IndexError::query("read the indexes of partitions", e))?,
        );
    }
    for r in children {
        let Some(&i) = at.get(&r.get::<_, i64>("parent")) else {
            continue;
        };
        let name = QualifiedName::new(
            r.get::<_, String>("part_schema"),
            r.get::<_, String>("part_name"),
        );
        let parts = &mut out[i].partitions;
        if parts.last().map(|p| &p.name) != Some(&name) {
            parts.push(Partition {
                name,
                kind: r.get("part_kind"),
                detach_pending: r.get("detach_pending"),
                indexes: Vec::new(),
            });
        }
        let idx: Option<i64> = r.get("idx_oid");
        if let (Some(oid), Some(p)) = (idx, parts.last_mut()) {
            p.indexes.push(PartitionIndex {
                oid,
                name: r.get("idx_name"),
                valid: r.get("idx_valid"),
                unique: r.get("idx_unique"),
                attached_to: r.get("attached_to"),
                tail: r.get("tail"),
            });
        }
    }
    Ok(out)
}
