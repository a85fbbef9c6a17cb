//! Roles: trust policies the attacker widened (put back as they were, or without the attacker's
//! principals), and roles the attacker created (emptied and deleted).

use rekey_trail::time::parse as parse_time;
use std::collections::BTreeSet;

use aws_sdk_iam::error::DisplayErrorContext;

use super::event::{doc_param, join, req};
use super::policy_json::{admin_doc, decode_doc, principals, strip_principals};
use super::{Hunter, Look, Origin, look};
use crate::incident::model::{Action, Severity, TimelineEvent, Undo};

impl Hunter<'_> {
    pub(super) async fn role_trust(&mut self, role: &str) -> Look<(String, Option<String>, Option<String>)> {
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
    pub(super) fn trust_before(&self, role: &str, before: &str) -> Option<String> {
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

    pub(super) async fn trust_policy(&mut self, e: &TimelineEvent) {
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

    pub(super) fn is_foreign(&self, principal: &str) -> bool {
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

    /// Empties and deletes the roles the attacker created.
    pub(super) async fn sweep_roles(&mut self) {
        let roles: Vec<(String, Vec<String>, Option<String>)> =
            self.created_roles.iter().map(|(r, c)| (r.clone(), c.evidence.clone(), c.description.clone())).collect();
        for (role, evidence, created_description) in roles {
            self.sweep_role(&role, evidence, created_description, Origin::Event).await;
        }
    }

    /// Empties and deletes one role held to be the attacker's.
    pub(super) async fn sweep_role(
        &mut self,
        role: &str,
        evidence: Vec<String>,
        created_description: Option<String>,
        origin: Origin,
    ) {
        let role = role.to_string();
        let (kind, title) = origin.kind_and_title("role", "role", &role);
        {
            let (trust, path, description) = match self.role_trust(&role).await {
                Look::Present(t) => t,
                Look::Absent => {
                    self.finding(
                        &kind,
                        Severity::High,
                        title.clone(),
                        role.clone(),
                        Some(false),
                        evidence,
                        "the role no longer exists".into(),
                    );
                    return;
                }
                Look::Unknown(why) => {
                    self.finding(
                        &kind,
                        Severity::High,
                        title.clone(),
                        role.clone(),
                        None,
                        evidence,
                        format!("could not check: {why}"),
                    );
                    return;
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
            let f = self.finding(&kind, severity, title, role.clone(), Some(true), evidence, origin.detail(detail));
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
}
