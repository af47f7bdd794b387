//! Which partitions a capacity run sizes exactly, and what stands in for the
//! ones it does not: pure, so the budget's choices are unit-tested.
//!
//! `relpages` (kept by VACUUM and ANALYZE) sizes a partition from the catalog
//! without opening it; the size functions open the heap, TOAST and every
//! index, which at 10,000 never-analysed partitions costs seconds. So the
//! partitions whose statistics cannot be trusted are sized exactly in order
//! of what the forecast leans on most, the open, recent and DEFAULT ones
//! first (always), then the never-analysed closed ones newest first, until
//! the time budget is spent. A never-analysed partition left over is
//! estimated from its live rows (the cumulative statistics count them per
//! insert) at the bytes per row of the table's measured partitions: never a
//! zero that would read as a period with no growth.

use std::time::Duration;

/// The time the exact sizes of never-analysed closed partitions may take in
/// one run (the required ones are sized whatever it costs).
pub const EXACT_SIZE_BUDGET: Duration = Duration::from_millis(500);

/// Partitions sized per statement: small enough that the budget is checked
/// often, large enough that round trips do not dominate.
pub const EXACT_SIZE_CHUNK: usize = 400;

/// One partition whose statistics are not enough on their own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub oid: u32,
    /// Open, recent or DEFAULT: statistics lag its writes; always sized.
    pub required: bool,
    /// The upper end of its range (key space), for newest first.
    pub hi: i64,
}

/// The order to size `candidates` in: required first, then newest first.
pub fn sizing_order(mut candidates: Vec<Candidate>) -> Vec<u32> {
    candidates.sort_by(|a, b| b.required.cmp(&a.required).then(b.hi.cmp(&a.hi)));
    candidates.into_iter().map(|c| c.oid).collect()
}

/// One partition of a table as the estimate sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sized {
    pub bytes: i64,
    pub live_tuples: i64,
    /// Measured with the size functions (or from trustworthy statistics).
    pub trusted: bool,
}

/// Bytes for each untrusted partition of one table from its live rows, at
/// the bytes per row of the trusted ones that hold rows; `None` where no
/// such ratio exists (no trusted partition with rows) or the partition's
/// rows are unknown, and for trusted partitions.
pub fn estimate_from_rows(parts: &[Sized]) -> Vec<Option<i64>> {
    let (bytes, rows) = parts
        .iter()
        .filter(|p| p.trusted && p.live_tuples > 0)
        .fold((0f64, 0f64), |(b, r), p| {
            (b + p.bytes as f64, r + p.live_tuples as f64)
        });
    let per_row = (rows > 0.0).then(|| bytes / rows);
    parts
        .iter()
        .map(|p| match per_row {
            Some(k) if !p.trusted && p.live_tuples >= 0 => {
                Some((k * p.live_tuples as f64).round() as i64)
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_first_then_newest() {
        let c = |oid, required, hi| Candidate { oid, required, hi };
        let order = sizing_order(vec![
            c(1, false, 10),
            c(2, true, 5),
            c(3, false, 30),
            c(4, true, 50),
        ]);
        assert_eq!(order, vec![4, 2, 3, 1]);
    }

    #[test]
    fn untrusted_partitions_take_the_measured_bytes_per_row() {
        let s = |bytes, live_tuples, trusted| Sized {
            bytes,
            live_tuples,
            trusted,
        };
        let est = estimate_from_rows(&[
            s(1000, 10, true),
            s(3000, 30, true),
            s(0, 20, false),
            s(0, 0, false),
            s(500, 0, true),
        ]);
        assert_eq!(est, vec![None, None, Some(2000), Some(0), None]);
        // Nothing measured with rows: no ratio, no made-up number.
        assert_eq!(
            estimate_from_rows(&[s(8192, 0, true), s(0, 5, false)]),
            vec![None, None]
        );
    }
}
