//! Unit tests of `ddl.rs`: the statements as text.

use super::super::plan::plan;
use super::super::test_fixtures::*;
use super::*;

#[test]
fn odd_identifiers_are_quoted_in_every_statement() {
    let mut s = state(KeyType::Timestamptz);
    s.table = QualifiedName::new("Weird-Schema", "Audit \"Log\"");
    s.key_column = "Created At\"; DROP TABLE x; --".into();
    s.grants = vec![Grant {
        grantee: "app\"role".into(),
        privilege: "SELECT".into(),
        grantable: false,
    }];
    s.default = Some(DefaultPartition {
        name: QualifiedName::new("Weird-Schema", "Audit \"Log\" default"),
        rows_estimate: 0,
        pgsteward_checks: vec![],
    });
    let c = cfg(Interval::Monthly, 0);
    let p = plan(&c, &s, utc(2025, 5, 20, 0));
    let sql = action_sql(&s, Tz::UTC, &p.actions[0]).join(";\n");
    assert!(sql.contains(r#"CREATE TABLE "Weird-Schema"."Audit ""Log""_2025_05" (LIKE "Weird-Schema"."Audit ""Log"""#), "{sql}");
    assert!(
        sql.contains(r#""Created At""; DROP TABLE x; --" IS NOT NULL"#),
        "{sql}"
    );
    assert!(sql.contains(r#"TO "app""role""#), "{sql}");
}

#[test]
fn new_partitions_take_row_security_replica_identity_and_version_from_the_parent() {
    let mut s = state(KeyType::Date);
    s.grants = vec![Grant {
        grantee: "app".into(),
        privilege: "SELECT".into(),
        grantable: false,
    }];
    let child = QualifiedName::new("public", "audit_log_2025_05");
    let r = Range { lo: 0, hi: 1 };
    let plain = ParentDetails {
        replica_identity: "d".into(),
        server_version: 150_000,
        ..ParentDetails::default()
    };
    let sql = create_statements(&s, Some(&plain), Tz::UTC, &child, r).join(";\n");
    assert!(
        sql.contains("INCLUDING INDEXES INCLUDING COMPRESSION)"),
        "{sql}"
    );
    assert!(sql.contains("GRANT SELECT"), "{sql}");
    assert!(
        !sql.contains("ROW LEVEL SECURITY") && !sql.contains("REPLICA"),
        "{sql}"
    );
    let rls = ParentDetails {
        row_security: true,
        force_row_security: true,
        replica_identity: "f".into(),
        tablespace: Some("fast ssd".into()),
        server_version: 130_000,
        identity_index: None,
        indexes: vec!["audit_log_user_idx".into(), "by_tenant".into()],
    };
    let sql = create_statements(&s, Some(&rls), Tz::UTC, &child, r).join(";\n");
    // The copies LIKE made are named after the parent's indexes.
    assert!(
        sql.contains("('audit_log_user_idx', 'audit_log_2025_05_user_idx')")
            && sql.contains("('by_tenant', 'audit_log_2025_05_by_tenant')")
            && sql.starts_with("CREATE TABLE")
            && sql.contains("DO $pgsteward$"),
        "{sql}"
    );
    assert!(
        !sql.contains("GRANT"),
        "direct access stays the owner's: {sql}"
    );
    // FORCE follows in the attaching transaction, after moved rows are in.
    assert!(
        sql.contains("ENABLE ROW LEVEL SECURITY") && !sql.contains("FORCE"),
        "{sql}"
    );
    assert!(sql.contains("REPLICA IDENTITY FULL"), "{sql}");
    assert!(sql.contains(") TABLESPACE \"fast ssd\""), "{sql}");
    assert!(
        !sql.contains("COMPRESSION"),
        "PostgreSQL 13 has no such clause: {sql}"
    );
}
