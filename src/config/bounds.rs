//! The allowed range of every duration, size and count in the configuration.
//! A value outside its range is refused at load (exit 2) with the key, the
//! value and the range, rather than discovered in production: a
//! `lock_timeout` of a month queues all traffic behind one DDL statement,
//! `premake = 0` opens a window without a partition at every boundary.

use std::time::Duration;

use super::{ByteSize, ConfigError, FileConfig, HumanDuration, Reason};

const MS: Duration = Duration::from_millis(1);
const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
const MINUTE: Duration = secs(60);
const HOUR: Duration = secs(3600);
const DAY: Duration = secs(86_400);

/// Largest size anywhere: 1 PB.
const MAX_BYTES: u64 = 1 << 50;

fn duration(key: &str, v: HumanDuration, min: Duration, max: Duration) -> Result<(), ConfigError> {
    if v.0 < min || v.0 > max {
        let min_text = if min.is_zero() {
            "0s".to_string()
        } else {
            HumanDuration(min).to_string()
        };
        return Err(Reason::new(format!(
            "\"{v}\" is out of range; expected between {min_text} and {}",
            HumanDuration(max)
        ))
        .at(key));
    }
    Ok(())
}

fn count(key: &str, v: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if v < min || v > max {
        return Err(Reason::new(format!("{v} is out of range; expected {min}..={max}")).at(key));
    }
    Ok(())
}

fn size(key: &str, v: ByteSize, max: u64) -> Result<(), ConfigError> {
    if v.0 > max {
        return Err(Reason::new(format!(
            "\"{v}\" is out of range; expected at most {}",
            ByteSize(max)
        ))
        .at(key));
    }
    Ok(())
}

/// Every bounded key, in file order; the first value out of range is the error.
pub(super) fn check(c: &FileConfig) -> Result<(), ConfigError> {
    duration(
        "database.connect_timeout",
        c.database.connect_timeout,
        MS,
        10 * MINUTE,
    )?;
    let p = &c.partitions;
    duration("partitions.lock_timeout", p.lock_timeout, MS, MINUTE)?;
    count(
        "partitions.lock_retries",
        u64::from(p.lock_retries),
        1,
        1000,
    )?;
    count(
        "partitions.default_move_batch",
        u64::from(p.default_move_batch),
        1,
        100_000_000,
    )?;
    size("partitions.max_default_scan", p.max_default_scan, 1 << 40)?;
    // Sent as the build's lock_timeout, an int of milliseconds on the
    // server (at most 2147483647 ms, 24.8 days): beyond it every build fails.
    duration(
        "partitions.index_build_wait",
        p.index_build_wait,
        MS,
        24 * DAY,
    )?;
    if let Some(w) = p.standby_lock_wait {
        duration(
            "partitions.standby_lock_wait",
            w,
            Duration::ZERO,
            10 * MINUTE,
        )?;
    }
    count("partitions.parallelism", u64::from(p.parallelism), 1, 64)?;
    for (i, t) in p.tables.iter().enumerate() {
        count(
            &format!("partitions.tables[{i}].premake"),
            u64::from(t.premake),
            1,
            500,
        )?;
        if let Some(r) = t.retention {
            // 100 years: beyond it a cut-off predates every key there is.
            if r.months > 1200 || r.days > 36_500 {
                return Err(Reason::new(format!(
                    "\"{r}\" is out of range; expected at most 100 years"
                ))
                .at(format!("partitions.tables[{i}].retention")));
            }
        }
    }
    duration("lag.max_delay", c.lag.max_delay, MS, 7 * DAY)?;
    duration("lag.query_timeout", c.lag.query_timeout, MS, 10 * MINUTE)?;
    size("lag.max_bytes", c.lag.max_bytes, MAX_BYTES)?;
    let u = &c.upgrade;
    size("upgrade.catchup_max_bytes", u.catchup_max_bytes, MAX_BYTES)?;
    duration("upgrade.pause_timeout", u.pause_timeout, MS, 10 * MINUTE)?;
    duration(
        "upgrade.retire_after",
        u.retire_after,
        Duration::ZERO,
        365 * DAY,
    )?;
    duration("upgrade.step_timeout", u.step_timeout, MS, 30 * DAY)?;
    if let Some(rds) = &u.rds {
        duration("upgrade.rds.poll_interval", rds.poll_interval, MS, HOUR)?;
    }
    if let Some(a) = &c.archive {
        use super::archive::{MAX_PART, MIN_PART};
        size("archive.part_size", a.part_size, MAX_PART)?;
        if a.part_size.0 < MIN_PART {
            return Err(Reason::new(format!(
                "\"{}\" is out of range; S3 parts are at least {}",
                a.part_size,
                ByteSize(MIN_PART)
            ))
            .at("archive.part_size"));
        }
        count(
            "archive.uploads_in_flight",
            u64::from(a.uploads_in_flight),
            1,
            16,
        )?;
        duration("archive.request_timeout", a.request_timeout, MS, HOUR)?;
        duration(
            "archive.connect_timeout",
            a.connect_timeout,
            MS,
            10 * MINUTE,
        )?;
        size(
            "archive.max_partition_size",
            a.max_partition_size,
            MAX_BYTES,
        )?;
    }
    let cut = &c.cutover;
    count(
        "cutover.max_waiting_clients",
        cut.max_waiting_clients,
        0,
        1_000_000,
    )?;
    duration("cutover.max_client_wait", cut.max_client_wait, MS, HOUR)?;
    Ok(())
}
