//! Partition maintenance against a real PostgreSQL server: one test per rule
//! of the issue, each in a database of its own (`harness::fresh_db`).

use std::time::{Duration, Instant};

use chrono::{Datelike, Utc};
use pgsteward::config::{self, Cluster};
use pgsteward::partitions::{self, PassReport};
use tokio_util::sync::CancellationToken;

use crate::harness::{self, connect, fresh_db, must, pgsteward, query, write_config};

mod access;
mod bounds;
mod cli;
mod creation;
pub(crate) mod large_default;
mod locking;
mod logical;
mod predicts;
mod retention;
mod standby;

/// A config for `url` with the given `[[partitions.tables]]` blocks.
pub(crate) fn config(url: &str, extra: &str, tables: &str) -> Cluster {
    let toml = config_toml(url, extra, tables);
    must(config::from_figment(
        figment::Figment::new()
            .merge(<figment::providers::Toml as figment::providers::Format>::string(&toml)),
        None,
    ))
    .cluster
}

pub(crate) fn config_toml(url: &str, extra: &str, tables: &str) -> String {
    let lock_timeout = if extra.contains("lock_timeout") {
        ""
    } else {
        "lock_timeout = \"200ms\"\n"
    };
    let url = as_steward(url);
    format!("[database]\nprimary = \"{url}\"\n\n[partitions]\n{lock_timeout}{extra}\n{tables}")
}

/// What every pgsteward config a test writes names (the steward), and who
/// owns the application's tables (`app_owner`).
pub(crate) use crate::harness::{as_owner, as_steward};

/// `url` logging in as the superuser: fixtures only (roles, subscriptions).
pub(crate) fn as_super(url: &str) -> String {
    harness::with_password(url, harness::SUPER_USER, harness::SUPER_PASSWORD)
}

/// Runs SQL (several statements allowed) as the application's owner, as a
/// migration would, and fails with the server's message.
pub(crate) async fn exec(url: &str, sql: &str) {
    exec_as(&as_owner(url), sql).await
}

/// Runs SQL as the superuser: roles and other fixtures `app_owner` cannot make.
pub(crate) async fn exec_super(url: &str, sql: &str) {
    exec_as(&as_super(url), sql).await
}

async fn exec_as(url: &str, sql: &str) {
    let client = connect(url).await;
    if let Err(e) = client.batch_execute(sql).await {
        panic!("{sql}: {}", pgsteward::pg::server_message(&e));
    }
}

fn db_name(url: &str) -> String {
    let tail = url.rsplit('/').next().unwrap();
    tail.split('?').next().unwrap().to_string()
}

pub(crate) fn table(name: &str, rest: &str) -> String {
    format!("[[partitions.tables]]\ntable = '{name}'\n{rest}\n")
}

pub(crate) async fn pass(cfg: &Cluster) -> PassReport {
    must(partitions::run_pass(cfg, &CancellationToken::new()).await)
}

/// Child partitions of `parent` (a regclass literal) with their bounds, in a UTC session.
pub(crate) async fn partitions_of(url: &str, parent: &str) -> Vec<(String, String)> {
    let client = connect(url).await;
    client.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    client
        .query(
            "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i \
             JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = $1::text::regclass ORDER BY 1",
            &[&parent],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

pub(crate) fn month_name(base: &str, months_from_now: i32) -> String {
    let now = Utc::now().date_naive();
    let total = now.year() * 12 + now.month0() as i32 + months_from_now;
    format!(
        "{base}_{:04}_{:02}",
        total.div_euclid(12),
        total.rem_euclid(12) + 1
    )
}

/// First day of the month `months_from_now` away, as `YYYY-MM-01`.
pub(crate) fn month_start(months_from_now: i32) -> String {
    let now = Utc::now().date_naive();
    let total = now.year() * 12 + now.month0() as i32 + months_from_now;
    format!(
        "{:04}-{:02}-01",
        total.div_euclid(12),
        total.rem_euclid(12) + 1
    )
}

pub(crate) const EVENTS: &str = "CREATE TABLE events (id bigint GENERATED ALWAYS AS IDENTITY, \
    created_at timestamptz NOT NULL, payload text) PARTITION BY RANGE (created_at)";
