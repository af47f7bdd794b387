//! The steward's privileges, checked before acting: a command lists what it
//! needs ([`Need`], each with what it is for), [`check`] asks the server with
//! one query per need, and every [`Verdict`] that fails carries the exact
//! GRANT or ALTER ROLE to run ([`fix_sql`]). `check` and `partitions plan`
//! call it; `upgrade plan` and `convert plan` can call it the same way:
//!
//! ```ignore
//! let needs = vec![
//!     Required::new(Need::Replication, "pg_basebackup of the new server"),
//!     Required::new(Need::FunctionExecute { signature: "pg_promote(boolean, integer)".into() }, "promote"),
//! ];
//! let verdicts = privileges::check(&client, &needs).await?;
//! for v in verdicts.iter().filter(|v| !v.ok) { println!("{}", v.line()); }
//! ```
//!
//! The judgement ([`judge`]) and the fix text are pure and unit-tested; the
//! queries read only what `pg_monitor` and PUBLIC can read. Nothing here
//! changes a privilege: pgsteward never grants itself anything.

pub mod documented;
mod sql;

use serde::Serialize;
use tokio_postgres::Client;

use crate::pg::{quote_ident, server_message, QualifiedName};

/// An identifier as a person would type it in a GRANT: bare when PostgreSQL
/// reads it back unchanged (lower case, not a reserved word), quoted otherwise.
pub(crate) fn ident(name: &str) -> String {
    const RESERVED: &[&str] = &[
        "all",
        "analyse",
        "analyze",
        "and",
        "any",
        "array",
        "as",
        "asc",
        "both",
        "case",
        "cast",
        "check",
        "collate",
        "column",
        "constraint",
        "create",
        "current_role",
        "current_user",
        "default",
        "desc",
        "distinct",
        "do",
        "else",
        "end",
        "except",
        "false",
        "for",
        "foreign",
        "from",
        "grant",
        "group",
        "having",
        "in",
        "into",
        "is",
        "not",
        "null",
        "on",
        "only",
        "or",
        "order",
        "primary",
        "references",
        "select",
        "session_user",
        "some",
        "table",
        "then",
        "to",
        "true",
        "union",
        "unique",
        "user",
        "using",
        "when",
        "where",
        "with",
    ];
    let simple = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if simple && !RESERVED.contains(&name) {
        name.to_string()
    } else {
        quote_ident(name)
    }
}

/// One privilege a command needs, stated as the thing to be allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "need")]
pub enum Need {
    /// Act as the owner of `table` and of each of its partitions: be the
    /// owner or a member of the owning role (USAGE, and on PostgreSQL 16+
    /// SET, to give new partitions that owner). A missing table passes: the
    /// catalog reports it.
    TableOwner { table: QualifiedName },
    /// USAGE and CREATE on a schema (new partitions, their indexes).
    SchemaCreate { schema: String },
    /// Membership (with its privileges) in a role, `pg_monitor` say.
    RoleMember { role: String },
    /// The REPLICATION attribute (pg_basebackup, replication slots).
    Replication,
    /// EXECUTE on a function, by its signature: `pg_promote(boolean, integer)`.
    FunctionExecute { signature: String },
    /// `ALTER SYSTEM` on one parameter (PostgreSQL 15+; before, superusers only).
    AlterSystem { parameter: String },
    /// Owner (or member of the owner) of a publication.
    PublicationOwner { publication: String },
}

/// A need and what the command does with it, for the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Required {
    #[serde(flatten)]
    pub need: Need,
    /// "partition DDL on public.audit_log", "promote the new primary".
    pub purpose: String,
}

impl Required {
    pub fn new(need: Need, purpose: impl Into<String>) -> Required {
        Required {
            need,
            purpose: purpose.into(),
        }
    }
}

/// Whether a need is met, what was seen, and when not, the statement that
/// grants it (to be run by a role that may: a superuser or the owner).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    #[serde(flatten)]
    pub required: Required,
    pub ok: bool,
    pub detail: String,
    /// The GRANT / ALTER ROLE to run; `None` when met.
    pub fix: Option<String>,
}

impl Verdict {
    /// One line for people: `ok <need>: <detail>` or `MISSING <need>: ...; run: <fix>`.
    pub fn line(&self) -> String {
        match &self.fix {
            None => format!("ok {}: {}", self.required.purpose, self.detail),
            Some(fix) => format!(
                "MISSING {}: {}; run: {fix}",
                self.required.purpose, self.detail
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("cannot read the steward's privileges ({what}): {}", server_message(.source))]
    Query {
        what: &'static str,
        source: tokio_postgres::Error,
    },
}

impl PrivilegeError {
    pub fn metric_label(&self) -> crate::outcome::ErrorLabel {
        crate::outcome::ErrorLabel::Postgres
    }
}

/// What the server said about one need, before judgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Owners of a table and its partitions: (owner, the steward acts as it).
    Owners(Vec<(String, bool)>),
    /// The schema, function, parameter or publication does not exist (or
    /// the server is too old to have the privilege, `AlterSystem` before 15).
    Absent,
    Held(bool),
    /// Schema: (USAGE, CREATE).
    Schema(bool, bool),
}

/// Reads each need from the server (as the session's user) and judges it.
pub async fn check(client: &Client, needs: &[Required]) -> Result<Vec<Verdict>, PrivilegeError> {
    let q = |what: &'static str| move |source| PrivilegeError::Query { what, source };
    let who = client
        .query_one(sql::WHO, &[])
        .await
        .map_err(q("current user"))?;
    let user: String = who.get(0);
    let version: i32 = who.get(1);
    let mut verdicts = Vec::with_capacity(needs.len());
    for r in needs {
        let seen = match &r.need {
            Need::TableOwner { table } => {
                let stmt = if version >= 160_000 {
                    sql::TABLE_OWNERS_16
                } else {
                    sql::TABLE_OWNERS
                };
                let rows = client
                    .query(stmt, &[&table.quoted()])
                    .await
                    .map_err(q("table owners"))?;
                Seen::Owners(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            }
            Need::SchemaCreate { schema } => {
                let row = client
                    .query_opt(sql::SCHEMA, &[schema])
                    .await
                    .map_err(q("schema privileges"))?;
                row.map_or(Seen::Absent, |r| Seen::Schema(r.get(0), r.get(1)))
            }
            Need::RoleMember { role } => {
                one(client, sql::ROLE_MEMBER, role, q("role membership")).await?
            }
            Need::Replication => Seen::Held(
                client
                    .query_one(sql::REPLICATION, &[])
                    .await
                    .map_err(q("role attributes"))?
                    .get(0),
            ),
            Need::FunctionExecute { signature } => {
                one(
                    client,
                    sql::FUNCTION_EXECUTE,
                    signature,
                    q("function privileges"),
                )
                .await?
            }
            Need::AlterSystem { parameter } if version >= 150_000 => {
                one(
                    client,
                    sql::ALTER_SYSTEM,
                    parameter,
                    q("parameter privileges"),
                )
                .await?
            }
            Need::AlterSystem { .. } => Seen::Held(
                client
                    .query_one(sql::SUPERUSER, &[])
                    .await
                    .map_err(q("role attributes"))?
                    .get(0),
            ),
            Need::PublicationOwner { publication } => {
                one(
                    client,
                    sql::PUBLICATION_OWNER,
                    publication,
                    q("publication owner"),
                )
                .await?
            }
        };
        verdicts.push(judge(r, &seen, &user, version));
    }
    Ok(verdicts)
}

/// A query of one text parameter answering one nullable boolean (NULL: absent).
async fn one(
    client: &Client,
    stmt: &str,
    arg: &str,
    err: impl FnOnce(tokio_postgres::Error) -> PrivilegeError,
) -> Result<Seen, PrivilegeError> {
    let held: Option<bool> = client.query_one(stmt, &[&arg]).await.map_err(err)?.get(0);
    Ok(held.map_or(Seen::Absent, Seen::Held))
}

/// The pure judgement of what was seen, with the fix for `user` on a server
/// of `version` (`server_version_num`).
pub fn judge(r: &Required, seen: &Seen, user: &str, version: i32) -> Verdict {
    let (ok, detail) = match (&r.need, seen) {
        (Need::TableOwner { table }, Seen::Owners(owners)) => {
            let missing: Vec<&str> = owners
                .iter()
                .filter(|(_, acts)| !acts)
                .map(|(o, _)| o.as_str())
                .collect();
            if owners.is_empty() {
                (
                    true,
                    format!("{table} does not exist (reported with the table)"),
                )
            } else if missing.is_empty() {
                let all: Vec<&str> = owners.iter().map(|(o, _)| o.as_str()).collect();
                (
                    true,
                    format!(
                        "{user} acts as {} (owner of {table} and its partitions)",
                        all.join(", ")
                    ),
                )
            } else {
                (
                    false,
                    format!(
                        "{user} cannot act as {} (owner of {table} or of some of its partitions)",
                        missing.join(", ")
                    ),
                )
            }
        }
        (Need::SchemaCreate { schema }, Seen::Schema(usage, create)) => {
            let lacks: Vec<&str> = [(!usage, "USAGE"), (!create, "CREATE")]
                .into_iter()
                .filter_map(|(l, p)| l.then_some(p))
                .collect();
            if lacks.is_empty() {
                (true, format!("USAGE and CREATE on schema {schema}"))
            } else {
                (
                    false,
                    format!("{user} lacks {} on schema {schema}", lacks.join(" and ")),
                )
            }
        }
        (Need::Replication, Seen::Held(h)) => (
            *h,
            format!(
                "{user} {} the REPLICATION attribute",
                if *h { "has" } else { "lacks" }
            ),
        ),
        (Need::AlterSystem { parameter }, Seen::Held(false)) if version < 150_000 => (
            false,
            format!("before PostgreSQL 15 only a superuser may ALTER SYSTEM SET {parameter}"),
        ),
        (need, Seen::Held(h)) => (
            *h,
            format!(
                "{user} {} {}",
                if *h { "has" } else { "lacks" },
                describe(need)
            ),
        ),
        (need, Seen::Absent) => (
            false,
            format!("{} does not exist on this server", describe(need)),
        ),
        (need, _) => (false, format!("{} could not be judged", describe(need))),
    };
    // A missing table is the catalog's report, not a privilege to grant.
    let fix = (!ok).then(|| fix_sql(&r.need, seen, user, version));
    Verdict {
        required: r.clone(),
        ok,
        detail,
        fix,
    }
}

fn describe(need: &Need) -> String {
    match need {
        Need::TableOwner { table } => format!("the owner's privileges on {table}"),
        Need::SchemaCreate { schema } => format!("USAGE and CREATE on schema {schema}"),
        Need::RoleMember { role } => format!("membership in {role}"),
        Need::Replication => "the REPLICATION attribute".into(),
        Need::FunctionExecute { signature } => format!("EXECUTE on function {signature}"),
        Need::AlterSystem { parameter } => format!("ALTER SYSTEM on parameter {parameter}"),
        Need::PublicationOwner { publication } => format!("ownership of publication {publication}"),
    }
}

/// The statement that grants `need` to `user`, identifiers quoted; for a
/// table, one GRANT per owning role the user cannot act as.
pub fn fix_sql(need: &Need, seen: &Seen, user: &str, version: i32) -> String {
    let u = ident(user);
    // PG 16 split membership into INHERIT (use the role's privileges) and SET
    // (become it, which giving new partitions the owner needs); both are
    // the defaults of a plain GRANT, but say them for a role that was
    // granted WITH INHERIT FALSE.
    let member = |role: &str| {
        if version >= 160_000 {
            format!("GRANT {} TO {u} WITH INHERIT TRUE, SET TRUE;", ident(role))
        } else {
            format!("GRANT {} TO {u};", ident(role))
        }
    };
    match (need, seen) {
        (Need::TableOwner { .. }, Seen::Owners(owners)) => owners
            .iter()
            .filter(|(_, acts)| !acts)
            .map(|(o, _)| member(o))
            .collect::<Vec<_>>()
            .join(" "),
        (Need::TableOwner { table }, _) => format!("-- {table}: see its owner"),
        (Need::SchemaCreate { schema }, _) => {
            format!("GRANT USAGE, CREATE ON SCHEMA {} TO {u};", ident(schema))
        }
        (Need::RoleMember { role }, _) => format!("GRANT {} TO {u};", ident(role)),
        (Need::Replication, _) => {
            format!("ALTER ROLE {u} REPLICATION; -- and a `replication` line for it in pg_hba.conf")
        }
        // A signature is regprocedure text, written as the doc writes it.
        (Need::FunctionExecute { signature }, _) => {
            format!("GRANT EXECUTE ON FUNCTION {signature} TO {u};")
        }
        (Need::AlterSystem { parameter }, _) if version >= 150_000 => format!(
            "GRANT ALTER SYSTEM ON PARAMETER {} TO {u};",
            ident(parameter)
        ),
        (Need::AlterSystem { .. }, _) => {
            "-- PostgreSQL 15 or newer (ALTER SYSTEM needs a superuser before)".into()
        }
        (Need::PublicationOwner { publication }, _) => format!(
            "ALTER PUBLICATION {} OWNER TO {u}; -- or GRANT its owner to {u}",
            ident(publication)
        ),
    }
}

#[cfg(test)]
mod tests;
