//! The privilege queries, one named constant each. Every one reads as the
//! session's user (`current_user`) and needs nothing beyond PUBLIC's access
//! to the catalogs; a missing object answers NULL or no row, never an error.

/// The user the checks are about, and the server's version.
pub const WHO: &str = "SELECT current_user::text, current_setting('server_version_num')::int";

/// Owners of a table (its quoted name as $1) and of each of its partitions,
/// and whether the user has the owner's privileges (USAGE: the owner itself,
/// a superuser, or an inheriting member). No row when the table does not exist.
pub const TABLE_OWNERS: &str = "\
WITH t AS (SELECT to_regclass($1) AS oid)
SELECT DISTINCT c.relowner::regrole::text, pg_has_role(current_user, c.relowner, 'USAGE')
FROM pg_class c, t
WHERE c.oid = t.oid
   OR c.oid IN (SELECT i.inhrelid FROM pg_inherits i WHERE i.inhparent = t.oid)
ORDER BY 1";

/// [`TABLE_OWNERS`] on PostgreSQL 16+: also SET on the owner, which giving a
/// new partition the parent's owner needs (a grant WITH SET FALSE lacks it).
pub const TABLE_OWNERS_16: &str = "\
WITH t AS (SELECT to_regclass($1) AS oid)
SELECT DISTINCT c.relowner::regrole::text,
       pg_has_role(current_user, c.relowner, 'USAGE') AND pg_has_role(current_user, c.relowner, 'SET')
FROM pg_class c, t
WHERE c.oid = t.oid
   OR c.oid IN (SELECT i.inhrelid FROM pg_inherits i WHERE i.inhparent = t.oid)
ORDER BY 1";

/// USAGE and CREATE on a schema, separately (a privilege list would answer "any").
/// No row when the schema does not exist.
pub const SCHEMA: &str = "\
SELECT has_schema_privilege(current_user, n.oid, 'USAGE'),
       has_schema_privilege(current_user, n.oid, 'CREATE')
FROM pg_namespace n WHERE n.nspname = $1";

/// Membership with the role's privileges; NULL when the role does not exist.
pub const ROLE_MEMBER: &str = "\
SELECT CASE WHEN to_regrole(quote_ident($1)) IS NULL THEN NULL
            ELSE pg_has_role(current_user, to_regrole(quote_ident($1)), 'USAGE') END";

/// REPLICATION, which a superuser has implicitly.
pub const REPLICATION: &str =
    "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user";

pub const SUPERUSER: &str = "SELECT rolsuper FROM pg_roles WHERE rolname = current_user";

/// EXECUTE on a function given by signature; NULL when there is no such function.
pub const FUNCTION_EXECUTE: &str = "\
SELECT CASE WHEN to_regprocedure($1) IS NULL THEN NULL
            ELSE has_function_privilege(current_user, to_regprocedure($1), 'EXECUTE') END";

/// ALTER SYSTEM on a parameter (PostgreSQL 15+); NULL for an unknown parameter.
pub const ALTER_SYSTEM: &str = "\
SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM pg_settings WHERE name = $1) THEN NULL
            ELSE has_parameter_privilege(current_user, $1, 'ALTER SYSTEM') END";

/// Acting as a publication's owner; NULL when there is no such publication.
pub const PUBLICATION_OWNER: &str = "\
SELECT (SELECT pg_has_role(current_user, p.pubowner, 'USAGE')
        FROM pg_publication p WHERE p.pubname = $1)";
