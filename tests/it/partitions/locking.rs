//! Locks: a pass waits for no one longer than lock_timeout, retries instead
//! of queueing traffic, never runs DDL on a table twice at once, stops when
//! cancelled and leaves nothing behind when an attach fails.

use super::*;
use crate::consumers::{Consumers, Kind};

#[tokio::test]
async fn long_transaction_on_the_parent_makes_the_pass_retry_not_block_inserts() {
    let url = fresh_db("part_blocker");
    exec(&url, EVENTS).await;
    exec(
        &url,
        "CREATE TABLE events_default PARTITION OF events DEFAULT",
    )
    .await;
    exec(
        &url,
        &format!(
            "CREATE TABLE {} PARTITION OF events FOR VALUES FROM ('{}') TO ('{}')",
            month_name("events", 0),
            month_start(0),
            month_start(1)
        ),
    )
    .await;
    // The blocker reads the parent: ACCESS SHARE on every partition, DEFAULT included,
    // which ATTACH (ACCESS EXCLUSIVE on DEFAULT) cannot share.
    let blocker = connect(&as_owner(&url)).await;
    blocker
        .batch_execute("BEGIN; SELECT count(*) FROM events")
        .await
        .unwrap();
    let cfg = config(
        &url,
        "lock_timeout = \"100ms\"\nlock_retries = 3",
        &table("events", "premake = 1"),
    );
    let inserter = {
        let url = url.clone();
        tokio::spawn(async move {
            let c = connect(&as_owner(&url)).await;
            let mut done = 0;
            let start = Instant::now();
            // Bounded in count and time.
            while done < 200 && start.elapsed() < Duration::from_secs(20) {
                c.batch_execute("INSERT INTO events (created_at) VALUES (now()); SELECT count(*) FROM events WHERE created_at > now() - interval '1 minute'")
                    .await
                    .unwrap();
                done += 1;
            }
            done
        })
    };
    let r = pass(&cfg).await;
    let inserted = inserter.await.unwrap();
    assert_eq!(inserted, 200, "application queries all completed");
    assert_eq!(r.outcome(), pgsteward::Outcome::Problem);
    let err = r.tables[0].error.clone().unwrap_or_default();
    assert!(err.contains("55P03") && err.contains("3 attempts"), "{err}");
    // Nothing left that would make inserts into DEFAULT fail.
    let checks = query(&url, "SELECT count(*) FROM pg_constraint WHERE conrelid = 'events_default'::regclass AND conname LIKE 'pgsteward%'").await;
    assert_eq!(checks[0].get::<_, i64>(0), 0);
    blocker.batch_execute("COMMIT").await.unwrap();
    // The next pass resumes the standalone table the interrupted one made.
    let r = pass(&cfg).await;
    assert_eq!(r.outcome(), pgsteward::Outcome::Healthy, "{r:#?}");
    assert_eq!(r.tables[0].created, 1);
    assert_eq!(partitions_of(&url, "events").await.len(), 3);
}

#[tokio::test]
async fn concurrent_passes_never_both_run_ddl_on_a_table() {
    let url = fresh_db("part_concurrent");
    let mut ddl = String::new();
    let mut tables = String::new();
    for i in 0..12 {
        ddl.push_str(&EVENTS.replace("TABLE events", &format!("TABLE t{i}")));
        ddl.push(';');
        tables.push_str(&table(&format!("t{i}"), "premake = 3"));
    }
    exec(&url, &ddl).await;
    let cfg = config(&url, "parallelism = 2", &tables);
    let (a, b) = tokio::join!(pass(&cfg), pass(&cfg));
    for r in [&a, &b] {
        assert!(r.tables.iter().all(|t| t.error.is_none()), "{r:#?}");
    }
    let total: u32 = a.tables.iter().chain(&b.tables).map(|t| t.created).sum();
    assert_eq!(total, 12 * 4, "each partition created exactly once");
    for i in 0..12 {
        assert_eq!(partitions_of(&url, &format!("t{i}")).await.len(), 4);
    }
    // Deterministically: a held table lock makes the pass leave that table alone.
    exec(&url, &EVENTS.replace("TABLE events", "TABLE held")).await;
    let holder = connect(&as_owner(&url)).await;
    holder
        .batch_execute(&format!(
            "SELECT pg_advisory_lock({}, 'held'::regclass::oid::int4)",
            partitions::ADVISORY_NAMESPACE
        ))
        .await
        .unwrap();
    let cfg = config(&url, "", &table("held", "premake = 1"));
    let r = pass(&cfg).await;
    assert_eq!(r.outcome(), pgsteward::Outcome::Healthy);
    assert!(
        r.tables[0]
            .skipped
            .as_deref()
            .unwrap_or("")
            .contains("advisory lock"),
        "{r:#?}"
    );
    assert_eq!(partitions_of(&url, "held").await.len(), 0);
}

#[tokio::test]
async fn cancelling_a_pass_stops_it_while_it_waits_for_a_lock() {
    let url = fresh_db("part_cancel");
    exec(&url, EVENTS).await;
    exec(
        &url,
        "CREATE TABLE events_default PARTITION OF events DEFAULT",
    )
    .await;
    let blocker = connect(&as_owner(&url)).await;
    blocker
        .batch_execute("BEGIN; SELECT count(*) FROM events")
        .await
        .unwrap();
    let cfg = config(&url, "lock_retries = 1000", &table("events", "premake = 1"));
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        trigger.cancel();
    });
    let t0 = Instant::now();
    let r = partitions::run_pass(&cfg, &cancel).await;
    assert!(
        matches!(r, Err(partitions::PartitionError::Cancelled)),
        "{r:?}"
    );
    // Bounded by the cancel, not by 1000 retries.
    assert!(t0.elapsed() < Duration::from_secs(30));
    blocker.batch_execute("COMMIT").await.unwrap();
    let checks = query(
        &url,
        "SELECT count(*) FROM pg_constraint WHERE conname LIKE 'pgsteward_excl%'",
    )
    .await;
    assert_eq!(
        checks[0].get::<_, i64>(0),
        0,
        "no exclusion CHECK left on DEFAULT"
    );
    let r = pass(&config(&url, "", &table("events", "premake = 1"))).await;
    assert_eq!(r.tables[0].created, 2, "{r:#?}");
}

#[tokio::test]
async fn a_failed_attach_leaves_nothing_behind_and_names_the_blocker() {
    let url = fresh_db("part_undo");
    exec(&url, EVENTS).await;
    exec(
        &url,
        "CREATE TABLE events_default PARTITION OF events DEFAULT; CREATE INDEX events_at ON events (created_at); \
         ALTER TABLE events REPLICA IDENTITY FULL; ALTER TABLE events_default REPLICA IDENTITY FULL",
    )
    .await;
    // Every table published; the rows are identified in full (no key).
    let mut consumers = Consumers::attach(&url, Kind::AllTables, &["events"]).await;
    // SHARE on the parent alone (ONLY: partitions stay unlocked) lets every
    // step through except ATTACH, which needs SHARE UPDATE EXCLUSIVE.
    let blocker = connect(&as_owner(&url)).await;
    blocker
        .batch_execute(
            "SET application_name = 'the-blocker'; BEGIN; LOCK TABLE ONLY events IN SHARE MODE",
        )
        .await
        .unwrap();
    let pid: i32 = blocker
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let cfg = config(
        &url,
        "lock_timeout = \"50ms\"\nlock_retries = 2",
        &table("events", "premake = 1"),
    );
    let r = pass(&cfg).await;
    let t = &r.tables[0];
    let err = t.error.as_deref().unwrap_or("");
    assert!(err.contains("lock timeout"), "{t:#?}");
    assert!(
        err.contains(&format!("pid {pid} ")),
        "the blocker is named: {err}"
    );
    assert!(
        err.contains("the-blocker") && err.contains("idle in transaction"),
        "{err}"
    );
    let checks = query(
        &url,
        "SELECT count(*) FROM pg_constraint WHERE conname LIKE 'pgsteward_excl%'",
    )
    .await;
    assert_eq!(checks[0].get::<_, i64>(0), 0, "nothing on DEFAULT");
    // The partition made before the failed ATTACH already has the parent's
    // index: an ATTACH never builds one under its lock.
    let built = query(
        &url,
        &format!(
            "SELECT count(*) FROM pg_index WHERE indrelid = '{}'::regclass",
            month_name("events", 0)
        ),
    )
    .await;
    assert_eq!(built[0].get::<_, i64>(0), 1);
    // Inserts into DEFAULT keep working for the very range being attached.
    // (Directly into DEFAULT: the parent itself is locked by the blocker.)
    exec(
        &url,
        // OVERRIDING: from 17 a partition shares the parent's identity column.
        "INSERT INTO events_default (id, created_at) OVERRIDING SYSTEM VALUE VALUES (1, now())",
    )
    .await;
    // `status` names the table the pass made and could not attach.
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &config_toml(
            &url,
            "lock_timeout = \"50ms\"",
            &table("events", "premake = 1"),
        ),
    );
    let status = pgsteward()
        .arg("--config")
        .arg(&path)
        .args(["partitions", "status"])
        .output()
        .unwrap();
    let text = harness::text(&status);
    assert_eq!(status.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "{} was made by a pass and is not attached yet",
            month_name("public.events", 0)
        )),
        "{text}"
    );
    blocker.batch_execute("COMMIT").await.unwrap();
    let r = pass(&cfg).await;
    assert_eq!(
        (r.tables[0].created, r.tables[0].rows_moved),
        (2, 1),
        "{r:#?}"
    );
    consumers.assert_same("a move after a failed attach").await;
}
