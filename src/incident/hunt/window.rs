//! Everything IAM created inside the window, whoever created it: the trail may not hold every event.

use aws_sdk_iam::error::DisplayErrorContext;

use super::Hunter;
use crate::incident::model::Severity;

impl Hunter<'_> {
    /// Users, roles, keys and customer-managed policies created inside the window by anyone.
    pub(super) async fn created_in_window(&mut self) {
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

    pub(super) async fn keys_in_window(&mut self, user: &str) {
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
}
