//! Property test of the loader: random and extreme values for every key
//! never panic it, and every refusal names the key.

use figment::providers::{Format, Toml};
use figment::Figment;

use super::from_figment;

/// `(section, key)`; the section is written as a TOML header.
const KEYS: &[(&str, &str)] = &[
    ("database", "connect_timeout"),
    ("partitions", "schedule"),
    ("partitions", "lock_timeout"),
    ("partitions", "lock_retries"),
    ("partitions", "default_move_batch"),
    ("partitions", "max_default_scan"),
    ("partitions", "parallelism"),
    ("[partitions.tables]", "interval"),
    ("[partitions.tables]", "premake"),
    ("[partitions.tables]", "retention"),
    ("[partitions.tables]", "retention_mode"),
    ("[partitions.tables]", "timezone"),
    ("lag", "schedule"),
    ("lag", "max_bytes"),
    ("lag", "max_delay"),
    ("lag", "query_timeout"),
    ("upgrade", "catchup_max_bytes"),
    ("upgrade", "pause_timeout"),
    ("upgrade", "retire_after"),
    ("upgrade", "step_timeout"),
    ("upgrade.rds", "poll_interval"),
    ("http", "listen"),
];

const UNITS: &[&str] = &[
    "",
    "ms",
    "s",
    "m",
    "h",
    "d",
    " days",
    " months",
    " weeks",
    " years",
    "kB",
    "MB",
    "GB",
    "TB",
    "b",
    " fortnights",
    "µs",
    "s ",
    "1s",
];

const EXTREMES: &[&str] = &[
    "0",
    "1",
    "-1",
    "9223372036854775807",
    "-9223372036854775808",
    "4294967296",
    "18446744073709551615",
    "0.5",
    "-1.5",
    "1e300",
    "nan",
    "inf",
    "true",
    "[1, 2]",
    "{ a = 1 }",
    "\"\"",
    "\" \"",
    "\"0s\"",
    "\"0ms\"",
    "\"-5s\"",
    "\"1.5s\"",
    "\"1m30s\"",
    "\"999999999999999999d\"",
    "\"18446744073709551615ms\"",
    "\"18446744073709551615s\"",
    "\"99999999999999999999999\"",
    "\"4294967296 months\"",
    "\"∞\"",
    "\"* * * * * * * *\"",
    "\"Mars/Olympus\"",
    "\"300.1.1.1:80\"",
];

fn random_value(rng: &mut fastrand::Rng) -> String {
    match rng.u8(0..4) {
        0 => EXTREMES[rng.usize(0..EXTREMES.len())].to_string(),
        1 => rng.i64(..).to_string(),
        2 => {
            let digits: String = (0..rng.usize(1..25))
                .map(|_| char::from(b'0' + rng.u8(0..10)))
                .collect();
            format!("\"{digits}{}\"", UNITS[rng.usize(0..UNITS.len())])
        }
        _ => format!(
            "\"{}{}\"",
            rng.u64(0..100_000),
            UNITS[rng.usize(0..UNITS.len())]
        ),
    }
}

fn toml_with(section: &str, key: &str, value: &str) -> String {
    let mut s = String::from("[database]\nprimary = \"postgres://u@127.0.0.1:5432/db\"\n");
    match section {
        "database" => s.push_str(&format!("{key} = {value}\n")),
        "[partitions.tables]" => s.push_str(&format!(
            "[[partitions.tables]]\ntable = \"public.t\"\n{key} = {value}\n"
        )),
        "upgrade.rds" => s.push_str(&format!(
            "[upgrade]\nprovider = \"rds\"\n[upgrade.rds]\nsource_instance = \"x\"\n{key} = {value}\n"
        )),
        other => s.push_str(&format!("[{other}]\n{key} = {value}\n")),
    }
    s
}

#[test]
fn random_and_extreme_values_never_panic_and_errors_name_the_key() {
    let mut rng = fastrand::Rng::with_seed(0x7067_7374);
    for &(section, key) in KEYS {
        for i in 0..(EXTREMES.len() + 150) {
            let value = match EXTREMES.get(i) {
                Some(v) => v.to_string(),
                None => random_value(&mut rng),
            };
            let toml = toml_with(section, key, &value);
            let loaded = std::panic::catch_unwind(|| {
                from_figment(Figment::new().merge(Toml::string(&toml)), None)
            });
            match loaded {
                Err(_) => panic!("the loader panicked on {key} = {value}"),
                Ok(Err(e)) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains(key),
                        "{key} = {value}: the error does not name the key: {msg}"
                    );
                }
                Ok(Ok(_)) => {}
            }
        }
    }
}

#[test]
fn bounds_and_unit_less_durations() {
    for (toml_tail, key, expect) in [
        (
            "[partitions]\nlock_timeout = \"30d\"",
            "partitions.lock_timeout",
            "between 1ms and 1m",
        ),
        (
            "[partitions]\nlock_timeout = 200",
            "partitions.lock_timeout",
            "no unit",
        ),
        (
            "[partitions]\nlock_timeout = \"200\"",
            "partitions.lock_timeout",
            "no unit",
        ),
        (
            "[database]\nconnect_timeout = \"0s\"",
            "database.connect_timeout",
            "out of range",
        ),
        (
            "[[partitions.tables]]\ntable = \"t\"\npremake = 0",
            "partitions.tables[0].premake",
            "1..=500",
        ),
        (
            "[lag]\nmax_delay = \"999999999999999999d\"",
            "lag.max_delay",
            "too large",
        ),
        (
            "[database]\nsubscribers_have_pgsteward_schema = [\"all\", \"\"]",
            "database.subscribers_have_pgsteward_schema[1]",
            "1 to 63 bytes",
        ),
        (
            "[database]\nsubscribers_have_pgsteward_schema = [\"all\", \"all\"]",
            "database.subscribers_have_pgsteward_schema[1]",
            "listed twice",
        ),
        (
            "[database]\nsubscribers_have_pgsteward_schema = true",
            "subscribers_have_pgsteward_schema",
            "sequence",
        ),
    ] {
        let toml = if toml_tail.starts_with("[database]") {
            format!("{toml_tail}\nprimary = \"postgres://u@h/db\"\n")
        } else {
            format!("[database]\nprimary = \"postgres://u@h/db\"\n{toml_tail}\n")
        };
        let err = from_figment(Figment::new().merge(Toml::string(&toml)), None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(key) && err.contains(expect), "{toml}: {err}");
    }
}

#[test]
fn declared_publications_load_and_default_to_none() {
    let toml = "[database]\nprimary = \"postgres://u@h/db\"\nsubscribers_have_pgsteward_schema = [\"all_tables\", \"Odd Name\"]\n";
    let cfg = from_figment(Figment::new().merge(Toml::string(toml)), None).unwrap();
    assert_eq!(
        cfg.cluster.database.subscribers_have_pgsteward_schema,
        ["all_tables", "Odd Name"]
    );
    let none = "[database]\nprimary = \"postgres://u@h/db\"\n";
    let cfg = from_figment(Figment::new().merge(Toml::string(none)), None).unwrap();
    assert!(cfg
        .cluster
        .database
        .subscribers_have_pgsteward_schema
        .is_empty());
}
