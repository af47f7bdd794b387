//! The pure planner: desired vs. existing partitions of a table at `now`, as
//! actions, and the coverage reported by `status` and the pass. No I/O:
//! every function here is unit-tested without a server, and `apply` only
//! executes what this plans.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use super::model::*;
use super::period::*;
use crate::config::{Interval, RetentionMode, TableConfig};
use crate::pg::QualifiedName;

/// Periods planned at most per table and pass; a gap longer than this (daily
/// partitions after years of downtime) is filled over several passes.
const MAX_PERIODS_PER_PASS: usize = 5000;

/// Desired vs. existing for one table at `now`. Idempotent: planning against
/// the state that executing this plan produces yields no actions.
pub fn plan(cfg: &TableConfig, state: &TableState, now: DateTime<Utc>) -> TablePlan {
    let (interval, kt, tz) = (cfg.interval, state.key_type, cfg.timezone);
    let mut actions = Vec::new();
    let mut notes = Vec::new();
    let cutoff = cfg
        .retention
        .map(|span| retention_cutoff(kt, tz, now, span));

    let attached: Vec<&ExistingPartition> = state
        .partitions
        .iter()
        .filter(|p| !p.detach_pending)
        .collect();
    for p in &attached {
        match p.range {
            None => notes.push(Note {
                partition: p.name.to_string(),
                kind: NoteKind::OffGrid,
                message: "bound is not a single-column range; left alone".into(),
            }),
            // Our own fills of a hole beside a hand-made partition.
            Some(r) if is_fill(&state.table.name, &p.name.name, interval, kt, tz, r) => {}
            // A converted table's first partition (`pgsteward convert`): everything
            // before a period start; retention retires it once that start is past.
            Some(r) if r.lo == KEY_MIN && r.hi != KEY_MAX => notes.push(Note {
                partition: p.name.to_string(),
                kind: NoteKind::OffGrid,
                message: format!(
                    "holds every row before {} (first partition of a converted table); retired when that is past retention",
                    key_text(kt, tz, r.hi)
                ),
            }),
            Some(r) if !on_grid(interval, kt, tz, r) => notes.push(Note {
                partition: p.name.to_string(),
                kind: NoteKind::OffGrid,
                message: format!(
                    "range {} .. {} is not one {:?} period in {tz}; left alone",
                    key_text(kt, tz, r.lo),
                    key_text(kt, tz, r.hi),
                    interval
                )
                .to_lowercase(),
            }),
            Some(_) => {}
        }
    }

    // Retention first in the plan: it never overlaps what is created.
    for p in &state.partitions {
        let expired = match (p.range, cutoff) {
            (Some(r), Some(c)) => r.hi != KEY_MAX && r.hi <= c,
            _ => false,
        };
        let drop = expired && cfg.retention_mode == RetentionMode::Drop;
        let archive = expired && cfg.retention_mode == RetentionMode::Archive;
        if p.detach_pending {
            actions.push(Action::Retire {
                partition: p.name.clone(),
                how: DetachHow::Finalize,
                drop,
                archive,
                reason: "an earlier concurrent detach was interrupted".into(),
            });
            continue;
        }
        if !expired {
            continue;
        }
        if p.fk_referenced {
            notes.push(Note {
                partition: p.name.to_string(),
                kind: NoteKind::FkReferenced,
                message: "past retention but referenced by a foreign key; not detached or dropped"
                    .into(),
            });
            continue;
        }
        actions.push(Action::Retire {
            partition: p.name.clone(),
            how: if state.default.is_some() {
                DetachHow::Plain
            } else {
                DetachHow::Concurrently
            },
            drop,
            archive,
            reason: format!(
                "whole range ends before the retention cut-off {}",
                key_text(kt, tz, cutoff.unwrap_or(KEY_MIN))
            ),
        });
    }

    // Creation: from the oldest existing partition's period (gaps after
    // downtime) or the current one, through `premake` periods ahead.
    let now_day = key_day(KeyType::Timestamptz, tz, now.timestamp_micros());
    let current = period_start(interval, now_day);
    let mut last = current;
    for _ in 0..cfg.premake {
        last = next_period(interval, last);
    }
    let oldest = attached
        .iter()
        .filter_map(|p| p.range)
        .filter(|r| r.lo != KEY_MIN)
        .map(|r| r.lo)
        .min();
    let mut start = current;
    if let Some(lo) = oldest {
        let first = period_start(interval, key_day(kt, tz, lo));
        if first < current {
            start = first;
        }
    }
    let taken: Vec<&str> = state
        .partitions
        .iter()
        .map(|p| p.name.name.as_str())
        .chain(state.default.iter().map(|d| d.name.name.as_str()))
        .collect();
    let ranges: Vec<Range> = attached.iter().filter_map(|p| p.range).collect();
    let mut period = start;
    let mut count = 0;
    let mut planned: Vec<Action> = Vec::new();
    while period <= last {
        count += 1;
        if count > MAX_PERIODS_PER_PASS {
            notes.push(Note {
                partition: String::new(),
                kind: NoteKind::GapTruncated,
                message: format!("more than {MAX_PERIODS_PER_PASS} missing periods; the rest follow on later passes"),
            });
            break;
        }
        let range = period_range(interval, kt, tz, period);
        let reason = if period < current {
            CreateReason::Gap
        } else if period == current {
            CreateReason::Current
        } else {
            CreateReason::Premake
        };
        let expired = cutoff.is_some_and(|c| range.hi <= c);
        let mut pieces = uncovered(range, &ranges);
        // Nothing is filled before the oldest partition: when it is off the
        // grid (after an interval change) its period starts before it.
        if let (Some(lo), true) = (oldest, period < current) {
            pieces.retain(|p| p.hi > lo);
        }
        if !expired && !pieces.is_empty() {
            let label = period_label(interval, period);
            let whole = pieces == [range];
            for (n, piece) in pieces.iter().enumerate() {
                // A hole beside a hand-made partition is filled with exactly
                // the uncovered bounds, so nothing overlaps.
                let sfx = if whole {
                    suffix(interval, period)
                } else {
                    format!("{}_fill{}", suffix(interval, period), n + 1)
                };
                let name = partition_name(&state.table.name, &sfx);
                if taken.contains(&name.as_str()) {
                    notes.push(Note {
                        partition: name.clone(),
                        kind: NoteKind::NameTaken,
                        message: format!(
                            "the name is used by another partition; period {label} is not covered"
                        ),
                    });
                    continue;
                }
                if !whole {
                    notes.push(Note {
                        partition: name.clone(),
                        kind: NoteKind::Overlap,
                        message: format!(
                            "period {label} is partly covered by other partitions; this fills {} .. {}",
                            key_text(kt, tz, piece.lo),
                            key_text(kt, tz, piece.hi)
                        ),
                    });
                }
                planned.push(Action::Create {
                    partition: QualifiedName::new(state.table.schema.clone(), name),
                    period: label.clone(),
                    range: *piece,
                    reason,
                });
            }
        }
        period = next_period(interval, period);
    }
    // The current period first: it is the one inserts need now.
    planned.sort_by_key(|a| match a {
        Action::Create { reason, range, .. } => (*reason != CreateReason::Current, range.lo),
        _ => (true, 0),
    });
    let mut problems = Vec::new();
    if !planned.is_empty() && !state.owner_can_create {
        // Every new partition is given the parent's owner, which needs
        // CREATE on the schema; a partition left to the steward is not made.
        problems.push(format!(
            "{} partition(s) of {} are due but its owner {} may not create in schema {}, which \
             ALTER TABLE ... OWNER TO needs; none is made. GRANT CREATE ON SCHEMA {} TO {}",
            planned.len(),
            state.table,
            state.owner,
            state.table.schema,
            crate::pg::quote_ident(&state.table.schema),
            crate::pg::quote_ident(&state.owner)
        ));
        planned.clear();
    }
    actions.extend(planned);
    // Access of existing partitions follows the parent's, before anything
    // else runs (new partitions are made right).
    // Not of partitions this plan retires: they are detached (and dropped or
    // archived) first, so a repair would act on a table that is gone.
    let (repairs, access_problems) = super::access::plan(state);
    let retiring: Vec<QualifiedName> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Retire { partition, .. } => Some(partition.clone()),
            _ => None,
        })
        .collect();
    actions.extend(
        repairs
            .into_iter()
            .filter(|(partition, _)| !retiring.contains(partition))
            .map(|(partition, repairs)| Action::RepairAccess { partition, repairs }),
    );
    problems.extend(access_problems);

    if let Some(d) = &state.default {
        for c in &d.pgsteward_checks {
            actions.push(Action::DropDefaultCheck {
                constraint: c.clone(),
            });
        }
    }
    TablePlan {
        actions,
        notes,
        problems,
    }
}

/// The parts of `range` no range in `covered` covers, in key order.
pub fn uncovered(range: Range, covered: &[Range]) -> Vec<Range> {
    let mut over: Vec<Range> = covered
        .iter()
        .copied()
        .filter(|r| r.overlaps(&range))
        .collect();
    over.sort();
    let mut pieces = Vec::new();
    let mut lo = range.lo;
    for r in over {
        if r.lo > lo {
            pieces.push(Range { lo, hi: r.lo });
        }
        lo = lo.max(r.hi);
        if lo >= range.hi {
            return pieces;
        }
    }
    if lo < range.hi {
        pieces.push(Range { lo, hi: range.hi });
    }
    pieces
}

/// Whether `name` is what the plan calls a fill of the period `r` starts in.
fn is_fill(table: &str, name: &str, interval: Interval, kt: KeyType, tz: Tz, r: Range) -> bool {
    let start = period_start(interval, key_day(kt, tz, r.lo));
    let sfx = suffix(interval, start);
    (1..=16).any(|n| partition_name(table, &format!("{sfx}_fill{n}")) == name)
}

fn on_grid(interval: Interval, kt: KeyType, tz: Tz, r: Range) -> bool {
    if r.lo == KEY_MIN || r.hi == KEY_MAX {
        return false;
    }
    let start = period_start(interval, key_day(kt, tz, r.lo));
    period_range(interval, kt, tz, start) == r
}

/// Coverage of a table by its partitions, for `status` and the pass report.
#[derive(Debug, Clone, Serialize)]
pub struct Coverage {
    pub partitions: usize,
    /// Lowest and highest bound over all partitions, as text in the table's zone.
    pub covered_from: Option<String>,
    pub covered_to: Option<String>,
    /// Whole periods after the current one covered without a hole.
    pub periods_ahead: u32,
    /// Holes between the lowest and highest bound, as `from .. to`.
    pub gaps: Vec<String>,
    /// Uncovered parts of the current period and the `premake` periods after
    /// it, as `from .. to`: inserts there fail (or land in DEFAULT).
    pub holes: Vec<String>,
    /// The current period has no hole.
    pub current_covered: bool,
}

pub fn coverage(
    interval: Interval,
    kt: KeyType,
    tz: Tz,
    ranges: &[Range],
    now: DateTime<Utc>,
    premake: u32,
) -> Coverage {
    let mut sorted: Vec<Range> = ranges.to_vec();
    sorted.sort();
    let mut gaps = Vec::new();
    for w in sorted.windows(2) {
        if w[0].hi < w[1].lo {
            gaps.push(format!(
                "{} .. {}",
                key_text(kt, tz, w[0].hi),
                key_text(kt, tz, w[1].lo)
            ));
        }
    }
    let now_day = key_day(KeyType::Timestamptz, tz, now.timestamp_micros());
    let mut p = next_period(interval, period_start(interval, now_day));
    let mut ahead = 0;
    while ahead < 100_000 {
        let r = period_range(interval, kt, tz, p);
        if !sorted.iter().any(|s| s.lo <= r.lo && r.hi <= s.hi) {
            break;
        }
        ahead += 1;
        p = next_period(interval, p);
    }
    let current = period_start(interval, now_day);
    let mut holes = Vec::new();
    let mut current_covered = true;
    let mut q = current;
    for i in 0..=premake.min(1000) {
        for h in uncovered(period_range(interval, kt, tz, q), &sorted) {
            current_covered &= i != 0;
            holes.push(format!(
                "{} .. {}",
                key_text(kt, tz, h.lo),
                key_text(kt, tz, h.hi)
            ));
        }
        q = next_period(interval, q);
    }
    Coverage {
        partitions: ranges.len(),
        covered_from: sorted.first().map(|r| key_text(kt, tz, r.lo)),
        covered_to: sorted
            .iter()
            .map(|r| r.hi)
            .max()
            .map(|k| key_text(kt, tz, k)),
        periods_ahead: ahead,
        gaps,
        holes,
        current_covered,
    }
}

pub(crate) fn note_text(n: &Note) -> String {
    if n.partition.is_empty() {
        n.message.clone()
    } else {
        format!("{}: {}", n.partition, n.message)
    }
}

/// Coverage of `state`'s attached partitions plus `extra` ranges (created by this pass).
pub(crate) fn coverage_of(
    tcfg: &TableConfig,
    state: &TableState,
    extra: &[Range],
    now: DateTime<Utc>,
) -> Coverage {
    let ranges: Vec<Range> = state
        .partitions
        .iter()
        .filter(|p| !p.detach_pending)
        .filter_map(|p| p.range)
        .chain(extra.iter().copied())
        .collect();
    coverage(
        tcfg.interval,
        state.key_type,
        tcfg.timezone,
        &ranges,
        now,
        tcfg.premake,
    )
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
