//! The append-only journal of one upgrade: `state_dir/<id>.jsonl`, one
//! [`Entry`] per line.
//!
//! Durability contract: [`Journal::append`] returns only after the lines are
//! on disk (`fdatasync`; the directory is synced when the file is created), so
//! the runner never acts on a step that needs it before its `step_started` is
//! durable ([`crate::saga::Undo::start_must_be_durable`]); [`Journal::append_written`]
//! leaves the lines in the page cache (a killed process loses nothing, a lost
//! host may), for the starts whose loss recovery already handles. A
//! crash while writing leaves at most one torn last line; its event was never
//! acted on, so replay drops it (and the next append truncates it away).
//!
//! Faults: a failed write or sync (full disk, I/O error) truncates the file
//! back to its last durable length, puts back what was staged, and marks the
//! journal broken: nothing more is written by this process, and the record in
//! memory is exactly the file plus what is staged (they never drift apart).
//! The runner then undoes the write pause without a journal (runner.rs) and
//! `upgrade resume` finishes from the file. A torn or garbled line anywhere
//! is reported with its number and skipped when the sequence numbers around
//! it show nothing was lost (an append that failed half way and was written
//! again); the file is then rewritten without it. A journal whose `created`
//! line never became durable is no upgrade at all and is set aside.
//!
//! Order: files are named `<number>-<id>.jsonl` with a number one above the
//! highest in `state_dir`, so the newest is found without trusting the wall
//! clock (ids carry a timestamp for humans and RDS names, nothing else).

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
    #[error("upgrade journal {path} cannot be written since an earlier failure ({reason}); free the disk and run `pgsteward upgrade resume`")]
    Broken { path: PathBuf, reason: String },
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
    /// Length of the file up to its last durable line.
    durable_len: u64,
    /// Set by a failed write or sync: no more writes from this process.
    broken: Option<String>,
    /// Lines written by [`Journal::append_written`] and not synced since:
    /// the next append syncs even when it has nothing to write.
    unsynced: bool,
}

impl Journal {
    /// The path of a new journal for `id`: numbered one above every
    /// journal already in `state_dir`.
    pub fn path_for(state_dir: &Path, id: &str) -> PathBuf {
        let next = journals(state_dir)
            .unwrap_or_default()
            .iter()
            .map(|(n, _)| *n)
            .max()
            .unwrap_or(0)
            + 1;
        state_dir.join(format!("{next:06}-{id}.jsonl"))
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
        // Written under a name no reader lists, and linked into place only
        // once its first line is durable: a reader (`upgrade status`, a
        // second runner) that found a journal without its `created` line
        // would set it aside as torn while this runner keeps writing to it.
        let creating = path.with_extension("jsonl.creating");
        let _ = fs::remove_file(&creating);
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(&creating)
            .map_err(io(&creating))?;
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
        let mut linked = false;
        let written = file
            .write_all(line.as_bytes())
            .and_then(|_| file.sync_all())
            // A link, not a rename: it refuses to replace a journal of that name.
            .and_then(|_| fs::hard_link(&creating, &path))
            .and_then(|_| {
                linked = true;
                fs::remove_file(&creating)
            })
            // The new directory entry must be durable too, or a crash could lose the whole file.
            .and_then(|_| File::open(state_dir).and_then(|d| d.sync_all()));
        if let Err(e) = written {
            // Nothing happened yet: leave no half journal behind.
            let _ = fs::remove_file(&creating);
            if linked {
                let _ = fs::remove_file(&path);
            }
            return Err(io(&path)(e));
        }
        Ok(Journal {
            path,
            file,
            staged: String::new(),
            record,
            durable_len: line.len() as u64,
            broken: None,
            unsynced: false,
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
        let replay = replay_text(path, &text)?;
        let mut durable_len = replay.valid_len as u64;
        if !replay.skipped.is_empty() {
            // Rewrite without the garbled lines, atomically, so the file
            // replays cleanly from now on.
            let tmp = path.with_extension("jsonl.repair");
            let kept = replay.kept.as_bytes();
            let rewritten = File::create(&tmp)
                .and_then(|mut f| f.write_all(kept).and_then(|_| f.sync_all()))
                .and_then(|_| fs::rename(&tmp, path))
                .and_then(|_| {
                    File::open(path.parent().unwrap_or(Path::new("."))).and_then(|d| d.sync_all())
                });
            rewritten.map_err(io(path))?;
            file = OpenOptions::new()
                .read(true)
                .append(true)
                .open(path)
                .map_err(io(path))?;
            durable_len = kept.len() as u64;
        } else if replay.valid_len < text.len() {
            // A torn last line: its event was never acted on (see the module doc).
            file.set_len(durable_len).map_err(io(path))?;
            file.seek(SeekFrom::End(0)).map_err(io(path))?;
            file.sync_all().map_err(io(path))?;
        }
        Ok(Journal {
            path: path.to_path_buf(),
            file,
            staged: String::new(),
            record: replay.record,
            durable_len,
            broken: None,
            unsynced: false,
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
    ///
    /// On a failed write or sync the file is cut back to its last durable
    /// line, the staged events are kept staged, `events` are not applied, and
    /// the journal is broken (see the module doc).
    pub fn append(&mut self, events: &[Event]) -> Result<(), JournalError> {
        self.write(events, true)
    }

    /// As [`Journal::append`], without the sync: the lines are in the file
    /// (another process, the pause keeper, reads them), durable with the
    /// next append.
    pub fn append_written(&mut self, events: &[Event]) -> Result<(), JournalError> {
        self.write(events, false)
    }

    fn write(&mut self, events: &[Event], sync: bool) -> Result<(), JournalError> {
        if let Some(reason) = &self.broken {
            return Err(JournalError::Broken {
                path: self.path.clone(),
                reason: reason.clone(),
            });
        }
        let (next, text) = self.validate(events)?;
        let mut all = self.staged.clone();
        all.push_str(&text);
        if !all.is_empty() || (sync && self.unsynced) {
            crate::failpoint::hit("journal-append").map_err(|e| JournalError::Io {
                path: self.path.clone(),
                source: std::io::Error::other(e),
            })?;
            let start = self
                .file
                .metadata()
                .map(|m| m.len())
                .unwrap_or(self.durable_len);
            let written = self.file.write_all(all.as_bytes()).and_then(|_| {
                if sync {
                    self.file.sync_data()
                } else {
                    Ok(())
                }
            });
            if let Err(e) = written {
                // After a failed sync the page cache cannot be trusted either:
                // cut back to before this write (lines written unsynced
                // earlier are kept: the record in memory has them) and
                // write no more.
                let _ = self.file.set_len(start).and_then(|_| self.file.sync_all());
                self.broken = Some(e.to_string());
                return Err(io(&self.path)(e));
            }
            if sync {
                self.durable_len = start + all.len() as u64;
            }
            self.unsynced = !sync;
        }
        self.staged.clear();
        self.record = next;
        Ok(())
    }

    /// Whether an earlier write failed (nothing more is written).
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
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

/// What replaying a journal's text found.
struct Replay {
    record: UpgradeRecord,
    /// Length of the text up to the last complete line (a torn last line excluded).
    valid_len: usize,
    /// Line numbers (1-based) skipped as garbled.
    skipped: Vec<usize>,
    /// The text without the skipped lines and without a torn last line.
    kept: String,
}

/// Replays a journal's text (see the module doc for torn and garbled lines).
fn replay_text(path: &Path, text: &str) -> Result<Replay, JournalError> {
    let mut record: Option<UpgradeRecord> = None;
    let mut valid = 0;
    let mut skipped = Vec::new();
    let mut kept = String::with_capacity(text.len());
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let last = i + 1 == lines.len();
        if line.trim().is_empty() {
            valid += line.len();
            kept.push_str(line);
            continue;
        }
        let entry = match serde_json::from_str::<Entry>(line.trim_end()) {
            Ok(e) if line.ends_with('\n') => e,
            // A torn last line: never acted on, dropped.
            _ if last && record.is_some() => break,
            Err(e) if record.is_some() => {
                // A garbled line in the middle: skipped if the next entry
                // continues the sequence (checked by apply below), reported.
                tracing::warn!(path = %path.display(), line = i + 1, error = %e, "skipping a garbled journal line");
                skipped.push(i + 1);
                valid += line.len();
                continue;
            }
            Ok(_) | Err(_) => return Err(JournalError::Corrupt {
                path: path.to_path_buf(),
                line: i + 1,
                reason:
                    "the `created` line is torn or garbled: this journal never started an upgrade"
                        .into(),
            }),
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
        kept.push_str(line);
    }
    match record {
        Some(record) => Ok(Replay {
            record,
            valid_len: valid,
            skipped,
            kept,
        }),
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
    Ok(replay_text(path, &text)?.record)
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

/// Every journal in `state_dir` with its number (0 for files from before
/// numbering, which then sort by name).
fn journals(state_dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let entries = match fs::read_dir(state_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(state_dir)(e)),
    };
    Ok(entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .map(|p| {
            let n = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split_once('-'))
                .and_then(|(n, _)| n.parse().ok())
                .unwrap_or(0);
            (n, p)
        })
        .collect())
}

/// The newest journal in `state_dir` (highest number), if any. A journal
/// whose `created` line never became durable (a crash or a full disk at
/// `upgrade start`) started nothing: it is renamed `*.jsonl.torn`, reported,
/// and passed over. For the upgrade commands, which own the directory (its
/// modes are repaired first); other commands use [`latest_readonly`].
pub fn latest(state_dir: &Path) -> Result<Option<PathBuf>, JournalError> {
    secure_existing(state_dir)?;
    newest_started(state_dir, true)
}

/// [`latest`] for commands that only look (a partition pass waiting out a
/// cutover, `upgrade::current`): changes no mode and renames nothing, since
/// the directory is not theirs to change.
pub fn latest_readonly(state_dir: &Path) -> Result<Option<PathBuf>, JournalError> {
    newest_started(state_dir, false)
}

fn newest_started(state_dir: &Path, set_aside: bool) -> Result<Option<PathBuf>, JournalError> {
    let mut all = journals(state_dir)?;
    all.sort();
    while let Some((_, path)) = all.pop() {
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        let first = text.split_inclusive('\n').next().unwrap_or_default();
        let started =
            first.ends_with('\n') && serde_json::from_str::<Entry>(first.trim_end()).is_ok();
        if started {
            return Ok(Some(path));
        }
        if set_aside {
            tracing::warn!(path = %path.display(), "journal without a durable `created` line set aside");
            let _ = fs::rename(&path, path.with_extension("jsonl.torn"));
        }
    }
    Ok(None)
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
#[path = "journal_tests.rs"]
mod tests;
