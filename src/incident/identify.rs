//! Step 1 of an incident: whose key is it, is it still on, when was it last used, and is rekey in a
//! position to act at all (not running with the leaked key, nor as its owner, nor hampered by the
//! quarantine policy AWS may have attached).

use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_iam::error::ProvideErrorMetadata;
use aws_sdk_iam::types::{StatusType, SummaryKeyType};

use super::model::Owner;
use crate::rotate::iam::Caller;

/// Prefix of every AWS managed quarantine policy (V1 had no suffix, then V2, V3, V4).
pub const QUARANTINE_PREFIX: &str = "AWSCompromisedKeyQuarantine";

/// What step 1 found.
#[derive(Debug, Clone)]
pub struct Identified {
    pub owner: Owner,
    /// A root key: IAM policies cannot restrict root, so fences and revocations do not apply.
    pub p1: bool,
    /// Who rekey itself runs as.
    pub caller_arn: String,
    pub warnings: Vec<String>,
    /// One plain-words paragraph per quarantine policy found.
    pub quarantine_explained: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentifyError {
    #[error("{0}")]
    InvalidKey(String),
    #[error(
        "rekey is running with the compromised key {0} itself: run it with another principal's credentials \
         (an admin user or role, e.g. AWS_PROFILE=<admin>)"
    )]
    RunningWithCompromisedKey(String),
    #[error(
        "rekey is running as {caller}, the owner of the compromised key: run it as another principal \
         (an admin user or role), since the owner's permissions are what the fence and the quarantine restrict"
    )]
    RunningAsOwner { caller: String },
    #[error("cannot tell who rekey runs as (sts:GetCallerIdentity failed): {0}")]
    Caller(String),
}

/// Checks the shape of an access key id before any call, so that a pasted secret, a user id or a
/// typo gets a precise answer instead of an IAM error.
pub fn validate_key_id(key: &str) -> Result<(), IdentifyError> {
    let bad = |why: &str| Err(IdentifyError::InvalidKey(format!("{key:?} is not an access key id: {why}")));
    if key.len() == 40 && key.chars().any(|c| c.is_ascii_lowercase() || c == '/' || c == '+') {
        return bad(
            "it looks like a secret access key; pass the access key id (AKIA…) instead, and never paste secrets",
        );
    }
    let prefix = key.get(..4).unwrap_or(key);
    if prefix != "AKIA" && prefix != "ASIA" {
        let hint = match prefix.to_ascii_uppercase().as_str() {
            "AKIA" | "ASIA" => "access key ids are upper case",
            "AIDA" => "that is an IAM user id; pass the access key id (AKIA…)",
            "AROA" => "that is an IAM role id; pass the access key id (AKIA… or ASIA…)",
            _ => "it must start with AKIA (long-term key) or ASIA (temporary credentials)",
        };
        return bad(hint);
    }
    if !(16..=128).contains(&key.len()) {
        return bad("access key ids are 16 to 128 characters long (usually 20)");
    }
    if !key.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) {
        return bad("only upper-case letters and digits are allowed");
    }
    Ok(())
}

/// The access key id of the credentials rekey itself runs with, so that it can refuse to respond
/// to an incident using the very key under investigation.
pub async fn own_key_id(sdk: &aws_types::SdkConfig) -> Option<String> {
    let provider = sdk.credentials_provider()?;
    let creds = provider.provide_credentials().await.ok()?;
    Some(creds.access_key_id().to_string())
}

use crate::aws::error_text as describe;

fn not_found<E, R>(err: &aws_sdk_iam::error::SdkError<E, R>) -> bool
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    err.code() == Some("NoSuchEntity")
}

pub async fn identify(
    iam: &aws_sdk_iam::Client,
    sts: &aws_sdk_sts::Client,
    key: &str,
    own_key_id: Option<&str>,
) -> Result<Identified, IdentifyError> {
    let key = key.trim();
    validate_key_id(key)?;
    // Checked before any call: every request signed with the leaked key is one more event in the
    // attacker's timeline, and under a quarantine policy most of what follows would fail anyway.
    if own_key_id == Some(key) {
        return Err(IdentifyError::RunningWithCompromisedKey(key.to_string()));
    }
    let who = sts.get_caller_identity().send().await.map_err(|e| {
        IdentifyError::Caller(match e.code() {
            Some(code) => format!("{code}: {}", e.message().unwrap_or("no message")),
            None => aws_sdk_sts::error::DisplayErrorContext(&e).to_string(),
        })
    })?;
    let caller = Caller::from_arn(who.arn().unwrap_or_default(), who.account().unwrap_or_default());

    let mut warnings = Vec::new();
    let mut owner = Owner { account: Some(caller.account.clone()).filter(|a| !a.is_empty()), ..Owner::default() };
    if key.starts_with("ASIA") {
        warnings.push(format!(
            "{key} is a temporary (STS) credential: IAM does not track it, so its owner comes from CloudTrail \
             (the AssumeRole/GetSessionToken response that minted it); revoke the sessions of that principal"
        ));
    }

    match iam.get_access_key_last_used().access_key_id(key).send().await {
        Ok(out) => {
            owner.user = out.user_name().map(str::to_string);
            if let Some(used) = out.access_key_last_used() {
                owner.last_used = used
                    .last_used_date()
                    .and_then(|d| std::time::SystemTime::try_from(*d).ok())
                    .map(rekey_trail::time::format);
                owner.last_used_service = Some(used.service_name().to_string()).filter(|s| !s.is_empty() && s != "N/A");
                owner.last_used_region = Some(used.region().to_string()).filter(|s| !s.is_empty() && s != "N/A");
            }
        }
        Err(e) => warnings.push(format!(
            "IAM does not know {key} in account {} ({}): its owner is unknown; if it was deleted it no longer \
             signs requests, but sessions minted from it may still be valid; the investigation still runs",
            caller.account,
            describe(&e)
        )),
    }

    if let Some(user) = owner.user.clone() {
        resolve_user(iam, key, &user, &caller, &mut owner, &mut warnings).await;
    }

    // AWS answers with the root user's name for a root key; an IAM user may also be called `root`,
    // which resolve_user tells apart by finding the key on it.
    let p1 = owner.is_root;
    if owner.is_root {
        warnings.push(
            "the compromised key belongs to the account's ROOT user: this is a P1. IAM policies cannot restrict \
             root (no fence, no session revocation): deactivate and delete the root key now from the root \
             user's Security credentials page, audit all root activity of the last 30+ days, and contact AWS \
             Security"
                .to_string(),
        );
    }

    let caller_is_owner = !caller.arn.is_empty()
        && (owner.arn.as_deref() == Some(caller.arn.as_str())
            || (!owner.is_root && owner.user.is_some() && caller.user_name == owner.user));
    if caller_is_owner {
        return Err(IdentifyError::RunningAsOwner { caller: caller.arn });
    }

    match iam.get_account_summary().send().await {
        Ok(out) => {
            let present = out.summary_map().and_then(|m| m.get(&SummaryKeyType::AccountAccessKeysPresent)).copied();
            if present.unwrap_or(0) > 0 && !owner.is_root {
                warnings.push(
                    "the account's root user has access keys (AccountAccessKeysPresent=1): P1-worthy on its own, \
                     since nothing can restrict a leaked root key; delete them once this incident is contained"
                        .to_string(),
                );
            }
        }
        Err(e) => warnings.push(format!("could not check whether the root user has access keys: {}", describe(&e))),
    }

    let mut quarantine_explained = Vec::new();
    if let (Some(user), false) = (owner.user.clone(), owner.is_root) {
        match quarantine_attachments(iam, &user).await {
            Ok(found) => {
                for (policy, via) in found {
                    if !owner.quarantine_policies.contains(&policy) {
                        owner.quarantine_policies.push(policy.clone());
                    }
                    quarantine_explained.push(explain_quarantine(&policy, &user, via.as_deref()));
                }
            }
            Err(e) => warnings.push(format!(
                "could not list the policies attached to {user} or its groups ({e}): an AWS quarantine policy may \
                 be attached unseen"
            )),
        }
    }

    Ok(Identified { owner, p1, caller_arn: caller.arn, warnings, quarantine_explained })
}

/// Fills the owner's ARN and the key's status from the user, telling the root user apart from an
/// IAM user that happens to be named like it.
async fn resolve_user(
    iam: &aws_sdk_iam::Client,
    key: &str,
    user: &str,
    caller: &Caller,
    owner: &mut Owner,
    warnings: &mut Vec<String>,
) {
    let rootish = user == "root" || user == "<root_account>";
    match iam.get_user().user_name(user).send().await {
        Ok(out) => {
            owner.arn = out.user().map(|u| u.arn().to_string());
            if let Some(account) = owner.arn.as_deref().and_then(|a| a.split(':').nth(4)).filter(|a| !a.is_empty()) {
                owner.account = Some(account.to_string());
            }
        }
        Err(e) if rootish && not_found(&e) => {
            owner.is_root = true;
            owner.user = Some("root".to_string());
            owner.arn = Some(format!("arn:aws:iam::{}:root", caller.account)).filter(|_| !caller.account.is_empty());
            // Root's keys are listed only to root itself; rekey never runs as the key's owner.
            owner.key_status = Some("unknown".to_string());
            return;
        }
        Err(e) => warnings.push(format!("could not read the user {user}: {}", describe(&e))),
    }

    match iam.list_access_keys().user_name(user).send().await {
        Ok(out) => {
            let status =
                out.access_key_metadata().iter().find(|k| k.access_key_id() == Some(key)).map(|k| match k.status() {
                    Some(StatusType::Active) => "Active".to_string(),
                    Some(StatusType::Inactive) => "Inactive".to_string(),
                    Some(other) => other.as_str().to_string(),
                    None => "unknown".to_string(),
                });
            if status.is_none() {
                warnings.push(format!(
                    "{user} no longer has the key {key} (deleted): it cannot sign new requests, but STS sessions \
                     minted from it may still be valid until they expire; revoke them"
                ));
            }
            owner.key_status = Some(status.unwrap_or_else(|| "unknown".to_string()));
        }
        Err(e) => {
            owner.key_status = Some("unknown".to_string());
            warnings.push(format!("could not list the access keys of {user}: {}", describe(&e)));
        }
    }
}

/// Quarantine policies attached to the user (`via` None) or to one of its groups (`via` the group).
async fn quarantine_attachments(
    iam: &aws_sdk_iam::Client,
    user: &str,
) -> Result<Vec<(String, Option<String>)>, String> {
    let mut found = Vec::new();
    let mut marker = None;
    loop {
        let out = iam
            .list_attached_user_policies()
            .user_name(user)
            .set_marker(marker.take())
            .send()
            .await
            .map_err(|e| describe(&e))?;
        for p in out.attached_policies() {
            if let Some(name) = p.policy_name().filter(|n| n.starts_with(QUARANTINE_PREFIX)) {
                found.push((name.to_string(), None));
            }
        }
        match out.marker().filter(|_| out.is_truncated()) {
            Some(m) => marker = Some(m.to_string()),
            None => break,
        }
    }

    let mut groups = Vec::new();
    let mut marker = None;
    loop {
        let out = iam
            .list_groups_for_user()
            .user_name(user)
            .set_marker(marker.take())
            .send()
            .await
            .map_err(|e| describe(&e))?;
        groups.extend(out.groups().iter().map(|g| g.group_name().to_string()));
        match out.marker().filter(|_| out.is_truncated()) {
            Some(m) => marker = Some(m.to_string()),
            None => break,
        }
    }
    for group in groups {
        let mut marker = None;
        loop {
            let out = iam
                .list_attached_group_policies()
                .group_name(&group)
                .set_marker(marker.take())
                .send()
                .await
                .map_err(|e| describe(&e))?;
            for p in out.attached_policies() {
                if let Some(name) = p.policy_name().filter(|n| n.starts_with(QUARANTINE_PREFIX)) {
                    found.push((name.to_string(), Some(group.clone())));
                }
            }
            match out.marker().filter(|_| out.is_truncated()) {
                Some(m) => marker = Some(m.to_string()),
                None => break,
            }
        }
    }
    Ok(found)
}

/// What a quarantine policy blocks, in plain words. The action lists are AWS's published documents
/// (V1 2020-08; V2 and V3 have the same 89 actions since 2024-10-02; V4 adds reserved-capacity
/// purchases).
pub fn explain_quarantine(policy: &str, user: &str, via_group: Option<&str>) -> String {
    let version = policy.strip_prefix(QUARANTINE_PREFIX).unwrap_or("");
    let blocks = match version {
        "" => {
            "it denies 28 actions that create or escalate: iam:CreateAccessKey, iam:UpdateAccessKey, \
             iam:CreateUser, iam:CreateLoginProfile, iam:CreateRole, iam:Attach*/Put*UserPolicy, ec2:RunInstances, \
             ec2:RequestSpotInstances, lambda:CreateFunction, organizations:CreateAccount, lightsail:Create*"
        }
        "V2" | "V3" => {
            "it denies 89 actions, among them iam:CreateAccessKey, iam:UpdateAccessKey, iam:DeleteAccessKey, \
             iam:ListUsers, iam:PassRole, iam:Put*Policy, cloudtrail:LookupEvents, s3:GetObject, s3:ListBucket, \
             s3:ListAllMyBuckets, s3:PutBucketPolicy, s3:DeleteObject, sts:GetSessionToken, \
             sts:GetFederationToken, ses:GetSendQuota, ses:ListIdentities, ec2:RunInstances, lambda:CreateFunction, \
             bedrock:InvokeModel"
        }
        "V4" => {
            "it denies the V2/V3 list (89 actions, among them iam:CreateAccessKey, iam:UpdateAccessKey, \
             iam:DeleteAccessKey, cloudtrail:LookupEvents, s3:GetObject, sts:GetSessionToken) plus more \
             reserved-capacity purchases"
        }
        _ => "it is a version rekey does not know: read its document in the IAM console",
    };
    let place = match via_group {
        Some(group) => format!("attached to the group {group}, which {user} belongs to"),
        None => format!("attached to {user}"),
    };
    format!(
        "AWS attached {policy} ({place}) after detecting the leak: {blocks}. The policy is on the user, so it \
         binds every key of {user}, the new one included: the user cannot rotate its own key or read CloudTrail, \
         and if the application itself needs one of these actions it is already failing. Run rekey as another \
         (admin) principal; detach the policy only once the incident is contained and the key replaced."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_validated_with_a_reason() {
        assert!(validate_key_id("AKIA1234567890ABCDEF").is_ok());
        assert!(validate_key_id("ASIAXYZXYZXYZXYZXYZX").is_ok());
        let msg = |k: &str| validate_key_id(k).unwrap_err().to_string();
        assert!(msg("akia1234567890abcdef").contains("upper case"));
        assert!(msg("AIDA1234567890ABCDEF").contains("user id"));
        assert!(msg("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY").contains("secret access key"));
        assert!(msg("AKIA123").contains("16 to 128"));
        assert!(msg("AKIA1234567890ABCDE-").contains("upper-case letters and digits"));
        assert!(msg("XKIA1234567890ABCDEF").contains("AKIA"));
    }

    #[test]
    fn quarantine_explanations_name_what_is_blocked_and_the_way_out() {
        let v2 = explain_quarantine("AWSCompromisedKeyQuarantineV2", "app", None);
        for needle in ["iam:CreateAccessKey", "iam:UpdateAccessKey", "cloudtrail:LookupEvents", "s3:GetObject"] {
            assert!(v2.contains(needle), "{needle} in {v2}");
        }
        assert!(v2.contains("another"));
        let via = explain_quarantine("AWSCompromisedKeyQuarantineV3", "app", Some("ops"));
        assert!(via.contains("group ops"));
        assert!(explain_quarantine("AWSCompromisedKeyQuarantine", "app", None).contains("28 actions"));
    }
}
