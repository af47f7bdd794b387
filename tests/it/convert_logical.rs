//! `pgsteward convert` as logical replication sees it (issue 22, points 2, 4
//! and 5): a subscriber and a CDC consumer keep every row through a
//! conversion; a publication the swap cannot carry (partitions published
//! under their own names, or owned by a role the steward does not act for)
//! is refused by `convert plan` with the fix, before anything changes; rows
//! beyond the premade partitions are still accepted afterwards.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::convert::{config, exec, run};
use crate::harness::{as_owner, connect, fresh_db, query};
use crate::logical::{assert_cdc_matches, assert_subscriber_matches, Cdc, Subscriber};
use crate::partitions::exec_super;

const EVENTS: &str = "CREATE TABLE events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
    created_at timestamptz NOT NULL DEFAULT now(), payload text)";

const ROWS: &str = "SELECT id::text || ' ' || payload FROM events ORDER BY id";

/// A writer inserts (through the table, then the parent) for the whole
/// conversion: every acknowledged row, and every row moved or attached by
/// the swap, reaches the subscriber and the CDC consumer exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_keeps_subscribers_and_cdc_consumers_in_step() {
    let url = fresh_db("convert_logical");
    exec(
        &url,
        &format!(
            "{EVENTS}; CREATE PUBLICATION p FOR TABLE events WITH (publish_via_partition_root = true); \
             INSERT INTO events (created_at, payload) SELECT now() - i * interval '1 hour', 'before' FROM generate_series(1, 50) i"
        ),
    )
    .await;
    let sub = Subscriber::create(
        &url,
        "p",
        "CREATE TABLE events (id bigint, created_at timestamptz, payload text, PRIMARY KEY (id, created_at))",
    );
    let mut cdc = Cdc::start(&url).await;
    exec(
        &url,
        "INSERT INTO events (created_at, payload) SELECT now() - i * interval '1 minute', 'subscribed' FROM generate_series(1, 10) i",
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (url, stop) = (url.clone(), stop.clone());
        tokio::spawn(async move {
            let c = connect(&as_owner(&url)).await;
            let (mut acked, mut errors) = (Vec::new(), Vec::new());
            let start = Instant::now();
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) || start.elapsed() > Duration::from_secs(300) {
                    break;
                }
                match c
                    .query_one(
                        "INSERT INTO events (created_at, payload) VALUES (now(), 'during') RETURNING id",
                        &[],
                    )
                    .await
                {
                    Ok(r) => acked.push(r.get::<_, i64>(0)),
                    Err(e) => errors.push(pgsteward::pg::server_message(&e)),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (acked, errors)
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &url, &["public.events"]);
    let out = tokio::task::spawn_blocking(move || {
        run(
            &cfg,
            &["convert", "start", "--table", "public.events"],
            None,
        )
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, errors) = writer.await.unwrap();
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert!(errors.is_empty(), "the writer failed: {errors:?}");
    assert!(!acked.is_empty());
    let found: i64 = query(
        &url,
        &format!(
            "SELECT count(*) FROM events WHERE id IN ({})",
            acked
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
    )
    .await[0]
        .get(0);
    assert_eq!(found, acked.len() as i64, "acknowledged rows missing");
    // Through the new parent: today's partition, and far beyond the premade
    // ones (the DEFAULT partition takes them, as the plain table did).
    exec(
        &url,
        "INSERT INTO events (created_at, payload) VALUES (now(), 'after'), (now() + interval '60 days', 'far after')",
    )
    .await;
    let kind = query(
        &url,
        "SELECT relkind::text FROM pg_class WHERE oid = 'events'::regclass",
    )
    .await;
    assert_eq!(kind[0].get::<_, String>(0), "p");
    // Rows written before the subscription existed are not copied (copy_data = false).
    let published =
        "SELECT id::text || ' ' || payload FROM events WHERE payload <> 'before' ORDER BY id";
    assert_subscriber_matches(
        &url,
        published,
        &sub,
        ROWS,
        "convert, publish_via_partition_root",
    )
    .await;
    assert_cdc_matches(
        &mut cdc,
        "public.events",
        &url,
        "SELECT id FROM events WHERE payload <> 'before' ORDER BY id",
        "convert",
    )
    .await;
}

#[tokio::test]
async fn a_publication_the_swap_cannot_carry_is_refused_before_anything_changes() {
    // Partitions would be published under their own names.
    let url = fresh_db("convert_leafpub");
    exec(
        &url,
        &format!("{EVENTS}; CREATE PUBLICATION p FOR TABLE events"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &url, &["public.events"]);
    let plan = run(&cfg, &["convert", "plan", "--table", "public.events"], None);
    assert_eq!(plan.code, Some(1), "{}\n{}", plan.stdout, plan.stderr);
    assert!(
        plan.stdout
            .contains("ALTER PUBLICATION \"p\" SET (publish_via_partition_root = true)"),
        "{}",
        plan.stdout
    );
    let start = run(
        &cfg,
        &["convert", "start", "--table", "public.events"],
        None,
    );
    assert_eq!(start.code, Some(1), "{}\n{}", start.stdout, start.stderr);
    let checks = query(
        &url,
        "SELECT count(*) FROM pg_constraint WHERE conname LIKE 'pgsteward%'",
    )
    .await;
    assert_eq!(checks[0].get::<_, i64>(0), 0, "nothing changed");

    // A publication the steward cannot alter (owned by the superuser).
    let url = fresh_db("convert_foreignpub");
    exec(&url, EVENTS).await;
    exec_super(
        &url,
        "CREATE PUBLICATION theirs FOR TABLE events WITH (publish_via_partition_root = true)",
    )
    .await;
    let cfg = config(dir.path(), &url, &["public.events"]);
    let plan = run(&cfg, &["convert", "plan", "--table", "public.events"], None);
    assert_eq!(plan.code, Some(1), "{}\n{}", plan.stdout, plan.stderr);
    assert!(
        plan.stdout
            .contains("publication theirs (owned by postgres)")
            && plan
                .stdout
                .contains("ALTER PUBLICATION \"theirs\" OWNER TO \"app_owner\""),
        "{}",
        plan.stdout
    );
    let start = run(
        &cfg,
        &["convert", "start", "--table", "public.events"],
        None,
    );
    assert_eq!(start.code, Some(1));
    let kind = query(
        &url,
        "SELECT relkind::text FROM pg_class WHERE oid = 'events'::regclass",
    )
    .await;
    assert_eq!(kind[0].get::<_, String>(0), "r", "still the plain table");
}
