//! Versioned migrations of the `pgsteward` schema, the state pgsteward keeps
//! on the primary it manages (capacity samples, partition retirements; the
//! upgrade guard and the conversion journal are to move here, see
//! `docs/privileges.md#the-pgsteward-schema`).
//!
//! Invariants:
//! * `pgsteward.schema_version` holds one row: the highest migration applied.
//!   Migrations are numbered from 1, applied in order, each exactly once, and
//!   the version row moves in the same transaction as the migration's DDL, so
//!   a crash leaves the schema at a version it really has.
//! * Whoever needs the schema first applies what is missing ([`ensure`]): the
//!   CLI and every service instance alike. Two of them starting at once
//!   serialise on a transaction-level advisory lock; the second one re-reads
//!   the version under the lock and finds nothing left to do.
//! * A schema newer than this binary knows is refused ([`SchemaError::Newer`]):
//!   an older binary must not write rows a newer release reads differently.
//! * The fast path (schema current) takes no lock and writes nothing, so a
//!   replica, or a role without CREATE, can still read.
//! * Every writer asks [`published::check`] before [`ensure`]: a publication
//!   of the schema would carry the migration's version row, and the writer's
//!   own rows, to subscribers that may not have the tables.

pub mod published;
mod sql;

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::pg::{server_message, Backoff, Retry};

/// One step of the schema's history. Never edit a released migration: add
/// the next number instead (released binaries have recorded theirs applied).
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order; `version` is the position from 1. Tables that
/// releases before this module made ad hoc join with `IF NOT EXISTS`
/// (`retirements`, 2; the conversion journal, 3). The upgrade guard is not
/// here: it lives in the cluster's guard database (`upgrade::guard`), not in
/// the databases these tables describe.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "capacity_samples",
        sql: include_str!("../../sql/schema_0001_capacity_samples.sql"),
    },
    Migration {
        version: 2,
        name: "retirements",
        sql: include_str!("../../sql/schema_0002_retirements.sql"),
    },
    Migration {
        version: 3,
        name: "conversions",
        sql: include_str!("../../sql/schema_0003_conversions.sql"),
    },
    Migration {
        version: 4,
        name: "retirement_etag",
        sql: include_str!("../../sql/schema_0004_retirement_etag.sql"),
    },
];

/// The version this binary brings the schema to.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Advisory-lock namespace of migrations ("pgsc"), two-int form, distinct
/// from the partition pass's ("pgst"), convert's ("pgcv") and the guard's
/// ("pgup"). Held for the migrating transaction only.
pub const LOCK_NS: i32 = 0x7067_7363;
pub const LOCK_KEY: i32 = 1;

const BOOTSTRAP: &str = include_str!("../../sql/schema_bootstrap.sql");
const VERSION_TABLE: &str = "SELECT to_regclass('pgsteward.schema_version') IS NOT NULL";
const READ_VERSION: &str = "SELECT version FROM pgsteward.schema_version";
const WHO: &str = "SELECT current_user::text, current_database()::text";
/// Bounds the wait for another instance's migration (and for the locks the
/// DDL takes); a migration is a few catalog rows, so this is generous.
const MIGRATE_SETUP: &str = "SET LOCAL lock_timeout = '30s'";
const LOCK: &str = "SELECT pg_advisory_xact_lock($1, $2)";
const SET_VERSION: &str = "INSERT INTO pgsteward.schema_version AS v (version, applied_by) \
     VALUES ($1, $2) ON CONFLICT (singleton) DO UPDATE SET version = $1, \
     applied_at = now(), applied_by = $2";
/// Attempts of the migrating transaction: `CREATE SCHEMA IF NOT EXISTS` loses
/// a race with a writer that does not take our lock (an older release making
/// the guard table) with a unique violation; the retry finds the schema.
const ATTEMPTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("the pgsteward schema on {target} is at version {found}, newer than this binary knows ({known}): a newer pgsteward release has run against this database; run that release (or newer) here")]
    Newer {
        target: String,
        found: i32,
        known: i32,
    },
    #[error("cannot create the pgsteward schema on {target}: {detail}; run `{grant}` (see docs/privileges.md)")]
    Privilege {
        target: String,
        detail: String,
        grant: String,
    },
    #[error("cannot migrate the pgsteward schema on {target}: the server is read-only (a replica, or default_transaction_read_only); point database.primary at the primary")]
    ReadOnly { target: String },
    /// Publications publish the schema to subscribers not declared to have
    /// it (`published`): nothing was written.
    #[error("refused, nothing written: {reason}. To fix: {fix}")]
    Published {
        publications: Vec<String>,
        reason: String,
        fix: String,
    },
    #[error("pgsteward schema on {target}: {what}: {}", crate::pg::server_message(.source))]
    Query {
        target: String,
        what: &'static str,
        source: tokio_postgres::Error,
    },
}

impl SchemaError {
    /// The failure kind for metrics: one per subsystem.
    pub fn metric_label(&self) -> crate::outcome::ErrorLabel {
        crate::outcome::ErrorLabel::Schema
    }
}

/// What [`ensure`] must do, from the version found (`None`: no version table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Current,
    /// Apply every migration after this version.
    Apply {
        from: i32,
    },
    Newer {
        found: i32,
    },
}

/// Pure: the version found against the version known.
pub fn decide(found: Option<i32>, known: i32) -> Decision {
    match found {
        Some(v) if v == known => Decision::Current,
        Some(v) if v > known => Decision::Newer { found: v },
        Some(v) => Decision::Apply { from: v },
        None => Decision::Apply { from: 0 },
    }
}

/// The version the schema has after the call: [`latest`], or an error that
/// names the fix. `target` names the server in errors. Takes a shared
/// session (the partition pass's workers hold theirs by reference): the
/// migration's transaction is opened and closed on it with BEGIN/COMMIT, and
/// the session is out of any transaction again when this returns.
pub async fn ensure(client: &Client, target: &str) -> Result<i32, SchemaError> {
    let known = latest();
    // Fast path: no lock, no write.
    if let Decision::Current = decide(read_version(client, target).await?, known) {
        return Ok(known);
    }
    // Never cancelled; no pause: the retry finds what the other side made.
    let never = CancellationToken::new();
    let mut retry = Retry::new(ATTEMPTS, Backoff::NONE, &never);
    loop {
        let attempt = retry.begin().unwrap_or(ATTEMPTS);
        match migrate(client, target, known).await {
            Err(SchemaError::Query { source, what, .. }) => {
                let raced = source.code().is_some_and(|c| {
                    *c == SqlState::UNIQUE_VIOLATION || *c == SqlState::DUPLICATE_SCHEMA
                });
                if retry
                    .again(raced, &server_message(&source))
                    .await
                    .unwrap_or(false)
                {
                    tracing::debug!(attempt, "pgsteward schema made concurrently; retrying");
                    continue;
                }
                return Err(classify(client, target, what, source).await);
            }
            other => return other,
        }
    }
}

async fn read_version(client: &Client, target: &str) -> Result<Option<i32>, SchemaError> {
    let q = |what| {
        move |source| SchemaError::Query {
            target: target.to_string(),
            what,
            source,
        }
    };
    let exists: bool = client
        .query_one(VERSION_TABLE, &[])
        .await
        .map_err(q("look for pgsteward.schema_version"))?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_opt(READ_VERSION, &[])
        .await
        .map_err(q("read pgsteward.schema_version"))?;
    Ok(row.map(|r| r.get(0)))
}

/// Crash safety: one transaction; killed anywhere, nothing of it is left and
/// the next caller starts again from the version row. An error rolls the
/// transaction back before returning, so the session stays usable.
async fn migrate(client: &Client, target: &str, known: i32) -> Result<i32, SchemaError> {
    client
        .batch_execute("BEGIN")
        .await
        .map_err(query_err(target, "begin the migration"))?;
    match migrate_in_transaction(client, target, known).await {
        Ok(v) => {
            client
                .batch_execute("COMMIT")
                .await
                .map_err(query_err(target, "commit the migration"))?;
            Ok(v)
        }
        Err(e) => {
            // Best effort: a session that is gone has no transaction left.
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

fn query_err<'a>(
    target: &'a str,
    what: &'static str,
) -> impl FnOnce(tokio_postgres::Error) -> SchemaError + 'a {
    move |source| SchemaError::Query {
        target: target.to_string(),
        what,
        source,
    }
}

async fn migrate_in_transaction(
    client: &Client,
    target: &str,
    known: i32,
) -> Result<i32, SchemaError> {
    let q = |what| query_err(target, what);
    client
        .batch_execute(MIGRATE_SETUP)
        .await
        .map_err(q("set lock_timeout"))?;
    client
        .execute(LOCK, &[&LOCK_NS, &LOCK_KEY])
        .await
        .map_err(q("wait for another instance's migration"))?;
    client
        .batch_execute(BOOTSTRAP)
        .await
        .map_err(q("create the schema and its version table"))?;
    let found = client
        .query_opt(READ_VERSION, &[])
        .await
        .map_err(q("read pgsteward.schema_version"))?
        .map(|r| r.get::<_, i32>(0));
    let from = match decide(found, known) {
        Decision::Current => return Ok(known),
        Decision::Newer { found } => {
            return Err(SchemaError::Newer {
                target: target.to_string(),
                found,
                known,
            })
        }
        Decision::Apply { from } => from,
    };
    for m in MIGRATIONS.iter().filter(|m| m.version > from) {
        tracing::info!(
            version = m.version,
            name = m.name,
            "applying pgsteward schema migration"
        );
        client
            .batch_execute(m.sql)
            .await
            .map_err(q("apply a migration"))?;
    }
    let by = format!("pgsteward {}", env!("CARGO_PKG_VERSION"));
    client
        .execute(SET_VERSION, &[&known, &by])
        .await
        .map_err(q("record the schema version"))?;
    Ok(known)
}

/// The schema's tables as this binary makes them, empty and without the
/// version row: what `pgsteward schema-sql` prints for a logical subscriber
/// of a publication that covers them. Without the version row, so the
/// subscription's initial copy (`REFRESH PUBLICATION`) brings the
/// publisher's rows in without a key conflict.
pub fn subscriber_sql() -> String {
    let mut s = format!(
        "-- pgsteward {}: the pgsteward schema's tables, empty, for a logical subscriber\n\
         -- of a publication that covers them (FOR ALL TABLES, FOR TABLES IN SCHEMA pgsteward).\n\
         -- Run in the subscriber's database, then ALTER SUBSCRIPTION <name> REFRESH PUBLICATION.\n\
         BEGIN;\n",
        env!("CARGO_PKG_VERSION")
    );
    s.push_str(BOOTSTRAP);
    for m in MIGRATIONS {
        s.push_str(m.sql);
    }
    s.push_str("COMMIT;\n");
    s
}

/// What `check` reports: the version found, and whether this role could
/// bring the schema up to date (CREATE on the database to make it, or on
/// the schema to migrate it). Reads only.
const READINESS: &str = "SELECT current_user::text, current_database()::text, \
     to_regnamespace('pgsteward') IS NOT NULL, \
     has_database_privilege(current_database(), 'CREATE'), \
     CASE WHEN to_regnamespace('pgsteward') IS NOT NULL \
          THEN has_schema_privilege('pgsteward', 'USAGE, CREATE') END";

/// `check`'s probe: `Ok(detail)` when the schema is current or this role can
/// make it so, else the error `ensure` would return (the GRANT named).
pub async fn readiness(client: &Client, target: &str) -> Result<String, SchemaError> {
    let q = |what| {
        move |source| SchemaError::Query {
            target: target.to_string(),
            what,
            source,
        }
    };
    let r = client
        .query_one(READINESS, &[])
        .await
        .map_err(q("read the steward's privileges"))?;
    let (user, db): (String, String) = (r.get(0), r.get(1));
    let (has_schema, db_create, schema_create): (bool, bool, Option<bool>) =
        (r.get(2), r.get(3), r.get(4));
    let found = read_version(client, target).await?;
    let known = latest();
    match decide(found, known) {
        Decision::Newer { found } => Err(SchemaError::Newer {
            target: target.to_string(),
            found,
            known,
        }),
        Decision::Current => Ok(format!("pgsteward schema at version {known}")),
        Decision::Apply { from } => {
            let refused = if has_schema {
                (schema_create != Some(true)).then_some("permission denied for schema pgsteward")
            } else {
                (!db_create).then_some("permission denied for database")
            };
            match refused {
                Some(msg) => Err(SchemaError::Privilege {
                    target: target.to_string(),
                    detail: format!(
                        "{msg} (the schema is at version {from}, this release needs {known})"
                    ),
                    grant: grant_for(msg, &user, &db),
                }),
                None => Ok(format!(
                    "pgsteward schema at version {from}; the first run migrates it to {known}"
                )),
            }
        }
    }
}

/// A failed migration in the operator's terms: which GRANT is missing, or
/// that the server is read-only.
async fn classify(
    client: &Client,
    target: &str,
    what: &'static str,
    source: tokio_postgres::Error,
) -> SchemaError {
    match source.code() {
        Some(c) if *c == SqlState::READ_ONLY_SQL_TRANSACTION => SchemaError::ReadOnly {
            target: target.to_string(),
        },
        Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => {
            let (user, db) = match client.query_one(WHO, &[]).await {
                Ok(r) => (r.get::<_, String>(0), r.get::<_, String>(1)),
                Err(_) => ("steward".into(), "app".into()),
            };
            let detail = crate::pg::server_message(&source);
            SchemaError::Privilege {
                target: target.to_string(),
                grant: grant_for(&detail, &user, &db),
                detail,
            }
        }
        _ => SchemaError::Query {
            target: target.to_string(),
            what,
            source,
        },
    }
}

/// The GRANT that fixes a permission error of the bootstrap: CREATE on the
/// database makes the schema; a schema another role made needs CREATE on it.
pub fn grant_for(message: &str, user: &str, db: &str) -> String {
    let user = crate::pg::quote_ident(user);
    if message.contains("for schema") {
        format!("GRANT USAGE, CREATE ON SCHEMA pgsteward TO {user}")
    } else if message.contains("for table") {
        format!("ALTER TABLE ... OWNER TO {user} (a pgsteward table another role made)")
    } else {
        format!(
            "GRANT CREATE ON DATABASE {} TO {user}",
            crate::pg::quote_ident(db)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_from_one_in_order() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "{}", m.name);
            assert!(
                m.sql.contains("IF NOT EXISTS"),
                "{} must be re-runnable",
                m.name
            );
        }
        assert_eq!(latest(), MIGRATIONS.len() as i32);
    }

    #[test]
    fn the_subscriber_sql_makes_every_table_and_no_version_row() {
        let s = subscriber_sql();
        for t in [
            "schema_version",
            "capacity_samples",
            "retirements",
            "conversions",
        ] {
            assert!(
                s.contains(&format!("CREATE TABLE IF NOT EXISTS pgsteward.{t}")),
                "{t}"
            );
        }
        assert!(!s.contains("INSERT"), "{s}");
        assert!(s.trim_end().ends_with("COMMIT;"));
    }

    #[test]
    fn decide_applies_missing_and_refuses_newer() {
        assert_eq!(decide(None, 3), Decision::Apply { from: 0 });
        assert_eq!(decide(Some(1), 3), Decision::Apply { from: 1 });
        assert_eq!(decide(Some(3), 3), Decision::Current);
        assert_eq!(decide(Some(4), 3), Decision::Newer { found: 4 });
    }

    #[test]
    fn grant_names_the_object_refused() {
        assert_eq!(
            grant_for(
                "permission denied for database app (42501)",
                "steward",
                "app"
            ),
            "GRANT CREATE ON DATABASE \"app\" TO \"steward\""
        );
        assert_eq!(
            grant_for(
                "permission denied for schema pgsteward (42501)",
                "steward",
                "app"
            ),
            "GRANT USAGE, CREATE ON SCHEMA pgsteward TO \"steward\""
        );
        assert!(grant_for(
            "permission denied for database \"My App\"",
            "st ew",
            "My App"
        )
        .contains("\"My App\" TO \"st ew\""));
    }
}
