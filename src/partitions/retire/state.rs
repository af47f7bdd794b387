//! The retirement state machine, pure: which step comes next for a recorded
//! state and what the catalog shows now. Effects are in `retire::mod`.
//!
//! ```text
//!  (plan: expired)  detaching --DETACH--> detached --upload--> uploaded --verify--> verified --DROP--> dropped
//! ```
//!
//! A resumed step re-reads reality rather than trusting the record: a
//! `detaching` partition may be attached, half-detached or detached already.

use chrono::DateTime;

use crate::partitions::model::{Key, KeyType, KEY_MAX, KEY_MIN};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Detaching,
    Detached,
    Uploaded,
    Verified,
    Dropped,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Detaching => "detaching",
            State::Detached => "detached",
            State::Uploaded => "uploaded",
            State::Verified => "verified",
            State::Dropped => "dropped",
        }
    }
    pub fn parse(s: &str) -> Option<State> {
        Some(match s {
            "detaching" => State::Detaching,
            "detached" => State::Detached,
            "uploaded" => State::Uploaded,
            "verified" => State::Verified,
            "dropped" => State::Dropped,
            _ => return None,
        })
    }
}

/// What the catalog shows about the partition now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    pub exists: bool,
    /// Still a partition of its parent (pending detach included).
    pub attached: bool,
    /// Left half-detached by an interrupted `DETACH ... CONCURRENTLY`.
    pub detach_pending: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Detach (how the table allows), then record `detached`.
    Detach,
    /// Complete an interrupted concurrent detach, then record `detached`.
    Finalize,
    /// Detached already (the process died before recording it).
    RecordDetached,
    Upload,
    Verify,
    Drop,
    /// Dropped outside the retirement after its archive verified: the rows
    /// are safe in the archive, record `dropped`.
    RecordDropped,
    Done,
    /// Nothing can be done safely; the operator must look (the reason).
    Stuck(String),
}

pub fn next(state: State, f: Facts) -> Next {
    use State::*;
    match state {
        Dropped => Next::Done,
        _ if !f.exists && state == Verified => Next::RecordDropped,
        _ if !f.exists => Next::Stuck(format!(
            "the partition was dropped outside pgsteward while {}; its archive was never verified: check the object store and restore from a backup if rows are missing",
            state.as_str()
        )),
        Detaching if f.detach_pending => Next::Finalize,
        Detaching if f.attached => Next::Detach,
        Detaching => Next::RecordDetached,
        _ if f.attached => Next::Stuck(format!(
            "the partition was attached again while {}; it is not archived or dropped: detach it, or mark the retirement done by deleting its row from pgsteward.retirements",
            state.as_str()
        )),
        Detached => Next::Upload,
        Uploaded => Next::Verify,
        Verified => Next::Drop,
    }
}

/// One bound as key text in an object key: `20250101T000000Z` (timestamptz,
/// UTC), `20250101T000000` (timestamp), `20250101` (date), `minvalue`.
pub fn bound_text(kt: KeyType, k: Key) -> String {
    if k == KEY_MIN {
        return "minvalue".into();
    }
    if k == KEY_MAX {
        return "maxvalue".into();
    }
    let Some(t) = DateTime::from_timestamp_micros(k) else {
        return format!("us{k}");
    };
    let frac = if k.rem_euclid(1_000_000) != 0 {
        t.format("%.6f").to_string()
    } else {
        String::new()
    };
    match kt {
        KeyType::Date => t.format("%Y%m%d").to_string(),
        KeyType::Timestamp => format!("{}{frac}", t.format("%Y%m%dT%H%M%S")),
        KeyType::Timestamptz => format!("{}{frac}Z", t.format("%Y%m%dT%H%M%S")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ATTACHED: Facts = Facts {
        exists: true,
        attached: true,
        detach_pending: false,
    };
    const DETACHED: Facts = Facts {
        exists: true,
        attached: false,
        detach_pending: false,
    };
    const GONE: Facts = Facts {
        exists: false,
        attached: false,
        detach_pending: false,
    };

    #[test]
    fn each_state_resumes_from_what_the_catalog_shows() {
        use State::*;
        assert_eq!(next(Detaching, ATTACHED), Next::Detach);
        let pending = Facts {
            detach_pending: true,
            ..ATTACHED
        };
        assert_eq!(next(Detaching, pending), Next::Finalize);
        assert_eq!(next(Detaching, DETACHED), Next::RecordDetached);
        assert_eq!(next(Detached, DETACHED), Next::Upload);
        assert_eq!(next(Uploaded, DETACHED), Next::Verify);
        assert_eq!(next(Verified, DETACHED), Next::Drop);
        assert_eq!(next(Verified, GONE), Next::RecordDropped);
        assert_eq!(next(Dropped, GONE), Next::Done);
    }

    #[test]
    fn never_drops_without_a_verified_archive() {
        use State::*;
        for s in [Detaching, Detached, Uploaded] {
            for f in [ATTACHED, DETACHED, GONE] {
                assert_ne!(next(s, f), Next::Drop, "{s:?} {f:?}");
                assert_ne!(next(s, f), Next::RecordDropped, "{s:?} {f:?}");
            }
            assert!(matches!(next(s, GONE), Next::Stuck(_)), "{s:?}");
        }
        assert!(matches!(next(Uploaded, ATTACHED), Next::Stuck(_)));
    }

    #[test]
    fn bounds_as_key_text() {
        let jan = 1_735_689_600_000_000; // 2025-01-01T00:00:00Z
        assert_eq!(bound_text(KeyType::Timestamptz, jan), "20250101T000000Z");
        assert_eq!(
            bound_text(KeyType::Timestamp, jan + 1),
            "20250101T000000.000001"
        );
        assert_eq!(bound_text(KeyType::Date, jan), "20250101");
        assert_eq!(bound_text(KeyType::Date, KEY_MIN), "minvalue");
        for s in ["detaching", "detached", "uploaded", "verified", "dropped"] {
            assert_eq!(State::parse(s).map(State::as_str), Some(s));
        }
    }
}
