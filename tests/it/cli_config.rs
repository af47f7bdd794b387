//! Configuration and command-line behaviour of the binary: exit codes and
//! errors that name the file, the key and what was expected.

use crate::harness::{self, pgsteward, write_config};

fn run(args: &[&str], config: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), config);
    let out = pgsteward()
        .arg("--config")
        .arg(&path)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr)
            .into_owned()
            .replace(&path.display().to_string(), "FILE"),
    )
}

const MINIMAL: &str = "[database]\nprimary = \"postgres://steward:s3cret@127.0.0.1:1/app\"\n";

#[test]
fn unknown_key_is_an_error_naming_file_and_key() {
    let (code, _, err) = run(
        &["check"],
        &format!("{MINIMAL}\n[partitions]\nschedul = \"0 * * * *\"\n"),
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("FILE") && err.contains("schedul") && err.contains("schedule"),
        "{err}"
    );
}

#[test]
fn bad_values_name_key_and_expectation() {
    let cases = [
        (
            "[partitions]\nlock_timeout = \"soon\"\n",
            "partitions.lock_timeout",
            "duration",
        ),
        ("[lag]\nmax_bytes = \"lots\"\n", "lag.max_bytes", "size"),
        ("[lag]\nschedule = \"* * *\"\n", "lag.schedule", "cron"),
        (
            "[[partitions.tables]]\ntable = \"audit log\"\n",
            "table",
            "table name",
        ),
        (
            "[[partitions.tables]]\ntable = \"a\"\ninterval = \"hourly\"\n",
            "interval",
            "monthly",
        ),
        (
            "[[partitions.tables]]\ntable = \"a\"\nretention = \"13\"\n",
            "retention",
            "months",
        ),
        (
            "[[partitions.tables]]\ntable = \"a\"\ntimezone = \"Mars/Olympus\"\n",
            "timezone",
            "IANA",
        ),
        (
            "[upgrade]\npause_timeout = 5.5\n",
            "upgrade.pause_timeout",
            "duration",
        ),
        // Out of range: the value and the allowed range are named.
        (
            "[partitions]\nlock_timeout = \"30d\"\n",
            "partitions.lock_timeout",
            "\"30d\" is out of range; expected between 1ms and 1m",
        ),
        (
            // Sent as the server's lock_timeout, an int of milliseconds:
            // a longer wait would fail every build, so it is refused here.
            "[partitions]\nindex_build_wait = \"30d\"\n",
            "partitions.index_build_wait",
            "\"30d\" is out of range; expected between 1ms and",
        ),
        (
            "[partitions]\nlock_timeout = 200\n",
            "partitions.lock_timeout",
            "200 has no unit",
        ),
        (
            "[[partitions.tables]]\ntable = \"a\"\npremake = 0\n",
            "partitions.tables[0].premake",
            "0 is out of range; expected 1..=500",
        ),
        (
            "[lag]\nmax_delay = \"999999999999999999d\"\n",
            "lag.max_delay",
            "too large",
        ),
    ];
    for (snippet, key, expected) in cases {
        let (code, _, err) = run(&["check"], &format!("{MINIMAL}\n{snippet}"));
        assert_eq!(code, 2, "{snippet}: {err}");
        assert!(err.contains("FILE"), "{snippet}: names the file: {err}");
        assert!(err.contains(key), "{snippet}: names key {key}: {err}");
        assert!(err.contains(expected), "{snippet}: says {expected}: {err}");
    }
}

#[test]
fn missing_config_file_is_named() {
    let out = pgsteward()
        .args(["--config", "/nonexistent/pgsteward.toml", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/pgsteward.toml") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn environment_overrides_the_file_and_unknown_env_keys_fail() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), MINIMAL);
    let out = pgsteward()
        .arg("--config")
        .arg(&path)
        .env("PGSTEWARD_LAG__MAX_DELAY", "never")
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("lag.max_delay") && err.contains("PGSTEWARD_"),
        "{err}"
    );
}

#[test]
fn passwords_never_appear_in_output() {
    let (code, out, err) = run(&["check"], MINIMAL);
    assert_eq!(code, 1, "unreachable primary is a problem: {out}{err}");
    assert!(
        !out.contains("s3cret") && !err.contains("s3cret"),
        "{out}{err}"
    );
    assert!(out.contains("steward:***@127.0.0.1:1"), "{out}");
}

#[test]
fn example_config_is_accepted_by_check_against_real_servers() {
    // The example points at hosts that do not exist here; swap in a real primary through the environment.
    let cluster = harness::TestCluster::start(0);
    // check reads every managed table as `partitions plan` does: the example's exist here.
    harness::create_app_db(&cluster.primary, "app");
    harness::owner_psql(
        &cluster.primary,
        "app",
        "CREATE TABLE public.audit_log (at timestamptz NOT NULL) PARTITION BY RANGE (at);
         CREATE TABLE public.workflow_events (at timestamptz NOT NULL) PARTITION BY RANGE (at);",
    );
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/pgsteward.example.toml");
    let out = pgsteward()
        .args(["--config", example, "check", "--output", "json"])
        .env(
            "PGSTEWARD_DATABASE__PRIMARY",
            crate::harness::steward_url(&cluster.primary, "app"),
        )
        .env("PGSTEWARD_DATABASE__REPLICAS", "[]")
        .env("PGSTEWARD_CUTOVER__ADMIN", "[]")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["healthy"], true);
}

#[test]
fn help_teaches_with_examples() {
    for args in [
        vec!["--help"],
        vec!["partitions", "apply", "--help"],
        vec!["lag", "--help"],
        vec!["check", "--help"],
    ] {
        let out = pgsteward().args(&args).output().unwrap();
        assert!(out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Example"),
            "{args:?}"
        );
    }
    let out = pgsteward().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
