//! Integration tests against real PostgreSQL and PgBouncer servers started by
//! the harness. One test binary, so the harness's template and shared server are
//! made once per run.

mod harness;

mod archive;
mod bench;
mod capacity;
mod cli_config;
mod consumers;
mod convert;
mod convert_bench;
mod convert_cases;
mod convert_failures;
mod convert_logical;
mod convert_saga;
mod demo;
mod deploy;
mod docker;
mod first_hour;
mod first_user;
mod indexes;
mod lag;
mod logical;
mod moto;
mod partition_safety;
mod partitions;
mod rds;
mod rds_moto_upgrade;
mod rds_plan;
mod rds_readers;
mod rds_scripted;
mod rds_scripted_waits;
mod rds_xregion;
mod secrets;
mod service;
mod service_drift;
mod tls;
mod upgrade;
mod upgrade_safety;
mod workload;
