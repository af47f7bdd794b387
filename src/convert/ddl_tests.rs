//! The swap's statements and their order, without a server.

use super::*;
use crate::config::Interval;

fn info() -> TableInfo {
    let j = serde_json::json!({
        "oid": 1, "relkind": "r", "persistence": "p", "is_partition": false, "typed": false,
        "inherits": false, "inherited": false, "quoted_schema": "public", "quoted_name": "events",
        "owner": "app", "current_user": "steward", "owner_member": true, "schema_create": true,
        "in_recovery": false, "server_version_num": 150000, "row_security": true,
        "force_row_security": false, "replica_identity": "d", "reloptions": [], "comment": null,
        "bytes": 0, "table_bytes": 0, "rows_estimate": 0.0,
        "grants": [{"grantee": "writer", "privilege": "INSERT", "grantable": false}],
        "columns": [
            {"name": "id", "type": "bigint", "not_null": true, "identity": "a", "generated": "",
             "stattarget": -1, "column_acl": false, "default": null, "sequence": "public.events_id_seq"},
            {"name": "created_at", "type": "timestamp with time zone", "not_null": true, "identity": "",
             "generated": "", "stattarget": -1, "column_acl": false, "default": "now()", "sequence": null}],
        "constraints": [
            {"name": "events_pkey", "type": "p", "validated": true, "deferrable": false,
             "def": "PRIMARY KEY (id)", "columns": ["id"], "index": "events_pkey"},
            {"name": "events_o_fkey", "type": "f", "validated": true, "deferrable": false,
             "def": "FOREIGN KEY (o) REFERENCES public.other(id)", "columns": ["o"], "index": null}],
        "indexes": [
            {"name": "events_pkey", "quoted_name": "events_pkey", "def": "CREATE UNIQUE INDEX events_pkey ON public.events USING btree (id)",
             "unique": true, "primary": true, "valid": true, "partial": false, "expressions": false,
             "constraint": "events_pkey", "columns": ["id"], "key_count": 1, "comment": null},
            {"name": "events_p_idx", "quoted_name": "events_p_idx", "def": "CREATE INDEX events_p_idx ON public.events USING btree (p)",
             "unique": false, "primary": false, "valid": true, "partial": false, "expressions": false,
             "constraint": null, "columns": ["p"], "key_count": 1, "comment": null}],
        "triggers": [{"name": "t", "def": "CREATE TRIGGER t BEFORE INSERT ON public.events FOR EACH ROW EXECUTE FUNCTION public.f()",
                      "enabled": "O", "transition": false, "constraint_trigger": false}],
        "policies": [], "rules": [], "referencing_fks": [],
        "views": [{"schema": "public", "name": "v", "kind": "v", "quoted": "public.v",
                   "def": " SELECT events.id FROM public.events;", "options": [], "triggers": false, "rules": false}],
        "publications": [], "foreign_needs": [], "other_dependents": [], "key_indexed": false
    });
    serde_json::from_value(j).unwrap()
}

fn plan(info: &TableInfo) -> ConvertPlan {
    let mut p = ConvertPlan {
        schema: "public".into(),
        table: "events".into(),
        key: "created_at".into(),
        key_type: "timestamp with time zone".into(),
        interval: Interval::Daily,
        timezone: "UTC".into(),
        boundary: 0,
        boundary_text: "2027-01-01 00:00:00+00:00".into(),
        boundary_literal: "'2027-01-01 00:00:00+00:00'::timestamp with time zone".into(),
        first_partition: "events_before_2027_01_01".into(),
        unique_builds: vec![],
        changes: vec![],
        carried: vec![],
        notes: vec![],
    };
    super::super::plan::describe(&mut p, info);
    p
}

/// `events.id`'s bigint sequence, called, at `last_value`.
fn events_id_seq(last_value: i64) -> SequenceState {
    SequenceState {
        column: "id".into(),
        sequence: "public.events_id_seq".into(),
        type_name: "bigint".into(),
        start: 1,
        increment: 1,
        min: 1,
        max: i64::MAX,
        cache: 1,
        cycle: false,
        last_value,
        is_called: true,
    }
}

fn pos(v: &[String], needle: &str) -> usize {
    v.iter()
        .position(|s| s.contains(needle))
        .unwrap_or_else(|| panic!("{needle} not in {v:#?}"))
}

#[test]
fn swap_orders_fks_and_triggers_before_attach_and_indexes_after() {
    let info = info();
    let p = plan(&info);
    assert_eq!(p.unique_builds.len(), 1, "the PK lacks the key");
    let seqs = vec![events_id_seq(41)];
    let v = swap(&p, &info, &seqs);
    let attach = pos(
        &v,
        "ATTACH PARTITION \"public\".\"events_before_2027_01_01\" FOR VALUES FROM (MINVALUE)",
    );
    assert!(
        pos(&v, "RENAME TO \"events_before_2027_01_01\"")
            < pos(&v, "CREATE TABLE \"public\".\"events\" (LIKE")
    );
    assert!(pos(&v, "DROP IDENTITY") < pos(&v, "CREATE SEQUENCE public.events_id_seq"));
    assert!(pos(&v, "ADD CONSTRAINT \"events_o_fkey\"") < attach);
    assert!(
        pos(&v, "DROP TRIGGER \"t\"") < pos(&v, "CREATE TRIGGER t BEFORE INSERT ON public.events")
    );
    assert!(pos(&v, "CREATE TRIGGER t") < attach);
    assert!(pos(&v, "PRIMARY KEY USING INDEX \"pgsteward_cv_") < attach);
    assert!(
        attach
            < pos(
                &v,
                "ADD CONSTRAINT \"events_pkey\" PRIMARY KEY (\"id\", \"created_at\")"
            )
    );
    assert!(
        attach
            < pos(
                &v,
                "CREATE INDEX \"events_p_idx\" ON ONLY \"public\".\"events\" USING btree (p)"
            )
    );
    assert!(
        pos(
            &v,
            "SELECT setval('public.events_id_seq'::regclass, 41, true)"
        ) > 0
    );
    assert!(
        pos(
            &v,
            "GRANT USAGE ON SEQUENCE public.events_id_seq TO \"writer\""
        ) > 0
    );
    assert!(pos(&v, "OWNER TO \"app\"") > 0);
    assert!(pos(&v, "ENABLE ROW LEVEL SECURITY") > attach);
    assert_eq!(
        v.last().map(String::as_str),
        Some("CREATE OR REPLACE VIEW public.v AS SELECT events.id FROM public.events")
    );
    // The CHECK is dropped from both sides, never left on the parent.
    assert_eq!(
        v.iter()
            .filter(|s| s.contains("DROP CONSTRAINT \"pgsteward_convert_bound\""))
            .count(),
        2
    );
}

#[test]
fn postgres_17_keeps_identity_on_the_parent() {
    let mut info = info();
    info.server_version_num = 170_000;
    let p = plan(&info);
    let seqs = vec![events_id_seq(7)];
    let v = swap(&p, &info, &seqs);
    assert!(
        pos(
            &v,
            "ADD GENERATED ALWAYS AS IDENTITY (SEQUENCE NAME public.events_id_seq"
        ) > 0
    );
    assert!(!v.iter().any(|s| s.starts_with("CREATE SEQUENCE")));
}
