//! The settings a new server made as a copy of the source gets.
//!
//! Floors: a hot standby must not run below its primary's values of a few
//! settings. PostgreSQL
//! refuses to start a standby whose `max_connections`, `max_worker_processes`,
//! `max_wal_senders`, `max_prepared_transactions` or
//! `max_locks_per_transaction` is lower than the primary's ("... is a lower
//! setting than on the primary server"). A new server made as a replica of
//! the source therefore takes the source's values for these, and a class
//! may raise them but never lower them.
//!
//! Files: the class's settings win over what the copy brought along.

use std::path::Path;

use super::sql::STANDBY_FLOOR_SETTINGS;
use super::ProviderError;

/// The source's values of [`FLOOR_NAMES`] (integers, as `pg_settings` shows them).
pub async fn source_floors(
    client: &tokio_postgres::Client,
) -> Result<Vec<(String, i64)>, tokio_postgres::Error> {
    let names: Vec<&str> = FLOOR_NAMES.to_vec();
    let rows = client.query(STANDBY_FLOOR_SETTINGS, &[&names]).await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let value: String = r.get(1);
            value.parse().ok().map(|v| (r.get::<_, String>(0), v))
        })
        .collect())
}

/// The settings whose floor is the primary's value.
pub const FLOOR_NAMES: [&str; 5] = [
    "max_connections",
    "max_worker_processes",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
];

/// A class setting below the source's value: the copy would not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BelowSource {
    pub name: String,
    pub class_value: i64,
    pub source_value: i64,
}

impl std::fmt::Display for BelowSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} = {} is below the source's {} (a standby may not run below its primary); raise it to at least {}",
            self.name, self.class_value, self.source_value, self.source_value
        )
    }
}

/// The new server's settings: each floor setting the class leaves out at the
/// source's value, then the class's own settings, in the class's order. A
/// class value below the source's is reported, not written.
pub fn with_source_floors(
    source: &[(String, i64)],
    class: &[(String, String)],
) -> (Vec<(String, String)>, Vec<BelowSource>) {
    let mut below = Vec::new();
    let mut out: Vec<(String, String)> = source
        .iter()
        .filter(|(name, _)| !class.iter().any(|(c, _)| c == name))
        .map(|(name, v)| (name.clone(), v.to_string()))
        .collect();
    for (name, value) in class {
        let floor = source.iter().find(|(s, _)| s == name).map(|(_, v)| *v);
        match (floor, value.trim().parse::<i64>()) {
            (Some(floor), Ok(v)) if v < floor => below.push(BelowSource {
                name: name.clone(),
                class_value: v,
                source_value: floor,
            }),
            _ => out.push((name.clone(), value.clone())),
        }
    }
    (out, below)
}

/// Settings of the source that must not reach the new server: the old
/// primary's fence and where-it-moved marker (upgrade/fence/, guard.rs).
const NOT_COPIED: [&str; 2] = ["default_transaction_read_only", "pgsteward.moved_to"];

/// The copy's own files after `pg_basebackup`: postgresql.auto.conf is read
/// after postgresql.conf (and so after the class's pgsteward.conf), so every
/// class setting (and [`NOT_COPIED`]) is taken out of it; the rest, the
/// `primary_conninfo` that `-R` wrote included, stays. A fence block copied
/// into pg_hba.conf goes too.
pub fn class_wins(dir: &Path, settings: &[(String, String)]) -> Result<(), ProviderError> {
    let err = |p: &Path, e: std::io::Error| ProviderError::Api {
        op: "class settings",
        detail: format!("{}: {e}", p.display()),
    };
    let auto = dir.join("postgresql.auto.conf");
    if let Ok(text) = std::fs::read_to_string(&auto) {
        let drop: Vec<String> = settings
            .iter()
            .map(|(k, _)| k.to_ascii_lowercase())
            .chain(NOT_COPIED.iter().map(|k| k.to_string()))
            .collect();
        let kept = strip_settings(&text, &drop);
        if kept != text {
            // In place: owner and mode stay the server user's.
            std::fs::write(&auto, kept).map_err(|e| err(&auto, e))?;
        }
    }
    let hba = dir.join("pg_hba.conf");
    if let Ok(text) = std::fs::read_to_string(&hba) {
        let clean = super::fence::without_block(&text);
        if clean != text {
            std::fs::write(&hba, clean).map_err(|e| err(&hba, e))?;
        }
    }
    Ok(())
}

/// `text` (postgresql.auto.conf) without the lines that set one of `names`.
pub fn strip_settings(text: &str, names: &[String]) -> String {
    text.split_inclusive('\n')
        .filter(|line| {
            let key = line
                .split(['=', ' ', '\t'])
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            !names.contains(&key)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn source_values_fill_what_the_class_leaves_out() {
        let source = vec![
            ("max_wal_senders".to_string(), 20),
            ("max_connections".to_string(), 100),
        ];
        let (out, below) = with_source_floors(
            &source,
            &s(&[("shared_buffers", "512MB"), ("max_connections", "200")]),
        );
        assert!(below.is_empty());
        assert_eq!(
            out,
            s(&[
                ("max_wal_senders", "20"),
                ("shared_buffers", "512MB"),
                ("max_connections", "200")
            ])
        );
    }

    #[test]
    fn a_class_below_the_source_is_reported_not_written() {
        let source = vec![("max_connections".to_string(), 300)];
        let (out, below) = with_source_floors(&source, &s(&[("max_connections", "200")]));
        assert!(out.is_empty());
        assert_eq!(below.len(), 1);
        assert!(
            below[0].to_string().contains("at least 300"),
            "{}",
            below[0]
        );
    }
}
