//! Users the attacker created (by an event of the key's, or during the response with no event yet):
//! everything that keeps them usable is taken away (keys, password, MFA, policies, groups), then the
//! user is deleted, unless something the plan cannot remove holds it.

use aws_sdk_iam::error::DisplayErrorContext;

use super::policy_json::admin_doc;
use super::{Hunter, Look, Origin, look};
use crate::incident::model::{Action, Severity, Undo};

impl Hunter<'_> {
    /// Empties and deletes the users the attacker created.
    pub(super) async fn sweep_users(&mut self) {
        let users: Vec<(String, Vec<String>)> =
            self.created_users.iter().map(|(u, c)| (u.clone(), c.evidence.clone())).collect();
        for (user, evidence) in users {
            self.sweep_user(&user, evidence, Origin::Event).await;
        }
    }

    /// Empties and deletes one user held to be the attacker's.
    pub(super) async fn sweep_user(&mut self, user: &str, evidence: Vec<String>, origin: Origin) {
        let user = user.to_string();
        let (kind, title) = origin.kind_and_title("backdoor_user", "IAM user", &user);
        {
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
                        &kind,
                        Severity::High,
                        title.clone(),
                        user.clone(),
                        None,
                        evidence,
                        format!("could not check: {why}"),
                    );
                    return;
                }
            };
            let Some((path, tags)) = info else {
                self.finding(
                    &kind,
                    Severity::High,
                    title.clone(),
                    user.clone(),
                    Some(false),
                    evidence,
                    "the user no longer exists".into(),
                );
                return;
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
            let f = self.finding(&kind, severity, title, user.clone(), Some(true), evidence, origin.detail(detail));
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
    pub(super) async fn user_blockers(&mut self, user: &str) -> Vec<String> {
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
}
