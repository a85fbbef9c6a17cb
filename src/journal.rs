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

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_dynamodb::types::AttributeValue;
use rekey_adapters::Snapshot;
use serde::{Deserialize, Serialize};

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
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Rotated => "rotated",
            Outcome::RolledBack => "rolled_back",
            Outcome::Failed => "failed",
            Outcome::Planned => "planned",
            Outcome::Refused => "refused",
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
                    self.grace_until = humantime::parse_rfc3339(u).ok();
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

/// The journals of one account in a DynamoDB table.
#[derive(Clone)]
pub struct SharedJournals {
    client: aws_sdk_dynamodb::Client,
    table: String,
    /// A user name is unique only within its account.
    account: String,
}

fn table_err(path: PathBuf, what: &str) -> impl FnOnce(String) -> JournalError + '_ {
    move |e| JournalError::Table { path, problem: format!("{what}: {e}") }
}

impl SharedJournals {
    pub fn new(client: aws_sdk_dynamodb::Client, table: &str, account: &str) -> Self {
        SharedJournals { client, table: table.to_string(), account: account.to_string() }
    }

    /// Fails when the table is missing or has the wrong keys, before any rotation starts.
    pub async fn check_table(&self) -> Result<(), String> {
        let out = self.client.describe_table().table_name(&self.table).send().await.map_err(|e| {
            if e.code() == Some("ResourceNotFoundException") {
                format!(
                    "the journal table {} does not exist; create it (partition key pk, type String; sort key sk, type Number)",
                    self.table
                )
            } else {
                format!("cannot read the journal table {}: {}", self.table, DisplayErrorContext(&e))
            }
        })?;
        let keys: Vec<(String, String)> = out
            .table()
            .map(|t| {
                t.key_schema()
                    .iter()
                    .map(|k| (k.attribute_name().to_string(), k.key_type().as_str().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let want = [("pk".to_string(), "HASH".to_string()), ("sk".to_string(), "RANGE".to_string())];
        if !want.iter().all(|w| keys.contains(w)) {
            return Err(format!(
                "the journal table {} does not have the keys rekey needs (partition key pk, type String; sort key sk, type Number)",
                self.table
            ));
        }
        Ok(())
    }

    fn marker_pk(&self, user: &str) -> String {
        format!("active#{}/{user}", self.account)
    }

    fn location(&self, pk: &str) -> PathBuf {
        PathBuf::from(format!("dynamodb://{}/{pk}", self.table))
    }

    /// The records' `pk` of the unfinished journal of `user`, if there is one.
    async fn marker(&self, user: &str) -> Result<Option<String>, JournalError> {
        let pk = self.marker_pk(user);
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(pk.clone()))
            .key("sk", AttributeValue::N("0".into()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| DisplayErrorContext(&e).to_string())
            .map_err(table_err(self.location(&pk), "reading"))?;
        Ok(out.item().and_then(|i| i.get("journal")).and_then(|v| v.as_s().ok()).cloned())
    }

    async fn create(&self, begin: Begin, now: SystemTime) -> Result<Journal, JournalError> {
        let user = begin.user.clone();
        let pk = format!("journal#{}/{user}/{}", self.account, begin.rotation_id);
        let mut journal = Journal {
            path: self.location(&pk),
            sink: Sink::Table { store: self.clone(), pk: pk.clone() },
            next_seq: 1,
            state: State::new(begin.clone()),
            crash_after: crash_after_from_env(),
        };
        // The first record goes in before the marker, so that a marker always points to a journal
        // that can be read: records without a marker (a crash in between) are only an orphan.
        let record = journal.next_record(Event::Begin(begin), now);
        journal.append(&record).await?;
        let marker = self.marker_pk(&user);
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", AttributeValue::S(marker.clone()))
            .item("sk", AttributeValue::N("0".into()))
            .item("journal", AttributeValue::S(pk))
            .item("user", AttributeValue::S(user.clone()))
            .item("account", AttributeValue::S(self.account.clone()))
            .item("started_at", AttributeValue::S(now_rfc3339(now)))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match put {
            Ok(_) => {}
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => {
                let path = match self.marker(&user).await {
                    Ok(Some(records)) => self.location(&records),
                    _ => self.location(&marker),
                };
                return Err(JournalError::Unfinished { user, path });
            }
            Err(e) => return Err(table_err(self.location(&marker), "starting")(DisplayErrorContext(&e).to_string())),
        }
        journal.applied(record)?;
        Ok(journal)
    }

    async fn open(&self, user: &str) -> Result<Option<Journal>, JournalError> {
        let Some(pk) = self.marker(user).await? else { return Ok(None) };
        let (state, next_seq) = self.load(&pk).await?;
        Ok(Some(Journal {
            path: self.location(&pk),
            sink: Sink::Table { store: self.clone(), pk },
            next_seq,
            state,
            crash_after: crash_after_from_env(),
        }))
    }

    async fn load(&self, pk: &str) -> Result<(State, u64), JournalError> {
        let path = self.location(pk);
        let mut lines = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", AttributeValue::S(pk.to_string()))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| DisplayErrorContext(&e).to_string())
                .map_err(table_err(path.clone(), "reading"))?;
            for item in out.items() {
                lines.push(item.get("record").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default());
            }
            start = out.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
        // A put is all or nothing: no record is ever torn, so every line must parse.
        fold(&path, &lines, false)
    }

    async fn list_unfinished(&self) -> Result<Vec<(PathBuf, State)>, JournalError> {
        let prefix = format!("active#{}/", self.account);
        let mut journals = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("begins_with(pk, :p) AND sk = :zero")
                .expression_attribute_values(":p", AttributeValue::S(prefix.clone()))
                .expression_attribute_values(":zero", AttributeValue::N("0".into()))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| DisplayErrorContext(&e).to_string())
                .map_err(table_err(self.location(&prefix), "listing"))?;
            journals.extend(out.items().iter().filter_map(|i| i.get("journal").and_then(|v| v.as_s().ok()).cloned()));
            start = out.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
        journals.sort();
        let mut out = Vec::new();
        for pk in journals {
            let (state, _) = self.load(&pk).await?;
            out.push((self.location(&pk), state));
        }
        Ok(out)
    }

    async fn put_record(&self, pk: &str, record: &Record, line: String) -> Result<(), JournalError> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", AttributeValue::S(pk.to_string()))
            .item("sk", AttributeValue::N(record.seq.to_string()))
            .item("record", AttributeValue::S(line))
            .condition_expression("attribute_not_exists(sk)")
            .send()
            .await;
        match put {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Err(JournalError::Table {
                path: self.location(pk),
                problem: format!(
                    "record {} was already written by another runner: two processes are driving this rotation; let one finish",
                    record.seq
                ),
            }),
            Err(e) => Err(table_err(self.location(pk), "writing")(DisplayErrorContext(&e).to_string())),
        }
    }

    async fn archive(&self, pk: &str, user: &str) -> Result<PathBuf, JournalError> {
        let marker = self.marker_pk(user);
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(marker.clone()))
            .key("sk", AttributeValue::N("0".into()))
            .condition_expression("#j = :j")
            .expression_attribute_names("#j", "journal")
            .expression_attribute_values(":j", AttributeValue::S(pk.to_string()))
            .send()
            .await;
        match out {
            Ok(_) => Ok(self.location(pk)),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Err(JournalError::Table {
                path: self.location(pk),
                problem: format!("{marker} no longer points to this journal; it was closed by another runner"),
            }),
            Err(e) => Err(table_err(self.location(pk), "archiving")(DisplayErrorContext(&e).to_string())),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io { path: path.to_path_buf(), source }
}

fn active_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("active")
}

fn active_path(state_dir: &Path, user: &str) -> PathBuf {
    active_dir(state_dir).join(format!("{user}.jsonl"))
}

fn make_private_dir(dir: &Path) -> Result<(), JournalError> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err(dir))
}

pub fn now_rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
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
        Record { seq: self.next_seq, at: now_rfc3339(now), event }
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

fn write_line(file: &mut File, path: &Path, record: &Record) -> Result<(), JournalError> {
    let mut line = serde_json::to_string(record).expect("journal records serialize");
    line.push('\n');
    file.write_all(line.as_bytes()).map_err(io_err(path))?;
    file.sync_data().map_err(io_err(path))
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
