//! The steward's privileges an upgrade needs (docs/privileges.md), read
//! from the primary (`observe`) and judged here, purely: one check per
//! privilege, and the exact statement to run for each one missing, so
//! `upgrade plan` fails before `upgrade start` would.

// Role names in the GRANTs printed: the rule every fix pgsteward prints follows.
use crate::privileges::ident;
use crate::provider::{Check, FenceMethod};

/// What was read (`sql::READ_PRIVILEGES` and the queries after it).
#[derive(Debug, Clone)]
pub struct PrivilegeFacts {
    pub role: String,
    pub superuser: bool,
    pub replication: bool,
    pub pg_monitor: bool,
    pub pg_signal_backend: bool,
    pub reload_conf: bool,
    pub promote: bool,
    pub server_version_num: i32,
    /// 15+: ALTER SYSTEM on default_transaction_read_only, primary_conninfo, pgsteward.moved_to.
    pub alter_system: Option<[bool; 3]>,
    /// `Err` when the guard database could not be reached (why).
    pub guard: Result<GuardPrivileges, GuardUnreachable>,
    /// RDS: (database, owner) the steward cannot fence.
    pub unfenceable: Vec<(String, String)>,
}

/// Why the guard database could not be read (its connection error).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct GuardUnreachable(pub String);

#[derive(Debug, Clone, Default)]
pub struct GuardPrivileges {
    pub create: bool,
    pub usable: bool,
    pub reload_conf: bool,
}

fn check(name: &str, ok: bool, fix: String) -> Check {
    Check::new(
        format!("privilege: {name}"),
        ok,
        if ok { "granted".to_string() } else { fix },
    )
}

/// One check per privilege `method`'s upgrade needs; a failed one names the
/// statement that grants it (run by a superuser).
pub fn judge(f: &PrivilegeFacts, method: FenceMethod) -> Vec<Check> {
    let r = ident(&f.role);
    let all = f.superuser;
    let mut checks = vec![
        check(
            "pg_monitor",
            all || f.pg_monitor,
            format!("GRANT pg_monitor TO {r};"),
        ),
        check(
            "pg_signal_backend (ends application sessions at the fence)",
            all || f.pg_signal_backend,
            format!("GRANT pg_signal_backend TO {r};"),
        ),
    ];
    checks.push(match &f.guard {
        Ok(g) => check(
            "the upgrade guard in database postgres",
            all || g.create || g.usable,
            format!("in database postgres: GRANT CREATE ON DATABASE postgres TO {r};"),
        ),
        Err(why) => Check::new(
            "privilege: the upgrade guard in database postgres",
            false,
            format!(
                "cannot reach database postgres ({why}); every runner takes the guard there: \
                 GRANT CONNECT ON DATABASE postgres TO {r}; (or CREATE DATABASE postgres)"
            ),
        ),
    });
    if method == FenceMethod::AlterDatabase {
        checks.push(Check::new(
            "privilege: every database fenceable",
            f.unfenceable.is_empty(),
            if f.unfenceable.is_empty() {
                "the steward may set default_transaction_read_only on every database".to_string()
            } else {
                f.unfenceable
                    .iter()
                    .map(|(db, owner)| {
                        format!("{db} (owner {owner}): GRANT {} TO {r};", ident(owner))
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            },
        ));
        return checks;
    }
    checks.push(check(
        "REPLICATION (pg_basebackup)",
        all || f.replication,
        format!("ALTER ROLE {r} REPLICATION; (and a `replication` line for it in pg_hba.conf)"),
    ));
    checks.push(check(
        "pg_reload_conf()",
        all || f.reload_conf,
        format!("GRANT EXECUTE ON FUNCTION pg_reload_conf() TO {r};"),
    ));
    checks.push(check(
        "pg_promote()",
        all || f.promote,
        format!("GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO {r};"),
    ));
    if let Ok(g) = &f.guard {
        checks.push(check(
            "pg_reload_conf() in database postgres",
            all || g.reload_conf,
            format!("in database postgres: GRANT EXECUTE ON FUNCTION pg_reload_conf() TO {r};"),
        ));
    }
    match f.alter_system {
        _ if all => {}
        None => checks.push(Check::new(
            "privilege: ALTER SYSTEM",
            false,
            format!(
                "server_version_num {}: before PostgreSQL 15 only a superuser may ALTER SYSTEM, which the local fence needs",
                f.server_version_num
            ),
        )),
        Some(granted) => {
            for (ok, param) in granted.iter().zip([
                "default_transaction_read_only",
                "primary_conninfo",
                "pgsteward.moved_to",
            ]) {
                checks.push(check(
                    &format!("ALTER SYSTEM on {param}"),
                    *ok,
                    format!("GRANT ALTER SYSTEM ON PARAMETER {param} TO {r};"),
                ));
            }
        }
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted() -> PrivilegeFacts {
        PrivilegeFacts {
            role: "steward".into(),
            superuser: false,
            replication: true,
            pg_monitor: true,
            pg_signal_backend: true,
            reload_conf: true,
            promote: true,
            server_version_num: 150004,
            alter_system: Some([true; 3]),
            guard: Ok(GuardPrivileges {
                create: true,
                usable: false,
                reload_conf: true,
            }),
            unfenceable: Vec::new(),
        }
    }

    fn failed(checks: &[Check]) -> Vec<String> {
        checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.detail.clone())
            .collect()
    }

    #[test]
    fn the_documented_grants_pass() {
        assert!(failed(&judge(&granted(), FenceMethod::AlterSystem)).is_empty());
        assert!(failed(&judge(&granted(), FenceMethod::AlterDatabase)).is_empty());
    }

    /// A change to the granted facts.
    type Change = Box<dyn Fn(&mut PrivilegeFacts)>;

    #[test]
    fn each_missing_privilege_names_its_grant() {
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|f| f.pg_monitor = false),
                "GRANT pg_monitor TO steward;",
            ),
            (
                Box::new(|f| f.pg_signal_backend = false),
                "GRANT pg_signal_backend TO steward;",
            ),
            (
                Box::new(|f| f.replication = false),
                "ALTER ROLE steward REPLICATION;",
            ),
            (
                Box::new(|f| f.reload_conf = false),
                "GRANT EXECUTE ON FUNCTION pg_reload_conf() TO steward;",
            ),
            (
                Box::new(|f| f.promote = false),
                "GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO steward;",
            ),
            (
                Box::new(|f| f.alter_system = Some([true, false, true])),
                "GRANT ALTER SYSTEM ON PARAMETER primary_conninfo TO steward;",
            ),
            (
                Box::new(|f| f.alter_system = Some([true, true, false])),
                "GRANT ALTER SYSTEM ON PARAMETER pgsteward.moved_to TO steward;",
            ),
            (
                Box::new(|f| {
                    f.guard = Ok(GuardPrivileges {
                        create: false,
                        usable: false,
                        reload_conf: true,
                    })
                }),
                "GRANT CREATE ON DATABASE postgres TO steward;",
            ),
            (Box::new(|f| f.alter_system = None), "before PostgreSQL 15"),
        ];
        for (change, grant) in cases {
            let mut f = granted();
            change(&mut f);
            let fails = failed(&judge(&f, FenceMethod::AlterSystem));
            assert_eq!(fails.len(), 1, "{grant}: {fails:?}");
            assert!(fails[0].contains(grant), "{grant}: {fails:?}");
        }
        // A guard schema that exists and is usable needs no CREATE.
        let mut f = granted();
        f.guard = Ok(GuardPrivileges {
            create: false,
            usable: true,
            reload_conf: true,
        });
        assert!(failed(&judge(&f, FenceMethod::AlterSystem)).is_empty());
        // A superuser passes everything; odd role names are quoted.
        let mut f = PrivilegeFacts {
            role: "steward".into(),
            superuser: true,
            replication: false,
            pg_monitor: false,
            pg_signal_backend: false,
            reload_conf: false,
            promote: false,
            server_version_num: 140000,
            alter_system: None,
            guard: Ok(GuardPrivileges::default()),
            unfenceable: Vec::new(),
        };
        assert!(failed(&judge(&f, FenceMethod::AlterSystem)).is_empty());
        f.superuser = false;
        f.role = "Odd Role".into();
        assert!(failed(&judge(&f, FenceMethod::AlterSystem))
            .iter()
            .any(|d| d.contains("TO \"Odd Role\";")));
    }

    #[test]
    fn rds_names_the_databases_it_cannot_fence() {
        let mut f = granted();
        f.unfenceable = vec![("postgres".into(), "rdsadmin".into())];
        let fails = failed(&judge(&f, FenceMethod::AlterDatabase));
        assert_eq!(
            fails,
            vec!["postgres (owner rdsadmin): GRANT rdsadmin TO steward;"]
        );
    }
}
