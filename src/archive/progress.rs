//! Progress of a long transfer in the logs: bytes, rate and ETA, at most
//! every few seconds.

use std::time::{Duration, Instant};

const EVERY: Duration = Duration::from_secs(5);

pub(crate) struct Progress {
    what: &'static str,
    key: String,
    started: Instant,
    last: Instant,
    /// Expected total (the partition's size on disk: text COPY is usually
    /// within a factor of two of it), 0 when unknown.
    estimate: u64,
}

impl Progress {
    pub(crate) fn new(what: &'static str, key: &str, estimate: u64) -> Progress {
        let now = Instant::now();
        Progress {
            what,
            key: key.to_string(),
            started: now,
            last: now,
            estimate,
        }
    }

    /// Logs when it is time to.
    pub(crate) fn tick(&mut self, bytes: u64) {
        if self.last.elapsed() < EVERY {
            return;
        }
        self.last = Instant::now();
        let (rate, eta) = rate_and_eta(bytes, self.started.elapsed(), self.estimate);
        tracing::info!(
            key = %self.key,
            bytes,
            mib_per_s = format!("{:.1}", rate / (1 << 20) as f64),
            eta_s = eta.map(|d| d.as_secs()),
            "{} in progress", self.what
        );
    }

    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// Bytes per second so far, and the time left to reach `estimate` at that
/// rate (none when unknown or already past it).
pub(crate) fn rate_and_eta(
    bytes: u64,
    elapsed: Duration,
    estimate: u64,
) -> (f64, Option<Duration>) {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let rate = bytes as f64 / secs;
    let eta = (estimate > bytes && rate > 0.0)
        .then(|| Duration::from_secs_f64((estimate - bytes) as f64 / rate));
    (rate, eta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_eta_of_a_transfer() {
        let (rate, eta) = rate_and_eta(100, Duration::from_secs(10), 300);
        assert!((rate - 10.0).abs() < 1e-9);
        assert_eq!(eta, Some(Duration::from_secs(20)));
        assert_eq!(rate_and_eta(400, Duration::from_secs(10), 300).1, None);
        assert_eq!(rate_and_eta(0, Duration::ZERO, 0).1, None);
    }
}
