//! What pgsteward writes into postgresql.conf: the settings every cluster made
//! here gets, and the quoting of values as the server's configuration file
//! parser reads them.

use std::path::Path;

/// Settings every cluster made here gets: loopback only, able to feed
/// streaming replicas, with its socket inside its own directory.
pub(super) fn base_settings(port: u16, socket_dir: &Path) -> Vec<(String, String)> {
    [
        ("listen_addresses", "'127.0.0.1'".to_string()),
        ("port", port.to_string()),
        (
            "unix_socket_directories",
            format!("'{}'", socket_dir.display()),
        ),
        ("wal_level", "replica".into()),
        ("max_wal_senders", "10".into()),
        ("max_replication_slots", "10".into()),
        ("hot_standby", "on".into()),
        ("wal_keep_size", "'256MB'".into()),
        ("logging_collector", "off".into()),
        // The default from 14 on; 13 would store md5 hashes.
        ("password_encryption", "'scram-sha-256'".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A postgresql.conf string literal: `'` doubled and `\` escaped, as
/// pg_basebackup writes them.
pub(crate) fn conf_string(v: &str) -> String {
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

/// Quotes a setting value for postgresql.conf unless it is a plain number or word.
pub fn conf_value(v: &str) -> String {
    if v.starts_with('\'')
        || (!v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '.'))
    {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\'', "''"))
    }
}
