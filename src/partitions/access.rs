//! Privileges and row-level security follow the parent, always: what each
//! partition's owner, grants, row-level security and replica identity must be
//! given the parent's now, and the changes that make them so. Pure; the
//! catalog query (`sql/partitions_managed_tables.sql`) describes only the
//! partitions that differ, so a table without drift costs nothing here.
//!
//! What the parent implies:
//! - owner: the parent's owner;
//! - privileges: the parent's grants when it has no row-level security (for
//!   applications that address partitions directly: the same rows are
//!   reachable through the parent), none but the owner's when it has (as a
//!   `PARTITION OF` partition: direct access is the owner's);
//! - row-level security enabled exactly when the parent's is, with no policy
//!   of the partition's own, so a role reaches through a partition nothing
//!   the parent's policies deny it, even after a later GRANT on it; forced
//!   when the parent's is, except on DEFAULT: the steward moves rows out of
//!   DEFAULT as the owner and must see all of them (FORCE is no boundary for
//!   the owner, who may lift it at will);
//! - replica identity: the parent's `FULL`/`NOTHING`, or `USING INDEX` of the
//!   partition's index attached to the parent's identity index; left alone
//!   when the parent's is `DEFAULT`.
//!
//! Repaired by a pass (`RepairAccess`): anything that narrows access or
//! restores parity with the parent. Reported, never changed (a problem, exit
//! 1): policies of a partition's own under a parent with row-level security
//! (dropping an operator's policy is not ours to do), a partition the steward
//! cannot act for (owned by a role it is not a member of), and an identity
//! index that has no counterpart on the partition.

use std::collections::BTreeSet;

use super::model::{AccessRepair, Grant, PartitionAccess, TableState};
use crate::pg::{quote_ident, QualifiedName};

/// A privilege as compared: owner entries aside, the grantor ignored.
type Entry = (String, String, bool);

fn entries(grants: &[Grant], owner: &str) -> BTreeSet<Entry> {
    grants
        .iter()
        .filter(|g| g.grantee != owner)
        .map(|g| (g.grantee.clone(), g.privilege.clone(), g.grantable))
        .collect()
}

/// Drift a pass must not repair by itself: a problem for the operator
/// (exit 1, the access-drift metric and alert), each with its fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessProblem {
    #[error(
        "{name} is owned by {owner} (the parent by {parent_owner}), a role pgsteward does not act for: its privileges and \
         row-level security cannot follow the parent's. Run ALTER TABLE {} OWNER TO {}, or GRANT {} TO the steward",
        .name.quoted(), crate::pg::quote_ident(.parent_owner), crate::pg::quote_ident(.owner)
    )]
    ForeignOwner {
        name: QualifiedName,
        owner: String,
        parent_owner: String,
    },
    #[error(
        "{name} has {policies} row-level security polic(ies) of its own: a role may reach through it what the parent's \
         policies deny. Drop them (DROP POLICY ... ON {}): the parent's policies govern its rows",
        .name.quoted()
    )]
    OwnPolicies { name: QualifiedName, policies: i32 },
    #[error(
        "{name} has no index attached to the parent's replica identity index, so it cannot use it: \
         UPDATE and DELETE of its rows fail on a publication. Build it (`partitions apply` repairs \
         declared indexes) or set its REPLICA IDENTITY by hand"
    )]
    NoIdentityIndex { name: QualifiedName },
}

/// The repairs of one partition, or why it cannot be repaired automatically.
pub fn repairs(
    state: &TableState,
    p: &PartitionAccess,
) -> Result<Vec<AccessRepair>, AccessProblem> {
    let name = QualifiedName::new(p.schema.clone(), p.name.clone());
    if !p.manageable {
        return Err(AccessProblem::ForeignOwner {
            name,
            owner: p.owner.clone(),
            parent_owner: state.owner.clone(),
        });
    }
    if state.row_security && p.policies > 0 {
        return Err(AccessProblem::OwnPolicies {
            name,
            policies: p.policies,
        });
    }
    let mut out = Vec::new();
    if p.owner != state.owner {
        out.push(AccessRepair::Owner {
            to: state.owner.clone(),
        });
    }
    let want: BTreeSet<Entry> = if state.row_security {
        BTreeSet::new()
    } else {
        entries(&state.grants, &state.owner)
    };
    let have = entries(&p.grants, &p.owner);
    for (grantee, privilege, grantable) in have.difference(&want) {
        // Granted without the option on the parent: only the option goes.
        let option_only = *grantable && want.contains(&(grantee.clone(), privilege.clone(), false));
        out.push(AccessRepair::Revoke {
            grantee: grantee.clone(),
            privilege: privilege.clone(),
            grant_option_only: option_only,
        });
    }
    for (grantee, privilege, grantable) in want.difference(&have) {
        // Held without the option, wanted with it: the GRANT adds the option.
        out.push(AccessRepair::Grant {
            grantee: grantee.clone(),
            privilege: privilege.clone(),
            grantable: *grantable,
        });
    }
    if p.row_security != state.row_security {
        out.push(AccessRepair::RowSecurity {
            enable: state.row_security,
        });
    }
    let want_force = state.force_row_security && !p.is_default;
    let force_ok = p.force_row_security == want_force || (p.is_default && !p.force_row_security);
    if !force_ok {
        out.push(AccessRepair::ForceRowSecurity { force: want_force });
    }
    match state.replica_identity.as_str() {
        "f" if p.replica_identity != "f" => out.push(AccessRepair::ReplicaIdentity {
            what: "FULL".into(),
        }),
        "n" if p.replica_identity != "n" => out.push(AccessRepair::ReplicaIdentity {
            what: "NOTHING".into(),
        }),
        "i" => match &p.identity_index {
            Some(ix) => {
                // The catalog lists the partition when its identity is not that index.
                out.push(AccessRepair::ReplicaIdentity {
                    what: format!("USING INDEX {ix}"),
                })
            }
            None => return Err(AccessProblem::NoIdentityIndex { name }),
        },
        _ => {}
    }
    Ok(out)
}

/// Every partition's repairs, and the problems left to the operator.
pub fn plan(state: &TableState) -> (Vec<(QualifiedName, Vec<AccessRepair>)>, Vec<String>) {
    let mut actions = Vec::new();
    let mut problems = Vec::new();
    for p in &state.access_drift {
        match repairs(state, p) {
            Ok(r) if r.is_empty() => {}
            Ok(r) => actions.push((QualifiedName::new(p.schema.clone(), p.name.clone()), r)),
            Err(why) => problems.push(why.to_string()),
        }
    }
    (actions, problems)
}

/// The statements of one partition's repairs, in order: the owner first
/// (then the steward acts as that owner), then privileges, row-level
/// security, replica identity. Run in one transaction: other sessions see
/// the partition's access before or after, never in between.
pub fn sql(partition: &QualifiedName, repairs: &[AccessRepair]) -> Vec<String> {
    let t = partition.quoted();
    repairs
        .iter()
        .map(|r| match r {
            AccessRepair::Owner { to } => {
                format!("ALTER TABLE {t} OWNER TO {}", crate::pg::quote_ident(to))
            }
            AccessRepair::Revoke {
                grantee: role,
                privilege,
                grant_option_only,
            } => format!(
                "REVOKE {}{} ON TABLE {t} FROM {} CASCADE",
                if *grant_option_only {
                    "GRANT OPTION FOR "
                } else {
                    ""
                },
                privilege_keyword(privilege),
                grantee(role)
            ),
            AccessRepair::Grant {
                grantee,
                privilege,
                grantable,
            } => sql_grant(
                partition,
                &Grant {
                    grantee: grantee.clone(),
                    privilege: privilege.clone(),
                    grantable: *grantable,
                },
            ),
            AccessRepair::RowSecurity { enable } => format!(
                "ALTER TABLE {t} {} ROW LEVEL SECURITY",
                if *enable { "ENABLE" } else { "DISABLE" }
            ),
            AccessRepair::ForceRowSecurity { force } => format!(
                "ALTER TABLE {t} {}FORCE ROW LEVEL SECURITY",
                if *force { "" } else { "NO " }
            ),
            AccessRepair::ReplicaIdentity { what } => {
                format!("ALTER TABLE {t} REPLICA IDENTITY {what}")
            }
        })
        .collect()
}

/// A repair in words, for reports.
pub fn describe(r: &AccessRepair) -> String {
    match r {
        AccessRepair::Owner { to } => format!("owner becomes {to}"),
        AccessRepair::Revoke {
            grantee,
            privilege,
            grant_option_only: true,
        } => format!("{grantee} loses the grant option of {privilege}"),
        AccessRepair::Revoke {
            grantee, privilege, ..
        } => format!("{grantee} loses {privilege} (the parent does not grant it)"),
        AccessRepair::Grant {
            grantee, privilege, ..
        } => format!("{grantee} gets {privilege}, as on the parent"),
        AccessRepair::RowSecurity { enable: true } => {
            "row-level security enabled, as on the parent".into()
        }
        AccessRepair::RowSecurity { enable: false } => {
            "row-level security disabled, as on the parent".into()
        }
        AccessRepair::ForceRowSecurity { force } => {
            format!(
                "row-level security {}forced, as on the parent",
                if *force { "" } else { "no longer " }
            )
        }
        AccessRepair::ReplicaIdentity { what } => {
            format!("replica identity {what}, as the parent's")
        }
    }
}

/// A grantee as SQL: `PUBLIC` or a quoted role.
pub fn grantee(g: &str) -> String {
    if g == "PUBLIC" {
        "PUBLIC".to_string()
    } else {
        quote_ident(g)
    }
}

/// A privilege name from aclexplode() (a fixed set of keywords), kept to
/// letters and spaces whatever the catalog says.
pub fn privilege_keyword(p: &str) -> String {
    p.chars()
        .filter(|c| c.is_ascii_alphabetic() || *c == ' ')
        .collect()
}

pub fn sql_grant(child: &QualifiedName, g: &Grant) -> String {
    let grantee = grantee(&g.grantee);
    let privilege = privilege_keyword(&g.privilege);
    format!(
        "GRANT {privilege} ON TABLE {} TO {grantee}{}",
        child.quoted(),
        if g.grantable {
            " WITH GRANT OPTION"
        } else {
            ""
        }
    )
}

#[cfg(test)]
mod tests {
    use super::super::test_fixtures::*;
    use super::*;

    fn g(grantee: &str, privilege: &str) -> Grant {
        Grant {
            grantee: grantee.into(),
            privilege: privilege.into(),
            grantable: false,
        }
    }

    fn part(owner: &str, grants: Vec<Grant>) -> PartitionAccess {
        PartitionAccess {
            schema: "public".into(),
            name: "audit_log_2025_05".into(),
            is_default: false,
            owner: owner.into(),
            manageable: true,
            grants,
            row_security: false,
            force_row_security: false,
            replica_identity: "d".into(),
            identity_index: None,
            policies: 0,
        }
    }

    #[test]
    fn a_revoke_on_the_parent_is_carried_and_a_missing_grant_restored() {
        let mut s = state(KeyType::Timestamptz);
        s.owner = "app_owner".into();
        s.grants = vec![g("app_owner", "SELECT"), g("bob", "SELECT")];
        let p = part(
            "app_owner",
            vec![
                g("app_owner", "SELECT"),
                g("alice", "SELECT"),
                g("alice", "INSERT"),
            ],
        );
        let r = repairs(&s, &p).unwrap();
        assert!(r.contains(&AccessRepair::Revoke {
            grantee: "alice".into(),
            privilege: "SELECT".into(),
            grant_option_only: false
        }));
        assert!(r.contains(&AccessRepair::Grant {
            grantee: "bob".into(),
            privilege: "SELECT".into(),
            grantable: false
        }));
        let sql = sql(&QualifiedName::new("public", "p"), &r).join(";\n");
        assert!(
            sql.contains("REVOKE INSERT ON TABLE \"public\".\"p\" FROM \"alice\" CASCADE"),
            "{sql}"
        );
    }

    #[test]
    fn row_security_enabled_later_revokes_direct_access_and_enables_it_on_partitions() {
        let mut s = state(KeyType::Timestamptz);
        s.owner = "app_owner".into();
        s.row_security = true;
        s.force_row_security = true;
        s.grants = vec![g("alice", "SELECT")];
        let p = part("app_owner", vec![g("alice", "SELECT")]);
        let r = repairs(&s, &p).unwrap();
        assert_eq!(
            r,
            vec![
                AccessRepair::Revoke {
                    grantee: "alice".into(),
                    privilege: "SELECT".into(),
                    grant_option_only: false
                },
                AccessRepair::RowSecurity { enable: true },
                AccessRepair::ForceRowSecurity { force: true },
            ]
        );
        // DEFAULT is enabled, never forced.
        let mut d = part("app_owner", vec![]);
        d.is_default = true;
        d.row_security = true;
        assert_eq!(repairs(&s, &d).unwrap(), vec![]);
        // Its own policies are the operator's: reported, not dropped.
        let mut own = part("app_owner", vec![]);
        own.policies = 2;
        assert!(repairs(&s, &own)
            .unwrap_err()
            .to_string()
            .contains("DROP POLICY"));
    }

    #[test]
    fn a_foreign_owner_is_changed_or_reported_and_identity_follows() {
        let mut s = state(KeyType::Timestamptz);
        s.owner = "app_owner".into();
        s.replica_identity = "i".into();
        let mut p = part("someone", vec![]);
        p.identity_index = Some("\"p_id_idx\"".into());
        let r = repairs(&s, &p).unwrap();
        assert_eq!(
            r[0],
            AccessRepair::Owner {
                to: "app_owner".into()
            }
        );
        assert!(r.contains(&AccessRepair::ReplicaIdentity {
            what: "USING INDEX \"p_id_idx\"".into()
        }));
        p.manageable = false;
        assert!(repairs(&s, &p)
            .unwrap_err()
            .to_string()
            .contains("OWNER TO"));
    }
}
