use super::*;

fn req(need: Need) -> Required {
    Required::new(need, "partition DDL on public.audit_log")
}

fn audit_log() -> Need {
    Need::TableOwner {
        table: QualifiedName::new("public", "audit_log"),
    }
}

#[test]
fn an_owner_the_steward_cannot_act_as_is_named_with_its_grant() {
    let seen = Seen::Owners(vec![("app_owner".into(), false)]);
    let v = judge(&req(audit_log()), &seen, "steward", 150_004);
    assert!(!v.ok);
    assert_eq!(v.fix.as_deref(), Some("GRANT app_owner TO steward;"));
    assert!(
        v.line().starts_with(
            "MISSING partition DDL on public.audit_log: steward cannot act as app_owner"
        ),
        "{}",
        v.line()
    );
    let v16 = judge(&req(audit_log()), &seen, "steward", 160_000);
    assert_eq!(
        v16.fix.as_deref(),
        Some("GRANT app_owner TO steward WITH INHERIT TRUE, SET TRUE;")
    );
}

#[test]
fn a_met_need_has_no_fix_text() {
    let v = judge(
        &req(audit_log()),
        &Seen::Owners(vec![("app_owner".into(), true)]),
        "steward",
        150_000,
    );
    assert!(v.ok && v.fix.is_none(), "{v:?}");
    assert!(!v.line().contains("GRANT"), "{}", v.line());
    // A table that is not there is the catalog's report, not a privilege.
    let v = judge(&req(audit_log()), &Seen::Owners(vec![]), "steward", 150_000);
    assert!(v.ok, "{v:?}");
}

#[test]
fn each_kind_of_need_gets_its_statement_with_identifiers_quoted() {
    let cases = [
        (
            Need::SchemaCreate {
                schema: "Audit".into(),
            },
            Seen::Schema(true, false),
            "GRANT USAGE, CREATE ON SCHEMA \"Audit\" TO steward;",
        ),
        (
            Need::RoleMember {
                role: "pg_monitor".into(),
            },
            Seen::Held(false),
            "GRANT pg_monitor TO steward;",
        ),
        (
            Need::Replication,
            Seen::Held(false),
            "ALTER ROLE steward REPLICATION; -- and a `replication` line for it in pg_hba.conf",
        ),
        (
            Need::FunctionExecute {
                signature: "pg_promote(boolean, integer)".into(),
            },
            Seen::Held(false),
            "GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO steward;",
        ),
        (
            Need::AlterSystem {
                parameter: "primary_conninfo".into(),
            },
            Seen::Held(false),
            "GRANT ALTER SYSTEM ON PARAMETER primary_conninfo TO steward;",
        ),
    ];
    for (need, seen, fix) in cases {
        let v = judge(&req(need.clone()), &seen, "steward", 150_000);
        assert!(!v.ok, "{need:?}");
        assert_eq!(v.fix.as_deref(), Some(fix), "{need:?}");
    }
    let v = judge(
        &req(Need::SchemaCreate {
            schema: "public".into(),
        }),
        &Seen::Schema(false, false),
        "steward",
        150_000,
    );
    assert!(v.detail.contains("USAGE and CREATE"), "{}", v.detail);
}

#[test]
fn alter_system_before_15_says_only_a_superuser_may() {
    let v = judge(
        &req(Need::AlterSystem {
            parameter: "default_transaction_read_only".into(),
        }),
        &Seen::Held(false),
        "steward",
        140_010,
    );
    assert!(!v.ok);
    assert!(v.detail.contains("only a superuser"), "{}", v.detail);
}
