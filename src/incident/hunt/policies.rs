//! Policies: managed ones attached, inline ones put, managed policies and versions created. What
//! is still there is detached or deleted with the document kept for undo; an attacker's default
//! version is replaced by the newest one before it.

use rekey_trail::time::parse as parse_time;
use std::collections::BTreeSet;
use std::time::SystemTime;

use super::event::{capitalised, doc_param, join_detail, req, req_bool, resp, resp_bool};
use super::policy_json::{admin_doc, admin_name, decode_doc, same_doc};
use super::{Hunter, Look, look};
use crate::incident::model::{Action, Severity, TimelineEvent, Undo};

impl Hunter<'_> {
    /// Managed-policy name and whether it grants everything.
    pub(super) async fn policy_is_admin(&mut self, arn: &str) -> bool {
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

    pub(super) async fn default_version_doc(&mut self, arn: &str) -> Option<(String, String)> {
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

    pub(super) async fn attached(&mut self, e: &TimelineEvent) {
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
    pub(super) async fn attached_policies(&mut self, kind: &str, name: &str) -> Look<Vec<(String, String)>> {
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

    pub(super) fn detach(&mut self, finding: &str, kind: &str, name: &str, arn: &str) {
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

    pub(super) async fn inline_doc(&mut self, kind: &str, name: &str, policy: &str) -> Look<String> {
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

    pub(super) fn delete_inline(&mut self, finding: &str, kind: &str, name: &str, policy: &str, doc: String) {
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

    pub(super) async fn inline(&mut self, e: &TimelineEvent) {
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

    pub(super) async fn managed_policy(&mut self, e: &TimelineEvent) {
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

    pub(super) async fn policy_version(&mut self, e: &TimelineEvent) {
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

    pub(super) async fn version_doc(&mut self, arn: &str, version: &str) -> Option<String> {
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
}
