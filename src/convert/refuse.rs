//! What a conversion refuses, each reason with what the operator can do:
//! everything that cannot be carried to a partitioned table safely. Pure.

use super::inspect::TableInfo;
use serde::Serialize;

/// The CHECK that lets ATTACH skip scanning the table.
pub const CHECK_NAME: &str = "pgsteward_convert_bound";
/// Prefix of the unique indexes built concurrently to include the partition key.
pub const INDEX_PREFIX: &str = "pgsteward_cv_";

/// Why a table is not converted as it stands.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    /// What the operator can do about it.
    pub fix: String,
}

/// Everything that cannot be carried safely, with what the operator can do.
pub fn refusals(info: &TableInfo, key: &str) -> Vec<Refusal> {
    let mut out = Vec::new();
    let mut refuse = |reason: String, fix: &str| {
        out.push(Refusal {
            reason,
            fix: fix.to_string(),
        })
    };
    if info.in_recovery {
        refuse(
            "the server is a replica (in recovery)".into(),
            "point database.primary at the primary",
        );
    }
    if !info.owner_member {
        refuse(
            format!(
                "{} is not the table's owner {} nor a member of it",
                info.current_user, info.owner
            ),
            "run as the owner, or GRANT the owner role to the steward",
        );
    }
    if !info.schema_create {
        refuse(
            format!(
                "{} may not create tables in the table's schema",
                info.current_user
            ),
            "GRANT CREATE ON SCHEMA to the steward",
        );
    }
    match info.relkind.as_str() {
        "r" => {}
        "p" => refuse(
            "the table is partitioned already".into(),
            "nothing to convert; `partitions apply` maintains it",
        ),
        k => refuse(
            format!("the relation is not a plain table (relkind {k})"),
            "only ordinary tables are converted",
        ),
    }
    match info.persistence.as_str() {
        "p" => {}
        "u" => refuse(
            "the table is UNLOGGED".into(),
            "ALTER TABLE ... SET LOGGED first (it rewrites the table), or convert by hand",
        ),
        _ => refuse(
            "the table is temporary".into(),
            "temporary tables cannot be converted",
        ),
    }
    if info.is_partition {
        refuse(
            "the table is a partition of another table".into(),
            "detach it first",
        );
    }
    if info.inherits || info.inherited {
        refuse(
            "the table takes part in table inheritance".into(),
            "partitioned tables cannot inherit or be inherited: NO INHERIT the children first",
        );
    }
    if info.typed {
        refuse(
            "the table is a typed table (OF type)".into(),
            "ALTER TABLE ... NOT OF first",
        );
    }
    if let Some(c) = info.column(key) {
        if !c.generated.is_empty() {
            refuse(
                format!("the key {key} is a generated column"),
                "partition on a stored, written column",
            );
        }
    }
    for r in &info.rules {
        refuse(
            format!("rule {r} on the table"),
            "rules cannot be carried to a partitioned table: drop the rule, convert, recreate it",
        );
    }
    for fk in &info.referencing_fks {
        refuse(
            format!("foreign key {fk} references the table"),
            "drop it, convert, then re-add it referencing the new key (ADD ... NOT VALID, then VALIDATE CONSTRAINT)",
        );
    }
    for d in &info.other_dependents {
        refuse(
            format!("{d} depends on the table or its row type"),
            "drop it before converting and recreate it afterwards",
        );
    }
    for v in &info.views {
        if v.kind == "m" {
            // Not carried, on purpose: PostgreSQL cannot redefine a
            // materialized view in place (no CREATE OR REPLACE, no ALTER ...
            // AS), so reading the new parent means running its query again.
            // Inside the swap that holds the table's ACCESS EXCLUSIVE lock for
            // the whole query; WITH NO DATA makes its readers fail; rebuilt
            // after the swap it would silently change its data (a refresh)
            // and keep reading the first partition until then.
            refuse(
                format!(
                    "materialized view {} reads the table: it cannot be redefined in place, and rebuilding it (running its query) inside the swap would block the table's writers for as long as the query runs",
                    v.quoted
                ),
                "make it read the table through a plain view first, without blocking its readers: CREATE VIEW x AS SELECT * FROM the table; CREATE MATERIALIZED VIEW a copy reading x, with its indexes and grants; then in one short transaction DROP the old one and RENAME the copy to its name. Views are carried by the swap, so afterwards it reads the new parent through x",
            );
        } else if v.kind != "v" {
            refuse(
                format!("{} (relkind {}) depends on the table", v.quoted, v.kind),
                "drop it before converting",
            );
        } else if v.triggers || v.rules {
            refuse(
                format!("view {} has triggers or rules", v.quoted),
                "drop them before converting and recreate them afterwards",
            );
        }
    }
    for c in &info.columns {
        if c.column_acl {
            refuse(
                format!("column {} has column-level privileges", c.name),
                "revoke them, convert, and grant them on the new parent",
            );
        }
    }
    for c in &info.constraints {
        if !c.validated && c.name != CHECK_NAME {
            refuse(
                format!("constraint {} is NOT VALID", c.name),
                "VALIDATE CONSTRAINT it (or drop it) first",
            );
        }
        if c.kind == "x" {
            refuse(
                format!("exclusion constraint {}", c.name),
                "partitioned tables need the key in exclusion constraints with equality: drop it and recreate it after",
            );
        }
        if matches!(c.kind.as_str(), "p" | "u")
            && c.deferrable
            && !c
                .columns
                .clone()
                .unwrap_or_default()
                .iter()
                .any(|x| x == key)
        {
            refuse(
                format!("deferrable key {} lacks {key}", c.name),
                "make it NOT DEFERRABLE or add the key first",
            );
        }
    }
    let printed = info.printed_name();
    for i in &info.indexes {
        if i.name.starts_with(INDEX_PREFIX) {
            continue;
        }
        if !i.valid {
            refuse(
                format!(
                    "index {} is invalid (an interrupted CREATE INDEX CONCURRENTLY?)",
                    i.name
                ),
                "drop it or REINDEX it CONCURRENTLY first",
            );
        }
        let lacks_key = !i
            .columns
            .clone()
            .unwrap_or_default()
            .iter()
            .any(|c| c == key);
        if i.unique && lacks_key && (i.partial || i.expressions) {
            refuse(
                format!(
                    "unique index {} has expressions or a WHERE clause and lacks {key}",
                    i.name
                ),
                "recreate it including the key as a plain column, or drop it",
            );
        }
        if index_rest(&i.def, i.unique, &i.quoted_name, &printed).is_none() {
            refuse(
                format!("the definition of index {} could not be read", i.name),
                "drop and recreate it with CREATE INDEX",
            );
        }
    }
    for t in &info.triggers {
        if t.transition {
            refuse(format!("trigger {} uses transition tables", t.name), "row triggers with transition tables are not supported on partitioned tables: drop it, convert, recreate it as a statement trigger");
        }
        if t.constraint_trigger {
            refuse(
                format!("constraint trigger {}", t.name),
                "drop it, convert, recreate it",
            );
        }
        if t.enabled != "O" {
            refuse(
                format!(
                    "trigger {} is disabled or set to fire only on replicas/always",
                    t.name
                ),
                "ENABLE it (or drop it) first and set its mode after converting",
            );
        }
    }
    if info.replica_identity == "i" {
        refuse(
            "replica identity uses an index".into(),
            "set REPLICA IDENTITY DEFAULT or FULL first",
        );
    }
    for n in &info.foreign_needs {
        refuse(
            format!("the swap cannot run as {}: {n}", info.current_user),
            "give the table's owner (or the steward) that privilege or ownership first; nothing is changed until then",
        );
    }
    for p in &info.publications {
        if !p.via_root {
            // Changes would then be published under the first partition's
            // name, which no subscriber has: apply stops on "target
            // relation does not exist" while the slot keeps the WAL.
            refuse(
                format!(
                    "publication {} publishes the table with publish_via_partition_root = false: after the swap its \
                     changes would be published under the partitions' names, which no subscriber has",
                    p.name
                ),
                &format!(
                    "ALTER PUBLICATION {} SET (publish_via_partition_root = true) first (subscribers keep receiving \
                     the rows as {}; it applies to every partitioned table of the publication)",
                    crate::pg::quote_ident(&p.name),
                    info.printed_name()
                ),
            );
        }
        if p.listed && !p.owner_member {
            refuse(
                format!(
                    "publication {} (owned by {}) lists the table: the swap adds the new parent to it, which needs \
                     ownership of the publication",
                    p.name, p.owner
                ),
                &format!(
                    "ALTER PUBLICATION {} OWNER TO {} (the table's owner), or GRANT {} TO {}",
                    crate::pg::quote_ident(&p.name),
                    crate::pg::quote_ident(&info.owner),
                    crate::pg::quote_ident(&p.owner),
                    crate::pg::quote_ident(&info.current_user)
                ),
            );
        }
    }
    for p in &info.publications {
        if p.filtered {
            refuse(
                format!(
                    "publication {} has a row filter or column list for the table",
                    p.name
                ),
                "remove the table from it, convert, add the parent back",
            );
        }
    }
    out
}

/// What follows `USING ` in `pg_get_indexdef`, given how the server prints
/// the index and table names; `None` when the definition has another shape.
pub fn index_rest(
    def: &str,
    unique: bool,
    quoted_index: &str,
    printed_table: &str,
) -> Option<String> {
    let prefix = format!(
        "CREATE {}INDEX {quoted_index} ON {printed_table} USING ",
        if unique { "UNIQUE " } else { "" }
    );
    def.strip_prefix(&prefix).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_definitions_are_split_after_using() {
        assert_eq!(
            index_rest(
                "CREATE INDEX events_p_idx ON public.events USING btree (payload) WHERE (id > 0)",
                false,
                "events_p_idx",
                "public.events"
            )
            .as_deref(),
            Some("btree (payload) WHERE (id > 0)")
        );
        assert_eq!(
            index_rest(
                "CREATE UNIQUE INDEX x ON public.t USING btree (a)",
                false,
                "x",
                "public.t"
            ),
            None
        );
    }
}
