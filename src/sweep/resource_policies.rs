//! Secrets Manager secrets and KMS keys whose resource policy lets another account (or anyone) in.
//!
//! A resource policy outlives every key rotation: one statement naming the attacker's account keeps
//! their access to a secret, or to decrypting with a key, whenever it was added. Each such statement
//! is a finding; the plan takes that one statement out and keeps the whole policy for undo (bucket
//! policies, in `s3.rs`, are handled the same way).

use serde_json::{Value, json};

use super::actions::{PolicyHolder, SweepAction};
use super::{Cx, Found, Item, Planned, Problem, finding, rfc3339, time_of};
use crate::incident::model::{Action, Severity, Undo};

/// A finding, with the step that removes it, for every statement of `policy` that lets someone
/// outside the account in.
pub(super) fn grant_items(
    cx: &Cx,
    kind: &str,
    holder: PolicyHolder,
    resource_id: &str,
    arn: String,
    policy: &Value,
    why: &str,
) -> Vec<Item> {
    let label = holder.describe();
    let region = holder.region().to_string();
    cx.outside_grants(policy)
        .into_iter()
        .map(|g| {
            let sid = g.sid.as_deref().map(|s| format!(" (statement {s})")).unwrap_or_default();
            let mut f = finding(
                kind,
                if g.public { Severity::Critical } else { Severity::High },
                &region,
                resource_id,
                arn.clone(),
                format!("{label}: policy grants {} {}{sid}", g.who(), g.actions.join(", ")),
                why,
            );
            f.evidence = json!({"statement": g.statement, "public": g.public, "accounts": g.accounts});
            let step = Planned {
                description: format!("remove the statement{sid} granting {} from the policy of {label}", g.who()),
                action: Action::Sweep(SweepAction::RemovePolicyStatement {
                    holder: holder.clone(),
                    statement: g.statement.clone(),
                    policy: policy.clone(),
                }),
                undo: Undo::Action {
                    action: Action::Sweep(SweepAction::RestorePolicyStatement {
                        holder: holder.clone(),
                        statement: g.statement.clone(),
                        policy: policy.clone(),
                    }),
                },
            };
            Item { finding: f, actions: vec![step] }
        })
        .collect()
}

fn parse(text: &str) -> Option<Value> {
    serde_json::from_str(text).ok()
}

pub(super) async fn secrets(cx: &Cx) -> Result<Found, Problem> {
    let pages =
        cx.c.secrets
            .list_secrets()
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| Problem::sdk("secretsmanager:ListSecrets", &e))?;
    let mut found = Found::default();
    let mut secrets: Vec<_> = pages.iter().flat_map(|p| p.secret_list()).collect();
    found.seen.push(("secrets", secrets.len() as u64));
    secrets.sort_by_key(|s| std::cmp::Reverse(time_of(s.created_date())));
    let total = secrets.len();
    let region = cx.region();
    for (checked, s) in secrets.into_iter().enumerate() {
        let created = time_of(s.created_date());
        found.in_use |= cx.before_window(created);
        if checked >= cx.max_items || !cx.time_left() {
            found.gaps.push(format!("only the newest {checked} of {total} secrets were checked for their policy"));
            break;
        }
        let Some(arn) = s.arn() else { continue };
        let name = s.name().unwrap_or(arn);
        let policy = match cx.c.secrets.get_resource_policy().secret_id(arn).send().await {
            Ok(o) => o.resource_policy().and_then(parse),
            Err(e) => {
                found.gaps.push(format!("secretsmanager:GetResourcePolicy {name}: {}", crate::aws::error_text(&e)));
                None
            }
        };
        let Some(policy) = policy else { continue };
        let holder = PolicyHolder::Secret { secret_id: arn.to_string(), region: region.to_string() };
        let mut items = grant_items(
            cx,
            "secret_policy",
            holder,
            name,
            arn.to_string(),
            &policy,
            "A secret's resource policy that names another account lets it read the secret's value with its own \
             credentials, whatever happens to the leaked key.",
        );
        for i in &mut items {
            i.finding.created = rfc3339(created);
        }
        found.items.extend(items);
    }
    Ok(found)
}

pub(super) async fn kms_keys(cx: &Cx) -> Result<Found, Problem> {
    let pages =
        cx.c.kms
            .list_keys()
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| Problem::sdk("kms:ListKeys", &e))?;
    let mut found = Found::default();
    let keys: Vec<_> = pages.iter().flat_map(|p| p.keys()).collect();
    found.seen.push(("KMS keys", keys.len() as u64));
    let total = keys.len();
    let region = cx.region();
    for (checked, k) in keys.into_iter().enumerate() {
        if checked >= cx.max_items || !cx.time_left() {
            found.gaps.push(format!("only {checked} of {total} KMS keys were checked for their policy"));
            break;
        }
        let Some(id) = k.key_id() else { continue };
        let policy = match cx.c.kms.get_key_policy().key_id(id).policy_name("default").send().await {
            Ok(o) => o.policy().and_then(parse),
            Err(e) => {
                found.gaps.push(format!("kms:GetKeyPolicy {id}: {}", crate::aws::error_text(&e)));
                None
            }
        };
        let Some(policy) = policy else { continue };
        let arn = k.key_arn().map(str::to_string).unwrap_or_else(|| cx.arn("kms", &format!("key/{id}")));
        found.items.extend(grant_items(
            cx,
            "kms_key_policy",
            PolicyHolder::KmsKey { key_id: id.to_string(), region: region.to_string() },
            id,
            arn,
            &policy,
            "A key policy that names another account lets it decrypt (or encrypt) with the key: everything \
             encrypted under it is readable there.",
        ));
    }
    Ok(found)
}
