//! `rekey contain --plan PLAN [--apply] [--undo]`: run a containment plan, or reverse it.
//!
//! Every applied step is appended to a JSON-lines log next to the plan (`contain-log.jsonl`)
//! before the next one starts, so `--undo` reverses exactly what was done, even after a crash or a
//! failed run, and a second `--apply` skips what the log says is already applied. Steps are
//! idempotent: a thing already gone is "already done", not an error. A failed step stops the run,
//! because later steps depend on earlier ones (a user is deleted only once emptied).
//!
//! Forensic snapshots (`snapshot_volume`) are tagged `rekey:incident`, `rekey:instance` and
//! `rekey:access-key`; a snapshot of the volume already tagged with the incident is "already done".
//! Undo keeps them: they are evidence.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_account::types::AlternateContactType;
use aws_sdk_iam::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_iam::types::StatusType;
use serde::{Deserialize, Serialize};

use super::hunt::ec2_in;
use super::model::{Action, Plan, PlanAction, Undo};

/// The log's file name, beside the plan.
pub const LOG_FILE: &str = "contain-log.jsonl";

/// Where the log of a plan lives.
pub fn log_path_for(plan_path: &Path) -> PathBuf {
    plan_path.parent().unwrap_or_else(|| Path::new(".")).join(LOG_FILE)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Say what would be done; change nothing, write no log.
    DryRun,
    Apply,
    /// Reverse what the log says was applied, newest first.
    Undo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Dry run: would run.
    Planned,
    Applied,
    /// The thing was already in the wanted state; nothing changed, so undo leaves it alone.
    AlreadyDone,
    /// The log says an earlier run applied it.
    AlreadyApplied,
    Undone,
    /// Cannot be reversed by rekey; the detail says why and what to do.
    NotReversible,
    Failed,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Planned => "planned",
            Status::Applied => "applied",
            Status::AlreadyDone => "already_done",
            Status::AlreadyApplied => "already_applied",
            Status::Undone => "undone",
            Status::NotReversible => "not_reversible",
            Status::Failed => "failed",
        }
    }
}

/// What happened to one action.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub action_id: String,
    pub description: String,
    pub status: Status,
    pub detail: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainReport {
    pub mode: Mode,
    pub incident: String,
    pub log: PathBuf,
    /// In the order they ran (undo: newest applied first).
    pub outcomes: Vec<Outcome>,
}

impl ContainReport {
    pub fn outcome(&self, action_id: &str) -> Option<&Outcome> {
        self.outcomes.iter().find(|o| o.action_id == action_id)
    }
}

/// One line per action: `A3 applied: delete user x (detail)`.
impl fmt::Display for ContainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for o in &self.outcomes {
            write!(f, "{} {}: {}", o.action_id, o.status.as_str(), o.description)?;
            if let Some(d) = &o.detail {
                write!(f, " ({d})")?;
            }
            if let Some(e) = &o.error {
                write!(f, ": {e}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ContainError {
    #[error("containment log {}: {source}", path.display())]
    Log { path: PathBuf, source: std::io::Error },
    #[error("{action_id} failed, stopped there (later actions depend on it; what ran is in the log): {message}")]
    Failed { action_id: String, message: String, report: Box<ContainReport> },
}

impl ContainError {
    /// What was done before the run stopped.
    pub fn report(&self) -> Option<&ContainReport> {
        match self {
            ContainError::Log { .. } => None,
            ContainError::Failed { report, .. } => Some(report),
        }
    }
}

/// One line of `contain-log.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogEntry {
    pub incident: String,
    pub action_id: String,
    pub time: String,
    /// `apply` or `undo`.
    pub mode: String,
    /// `applied`, `already_done`, `in_progress`, `failed`, `undone`, `not_reversible`.
    pub status: String,
    pub error: Option<String>,
    pub detail: Option<String>,
    /// Keys a `delete_user` deleted with the user: an access key cannot be recreated, undo says so.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deleted_access_keys: Vec<String>,
    pub action: Option<Action>,
}

/// Runs the plan in `mode`; see the module documentation.
pub async fn run(
    iam: &aws_sdk_iam::Client,
    account: &aws_sdk_account::Client,
    ec2: &aws_sdk_ec2::Client,
    plan: &Plan,
    mode: Mode,
    log_path: &Path,
) -> Result<ContainReport, ContainError> {
    run_with(iam, account, ec2, None, plan, mode, log_path).await
}

/// [`run`], with the sweep's steps (instances, rules, resource policies, peerings) carried out by
/// `sweep`; without it they fail and stop the run.
pub async fn run_with(
    iam: &aws_sdk_iam::Client,
    account: &aws_sdk_account::Client,
    ec2: &aws_sdk_ec2::Client,
    sweep: Option<&crate::sweep::contain::Executor>,
    plan: &Plan,
    mode: Mode,
    log_path: &Path,
) -> Result<ContainReport, ContainError> {
    let entries = read_log(log_path, &plan.incident)?;
    let applied = applied_ids(&entries);
    let mut runner = Runner {
        iam,
        account,
        ec2,
        sweep,
        plan,
        log_path,
        report: ContainReport {
            mode,
            incident: plan.incident.clone(),
            log: log_path.to_path_buf(),
            outcomes: Vec::new(),
        },
    };
    match mode {
        Mode::DryRun => {
            for a in &plan.actions {
                let (status, detail) = if applied.contains(&a.id) {
                    (Status::AlreadyApplied, None)
                } else {
                    (Status::Planned, Some(format!("undo: {}", describe_undo(&a.undo))))
                };
                runner.outcome(a, status, detail, None);
            }
        }
        Mode::Apply => {
            for a in &plan.actions {
                if applied.contains(&a.id) {
                    runner.outcome(a, Status::AlreadyApplied, None, None);
                    continue;
                }
                runner.apply(a).await?;
            }
        }
        Mode::Undo => {
            let deleted_keys = deleted_keys(&entries);
            for id in applied.iter().rev() {
                let Some(a) = plan.actions.iter().find(|a| &a.id == id) else {
                    return Err(runner.fail(
                        id,
                        format!("{id}, applied according to the log, is not in this plan: undo it by hand"),
                    ));
                };
                runner.undo(a, deleted_keys.get(id).cloned().unwrap_or_default()).await?;
            }
        }
    }
    Ok(runner.report)
}

/// Ids applied and not yet undone, in the order they were applied.
fn applied_ids(entries: &[LogEntry]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in entries {
        match (e.mode.as_str(), e.status.as_str()) {
            ("apply", "applied") => {
                out.retain(|id| id != &e.action_id);
                out.push(e.action_id.clone());
            }
            ("undo", "undone" | "not_reversible" | "already_done") => out.retain(|id| id != &e.action_id),
            _ => {}
        }
    }
    out
}

fn deleted_keys(entries: &[LogEntry]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.mode == "apply") {
        let keys = out.entry(e.action_id.clone()).or_default();
        for k in &e.deleted_access_keys {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    out
}

/// The log's entries for this incident; a missing log is an empty one. A line that does not parse
/// (a torn last write) is skipped: the step it recorded is idempotent and runs again.
pub fn read_log(path: &Path, incident: &str) -> Result<Vec<LogEntry>, ContainError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ContainError::Log { path: path.to_path_buf(), source }),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<LogEntry>(l).ok())
        .filter(|e| e.incident == incident)
        .collect())
}

/// What a step did.
struct Done {
    status: Status,
    detail: Option<String>,
}

impl Done {
    fn applied() -> Self {
        Done { status: Status::Applied, detail: None }
    }
    fn applied_with(detail: String) -> Self {
        Done { status: Status::Applied, detail: Some(detail) }
    }
    fn already(why: &str) -> Self {
        Done { status: Status::AlreadyDone, detail: Some(why.to_string()) }
    }
}

struct Runner<'a> {
    iam: &'a aws_sdk_iam::Client,
    account: &'a aws_sdk_account::Client,
    ec2: &'a aws_sdk_ec2::Client,
    sweep: Option<&'a crate::sweep::contain::Executor>,
    plan: &'a Plan,
    log_path: &'a Path,
    report: ContainReport,
}

impl Runner<'_> {
    fn outcome(&mut self, a: &PlanAction, status: Status, detail: Option<String>, error: Option<String>) {
        self.report.outcomes.push(Outcome {
            action_id: a.id.clone(),
            description: a.description.clone(),
            status,
            detail,
            error,
        });
    }

    fn log(&self, entry: LogEntry) -> Result<(), ContainError> {
        let err = |source| ContainError::Log { path: self.log_path.to_path_buf(), source };
        let mut line = serde_json::to_string(&entry).map_err(|e| err(std::io::Error::other(e)))?;
        line.push('\n');
        // 0600, and never through a symlink planted where the log goes.
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(self.log_path)
                .map_err(err)?
        };
        f.write_all(line.as_bytes()).map_err(err)?;
        // Undo trusts this file: it must be on disk before the next step runs.
        f.sync_data().map_err(err)
    }

    #[allow(clippy::too_many_arguments)]
    fn entry(
        &self,
        a: &PlanAction,
        mode: &str,
        status: &str,
        detail: Option<String>,
        error: Option<String>,
        deleted_access_keys: Vec<String>,
    ) -> LogEntry {
        LogEntry {
            incident: self.plan.incident.clone(),
            action_id: a.id.clone(),
            time: rekey_trail::time::format(SystemTime::now()),
            mode: mode.to_string(),
            status: status.to_string(),
            error,
            detail,
            deleted_access_keys,
            action: Some(a.action.clone()),
        }
    }

    fn fail(&mut self, action_id: &str, message: String) -> ContainError {
        ContainError::Failed { action_id: action_id.to_string(), message, report: Box::new(self.report.clone()) }
    }

    async fn apply(&mut self, a: &PlanAction) -> Result<(), ContainError> {
        let result = match &a.action {
            Action::DeleteUser { user } => self.delete_user(a, user).await,
            Action::SnapshotVolume { volume_id, instance_id, region } => {
                snapshot_volume(self.ec2, self.plan, volume_id, instance_id, region.as_deref(), SNAPSHOT_WAIT).await
            }
            Action::Sweep(step) => sweep_step(self.sweep, step).await,
            action => execute(self.iam, self.account, action).await,
        };
        match result {
            Ok(done) => {
                let status = if done.status == Status::Applied { "applied" } else { "already_done" };
                self.log(self.entry(a, "apply", status, done.detail.clone(), None, Vec::new()))?;
                self.outcome(a, done.status, done.detail, None);
                Ok(())
            }
            Err(msg) => {
                self.log(self.entry(a, "apply", "failed", None, Some(msg.clone()), Vec::new()))?;
                self.outcome(a, Status::Failed, None, Some(msg.clone()));
                Err(self.fail(&a.id, msg))
            }
        }
    }

    /// AWS refuses DeleteUser while the user has keys, a password, policies, groups or MFA. The plan
    /// removes all but the keys (kept deactivated, which is reversible); the keys are deleted here,
    /// after the log records which ones, since a deleted key cannot be brought back.
    async fn delete_user(&mut self, a: &PlanAction, user: &str) -> Result<Done, String> {
        let iam = self.iam;
        match iam.get_user().user_name(user).send().await {
            Ok(_) => {}
            Err(e) if e.code() == Some("NoSuchEntity") => return Ok(Done::already("no such user")),
            Err(e) => return Err(sdk(&format!("GetUser {user}"), &e)),
        }
        let blockers = user_blockers(iam, user).await?;
        if !blockers.is_empty() {
            return Err(format!(
                "user {user} still has {}: the plan must remove them before deleting it",
                blockers.join(", ")
            ));
        }
        let keys: Vec<String> = iam
            .list_access_keys()
            .user_name(user)
            .send()
            .await
            .map_err(|e| sdk(&format!("ListAccessKeys {user}"), &e))?
            .access_key_metadata()
            .iter()
            .filter_map(|k| k.access_key_id().map(str::to_string))
            .collect();
        if !keys.is_empty() {
            let detail = Some(format!("deleting access keys {} with user {user}", keys.join(", ")));
            self.log(self.entry(a, "apply", "in_progress", detail, None, keys.clone())).map_err(|e| e.to_string())?;
        }
        for k in &keys {
            match iam.delete_access_key().user_name(user).access_key_id(k).send().await {
                Ok(_) => {}
                Err(e) if e.code() == Some("NoSuchEntity") => {}
                Err(e) => return Err(sdk(&format!("DeleteAccessKey {k}"), &e)),
            }
        }
        match iam.delete_user().user_name(user).send().await {
            Ok(_) => Ok(Done {
                status: Status::Applied,
                detail: (!keys.is_empty()).then(|| format!("deleted access keys {} with the user", keys.join(", "))),
            }),
            Err(e) if e.code() == Some("NoSuchEntity") => Ok(Done::already("no such user")),
            Err(e) => Err(sdk(&format!("DeleteUser {user}"), &e)),
        }
    }

    async fn undo(&mut self, a: &PlanAction, deleted_keys: Vec<String>) -> Result<(), ContainError> {
        let result = match &a.undo {
            Undo::None { reason } => Ok(Done { status: Status::NotReversible, detail: Some(reason.clone()) }),
            Undo::Action { action: Action::ActivateAccessKey { user, access_key_id } } => {
                activate_key(self.iam, user, access_key_id).await
            }
            Undo::Action { action: Action::Sweep(step) } => sweep_step(self.sweep, step).await,
            Undo::Action { action } => execute(self.iam, self.account, action).await,
            Undo::RecreateUser { user, path, tags } => {
                recreate_user(self.iam, user, path.as_deref(), tags).await.map(|mut done| {
                    if !deleted_keys.is_empty() {
                        done.detail = Some(format!(
                            "access keys {} were deleted with the user and cannot be recreated: create new ones if \
                             the user is legitimate",
                            deleted_keys.join(", ")
                        ));
                    }
                    done
                })
            }
            Undo::RecreateRole { role, path, assume_role_policy_document, description } => {
                let mut req =
                    self.iam.create_role().role_name(role).assume_role_policy_document(assume_role_policy_document);
                if let Some(p) = path {
                    req = req.path(p);
                }
                if let Some(d) = description {
                    req = req.description(d);
                }
                created(req.send().await, &format!("CreateRole {role}"))
            }
            Undo::PutUserPolicy { user, policy_name, policy_document } => self
                .iam
                .put_user_policy()
                .user_name(user)
                .policy_name(policy_name)
                .policy_document(policy_document)
                .send()
                .await
                .map(|_| Done::applied())
                .map_err(|e| sdk(&format!("PutUserPolicy {user} {policy_name}"), &e)),
            Undo::PutRolePolicy { role, policy_name, policy_document } => self
                .iam
                .put_role_policy()
                .role_name(role)
                .policy_name(policy_name)
                .policy_document(policy_document)
                .send()
                .await
                .map(|_| Done::applied())
                .map_err(|e| sdk(&format!("PutRolePolicy {role} {policy_name}"), &e)),
            Undo::PutGroupPolicy { group, policy_name, policy_document } => self
                .iam
                .put_group_policy()
                .group_name(group)
                .policy_name(policy_name)
                .policy_document(policy_document)
                .send()
                .await
                .map(|_| Done::applied())
                .map_err(|e| sdk(&format!("PutGroupPolicy {group} {policy_name}"), &e)),
            Undo::RecreateLoginProfile { user, password_reset_required } => {
                let r = self
                    .iam
                    .create_login_profile()
                    .user_name(user)
                    .password(temporary_password())
                    .password_reset_required(*password_reset_required)
                    .send()
                    .await;
                created(r, &format!("CreateLoginProfile {user}")).map(|mut d| {
                    if d.status == Status::Applied {
                        d.detail = Some(format!(
                            "recreated with a random password nobody knows: the old one cannot be read back; set one \
                             with `aws iam update-login-profile --user-name {user} --password-reset-required`"
                        ));
                    }
                    d
                })
            }
        };
        match result {
            Ok(done) => {
                let (status, log_status) = match done.status {
                    Status::NotReversible => (Status::NotReversible, "not_reversible"),
                    Status::AlreadyDone => (Status::AlreadyDone, "already_done"),
                    _ => (Status::Undone, "undone"),
                };
                self.log(self.entry(a, "undo", log_status, done.detail.clone(), None, Vec::new()))?;
                self.outcome(a, status, done.detail, None);
                Ok(())
            }
            Err(msg) => {
                self.log(self.entry(a, "undo", "failed", None, Some(msg.clone()), Vec::new()))?;
                self.outcome(a, Status::Failed, None, Some(msg.clone()));
                Err(self.fail(&a.id, msg))
            }
        }
    }
}

fn sdk<E>(what: &str, e: &E) -> String
where
    E: std::error::Error + 'static,
{
    format!("{what}: {}", DisplayErrorContext(e))
}

fn code<E: ProvideErrorMetadata>(e: &E) -> Option<&str> {
    e.code()
}

/// A removal: the thing already gone is success.
fn removed<T, E>(r: Result<T, E>, what: &str) -> Result<Done, String>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match r {
        Ok(_) => Ok(Done::applied()),
        Err(e) if matches!(code(&e), Some("NoSuchEntity" | "ResourceNotFoundException")) => {
            Ok(Done::already("already gone"))
        }
        Err(e) => Err(sdk(what, &e)),
    }
}

/// A creation: the thing already there is success.
fn created<T, E>(r: Result<T, E>, what: &str) -> Result<Done, String>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match r {
        Ok(_) => Ok(Done::applied()),
        Err(e) if code(&e) == Some("EntityAlreadyExists") => Ok(Done::already("already exists")),
        Err(e) => Err(sdk(what, &e)),
    }
}

/// A change that is idempotent by nature.
fn changed<T, E>(r: Result<T, E>, what: &str) -> Result<Done, String>
where
    E: std::error::Error + 'static,
{
    r.map(|_| Done::applied()).map_err(|e| sdk(what, &e))
}

async fn activate_key(iam: &aws_sdk_iam::Client, user: &str, key: &str) -> Result<Done, String> {
    match iam.update_access_key().user_name(user).access_key_id(key).status(StatusType::Active).send().await {
        Ok(_) => Ok(Done::applied()),
        Err(e) if code(&e) == Some("NoSuchEntity") => Ok(Done {
            status: Status::NotReversible,
            detail: Some(format!(
                "access key {key} no longer exists (deleted with its user?): an access key cannot be recreated"
            )),
        }),
        Err(e) => Err(sdk(&format!("UpdateAccessKey {key} Active"), &e)),
    }
}

async fn recreate_user(
    iam: &aws_sdk_iam::Client,
    user: &str,
    path: Option<&str>,
    tags: &[(String, String)],
) -> Result<Done, String> {
    let mut req = iam.create_user().user_name(user);
    if let Some(p) = path {
        req = req.path(p);
    }
    for (k, v) in tags {
        match aws_sdk_iam::types::Tag::builder().key(k).value(v).build() {
            Ok(t) => req = req.tags(t),
            Err(e) => return Err(format!("tag {k}: {e}")),
        }
    }
    created(req.send().await, &format!("CreateUser {user}"))
}

/// What stops DeleteUser other than access keys.
async fn user_blockers(iam: &aws_sdk_iam::Client, user: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    match iam.get_login_profile().user_name(user).send().await {
        Ok(_) => out.push("a login profile".to_string()),
        Err(e) if code(&e) == Some("NoSuchEntity") => {}
        Err(e) => return Err(sdk(&format!("GetLoginProfile {user}"), &e)),
    }
    let attached = iam
        .list_attached_user_policies()
        .user_name(user)
        .send()
        .await
        .map_err(|e| sdk(&format!("ListAttachedUserPolicies {user}"), &e))?;
    out.extend(attached.attached_policies().iter().map(|p| format!("policy {}", p.policy_arn().unwrap_or("?"))));
    let inline = iam.list_user_policies().user_name(user).send().await.map_err(|e| sdk("ListUserPolicies", &e))?;
    out.extend(inline.policy_names().iter().map(|p| format!("inline policy {p}")));
    let groups = iam.list_groups_for_user().user_name(user).send().await.map_err(|e| sdk("ListGroupsForUser", &e))?;
    out.extend(groups.groups().iter().map(|g| format!("group {}", g.group_name())));
    let mfa = iam.list_mfa_devices().user_name(user).send().await.map_err(|e| sdk("ListMFADevices", &e))?;
    out.extend(mfa.mfa_devices().iter().map(|d| format!("MFA device {}", d.serial_number())));
    // Not every emulator implements these; AWS reports them at DeleteUser anyway.
    if let Ok(o) = iam.list_ssh_public_keys().user_name(user).send().await {
        out.extend(o.ssh_public_keys().iter().map(|k| format!("SSH key {}", k.ssh_public_key_id())));
    }
    if let Ok(o) = iam.list_signing_certificates().user_name(user).send().await {
        out.extend(o.certificates().iter().map(|c| format!("signing certificate {}", c.certificate_id())));
    }
    Ok(out)
}

/// Runs one action (or the action an undo names).
async fn execute(
    iam: &aws_sdk_iam::Client,
    account: &aws_sdk_account::Client,
    action: &Action,
) -> Result<Done, String> {
    match action {
        Action::DeactivateAccessKey { user, access_key_id } => {
            let r = iam.update_access_key().user_name(user).access_key_id(access_key_id).status(StatusType::Inactive);
            removed(r.send().await, &format!("UpdateAccessKey {access_key_id} Inactive"))
        }
        Action::ActivateAccessKey { user, access_key_id } => activate_key(iam, user, access_key_id).await,
        Action::DeleteLoginProfile { user } => {
            removed(iam.delete_login_profile().user_name(user).send().await, &format!("DeleteLoginProfile {user}"))
        }
        Action::DetachUserPolicy { user, policy_arn } => removed(
            iam.detach_user_policy().user_name(user).policy_arn(policy_arn).send().await,
            &format!("DetachUserPolicy {user} {policy_arn}"),
        ),
        Action::DetachRolePolicy { role, policy_arn } => removed(
            iam.detach_role_policy().role_name(role).policy_arn(policy_arn).send().await,
            &format!("DetachRolePolicy {role} {policy_arn}"),
        ),
        Action::DetachGroupPolicy { group, policy_arn } => removed(
            iam.detach_group_policy().group_name(group).policy_arn(policy_arn).send().await,
            &format!("DetachGroupPolicy {group} {policy_arn}"),
        ),
        Action::DeleteUserPolicy { user, policy_name } => removed(
            iam.delete_user_policy().user_name(user).policy_name(policy_name).send().await,
            &format!("DeleteUserPolicy {user} {policy_name}"),
        ),
        Action::DeleteRolePolicy { role, policy_name } => removed(
            iam.delete_role_policy().role_name(role).policy_name(policy_name).send().await,
            &format!("DeleteRolePolicy {role} {policy_name}"),
        ),
        Action::DeleteGroupPolicy { group, policy_name } => removed(
            iam.delete_group_policy().group_name(group).policy_name(policy_name).send().await,
            &format!("DeleteGroupPolicy {group} {policy_name}"),
        ),
        Action::AttachUserPolicy { user, policy_arn } => changed(
            iam.attach_user_policy().user_name(user).policy_arn(policy_arn).send().await,
            &format!("AttachUserPolicy {user} {policy_arn}"),
        ),
        Action::AttachRolePolicy { role, policy_arn } => changed(
            iam.attach_role_policy().role_name(role).policy_arn(policy_arn).send().await,
            &format!("AttachRolePolicy {role} {policy_arn}"),
        ),
        Action::AttachGroupPolicy { group, policy_arn } => changed(
            iam.attach_group_policy().group_name(group).policy_arn(policy_arn).send().await,
            &format!("AttachGroupPolicy {group} {policy_arn}"),
        ),
        Action::RemoveUserFromGroup { user, group } => removed(
            iam.remove_user_from_group().user_name(user).group_name(group).send().await,
            &format!("RemoveUserFromGroup {user} {group}"),
        ),
        Action::AddUserToGroup { user, group } => changed(
            iam.add_user_to_group().user_name(user).group_name(group).send().await,
            &format!("AddUserToGroup {user} {group}"),
        ),
        Action::DeactivateMfaDevice { user, serial_number } => removed(
            iam.deactivate_mfa_device().user_name(user).serial_number(serial_number).send().await,
            &format!("DeactivateMFADevice {user} {serial_number}"),
        ),
        Action::UpdateAssumeRolePolicy { role, policy_document } => changed(
            iam.update_assume_role_policy().role_name(role).policy_document(policy_document).send().await,
            &format!("UpdateAssumeRolePolicy {role}"),
        ),
        Action::SetDefaultPolicyVersion { policy_arn, version_id } => changed(
            iam.set_default_policy_version().policy_arn(policy_arn).version_id(version_id).send().await,
            &format!("SetDefaultPolicyVersion {policy_arn} {version_id}"),
        ),
        Action::DeleteUser { user } => {
            // Only reached from an undo that names DeleteUser; the apply path empties the user first.
            removed(iam.delete_user().user_name(user).send().await, &format!("DeleteUser {user}"))
        }
        Action::DeleteRole { role } => {
            removed(iam.delete_role().role_name(role).send().await, &format!("DeleteRole {role}"))
        }
        Action::DeleteOpenIdConnectProvider { arn } => removed(
            iam.delete_open_id_connect_provider().open_id_connect_provider_arn(arn).send().await,
            &format!("DeleteOpenIDConnectProvider {arn}"),
        ),
        Action::DeleteSamlProvider { arn } => removed(
            iam.delete_saml_provider().saml_provider_arn(arn).send().await,
            &format!("DeleteSAMLProvider {arn}"),
        ),
        Action::PutAlternateContact { contact_type, name, title, email, phone } => changed(
            account
                .put_alternate_contact()
                .alternate_contact_type(AlternateContactType::from(contact_type.as_str()))
                .name(name)
                .title(title)
                .email_address(email)
                .phone_number(phone)
                .send()
                .await,
            &format!("PutAlternateContact {contact_type}"),
        ),
        Action::DeleteAlternateContact { contact_type } => match account
            .delete_alternate_contact()
            .alternate_contact_type(AlternateContactType::from(contact_type.as_str()))
            .send()
            .await
        {
            Ok(_) => Ok(Done::applied()),
            Err(e) if aws_sdk_account::error::ProvideErrorMetadata::code(&e) == Some("ResourceNotFoundException") => {
                Ok(Done::already("not set"))
            }
            Err(e) => Err(format!(
                "DeleteAlternateContact {contact_type}: {}",
                aws_sdk_account::error::DisplayErrorContext(&e)
            )),
        },
        Action::SnapshotVolume { volume_id, .. } => {
            // Only reached from an undo that names it; the apply path tags it with the plan's incident.
            Err(format!("snapshot_volume {volume_id}: runs only as a step of a plan"))
        }
        Action::Sweep(_) => Err("a sweep step runs only through the sweep's clients".into()),
    }
}

async fn sweep_step(
    sweep: Option<&crate::sweep::contain::Executor>,
    step: &crate::sweep::actions::SweepAction,
) -> Result<Done, String> {
    let Some(sweep) = sweep else {
        return Err(format!("{step:?}: this rekey was started without the sweep's clients"));
    };
    let done = sweep.run(step).await?;
    Ok(match (done.changed, done.detail) {
        (true, detail) => Done { status: Status::Applied, detail },
        (false, detail) => Done { status: Status::AlreadyDone, detail },
    })
}

/// How long a forensic snapshot is waited for. Its content is fixed when CreateSnapshot returns;
/// one still pending after this is logged as taken, with its state, rather than holding back the
/// containment steps after it.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(600);
const SNAPSHOT_POLL: Duration = Duration::from_secs(5);

/// The incident's snapshot of `volume`, when one was taken (and did not fail): id and state.
async fn incident_snapshot(
    ec2: &aws_sdk_ec2::Client,
    incident: &str,
    volume: &str,
) -> Result<Option<(String, String)>, String> {
    use aws_sdk_ec2::types::Filter;
    let out = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(Filter::builder().name("tag:rekey:incident").values(incident).build())
        .filters(Filter::builder().name("volume-id").values(volume).build())
        .send()
        .await
        .map_err(|e| format!("DescribeSnapshots {volume}: {}", aws_sdk_ec2::error::DisplayErrorContext(&e)))?;
    Ok(out.snapshots().iter().filter(|s| s.state().is_none_or(|st| st.as_str() != "error")).find_map(|s| {
        let state = s.state().map(|st| st.as_str().to_string()).unwrap_or_else(|| "unknown".into());
        s.snapshot_id().map(|id| (id.to_string(), state))
    }))
}

/// CreateSnapshot of `volume`, tagged with the incident, the instance and the leaked key, then a
/// bounded wait for `completed`.
async fn snapshot_volume(
    ec2: &aws_sdk_ec2::Client,
    plan: &Plan,
    volume: &str,
    instance: &str,
    region: Option<&str>,
    wait: Duration,
) -> Result<Done, String> {
    use aws_sdk_ec2::types::{ResourceType, SnapshotState, Tag, TagSpecification};
    let ec2 = ec2_in(ec2, region);
    let err = |what: &str, e: &dyn std::error::Error| format!("{what}: {}", DisplayErrorContext(e));
    let (id, existed) = match incident_snapshot(&ec2, &plan.incident, volume).await? {
        Some((id, _)) => (id, true),
        None => {
            let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
            let tags = TagSpecification::builder()
                .resource_type(ResourceType::Snapshot)
                .tags(tag("rekey:incident", &plan.incident))
                .tags(tag("rekey:instance", instance))
                .tags(tag("rekey:access-key", &plan.access_key_id))
                .build();
            let out = ec2
                .create_snapshot()
                .volume_id(volume)
                .description(format!(
                    "rekey incident {}: forensic snapshot of {volume} of instance {instance} (leaked key {})",
                    plan.incident, plan.access_key_id
                ))
                .tag_specifications(tags)
                .send()
                .await
                .map_err(|e| err(&format!("CreateSnapshot {volume}"), &e))?;
            let id = out.snapshot_id().ok_or_else(|| format!("CreateSnapshot {volume}: no snapshot id returned"))?;
            tracing::info!(snapshot = id, volume, instance, incident = %plan.incident, "forensic snapshot started");
            (id.to_string(), false)
        }
    };
    let deadline = Instant::now() + wait;
    let state = loop {
        let state = match ec2.describe_snapshots().snapshot_ids(&id).send().await {
            Ok(out) => out.snapshots().first().and_then(|s| s.state().cloned()),
            // Just created: not visible everywhere yet.
            Err(e) if aws_sdk_ec2::error::ProvideErrorMetadata::code(&e) == Some("InvalidSnapshot.NotFound") => None,
            Err(e) => return Err(err(&format!("DescribeSnapshots {id}"), &e)),
        };
        match state {
            Some(SnapshotState::Completed) => break "completed".to_string(),
            Some(SnapshotState::Error) => {
                return Err(format!("snapshot {id} of {volume} failed (state error): take one by hand"));
            }
            s if Instant::now() >= deadline => {
                break s.map(|s| s.as_str().to_string()).unwrap_or_else(|| "unknown".into());
            }
            _ => tokio::time::sleep(SNAPSHOT_POLL.min(deadline.saturating_duration_since(Instant::now()))).await,
        }
    };
    tracing::info!(snapshot = %id, volume, instance, state = %state, incident = %plan.incident, "forensic snapshot");
    let detail = if state == "completed" {
        format!("snapshot {id} of {volume} ({instance}) completed, tagged rekey:incident={}", plan.incident)
    } else {
        format!(
            "snapshot {id} of {volume} ({instance}) still {state} after {}s: its content is fixed, it completes on its \
             own; check `aws ec2 describe-snapshots --snapshot-ids {id}` before deleting the volume",
            wait.as_secs()
        )
    };
    Ok(if existed { Done { status: Status::AlreadyDone, detail: Some(detail) } } else { Done::applied_with(detail) })
}

fn describe_undo(u: &Undo) -> String {
    match u {
        Undo::Action { action } => serde_json::to_string(action).unwrap_or_else(|_| "an action".into()),
        Undo::RecreateUser { user, .. } => format!("recreate user {user} (its deleted access keys cannot be)"),
        Undo::RecreateRole { role, .. } => format!("recreate role {role} with its trust policy"),
        Undo::PutUserPolicy { user, policy_name, .. } => format!("put inline policy {policy_name} back on {user}"),
        Undo::PutRolePolicy { role, policy_name, .. } => format!("put inline policy {policy_name} back on {role}"),
        Undo::PutGroupPolicy { group, policy_name, .. } => format!("put inline policy {policy_name} back on {group}"),
        Undo::RecreateLoginProfile { user, .. } => {
            format!("recreate the login profile of {user} with a new password that must be reset")
        }
        Undo::None { reason } => format!("not reversible: {reason}"),
    }
}

/// A password that satisfies any password policy and that nobody learns: the undo restores the
/// console login's existence, and an administrator sets the real password. No RNG crate is
/// linked; std's per-process random hash keys are enough for a value never disclosed.
fn temporary_password() -> String {
    use std::hash::{BuildHasher, Hasher};
    const CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut out = String::from("Rk-9a");
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    for round in 0..4u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(nanos);
        h.write_u64(round);
        let mut v = h.finish();
        for _ in 0..8 {
            out.push(CHARS[(v % CHARS.len() as u64) as usize] as char);
            v /= CHARS.len() as u64;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, mode: &str, status: &str) -> LogEntry {
        LogEntry {
            incident: "i".into(),
            action_id: id.into(),
            time: String::new(),
            mode: mode.into(),
            status: status.into(),
            error: None,
            detail: None,
            deleted_access_keys: Vec::new(),
            action: None,
        }
    }

    #[test]
    fn undo_targets_only_what_is_applied_and_not_yet_undone() {
        let log = vec![
            entry("A1", "apply", "applied"),
            entry("A2", "apply", "already_done"),
            entry("A3", "apply", "in_progress"),
            entry("A3", "apply", "applied"),
            entry("A4", "apply", "failed"),
            entry("A3", "undo", "undone"),
        ];
        assert_eq!(applied_ids(&log), vec!["A1".to_string()]);
    }

    #[test]
    fn temporary_passwords_differ_and_mix_classes() {
        let (a, b) = (temporary_password(), temporary_password());
        assert_ne!(a, b);
        assert!(a.len() >= 20 && a.chars().any(|c| c.is_ascii_digit()) && a.contains('-'));
    }
}
