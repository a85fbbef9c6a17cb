//! Hunt the backdoors a leaked key left in the live account.
//!
//! The timeline says what the attacker did; only the account says what is still there. Every
//! successful persistence or escalation event is checked against IAM now, and what survives gets a
//! finding and the plan actions (with undo data read before anything is removed) that take it out.
//! One file per kind of thing a backdoor is made of: `keys`, `login` (passwords and MFA), `policies`,
//! `groups`, `roles` (and trust), `providers`, `users`, `contacts`, `instances`; `window` lists what
//! IAM created inside the window whoever created it, because the trail may not hold every event.
//! `policy_json` reads policy documents, `event` the fields of an event.
//!
//! Ids: findings are numbered `F1…` and actions `A1…` in the order this module returns them; the
//! caller renumbers them when it merges other findings in, keeping each action's finding link.

mod contacts;
mod event;
mod groups;
mod instances;
mod keys;
mod login;
mod policies;
mod policy_json;
mod providers;
mod roles;
mod users;
mod window;

pub use contacts::CONTACT_TYPES;
pub use instances::ec2_in;
pub use policy_json::decode_doc;

use rekey_trail::time::parse as parse_time;
use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use aws_sdk_iam::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_iam::primitives::DateTime;

use super::model::{Action, Finding, Owner, PlanAction, Severity, TimelineEvent, Undo};
use event::{req, resp, user_from_arn};

/// What the hunt found, what it plans, and what it could not check.
#[derive(Debug, Clone, Default)]
pub struct Hunt {
    pub findings: Vec<Finding>,
    pub plan: Vec<PlanAction>,
    /// Checks that could not run and why.
    pub notes: Vec<String>,
}


/// Hunts backdoors: see the module documentation. Never fails: a check that cannot run becomes a
/// note, so one missing permission does not hide every other finding.
pub async fn hunt(
    iam: &aws_sdk_iam::Client,
    account: &aws_sdk_account::Client,
    ec2: &aws_sdk_ec2::Client,
    timeline: &[TimelineEvent],
    window: (SystemTime, SystemTime),
    compromised: &Owner,
) -> Hunt {
    let mut h = Hunter::new(iam, ec2, timeline, window, compromised);
    let events: Vec<&TimelineEvent> = timeline.iter().filter(|e| h.by_attacker(e)).collect();
    for e in &events {
        h.event(e).await;
    }
    h.instances(&events).await;
    h.sweep_users().await;
    h.sweep_roles().await;
    h.contacts(account).await;
    h.created_in_window().await;
    h.finish()
}

/// What a read of IAM said about a thing.
enum Look<T> {
    Present(T),
    Absent,
    Unknown(String),
}

fn look<T, E>(r: Result<T, E>, what: &str) -> Look<T>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match r {
        Ok(v) => Look::Present(v),
        Err(e) if matches!(e.code(), Some("NoSuchEntity" | "ResourceNotFoundException")) => Look::Absent,
        Err(e) => Look::Unknown(format!("{what}: {}", DisplayErrorContext(&e))),
    }
}

struct PlannedAction {
    rank: u8,
    finding: String,
    description: String,
    action: Action,
    undo: Undo,
}

/// Live state of a backdoor user or role learnt during the sweep.
struct Created {
    evidence: Vec<String>,
    description: Option<String>,
}

struct Hunter<'a> {
    iam: &'a aws_sdk_iam::Client,
    ec2: &'a aws_sdk_ec2::Client,
    timeline: &'a [TimelineEvent],
    window: (SystemTime, SystemTime),
    compromised: Option<String>,
    own_account: Option<String>,
    findings: Vec<Finding>,
    plan: Vec<PlannedAction>,
    notes: Vec<String>,
    created_users: BTreeMap<String, Created>,
    created_roles: BTreeMap<String, Created>,
    /// Keys the attacker minted: backdoors even on the compromised user.
    attacker_keys: BTreeSet<String>,
    attacker_policies: BTreeSet<String>,
}

impl<'a> Hunter<'a> {
    fn new(
        iam: &'a aws_sdk_iam::Client,
        ec2: &'a aws_sdk_ec2::Client,
        timeline: &'a [TimelineEvent],
        window: (SystemTime, SystemTime),
        compromised: &Owner,
    ) -> Self {
        Hunter {
            iam,
            ec2,
            timeline,
            window,
            compromised: compromised.user.clone().filter(|u| u != "root"),
            own_account: compromised.account.clone(),
            findings: Vec::new(),
            plan: Vec::new(),
            notes: Vec::new(),
            created_users: BTreeMap::new(),
            created_roles: BTreeMap::new(),
            attacker_keys: BTreeSet::new(),
            attacker_policies: BTreeSet::new(),
        }
    }

    fn by_attacker(&self, e: &TimelineEvent) -> bool {
        !e.failed && e.error_code.is_none() && self.in_window(&e.time)
    }

    // An unparseable time stays in: the timeline was built for the window, and dropping an event
    // would hide a backdoor.
    fn in_window(&self, time: &str) -> bool {
        match parse_time(time) {
            Some(t) => t >= self.window.0 && t <= self.window.1,
            None => true,
        }
    }

    fn created_in(&self, dt: Option<&DateTime>) -> bool {
        dt.and_then(|d| SystemTime::try_from(*d).ok()).is_some_and(|t| t >= self.window.0 && t <= self.window.1)
    }

    #[allow(clippy::too_many_arguments)]
    fn finding(
        &mut self,
        kind: &str,
        severity: Severity,
        title: String,
        resource: String,
        still_present: Option<bool>,
        evidence: Vec<String>,
        detail: String,
    ) -> String {
        let id = format!("F{}", self.findings.len() + 1);
        self.findings.push(Finding {
            id: id.clone(),
            severity,
            kind: kind.to_string(),
            title,
            resource,
            still_present,
            evidence,
            detail,
        });
        id
    }

    fn act(&mut self, finding: &str, description: String, action: Action, undo: Undo) {
        if self.plan.iter().any(|p| p.action == action) {
            return;
        }
        // The cutover owns the compromised user's own keys; only keys the attacker minted are ours.
        let protected = match &action {
            Action::DeactivateAccessKey { user, access_key_id } => {
                Some(user) == self.compromised.as_ref() && !self.attacker_keys.contains(access_key_id)
            }
            Action::DeleteUser { user } => Some(user) == self.compromised.as_ref(),
            _ => false,
        };
        if protected {
            return;
        }
        let rank = rank(&action);
        self.plan.push(PlannedAction { rank, finding: finding.to_string(), description, action, undo });
    }

    fn note(&mut self, note: String) {
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }

    /// The user a call acted on: the parameter, else the caller itself.
    fn target_user(&self, e: &TimelineEvent) -> Option<String> {
        req(e, "userName")
            .or_else(|| e.arn.as_deref().and_then(user_from_arn))
            .map(str::to_string)
            .or_else(|| self.compromised.clone())
    }

    async fn event(&mut self, e: &TimelineEvent) {
        if !e.event_source.starts_with("iam.") {
            return;
        }
        match e.event_name.as_str() {
            "CreateUser" => {
                if let Some(user) = req(e, "userName").or_else(|| resp(e, &["user", "userName"])) {
                    self.created_users
                        .entry(user.to_string())
                        .or_insert_with(|| Created { evidence: Vec::new(), description: None })
                        .evidence
                        .push(e.event_id.clone());
                }
            }
            "CreateRole" => {
                if let Some(role) = req(e, "roleName").or_else(|| resp(e, &["role", "roleName"])) {
                    self.created_roles
                        .entry(role.to_string())
                        .or_insert_with(|| Created {
                            evidence: Vec::new(),
                            description: req(e, "description").map(str::to_string),
                        })
                        .evidence
                        .push(e.event_id.clone());
                }
            }
            "CreateAccessKey" => self.access_key_created(e).await,
            "UpdateAccessKey" => self.access_key_updated(e).await,
            "CreateLoginProfile" | "UpdateLoginProfile" => self.login_profile(e).await,
            "EnableMFADevice" => self.mfa_enabled(e).await,
            "CreateVirtualMFADevice" => self.virtual_mfa(e).await,
            "UpdateAssumeRolePolicy" => self.trust_policy(e).await,
            "AttachUserPolicy" | "AttachRolePolicy" | "AttachGroupPolicy" => self.attached(e).await,
            "PutUserPolicy" | "PutRolePolicy" | "PutGroupPolicy" => self.inline(e).await,
            "CreatePolicy" => self.managed_policy(e).await,
            "CreatePolicyVersion" | "SetDefaultPolicyVersion" => self.policy_version(e).await,
            "AddUserToGroup" => self.group_membership(e).await,
            "CreateOpenIDConnectProvider" | "CreateSAMLProvider" => self.identity_provider(e).await,
            _ => {}
        }
    }

    fn finish(mut self) -> Hunt {
        self.plan.sort_by_key(|p| p.rank);
        let plan = self
            .plan
            .into_iter()
            .enumerate()
            .map(|(i, p)| PlanAction {
                id: format!("A{}", i + 1),
                finding: p.finding,
                description: p.description,
                action: p.action,
                undo: p.undo,
            })
            .collect();
        Hunt { findings: self.findings, plan, notes: self.notes }
    }
}

/// Order of the plan: forensic snapshots first (evidence before anything changes), then reversible
/// steps, deletions of whole principals last (they need the steps before them to have emptied the
/// principal).
fn rank(a: &Action) -> u8 {
    match a {
        Action::SnapshotVolume { .. } => 0,
        Action::DeactivateAccessKey { .. } => 1,
        Action::PutAlternateContact { .. } | Action::DeleteAlternateContact { .. } => 2,
        Action::DetachUserPolicy { .. }
        | Action::DetachRolePolicy { .. }
        | Action::DetachGroupPolicy { .. }
        | Action::DeleteUserPolicy { .. }
        | Action::DeleteRolePolicy { .. }
        | Action::DeleteGroupPolicy { .. } => 3,
        Action::DeleteLoginProfile { .. } => 4,
        Action::DeactivateMfaDevice { .. } => 5,
        Action::UpdateAssumeRolePolicy { .. } => 6,
        Action::SetDefaultPolicyVersion { .. } => 7,
        Action::RemoveUserFromGroup { .. } => 8,
        Action::DeleteOpenIdConnectProvider { .. } | Action::DeleteSamlProvider { .. } => 9,
        Action::DeleteUser { .. } | Action::DeleteRole { .. } => 10,
        _ => 11,
    }
}

impl<T> Look<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Look<U> {
        match self {
            Look::Present(v) => Look::Present(f(v)),
            Look::Absent => Look::Absent,
            Look::Unknown(w) => Look::Unknown(w),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forensic_snapshots_come_before_every_other_action() {
        let conf = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .build();
        let (iam, ec2) = (aws_sdk_iam::Client::new(&conf), aws_sdk_ec2::Client::new(&conf));
        let owner = Owner { user: Some("app".into()), ..Default::default() };
        let mut h = Hunter::new(&iam, &ec2, &[], (SystemTime::UNIX_EPOCH, SystemTime::now()), &owner);
        let keep = || Undo::None { reason: "a forensic snapshot is evidence and is kept".into() };
        h.act("F1", "delete user".into(), Action::DeleteUser { user: "bd".into() }, keep());
        h.act(
            "F1",
            "deactivate".into(),
            Action::DeactivateAccessKey { user: "bd".into(), access_key_id: "AKIA1".into() },
            keep(),
        );
        h.act("F2", "profile".into(), Action::DeleteLoginProfile { user: "bd".into() }, keep());
        for v in ["vol-1", "vol-2"] {
            let action = Action::SnapshotVolume { volume_id: v.into(), instance_id: "i-1234abcd".into(), region: None };
            h.act("F3", format!("snapshot {v}"), action, keep());
        }
        let plan = h.finish().plan;
        let kinds: Vec<bool> = plan.iter().map(|a| matches!(a.action, Action::SnapshotVolume { .. })).collect();
        assert_eq!(kinds, [true, true, false, false, false], "{plan:#?}");
        assert_eq!(plan[0].id, "A1");
        assert!(matches!(&plan[0].action, Action::SnapshotVolume { volume_id, .. } if volume_id == "vol-1"));
        assert!(matches!(plan.last().map(|a| &a.action), Some(Action::DeleteUser { .. })));
    }
}
