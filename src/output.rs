//! Rendering for status-like commands: aligned text tables for people, JSON
//! for scripts. JSON goes to stdout as one document; text likewise.

use serde::Serialize;

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        // Our report types serialize infallibly; a failure here is a bug worth seeing.
        Err(e) => eprintln!("error: cannot render JSON: {e}"),
    }
}

/// A text table with a header row, columns padded to the widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// Bytes for a person, 1024-based as PostgreSQL's `pg_size_pretty` is, one
/// decimal below 10 units: `512B`, `8.6MiB`, `64MiB`, `1.2GiB`. No space, so a
/// table column stays one word. JSON carries the exact count.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value < 9.95 {
        format!("{value:.1}{}", UNITS[unit])
    } else {
        format!("{value:.0}{}", UNITS[unit])
    }
}

/// Seconds for a person: `0.4s`, `12s`, `5m03s`, `2h05m`, `3d04h`. No space.
pub fn human_seconds(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "?".into();
    }
    if seconds < 10.0 {
        return format!("{seconds:.1}s");
    }
    let s = seconds.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A [`std::time::Duration`] for a person, as [`human_seconds`].
pub fn human_duration(d: std::time::Duration) -> String {
    human_seconds(d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_seconds_read_as_a_person_would_write_them() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(1023), "1023B");
        assert_eq!(human_bytes(8_974_840), "8.6MiB");
        assert_eq!(human_bytes(64 << 20), "64MiB");
        assert_eq!(human_bytes((1 << 30) + (1 << 28)), "1.2GiB");
        assert_eq!(human_seconds(0.0), "0.0s");
        assert_eq!(human_seconds(61.2), "1m01s");
        assert_eq!(human_seconds(12.4), "12s");
        assert_eq!(human_seconds(7500.0), "2h05m");
        assert_eq!(human_seconds(3.0 * 86_400.0 + 4.0 * 3600.0), "3d04h");
        assert_eq!(human_seconds(f64::NAN), "?");
    }

    #[test]
    fn table_aligns_columns() {
        let t = super::table(&["a", "bb"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "a    bb\nxxx  y\n");
    }
}
