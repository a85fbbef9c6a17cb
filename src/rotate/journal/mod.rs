//! The rotation journal: an append-only JSON-lines file per user, fsynced after every record, so
//! that a rotation killed at any point can be finished or undone by `rekey resume`.
//!
//! It records key ids, target specs and target snapshots, never a secret: the new secret lives in
//! memory and in the targets only. A rotation in progress lives at `active/<user>.jsonl`; creating
//! that file exclusively is also what stops two rotations of one user on this machine. When the
//! rotation ends cleanly, the file moves to `history/`.
//!
//! The same journal can live in a DynamoDB table instead ([`Journals::Shared`]), for runners in
//! containers whose disk does not outlive them: any machine can then `status` and `resume` a
//! rotation another one started. The table (not created by rekey) has the partition key `pk`
//! (String) and the sort key `sk` (Number); it holds
//!
//! - one item per record, `{pk: "journal#<account>/<user>/<rotation id>", sk: <seq>, record: "<the
//!   JSON line>"}`, put with `attribute_not_exists(sk)` so that two writers can never interleave one
//!   journal: the slower one fails and stops instead;
//! - while the rotation is unfinished, a marker `{pk: "active#<account>/<user>", sk: 0, journal:
//!   "<the records' pk>"}`, put with `attribute_not_exists(pk)` (the exclusion `create_new` gives the
//!   file) and deleted when the journal is archived. The records stay, as `history/` keeps files.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rekey_adapters::Snapshot;
use serde::{Deserialize, Serialize};

mod dynamodb;
mod local;

pub use dynamodb::SharedJournals;
use local::{active_dir, io_err, make_private_dir, write_line};

/// Test hook: abort the process right after the journal record with this sequence number is
/// durable, to prove that `resume` recovers from a crash at every step boundary.
pub const CRASH_AFTER_ENV: &str = "REKEY_TEST_CRASH_AFTER";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Begin,
    Done,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Rotated,
    RolledBack,
    Failed,
    Planned,
    Refused,
    /// Every target holds the new key; the old key stays Active because something rekey did not
    /// move still uses it (see `rotate::evidence`).
    Held,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Rotated => "rotated",
            Outcome::RolledBack => "rolled_back",
            Outcome::Failed => "failed",
            Outcome::Planned => "planned",
            Outcome::Refused => "refused",
            Outcome::Held => "held",
        }
    }
}

/// Everything `resume` needs to rebuild the rotation in a new process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Begin {
    pub rotation_id: String,
    pub user: String,
    pub account: String,
    /// Who ran the rotation.
    pub principal: String,
    pub old_key_id: String,
    /// Every key the user had when the rotation began: any other key found later is ours.
    pub existing_keys: Vec<String>,
    pub targets: Vec<TargetRecord>,
    pub probes: Vec<String>,
    pub delete_old: bool,
    pub grace_secs: u64,
    pub ecs_timeout_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetRecord {
    pub spec: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_cmd: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Begin(Begin),
    /// Deleting the user's Inactive second key to free the slot for the new one.
    FreeSlot {
        key_id: String,
        phase: Phase,
    },
    CreateKey {
        phase: Phase,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_id: Option<String>,
    },
    Snapshot {
        target: usize,
        snapshot: Snapshot,
    },
    Stage {
        target: usize,
        phase: Phase,
    },
    Verify {
        phase: Phase,
    },
    Apply {
        target: usize,
        phase: Phase,
    },
    Consumers {
        target: usize,
        phase: Phase,
    },
    Probe {
        phase: Phase,
    },
    Grace {
        phase: Phase,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<String>,
    },
    Deactivate {
        key_id: String,
        phase: Phase,
    },
    /// Probing again after the old key is off: if the app still used it, the old key goes back on.
    ProbeAfter {
        phase: Phase,
    },
    DeleteOld {
        key_id: String,
        phase: Phase,
    },
    RollbackStart {
        reason: String,
    },
    Restore {
        target: usize,
        phase: Phase,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    DeleteNewKey {
        key_id: String,
        phase: Phase,
    },
    Reactivate {
        key_id: String,
        phase: Phase,
    },
    End {
        outcome: Outcome,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub at: String,
    #[serde(flatten)]
    pub event: Event,
}

/// Where a step stands, as far as the journal knows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StepState {
    #[default]
    NotStarted,
    Begun,
    Done,
    Failed,
}

impl StepState {
    fn from_phase(phase: Phase) -> Self {
        match phase {
            Phase::Begin => StepState::Begun,
            Phase::Done => StepState::Done,
            Phase::Failed => StepState::Failed,
        }
    }

    pub fn started(self) -> bool {
        self != StepState::NotStarted
    }
}

/// The journal folded into what happened so far.
#[derive(Debug, Clone)]
pub struct State {
    pub begin: Begin,
    pub free_slot: StepState,
    pub create: StepState,
    pub new_key_id: Option<String>,
    pub snapshots: Vec<Option<Snapshot>>,
    pub staged: Vec<StepState>,
    pub verify: StepState,
    pub applied: Vec<StepState>,
    pub consumers: Vec<StepState>,
    pub probe: StepState,
    pub grace_until: Option<SystemTime>,
    pub grace: StepState,
    pub deactivate: StepState,
    pub probe_after: StepState,
    pub delete_old: StepState,
    pub rollback_reason: Option<String>,
    pub restored: Vec<StepState>,
    pub new_key_deleted: StepState,
    pub reactivate: StepState,
    pub ended: Option<Outcome>,
}

impl State {
    fn new(begin: Begin) -> Self {
        let n = begin.targets.len();
        State {
            begin,
            free_slot: StepState::NotStarted,
            create: StepState::NotStarted,
            new_key_id: None,
            snapshots: vec![None; n],
            staged: vec![StepState::NotStarted; n],
            verify: StepState::NotStarted,
            applied: vec![StepState::NotStarted; n],
            consumers: vec![StepState::NotStarted; n],
            probe: StepState::NotStarted,
            grace_until: None,
            grace: StepState::NotStarted,
            deactivate: StepState::NotStarted,
            probe_after: StepState::NotStarted,
            delete_old: StepState::NotStarted,
            rollback_reason: None,
            restored: vec![StepState::NotStarted; n],
            new_key_deleted: StepState::NotStarted,
            reactivate: StepState::NotStarted,
            ended: None,
        }
    }

    fn apply(&mut self, event: &Event) {
        let at = |v: &mut Vec<StepState>, i: usize, p: Phase| {
            if let Some(s) = v.get_mut(i) {
                *s = StepState::from_phase(p)
            }
        };
        match event {
            Event::Begin(_) => {}
            Event::FreeSlot { phase, .. } => self.free_slot = StepState::from_phase(*phase),
            Event::CreateKey { phase, key_id } => {
                self.create = StepState::from_phase(*phase);
                if key_id.is_some() {
                    self.new_key_id = key_id.clone();
                }
            }
            Event::Snapshot { target, snapshot } => {
                if let Some(s) = self.snapshots.get_mut(*target) {
                    *s = Some(snapshot.clone())
                }
            }
            Event::Stage { target, phase } => at(&mut self.staged, *target, *phase),
            Event::Verify { phase } => self.verify = StepState::from_phase(*phase),
            Event::Apply { target, phase } => at(&mut self.applied, *target, *phase),
            Event::Consumers { target, phase } => at(&mut self.consumers, *target, *phase),
            Event::Probe { phase } => self.probe = StepState::from_phase(*phase),
            Event::Grace { phase, until } => {
                self.grace = StepState::from_phase(*phase);
                if let Some(u) = until {
                    self.grace_until = rekey_trail::time::parse(u);
                }
            }
            Event::Deactivate { phase, .. } => self.deactivate = StepState::from_phase(*phase),
            Event::ProbeAfter { phase } => self.probe_after = StepState::from_phase(*phase),
            Event::DeleteOld { phase, .. } => self.delete_old = StepState::from_phase(*phase),
            Event::RollbackStart { reason } => self.rollback_reason = Some(reason.clone()),
            Event::Restore { target, phase, .. } => at(&mut self.restored, *target, *phase),
            Event::DeleteNewKey { phase, .. } => self.new_key_deleted = StepState::from_phase(*phase),
            Event::Reactivate { phase, .. } => self.reactivate = StepState::from_phase(*phase),
            Event::End { outcome } => self.ended = Some(*outcome),
        }
    }

    /// The last step that was begun, for `rekey status`.
    pub fn last_step(&self) -> String {
        let n = self.begin.targets.len();
        let target = |i: usize| &self.begin.targets[i].spec;
        if self.rollback_reason.is_some() {
            return "rolling back".into();
        }
        if self.delete_old.started() {
            return "delete old key".into();
        }
        if self.probe_after.started() {
            return "probe after deactivation".into();
        }
        if self.deactivate.started() {
            return "deactivate old key".into();
        }
        if self.grace.started() {
            return "grace period".into();
        }
        if self.probe.started() {
            return "probe".into();
        }
        if let Some(i) = (0..n).rev().find(|&i| self.applied[i].started()) {
            return format!("push to {}", target(i));
        }
        if self.verify.started() {
            return "verify new key".into();
        }
        if self.create.started() {
            return "create new key".into();
        }
        "preflight".into()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(
        "an unfinished rotation of {user} is journaled in {path}; run `rekey resume --user {user}` to finish or undo it"
    )]
    Unfinished { user: String, path: PathBuf },
    #[error("journal {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("journal {path} line {line}: {problem}")]
    Corrupt { path: PathBuf, line: usize, problem: String },
    #[error("journal {path}: {problem}")]
    Table { path: PathBuf, problem: String },
}

pub struct Journal {
    /// Where the journal is, for messages and reports (a `dynamodb://` address when shared).
    path: PathBuf,
    sink: Sink,
    next_seq: u64,
    state: State,
    crash_after: Option<u64>,
}

enum Sink {
    File(File),
    Table { store: SharedJournals, pk: String },
}

/// Where journals are kept: files under the state folder (the default), or a DynamoDB table.
#[derive(Clone)]
pub enum Journals {
    Local(PathBuf),
    Shared(SharedJournals),
}

impl std::fmt::Display for Journals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Journals::Local(dir) => write!(f, "{}", dir.display()),
            Journals::Shared(s) => write!(f, "the DynamoDB table {} (account {})", s.table, s.account),
        }
    }
}

impl Journals {
    /// Start the journal of a new rotation; fails if one of the same user is unfinished.
    pub async fn create(&self, begin: Begin, now: SystemTime) -> Result<Journal, JournalError> {
        match self {
            Journals::Local(dir) => Journal::create(dir, begin, now),
            Journals::Shared(s) => s.create(begin, now).await,
        }
    }

    /// The unfinished journal of `user`, to go on appending to it.
    pub async fn open(&self, user: &str) -> Result<Option<Journal>, JournalError> {
        match self {
            Journals::Local(dir) => Journal::open(dir, user),
            Journals::Shared(s) => s.open(user).await,
        }
    }

    /// Where the unfinished journal of `user` is, if there is one.
    pub async fn unfinished(&self, user: &str) -> Result<Option<PathBuf>, JournalError> {
        match self {
            Journals::Local(dir) => Ok(Journal::unfinished_path(dir, user)),
            Journals::Shared(s) => Ok(s.marker(user).await?.map(|records| s.location(&records))),
        }
    }

    /// Every unfinished rotation (of this account, when shared).
    pub async fn list_unfinished(&self) -> Result<Vec<(PathBuf, State)>, JournalError> {
        match self {
            Journals::Local(dir) => Journal::list_unfinished(dir),
            Journals::Shared(s) => s.list_unfinished().await,
        }
    }
}

impl Journal {
    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub async fn record(&mut self, event: Event) -> Result<(), JournalError> {
        let record = self.next_record(event, SystemTime::now());
        self.append(&record).await?;
        self.applied(record)
    }

    fn next_record(&self, event: Event, now: SystemTime) -> Record {
        Record { seq: self.next_seq, at: rekey_trail::time::format(now), event }
    }

    /// Make the record durable.
    async fn append(&mut self, record: &Record) -> Result<(), JournalError> {
        match &mut self.sink {
            Sink::File(file) => write_line(file, &self.path, record),
            Sink::Table { store, pk } => {
                let line = serde_json::to_string(record).expect("journal records serialize");
                store.put_record(pk, record, line).await
            }
        }
    }

    /// The record is durable: fold it in, and honour the crash hook.
    fn applied(&mut self, record: Record) -> Result<(), JournalError> {
        self.state.apply(&record.event);
        self.next_seq += 1;
        if self.crash_after == Some(record.seq) {
            eprintln!("rekey: {CRASH_AFTER_ENV}={} reached, aborting", record.seq);
            std::process::abort();
        }
        Ok(())
    }

    /// Move the finished journal to `history/` (or drop its marker from the table), where
    /// `rekey status` no longer lists it.
    pub async fn archive(self) -> Result<PathBuf, JournalError> {
        if let Sink::Table { store, pk } = &self.sink {
            return store.archive(pk, &self.state.begin.user).await;
        }
        let state_dir = self.path.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
        let history = state_dir.join("history");
        make_private_dir(&history)?;
        let name = format!("{}-{}.jsonl", self.state.begin.user, self.state.begin.rotation_id);
        let to = history.join(name);
        fs::rename(&self.path, &to).map_err(io_err(&self.path))?;
        for dir in [&history, &active_dir(&state_dir)] {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
        }
        Ok(to)
    }
}

/// Fold journal lines into the state and the next sequence number. With `torn_tail`, an
/// unparseable last line (the process died mid-write) is ignored: the step it recorded is then
/// treated as not started, which every step tolerates.
fn fold(path: &Path, lines: &[String], torn_tail: bool) -> Result<(State, u64), JournalError> {
    let mut state: Option<State> = None;
    let mut next_seq = 1;
    let last = lines.len();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record: Record = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(_) if torn_tail && i + 1 == last => break,
            Err(e) => {
                return Err(JournalError::Corrupt { path: path.into(), line: i + 1, problem: e.to_string() });
            }
        };
        next_seq = record.seq + 1;
        match (&mut state, &record.event) {
            (None, Event::Begin(b)) => state = Some(State::new(b.clone())),
            (None, _) => {
                return Err(JournalError::Corrupt {
                    path: path.into(),
                    line: i + 1,
                    problem: "does not start with begin".into(),
                });
            }
            (Some(s), e) => s.apply(e),
        }
    }
    let state =
        state.ok_or_else(|| JournalError::Corrupt { path: path.into(), line: 1, problem: "empty journal".into() })?;
    Ok((state, next_seq))
}

fn crash_after_from_env() -> Option<u64> {
    std::env::var(CRASH_AFTER_ENV).ok().and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::io::Write;

    fn begin() -> Begin {
        Begin {
            rotation_id: "20260101T000000Z".into(),
            user: "app".into(),
            account: "123456789012".into(),
            principal: "arn:aws:iam::123456789012:user/admin".into(),
            old_key_id: "AKIAOLD".into(),
            existing_keys: vec!["AKIAOLD".into()],
            targets: vec![TargetRecord { spec: "env:/x".into(), restart_cmd: None }],
            probes: vec![],
            delete_old: false,
            grace_secs: 0,
            ecs_timeout_secs: 900,
        }
    }

    #[tokio::test]
    async fn records_fold_into_state_and_survive_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path(), begin(), SystemTime::now()).unwrap();
        j.record(Event::CreateKey { phase: Phase::Begin, key_id: None }).await.unwrap();
        j.record(Event::CreateKey { phase: Phase::Done, key_id: Some("AKIANEW".into()) }).await.unwrap();
        j.record(Event::Apply { target: 0, phase: Phase::Begin }).await.unwrap();
        let path = j.path().to_path_buf();
        drop(j);
        // A crash in the middle of a write leaves half a line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"seq":5,"at":"2026-01-01T00:00:00Z","event":"apply","tar"#).unwrap();
        let j = Journal::open(dir.path(), "app").unwrap().unwrap();
        assert_eq!(j.state().new_key_id.as_deref(), Some("AKIANEW"));
        assert_eq!(j.state().applied[0], StepState::Begun);
        assert_eq!(j.next_seq, 5);
        assert_eq!(j.state().last_step(), "push to env:/x");
    }

    #[tokio::test]
    async fn a_second_rotation_of_the_same_user_is_refused_until_archived() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(dir.path(), begin(), SystemTime::now()).unwrap();
        let err = Journal::create(dir.path(), begin(), SystemTime::now()).err().unwrap();
        assert!(err.to_string().contains("rekey resume --user app"), "{err}");
        assert_eq!(Journal::list_unfinished(dir.path()).unwrap().len(), 1);
        let archived = j.archive().await.unwrap();
        assert!(archived.starts_with(dir.path().join("history")));
        assert!(Journal::list_unfinished(dir.path()).unwrap().is_empty());
        Journal::create(dir.path(), begin(), SystemTime::now()).unwrap();
    }
}
