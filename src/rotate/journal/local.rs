//! Journals as files under the state folder: `active/<user>.jsonl` while a rotation runs (created
//! exclusively, so two rotations of one user on one machine cannot both start), moved to
//! `history/` when it ends. Each record is one line, fsynced before the step it records runs.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{Begin, Event, Journal, JournalError, Record, Sink, State, crash_after_from_env, fold};

pub(super) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io { path: path.to_path_buf(), source }
}

pub(super) fn active_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("active")
}

fn active_path(state_dir: &Path, user: &str) -> PathBuf {
    active_dir(state_dir).join(format!("{user}.jsonl"))
}

pub(super) fn make_private_dir(dir: &Path) -> Result<(), JournalError> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err(dir))
}

impl Journal {
    /// The journal of an unfinished rotation of `user`, if there is one.
    pub fn unfinished_path(state_dir: &Path, user: &str) -> Option<PathBuf> {
        let p = active_path(state_dir, user);
        p.exists().then_some(p)
    }

    /// Start the journal of a new rotation; fails if one is unfinished.
    pub fn create(state_dir: &Path, begin: Begin, now: SystemTime) -> Result<Journal, JournalError> {
        let dir = active_dir(state_dir);
        make_private_dir(&dir)?;
        let path = active_path(state_dir, &begin.user);
        let file = OpenOptions::new().append(true).create_new(true).mode(0o600).open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                JournalError::Unfinished { user: begin.user.clone(), path: path.clone() }
            } else {
                JournalError::Io { path: path.clone(), source: e }
            }
        })?;
        // The new file's name must be durable too, or a crash could lose the whole journal.
        File::open(&dir).and_then(|d| d.sync_all()).map_err(io_err(&dir))?;
        let mut journal = Journal {
            path,
            sink: Sink::File(file),
            next_seq: 1,
            state: State::new(begin.clone()),
            crash_after: crash_after_from_env(),
        };
        let record = journal.next_record(Event::Begin(begin), now);
        if let Sink::File(file) = &mut journal.sink {
            write_line(file, &journal.path, &record)?;
        }
        journal.applied(record)?;
        Ok(journal)
    }

    /// Open the unfinished journal of `user` to go on appending to it.
    pub fn open(state_dir: &Path, user: &str) -> Result<Option<Journal>, JournalError> {
        let path = active_path(state_dir, user);
        if !path.exists() {
            return Ok(None);
        }
        let (state, next_seq) = Self::load(&path)?;
        let file = OpenOptions::new().append(true).open(&path).map_err(io_err(&path))?;
        Ok(Some(Journal { path, sink: Sink::File(file), next_seq, state, crash_after: crash_after_from_env() }))
    }

    /// Read a journal file. A torn last line (the process died mid-write) is ignored: the step it
    /// recorded is then treated as not started, which every step tolerates.
    pub fn load(path: &Path) -> Result<(State, u64), JournalError> {
        let file = File::open(path).map_err(io_err(path))?;
        let lines: Vec<String> = BufReader::new(file).lines().collect::<Result<_, _>>().map_err(io_err(path))?;
        fold(path, &lines, true)
    }

    /// Every unfinished rotation under `state_dir`.
    pub fn list_unfinished(state_dir: &Path) -> Result<Vec<(PathBuf, State)>, JournalError> {
        let dir = active_dir(state_dir);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(JournalError::Io { path: dir, source: e }),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry.map_err(io_err(&dir))?.path();
            if path.extension().is_some_and(|e| e == "jsonl") {
                let (state, _) = Self::load(&path)?;
                out.push((path, state));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

pub(super) fn write_line(file: &mut File, path: &Path, record: &Record) -> Result<(), JournalError> {
    let mut line = serde_json::to_string(record).expect("journal records serialize");
    line.push('\n');
    file.write_all(line.as_bytes()).map_err(io_err(path))?;
    file.sync_data().map_err(io_err(path))
}
