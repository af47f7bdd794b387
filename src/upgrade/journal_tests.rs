//! Journal tests, without a server: replay, torn and garbled lines, illegal
//! events, failed writes, the private state_dir and its run lock.

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
        kind: crate::upgrade::record::UPGRADE_KIND.into(),
        id: id.into(),
        target_class: "large".into(),
        provider: "local".into(),
        source_primary: "postgres://x@h:1/app".into(),
        saga: crate::upgrade::record::SAGA_VERSION,
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
fn a_garbled_middle_line_is_skipped_when_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::create(dir.path(), created("u1")).unwrap();
    let path = j.path().to_path_buf();
    drop(j);
    let started = to_line(&Entry {
        seq: 2,
        at: Utc::now(),
        event: Event::StepStarted {
            step: Step::Precheck,
        },
    });
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    // A half-written line (an append that failed), then the same entry again.
    f.write_all(&started.as_bytes()[..10]).unwrap();
    f.write_all(b"\n").unwrap();
    f.write_all(started.as_bytes()).unwrap();
    let j = Journal::open(&path).unwrap();
    assert_eq!(j.record().last_seq, 2);
    // Repaired: the file replays without the garbled line now.
    assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 2);
    // A garbled line that hides an entry is a gap in seq: refused.
    drop(j);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"garbage\n").unwrap();
    let lost = to_line(&Entry {
        seq: 4,
        at: Utc::now(),
        event: Event::StepSucceeded {
            step: Step::Precheck,
            output: Output::default(),
        },
    });
    f.write_all(lost.as_bytes()).unwrap();
    assert!(matches!(
        Journal::open(&path),
        Err(JournalError::Transition { .. })
    ));
}

#[test]
fn a_torn_created_line_is_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::create(dir.path(), created("u1")).unwrap();
    let first = j.path().to_path_buf();
    drop(j);
    let torn = dir.path().join("000002-u2.jsonl");
    fs::write(&torn, b"{\"seq\":1,\"at").unwrap();
    assert_eq!(latest(dir.path()).unwrap(), Some(first));
    assert!(!torn.exists());
}

#[test]
fn newest_by_number_not_by_clock() {
    let dir = tempfile::tempdir().unwrap();
    // The clock went back: the second id sorts before the first.
    let a = Journal::create(dir.path(), created("u9")).unwrap();
    let b = Journal::create(dir.path(), created("u1")).unwrap();
    assert_ne!(a.path(), b.path());
    assert_eq!(latest(dir.path()).unwrap().unwrap(), b.path());
}

#[test]
fn a_failed_write_keeps_file_and_memory_together() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::create(dir.path(), created("u1")).unwrap();
    j.append(&[Event::StepStarted {
        step: Step::Precheck,
    }])
    .unwrap();
    j.stage(&[Event::StepSucceeded {
        step: Step::Precheck,
        output: Output::default(),
    }])
    .unwrap();
    let before = j.record().clone();
    // A write that cannot happen: the file is read-only underneath.
    let len = fs::metadata(j.path()).unwrap().len();
    j.file = OpenOptions::new().read(true).open(j.path()).unwrap();
    let e = j.append(&[Event::StepStarted {
        step: Step::CreateReplica,
    }]);
    assert!(e.is_err());
    assert_eq!(j.record(), &before, "memory = file + staged");
    assert!(j.is_broken());
    assert_eq!(fs::metadata(j.path()).unwrap().len(), len);
    assert!(matches!(j.append(&[]), Err(JournalError::Broken { .. })));
    // The file replays to what was durable.
    assert_eq!(read(j.path()).unwrap().last_seq, 2);
}

#[test]
fn one_runner_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let _held = lock(dir.path()).unwrap();
    assert!(matches!(lock(dir.path()), Err(JournalError::Locked { .. })));
}

/// A journal appears only with its `created` line durable: a reader never
/// finds a live runner's journal empty and sets it aside as torn, and a file
/// still being made is not a journal.
#[test]
fn a_journal_appears_whole_and_a_half_made_one_is_not_listed() {
    let dir = tempfile::tempdir().unwrap();
    let half = dir.path().join("000001-u0.jsonl.creating");
    fs::write(&half, "").unwrap();
    assert_eq!(latest(dir.path()).unwrap(), None);
    assert!(half.exists(), "a file being made is left to its writer");
    let mut j = Journal::create(dir.path(), created("u1")).unwrap();
    let names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("u1"))
        .collect();
    assert_eq!(
        names,
        vec![j.path().file_name().unwrap().to_string_lossy().into_owned()]
    );
    assert_eq!(latest(dir.path()).unwrap().as_deref(), Some(j.path()));
    // The runner's handle still writes to the listed file.
    j.append(&[Event::StepStarted {
        step: Step::Precheck,
    }])
    .unwrap();
    assert_eq!(
        read(j.path()).unwrap().status(Step::Precheck),
        crate::upgrade::record::StepStatus::Running
    );
}

#[test]
fn written_lines_are_in_the_file_and_the_next_append_syncs_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::create(dir.path(), created("u1")).unwrap();
    j.append_written(&[Event::StepStarted {
        step: Step::Precheck,
    }])
    .unwrap();
    // Another process (the pause keeper) reads it before any sync.
    let seen = Journal::open(j.path()).unwrap();
    assert_eq!(seen.record(), j.record());
    drop(seen);
    assert!(j.unsynced);
    // Nothing left to write: the append still syncs what was written.
    j.append(&[]).unwrap();
    assert!(!j.unsynced);
    assert_eq!(Journal::open(j.path()).unwrap().record(), j.record());
}

#[test]
fn a_journal_from_before_kinds_replays_as_a_vertical_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("1-u1.jsonl");
    // The `created` line as releases before the saga kind wrote it.
    let line = r#"{"seq":1,"at":"2026-12-01T00:00:00Z","event":"created","id":"u1","target_class":"large","provider":"local","source_primary":"postgres://x@h:1/app","saga":3}"#;
    fs::write(&path, format!("{line}\n")).unwrap();
    let j = Journal::open(&path).unwrap();
    assert_eq!(j.record().id, "u1");
}

#[test]
fn a_newer_releases_journal_is_refused_and_left_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (kind, saga)) in [("major", 3), ("vertical", 99)].into_iter().enumerate() {
        let path = dir.path().join(format!("{}-u{i}.jsonl", i + 1));
        let created = format!(
            r#"{{"seq":1,"at":"2026-12-01T00:00:00Z","event":"created","kind":"{kind}","id":"u{i}","target_class":"large","provider":"local","source_primary":"p","saga":{saga}}}"#
        );
        // An event this release does not know: replayed, it would be
        // "garbled" and rewritten away.
        let unknown = r#"{"seq":2,"at":"2026-12-01T00:00:01Z","event":"step_started","step":"upgrade_catalog"}"#;
        let text = format!("{created}\n{unknown}\n");
        fs::write(&path, &text).unwrap();
        let err = Journal::open(&path).err().map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(err.contains("newer"), "{kind}/{saga}: {err}");
        assert!(err.contains(kind), "{err}");
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            text,
            "the file is untouched"
        );
    }
}
