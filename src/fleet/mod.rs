//! `rekey plan` and `rekey run`: the rotations of a `rekey.toml`, on a schedule.
//!
//! A user is due when it has an Active key older than its `max_age`. `run` takes a lock per
//! (account, user), looks again under the lock (another runner may just have rotated the user),
//! finishes the deferred work of earlier runs, then rotates through [`rotation::rotate`], several
//! users at a time.
//!
//! Deferred work is recorded on the IAM user itself, as tags keyed by the access key id (the tag the
//! console shows as the key's description), so that any runner on any machine sees it:
//!
//! - `rekey-deactivate-after-<rfc3339>` on an Active old key: a rotation with a grace period ended
//!   with both keys Active; once the time has passed, `run` probes, deactivates, probes again, a
//!   journaled step of the rotation machine ([`rotation::finish_deferred`]);
//! - `rekey-deactivated-at-<rfc3339>` on an Inactive key: deactivated by rekey at that time; once
//!   `delete_after` has passed, `run` deletes it.
//!
//! Keys without these tags (deactivated by hand, say) are never deleted by `run`.

pub mod audit;
pub mod config;
pub mod lock;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::SharedCredentialsProvider;
use rekey_adapters::TargetKind;
use serde::Serialize;

use crate::aws::Wiring;
use crate::fleet::config::{Config, Defaults, Rotation};
use crate::fleet::lock::{Acquired, UserLock};
use crate::progress::Progress;
use crate::rotate::clock::SystemClock;
use crate::rotate::evidence::{self, IamLastUsed, Retire};
use crate::rotate::iam::{AwsIam, Iam, KeyInfo, KeyStatus};
use crate::rotate::journal::{Journals, Outcome, SharedJournals};
pub use crate::rotate::machine::DEACTIVATED_AT;
use crate::rotate::machine::{
    self as rotation, DEACTIVATE_AFTER, Deferral, Effects, Refusal, Report, Settings, TargetSetting,
};
use crate::rotate::wait::{Streak, Verify};

/// What the command line adds to the config.
#[derive(Debug, Clone)]
pub struct Options {
    pub concurrency: usize,
    pub state_dir: PathBuf,
    pub verify: Verify,
    pub probe: Streak,
    pub ecs_timeout: Duration,
    /// How long a rotation watches the old key before deactivating it (`--quiet-period`).
    pub quiet: Duration,
    /// How long a lock outlives a runner that crashed.
    pub lock_ttl: Duration,
    /// This runner, in lock items.
    pub owner: String,
}

/// The clients of one account: the one rekey runs in, or one reached through `[[account]]`.
pub struct Account {
    pub id: String,
    wiring: Wiring,
    /// Journals of other accounts live apart: a user name is unique only within its account.
    journals: Journals,
}

impl Account {
    fn new(id: String, sdk: &aws_types::SdkConfig, journals: Journals) -> Account {
        // Many users at once: no progress lines from each one's waits.
        let mut wiring = Wiring::new(sdk, &[], false);
        wiring.progress = Progress::off();
        Account { id, wiring, journals }
    }

    fn effects(&self) -> Effects<'_> {
        self.wiring.effects(self.journals.clone())
    }
}

pub struct Accounts {
    home: Arc<Account>,
    others: HashMap<String, Arc<Account>>,
}

impl Accounts {
    fn of(&self, r: &Rotation) -> Arc<Account> {
        match &r.account {
            Some(id) if *id != self.home.id => self.others.get(id).cloned().unwrap_or_else(|| self.home.clone()),
            _ => self.home.clone(),
        }
    }
}

/// The clients for every account of the config. Roles are assumed lazily, on first use, so that
/// an account whose role cannot be assumed fails its own users only.
pub async fn connect(base: &aws_types::SdkConfig, config: &Config, state_dir: &Path) -> Result<Accounts, String> {
    // IAM throttles per account; a fleet run makes many calls at once, so retry longer than the
    // SDK's default 3 attempts (each with its exponential, jittered backoff).
    let base = base.to_builder().retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(8)).build();
    let caller = AwsIam::new(&base)
        .caller()
        .await
        .map_err(|e| format!("cannot tell who rekey runs as: {e}; check your AWS credentials"))?;
    // A shared journal table lives with the runner, in the home account, whatever account the
    // user is in: it is reached with the runner's own credentials.
    let shared = config.journal.as_ref().map(|j| (aws_sdk_dynamodb::Client::new(&base), j.dynamodb_table.clone()));
    let journals = |id: &str, dir: PathBuf| match &shared {
        Some((client, table)) => Journals::Shared(SharedJournals::new(client.clone(), table, id)),
        None => Journals::Local(dir),
    };
    if let Some((client, table)) = &shared {
        SharedJournals::new(client.clone(), table, &caller.account).check_table().await?;
    }
    let home =
        Arc::new(Account::new(caller.account.clone(), &base, journals(&caller.account, state_dir.to_path_buf())));
    let mut others = HashMap::new();
    for a in config.accounts.iter().filter(|a| a.id != caller.account) {
        let mut role =
            aws_config::sts::AssumeRoleProvider::builder(&a.role_arn).session_name("rekey-run").configure(&base);
        if let Some(x) = &a.external_id {
            role = role.external_id(x);
        }
        let mut sdk = base.to_builder().credentials_provider(SharedCredentialsProvider::new(role.build().await));
        if let Some(r) = &a.region {
            sdk = sdk.region(aws_config::Region::new(r.clone()));
        }
        let dir = state_dir.join("accounts").join(&a.id);
        others.insert(a.id.clone(), Arc::new(Account::new(a.id.clone(), &sdk.build(), journals(&a.id, dir))));
    }
    Ok(Accounts { home, others })
}

/// What the tags say about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    DeactivateAfter(SystemTime),
    DeactivatedAt(SystemTime),
}

fn marker(value: &str) -> Option<Marker> {
    if let Some(t) = value.strip_prefix(DEACTIVATE_AFTER) {
        return rekey_trail::time::parse(t).map(Marker::DeactivateAfter);
    }
    value.strip_prefix(DEACTIVATED_AT).and_then(rekey_trail::time::parse).map(Marker::DeactivatedAt)
}

/// A user's keys and what rekey recorded about them.
#[derive(Debug, Clone)]
struct Keys {
    keys: Vec<KeyInfo>,
    markers: HashMap<String, Marker>,
}

async fn read_keys(account: &Account, user: &str) -> Result<Keys, String> {
    let keys =
        account.wiring.iam.list_keys(user).await.map_err(|e| format!("cannot list the access keys of {user}: {e}"))?;
    let tags = account.wiring.iam.user_tags(user).await.map_err(|e| format!("cannot list the tags of {user}: {e}"))?;
    let markers = tags.iter().filter_map(|(k, v)| marker(v).map(|m| (k.clone(), m))).collect();
    Ok(Keys { keys, markers })
}

/// Whether a user is due, and why (or why not).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Due {
    key: Option<String>,
    reason: String,
}

fn age(created: Option<SystemTime>, now: SystemTime) -> Duration {
    created.and_then(|c| now.duration_since(c).ok()).unwrap_or(Duration::ZERO)
}

/// `now` is when the run started: a key created after that (by another runner, say) is never due
/// in this run, however small `max_age` is.
fn due(k: &Keys, max_age: Duration, now: SystemTime) -> Due {
    let pending = k.keys.iter().find(|key| {
        key.status == KeyStatus::Active && matches!(k.markers.get(&key.id), Some(Marker::DeactivateAfter(_)))
    });
    if let Some(p) = pending {
        return Due {
            key: None,
            reason: format!("the replaced key {} is still in its grace period; the next rotation waits for it", p.id),
        };
    }
    let oldest = k.keys.iter().filter(|key| key.status == KeyStatus::Active).max_by_key(|key| age(key.created, now));
    match oldest {
        None => Due { key: None, reason: "no Active key".into() },
        Some(key) => {
            let a = age(key.created, now);
            let text = format!("key {} is {} old, max {}", key.id, show(a), show(max_age));
            if key.created.is_some() && a >= max_age {
                Due { key: Some(key.id.clone()), reason: text }
            } else {
                Due { key: None, reason: text }
            }
        }
    }
}

/// `97 days`, `5h 3m`, `12s`: the largest units that matter.
fn show(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        _ if s >= 2 * 86400 => format!("{} days", s / 86400),
        _ if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ if s >= 60 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{s}s"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Action {
    Deactivate,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Deferred {
    key_id: String,
    action: Action,
    at: SystemTime,
    /// A use of the key from here on holds the step: for a deactivation the end of the grace
    /// period, for a deletion the moment rekey deactivated the key.
    unused_since: SystemTime,
}

/// How a deferred step that ran without error ended.
enum Finished {
    Done,
    /// Something still used the key: it was left as it was, for a later run.
    Held(String),
}

/// What earlier runs left for later, due or not.
fn deferred(k: &Keys, delete_after: Option<Duration>) -> Vec<Deferred> {
    let mut out = Vec::new();
    for key in &k.keys {
        match (k.markers.get(&key.id), key.status) {
            // Inactive with the old tag: a runner died between the two calls; finish the step.
            (Some(Marker::DeactivateAfter(at)), _) => {
                out.push(Deferred { key_id: key.id.clone(), action: Action::Deactivate, at: *at, unused_since: *at })
            }
            (Some(Marker::DeactivatedAt(at)), KeyStatus::Inactive) => {
                if let Some(d) = delete_after {
                    out.push(Deferred {
                        key_id: key.id.clone(),
                        action: Action::Delete,
                        at: *at + d,
                        unused_since: *at,
                    });
                }
            }
            _ => {}
        }
    }
    out
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyView {
    pub id: String,
    pub status: KeyStatus,
    pub age_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeferredView {
    pub key_id: String,
    pub action: &'static str,
    pub at: String,
    pub due: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetView {
    pub target: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
}

/// One line of `rekey plan`.
#[derive(Debug, Clone, Serialize)]
pub struct PlanEntry {
    pub account: String,
    pub user: String,
    pub due: bool,
    pub reason: String,
    pub old_key_id: Option<String>,
    pub keys: Vec<KeyView>,
    /// The targets a rotation would change (only when due).
    pub targets: Vec<TargetView>,
    pub deferred: Vec<DeferredView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Deactivate => "deactivate",
        Action::Delete => "delete",
    }
}

/// What `run` would do now; changes nothing.
pub async fn plan(config: &Config, accounts: &Accounts, opts: &Options) -> Vec<PlanEntry> {
    let now = SystemTime::now();
    let _progress = Progress::off();
    let mut out = Vec::new();
    for r in &config.rotations {
        let account = accounts.of(r);
        let mut entry = PlanEntry {
            account: account.id.clone(),
            user: r.user.clone(),
            due: false,
            reason: String::new(),
            old_key_id: None,
            keys: Vec::new(),
            targets: Vec::new(),
            deferred: Vec::new(),
            error: None,
        };
        let keys = match read_keys(&account, &r.user).await {
            Ok(k) => k,
            Err(e) => {
                entry.reason = "cannot tell".into();
                entry.error = Some(e);
                out.push(entry);
                continue;
            }
        };
        let d = due(&keys, r.max_age(&config.defaults), now);
        entry.keys = keys
            .keys
            .iter()
            .map(|k| KeyView {
                id: k.id.clone(),
                status: k.status,
                age_secs: k.created.map(|c| age(Some(c), now).as_secs()),
            })
            .collect();
        entry.deferred = deferred(&keys, r.delete_after(&config.defaults))
            .into_iter()
            .map(|x| DeferredView {
                key_id: x.key_id,
                action: action_name(x.action),
                at: rekey_trail::time::format(x.at),
                due: x.at <= now,
            })
            .collect();
        entry.due = d.key.is_some();
        entry.reason = d.reason;
        entry.old_key_id = d.key.clone();
        if entry.due {
            let settings = settings_for(r, &config.defaults, opts, d.key, true);
            match rotation::rotate(&account.effects(), &settings, std::future::pending()).await {
                Ok(report) => {
                    entry.targets = report
                        .targets
                        .into_iter()
                        .map(|t| TargetView { target: t.target, changes: t.changes })
                        .collect()
                }
                Err(Refusal(e)) => entry.error = Some(e),
            }
        }
        out.push(entry);
    }
    out
}

fn settings_for(r: &Rotation, d: &Defaults, opts: &Options, old_key: Option<String>, dry_run: bool) -> Settings {
    let grace = r.grace(d);
    Settings {
        user: r.user.clone(),
        old_key,
        targets: r
            .targets
            .iter()
            .map(|spec| TargetSetting {
                spec: spec.clone(),
                // The config's restart command belongs to the files the application reads.
                restart_cmd: r
                    .restart_cmd
                    .clone()
                    .filter(|_| matches!(spec.kind, TargetKind::Env | TargetKind::Profile)),
            })
            .collect(),
        probes: r.probes.clone(),
        verify: opts.verify.clone(),
        probe: opts.probe.clone(),
        grace,
        // Deletion is `delete_after`'s business, done by a later run.
        delete_old: false,
        dry_run,
        ecs_timeout: opts.ecs_timeout,
        verify_regions: Vec::new(),
        defer_deactivation: !grace.is_zero(),
        // Without it, `delete_after` would never know when the old key was turned off.
        mark_deactivated: true,
        keep_keys: false,
        free_slot: None,
        own_key: false,
        // GetAccessKeyLastUsed through the account's own IAM client.
        retire: Retire { quiet: opts.quiet, ..Default::default() },
    }
}

/// One deferred step carried out by `run`.
#[derive(Debug, Clone, Serialize)]
pub struct DeferredDone {
    pub key_id: String,
    pub action: &'static str,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One user's line in the summary of `run`.
#[derive(Debug, Clone, Serialize)]
pub struct UserResult {
    pub account: String,
    pub user: String,
    /// rotated, rolled_back, failed, refused, skipped (locked, interrupted) or not_due.
    pub outcome: &'static str,
    pub reason: String,
    pub old_key_id: Option<String>,
    pub new_key_id: Option<String>,
    pub old_key_status: Option<KeyStatus>,
    /// When the old key will be deactivated, for a rotation with a grace period.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deactivate_after: Option<String>,
    pub deferred: Vec<DeferredDone>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub left: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub journal: Option<PathBuf>,
}

impl UserResult {
    fn new(account: &str, user: &str, outcome: &'static str, reason: String) -> UserResult {
        UserResult {
            account: account.to_string(),
            user: user.to_string(),
            outcome,
            reason,
            old_key_id: None,
            new_key_id: None,
            old_key_status: None,
            deactivate_after: None,
            deferred: Vec::new(),
            error: None,
            left: Vec::new(),
            warnings: Vec::new(),
            journal: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub rotated: usize,
    pub rolled_back: usize,
    pub failed: usize,
    pub refused: usize,
    pub skipped: usize,
    pub not_due: usize,
    pub deferred_done: usize,
    pub deferred_failed: usize,
    /// Deferred steps left undone because something still used the old key.
    pub deferred_held: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub results: Vec<UserResult>,
    pub counts: Counts,
    /// Serialised as its exit code.
    pub exit_code: crate::exit::Status,
}

impl Summary {
    fn new(results: Vec<UserResult>) -> Summary {
        let mut c = Counts::default();
        for r in &results {
            match r.outcome {
                "rotated" => c.rotated += 1,
                "rolled_back" => c.rolled_back += 1,
                "refused" => c.refused += 1,
                "skipped" => c.skipped += 1,
                "not_due" => c.not_due += 1,
                _ => c.failed += 1,
            }
            for d in &r.deferred {
                match d.status {
                    "ok" => c.deferred_done += 1,
                    "held" => c.deferred_held += 1,
                    _ => c.deferred_failed += 1,
                }
            }
        }
        // A refusal is a due key left in place: as much a failure of the schedule as a failed rotation.
        let exit_code = if c.failed + c.refused + c.deferred_failed > 0 {
            crate::exit::Status::Failed
        } else if c.rolled_back > 0 {
            crate::exit::Status::RolledBack
        } else if c.deferred_held > 0 {
            // As `rotate` and `retire`: a key kept Active on evidence is the operator's next move.
            crate::exit::Status::Held
        } else {
            crate::exit::Status::Ok
        };
        Summary { results, counts: c, exit_code }
    }
}

/// Rotate every due user, `opts.concurrency` at a time, and finish the deferred work.
pub async fn run(
    config: &Config,
    accounts: Arc<Accounts>,
    lock: Arc<dyn UserLock>,
    opts: Options,
    interrupt: impl Future<Output = ()> + Send + 'static,
) -> Summary {
    let started = SystemTime::now();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn(async move {
        interrupt.await;
        let _ = stop_tx.send(true);
    });
    let opts = Arc::new(opts);
    let limit = Arc::new(tokio::sync::Semaphore::new(opts.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, r) in config.rotations.iter().enumerate() {
        let (r, defaults, accounts, lock, opts, limit) =
            (r.clone(), config.defaults.clone(), accounts.clone(), lock.clone(), opts.clone(), limit.clone());
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            let account = accounts.of(&r);
            let Ok(_permit) = limit.acquire_owned().await else {
                return (i, UserResult::new(&account.id, &r.user, "skipped", "the run was stopped".into()));
            };
            if *stop.borrow() {
                return (i, UserResult::new(&account.id, &r.user, "skipped", "interrupted before it started".into()));
            }
            let interrupt = async move {
                // A dropped sender means no interrupt can come any more.
                if stop.wait_for(|s| *s).await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            (i, one_user(&account, lock.as_ref(), &r, &defaults, &opts, started, interrupt).await)
        });
    }
    let mut results: Vec<Option<UserResult>> = vec![None; config.rotations.len()];
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((i, r)) => results[i] = Some(r),
            Err(e) => tracing::error!("a rotation task ended abnormally: {e}"),
        }
    }
    watcher.abort();
    let results = results
        .into_iter()
        .zip(&config.rotations)
        .map(|(r, rot)| {
            r.unwrap_or_else(|| {
                let mut u = UserResult::new(
                    rot.account.as_deref().unwrap_or(&accounts.home.id),
                    &rot.user,
                    "failed",
                    "internal error".into(),
                );
                u.error = Some("the task rotating this user ended abnormally; run `rekey status`".into());
                u
            })
        })
        .collect();
    Summary::new(results)
}

async fn one_user(
    account: &Account,
    lock: &dyn UserLock,
    r: &Rotation,
    defaults: &Defaults,
    opts: &Options,
    started: SystemTime,
    interrupt: impl Future<Output = ()>,
) -> UserResult {
    let user = r.user.as_str();
    // A user with nothing to do is not locked at all: a second run going over the same config at the
    // same time then reports it as not due, as it is, rather than as "skipped, locked by" the first.
    // The check is repeated under the lock, which is what decides.
    if let Ok(keys) = read_keys(account, user).await {
        let pending = deferred(&keys, r.delete_after(defaults)).iter().any(|d| d.at <= SystemTime::now());
        let d = due(&keys, r.max_age(defaults), started);
        if !pending && d.key.is_none() {
            return UserResult::new(&account.id, user, "not_due", d.reason);
        }
    }
    let guard = match lock.acquire(&account.id, user, &opts.owner, opts.lock_ttl).await {
        Ok(Acquired::Got(g)) => g,
        Ok(Acquired::Held(holder)) => return UserResult::new(&account.id, user, "skipped", holder.to_string()),
        Err(e) => {
            let mut u = UserResult::new(&account.id, user, "failed", "the lock could not be taken".into());
            u.error = Some(e.to_string());
            return u;
        }
    };
    let mut result = locked(account, r, defaults, opts, started, interrupt).await;
    if let Err(e) = lock.release(guard).await {
        result.warnings.push(format!("{e}; it expires by itself"));
    }
    result
}

/// Everything done for one user while its lock is held.
async fn locked(
    account: &Account,
    r: &Rotation,
    defaults: &Defaults,
    opts: &Options,
    started: SystemTime,
    interrupt: impl Future<Output = ()>,
) -> UserResult {
    let user = r.user.as_str();
    let mut keys = match read_keys(account, user).await {
        Ok(k) => k,
        Err(e) => {
            let mut u = UserResult::new(&account.id, user, "failed", "cannot read the user's keys".into());
            u.error = Some(e);
            return u;
        }
    };
    let mut done = Vec::new();
    let now = SystemTime::now();
    let work: Vec<Deferred> = deferred(&keys, r.delete_after(defaults)).into_iter().filter(|d| d.at <= now).collect();
    let mut interrupt = Sticky { inner: Box::pin(interrupt), fired: false };
    for d in &work {
        let outcome = match d.action {
            Action::Deactivate => deactivate(account, r, opts, d, interrupt.wait()).await,
            Action::Delete => delete(account, user, d).await,
        };
        let (status, error) = match outcome {
            Ok(Finished::Done) => ("ok", None),
            Ok(Finished::Held(why)) => ("held", Some(why)),
            Err(e) => ("failed", Some(e)),
        };
        done.push(DeferredDone {
            key_id: d.key_id.clone(),
            action: match d.action {
                Action::Deactivate => "deactivated",
                Action::Delete => "deleted",
            },
            status,
            error,
        });
    }
    if !work.is_empty() {
        match read_keys(account, user).await {
            Ok(k) => keys = k,
            Err(e) => {
                let mut u = UserResult::new(&account.id, user, "failed", "cannot read the user's keys".into());
                u.error = Some(e);
                u.deferred = done;
                return u;
            }
        }
    }

    let d = due(&keys, r.max_age(defaults), started);
    let Some(old) = d.key.clone() else {
        let mut u = UserResult::new(&account.id, user, "not_due", d.reason);
        u.deferred = done;
        return u;
    };
    let settings = settings_for(r, defaults, opts, Some(old.clone()), false);
    let _progress = Progress::off();
    let fx = account.effects();
    let mut u = match rotation::rotate(&fx, &settings, interrupt.wait()).await {
        Ok(report) => from_report(&account.id, d.reason, report),
        Err(Refusal(e)) => {
            let mut u = UserResult::new(&account.id, user, "refused", d.reason);
            u.old_key_id = Some(old.clone());
            u.error = Some(e);
            u
        }
    };
    u.deferred = done;
    if u.outcome == "rotated" && settings.defer_deactivation {
        u.deactivate_after = keys_marker_time(account, user, &old).await.map(rekey_trail::time::format);
    }
    u
}

async fn keys_marker_time(account: &Account, user: &str, key: &str) -> Option<SystemTime> {
    let k = read_keys(account, user).await.ok()?;
    match k.markers.get(key) {
        Some(Marker::DeactivateAfter(t)) => Some(*t),
        _ => None,
    }
}

fn from_report(account: &str, reason: String, r: Report) -> UserResult {
    let mut u = UserResult::new(account, &r.user, r.outcome, reason);
    u.old_key_id = r.old_key_id;
    u.new_key_id = r.new_key_id;
    u.old_key_status = r.old_key_status;
    u.error = r.error;
    u.left = r.left;
    u.warnings = r.warnings;
    u.journal = r.journal;
    u
}

/// An interrupt awaited by one step after another: once it has fired, it stays fired.
struct Sticky<F: Future<Output = ()>> {
    inner: std::pin::Pin<Box<F>>,
    fired: bool,
}

impl<F: Future<Output = ()>> Sticky<F> {
    async fn wait(&mut self) {
        if !self.fired {
            (&mut self.inner).await;
            self.fired = true;
        }
    }
}

/// The end of a deferred rotation, through the rotation machine ([`rotation::finish_deferred`]),
/// with the same check on the old key's use as `rotate` and `retire`: a consumer still on it since
/// the grace period ended holds the deactivation (the key stays Active, the hold is tagged).
async fn deactivate(
    account: &Account,
    r: &Rotation,
    opts: &Options,
    d: &Deferred,
    interrupt: impl Future<Output = ()>,
) -> Result<Finished, String> {
    let key = d.key_id.as_str();
    let deferral = Deferral {
        user: r.user.clone(),
        key_id: key.to_string(),
        probes: r.probes.clone(),
        probe: opts.probe.clone(),
        retire: Retire { quiet: opts.quiet, since: Some(d.unused_since), ..Retire::default() },
    };
    let report = rotation::finish_deferred(&account.effects(), &deferral, interrupt).await.map_err(|Refusal(e)| e)?;
    let error = report.error.clone().unwrap_or_default();
    match report.outcome() {
        Outcome::Rotated => Ok(Finished::Done),
        Outcome::Held => Ok(Finished::Held(report.left.join("; "))),
        Outcome::RolledBack => {
            Err(format!("{error}; {key} was turned back on and will be tried again by the next run"))
        }
        _ => Err(format!("{error}; {}", report.left.join("; "))),
    }
}

/// Deletes a key rekey deactivated once `delete_after` has passed, only if nothing has used it
/// since (a key someone turned back on and used is not rekey's to delete).
async fn delete(account: &Account, user: &str, d: &Deferred) -> Result<Finished, String> {
    let key = d.key_id.as_str();
    let used = evidence::check_since(&IamLastUsed(&account.wiring.iam), &SystemClock, key, d.unused_since).await;
    if used.holds() {
        return Ok(Finished::Held(format!("{}; not deleted", used.summary())));
    }
    match account.wiring.iam.delete_key(user, key).await {
        Ok(()) | Err(crate::rotate::iam::IamError::NoSuchKey(_)) => {
            let _ = account.wiring.iam.untag_key(user, key).await;
            Ok(Finished::Done)
        }
        Err(e) => Err(format!("deleting {key}: {e}")),
    }
}

pub fn print_plan(entries: &[PlanEntry], json: bool) {
    if json {
        let doc = serde_json::json!({ "users": entries });
        println!("{}", serde_json::to_string_pretty(&doc).expect("plan serializes"));
        return;
    }
    println!("{:<13} {:<32} {:<8} REASON", "ACCOUNT", "USER", "DUE");
    for e in entries {
        println!("{:<13} {:<32} {:<8} {}", e.account, e.user, if e.due { "due" } else { "-" }, e.reason);
        for t in &e.targets {
            println!("{:>55} {}", "target", t.target);
            for c in &t.changes {
                println!("{:>55}   would {c}", "");
            }
        }
        for d in &e.deferred {
            let when = if d.due { "now".to_string() } else { format!("after {}", d.at) };
            println!("{:>55} {} {} {when}", "deferred", d.action, d.key_id);
        }
        if let Some(err) = &e.error {
            println!("{:>55} {err}", "problem");
        }
    }
}

pub fn print_summary(s: &Summary, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(s).expect("summary serializes"));
    } else {
        let key = |k: &Option<String>| k.clone().unwrap_or_else(|| "-".into());
        for r in &s.results {
            let what = match r.outcome {
                "rotated" => {
                    let old = match (&r.deactivate_after, r.old_key_status) {
                        (Some(t), _) => format!("old key Active until {t}"),
                        (None, Some(st)) => format!("old key {st}"),
                        (None, None) => "old key deleted".into(),
                    };
                    format!("{} -> {} ({old})", key(&r.old_key_id), key(&r.new_key_id))
                }
                _ => r.reason.clone(),
            };
            println!("{:<12} {:<13} {:<32} {what}", r.outcome, r.account, r.user);
            if let Some(e) = &r.error {
                println!("{:>12} cause: {e}", "");
            }
            for d in &r.deferred {
                let err = d.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
                println!("{:>12} {} {} {}{err}", "", d.action, d.key_id, d.status);
            }
            for l in &r.left {
                println!("{:>12} left to do: {l}", "");
            }
        }
        let c = &s.counts;
        println!(
            "{} rotated, {} rolled back, {} failed, {} refused, {} skipped, {} not due; deferred steps: {} done, {} held, {} failed",
            c.rotated,
            c.rolled_back,
            c.failed,
            c.refused,
            c.skipped,
            c.not_due,
            c.deferred_done,
            c.deferred_held,
            c.deferred_failed
        );
    }
    for r in s.results.iter().filter(|r| matches!(r.outcome, "rolled_back" | "failed" | "refused")) {
        eprintln!("rekey: {} {}: {}", r.outcome, r.user, r.error.as_deref().unwrap_or(&r.reason));
    }
    for r in &s.results {
        for d in r.deferred.iter().filter(|d| d.status == "held") {
            eprintln!("rekey: held {} {}: {}", r.user, d.key_id, d.error.as_deref().unwrap_or("still in use"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86400);

    #[test]
    fn a_held_deferred_step_is_counted_apart_and_exits_held_unless_something_failed() {
        let mut held = UserResult::new("1", "app", "not_due", "fresh".into());
        held.deferred.push(DeferredDone {
            key_id: "AKIAOLD".into(),
            action: "deactivated",
            status: "held",
            error: Some("AKIAOLD is still used".into()),
        });
        let s = Summary::new(vec![held.clone()]);
        assert_eq!((s.counts.deferred_held, s.counts.deferred_failed), (1, 0));
        assert_eq!(s.exit_code, crate::exit::Status::Held);
        let failed = UserResult::new("1", "other", "failed", "boom".into());
        assert_eq!(Summary::new(vec![held, failed]).exit_code, crate::exit::Status::Failed);
    }

    fn keys(list: &[(&str, KeyStatus, u64)], tags: &[(&str, &str)], now: SystemTime) -> Keys {
        Keys {
            keys: list
                .iter()
                .map(|(id, st, days)| KeyInfo {
                    id: id.to_string(),
                    status: *st,
                    created: Some(now - DAY * *days as u32),
                })
                .collect(),
            markers: tags.iter().filter_map(|(k, v)| marker(v).map(|m| (k.to_string(), m))).collect(),
        }
    }

    #[test]
    fn an_active_key_older_than_max_age_is_due_and_says_why() {
        let now = SystemTime::now();
        let d = due(&keys(&[("AKIAOLD", KeyStatus::Active, 97)], &[], now), 90 * DAY, now);
        assert_eq!(d.key.as_deref(), Some("AKIAOLD"));
        assert_eq!(d.reason, "key AKIAOLD is 97 days old, max 90 days");
        let d = due(&keys(&[("AKIANEW", KeyStatus::Active, 3)], &[], now), 90 * DAY, now);
        assert_eq!(d.key, None);
        assert!(d.reason.contains("3 days old"), "{}", d.reason);
        let d = due(&keys(&[("AKIAOFF", KeyStatus::Inactive, 300)], &[], now), 90 * DAY, now);
        assert_eq!(d.key, None, "Inactive keys are not rotated");
    }

    #[test]
    fn a_key_in_its_grace_period_holds_back_the_next_rotation_and_is_deactivated_after() {
        let now = SystemTime::now();
        let after = format!("{DEACTIVATE_AFTER}{}", rekey_trail::time::format(now - DAY));
        let k =
            keys(&[("AKIAOLD", KeyStatus::Active, 97), ("AKIANEW", KeyStatus::Active, 1)], &[("AKIAOLD", &after)], now);
        assert_eq!(due(&k, 90 * DAY, now).key, None);
        let work = deferred(&k, Some(7 * DAY));
        assert_eq!(work.len(), 1);
        assert_eq!((work[0].key_id.as_str(), work[0].action), ("AKIAOLD", Action::Deactivate));
    }

    #[test]
    fn only_keys_rekey_deactivated_are_deleted_and_only_after_delete_after() {
        let now = SystemTime::now();
        let at = format!("{DEACTIVATED_AT}{}", rekey_trail::time::format(now - 2 * DAY));
        let k = keys(
            &[("AKIAMINE", KeyStatus::Inactive, 97), ("AKIAHAND", KeyStatus::Inactive, 97)],
            &[("AKIAMINE", &at), ("AKIAHAND", "the old CI key")],
            now,
        );
        let work = deferred(&k, Some(DAY));
        assert_eq!(work.len(), 1);
        assert_eq!((work[0].key_id.as_str(), work[0].action), ("AKIAMINE", Action::Delete));
        assert!(work[0].at <= now);
        assert!(deferred(&k, None).is_empty(), "no delete_after: kept for a person");
    }
}
