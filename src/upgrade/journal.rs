//! The append-only journal of one upgrade: `state_dir/<id>.jsonl`, one
//! [`Entry`] per line.
//!
//! Durability contract: [`Journal::append`] returns only after the lines are
//! on disk (`fdatasync`; the directory is synced when the file is created), so
//! the runner never acts on a step before its `step_started` is durable. A
//! crash while writing leaves at most one torn last line; its event was never
//! acted on, so replay drops it (and the next append truncates it away).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::Utc;

use super::record::{Entry, Event, TransitionError, UpgradeRecord};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("upgrade journal {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("upgrade journal {path}, line {line}: {reason}; the file was not written by pgsteward or was edited")]
    Corrupt {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("upgrade journal {path}: {source}")]
    Transition {
        path: PathBuf,
        source: TransitionError,
    },
    #[error("another pgsteward process is driving an upgrade in {dir} (lock file {dir}/upgrade.lock); wait for it or stop it")]
    Locked { dir: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub struct Journal {
    path: PathBuf,
    file: File,
    /// Applied to `record`, not yet on disk: written with the next append.
    staged: String,
    record: UpgradeRecord,
}

impl Journal {
    pub fn path_for(state_dir: &Path, id: &str) -> PathBuf {
        state_dir.join(format!("{id}.jsonl"))
    }

    /// Creates the journal of a new upgrade with its `created` entry, durably.
    pub fn create(state_dir: &Path, created: Event) -> Result<Journal, JournalError> {
        let Event::Created { id, .. } = &created else {
            return Err(JournalError::Corrupt {
                path: state_dir.to_path_buf(),
                line: 1,
                reason: "a journal starts with `created`".into(),
            });
        };
        secure_state_dir(state_dir)?;
        let path = Journal::path_for(state_dir, id);
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        let entry = Entry {
            seq: 1,
            at: Utc::now(),
            event: created,
        };
        let record =
            UpgradeRecord::from_created(&entry).map_err(|source| JournalError::Transition {
                path: path.clone(),
                source,
            })?;
        let line = to_line(&entry);
        file.write_all(line.as_bytes()).map_err(io(&path))?;
        file.sync_all().map_err(io(&path))?;
        // The new directory entry must be durable too, or a crash could lose the whole file.
        File::open(state_dir)
            .and_then(|d| d.sync_all())
            .map_err(io(state_dir))?;
        Ok(Journal {
            path,
            file,
            staged: String::new(),
            record,
        })
    }

    /// Opens and replays an existing journal for appending.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(path)
            .map_err(io(path))?;
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io(path))?;
        let (record, valid_len) = replay_text(path, &text)?;
        if valid_len < text.len() {
            // A torn last line: its event was never acted on (see the module doc).
            file.set_len(valid_len as u64).map_err(io(path))?;
            file.seek(SeekFrom::End(0)).map_err(io(path))?;
            file.sync_all().map_err(io(path))?;
        }
        Ok(Journal {
            path: path.to_path_buf(),
            file,
            staged: String::new(),
            record,
        })
    }

    pub fn record(&self) -> &UpgradeRecord {
        &self.record
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Validates `events` against the record, writes them (after anything
    /// staged) in one write and syncs before returning. Nothing is applied
    /// when one is illegal.
    pub fn append(&mut self, events: &[Event]) -> Result<(), JournalError> {
        let (next, text) = self.validate(events)?;
        let mut all = std::mem::take(&mut self.staged);
        all.push_str(&text);
        if !all.is_empty() {
            self.file
                .write_all(all.as_bytes())
                .map_err(io(&self.path))?;
            self.file.sync_data().map_err(io(&self.path))?;
        }
        self.record = next;
        Ok(())
    }

    /// Applies `events` to the record now and writes them with the next
    /// [`Journal::append`]. For `step_succeeded` only: losing it in a crash
    /// makes a finished step run again, which idempotent steps allow.
    pub fn stage(&mut self, events: &[Event]) -> Result<(), JournalError> {
        let (next, text) = self.validate(events)?;
        self.staged.push_str(&text);
        self.record = next;
        Ok(())
    }

    fn validate(&self, events: &[Event]) -> Result<(UpgradeRecord, String), JournalError> {
        let mut next = self.record.clone();
        let mut text = String::new();
        for event in events {
            let entry = Entry {
                seq: next.last_seq + 1,
                at: Utc::now(),
                event: event.clone(),
            };
            next.apply(&entry)
                .map_err(|source| JournalError::Transition {
                    path: self.path.clone(),
                    source,
                })?;
            text.push_str(&to_line(&entry));
        }
        Ok((next, text))
    }
}

fn to_line(entry: &Entry) -> String {
    // Serialising plain data with string keys cannot fail.
    let mut s = serde_json::to_string(entry).unwrap_or_default();
    s.push('\n');
    s
}

/// Replays a journal's text; returns the record and the length of the valid prefix.
fn replay_text(path: &Path, text: &str) -> Result<(UpgradeRecord, usize), JournalError> {
    let mut record: Option<UpgradeRecord> = None;
    let mut valid = 0;
    let mut lines = text.split_inclusive('\n').enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        let last = lines.peek().is_none();
        let parsed = serde_json::from_str::<Entry>(line.trim_end());
        let entry = match parsed {
            Ok(e) if line.ends_with('\n') => e,
            // Only the last line may be torn; anything else is corruption.
            _ if last && i > 0 => break,
            Ok(_) => break,
            Err(e) => {
                return Err(JournalError::Corrupt {
                    path: path.to_path_buf(),
                    line: i + 1,
                    reason: e.to_string(),
                })
            }
        };
        let transition = |source| JournalError::Transition {
            path: path.to_path_buf(),
            source,
        };
        match record.as_mut() {
            None => record = Some(UpgradeRecord::from_created(&entry).map_err(transition)?),
            Some(r) => r.apply(&entry).map_err(transition)?,
        }
        valid += line.len();
    }
    match record {
        Some(r) => Ok((r, valid)),
        None => Err(JournalError::Corrupt {
            path: path.to_path_buf(),
            line: 1,
            reason: "empty journal".into(),
        }),
    }
}

/// Reads a journal without opening it for writing (`upgrade status`).
pub fn read(path: &Path) -> Result<UpgradeRecord, JournalError> {
    let text = fs::read_to_string(path).map_err(io(path))?;
    Ok(replay_text(path, &text)?.0)
}

/// Makes `state_dir` (mode 0700) if missing, and repairs what others could
/// read: the directory to 0700, every file in it to 0600. The journal names
/// servers and users; nobody but pgsteward's user has business reading it.
pub fn secure_state_dir(state_dir: &Path) -> Result<(), JournalError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(io(state_dir))?;
    secure_existing(state_dir)
}

/// [`secure_state_dir`] for a directory that may not exist (then nothing happens).
fn secure_existing(state_dir: &Path) -> Result<(), JournalError> {
    let repair = |path: &Path, wanted: u32| -> Result<(), JournalError> {
        let mode = fs::symlink_metadata(path)
            .map_err(io(path))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777),
                wanted = format!("{wanted:o}"), "state_dir: access for others removed");
            fs::set_permissions(path, fs::Permissions::from_mode(wanted)).map_err(io(path))?;
        }
        Ok(())
    };
    let entries = match fs::read_dir(state_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(state_dir)(e)),
    };
    repair(state_dir, 0o700)?;
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_file()) {
            repair(&e.path(), 0o600)?;
        }
    }
    Ok(())
}

/// The newest journal in `state_dir` (ids sort by creation time), if any.
pub fn latest(state_dir: &Path) -> Result<Option<PathBuf>, JournalError> {
    secure_existing(state_dir)?;
    let entries = match fs::read_dir(state_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(state_dir)(e)),
    };
    let mut journals: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    journals.sort();
    Ok(journals.pop())
}

/// Exclusive lock on `state_dir` for as long as the guard lives: one runner at a time.
pub struct RunLock {
    _lock: nix::fcntl::Flock<File>,
}

pub fn lock(state_dir: &Path) -> Result<RunLock, JournalError> {
    secure_state_dir(state_dir)?;
    let path = state_dir.join("upgrade.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(io(&path))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(RunLock { _lock: l }),
        Err(_) => Err(JournalError::Locked {
            dir: state_dir.to_path_buf(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::{Output, Step};
    use super::*;

    #[test]
    fn state_dir_is_private_and_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let j = Journal::create(&state, created("u1")).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(j.path()), 0o600);
        fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(j.path(), fs::Permissions::from_mode(0o644)).unwrap();
        drop(lock(&state).unwrap());
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(j.path()), 0o600);
        assert_eq!(mode(&state.join("upgrade.lock")), 0o600);
    }

    fn created(id: &str) -> Event {
        Event::Created {
            id: id.into(),
            target_class: "large".into(),
            provider: "local".into(),
            source_primary: "postgres://x@h:1/app".into(),
        }
    }

    #[test]
    fn appends_replay_to_the_same_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path(), created("u1")).unwrap();
        j.append(&[
            Event::StepStarted {
                step: Step::Precheck,
            },
            Event::StepSucceeded {
                step: Step::Precheck,
                output: Output::note("ok"),
            },
        ])
        .unwrap();
        let again = Journal::open(j.path()).unwrap();
        assert_eq!(again.record(), j.record());
        assert_eq!(latest(dir.path()).unwrap().unwrap(), j.path());
    }

    #[test]
    fn illegal_events_are_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path(), created("u1")).unwrap();
        assert!(j.append(&[Event::Completed]).is_err());
        let again = Journal::open(j.path()).unwrap();
        assert_eq!(again.record().last_seq, 1);
    }

    #[test]
    fn a_torn_last_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path(), created("u1")).unwrap();
        j.append(&[Event::StepStarted {
            step: Step::Precheck,
        }])
        .unwrap();
        let path = j.path().to_path_buf();
        drop(j);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":3,\"at\":\"20").unwrap();
        let mut j = Journal::open(&path).unwrap();
        assert_eq!(j.record().last_seq, 2);
        j.append(&[Event::StepSucceeded {
            step: Step::Precheck,
            output: Output::default(),
        }])
        .unwrap();
        assert_eq!(read(&path).unwrap().last_seq, 3);
    }

    #[test]
    fn a_corrupt_middle_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(dir.path(), created("u1")).unwrap();
        let path = j.path().to_path_buf();
        drop(j);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"garbage\n{\"seq\":2}\n").unwrap();
        assert!(matches!(
            Journal::open(&path),
            Err(JournalError::Corrupt { line: 2, .. })
        ));
    }

    #[test]
    fn one_runner_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let _held = lock(dir.path()).unwrap();
        assert!(matches!(lock(dir.path()), Err(JournalError::Locked { .. })));
    }
}
