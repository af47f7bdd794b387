//! The upgrade's prechecks as a pure judgement: `observe` (in `steps`) reads
//! the facts from the primary, the local journal and the guard row; `judge`
//! turns them into checks, each saying what was seen and, when it fails,
//! what to do. Nothing here talks to a server, so every verdict is unit-tested.

use super::guard::GuardRow;
use crate::provider::Check;

/// What the primary and the state directory said, read once.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The primary's address, redacted, for the messages.
    pub primary: String,
    pub in_recovery: bool,
    pub free_senders: i32,
    pub free_slots: i32,
    pub server_version_num: i32,
    /// `pause_timeout` in seconds: transactions older than this would hold PAUSE.
    pub pause_seconds: f64,
    pub long_transactions: i64,
    pub oldest_transaction_seconds: f64,
    pub access_exclusive_locks: i64,
    /// The newest upgrade in the local journal.
    pub local: Option<LocalUpgrade>,
    /// The guard row on the primary: runners on other hosts.
    pub guard: Option<GuardRow>,
}

/// The newest local journal's upgrade, as far as the prechecks need it.
#[derive(Debug, Clone)]
pub struct LocalUpgrade {
    pub id: String,
    pub phase: String,
    pub in_flight: bool,
    pub path: String,
}

/// The checks, in the order `upgrade plan` prints them. `own_id` is the
/// upgrade asking (a resumed one is not "another upgrade").
pub fn judge(f: &Facts, own_id: Option<&str>) -> Vec<Check> {
    let mut checks = vec![
        Check::new(
            "source is a primary",
            !f.in_recovery,
            if f.in_recovery {
                format!(
                    "{} is in recovery; point database.primary at the primary",
                    f.primary
                )
            } else {
                f.primary.clone()
            },
        ),
        Check::new(
            "source can feed a new replica",
            f.free_senders >= 2 && f.free_slots >= 1,
            // An [ok] line states what was seen; only a failure says what to do.
            with_fix(
                format!(
                    "{} free wal senders (need 2), {} free replication slots (need 1)",
                    f.free_senders, f.free_slots
                ),
                f.free_senders >= 2 && f.free_slots >= 1,
                "raise max_wal_senders / max_replication_slots",
            ),
        ),
        Check::new(
            "PostgreSQL 13 or newer",
            f.server_version_num >= 130000,
            with_fix(
                format!("server_version_num {}", f.server_version_num),
                f.server_version_num >= 130000,
                "replicas are repointed by reloading primary_conninfo (13+): upgrade PostgreSQL first",
            ),
        ),
        Check::new(
            "no long transactions",
            f.long_transactions == 0,
            if f.long_transactions == 0 {
                format!("none open longer than pause_timeout ({}s)", f.pause_seconds)
            } else {
                format!(
                    "{} transactions open longer than pause_timeout, oldest {:.0}s: PAUSE would wait for them; end them first (pg_stat_activity)",
                    f.long_transactions, f.oldest_transaction_seconds
                )
            },
        ),
        Check::new(
            "no DDL in progress",
            f.access_exclusive_locks == 0,
            with_fix(
                format!(
                    "{} ACCESS EXCLUSIVE relation locks held",
                    f.access_exclusive_locks
                ),
                f.access_exclusive_locks == 0,
                "wait for the DDL to finish",
            ),
        ),
    ];
    checks.push(match &f.local {
        Some(rec) => {
            let other = rec.in_flight && Some(rec.id.as_str()) != own_id;
            Check::new(
                "no other upgrade in flight",
                !other,
                if other {
                    format!(
                        "upgrade {} is {} ({}): `upgrade resume` or `upgrade abort` it first",
                        rec.id, rec.phase, rec.path
                    )
                } else {
                    format!("last upgrade {} is {}", rec.id, rec.phase)
                },
            )
        }
        None => Check::new("no other upgrade in flight", true, "none yet"),
    });
    const ON_PRIMARY: &str = "no upgrade in flight on the primary";
    checks.push(match &f.guard {
        Some(row)
            if row.upgrade_id != own_id.unwrap_or_default()
                && (!row.finished || row.new_primary.is_some()) =>
        {
            let detail = match &row.new_primary {
                Some(new) => format!("upgrade {} moved the primary to {new}", row.upgrade_id),
                None => format!(
                    "upgrade {} on {} (state_dir {}) is at {} since {}",
                    row.upgrade_id, row.host, row.state_dir, row.step, row.since
                ),
            };
            Check::new(ON_PRIMARY, false, detail)
        }
        Some(row) => Check::new(
            ON_PRIMARY,
            true,
            format!("last upgrade {} {}", row.upgrade_id, row.step),
        ),
        None => Check::new(ON_PRIMARY, true, "none yet"),
    });
    checks
}

/// What was seen, and when the check fails, what to do about it.
fn with_fix(seen: String, ok: bool, fix: &str) -> String {
    if ok {
        seen
    } else {
        format!("{seen}; {fix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn healthy() -> Facts {
        Facts {
            primary: "postgres://steward@db:5432/app".into(),
            in_recovery: false,
            free_senders: 8,
            free_slots: 4,
            server_version_num: 150004,
            pause_seconds: 5.0,
            long_transactions: 0,
            oldest_transaction_seconds: 0.0,
            access_exclusive_locks: 0,
            local: None,
            guard: None,
        }
    }

    fn guard(id: &str, finished: bool, new_primary: Option<&str>) -> GuardRow {
        GuardRow {
            epoch: 1,
            upgrade_id: id.into(),
            host: "pod-a".into(),
            state_dir: "/var/lib/pgsteward".into(),
            started: Utc::now(),
            step: "wait_catchup".into(),
            since: Utc::now(),
            cutover: false,
            finished,
            new_primary: new_primary.map(str::to_string),
            system_identifier: Some("7400000000000000001".into()),
        }
    }

    /// A change to the healthy facts, the check it must fail, a hint its detail gives.
    type Case = (Box<dyn Fn(&mut Facts)>, &'static str, &'static str);

    fn failed(checks: &[Check]) -> Vec<&str> {
        checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name.as_str())
            .collect()
    }

    #[test]
    fn a_healthy_primary_passes_every_check() {
        let checks = judge(&healthy(), None);
        assert_eq!(checks.len(), 7);
        assert!(failed(&checks).is_empty(), "{checks:?}");
    }

    #[test]
    fn each_fact_fails_its_own_check_and_says_what_to_do() {
        let cases: Vec<Case> = vec![
            (
                Box::new(|f| f.in_recovery = true),
                "source is a primary",
                "point database.primary",
            ),
            (
                Box::new(|f| f.free_senders = 1),
                "source can feed a new replica",
                "max_wal_senders",
            ),
            (
                Box::new(|f| f.free_slots = 0),
                "source can feed a new replica",
                "max_replication_slots",
            ),
            (
                Box::new(|f| f.server_version_num = 120011),
                "PostgreSQL 13 or newer",
                "120011",
            ),
            (
                Box::new(|f| {
                    f.long_transactions = 2;
                    f.oldest_transaction_seconds = 42.0;
                }),
                "no long transactions",
                "oldest 42s",
            ),
            (
                Box::new(|f| f.access_exclusive_locks = 3),
                "no DDL in progress",
                "3 ACCESS EXCLUSIVE",
            ),
        ];
        for (change, name, hint) in cases {
            let mut f = healthy();
            change(&mut f);
            let checks = judge(&f, None);
            assert_eq!(failed(&checks), vec![name]);
            let check = checks
                .iter()
                .find(|c| c.name == name)
                .map(|c| c.detail.clone());
            assert!(
                check.is_some_and(|d| d.contains(hint)),
                "{name}: {checks:?}"
            );
        }
    }

    #[test]
    fn another_local_upgrade_in_flight_refuses_but_our_own_resumes() {
        let mut f = healthy();
        f.local = Some(LocalUpgrade {
            id: "u1".into(),
            phase: "Running".into(),
            in_flight: true,
            path: "/state/1-u1.jsonl".into(),
        });
        assert_eq!(failed(&judge(&f, None)), vec!["no other upgrade in flight"]);
        assert_eq!(
            failed(&judge(&f, Some("u2"))),
            vec!["no other upgrade in flight"]
        );
        assert!(failed(&judge(&f, Some("u1"))).is_empty());
    }

    #[test]
    fn the_guard_row_names_a_runner_elsewhere_and_a_moved_primary() {
        let mut f = healthy();
        f.guard = Some(guard("u9", false, None));
        let checks = judge(&f, None);
        assert_eq!(failed(&checks), vec!["no upgrade in flight on the primary"]);
        assert!(checks.iter().any(|c| c.detail.contains("u9 on pod-a")));
        // Finished, but it moved the primary away: this node is not the primary to upgrade.
        f.guard = Some(guard("u9", true, Some("db-new:5432")));
        let checks = judge(&f, None);
        assert!(checks
            .iter()
            .any(|c| !c.ok && c.detail.contains("moved the primary to db-new")));
        // Finished in place (rolled back): nothing in flight.
        f.guard = Some(guard("u9", true, None));
        assert!(failed(&judge(&f, None)).is_empty());
        // Our own guard row does not refuse our resume.
        f.guard = Some(guard("u9", false, None));
        assert!(failed(&judge(&f, Some("u9"))).is_empty());
    }
}
