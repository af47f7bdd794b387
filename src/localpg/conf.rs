//! What pgsteward writes into the configuration files of the servers it runs
//! here: postgresql.conf (the settings every cluster gets, and any value
//! quoted as the server's parser reads it) and pgbouncer.ini (keys and values
//! checked, since that format has no quoting at all). A key or value that
//! could end its line or start another setting is refused, never written.

use std::path::Path;

use super::LocalPgError;

/// Settings every cluster made here gets: loopback only, able to feed
/// streaming replicas, with its socket inside its own directory.
pub(super) fn base_settings(port: u16, socket_dir: &Path) -> Vec<(String, String)> {
    [
        ("listen_addresses", "127.0.0.1".to_string()),
        ("port", port.to_string()),
        ("unix_socket_directories", socket_dir.display().to_string()),
        ("wal_level", "replica".into()),
        ("max_wal_senders", "10".into()),
        ("max_replication_slots", "10".into()),
        ("hot_standby", "on".into()),
        ("wal_keep_size", "256MB".into()),
        ("logging_collector", "off".into()),
        // The default from 14 on; 13 would store md5 hashes.
        ("password_encryption", "scram-sha-256".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A postgresql.conf string literal: `'` doubled and `\` escaped (the
/// server's parser reads backslash escapes inside quotes), as pg_basebackup
/// writes them.
pub(super) fn conf_string(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// The inverse of [`conf_string`] for the inside of the quotes.
pub(super) fn unescape_conf(v: &str) -> String {
    let mut out = String::new();
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            '\'' if chars.peek() == Some(&'\'') => {
                chars.next();
                out.push('\'');
            }
            c => out.push(c),
        }
    }
    out
}

/// The value for postgresql.conf: digits (with a unit: `512MB`) or a word
/// (`on`, `replica`) as it is, since the server's lexer takes those bare;
/// anything else a quoted string ([`conf_string`]) that the server reads
/// back as exactly `v` (`127.0.0.1` is not a bare token).
pub fn conf_value(v: &str) -> String {
    let number = v.starts_with(|c: char| c.is_ascii_digit())
        && v.trim_start_matches(|c: char| c.is_ascii_digit())
            .chars()
            .all(|c| c.is_ascii_alphabetic());
    let word = v.starts_with(|c: char| c.is_ascii_alphabetic())
        && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if number || word {
        v.to_string()
    } else {
        conf_string(v)
    }
}

/// One `key = value` line of postgresql.conf, or why it cannot be written.
pub fn conf_line(key: &str, value: &str) -> Result<String, LocalPgError> {
    const FILE: &str = "postgresql.conf";
    if !is_setting_name(key) {
        return Err(invalid(
            FILE,
            key,
            "a setting name is letters, digits and _ (with . for extension settings)",
        ));
    }
    if breaks_a_line(value) {
        return Err(invalid(FILE, key, "the value holds a line break or NUL"));
    }
    Ok(format!("{key} = {}", conf_value(value)))
}

const INI: &str = "pgbouncer.ini";

/// One `key = value` line of pgbouncer.ini's `[pgbouncer]` section, or why it
/// cannot be written. The format has no quoting: the value is the rest of the
/// line with surrounding blanks trimmed, so a value must be one line without
/// surrounding blanks.
pub fn ini_line(key: &str, value: &str) -> Result<String, LocalPgError> {
    if !is_setting_name(key) || key.contains('.') {
        return Err(invalid(INI, key, "a setting name is letters, digits and _"));
    }
    Ok(format!("{key} = {}", ini_value(key, value)?))
}

/// Checks a pgbouncer.ini value (see [`ini_line`]).
pub(super) fn ini_value<'v>(key: &str, value: &'v str) -> Result<&'v str, LocalPgError> {
    if breaks_a_line(value) {
        return Err(invalid(INI, key, "the value holds a line break or NUL"));
    }
    if value.trim() != value {
        return Err(invalid(INI, key, "pgbouncer trims blanks around a value"));
    }
    Ok(value)
}

/// Checks a word pgbouncer.ini takes bare, in a list or a connection string
/// (a database name, a user in `admin_users`, a `host=` or `dbname=` value):
/// nothing that separates, quotes or starts a comment.
pub(super) fn ini_word<'v>(key: &str, value: &'v str) -> Result<&'v str, LocalPgError> {
    let bare = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'));
    if bare {
        Ok(value)
    } else {
        Err(invalid(
            INI,
            key,
            "only letters, digits and _ - . / are taken bare",
        ))
    }
}

/// A setting name either file accepts: a letter or `_`, then letters, digits
/// and `_`, with `.` between parts for extension settings
/// (`auto_explain.log_min_duration`).
fn is_setting_name(key: &str) -> bool {
    key.len() <= 63
        && key.split('.').all(|part| {
            part.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// A value no line-based file can carry: it would end the line (and could
/// start another setting), or be cut short by the reader.
fn breaks_a_line(v: &str) -> bool {
    v.chars().any(|c| matches!(c, '\n' | '\r' | '\0'))
}

fn invalid(file: &'static str, key: &str, reason: &'static str) -> LocalPgError {
    LocalPgError::InvalidSetting {
        file,
        key: key.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgresql_conf_values_read_back_as_written() {
        for (key, value, line) in [
            ("port", "5432", "port = 5432"),
            ("shared_buffers", "512MB", "shared_buffers = 512MB"),
            (
                "unix_socket_directories",
                "/tmp/it's here",
                "unix_socket_directories = '/tmp/it''s here'",
            ),
            (
                "archive_command",
                r"cp a\b 'c'",
                r"archive_command = 'cp a\\b ''c'''",
            ),
            (
                "auto_explain.log_min_duration",
                "1s",
                "auto_explain.log_min_duration = 1s",
            ),
            ("search_path", "", "search_path = ''"),
            (
                "listen_addresses",
                "127.0.0.1",
                "listen_addresses = '127.0.0.1'",
            ),
            ("wal_level", "replica", "wal_level = replica"),
            ("x", "1.5", "x = '1.5'"),
            ("x", "1e5", "x = '1e5'"),
        ] {
            assert_eq!(conf_line(key, value).unwrap(), line, "{key} = {value:?}");
        }
        for v in ["it's", r"a\b", "x' # y", "a = b", "''"] {
            let line = conf_line("k", v).unwrap();
            let inside = line
                .strip_prefix("k = '")
                .and_then(|s| s.strip_suffix('\''))
                .unwrap();
            assert_eq!(unescape_conf(inside), v, "{line}");
        }
    }

    #[test]
    fn postgresql_conf_refuses_what_would_break_a_line() {
        for key in [
            "", "a b", "a=b", "1abc", "a;b", "a\nb", "a.", ".a", "ü", "a'",
        ] {
            assert!(conf_line(key, "1").is_err(), "key {key:?}");
        }
        for v in ["1\nfsync = off", "1\r", "a\0b"] {
            let e = conf_line("work_mem", v).unwrap_err().to_string();
            assert!(
                e.contains("postgresql.conf") && e.contains("work_mem"),
                "{e}"
            );
        }
    }

    #[test]
    fn pgbouncer_ini_refuses_what_it_cannot_carry() {
        assert_eq!(
            ini_line("query_wait_timeout", "10").unwrap(),
            "query_wait_timeout = 10"
        );
        assert_eq!(
            ini_line("auth_file", "/tmp/it's/users.txt").unwrap(),
            "auth_file = /tmp/it's/users.txt"
        );
        for key in ["", "a b", "a=b", "a.b", "[x]", "a\nb"] {
            assert!(ini_line(key, "1").is_err(), "key {key:?}");
        }
        for v in ["1\nauth_type = trust", "1\r", " 1", "1 ", "a\0"] {
            let e = ini_line("max_client_conn", v).unwrap_err().to_string();
            assert!(
                e.contains("pgbouncer.ini") && e.contains("max_client_conn"),
                "{e}"
            );
        }
        assert!(ini_word("dbname", "app_1").is_ok());
        for v in ["", "a b", "a,b", "a=b", "a'b", "a\"b", "a;b", "a#b"] {
            assert!(ini_word("dbname", v).is_err(), "{v:?}");
        }
    }
}
