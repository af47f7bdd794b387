//! The roles of every harness server, as an operator following our docs makes
//! them: a least-privilege `steward` granted exactly the SQL blocks of
//! docs/privileges.md (read from the file when the tests run, so the doc and
//! the tests cannot drift), an `app_owner` that owns the application's tables
//! (a migration role), and an `app` role that reads and writes them. The
//! `postgres` superuser only sets fixtures up; pgsteward never logs in as it.

use super::*;

/// The superuser: test SETUP only (`cluster.url`, `cluster.psql`).
pub const SUPER_USER: &str = "postgres";
/// Characters that need encoding or escaping in every place a password goes
/// (URL, key/value, password file, pgbouncer's userlist).
pub const SUPER_PASSWORD: &str = "super p@ss:w/rd'1";
/// The steward: exactly the grants of docs/privileges.md.
pub const STEWARD_USER: &str = "steward";
pub const STEWARD_PASSWORD: &str = "steward p@ss:w/rd'4";
/// Owns the application's tables, as a migration role would.
pub const OWNER_USER: &str = "app_owner";
pub const OWNER_PASSWORD: &str = "owner p@ss:5";

/// Which blocks of docs/privileges.md a server's steward gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grants {
    /// Partition maintenance, lag, capacity, conversion: `privileges:cluster`
    /// and `privileges:database`.
    Base,
    /// Base plus the `local` provider's upgrade blocks.
    UpgradeLocal,
    /// Base plus the `rds` provider's upgrade block, on a local stand-in for
    /// an RDS instance (see [`make_roles`]).
    UpgradeRds,
}

impl Grants {
    fn cluster_blocks(self) -> &'static [&'static str] {
        match self {
            Grants::Base => &["privileges:cluster"],
            Grants::UpgradeLocal => &["privileges:cluster", "privileges:upgrade-local:cluster"],
            Grants::UpgradeRds => &["privileges:cluster", "privileges:upgrade-rds:cluster"],
        }
    }

    fn database_blocks(self) -> &'static [&'static str] {
        match self {
            Grants::Base => &["privileges:database"],
            Grants::UpgradeLocal => &["privileges:database", "privileges:upgrade-local:database"],
            Grants::UpgradeRds => &["privileges:database"],
        }
    }
}

/// The statements of block `name` of docs/privileges.md for a server of
/// `major`, for database `dbname`, with the harness's steward password: the
/// same reading of the page `pgsteward demo` makes (the page is compiled into
/// the library).
fn block_sql(name: &str, major: u32, dbname: &str) -> String {
    pgsteward::privileges::documented::documented_sql(name, major, STEWARD_PASSWORD, dbname)
        .unwrap_or_else(|| panic!("test harness: docs/privileges.md has no ```sql {name} block"))
}

/// Makes the roles on a new primary and grants the cluster-wide blocks.
/// Replicas made from it later have the same roles.
pub fn make_roles(cluster: &Cluster, grants: Grants) {
    let major = server_major();
    let mut sql = String::new();
    for (user, password, attrs) in [
        (OWNER_USER, OWNER_PASSWORD, "LOGIN NOSUPERUSER"),
        (APP_USER, APP_PASSWORD, "LOGIN NOSUPERUSER"),
    ] {
        sql.push_str(&format!(
            "SELECT 'CREATE ROLE {user} {attrs} PASSWORD ' || {} WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{user}') \\gexec\n",
            pgsteward::pg::quote_literal(&pgsteward::pg::quote_literal(password)),
        ));
    }
    must(cluster.psql_secret("postgres", &sql));
    if grants == Grants::UpgradeRds {
        // A local server standing in for an RDS instance has what RDS has:
        // the `rds_superuser` role (no superuser; it reads every session and
        // may end any of them).
        must(cluster.psql(
            "postgres",
            "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rds_superuser') \
             THEN CREATE ROLE rds_superuser NOLOGIN; END IF; END$$; \
             GRANT pg_monitor, pg_signal_backend TO rds_superuser",
        ));
    }
    let exists = must(cluster.psql(
        "postgres",
        &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{STEWARD_USER}'"),
    ));
    let mut sql = String::new();
    for block in grants.cluster_blocks() {
        let text = block_sql(block, major, "postgres");
        for stmt in text.lines() {
            // A cluster that has the role already (a second grant set) keeps it.
            if exists.trim() != "0" && stmt.starts_with("CREATE ROLE") {
                continue;
            }
            sql.push_str(stmt);
            sql.push('\n');
        }
    }
    must(cluster.psql_secret("postgres", &sql));
    if grants == Grants::UpgradeRds {
        // On RDS the master user (the steward here) owns the database
        // `postgres` that comes with the instance.
        must(cluster.psql(
            "postgres",
            &format!("ALTER DATABASE postgres OWNER TO {STEWARD_USER}"),
        ));
    }
}

/// Gives database `dbname` of `cluster` to `app_owner` and grants the
/// steward the per-database blocks of `grants` in it.
pub fn prepare_db_with(cluster: &Cluster, dbname: &str, grants: Grants) {
    let major = server_major();
    must(cluster.psql(
        "postgres",
        &format!(
            "ALTER DATABASE {} OWNER TO {OWNER_USER}",
            pgsteward::pg::quote_ident(dbname)
        ),
    ));
    let mut sql = String::new();
    // Before 15 the public schema is the bootstrap superuser's; an operator
    // hands it to the application's owner as 15 does for new databases.
    if major < 15 {
        sql.push_str(&format!("ALTER SCHEMA public OWNER TO {OWNER_USER};\n"));
    }
    for block in grants.database_blocks() {
        sql.push_str(&block_sql(block, major, dbname));
    }
    must(cluster.psql(dbname, &sql));
}

/// [`prepare_db_with`] the base grants.
pub fn prepare_db(cluster: &Cluster, dbname: &str) {
    prepare_db_with(cluster, dbname, Grants::Base)
}

/// The steward's URL for `dbname` on `cluster`, password included.
pub fn steward_url(cluster: &Cluster, dbname: &str) -> String {
    with_password(&cluster.url(dbname), STEWARD_USER, STEWARD_PASSWORD)
}

/// The application owner's URL for `dbname` on `cluster`, password included.
pub fn owner_url(cluster: &Cluster, dbname: &str) -> String {
    with_password(&cluster.url(dbname), OWNER_USER, OWNER_PASSWORD)
}

#[test]
fn privilege_blocks_are_read_from_the_doc() {
    let sql = block_sql("privileges:upgrade-local:database", 14, "my db");
    assert!(
        !sql.contains("ALTER SYSTEM"),
        "PG 15+ lines skipped on 14: {sql}"
    );
    assert!(sql.contains("pg_promote"), "{sql}");
    let sql = block_sql("privileges:database", 15, "my db");
    assert!(sql.contains("ON DATABASE \"my db\" TO steward"), "{sql}");
    let sql = block_sql("privileges:cluster", 15, "x");
    assert!(
        sql.contains("GRANT app_owner TO steward") && !sql.contains("'...'"),
        "{sql}"
    );
}

/// Makes database `dbname` on `cluster` as an operator would for the
/// application: owned by `app_owner`, the steward's per-database grants in it.
pub fn create_app_db(cluster: &Cluster, dbname: &str) {
    must(cluster.psql(
        "postgres",
        &format!("CREATE DATABASE {}", pgsteward::pg::quote_ident(dbname)),
    ));
    prepare_db(cluster, dbname);
}

/// Runs `sql` in `dbname` as the application's owner (over the superuser's
/// socket, then `SET ROLE`): the objects it makes are owned by `app_owner`.
pub fn owner_psql(cluster: &Cluster, dbname: &str, sql: &str) -> String {
    must(cluster.psql(dbname, &format!("SET ROLE {OWNER_USER};\n{sql}")))
}

/// `url` (any harness URL) logging in as the steward instead.
pub fn as_steward(url: &str) -> String {
    with_password(url, STEWARD_USER, STEWARD_PASSWORD)
}

/// `url` (any harness URL) logging in as the application's owner instead.
pub fn as_owner(url: &str) -> String {
    with_password(url, OWNER_USER, OWNER_PASSWORD)
}
