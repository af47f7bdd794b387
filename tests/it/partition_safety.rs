//! What a pass must never do to the application (issue 11), against a real
//! server: change another table, fail or blind a client, leave a hole in the
//! current period, or let a role reach through a partition what the parent's
//! policies deny it. And: a new partition is what `PARTITION OF` would make.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::consumers::{Consumers, Kind};
use crate::harness::{connect, fresh_db, pgsteward, query, write_config};
use crate::logical::{assert_cdc_matches, assert_subscriber_matches, Cdc, Subscriber};
use crate::partitions::{
    as_owner, as_super, config, config_toml, exec, exec_super, month_name, month_start, pass, table,
};

const KEYED: &str = "CREATE TABLE events (id bigint GENERATED ALWAYS AS IDENTITY, \
    created_at timestamptz NOT NULL, payload text, PRIMARY KEY (id, created_at)) \
    PARTITION BY RANGE (created_at); \
    CREATE TABLE events_default PARTITION OF events DEFAULT";

/// Every row of the referencing tables, as text, for before/after comparison.
async fn refs_snapshot(url: &str, tables: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for t in tables {
        let rows = query(
            url,
            &format!("SELECT coalesce(string_agg(r::text, ',' ORDER BY r.id), '') FROM {t} r"),
        )
        .await;
        out.push(rows[0].get::<_, String>(0));
    }
    out
}

#[tokio::test]
async fn foreign_key_actions_never_fire_and_referenced_rows_stay() {
    let url = fresh_db("safe_fk");
    exec(&url, KEYED).await;
    // Next month's rows are referenced; the month after's are not.
    exec(
        &url,
        &format!(
            "INSERT INTO events (created_at, payload) SELECT '{}'::timestamptz + i * interval '1 hour', 'referenced' \
             FROM generate_series(1, 5) i; \
             INSERT INTO events (created_at, payload) SELECT '{}'::timestamptz + i * interval '1 hour', 'free' \
             FROM generate_series(1, 5) i",
            month_start(1),
            month_start(2)
        ),
    )
    .await;
    let actions = [
        ("ref_cascade", "CASCADE"),
        ("ref_set_null", "SET NULL"),
        ("ref_set_default", "SET DEFAULT"),
        ("ref_no_action", "NO ACTION"),
        ("ref_restrict", "RESTRICT"),
    ];
    for (t, action) in actions {
        exec(
            &url,
            &format!(
                "CREATE TABLE {t} (id serial PRIMARY KEY, event_id bigint DEFAULT NULL, event_at timestamptz DEFAULT NULL, \
                   CONSTRAINT {t}_fk FOREIGN KEY (event_id, event_at) REFERENCES events ON DELETE {action}); \
                 INSERT INTO {t} (event_id, event_at) SELECT id, created_at FROM events WHERE payload = 'referenced'"
            ),
        )
        .await;
    }
    let tables: Vec<&str> = actions.iter().map(|a| a.0).collect();
    let before = refs_snapshot(&url, &tables).await;
    let mut consumers = Consumers::attach(&url, Kind::ViaRoot, &["events"]).await;
    let cfg = config(&url, "", &table("events", "premake = 2"));
    let r = pass(&cfg).await;
    assert_eq!(r.outcome(), pgsteward::Outcome::Problem, "{r:#?}");
    let t = &r.tables[0];
    let err = t.error.as_deref().unwrap_or_default();
    for (name, action) in actions {
        assert!(
            err.contains(&format!(
                "5 rows of public.{name} reference them through {name}_fk (ON DELETE {action})"
            )),
            "{err}"
        );
    }
    assert!(
        err.contains("session_replication_role"),
        "what to do: {err}"
    );
    assert_eq!(
        refs_snapshot(&url, &tables).await,
        before,
        "no referencing row changed"
    );
    // The unreferenced month moved and attached; the referenced one stayed.
    assert_eq!((t.created, t.rows_moved), (2, 5), "{t:#?}");
    let in_default = query(
        &url,
        "SELECT payload, count(*) FROM events_default GROUP BY 1",
    )
    .await;
    assert_eq!(in_default.len(), 1);
    assert_eq!(in_default[0].get::<_, String>(0), "referenced");
    assert_eq!(in_default[0].get::<_, i64>(1), 5);
    let standalone = query(
        &url,
        &format!("SELECT to_regclass('{}') IS NULL", month_name("events", 1)),
    )
    .await;
    assert!(standalone[0].get::<_, bool>(0), "nothing left behind");
    // The operator removes the references; the next pass moves the rows.
    for name in &tables {
        exec(&url, &format!("DELETE FROM {name}")).await;
    }
    let r = pass(&cfg).await;
    assert_eq!(r.outcome(), pgsteward::Outcome::Healthy, "{r:#?}");
    assert_eq!((r.tables[0].created, r.tables[0].rows_moved), (1, 5));
    let total = query(&url, "SELECT count(*) FROM ONLY events_default").await;
    assert_eq!(total[0].get::<_, i64>(0), 0);
    consumers.assert_same("moves around referenced rows").await;
}

#[tokio::test]
async fn delete_triggers_on_default_never_fire() {
    let url = fresh_db("safe_trigger");
    exec(&url, KEYED).await;
    exec(
        &url,
        &format!(
            "CREATE TABLE audit (what text); \
             CREATE FUNCTION audit_delete() RETURNS trigger LANGUAGE plpgsql AS \
               'BEGIN INSERT INTO audit VALUES (TG_OP); RETURN OLD; END'; \
             CREATE TRIGGER events_audit AFTER DELETE ON events FOR EACH ROW EXECUTE FUNCTION audit_delete(); \
             INSERT INTO events (created_at, payload) SELECT '{}'::timestamptz + i * interval '1 hour', 'x' \
             FROM generate_series(1, 3) i",
            month_start(1)
        ),
    )
    .await;
    // Every table of the database published (audit too, which stays empty).
    let mut consumers = Consumers::attach(&url, Kind::AllTables, &["events"]).await;
    let cfg = config(&url, "", &table("events", "premake = 1"));
    let r = pass(&cfg).await;
    let err = r.tables[0].error.as_deref().unwrap_or_default();
    assert!(err.contains("DELETE triggers events_audit"), "{r:#?}");
    let audit = query(&url, "SELECT count(*) FROM audit").await;
    assert_eq!(audit[0].get::<_, i64>(0), 0, "the trigger never fired");
    // The operator disables it for the move: the rows move, nothing is audited.
    exec(
        &url,
        "ALTER TABLE events_default DISABLE TRIGGER events_audit",
    )
    .await;
    let r = pass(&cfg).await;
    assert_eq!(
        (r.outcome(), r.tables[0].rows_moved),
        (pgsteward::Outcome::Healthy, 3),
        "{r:#?}"
    );
    let audit = query(&url, "SELECT count(*) FROM audit").await;
    assert_eq!(audit[0].get::<_, i64>(0), 0);
    consumers
        .assert_same("a move with the DELETE trigger disabled")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_and_readers_never_fail_or_miss_a_row_during_a_move() {
    let url = fresh_db("safe_clients");
    exec(&url, KEYED).await;
    // A subscriber and a CDC consumer see the move under live writes too
    // (issue 22, point 1).
    exec(
        &url,
        "CREATE PUBLICATION p FOR TABLE events WITH (publish_via_partition_root = true)",
    )
    .await;
    let sub = Subscriber::create(
        &url,
        "p",
        "CREATE TABLE events (id bigint, created_at timestamptz, payload text, PRIMARY KEY (id, created_at))",
    );
    let mut cdc = Cdc::start(&url).await;
    let next = month_start(1);
    exec(
        &url,
        &format!(
            "INSERT INTO events (created_at, payload) SELECT '{next}'::timestamptz + (i % 1000) * interval '1 minute', 'old' \
             FROM generate_series(1, 20000) i; ANALYZE events"
        ),
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    // A writer inserting rows of the range being moved, through the parent.
    let writer = {
        let (url, stop, next) = (url.clone(), stop.clone(), next.clone());
        tokio::spawn(async move {
            let c = connect(&as_owner(&url)).await;
            let sql = format!(
                "INSERT INTO events (created_at, payload) VALUES ('{next}'::timestamptz + interval '3 days', 'new')"
            );
            let (mut n, mut errors, mut worst) = (0u64, Vec::new(), Duration::ZERO);
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(60) {
                let t = Instant::now();
                match c.batch_execute(&sql).await {
                    Ok(()) => n += 1,
                    Err(e) => errors.push(pgsteward::pg::server_message(&e)),
                }
                worst = worst.max(t.elapsed());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (n, errors, worst)
        })
    };
    // A reader counting through the parent: only inserts commit, so the
    // count may never go down.
    let reader = {
        let (url, stop) = (url.clone(), stop.clone());
        tokio::spawn(async move {
            let c = connect(&as_owner(&url)).await;
            let (mut last, mut dips, mut worst, mut reads) =
                (0i64, Vec::new(), Duration::ZERO, 0u32);
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(60) {
                let t = Instant::now();
                let n: i64 = match c.query_one("SELECT count(*) FROM events", &[]).await {
                    Ok(r) => r.get(0),
                    Err(e) => {
                        dips.push(format!("error: {}", pgsteward::pg::server_message(&e)));
                        continue;
                    }
                };
                worst = worst.max(t.elapsed());
                reads += 1;
                if n < last {
                    dips.push(format!("{last} -> {n}"));
                }
                last = n;
            }
            (dips, worst, reads)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cfg = config(
        &url,
        "default_move_batch = 50000\nlock_timeout = \"1s\"",
        &table("events", "premake = 2"),
    );
    let t = Instant::now();
    let r = pass(&cfg).await;
    let took = t.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (inserted, errors, insert_worst) = writer.await.unwrap();
    let (dips, read_worst, reads) = reader.await.unwrap();
    println!(
        "move of 20000 rows: pass {took:?}; writer {inserted} inserts, longest {insert_worst:?}; reader {reads} counts, longest {read_worst:?}"
    );
    assert_eq!(r.outcome(), pgsteward::Outcome::Healthy, "{r:#?}");
    assert!(r.tables[0].rows_moved >= 20000, "{:#?}", r.tables[0]);
    assert!(errors.is_empty(), "inserts failed: {errors:?}");
    assert!(dips.is_empty(), "the reader missed rows: {dips:?}");
    assert!(inserted > 0 && reads > 0);
    let total = query(&url, "SELECT count(*) FROM events").await;
    assert_eq!(total[0].get::<_, i64>(0), 20000 + inserted as i64);
    let left = query(&url, "SELECT count(*) FROM ONLY events_default").await;
    assert_eq!(left[0].get::<_, i64>(0), 0);
    let rows = "SELECT id::text || ' ' || payload FROM events ORDER BY id";
    assert_subscriber_matches(&url, rows, &sub, rows, "move under a writer").await;
    assert_cdc_matches(
        &mut cdc,
        "public.events",
        &url,
        "SELECT id FROM events ORDER BY id",
        "move under a writer",
    )
    .await;
}

#[tokio::test]
async fn no_role_reaches_through_a_partition_what_the_parents_policies_deny() {
    let url = fresh_db("safe_rls");
    let db = url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let (alice, bob) = (format!("alice_{db}"), format!("bob_{db}"));
    exec_super(&url, &format!("CREATE ROLE {alice}; CREATE ROLE {bob}")).await;
    exec(
        &url,
        &format!(
            "CREATE TABLE events (id int, created_at timestamptz NOT NULL, owner_name text NOT NULL DEFAULT current_user) \
               PARTITION BY RANGE (created_at); \
             ALTER TABLE events ENABLE ROW LEVEL SECURITY; \
             CREATE POLICY own ON events USING (owner_name = current_user) WITH CHECK (owner_name = current_user); \
             GRANT SELECT, INSERT ON events TO {alice}, {bob}"
        ),
    )
    .await;
    let cfg = config(&url, "", &table("events", "premake = 1"));
    let r = pass(&cfg).await;
    assert_eq!(r.outcome(), pgsteward::Outcome::Healthy, "{r:#?}");
    let part = month_name("events", 0);
    exec(
        &url,
        &format!("INSERT INTO events VALUES (1, now(), '{alice}'), (2, now(), '{bob}')"),
    )
    .await;
    // The superuser plays alice (SET ROLE); a fixture, not pgsteward.
    let c = connect(&as_super(&url)).await;
    c.batch_execute(&format!("SET ROLE {alice}")).await.unwrap();
    let mine: i64 = c
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(mine, 1, "the parent's policy");
    let direct = c
        .query_one(&format!("SELECT count(*) FROM {part}"), &[])
        .await;
    assert!(
        direct.is_err(),
        "no direct read of the partition: {direct:?}"
    );
    let write = c
        .batch_execute(&format!(
            "INSERT INTO {part} (id, created_at, owner_name) VALUES (3, now(), '{bob}')"
        ))
        .await;
    assert!(write.is_err(), "no direct write either");
    c.batch_execute("RESET ROLE").await.unwrap();
    // Even a later GRANT on the partition reaches nothing: RLS is on, with no policy.
    c.batch_execute(&format!(
        "GRANT SELECT ON {part} TO {alice}; SET ROLE {alice}"
    ))
    .await
    .unwrap();
    let granted: i64 = c
        .query_one(&format!("SELECT count(*) FROM {part}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(granted, 0);
}

/// A relation described for comparison, with its own name replaced by `X`.
const DESCRIBE: &str = "
WITH r AS (SELECT $1::text::regclass AS oid, (SELECT relname FROM pg_class WHERE oid = $1::text::regclass) AS name)
SELECT json_build_object(
  'columns', (SELECT json_agg(json_build_object(
       'name', a.attname, 'type', format_type(a.atttypid, a.atttypmod), 'notnull', a.attnotnull,
       'identity', a.attidentity, 'generated', a.attgenerated, 'storage', a.attstorage,
       'compression', a.attcompression, 'collation', a.attcollation, 'stattarget', a.attstattarget,
       'default', pg_get_expr(d.adbin, d.adrelid), 'comment', col_description(a.attrelid, a.attnum))
       ORDER BY a.attnum)
     FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped),
  'constraints', (SELECT json_agg(json_build_object('name', replace(k.conname, r.name, 'X'), 'type', k.contype,
       'def', pg_get_constraintdef(k.oid), 'parent', k.conparentid <> 0 OR k.coninhcount > 0)
       ORDER BY replace(k.conname, r.name, 'X'), k.contype)
     FROM pg_constraint k WHERE k.conrelid = r.oid),
  'indexes', (SELECT json_agg(json_build_object('def', regexp_replace(pg_get_indexdef(i.indexrelid), ' INDEX \\S+ ON \\S+ ', ' INDEX ON '),
       'valid', i.indisvalid, 'attached_to', (SELECT inhparent::regclass::text FROM pg_inherits WHERE inhrelid = i.indexrelid))
       ORDER BY regexp_replace(pg_get_indexdef(i.indexrelid), ' INDEX \\S+ ON \\S+ ', ' INDEX ON '))
     FROM pg_index i WHERE i.indrelid = r.oid),
  'owner', pg_get_userbyid(c.relowner), 'acl', c.relacl::text, 'tablespace', c.reltablespace,
  'options', c.reloptions, 'persistence', c.relpersistence, 'kind', c.relkind, 'is_partition', c.relispartition,
  'replica_identity', c.relreplident, 'row_security', c.relrowsecurity, 'force_row_security', c.relforcerowsecurity,
  'comment', obj_description(c.oid, 'pg_class'),
  'triggers', (SELECT json_agg(replace(pg_get_triggerdef(t.oid), r.name, 'X')
       ORDER BY replace(pg_get_triggerdef(t.oid), r.name, 'X'))
     FROM pg_trigger t WHERE t.tgrelid = r.oid)
)::text FROM r JOIN pg_class c ON c.oid = r.oid";

async fn describe(url: &str, rel: &str) -> serde_json::Value {
    let c = connect(url).await;
    let row = c.query_one(DESCRIBE, &[&rel]).await.unwrap();
    serde_json::from_str(&row.get::<_, String>(0)).unwrap()
}

#[tokio::test]
async fn a_new_partition_matches_a_native_partition_of_the_same_parent() {
    let url = fresh_db("safe_native");
    let db = url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let reader = format!("reader_{db}");
    exec_super(&url, &format!("CREATE ROLE {reader}")).await;
    exec(
        &url,
        &format!(
            "CREATE TABLE ev (id bigint GENERATED ALWAYS AS IDENTITY, created_at timestamptz NOT NULL, \
               amount int DEFAULT 5 CHECK (amount > 0), doubled int GENERATED ALWAYS AS (amount * 2) STORED, \
               payload text COMPRESSION pglz, tenant int NOT NULL DEFAULT 1, \
               PRIMARY KEY (id, created_at), UNIQUE (tenant, id, created_at)) PARTITION BY RANGE (created_at); \
             ALTER TABLE ev ALTER payload SET STORAGE EXTERNAL; \
             CREATE INDEX ev_payload ON ev (payload); \
             CREATE INDEX ev_lower ON ev (lower(payload)) WHERE tenant > 0; \
             CREATE INDEX ev_brin ON ev USING brin (created_at); \
             CREATE FUNCTION ev_touch() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'; \
             CREATE TRIGGER ev_touch BEFORE INSERT ON ev FOR EACH ROW EXECUTE FUNCTION ev_touch(); \
             CREATE TABLE ev_default PARTITION OF ev DEFAULT; \
             ALTER TABLE ev ENABLE ROW LEVEL SECURITY; \
             GRANT SELECT ON ev TO {reader}; \
             CREATE TABLE ev_native PARTITION OF ev FOR VALUES FROM ('{}') TO ('{}')",
            month_start(6),
            month_start(7)
        ),
    )
    .await;
    let cfg = config(&url, "", &table("ev", "premake = 1"));
    let r = pass(&cfg).await;
    assert_eq!(r.outcome(), pgsteward::Outcome::Healthy, "{r:#?}");
    let ours = describe(&url, &month_name("ev", 0)).await;
    let native = describe(&url, "ev_native").await;
    // Row-level security is enabled on ours (deny-all for direct access),
    // and the pass enabled it on the native one too: access follows the
    // parent on every partition. Everything must be identical.
    assert_eq!(ours["row_security"], true);
    // Index names: one rule for every partition index pgsteward names, the
    // parent's name with its prefix swapped for the partition's (a native
    // partition's are PostgreSQL's, after the columns).
    let names = query(
        &url,
        &format!(
            "SELECT string_agg(c.relname, ' ' ORDER BY c.relname) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE i.indrelid = '{}'::regclass",
            month_name("ev", 0)
        ),
    )
    .await;
    let m = month_name("ev", 0);
    assert_eq!(
        names[0].get::<_, String>(0),
        format!("{m}_brin {m}_lower {m}_payload {m}_pkey {m}_tenant_id_created_at_key")
    );
    assert!(
        r.tables[0].access_repaired >= 1,
        "the native partition's access was repaired: {r:#?}"
    );
    for key in [
        "row_security",
        "columns",
        "constraints",
        "indexes",
        "owner",
        "acl",
        "tablespace",
        "options",
        "persistence",
        "kind",
        "is_partition",
        "replica_identity",
        "force_row_security",
        "comment",
        "triggers",
    ] {
        assert_eq!(
            ours[key], native[key],
            "{key}: ours {:#} vs native {:#}",
            ours[key], native[key]
        );
    }
}

#[tokio::test]
async fn a_hole_in_the_current_period_is_filled_or_the_pass_fails() {
    let url = fresh_db("safe_hole");
    exec(&url, crate::partitions::EVENTS).await;
    // A hand-made partition over the first half of this month.
    let c = connect(&as_owner(&url)).await;
    c.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    c.batch_execute(&format!(
        "CREATE TABLE events_half PARTITION OF events FOR VALUES FROM ('{0}') TO ('{0}'::date + 14)",
        month_start(0)
    ))
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &config_toml(&url, "", &table("events", "premake = 1")),
    );
    let status = |fmt: &'static str| {
        let path = path.clone();
        move || {
            pgsteward()
                .arg("--config")
                .arg(&path)
                .args(["partitions", "status", "--output", fmt])
                .output()
                .unwrap()
        }
    };
    let out = status("json")();
    assert_eq!(out.status.code(), Some(1), "a hole is a problem");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let holes = s["tables"][0]["holes"].as_array().unwrap().clone();
    assert_eq!(s["tables"][0]["current_covered"], false, "{s:#}");
    assert!(
        holes[0]
            .as_str()
            .unwrap()
            .ends_with(&format!("{} 00:00:00+00:00", month_start(1))),
        "{holes:?}"
    );
    let text = String::from_utf8_lossy(&status("text")().stdout).to_string();
    assert!(
        text.contains("HOLES") && text.contains(&month_start(1)),
        "{text}"
    );
    // A table squatting on the fill's name: the pass cannot fill, exit 1.
    let fill = format!("{}_fill1", month_name("events", 0));
    exec(&url, &format!("CREATE TABLE {fill} (x int)")).await;
    let apply = || {
        pgsteward()
            .arg("--config")
            .arg(&path)
            .args(["partitions", "apply"])
            .output()
            .unwrap()
    };
    let out = apply();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    exec(&url, &format!("DROP TABLE {fill}")).await;
    let out = apply();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = status("json")();
    assert_eq!(out.status.code(), Some(0));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["tables"][0]["holes"], serde_json::json!([]));
    // The second half of the month takes inserts now.
    exec(
        &url,
        &format!(
            "INSERT INTO events (created_at) VALUES ('{}'::timestamptz - interval '1 second')",
            month_start(1)
        ),
    )
    .await;
}
