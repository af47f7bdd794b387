//! Indexes on partitioned tables against a real server: declared indexes
//! built online under a writer, half-done indexes found and finished,
//! cancelled builds cleaned up and resumed, unique builds over duplicates,
//! new partitions after the index exists.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{Datelike, Utc};
use pgsteward::config::indexes::child_index_name;
use pgsteward::config::{self, Cluster};
use pgsteward::partitions::{self, PassReport};
use tokio_util::sync::CancellationToken;

use crate::harness::{connect, fresh_db, must, pgsteward, query, write_config};
use crate::partitions::{as_owner, as_steward};

fn config_toml(url: &str, extra: &str, table: &str) -> String {
    let url = as_steward(url);
    format!(
        "[database]\nprimary = \"{url}\"\n\n[partitions]\n{extra}\n\n[[partitions.tables]]\ntable = 'events'\n{table}\n"
    )
}

fn config(url: &str, extra: &str, table: &str) -> Cluster {
    must(config::from_figment(
        figment::Figment::new().merge(
            <figment::providers::Toml as figment::providers::Format>::string(&config_toml(
                url, extra, table,
            )),
        ),
        None,
    ))
    .cluster
}

async fn exec(url: &str, sql: &str) {
    let client = connect(&as_owner(url)).await;
    if let Err(e) = client.batch_execute(sql).await {
        panic!("{sql}: {}", pgsteward::pg::server_message(&e));
    }
}

async fn pass(cfg: &Cluster) -> PassReport {
    must(partitions::run_pass(cfg, &CancellationToken::new()).await)
}

fn month(months_from_now: i32) -> (String, String, String) {
    let now = Utc::now().date_naive();
    let at = |m: i32| {
        let total = now.year() * 12 + now.month0() as i32 + m;
        (total.div_euclid(12), total.rem_euclid(12) + 1)
    };
    let (y, m) = at(months_from_now);
    let (y2, m2) = at(months_from_now + 1);
    (
        format!("events_{y:04}_{m:02}"),
        format!("{y:04}-{m:02}-01"),
        format!("{y2:04}-{m2:02}-01"),
    )
}

/// `events`, partitioned by month: this month and the next `ahead`, with
/// `rows` rows spread over this month's partition.
async fn events(url: &str, ahead: i32, rows: u32) -> Vec<String> {
    let mut sql = String::from(
        "CREATE TABLE events (id bigint NOT NULL, created_at timestamptz NOT NULL, \
         user_id int NOT NULL, payload text) PARTITION BY RANGE (created_at);",
    );
    let mut names = Vec::new();
    for m in 0..=ahead {
        let (name, from, to) = month(m);
        sql.push_str(&format!(
            "CREATE TABLE {name} PARTITION OF events FOR VALUES FROM ('{from}') TO ('{to}');"
        ));
        names.push(name);
    }
    let (_, from, _) = month(0);
    sql.push_str(&format!(
        "INSERT INTO events SELECT g, '{from}'::timestamptz + (g % 1000) * interval '1 minute', g % 997, md5(g::text) \
         FROM generate_series(1, {rows}) g; ANALYZE events;"
    ));
    exec(url, &sql).await;
    names
}

/// Whether the parent index is valid, and per partition `(partition, attached index, valid)`.
type IndexState = (Option<bool>, Vec<(String, Option<String>, bool)>);

/// Per partition of `events`: the index attached to `parent_index` and
/// whether it is valid; plus whether the parent index is valid.
async fn index_state(url: &str, parent_index: &str) -> IndexState {
    let client = connect(url).await;
    let parent = client
        .query_opt(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)",
            &[&parent_index],
        )
        .await
        .unwrap()
        .map(|r| r.get(0));
    let rows = client
        .query(
            "SELECT p.relname::text, ci.relname::text, coalesce(ix.indisvalid, false) \
             FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhrelid \
             LEFT JOIN (pg_inherits ii JOIN pg_class ci ON ci.oid = ii.inhrelid \
                        JOIN pg_index ix ON ix.indexrelid = ci.oid) \
               ON ii.inhparent = to_regclass($1) AND ix.indrelid = p.oid \
             WHERE i.inhparent = 'events'::regclass ORDER BY 1",
            &[&parent_index],
        )
        .await
        .unwrap();
    (
        parent,
        rows.iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect(),
    )
}

/// Invalid indexes on tables (a parent index made ON ONLY is invalid until complete: not counted).
async fn invalid_indexes(url: &str) -> Vec<String> {
    query(
        url,
        "SELECT i.indexrelid::regclass::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         WHERE NOT i.indisvalid AND c.relkind = 'i' ORDER BY 1",
    )
    .await
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn assert_complete(state: &IndexState) {
    assert_eq!(state.0, Some(true), "parent index valid: {state:?}");
    assert!(
        state
            .1
            .iter()
            .all(|(_, child, valid)| child.is_some() && *valid),
        "every partition has a valid attached index: {state:?}"
    );
}

const USER_IDX: &str =
    "indexes = [ { name = \"events_user_idx\", columns = [\"user_id\", \"created_at DESC\"] } ]";

#[tokio::test]
async fn a_declared_index_is_built_online_under_a_writer() {
    let url = fresh_db("idx_writer");
    let parts = events(&url, 3, 60_000).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &config_toml(
            &url,
            "lock_timeout = \"200ms\"\nindex_parallelism = 2",
            &format!("premake = 3\n{USER_IDX}"),
        ),
    );
    // Before: plan shows the online DDL, status names the missing index.
    let plan = pgsteward()
        .arg("--config")
        .arg(&path)
        .args(["partitions", "plan"])
        .output()
        .unwrap();
    let plan_text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan_text.contains(r#"CREATE INDEX "events_user_idx" ON ONLY "public"."events" USING "btree" ("user_id", "created_at" DESC)"#)
            && plan_text.contains(&format!(r#"CREATE INDEX CONCURRENTLY "{}_user_idx" ON "public"."{}""#, parts[1], parts[1]))
            && plan_text.contains("ATTACH PARTITION"),
        "{plan_text}"
    );
    let status = pgsteward()
        .arg("--config")
        .arg(&path)
        .args(["partitions", "status"])
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("events_user_idx: declared but not built")
    );

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (url, stop) = (url.clone(), stop.clone());
        tokio::spawn(async move {
            let c = connect(&as_owner(&url)).await;
            let (mut ok, mut failed, mut longest) = (0u32, 0u32, Duration::ZERO);
            let start = Instant::now();
            // Bounded in count and time.
            while !stop.load(Ordering::Relaxed)
                && ok + failed < 20_000
                && start.elapsed() < Duration::from_secs(60)
            {
                let t = Instant::now();
                match c
                    .execute(
                        "INSERT INTO events VALUES ($1, now(), 7, 'w')",
                        &[&i64::from(ok + failed + 1_000_000)],
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
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cfg = config(
        &url,
        "lock_timeout = \"200ms\"\nindex_parallelism = 2",
        &format!("premake = 3\n{USER_IDX}"),
    );
    let r = pass(&cfg).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed, longest) = writer.await.unwrap();
    assert_eq!(r.outcome(), pgsteward::Outcome::Healthy, "{r:#?}");
    assert_eq!(failed, 0, "no insert failed");
    assert!(ok > 0);
    eprintln!("writer: {ok} inserts during the build, longest {longest:?}");
    let ix = &r.indexes[0];
    assert_eq!((ix.built, ix.attached), (4, 4), "{ix:#?}");
    assert!(ix.drift.is_empty(), "{ix:#?}");
    let state = index_state(&url, "events_user_idx").await;
    assert_complete(&state);
    assert_eq!(state.1.len(), 4);
    assert!(invalid_indexes(&url).await.is_empty());
    // Idempotent; status healthy, in JSON too.
    let r = pass(&cfg).await;
    assert!(r.indexes[0].statements.is_empty(), "{r:#?}");
    let status = pgsteward()
        .arg("--config")
        .arg(&path)
        .args(["partitions", "status", "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(
        status.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["indexes"][0]["drift"], serde_json::json!([]));
    assert_eq!(
        v["indexes"][0]["indexes"][0]["valid"],
        serde_json::json!(true)
    );
}

#[tokio::test]
async fn an_index_begun_on_only_by_hand_is_reported_then_completed() {
    let url = fresh_db("idx_by_hand");
    let parts = events(&url, 2, 1_000).await;
    // Made by hand and never finished: one partition got a matching index,
    // not attached; the others nothing.
    exec(
        &url,
        &format!(
            "CREATE INDEX events_payload_hand ON ONLY events (payload); \
             CREATE INDEX my_own_name ON {} (payload)",
            parts[0]
        ),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &config_toml(&url, "lock_timeout = \"200ms\"", "premake = 2"),
    );
    let status = pgsteward()
        .arg("--config")
        .arg(&path)
        .args(["partitions", "status"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert_eq!(status.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "events_payload_hand: invalid parent index (3 partitions without it attached)"
        ) && text.contains(&format!(
            "my_own_name on public.{} is not attached",
            parts[0]
        )) && text.contains(&format!(
            "events_payload_hand: missing on public.{}",
            parts[2]
        )),
        "{text}"
    );
    let json = pgsteward()
        .arg("--config")
        .arg(&path)
        .args(["partitions", "status", "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(json.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(v["indexes"][0]["drift"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["kind"] == "parent_invalid" && p["index"] == "events_payload_hand"));

    let apply = pgsteward()
        .arg("--config")
        .arg(&path)
        .args(["partitions", "apply"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&apply.stdout);
    assert_eq!(
        apply.status.code(),
        Some(0),
        "{text} {}",
        String::from_utf8_lossy(&apply.stderr)
    );
    assert!(text.contains("built 2, attached 3"), "{text}");
    let state = index_state(&url, "events_payload_hand").await;
    assert_complete(&state);
    // The matching index made by hand was attached, not built again.
    assert_eq!(state.1[0].1.as_deref(), Some("my_own_name"), "{state:?}");
    let status = pgsteward()
        .arg("--config")
        .arg(&path)
        .args(["partitions", "status"])
        .output()
        .unwrap();
    assert_eq!(
        status.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
}

#[tokio::test]
async fn a_cancelled_build_is_cleaned_up_and_resumed() {
    let url = fresh_db("idx_cancel");
    let parts = events(&url, 1, 1_000).await;
    let spec = "indexes = [ { name = \"events_payload_idx\", columns = [\"payload\"] } ]";
    // A writer's open transaction on the first partition: a concurrent build
    // there waits for it ("waiting for writers before build") with its invalid
    // index already in the catalog. Deterministic, no race on timing.
    let block = |part: String, at: String| {
        let url = url.clone();
        async move {
            let c = connect(&as_owner(&url)).await;
            c.batch_execute(&format!(
                "BEGIN; INSERT INTO {part} VALUES (0, '{at}', 0, 'b')"
            ))
            .await
            .unwrap();
            c
        }
    };
    let blocker = block(parts[0].clone(), month(0).1).await;
    let cfg = config(
        &url,
        "lock_timeout = \"5s\"\nlock_retries = 1\nindex_parallelism = 1",
        &format!("premake = 1\n{spec}"),
    );
    let running = {
        let cfg = cfg.clone();
        tokio::spawn(async move { pass(&cfg).await })
    };
    // Cancel the pass's build of the first partition from another session, midway.
    // Sees the steward's backend in pg_stat_progress_create_index: a fixture.
    let watcher = connect(&crate::partitions::as_super(&url)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut cancelled = false;
    while Instant::now() < deadline {
        let rows = watcher
            .query(
                "SELECT pid, phase FROM pg_stat_progress_create_index WHERE relid = to_regclass($1)",
                &[&parts[0]],
            )
            .await
            .unwrap();
        // Seen before it reaches the wait (the superuser sees the build from
        // its first instant): sample again.
        let waiting = rows
            .first()
            .is_some_and(|r| r.get::<_, String>(1).contains("waiting"));
        if let (Some(r), true) = (rows.first(), waiting) {
            let pid: i32 = r.get(0);
            // What the pass logs every 5 s for a long build.
            let p = must(pgsteward::partitions::indexes::build::progress(&watcher, &[pid]).await);
            assert!(p[0].phase.contains("waiting for writers"), "{p:?}");
            watcher
                .execute("SELECT pg_cancel_backend($1)", &[&pid])
                .await
                .unwrap();
            cancelled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        cancelled,
        "the build was seen in pg_stat_progress_create_index"
    );
    blocker.batch_execute("COMMIT").await.unwrap();
    let r = running.await.unwrap();
    assert_eq!(r.outcome(), pgsteward::Outcome::Problem);
    let ix = &r.indexes[0];
    let err = ix.error.clone().unwrap_or_default();
    assert!(err.contains("57014"), "{ix:#?}");
    // The cancelled build left nothing invalid; the other partition was built.
    assert!(invalid_indexes(&url).await.is_empty());
    assert_eq!(ix.built, 1, "{ix:#?}");
    let state = index_state(&url, "events_payload_idx").await;
    assert_eq!(state.0, Some(false));
    assert!(
        ix.drift
            .iter()
            .any(|p| p.text() == format!("events_payload_idx: missing on public.{}", parts[0])),
        "{ix:#?}"
    );

    // A killed build, as a crashed pass leaves it: an invalid index of the right name.
    let leftover = child_index_name("events", &parts[0], "events_payload_idx");
    let blocker = block(parts[0].clone(), month(0).1).await;
    let by_hand = connect(&as_owner(&url)).await;
    by_hand
        .batch_execute("SET lock_timeout = '50ms'")
        .await
        .unwrap();
    // Alone in its query: CONCURRENTLY refuses a multi-statement one (a transaction).
    let e = by_hand
        .batch_execute(&format!(
            "CREATE INDEX CONCURRENTLY {leftover} ON {} (payload)",
            parts[0]
        ))
        .await;
    assert!(
        e.is_err(),
        "the build by hand waits for the blocker and fails"
    );
    blocker.batch_execute("COMMIT").await.unwrap();
    assert_eq!(invalid_indexes(&url).await, vec![leftover.clone()]);
    // The next pass finds it, drops it concurrently and builds the partition's index.
    let r = pass(&cfg).await;
    assert_eq!(r.outcome(), pgsteward::Outcome::Healthy, "{r:#?}");
    assert_eq!((r.indexes[0].dropped, r.indexes[0].built), (1, 1), "{r:#?}");
    let state = index_state(&url, "events_payload_idx").await;
    assert_complete(&state);
    assert_eq!(state.1[0].1.as_deref(), Some(leftover.as_str()));
    assert!(invalid_indexes(&url).await.is_empty());
}

#[tokio::test]
async fn a_long_reader_makes_the_build_wait_not_fail() {
    let url = fresh_db("idx_reader");
    events(&url, 1, 1_000).await;
    exec(&url, "CREATE TABLE other (x int)").await;
    // A report query's snapshot: every concurrent build waits for it at its end,
    // far longer than lock_timeout; no client statement waits for the build.
    let reader = connect(&as_owner(&url)).await;
    reader
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM other")
        .await
        .unwrap();
    let cfg = config(
        &url,
        "lock_timeout = \"100ms\"\nlock_retries = 2\nindex_build_wait = \"30s\"",
        &format!("premake = 1\n{USER_IDX}"),
    );
    let running = tokio::spawn(async move { pass(&cfg).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let inserted = tokio::time::timeout(
        Duration::from_secs(2),
        exec(
            &url,
            &format!("INSERT INTO events VALUES (1, '{}', 1, 'x')", month(0).1),
        ),
    )
    .await;
    assert!(inserted.is_ok(), "writes do not wait for the waiting build");
    reader.batch_execute("COMMIT").await.unwrap();
    let r = running.await.unwrap();
    assert_eq!(r.outcome(), pgsteward::Outcome::Healthy, "{r:#?}");
    assert_complete(&index_state(&url, "events_user_idx").await);
}

#[tokio::test]
async fn a_unique_index_over_duplicates_names_them_and_leaves_nothing_invalid() {
    let url = fresh_db("idx_unique");
    let parts = events(&url, 1, 1_000).await;
    let at = month(1).1;
    exec(
        &url,
        &format!("INSERT INTO events VALUES (42, '{at}', 1, 'a'), (42, '{at}', 2, 'b')"),
    )
    .await;
    let cfg = config(
        &url,
        "lock_timeout = \"200ms\"\nindex_parallelism = 2",
        "premake = 1\nindexes = [ { name = \"events_id_key\", columns = [\"id\", \"created_at\"], unique = true } ]",
    );
    let r = pass(&cfg).await;
    assert_eq!(r.outcome(), pgsteward::Outcome::Problem);
    let err = r.indexes[0].error.clone().unwrap_or_default();
    assert!(
        err.contains(&format!("public.{}", parts[1])) && err.contains("(id, created_at)=(42,"),
        "{err}"
    );
    assert!(invalid_indexes(&url).await.is_empty());
    let left: Vec<String> = query(
        &url,
        "SELECT relname::text FROM pg_class WHERE relname LIKE '%id_key%'",
    )
    .await
    .iter()
    .map(|r| r.get(0))
    .collect();
    assert!(left.is_empty(), "no half-built index left: {left:?}");
    assert!(r.indexes[0]
        .drift
        .iter()
        .any(|p| p.text().contains("declared but not built")));
    // Fixed duplicates: the next pass builds it.
    exec(&url, "DELETE FROM events WHERE id = 42 AND user_id = 2").await;
    let r = pass(&cfg).await;
    assert_eq!(r.outcome(), pgsteward::Outcome::Healthy, "{r:#?}");
    assert_complete(&index_state(&url, "events_id_key").await);
}

mod bench;
mod later;
mod library;
