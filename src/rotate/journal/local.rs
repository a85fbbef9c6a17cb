//! Journals as files under the state folder: `active/<user>.jsonl` while a rotation runs, moved to
//! `history/` when it ends. Each record is one line, fsynced before the step it records runs.
//!
//! The process driving the rotation holds an exclusive `flock` on the file for as long as it runs
//! (the kernel drops it when the process dies, `kill -9` included) and names itself in
//! `active/<user>.owner`; `resume` takes the lock the same way, so it can never act on a rotation
//! that is still running. A new journal is written and locked under a private name, then linked
//! into place: it is never visible unlocked, and never twice.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{
    Begin, Event, Journal, JournalError, Owner, Record, Running, Sink, State, Unfinished, crash_after_from_env, fold,
};

pub(super) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io { path: path.to_path_buf(), source }
}

pub(super) fn active_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("active")
}

fn active_path(state_dir: &Path, user: &str) -> PathBuf {
    active_dir(state_dir).join(format!("{user}.jsonl"))
}

fn owner_path(state_dir: &Path, user: &str) -> PathBuf {
    active_dir(state_dir).join(format!("{user}.owner"))
}

pub(super) fn make_private_dir(dir: &Path) -> Result<(), JournalError> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err(dir))
}

/// Names this process as the journal's owner, for the refusals and `status` of others.
fn name_owner(state_dir: &Path, user: &str) -> Result<(), JournalError> {
    let path = owner_path(state_dir, user);
    let text = serde_json::to_string(&Owner::me(SystemTime::now())).expect("owner serializes");
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(io_err(&path))
}

fn read_owner(state_dir: &Path, user: &str) -> Option<Owner> {
    serde_json::from_str(&fs::read_to_string(owner_path(state_dir, user)).ok()?).ok()
}

/// The journal is closed: nobody owns it any more.
pub(super) fn forget_owner(state_dir: &Path, user: &str) {
    let _ = fs::remove_file(owner_path(state_dir, user));
}

/// Who holds the journal at `path`, if anyone. A shared lock is taken and dropped at once to find
/// out; a rotation or `resume` that tries its exclusive lock in that instant tries again.
fn holder(state_dir: &Path, user: &str, path: &Path) -> Result<Option<Running>, JournalError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(JournalError::Io { path: path.into(), source: e }),
    };
    match file.try_lock_shared() {
        Ok(()) => Ok(None),
        Err(std::fs::TryLockError::WouldBlock) => Ok(Some(Running { owner: read_owner(state_dir, user) })),
        Err(std::fs::TryLockError::Error(e)) => Err(JournalError::Io { path: path.into(), source: e }),
    }
}

/// Take the exclusive lock, allowing for a `status` that holds a shared one for an instant.
fn lock(file: &File, path: &Path) -> Result<bool, JournalError> {
    for _ in 0..20 {
        match file.try_lock() {
            Ok(()) => return Ok(true),
            Err(std::fs::TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(25)),
            Err(std::fs::TryLockError::Error(e)) => return Err(JournalError::Io { path: path.into(), source: e }),
        }
    }
    Ok(false)
}

/// Why a new rotation of `user` cannot start over the journal at `path`.
fn taken(state_dir: &Path, user: &str, path: &Path) -> JournalError {
    match holder(state_dir, user, path) {
        Ok(Some(running)) => JournalError::Running { user: user.into(), path: path.into(), owner: running.owner },
        Ok(None) => JournalError::Unfinished { user: user.into(), path: path.into() },
        Err(e) => e,
    }
}

/// A torn last record (the disk filled up, or the power went, mid-write) is cut off, so that the
/// records appended after it are whole lines that read back.
fn truncate_torn_tail(file: &mut File, path: &Path) -> Result<(), JournalError> {
    let mut bytes = Vec::new();
    file.rewind().and_then(|_| file.read_to_end(&mut bytes)).map_err(io_err(path))?;
    if bytes.is_empty() || bytes.ends_with(b"\n") {
        return Ok(());
    }
    let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    tracing::warn!(
        "journal {}: cut off a torn last record ({} bytes) left by a write that did not finish",
        path.display(),
        bytes.len() - keep
    );
    file.set_len(keep as u64).and_then(|_| file.sync_all()).map_err(io_err(path))
}

impl Journal {
    /// Fails when a rotation of `user` is unfinished or running here.
    pub fn vacant(state_dir: &Path, user: &str) -> Result<(), JournalError> {
        let path = active_path(state_dir, user);
        if path.exists() { Err(taken(state_dir, user, &path)) } else { Ok(()) }
    }

    /// Start the journal of a new rotation, owned by this process; fails if one is unfinished.
    pub fn create(state_dir: &Path, begin: Begin, now: SystemTime) -> Result<Journal, JournalError> {
        let dir = active_dir(state_dir);
        make_private_dir(&dir)?;
        let user = begin.user.clone();
        let path = active_path(state_dir, &user);
        let private = dir.join(format!(".{user}.{}.jsonl.tmp", std::process::id()));
        let _ = fs::remove_file(&private);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&private)
            .map_err(io_err(&private))?;
        if !lock(&file, &private)? {
            return Err(JournalError::Io { path: private, source: std::io::ErrorKind::WouldBlock.into() });
        }
        let record = Record { seq: 1, at: rekey_trail::time::format(now), event: Event::Begin(begin.clone()) };
        let placed = write_line(&mut file, &private, &record).and_then(|()| match fs::hard_link(&private, &path) {
            Ok(()) => name_owner(state_dir, &user),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(taken(state_dir, &user, &path)),
            Err(e) => Err(JournalError::Io { path: path.clone(), source: e }),
        });
        let _ = fs::remove_file(&private);
        placed?;
        // The new file's name must be durable too, or a crash could lose the whole journal.
        File::open(&dir).and_then(|d| d.sync_all()).map_err(io_err(&dir))?;
        let mut journal = Journal {
            path,
            sink: Sink::File(file),
            next_seq: 1,
            state: State::new(begin),
            crash_after: crash_after_from_env(),
        };
        journal.applied(record)?;
        Ok(journal)
    }

    /// Take over the unfinished journal of `user` to go on appending to it; refused while the
    /// process that drives it lives.
    pub fn open(state_dir: &Path, user: &str) -> Result<Option<Journal>, JournalError> {
        let path = active_path(state_dir, user);
        let mut file = match OpenOptions::new().read(true).append(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(JournalError::Io { path, source: e }),
        };
        if !lock(&file, &path)? {
            return Err(taken(state_dir, user, &path));
        }
        // Its owner may have ended it and moved it to history between our open and our lock.
        let same = fs::metadata(&path).ok().zip(file.metadata().ok()).is_some_and(|(a, b)| a.ino() == b.ino());
        if !same {
            return Ok(None);
        }
        truncate_torn_tail(&mut file, &path)?;
        name_owner(state_dir, user)?;
        let (state, next_seq) = Self::load(&path)?;
        Ok(Some(Journal { path, sink: Sink::File(file), next_seq, state, crash_after: crash_after_from_env() }))
    }

    /// Read a journal file without taking it. A torn last line (the process died mid-write) is
    /// ignored: the step it recorded is then treated as not started, which every step tolerates.
    pub fn load(path: &Path) -> Result<(State, u64), JournalError> {
        let file = File::open(path).map_err(io_err(path))?;
        let lines: Vec<String> = BufReader::new(file).lines().collect::<Result<_, _>>().map_err(io_err(path))?;
        fold(path, &lines, true)
    }

    /// Every unfinished rotation under `state_dir`, and who drives it if it is running.
    pub fn list_unfinished(state_dir: &Path) -> Result<Vec<Unfinished>, JournalError> {
        let dir = active_dir(state_dir);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(JournalError::Io { path: dir, source: e }),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry.map_err(io_err(&dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            // `.<user>.<pid>.jsonl.tmp`: a journal being created, not yet one.
            if path.extension().is_some_and(|e| e == "jsonl") && !name.starts_with('.') {
                let (state, _) = Self::load(&path)?;
                let running = holder(state_dir, &state.begin.user, &path)?;
                out.push(Unfinished { path, state, running });
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }
}

pub(super) fn write_line(file: &mut File, path: &Path, record: &Record) -> Result<(), JournalError> {
    let mut line = serde_json::to_string(record).expect("journal records serialize");
    line.push('\n');
    file.write_all(line.as_bytes()).map_err(io_err(path))?;
    file.sync_data().map_err(io_err(path))
}
