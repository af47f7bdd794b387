//! Benchmark (ignored; prints figures): converting a table of a few million
//! rows online against the copy-based floor, one `INSERT ... SELECT` of every
//! row into a partitioned twin with the same keys.
//!
//! `cargo test --features failpoints --test it -- --ignored convert_bench --nocapture`
//! (`PGSTEWARD_BENCH_ROWS` sets the row count, 2 000 000 by default).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::convert::{config, exec, load, run, setup};
use crate::harness::{fresh_db, query};

async fn one(url: &str, sql: &str) -> i64 {
    query(url, sql).await[0].get(0)
}

#[tokio::test]
#[ignore = "benchmark: prints figures, takes minutes"]
async fn convert_bench_versus_copy_floor() {
    let rows: i64 = std::env::var("PGSTEWARD_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let url = fresh_db("convert_bench");
    let (writer, reader) = setup(&url, 1).await;
    let t = Instant::now();
    exec(
        &url,
        &format!(
            "ALTER TABLE events DISABLE TRIGGER events_fill;
             INSERT INTO events (created_at, payload, other_id)
               SELECT now() - (i::bigint * 1728000 / {rows}) * interval '1 second', md5(i::text), 1 + i % 2
               FROM generate_series(1, {rows}) i;
             ALTER TABLE events ENABLE TRIGGER events_fill;"
        ),
    )
    .await;
    exec(&url, "VACUUM ANALYZE events").await;
    let table_bytes = one(&url, "SELECT pg_total_relation_size('public.events')::int8").await;
    println!(
        "setup: {rows} rows, {} MB with indexes, in {:?}",
        table_bytes >> 20,
        t.elapsed()
    );

    // pgsteward, under a writer and a reader.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &url, &["public.events"]);
    let db_before = one(&url, "SELECT pg_database_size(current_database())::int8").await;
    let l = load(&url, &writer, &reader).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = cfg.clone();
    let t = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        run(
            &c,
            &[
                "--log-level",
                "info",
                "convert",
                "start",
                "--table",
                "public.events",
            ],
            None,
        )
    })
    .await
    .unwrap();
    let convert_time = t.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    l.stop.store(true, Ordering::Relaxed);
    let (ids, werr, wlong) = l.writer.await.unwrap();
    let (reads, rerr, rlong) = l.reader.await.unwrap();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(werr.is_empty() && rerr.is_empty(), "{werr:?} {rerr:?}");
    // The one structure built: the unique index (id, created_at), the first
    // partition's primary key now. The old one was dropped in the swap.
    let first: String = query(
        &url,
        "SELECT plan->>'first_partition' FROM pgsteward.conversions",
    )
    .await[0]
        .get(0);
    let pk = format!("events_pkey{}", first.trim_start_matches("events"));
    let built = one(
        &url,
        &format!("SELECT pg_relation_size('public.{pk}')::int8"),
    )
    .await;
    let db_after = one(&url, "SELECT pg_database_size(current_database())::int8").await;

    // The floor: copy every row into a partitioned twin with the same keys.
    exec(
        &url,
        "CREATE TABLE twin (LIKE events INCLUDING DEFAULTS) PARTITION BY RANGE (created_at);
         CREATE TABLE twin_old PARTITION OF twin FOR VALUES FROM (MINVALUE) TO (now() - interval '10 days');
         CREATE TABLE twin_new PARTITION OF twin FOR VALUES FROM (now() - interval '10 days') TO (MAXVALUE);
         ALTER TABLE twin ADD PRIMARY KEY (id, created_at);
         CREATE INDEX ON twin (payload);",
    )
    .await;
    let t = Instant::now();
    exec(&url, "INSERT INTO twin SELECT * FROM events").await;
    let floor_time = t.elapsed();
    let floor_bytes = one(
        &url,
        "SELECT sum(pg_total_relation_size(inhrelid))::int8 FROM pg_inherits WHERE inhparent = 'public.twin'::regclass",
    )
    .await;

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!();
    println!("{:<44} {:>14} {:>14}", "", "pgsteward", "copy floor");
    println!(
        "{:<44} {:>12.0}ms {:>12.0}ms",
        "conversion time",
        ms(convert_time),
        ms(floor_time)
    );
    println!(
        "{:<44} {:>12}MB {:>12}MB",
        "extra disk (peak, excluding WAL)",
        built >> 20,
        floor_bytes >> 20
    );
    println!(
        "{:<44} {:>12}MB",
        "database size change after",
        (db_after - db_before) >> 20
    );
    println!(
        "{:<44} {:>12}MB",
        "table size before (with indexes)",
        table_bytes >> 20
    );
    println!(
        "{:<44} {:>12.0}ms (lock_timeout 200ms)",
        "longest client statement (insert / read)",
        ms(wlong.max(rlong))
    );
    println!(
        "{:<44} {:>14}",
        "client inserts / reads during it",
        format!("{} / {reads}", ids.len())
    );
    println!(
        "{:<44} {:>13.1}x",
        "speed-up over the floor",
        floor_time.as_secs_f64() / convert_time.as_secs_f64()
    );
    // Where the conversion's time went, from its own step log.
    println!();
    let mut in_steps = 0u64;
    for (step, elapsed) in step_times(&out.stderr) {
        in_steps += elapsed;
        println!("{:<44} {:>12}ms", format!("  step {step}"), elapsed);
    }
    println!(
        "{:<44} {:>12.0}ms",
        "  outside the steps (start, plan, journal, exit)",
        ms(convert_time) - in_steps as f64
    );
}

/// `(step, elapsed ms)` of each "conversion step done" log line.
fn step_times(log: &str) -> Vec<(String, u64)> {
    log.lines()
        .filter(|l| l.contains("conversion step done"))
        .filter_map(|l| {
            let field = |name: &str| {
                let at = l.find(&format!("{name}="))? + name.len() + 1;
                let rest = &l[at..];
                let end = rest.find(' ').unwrap_or(rest.len());
                Some(rest[..end].trim_matches('"').to_string())
            };
            Some((field("step")?, field("elapsed_ms")?.parse().ok()?))
        })
        .collect()
}
