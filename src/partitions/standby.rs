//! Hot standbys and the pass's ACCESS EXCLUSIVE locks.
//!
//! Of all the locks a pass takes, only ACCESS EXCLUSIVE ones are written to
//! WAL and replayed on physical standbys. Replay of such a lock waits for
//! every standby query holding that relation, up to the standby's
//! `max_standby_streaming_delay` (then cancels them; `-1` waits forever),
//! and meanwhile new standby queries of the relation queue behind it. So a
//! lock that lasts milliseconds on the primary can hold a standby's readers
//! of the table for 30 s there. `lock_timeout` cannot help: the primary
//! does not see standby queries.
//!
//! With `partitions.standby_lock_wait` set, before each step whose lock
//! replays on a relation a standby query may hold (what
//! [`exclusive_relations`] lists), the pass asks every configured replica
//! (`database.replicas`, in the primary's database) who holds those
//! relations, waits up to that long for them to end, and otherwise leaves
//! the table for the next pass, naming them. A query that starts between
//! that look and the replay (the step's own duration plus replication
//! delay) is still waited for; that window is the remaining exposure.
//!
//! `check` judges each replica's settings against this ([`verdict`]).

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::blockers::Blocker;
use super::model::{Action, DetachHow, TableState};
use super::sql;
use crate::config::{Cluster, DatabaseConfig, HumanDuration, PartitionsConfig};
use crate::pg::{server_message, QualifiedName};

/// How often the holders are read again while the pass waits for them.
const POLL: Duration = Duration::from_millis(200);

/// The existing relations on which `action` takes an ACCESS EXCLUSIVE lock
/// that standbys replay and that a standby query may hold (a new partition
/// is not among them: no standby query can hold a table it has not seen).
/// Empty: the step never meets a standby query.
pub fn exclusive_relations(action: &Action, state: &TableState) -> Vec<QualifiedName> {
    match action {
        // Next to a DEFAULT, the ATTACH locks it (and an exclusion CHECK is
        // added to and dropped from it); when rows move, the parent too.
        // Without one, the ATTACH takes SHARE UPDATE EXCLUSIVE only.
        Action::Create { .. } => match &state.default {
            Some(d) => vec![state.table.clone(), d.name.clone()],
            None => Vec::new(),
        },
        // A plain DETACH locks the parent; a DROP the partition.
        Action::Retire {
            partition,
            how,
            drop,
            archive,
            ..
        } => {
            let mut v = Vec::new();
            if *how == DetachHow::Plain {
                v.push(state.table.clone());
            }
            // An archived partition is dropped too, once verified.
            if *how == DetachHow::Plain || *drop || *archive {
                v.push(partition.clone());
            }
            v
        }
        Action::DropDefaultCheck { .. } => state.default.iter().map(|d| d.name.clone()).collect(),
        // ALTER TABLE of the partition (owner, row-level security, replica
        // identity); a GRANT alone takes no lock, but repairs come together.
        Action::RepairAccess { partition, .. } => vec![partition.clone()],
    }
}

/// Sessions to the configured replicas, in the primary's database.
pub struct Standbys {
    clients: Vec<(String, Client)>,
}

impl Standbys {
    /// Connects to every replica of `database.replicas` (in the primary's
    /// database, where the managed tables are). One that cannot be reached
    /// is logged and left out: its queries cannot be seen, and a pass never
    /// stops for a replica that is down (replay there is bounded by its own
    /// `max_standby_streaming_delay`).
    pub async fn connect(database: &DatabaseConfig) -> Standbys {
        let timeout = database.connect_timeout.0;
        let dbname = match database.primary.spec() {
            Ok(s) => s.dbname().to_string(),
            Err(_) => {
                return Standbys {
                    clients: Vec::new(),
                }
            }
        };
        let mut clients = Vec::new();
        for r in &database.replicas {
            let endpoint = r.to_string();
            let client = async {
                let spec = r.spec()?;
                let mut config = spec.config.clone();
                config.dbname(&dbname);
                config.application_name("pgsteward standby check");
                spec.connect_with(config, timeout).await
            }
            .await;
            match client {
                Ok(c) => clients.push((endpoint, c)),
                Err(e) => tracing::warn!(replica = %endpoint, error = %e,
                    "replica not reached: its queries are not waited for"),
            }
        }
        Standbys { clients }
    }

    /// Every standby session holding one of `relations`, per replica.
    async fn holders(&self, relations: &[QualifiedName]) -> Vec<(String, Blocker)> {
        let names: Vec<String> = relations.iter().map(QualifiedName::quoted).collect();
        let mut out = Vec::new();
        for (endpoint, c) in &self.clients {
            match c.query(sql::STANDBY_HOLDERS, &[&names]).await {
                Ok(rows) => out.extend(
                    rows.iter()
                        .map(|r| (endpoint.clone(), Blocker::from_row(r))),
                ),
                Err(e) => tracing::warn!(replica = %endpoint, error = %server_message(&e),
                    "cannot read the replica's locks: its queries are not waited for"),
            }
        }
        out
    }

    /// Waits up to `wait` until no standby session holds any of
    /// `relations`; `Err` names those still there (the step must not run).
    pub async fn wait_clear(
        &self,
        relations: &[QualifiedName],
        wait: Duration,
        cancel: &CancellationToken,
    ) -> Result<(), Busy> {
        if relations.is_empty() || self.clients.is_empty() {
            return Ok(());
        }
        let start = Instant::now();
        loop {
            let held = self.holders(relations).await;
            if held.is_empty() {
                if !start.elapsed().is_zero() {
                    tracing::info!(
                        waited_ms = start.elapsed().as_millis() as u64,
                        "standby queries ended; going on"
                    );
                }
                return Ok(());
            }
            if start.elapsed() >= wait {
                return Err(Busy {
                    relations: relations.to_vec(),
                    held,
                    waited: start.elapsed(),
                });
            }
            tracing::info!(
                sessions = held.len(),
                "standby queries hold the table; waiting (partitions.standby_lock_wait)"
            );
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(POLL.min(wait.saturating_sub(start.elapsed()))) => {}
            }
        }
    }
}

/// Before `action`: with `partitions.standby_lock_wait` set and the step
/// locking what standby queries may hold, waits for them (connecting to the
/// replicas once per table, on the first such step). `Err`: leave the table.
pub async fn gate(
    cfg: &Cluster,
    standbys: &mut Option<Standbys>,
    action: &Action,
    state: &TableState,
    cancel: &CancellationToken,
) -> Result<(), Busy> {
    let Some(wait) = cfg.partitions.standby_lock_wait else {
        return Ok(());
    };
    let relations = exclusive_relations(action, state);
    if relations.is_empty() || cfg.database.replicas.is_empty() {
        return Ok(());
    }
    if standbys.is_none() {
        *standbys = Some(Standbys::connect(&cfg.database).await);
    }
    match standbys {
        Some(s) => s.wait_clear(&relations, wait.0, cancel).await,
        None => Ok(()),
    }
}

/// Standby sessions that still held what a step would lock.
#[derive(Debug)]
pub struct Busy {
    relations: Vec<QualifiedName>,
    held: Vec<(String, Blocker)>,
    waited: Duration,
}

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rels: Vec<String> = self.relations.iter().map(|r| r.to_string()).collect();
        let who: Vec<String> = self
            .held
            .iter()
            .map(|(replica, b)| format!("{b} on replica {replica}"))
            .collect();
        write!(
            f,
            "hot standby queries hold {}: {}; an ACCESS EXCLUSIVE lock of this step would replay there and hold \
             replay and the standby's readers of the table for up to its max_standby_streaming_delay; waited {} \
             (partitions.standby_lock_wait), the table is left for the next pass",
            rels.join(", "),
            who.join(", "),
            HumanDuration(Duration::from_millis(self.waited.as_millis() as u64))
        )
    }
}

/// What a replica's settings say about its queries meeting a pass's locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbySettings {
    pub in_recovery: bool,
    pub hot_standby: bool,
    /// `max_standby_streaming_delay` in ms; -1 waits forever.
    pub max_delay_ms: i64,
    pub feedback: bool,
}

/// Reads a replica's [`StandbySettings`].
pub async fn read_settings(client: &Client) -> Result<StandbySettings, tokio_postgres::Error> {
    let r = client.query_one(sql::STANDBY_SETTINGS, &[]).await?;
    Ok(StandbySettings {
        in_recovery: r.get(0),
        hot_standby: r.get(1),
        max_delay_ms: r.get::<_, Option<i64>>(2).unwrap_or(30_000),
        feedback: r.get(3),
    })
}

/// `check`'s judgement of one replica against the pass: a line to show,
/// and whether it is a warning (the pass's locks will hold replay and
/// the standby's readers of managed tables, and no setting bounds it).
pub fn verdict(s: &StandbySettings, p: &PartitionsConfig) -> (String, bool) {
    if p.tables.is_empty() {
        return ("no managed tables".into(), false);
    }
    if !s.in_recovery || !s.hot_standby {
        return (
            "hot_standby off: no queries there for a pass's locks to meet".into(),
            false,
        );
    }
    let delay = match s.max_delay_ms {
        -1 => "-1 (replay waits for them forever)".to_string(),
        ms => HumanDuration(Duration::from_millis(ms.max(0) as u64)).to_string(),
    };
    let feedback = if s.feedback {
        "hot_standby_feedback on (lock conflicts are not covered by it)"
    } else {
        "hot_standby_feedback off"
    };
    if let Some(w) = p.standby_lock_wait {
        return (
            format!(
                "hot standby, max_standby_streaming_delay {delay}, {feedback}; the pass waits up to {w} \
                 (partitions.standby_lock_wait) for its queries on a managed table before a lock that replays there"
            ),
            false,
        );
    }
    let what = match s.max_delay_ms {
        -1 => "holds replay (the replica's lag) and the standby's other readers of the table for as long as the query runs".to_string(),
        0 => "cancels them at once".to_string(),
        _ => format!("holds replay and the standby's other readers of the table up to {delay}, then cancels them"),
    };
    (
        format!(
            "hot standby, max_standby_streaming_delay {delay}, {feedback}: a pass's ACCESS EXCLUSIVE lock (DEFAULT \
             during an ATTACH, the parent while rows move, a plain DETACH, a DROP) replays here and, for standby \
             queries reading that table, {what} (lock_timeout bounds the primary only). Set \
             partitions.standby_lock_wait so the pass waits for them or leaves the table for the next pass"
        ),
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partitions::model::{DefaultPartition, Range};
    use crate::partitions::test_fixtures::state;

    fn hot(ms: i64) -> StandbySettings {
        StandbySettings {
            in_recovery: true,
            hot_standby: true,
            max_delay_ms: ms,
            feedback: false,
        }
    }

    #[test]
    fn only_steps_locking_what_standby_queries_hold_are_gated() {
        let mut s = state(crate::partitions::model::KeyType::Date);
        let create = Action::Create {
            partition: QualifiedName::new("public", "audit_log_2025_05"),
            period: "2025_05".into(),
            range: Range { lo: 0, hi: 1 },
            reason: crate::partitions::model::CreateReason::Premake,
        };
        assert!(exclusive_relations(&create, &s).is_empty());
        s.default = Some(DefaultPartition {
            name: QualifiedName::new("public", "audit_log_default"),
            rows_estimate: 0,
            pgsteward_checks: Vec::new(),
        });
        let rels = exclusive_relations(&create, &s);
        assert_eq!(rels.len(), 2, "{rels:?}");
        let part = QualifiedName::new("public", "audit_log_2024_01");
        let retire = |how, drop| Action::Retire {
            partition: part.clone(),
            how,
            drop,
            archive: false,
            reason: String::new(),
        };
        assert!(exclusive_relations(&retire(DetachHow::Concurrently, false), &s).is_empty());
        assert_eq!(
            exclusive_relations(&retire(DetachHow::Concurrently, true), &s),
            vec![part.clone()]
        );
        assert_eq!(
            exclusive_relations(&retire(DetachHow::Plain, false), &s),
            vec![s.table.clone(), part]
        );
    }

    #[test]
    fn check_warns_unless_the_pass_waits_for_standby_queries() {
        let mut p = PartitionsConfig::default();
        assert!(!verdict(&hot(30_000), &p).1, "no managed table");
        p.tables.push(crate::partitions::test_fixtures::cfg(
            crate::config::Interval::Monthly,
            3,
        ));
        let (text, warn) = verdict(&hot(30_000), &p);
        assert!(warn && text.contains("up to 30s"), "{text}");
        let (text, warn) = verdict(&hot(-1), &p);
        assert!(warn && text.contains("forever"), "{text}");
        let off = StandbySettings {
            hot_standby: false,
            ..hot(-1)
        };
        assert!(!verdict(&off, &p).1);
        p.standby_lock_wait = Some(HumanDuration(Duration::from_secs(5)));
        let (text, warn) = verdict(&hot(-1), &p);
        assert!(!warn && text.contains("waits up to 5s"), "{text}");
    }
}
