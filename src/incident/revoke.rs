//! Step 4 of an incident: sessions outlive keys. STS sessions minted from the leaked key
//! (GetSessionToken, GetFederationToken, AssumeRole) stay valid for up to 36 hours after the key is
//! off, so they are revoked with the console's "Revoke active sessions" shape: an inline Deny on
//! everything for credentials issued before now.
//!
//! `aws:TokenIssueTime` exists only in requests signed with temporary credentials. Long-term keys
//! (the new key after the cutover) never carry it, so `DateLessThan` on a missing key is false and
//! they keep working; sessions minted after the policy's time keep working too. The time is the
//! incident's start, before the cutover, so the sessions the application mints with the *new* key
//! keep working; sessions it minted before are cut and must be renewed (SDKs do that on their own
//! when they hold the long-term key).

use std::time::SystemTime;

use aws_sdk_iam::error::ProvideErrorMetadata;
use serde_json::json;

use super::model::RevokedSessions;

pub const POLICY_NAME: &str = "rekey-revoke-older-sessions";

/// Deny `*` on `*` for sessions issued before `issued_before` (UTC, whole seconds rounded up).
pub fn revoke_policy(issued_before: SystemTime) -> serde_json::Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Deny",
            "Action": ["*"],
            "Resource": ["*"],
            "Condition": {"DateLessThan": {"aws:TokenIssueTime": issued_before_text(issued_before)}}
        }]
    })
}

/// Rounded up to the next whole second: a session minted a fraction of a second before `t` must
/// not slip through by truncation; one minted within that fraction after is revoked too, which is
/// the safe side.
fn issued_before_text(t: SystemTime) -> String {
    let frac = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let up = if frac == 0 { t } else { t + std::time::Duration::from_nanos(u64::from(1_000_000_000 - frac)) };
    rekey_trail::time::format(up)
}

/// The role name from a role name, a role ARN (`arn:aws:iam::123:role/path/name`) or an
/// assumed-role session ARN (`arn:aws:sts::123:assumed-role/name/session`).
pub fn role_name(role: &str) -> Option<String> {
    let role = role.trim();
    let name = if let Some((_, rest)) = role.split_once(":assumed-role/") {
        rest.split('/').next().unwrap_or_default()
    } else if let Some((_, rest)) = role.split_once(":role/") {
        rest.rsplit('/').next().unwrap_or_default()
    } else if role.starts_with("arn:") {
        ""
    } else {
        role
    };
    Some(name.to_string()).filter(|n| !n.is_empty())
}

/// The roles whose sessions the key (or a session it minted) used, from the timeline: `(local role
/// names, foreign role ARNs)`. A role ARN in another account is never mapped to a same-named role
/// here: that would put a Deny on an unrelated local role and leave the real one untouched (it
/// is revoked from that account). With `account` unknown every role counts as local.
pub fn roles_used(timeline: &[super::model::TimelineEvent], account: Option<&str>) -> (Vec<String>, Vec<String>) {
    let mut local = std::collections::BTreeSet::new();
    let mut foreign = std::collections::BTreeSet::new();
    let mut add = |arn: &str| {
        let Some(name) = role_name(arn) else { return };
        let arn_account = arn.split(':').nth(4).filter(|a| !a.is_empty());
        match (arn_account, account) {
            (Some(a), Some(ours)) if a != ours => {
                foreign.insert(arn.to_string());
            }
            _ => {
                local.insert(name);
            }
        }
    };
    for e in timeline.iter().filter(|e| !e.failed) {
        if e.event_name == "AssumeRole"
            && let Some(arn) = e.request_parameters.as_ref().and_then(|r| r.get("roleArn")).and_then(|v| v.as_str())
        {
            add(arn);
        }
        if let Some(arn) = e.arn.as_deref().filter(|a| a.contains(":assumed-role/")) {
            add(arn);
        }
    }
    (local.into_iter().collect(), foreign.into_iter().collect())
}

/// A report line for a role that was deliberately not revoked.
pub fn not_revoked(name: &str, at: SystemTime, why: String) -> RevokedSessions {
    report("role", name, at, format!("not revoked: {why}"))
}

use crate::aws::error_text as describe;

fn report(kind: &str, name: &str, at: SystemTime, status: String) -> RevokedSessions {
    RevokedSessions {
        kind: kind.to_string(),
        name: name.to_string(),
        policy_name: POLICY_NAME.to_string(),
        issued_before: issued_before_text(at),
        status,
    }
}

/// Revokes the sessions of `user` issued before `at`. Never fails: the outcome is in `status`.
pub async fn revoke_user(iam: &aws_sdk_iam::Client, user: &str, at: SystemTime) -> RevokedSessions {
    let status = match iam
        .put_user_policy()
        .user_name(user)
        .policy_name(POLICY_NAME)
        .policy_document(revoke_policy(at).to_string())
        .send()
        .await
    {
        Ok(_) => "revoked".to_string(),
        Err(e) => format!("failed: PutUserPolicy on {user}: {}", describe(&e)),
    };
    report("user", user, at, status)
}

/// Revokes the sessions of a role (by name, role ARN or assumed-role ARN) issued before `at`.
/// Service-linked roles refuse inline policies; that is reported, not hidden.
pub async fn revoke_role(iam: &aws_sdk_iam::Client, role: &str, at: SystemTime) -> RevokedSessions {
    let Some(name) = role_name(role) else {
        return report("role", role, at, format!("failed: {role:?} names no role"));
    };
    let status = match iam
        .put_role_policy()
        .role_name(&name)
        .policy_name(POLICY_NAME)
        .policy_document(revoke_policy(at).to_string())
        .send()
        .await
    {
        Ok(_) => "revoked".to_string(),
        Err(e) if e.code() == Some("UnmodifiableEntity") => {
            format!("failed: {name} is a service-linked role, which cannot hold inline policies ({})", describe(&e))
        }
        Err(e) => format!("failed: PutRolePolicy on {name}: {}", describe(&e)),
    };
    report("role", &name, at, status)
}

/// Lifts a user's revocation (once every session worth keeping was renewed, or to undo);
/// `Ok(false)` when there was none.
pub async fn remove_user(iam: &aws_sdk_iam::Client, user: &str) -> Result<bool, String> {
    match iam.delete_user_policy().user_name(user).policy_name(POLICY_NAME).send().await {
        Ok(_) => Ok(true),
        Err(e) if e.code() == Some("NoSuchEntity") => Ok(false),
        Err(e) => Err(format!("DeleteUserPolicy {POLICY_NAME} on {user}: {}", describe(&e))),
    }
}

/// Lifts a role's revocation; `Ok(false)` when there was none.
pub async fn remove_role(iam: &aws_sdk_iam::Client, role: &str) -> Result<bool, String> {
    let name = role_name(role).ok_or_else(|| format!("{role:?} names no role"))?;
    match iam.delete_role_policy().role_name(&name).policy_name(POLICY_NAME).send().await {
        Ok(_) => Ok(true),
        Err(e) if e.code() == Some("NoSuchEntity") => Ok(false),
        Err(e) => Err(format!("DeleteRolePolicy {POLICY_NAME} on {name}: {}", describe(&e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoke_policy_is_the_consoles_shape() {
        let at = humantime::parse_rfc3339("2024-05-02T12:34:56Z").unwrap() + std::time::Duration::from_millis(789);
        assert_eq!(
            revoke_policy(at),
            json!({
                "Version": "2012-10-17",
                "Statement": [{
                    "Effect": "Deny",
                    "Action": ["*"],
                    "Resource": ["*"],
                    "Condition": {"DateLessThan": {"aws:TokenIssueTime": "2024-05-02T12:34:57Z"}}
                }]
            })
        );
        let whole = humantime::parse_rfc3339("2024-05-02T12:34:56Z").unwrap();
        assert_eq!(
            revoke_policy(whole)["Statement"][0]["Condition"]["DateLessThan"]["aws:TokenIssueTime"],
            "2024-05-02T12:34:56Z"
        );
    }

    #[test]
    fn foreign_roles_are_never_mapped_to_local_ones() {
        use crate::incident::model::TimelineEvent;
        let assume = |arn: &str| TimelineEvent {
            event_name: "AssumeRole".into(),
            request_parameters: Some(json!({"roleArn": arn})),
            ..TimelineEvent::default()
        };
        let timeline = vec![
            assume("arn:aws:iam::111111111111:role/deploy"),
            assume("arn:aws:iam::999999999999:role/deploy"),
            TimelineEvent {
                arn: Some("arn:aws:sts::999999999999:assumed-role/admin/x".into()),
                ..TimelineEvent::default()
            },
            TimelineEvent {
                arn: Some("arn:aws:sts::111111111111:assumed-role/ops/y".into()),
                ..TimelineEvent::default()
            },
        ];
        let (local, foreign) = roles_used(&timeline, Some("111111111111"));
        assert_eq!(local, ["deploy", "ops"]);
        assert_eq!(
            foreign,
            ["arn:aws:iam::999999999999:role/deploy", "arn:aws:sts::999999999999:assumed-role/admin/x"]
        );
        let (local, foreign) = roles_used(&timeline, None);
        assert_eq!(local, ["admin", "deploy", "ops"]);
        assert!(foreign.is_empty());
    }

    #[test]
    fn role_names_come_from_names_and_arns() {
        assert_eq!(role_name("deploy").as_deref(), Some("deploy"));
        assert_eq!(role_name("arn:aws:iam::123456789012:role/deploy").as_deref(), Some("deploy"));
        assert_eq!(role_name("arn:aws:iam::123456789012:role/team/ci/deploy").as_deref(), Some("deploy"));
        assert_eq!(role_name("arn:aws:sts::123456789012:assumed-role/deploy/session-1").as_deref(), Some("deploy"));
        assert_eq!(role_name("arn:aws:iam::123456789012:user/app"), None);
        assert_eq!(role_name(""), None);
    }
}
