//! Before a partition is made next to a DEFAULT: what DEFAULT holds of its
//! range, how big it is, and who publishes it; then the pure decision of how
//! the partition is attached, or why it is not. `partitions plan` runs the
//! same probe and decision as the pass, so a refusal shows there (exit 1)
//! before anything changes.
//!
//! The three ways, each keeping the promise that no client statement waits
//! longer than `lock_timeout` plus one batch of moved rows:
//! - [`AttachPath::Plain`]: nothing of the range in a DEFAULT of at most
//!   `max_default_scan`: the ATTACH's own scan of DEFAULT is short.
//! - [`AttachPath::ExclusionCheck`]: nothing of the range in a larger
//!   DEFAULT: a CHECK on DEFAULT excluding the range is added `NOT VALID`
//!   (an instant), validated (a scan under SHARE UPDATE EXCLUSIVE: reads and
//!   writes go on), and the ATTACH then skips its scan; the CHECK goes in the
//!   attaching transaction. The price: while it is validated, an INSERT of a
//!   row of exactly that range (which has no partition yet, and no row in
//!   DEFAULT) fails on the CHECK instead of landing in DEFAULT.
//! - [`AttachPath::Move`]: rows of the range in a DEFAULT of at most
//!   `max_default_scan`, at most `default_move_batch` of them: they move in
//!   the attaching transaction (`attach.rs`).
//!
//! Refused, with the figures and the fix: more rows than one batch (rows of
//! one period cannot be split across transactions: until the partition is
//! attached they can only live in DEFAULT, and a reader of the parent must
//! see each exactly once); rows in a DEFAULT larger than `max_default_scan`
//! (the exclusion CHECK cannot be validated while they are there, so the
//! ATTACH would scan DEFAULT under ACCESS EXCLUSIVE); rows in a DEFAULT that
//! a publication publishes under its own name (the move would be published
//! as a DELETE there and an INSERT under the new partition's name, which no
//! subscriber has yet: rows lost or replication stopped); rows in a DEFAULT
//! with FORCE ROW LEVEL SECURITY (the steward would not see them all).

use chrono_tz::Tz;
use tokio_postgres::Client;

use super::ddl;
use super::model::{KeyType, Range};
use crate::config::{ByteSize, PartitionsConfig};
use crate::pg::QualifiedName;

/// What the probe of DEFAULT found, before anything is locked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DefaultProbe {
    /// Rows of the range in DEFAULT, counted up to `default_move_batch + 1`.
    pub rows: u64,
    /// DEFAULT's heap on disk, what an ATTACH scans.
    pub bytes: u64,
    /// DEFAULT has row-level security forced on its owner.
    pub forced_rls: bool,
    /// Publications that publish DEFAULT's changes under its own name.
    pub own_name_publications: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachPath {
    Plain,
    ExclusionCheck,
    Move { rows: u64 },
}

/// Why `child` is not made next to `default`, with the figures and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "{default} holds more than {batch} rows of {child}'s range, more than partitions.default_move_batch = {batch} \
         that one transaction moves while writers of {parent} wait (rows of one period cannot be split \
         across transactions without hiding some from readers); rows stay in {default} (readable) and \
         {child} is not created. Raise default_move_batch to accept a longer write pause, or move the rows \
         yourself in a quiet period"
    )]
    TooManyRows {
        parent: QualifiedName,
        default: QualifiedName,
        child: QualifiedName,
        batch: u64,
    },
    #[error(
        "{default} holds {rows} rows of {child}'s range and is {bytes} on disk, more than \
         partitions.max_default_scan = {max_scan}: attaching {child} would scan it under ACCESS EXCLUSIVE while \
         readers of {parent} wait, and no CHECK can spare the scan while those rows are there. Move them \
         yourself in a quiet period, or raise max_default_scan to accept the wait; other periods are made"
    )]
    DefaultTooLarge {
        parent: QualifiedName,
        default: QualifiedName,
        child: QualifiedName,
        rows: u64,
        bytes: ByteSize,
        max_scan: ByteSize,
    },
    #[error(
        "{default} holds {rows} rows of {child}'s range, and publication(s) {} publish {default} under \
         its own name: the move would reach subscribers as DELETEs from {default} and INSERTs into \
         {child}, a table no subscriber has yet (rows lost, or replication stopped on the missing \
         relation). Nothing is moved and {child} is not created. Publish through the root: {} (subscribers \
         then need a table named {parent}), or move the rows yourself",
        .publications.join(", "),
        publish_via_root(.publications)
    )]
    PublishedUnderOwnName {
        parent: QualifiedName,
        default: QualifiedName,
        child: QualifiedName,
        rows: u64,
        publications: Vec<String>,
    },
    #[error(
        "{default} holds {rows} rows of {child}'s range and has FORCE ROW LEVEL SECURITY: the steward, \
         acting as its owner, would move only the rows its policies show. Nothing is moved. \
         ALTER TABLE {} NO FORCE ROW LEVEL SECURITY (the parent's policies still govern reads through it)",
        .default.quoted()
    )]
    ForcedRowSecurity {
        default: QualifiedName,
        child: QualifiedName,
        rows: u64,
    },
}

/// The statements that make `publications` publish through the root.
fn publish_via_root(publications: &[String]) -> String {
    publications
        .iter()
        .map(|n| {
            format!(
                "ALTER PUBLICATION {} SET (publish_via_partition_root = true)",
                crate::pg::quote_ident(n)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// How `child` is attached next to `default`, or the refusal with its fix.
pub fn decide(
    p: &DefaultProbe,
    cfg: &PartitionsConfig,
    parent: &QualifiedName,
    default: &QualifiedName,
    child: &QualifiedName,
) -> Result<AttachPath, Box<Refusal>> {
    let batch = u64::from(cfg.default_move_batch);
    let max_scan = cfg.max_default_scan.0;
    if p.rows == 0 {
        return Ok(if p.bytes > max_scan {
            AttachPath::ExclusionCheck
        } else {
            AttachPath::Plain
        });
    }
    let (parent, default, child) = (parent.clone(), default.clone(), child.clone());
    if p.rows > batch {
        return Err(Box::new(Refusal::TooManyRows {
            parent,
            default,
            child,
            batch,
        }));
    }
    let rows = p.rows;
    if p.bytes > max_scan {
        return Err(Box::new(Refusal::DefaultTooLarge {
            parent,
            default,
            child,
            rows,
            bytes: ByteSize(p.bytes),
            max_scan: cfg.max_default_scan,
        }));
    }
    if !p.own_name_publications.is_empty() {
        return Err(Box::new(Refusal::PublishedUnderOwnName {
            parent,
            default,
            child,
            rows,
            publications: p.own_name_publications.clone(),
        }));
    }
    if p.forced_rls {
        return Err(Box::new(Refusal::ForcedRowSecurity {
            default,
            child,
            rows,
        }));
    }
    Ok(AttachPath::Move { rows })
}

/// For `partitions plan`: what the pass would refuse among `actions` of
/// `state`, probing DEFAULT for each partition to create next to one
/// (nothing when there is no DEFAULT: no query).
pub async fn refusals(
    client: &Client,
    cfg: &PartitionsConfig,
    state: &super::model::TableState,
    tz: Tz,
    actions: &[super::model::Action],
) -> Vec<String> {
    let Some(d) = &state.default else {
        return Vec::new();
    };
    let mut out = Vec::new();
    // Read at the first move: the foreign keys that could make it refuse.
    let mut fks: Option<Vec<super::model::ReferencingFk>> = None;
    for a in actions {
        let super::model::Action::Create {
            partition, range, ..
        } = a
        else {
            continue;
        };
        match read(
            client,
            cfg,
            &d.name,
            &state.key_column,
            state.key_type,
            tz,
            *range,
        )
        .await
        {
            Ok(p) => match decide(&p, cfg, &state.table, &d.name, partition) {
                Err(why) => out.push(why.to_string()),
                // The pass's guards, read as it reads them before creating anything.
                Ok(AttachPath::Move { .. }) => {
                    let guards = async {
                        let fks = match fks.take() {
                            Some(f) => f,
                            None => super::guards::read_referencing_fks(client, state).await?,
                        };
                        let r = super::guards::plan_refusals(
                            client, state, &d.name, &fks, tz, partition, *range,
                        )
                        .await;
                        Ok::<_, tokio_postgres::Error>((fks, r?))
                    }
                    .await;
                    match guards {
                        Ok((read, why)) => {
                            fks = Some(read);
                            out.extend(why);
                        }
                        Err(e) => out.push(format!(
                            "cannot read what would stop moving rows of {partition}'s range out of {}: {}",
                            d.name,
                            crate::pg::server_message(&e)
                        )),
                    }
                }
                Ok(_) => {}
            },
            Err(e) => out.push(format!(
                "cannot read what {} holds of {partition}'s range: {}",
                d.name,
                crate::pg::server_message(&e)
            )),
        }
    }
    out
}

/// Publications that publish relation `oid`'s changes under its own name.
const OWN_NAME_PUBLICATIONS: &str = "SELECT p.pubname::text FROM pg_publication p \
     WHERE EXISTS (SELECT 1 FROM pg_get_publication_tables(p.pubname::text) t WHERE t.relid = $1::int8::oid) \
     ORDER BY 1";

/// Reads the probe: one bounded count (at most `default_move_batch + 1`
/// rows are read past, though a DEFAULT without an index on the key is
/// scanned whole when it holds fewer), DEFAULT's size and flags, and its
/// publications. Nothing is locked beyond ACCESS SHARE.
pub async fn read(
    client: &Client,
    cfg: &PartitionsConfig,
    default: &QualifiedName,
    key: &str,
    kt: KeyType,
    tz: Tz,
    range: Range,
) -> Result<DefaultProbe, tokio_postgres::Error> {
    let limit = u64::from(cfg.default_move_batch) + 1;
    let row = client
        .query_one(
            &ddl::sql_probe_default(default, key, kt, tz, range, limit),
            &[],
        )
        .await?;
    let oid: i64 = row.get(3);
    let pubs = client.query(OWN_NAME_PUBLICATIONS, &[&oid]).await?;
    Ok(DefaultProbe {
        rows: row.get::<_, i64>(0).max(0) as u64,
        bytes: row.get::<_, i64>(1).max(0) as u64,
        forced_rls: row.get(2),
        own_name_publications: pubs.iter().map(|r| r.get(0)).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> (QualifiedName, QualifiedName, QualifiedName) {
        (
            QualifiedName::new("public", "events"),
            QualifiedName::new("public", "events_default"),
            QualifiedName::new("public", "events_2025_05"),
        )
    }

    #[test]
    fn the_path_follows_rows_size_and_publications() {
        let cfg = PartitionsConfig {
            default_move_batch: 100,
            max_default_scan: ByteSize(1 << 20),
            ..PartitionsConfig::default()
        };
        let (p, d, c) = names();
        let small = DefaultProbe {
            bytes: 1000,
            ..DefaultProbe::default()
        };
        assert_eq!(decide(&small, &cfg, &p, &d, &c), Ok(AttachPath::Plain));
        let big = DefaultProbe {
            bytes: 1 << 30,
            ..DefaultProbe::default()
        };
        assert_eq!(
            decide(&big, &cfg, &p, &d, &c),
            Ok(AttachPath::ExclusionCheck)
        );
        let some = DefaultProbe {
            rows: 7,
            bytes: 1000,
            ..DefaultProbe::default()
        };
        assert_eq!(
            decide(&some, &cfg, &p, &d, &c),
            Ok(AttachPath::Move { rows: 7 })
        );
        let too_many = DefaultProbe {
            rows: 101,
            ..some.clone()
        };
        assert!(decide(&too_many, &cfg, &p, &d, &c)
            .unwrap_err()
            .to_string()
            .contains("more than 100"));
        let in_big = DefaultProbe {
            bytes: 1 << 30,
            ..some.clone()
        };
        assert!(decide(&in_big, &cfg, &p, &d, &c)
            .unwrap_err()
            .to_string()
            .contains("max_default_scan"));
        let published = DefaultProbe {
            own_name_publications: vec!["my pub".into()],
            ..some.clone()
        };
        let e = decide(&published, &cfg, &p, &d, &c)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ALTER PUBLICATION \"my pub\" SET (publish_via_partition_root = true)"),
            "{e}"
        );
        let forced = DefaultProbe {
            forced_rls: true,
            ..some
        };
        assert!(decide(&forced, &cfg, &p, &d, &c)
            .unwrap_err()
            .to_string()
            .contains("NO FORCE"));
    }
}
