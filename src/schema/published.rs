//! Publications that publish pgsteward's own tables (issue 22).
//!
//! A `FOR ALL TABLES` publication cannot leave a schema out, and `FOR TABLES
//! IN SCHEMA pgsteward` (PostgreSQL 15+) or `FOR TABLE pgsteward.x` name it;
//! a subscriber of one that has no such table stops applying at the first
//! row pgsteward writes there ("logical replication target relation
//! pgsteward.retirements does not exist"), and its slot then holds WAL on
//! the primary. So whatever writes to the schema (archive retention, a
//! conversion, capacity samples, and the migration each of them runs first)
//! asks [`check`] before its first write, and is refused unless the operator
//! declared, per publication, that its subscribers have the tables
//! (`database.subscribers_have_pgsteward_schema`).
//!
//! One catalog read, no write; [`decide`] is pure. A publication that
//! publishes no INSERT, UPDATE nor DELETE is harmless and not counted.

use std::sync::Arc;

use serde::Serialize;
use tokio_postgres::Client;

use super::{sql, SchemaError};

/// How a publication covers the `pgsteward` schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum How {
    AllTables,
    /// `FOR TABLES IN SCHEMA pgsteward`.
    Schema,
    /// `FOR TABLE pgsteward.x`, by name.
    Tables,
}

impl How {
    /// As the publication was declared.
    pub fn as_str(self) -> &'static str {
        match self {
            How::AllTables => "FOR ALL TABLES",
            How::Schema => "FOR TABLES IN SCHEMA pgsteward",
            How::Tables => "FOR TABLE pgsteward.*",
        }
    }
}

/// One row of the catalog read: a publication that publishes row changes,
/// and whether it covers the schema each way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub name: String,
    pub all_tables: bool,
    pub schema: bool,
    pub tables: bool,
}

/// A publication that publishes pgsteward's tables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Publication {
    pub name: String,
    pub how: How,
}

/// What writes to the schema, and where: named in the refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// `retention_mode = "archive"`: `pgsteward.retirements`.
    Archive,
    /// `pgsteward convert`: `pgsteward.conversions`.
    Convert,
    /// The capacity run: `pgsteward.capacity_samples`.
    Capacity,
    /// `pgsteward upgrade`: `pgsteward.upgrade_guard`, in the database `postgres`.
    Upgrade,
}

impl Writer {
    fn what(self) -> &'static str {
        match self {
            Writer::Archive => "archive retention (retention_mode = \"archive\")",
            Writer::Convert => "the conversion",
            Writer::Capacity => "the capacity run",
            Writer::Upgrade => "the upgrade's guard (one upgrade per cluster)",
        }
    }
    fn table(self) -> &'static str {
        match self {
            Writer::Archive => "pgsteward.retirements",
            Writer::Convert => "pgsteward.conversions",
            Writer::Capacity => "pgsteward.capacity_samples",
            Writer::Upgrade => "pgsteward.upgrade_guard",
        }
    }
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No publication publishes the schema.
    Clear,
    /// Every one that does is declared to have subscribers with the tables.
    Acknowledged(Vec<String>),
    /// These are not declared: nothing may be written.
    Refuse(Vec<Publication>),
}

/// Pure: the publications found against those the configuration declares.
pub fn decide(rows: &[Row], acknowledged: &[String]) -> Verdict {
    let found: Vec<Publication> = rows
        .iter()
        .filter_map(|r| {
            let how = if r.all_tables {
                How::AllTables
            } else if r.schema {
                How::Schema
            } else if r.tables {
                How::Tables
            } else {
                return None;
            };
            Some(Publication {
                name: r.name.clone(),
                how,
            })
        })
        .collect();
    if found.is_empty() {
        return Verdict::Clear;
    }
    let (declared, undeclared): (Vec<Publication>, Vec<Publication>) = found
        .into_iter()
        .partition(|p| acknowledged.contains(&p.name));
    if undeclared.is_empty() {
        Verdict::Acknowledged(declared.into_iter().map(|p| p.name).collect())
    } else {
        Verdict::Refuse(undeclared)
    }
}

/// The refusal's reason and fix, for `Writer`'s first write on `target`.
/// `acknowledged` is the configured list, so the fix's line keeps it.
pub fn explain(
    writer: Writer,
    refused: &[Publication],
    acknowledged: &[String],
    target: &str,
) -> (String, String) {
    let list: Vec<String> = refused
        .iter()
        .map(|p| format!("{} ({})", p.name, p.how.as_str()))
        .collect();
    let reason = format!(
        "{} writes to {} on {target}, and publication(s) {} publish pgsteward's tables: a subscriber \
         without them stops applying at the first such row (\"logical replication target relation \
         ... does not exist\") and its slot holds WAL",
        writer.what(),
        writer.table(),
        list.join(", ")
    );
    let mut names: Vec<&str> = acknowledged.iter().map(String::as_str).collect();
    names.extend(refused.iter().map(|p| p.name.as_str()));
    // A JSON array of strings is a TOML array too (same escapes).
    let line = serde_json::to_string(&names).unwrap_or_default();
    let fix = format!(
        "in each subscriber's database create pgsteward's tables, empty (`pgsteward schema-sql | psql \
         SUBSCRIBER_URL`), and run `ALTER SUBSCRIPTION <name> REFRESH PUBLICATION`; then declare it with \
         `[database] subscribers_have_pgsteward_schema = {line}` (docs/partitions.md#pgstewards-own-tables-and-publications). \
         Or publish the application's tables only (FOR TABLE, FOR TABLES IN SCHEMA <app schema>)"
    );
    (reason, fix)
}

/// Reads the publications of the connected database: one query, no write.
/// `server_version_num` picks the query (PostgreSQL 15 added `FOR TABLES IN
/// SCHEMA`); `None` reads it first.
pub async fn read(
    client: &Client,
    server_version_num: Option<i32>,
    target: &str,
) -> Result<Vec<Row>, SchemaError> {
    let err = |source| SchemaError::Query {
        target: target.to_string(),
        what: "read the publications of the database",
        source,
    };
    let version = match server_version_num {
        Some(v) => v,
        None => client
            .query_one(sql::SERVER_VERSION_NUM, &[])
            .await
            .map_err(err)?
            .get(0),
    };
    let q = if version >= 150_000 {
        sql::PUBLICATIONS_15
    } else {
        sql::PUBLICATIONS_13
    };
    let rows = client.query(q, &[]).await.map_err(err)?;
    Ok(rows
        .iter()
        .map(|r| Row {
            name: r.get(0),
            all_tables: r.get(1),
            schema: r.get(2),
            tables: r.get(3),
        })
        .collect())
}

/// Before `writer`'s first write to the schema: `Ok` when nothing publishes
/// it or every publication that does is declared, else
/// [`SchemaError::Published`] with the reason and the fix.
pub async fn check(
    client: &Client,
    server_version_num: Option<i32>,
    acknowledged: &[String],
    writer: Writer,
    target: &str,
) -> Result<(), SchemaError> {
    let rows = read(client, server_version_num, target).await?;
    match decide(&rows, acknowledged) {
        Verdict::Clear | Verdict::Acknowledged(_) => Ok(()),
        Verdict::Refuse(refused) => {
            let (reason, fix) = explain(writer, &refused, acknowledged, target);
            Err(SchemaError::Published {
                publications: refused.into_iter().map(|p| p.name).collect(),
                reason,
                fix,
            })
        }
    }
}

/// [`check`] once per run (a partition pass asks before every archive
/// retirement, from several sessions): the first caller reads, the others
/// get its answer. The error is shared (`Arc`): `SchemaError` holds a
/// `tokio_postgres::Error`, which cannot be cloned, and every caller reports
/// the same refusal (as the table's error).
pub struct Once {
    acknowledged: Vec<String>,
    server_version_num: i32,
    target: String,
    answer: tokio::sync::OnceCell<Result<(), Arc<SchemaError>>>,
}

impl Once {
    pub fn new(acknowledged: &[String], server_version_num: i32, target: &str) -> Once {
        Once {
            acknowledged: acknowledged.to_vec(),
            server_version_num,
            target: target.to_string(),
            answer: tokio::sync::OnceCell::new(),
        }
    }

    /// `Err`: refused (or the catalog could not be read: refused too, since
    /// nothing may be written blind).
    pub async fn check(&self, client: &Client, writer: Writer) -> Result<(), Arc<SchemaError>> {
        self.answer
            .get_or_init(|| async {
                check(
                    client,
                    Some(self.server_version_num),
                    &self.acknowledged,
                    writer,
                    &self.target,
                )
                .await
                .map_err(Arc::new)
            })
            .await
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, all: bool, schema: bool, tables: bool) -> Row {
        Row {
            name: name.into(),
            all_tables: all,
            schema,
            tables,
        }
    }

    #[test]
    fn only_publications_of_the_schema_count() {
        // A FOR TABLE public.x publication reads as (false, false, false).
        assert_eq!(
            decide(&[row("app", false, false, false)], &[]),
            Verdict::Clear
        );
        assert_eq!(decide(&[], &["gone".into()]), Verdict::Clear);
        assert_eq!(
            decide(
                &[
                    row("app", false, false, false),
                    row("everything", true, false, false),
                    row("ours", false, true, true),
                    row("one", false, false, true),
                ],
                &[]
            ),
            Verdict::Refuse(vec![
                Publication {
                    name: "everything".into(),
                    how: How::AllTables
                },
                Publication {
                    name: "ours".into(),
                    how: How::Schema
                },
                Publication {
                    name: "one".into(),
                    how: How::Tables
                },
            ])
        );
    }

    #[test]
    fn a_declaration_covers_its_publication_only() {
        let rows = [
            row("all_a", true, false, false),
            row("all_b", true, false, false),
        ];
        assert_eq!(
            decide(&rows, &["all_a".into(), "all_b".into(), "stale".into()]),
            Verdict::Acknowledged(vec!["all_a".into(), "all_b".into()])
        );
        // A publication added later is refused although another is declared.
        assert_eq!(
            decide(&rows, &["all_a".into()]),
            Verdict::Refuse(vec![Publication {
                name: "all_b".into(),
                how: How::AllTables
            }])
        );
        // Names are exact, as the catalog has them.
        assert!(matches!(
            decide(&rows[..1], &["ALL_A".into()]),
            Verdict::Refuse(_)
        ));
    }

    #[test]
    fn the_refusal_names_publications_tables_and_the_line_to_add() {
        let refused = [Publication {
            name: "odd \"pub\"".into(),
            how: How::AllTables,
        }];
        let (reason, fix) = explain(Writer::Archive, &refused, &["kept".into()], "db:5432/app");
        assert!(
            reason.contains("pgsteward.retirements on db:5432/app"),
            "{reason}"
        );
        assert!(reason.contains("odd \"pub\" (FOR ALL TABLES)"), "{reason}");
        assert!(fix.contains("pgsteward schema-sql"), "{fix}");
        assert!(fix.contains("REFRESH PUBLICATION"), "{fix}");
        assert!(
            fix.contains(r#"subscribers_have_pgsteward_schema = ["kept","odd \"pub\""]"#),
            "{fix}"
        );
        let line = fix
            .split('`')
            .find(|s| s.starts_with("[database]"))
            .unwrap_or_default()
            .replace("[database] ", "[database]\n");
        let parsed: toml::Table = toml::from_str(&line).unwrap();
        assert_eq!(
            parsed["database"]["subscribers_have_pgsteward_schema"][1].as_str(),
            Some("odd \"pub\"")
        );
    }
}
