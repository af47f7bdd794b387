//! pgsteward keeps a PostgreSQL cluster in shape while it grows.
//!
//! The major components are:
//!
//! * `cli`: the command line (clap), parsing only.
//! * `config`: figment-loaded configuration with human units (`config::units`); rejects unknown keys.
//! * `error`: the top-level [`Error`], which knows its exit code and metric label.
//! * `pg`: connection strings (parsed and redacted like libpq parses them, `PG*` defaults and
//!   the password file), connecting with a deadline, identifier quoting.
//! * `localpg`: PostgreSQL clusters and PgBouncer on this host (local provider, demo, tests),
//!   scram-sha-256 on TCP, children with a minimal environment and passwords in private files.
//! * `partitions`: partition maintenance: `catalog` reads, `plan` decides (pure), `apply` executes lock-safe DDL; `indexes` builds declared indexes online and repairs index drift.
//! * `convert`: online conversion of a plain table into a partitioned one, without copying rows.
//! * `lag`: replica observations and a pure verdict per replica.
//! * `metrics`, `http`: the Prometheus registry and the `/metrics`, `/healthz`, `/readyz` endpoints.
//! * `service`: `pgsteward run`: cron scheduling, leadership, graceful shutdown.
//! * `upgrade`: the persisted, resumable vertical-upgrade saga; `provider` creates/promotes/retires servers.
//! * `pooler`: the PgBouncer admin console: PAUSE, RESUME, RELOAD and the `[databases]` rewrite.
//! * `check`: `pgsteward check`: configuration and reachability.
//! * `demo`: the whole cycle on a throwaway local cluster.
//! * `workload`: client load with a ledger of every acknowledged commit (the demo, the tests).
//! * `output`: text and JSON rendering for status-like commands.

pub mod check;
pub mod cli;
pub mod config;
pub mod convert;
pub mod demo;
pub mod error;
pub mod http;
pub mod lag;
pub mod localpg;
pub mod metrics;
pub mod output;
pub mod partitions;
pub mod pg;
pub mod pooler;
pub mod provider;
pub mod service;
pub mod telemetry;
pub mod upgrade;
pub mod workload;

pub use error::Error;

/// How a command that ran to completion judged what it saw: exit 0 or 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Healthy,
    /// The command worked but found a problem (lag over threshold, a table
    /// that could not be brought up to date, an unreachable endpoint).
    Problem,
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Healthy => 0,
            Outcome::Problem => 1,
        }
    }

    pub fn and(self, other: Outcome) -> Outcome {
        if self == Outcome::Healthy && other == Outcome::Healthy {
            Outcome::Healthy
        } else {
            Outcome::Problem
        }
    }
}
