//! The manifest: a small JSON object beside each data object that says what
//! the data is, so an archive can be listed, verified and restored with
//! nothing but the bucket (the database that made it may be long gone).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::copy::Column;
use super::ArchiveError;

/// Bumped when a field changes meaning; readers refuse newer versions.
pub const MANIFEST_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub manifest_version: u32,
    /// The partitioned parent, `schema.table` (quoted where needed).
    pub table: String,
    /// The partition as it was named when archived.
    pub partition: String,
    /// The partition's bounds as PostgreSQL printed them (`FROM (...) TO (...)`
    /// values, in UTC for timestamptz keys): what `--attach` uses.
    pub from: String,
    pub to: String,
    pub key_column: String,
    /// `timestamptz`, `timestamp` or `date`.
    pub key_type: String,
    /// Every column of the partition in order; generated ones are not in the
    /// data (the server computes them again on restore).
    pub columns: Vec<Column>,
    pub rows: u64,
    pub bytes: u64,
    /// Hex SHA-256 of the data object, as streamed.
    pub sha256: String,
    /// `text`: PostgreSQL's text COPY format, under `copy_settings`.
    pub format: String,
    /// The session settings the rows were written under; a restore sets the same.
    pub copy_settings: Vec<(String, String)>,
    pub data_key: String,
    /// `server_version` of the source server.
    pub postgresql_version: String,
    pub pgsteward_version: String,
    pub created_at: DateTime<Utc>,
}

impl Manifest {
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings and numbers always serialises.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    pub fn parse(key: &str, bytes: &[u8]) -> Result<Manifest, ArchiveError> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| ArchiveError::Manifest {
            key: key.into(),
            message: format!("not a pgsteward manifest: {e}"),
        })?;
        if m.manifest_version > MANIFEST_VERSION {
            return Err(ArchiveError::Manifest {
                key: key.into(),
                message: format!(
                    "manifest_version {} is newer than this pgsteward reads ({MANIFEST_VERSION}); use pgsteward {} or later",
                    m.manifest_version, m.pgsteward_version
                ),
            });
        }
        if m.format != "text" {
            return Err(ArchiveError::Manifest {
                key: key.into(),
                message: format!(
                    "format {:?} is not one this pgsteward restores (text)",
                    m.format
                ),
            });
        }
        Ok(m)
    }

    /// The columns present in the data, in order.
    pub fn data_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| c.generated.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_newer_versions() {
        let m = Manifest {
            manifest_version: MANIFEST_VERSION,
            table: "public.t".into(),
            partition: "public.t_2025_01".into(),
            from: "2025-01-01 00:00:00+00".into(),
            to: "2025-02-01 00:00:00+00".into(),
            key_column: "at".into(),
            key_type: "timestamptz".into(),
            columns: vec![Column {
                name: "id".into(),
                type_name: "bigint".into(),
                not_null: true,
                generated: None,
            }],
            rows: 3,
            bytes: 10,
            sha256: "00".into(),
            format: "text".into(),
            copy_settings: vec![("TimeZone".into(), "UTC".into())],
            data_key: "k.copy".into(),
            postgresql_version: "16.4".into(),
            pgsteward_version: "0.1.0".into(),
            created_at: Utc::now(),
        };
        let back = Manifest::parse("k", &m.to_json()).unwrap();
        assert_eq!(back, m);
        let mut newer = m.clone();
        newer.manifest_version = MANIFEST_VERSION + 1;
        let e = Manifest::parse("k", &newer.to_json()).unwrap_err();
        assert!(e.to_string().contains("newer"), "{e}");
    }
}
