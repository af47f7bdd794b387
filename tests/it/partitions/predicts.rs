//! `partitions plan` predicts `apply` (issue 27, "Plans predict"): every
//! refusal a pass makes over rows in DEFAULT (more than one batch, a DEFAULT
//! too large to scan with rows in it, a publication publishing DEFAULT
//! under its own name, rows referenced by a foreign key, DELETE triggers on
//! DEFAULT) shows in `plan` first, with exit 1 and the same reason; `status`
//! says so too (exit 1); and `apply` then refuses with that reason and
//! leaves the rows in DEFAULT. A plan never passes what apply refuses.

use super::*;

const KEYED: &str = "CREATE TABLE events (id bigint GENERATED ALWAYS AS IDENTITY, \
    created_at timestamptz NOT NULL, payload text, PRIMARY KEY (id, created_at)) \
    PARTITION BY RANGE (created_at); \
    CREATE TABLE events_default PARTITION OF events DEFAULT";

struct Case {
    what: &'static str,
    /// Run as the owner after KEYED; rows of next month are in DEFAULT.
    setup: String,
    extra: &'static str,
    /// In the plan's, status's and apply's words alike.
    reason: &'static str,
}

fn rows(n: u32, month: i32, payload: &str) -> String {
    format!(
        "INSERT INTO events (created_at, payload) SELECT '{}'::timestamptz + (i % 1000) * interval '1 minute', {payload} \
         FROM generate_series(1, {n}) i;",
        month_start(month)
    )
}

fn run(path: &std::path::Path, what: &str) -> (Option<i32>, String) {
    let out = pgsteward()
        .arg("--config")
        .arg(path)
        .args(["partitions", what])
        .output()
        .unwrap();
    (out.status.code(), harness::text(&out))
}

#[tokio::test]
async fn plan_and_status_name_every_refusal_apply_then_makes() {
    let cases = [
        Case {
            what: "more than one batch",
            setup: rows(300, 1, "'x'"),
            extra: "default_move_batch = 100",
            reason: "more than partitions.default_move_batch = 100",
        },
        Case {
            what: "rows in a DEFAULT over max_default_scan",
            setup: format!("{}{}", rows(8000, 10, "repeat('x', 200)"), rows(5, 1, "'x'")),
            extra: "max_default_scan = \"1MB\"",
            reason: "more than partitions.max_default_scan",
        },
        Case {
            what: "a publication of DEFAULT under its own name",
            setup: format!("CREATE PUBLICATION p_{{db}} FOR TABLE events; {}", rows(10, 1, "'x'")),
            extra: "",
            reason: "publish_via_partition_root = true",
        },
        Case {
            what: "rows referenced by a foreign key",
            setup: format!(
                "{} CREATE TABLE refs (id serial PRIMARY KEY, event_id bigint, event_at timestamptz, \
                   CONSTRAINT refs_fk FOREIGN KEY (event_id, event_at) REFERENCES events ON DELETE CASCADE); \
                 INSERT INTO refs (event_id, event_at) SELECT id, created_at FROM events LIMIT 3",
                rows(10, 1, "'x'")
            ),
            extra: "",
            reason: "3 rows of public.refs reference them through refs_fk (ON DELETE CASCADE)",
        },
        Case {
            what: "DELETE triggers on DEFAULT",
            setup: format!(
                "CREATE TABLE audit (what text); \
                 CREATE FUNCTION audit_delete() RETURNS trigger LANGUAGE plpgsql AS \
                   'BEGIN INSERT INTO audit VALUES (TG_OP); RETURN OLD; END'; \
                 CREATE TRIGGER events_audit AFTER DELETE ON events FOR EACH ROW EXECUTE FUNCTION audit_delete(); {}",
                rows(10, 1, "'x'")
            ),
            extra: "",
            reason: "DELETE triggers events_audit",
        },
    ];
    for case in cases {
        let url = fresh_db("plan_predicts");
        let db = db_name(&url);
        exec(&url, KEYED).await;
        exec(&url, &case.setup.replace("{db}", &db)).await;
        exec(&url, "ANALYZE events").await;
        let before: i64 = query(&url, "SELECT count(*) FROM ONLY events_default").await[0].get(0);
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(
            dir.path(),
            &config_toml(&url, case.extra, &table("events", "premake = 2")),
        );
        let what = case.what;
        for command in ["plan", "status", "apply"] {
            let (code, text) = run(&path, command);
            assert_eq!(code, Some(1), "{what}: {command}: {text}");
            assert!(
                text.contains(case.reason),
                "{what}: {command} names the reason ({}): {text}",
                case.reason
            );
        }
        // Apply refused exactly that period: its rows are still in DEFAULT.
        let after: i64 = query(&url, "SELECT count(*) FROM ONLY events_default").await[0].get(0);
        assert_eq!(after, before, "{what}: rows left where they were");
        let next = query(
            &url,
            &format!("SELECT to_regclass('{}') IS NULL", month_name("events", 1)),
        )
        .await;
        assert!(next[0].get::<_, bool>(0), "{what}: next month not made");
    }
}
