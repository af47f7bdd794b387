//! `pgsteward capacity` against real servers (the shared PostgreSQL, moto for
//! RDS and CloudWatch), logged in as the least-privilege steward. History the
//! tests cannot wait for (days of samples) is written into
//! `pgsteward.capacity_samples` by the superuser, as earlier runs would have.

mod cli;
mod rds;
mod schema;
mod service;

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::harness::{must, pgsteward, shared, text, write_config};

/// `pgsteward capacity --output json` with `args`: exit code and report.
pub fn capacity_json(config: &Path, args: &[&str]) -> (i32, Value) {
    let out = pgsteward()
        .arg("--config")
        .arg(config)
        .args(["capacity", "--output", "json"])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", crate::moto::KEY)
        .env("AWS_SECRET_ACCESS_KEY", crate::moto::KEY)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("capacity --output json is not JSON ({e}): {}", text(&out)));
    (out.status.code().unwrap_or(-1), report)
}

/// A config for `db` on the shared server as the steward, `extra` appended.
pub fn config(dir: &Path, db: &str, extra: &str) -> PathBuf {
    write_config(
        dir,
        &format!(
            "[database]\nprimary = {:?}\nconnect_timeout = \"5s\"\n\n{extra}\n",
            crate::harness::steward_url(shared(), db)
        ),
    )
}

/// Writes samples `(kind, subject, days ago, value)` as earlier runs would have.
pub fn seed(db: &str, samples: &[(&str, &str, f64, f64)]) {
    let values: Vec<String> = samples
        .iter()
        .map(|(k, s, ago, v)| {
            format!(
                "('{k}', {}, now() - interval '{} seconds', {v})",
                pgsteward::pg::quote_literal(s),
                (ago * 86_400.0) as i64
            )
        })
        .collect();
    must(shared().psql(
        db,
        &format!(
            "INSERT INTO pgsteward.capacity_samples (kind, subject, taken_at, value) VALUES {} ON CONFLICT DO NOTHING",
            values.join(", ")
        ),
    ));
}

/// The database name of a `fresh_db` URL.
pub fn db_name(url: &str) -> String {
    url.rsplit('/')
        .next()
        .unwrap_or_default()
        .split('?')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The element of a report array whose `key` is `value`.
pub fn find<'a>(report: &'a Value, array: &str, key: &str, value: &str) -> &'a Value {
    report[array]
        .as_array()
        .and_then(|a| a.iter().find(|e| e[key] == value))
        .unwrap_or_else(|| panic!("no {array} entry with {key} = {value}: {report:#}"))
}
