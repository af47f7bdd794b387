//! `pgsteward convert` against a real server: converted under a writer and a
//! reader, killed at every step boundary and resumed, aborted, and refused.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::consumers::{Consumers, Kind};
use crate::harness::{connect, fresh_db, pgsteward, query, write_config};
use crate::partitions::{as_owner, as_steward, exec_super};

fn db_name(url: &str) -> String {
    let tail = url.rsplit('/').next().unwrap_or_default();
    tail.split('?').next().unwrap_or_default().to_string()
}

/// Runs SQL as the application's owner (`app_owner`), as a migration would.
pub(crate) async fn exec(url: &str, sql: &str) {
    let client = connect(&as_owner(url)).await;
    if let Err(e) = client.batch_execute(sql).await {
        panic!("{sql}: {}", pgsteward::pg::server_message(&e));
    }
}

pub(crate) fn config(dir: &std::path::Path, url: &str, tables: &[&str]) -> PathBuf {
    let blocks: String = tables
        .iter()
        .map(|t| format!("[[partitions.tables]]\ntable = '{t}'\ninterval = 'daily'\npremake = 2\n"))
        .collect();
    let url = as_steward(url);
    write_config(
        dir,
        &format!(
            "[database]\nprimary = \"{url}\"\n\n[partitions]\nlock_timeout = \"200ms\"\n{blocks}"
        ),
    )
}

pub(crate) struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub(crate) fn run(cfg: &std::path::Path, args: &[&str], failpoint: Option<&str>) -> Run {
    let mut cmd = pgsteward();
    cmd.arg("--config").arg(cfg).args(args);
    if let Some(fp) = failpoint {
        cmd.env("PGSTEWARD_FAILPOINT", fp);
    }
    let out = cmd.output().expect("run pgsteward");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The test table: identity PK, a secondary index, an FK to another table, a
/// trigger, RLS with policies, a view granted to another role, and rows over
/// the last 20 days. Roles are cluster-wide, so they carry the database's name.
pub(crate) async fn setup(url: &str, rows: i64) -> (String, String) {
    let db = db_name(url);
    let (writer, reader) = (format!("{db}_writer"), format!("{db}_reader"));
    exec_super(url, &format!("CREATE ROLE {writer}; CREATE ROLE {reader}")).await;
    exec(
        url,
        &format!(
            "GRANT USAGE ON SCHEMA public TO {writer}, {reader};
             CREATE TABLE other (id int PRIMARY KEY); INSERT INTO other VALUES (1), (2);
             GRANT SELECT ON other TO {writer};
             CREATE TABLE events (
                 id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 created_at timestamptz NOT NULL DEFAULT now(),
                 payload text,
                 other_id int NOT NULL REFERENCES other (id));
             CREATE INDEX events_payload_idx ON events (payload);
             CREATE FUNCTION fill_payload() RETURNS trigger LANGUAGE plpgsql AS
               $$BEGIN NEW.payload := coalesce(NEW.payload, 'from trigger'); RETURN NEW; END$$;
             CREATE TRIGGER events_fill BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION fill_payload();
             ALTER TABLE events ENABLE ROW LEVEL SECURITY;
             CREATE POLICY writer_all ON events FOR ALL TO {writer} USING (true) WITH CHECK (true);
             CREATE POLICY reader_one ON events FOR SELECT TO {reader} USING (other_id = 1);
             GRANT SELECT, INSERT ON events TO {writer};
             GRANT SELECT ON events TO {reader};
             CREATE VIEW recent AS SELECT id, created_at, payload FROM events;
             GRANT SELECT ON recent TO {reader};
             COMMENT ON TABLE events IS 'what happened';
             INSERT INTO events (created_at, payload, other_id)
               SELECT now() - (i::bigint * 1728000 / {rows}) * interval '1 second', md5(i::text), 1 + i % 2
               FROM generate_series(1, {rows}) i;"
        ),
    )
    .await;
    (writer, reader)
}

const CHECKSUM: &str = "SELECT count(*), md5(string_agg(id::text || created_at::text || payload || other_id, ',' ORDER BY id)) \
     FROM public.events WHERE id <= $1";

pub(crate) async fn checksum(url: &str, upto: i64) -> (i64, String) {
    let client = connect(url).await;
    let r = client.query_one(CHECKSUM, &[&upto]).await.unwrap();
    (r.get(0), r.get(1))
}

pub(crate) async fn relkind(url: &str, name: &str) -> String {
    query(url, &format!("SELECT coalesce((SELECT relkind::text FROM pg_class WHERE oid = to_regclass('{name}')), '-')"))
        .await[0]
        .get(0)
}

pub(crate) struct Load {
    pub stop: Arc<AtomicBool>,
    pub writer: tokio::task::JoinHandle<(Vec<i64>, Vec<String>, Duration)>,
    pub reader: tokio::task::JoinHandle<(u64, Vec<String>, Duration)>,
}

/// A writer inserting through the parent as an application role and a reader
/// querying the view as its grantee, until stopped (bounded in count).
pub(crate) async fn load(url: &str, writer_role: &str, reader_role: &str) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let w = connect(url).await;
    w.batch_execute(&format!("SET ROLE {writer_role}"))
        .await
        .unwrap();
    let r = connect(url).await;
    r.batch_execute(&format!("SET ROLE {reader_role}"))
        .await
        .unwrap();
    let s = stop.clone();
    let writer = tokio::spawn(async move {
        let (mut ids, mut errors, mut longest) = (Vec::new(), Vec::new(), Duration::ZERO);
        let stmt = w
            .prepare("INSERT INTO public.events (payload, other_id) VALUES ($1, 1) RETURNING id")
            .await
            .unwrap();
        for i in 0..200_000 {
            if s.load(Ordering::Relaxed) {
                break;
            }
            let t = Instant::now();
            match w.query_one(&stmt, &[&format!("w{i}")]).await {
                Ok(row) => ids.push(row.get(0)),
                Err(e) => errors.push(pgsteward::pg::server_message(&e)),
            }
            longest = longest.max(t.elapsed());
        }
        (ids, errors, longest)
    });
    let s = stop.clone();
    let reader = tokio::spawn(async move {
        let (mut n, mut errors, mut longest) = (0u64, Vec::new(), Duration::ZERO);
        for _ in 0..200_000 {
            if s.load(Ordering::Relaxed) {
                break;
            }
            let t = Instant::now();
            match r
                .query_one("SELECT count(*) FROM (SELECT id FROM public.recent ORDER BY id DESC LIMIT 50) x", &[])
                .await
            {
                Ok(_) => n += 1,
                Err(e) => errors.push(pgsteward::pg::server_message(&e)),
            }
            longest = longest.max(t.elapsed());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (n, errors, longest)
    });
    Load {
        stop,
        writer,
        reader,
    }
}

async fn plan_json(cfg: &std::path::Path) -> serde_json::Value {
    let cfg = cfg.to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        run(
            &cfg,
            &[
                "convert",
                "plan",
                "--table",
                "public.events",
                "--output",
                "json",
            ],
            None,
        )
    })
    .await
    .unwrap();
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

#[tokio::test]
async fn converts_online_under_a_writer_and_a_reader() {
    let url = fresh_db("convert_live");
    let (writer, reader) = setup(&url, 20_000).await;
    let before = checksum(&url, 20_000).await;
    let dir = tempfile::tempdir().unwrap();
    // debug1 makes the server say whether ATTACH scanned the table.
    let debug_url = format!("{url}&options=-cclient_min_messages%3Ddebug1");
    let cfg = config(dir.path(), &debug_url, &["public.events"]);
    let plan = plan_json(&cfg).await;
    let changes = plan["plan"]["changes"].to_string();
    assert!(
        changes.contains("primary key events_pkey (id) becomes (id, created_at)"),
        "{changes}"
    );
    let first = plan["plan"]["first_partition"]
        .as_str()
        .unwrap()
        .to_string();
    let boundary = plan["plan"]["boundary_text"].as_str().unwrap().to_string();

    // After the plan (which reads publications): a subscriber and a CDC consumer.
    let mut consumers = Consumers::attach(&url, Kind::ViaRoot, &["events"]).await;
    let l = load(&url, &writer, &reader).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = cfg.clone();
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = pgsteward();
        cmd.env("PGSTEWARD_LOG_LEVEL", "pgsteward=debug")
            .arg("--config")
            .arg(&c)
            .args(["convert", "start", "--table", "public.events"]);
        cmd.output().unwrap()
    })
    .await
    .unwrap();
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    l.stop.store(true, Ordering::Relaxed);
    let (ids, werr, wlong) = l.writer.await.unwrap();
    let (reads, rerr, rlong) = l.reader.await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        werr.is_empty() && rerr.is_empty(),
        "client errors: {werr:?} {rerr:?}"
    );
    assert!(
        ids.len() > 10 && reads > 10,
        "{} writes, {reads} reads",
        ids.len()
    );
    println!("conversion {took:?}; longest insert {wlong:?}, longest read {rlong:?}");
    // Generous for a shared 2-core machine; the benchmark measures it properly.
    assert!(
        wlong < Duration::from_secs(3) && rlong < Duration::from_secs(3),
        "{wlong:?} {rlong:?}"
    );
    assert!(
        stderr.contains(&format!(
            "partition constraint for table \\\"{first}\\\" is implied by existing constraints"
        )) || stderr.contains(&format!(
            "partition constraint for table \"{first}\" is implied by existing constraints"
        )),
        "ATTACH scanned the table: {stderr}"
    );

    // Rows: the old ones unchanged, every acknowledged insert there.
    assert_eq!(checksum(&url, 20_000).await, before);
    let client = connect(&url).await;
    let found: i64 = client
        .query_one(
            "SELECT count(*) FROM public.events WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(found as usize, ids.len());
    // The shape: a partitioned parent under the old name, the table its first partition.
    assert_eq!(relkind(&url, "public.events").await, "p");
    let bound: String = client
        .query_one(&format!("SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE oid = 'public.{first}'::regclass"), &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        bound.starts_with("FOR VALUES FROM (MINVALUE) TO ("),
        "{bound}"
    );
    let idx: Vec<String> = client
        .query("SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'public.events'::regclass ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(idx, vec!["events_payload_idx", "events_pkey"]);
    // The view reads the new parent and answers its grantee.
    let reads_from: Vec<String> = client
        .query(
            "SELECT DISTINCT d.refobjid::regclass::text FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid \
             WHERE r.ev_class = 'public.recent'::regclass AND d.refobjid <> 'public.recent'::regclass AND d.refclassid = 'pg_class'::regclass",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(reads_from, vec!["events"]);
    client
        .batch_execute(&format!("SET ROLE {reader}"))
        .await
        .unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM public.recent", &[])
        .await
        .unwrap()
        .get(0);
    assert!(n >= 20_000);
    // RLS holds on the parent: the reader sees only other_id = 1.
    let hidden: i64 = client
        .query_one("SELECT count(*) FROM public.events WHERE other_id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(hidden, 0);
    client
        .batch_execute(&format!("RESET ROLE; SET ROLE {writer}"))
        .await
        .unwrap();
    // The identity continues, the trigger fires, the FK holds.
    let row = client
        .query_one(
            "INSERT INTO public.events (other_id) VALUES (1) RETURNING id, payload",
            &[],
        )
        .await
        .unwrap();
    let (id, payload): (i64, String) = (row.get(0), row.get(1));
    assert!(id > ids.iter().copied().max().unwrap_or(20_000), "{id}");
    assert_eq!(payload, "from trigger");
    let fk = client
        .execute("INSERT INTO public.events (other_id) VALUES (99)", &[])
        .await;
    assert!(fk
        .is_err_and(|e| e.code() == Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION)));
    // The next period's rows land in their own partition.
    let part: String = client
        .query_one(
            &format!("INSERT INTO public.events (created_at, other_id) VALUES ('{boundary}'::timestamptz + interval '1 hour', 1) RETURNING tableoid::regclass::text"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(part.starts_with("events_") && part != first, "{part}");
    client.batch_execute("RESET ROLE").await.unwrap();

    // The journal says done; status shows the first partition; the pass has nothing to do.
    let c = cfg.clone();
    let st = tokio::task::spawn_blocking(move || {
        run(
            &c,
            &[
                "convert",
                "status",
                "--table",
                "public.events",
                "--output",
                "json",
            ],
            None,
        )
    })
    .await
    .unwrap();
    let st: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(st["conversion"]["state"], "done", "{st:#}");
    assert!(
        st["first_partition"]["range"]
            .as_str()
            .unwrap()
            .contains("MINVALUE"),
        "{st:#}"
    );
    assert!(st["first_partition"]["bytes"].as_i64().unwrap() > 0);
    let c = cfg.clone();
    let pass = tokio::task::spawn_blocking(move || {
        run(&c, &["partitions", "apply", "--output", "json"], None)
    })
    .await
    .unwrap();
    assert_eq!(pass.code, Some(0), "{}{}", pass.stdout, pass.stderr);
    let pass: serde_json::Value = serde_json::from_str(&pass.stdout).unwrap();
    assert_eq!(pass["tables"][0]["created"], 0, "{pass:#}");
    let c = cfg.clone();
    let st = tokio::task::spawn_blocking(move || {
        run(&c, &["partitions", "status", "--output", "json"], None)
    })
    .await
    .unwrap();
    assert!(
        st.stdout.contains(&format!("{first}: first partition, "))
            && st.stdout.contains("holds every row before"),
        "{}",
        st.stdout
    );
    let notes = pass["tables"][0]["notes"].to_string();
    assert!(
        notes.contains("holds every row before") && !notes.contains("overlaps"),
        "{notes}"
    );
    consumers
        .assert_same("conversion under a writer, then a pass")
        .await;
}

#[tokio::test]
async fn killed_at_every_step_boundary_then_resumed() {
    // The boundaries, in order, from the saga's table (`convert-<step>-start` / `-done`).
    let points = pgsteward::saga::boundaries(pgsteward::convert::table::TABLE);
    for (i, b) in points.iter().enumerate() {
        let point = &b.failpoint;
        let url = fresh_db(&format!("convert_kill{i}"));
        setup(&url, 500).await;
        let before = checksum(&url, 500).await;
        // Both kinds of publication a conversion carries, in turn.
        let kind = [Kind::ViaRoot, Kind::Schema][i % 2];
        let mut consumers = Consumers::attach(&url, kind, &["events"]).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &url, &["public.events"]);
        let c = cfg.clone();
        let fp = format!("{point}=kill");
        let out = tokio::task::spawn_blocking(move || {
            run(
                &c,
                &["convert", "start", "--table", "public.events"],
                Some(&fp),
            )
        })
        .await
        .unwrap();
        assert_eq!(out.code, None, "{point}: not killed: {}", out.stderr);
        // Converted or cleanly not converted, never in between.
        let kind = relkind(&url, "public.events").await;
        let swapped = b.past_no_return;
        assert_eq!(kind, if swapped { "p" } else { "r" }, "{point}");
        assert_eq!(checksum(&url, 500).await, before, "{point}");
        if !swapped {
            // No partition pass touches a table mid-conversion.
            let c = cfg.clone();
            let pass = tokio::task::spawn_blocking(move || {
                run(&c, &["partitions", "apply", "--output", "json"], None)
            })
            .await
            .unwrap();
            let pass: serde_json::Value = serde_json::from_str(&pass.stdout).unwrap();
            assert!(
                pass["tables"][0]["skipped"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("converted"),
                "{point}: {pass:#}"
            );
        }
        let c = cfg.clone();
        let out = tokio::task::spawn_blocking(move || {
            run(&c, &["convert", "resume", "--table", "public.events"], None)
        })
        .await
        .unwrap();
        assert_eq!(out.code, Some(0), "{point}: resume: {}", out.stderr);
        assert_eq!(relkind(&url, "public.events").await, "p", "{point}");
        assert_eq!(checksum(&url, 500).await, before, "{point}");
        let left: i64 = query(
            &url,
            "SELECT count(*) FROM pg_constraint WHERE conname = 'pgsteward_convert_bound'",
        )
        .await[0]
            .get(0);
        assert_eq!(left, 0, "{point}");
        let state: String = query(&url, "SELECT state FROM pgsteward.conversions").await[0].get(0);
        assert_eq!(state, "done", "{point}");
        consumers
            .assert_same(&format!("killed at {point}, resumed"))
            .await;
    }
}

#[tokio::test]
async fn abort_before_the_swap_leaves_the_table_as_it_was_and_after_it_is_refused() {
    let url = fresh_db("convert_abort");
    setup(&url, 500).await;
    let shape = "SELECT (SELECT string_agg(conname || ':' || pg_get_constraintdef(oid), ',' ORDER BY conname) FROM pg_constraint WHERE conrelid = 'public.events'::regclass), \
                 (SELECT string_agg(indexrelid::regclass::text, ',' ORDER BY 1) FROM pg_index WHERE indrelid = 'public.events'::regclass)";
    let before: (String, String) = {
        let r = &query(&url, shape).await[0];
        (r.get(0), r.get(1))
    };
    let mut consumers = Consumers::attach(&url, Kind::Schema, &["events"]).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &url, &["public.events"]);
    let c = cfg.clone();
    let out = tokio::task::spawn_blocking(move || {
        run(
            &c,
            &["convert", "start", "--table", "public.events"],
            Some("convert-swapped-start=error"),
        )
    })
    .await
    .unwrap();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    // A second start is refused while this one is in flight.
    let c = cfg.clone();
    let again = tokio::task::spawn_blocking(move || {
        run(&c, &["convert", "start", "--table", "public.events"], None)
    })
    .await
    .unwrap();
    assert_eq!(again.code, Some(1));
    assert!(again.stderr.contains("is in flight"), "{}", again.stderr);
    let c = cfg.clone();
    let out = tokio::task::spawn_blocking(move || {
        run(&c, &["convert", "abort", "--table", "public.events"], None)
    })
    .await
    .unwrap();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let after: (String, String) = {
        let r = &query(&url, shape).await[0];
        (r.get(0), r.get(1))
    };
    assert_eq!(after, before);
    assert_eq!(relkind(&url, "public.events").await, "r");
    let state: String = query(&url, "SELECT state FROM pgsteward.conversions").await[0].get(0);
    assert_eq!(state, "aborted");

    // Past the swap, abort is refused and resume finishes.
    let c = cfg.clone();
    let out = tokio::task::spawn_blocking(move || {
        run(
            &c,
            &["convert", "start", "--table", "public.events"],
            Some("convert-partitions_made-start=error"),
        )
    })
    .await
    .unwrap();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let c = cfg.clone();
    let out = tokio::task::spawn_blocking(move || {
        run(&c, &["convert", "abort", "--table", "public.events"], None)
    })
    .await
    .unwrap();
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("point of no return"), "{}", out.stderr);
    let c = cfg.clone();
    let out = tokio::task::spawn_blocking(move || {
        run(&c, &["convert", "resume", "--table", "public.events"], None)
    })
    .await
    .unwrap();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    consumers
        .assert_same("aborted, then resumed past the swap")
        .await;
}
