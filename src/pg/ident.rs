//! Identifiers and literals in SQL text: quoting, schema-qualified names
//! parsed as PostgreSQL parses them, and the stable hash that shortens a
//! generated name to fit PostgreSQL's 63 bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

/// `"name"` with embedded quotes doubled: safe for any identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'value'` with embedded quotes doubled, for the few places SQL cannot take a
/// bound parameter (partition bounds in DDL). Requires standard_conforming_strings
/// (the default since 9.1), which [`DDL_SESSION_SETUP`] sets explicitly.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A schema-qualified relation name. Parsed like SQL: unquoted parts fold to
/// lower case, `"Quoted"` parts keep case and may contain `""`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

impl QualifiedName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        QualifiedName {
            schema: schema.into(),
            name: name.into(),
        }
    }
    /// `"schema"."name"`, ready to splice into SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

pub const QUALIFIED_NAME_EXPECTED: &str =
    "a table name such as \"public.audit_log\" or '\"My Schema\".\"Audit Log\"'";

/// Why a text is not a [`QualifiedName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not {QUALIFIED_NAME_EXPECTED}: {why}")]
pub struct NameError {
    pub text: String,
    pub why: String,
}

impl FromStr for QualifiedName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        let bad = |why: &str| NameError {
            text: s.to_string(),
            why: why.to_string(),
        };
        let mut parts = Vec::new();
        let mut chars = s.trim().chars().peekable();
        loop {
            let mut part = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                part = read_quoted(&mut chars).ok_or_else(|| bad("unterminated quote"))?;
                if part.is_empty() {
                    return Err(bad("empty quoted name"));
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == '.' {
                        break;
                    }
                    if !(c.is_alphanumeric() || c == '_' || c == '$') {
                        return Err(bad(&format!("{c:?} needs double quotes around the name")));
                    }
                    part.push(c.to_ascii_lowercase());
                    chars.next();
                }
                if part.is_empty() {
                    return Err(bad("empty name"));
                }
                if part.starts_with(|c: char| c.is_ascii_digit() || c == '$') {
                    return Err(bad("an unquoted name cannot start with a digit"));
                }
            }
            if part.len() > 63 {
                return Err(bad("names are at most 63 bytes"));
            }
            parts.push(part);
            match chars.next() {
                None => break,
                Some('.') => continue,
                Some(c) => return Err(bad(&format!("unexpected {c:?} after a name"))),
            }
        }
        match parts.len() {
            1 => Ok(QualifiedName::new("public", parts.remove(0))),
            2 => {
                let name = parts.remove(1);
                Ok(QualifiedName::new(parts.remove(0), name))
            }
            _ => Err(bad("expected schema.table")),
        }
    }
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = |s: &str| {
            let plain = s
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if plain {
                s.to_string()
            } else {
                quote_ident(s)
            }
        };
        write!(f, "{}.{}", part(&self.schema), part(&self.name))
    }
}

impl<'de> Deserialize<'de> for QualifiedName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for QualifiedName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The characters of a `"quoted"` identifier after its opening quote, with
/// `""` read as one `"`; `None` when the closing quote is missing. The
/// opening quote is consumed by the caller, which knows it saw one.
pub(crate) fn read_quoted(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<String> {
    let mut part = String::new();
    loop {
        match chars.next() {
            Some('"') if chars.peek() == Some(&'"') => {
                chars.next();
                part.push('"');
            }
            Some('"') => return Some(part),
            Some(c) => part.push(c),
            None => return None,
        }
    }
}

/// FNV-1a, 64-bit: stable across builds and platforms (unlike
/// `DefaultHasher`), so a name shortened with it is the same on every run.
pub fn fnv1a_64(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// FNV-1a, 32-bit: the same idea in 32 bits. Both widths stay, because the
/// names already made with each (partitions, RDS instances) must not change.
pub fn fnv1a_32(name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualified_names() {
        assert_eq!(
            "public.audit_log".parse::<QualifiedName>().unwrap(),
            QualifiedName::new("public", "audit_log")
        );
        assert_eq!(
            "Audit_Log".parse::<QualifiedName>().unwrap(),
            QualifiedName::new("public", "audit_log")
        );
        let odd: QualifiedName = r#""Weird-Schema"."Audit ""Log""""#.parse().unwrap();
        assert_eq!(odd, QualifiedName::new("Weird-Schema", "Audit \"Log\""));
        assert_eq!(odd.quoted(), r#""Weird-Schema"."Audit ""Log""""#);
        for bad in [
            "",
            "a.b.c",
            "audit log",
            "\"open",
            "a;drop table x",
            "1abc",
            "a.",
        ] {
            assert!(
                bad.parse::<QualifiedName>().is_err(),
                "{bad:?} must be rejected"
            );
        }
    }
    #[test]
    fn fnv1a_is_the_published_function() {
        // Test vectors of the FNV reference: the hashes of "" and "a".
        assert_eq!(fnv1a_64(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_32(""), 0x811c_9dc5);
        assert_eq!(fnv1a_32("a"), 0xe40c_292c);
    }
}
