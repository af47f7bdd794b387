//! The verdict on one replica: a pure function of what was observed on the
//! primary and on the replica, so every rule is tested on recorded cases
//! without servers.
//!
//! Rules, in order:
//! 1. unreachable replica: a problem, lag unknown;
//! 2. `pg_is_in_recovery() = false`: a second writable node, a problem whatever its LSNs;
//! 3. bytes behind = primary's current LSN − replay LSN (0 when the replica is ahead
//!    of the snapshot, which happens because the primary is read first);
//! 4. time behind is 0 whenever bytes behind is 0, whatever the last replay
//!    timestamp says (an idle primary writes no commits, so
//!    `now() - pg_last_xact_replay_timestamp()` grows on a caught-up replica);
//! 5. otherwise, for a streaming replica that replays: the time it took to reach
//!    the primary's LSN while we watched, else the primary's `replay_lag`;
//!    for a paused or disconnected one (nothing is being applied), the time since
//!    the last replayed commit, an upper bound that grows as it should;
//! 6. a WAL receiver that is not streaming is a problem even when the LSNs match:
//!    a disconnected replica is never reported as caught up.

use std::time::Duration;

use serde::Serialize;

use super::observe::{Lsn, PrimaryObservation, ReplicaObservation, SenderObservation};

/// Thresholds from `[lag]`.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub max_bytes: u64,
    pub max_delay: Duration,
}

/// How a replica is connected, as far as we could tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    Unreachable,
    /// Not in recovery: it accepts writes.
    Writable,
    /// In recovery but its WAL receiver is not streaming.
    Disconnected,
    Streaming,
}

impl ReplicaState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaState::Unreachable => "unreachable",
            ReplicaState::Writable => "WRITABLE",
            ReplicaState::Disconnected => "disconnected",
            ReplicaState::Streaming => "streaming",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    Unreachable {
        error: String,
    },
    /// A replica that answers `pg_is_in_recovery() = false`: two nodes take writes.
    SecondWritableNode,
    NotStreaming {
        receiver_status: Option<String>,
    },
    BytesOverThreshold {
        bytes: u64,
        max_bytes: u64,
    },
    DelayOverThreshold {
        seconds: f64,
        max_seconds: f64,
    },
    /// The primary could not be read, so how far behind the replica is is unknown.
    LagUnknown {
        reason: String,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Unreachable { error } => write!(f, "unreachable: {error}"),
            Problem::SecondWritableNode => f.write_str(
                "SECOND WRITABLE NODE: not in recovery (promoted?); writes may land on two primaries",
            ),
            Problem::NotStreaming { receiver_status } => write!(
                f,
                "wal receiver not streaming (status {})",
                receiver_status.as_deref().unwrap_or("none")
            ),
            Problem::BytesOverThreshold { bytes, max_bytes } => write!(
                f,
                "{} behind, over {}",
                crate::output::human_bytes(*bytes),
                crate::output::human_bytes(*max_bytes)
            ),
            Problem::DelayOverThreshold {
                seconds,
                max_seconds,
            } => write!(
                f,
                "{} behind, over {}",
                crate::output::human_seconds(*seconds),
                crate::output::human_seconds(*max_seconds)
            ),
            Problem::LagUnknown { reason } => write!(f, "lag unknown: {reason}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub state: ReplicaState,
    /// None when it cannot be known (replica or primary unreachable).
    pub bytes_behind: Option<u64>,
    pub seconds_behind: Option<f64>,
    pub replay_paused: bool,
    pub problems: Vec<Problem>,
}

impl Verdict {
    pub fn healthy(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The primary side as the verdict needs it: its current LSN, or why there is none.
pub type PrimarySide<'a> = Result<&'a PrimaryObservation, &'a str>;

pub fn evaluate(
    primary: PrimarySide<'_>,
    replica: Result<&ReplicaObservation, &str>,
    sender: Option<&SenderObservation>,
    t: &Thresholds,
) -> Verdict {
    let r = match replica {
        Ok(r) => r,
        Err(error) => {
            return Verdict {
                state: ReplicaState::Unreachable,
                bytes_behind: None,
                seconds_behind: None,
                replay_paused: false,
                problems: vec![Problem::Unreachable {
                    error: error.to_string(),
                }],
            }
        }
    };
    if !r.in_recovery {
        return Verdict {
            state: ReplicaState::Writable,
            bytes_behind: None,
            seconds_behind: None,
            replay_paused: false,
            problems: vec![Problem::SecondWritableNode],
        };
    }
    let streaming = r.receiver_status.as_deref() == Some("streaming");
    let state = if streaming {
        ReplicaState::Streaming
    } else {
        ReplicaState::Disconnected
    };
    let mut problems = Vec::new();
    if !streaming {
        problems.push(Problem::NotStreaming {
            receiver_status: r.receiver_status.clone(),
        });
    }
    let current: Option<Lsn> = match primary {
        Ok(p) => match p.current_lsn {
            Some(lsn) => Some(lsn),
            None => {
                problems.push(Problem::LagUnknown {
                    reason: "the configured primary is in recovery".into(),
                });
                None
            }
        },
        Err(e) => {
            problems.push(Problem::LagUnknown {
                reason: format!("primary unreachable: {e}"),
            });
            None
        }
    };
    let bytes_behind = match (current, r.replay_lsn) {
        (Some(cur), Some(replay)) => Some(cur.0.saturating_sub(replay.0)),
        // In recovery without a replay LSN: nothing replayed since start; everything is behind.
        (Some(cur), None) => Some(cur.0),
        (None, _) => None,
    };
    let seconds_behind = match bytes_behind {
        None => None,
        Some(0) => Some(0.0),
        Some(_) => {
            let since_last_replay = r
                .last_replay_at
                .map(|at| (r.observed_at - at).num_milliseconds().max(0) as f64 / 1000.0);
            if streaming && !r.replay_paused {
                r.settled_after_seconds
                    .or_else(|| sender.and_then(|s| s.replay_lag_seconds))
                    .or(since_last_replay)
            } else {
                since_last_replay
            }
        }
    };
    if let Some(bytes) = bytes_behind {
        if bytes > t.max_bytes {
            problems.push(Problem::BytesOverThreshold {
                bytes,
                max_bytes: t.max_bytes,
            });
        }
    }
    if let Some(seconds) = seconds_behind {
        let max_seconds = t.max_delay.as_secs_f64();
        if seconds > max_seconds {
            problems.push(Problem::DelayOverThreshold {
                seconds,
                max_seconds,
            });
        }
    }
    Verdict {
        state,
        bytes_behind,
        seconds_behind,
        replay_paused: r.replay_paused,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        max_bytes: 64 << 20,
        max_delay: Duration::from_secs(30),
    };

    // Recorded from a PostgreSQL 15 primary and replica (harness cluster), trimmed to the fields used.
    fn primary(lsn: &str) -> PrimaryObservation {
        serde_json::from_value(serde_json::json!({
            "in_recovery": false,
            "current_lsn": lsn,
            "observed_at": "2026-11-27T05:20:00.000Z",
            "connections": 3,
            "max_connections": 100,
            "senders": []
        }))
        .unwrap()
    }

    fn replica(replay: &str, status: Option<&str>, last_replay: &str) -> ReplicaObservation {
        serde_json::from_value(serde_json::json!({
            "in_recovery": true,
            "receive_lsn": replay,
            "replay_lsn": replay,
            "replay_paused": false,
            "last_replay_at": last_replay,
            "receiver_status": status,
            "last_msg_receipt_at": "2026-11-27T05:19:59.900Z",
            "observed_at": "2026-11-27T05:20:00.050Z",
            "connections": 1,
            "max_connections": 100,
            "settled_after_seconds": null
        }))
        .unwrap()
    }

    #[test]
    fn idle_caught_up_replica_is_not_late() {
        // The last commit was an hour ago; nothing was written since.
        let p = primary("0/3000148");
        let r = replica("0/3000148", Some("streaming"), "2026-11-27T04:20:00Z");
        let v = evaluate(Ok(&p), Ok(&r), None, &T);
        assert_eq!(v.bytes_behind, Some(0));
        assert_eq!(v.seconds_behind, Some(0.0));
        assert!(v.healthy(), "{v:?}");
        assert_eq!(v.state, ReplicaState::Streaming);
    }

    #[test]
    fn replica_ahead_of_the_primary_snapshot_is_zero_not_negative() {
        let p = primary("0/3000148");
        let r = replica("0/3000200", Some("streaming"), "2026-11-27T04:20:00Z");
        let v = evaluate(Ok(&p), Ok(&r), None, &T);
        assert_eq!(v.bytes_behind, Some(0));
        assert!(v.healthy());
    }

    #[test]
    fn idle_replica_behind_by_a_standby_snapshot_that_settles_is_healthy() {
        // An idle primary logs a running-xacts record; the replica replayed it 40ms later.
        let p = primary("0/3000200");
        let mut r = replica("0/3000148", Some("streaming"), "2026-11-27T04:20:00Z");
        r.settled_after_seconds = Some(0.04);
        let v = evaluate(Ok(&p), Ok(&r), None, &T);
        assert_eq!(v.bytes_behind, Some(0xb8));
        assert_eq!(v.seconds_behind, Some(0.04));
        assert!(v.healthy(), "{v:?}");
    }

    #[test]
    fn paused_replica_with_writes_grows_in_bytes_and_time() {
        let p = primary("0/9000000");
        let mut r = replica("0/3000000", Some("streaming"), "2026-11-27T05:19:00Z");
        r.replay_paused = true;
        r.receive_lsn = Some("0/9000000".parse().unwrap());
        let v = evaluate(Ok(&p), Ok(&r), None, &T);
        assert_eq!(v.bytes_behind, Some(0x6000000));
        assert_eq!(v.seconds_behind, Some(60.05));
        assert!(v.replay_paused);
        assert!(matches!(
            v.problems[..],
            [
                Problem::BytesOverThreshold { .. },
                Problem::DelayOverThreshold { .. }
            ]
        ));
    }

    #[test]
    fn paused_but_caught_up_replica_is_healthy_and_flagged() {
        let p = primary("0/3000148");
        let mut r = replica("0/3000148", Some("streaming"), "2026-11-27T04:20:00Z");
        r.replay_paused = true;
        let v = evaluate(Ok(&p), Ok(&r), None, &T);
        assert!(v.healthy());
        assert!(v.replay_paused);
    }

    #[test]
    fn disconnected_replica_is_never_caught_up() {
        // Same LSN as the primary (nothing written since), but no WAL receiver.
        let p = primary("0/3000148");
        let r = replica("0/3000148", None, "2026-11-27T04:20:00Z");
        let v = evaluate(Ok(&p), Ok(&r), None, &T);
        assert_eq!(v.state, ReplicaState::Disconnected);
        assert!(!v.healthy());
        assert_eq!(
            v.problems,
            vec![Problem::NotStreaming {
                receiver_status: None
            }]
        );
    }

    #[test]
    fn disconnected_and_behind_uses_time_since_last_replay() {
        let p = primary("0/5000000");
        let r = replica("0/4000000", Some("waiting"), "2026-11-27T05:19:00Z");
        let v = evaluate(Ok(&p), Ok(&r), None, &T);
        assert_eq!(v.seconds_behind, Some(60.05));
        assert_eq!(v.problems.len(), 2, "{v:?}");
    }

    #[test]
    fn streaming_replica_behind_prefers_settle_then_primary_replay_lag() {
        let p = primary("0/5000000");
        let r = replica("0/4FFF000", Some("streaming"), "2026-11-27T04:00:00Z");
        let sender: SenderObservation = serde_json::from_value(serde_json::json!({
            "application_name": "replica0", "client_addr": "127.0.0.1", "state": "streaming",
            "sent_lsn": "0/5000000", "write_lsn": "0/5000000", "flush_lsn": "0/5000000",
            "replay_lsn": "0/4FFF000", "write_lag_seconds": 0.001, "flush_lag_seconds": 0.002,
            "replay_lag_seconds": 0.25, "sync_state": "async"
        }))
        .unwrap();
        let v = evaluate(Ok(&p), Ok(&r), Some(&sender), &T);
        assert_eq!(v.seconds_behind, Some(0.25));
        assert!(v.healthy());
        // Without either, the time since the last replayed commit is the bound we have.
        let v = evaluate(Ok(&p), Ok(&r), None, &T);
        assert!(v.seconds_behind.unwrap() > 4000.0);
    }

    #[test]
    fn promoted_replica_is_a_second_writable_node() {
        let p = primary("0/5000000");
        let mut r = replica("0/3000148", None, "2026-11-27T04:20:00Z");
        r.in_recovery = false;
        let v = evaluate(Ok(&p), Ok(&r), None, &T);
        assert_eq!(v.state, ReplicaState::Writable);
        assert_eq!(v.problems, vec![Problem::SecondWritableNode]);
        assert!(v.problems[0].to_string().contains("SECOND WRITABLE NODE"));
    }

    #[test]
    fn unreachable_replica_is_a_state() {
        let p = primary("0/5000000");
        let v = evaluate(Ok(&p), Err("connection refused"), None, &T);
        assert_eq!(v.state, ReplicaState::Unreachable);
        assert_eq!(v.bytes_behind, None);
        assert!(!v.healthy());
    }

    #[test]
    fn unknown_primary_makes_lag_unknown_not_zero() {
        let r = replica("0/3000148", Some("streaming"), "2026-11-27T04:20:00Z");
        let v = evaluate(Err("timeout"), Ok(&r), None, &T);
        assert_eq!(v.bytes_behind, None);
        assert_eq!(v.seconds_behind, None);
        assert!(!v.healthy());
        let mut p = primary("0/0");
        p.current_lsn = None;
        p.in_recovery = true;
        let v = evaluate(Ok(&p), Ok(&r), None, &T);
        assert!(matches!(v.problems[..], [Problem::LagUnknown { .. }]));
    }

    #[test]
    fn thresholds_are_exclusive() {
        let p = primary("0/4000000");
        let mut r = replica("0/0", Some("streaming"), "2026-11-27T05:19:30.050Z");
        r.replay_lsn = Some(Lsn(0x4000000 - (64 << 20)));
        r.replay_paused = true;
        let v = evaluate(Ok(&p), Ok(&r), None, &T);
        assert_eq!(v.bytes_behind, Some(64 << 20));
        assert_eq!(v.seconds_behind, Some(30.0));
        assert!(v.healthy(), "{v:?}");
    }

    /// Reports recorded from `pgsteward lag --output json` against a real
    /// primary and two replicas (tests/it/lag.rs, `STEWARD_RECORD_LAG=DIR`):
    /// re-evaluating their observations gives the verdicts recorded with them.
    #[test]
    fn recorded_reports_re_evaluate_to_their_verdicts() {
        for (name, text) in [
            ("idle", include_str!("../../tests/fixtures/lag/idle.json")),
            (
                "paused",
                include_str!("../../tests/fixtures/lag/paused.json"),
            ),
            (
                "promoted",
                include_str!("../../tests/fixtures/lag/promoted.json"),
            ),
        ] {
            let report: serde_json::Value = serde_json::from_str(text).unwrap();
            let t = Thresholds {
                max_bytes: report["max_bytes"].as_u64().unwrap(),
                max_delay: Duration::from_secs_f64(report["max_delay_seconds"].as_f64().unwrap()),
            };
            let primary: PrimaryObservation =
                serde_json::from_value(report["primary"]["observation"].clone()).unwrap();
            for r in report["replicas"].as_array().unwrap() {
                let obs: Option<ReplicaObservation> =
                    serde_json::from_value(r["observation"].clone()).unwrap();
                let error = r["problems"][0]["error"].as_str().unwrap_or("").to_string();
                let sender: Option<SenderObservation> =
                    serde_json::from_value(r["sender"].clone()).unwrap();
                let v = evaluate(
                    Ok(&primary),
                    obs.as_ref().ok_or(error.as_str()),
                    sender.as_ref(),
                    &t,
                );
                let recorded = serde_json::json!({
                    "state": r["state"], "bytes_behind": r["bytes_behind"],
                    "seconds_behind": r["seconds_behind"], "replay_paused": r["replay_paused"],
                    "problems": r["problems"],
                });
                assert_eq!(
                    serde_json::to_value(&v).unwrap(),
                    recorded,
                    "{name}: {}",
                    r["replica"]
                );
            }
        }
    }
}
