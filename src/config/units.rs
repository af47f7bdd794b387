//! Human-written quantities in the configuration: durations (`"200ms"`, `"30s"`),
//! calendar spans for retention (`"13 months"`), byte sizes (`"64MB"`) and cron
//! schedules with crontab semantics.
//!
//! Every type deserializes from a string (sizes and durations also from a bare
//! integer meaning bytes / seconds) and its error says what was expected, so
//! figment can report the file and key next to it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds};
use croner::Cron;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Why a human-written quantity is refused; each says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("{input:?} is not {expected}")]
    NotA {
        input: String,
        expected: &'static str,
    },
    #[error("{input:?} has no unit; expected {expected}")]
    NoUnit {
        input: String,
        expected: &'static str,
    },
    #[error("{input:?} is too large; expected {expected}")]
    TooLarge {
        input: String,
        expected: &'static str,
    },
    #[error("{input:?} would drop every partition; retention must be at least one day")]
    ZeroRetention { input: String },
    #[error("{input:?} has {fields} fields; expected {SCHEDULE_EXPECTED}")]
    ScheduleFields { input: String, fields: usize },
    #[error("{input:?} is not {SCHEDULE_EXPECTED}: {reason}")]
    Schedule { input: String, reason: String },
    #[error("{input:?} never fires")]
    NeverFires { input: String },
}

/// A decimal number as written, `"0.5"` = 5 tenths: kept exact, so that
/// scaling by a unit rounds once, the way PostgreSQL rounds a fractional
/// setting to its unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decimal {
    whole: u64,
    frac: u64,
    /// Digits after the point (at most 9, so 10^digits fits easily).
    frac_digits: u32,
}

impl Decimal {
    /// `self * unit`, rounded half up to a whole number; `None` on overflow.
    fn scaled(self, unit: u64) -> Option<u64> {
        let whole = self.whole.checked_mul(unit)?;
        let den = 10u128.pow(self.frac_digits);
        let frac = (u128::from(self.frac) * u128::from(unit) + den / 2) / den;
        whole.checked_add(u64::try_from(frac).ok()?)
    }

    fn is_whole(self) -> bool {
        self.frac == 0
    }
}

/// Splits `"13 months"` / `"200ms"` / `"0.5s"` into (13, "months").
fn split_number(input: &str) -> Option<(Decimal, String)> {
    let s = input.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let whole_digits = &s[..digits_end];
    let mut rest = &s[digits_end..];
    let mut frac_digits = "";
    if let Some(after) = rest.strip_prefix('.') {
        let end = after
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after.len());
        frac_digits = &after[..end];
        rest = &after[end..];
        if frac_digits.is_empty() || frac_digits.len() > 9 {
            return None;
        }
    }
    if whole_digits.is_empty() && frac_digits.is_empty() {
        return None;
    }
    let whole = if whole_digits.is_empty() {
        0
    } else {
        whole_digits.parse().ok()?
    };
    let frac = if frac_digits.is_empty() {
        0
    } else {
        frac_digits.parse().ok()?
    };
    let number = Decimal {
        whole,
        frac,
        frac_digits: frac_digits.len() as u32,
    };
    Some((number, rest.trim().to_ascii_lowercase()))
}

/// A wall-clock duration: `"200ms"`, `"5s"`, `"10m"`, `"2h"`, `"1d"`. Combinations
/// such as `"1m30s"` are not accepted (write `"90s"`), nor is a number without
/// a unit: `200` could mean milliseconds as well as seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

pub const DURATION_EXPECTED: &str =
    "a duration with a unit such as \"200ms\", \"30s\", \"5m\", \"2h\" or \"1d\"";

impl FromStr for HumanDuration {
    type Err = UnitError;
    /// Fractions as PostgreSQL takes them (`"0.5s"`, `"1.5h"`), rounded to
    /// whole milliseconds as it rounds a millisecond setting.
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let input = || s.to_string();
        let expected = DURATION_EXPECTED;
        let (n, unit) = split_number(s).ok_or_else(|| UnitError::NotA {
            input: input(),
            expected,
        })?;
        let millis_per_unit: u64 = match unit.as_str() {
            "" => {
                return Err(UnitError::NoUnit {
                    input: input(),
                    expected,
                })
            }
            "ms" | "msec" | "millisecond" | "milliseconds" => 1,
            "s" | "sec" | "secs" | "second" | "seconds" => 1000,
            "m" | "min" | "mins" | "minute" | "minutes" => 60_000,
            "h" | "hour" | "hours" => 3_600_000,
            "d" | "day" | "days" => 86_400_000,
            _ => {
                return Err(UnitError::NotA {
                    input: input(),
                    expected,
                })
            }
        };
        let ms = n
            .scaled(millis_per_unit)
            .ok_or_else(|| UnitError::TooLarge {
                input: input(),
                expected,
            })?;
        Ok(HumanDuration(Duration::from_millis(ms)))
    }
}

impl fmt::Display for HumanDuration {
    /// In the largest unit that shows the value exactly: `1m`, `90s`, `200ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
        ] {
            if ms >= size && ms % size == 0 {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

/// A calendar span for retention: `"13 months"`, `"90 days"`, `"8 weeks"`, `"2 years"`.
/// Months and years are calendar months (a partition is old when its whole
/// range ends before `now - span` in the table's zone), not 30-day blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CalendarSpan {
    pub months: u32,
    pub days: u32,
}

pub const SPAN_EXPECTED: &str =
    "a calendar span such as \"13 months\", \"90 days\", \"8 weeks\" or \"2 years\"";

impl FromStr for CalendarSpan {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let err = || UnitError::NotA {
            input: s.to_string(),
            expected: SPAN_EXPECTED,
        };
        let (n, unit) = split_number(s).ok_or_else(err)?;
        // Calendar units do not divide: "1.5 months" has no one meaning.
        if !n.is_whole() {
            return Err(err());
        }
        let n = u32::try_from(n.whole).map_err(|_| err())?;
        let span = match unit.as_str() {
            "d" | "day" | "days" => CalendarSpan { months: 0, days: n },
            "w" | "week" | "weeks" => CalendarSpan {
                months: 0,
                days: n.checked_mul(7).ok_or_else(err)?,
            },
            "mon" | "month" | "months" => CalendarSpan { months: n, days: 0 },
            "y" | "year" | "years" => CalendarSpan {
                months: n.checked_mul(12).ok_or_else(err)?,
                days: 0,
            },
            _ => return Err(err()),
        };
        if span.months == 0 && span.days == 0 {
            return Err(UnitError::ZeroRetention {
                input: s.to_string(),
            });
        }
        Ok(span)
    }
}

impl fmt::Display for CalendarSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.months, self.days) {
            (m, 0) => write!(f, "{m} months"),
            (0, d) => write!(f, "{d} days"),
            (m, d) => write!(f, "{m} months {d} days"),
        }
    }
}

/// A byte count: `"64MB"`, `"512kB"`, `"1GB"`, `"4096"`. Units are 1024-based, as in
/// PostgreSQL's own settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

pub const SIZE_EXPECTED: &str = "a size such as \"64MB\", \"512kB\", \"1GB\" or a number of bytes";

impl FromStr for ByteSize {
    type Err = UnitError;
    /// Fractions as PostgreSQL takes them (`"1.5GB"`), rounded to whole bytes.
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let err = || UnitError::NotA {
            input: s.to_string(),
            expected: SIZE_EXPECTED,
        };
        let (n, unit) = split_number(s).ok_or_else(err)?;
        let mult: u64 = match unit.as_str() {
            "" | "b" | "bytes" if n.is_whole() => 1,
            "kb" | "k" | "kib" => 1 << 10,
            "mb" | "m" | "mib" => 1 << 20,
            "gb" | "g" | "gib" => 1 << 30,
            "tb" | "t" | "tib" => 1 << 40,
            _ => return Err(err()),
        };
        n.scaled(mult)
            .map(ByteSize)
            .ok_or_else(|| UnitError::TooLarge {
                input: s.to_string(),
                expected: SIZE_EXPECTED,
            })
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= 1 << 30 && b % (1 << 30) == 0 {
            write!(f, "{}GB", b >> 30)
        } else if b >= 1 << 20 && b % (1 << 20) == 0 {
            write!(f, "{}MB", b >> 20)
        } else if b >= 1 << 10 && b % (1 << 10) == 0 {
            write!(f, "{}kB", b >> 10)
        } else {
            write!(f, "{b} bytes")
        }
    }
}

/// A cron schedule with crontab semantics: the standard 5 fields (minute hour
/// day-of-month month day-of-week), or 6 with seconds first; 0 and 7 are Sunday;
/// when both day-of-month and day-of-week are restricted a day matching either
/// fires (Vixie cron's OR). Evaluated in UTC.
///
/// Croner is used rather than the `cron` crate because `cron` rejects 5 fields,
/// numbers weekdays from 1 = Sunday and ANDs the two day fields, so a naive
/// conversion would run weekday jobs a day off.
#[derive(Clone)]
pub struct Schedule {
    pattern: String,
    cron: Cron,
}

pub const SCHEDULE_EXPECTED: &str =
    "a cron expression with 5 fields (\"0 * * * *\") or 6 with seconds first (\"0 */5 * * * *\")";

impl Schedule {
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The first fire time strictly after `after`, or `None` when the pattern
    /// can never fire again (e.g. 30 February).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&after, false).ok()
    }
}

impl FromStr for Schedule {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let fields = s.split_whitespace().count();
        if !(5..=6).contains(&fields) && !s.trim().starts_with('@') {
            return Err(UnitError::ScheduleFields {
                input: s.to_string(),
                fields,
            });
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .dom_and_dow(false)
            .build();
        let cron = parser.parse(s).map_err(|e| UnitError::Schedule {
            input: s.to_string(),
            reason: e.to_string(),
        })?;
        // A pattern that never fires (30 February) is a mistake, not a schedule.
        if cron.find_next_occurrence(&Utc::now(), false).is_err() {
            return Err(UnitError::NeverFires {
                input: s.to_string(),
            });
        }
        Ok(Schedule {
            pattern: s.trim().to_string(),
            cron,
        })
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?})", self.pattern)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
    }
}

/// Deserializes any of the types above from a string (or, for sizes, an
/// integer; for durations an integer is refused with the expected form).
macro_rules! string_serde {
    ($ty:ty, $expected:expr, $allow_int:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expected)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        v.parse().map_err(E::custom)
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$ty, E> {
                        if $allow_int {
                            v.to_string().parse().map_err(E::custom)
                        } else if $expected == DURATION_EXPECTED {
                            Err(E::custom(format!(
                                "{v} has no unit; expected {}",
                                $expected
                            )))
                        } else {
                            Err(E::invalid_type(de::Unexpected::Unsigned(v), &self))
                        }
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$ty, E> {
                        match u64::try_from(v) {
                            Ok(u) => self.visit_u64(u),
                            Err(_) => Err(E::invalid_type(de::Unexpected::Signed(v), &self)),
                        }
                    }
                }
                d.deserialize_any(V)
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

string_serde!(HumanDuration, DURATION_EXPECTED, false);
string_serde!(CalendarSpan, SPAN_EXPECTED, false);
string_serde!(ByteSize, SIZE_EXPECTED, true);
string_serde!(Schedule, SCHEDULE_EXPECTED, false);

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Timelike};

    #[test]
    fn durations() {
        assert_eq!(
            "200ms".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(200)
        );
        assert_eq!(
            "30s".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(30)
        );
        assert_eq!(
            "5 min".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(300)
        );
        assert_eq!(
            "2h".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(7200)
        );
        assert!("fast".parse::<HumanDuration>().is_err());
        assert!("200"
            .parse::<HumanDuration>()
            .unwrap_err()
            .to_string()
            .contains("no unit"));
        assert!("999999999999999999d"
            .parse::<HumanDuration>()
            .unwrap_err()
            .to_string()
            .contains("too large"));
        // Fractions as PostgreSQL accepts them, rounded to milliseconds.
        for (text, ms) in [
            ("0.5s", 500),
            ("1.5h", 5_400_000),
            (".25s", 250),
            ("0.4ms", 0),
            ("2.5 min", 150_000),
        ] {
            assert_eq!(
                text.parse::<HumanDuration>().unwrap().0,
                Duration::from_millis(ms),
                "{text}"
            );
        }
        for bad in ["0.s", "1..5s", "0.1234567891s", ".s", "1.5.5s"] {
            assert!(bad.parse::<HumanDuration>().is_err(), "{bad}");
        }
        assert_eq!(HumanDuration(Duration::from_secs(60)).to_string(), "1m");
        assert_eq!(HumanDuration(Duration::from_secs(90)).to_string(), "90s");
        assert_eq!(
            HumanDuration(Duration::from_secs(30 * 86_400)).to_string(),
            "30d"
        );
        assert!("10 fortnights".parse::<HumanDuration>().is_err());
        assert_eq!(
            HumanDuration(Duration::from_millis(200)).to_string(),
            "200ms"
        );
    }

    #[test]
    fn spans() {
        assert_eq!(
            "13 months".parse::<CalendarSpan>().unwrap(),
            CalendarSpan {
                months: 13,
                days: 0
            }
        );
        assert_eq!(
            "2 years".parse::<CalendarSpan>().unwrap(),
            CalendarSpan {
                months: 24,
                days: 0
            }
        );
        assert_eq!(
            "8 weeks".parse::<CalendarSpan>().unwrap(),
            CalendarSpan {
                months: 0,
                days: 56
            }
        );
        assert!("0 days".parse::<CalendarSpan>().is_err());
        assert!("13".parse::<CalendarSpan>().is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!("64MB".parse::<ByteSize>().unwrap().0, 64 << 20);
        assert_eq!("512kB".parse::<ByteSize>().unwrap().0, 512 << 10);
        assert_eq!("4096".parse::<ByteSize>().unwrap().0, 4096);
        assert!("lots".parse::<ByteSize>().is_err());
        assert_eq!("1.5GB".parse::<ByteSize>().unwrap().0, 3 << 29);
        assert!("1.5".parse::<ByteSize>().is_err(), "half a byte");
        assert!("1.5 months".parse::<CalendarSpan>().is_err());
        assert_eq!(ByteSize(16 << 20).to_string(), "16MB");
    }

    fn next(p: &str, from: DateTime<Utc>) -> DateTime<Utc> {
        p.parse::<Schedule>().unwrap().next_after(from).unwrap()
    }

    #[test]
    fn five_field_crontab_semantics() {
        // Friday 2026-11-27 04:56 UTC.
        let now = Utc.with_ymd_and_hms(2026, 11, 27, 4, 56, 10).unwrap();
        assert_eq!(
            next("0 * * * *", now),
            Utc.with_ymd_and_hms(2026, 11, 27, 5, 0, 0).unwrap()
        );
        assert_eq!(
            next("*/1 * * * *", now),
            Utc.with_ymd_and_hms(2026, 11, 27, 4, 57, 0).unwrap()
        );
        // 0 and 7 both mean Sunday (2026-11-29).
        let sunday = Utc.with_ymd_and_hms(2026, 11, 29, 3, 0, 0).unwrap();
        assert_eq!(next("0 3 * * 0", now), sunday);
        assert_eq!(next("0 3 * * 7", now), sunday);
        // 1 is Monday, not Sunday as in the `cron` crate.
        assert_eq!(next("0 3 * * 1", now).weekday(), chrono::Weekday::Mon);
        // Day-of-month OR day-of-week: the 1st of a month or any Monday.
        let t = next("0 0 1 * 1", now);
        assert_eq!(
            (t.month(), t.day()),
            (11, 30),
            "the Monday comes before December 1st"
        );
        let t = next(
            "0 0 1 * 1",
            Utc.with_ymd_and_hms(2026, 11, 30, 1, 0, 0).unwrap(),
        );
        assert_eq!((t.month(), t.day()), (12, 1));
    }

    #[test]
    fn six_field_with_seconds() {
        let now = Utc.with_ymd_and_hms(2026, 11, 27, 4, 56, 10).unwrap();
        let t = next("30 */5 * * * *", now);
        assert_eq!((t.minute(), t.second()), (0, 30));
    }

    #[test]
    fn bad_schedules() {
        assert!("* * *".parse::<Schedule>().is_err());
        assert!("61 * * * *".parse::<Schedule>().is_err());
        assert!("0 0 30 2 *".parse::<Schedule>().is_err());
        assert!("0 0 0 0 0 0 0 0".parse::<Schedule>().is_err());
    }
}
