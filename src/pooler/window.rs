//! The write pause across every instance: PAUSE all at once and confirm
//! each, newcomers paused on their own, RESUME everywhere independently,
//! and the timing of all of it (the pause report).
//!
//! Invariants:
//! * a PAUSE already in force is never lifted unless this process made it
//!   (a PAUSE of another upgrade or of an operator is theirs to RESUME);
//! * every PAUSE this process sent is recorded in `paused_here` before any
//!   way back runs, so RESUME reaches it, even on an instance that has since
//!   left its name (see `members`);
//! * a failed or late PAUSE of the main pause resumes everything it sent;
//!   a newcomer's PAUSE that fails leaves the way back to the saga (which
//!   knows whether RESUME is safe yet).

use std::time::{Duration, Instant};

use super::{pooled_session, simple, sql, Endpoint, PoolerError, Poolers};

/// When this process's PAUSE and RESUME reached one instance.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Timing {
    /// The first PAUSE sent there.
    sent: Option<Instant>,
    /// The last of its PAUSEs returned (every database paused).
    paused: Option<Instant>,
    /// Its RESUMEs returned.
    resumed: Option<Instant>,
    /// Paused after the others: it appeared during the window.
    late: bool,
}

/// One instance's part of the window.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstancePause {
    pub instance: String,
    /// PAUSE sent → every database paused there.
    pub pause_ms: Option<f64>,
    /// PAUSE sent → RESUME returned: what its clients could notice.
    pub window_ms: Option<f64>,
    /// It appeared during the window and was paused on its own.
    pub late: bool,
}

/// The write pause as the instances saw it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PauseReport {
    pub instances: Vec<InstancePause>,
    /// First PAUSE sent → last RESUME returned, over every instance.
    pub overall_ms: Option<f64>,
    /// Earliest to latest PAUSE completion among the instances paused together.
    pub skew_ms: Option<f64>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl std::fmt::Display for PauseReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
        let each: Vec<String> = self
            .instances
            .iter()
            .map(|i| {
                format!(
                    "{} paused in {}, window {}{}",
                    i.instance,
                    shown(i.pause_ms),
                    shown(i.window_ms),
                    if i.late { " (joined late)" } else { "" }
                )
            })
            .collect();
        write!(
            f,
            "{} instance(s): {}; PAUSE completion skew {}; overall {}",
            self.instances.len(),
            each.join(", "),
            shown(self.skew_ms),
            shown(self.overall_ms)
        )
    }
}

/// Pure: the report from each instance's timing.
pub(super) fn report(timings: &[(String, Timing)]) -> PauseReport {
    let instances = timings
        .iter()
        .filter(|(_, t)| t.sent.is_some())
        .map(|(name, t)| InstancePause {
            instance: name.clone(),
            pause_ms: t.sent.zip(t.paused).map(|(s, p)| ms(p - s)),
            window_ms: t.sent.zip(t.resumed).map(|(s, r)| ms(r - s)),
            late: t.late,
        })
        .collect();
    let first_sent = timings.iter().filter_map(|(_, t)| t.sent).min();
    let all_resumed = timings
        .iter()
        .filter(|(_, t)| t.sent.is_some())
        .map(|(_, t)| t.resumed)
        .collect::<Option<Vec<_>>>();
    let overall_ms = first_sent
        .zip(all_resumed.and_then(|r| r.into_iter().max()))
        .map(|(s, r)| ms(r - s));
    let together: Vec<Instant> = timings
        .iter()
        .filter(|(_, t)| !t.late)
        .filter_map(|(_, t)| t.paused)
        .collect();
    let skew_ms = match (together.iter().min(), together.iter().max()) {
        (Some(a), Some(b)) => Some(ms(*b - *a)),
        _ => None,
    };
    PauseReport {
        instances,
        overall_ms,
        skew_ms,
    }
}

impl Poolers {
    /// `PAUSE db` of every cut-over database on every instance, all sent at
    /// once; returns when all finished pausing and each instance's
    /// `SHOW DATABASES` confirmed it. Past `timeout` (or on any error)
    /// RESUME is sent everywhere and the error returned.
    pub async fn pause(&mut self, timeout: Duration) -> Result<(), PoolerError> {
        self.pause_sent(timeout, false, true).await
    }

    /// Membership read again; every instance that appeared since is paused
    /// (its entries discovered, its connections opened, PAUSE confirmed)
    /// within `timeout`. Returns the names of the newcomers. On failure
    /// nothing is resumed: the saga decides (before promote it rolls back;
    /// after, RESUME must wait for the repoint).
    pub async fn admit_newcomers(&mut self, timeout: Duration) -> Result<Vec<String>, PoolerError> {
        if !self.members_known {
            // The first resolution of this process (an upgrade resumed after
            // promote): nothing to compare with, and the PAUSEs in force are
            // the earlier run's. Every instance found is driven from here on
            // (repointed, resumed) like the others.
            self.refresh_members().await?;
            return Ok(Vec::new());
        }
        let added = self.refresh_members().await?;
        if !added.is_empty() {
            tracing::warn!(instances = ?added, "PgBouncer instances appeared during the write pause; pausing them too");
            self.discover().await?;
            self.connect().await?;
            self.pause_sent(timeout, true, false).await?;
        }
        Ok(added)
    }

    /// The pause report of this process's window so far.
    pub fn pause_report(&self) -> PauseReport {
        let timings: Vec<(String, Timing)> = self
            .endpoints
            .iter()
            .map(|e| (e.instance.clone(), e.timing))
            .collect();
        report(&timings)
    }

    async fn pause_sent(
        &mut self,
        timeout: Duration,
        late: bool,
        resume_on_failure: bool,
    ) -> Result<(), PoolerError> {
        self.connect().await?;
        let shown =
            futures::future::join_all(self.endpoints.iter().map(|e| self.show_databases_of(e)))
                .await;
        let mut sends: Vec<(usize, String)> = Vec::new();
        for (i, (e, shown)) in self.endpoints.iter().zip(shown).enumerate() {
            if !e.listed {
                // Left its name: not paused again; our PAUSE there stays owed its RESUME.
                continue;
            }
            let shown = shown?;
            for db in &e.dbs {
                let paused = shown.iter().any(|d| &d.name == db && d.paused);
                if paused && e.paused_here.contains(db) {
                    continue;
                }
                if paused {
                    return Err(PoolerError::PausedByOther {
                        target: e.name.clone(),
                        database: db.clone(),
                    });
                }
                sends.push((i, db.clone()));
            }
        }
        if sends.is_empty() {
            return Ok(());
        }
        let result = self.send_pauses(&sends, timeout, late).await;
        if result.is_ok() {
            for (i, db) in &sends {
                self.endpoints[*i].paused_here.insert(db.clone());
            }
            return Ok(());
        }
        // The pausing connections are still waiting for their answer; drop them.
        // The PAUSEs sent are ours (a PAUSE pending counts as one): lift them.
        for (i, db) in sends {
            self.endpoints[i].pause_conns.remove(&db);
            self.endpoints[i].paused_here.insert(db);
        }
        if resume_on_failure {
            // The way back is not bound by the deadline that was just missed.
            self.deadline = None;
            if let Err(e) = self.resume().await {
                tracing::error!(error = %e, "resume after a failed pause failed");
            }
        }
        result
    }

    /// Sends every PAUSE of `sends` at once (each over its own connection,
    /// so they run concurrently on the instances), records when each
    /// instance was sent its first and finished its last, then confirms on
    /// every instance that each database shows paused.
    async fn send_pauses(
        &mut self,
        sends: &[(usize, String)],
        timeout: Duration,
        late: bool,
    ) -> Result<(), PoolerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let stamps = std::cell::RefCell::new(Vec::new());
        let mut futs = Vec::new();
        for (k, (i, db)) in sends.iter().enumerate() {
            let e = &self.endpoints[*i];
            let cmd = sql::pause(db);
            let Some(c) = e.pause_conns.get(db) else {
                return Err(PoolerError::Command {
                    target: e.name.clone(),
                    command: cmd,
                    detail: "not connected".into(),
                });
            };
            let (name, stamps) = (e.name.clone(), &stamps);
            futs.push(async move {
                let sent = Instant::now();
                let r = simple(c, &name, &cmd, timeout).await;
                // Stamped as each returns: a missed deadline still knows who finished.
                stamps
                    .borrow_mut()
                    .push((k, sent, r.is_ok().then(Instant::now)));
                r
            });
        }
        let outcome = tokio::time::timeout_at(deadline, futures::future::join_all(futs)).await;
        let mut finished = std::collections::BTreeSet::new();
        for (k, sent, done) in stamps.take() {
            let t = &mut self.endpoints[sends[k].0].timing;
            t.late = late;
            t.sent = Some(t.sent.map_or(sent, |x| x.min(sent)));
            t.resumed = None;
            if let Some(done) = done {
                t.paused = Some(t.paused.map_or(done, |x| x.max(done)));
                finished.insert(k);
            }
        }
        let Ok(results) = outcome else {
            let names: std::collections::BTreeSet<String> = sends
                .iter()
                .enumerate()
                .filter(|(k, _)| !finished.contains(k))
                .map(|(_, (i, db))| format!("{} (database {db})", self.endpoints[*i].name))
                .collect();
            return Err(PoolerError::PauseTimeout {
                target: names.into_iter().collect::<Vec<_>>().join(", "),
                timeout,
            });
        };
        if let Some(e) = results.into_iter().find_map(Result::err) {
            return Err(e);
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, self.confirm_paused(sends)).await {
            Ok(r) => r,
            Err(_) => Err(PoolerError::PauseTimeout {
                target: "SHOW DATABASES after PAUSE".into(),
                timeout,
            }),
        }
    }

    /// Each instance's `SHOW DATABASES` shows every database of `sends`
    /// paused (all instances at once).
    async fn confirm_paused(&self, sends: &[(usize, String)]) -> Result<(), PoolerError> {
        let mut idx: Vec<usize> = sends.iter().map(|(i, _)| *i).collect();
        idx.dedup();
        let shown = futures::future::try_join_all(
            idx.iter()
                .map(|i| self.show_databases_of(&self.endpoints[*i])),
        )
        .await?;
        for (i, shown) in idx.iter().zip(shown) {
            let e = &self.endpoints[*i];
            for (_, db) in sends.iter().filter(|(j, _)| j == i) {
                if !shown.iter().any(|d| &d.name == db && d.paused) {
                    return Err(PoolerError::NotPaused {
                        target: e.name.clone(),
                        database: db.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// `RESUME db` of every cut-over database on every instance; a database
    /// that is not paused is fine. Only called for a PAUSE of this upgrade
    /// (this process's, or one its journal proves it sent before a crash).
    ///
    /// Every instance independently and at once (see the module doc): its
    /// own control connection, opened now when it is not open, its own
    /// timeout (the full query timeout: the way back gets its time even
    /// after a missed pause deadline). Fails naming every instance and
    /// database not resumed, after all the others were. An instance that
    /// left its name and refuses connections is gone with its clients: it
    /// is logged, not counted as a failure.
    pub async fn resume(&mut self) -> Result<(), PoolerError> {
        if !self.members_known {
            if let Err(e) = self.refresh_members().await {
                tracing::warn!(error = %e, "PgBouncer instances not resolved; RESUME goes to each endpoint as written");
                self.members_as_written();
            }
        }
        let timeout = self.query_timeout;
        let connect_timeout = self.connect_timeout.min(timeout);
        let cutover_db = self.database.clone();
        let servers = self.servers_to_cut_over().await;
        let servers = &servers;
        let runs = self.endpoints.iter_mut().map(|e| {
            let cutover_db = cutover_db.clone();
            async move {
                // Which databases, found on this instance's own time.
                if e.dbs.is_empty() {
                    super::discover_one(e, servers, &cutover_db, connect_timeout, timeout).await;
                }
                resume_one(e, timeout, connect_timeout).await
            }
        });
        let outcomes = futures::future::join_all(runs).await;
        let resumed = outcomes.iter().map(|o| o.0).sum();
        let failed: Vec<String> = outcomes.into_iter().flat_map(|o| o.1).collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(PoolerError::NotResumed { resumed, failed })
        }
    }
}

/// RESUME of every cut-over database of one instance: (resumed, failures).
async fn resume_one(
    e: &mut Endpoint,
    timeout: Duration,
    connect_timeout: Duration,
) -> (usize, Vec<String>) {
    let dbs = e.dbs.clone();
    let mut failed = Vec::new();
    let mut resumed = 0;
    let (name, admin) = (e.name.clone(), e.admin.clone());
    let reach = async {
        if e.ctl_conn.as_ref().map_or(true, |c| c.is_closed()) {
            e.ctl_conn = Some(pooled_session(&admin, connect_timeout).await?);
        }
        Ok::<_, PoolerError>(())
    };
    let connected = match tokio::time::timeout(timeout, reach).await {
        Ok(r) => r,
        Err(_) => Err(PoolerError::Timeout {
            target: name.clone(),
            command: "connect".into(),
            after: timeout,
        }),
    };
    if let Err(err) = connected {
        e.ctl_conn = None;
        if !e.listed && refused(&err) {
            tracing::warn!(pooler = %name, error = %err, "an instance that left its name refuses connections: gone with its clients, nothing to resume");
            e.paused_here.clear();
        } else {
            failed.push(format!("{name} ({}): {err}", dbs.join(", ")));
        }
        return (resumed, failed);
    }
    for db in dbs {
        let Some(c) = e.ctl_conn.as_ref() else { break };
        match simple(c, &name, &sql::resume(&db), timeout).await {
            Ok(_) => {}
            Err(PoolerError::Command { detail, .. }) if detail.contains("not paused") => {}
            Err(err) => {
                // A hung console: the next RESUME opens a fresh session.
                e.ctl_conn = None;
                failed.push(format!("{name} database {db}: {err}"));
                continue;
            }
        }
        e.paused_here.remove(&db);
        resumed += 1;
    }
    if failed.is_empty() && e.timing.sent.is_some() {
        e.timing.resumed = Some(Instant::now());
    }
    (resumed, failed)
}

/// The connection was refused outright (nothing listens there any more),
/// as opposed to not answering (which may be a hung process with clients).
pub(super) fn refused(e: &PoolerError) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    text.contains("connection refused") || text.contains("no route to host")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_gives_each_instance_the_overall_window_and_the_skew() {
        let t0 = Instant::now();
        let at = |ms: u64| Some(t0 + Duration::from_millis(ms));
        let timings = vec![
            (
                "a".to_string(),
                Timing {
                    sent: at(0),
                    paused: at(3),
                    resumed: at(100),
                    late: false,
                },
            ),
            (
                "b".to_string(),
                Timing {
                    sent: at(1),
                    paused: at(8),
                    resumed: at(104),
                    late: false,
                },
            ),
            (
                "c".to_string(),
                Timing {
                    sent: at(50),
                    paused: at(52),
                    resumed: at(103),
                    late: true,
                },
            ),
            ("never paused".to_string(), Timing::default()),
        ];
        let r = report(&timings);
        assert_eq!(r.instances.len(), 3);
        assert_eq!(r.instances[0].pause_ms, Some(3.0));
        assert_eq!(r.instances[1].window_ms, Some(103.0));
        assert!(r.instances[2].late);
        // The late one does not count in the skew of the instances paused together.
        assert_eq!(r.skew_ms, Some(5.0));
        assert_eq!(r.overall_ms, Some(104.0));
        let text = r.to_string();
        assert!(
            text.contains("skew 5.0 ms") && text.contains("overall 104.0 ms"),
            "{text}"
        );
        // Not yet resumed everywhere: no overall figure.
        let mut open = timings.clone();
        open[1].1.resumed = None;
        assert_eq!(report(&open).overall_ms, None);
    }
}
