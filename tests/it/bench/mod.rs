//! Benchmarks: `#[ignore]`d tests that print figures and assert only
//! correctness, one file per subject. Run one with
//! `cargo test --release --features failpoints --test it bench::<subject>:: -- --ignored --nocapture`;
//! each file's tests name their own command and knobs (environment variables).
//! Conversion (`convert_bench`) and index (`indexes::bench`) benchmarks live
//! next to their suites.

mod archive;
mod capacity;
mod deploy;
mod large_default;
mod partitions;
mod poolers;
mod secrets;
mod service;
mod upgrade;
