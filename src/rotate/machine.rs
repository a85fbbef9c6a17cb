//! The rotation, top to bottom: preflight, create, verify, push, probe, deactivate; and the way
//! back from any point, in this process or, after a crash, from the journal.
//!
//! Every side effect goes through a trait ([`Iam`], [`KeyCheck`], [`Target`], [`Probe`], [`Clock`]),
//! and every decision about what to undo is taken from the journal's [`State`], never from local
//! variables: the rollback after a failure here and the rollback by `rekey resume` after a crash
//! are then the same code.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rekey_adapters::{Role, Target, TargetSpec};
use serde::Serialize;

use crate::progress::Progress;
use crate::rotate::clock::Clock;
use crate::rotate::evidence::{self, Judgement, Retire};
use crate::rotate::iam::{Iam, IamError, KeyCheck, KeyStatus, Signer};
use crate::rotate::journal::{
    Begin, Event, Journal, JournalError, Journals, Kind, Outcome, Phase, State, StepState, TargetRecord,
};
use crate::rotate::probe::{Probe, redact_url};
use crate::rotate::trust;
use crate::rotate::wait::{Streak, Verify, until_propagated, until_streak};

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct Settings {
    pub user: String,
    pub old_key: Option<String>,
    pub targets: Vec<TargetSetting>,
    pub probes: Vec<String>,
    pub verify: Verify,
    pub probe: Streak,
    pub grace: Duration,
    pub delete_old: bool,
    pub dry_run: bool,
    pub ecs_timeout: Duration,
    /// Regions whose STS endpoints must accept the new key (empty: the configured region).
    pub verify_regions: Vec<String>,
    /// End the rotation once the probes pass, with the old key still Active and a user tag
    /// `<old key id> = rekey-deactivate-after-<rfc3339>` saying when a later `rekey run` may turn it
    /// off: a scheduled runner does not sit out an hour of grace per user, and the tag is seen by
    /// whichever runner, on whichever machine, comes next.
    pub defer_deactivation: bool,
    /// Once the old key is off, tag it with the time (`rekey-deactivated-at-<rfc3339>`), so that a
    /// later `rekey run` deletes it after `delete_after`.
    pub mark_deactivated: bool,
    /// `rotate --self`: the user is the caller, whose own key is rotated (see `aws::own_key`).
    pub own_key: bool,
    /// Before deactivating, look for uses of the old key by consumers rekey did not move, and hold
    /// it Active when there are (outcome `held`); see [`evidence`].
    pub retire: Retire,
    /// Delete no access key to make room (incident mode: an Inactive second key may be evidence).
    /// A user without a free slot is then refused, unless its other key is `free_slot`.
    pub keep_keys: bool,
    /// The Inactive key the operator, having looked at it, lets rekey delete (`--free-slot`).
    pub free_slot: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TargetSetting {
    pub spec: TargetSpec,
    pub restart_cmd: Option<String>,
}

/// Builds targets and probes, so that `resume` can rebuild them from the journal and tests can
/// hand in fakes.
pub trait Factory: Send + Sync {
    fn target(&self, spec: &TargetSpec, cx: &TargetContext<'_>) -> Box<dyn Target>;
    fn probe(&self, url: &str) -> Result<Box<dyn Probe>, String>;
}

/// What a target is built with besides its spec.
#[derive(Debug, Clone, Copy)]
pub struct TargetContext<'a> {
    pub restart_cmd: Option<&'a str>,
    pub ecs_timeout: Duration,
    /// The key being replaced.
    pub old_key_id: &'a str,
    /// The new key, when it already exists (a resumed rotation).
    pub new_key_id: Option<&'a str>,
}

/// The side effects a rotation may have.
pub struct Effects<'a> {
    pub iam: &'a dyn Iam,
    pub key_check: &'a dyn KeyCheck,
    pub clock: &'a dyn Clock,
    pub factory: &'a dyn Factory,
    pub progress: &'a Progress,
    /// Where the rotation is journaled.
    pub journals: Journals,
}

/// The value prefix of the user tag, keyed by the old access key id, that defers its deactivation.
pub const DEACTIVATE_AFTER: &str = "rekey-deactivate-after-";
/// The value prefix of the user tag, keyed by an access key id, saying when rekey deactivated it.
pub const DEACTIVATED_AT: &str = "rekey-deactivated-at-";

/// A refusal before anything changed: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

impl From<JournalError> for Refusal {
    fn from(e: JournalError) -> Self {
        Refusal(e.to_string())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub name: String,
    pub status: &'static str,
    pub duration_ms: u128,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub target: String,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
}

/// What happened, for the human summary and `--output json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub user: String,
    pub outcome: &'static str,
    pub old_key_id: Option<String>,
    pub new_key_id: Option<String>,
    pub old_key_status: Option<KeyStatus>,
    pub targets: Vec<TargetReport>,
    pub steps: Vec<StepReport>,
    pub journal: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What a failed rollback left behind, and how to finish.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub left: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// What was checked about the old key's use before deactivating it, and what it showed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Judgement>,
}

impl Report {
    pub fn outcome(&self) -> Outcome {
        match self.outcome {
            "rotated" => Outcome::Rotated,
            "rolled_back" => Outcome::RolledBack,
            "planned" => Outcome::Planned,
            "refused" => Outcome::Refused,
            "held" => Outcome::Held,
            _ => Outcome::Failed,
        }
    }

    pub fn refused(user: &str, error: &str) -> Report {
        Report {
            user: user.to_string(),
            outcome: Outcome::Refused.as_str(),
            old_key_id: None,
            new_key_id: None,
            old_key_status: None,
            targets: Vec::new(),
            steps: Vec::new(),
            journal: None,
            error: Some(error.to_string()),
            left: Vec::new(),
            warnings: Vec::new(),
            evidence: None,
        }
    }
}

/// What preflight decided.
struct Plan {
    caller_arn: String,
    account: String,
    old_key_id: String,
    existing_keys: Vec<String>,
    /// The user's Inactive second key, deleted to make room for the new one.
    free_slot: Option<String>,
    targets: Vec<Box<dyn Target>>,
    changes: Vec<Vec<String>>,
    probes: Vec<Box<dyn Probe>>,
    warnings: Vec<String>,
}

/// Why the forward path stopped.
struct Failure {
    step: String,
    error: String,
}

impl Failure {
    fn new(step: impl Into<String>, error: impl ToString) -> Self {
        Failure { step: step.into(), error: error.to_string() }
    }
}

impl From<JournalError> for Failure {
    fn from(e: JournalError) -> Self {
        Failure::new("journal", e)
    }
}

/// One rotation in flight: its journal, its targets, and what the report will say.
struct Run<'a> {
    fx: &'a Effects<'a>,
    journal: Journal,
    targets: Vec<Box<dyn Target>>,
    probes: Vec<Box<dyn Probe>>,
    steps: Vec<StepReport>,
    warnings: Vec<String>,
    changes: Vec<Vec<String>>,
    /// The check of the old key's use before deactivation, once made.
    evidence: Option<Judgement>,
}

/// Rotate one user's key. Ctrl-C (or any `interrupt`) rolls back.
pub async fn rotate(
    fx: &Effects<'_>,
    settings: &Settings,
    interrupt: impl Future<Output = ()>,
) -> Result<Report, Refusal> {
    let started = Instant::now();
    let plan = preflight(fx, settings).await?;
    let preflight_step =
        StepReport { name: "preflight".into(), status: "ok", duration_ms: started.elapsed().as_millis() };
    for w in &plan.warnings {
        tracing::warn!("{w}");
    }
    if settings.dry_run {
        return Ok(planned_report(settings, &plan, preflight_step));
    }

    let begin = Begin {
        rotation_id: rotation_id(fx.clock),
        user: settings.user.clone(),
        account: plan.account.clone(),
        principal: plan.caller_arn.clone(),
        old_key_id: plan.old_key_id.clone(),
        existing_keys: plan.existing_keys.clone(),
        targets: settings
            .targets
            .iter()
            .map(|t| TargetRecord { spec: t.spec.raw.clone(), restart_cmd: t.restart_cmd.clone() })
            .collect(),
        // Without passwords: `resume` asks for them again (see `trust`).
        probes: settings.probes.iter().map(|p| redact_url(p)).collect(),
        delete_old: settings.delete_old,
        grace_secs: settings.grace.as_secs(),
        ecs_timeout_secs: settings.ecs_timeout.as_secs(),
        kind: Kind::Rotation,
        defer_deactivation: settings.defer_deactivation,
        mark_deactivated: settings.mark_deactivated,
    };
    let journal = fx.journals.create(begin, fx.clock.now()).await?;
    let mut run = Run {
        fx,
        journal,
        targets: plan.targets,
        probes: plan.probes,
        steps: vec![preflight_step],
        warnings: plan.warnings,
        changes: plan.changes,
        evidence: None,
    };

    let forward = tokio::select! {
        result = run.forward(settings, plan.free_slot.as_deref()) => result,
        () = interrupt => Err(Failure::new("interrupted", "interrupted by the user (Ctrl-C)")),
    };
    Ok(match forward {
        Ok(()) => run.complete(None).await,
        Err(failure) => run.roll_back(failure).await,
    })
}

/// Finish or undo an unfinished rotation after a crash.
pub async fn resume(
    fx: &Effects<'_>,
    user: &str,
    force_rollback: bool,
    settings: &Settings,
    interrupt: impl Future<Output = ()>,
) -> Result<Report, Refusal> {
    let Some(journal) = fx.journals.open(user).await? else {
        return Err(Refusal(format!("no unfinished rotation of {user} in {}; `rekey status` lists them", fx.journals)));
    };
    let state = journal.state().clone();
    let begin = &state.begin;
    let probe_urls = trust::resumed_probes(&fx.journals, journal.path(), begin, &settings.targets, &settings.probes)
        .map_err(Refusal)?;
    let ecs_timeout = Duration::from_secs(begin.ecs_timeout_secs);
    let mut targets = Vec::new();
    for t in &begin.targets {
        let spec: TargetSpec = t
            .spec
            .parse()
            .map_err(|e: rekey_adapters::SpecError| Refusal(format!("journal {}: {e}", journal.path().display())))?;
        let cx = TargetContext {
            restart_cmd: t.restart_cmd.as_deref(),
            ecs_timeout,
            old_key_id: &begin.old_key_id,
            new_key_id: state.new_key_id.as_deref(),
        };
        targets.push(fx.factory.target(&spec, &cx));
    }
    let mut probes = Vec::new();
    for url in &probe_urls {
        probes.push(fx.factory.probe(url).map_err(Refusal)?);
    }
    let changes = vec![Vec::new(); targets.len()];
    let mut run =
        Run { fx, journal, targets, probes, steps: Vec::new(), warnings: Vec::new(), changes, evidence: None };
    tracing::info!(user, last_step = %state.last_step(), "resuming the rotation journaled in {}", run.journal.path().display());

    if let Some(outcome) = state.ended {
        // It ended; only the cleanup (backups holding a secret) failed, and is tried again.
        return Ok(run.retry_cleanup(outcome).await);
    }

    // A rollback that began is finished, not turned round: it may already have turned the old key
    // back on or restored targets to it. Only a deleted old key leaves no way back.
    if let Some(reason) = state.rollback_reason.clone().filter(|_| !state.delete_old.started()) {
        return Ok(run
            .roll_back(Failure::new("resume", format!("finishing the rollback begun after: {reason}")))
            .await);
    }
    if state.delete_old.started() || (state.deactivate == StepState::Done && !force_rollback) {
        // The old key is off or gone: only the end of the forward path is left.
        let result = run.after_deactivation(begin.delete_old).await;
        return Ok(match result {
            Ok(()) => run.complete(None).await,
            Err(f) => run.roll_back(f).await,
        });
    }
    let all_pushed = !state.consumers.is_empty() && state.consumers.iter().all(|s| *s == StepState::Done);
    let can_finish = state.verify == StepState::Done && all_pushed;
    if force_rollback || !can_finish {
        let why = if force_rollback {
            "rollback asked for with --rollback".to_string()
        } else if begin.kind == Kind::FinishDeferred {
            // Nothing to finish without knowing the old key is off: it stays Active, still tagged,
            // and the next `rekey run` tries again.
            format!("the deferred deactivation stopped at \"{}\", before the old key was off", state.last_step())
        } else {
            format!("the rotation stopped at \"{}\", before every target had the new key", state.last_step())
        };
        return Ok(run.roll_back(Failure::new("resume", why)).await);
    }
    let grace = Duration::from_secs(begin.grace_secs);
    let forward = tokio::select! {
        r = async {
            if begin.defer_deactivation {
                run.probe_then_defer(&settings.probe, grace).await
            } else {
                run.finish_forward(settings.probe.clone(), begin.delete_old, grace, &settings.retire).await
            }
        } => r,
        () = interrupt => Err(Failure::new("interrupted", "interrupted by the user (Ctrl-C)")),
    };
    Ok(match forward {
        Ok(()) => run.complete(None).await,
        Err(f) => run.roll_back(f).await,
    })
}

async fn preflight(fx: &Effects<'_>, s: &Settings) -> Result<Plan, Refusal> {
    let user = &s.user;
    fx.journals.vacant(user).await?;
    if s.targets.is_empty() {
        return Err(Refusal(format!(
            "no --target given for {user}: the new key would reach no consumer; name where the key is used, e.g. --target secretsmanager:<secret-id>"
        )));
    }
    let caller = fx
        .iam
        .caller()
        .await
        .map_err(|e| Refusal(format!("cannot tell who rekey runs as: {e}; check your AWS credentials")))?;
    if s.own_key && caller.user_name.as_deref() != Some(user.as_str()) {
        return Err(Refusal(format!(
            "--self rotates the caller's own key, but rekey runs as {}, not {user}; drop --self or run as {user}",
            caller.arn
        )));
    }
    if !s.own_key && caller.user_name.as_deref() == Some(user.as_str()) {
        return Err(Refusal(format!(
            "rekey is running as {user}, the user being rotated; its credentials are the ones about to change: run it as another principal (an admin user or role)"
        )));
    }
    let keys = fx.iam.list_keys(user).await.map_err(|e| match e {
        IamError::NoSuchUser(_) => {
            Refusal(format!("no IAM user named {user:?} in account {}; check --user", caller.account))
        }
        other => Refusal(format!("cannot list the access keys of {user}: {other}")),
    })?;
    let existing_keys: Vec<String> = keys.iter().map(|k| k.id.clone()).collect();
    let active: Vec<_> = keys.iter().filter(|k| k.status == KeyStatus::Active).collect();

    let old = match &s.old_key {
        Some(id) => {
            let k = keys.iter().find(|k| &k.id == id).ok_or_else(|| {
                Refusal(format!(
                    "{user} has no access key {id} (its keys: {}); check --old-key",
                    list_or_none(&existing_keys)
                ))
            })?;
            if k.status != KeyStatus::Active {
                return Err(Refusal(format!(
                    "{id} of {user} is already Inactive: there is nothing to replace; delete it or name the Active key"
                )));
            }
            k
        }
        None => match active.as_slice() {
            [] => {
                return Err(Refusal(format!("{user} has no Active access key to rotate; create one or check --user")));
            }
            [one] => one,
            [a, b, ..] => {
                let (ua, ub) = (
                    fx.iam.last_used(&a.id).await.unwrap_or_default(),
                    fx.iam.last_used(&b.id).await.unwrap_or_default(),
                );
                return Err(Refusal(format!(
                    "{user} has two Active keys, {} ({ua}) and {} ({ub}); retire the unused one (deactivate, then delete) or name the one to replace with --old-key",
                    a.id, b.id
                )));
            }
        },
    };
    let mut free_slot = None;
    let other = keys.iter().find(|k| k.id != old.id);
    if let Some(named) = &s.free_slot
        && other.is_none_or(|o| &o.id != named)
    {
        return Err(Refusal(format!(
            "--free-slot {named} is not {user}'s other access key (its keys: {}); name the Inactive key that blocks the slot, or drop --free-slot",
            list_or_none(&existing_keys)
        )));
    }
    if let Some(other) = other {
        if other.status == KeyStatus::Active {
            return Err(Refusal(format!(
                "{user} also has the Active key {} and IAM allows 2 keys per user, so no new key fits; retire {} first",
                other.id, other.id
            )));
        }
        if s.keep_keys && s.free_slot.as_deref() != Some(other.id.as_str()) {
            return Err(Refusal(format!(
                "{user} has no free key slot: its other key {} is Inactive and may be evidence, so it is not deleted; look at it (its metadata is in the report), then run again with --free-slot {} to let rekey delete it",
                other.id, other.id
            )));
        }
        free_slot = Some(other.id.clone());
    }

    let mut targets = Vec::new();
    let mut changes = Vec::new();
    let mut warnings = Vec::new();
    let mut stores: Vec<String> = Vec::new();
    for t in &s.targets {
        let cx = TargetContext {
            restart_cmd: t.restart_cmd.as_deref(),
            ecs_timeout: s.ecs_timeout,
            old_key_id: &old.id,
            new_key_id: None,
        };
        let target = fx.factory.target(&t.spec, &cx);
        let pre = target.preflight().await.map_err(|e| Refusal(format!("target {e}")))?;
        if let Some(held) = pre.current_key_id.as_deref().filter(|held| *held != old.id) {
            return Err(Refusal(format!(
                "target {} holds key {held}, not {}, the key being replaced; fix the target or name the right key with --old-key",
                t.spec, old.id
            )));
        }
        for store in &pre.reads_from {
            if !stores.iter().any(|s| store.starts_with(s.as_str()) || s.starts_with(store.as_str())) {
                return Err(Refusal(format!(
                    "target {} reads the key from {store}, which no earlier target updates; add --target secretsmanager:{store} before it",
                    t.spec
                )));
            }
        }
        stores.extend(pre.store_arn.clone());
        warnings.extend(pre.warnings.iter().map(|w| format!("{}: {w}", t.spec)));
        changes.push(pre.changes);
        targets.push(target);
    }
    let mut probes = Vec::new();
    for url in &s.probes {
        probes.push(fx.factory.probe(url).map_err(Refusal)?);
    }
    if probes.is_empty() {
        warnings.push(
            "no --probe given: only the key itself will be checked, not that the application works with it; add --probe <health URL>".into(),
        );
    }
    if let Some(k) = &free_slot {
        warnings.push(format!(
            "{user}'s Inactive key {k} will be deleted to make room for the new key (IAM allows 2 per user)"
        ));
    }
    Ok(Plan {
        caller_arn: caller.arn,
        account: caller.account,
        old_key_id: old.id.clone(),
        existing_keys,
        free_slot,
        targets,
        changes,
        probes,
        warnings,
    })
}

impl Run<'_> {
    async fn record(&mut self, event: Event) -> Result<(), Failure> {
        Ok(self.journal.record(event).await?)
    }

    fn state(&self) -> &State {
        self.journal.state()
    }

    fn step(&mut self, name: impl Into<String>, status: &'static str, started: Instant) {
        self.steps.push(StepReport { name: name.into(), status, duration_ms: started.elapsed().as_millis() });
    }

    fn user(&self) -> String {
        self.state().begin.user.clone()
    }

    /// The forward path of a fresh rotation.
    async fn forward(&mut self, s: &Settings, free_slot: Option<&str>) -> Result<(), Failure> {
        let user = self.user();
        let (iam, clock) = (self.fx.iam, self.fx.clock);

        if let Some(k) = free_slot {
            let t = Instant::now();
            self.record(Event::FreeSlot { key_id: k.into(), phase: Phase::Begin }).await?;
            iam.delete_key(&user, k)
                .await
                .map_err(|e| Failure::new("free_slot", format!("deleting the Inactive key {k}: {e}")))?;
            let _ = iam.untag_key(&user, k).await;
            self.record(Event::FreeSlot { key_id: k.into(), phase: Phase::Done }).await?;
            self.step("free_slot", "ok", t);
        }

        // Create the key. From here on, every failure rolls back.
        let t = Instant::now();
        self.record(Event::CreateKey { phase: Phase::Begin, key_id: None }).await?;
        let key = match iam.create_key(&user).await {
            Ok(key) => key,
            Err(e) => {
                // IAM's own refusal (LimitExceeded, AccessDenied, ...) means nothing was created; any
                // other error may have been a lost answer to a call that did create the key.
                if e.created_nothing() {
                    let _ = self.record(Event::CreateKey { phase: Phase::Failed, key_id: None }).await;
                }
                return Err(Failure::new("create_key", e));
            }
        };
        self.record(Event::CreateKey { phase: Phase::Done, key_id: Some(key.access_key_id.clone()) }).await?;
        // Compact, like a console key description; the rotation id is the creation time.
        let description = format!("rekey-rotation-{}", self.state().begin.rotation_id);
        if let Err(e) = iam.tag_key(&user, &key.access_key_id, &description).await {
            self.warnings.push(format!("could not tag the new key {} with its description: {e}", key.access_key_id));
        }
        self.step("create_key", "ok", t);
        tracing::info!(new_key = %key.access_key_id, "created the new access key");

        // Put the secret somewhere durable before anything else can fail.
        self.snapshot(0).await?;
        let snapshot = self.state().snapshots[0].clone().expect("snapshot 0 was just journaled");
        self.record(Event::Stage { target: 0, phase: Phase::Begin }).await?;
        let staged = self.targets[0].stage(&key, &snapshot).await.map_err(|e| Failure::new("stage", e))?;
        self.record(Event::Stage { target: 0, phase: if staged { Phase::Done } else { Phase::Failed } }).await?;

        // Wait until (nearly) every host behind the verify Regions' endpoints knows the key, in
        // several rounds in a row: the application's requests will land on any of them.
        let t = Instant::now();
        self.record(Event::Verify { phase: Phase::Begin }).await?;
        let what = format!("new key {}", key.access_key_id);
        until_propagated(clock, &s.verify, self.fx.progress, &what, self.fx.key_check, &key)
            .await
            .map_err(|e| Failure::new("verify_key", format!("the new key {} never worked: {e}", key.access_key_id)))?;
        self.fx.progress.done();
        self.record(Event::Verify { phase: Phase::Done }).await?;
        self.step("verify_key", "ok", t);

        // Push to every target, in the order given.
        for i in 0..self.targets.len() {
            let t = Instant::now();
            let name = format!("apply:{}", self.targets[i].name());
            if self.state().snapshots[i].is_none() {
                self.snapshot(i).await?;
            }
            let snapshot = self.state().snapshots[i].clone().expect("snapshot journaled");
            self.record(Event::Apply { target: i, phase: Phase::Begin }).await?;
            self.targets[i].apply(&key, &snapshot).await.map_err(|e| Failure::new(&name, e))?;
            self.record(Event::Apply { target: i, phase: Phase::Done }).await?;
            self.record(Event::Consumers { target: i, phase: Phase::Begin }).await?;
            self.targets[i].wait_consumers(&snapshot).await.map_err(|e| Failure::new(&name, e))?;
            self.fx.progress.done();
            self.record(Event::Consumers { target: i, phase: Phase::Done }).await?;
            self.step(name, "ok", t);
        }
        // The targets hold the secret now; the process no longer needs it.
        drop(key);
        // Rotating its own key, rekey signs from here on with the key that will stay.
        self.fx.iam.sign_with(Signer::New);

        if s.defer_deactivation {
            self.probe_then_defer(&s.probe, s.grace).await
        } else {
            self.finish_forward(s.probe.clone(), s.delete_old, s.grace, &s.retire).await
        }
    }

    /// The deferred ending: probe, then leave the old key Active with its deactivation time in a tag
    /// that a later `rekey run` acts on ([`finish_deferred`]). The tag's value before is journaled
    /// first, so that a rollback puts it back: a deferral left behind would have that `run`
    /// deactivate the key the restored targets use.
    async fn probe_then_defer(&mut self, probe: &Streak, grace: Duration) -> Result<(), Failure> {
        if self.state().probe != StepState::Done {
            let t = Instant::now();
            self.record(Event::Probe { phase: Phase::Begin }).await?;
            self.probe_all(probe, "probe").await?;
            self.record(Event::Probe { phase: Phase::Done }).await?;
            self.step("probe", if self.probes.is_empty() { "skipped" } else { "ok" }, t);
        }
        if self.state().defer == StepState::Done {
            return Ok(());
        }

        let t = Instant::now();
        let (user, old) = (self.user(), self.state().begin.old_key_id.clone());
        if self.state().defer == StepState::NotStarted {
            let previous = self.old_key_tag().await.map_err(|e| Failure::new("defer_deactivation", e))?;
            self.record(Event::Defer { key_id: old.clone(), phase: Phase::Begin, previous }).await?;
        }
        let after = rekey_trail::time::format(self.fx.clock.now() + grace);
        // Without the tag nothing would ever turn the old key off: roll back rather than leave it.
        self.fx.iam.tag_key(&user, &old, &format!("{DEACTIVATE_AFTER}{after}")).await.map_err(|e| {
            Failure::new("defer_deactivation", format!("recording when {old} is to be deactivated: {e}"))
        })?;
        self.record(Event::Defer { key_id: old, phase: Phase::Done, previous: None }).await?;
        self.step("defer_deactivation", "ok", t);
        Ok(())
    }

    /// The value of the user tag keyed by the old key id (a console description, say), if any.
    async fn old_key_tag(&self) -> Result<Option<String>, String> {
        let (user, old) = (self.user(), &self.state().begin.old_key_id);
        let tags = self.fx.iam.user_tags(&user).await.map_err(|e| format!("reading the tags of {user}: {e}"))?;
        Ok(tags.into_iter().find(|(k, _)| k == old).map(|(_, v)| v))
    }

    /// For `delete_after`: when rekey turned the old key off, in a tag any runner reads. A key
    /// left without it is only never deleted by `run`, so a failure here is a warning.
    async fn mark_deactivated(&mut self) -> Result<(), Failure> {
        if !self.state().begin.mark_deactivated || self.state().marked == StepState::Done {
            return Ok(());
        }
        let t = Instant::now();
        let (user, old) = (self.user(), self.state().begin.old_key_id.clone());
        if self.state().marked == StepState::NotStarted {
            let previous = self.old_key_tag().await.unwrap_or_else(|e| {
                tracing::warn!("{e}; a rollback from here removes the tag on {old} rather than restoring it");
                None
            });
            self.record(Event::MarkDeactivated { key_id: old.clone(), phase: Phase::Begin, previous }).await?;
        }
        let at = rekey_trail::time::format(self.fx.clock.now());
        match self.fx.iam.tag_key(&user, &old, &format!("{DEACTIVATED_AT}{at}")).await {
            Ok(()) => {
                self.record(Event::MarkDeactivated { key_id: old, phase: Phase::Done, previous: None }).await?;
                self.step("mark_deactivated", "ok", t);
            }
            Err(e) => {
                self.record(Event::MarkDeactivated { key_id: old.clone(), phase: Phase::Failed, previous: None })
                    .await?;
                self.step("mark_deactivated", "failed", t);
                self.warnings
                    .push(format!("could not record when {old} was deactivated ({e}); `rekey run` will not delete it"));
            }
        }
        Ok(())
    }

    /// Puts the old key's tag back as it was before this journal wrote it (the deferral, or the
    /// time of deactivation): left behind, it would have a later `rekey run` deactivate a key that
    /// is in use again, or delete it. A finished rotation's own deferral is not this journal's.
    async fn restore_old_key_tag(&mut self, left: &mut Vec<String>) {
        let s = self.state();
        let previous = if s.marked.started() {
            s.marked_previous.clone()
        } else if s.defer.started() {
            s.defer_previous.clone()
        } else {
            return;
        };
        let t = Instant::now();
        let (user, old) = (self.user(), s.begin.old_key_id.clone());
        let restored = match &previous {
            Some(value) => self.fx.iam.tag_key(&user, &old, value).await,
            None => self.fx.iam.untag_key(&user, &old).await,
        };
        match restored {
            Ok(()) => self.step("restore_old_key_tag", "ok", t),
            Err(e) => {
                self.step("restore_old_key_tag", "failed", t);
                let fix = match &previous {
                    Some(v) => format!("aws iam tag-user --user-name {user} --tags 'Key={old},Value={v}'"),
                    None => format!("aws iam untag-user --user-name {user} --tag-keys {old}"),
                };
                left.push(format!(
                    "the old key {old} still carries the tag this rotation wrote ({e}), which would have a later `rekey run` act on it: `{fix}`"
                ));
            }
        }
    }

    async fn snapshot(&mut self, i: usize) -> Result<(), Failure> {
        let name = self.targets[i].name().to_string();
        // What the snapshot leaves outside (a published backup) is journaled before it exists.
        if let Some(pending) = self.targets[i].pending_snapshot() {
            self.record(Event::Snapshot { target: i, snapshot: pending }).await?;
        }
        let snapshot = self.targets[i].snapshot().await.map_err(|e| Failure::new(format!("apply:{name}"), e))?;
        self.record(Event::Snapshot { target: i, snapshot }).await
    }

    /// Probe, wait out the grace period, deactivate the old key: the part of the forward path that
    /// needs no secret, which is why `resume` can run it too.
    async fn finish_forward(
        &mut self,
        probe: Streak,
        delete_old: bool,
        grace: Duration,
        retire: &Retire,
    ) -> Result<(), Failure> {
        if self.state().probe != StepState::Done {
            let t = Instant::now();
            self.record(Event::Probe { phase: Phase::Begin }).await?;
            self.probe_all(&probe, "probe").await?;
            self.record(Event::Probe { phase: Phase::Done }).await?;
            self.step("probe", if self.probes.is_empty() { "skipped" } else { "ok" }, t);
        }

        let until = match self.state().grace_until {
            Some(u) => Some(u),
            None if !grace.is_zero() => Some(self.fx.clock.now() + grace),
            None => None,
        };
        if let Some(until) = until.filter(|_| self.state().grace != StepState::Done) {
            let t = Instant::now();
            if self.state().grace == StepState::NotStarted {
                self.record(Event::Grace { phase: Phase::Begin, until: Some(rekey_trail::time::format(until)) })
                    .await?;
            }
            tracing::info!("grace period: the old key stays Active until {}", rekey_trail::time::format(until));
            self.fx.progress.update(&format!("grace period until {}", rekey_trail::time::format(until)));
            self.fx.clock.sleep(self.fx.clock.until(until)).await;
            self.fx.progress.done();
            self.record(Event::Grace { phase: Phase::Done, until: None }).await?;
            self.step("grace", "ok", t);
        }

        let (user, old) = (self.user(), self.state().begin.old_key_id.clone());
        // Retire on evidence: a consumer nobody listed may still sign with the old key.
        let judgement = evidence::before_deactivation(retire, self.fx.iam, self.fx.clock, &user, &old).await;
        let held = judgement.holds();
        self.evidence = Some(judgement);
        if held {
            return Ok(());
        }

        let t = Instant::now();
        self.record(Event::Deactivate { key_id: old.clone(), phase: Phase::Begin }).await?;
        self.fx
            .iam
            .set_status(&user, &old, KeyStatus::Inactive)
            .await
            .map_err(|e| Failure::new("deactivate_old", format!("deactivating {old}: {e}")))?;
        self.record(Event::Deactivate { key_id: old.clone(), phase: Phase::Done }).await?;
        self.step("deactivate_old", "ok", t);

        // A consumer that still used the old key breaks now; turning the key back on is instant.
        if !self.probes.is_empty() {
            let t = Instant::now();
            self.record(Event::ProbeAfter { phase: Phase::Begin }).await?;
            self.probe_all(&probe, "probe_after_deactivation").await?;
            self.record(Event::ProbeAfter { phase: Phase::Done }).await?;
            self.step("probe_after_deactivation", "ok", t);
        }
        self.after_deactivation(delete_old).await
    }

    async fn after_deactivation(&mut self, delete_old: bool) -> Result<(), Failure> {
        if !delete_old {
            self.mark_deactivated().await?;
        }
        if !delete_old || self.state().delete_old == StepState::Done {
            return Ok(());
        }
        let t = Instant::now();
        let (user, old) = (self.user(), self.state().begin.old_key_id.clone());
        self.record(Event::DeleteOld { key_id: old.clone(), phase: Phase::Begin }).await?;
        match self.fx.iam.delete_key(&user, &old).await {
            Ok(()) | Err(IamError::NoSuchKey(_)) => {
                let _ = self.fx.iam.untag_key(&user, &old).await;
                self.record(Event::DeleteOld { key_id: old, phase: Phase::Done }).await?;
                self.step("delete_old", "ok", t);
            }
            // The rotation itself succeeded; a key left Inactive is safe and easy to delete later.
            Err(e) => {
                self.record(Event::DeleteOld { key_id: old.clone(), phase: Phase::Failed }).await?;
                self.step("delete_old", "failed", t);
                self.warnings.push(format!("could not delete the old key {old} ({e}); it is Inactive: delete it with `aws iam delete-access-key --user-name {user} --access-key-id {old}`"));
            }
        }
        Ok(())
    }

    async fn probe_all(&mut self, streak: &Streak, step: &str) -> Result<(), Failure> {
        for i in 0..self.probes.len() {
            let probe = &self.probes[i];
            let label = format!("probe {}", probe.name());
            until_streak(self.fx.clock, streak, self.fx.progress, &label, || probe.check())
                .await
                .map_err(|e| Failure::new(step, format!("{} is not healthy: {e}", probe.name())))?;
            self.fx.progress.done();
        }
        Ok(())
    }

    /// The rotation went through: clean up what was kept for rollback and close the journal.
    async fn complete(mut self, error: Option<String>) -> Report {
        let left = self.clean_up().await;
        let old_status = if self.state().delete_old == StepState::Done {
            None
        } else if self.state().deactivate == StepState::Done {
            Some(KeyStatus::Inactive)
        } else {
            Some(KeyStatus::Active)
        };
        let statuses = vec!["updated"; self.targets.len()];
        match self.evidence.as_ref().filter(|j| j.holds()) {
            Some(j) => {
                // Not cleanup left undone (which keeps the journal open): the next step, for a person.
                let hold = evidence::left_after_hold(j, &self.user());
                let mut report = self.finish_journal(Outcome::Held, error, old_status, statuses, left).await;
                report.left.extend(hold);
                report
            }
            None => self.finish_journal(Outcome::Rotated, error, old_status, statuses, left).await,
        }
    }

    /// Drops what every target kept for rollback; what could not be dropped, one line each.
    async fn clean_up(&mut self) -> Vec<String> {
        let mut left = Vec::new();
        for i in 0..self.targets.len() {
            if let Some(snapshot) = self.state().snapshots[i].clone()
                && let Err(e) = self.targets[i].finish(&snapshot).await
            {
                left.push(format!("the cleanup of {} failed ({e})", self.targets[i].name()));
            }
        }
        left
    }

    /// A rotation that ended, but whose cleanup failed: clean up and close the journal.
    async fn retry_cleanup(mut self, outcome: Outcome) -> Report {
        let left = self.clean_up().await;
        let old_status = match self.fx.iam.list_keys(&self.user()).await {
            Ok(keys) => keys.into_iter().find(|k| k.id == self.state().begin.old_key_id).map(|k| k.status),
            Err(_) => None,
        };
        let status = if outcome == Outcome::Rotated { "updated" } else { "restored" };
        let statuses = vec![status; self.targets.len()];
        self.finish_journal(outcome, None, old_status, statuses, left).await
    }

    /// Undo everything the journal says was done. Targets first (stores, then deployers that
    /// re-read them), then the new key, so that no consumer is ever left holding a deleted key.
    async fn roll_back(mut self, failure: Failure) -> Report {
        self.fx.progress.done();
        let reason = format!("{}: {}", failure.step, failure.error);
        // Another process owns the rotation now: two undoing it at once would fight.
        if let Some(why) = self.journal.lost() {
            let user = self.user();
            let left = vec![format!("{why}; `rekey status --user {user}` shows who drives it")];
            let statuses = vec!["unknown"; self.targets.len()];
            return self.failed_report(reason, None, statuses, left).await;
        }
        tracing::error!("rotation failed at {reason}; rolling back");
        // Rotating its own key, rekey undoes with the old key while it is still Active; once it
        // may be off, only the new key can turn it back on.
        self.fx.iam.sign_with(if self.state().deactivate.started() { Signer::New } else { Signer::Old });
        if self.steps.iter().all(|s| s.name != failure.step) {
            self.steps.push(StepReport { name: failure.step.clone(), status: "failed", duration_ms: 0 });
        }
        let mut left = Vec::new();
        if self.state().rollback_reason.is_none()
            && let Err(e) = self.record(Event::RollbackStart { reason: reason.clone() }).await
        {
            left.push(format!(
                "the journal could not be written ({}); check {}",
                e.error,
                self.journal.path().display()
            ));
        }
        let user = self.user();
        // The old key first: consumers still on it (and every target about to be restored to it)
        // must not wait through restores and ECS rollouts for it, and it takes IAM seconds to
        // reach every host again; it must also work again before the new key goes away.
        let old = self.state().begin.old_key_id.clone();
        let mut old_key_off = false;
        if self.state().deactivate.started() && self.state().delete_old != StepState::Done {
            let t = Instant::now();
            let _ = self.record(Event::Reactivate { key_id: old.clone(), phase: Phase::Begin }).await;
            match self.fx.iam.set_status(&user, &old, KeyStatus::Active).await {
                Ok(()) => {
                    let _ = self.record(Event::Reactivate { key_id: old.clone(), phase: Phase::Done }).await;
                    self.step("reactivate_old", "ok", t);
                }
                Err(e) => {
                    // Restoring a target to a key that is still off would break what works on the new one.
                    old_key_off = true;
                    self.step("reactivate_old", "failed", t);
                    left.push(format!("the old key {old} is still Inactive ({e}): reactivate it with `aws iam update-access-key --user-name {user} --access-key-id {old} --status Active`; the targets keep the new key until then"));
                }
            }
        }

        let n = self.targets.len();
        let mut statuses = vec!["unchanged"; n];
        let mut cleanup = Vec::new();
        let order: Vec<usize> = (0..n)
            .rev()
            .filter(|&i| self.targets[i].role() == Role::Store)
            .chain((0..n).rev().filter(|&i| self.targets[i].role() == Role::Deployer))
            .collect();
        for i in order.into_iter().filter(|_| !old_key_off) {
            let Some(snapshot) = self.state().snapshots[i].clone() else { continue };
            let t = Instant::now();
            let name = format!("rollback:{}", self.targets[i].name());
            let _ = self.record(Event::Restore { target: i, phase: Phase::Begin, error: None }).await;
            match self.targets[i].rollback(&snapshot).await {
                Ok(()) => {
                    let _ = self.record(Event::Restore { target: i, phase: Phase::Done, error: None }).await;
                    statuses[i] = "restored";
                    self.step(name, "ok", t);
                    if let Err(e) = self.targets[i].finish(&snapshot).await {
                        cleanup.push(format!("the cleanup of {} failed ({e})", self.targets[i].name()));
                    }
                }
                Err(e) => {
                    let _ = self
                        .record(Event::Restore { target: i, phase: Phase::Failed, error: Some(e.to_string()) })
                        .await;
                    statuses[i] = "restore_failed";
                    self.step(name, "failed", t);
                    left.push(format!(
                        "{} may still hand out the new key (its restore was not confirmed: {e})",
                        self.targets[i].name()
                    ));
                }
            }
            self.fx.progress.done();
        }

        // Delete the new key only when no target still hands it out.
        let new_key = self.state().new_key_id.clone();
        if left.is_empty() {
            for key in self.keys_to_delete(&user).await {
                let t = Instant::now();
                let _ = self.record(Event::DeleteNewKey { key_id: key.clone(), phase: Phase::Begin }).await;
                match self.fx.iam.delete_key(&user, &key).await {
                    Ok(()) | Err(IamError::NoSuchKey(_)) => {
                        let _ = self.fx.iam.untag_key(&user, &key).await;
                        let _ = self.record(Event::DeleteNewKey { key_id: key.clone(), phase: Phase::Done }).await;
                        self.step("delete_new_key", "ok", t);
                    }
                    Err(e) => {
                        self.step("delete_new_key", "failed", t);
                        left.push(format!("the new key {key} still exists ({e}): delete it with `aws iam delete-access-key --user-name {user} --access-key-id {key}`"));
                    }
                }
            }
        } else if let Some(key) = &new_key {
            left.push(format!("the new key {key} was kept because a target still uses it"));
        }
        self.restore_old_key_tag(&mut left).await;

        let old_status = if self.state().delete_old == StepState::Done {
            None
        } else if left.iter().any(|l| l.contains("still Inactive")) {
            Some(KeyStatus::Inactive)
        } else {
            Some(KeyStatus::Active)
        };
        if left.is_empty() {
            self.finish_journal(Outcome::RolledBack, Some(reason), old_status, statuses, cleanup).await
        } else {
            left.push(format!("fix the above, then run `rekey resume --user {user}` to finish the rollback"));
            self.failed_report(reason, old_status, statuses, left).await
        }
    }

    /// The new key; or, when CreateAccessKey's outcome is unknown (the process died in it, or its
    /// answer was lost), a key the user did not have at preflight and that was created after the
    /// rotation began: its secret is lost, so it can only be an orphan of this rotation. A key
    /// someone else made meanwhile is never rekey's to delete, and IAM's refusal (`LimitExceeded`,
    /// journaled as failed) means rekey created nothing.
    async fn keys_to_delete(&mut self, user: &str) -> Vec<String> {
        let state = self.state();
        if let Some(k) = &state.new_key_id {
            return if state.new_key_deleted == StepState::Done { Vec::new() } else { vec![k.clone()] };
        }
        if state.create != StepState::Begun {
            return Vec::new();
        }
        let existing = state.begin.existing_keys.clone();
        let began = rotation_began(&state.begin.rotation_id);
        let keys = match self.fx.iam.list_keys(user).await {
            Ok(keys) => keys,
            Err(e) => {
                self.warnings.push(format!("could not list {user}'s keys to find an orphan new key: {e}"));
                return Vec::new();
            }
        };
        let mut orphans = Vec::new();
        for k in keys.into_iter().filter(|k| !existing.contains(&k.id)) {
            // IAM keeps creation times to the second.
            let after_begin = matches!((k.created, began), (Some(c), Some(b)) if c + Duration::from_secs(1) > b);
            if after_begin {
                orphans.push(k.id);
            } else {
                self.warnings.push(format!(
                    "{user}'s key {} appeared during the rotation but was not created after it began: not rekey's, so it was left alone; if it is the orphan of this rotation (its answer was lost), delete it with `aws iam delete-access-key --user-name {user} --access-key-id {}`",
                    k.id, k.id
                ));
            }
        }
        orphans
    }

    async fn finish_journal(
        mut self,
        outcome: Outcome,
        error: Option<String>,
        old_key_status: Option<KeyStatus>,
        statuses: Vec<&'static str>,
        mut left: Vec<String>,
    ) -> Report {
        if self.state().ended.is_none()
            && let Err(e) = self.record(Event::End { outcome }).await
        {
            self.warnings.push(format!("could not close the journal: {}", e.error));
        }
        let state = self.journal.state().clone();
        let Run { journal, targets, steps, mut warnings, changes, evidence, .. } = self;
        let mut journal_path = journal.path().to_path_buf();
        // `left` is cleanup that failed: a leftover copy of a secret. The journal stays open, so that
        // `resume` tries again and no new rotation starts over it.
        if !left.is_empty() {
            left.push(format!(
                "fix the above, then run `rekey resume --user {}` to finish the cleanup",
                state.begin.user
            ));
            journal.release().await;
        } else if state.ended.is_some() {
            match journal.archive().await {
                Ok(p) => journal_path = p,
                Err(e) => warnings.push(format!("could not archive the journal: {e}")),
            }
        } else {
            journal.release().await;
        }
        let parts = ReportParts { steps, warnings, changes, targets, statuses, left, journal: journal_path, evidence };
        parts.into_report(&state, outcome, error, old_key_status)
    }

    /// The rollback could not finish: the journal stays active so that `resume` can retry.
    async fn failed_report(
        self,
        error: String,
        old_key_status: Option<KeyStatus>,
        statuses: Vec<&'static str>,
        left: Vec<String>,
    ) -> Report {
        let state = self.journal.state().clone();
        let Run { journal, targets, steps, warnings, changes, evidence, .. } = self;
        let journal_path = journal.path().to_path_buf();
        journal.release().await;
        let journal = journal_path;
        let parts = ReportParts { steps, warnings, changes, targets, statuses, left, journal, evidence };
        parts.into_report(&state, Outcome::Failed, Some(error), old_key_status)
    }
}

struct ReportParts {
    steps: Vec<StepReport>,
    warnings: Vec<String>,
    changes: Vec<Vec<String>>,
    targets: Vec<Box<dyn Target>>,
    statuses: Vec<&'static str>,
    left: Vec<String>,
    journal: PathBuf,
    evidence: Option<Judgement>,
}

impl ReportParts {
    fn into_report(
        self,
        state: &State,
        outcome: Outcome,
        error: Option<String>,
        old_key_status: Option<KeyStatus>,
    ) -> Report {
        Report {
            user: state.begin.user.clone(),
            outcome: outcome.as_str(),
            old_key_id: Some(state.begin.old_key_id.clone()),
            new_key_id: state.new_key_id.clone(),
            old_key_status,
            targets: self
                .targets
                .iter()
                .zip(self.statuses)
                .zip(self.changes)
                .map(|((t, status), changes)| TargetReport { target: t.name().to_string(), status, changes })
                .collect(),
            steps: self.steps,
            journal: Some(self.journal),
            error,
            left: self.left,
            warnings: self.warnings,
            evidence: self.evidence,
        }
    }
}

fn planned_report(s: &Settings, plan: &Plan, preflight: StepReport) -> Report {
    let mut steps = vec![preflight];
    let mut plan_step = |name: String| steps.push(StepReport { name, status: "planned", duration_ms: 0 });
    if plan.free_slot.is_some() {
        plan_step("free_slot".into());
    }
    plan_step("create_key".into());
    plan_step("verify_key".into());
    for t in &plan.targets {
        plan_step(format!("apply:{}", t.name()));
    }
    plan_step("probe".into());
    if s.defer_deactivation {
        plan_step("defer_deactivation".into());
    } else {
        if !s.grace.is_zero() {
            plan_step("grace".into());
        }
        plan_step("deactivate_old".into());
        if s.delete_old {
            plan_step("delete_old".into());
        }
    }
    Report {
        user: s.user.clone(),
        outcome: Outcome::Planned.as_str(),
        old_key_id: Some(plan.old_key_id.clone()),
        new_key_id: None,
        old_key_status: Some(KeyStatus::Active),
        targets: plan
            .targets
            .iter()
            .zip(&plan.changes)
            .map(|(t, c)| TargetReport { target: t.name().to_string(), status: "unchanged", changes: c.clone() })
            .collect(),
        steps,
        journal: None,
        error: None,
        left: Vec::new(),
        warnings: plan.warnings.clone(),
        evidence: None,
    }
}

/// A rotation's id: the time it began, compact.
fn rotation_id(clock: &dyn Clock) -> String {
    humantime::format_rfc3339_millis(clock.now()).to_string().replace([':', '-', '.'], "")
}

/// What a later `rekey run` finishes for a rotation whose deactivation it deferred.
#[derive(Debug, Clone)]
pub struct Deferral {
    pub user: String,
    /// The old key, whose grace period is over.
    pub key_id: String,
    pub probes: Vec<String>,
    pub probe: Streak,
    /// The same look at the old key's use as a rotation's (`since`: when the grace period ended):
    /// a consumer still on it holds the deactivation.
    pub retire: Retire,
}

/// The end of a deferred rotation, once its grace period is over: the probes must pass before and
/// after the old key goes off, a failure after turns it back on (its deferral tag stays, so the
/// next `run` tries again), and success tags when it went off, for `delete_after`. Journaled like
/// a rotation, with the same steps and the same way back, so a crash anywhere in it is finished
/// or undone by `rekey resume`.
pub async fn finish_deferred(
    fx: &Effects<'_>,
    d: &Deferral,
    interrupt: impl Future<Output = ()>,
) -> Result<Report, Refusal> {
    let user = &d.user;
    fx.journals.vacant(user).await?;
    let caller = fx
        .iam
        .caller()
        .await
        .map_err(|e| Refusal(format!("cannot tell who rekey runs as: {e}; check your AWS credentials")))?;
    let keys =
        fx.iam.list_keys(user).await.map_err(|e| Refusal(format!("cannot list the access keys of {user}: {e}")))?;
    if !keys.iter().any(|k| k.id == d.key_id) {
        return Err(Refusal(format!("{user} has no access key {} any more: nothing to deactivate", d.key_id)));
    }
    let mut probes = Vec::new();
    for url in &d.probes {
        probes.push(fx.factory.probe(url).map_err(Refusal)?);
    }
    let begin = Begin {
        rotation_id: rotation_id(fx.clock),
        user: user.clone(),
        account: caller.account,
        principal: caller.arn,
        old_key_id: d.key_id.clone(),
        existing_keys: keys.into_iter().map(|k| k.id).collect(),
        targets: Vec::new(),
        probes: d.probes.iter().map(|p| redact_url(p)).collect(),
        delete_old: false,
        grace_secs: 0,
        ecs_timeout_secs: 0,
        kind: Kind::FinishDeferred,
        defer_deactivation: false,
        mark_deactivated: true,
    };
    let journal = fx.journals.create(begin, fx.clock.now()).await?;
    let mut run = Run {
        fx,
        journal,
        targets: Vec::new(),
        probes,
        steps: Vec::new(),
        warnings: Vec::new(),
        changes: Vec::new(),
        evidence: None,
    };
    let forward = tokio::select! {
        r = run.finish_forward(d.probe.clone(), false, Duration::ZERO, &d.retire) => r,
        () = interrupt => Err(Failure::new("interrupted", "interrupted by the user (Ctrl-C)")),
    };
    Ok(match forward {
        Ok(()) => run.complete(None).await,
        Err(f) => run.roll_back(f).await,
    })
}

/// When the rotation began, from its id (its begin time, RFC 3339 with the punctuation taken out).
fn rotation_began(rotation_id: &str) -> Option<std::time::SystemTime> {
    let b = rotation_id.as_bytes();
    if b.len() < 15 || !rotation_id.is_ascii() {
        return None;
    }
    let (date, rest) = rotation_id.split_at(8);
    let (time, fraction) = (&rest[1..7], &rest[7..]);
    let text = format!(
        "{}-{}-{}T{}:{}:{}{}",
        &date[..4],
        &date[4..6],
        &date[6..],
        &time[..2],
        &time[2..4],
        &time[4..],
        if fraction.len() > 1 { format!(".{fraction}") } else { fraction.to_string() }
    );
    humantime::parse_rfc3339(&text).ok()
}

fn list_or_none(keys: &[String]) -> String {
    if keys.is_empty() { "none".into() } else { keys.join(", ") }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
