//! Hunt the backdoors a leaked key left in the live account.
//!
//! The timeline says what the attacker did; only the account says what is still there. Every
//! successful persistence or escalation event is checked against IAM now, and what survives gets a
//! finding and the plan actions (with undo data read before anything is removed) that take it out.
//! Alternate contacts are compared with the values the timeline recorded before the window, and
//! everything IAM created inside the window is listed whoever created it, because the trail may not
//! hold every event.
//!
//! EC2 instances the attacker launched or reached into (`RunInstances`, `SendCommand`,
//! `AssociateIamInstanceProfile`, …) that still exist get a finding and, for each EBS volume, a
//! forensic snapshot placed before every other action of the plan: evidence first.
//!
//! Ids: findings are numbered `F1…` and actions `A1…` in the order this module returns them.
//! A caller merging them with other findings renumbers with [`Hunt::renumber`], which keeps the
//! action → finding links.

use rekey_trail::time::parse as parse_time;
use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use aws_sdk_account::types::AlternateContactType;
use aws_sdk_iam::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_iam::primitives::DateTime;
use serde_json::Value;

use super::model::{Action, Finding, Owner, PlanAction, Severity, TimelineEvent, Undo};

/// What the hunt found, what it plans, and what it could not check.
#[derive(Debug, Clone, Default)]
pub struct Hunt {
    pub findings: Vec<Finding>,
    pub plan: Vec<PlanAction>,
    /// Checks that could not run and why.
    pub notes: Vec<String>,
}

impl Hunt {
    /// Renumbers findings from `F{first_finding}` and actions from `A{first_action}`, keeping each
    /// action pointing at its finding.
    pub fn renumber(&mut self, first_finding: usize, first_action: usize) {
        let mut map = BTreeMap::new();
        for (i, f) in self.findings.iter_mut().enumerate() {
            let id = format!("F{}", first_finding + i);
            map.insert(std::mem::replace(&mut f.id, id.clone()), id);
        }
        for (i, a) in self.plan.iter_mut().enumerate() {
            a.id = format!("A{}", first_action + i);
            if let Some(id) = map.get(&a.finding) {
                a.finding = id.clone();
            }
        }
    }
}

/// The alternate contact types AWS knows, as `GetAlternateContact` spells them.
pub const CONTACT_TYPES: [&str; 3] = ["BILLING", "OPERATIONS", "SECURITY"];

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

    async fn access_key_created(&mut self, e: &TimelineEvent) {
        let user = resp(e, &["accessKey", "userName"]).map(str::to_string).or_else(|| self.target_user(e));
        let (Some(user), Some(key)) = (user, resp(e, &["accessKey", "accessKeyId"]).map(str::to_string)) else {
            self.note(format!("{}: CreateAccessKey without a user or key id in the event; not checked", e.event_id));
            return;
        };
        self.attacker_keys.insert(key.clone());
        let on_compromised = Some(&user) == self.compromised.as_ref();
        let title = if on_compromised {
            format!("attacker created access key {key} on the compromised user {user}")
        } else {
            format!("attacker created access key {key} for user {user}")
        };
        let status = self.key_status(&user, &key).await;
        let (present, detail) = match &status {
            Look::Present(Some(s)) => (Some(true), format!("the key exists now and is {s}")),
            Look::Present(None) | Look::Absent => (Some(false), "the key no longer exists".to_string()),
            Look::Unknown(why) => (None, format!("could not check: {why}")),
        };
        let f = self.finding(
            "access_key",
            Severity::Critical,
            title,
            key.clone(),
            present,
            vec![e.event_id.clone()],
            detail,
        );
        if matches!(&status, Look::Present(Some(s)) if s == "Active") {
            self.deactivate_key(&f, &user, &key);
        }
    }

    fn deactivate_key(&mut self, finding: &str, user: &str, key: &str) {
        self.act(
            finding,
            format!("deactivate access key {key} of {user}"),
            Action::DeactivateAccessKey { user: user.to_string(), access_key_id: key.to_string() },
            Undo::Action {
                action: Action::ActivateAccessKey { user: user.to_string(), access_key_id: key.to_string() },
            },
        );
    }

    /// `Present(None)`: the user exists but not the key.
    async fn key_status(&mut self, user: &str, key: &str) -> Look<Option<String>> {
        match look(self.iam.list_access_keys().user_name(user).send().await, &format!("ListAccessKeys {user}")) {
            Look::Present(out) => Look::Present(
                out.access_key_metadata()
                    .iter()
                    .find(|k| k.access_key_id() == Some(key))
                    .map(|k| k.status().map(|s| s.as_str().to_string()).unwrap_or_else(|| "unknown".into())),
            ),
            Look::Absent => Look::Absent,
            Look::Unknown(why) => {
                self.note(why.clone());
                Look::Unknown(why)
            }
        }
    }

    async fn access_key_updated(&mut self, e: &TimelineEvent) {
        let Some(key) = req(e, "accessKeyId").map(str::to_string) else { return };
        if !req(e, "status").is_some_and(|s| s.eq_ignore_ascii_case("active")) || self.attacker_keys.contains(&key) {
            return;
        }
        let Some(user) = self.target_user(e) else { return };
        let status = self.key_status(&user, &key).await;
        let active = matches!(&status, Look::Present(Some(s)) if s == "Active");
        let present = match &status {
            Look::Unknown(_) => None,
            _ => Some(active),
        };
        let on_compromised = Some(&user) == self.compromised.as_ref();
        let detail = if on_compromised {
            "a key of the compromised user: the cutover deactivates it, the containment plan does not touch it".into()
        } else if active {
            "re-activated by the attacker and still active".into()
        } else {
            "no longer active".into()
        };
        let f = self.finding(
            "access_key",
            Severity::High,
            format!("attacker re-activated access key {key} of {user}"),
            key.clone(),
            present,
            vec![e.event_id.clone()],
            detail,
        );
        if active && !on_compromised {
            self.deactivate_key(&f, &user, &key);
        }
    }

    async fn login_profile(&mut self, e: &TimelineEvent) {
        let Some(user) = self.target_user(e) else { return };
        let r = self.iam.get_login_profile().user_name(&user).send().await;
        let present = match look(r, &format!("GetLoginProfile {user}")) {
            Look::Present(_) => Some(true),
            Look::Absent => Some(false),
            Look::Unknown(why) => {
                self.note(why);
                None
            }
        };
        let verb = if e.event_name == "CreateLoginProfile" { "created" } else { "changed" };
        let f = self.finding(
            "login_profile",
            Severity::High,
            format!("attacker {verb} the console password of {user}"),
            user.clone(),
            present,
            vec![e.event_id.clone()],
            "the attacker knows this password".into(),
        );
        if present == Some(true) {
            self.delete_login_profile(&f, &user);
        }
    }

    fn delete_login_profile(&mut self, finding: &str, user: &str) {
        self.act(
            finding,
            format!("delete the console login profile of {user}"),
            Action::DeleteLoginProfile { user: user.to_string() },
            Undo::RecreateLoginProfile { user: user.to_string(), password_reset_required: true },
        );
    }

    async fn mfa_devices(&mut self, user: &str) -> Look<Vec<String>> {
        match look(self.iam.list_mfa_devices().user_name(user).send().await, &format!("ListMFADevices {user}")) {
            Look::Present(out) => {
                Look::Present(out.mfa_devices().iter().map(|d| d.serial_number().to_string()).collect())
            }
            Look::Absent => Look::Absent,
            Look::Unknown(why) => {
                self.note(why.clone());
                Look::Unknown(why)
            }
        }
    }

    fn deactivate_mfa(&mut self, finding: &str, user: &str, serial: &str) {
        self.act(
            finding,
            format!("deactivate MFA device {serial} of {user}"),
            Action::DeactivateMfaDevice { user: user.to_string(), serial_number: serial.to_string() },
            Undo::None { reason: "re-enabling an MFA device needs two consecutive codes from the device".into() },
        );
    }

    async fn mfa_enabled(&mut self, e: &TimelineEvent) {
        let (Some(user), Some(serial)) = (self.target_user(e), req(e, "serialNumber").map(str::to_string)) else {
            return;
        };
        let devices = self.mfa_devices(&user).await;
        let present = match &devices {
            Look::Present(d) => Some(d.contains(&serial)),
            Look::Absent => Some(false),
            Look::Unknown(_) => None,
        };
        let f = self.finding(
            "mfa_device",
            Severity::High,
            format!("attacker enabled MFA device {serial} on {user}"),
            serial.clone(),
            present,
            vec![e.event_id.clone()],
            "an attacker's MFA device secures their access to the user".into(),
        );
        if present == Some(true) {
            self.deactivate_mfa(&f, &user, &serial);
        }
    }

    async fn virtual_mfa(&mut self, e: &TimelineEvent) {
        let Some(serial) = resp(e, &["virtualMFADevice", "serialNumber"]).map(str::to_string) else { return };
        let r = self.iam.list_virtual_mfa_devices().send().await;
        let (present, user) = match look(r, "ListVirtualMFADevices") {
            Look::Present(out) => match out.virtual_mfa_devices().iter().find(|d| d.serial_number() == serial) {
                Some(d) => (Some(true), d.user().map(|u| u.user_name().to_string())),
                None => (Some(false), None),
            },
            Look::Absent => (Some(false), None),
            Look::Unknown(why) => {
                self.note(why);
                (None, None)
            }
        };
        let detail = match &user {
            Some(u) => format!("assigned to {u}"),
            None if present == Some(true) => {
                format!("not assigned; delete it with `aws iam delete-virtual-mfa-device --serial-number {serial}`")
            }
            None => String::new(),
        };
        let f = self.finding(
            "mfa_device",
            Severity::Medium,
            format!("attacker created virtual MFA device {serial}"),
            serial.clone(),
            present,
            vec![e.event_id.clone()],
            detail,
        );
        if let Some(u) = user {
            self.deactivate_mfa(&f, &u, &serial);
        }
    }

    async fn role_trust(&mut self, role: &str) -> Look<(String, Option<String>, Option<String>)> {
        match look(self.iam.get_role().role_name(role).send().await, &format!("GetRole {role}")) {
            Look::Present(out) => match out.role() {
                Some(r) => Look::Present((
                    decode_doc(r.assume_role_policy_document().unwrap_or_default()),
                    Some(r.path().to_string()),
                    r.description().map(str::to_string),
                )),
                None => Look::Absent,
            },
            Look::Absent => Look::Absent,
            Look::Unknown(why) => {
                self.note(why.clone());
                Look::Unknown(why)
            }
        }
    }

    /// The trust policy the role had before the window, when the timeline shows it.
    fn trust_before(&self, role: &str, before: &str) -> Option<String> {
        let before_t = parse_time(before);
        self.timeline
            .iter()
            .filter(|e| !e.failed && !self.in_window(&e.time))
            .filter(|e| before_t.is_none() || parse_time(&e.time) < before_t)
            .filter(|e| req(e, "roleName") == Some(role))
            .filter_map(|e| match e.event_name.as_str() {
                "CreateRole" => doc_param(e, "assumeRolePolicyDocument"),
                "UpdateAssumeRolePolicy" => doc_param(e, "policyDocument"),
                _ => None,
            })
            .next_back()
    }

    async fn trust_policy(&mut self, e: &TimelineEvent) {
        let (Some(role), Some(doc)) = (req(e, "roleName").map(str::to_string), doc_param(e, "policyDocument")) else {
            return;
        };
        let old = self.trust_before(&role, &e.time);
        let old_principals = old.as_deref().map(principals).unwrap_or_default();
        let added: BTreeSet<String> = principals(&doc).difference(&old_principals).cloned().collect();
        let current = self.role_trust(&role).await;
        let (present, current_doc) = match &current {
            Look::Present((d, _, _)) => (Some(!principals(d).is_disjoint(&added)), Some(d.clone())),
            Look::Absent => (Some(false), None),
            Look::Unknown(_) => (None, None),
        };
        let foreign = added.iter().any(|p| self.is_foreign(p));
        let backdoor_role = self.created_roles.contains_key(&role);
        let mut detail = format!("principals the attacker added: {}", join(&added));
        if old.is_none() {
            detail.push_str("; the trust policy before the window is not in the timeline");
        }
        let f = self.finding(
            "trust_policy",
            if foreign { Severity::Critical } else { Severity::High },
            format!("attacker changed who can assume role {role}"),
            role.clone(),
            present,
            vec![e.event_id.clone()],
            detail,
        );
        // A role the attacker created is deleted whole; fixing its trust first would be wasted.
        if present != Some(true) || backdoor_role {
            return;
        }
        let Some(current_doc) = current_doc else { return };
        let restored = old.or_else(|| strip_principals(&current_doc, &added));
        match restored {
            Some(restored) => self.act(
                &f,
                format!("restore the trust policy of role {role} without {}", join(&added)),
                Action::UpdateAssumeRolePolicy { role: role.clone(), policy_document: restored },
                Undo::Action { action: Action::UpdateAssumeRolePolicy { role, policy_document: current_doc } },
            ),
            None => self.note(format!(
                "{f}: removing the attacker's principals leaves role {role} with an empty trust policy; fix it by hand"
            )),
        }
    }

    fn is_foreign(&self, principal: &str) -> bool {
        let Some(rest) = principal.strip_prefix("AWS:") else { return false };
        if rest == "*" {
            return true;
        }
        let acct = rest.split(':').nth(4).unwrap_or(rest);
        match &self.own_account {
            Some(own) => acct != own,
            None => acct.len() == 12,
        }
    }

    /// Managed-policy name and whether it grants everything.
    async fn policy_is_admin(&mut self, arn: &str) -> bool {
        let name = arn.rsplit('/').next().unwrap_or(arn);
        if admin_name(name) {
            return true;
        }
        if arn.starts_with("arn:aws:iam::aws:policy/") {
            return false;
        }
        match self.default_version_doc(arn).await {
            Some((_, doc)) => admin_doc(&doc),
            None => false,
        }
    }

    async fn default_version_doc(&mut self, arn: &str) -> Option<(String, String)> {
        let policy = match look(self.iam.get_policy().policy_arn(arn).send().await, &format!("GetPolicy {arn}")) {
            Look::Present(out) => out.policy()?.default_version_id()?.to_string(),
            Look::Absent => return None,
            Look::Unknown(why) => {
                self.note(why);
                return None;
            }
        };
        let r = self.iam.get_policy_version().policy_arn(arn).version_id(&policy).send().await;
        match look(r, &format!("GetPolicyVersion {arn} {policy}")) {
            Look::Present(out) => Some((policy, decode_doc(out.policy_version()?.document()?))),
            Look::Absent => None,
            Look::Unknown(why) => {
                self.note(why);
                None
            }
        }
    }

    async fn attached(&mut self, e: &TimelineEvent) {
        let Some(arn) = req(e, "policyArn").map(str::to_string) else { return };
        let (kind, name) = match e.event_name.as_str() {
            "AttachUserPolicy" => ("user", req(e, "userName")),
            "AttachRolePolicy" => ("role", req(e, "roleName")),
            _ => ("group", req(e, "groupName")),
        };
        let Some(name) = name.map(str::to_string) else { return };
        let attached = self.attached_policies(kind, &name).await;
        let present = match &attached {
            Look::Present(list) => Some(list.iter().any(|(a, _)| a == &arn)),
            Look::Absent => Some(false),
            Look::Unknown(_) => None,
        };
        let admin = self.policy_is_admin(&arn).await;
        let f = self.finding(
            "attached_policy",
            if admin { Severity::Critical } else { Severity::High },
            format!("attacker attached {arn} to {kind} {name}"),
            format!("{kind}/{name}"),
            present,
            vec![e.event_id.clone()],
            if admin { "grants full access".into() } else { String::new() },
        );
        if present == Some(true) {
            self.detach(&f, kind, &name, &arn);
        }
    }

    /// (arn, name) of the managed policies attached to a user, role or group.
    async fn attached_policies(&mut self, kind: &str, name: &str) -> Look<Vec<(String, String)>> {
        let what = format!("ListAttached{}Policies {name}", capitalised(kind));
        let r = match kind {
            "user" => look(self.iam.list_attached_user_policies().user_name(name).max_items(1000).send().await, &what)
                .map(|o| o.attached_policies().to_vec()),
            "role" => look(self.iam.list_attached_role_policies().role_name(name).max_items(1000).send().await, &what)
                .map(|o| o.attached_policies().to_vec()),
            _ => look(self.iam.list_attached_group_policies().group_name(name).max_items(1000).send().await, &what)
                .map(|o| o.attached_policies().to_vec()),
        };
        let list = match r {
            Look::Present(l) => l,
            Look::Absent => return Look::Absent,
            Look::Unknown(why) => {
                self.note(why.clone());
                return Look::Unknown(why);
            }
        };
        Look::Present(
            list.iter()
                .filter_map(|p| Some((p.policy_arn()?.to_string(), p.policy_name().unwrap_or_default().to_string())))
                .collect(),
        )
    }

    fn detach(&mut self, finding: &str, kind: &str, name: &str, arn: &str) {
        let (n, a) = (name.to_string(), arn.to_string());
        let (action, undo) = match kind {
            "user" => (
                Action::DetachUserPolicy { user: n.clone(), policy_arn: a.clone() },
                Action::AttachUserPolicy { user: n, policy_arn: a },
            ),
            "role" => (
                Action::DetachRolePolicy { role: n.clone(), policy_arn: a.clone() },
                Action::AttachRolePolicy { role: n, policy_arn: a },
            ),
            _ => (
                Action::DetachGroupPolicy { group: n.clone(), policy_arn: a.clone() },
                Action::AttachGroupPolicy { group: n, policy_arn: a },
            ),
        };
        self.act(finding, format!("detach {arn} from {kind} {name}"), action, Undo::Action { action: undo });
    }

    async fn inline_doc(&mut self, kind: &str, name: &str, policy: &str) -> Look<String> {
        let what = format!("Get{}Policy {name} {policy}", capitalised(kind));
        let r = match kind {
            "user" => look(self.iam.get_user_policy().user_name(name).policy_name(policy).send().await, &what)
                .map(|o| decode_doc(o.policy_document())),
            "role" => look(self.iam.get_role_policy().role_name(name).policy_name(policy).send().await, &what)
                .map(|o| decode_doc(o.policy_document())),
            _ => look(self.iam.get_group_policy().group_name(name).policy_name(policy).send().await, &what)
                .map(|o| decode_doc(o.policy_document())),
        };
        if let Look::Unknown(why) = &r {
            self.note(why.clone());
        }
        r
    }

    fn delete_inline(&mut self, finding: &str, kind: &str, name: &str, policy: &str, doc: String) {
        let (n, p) = (name.to_string(), policy.to_string());
        let (action, undo) = match kind {
            "user" => (
                Action::DeleteUserPolicy { user: n.clone(), policy_name: p.clone() },
                Undo::PutUserPolicy { user: n, policy_name: p, policy_document: doc },
            ),
            "role" => (
                Action::DeleteRolePolicy { role: n.clone(), policy_name: p.clone() },
                Undo::PutRolePolicy { role: n, policy_name: p, policy_document: doc },
            ),
            _ => (
                Action::DeleteGroupPolicy { group: n.clone(), policy_name: p.clone() },
                Undo::PutGroupPolicy { group: n, policy_name: p, policy_document: doc },
            ),
        };
        self.act(finding, format!("delete inline policy {policy} of {kind} {name}"), action, undo);
    }

    async fn inline(&mut self, e: &TimelineEvent) {
        let (kind, name) = match e.event_name.as_str() {
            "PutUserPolicy" => ("user", req(e, "userName")),
            "PutRolePolicy" => ("role", req(e, "roleName")),
            _ => ("group", req(e, "groupName")),
        };
        let (Some(name), Some(policy)) = (name.map(str::to_string), req(e, "policyName").map(str::to_string)) else {
            return;
        };
        let current = self.inline_doc(kind, &name, &policy).await;
        let attacker_doc = doc_param(e, "policyDocument");
        let admin =
            attacker_doc.as_deref().is_some_and(admin_doc) || matches!(&current, Look::Present(d) if admin_doc(d));
        let (present, detail) = match &current {
            Look::Present(d) if attacker_doc.as_deref().is_some_and(|a| !same_doc(a, d)) => {
                (Some(true), "the document changed since the attacker wrote it".to_string())
            }
            Look::Present(_) => (Some(true), String::new()),
            Look::Absent => (Some(false), String::new()),
            Look::Unknown(_) => (None, String::new()),
        };
        let f = self.finding(
            "inline_policy",
            if admin { Severity::Critical } else { Severity::High },
            format!("attacker put inline policy {policy} on {kind} {name}"),
            format!("{kind}/{name}/{policy}"),
            present,
            vec![e.event_id.clone()],
            if admin { join_detail("grants full access", &detail) } else { detail },
        );
        if let Look::Present(doc) = current {
            self.delete_inline(&f, kind, &name, &policy, doc);
        }
    }

    async fn managed_policy(&mut self, e: &TimelineEvent) {
        let Some(arn) = resp(e, &["policy", "arn"]).map(str::to_string) else { return };
        self.attacker_policies.insert(arn.clone());
        let r = self.iam.get_policy().policy_arn(&arn).send().await;
        let (present, attachments) = match look(r, &format!("GetPolicy {arn}")) {
            Look::Present(out) => (Some(true), out.policy().and_then(|p| p.attachment_count()).unwrap_or(0)),
            Look::Absent => (Some(false), 0),
            Look::Unknown(why) => {
                self.note(why);
                (None, 0)
            }
        };
        let admin = doc_param(e, "policyDocument").as_deref().is_some_and(admin_doc);
        self.finding(
            "managed_policy",
            if admin { Severity::High } else { Severity::Medium },
            format!("attacker created managed policy {arn}"),
            arn,
            present,
            vec![e.event_id.clone()],
            format!(
                "attached to {attachments} principal(s); attachments the attacker made are detached by their own \
                 findings, delete the policy by hand once reviewed"
            ),
        );
    }

    async fn policy_version(&mut self, e: &TimelineEvent) {
        let Some(arn) = req(e, "policyArn").map(str::to_string) else { return };
        let version = if e.event_name == "SetDefaultPolicyVersion" {
            req(e, "versionId").map(str::to_string)
        } else {
            resp(e, &["policyVersion", "versionId"]).map(str::to_string)
        };
        let Some(version) = version else { return };
        let sets_default = e.event_name == "SetDefaultPolicyVersion"
            || req_bool(e, "setAsDefault")
            || resp_bool(e, &["policyVersion", "isDefaultVersion"]);
        let r = self.iam.list_policy_versions().policy_arn(&arn).send().await;
        let versions = match look(r, &format!("ListPolicyVersions {arn}")) {
            Look::Present(out) => Some(out.versions().to_vec()),
            Look::Absent => Some(Vec::new()),
            Look::Unknown(why) => {
                self.note(why);
                None
            }
        };
        let default = versions
            .as_ref()
            .and_then(|v| v.iter().find(|v| v.is_default_version()).and_then(|v| v.version_id()).map(str::to_string));
        let is_default = default.as_deref() == Some(version.as_str());
        let exists = versions.as_ref().map(|v| v.iter().any(|v| v.version_id() == Some(version.as_str())));
        let present = if sets_default { versions.as_ref().map(|_| is_default) } else { exists };
        let doc = self.version_doc(&arn, &version).await;
        let admin = doc.as_deref().is_some_and(admin_doc);
        let f = self.finding(
            "policy_version",
            if admin { Severity::Critical } else { Severity::High },
            format!("attacker made version {version} of {arn}{}", if sets_default { " the default" } else { "" }),
            format!("{arn}:{version}"),
            present,
            vec![e.event_id.clone()],
            if sets_default { String::new() } else { "created but not made the default".into() },
        );
        if !(sets_default && is_default) {
            return;
        }
        // AWS keeps no record of the previous default: the newest other version older than the
        // attacker's change is the best guess, and the description says it is one.
        let event_t = parse_time(&e.time);
        let attacker_versions: BTreeSet<String> = self
            .timeline
            .iter()
            .filter(|x| self.by_attacker(x) && req(x, "policyArn") == Some(arn.as_str()))
            .filter_map(|x| resp(x, &["policyVersion", "versionId"]).map(str::to_string))
            .collect();
        let previous = versions.unwrap_or_default().into_iter().filter(|v| {
            let id = v.version_id().unwrap_or_default();
            id != version
                && !attacker_versions.contains(id)
                && match (v.create_date().and_then(|d| SystemTime::try_from(*d).ok()), event_t) {
                    (Some(c), Some(t)) => c <= t,
                    _ => true,
                }
        });
        let previous = previous
            .max_by_key(|v| v.create_date().and_then(|d| SystemTime::try_from(*d).ok()))
            .and_then(|v| v.version_id().map(str::to_string));
        match previous {
            Some(prev) => self.act(
                &f,
                format!("make {prev} the default version of {arn} again (the newest version before the attacker's)"),
                Action::SetDefaultPolicyVersion { policy_arn: arn.clone(), version_id: prev },
                Undo::Action { action: Action::SetDefaultPolicyVersion { policy_arn: arn, version_id: version } },
            ),
            None => self.note(format!("{f}: no earlier version of {arn} to restore as default")),
        }
    }

    async fn version_doc(&mut self, arn: &str, version: &str) -> Option<String> {
        let r = self.iam.get_policy_version().policy_arn(arn).version_id(version).send().await;
        match look(r, &format!("GetPolicyVersion {arn} {version}")) {
            Look::Present(out) => Some(decode_doc(out.policy_version()?.document()?)),
            Look::Absent => None,
            Look::Unknown(why) => {
                self.note(why);
                None
            }
        }
    }

    async fn groups_of(&mut self, user: &str) -> Look<Vec<String>> {
        let r = self.iam.list_groups_for_user().user_name(user).max_items(1000).send().await;
        match look(r, &format!("ListGroupsForUser {user}")) {
            Look::Present(out) => Look::Present(out.groups().iter().map(|g| g.group_name().to_string()).collect()),
            Look::Absent => Look::Absent,
            Look::Unknown(why) => {
                self.note(why.clone());
                Look::Unknown(why)
            }
        }
    }

    fn remove_from_group(&mut self, finding: &str, user: &str, group: &str) {
        self.act(
            finding,
            format!("remove {user} from group {group}"),
            Action::RemoveUserFromGroup { user: user.to_string(), group: group.to_string() },
            Undo::Action { action: Action::AddUserToGroup { user: user.to_string(), group: group.to_string() } },
        );
    }

    async fn group_membership(&mut self, e: &TimelineEvent) {
        let (Some(user), Some(group)) =
            (req(e, "userName").map(str::to_string), req(e, "groupName").map(str::to_string))
        else {
            return;
        };
        let present = match self.groups_of(&user).await {
            Look::Present(g) => Some(g.contains(&group)),
            Look::Absent => Some(false),
            Look::Unknown(_) => None,
        };
        let f = self.finding(
            "group_membership",
            Severity::High,
            format!("attacker added {user} to group {group}"),
            format!("{user}@{group}"),
            present,
            vec![e.event_id.clone()],
            String::new(),
        );
        if present == Some(true) {
            self.remove_from_group(&f, &user, &group);
        }
    }

    async fn identity_provider(&mut self, e: &TimelineEvent) {
        let oidc = e.event_name == "CreateOpenIDConnectProvider";
        let arn = if oidc { resp(e, &["openIDConnectProviderArn"]) } else { resp(e, &["sAMLProviderArn"]) };
        let Some(arn) = arn.map(str::to_string) else { return };
        let r = if oidc {
            look(self.iam.get_open_id_connect_provider().open_id_connect_provider_arn(&arn).send().await, &arn)
                .map(|_| ())
        } else {
            look(self.iam.get_saml_provider().saml_provider_arn(&arn).send().await, &arn).map(|_| ())
        };
        let present = match r {
            Look::Present(()) => Some(true),
            Look::Absent => Some(false),
            Look::Unknown(why) => {
                self.note(why);
                None
            }
        };
        let f = self.finding(
            "identity_provider",
            Severity::High,
            format!("attacker created identity provider {arn}"),
            arn.clone(),
            present,
            vec![e.event_id.clone()],
            "roles trusting it can be assumed by whoever controls the provider".into(),
        );
        if present != Some(true) {
            return;
        }
        let (action, recreate) = if oidc {
            let url = req(e, "url").unwrap_or("?");
            (
                Action::DeleteOpenIdConnectProvider { arn: arn.clone() },
                format!("recreate it with `aws iam create-open-id-connect-provider --url {url}` and its client ids"),
            )
        } else {
            (Action::DeleteSamlProvider { arn: arn.clone() }, "recreate it from the IdP's metadata document".into())
        };
        self.act(&f, format!("delete identity provider {arn}"), action, Undo::None { reason: recreate });
    }

    /// Empties and deletes the users the attacker created.
    async fn sweep_users(&mut self) {
        let users: Vec<(String, Vec<String>)> =
            self.created_users.iter().map(|(u, c)| (u.clone(), c.evidence.clone())).collect();
        for (user, evidence) in users {
            let got = look(self.iam.get_user().user_name(&user).send().await, &format!("GetUser {user}"));
            let info = match got {
                Look::Present(out) => out.user().map(|u| {
                    (
                        u.path().to_string(),
                        u.tags().iter().map(|t| (t.key().to_string(), t.value().to_string())).collect(),
                    )
                }),
                Look::Absent => None,
                Look::Unknown(why) => {
                    self.note(why.clone());
                    self.finding(
                        "backdoor_user",
                        Severity::High,
                        format!("attacker created IAM user {user}"),
                        user.clone(),
                        None,
                        evidence,
                        format!("could not check: {why}"),
                    );
                    continue;
                }
            };
            let Some((path, tags)) = info else {
                self.finding(
                    "backdoor_user",
                    Severity::High,
                    format!("attacker created IAM user {user}"),
                    user.clone(),
                    Some(false),
                    evidence,
                    "the user no longer exists".into(),
                );
                continue;
            };
            let keys = match self.iam.list_access_keys().user_name(&user).send().await {
                Ok(out) => out
                    .access_key_metadata()
                    .iter()
                    .filter_map(|k| Some((k.access_key_id()?.to_string(), k.status().map(|s| s.as_str().to_string()))))
                    .collect(),
                Err(e) => {
                    self.note(format!("ListAccessKeys {user}: {}", DisplayErrorContext(&e)));
                    Vec::new()
                }
            };
            let login = matches!(
                look(self.iam.get_login_profile().user_name(&user).send().await, "GetLoginProfile"),
                Look::Present(_)
            );
            let mfa = match self.mfa_devices(&user).await {
                Look::Present(d) => d,
                _ => Vec::new(),
            };
            let attached = match self.attached_policies("user", &user).await {
                Look::Present(a) => a,
                _ => Vec::new(),
            };
            let inline = match self.iam.list_user_policies().user_name(&user).max_items(1000).send().await {
                Ok(out) => out.policy_names().to_vec(),
                Err(e) => {
                    self.note(format!("ListUserPolicies {user}: {}", DisplayErrorContext(&e)));
                    Vec::new()
                }
            };
            let groups = match self.groups_of(&user).await {
                Look::Present(g) => g,
                _ => Vec::new(),
            };
            let blockers = self.user_blockers(&user).await;
            let mut admin = false;
            for (arn, _) in &attached {
                admin |= self.policy_is_admin(arn).await;
            }
            let mut docs = Vec::new();
            for p in &inline {
                if let Look::Present(d) = self.inline_doc("user", &user, p).await {
                    admin |= admin_doc(&d);
                    docs.push((p.clone(), d));
                }
            }
            let severity = if admin || !keys.is_empty() || login { Severity::Critical } else { Severity::High };
            let mut parts = vec![format!("{} access key(s)", keys.len())];
            if login {
                parts.push("a console password".into());
            }
            parts.push(format!("{} managed and {} inline policies", attached.len(), inline.len()));
            if admin {
                parts.push("full access".into());
            }
            if !groups.is_empty() {
                parts.push(format!("groups {}", groups.join(", ")));
            }
            let mut detail = format!("still exists with {}", parts.join(", "));
            if !blockers.is_empty() {
                detail.push_str(&format!(
                    "; not deleted automatically because of {} (remove them by hand)",
                    blockers.join(", ")
                ));
            }
            let f = self.finding(
                "backdoor_user",
                severity,
                format!("attacker created IAM user {user}"),
                user.clone(),
                Some(true),
                evidence,
                detail,
            );
            for (key, status) in &keys {
                if status.as_deref() != Some("Inactive") {
                    self.deactivate_key(&f, &user, key);
                }
            }
            if login {
                self.delete_login_profile(&f, &user);
            }
            for serial in &mfa {
                self.deactivate_mfa(&f, &user, serial);
            }
            for (arn, _) in &attached {
                self.detach(&f, "user", &user, arn);
            }
            for (p, d) in docs {
                self.delete_inline(&f, "user", &user, &p, d);
            }
            for g in &groups {
                self.remove_from_group(&f, &user, g);
            }
            if blockers.is_empty() {
                let gone_keys = if keys.is_empty() {
                    String::new()
                } else {
                    format!(
                        " and its deactivated access keys {}",
                        keys.iter().map(|k| k.0.as_str()).collect::<Vec<_>>().join(", ")
                    )
                };
                self.act(
                    &f,
                    format!("delete user {user}{gone_keys}"),
                    Action::DeleteUser { user: user.clone() },
                    Undo::RecreateUser { user: user.clone(), path: Some(path), tags },
                );
            }
        }
    }

    /// What stops DeleteUser that the plan has no action for.
    async fn user_blockers(&mut self, user: &str) -> Vec<String> {
        let mut out = Vec::new();
        match self.iam.list_ssh_public_keys().user_name(user).send().await {
            Ok(o) if !o.ssh_public_keys().is_empty() => out.push(format!(
                "SSH public keys {}",
                o.ssh_public_keys().iter().map(|k| k.ssh_public_key_id()).collect::<Vec<_>>().join(", ")
            )),
            Ok(_) => {}
            Err(e) => self.note(format!("ListSSHPublicKeys {user}: {}", DisplayErrorContext(&e))),
        }
        match self.iam.list_signing_certificates().user_name(user).send().await {
            Ok(o) if !o.certificates().is_empty() => out.push(format!(
                "signing certificates {}",
                o.certificates().iter().map(|c| c.certificate_id()).collect::<Vec<_>>().join(", ")
            )),
            Ok(_) => {}
            Err(e) => self.note(format!("ListSigningCertificates {user}: {}", DisplayErrorContext(&e))),
        }
        out
    }

    /// Empties and deletes the roles the attacker created.
    async fn sweep_roles(&mut self) {
        let roles: Vec<(String, Vec<String>, Option<String>)> =
            self.created_roles.iter().map(|(r, c)| (r.clone(), c.evidence.clone(), c.description.clone())).collect();
        for (role, evidence, created_description) in roles {
            let (trust, path, description) = match self.role_trust(&role).await {
                Look::Present(t) => t,
                Look::Absent => {
                    self.finding(
                        "role",
                        Severity::High,
                        format!("attacker created role {role}"),
                        role.clone(),
                        Some(false),
                        evidence,
                        "the role no longer exists".into(),
                    );
                    continue;
                }
                Look::Unknown(why) => {
                    self.finding(
                        "role",
                        Severity::High,
                        format!("attacker created role {role}"),
                        role.clone(),
                        None,
                        evidence,
                        format!("could not check: {why}"),
                    );
                    continue;
                }
            };
            let attached = match self.attached_policies("role", &role).await {
                Look::Present(a) => a,
                _ => Vec::new(),
            };
            let inline = match self.iam.list_role_policies().role_name(&role).max_items(1000).send().await {
                Ok(out) => out.policy_names().to_vec(),
                Err(e) => {
                    self.note(format!("ListRolePolicies {role}: {}", DisplayErrorContext(&e)));
                    Vec::new()
                }
            };
            let profiles = match self.iam.list_instance_profiles_for_role().role_name(&role).send().await {
                Ok(out) => out.instance_profiles().iter().map(|p| p.instance_profile_name().to_string()).collect(),
                Err(e) => {
                    self.note(format!("ListInstanceProfilesForRole {role}: {}", DisplayErrorContext(&e)));
                    Vec::<String>::new()
                }
            };
            let mut admin = false;
            for (arn, _) in &attached {
                admin |= self.policy_is_admin(arn).await;
            }
            let mut docs = Vec::new();
            for p in &inline {
                if let Look::Present(d) = self.inline_doc("role", &role, p).await {
                    admin |= admin_doc(&d);
                    docs.push((p.clone(), d));
                }
            }
            let trusted = principals(&trust);
            let foreign: Vec<&String> = trusted.iter().filter(|p| self.is_foreign(p)).collect();
            let severity = if admin || !foreign.is_empty() { Severity::Critical } else { Severity::High };
            let mut detail = format!(
                "trusts {}; {} managed and {} inline policies{}",
                join(&trusted),
                attached.len(),
                inline.len(),
                if admin { ", full access" } else { "" }
            );
            if !foreign.is_empty() {
                detail.push_str(&format!(
                    "; assumable from outside the account: {}",
                    foreign.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                ));
            }
            if !profiles.is_empty() {
                detail.push_str(&format!(
                    "; not deleted automatically: in instance profiles {} (remove it by hand)",
                    profiles.join(", ")
                ));
            }
            let f = self.finding(
                "role",
                severity,
                format!("attacker created role {role}"),
                role.clone(),
                Some(true),
                evidence,
                detail,
            );
            for (arn, _) in &attached {
                self.detach(&f, "role", &role, arn);
            }
            for (p, d) in docs {
                self.delete_inline(&f, "role", &role, &p, d);
            }
            if profiles.is_empty() {
                self.act(
                    &f,
                    format!("delete role {role}"),
                    Action::DeleteRole { role: role.clone() },
                    Undo::RecreateRole {
                        role: role.clone(),
                        path: Some(path.unwrap_or_else(|| "/".into())),
                        assume_role_policy_document: trust,
                        description: description.or(created_description),
                    },
                );
            }
        }
    }

    async fn contacts(&mut self, account: &aws_sdk_account::Client) {
        for kind in CONTACT_TYPES {
            let events: Vec<&TimelineEvent> = self
                .timeline
                .iter()
                .filter(|e| !e.failed && e.error_code.is_none())
                .filter(|e| matches!(e.event_name.as_str(), "PutAlternateContact" | "DeleteAlternateContact"))
                .filter(|e| req(e, "alternateContactType").is_some_and(|t| t.eq_ignore_ascii_case(kind)))
                .collect();
            let (during, before): (Vec<&TimelineEvent>, Vec<&TimelineEvent>) =
                events.into_iter().partition(|e| self.in_window(&e.time));
            let before = before
                .into_iter()
                .filter(|e| parse_time(&e.time).is_some_and(|t| t < self.window.0))
                .max_by_key(|e| parse_time(&e.time));
            let old: Option<Option<Contact>> = before.map(|e| contact_of(e, kind));
            let attacker: Option<Option<Contact>> =
                during.iter().max_by_key(|e| parse_time(&e.time)).map(|e| contact_of(e, kind));
            if attacker.is_none() && old.is_none() {
                continue;
            }
            let r =
                account.get_alternate_contact().alternate_contact_type(AlternateContactType::from(kind)).send().await;
            let current: Option<Contact> = match r {
                Ok(out) => out.alternate_contact().map(|c| Contact {
                    kind: kind.to_string(),
                    name: c.name().unwrap_or_default().to_string(),
                    title: c.title().unwrap_or_default().to_string(),
                    email: c.email_address().unwrap_or_default().to_string(),
                    phone: c.phone_number().unwrap_or_default().to_string(),
                }),
                Err(e)
                    if aws_sdk_account::error::ProvideErrorMetadata::code(&e) == Some("ResourceNotFoundException") =>
                {
                    None
                }
                Err(e) => {
                    self.note(format!(
                        "GetAlternateContact {kind}: {}; the {kind} contact was not checked",
                        aws_sdk_account::error::DisplayErrorContext(&e)
                    ));
                    continue;
                }
            };
            let mut evidence: Vec<String> = during.iter().map(|e| e.event_id.clone()).collect();
            let Some(attacker) = attacker else {
                // No change seen in the window, yet it differs from the recorded value: a change the
                // timeline does not hold, which a person must judge.
                let old = old.flatten();
                if !same_contact(old.as_ref(), current.as_ref()) {
                    evidence.extend(before.map(|e| e.event_id.clone()));
                    self.finding(
                        "alternate_contact",
                        Severity::Medium,
                        format!("{kind} alternate contact differs from the value recorded before the window"),
                        kind.to_string(),
                        Some(true),
                        evidence,
                        format!(
                            "was {}, is {}; no change to it is in the timeline",
                            show(old.as_ref()),
                            show(current.as_ref())
                        ),
                    );
                }
                continue;
            };
            let present = same_contact(attacker.as_ref(), current.as_ref());
            let old_known = old.is_some();
            let old = old.flatten();
            let detail = format!(
                "attacker set it to {}; before the window: {}; now: {}",
                show(attacker.as_ref()),
                if old_known { show(old.as_ref()) } else { "not in the timeline".into() },
                show(current.as_ref())
            );
            let f = self.finding(
                "alternate_contact",
                Severity::High,
                format!("attacker changed the {kind} alternate contact"),
                kind.to_string(),
                Some(present),
                evidence,
                detail,
            );
            if !present || !old_known {
                if present {
                    self.note(format!("{f}: the {kind} contact before the window is unknown: set it back by hand"));
                }
                continue;
            }
            let undo = match attacker {
                Some(a) => Undo::Action { action: a.put() },
                None => Undo::Action { action: Action::DeleteAlternateContact { contact_type: kind.to_string() } },
            };
            match old {
                Some(o) => self.act(&f, format!("set the {kind} alternate contact back to {}", o.email), o.put(), undo),
                None => self.act(
                    &f,
                    format!("remove the {kind} alternate contact the attacker set (it was not set before)"),
                    Action::DeleteAlternateContact { contact_type: kind.to_string() },
                    undo,
                ),
            }
        }
    }

    /// Users, roles, keys and customer-managed policies created inside the window by anyone.
    async fn created_in_window(&mut self) {
        match self.iam.list_users().into_paginator().items().send().collect::<Result<Vec<_>, _>>().await {
            Ok(users) => {
                for u in &users {
                    let name = u.user_name().to_string();
                    if self.created_in(Some(u.create_date())) && !self.created_users.contains_key(&name) {
                        self.finding(
                            "created_in_window",
                            Severity::Medium,
                            format!("IAM user {name} was created during the window"),
                            u.arn().to_string(),
                            Some(true),
                            Vec::new(),
                            "no event in the timeline ties it to the attacker: check who created it".into(),
                        );
                    }
                }
                for u in &users {
                    self.keys_in_window(u.user_name()).await;
                }
            }
            Err(e) => self.note(format!("ListUsers: {}; new users and keys not listed", DisplayErrorContext(&e))),
        }
        match self.iam.list_roles().into_paginator().items().send().collect::<Result<Vec<_>, _>>().await {
            Ok(roles) => {
                for r in roles {
                    let name = r.role_name().to_string();
                    if self.created_in(Some(r.create_date())) && !self.created_roles.contains_key(&name) {
                        self.finding(
                            "created_in_window",
                            Severity::Medium,
                            format!("role {name} was created during the window"),
                            r.arn().to_string(),
                            Some(true),
                            Vec::new(),
                            "no event in the timeline ties it to the attacker: check who created it".into(),
                        );
                    }
                }
            }
            Err(e) => self.note(format!("ListRoles: {}; new roles not listed", DisplayErrorContext(&e))),
        }
        let policies = self
            .iam
            .list_policies()
            .scope(aws_sdk_iam::types::PolicyScopeType::Local)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await;
        match policies {
            Ok(policies) => {
                for p in policies {
                    let arn = p.arn().unwrap_or_default().to_string();
                    if self.created_in(p.create_date()) && !self.attacker_policies.contains(&arn) {
                        self.finding(
                            "created_in_window",
                            Severity::Medium,
                            format!("managed policy {} was created during the window", p.policy_name().unwrap_or(&arn)),
                            arn,
                            Some(true),
                            Vec::new(),
                            "no event in the timeline ties it to the attacker: check who created it".into(),
                        );
                    }
                }
            }
            Err(e) => self.note(format!("ListPolicies: {}; new policies not listed", DisplayErrorContext(&e))),
        }
    }

    async fn keys_in_window(&mut self, user: &str) {
        let keys = match self.iam.list_access_keys().user_name(user).send().await {
            Ok(out) => out.access_key_metadata().to_vec(),
            Err(e) => {
                self.note(format!("ListAccessKeys {user}: {}", DisplayErrorContext(&e)));
                return;
            }
        };
        for k in keys {
            let Some(id) = k.access_key_id() else { continue };
            if !self.created_in(k.create_date()) || self.attacker_keys.contains(id) {
                continue;
            }
            // A backdoor user's keys are already in its finding.
            if self.created_users.contains_key(user) {
                continue;
            }
            let on_compromised = Some(user) == self.compromised.as_deref();
            self.finding(
                "created_in_window",
                if on_compromised { Severity::Low } else { Severity::Medium },
                format!("access key {id} of {user} was created during the window"),
                id.to_string(),
                Some(true),
                Vec::new(),
                if on_compromised {
                    "on the compromised user: most likely the rotation's new key".into()
                } else {
                    "no event in the timeline ties it to the attacker: check who created it".into()
                },
            );
        }
    }

    /// Instances the attacker launched or reached into that still exist: a finding each, and a
    /// forensic snapshot of every EBS volume attached to them.
    async fn instances(&mut self, events: &[&TimelineEvent]) {
        // (region, instance) → what the attacker did to it.
        let mut seen: BTreeMap<(Option<String>, String), SeenInstance> = BTreeMap::new();
        for e in events {
            let Some((launched, ids)) = instances_of(e) else { continue };
            for id in ids {
                let s = seen.entry((e.region.clone(), id)).or_default();
                s.launched |= launched;
                if !s.evidence.contains(&e.event_id) {
                    s.evidence.push(e.event_id.clone());
                }
                if !launched {
                    s.calls.insert(e.event_name.clone());
                }
            }
        }
        let mut regions: BTreeMap<Option<String>, Vec<String>> = BTreeMap::new();
        for (region, id) in seen.keys() {
            regions.entry(region.clone()).or_default().push(id.clone());
        }
        for (region, ids) in regions {
            let live = self.describe_instances(region.as_deref(), &ids).await;
            for id in ids {
                let s = seen.remove(&(region.clone(), id.clone())).unwrap_or_default();
                self.instance(region.as_deref(), &id, s, &live);
            }
        }
    }

    /// `Some(map)`: the instances that exist (terminated ones excluded) with their volumes; `None`:
    /// the check could not run (a note says why).
    async fn describe_instances(
        &mut self,
        region: Option<&str>,
        ids: &[String],
    ) -> Option<BTreeMap<String, (String, Vec<String>)>> {
        let ec2 = ec2_in(self.ec2, region);
        let mut out = BTreeMap::new();
        // A filter, not InstanceIds: one unknown id would fail the whole call.
        for chunk in ids.chunks(100) {
            let filter = aws_sdk_ec2::types::Filter::builder().name("instance-id").set_values(Some(chunk.to_vec()));
            let pages = ec2
                .describe_instances()
                .filters(filter.build())
                .into_paginator()
                .send()
                .collect::<Result<Vec<_>, _>>()
                .await;
            let pages = match pages {
                Ok(p) => p,
                Err(e) => {
                    let r = region.unwrap_or("the default region");
                    self.note(format!(
                        "DescribeInstances in {r}: {}; the attacker's instances {} are not checked and no forensic \
                         snapshot is planned: snapshot their volumes by hand",
                        aws_sdk_ec2::error::DisplayErrorContext(&e),
                        chunk.join(", ")
                    ));
                    return None;
                }
            };
            for i in pages.iter().flat_map(|p| p.reservations()).flat_map(|r| r.instances()) {
                let Some(id) = i.instance_id() else { continue };
                let state = i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_default();
                if matches!(state.as_str(), "terminated" | "shutting-down") {
                    continue;
                }
                let volumes = i
                    .block_device_mappings()
                    .iter()
                    .filter_map(|m| m.ebs().and_then(|e| e.volume_id()))
                    .map(str::to_string)
                    .collect();
                out.insert(id.to_string(), (state, volumes));
            }
        }
        Some(out)
    }

    fn instance(
        &mut self,
        region: Option<&str>,
        id: &str,
        seen: SeenInstance,
        live: &Option<BTreeMap<String, (String, Vec<String>)>>,
    ) {
        let calls = seen.calls.iter().cloned().collect::<Vec<_>>().join(", ");
        let title = match (seen.launched, calls.is_empty()) {
            (true, true) => format!("attacker launched instance {id}"),
            (true, false) => format!("attacker launched instance {id} and used it ({calls})"),
            (false, _) => format!("attacker used instance {id} ({calls})"),
        };
        let title = match region {
            Some(r) => format!("{title} in {r}"),
            None => title,
        };
        // Stopping or starting alone is disruption; the rest is a foothold or code execution.
        let severity =
            if seen.launched || seen.calls.iter().any(|c| !matches!(c.as_str(), "StopInstances" | "StartInstances")) {
                Severity::High
            } else {
                Severity::Medium
            };
        let (present, detail, volumes) = match live {
            None => (None, "could not check whether it still exists".to_string(), Vec::new()),
            Some(m) => match m.get(id) {
                None => (Some(false), "it no longer exists (or is terminated)".to_string(), Vec::new()),
                Some((state, volumes)) if volumes.is_empty() => (
                    Some(true),
                    format!("{state}; no EBS volume to snapshot (instance store is lost when it stops)"),
                    Vec::new(),
                ),
                Some((state, volumes)) => (
                    Some(true),
                    format!(
                        "{state}; the plan snapshots its volumes {} first, as evidence; rekey does not stop or \
                         terminate instances: do it once the snapshots are taken",
                        volumes.join(", ")
                    ),
                    volumes.clone(),
                ),
            },
        };
        let f = self.finding("instance", severity, title, id.to_string(), present, seen.evidence, detail);
        for v in volumes {
            self.act(
                &f,
                format!("snapshot volume {v} of instance {id} as evidence"),
                Action::SnapshotVolume {
                    volume_id: v,
                    instance_id: id.to_string(),
                    region: region.map(str::to_string),
                },
                Undo::None { reason: "a forensic snapshot is evidence and is kept".into() },
            );
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

/// What the attacker did to one instance.
#[derive(Debug, Default)]
struct SeenInstance {
    launched: bool,
    /// The calls that reached into it (`SendCommand`, …), launch aside.
    calls: BTreeSet<String>,
    evidence: Vec<String>,
}

/// The instances an event launched (`true`) or reached into (`false`), by id.
fn instances_of(e: &TimelineEvent) -> Option<(bool, Vec<String>)> {
    let service = e.event_source.split('.').next().unwrap_or_default();
    match (service, e.event_name.as_str()) {
        ("ec2", "RunInstances") => {
            let items = e
                .response_elements
                .as_ref()
                .and_then(|v| v.pointer("/instancesSet/items"))
                .and_then(Value::as_array)?;
            let ids: Vec<String> = items
                .iter()
                .filter_map(|i| i.get("instanceId").and_then(Value::as_str))
                .filter(|id| is_instance_id(id))
                .map(str::to_string)
                .collect();
            Some((true, ids))
        }
        (
            "ec2",
            "ModifyInstanceAttribute"
            | "StopInstances"
            | "StartInstances"
            | "AssociateIamInstanceProfile"
            | "GetPasswordData",
        )
        | ("ssm", "SendCommand")
        | ("ec2-instance-connect", "SendSSHPublicKey") => {
            // The ids sit in different places per call (`instanceId`, `instancesSet.items[]`,
            // `AssociateIamInstanceProfileRequest.InstanceId`, `instanceIds`, `targets[].values`):
            // every string of the parameters that is an instance id.
            let mut ids = Vec::new();
            if let Some(v) = &e.request_parameters {
                collect_instance_ids(v, &mut ids);
            }
            Some((false, ids))
        }
        _ => None,
    }
}

fn collect_instance_ids(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) if is_instance_id(s) && !out.contains(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|v| collect_instance_ids(v, out)),
        Value::Object(m) => m.values().for_each(|v| collect_instance_ids(v, out)),
        _ => {}
    }
}

/// `i-` and 8 or 17 hex digits.
fn is_instance_id(s: &str) -> bool {
    s.strip_prefix("i-").is_some_and(|h| matches!(h.len(), 8 | 17) && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The EC2 client for a region: the given one, or a copy pointed at `region` (same credentials and
/// endpoint settings).
pub fn ec2_in(ec2: &aws_sdk_ec2::Client, region: Option<&str>) -> aws_sdk_ec2::Client {
    match region {
        Some(r) if ec2.config().region().map(|c| c.as_ref()) != Some(r) => aws_sdk_ec2::Client::from_conf(
            ec2.config().to_builder().region(aws_sdk_ec2::config::Region::new(r.to_string())).build(),
        ),
        _ => ec2.clone(),
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Contact {
    kind: String,
    name: String,
    title: String,
    email: String,
    phone: String,
}

impl Contact {
    fn put(&self) -> Action {
        Action::PutAlternateContact {
            contact_type: self.kind.clone(),
            name: self.name.clone(),
            title: self.title.clone(),
            email: self.email.clone(),
            phone: self.phone.clone(),
        }
    }
}

/// The contact an event left: `None` for a delete, or for values CloudTrail hid.
fn contact_of(e: &TimelineEvent, kind: &str) -> Option<Contact> {
    if e.event_name == "DeleteAlternateContact" {
        return None;
    }
    let c = Contact {
        kind: kind.to_string(),
        name: req(e, "name").unwrap_or_default().to_string(),
        title: req(e, "title").unwrap_or_default().to_string(),
        email: req(e, "emailAddress").unwrap_or_default().to_string(),
        phone: req(e, "phoneNumber").unwrap_or_default().to_string(),
    };
    let hidden = [&c.name, &c.email, &c.phone].iter().any(|v| v.starts_with("HIDDEN") || v.is_empty());
    (!hidden).then_some(c)
}

fn same_contact(a: Option<&Contact>, b: Option<&Contact>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.email.eq_ignore_ascii_case(&b.email) && a.name == b.name && a.phone == b.phone,
        _ => false,
    }
}

fn show(c: Option<&Contact>) -> String {
    match c {
        Some(c) => format!("{} <{}> {}", c.name, c.email, c.phone),
        None => "not set".into(),
    }
}

fn req<'e>(e: &'e TimelineEvent, key: &str) -> Option<&'e str> {
    e.request_parameters.as_ref()?.get(key)?.as_str()
}

fn req_bool(e: &TimelineEvent, key: &str) -> bool {
    e.request_parameters.as_ref().and_then(|v| v.get(key)).and_then(Value::as_bool).unwrap_or(false)
}

fn resp<'e>(e: &'e TimelineEvent, path: &[&str]) -> Option<&'e str> {
    path.iter().try_fold(e.response_elements.as_ref()?, |v, k| v.get(k))?.as_str()
}

fn resp_bool(e: &TimelineEvent, path: &[&str]) -> bool {
    e.response_elements
        .as_ref()
        .and_then(|v| path.iter().try_fold(v, |v, k| v.get(k)))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// A policy document parameter: CloudTrail records it as a JSON string, sometimes as an object.
fn doc_param(e: &TimelineEvent, key: &str) -> Option<String> {
    match e.request_parameters.as_ref()?.get(key)? {
        Value::String(s) => Some(decode_doc(s)),
        v @ Value::Object(_) => Some(v.to_string()),
        _ => None,
    }
}

fn user_from_arn(arn: &str) -> Option<&str> {
    let resource = arn.split(':').nth(5)?;
    resource.strip_prefix("user/").map(|p| p.rsplit('/').next().unwrap_or(p))
}

/// IAM returns policy documents URL-encoded; moto and CloudTrail give them as plain JSON.
pub fn decode_doc(s: &str) -> String {
    if s.trim_start().starts_with('{') {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

fn statements(doc: &Value) -> Vec<&Value> {
    match doc.get("Statement") {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(v @ Value::Object(_)) => vec![v],
        _ => Vec::new(),
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

/// `AWS:arn`, `Service:…`, `Federated:…` for every principal an Allow statement trusts; a bare
/// account id is the same principal as its `:root` ARN.
fn principals(doc: &str) -> BTreeSet<String> {
    let Ok(v) = serde_json::from_str::<Value>(doc) else { return BTreeSet::new() };
    let mut out = BTreeSet::new();
    for s in statements(&v) {
        if s.get("Effect").and_then(Value::as_str) != Some("Allow") {
            continue;
        }
        match s.get("Principal") {
            Some(Value::String(p)) => {
                out.insert(format!("AWS:{p}"));
            }
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    for p in strings(Some(v)) {
                        out.insert(format!("{k}:{}", normal_principal(&p)));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn normal_principal(p: &str) -> String {
    if p.len() == 12 && p.bytes().all(|b| b.is_ascii_digit()) {
        format!("arn:aws:iam::{p}:root")
    } else {
        p.to_string()
    }
}

/// The document without the given principals; `None` if no statement would be left.
fn strip_principals(doc: &str, remove: &BTreeSet<String>) -> Option<String> {
    let mut v: Value = serde_json::from_str(doc).ok()?;
    let list = match v.get_mut("Statement")? {
        Value::Array(a) => std::mem::take(a),
        other => vec![other.take()],
    };
    let mut kept = Vec::new();
    for mut s in list {
        let Some(Value::Object(m)) = s.get_mut("Principal") else {
            kept.push(s);
            continue;
        };
        for (k, val) in m.iter_mut() {
            let left: Vec<Value> = strings(Some(val))
                .into_iter()
                .filter(|p| !remove.contains(&format!("{k}:{}", normal_principal(p))))
                .map(Value::String)
                .collect();
            *val = Value::Array(left);
        }
        m.retain(|_, val| val.as_array().is_some_and(|a| !a.is_empty()));
        if !m.is_empty() {
            kept.push(s);
        }
    }
    if kept.is_empty() {
        return None;
    }
    v["Statement"] = Value::Array(kept);
    Some(v.to_string())
}

fn admin_name(name: &str) -> bool {
    matches!(name, "AdministratorAccess" | "IAMFullAccess" | "PowerUserAccess")
}

/// Allows `*` or `iam:*` on `*`.
fn admin_doc(doc: &str) -> bool {
    let Ok(v) = serde_json::from_str::<Value>(doc) else { return false };
    statements(&v).iter().any(|s| {
        s.get("Effect").and_then(Value::as_str) == Some("Allow")
            && strings(s.get("Action")).iter().any(|a| a == "*" || a.eq_ignore_ascii_case("iam:*"))
            && strings(s.get("Resource")).iter().any(|r| r == "*")
    })
}

fn same_doc(a: &str, b: &str) -> bool {
    match (serde_json::from_str::<Value>(a), serde_json::from_str::<Value>(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

fn join(set: &BTreeSet<String>) -> String {
    if set.is_empty() { "none".into() } else { set.iter().cloned().collect::<Vec<_>>().join(", ") }
}

fn join_detail(a: &str, b: &str) -> String {
    if b.is_empty() { a.to_string() } else { format!("{a}; {b}") }
}

fn capitalised(kind: &str) -> String {
    let mut c = kind.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
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
    fn principals_normalise_account_ids_and_strip_leaves_the_rest() {
        let doc = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":["999999999999","arn:aws:iam::123456789012:root"]},"Action":"sts:AssumeRole"}]}"#;
        let p = principals(doc);
        assert!(p.contains("AWS:arn:aws:iam::999999999999:root"), "{p:?}");
        let remove: BTreeSet<String> = ["AWS:arn:aws:iam::999999999999:root".to_string()].into();
        let stripped = strip_principals(doc, &remove).unwrap();
        assert_eq!(principals(&stripped), ["AWS:arn:aws:iam::123456789012:root".to_string()].into());
        let all: BTreeSet<String> = p.clone();
        assert!(strip_principals(doc, &all).is_none());
    }

    #[test]
    fn decodes_url_encoded_documents() {
        assert_eq!(decode_doc("%7B%22a%22%3A1%7D"), r#"{"a":1}"#);
        assert_eq!(decode_doc(r#"{"a":"%41"}"#), r#"{"a":"%41"}"#);
        assert_eq!(decode_doc("%4"), "%4");
    }

    fn instance_event(name: &str, source: &str, req: Value, resp: Value) -> TimelineEvent {
        TimelineEvent {
            event_id: name.into(),
            event_name: name.into(),
            event_source: format!("{source}.amazonaws.com"),
            request_parameters: Some(req),
            response_elements: Some(resp),
            ..Default::default()
        }
    }

    #[test]
    fn instance_ids_from_launch_and_touch_events() {
        let run = instance_event(
            "RunInstances",
            "ec2",
            serde_json::json!({"instancesSet": {"items": [{"imageId": "ami-1"}]}}),
            serde_json::json!({"instancesSet": {"items": [{"instanceId": "i-0123456789abcdef0"}, {"instanceId": "i-1234abcd"}]}}),
        );
        assert_eq!(instances_of(&run), Some((true, vec!["i-0123456789abcdef0".into(), "i-1234abcd".into()])));
        let ssm = instance_event(
            "SendCommand",
            "ssm",
            serde_json::json!({"documentName": "AWS-RunShellScript",
                "targets": [{"key": "InstanceIds", "values": ["i-0123456789abcdef0"]}], "instanceIds": ["i-1234abcd"]}),
            Value::Null,
        );
        assert_eq!(instances_of(&ssm), Some((false, vec!["i-0123456789abcdef0".into(), "i-1234abcd".into()])));
        let profile = instance_event(
            "AssociateIamInstanceProfile",
            "ec2",
            serde_json::json!({"AssociateIamInstanceProfileRequest": {"InstanceId": "i-1234abcd",
                "IamInstanceProfile": {"Name": "admin"}}}),
            Value::Null,
        );
        assert_eq!(instances_of(&profile), Some((false, vec!["i-1234abcd".into()])));
        let stop = instance_event(
            "StopInstances",
            "ec2",
            serde_json::json!({"instancesSet": {"items": [{"instanceId": "i-1234abcd"}]}, "force": false}),
            Value::Null,
        );
        assert_eq!(instances_of(&stop), Some((false, vec!["i-1234abcd".into()])));
        let ssh = instance_event(
            "SendSSHPublicKey",
            "ec2-instance-connect",
            serde_json::json!({"instanceId": "i-1234abcd", "instanceOSUser": "ec2-user", "sSHPublicKey": "ssh-ed25519 x"}),
            Value::Null,
        );
        assert_eq!(instances_of(&ssh), Some((false, vec!["i-1234abcd".into()])));
        assert!(instances_of(&instance_event("DescribeInstances", "ec2", Value::Null, Value::Null)).is_none());
        assert!(!is_instance_id("i-xyz") && !is_instance_id("ami-12345678"));
    }

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

    #[test]
    fn admin_documents() {
        assert!(admin_doc(r#"{"Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#));
        assert!(!admin_doc(r#"{"Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}"#));
        assert_eq!(user_from_arn("arn:aws:iam::123456789012:user/ops/bob"), Some("bob"));
    }
}
