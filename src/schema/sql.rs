//! The publication read of `published` (the migration's own statements are
//! beside the code in `mod.rs`).

pub const SERVER_VERSION_NUM: &str = "SELECT current_setting('server_version_num')::int";

/// Every publication that publishes row changes (a `publish = 'truncate'`
/// one cannot stop a subscriber on pgsteward's rows), and whether it covers
/// the `pgsteward` schema: all tables, the schema, or tables of it by name.
/// PostgreSQL 15 and later (`FOR TABLES IN SCHEMA`).
pub const PUBLICATIONS_15: &str = "SELECT p.pubname::text, p.puballtables, \
       EXISTS (SELECT 1 FROM pg_catalog.pg_publication_namespace pn \
               WHERE pn.pnpubid = p.oid AND pn.pnnspid = to_regnamespace('pgsteward')::oid), \
       EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel pr JOIN pg_catalog.pg_class c ON c.oid = pr.prrelid \
               WHERE pr.prpubid = p.oid AND c.relnamespace = to_regnamespace('pgsteward')::oid) \
     FROM pg_catalog.pg_publication p \
     WHERE p.pubinsert OR p.pubupdate OR p.pubdelete \
     ORDER BY p.pubname";

/// [`PUBLICATIONS_15`] for PostgreSQL 13 and 14, which have no
/// `pg_publication_namespace` (a query naming it fails there).
pub const PUBLICATIONS_13: &str = "SELECT p.pubname::text, p.puballtables, false, \
       EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel pr JOIN pg_catalog.pg_class c ON c.oid = pr.prrelid \
               WHERE pr.prpubid = p.oid AND c.relnamespace = to_regnamespace('pgsteward')::oid) \
     FROM pg_catalog.pg_publication p \
     WHERE p.pubinsert OR p.pubupdate OR p.pubdelete \
     ORDER BY p.pubname";
