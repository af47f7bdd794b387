//! The SQL of every step, generated from the journaled plan and (for the
//! swap) the catalog as read under the swap's locks. Pure: unit-tested
//! without a server. Identifiers we name are quoted with `quote_ident`;
//! definitions come from the server's own `pg_get_*def` functions, printed
//! with an empty search_path so they are schema-qualified.

use serde::Serialize;

use super::inspect::TableInfo;
use super::plan::{ConvertPlan, CHECK_NAME, INDEX_PREFIX};
use super::refuse::index_rest;
use crate::pg::{quote_ident, quote_literal, QualifiedName};

/// A sequence's state, read under the swap's locks.
#[derive(Debug, Clone, Serialize)]
pub struct SequenceState {
    pub column: String,
    /// Schema-qualified, as `pg_get_serial_sequence` prints it.
    pub sequence: String,
    pub type_name: String,
    pub start: i64,
    pub increment: i64,
    pub min: i64,
    pub max: i64,
    pub cache: i64,
    pub cycle: bool,
    pub last_value: i64,
    pub is_called: bool,
}

fn q(schema: &str, name: &str) -> String {
    QualifiedName::new(schema, name).quoted()
}

pub fn add_check(plan: &ConvertPlan) -> String {
    format!(
        "ALTER TABLE {} ADD CONSTRAINT {} CHECK ({k} IS NOT NULL AND {k} < {}) NOT VALID",
        plan.name().quoted(),
        quote_ident(CHECK_NAME),
        plan.boundary_literal,
        k = quote_ident(&plan.key)
    )
}

pub fn validate_check(plan: &ConvertPlan) -> String {
    format!(
        "ALTER TABLE {} VALIDATE CONSTRAINT {}",
        plan.name().quoted(),
        quote_ident(CHECK_NAME)
    )
}

pub fn drop_check(table: &QualifiedName) -> String {
    format!(
        "ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}",
        table.quoted(),
        quote_ident(CHECK_NAME)
    )
}

/// The swap's first statement: the views that read the table, then the
/// table (readers lock in that order too, so this cannot deadlock with them).
pub fn swap_lock(plan: &ConvertPlan, info: &TableInfo) -> String {
    let locked: Vec<String> = info
        .views
        .iter()
        .map(|v| v.quoted.clone())
        .chain(std::iter::once(plan.name().quoted()))
        .collect();
    format!("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE", locked.join(", "))
}

/// A query counting (0 or 1) rows that could not stay in the first
/// partition: key NULL or at/after the boundary. Cheap only when an index
/// leads with the key (`TableInfo::key_indexed`).
pub fn rows_outside_probe(plan: &ConvertPlan) -> String {
    format!(
        "SELECT count(*) FROM (SELECT 1 FROM {} WHERE {k} >= {} OR {k} IS NULL LIMIT 1) x",
        plan.name().quoted(),
        plan.boundary_literal,
        k = quote_ident(&plan.key)
    )
}

/// Reads a sequence's `last_value, is_called`; `seq` as
/// `pg_get_serial_sequence` prints it (schema-qualified, quoted as needed).
pub fn sequence_value_query(seq: &str) -> String {
    format!("SELECT last_value, is_called FROM {seq}")
}

pub fn drop_index_concurrently(schema: &str, index: &str) -> String {
    format!("DROP INDEX CONCURRENTLY IF EXISTS {}", q(schema, index))
}

/// The swap: one transaction, run after `LOCK TABLE` of the views and the
/// table. Order matters: the parent's foreign keys exist before ATTACH (so
/// ATTACH adopts the partition's own, without re-validating), triggers are
/// moved to the parent before ATTACH (which clones them back), and indexes are
/// created `ON ONLY` the parent after ATTACH and attached explicitly, so a
/// missing match is an error rather than an index build under the lock.
pub fn swap(plan: &ConvertPlan, info: &TableInfo, seqs: &[SequenceState]) -> Vec<String> {
    let s = &plan.schema;
    let parent = plan.name().quoted();
    let first = plan.first().quoted();
    let printed = info.printed_name();
    let mut v = Vec::new();
    v.push(format!(
        "ALTER TABLE {parent} RENAME TO {}",
        quote_ident(&plan.first_partition)
    ));
    let replaced = |name: &str| plan.unique_builds.iter().any(|b| b.replaces == name);
    // Indexes carried as they are: renamed on the first partition; the parent's
    // take the original names below.
    let carried: Vec<_> = info
        .indexes
        .iter()
        .filter(|i| !i.name.starts_with(INDEX_PREFIX))
        .filter(|i| !replaced(&i.name) && !i.constraint.as_deref().is_some_and(replaced))
        .collect();
    for i in &carried {
        v.push(format!(
            "ALTER INDEX {} RENAME TO {}",
            q(s, &i.name),
            quote_ident(&plan.child_index_name(&i.name))
        ));
    }
    // Keys without the partition key give way to the unique indexes built for them.
    for b in &plan.unique_builds {
        let child = plan.child_index_name(&b.replaces);
        match b.kind.as_str() {
            "p" | "u" => {
                v.push(format!(
                    "ALTER TABLE {first} DROP CONSTRAINT {}",
                    quote_ident(&b.replaces)
                ));
                v.push(format!(
                    "ALTER TABLE {first} ADD CONSTRAINT {} {} USING INDEX {}",
                    quote_ident(&child),
                    if b.kind == "p" {
                        "PRIMARY KEY"
                    } else {
                        "UNIQUE"
                    },
                    quote_ident(&b.index)
                ));
            }
            _ => {
                v.push(format!("DROP INDEX {}", q(s, &b.replaces)));
                v.push(format!(
                    "ALTER INDEX {} RENAME TO {}",
                    q(s, &b.index),
                    quote_ident(&child)
                ));
            }
        }
    }
    let modern = info.server_version_num >= 170_000;
    for c in info.columns.iter().filter(|c| !c.identity.is_empty()) {
        v.push(format!(
            "ALTER TABLE {first} ALTER COLUMN {} DROP IDENTITY",
            quote_ident(&c.name)
        ));
    }
    for t in &info.triggers {
        v.push(format!("DROP TRIGGER {} ON {first}", quote_ident(&t.name)));
    }
    let compression = if info.server_version_num >= 140_000 {
        " INCLUDING COMPRESSION"
    } else {
        ""
    };
    v.push(format!(
        "CREATE TABLE {parent} (LIKE {first} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED \
         INCLUDING STORAGE INCLUDING COMMENTS INCLUDING STATISTICS{compression}) PARTITION BY RANGE ({})",
        quote_ident(&plan.key)
    ));
    v.push(format!(
        "ALTER TABLE {parent} DROP CONSTRAINT {}",
        quote_ident(CHECK_NAME)
    ));
    if info.owner != info.current_user {
        v.push(format!(
            "ALTER TABLE {parent} OWNER TO {}",
            quote_ident(&info.owner)
        ));
    }
    // Identity: the old sequence went with DROP IDENTITY; a new one continues
    // from the value read under the lock (no insert can run meanwhile).
    for st in seqs.iter().filter(|st| {
        info.column(&st.column)
            .is_some_and(|c| !c.identity.is_empty())
    }) {
        let col = quote_ident(&st.column);
        let identity = info
            .column(&st.column)
            .map(|c| c.identity.as_str())
            .unwrap_or("d");
        let params = format!(
            "AS {} INCREMENT BY {} MINVALUE {} MAXVALUE {} START WITH {} CACHE {}{}",
            st.type_name,
            st.increment,
            st.min,
            st.max,
            st.start,
            st.cache,
            if st.cycle { " CYCLE" } else { " NO CYCLE" }
        );
        if modern {
            // An identity's sequence takes the column's type: `AS type` here is a
            // "conflicting or redundant options" error.
            let identity_params = params
                .strip_prefix(&format!("AS {} ", st.type_name))
                .unwrap_or(&params);
            v.push(format!(
                "ALTER TABLE {parent} ALTER COLUMN {col} ADD GENERATED {} AS IDENTITY (SEQUENCE NAME {} {identity_params})",
                if identity == "a" { "ALWAYS" } else { "BY DEFAULT" },
                st.sequence
            ));
        } else {
            v.push(format!("CREATE SEQUENCE {} {params}", st.sequence));
            if info.owner != info.current_user {
                v.push(format!(
                    "ALTER SEQUENCE {} OWNER TO {}",
                    st.sequence,
                    quote_ident(&info.owner)
                ));
            }
            v.push(format!(
                "ALTER TABLE {parent} ALTER COLUMN {col} SET DEFAULT nextval({}::regclass)",
                quote_literal(&st.sequence)
            ));
            v.push(format!(
                "ALTER SEQUENCE {} OWNED BY {parent}.{col}",
                st.sequence
            ));
            // nextval() needs USAGE where identity needed nothing: whoever may insert gets it.
            for g in info.grants.iter().filter(|g| g.privilege == "INSERT") {
                v.push(format!(
                    "GRANT USAGE ON SEQUENCE {} TO {}",
                    st.sequence,
                    grantee(&g.grantee)
                ));
            }
        }
        v.push(format!(
            "SELECT setval({}::regclass, {}, {})",
            quote_literal(&st.sequence),
            st.last_value,
            st.is_called
        ));
    }
    // Serial columns: the sequence must belong to the parent, or retiring the
    // first partition would drop it.
    for st in seqs.iter().filter(|st| {
        info.column(&st.column)
            .is_some_and(|c| c.identity.is_empty())
    }) {
        v.push(format!(
            "ALTER SEQUENCE {} OWNED BY {parent}.{}",
            st.sequence,
            quote_ident(&st.column)
        ));
    }
    for c in info.constraints.iter().filter(|c| c.kind == "f") {
        v.push(format!(
            "ALTER TABLE {parent} ADD CONSTRAINT {} {}",
            quote_ident(&c.name),
            c.def
        ));
    }
    for t in &info.triggers {
        v.push(t.def.clone());
    }
    v.push(format!(
        "ALTER TABLE {parent} ATTACH PARTITION {first} FOR VALUES FROM (MINVALUE) TO ({})",
        plan.boundary_literal
    ));
    // Keys and indexes of the parent under the original names, each adopting
    // the first partition's index.
    for c in info
        .constraints
        .iter()
        .filter(|c| matches!(c.kind.as_str(), "p" | "u"))
    {
        let def = match plan.unique_builds.iter().find(|b| b.replaces == c.name) {
            Some(b) => format!(
                "{} ({})",
                if b.kind == "p" {
                    "PRIMARY KEY"
                } else {
                    "UNIQUE"
                },
                b.columns
                    .iter()
                    .map(|c| quote_ident(c))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => c.def.clone(),
        };
        v.push(format!(
            "ALTER TABLE ONLY {parent} ADD CONSTRAINT {} {def}",
            quote_ident(&c.name)
        ));
        v.push(format!(
            "ALTER INDEX {} ATTACH PARTITION {}",
            q(s, &c.name),
            q(s, &plan.child_index_name(&c.name))
        ));
    }
    for i in info.indexes.iter().filter(|i| i.constraint.is_none()) {
        if i.name.starts_with(INDEX_PREFIX) {
            continue;
        }
        let def = match plan.unique_builds.iter().find(|b| b.replaces == i.name) {
            Some(b) => format!(
                "btree ({})",
                b.columns
                    .iter()
                    .map(|c| quote_ident(c))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => index_rest(&i.def, i.unique, &i.quoted_name, &printed).unwrap_or_default(),
        };
        v.push(format!(
            "CREATE {}INDEX {} ON ONLY {parent} USING {def}",
            if i.unique { "UNIQUE " } else { "" },
            quote_ident(&i.name)
        ));
        v.push(format!(
            "ALTER INDEX {} ATTACH PARTITION {}",
            q(s, &i.name),
            q(s, &plan.child_index_name(&i.name))
        ));
    }
    for i in info.indexes.iter().filter(|i| i.comment.is_some()) {
        if let Some(c) = &i.comment {
            v.push(format!(
                "COMMENT ON INDEX {} IS {}",
                q(s, &i.name),
                quote_literal(c)
            ));
        }
    }
    // Redundant with the partition bound now; dropping it is instant under our lock.
    v.push(format!(
        "ALTER TABLE {first} DROP CONSTRAINT {}",
        quote_ident(CHECK_NAME)
    ));
    // The owner's own privileges are implicit in ownership.
    for g in info.grants.iter().filter(|g| g.grantee != info.owner) {
        v.push(format!(
            "GRANT {} ON TABLE {parent} TO {}{}",
            privilege(&g.privilege),
            grantee(&g.grantee),
            if g.grantable {
                " WITH GRANT OPTION"
            } else {
                ""
            }
        ));
    }
    if info.row_security {
        v.push(format!("ALTER TABLE {parent} ENABLE ROW LEVEL SECURITY"));
    }
    if info.force_row_security {
        v.push(format!("ALTER TABLE {parent} FORCE ROW LEVEL SECURITY"));
    }
    for p in &info.policies {
        // The parent's policies govern the first partition's rows now; a
        // copy left on it would let roles reach directly what a later change
        // of the parent's denies (it keeps row-level security, with none).
        v.push(format!("DROP POLICY {} ON {first}", quote_ident(&p.name)));
        let cmd = match p.cmd.as_str() {
            "r" => "SELECT",
            "a" => "INSERT",
            "w" => "UPDATE",
            "d" => "DELETE",
            _ => "ALL",
        };
        let roles = if p.roles.is_empty() {
            "PUBLIC".to_string()
        } else {
            p.roles
                .iter()
                .map(|r| grantee(r))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut sql = format!(
            "CREATE POLICY {} ON {parent} AS {} FOR {cmd} TO {roles}",
            quote_ident(&p.name),
            if p.permissive {
                "PERMISSIVE"
            } else {
                "RESTRICTIVE"
            }
        );
        if let Some(u) = &p.using {
            sql.push_str(&format!(" USING ({u})"));
        }
        if let Some(c) = &p.check {
            sql.push_str(&format!(" WITH CHECK ({c})"));
        }
        v.push(sql);
    }
    if let Some(c) = &info.comment {
        v.push(format!("COMMENT ON TABLE {parent} IS {}", quote_literal(c)));
    }
    match info.replica_identity.as_str() {
        "f" => v.push(format!("ALTER TABLE {parent} REPLICA IDENTITY FULL")),
        "n" => v.push(format!("ALTER TABLE {parent} REPLICA IDENTITY NOTHING")),
        _ => {}
    }
    for c in info.columns.iter().filter(|c| c.stattarget >= 0) {
        v.push(format!(
            "ALTER TABLE {parent} ALTER COLUMN {} SET STATISTICS {}",
            quote_ident(&c.name),
            c.stattarget
        ));
    }
    for p in info.publications.iter().filter(|p| p.listed) {
        v.push(format!(
            "ALTER PUBLICATION {} ADD TABLE {parent}",
            quote_ident(&p.name)
        ));
    }
    // Every row the plain table accepted is still accepted: keys beyond the
    // premade periods (and NULL keys) land here; the partition pass moves
    // them into their periods as it makes them. Made after the parent's
    // indexes, so it gets them all (built on an empty table: instant).
    v.push(format!(
        "CREATE TABLE {} PARTITION OF {parent} DEFAULT",
        q(s, &plan.default_partition())
    ));
    if info.owner != info.current_user {
        v.push(format!(
            "ALTER TABLE {} OWNER TO {}",
            q(s, &plan.default_partition()),
            quote_ident(&info.owner)
        ));
    }
    // Views: CREATE OR REPLACE keeps each view's oid, owner, grants and the
    // views built on it; the definition (printed before the rename) names the
    // table, which is now the parent.
    for view in &info.views {
        let with = if view.options.is_empty() {
            String::new()
        } else {
            format!(" WITH ({})", view.options.join(", "))
        };
        v.push(format!(
            "CREATE OR REPLACE VIEW {}{with} AS {}",
            view.quoted,
            view.def.trim().trim_end_matches(';')
        ));
    }
    v
}

fn grantee(g: &str) -> String {
    if g == "PUBLIC" {
        "PUBLIC".into()
    } else {
        quote_ident(g)
    }
}

/// Privilege names come from aclexplode(): a fixed set of keywords.
fn privilege(p: &str) -> String {
    p.chars()
        .filter(|c| c.is_ascii_alphabetic() || *c == ' ')
        .collect()
}

#[cfg(test)]
#[path = "ddl_tests.rs"]
mod tests;
