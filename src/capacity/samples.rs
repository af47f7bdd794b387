//! Samples of this run recorded in `pgsteward.capacity_samples` (on the
//! primary: the service and the CronJob keep no state), and the history read
//! back. Kinds are a fixed vocabulary; subjects are names.

use std::collections::HashMap;

use tokio_postgres::Client;

use super::forecast::Point;
use super::model::Observation;
use super::sql;
use super::CapacityError;

pub const DATABASE_BYTES: &str = "database_bytes";
pub const TABLE_BYTES: &str = "table_bytes";
pub const STORAGE_USED: &str = "storage_used_bytes";
pub const NEXT_XID: &str = "next_xid";
pub const NEXT_MXID: &str = "next_mxid";
pub const SEQUENCE_VALUE: &str = "sequence_value";
pub const CONNECTIONS: &str = "connections";

/// One run's samples as (kind, subject, value).
pub fn of(obs: &Observation) -> Vec<(&'static str, String, f64)> {
    let mut out = vec![
        (NEXT_XID, String::new(), obs.next_xid as f64),
        (CONNECTIONS, String::new(), obs.client_connections as f64),
    ];
    if let Some(m) = obs.next_mxid {
        out.push((NEXT_MXID, String::new(), m as f64));
    }
    if let Some(u) = obs.storage_used() {
        out.push((STORAGE_USED, String::new(), u as f64));
    }
    for d in &obs.databases {
        if let Some(b) = d.bytes {
            out.push((DATABASE_BYTES, d.name.clone(), b as f64));
        }
    }
    for t in &obs.partitioned {
        let b: i64 = t.partitions.iter().map(|p| p.bytes).sum();
        out.push((TABLE_BYTES, t.table.to_string(), b as f64));
    }
    for (name, b) in &obs.plain {
        out.push((TABLE_BYTES, name.clone(), *b as f64));
    }
    for s in &obs.sequences {
        if let Some(v) = s.last_value {
            out.push((SEQUENCE_VALUE, s.name.clone(), v as f64));
        }
    }
    out
}

/// Records this run's samples and prunes old ones, in one transaction.
pub async fn record(client: &mut Client, obs: &Observation) -> Result<(), CapacityError> {
    let q = |what| move |source| CapacityError::Query { what, source };
    let samples = of(obs);
    let kinds: Vec<&str> = samples.iter().map(|s| s.0).collect();
    let subjects: Vec<&str> = samples.iter().map(|s| s.1.as_str()).collect();
    let values: Vec<f64> = samples.iter().map(|s| s.2).collect();
    let tx = client
        .transaction()
        .await
        .map_err(q("begin recording samples"))?;
    tx.execute(sql::RECORD, &[&obs.taken_at, &kinds, &subjects, &values])
        .await
        .map_err(q("record samples"))?;
    tx.execute(sql::PRUNE, &[])
        .await
        .map_err(q("prune old samples"))?;
    tx.commit().await.map_err(q("commit samples"))?;
    Ok(())
}

/// Per (kind, subject): the daily last values and the daily peaks.
#[derive(Debug, Default)]
pub struct History {
    pub last: HashMap<(String, String), Vec<Point>>,
    pub peak: HashMap<(String, String), Vec<Point>>,
}

impl History {
    pub fn last(&self, kind: &str, subject: &str) -> &[Point] {
        self.last
            .get(&(kind.to_string(), subject.to_string()))
            .map_or(&[], Vec::as_slice)
    }
    pub fn peak(&self, kind: &str, subject: &str) -> &[Point] {
        self.peak
            .get(&(kind.to_string(), subject.to_string()))
            .map_or(&[], Vec::as_slice)
    }

    /// Adds this run's observation when it could not be recorded, so the
    /// forecast still sees today.
    pub fn add_run(&mut self, obs: &Observation) {
        let t = obs.taken_at / super::forecast::DAY_SECONDS;
        for (kind, subject, v) in of(obs) {
            let key = (kind.to_string(), subject);
            self.last
                .entry(key.clone())
                .or_default()
                .push(Point { t, v });
            self.peak.entry(key).or_default().push(Point { t, v });
        }
    }
}

/// Whether the sample table exists (read without migrating the schema).
pub async fn exist(client: &Client) -> Result<bool, CapacityError> {
    Ok(client
        .query_one(sql::SAMPLES_EXIST, &[])
        .await
        .map_err(|source| CapacityError::Query {
            what: "look for the sample table",
            source,
        })?
        .get(0))
}

pub async fn history(client: &Client) -> Result<History, CapacityError> {
    let rows = client
        .query(sql::HISTORY, &[])
        .await
        .map_err(|source| CapacityError::Query {
            what: "read the sample history",
            source,
        })?;
    let mut h = History::default();
    for r in rows {
        let key = (r.get::<_, String>(0), r.get::<_, String>(1));
        let t: f64 = r.get(2);
        h.last
            .entry(key.clone())
            .or_default()
            .push(Point { t, v: r.get(3) });
        h.peak
            .entry(key)
            .or_default()
            .push(Point { t, v: r.get(4) });
    }
    Ok(h)
}
