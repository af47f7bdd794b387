//! DDL text. Identifiers are quoted with `quote_ident`, values are literals we
//! computed ourselves (never text from configuration or the catalog).

use chrono_tz::Tz;

use super::access::sql_grant;
use super::model::{Action, DetachHow, KeyType, ParentDetails, Range, ReferencingFk, TableState};
use super::period::key_literal;
use super::sql;
use crate::config::indexes::child_index_name;
use crate::pg::{quote_ident, quote_literal, QualifiedName};

/// The CHECK on a new partition that lets ATTACH skip scanning it.
pub const BOUNDS_CHECK: &str = "pgsteward_bounds";
/// Prefix of the exclusion CHECKs on DEFAULT that earlier versions added
/// before an attach; a pass drops any it finds.
pub const DEFAULT_CHECK_PREFIX: &str = "pgsteward_excl";

/// Clauses of `CREATE TABLE child (LIKE parent ...)`: what `PARTITION OF`
/// would give the partition. Indexes are copied so the ATTACH finds every
/// parent index already built (on an empty table: instant) and attaches it
/// instead of building one under its lock. Not copied, as `PARTITION OF` does
/// not: identity (it stays on the parent), comments and extended statistics.
const LIKE_OPTIONS: &str = "INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED \
                            INCLUDING STORAGE INCLUDING INDEXES";
/// Column compression (PostgreSQL 14+; 13 does not know the clause).
const LIKE_COMPRESSION: &str = " INCLUDING COMPRESSION";
/// The first `server_version_num` with `INCLUDING COMPRESSION`.
const COMPRESSION_SINCE: i32 = 140_000;

fn range_predicate(key: &str, kt: KeyType, tz: Tz, r: Range) -> String {
    range_predicate_on("", key, kt, tz, r)
}

/// The range as a predicate on `alias.key` (no alias when empty).
fn range_predicate_on(alias: &str, key: &str, kt: KeyType, tz: Tz, r: Range) -> String {
    let k = if alias.is_empty() {
        quote_ident(key)
    } else {
        format!("{alias}.{}", quote_ident(key))
    };
    format!(
        "{k} IS NOT NULL AND {k} >= {lo} AND {k} < {hi}",
        lo = key_literal(kt, tz, r.lo),
        hi = key_literal(kt, tz, r.hi)
    )
}

pub fn sql_create_child(
    parent: &QualifiedName,
    child: &QualifiedName,
    details: Option<&ParentDetails>,
) -> String {
    let ts = details
        .and_then(|d| d.tablespace.as_deref())
        .map(|t| format!(" TABLESPACE {}", quote_ident(t)))
        .unwrap_or_default();
    // Without details (`partitions plan`) the clause is shown: servers before 14 are rare.
    let compression = match details {
        Some(d) if d.server_version < COMPRESSION_SINCE => "",
        _ => LIKE_COMPRESSION,
    };
    format!(
        "CREATE TABLE {} (LIKE {} {LIKE_OPTIONS}{compression}){ts}",
        child.quoted(),
        parent.quoted()
    )
}

/// Row-level security on a partition of a parent that has it: with no
/// policy of its own the partition denies every role it applies to, so
/// nothing the parent's policies deny can be reached through it.
pub fn sql_row_security(child: &QualifiedName, force: bool) -> String {
    format!(
        "ALTER TABLE {} ENABLE ROW LEVEL SECURITY{}",
        child.quoted(),
        if force {
            ", FORCE ROW LEVEL SECURITY"
        } else {
            ""
        }
    )
}

/// FORCE (or NO FORCE) ROW LEVEL SECURITY on a partition.
pub fn sql_force_row_security(child: &QualifiedName, force: bool) -> String {
    format!(
        "ALTER TABLE {} {}FORCE ROW LEVEL SECURITY",
        child.quoted(),
        if force { "" } else { "NO " }
    )
}

/// `FULL` or `NOTHING` from the parent; `None` for the default (and for
/// `USING INDEX`, whose index has another name on the partition).
pub fn sql_replica_identity(child: &QualifiedName, relreplident: &str) -> Option<String> {
    let what = match relreplident {
        "f" => "FULL",
        "n" => "NOTHING",
        _ => return None,
    };
    Some(format!(
        "ALTER TABLE {} REPLICA IDENTITY {what}",
        child.quoted()
    ))
}

/// The statements of the transaction that creates a new partition: the
/// table, its bounds CHECK, then what it takes from the parent.
pub fn create_statements(
    state: &TableState,
    details: Option<&ParentDetails>,
    tz: Tz,
    child: &QualifiedName,
    range: Range,
) -> Vec<String> {
    let (parent, key, kt) = (&state.table, state.key_column.as_str(), state.key_type);
    let mut v = vec![
        sql_create_child(parent, child, details),
        sql_add_bounds_check(child, key, kt, tz, range),
    ];
    match details {
        // Direct access stays with the owner, as for a `PARTITION OF` partition.
        // FORCE comes with the ATTACH, after moved rows are in (the steward
        // inserts them as the owner, whom a forced policy would refuse).
        Some(d) if d.row_security => v.push(sql_row_security(child, false)),
        _ => v.extend(state.grants.iter().map(|g| sql_grant(child, g))),
    }
    if let Some(ri) = details.and_then(|d| sql_replica_identity(child, &d.replica_identity)) {
        v.push(ri);
    }
    if let Some(names) = details.and_then(|d| sql_name_indexes(parent, child, &d.indexes)) {
        v.push(names);
    }
    v
}

/// Names the indexes `LIKE ... INCLUDING INDEXES` made (PostgreSQL names
/// them after their columns) by the rule every partition index pgsteward
/// names follows, for new partitions, declared index builds and `convert`
/// alike ([`child_index_name`]: `events_user_idx` → `events_2027_01_user_idx`).
/// Each copy is found by its definition next to the parent index it will be
/// attached to, and renamed unless the name is taken (then PostgreSQL's name
/// stays: a name never decides which index is attached). Runs in the
/// creating transaction, on a table no other session sees yet. `None` when
/// the parent has no index.
pub fn sql_name_indexes(
    parent: &QualifiedName,
    child: &QualifiedName,
    indexes: &[String],
) -> Option<String> {
    if indexes.is_empty() {
        return None;
    }
    let wants: Vec<String> = indexes
        .iter()
        .map(|i| {
            format!(
                "({}, {})",
                quote_literal(i),
                quote_literal(&child_index_name(&parent.name, &child.name, i))
            )
        })
        .collect();
    let def_tail = |x: &str| {
        format!("substr(pg_get_indexdef({x}.indexrelid), strpos(pg_get_indexdef({x}.indexrelid), ' USING '))")
    };
    let (pschema, cschema) = (
        quote_literal(&quote_ident(&parent.schema)),
        quote_literal(&quote_ident(&child.schema)),
    );
    let body = format!(
        "DECLARE r record; BEGIN FOR r IN          SELECT ci.relname::text AS cur, w.want FROM (VALUES {values}) AS w(parent_index, want)          JOIN pg_class pi ON pi.relname = w.parent_index AND pi.relnamespace = {pschema}::regnamespace          JOIN pg_index px ON px.indexrelid = pi.oid AND px.indrelid = {parent_lit}::regclass          JOIN pg_index cx ON cx.indrelid = {child_lit}::regclass AND cx.indisunique = px.indisunique            AND cx.indisprimary = px.indisprimary AND cx.indisexclusion = px.indisexclusion          JOIN pg_class ci ON ci.oid = cx.indexrelid          WHERE {ctail} = {ptail} ORDER BY w.parent_index, ci.relname          LOOP IF r.cur <> r.want            AND EXISTS (SELECT 1 FROM pg_class WHERE relnamespace = {cschema}::regnamespace AND relname = r.cur)            AND NOT EXISTS (SELECT 1 FROM pg_class WHERE relnamespace = {cschema}::regnamespace AND relname = r.want) THEN          EXECUTE format('ALTER INDEX %I.%I RENAME TO %I', {schema_lit}, r.cur, r.want);          END IF; END LOOP; END",
        values = wants.join(", "),
        parent_lit = quote_literal(&parent.quoted()),
        child_lit = quote_literal(&child.quoted()),
        ctail = def_tail("cx"),
        ptail = def_tail("px"),
        schema_lit = quote_literal(&child.schema),
    );
    // The body is dollar-quoted: a name holding the tag keeps PostgreSQL's names.
    if body.contains("$pgsteward$") {
        return None;
    }
    Some(format!("DO $pgsteward$ {body} $pgsteward$"))
}

/// Writers of the partitioned table wait from here to COMMIT (readers do
/// not): none can route a row with a partition list older than the ATTACH,
/// which would fail on the DEFAULT's new partition constraint.
pub fn sql_lock_parent(parent: &QualifiedName) -> String {
    format!("LOCK TABLE ONLY {} IN SHARE MODE", parent.quoted())
}

/// Taken after rows moved, just before the ATTACH: a reader that planned
/// with the partition list before the ATTACH and ran after its COMMIT would
/// scan DEFAULT without the moved rows and skip the partition that has them.
/// Readers wait from here to COMMIT (the ATTACH's scan of DEFAULT), as they
/// would for the ATTACH's lock on DEFAULT anyway.
pub fn sql_lock_parent_exclusive(parent: &QualifiedName) -> String {
    format!(
        "LOCK TABLE ONLY {} IN ACCESS EXCLUSIVE MODE",
        parent.quoted()
    )
}

/// Nothing writes to DEFAULT directly while its rows move; readers go on.
pub fn sql_lock_default(default: &QualifiedName) -> String {
    format!("LOCK TABLE ONLY {} IN EXCLUSIVE MODE", default.quoted())
}

/// No referencing row can be written while the move runs, so the count of
/// referencing rows read under it stays true until COMMIT.
pub fn sql_lock_referencing(tables: &[&QualifiedName]) -> String {
    let list = tables
        .iter()
        .map(|t| t.quoted())
        .collect::<Vec<_>>()
        .join(", ");
    format!("LOCK TABLE {list} IN SHARE ROW EXCLUSIVE MODE")
}

/// Rows of `fk.table` that reference a row of `range` in DEFAULT.
pub fn sql_count_referencing(
    fk: &ReferencingFk,
    default: &QualifiedName,
    key: &str,
    kt: KeyType,
    tz: Tz,
    range: Range,
) -> String {
    let join = fk
        .columns
        .iter()
        .zip(&fk.referenced)
        .map(|(c, p)| format!("r.{} = d.{}", quote_ident(c), quote_ident(p)))
        .collect::<Vec<_>>()
        .join(" AND ");
    format!(
        "SELECT count(*) FROM {} r JOIN ONLY {} d ON {join} WHERE {}",
        fk.table.quoted(),
        default.quoted(),
        range_predicate_on("d", key, kt, tz, range)
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

pub fn sql_owner(child: &QualifiedName, owner: &str) -> String {
    format!(
        "ALTER TABLE {} OWNER TO {}",
        child.quoted(),
        quote_ident(owner)
    )
}

/// Rows of the range in DEFAULT (counted up to `limit`), DEFAULT's heap size
/// on disk in bytes, whether its row-level security binds its owner, its oid.
pub fn sql_probe_default(
    default: &QualifiedName,
    key: &str,
    kt: KeyType,
    tz: Tz,
    r: Range,
    limit: u64,
) -> String {
    format!(
        "SELECT (SELECT count(*) FROM (SELECT 1 FROM ONLY {d} WHERE {pred} LIMIT {limit}) x), \
                pg_relation_size(c.oid), c.relrowsecurity AND c.relforcerowsecurity, c.oid::int8 \
         FROM pg_class c WHERE c.oid = {lit}::regclass",
        d = default.quoted(),
        pred = range_predicate(key, kt, tz, r),
        lit = quote_literal(&default.quoted())
    )
}

/// The name of the exclusion CHECK on DEFAULT for `child`'s range.
pub fn exclusion_check_name(child: &QualifiedName) -> String {
    super::period::partition_name(DEFAULT_CHECK_PREFIX, &format!("_{}", child.name))
}

/// A CHECK on DEFAULT that says it holds no row of `r`, in the form
/// PostgreSQL's prover matches against the negated partition constraint:
/// once validated, ATTACH of `r` skips its scan of DEFAULT. Added `NOT
/// VALID`: an instant under ACCESS EXCLUSIVE.
pub fn sql_add_exclusion_check(
    default: &QualifiedName,
    name: &str,
    key: &str,
    kt: KeyType,
    tz: Tz,
    r: Range,
) -> String {
    let k = quote_ident(key);
    format!(
        "ALTER TABLE ONLY {} ADD CONSTRAINT {} CHECK ({k} IS NULL OR {k} < {} OR {k} >= {}) NOT VALID",
        default.quoted(),
        quote_ident(name),
        key_literal(kt, tz, r.lo),
        key_literal(kt, tz, r.hi)
    )
}

/// Validates a constraint: one scan under SHARE UPDATE EXCLUSIVE, which no
/// read or write waits for.
pub fn sql_validate_constraint(table: &QualifiedName, name: &str) -> String {
    format!(
        "ALTER TABLE {} VALIDATE CONSTRAINT {}",
        table.quoted(),
        quote_ident(name)
    )
}

/// Name of the temporary table a move holds its rows in between the DELETE
/// and the ATTACH (dropped at COMMIT; never published: temporary).
pub const MOVING: &str = "pgsteward_moving";

/// Made in the move's transaction, dropped at its COMMIT.
pub fn sql_create_moving(parent: &QualifiedName) -> String {
    format!(
        "CREATE TEMPORARY TABLE {MOVING} (LIKE {}) ON COMMIT DROP",
        parent.quoted()
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

/// Takes every row of range `r` out of DEFAULT into the temporary table, in
/// the transaction that attaches the child. Published as DELETEs from
/// DEFAULT (or the root, when published through it).
pub fn sql_take_rows(
    default: &QualifiedName,
    columns: &[String],
    key: &str,
    kt: KeyType,
    tz: Tz,
    r: Range,
) -> String {
    let cols = column_list(columns);
    format!(
        "WITH moved AS (DELETE FROM ONLY {d} WHERE {pred} RETURNING {cols}) \
         INSERT INTO pg_temp.{MOVING} ({cols}) SELECT {cols} FROM moved",
        d = default.quoted(),
        pred = range_predicate(key, kt, tz, r)
    )
}

/// Puts the moved rows into the child once it is a partition, so every
/// publication of the parent publishes them (as INSERTs into the partition,
/// or into the root when published through it). The child has no identity
/// of its own on any major; OVERRIDING SYSTEM VALUE keeps the rows' values
/// where one is inherited (PostgreSQL 17+).
pub fn sql_put_rows(child: &QualifiedName, columns: &[String]) -> String {
    let cols = column_list(columns);
    format!(
        "INSERT INTO {} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM pg_temp.{MOVING}",
        child.quoted()
    )
}

fn column_list(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The child's index attached to the parent's replica identity index `$1`
/// (oid), quoted; `$2` the child (regclass text).
pub const IDENTITY_INDEX_OF_CHILD: &str = "SELECT quote_ident(ci.relname) FROM pg_inherits i \
     JOIN pg_index x ON x.indexrelid = i.inhrelid JOIN pg_class ci ON ci.oid = x.indexrelid \
     WHERE i.inhparent = $1::int8::oid AND x.indrelid = to_regclass($2)";

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
            let mut v = Vec::new();
            if let Some(d) = &state.default {
                // Before anything is created: what DEFAULT holds of the range
                // decides how the partition is attached (`probe.rs`).
                v.push(sql_probe_default(&d.name, key, kt, tz, *range, 1));
            }
            v.push(sql::BEGIN.to_string());
            v.extend(create_statements(state, None, tz, partition, *range));
            v.push(sql_owner(partition, &state.owner));
            v.push(sql::COMMIT.into());
            v.push(
                "-- row-level security, replica identity, tablespace and index names follow the parent's".into(),
            );
            if let Some(d) = &state.default {
                v.push(format!(
                    "-- when {} is larger than max_default_scan and holds no row of this range: \
                     a CHECK excluding the range is added NOT VALID and validated (no client waits), \
                     so the ATTACH below does not scan it",
                    d.name
                ));
            }
            v.push(sql::BEGIN.into());
            if let Some(d) = &state.default {
                let cols = ["...".to_string()];
                v.push(sql_lock_parent(parent));
                v.push(sql_lock_default(&d.name));
                v.push(format!(
                    "-- when {} holds rows of this range: tables whose foreign keys reference \
                     them are locked and checked (a referenced row is never moved), then",
                    d.name
                ));
                v.push(sql_create_moving(parent));
                v.push(sql_take_rows(&d.name, &cols, key, kt, tz, *range));
                v.push(sql_lock_parent_exclusive(parent));
                v.push(sql_attach(parent, partition, kt, tz, *range));
                v.push(sql_put_rows(partition, &cols));
            } else {
                v.push(sql_attach(parent, partition, kt, tz, *range));
            }
            v.push(sql_drop_constraint(partition, BOUNDS_CHECK));
            v.push(sql::COMMIT.into());
            v
        }
        Action::Retire {
            partition,
            how,
            drop,
            archive,
            ..
        } => {
            let mut v = vec![sql_detach(parent, partition, *how)];
            if *drop {
                v.push(sql_drop_table(partition));
            }
            if *archive {
                v.push(format!(
                    "-- then {partition} is made read-only, its rows copied to the archive \
                     (COPY ... TO STDOUT), the copy read back and verified (size, SHA-256, row count), and only then"
                ));
                v.push(sql_drop_table(partition));
            }
            v
        }
        Action::DropDefaultCheck { constraint } => match &state.default {
            Some(d) => vec![sql_drop_constraint(&d.name, constraint)],
            None => vec![],
        },
        Action::RepairAccess { partition, repairs } => {
            let mut v = vec![sql::BEGIN.to_string()];
            v.extend(super::access::sql(partition, repairs));
            v.push(sql::COMMIT.into());
            v
        }
    }
}

/// Rows counted in a DEFAULT at most: `status` and the pass report
/// "at least" this many rather than scan a large DEFAULT whole.
pub const DEFAULT_COUNT_CAP: i64 = 100_000;

/// Rows in each DEFAULT partition, up to [`DEFAULT_COUNT_CAP`] each, in
/// one statement: `(position, rows)`.
pub fn sql_count_defaults(defaults: &[(usize, QualifiedName)]) -> String {
    defaults
        .iter()
        .map(|(i, d)| {
            format!(
                "SELECT {i}::int8, (SELECT count(*) FROM (SELECT 1 FROM ONLY {} LIMIT {DEFAULT_COUNT_CAP}) x)::int8",
                d.quoted()
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

#[cfg(test)]
#[path = "ddl_tests.rs"]
mod tests;
