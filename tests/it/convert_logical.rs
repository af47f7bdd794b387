//! `pgsteward convert` as logical replication sees it (issue 22, points 2, 4
//! and 5): a subscriber and a CDC consumer keep every row through a
//! conversion; a publication the swap cannot carry (partitions published
//! under their own names, or owned by a role the steward does not act for)
//! is refused by `convert plan` with the fix, before anything changes; rows
//! beyond the premade partitions are still accepted afterwards.

use crate::convert::{config, exec, run};
use crate::harness::{fresh_db, query};
use crate::logical::{assert_cdc_matches, assert_subscriber_matches, Cdc, Subscriber};
use crate::partitions::exec_super;

const EVENTS: &str = "CREATE TABLE events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
    created_at timestamptz NOT NULL DEFAULT now(), payload text)";

const ROWS: &str = "SELECT id::text || ' ' || payload FROM events ORDER BY id";

#[tokio::test]
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
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &url, &["public.events"]);
    let out = run(
        &cfg,
        &["convert", "start", "--table", "public.events"],
        None,
    );
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
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
