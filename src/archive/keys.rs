//! Object keys. A key is a function of the table and the partition's bounds
//! only: a retried or resumed upload of the same rows writes the same key
//! (replacing its own earlier attempt), so one range never has two archives.
//!
//! `{prefix}{schema}.{table}/{from}_{to}.copy` for the data and
//! `....manifest.json` beside it. Names are percent-encoded outside
//! `[A-Za-z0-9_-]`, so no table name can make a key of another table or
//! escape the prefix. Bounds are `20250101T000000Z` (timestamptz, UTC),
//! `20250101T000000` (timestamp), `20250101` (date), `minvalue`/`maxvalue`.

use crate::pg::QualifiedName;

pub const DATA_SUFFIX: &str = ".copy";
pub const MANIFEST_SUFFIX: &str = ".manifest.json";

fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The folder of one table's archives.
pub fn table_prefix(prefix: &str, table: &QualifiedName) -> String {
    format!("{prefix}{}.{}/", encode(&table.schema), encode(&table.name))
}

/// The data object of the partition of `table` covering `[from, to)`, the
/// bounds as key text (`partitions::retire::bound_text`: digits, `T`, `Z`,
/// `.`, or `minvalue`; encoded anyway).
pub fn data_key(prefix: &str, table: &QualifiedName, from: &str, to: &str) -> String {
    format!(
        "{}{}_{}{DATA_SUFFIX}",
        table_prefix(prefix, table),
        encode_bound(from),
        encode_bound(to)
    )
}

fn encode_bound(b: &str) -> String {
    b.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c.to_string()
            } else {
                format!("%{:02X}", c as u32 & 0xff)
            }
        })
        .collect()
}

/// The manifest beside a data object.
pub fn manifest_key(data_key: &str) -> String {
    format!(
        "{}{MANIFEST_SUFFIX}",
        data_key.strip_suffix(DATA_SUFFIX).unwrap_or(data_key)
    )
}

/// The data key a `--from` names: the data object itself or its manifest.
pub fn data_key_of(from: &str) -> String {
    match from.strip_suffix(MANIFEST_SUFFIX) {
        Some(stem) => format!("{stem}{DATA_SUFFIX}"),
        None => from.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str, n: &str) -> QualifiedName {
        QualifiedName {
            schema: s.into(),
            name: n.into(),
        }
    }

    #[test]
    fn keys_are_deterministic_and_escape_names() {
        let k = data_key(
            "arch/",
            &q("public", "audit_log"),
            "20250101T000000Z",
            "20250201T000000Z",
        );
        assert_eq!(
            k,
            "arch/public.audit_log/20250101T000000Z_20250201T000000Z.copy"
        );
        assert_eq!(
            manifest_key(&k),
            "arch/public.audit_log/20250101T000000Z_20250201T000000Z.manifest.json"
        );
        assert_eq!(data_key_of(&manifest_key(&k)), k);
        assert_eq!(data_key_of(&k), k);
        let odd = data_key("", &q("a.b", "x/../y \"z\""), "minvalue", "20250101");
        assert_eq!(odd, "a%2Eb.x%2F%2E%2E%2Fy%20%22z%22/minvalue_20250101.copy");
    }
}
