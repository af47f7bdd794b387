//! DDL text. Identifiers are quoted with `quote_ident`, values are literals we
//! computed ourselves (never text from configuration or the catalog).

use chrono_tz::Tz;

use super::model::{Action, DetachHow, Grant, KeyType, Range, TableState};
use super::period::{fnv1a, key_literal};
use crate::pg::{quote_ident, quote_literal, QualifiedName};

/// The CHECK on a new partition that lets ATTACH skip scanning it.
pub const BOUNDS_CHECK: &str = "pgsteward_bounds";
/// Prefix of the CHECK on the DEFAULT partition that excludes a range being attached.
pub const DEFAULT_CHECK_PREFIX: &str = "pgsteward_excl";

/// Clauses of `CREATE TABLE child (LIKE parent ...)`: what an attached
/// partition must share with its parent. Indexes are left to ATTACH, which
/// creates (empty, instant) matching ones; identity stays on the parent.
const LIKE_OPTIONS: &str = "INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED \
                            INCLUDING STORAGE INCLUDING COMMENTS";

fn range_predicate(key: &str, kt: KeyType, tz: Tz, r: Range) -> String {
    format!(
        "{k} IS NOT NULL AND {k} >= {lo} AND {k} < {hi}",
        k = quote_ident(key),
        lo = key_literal(kt, tz, r.lo),
        hi = key_literal(kt, tz, r.hi)
    )
}

pub fn sql_create_child(parent: &QualifiedName, child: &QualifiedName) -> String {
    format!(
        "CREATE TABLE {} (LIKE {} {LIKE_OPTIONS})",
        child.quoted(),
        parent.quoted()
    )
}

pub fn sql_add_bounds_check(
    child: &QualifiedName,
    key: &str,
    kt: KeyType,
    tz: Tz,
    r: Range,
) -> String {
    format!(
        "ALTER TABLE {} ADD CONSTRAINT {} CHECK ({})",
        child.quoted(),
        quote_ident(BOUNDS_CHECK),
        range_predicate(key, kt, tz, r)
    )
}

pub fn sql_grant(child: &QualifiedName, g: &Grant) -> String {
    let grantee = if g.grantee == "PUBLIC" {
        "PUBLIC".to_string()
    } else {
        quote_ident(&g.grantee)
    };
    // The privilege names come from aclexplode(): a fixed set of keywords.
    let privilege: String = g
        .privilege
        .chars()
        .filter(|c| c.is_ascii_alphabetic() || *c == ' ')
        .collect();
    format!(
        "GRANT {privilege} ON TABLE {} TO {grantee}{}",
        child.quoted(),
        if g.grantable {
            " WITH GRANT OPTION"
        } else {
            ""
        }
    )
}

pub fn sql_owner(child: &QualifiedName, owner: &str) -> String {
    format!(
        "ALTER TABLE {} OWNER TO {}",
        child.quoted(),
        quote_ident(owner)
    )
}

pub fn default_check_name(child: &QualifiedName) -> String {
    // The child's name is unique per parent; hashing keeps it within 63 bytes.
    format!(
        "{DEFAULT_CHECK_PREFIX}_{:08x}",
        fnv1a(child.name.as_bytes()) as u32
    )
}

pub fn sql_add_default_check(
    default: &QualifiedName,
    constraint: &str,
    key: &str,
    kt: KeyType,
    tz: Tz,
    r: Range,
) -> String {
    // The exact negation of the new partition's constraint, so the planner's
    // implication proof in ATTACH recognises it and skips scanning DEFAULT.
    format!(
        "ALTER TABLE {} ADD CONSTRAINT {} CHECK (NOT ({})) NOT VALID",
        default.quoted(),
        quote_ident(constraint),
        range_predicate(key, kt, tz, r)
    )
}

/// The same CHECK added valid in one statement: it scans DEFAULT under ACCESS
/// EXCLUSIVE, so it is used only when DEFAULT is known to be tiny.
pub fn sql_add_default_check_valid(
    default: &QualifiedName,
    constraint: &str,
    key: &str,
    kt: KeyType,
    tz: Tz,
    r: Range,
) -> String {
    sql_add_default_check(default, constraint, key, kt, tz, r)
        .trim_end_matches(" NOT VALID")
        .to_string()
}

/// Rows of the range in DEFAULT, and DEFAULT's size on disk in bytes.
pub fn sql_probe_default(
    default: &QualifiedName,
    key: &str,
    kt: KeyType,
    tz: Tz,
    r: Range,
) -> String {
    format!(
        "SELECT (SELECT count(*) FROM {d} WHERE {pred}), pg_relation_size({lit}::regclass)",
        d = default.quoted(),
        pred = range_predicate(key, kt, tz, r),
        lit = quote_literal(&default.quoted())
    )
}

/// Drops several of our CHECKs from one table in one statement.
pub fn sql_drop_constraints(table: &QualifiedName, constraints: &[String]) -> String {
    let drops = constraints
        .iter()
        .map(|c| format!("DROP CONSTRAINT IF EXISTS {}", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    format!("ALTER TABLE {} {drops}", table.quoted())
}

pub fn sql_validate(table: &QualifiedName, constraint: &str) -> String {
    format!(
        "ALTER TABLE {} VALIDATE CONSTRAINT {}",
        table.quoted(),
        quote_ident(constraint)
    )
}

pub fn sql_drop_constraint(table: &QualifiedName, constraint: &str) -> String {
    format!(
        "ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}",
        table.quoted(),
        quote_ident(constraint)
    )
}

pub fn sql_attach(
    parent: &QualifiedName,
    child: &QualifiedName,
    kt: KeyType,
    tz: Tz,
    r: Range,
) -> String {
    format!(
        "ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})",
        parent.quoted(),
        child.quoted(),
        key_literal(kt, tz, r.lo),
        key_literal(kt, tz, r.hi)
    )
}

/// Moves up to `$1` rows of range `r` from DEFAULT into the standalone child
/// in one statement: the DELETE and the INSERT commit together, so a row is
/// never lost or in both places.
pub fn sql_move_batch(
    default: &QualifiedName,
    child: &QualifiedName,
    columns: &[String],
    key: &str,
    kt: KeyType,
    tz: Tz,
    r: Range,
) -> String {
    let cols = columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "WITH moved AS (DELETE FROM {d} WHERE ctid = ANY (ARRAY(SELECT ctid FROM {d} WHERE {pred} LIMIT $1)) RETURNING {cols}) \
         INSERT INTO {c} ({cols}) SELECT {cols} FROM moved",
        d = default.quoted(),
        c = child.quoted(),
        pred = range_predicate(key, kt, tz, r)
    )
}

pub fn sql_detach(parent: &QualifiedName, child: &QualifiedName, how: DetachHow) -> String {
    let tail = match how {
        DetachHow::Concurrently => " CONCURRENTLY",
        DetachHow::Plain => "",
        DetachHow::Finalize => " FINALIZE",
    };
    format!(
        "ALTER TABLE {} DETACH PARTITION {}{tail}",
        parent.quoted(),
        child.quoted()
    )
}

pub fn sql_drop_table(t: &QualifiedName) -> String {
    format!("DROP TABLE {}", t.quoted())
}

/// The statements `apply` runs for an action, in order, for `partitions plan`.
/// Moving DEFAULT rows is data-dependent and shown as a comment.
pub fn action_sql(state: &TableState, tz: Tz, action: &Action) -> Vec<String> {
    let (parent, key, kt) = (&state.table, state.key_column.as_str(), state.key_type);
    match action {
        Action::Create {
            partition, range, ..
        } => {
            let mut v = vec![
                sql_create_child(parent, partition),
                sql_add_bounds_check(partition, key, kt, tz, *range),
            ];
            v.extend(state.grants.iter().map(|g| sql_grant(partition, g)));
            v.push(sql_owner(partition, &state.owner));
            if let Some(d) = &state.default {
                let c = default_check_name(partition);
                v.push(sql_probe_default(&d.name, key, kt, tz, *range));
                v.push(format!(
                    "-- rows of this range in {} are moved into {} in batches; \
                     when DEFAULT is tiny the CHECK below is added valid in one statement",
                    d.name, partition
                ));
                v.push(sql_add_default_check(&d.name, &c, key, kt, tz, *range));
                v.push(sql_validate(&d.name, &c));
                v.push(sql_attach(parent, partition, kt, tz, *range));
                v.push(sql_drop_constraint(partition, BOUNDS_CHECK));
                v.push(sql_drop_constraint(&d.name, &c));
            } else {
                v.push(sql_attach(parent, partition, kt, tz, *range));
                v.push(sql_drop_constraint(partition, BOUNDS_CHECK));
            }
            v
        }
        Action::Retire {
            partition,
            how,
            drop,
            ..
        } => {
            let mut v = vec![sql_detach(parent, partition, *how)];
            if *drop {
                v.push(sql_drop_table(partition));
            }
            v
        }
        Action::DropDefaultCheck { constraint } => match &state.default {
            Some(d) => vec![sql_drop_constraint(&d.name, constraint)],
            None => vec![],
        },
    }
}

/// Exact rows in each DEFAULT partition, in one statement: `(position, rows)`.
pub fn sql_count_defaults(defaults: &[(usize, QualifiedName)]) -> String {
    defaults
        .iter()
        .map(|(i, d)| format!("SELECT {i}::int8, count(*)::int8 FROM {}", d.quoted()))
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

#[cfg(test)]
mod tests {
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
}
