//! Privileges and row-level security follow the parent, always (issue 22,
//! points 3, 6 and 9): a REVOKE or row-level security enabled after the
//! partitions exist reaches them at the next pass (`status` says so before,
//! exit 1), a parent with FORCE row-level security still gets the rows of
//! its DEFAULT moved, and `REPLICA IDENTITY USING INDEX` is carried.

use super::*;
use crate::consumers::{Consumers, Kind};

fn role(url: &str, what: &str) -> String {
    format!("{what}_{}", db_name(url))
}

async fn can_read(url: &str, role: &str, rel: &str) -> bool {
    let c = connect(&as_super(url)).await;
    c.batch_execute(&format!("SET ROLE {role}")).await.unwrap();
    c.query_one(&format!("SELECT count(*) FROM {rel}"), &[])
        .await
        .map(|r| r.get::<_, i64>(0) > 0)
        .unwrap_or(false)
}

fn status(url: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &config_toml(url, "", &table("events", "premake = 1")),
    );
    pgsteward()
        .arg("--config")
        .arg(&path)
        .args(["partitions", "status"])
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_later_revoke_or_row_security_reaches_existing_partitions() {
    let url = fresh_db("access_later");
    let alice = role(&url, "alice");
    exec_super(&url, &format!("CREATE ROLE {alice}")).await;
    exec(
        &url,
        &format!("{EVENTS}; GRANT SELECT ON events TO {alice}"),
    )
    .await;
    let cfg = config(&url, "", &table("events", "premake = 1"));
    assert_eq!(pass(&cfg).await.outcome(), pgsteward::Outcome::Healthy);
    exec(
        &url,
        "INSERT INTO events (created_at, payload) VALUES (now(), 'x')",
    )
    .await;
    let part = month_name("events", 0);
    assert!(can_read(&url, &alice, &part).await, "copied grant");
    // The application revokes alice on the parent; the partition still lets her in.
    exec(&url, &format!("REVOKE ALL ON events FROM {alice}")).await;
    let o = status(&url);
    assert_eq!(o.status.code(), Some(1), "{}", harness::text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("{alice} loses SELECT")),
        "{}",
        harness::text(&o)
    );
    let r = pass(&cfg).await;
    assert_eq!(r.outcome(), pgsteward::Outcome::Healthy, "{r:#?}");
    assert!(r.tables[0].access_repaired >= 1, "{r:#?}");
    assert!(
        !can_read(&url, &alice, &part).await,
        "revoked on the partition too"
    );
    // Row-level security enabled later, alice granted on the parent again.
    exec(
        &url,
        &format!(
            "GRANT SELECT ON events TO {alice}; ALTER TABLE events ENABLE ROW LEVEL SECURITY; \
             CREATE POLICY none_for_alice ON events USING (payload = 'not x')"
        ),
    )
    .await;
    let r = pass(&cfg).await;
    assert_eq!(r.outcome(), pgsteward::Outcome::Healthy, "{r:#?}");
    assert!(
        !can_read(&url, &alice, "events").await,
        "the parent's policy"
    );
    assert!(
        !can_read(&url, &alice, &part).await,
        "nothing through the partition either"
    );
    let flags = query(
        &url,
        &format!(
            "SELECT relrowsecurity, relacl::text FROM pg_class WHERE oid = '{part}'::regclass"
        ),
    )
    .await;
    assert!(flags[0].get::<_, bool>(0));
    assert!(
        !flags[0]
            .get::<_, Option<String>>(1)
            .unwrap_or_default()
            .contains(&alice),
        "no direct grant"
    );
    assert_eq!(status(&url).status.code(), Some(0));
    // A policy of the partition's own is the operator's: reported, kept.
    exec(&url, &format!("CREATE POLICY own ON {part} USING (true)")).await;
    let r = pass(&cfg).await;
    assert_eq!(r.outcome(), pgsteward::Outcome::Problem, "{r:#?}");
    assert!(
        r.tables[0]
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("DROP POLICY"),
        "{r:#?}"
    );
    exec_super(
        &url,
        &format!("DROP OWNED BY {alice} CASCADE; DROP ROLE {alice}"),
    )
    .await;
}

#[tokio::test]
async fn forced_row_security_with_rows_in_default_gets_its_partition() {
    let url = fresh_db("access_force");
    exec(
        &url,
        &format!(
            "{EVENTS}; CREATE TABLE events_default PARTITION OF events DEFAULT; \
             ALTER TABLE events ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY; \
             CREATE POLICY visible ON events USING (payload = 'visible') WITH CHECK (payload = 'visible'); \
             ALTER TABLE events NO FORCE ROW LEVEL SECURITY; \
             INSERT INTO events (created_at, payload) SELECT '{}'::timestamptz + i * interval '1 hour', \
               CASE WHEN i % 2 = 0 THEN 'visible' ELSE 'hidden' END FROM generate_series(1, 10) i; \
             ALTER TABLE events FORCE ROW LEVEL SECURITY",
            month_start(1)
        ),
    )
    .await;
    // Consumers of the move (issue 22); rows identified in full (no key).
    exec(
        &url,
        "ALTER TABLE events REPLICA IDENTITY FULL; ALTER TABLE events_default REPLICA IDENTITY FULL",
    )
    .await;
    let mut consumers = Consumers::attach(&url, Kind::ViaRoot, &["events"]).await;
    let cfg = config(&url, "", &table("events", "premake = 1"));
    let r = pass(&cfg).await;
    let t = &r.tables[0];
    assert_eq!(r.outcome(), pgsteward::Outcome::Healthy, "{r:#?}");
    assert_eq!(t.rows_moved, 10, "{t:#?}");
    let part = month_name("events", 1);
    let rows = query(&url, &format!("SELECT count(*) FROM {part}")).await;
    assert_eq!(
        rows[0].get::<_, i64>(0),
        10,
        "every row moved, hidden ones too"
    );
    let flags = query(
        &url,
        &format!(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = '{part}'::regclass"
        ),
    )
    .await;
    assert!(flags[0].get::<_, bool>(0) && flags[0].get::<_, bool>(1));
    let orphans = query(
        &url,
        "SELECT count(*) FROM pg_class WHERE relname LIKE 'events_%' AND relkind = 'r' AND NOT relispartition",
    )
    .await;
    assert_eq!(orphans[0].get::<_, i64>(0), 0, "no standalone table left");
    consumers.assert_same("hidden and visible rows moved").await;
}

#[tokio::test]
async fn replica_identity_using_index_is_carried_to_new_partitions() {
    let url = fresh_db("access_ident");
    exec(
        &url,
        "CREATE TABLE events (id bigint NOT NULL, created_at timestamptz NOT NULL, payload text) \
           PARTITION BY RANGE (created_at); \
         CREATE UNIQUE INDEX events_ident ON events (id, created_at); \
         ALTER TABLE events REPLICA IDENTITY USING INDEX events_ident; \
         CREATE PUBLICATION p FOR TABLE events WITH (publish_via_partition_root = true)",
    )
    .await;
    let cfg = config(&url, "", &table("events", "premake = 1"));
    let r = pass(&cfg).await;
    assert_eq!(r.outcome(), pgsteward::Outcome::Healthy, "{r:#?}");
    exec(
        &url,
        "INSERT INTO events VALUES (1, now(), 'a'); UPDATE events SET payload = 'b' WHERE id = 1; \
         DELETE FROM events WHERE id = 1",
    )
    .await;
    let idents = query(
        &url,
        "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'events'::regclass AND c.relreplident = 'i'",
    )
    .await;
    assert_eq!(idents[0].get::<_, i64>(0), 2);
}
