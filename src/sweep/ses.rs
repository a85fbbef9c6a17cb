//! SES identities: mail sent in the account's name, the spam a stolen key is often sold for.
//!
//! SES keeps no creation time for an identity, so which ones are the attacker's is judged after every
//! Region is read: an identity in a Region the account does not otherwise use is a finding; one in a
//! Region it uses is a finding only when the key's events show it being made. Deleting an identity
//! cannot be undone without verifying it again, so the plan holds no step for it: the finding says
//! how to pause sending in the Region instead.

use std::collections::BTreeSet;

use serde_json::json;

use super::{Cx, Found, Item, Problem, events_about, finding};
use crate::incident::model::{Severity, TimelineEvent};

#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub name: String,
    pub kind: Option<String>,
    pub sending_enabled: bool,
    pub verification_status: Option<String>,
}

pub(super) async fn identities(cx: &Cx) -> Result<Found, Problem> {
    let pages =
        cx.c.ses
            .list_email_identities()
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| Problem::sdk("ses:ListEmailIdentities", &e))?;
    let mut found = Found::default();
    for i in pages.iter().flat_map(|p| p.email_identities()) {
        let Some(name) = i.identity_name() else { continue };
        found.ses.push(Identity {
            name: name.to_string(),
            kind: i.identity_type().map(|t| t.as_str().to_string()),
            sending_enabled: i.sending_enabled(),
            verification_status: i.verification_status().map(|s| s.as_str().to_string()),
        });
    }
    found.seen.push(("SES identities", found.ses.len() as u64));
    Ok(found)
}

/// The finding for one identity, when it is one (see the module documentation).
pub(super) fn judge(
    region: &str,
    identity: Identity,
    in_use: &BTreeSet<String>,
    account: Option<&str>,
    timeline: &[TimelineEvent],
) -> Option<Item> {
    let unused_region = !in_use.contains(region);
    if !unused_region && events_about(timeline, &[identity.name.as_str()]).is_empty() {
        return None;
    }
    let name = &identity.name;
    let title = if unused_region {
        format!("SES identity {name} in {region}, a Region the account does not otherwise use")
    } else {
        format!("SES identity {name} in {region} made with the key")
    };
    let mut f = finding(
        "ses_identity",
        Severity::High,
        region,
        name,
        format!("arn:aws:ses:{region}:{}:identity/{name}", account.unwrap_or_default()),
        title,
        "A mail identity lets whoever holds the account's credentials send mail in its name (spam, phishing), \
         hurting its sending reputation. Review it; pause sending in the Region with `aws sesv2 \
         put-account-sending-attributes --no-sending-enabled --region R` and delete the identity if it is not \
         the account's.",
    );
    f.evidence = json!({
        "identity_type": identity.kind,
        "sending_enabled": identity.sending_enabled,
        "verification_status": identity.verification_status,
        "region_in_use": !unused_region,
    });
    Some(Item { finding: f, actions: Vec::new() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(name: &str) -> Identity {
        Identity {
            name: name.into(),
            kind: Some("EMAIL_ADDRESS".into()),
            sending_enabled: true,
            verification_status: None,
        }
    }

    #[test]
    fn an_identity_is_a_finding_in_an_unused_region_or_when_the_key_made_it() {
        let used: BTreeSet<String> = ["us-east-1".to_string()].into();
        assert!(judge("us-east-1", identity("noreply@acme.example"), &used, None, &[]).is_none());
        let f =
            judge("eu-central-1", identity("promo@spam.example"), &used, Some("123456789012"), &[]).unwrap().finding;
        assert_eq!(f.arn, "arn:aws:ses:eu-central-1:123456789012:identity/promo@spam.example");
        assert!(f.title.contains("does not otherwise use"));
        let made = TimelineEvent {
            event_id: "e1".into(),
            request_parameters: Some(serde_json::json!({"emailAddress": "ops@acme.example"})),
            ..TimelineEvent::default()
        };
        let f = judge("us-east-1", identity("ops@acme.example"), &used, None, &[made]).unwrap().finding;
        assert!(f.title.contains("made with the key"), "{}", f.title);
    }
}
