//! The grants docs/privileges.md tells operators to run, as data.
//!
//! The page's fenced ```` ```sql privileges:NAME ```` blocks are the tested
//! contract: the test harness and `pgsteward demo` both make their steward
//! by running exactly these blocks, so neither can grant more than an
//! operator would and the page cannot drift from what pgsteward needs. The
//! page is compiled in, so the binary carries the same text as the docs.

use crate::pg::{quote_ident, quote_literal};

/// docs/privileges.md as this binary was built with it.
pub const PRIVILEGES_MD: &str = include_str!("../../docs/privileges.md");

/// Every feature, once per cluster.
pub const CLUSTER: &str = "privileges:cluster";
/// In each database holding managed tables.
pub const DATABASE: &str = "privileges:database";
/// `local` provider upgrades, once per cluster (run in `postgres`).
pub const UPGRADE_LOCAL_CLUSTER: &str = "privileges:upgrade-local:cluster";
/// `local` provider upgrades, in the database `database.primary` names.
pub const UPGRADE_LOCAL_DATABASE: &str = "privileges:upgrade-local:database";
/// `rds` provider upgrades, once per instance.
pub const UPGRADE_RDS_CLUSTER: &str = "privileges:upgrade-rds:cluster";

/// The role name and database name the page's examples use; a caller's own
/// database replaces the example one.
const EXAMPLE_DATABASE: &str = "ON DATABASE app ";
const EXAMPLE_PASSWORD: &str = "PASSWORD '...'";

/// The named SQL blocks of `text` (a Markdown page), in page order.
pub fn parse_blocks(text: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        match current.as_mut() {
            None => {
                if let Some(name) = line.strip_prefix("```sql ") {
                    current = Some((name.trim().to_string(), String::new()));
                }
            }
            Some((_, body)) => {
                if line.starts_with("```") {
                    blocks.extend(current.take());
                } else {
                    body.push_str(line);
                    body.push('\n');
                }
            }
        }
    }
    blocks
}

/// The statements of block `name` of `text` for a server of `major`, one per
/// line: comments dropped, a line marked `-- PG N+` dropped below N, the
/// example password replaced by `password` and the example database by
/// `dbname` (both quoted). `None` when the page has no such block.
pub fn block_sql(
    text: &str,
    name: &str,
    major: u32,
    password: &str,
    dbname: &str,
) -> Option<String> {
    let body = parse_blocks(text)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, b)| b)?;
    let mut out = String::new();
    for line in body.lines() {
        let (code, comment) = match line.find("--") {
            Some(i) => (&line[..i], &line[i + 2..]),
            None => (line, ""),
        };
        let minimum = comment
            .trim()
            .strip_prefix("PG ")
            .and_then(|r| r.split('+').next())
            .and_then(|n| n.trim().parse::<u32>().ok());
        if minimum.is_some_and(|min| major < min) {
            continue;
        }
        let code = code.trim();
        if code.is_empty() {
            continue;
        }
        let code = code
            .replace(
                EXAMPLE_PASSWORD,
                &format!("PASSWORD {}", quote_literal(password)),
            )
            .replace(
                EXAMPLE_DATABASE,
                &format!("ON DATABASE {} ", quote_ident(dbname)),
            );
        out.push_str(&code);
        out.push('\n');
    }
    Some(out)
}

/// [`block_sql`] of the page compiled in.
pub fn documented_sql(name: &str, major: u32, password: &str, dbname: &str) -> Option<String> {
    block_sql(PRIVILEGES_MD, name, major, password, dbname)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_block_is_on_the_page() {
        for name in [
            CLUSTER,
            DATABASE,
            UPGRADE_LOCAL_CLUSTER,
            UPGRADE_LOCAL_DATABASE,
            UPGRADE_RDS_CLUSTER,
        ] {
            let sql = documented_sql(name, 18, "pw", "app");
            assert!(sql.is_some_and(|s| !s.is_empty()), "{name}");
        }
        assert!(documented_sql("privileges:nothing", 18, "pw", "app").is_none());
    }

    #[test]
    fn versions_passwords_and_databases() {
        let sql = documented_sql(UPGRADE_LOCAL_CLUSTER, 14, "pw", "x").unwrap_or_default();
        assert!(
            !sql.contains("ALTER SYSTEM"),
            "PG 15+ lines skipped on 14: {sql}"
        );
        let sql = documented_sql(UPGRADE_LOCAL_CLUSTER, 15, "pw", "x").unwrap_or_default();
        assert!(sql.contains("ALTER SYSTEM ON PARAMETER"), "{sql}");
        let sql = documented_sql(DATABASE, 15, "pw", "my db").unwrap_or_default();
        assert!(sql.contains("ON DATABASE \"my db\" TO steward"), "{sql}");
        let sql = documented_sql(CLUSTER, 15, "it's", "x").unwrap_or_default();
        assert!(sql.contains("PASSWORD 'it''s'"), "{sql}");
        assert!(!sql.contains("--"), "comments dropped: {sql}");
    }
}
