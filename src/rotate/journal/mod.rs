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
//!   "<the records' pk>", owner_…, lease_until}`, put with `attribute_not_exists(pk)` (the exclusion
//!   `create_new` gives the file) and deleted when the journal is archived. The records stay, as
//!   `history/` keeps files.
//!
//! One process owns a journal at a time ([`owner`]): the local file's `flock`, or the marker's
//! lease. Whoever cannot take it is refused before any side effect, naming the owner.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rekey_adapters::Snapshot;
use serde::{Deserialize, Serialize};

mod dynamodb;
mod local;
pub mod owner;

pub use dynamodb::SharedJournals;
use local::{active_dir, io_err, make_private_dir, write_line};
pub use owner::Owner;

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

/// What a journal drives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A rotation: a new key into the targets, the old one off.
    #[default]
    Rotation,
    /// The end of a rotation whose deactivation was deferred (`rekey run` with a grace period):
    /// probe, deactivate the old key, probe again, record when; no key is created, no target written.
    FinishDeferred,
}

impl Kind {
    fn is_rotation(&self) -> bool {
        *self == Kind::Rotation
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
    #[serde(default, skip_serializing_if = "Kind::is_rotation")]
    pub kind: Kind,
    /// End once the probes pass, the old key left Active with its deactivation time in a tag.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub defer_deactivation: bool,
    /// Tag the old key with the time it was deactivated, for `rekey run`'s `delete_after`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mark_deactivated: bool,
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
    /// The user tag, keyed by the old key id, that defers its deactivation to a later `rekey run`.
    /// `previous` (on `begin`) is the tag's value before, which a rollback puts back.
    Defer {
        key_id: String,
        phase: Phase,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous: Option<String>,
    },
    /// The user tag recording when rekey deactivated the old key, for `delete_after`; `previous`
    /// as for [`Event::Defer`].
    MarkDeactivated {
        key_id: String,
        phase: Phase,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous: Option<String>,
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
    pub defer: StepState,
    /// The old key's tag before the deferral was written.
    pub defer_previous: Option<String>,
    pub marked: StepState,
    /// The old key's tag before the time of its deactivation was written.
    pub marked_previous: Option<String>,
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
            defer: StepState::NotStarted,
            defer_previous: None,
            marked: StepState::NotStarted,
            marked_previous: None,
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
            Event::Defer { phase, previous, .. } => {
                self.defer = StepState::from_phase(*phase);
                if *phase == Phase::Begin {
                    self.defer_previous = previous.clone();
                }
            }
            Event::MarkDeactivated { phase, previous, .. } => {
                self.marked = StepState::from_phase(*phase);
                if *phase == Phase::Begin {
                    self.marked_previous = previous.clone();
                }
            }
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
        if self.marked.started() {
            return "record when the old key was deactivated".into();
        }
        if self.defer.started() {
            return "defer deactivation".into();
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
    /// Another process drives that rotation right now.
    #[error(
        "a rotation of {user} is running right now ({}), journaled in {path}; wait for it to end (`rekey status` shows it), or stop that process (Ctrl-C or SIGTERM rolls it back)",
        owner::describe(owner.as_ref())
    )]
    Running { user: String, path: PathBuf, owner: Option<Owner> },
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
    /// The open file holds the `flock` that makes this process the journal's owner.
    File(File),
    Table {
        store: SharedJournals,
        pk: String,
        lease: dynamodb::Lease,
    },
}

/// A rotation that has not ended cleanly, for `rekey status`.
#[derive(Debug, Clone)]
pub struct Unfinished {
    pub path: PathBuf,
    pub state: State,
    /// The process driving it right now; `None`: nobody, it waits for `rekey resume`.
    pub running: Option<Running>,
}

/// A journal someone holds; `owner` is `None` when it cannot be told who.
#[derive(Debug, Clone)]
pub struct Running {
    pub owner: Option<Owner>,
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

    /// Fails when a rotation of `user` is unfinished ([`JournalError::Unfinished`]) or running
    /// ([`JournalError::Running`], naming its owner): a new one must not start over it.
    pub async fn vacant(&self, user: &str) -> Result<(), JournalError> {
        match self {
            Journals::Local(dir) => Journal::vacant(dir, user),
            Journals::Shared(s) => s.vacant(user).await,
        }
    }

    /// Every unfinished rotation (of this account, when shared).
    pub async fn list_unfinished(&self) -> Result<Vec<Unfinished>, JournalError> {
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
            Sink::Table { store, pk, lease } => {
                // Taken over (this process was thought dead): the new owner drives the rotation now.
                if let Some(problem) = lease.lost() {
                    return Err(JournalError::Table { path: self.path.clone(), problem });
                }
                let line = serde_json::to_string(record).expect("journal records serialize");
                store.put_record(pk, record, line).await
            }
        }
    }

    /// Why this process no longer owns the journal, if it does not: another took the rotation over
    /// (a shared journal whose lease lapsed). It must then leave the rotation to that one.
    pub fn lost(&self) -> Option<String> {
        match &self.sink {
            Sink::File(_) => None,
            Sink::Table { lease, .. } => lease.lost(),
        }
    }

    /// Give up ownership of a journal that stays unfinished, so that `resume` can take it at once
    /// (a file's lock goes with the file; a table's lease is ended now rather than left to run out).
    pub async fn release(self) {
        match &self.sink {
            // The lock goes with the file; its owner's name is no longer true.
            Sink::File(_) => {
                if let Some(state_dir) = self.path.parent().and_then(Path::parent) {
                    local::forget_owner(state_dir, &self.state.begin.user);
                }
            }
            Sink::Table { store, pk, lease } => {
                if let Err(e) = store.release(pk, &self.state.begin.user, lease).await {
                    tracing::warn!("{e}; `rekey resume` can take the journal once its lease runs out");
                }
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
        if let Sink::Table { store, pk, lease } = &self.sink {
            return store.archive(pk, &self.state.begin.user, lease).await;
        }
        let state_dir = self.path.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
        let history = state_dir.join("history");
        make_private_dir(&history)?;
        let name = format!("{}-{}.jsonl", self.state.begin.user, self.state.begin.rotation_id);
        let to = history.join(name);
        fs::rename(&self.path, &to).map_err(io_err(&self.path))?;
        local::forget_owner(&state_dir, &self.state.begin.user);
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
            kind: Kind::Rotation,
            defer_deactivation: false,
            mark_deactivated: false,
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

    /// A record torn by a full disk or a power cut is cut off when the journal is taken over, so
    /// the records written after it read back, and `status`/`resume` go on working.
    #[tokio::test]
    async fn a_torn_record_is_truncated_on_open_and_later_records_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path(), begin(), SystemTime::now()).unwrap();
        j.record(Event::CreateKey { phase: Phase::Begin, key_id: None }).await.unwrap();
        j.record(Event::CreateKey { phase: Phase::Done, key_id: Some("AKIANEW".into()) }).await.unwrap();
        let path = j.path().to_path_buf();
        drop(j);
        let whole = std::fs::read(&path).unwrap();
        // A disk that filled up mid-write; then a power cut that left a zero-filled block.
        for torn in [&br#"{"seq":4,"at":"2026-01-01T00:00:00Z","event":"verify","pha"#[..], &[0u8; 512][..]] {
            std::fs::write(&path, [&whole[..], torn].concat()).unwrap();
            let mut j = Journal::open(dir.path(), "app").unwrap().unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), whole, "cut at the last complete line");
            assert_eq!(j.next_seq, 4);
            j.record(Event::Verify { phase: Phase::Begin }).await.unwrap();
            j.record(Event::Verify { phase: Phase::Done }).await.unwrap();
            drop(j);
            let (state, next) = Journal::load(&path).unwrap();
            assert_eq!((state.verify, next), (StepState::Done, 6), "the records after the tear read back");
            let listed = Journal::list_unfinished(dir.path()).unwrap();
            assert_eq!(listed.len(), 1);
            assert_eq!(listed[0].state.new_key_id.as_deref(), Some("AKIANEW"));
            std::fs::write(&path, &whole).unwrap();
        }
    }

    #[tokio::test]
    async fn a_running_journal_is_refused_to_others_naming_its_owner_and_free_once_it_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(dir.path(), begin(), SystemTime::now()).unwrap();
        // Another process (a separate open of the file conflicts as another process would).
        let err = Journal::open(dir.path(), "app").err().expect("refused while the owner lives");
        let JournalError::Running { owner: Some(owner), .. } = &err else { panic!("{err}") };
        assert_eq!(owner.pid, std::process::id());
        let text = err.to_string();
        assert!(text.contains(&format!("pid {} on host ", std::process::id())) && text.contains("since "), "{text}");
        let err = Journal::create(dir.path(), begin(), SystemTime::now()).err().unwrap();
        assert!(matches!(err, JournalError::Running { .. }), "{err}");
        let listed = Journal::list_unfinished(dir.path()).unwrap();
        assert!(listed[0].running.is_some(), "status shows it running");
        // The owner dies (the kernel drops its lock): the journal is unfinished, and resume takes it.
        drop(j);
        let listed = Journal::list_unfinished(dir.path()).unwrap();
        assert!(listed[0].running.is_none());
        let err = Journal::create(dir.path(), begin(), SystemTime::now()).err().unwrap();
        assert!(matches!(err, JournalError::Unfinished { .. }), "{err}");
        let taken = Journal::open(dir.path(), "app").unwrap().expect("taken over");
        assert!(Journal::list_unfinished(dir.path()).unwrap()[0].running.is_some());
        taken.archive().await.unwrap();
        assert!(!dir.path().join("active/app.owner").exists(), "the owner's name goes with the journal");
    }

    #[tokio::test]
    async fn a_second_rotation_of_the_same_user_is_refused_until_archived() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(dir.path(), begin(), SystemTime::now()).unwrap();
        let err = Journal::create(dir.path(), begin(), SystemTime::now()).err().unwrap();
        assert!(matches!(err, JournalError::Running { .. }), "its owner still runs: {err}");
        assert_eq!(Journal::list_unfinished(dir.path()).unwrap().len(), 1);
        let archived = j.archive().await.unwrap();
        assert!(archived.starts_with(dir.path().join("history")));
        assert!(Journal::list_unfinished(dir.path()).unwrap().is_empty());
        Journal::create(dir.path(), begin(), SystemTime::now()).unwrap();
    }
}
