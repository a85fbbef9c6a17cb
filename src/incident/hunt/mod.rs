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
//! IAM is read up to the moment the hunt runs, not only to the window's end: the attacker keeps
//! acting while rekey responds, and CloudTrail delivers those events minutes late (`window`).
//!
//! Only what the attacker provably did is planned. A change signed by the key from one of the
//! application's own sources (learnt as the fence learns them) may be the application's: it is an
//! "unattributed, review" finding with no action. A finding whose only evidence is in log files
//! that failed digest validation is marked so and not planned either.
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

use super::model::{Action, Finding, Owner, PlanAction, Severity, TimelineEvent, Undo};
use event::{join_detail, req, resp, user_from_arn};

/// What the hunt found, what it plans, and what it could not check.
#[derive(Debug, Clone, Default)]
pub struct Hunt {
    pub findings: Vec<Finding>,
    pub plan: Vec<PlanAction>,
    /// Checks that could not run and why.
    pub notes: Vec<String>,
}

/// What the hunt is told besides the timeline.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The investigated window.
    pub window: (SystemTime, SystemTime),
    /// The leaked key.
    pub key: String,
    pub compromised: Owner,
    /// When the response began (see [`response_began`]): what IAM created since then, up to the
    /// hunt, is the attacker's unless an event says otherwise. None: nothing past the window.
    pub response_started: Option<SystemTime>,
    /// Keys rekey made itself during the response (the cutover's new key).
    pub own_keys: Vec<String>,
    /// `--attacker-ip`: never one of the application's sources.
    pub attacker_ips: Vec<String>,
    /// Events whose only evidence failed digest validation, with why.
    pub unverified: BTreeMap<String, String>,
}

/// When the response began, for a command started at `started` investigating a window ending at
/// `window_end`: the window's end when it ends at the start (the default, now), so that nothing
/// falls between "in the window" and "during the response"; else the start.
pub fn response_began(window_end: SystemTime, started: SystemTime) -> SystemTime {
    match started.duration_since(window_end) {
        Ok(gap) if gap <= std::time::Duration::from_secs(300) => window_end,
        _ => started,
    }
}

/// Hunts backdoors: see the module documentation. Never fails: a check that cannot run becomes a
/// note, so one missing permission does not hide every other finding.
pub async fn hunt(
    iam: &aws_sdk_iam::Client,
    account: &aws_sdk_account::Client,
    ec2: &aws_sdk_ec2::Client,
    timeline: &[TimelineEvent],
    scope: &Scope,
) -> Hunt {
    let mut h = Hunter::new(iam, ec2, timeline, scope);
    let (events, unattributed): (Vec<&TimelineEvent>, Vec<&TimelineEvent>) =
        timeline.iter().filter(|e| h.by_attacker(e)).partition(|e| h.app_source(e).is_none());
    for e in unattributed {
        h.unattributed(e);
    }
    for e in &events {
        h.event(e).await;
    }
    h.instances(&events).await;
    h.sweep_users().await;
    h.sweep_roles().await;
    h.contacts(account).await;
    h.created_unexplained().await;
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

/// Why the hunt holds a user or role to be the attacker's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// An event of the key's in the timeline created it.
    Event,
    /// IAM created it after the response began, and no event explains it yet.
    Response,
}

impl Origin {
    /// The finding's kind and title for `what` (`IAM user`, `role`) named `name`; `kind` is the
    /// kind of a backdoor an event shows.
    fn kind_and_title(self, kind: &str, what: &str, name: &str) -> (String, String) {
        match self {
            Origin::Event => (kind.to_string(), format!("attacker created {what} {name}")),
            Origin::Response => (
                "created_during_response".into(),
                format!("{what} {name} was created during the response, creator not yet in CloudTrail"),
            ),
        }
    }

    fn detail(self, detail: String) -> String {
        match self {
            Origin::Event => detail,
            Origin::Response => join_detail(window::RESPONSE_DETAIL, &detail),
        }
    }
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
    response_started: Option<SystemTime>,
    own_keys: Vec<String>,
    /// Users whose console password an event of the attacker's explains.
    passwords_seen: BTreeSet<String>,
    /// The application's own sources (addresses, VPC endpoints), as the fence learns them.
    app_sources: BTreeSet<String>,
    /// Names of what unattributed changes made: left to a person, never planned.
    reviewed: BTreeSet<String>,
    unverified: BTreeMap<String, String>,
}

impl<'a> Hunter<'a> {
    fn new(
        iam: &'a aws_sdk_iam::Client,
        ec2: &'a aws_sdk_ec2::Client,
        timeline: &'a [TimelineEvent],
        scope: &Scope,
    ) -> Self {
        let own: Vec<TimelineEvent> =
            timeline.iter().filter(|e| e.signer.as_deref() == Some(scope.key.as_str())).cloned().collect();
        let (learnt, _) = super::fence::learn_sources(&own, None, &scope.attacker_ips);
        Hunter {
            iam,
            ec2,
            timeline,
            window: scope.window,
            compromised: scope.compromised.user.clone().filter(|u| u != "root"),
            own_account: scope.compromised.account.clone(),
            findings: Vec::new(),
            plan: Vec::new(),
            notes: Vec::new(),
            created_users: BTreeMap::new(),
            created_roles: BTreeMap::new(),
            attacker_keys: BTreeSet::new(),
            attacker_policies: BTreeSet::new(),
            response_started: scope.response_started,
            own_keys: scope.own_keys.clone(),
            passwords_seen: BTreeSet::new(),
            app_sources: learnt.into_iter().map(|s| s.value).collect(),
            reviewed: BTreeSet::new(),
            unverified: scope.unverified.clone(),
        }
    }

    /// The application's own source an event came from, if it did.
    fn app_source(&self, e: &TimelineEvent) -> Option<String> {
        let source = e.vpc_endpoint_id.as_deref().or(e.source_ip.as_deref())?;
        self.app_sources.contains(source).then(|| source.to_string())
    }

    /// A change the key made from the application's own source: the application may have made it,
    /// so a person reviews it and the plan leaves it alone. Only the changes the hunt acts on.
    fn unattributed(&mut self, e: &TimelineEvent) {
        let acted_on = (e.event_source.starts_with("iam.") && HUNTED.contains(&e.event_name.as_str()))
            || matches!(e.event_name.as_str(), "PutAlternateContact" | "DeleteAlternateContact")
            || instances::instances_of(e).is_some();
        if !acted_on {
            return;
        }
        let source = self.app_source(e).unwrap_or_default();
        let named = ["userName", "roleName", "policyArn", "groupName"].into_iter().filter_map(|k| req(e, k));
        let made = [
            resp(e, &["accessKey", "accessKeyId"]),
            resp(e, &["policy", "arn"]),
            resp(e, &["user", "userName"]),
            resp(e, &["role", "roleName"]),
        ];
        let names: Vec<String> = named.chain(made.into_iter().flatten()).map(str::to_string).collect();
        // What a created thing is named stays out of the "created in the window" sweep too.
        if e.event_name.starts_with("Create") {
            self.reviewed.extend(names.iter().cloned());
        }
        let resource = names.first().cloned().unwrap_or_else(|| e.event_name.clone());
        self.finding(
            "unattributed",
            Severity::Medium,
            format!("{} by the leaked key from the application's own source {source}: review", e.event_name),
            resource,
            None,
            vec![e.event_id.clone()],
            format!(
                "signed by the leaked key from {source}, where the application used it before the attack: it may be \
                 the application's own change, so the plan does nothing about it; if it is not, undo it by hand"
            ),
        );
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
        // A finding whose only evidence failed digest validation is not proof: marked, not planned.
        for f in &mut self.findings {
            if f.evidence.is_empty() || !f.evidence.iter().all(|id| self.unverified.contains_key(id)) {
                continue;
            }
            let why: Vec<&str> =
                f.evidence.iter().filter_map(|id| self.unverified.get(id).map(String::as_str)).collect();
            f.title = format!("{} (its only evidence failed CloudTrail digest validation)", f.title);
            f.detail = join_detail(
                &f.detail,
                &format!(
                    "not planned: the log file that shows it was altered or not delivered by CloudTrail ({}); review",
                    why.join("; ")
                ),
            );
            let id = f.id.clone();
            self.plan.retain(|p| p.finding != id);
        }
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

/// The IAM events [`Hunter::event`] acts on.
const HUNTED: &[&str] = &[
    "CreateUser",
    "CreateRole",
    "CreateAccessKey",
    "UpdateAccessKey",
    "CreateLoginProfile",
    "UpdateLoginProfile",
    "EnableMFADevice",
    "CreateVirtualMFADevice",
    "UpdateAssumeRolePolicy",
    "AttachUserPolicy",
    "AttachRolePolicy",
    "AttachGroupPolicy",
    "PutUserPolicy",
    "PutRolePolicy",
    "PutGroupPolicy",
    "CreatePolicy",
    "CreatePolicyVersion",
    "SetDefaultPolicyVersion",
    "AddUserToGroup",
    "CreateOpenIDConnectProvider",
    "CreateSAMLProvider",
];

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

    fn scope(unverified: Vec<(&str, &str)>) -> Scope {
        Scope {
            window: (SystemTime::UNIX_EPOCH, SystemTime::now()),
            key: "AKIALEAK".into(),
            compromised: Owner { user: Some("app".into()), ..Default::default() },
            response_started: None,
            own_keys: Vec::new(),
            attacker_ips: vec!["198.51.100.50".into()],
            unverified: unverified.into_iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
        }
    }

    fn clients() -> (aws_sdk_iam::Client, aws_sdk_ec2::Client) {
        let conf = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .build();
        (aws_sdk_iam::Client::new(&conf), aws_sdk_ec2::Client::new(&conf))
    }

    fn event(id: &str, day: u32, ip: &str, name: &str, req: serde_json::Value) -> TimelineEvent {
        TimelineEvent {
            event_id: id.into(),
            time: format!("2026-11-{day:02}T12:00:00Z"),
            event_name: name.into(),
            event_source: "iam.amazonaws.com".into(),
            source_ip: Some(ip.into()),
            signer: Some("AKIALEAK".into()),
            chain: vec!["AKIALEAK".into()],
            request_parameters: Some(req),
            ..Default::default()
        }
    }

    #[test]
    fn changes_from_the_applications_own_source_are_for_review_only() {
        let (iam, ec2) = clients();
        // The application's address, seen before the attack began (the attacker's first call).
        let mut timeline: Vec<TimelineEvent> = (1..4)
            .map(|d| event(&format!("app{d}"), d, "203.0.113.10", "GetCallerIdentity", serde_json::json!(null)))
            .collect();
        timeline.push(event("atk", 10, "198.51.100.50", "ListUsers", serde_json::json!(null)));
        timeline.push(event("appw", 11, "203.0.113.10", "CreateUser", serde_json::json!({"userName": "app-made"})));
        let s = scope(Vec::new());
        let mut h = Hunter::new(&iam, &ec2, &timeline, &s);
        assert_eq!(h.app_source(&timeline[4]).as_deref(), Some("203.0.113.10"));
        assert_eq!(h.app_source(&timeline[3]), None, "an attacker address is never the application's");
        h.unattributed(&timeline[4]);
        h.unattributed(&timeline[0]);
        assert!(h.reviewed.contains("app-made"));
        let out = h.finish();
        assert_eq!(out.findings.len(), 1, "{:#?}", out.findings);
        assert_eq!(out.findings[0].kind, "unattributed");
        assert_eq!(out.findings[0].resource, "app-made");
        assert!(out.plan.is_empty());
    }

    #[test]
    fn a_finding_resting_only_on_a_failed_log_file_is_marked_and_not_planned() {
        let (iam, ec2) = clients();
        let s = scope(vec![("e1", "s3://b/f.json.gz: changed after delivery")]);
        let mut h = Hunter::new(&iam, &ec2, &[], &s);
        let keep = || Undo::None { reason: "test".into() };
        let framed = h.finding(
            "backdoor_user",
            Severity::High,
            "attacker created IAM user a".into(),
            "a".into(),
            Some(true),
            vec!["e1".into()],
            String::new(),
        );
        h.act(&framed, "delete a".into(), Action::DeleteUser { user: "a".into() }, keep());
        let real = h.finding(
            "backdoor_user",
            Severity::High,
            "attacker created IAM user b".into(),
            "b".into(),
            Some(true),
            vec!["e1".into(), "e2".into()],
            String::new(),
        );
        h.act(&real, "delete b".into(), Action::DeleteUser { user: "b".into() }, keep());
        let out = h.finish();
        assert!(out.findings[0].title.contains("failed CloudTrail digest validation"), "{:#?}", out.findings[0]);
        assert!(out.findings[0].detail.contains("changed after delivery"));
        assert!(!out.findings[1].title.contains("validation"), "another source backs it");
        let planned: Vec<&Action> = out.plan.iter().map(|p| &p.action).collect();
        assert_eq!(planned, [&Action::DeleteUser { user: "b".into() }]);
    }

    #[test]
    fn the_response_begins_at_the_windows_end_when_that_is_now() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let s = std::time::Duration::from_secs(1);
        assert_eq!(response_began(t, t + s), t);
        assert_eq!(response_began(t - s * 86_400, t), t, "a window that ended long ago");
        assert_eq!(response_began(t + s, t), t, "a window that ends later");
    }

    #[test]
    fn forensic_snapshots_come_before_every_other_action() {
        let (iam, ec2) = clients();
        let mut h = Hunter::new(&iam, &ec2, &[], &scope(Vec::new()));
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
