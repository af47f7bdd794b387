//! The lock promise with a large DEFAULT (issue 22, point 7): a DEFAULT over
//! `max_default_scan` is proven free of each new range by a validated CHECK,
//! so no ATTACH scans it and the longest client statement stays near
//! `lock_timeout`; and rows of future periods in DEFAULT (too many to move,
//! or in a DEFAULT too large to scan) never stop the premake of the others.
//! `under_load` is shared with the 1 GB benchmark (`bench::large_default`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::*;

const KEYED: &str = "CREATE TABLE events (id bigint GENERATED ALWAYS AS IDENTITY, \
    created_at timestamptz NOT NULL, payload text, PRIMARY KEY (id, created_at)) \
    PARTITION BY RANGE (created_at); \
    CREATE TABLE events_default PARTITION OF events DEFAULT";

/// What a pass over a large DEFAULT did to the clients.
#[derive(Debug)]
pub(crate) struct Figures {
    pub default_bytes: i64,
    pub fill: Duration,
    pub pass: Duration,
    pub created: u32,
    pub inserts: usize,
    pub insert_worst: Duration,
    pub reads: u64,
    pub read_worst: Duration,
    pub statements: Vec<String>,
}

/// Makes `events` in `url` with this month's partition and a DEFAULT of
/// about `mb` MB of rows of months 12..14 ahead (beyond any premake), then
/// runs a pass (`premake = 3`, `max_default_scan`) while a writer inserts
/// rows of now and of month 20 (into DEFAULT) and a reader looks rows up by
/// key through the parent (every partition and DEFAULT, by index). Asserts
/// what must hold at any size: no client error, every acknowledged row
/// there, the CHECK path taken exactly when DEFAULT is over
/// `max_default_scan`, no CHECK left on DEFAULT.
pub(crate) async fn under_load(url: &str, mb: i64, max_default_scan: &str) -> Figures {
    exec(
        url,
        &format!(
            "{KEYED}; CREATE TABLE {cur} PARTITION OF events FOR VALUES FROM ('{a}') TO ('{b}')",
            cur = month_name("events", 0),
            a = month_start(0),
            b = month_start(1)
        ),
    )
    .await;
    // ~1.1 KB a row, in statements of at most 100k rows.
    let rows = mb * 1024 * 1024 / 1100;
    let t = Instant::now();
    let owner = connect(&as_owner(url)).await;
    let mut done = 0;
    while done < rows {
        let n = (rows - done).min(100_000);
        owner
            .batch_execute(&format!(
                "INSERT INTO events (created_at, payload) SELECT '{}'::timestamptz + (i % 7776000) * interval '1 second', \
                 repeat('x', 1000) FROM generate_series({done}, {done} + {n} - 1) i",
                month_start(12)
            ))
            .await
            .unwrap();
        done += n;
    }
    owner.batch_execute("VACUUM ANALYZE events").await.unwrap();
    let fill = t.elapsed();
    let default_bytes: i64 = owner
        .query_one("SELECT pg_relation_size('events_default')", &[])
        .await
        .unwrap()
        .get(0);
    let max_id: i64 = owner
        .query_one("SELECT max(id) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (url, stop) = (url.to_string(), stop.clone());
        tokio::spawn(async move {
            let c = connect(&as_owner(&url)).await;
            let far = month_start(20);
            let (mut ids, mut errors, mut worst) = (Vec::new(), Vec::new(), Duration::ZERO);
            let start = Instant::now();
            for i in 0..100_000u64 {
                if stop.load(Ordering::Relaxed) || start.elapsed() > Duration::from_secs(600) {
                    break;
                }
                let at = if i % 2 == 0 {
                    "now()".to_string()
                } else {
                    format!("'{far}'::timestamptz")
                };
                let t = Instant::now();
                match c
                    .query_one(
                        &format!("INSERT INTO events (created_at, payload) VALUES ({at}, 'w') RETURNING id"),
                        &[],
                    )
                    .await
                {
                    Ok(r) => ids.push(r.get::<_, i64>(0)),
                    Err(e) => errors.push(pgsteward::pg::server_message(&e)),
                }
                worst = worst.max(t.elapsed());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (ids, errors, worst)
        })
    };
    let reader = {
        let (url, stop) = (url.to_string(), stop.clone());
        tokio::spawn(async move {
            let c = connect(&as_owner(&url)).await;
            let (mut n, mut errors, mut worst) = (0u64, Vec::new(), Duration::ZERO);
            let start = Instant::now();
            for i in 0..1_000_000i64 {
                if stop.load(Ordering::Relaxed) || start.elapsed() > Duration::from_secs(600) {
                    break;
                }
                let id = 1 + (i * 7919) % max_id.max(1);
                let t = Instant::now();
                match c
                    .query_opt("SELECT payload FROM events WHERE id = $1", &[&id])
                    .await
                {
                    Ok(Some(_)) => n += 1,
                    Ok(None) => errors.push(format!("row {id} not found")),
                    Err(e) => errors.push(pgsteward::pg::server_message(&e)),
                }
                worst = worst.max(t.elapsed());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (n, errors, worst)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cfg = config(
        url,
        &format!("max_default_scan = \"{max_default_scan}\""),
        &table("events", "premake = 3"),
    );
    let t = Instant::now();
    let r = pass(&cfg).await;
    let pass_took = t.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (ids, write_errors, insert_worst) = writer.await.unwrap();
    let (reads, read_errors, read_worst) = reader.await.unwrap();
    assert_eq!(r.outcome(), pgsteward::Outcome::Healthy, "{r:#?}");
    let t0 = &r.tables[0];
    assert!(write_errors.is_empty(), "inserts failed: {write_errors:?}");
    assert!(read_errors.is_empty(), "reads failed: {read_errors:?}");
    let ddl = t0.statements.join("\n");
    let check_path = ddl.contains("NOT VALID") && ddl.contains("VALIDATE CONSTRAINT");
    assert_eq!(
        check_path,
        default_bytes > parse_size(max_default_scan),
        "the CHECK path exactly when DEFAULT exceeds max_default_scan: {ddl}"
    );
    let left = query(
        url,
        "SELECT count(*) FROM pg_constraint WHERE conname LIKE 'pgsteward%'",
    )
    .await;
    assert_eq!(left[0].get::<_, i64>(0), 0, "no CHECK left on DEFAULT");
    let found = connect(&as_owner(url))
        .await
        .query_one("SELECT count(*) FROM events WHERE id = ANY($1)", &[&ids])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(found, ids.len() as i64, "acknowledged rows missing");
    Figures {
        default_bytes,
        fill,
        pass: pass_took,
        created: t0.created,
        inserts: ids.len(),
        insert_worst,
        reads,
        read_worst,
        statements: t0.statements.clone(),
    }
}

fn parse_size(s: &str) -> i64 {
    let v: pgsteward::config::ByteSize = s.parse().unwrap();
    v.0 as i64
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DEFAULT {} MB (filled in {:.1?}); pass {:.2?}, {} partitions made; writer {} inserts, longest {:?}; \
             reader {} lookups, longest {:?}; lock_timeout 200ms",
            self.default_bytes >> 20,
            self.fill,
            self.pass,
            self.created,
            self.inserts,
            self.insert_worst,
            self.reads,
            self.read_worst
        )
    }
}

/// The mechanism at test size: ~6 MB of DEFAULT against `max_default_scan
/// = 1MB` (the 1 GB run is `bench::large_default`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_default_under_a_writer_and_a_reader_is_never_scanned_by_an_attach() {
    let url = fresh_db("large_default_load");
    let f = under_load(&url, 6, "1MB").await;
    println!("{f}");
    assert_eq!(f.created, 3, "{f:#?}");
    assert!(f.default_bytes > 1 << 20, "{f:#?}");
}

/// Rows of one coming period in DEFAULT that cannot move (more than one
/// batch) stop that period only: the current one and every other premade
/// period are made, the refusal names the figures, in `plan` too (exit 1).
#[tokio::test]
async fn rows_of_a_future_period_in_default_never_stop_the_others() {
    let url = fresh_db("default_future_rows");
    exec(
        &url,
        &format!(
            "{KEYED}; INSERT INTO events (created_at, payload) SELECT '{}'::timestamptz + (i % 1000) * interval '1 minute', 'p2' \
             FROM generate_series(1, 300) i; \
             INSERT INTO events (created_at, payload) SELECT '{}'::timestamptz + i * interval '1 minute', 'far' \
             FROM generate_series(1, 500) i",
            month_start(2),
            month_start(10)
        ),
    )
    .await;
    let extra = "default_move_batch = 100";
    let tables = table("events", "premake = 4");
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &config_toml(&url, extra, &tables));
    let plan = pgsteward()
        .arg("--config")
        .arg(&path)
        .args(["partitions", "plan"])
        .output()
        .unwrap();
    let text = harness::text(&plan);
    assert_eq!(plan.status.code(), Some(1), "{text}");
    assert!(text.contains("more than 100"), "{text}");
    let r = pass(&config(&url, extra, &tables)).await;
    let t = &r.tables[0];
    assert_eq!((t.created, t.rows_moved), (4, 0), "{t:#?}");
    let err = t.error.as_deref().unwrap_or_default();
    assert!(
        err.contains(&month_name("public.events", 2))
            && err.contains("more than 100")
            && err.contains("default_move_batch"),
        "{err}"
    );
    let names: Vec<String> = partitions_of(&url, "events")
        .await
        .into_iter()
        .map(|p| p.0)
        .collect();
    for i in [0, 1, 3, 4] {
        assert!(names.contains(&month_name("events", i)), "{i}: {names:?}");
    }
    assert!(!names.contains(&month_name("events", 2)), "{names:?}");
    let left = query(&url, "SELECT count(*) FROM ONLY events_default").await;
    assert_eq!(left[0].get::<_, i64>(0), 800, "every row stays readable");
}
