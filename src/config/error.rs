//! Why a configuration was refused: the file cannot be read, figment could
//! not deserialise it, or a value that parsed is out of bounds or at odds
//! with another ([`ConfigError::Key`], built from a [`Reason`] with
//! [`Reason::at`]). Every message names where the value came from and the key.

use std::path::{Path, PathBuf};

use super::{suggest, CONFIG_ENV, ENV_PREFIX};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path} does not exist (pass --config FILE or set {CONFIG_ENV})")]
    Missing { path: PathBuf },
    #[error("configuration file {path} cannot be read: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// figment's report: the value did not deserialise (every error, one a line).
    #[error("{0}")]
    Invalid(String),
    /// A value that deserialised but is refused: `key` is its dotted path
    /// (`partitions.tables[0].premake`), `file` the file it came from when known.
    #[error("{}key `{key}`: {reason}", in_file(.file.as_deref()))]
    Key {
        file: Option<PathBuf>,
        key: String,
        reason: Reason,
    },
}

fn in_file(file: Option<&Path>) -> String {
    file.map(|p| format!("{}: ", p.display()))
        .unwrap_or_default()
}

impl ConfigError {
    /// The failure kind for metrics: one per subsystem.
    pub fn metric_label(&self) -> crate::outcome::ErrorLabel {
        crate::outcome::ErrorLabel::Config
    }

    /// The same error for a key below `at` (`columns[0]` → `at.columns[0]`).
    pub(super) fn under(self, at: &str) -> Self {
        match self {
            ConfigError::Key { file, key, reason } => ConfigError::Key {
                file,
                key: format!("{at}.{key}"),
                reason,
            },
            other => other,
        }
    }

    /// The same error, naming the file the value came from.
    pub(super) fn in_file(self, path: Option<&Path>) -> Self {
        match self {
            ConfigError::Key {
                file: None,
                key,
                reason,
            } => ConfigError::Key {
                file: path.map(Path::to_path_buf),
                key,
                reason,
            },
            other => other,
        }
    }
}

/// What is wrong with one value: the text after "key `…`: ", e.g. `"0" is
/// out of range; expected 1..=500`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Reason(String);

impl Reason {
    pub fn new(text: impl Into<String>) -> Self {
        Reason(text.into())
    }

    /// The error for the value at `key`.
    pub fn at(self, key: impl Into<String>) -> ConfigError {
        ConfigError::Key {
            file: None,
            key: key.into(),
            reason: self,
        }
    }

    /// The same reason after `what: ` (`opclass: an empty name`).
    pub(super) fn after(self, what: impl std::fmt::Display) -> Self {
        Reason(format!("{what}: {}", self.0))
    }
}

impl From<String> for Reason {
    fn from(text: String) -> Self {
        Reason(text)
    }
}

impl From<&str> for Reason {
    fn from(text: &str) -> Self {
        Reason(text.to_string())
    }
}

/// figment reports the first error with its key and source; make it read as
/// "FILE: key `a.b`: what was wrong", and name every error when there are several.
pub(super) fn describe_figment_error(err: figment::Error, path: Option<&Path>) -> String {
    let mut lines = Vec::new();
    for e in err {
        let key = if e.path.is_empty() {
            None
        } else {
            Some(e.path.join("."))
        };
        let source = match &e.metadata {
            Some(md) => match &md.source {
                Some(figment::Source::File(f)) => f.display().to_string(),
                Some(other) => format!("{} ({other})", md.name),
                None => md.name.to_string(),
            },
            None => path
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "configuration".into()),
        };
        let from_env = e
            .metadata
            .as_ref()
            .is_some_and(|md| md.name.contains("environment"));
        // The variable for the key figment reports: for a section
        // (`PGSTEWARD_PARTITION__LOCK_TIMEOUT` reports `partition`) the whole
        // name as set, and the same tail after a suggested key.
        let prefix = |path: &[String]| {
            format!(
                "{ENV_PREFIX}{}",
                path.iter()
                    .map(|p| p.to_ascii_uppercase())
                    .collect::<Vec<_>>()
                    .join("__")
            )
        };
        let tail = from_env
            .then(|| {
                let p = prefix(&e.path);
                std::env::vars_os()
                    .filter_map(|(k, _)| k.into_string().ok())
                    .find_map(|k| {
                        let up = k.to_ascii_uppercase();
                        up.strip_prefix(&p)
                            .filter(|t| t.is_empty() || t.starts_with("__"))
                            .map(str::to_string)
                    })
            })
            .flatten()
            .unwrap_or_default();
        let variable = |path: &[String]| format!("{}{tail}", prefix(path));
        let what = match &e.kind {
            figment::error::Kind::UnknownField(field, expected) => {
                let mut what = format!(
                    "unknown key `{field}`; expected one of: {}",
                    expected.join(", ")
                );
                if let Some(near) = suggest::nearest(field, expected) {
                    let mut path = e.path.clone();
                    path.pop();
                    path.push(near.to_string());
                    if from_env {
                        what.push_str(&format!(
                            "; did you mean {} (`{}`)?",
                            variable(&path),
                            path.join(".")
                        ));
                    } else {
                        what.push_str(&format!("; did you mean `{near}`?"));
                    }
                }
                what
            }
            figment::error::Kind::UnknownVariant(found, expected) => {
                let mut what = format!(
                    "unknown value {found:?}; expected one of: {}",
                    expected.join(", ")
                );
                if let Some(near) = suggest::nearest(found, expected) {
                    what.push_str(&format!("; did you mean {near:?}?"));
                }
                what
            }
            figment::error::Kind::MissingField(field) => format!("missing required key `{field}`"),
            kind => kind.to_string(),
        };
        let source = if from_env && !e.path.is_empty() {
            format!("environment variable {}", variable(&e.path))
        } else {
            source
        };
        lines.push(match key {
            Some(k) => format!("{source}: key `{k}`: {what}"),
            None => format!("{source}: {what}"),
        });
    }
    lines.join("\n")
}
