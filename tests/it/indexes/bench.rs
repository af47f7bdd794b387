//! Benchmark: plain `CREATE INDEX` on a parent vs the online build.

use super::*;

/// A writer inserting through the parent until `stop`: (inserts, failed, longest wait).
fn writer(url: &str, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u32, u32, Duration)> {
    let url = url.to_string();
    tokio::spawn(async move {
        let c = connect(&url).await;
        let (mut ok, mut failed, mut longest) = (0u32, 0u32, Duration::ZERO);
        let start = Instant::now();
        // Bounded in count and time.
        while !stop.load(Ordering::Relaxed)
            && ok + failed < 1_000_000
            && start.elapsed() < Duration::from_secs(300)
        {
            let t = Instant::now();
            match c
                .execute(
                    "INSERT INTO events VALUES ($1, now(), 7, 'w')",
                    &[&i64::from(ok + failed + 10_000_000)],
                )
                .await
            {
                Ok(_) => ok += 1,
                Err(_) => failed += 1,
            }
            longest = longest.max(t.elapsed());
        }
        (ok, failed, longest)
    })
}

/// 24 monthly partitions (20 back, this month, 3 ahead) with `rows` rows spread over them.
async fn big_events(url: &str, rows: u32) {
    let mut sql = String::from(
        "CREATE TABLE events (id bigint NOT NULL, created_at timestamptz NOT NULL, \
         user_id int NOT NULL, payload text) PARTITION BY RANGE (created_at);",
    );
    for m in -20..=3 {
        let (name, from, to) = month(m);
        sql.push_str(&format!(
            "CREATE TABLE {name} PARTITION OF events FOR VALUES FROM ('{from}') TO ('{to}');"
        ));
    }
    let (_, first, _) = month(-20);
    sql.push_str(&format!(
        "INSERT INTO events SELECT g, '{first}'::timestamptz + (g % 24) * interval '1 month' + (g % 86400) * interval '1 second', \
         (g::int8 * 7919) % 100003, md5(g::text) FROM generate_series(1, {rows}) g"
    ));
    exec(url, &sql).await;
    // Alone: VACUUM refuses a multi-statement query (a transaction).
    exec(url, "VACUUM ANALYZE events").await;
}

/// Benchmark, prints figures: plain `CREATE INDEX` on a parent vs the online
/// build, each with a writer inserting through the parent, on two identical
/// parents (24 partitions, 1.2M rows). Goal: the online build's longest
/// insert wait under lock_timeout + 100 ms at no more than 1.5x the plain
/// build's time. Run with
/// `cargo test --features failpoints --test it indexes::bench:: -- --ignored --nocapture`
#[tokio::test]
#[ignore]
async fn bench_plain_create_index_vs_online_build() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("pgsteward=info")
        .with_test_writer()
        .try_init();
    let rows = 1_200_000;
    let plain_db = fresh_db("idx_bench_plain");
    let online_db = fresh_db("idx_bench_online");
    let setup = Instant::now();
    tokio::join!(big_events(&plain_db, rows), big_events(&online_db, rows));
    eprintln!("setup: 2 x {rows} rows in {:?}", setup.elapsed());

    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(&plain_db, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    exec(
        &plain_db,
        "CREATE INDEX events_user_idx ON events (user_id, created_at DESC)",
    )
    .await;
    let plain = t.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (p_ok, p_failed, p_longest) = w.await.unwrap();

    let lock_timeout = Duration::from_millis(200);
    let cfg = config(
        &online_db,
        "lock_timeout = \"200ms\"\nindex_parallelism = 2",
        &format!("premake = 3\n{USER_IDX}"),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(&online_db, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let r = pass(&cfg).await;
    let online = t.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (o_ok, o_failed, o_longest) = w.await.unwrap();
    assert_eq!(r.outcome(), pgsteward::Outcome::Healthy, "{r:#?}");
    assert_complete(&index_state(&online_db, "events_user_idx").await);

    eprintln!(
        "\nindex (user_id, created_at DESC) on 24 partitions, {rows} rows, one writer each\n\
         {:<28} {:>10} {:>18} {:>9} {:>15}\n\
         {:<28} {:>10.2?} {:>18.1?} {:>9} {:>15}\n\
         {:<28} {:>10.2?} {:>18.1?} {:>9} {:>15}\n\
         ratio online/plain: {:.2}x (goal <= 1.5x); longest wait goal < {:?}",
        "build",
        "total",
        "longest insert",
        "failed",
        "inserts done",
        "plain CREATE INDEX",
        plain,
        p_longest,
        p_failed,
        p_ok,
        "pgsteward online (2 sess.)",
        online,
        o_longest,
        o_failed,
        o_ok,
        online.as_secs_f64() / plain.as_secs_f64(),
        lock_timeout + Duration::from_millis(100),
    );
    assert_eq!(o_failed, 0);
}
