//! Reads one observation from the primary: a handful of catalog queries,
//! none of which waits behind DDL (see `sql/capacity_partitions.sql`).

use std::collections::HashMap;

use tokio_postgres::Client;

use super::model::{
    DatabaseFacts, Observation, OldTable, PartitionSize, PartitionedTable, SequenceFacts, Settings,
};
use super::sizing::{
    estimate_from_rows, sizing_order, Candidate, Sized, EXACT_SIZE_BUDGET, EXACT_SIZE_CHUNK,
};
use super::sql;
use super::CapacityError;
use crate::partitions::catalog::{parse_bound, parse_bound_node};
use crate::partitions::model::{KeyType, KEY_MAX, KEY_MIN};
use crate::pg::QualifiedName;

/// What to read besides the cluster-wide facts.
pub struct Wanted<'a> {
    pub managed: &'a [QualifiedName],
    pub large_table_min: i64,
    pub large_table_count: i64,
    /// Key value of now per managed table (its key space and zone): a
    /// partition whose range ends after it, or recently (within a period),
    /// is sized exactly, since its statistics lag its writes.
    pub fresh_after_key: &'a [i64],
}

fn q(what: &'static str) -> impl Fn(tokio_postgres::Error) -> CapacityError {
    move |source| CapacityError::Query { what, source }
}

pub async fn observe(client: &Client, want: &Wanted<'_>) -> Result<Observation, CapacityError> {
    client
        .batch_execute(sql::SESSION_SETUP)
        .await
        .map_err(q("set up the session"))?;
    let c = client
        .query_one(sql::CLUSTER, &[])
        .await
        .map_err(q("read the cluster's settings"))?;
    let mut obs = Observation {
        taken_at: c.get("taken_at"),
        database: c.get("database"),
        in_recovery: c.get("in_recovery"),
        settings: Settings {
            server_version_num: c.get("server_version_num"),
            max_connections: c.get("max_connections"),
            superuser_reserved_connections: c.get("superuser_reserved"),
            reserved_connections: c.get("reserved"),
            autovacuum_freeze_max_age: c.get("freeze_max_age"),
            autovacuum_multixact_freeze_max_age: c.get("mxid_freeze_max_age"),
        },
        next_xid: c.get("next_xid"),
        next_mxid: c.get("next_mxid"),
        client_connections: c.get("client_connections"),
        wal_bytes: c.get("wal_bytes"),
        ..Observation::default()
    };
    obs.databases = client
        .query(sql::DATABASES, &[])
        .await
        .map_err(q("read the databases"))?
        .iter()
        .map(|r| DatabaseFacts {
            name: r.get("name"),
            bytes: r.get("bytes"),
            xid_age: r.get("xid_age"),
            mxid_age: r.get("mxid_age"),
        })
        .collect();
    obs.oldest_tables = client
        .query(sql::OLDEST_TABLES, &[])
        .await
        .map_err(q("read the oldest tables"))?
        .iter()
        .map(|r| OldTable {
            table: r.get("name"),
            xid_age: r.get("xid_age"),
        })
        .collect();
    obs.sequences = client
        .query(sql::SEQUENCES, &[])
        .await
        .map_err(q("read the sequences"))?
        .iter()
        .map(|r| SequenceFacts {
            name: r.get("name"),
            min_value: r.get("min_value"),
            max_value: r.get("max_value"),
            increment: r.get("increment_by"),
            cycle: r.get("cycle"),
            last_value: r.get("last_value"),
            readable: r.get("readable"),
            column: r.get("column_name"),
            column_type: r.get("column_type"),
        })
        .collect();
    let (partitioned, missing, method) = partitions(client, want).await?;
    obs.partitioned = partitioned;
    obs.missing_tables = missing;
    obs.size_method = method;
    obs.plain = match client
        .query(
            sql::PLAIN_TABLES,
            &[&want.large_table_min, &want.large_table_count],
        )
        .await
    {
        Ok(rows) => rows
            .iter()
            .map(|r| (r.get("name"), r.get("bytes")))
            .collect(),
        // A relation locked between the lock check and the size read: this
        // run has no plain-table sizes rather than waiting.
        Err(e) if crate::pg::is_transient_lock_error(&e) => Vec::new(),
        Err(e) => return Err(q("size the largest tables")(e)),
    };
    Ok(obs)
}

/// The managed tables' partitions: estimates for all, then exact sizes for
/// the partitions whose statistics cannot be trusted.
async fn partitions(
    client: &Client,
    want: &Wanted<'_>,
) -> Result<(Vec<PartitionedTable>, Vec<String>, String), CapacityError> {
    let schemas: Vec<&str> = want.managed.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = want.managed.iter().map(|t| t.name.as_str()).collect();
    let rows = client
        .query(sql::PARTITIONS, &[&schemas, &names])
        .await
        .map_err(q("read the managed tables' partitions"))?;
    let mut tables: Vec<Option<PartitionedTable>> = vec![None; want.managed.len()];
    let mut oids: Vec<Vec<i64>> = vec![Vec::new(); want.managed.len()];
    let mut unparsed: Vec<(usize, usize, i64)> = Vec::new();
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut live: Vec<Vec<(i64, bool)>> = vec![Vec::new(); want.managed.len()];
    for r in &rows {
        let ord: i64 = r.get("ord");
        let i = (ord - 1) as usize;
        let Some(name) = want.managed.get(i) else {
            continue;
        };
        let key_type = KeyType::from_sql(r.get::<_, Option<&str>>("key_type").unwrap_or(""));
        let Some(key_type) = key_type else { continue };
        let t = tables[i].get_or_insert_with(|| PartitionedTable {
            table: name.clone(),
            key_type,
            partitions: Vec::new(),
        });
        let oid: i64 = r.get("oid");
        let is_default: bool = r.get("is_default");
        let bound: Option<String> = r.get("bound");
        let range = if is_default {
            None
        } else {
            bound.as_deref().and_then(|b| parse_bound_node(key_type, b))
        };
        if range.is_none() && !is_default {
            unparsed.push((i, t.partitions.len(), oid));
        }
        let stats_known: bool = r.get("stats_known");
        let fresh = want.fresh_after_key.get(i).copied().unwrap_or(KEY_MIN);
        let required = is_default || range.map_or(true, |rg| rg.hi > fresh);
        if !stats_known || required {
            candidates.push(Candidate {
                oid: oid as u32,
                required,
                hi: range.map_or(KEY_MAX, |rg| rg.hi),
            });
        }
        live[i].push((r.get("live_tuples"), stats_known));
        t.partitions.push(PartitionSize {
            name: r.get("name"),
            range,
            bytes: r.get("est_bytes"),
            estimated: true,
        });
        oids[i].push(oid);
    }
    if !unparsed.is_empty() {
        let ids: Vec<i64> = unparsed.iter().map(|u| u.2).collect();
        let exprs = client
            .query(sql::BOUND_EXPRS, &[&ids])
            .await
            .map_err(q("read partition bounds"))?;
        let by_oid: HashMap<i64, String> = exprs
            .iter()
            .filter_map(|r| Some((r.get(0), r.get::<_, Option<String>>(1)?)))
            .collect();
        for (i, p, oid) in unparsed {
            if let (Some(e), Some(Some(t))) = (by_oid.get(&oid), tables.get_mut(i)) {
                let kt = t.key_type;
                if let Some(part) = t.partitions.get_mut(p) {
                    part.range = parse_bound(kt, e).filter(|r| r.lo != KEY_MAX);
                }
            }
        }
    }
    let required = candidates.iter().filter(|c| c.required).count();
    let order = sizing_order(candidates);
    let (sizes, method) = exact_sizes(client, &order, required).await?;
    let mut from_rows = 0usize;
    for ((t, ids), live) in tables.iter_mut().zip(&oids).zip(&live) {
        let Some(t) = t else { continue };
        for (p, oid) in t.partitions.iter_mut().zip(ids) {
            if let Some(b) = sizes.get(oid) {
                p.bytes = *b;
                p.estimated = false;
            }
        }
        // Never analysed and not reached within the budget: its live rows
        // at the table's measured bytes per row.
        let view: Vec<Sized> = t
            .partitions
            .iter()
            .zip(ids)
            .zip(live)
            .map(|((p, oid), &(live_tuples, stats_known))| Sized {
                bytes: p.bytes,
                live_tuples,
                trusted: stats_known || sizes.contains_key(oid),
            })
            .collect();
        for (p, est) in t.partitions.iter_mut().zip(estimate_from_rows(&view)) {
            if let Some(b) = est {
                p.bytes = b;
                from_rows += 1;
            }
        }
    }
    let method = if from_rows > 0 {
        format!("{method}; {from_rows} never-analysed partitions estimated from their live rows (the time budget for exact sizes was spent; ANALYZE them for exact history)")
    } else {
        method
    };
    let mut missing = Vec::new();
    let found = tables
        .into_iter()
        .zip(want.managed)
        .filter_map(|(t, name)| {
            if t.is_none() {
                missing.push(name.to_string());
            }
            t
        })
        .collect();
    Ok((found, missing, method))
}

/// Exact sizes of `order` (the first `required` always, the rest until
/// [`EXACT_SIZE_BUDGET`] is spent), and the words for how sizes were read.
async fn exact_sizes(
    client: &Client,
    order: &[u32],
    required: usize,
) -> Result<(HashMap<i64, i64>, String), CapacityError> {
    let started = std::time::Instant::now();
    let mut sizes: HashMap<i64, i64> = HashMap::new();
    let mut at = 0;
    while at < order.len() {
        let past_required = at >= required;
        if past_required && started.elapsed() >= EXACT_SIZE_BUDGET {
            break;
        }
        // The required ones in one statement; the rest in chunks.
        let end = if past_required {
            (at + EXACT_SIZE_CHUNK).min(order.len())
        } else {
            required
        };
        let chunk = &order[at..end];
        at = end;
        match client.query(sql::EXACT_SIZES, &[&chunk]).await {
            Ok(rows) => sizes.extend(
                rows.iter()
                    .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1))),
            ),
            Err(e) if crate::pg::is_transient_lock_error(&e) => {
                return Ok((
                    sizes,
                    "partitions sized from relpages where a lock held by DDL was met".to_string(),
                ))
            }
            Err(e) => return Err(q("size the open partitions")(e)),
        }
    }
    let method = format!(
        "{} partitions sized exactly (open, recent or never analysed), the rest from relpages",
        sizes.len()
    );
    Ok((sizes, method))
}
