//! The final position of the fenced old primary (final_sync's first half)
//! and LSNs as numbers.

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::upgrade::error::UpgradeError;
use crate::upgrade::record::Step;
use crate::upgrade::sql::{final_flush, ROLLBACK};

/// The final position of the fenced old primary, flushed: terminates what
/// is left (a backend still authenticating at the fence), then commits one
/// transaction that writes WAL (the guard row's step) with
/// `synchronous_commit = local`: its commit flushes all WAL before it,
/// asynchronous commits included. (A transaction that writes no WAL, say
/// `SELECT txid_current()`, commits without a flush.) Then reads the flush
/// and insert positions. One round trip.
/// Without a guard row (a saga driven without the database guard), a
/// temporary table's catalog rows are the WAL the commit must flush.
pub(crate) async fn flushed_position(
    old: &Client,
    ours: &[i32],
    guarded_upgrade: Option<&str>,
) -> Result<Result<(String, i64), UpgradeError>, tokio_postgres::Error> {
    let sql = final_flush(ours, guarded_upgrade);
    let msgs = match old.simple_query(&sql).await {
        Ok(msgs) => msgs,
        Err(e) => {
            // A failure inside the explicit transaction leaves the session in
            // an aborted block; the roll back reuses this session to unfence.
            let _ = old.batch_execute(ROLLBACK).await;
            return Err(e);
        }
    };
    let rows: Vec<Option<&str>> = msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0)),
            _ => None,
        })
        .collect();
    let [Some(before), Some(ended), Some(flush)] = rows[..] else {
        return Ok(Err(UpgradeError::Step {
            step: Step::FinalSync,
            detail: format!("unexpected answer to the final flush: {rows:?}"),
        }));
    };
    // Everything inserted before (the last acknowledged commit included) must
    // be flushed, or the guard row was not there to write.
    match (parse_lsn(before), parse_lsn(flush)) {
        (Some(b), Some(f)) if f >= b => Ok(Ok((flush.to_string(), ended.parse().unwrap_or(0)))),
        _ => Ok(Err(UpgradeError::Step {
            step: Step::FinalSync,
            detail: format!(
                "the old primary's flush position {flush} is behind its insert position {before} after the final commit"
            ),
        })),
    }
}

/// `X/Y` (hex) as a number.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_compare_as_numbers() {
        assert!(parse_lsn("1/0") > parse_lsn("0/FFFFFFFF"));
        assert_eq!(parse_lsn("0/16B3748"), Some(0x16B3748));
        assert_eq!(parse_lsn("bad"), None);
    }
}
