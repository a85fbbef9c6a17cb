//! What IAM holds that no event of the timeline explains, read live up to the moment the hunt runs:
//!
//! - created inside the investigated window: listed for a person to check (the trail may not hold
//!   every event);
//! - created after the response began: the attacker keeps acting while rekey runs, and CloudTrail
//!   delivers events minutes late, so nothing ties these to the key yet. Users, roles, access keys,
//!   console passwords and managed policies made then are the attacker's until shown otherwise:
//!   flagged high and planned like any backdoor, with every step reversible (`rekey contain --undo`).
//!   rekey's own doings (the cutover's new key) are left out. IAM keeps no date for a changed trust
//!   or inline policy or an attachment: those show only once CloudTrail has their events.

use aws_sdk_iam::error::DisplayErrorContext;
use aws_sdk_iam::primitives::DateTime;
use std::time::SystemTime;

use super::{Hunter, Look, Origin, look};
use crate::incident::model::Severity;

/// Why a finding made during the response stands without an event.
pub(super) const RESPONSE_DETAIL: &str = "created after the response began, and no event of the timeline \
    explains it yet (CloudTrail delivers events minutes late): held to be the attacker's. Check its creator in \
    CloudTrail before applying the plan; `rekey contain --undo` reverses every step";

const WINDOW_DETAIL: &str = "no event in the timeline ties it to the attacker: check who created it";

/// When IAM says a thing was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum When {
    /// Before the window, or no date.
    Before,
    InWindow,
    /// After the response began.
    DuringResponse,
}

impl Hunter<'_> {
    pub(super) fn created(&self, date: Option<&DateTime>) -> When {
        let Some(t) = date.and_then(|d| SystemTime::try_from(*d).ok()) else { return When::Before };
        if self.response_started.is_some_and(|r| t >= r) {
            When::DuringResponse
        } else if t >= self.window.0 && t <= self.window.1 {
            When::InWindow
        } else {
            When::Before
        }
    }

    /// Users, roles, keys, console passwords and customer-managed policies that IAM created in the
    /// window or during the response and no event explains.
    pub(super) async fn created_unexplained(&mut self) {
        self.users_created().await;
        self.roles_created().await;
        self.policies_created().await;
    }

    async fn users_created(&mut self) {
        let users = match self.iam.list_users().into_paginator().items().send().collect::<Result<Vec<_>, _>>().await {
            Ok(users) => users,
            Err(e) => {
                self.note(format!("ListUsers: {}; new users, keys and passwords not listed", DisplayErrorContext(&e)));
                return;
            }
        };
        let mut during = Vec::new();
        for u in &users {
            let name = u.user_name().to_string();
            if self.created_users.contains_key(&name) || self.reviewed.contains(&name) {
                continue;
            }
            match self.created(Some(u.create_date())) {
                When::DuringResponse => during.push(name),
                When::InWindow => {
                    self.finding(
                        "created_in_window",
                        Severity::Medium,
                        format!("IAM user {name} was created during the window"),
                        u.arn().to_string(),
                        Some(true),
                        Vec::new(),
                        WINDOW_DETAIL.into(),
                    );
                }
                When::Before => {}
            }
        }
        let mut passwords_checked = self.response_started.is_some();
        for u in &users {
            let name = u.user_name();
            // A backdoor user's keys and password are in its own finding.
            if self.created_users.contains_key(name) || during.iter().any(|d| d == name) {
                continue;
            }
            self.keys_created(name).await;
            if passwords_checked {
                passwords_checked = self.password_created(name).await;
            }
        }
        for user in during {
            self.sweep_user(&user, Vec::new(), Origin::Response).await;
        }
    }

    async fn keys_created(&mut self, user: &str) {
        let keys = match self.iam.list_access_keys().user_name(user).send().await {
            Ok(out) => out.access_key_metadata().to_vec(),
            Err(e) => {
                self.note(format!("ListAccessKeys {user}: {}", DisplayErrorContext(&e)));
                return;
            }
        };
        for k in keys {
            let Some(id) = k.access_key_id() else { continue };
            if self.attacker_keys.contains(id) || self.own_keys.iter().any(|o| o == id) || self.reviewed.contains(id) {
                continue;
            }
            let on_compromised = Some(user) == self.compromised.as_deref();
            match self.created(k.create_date()) {
                When::DuringResponse => {
                    let active = k.status().is_some_and(|s| s.as_str() == "Active");
                    let f = self.finding(
                        "created_during_response",
                        Severity::High,
                        format!(
                            "access key {id} of {user} was created during the response, creator not yet in CloudTrail"
                        ),
                        id.to_string(),
                        Some(true),
                        Vec::new(),
                        format!("{RESPONSE_DETAIL}; it is {}", if active { "Active" } else { "Inactive" }),
                    );
                    // Not the cutover's key (that one is rekey's own): the plan may take it, even on
                    // the compromised user.
                    self.attacker_keys.insert(id.to_string());
                    if active {
                        self.deactivate_key(&f, user, id);
                    }
                }
                When::InWindow => {
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
                            WINDOW_DETAIL.into()
                        },
                    );
                }
                When::Before => {}
            }
        }
    }

    /// A console password made during the response; false when passwords cannot be read (a note
    /// says so once, and no other user is tried).
    async fn password_created(&mut self, user: &str) -> bool {
        if self.passwords_seen.contains(user) {
            return true;
        }
        let out = match look(self.iam.get_login_profile().user_name(user).send().await, "GetLoginProfile") {
            Look::Present(out) => out,
            Look::Absent => return true,
            Look::Unknown(why) => {
                self.note(format!("{why}; console passwords created during the response not checked"));
                return false;
            }
        };
        let date = out.login_profile().map(|p| *p.create_date());
        if self.created(date.as_ref()) != When::DuringResponse {
            return true;
        }
        let f = self.finding(
            "created_during_response",
            Severity::High,
            format!("console password of {user} was created during the response, creator not yet in CloudTrail"),
            user.to_string(),
            Some(true),
            Vec::new(),
            RESPONSE_DETAIL.into(),
        );
        self.delete_login_profile(&f, user);
        true
    }

    async fn roles_created(&mut self) {
        let roles = match self.iam.list_roles().into_paginator().items().send().collect::<Result<Vec<_>, _>>().await {
            Ok(roles) => roles,
            Err(e) => {
                self.note(format!("ListRoles: {}; new roles not listed", DisplayErrorContext(&e)));
                return;
            }
        };
        let mut during = Vec::new();
        for r in roles {
            let name = r.role_name().to_string();
            if self.created_roles.contains_key(&name) || self.reviewed.contains(&name) {
                continue;
            }
            match self.created(Some(r.create_date())) {
                // Service-linked roles are made by AWS services, and only they can delete them.
                When::DuringResponse if !r.path().starts_with("/aws-service-role/") => during.push(name),
                When::DuringResponse | When::InWindow => {
                    self.finding(
                        "created_in_window",
                        Severity::Medium,
                        format!("role {name} was created during the window"),
                        r.arn().to_string(),
                        Some(true),
                        Vec::new(),
                        WINDOW_DETAIL.into(),
                    );
                }
                When::Before => {}
            }
        }
        for role in during {
            self.sweep_role(&role, Vec::new(), None, Origin::Response).await;
        }
    }

    async fn policies_created(&mut self) {
        let policies = self
            .iam
            .list_policies()
            .scope(aws_sdk_iam::types::PolicyScopeType::Local)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await;
        let policies = match policies {
            Ok(p) => p,
            Err(e) => {
                self.note(format!("ListPolicies: {}; new policies not listed", DisplayErrorContext(&e)));
                return;
            }
        };
        for p in policies {
            let arn = p.arn().unwrap_or_default().to_string();
            if self.attacker_policies.contains(&arn) || self.reviewed.contains(&arn) {
                continue;
            }
            let name = p.policy_name().unwrap_or(&arn).to_string();
            match self.created(p.create_date()) {
                When::DuringResponse => {
                    let f = self.finding(
                        "created_during_response",
                        Severity::High,
                        format!("managed policy {name} was created during the response, creator not yet in CloudTrail"),
                        arn.clone(),
                        Some(true),
                        Vec::new(),
                        format!(
                            "{RESPONSE_DETAIL}; the plan detaches it from every principal it is attached to: delete \
                             the policy by hand once reviewed"
                        ),
                    );
                    self.detach_everywhere(&f, &arn).await;
                }
                When::InWindow => {
                    self.finding(
                        "created_in_window",
                        Severity::Medium,
                        format!("managed policy {name} was created during the window"),
                        arn,
                        Some(true),
                        Vec::new(),
                        WINDOW_DETAIL.into(),
                    );
                }
                When::Before if self.created(p.update_date()) == When::DuringResponse => {
                    self.finding(
                        "created_during_response",
                        Severity::High,
                        format!("managed policy {name} got a new default version during the response"),
                        arn,
                        Some(true),
                        Vec::new(),
                        "changed after the response began, and no event of the timeline explains it yet: compare its \
                         versions and make the earlier one the default again (`aws iam set-default-policy-version`)"
                            .into(),
                    );
                }
                When::Before => {}
            }
        }
    }

    /// Plans the detachment of a managed policy from every user, role and group it is attached to.
    async fn detach_everywhere(&mut self, finding: &str, arn: &str) {
        let r = self.iam.list_entities_for_policy().policy_arn(arn).send().await;
        let out = match look(r, &format!("ListEntitiesForPolicy {arn}")) {
            Look::Present(out) => out,
            Look::Absent => return,
            Look::Unknown(why) => {
                self.note(format!("{why}; detach {arn} by hand"));
                return;
            }
        };
        for u in out.policy_users() {
            if let Some(name) = u.user_name() {
                self.detach(finding, "user", name, arn);
            }
        }
        for r in out.policy_roles() {
            if let Some(name) = r.role_name() {
                self.detach(finding, "role", name, arn);
            }
        }
        for g in out.policy_groups() {
            if let Some(name) = g.group_name() {
                self.detach(finding, "group", name, arn);
            }
        }
    }
}
