//! The incident's first guards against the emulator: who owns a leaked key, refusing to act with
//! that key or as its owner, spotting AWS's quarantine policy, and the fence and revocation
//! policies landing on (and leaving) the right principal with the right document.
//!
//! moto ignores policy conditions, so what the documents *do* is tested as data in the unit tests
//! of `fence` and `revoke`; here only their placement is.

use std::time::{Duration, SystemTime};

use rekey::incident::identify::{self, IdentifyError};
use rekey::incident::{fence, revoke};
use testbed::moto::{Creds, Moto, Seeded, seed};

fn clients(moto: &Moto, creds: &Creds) -> (aws_sdk_iam::Client, aws_sdk_sts::Client, aws_types::SdkConfig) {
    let sdk = moto.sdk_config(creds);
    (aws_sdk_iam::Client::new(&sdk), aws_sdk_sts::Client::new(&sdk), sdk)
}

/// IAM returns policy documents URL-encoded.
fn decode(doc: &str) -> serde_json::Value {
    let bytes = doc.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
            i += 1;
        }
    }
    serde_json::from_slice(&out).unwrap_or_else(|e| panic!("policy document is not JSON ({e}): {doc}"))
}

async fn quarantine_policy(iam: &aws_sdk_iam::Client) -> String {
    let doc = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Deny", "Action": ["iam:CreateAccessKey", "cloudtrail:LookupEvents"], "Resource": "*"}]
    });
    let out = iam
        .create_policy()
        .policy_name("AWSCompromisedKeyQuarantineV2")
        .policy_document(doc.to_string())
        .send()
        .await
        .unwrap();
    out.policy().unwrap().arn().unwrap().to_string()
}

async fn setup(moto: &Moto) -> (Seeded, aws_sdk_iam::Client, aws_sdk_sts::Client, Option<String>) {
    let s = seed(moto).await;
    let (iam, sts, sdk) = clients(moto, &s.admin);
    let own = identify::own_key_id(&sdk).await;
    (s, iam, sts, own)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_guards_against_the_emulator() {
    let moto = Moto::start();

    // Owner, status, last use.
    let (s, iam, sts, own) = setup(&moto).await;
    assert_eq!(own.as_deref(), Some(s.admin.access_key_id.as_str()), "own key id resolved from the provider");
    let (_, app_sts, _) = clients(&moto, &s.app_key);
    app_sts.get_caller_identity().send().await.unwrap();
    let found = identify::identify(&iam, &sts, &s.app_key.access_key_id, own.as_deref()).await.unwrap();
    assert_eq!(found.owner.user.as_deref(), Some(s.app_user.as_str()));
    assert!(found.owner.arn.as_deref().unwrap().ends_with(":user/app-integration-user"), "{:?}", found.owner);
    assert_eq!(found.owner.key_status.as_deref(), Some("Active"));
    assert!(found.owner.last_used.is_some(), "{:?}", found.owner);
    assert_eq!(found.owner.last_used_service.as_deref(), Some("sts"));
    assert!(!found.owner.is_root && !found.p1);
    assert!(found.caller_arn.ends_with(":user/rekey-admin"), "{}", found.caller_arn);
    assert!(found.owner.quarantine_policies.is_empty());

    // Deactivated: the status says so.
    iam.update_access_key()
        .user_name(&s.app_user)
        .access_key_id(&s.app_key.access_key_id)
        .status(aws_sdk_iam::types::StatusType::Inactive)
        .send()
        .await
        .unwrap();
    let found = identify::identify(&iam, &sts, &s.app_key.access_key_id, own.as_deref()).await.unwrap();
    assert_eq!(found.owner.key_status.as_deref(), Some("Inactive"));

    // Malformed id: refused before any call, with the reason.
    let err = identify::identify(&iam, &sts, "AIDA1234567890ABCDEF", own.as_deref()).await.unwrap_err();
    assert!(matches!(err, IdentifyError::InvalidKey(_)) && err.to_string().contains("user id"), "{err}");

    // Running with the compromised key itself.
    let (app_iam, app_sts, app_sdk) = clients(&moto, &s.app_key);
    let app_own = identify::own_key_id(&app_sdk).await;
    let err = identify::identify(&app_iam, &app_sts, &s.app_key.access_key_id, app_own.as_deref()).await.unwrap_err();
    assert!(matches!(err, IdentifyError::RunningWithCompromisedKey(_)), "{err}");
    assert!(!err.to_string().contains('\n') && err.to_string().contains("another principal"), "{err}");

    // Running as the owner, with its other key.
    let second = iam.create_access_key().user_name(&s.app_user).send().await.unwrap();
    let second = second.access_key().unwrap();
    let owner_creds = Creds::new(second.access_key_id(), second.secret_access_key());
    let (o_iam, o_sts, o_sdk) = clients(&moto, &owner_creds);
    let o_own = identify::own_key_id(&o_sdk).await;
    let err = identify::identify(&o_iam, &o_sts, &s.app_key.access_key_id, o_own.as_deref()).await.unwrap_err();
    assert!(matches!(err, IdentifyError::RunningAsOwner { .. }), "{err}");
    assert!(err.to_string().contains("app-integration-user") && err.to_string().contains("another principal"));

    // Quarantine attached to the user.
    let arn = quarantine_policy(&iam).await;
    iam.attach_user_policy().user_name(&s.app_user).policy_arn(&arn).send().await.unwrap();
    let found = identify::identify(&iam, &sts, &s.app_key.access_key_id, own.as_deref()).await.unwrap();
    assert_eq!(found.owner.quarantine_policies, ["AWSCompromisedKeyQuarantineV2"]);
    assert_eq!(found.quarantine_explained.len(), 1);
    let text = &found.quarantine_explained[0];
    assert!(text.contains("iam:CreateAccessKey") && text.contains("cloudtrail:LookupEvents"), "{text}");
    assert!(text.contains("another (admin) principal"), "{text}");

    // Quarantine through a group only.
    iam.detach_user_policy().user_name(&s.app_user).policy_arn(&arn).send().await.unwrap();
    iam.create_group().group_name("integrations").send().await.unwrap();
    iam.attach_group_policy().group_name("integrations").policy_arn(&arn).send().await.unwrap();
    iam.add_user_to_group().group_name("integrations").user_name(&s.app_user).send().await.unwrap();
    let found = identify::identify(&iam, &sts, &s.app_key.access_key_id, own.as_deref()).await.unwrap();
    assert_eq!(found.owner.quarantine_policies, ["AWSCompromisedKeyQuarantineV2"]);
    assert!(found.quarantine_explained[0].contains("group integrations"), "{:?}", found.quarantine_explained);

    // A key IAM no longer has: the owner is unknown, the investigation can still go on.
    iam.delete_access_key().user_name(&s.app_user).access_key_id(&s.app_key.access_key_id).send().await.unwrap();
    let found = identify::identify(&iam, &sts, &s.app_key.access_key_id, own.as_deref()).await.unwrap();
    assert!(found.owner.user.is_none() || found.owner.key_status.as_deref() == Some("unknown"), "{:?}", found.owner);
    assert!(!found.warnings.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_and_revocations_land_on_the_right_principal() {
    let moto = Moto::start();
    let (s, iam, _, _) = setup(&moto).await;

    // Fence: put, read back, removed, removal idempotent.
    let sources = vec![rekey::incident::model::FenceSource {
        kind: "ip".into(),
        value: "203.0.113.10".into(),
        events: 3,
        first_seen: None,
        last_seen: None,
    }];
    let policy = fence::fence_policy(&sources).unwrap();
    fence::apply(&iam, &s.app_user, &policy).await.unwrap();
    let got = iam.get_user_policy().user_name(&s.app_user).policy_name(fence::POLICY_NAME).send().await.unwrap();
    assert_eq!(decode(got.policy_document()), policy);
    fence::remove(&iam, &s.app_user).await.unwrap();
    assert!(iam.get_user_policy().user_name(&s.app_user).policy_name(fence::POLICY_NAME).send().await.is_err());
    fence::remove(&iam, &s.app_user).await.unwrap();

    // The all-in-one path reports and refuses a deny-all.
    let report = fence::fence_user(&iam, &s.app_user, false, &[], vec![], &[]).await;
    assert_eq!(report.status, "not_possible");
    assert!(iam.get_user_policy().user_name(&s.app_user).policy_name(fence::POLICY_NAME).send().await.is_err());
    let report =
        fence::fence_user(&iam, &s.app_user, false, &sources, vec!["198.51.100.50: attacker".into()], &[]).await;
    assert_eq!(report.status, "applied", "{report:?}");
    assert_eq!(report.policy_name.as_deref(), Some(fence::POLICY_NAME));
    fence::remove(&iam, &s.app_user).await.unwrap();

    // Revoke a user's sessions.
    let at = SystemTime::now();
    let r = revoke::revoke_user(&iam, &s.app_user, at).await;
    assert_eq!((r.kind.as_str(), r.status.as_str(), r.policy_name.as_str()), ("user", "revoked", revoke::POLICY_NAME));
    let got = iam.get_user_policy().user_name(&s.app_user).policy_name(revoke::POLICY_NAME).send().await.unwrap();
    assert_eq!(decode(got.policy_document()), revoke::revoke_policy(at));
    assert!(revoke::remove_user(&iam, &s.app_user).await.unwrap());
    assert!(!revoke::remove_user(&iam, &s.app_user).await.unwrap());

    // Revoke a role's sessions, named by the ARN of a session that assumed it.
    let trust = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]
    });
    let role = iam
        .create_role()
        .role_name("deploy")
        .path("/ci/")
        .assume_role_policy_document(trust.to_string())
        .send()
        .await
        .unwrap();
    let account = role.role().unwrap().arn().split(':').nth(4).unwrap().to_string();
    let at = SystemTime::now() + Duration::from_millis(1);
    let session = format!("arn:aws:sts::{account}:assumed-role/deploy/attacker-session");
    let r = revoke::revoke_role(&iam, &session, at).await;
    assert_eq!((r.kind.as_str(), r.name.as_str(), r.status.as_str()), ("role", "deploy", "revoked"));
    let got = iam.get_role_policy().role_name("deploy").policy_name(revoke::POLICY_NAME).send().await.unwrap();
    assert_eq!(decode(got.policy_document()), revoke::revoke_policy(at));
    assert!(revoke::remove_role(&iam, role.role().unwrap().arn()).await.unwrap());
    assert!(iam.get_role_policy().role_name("deploy").policy_name(revoke::POLICY_NAME).send().await.is_err());

    // A role that does not exist: reported in the status, no panic.
    let r = revoke::revoke_role(&iam, "arn:aws:iam::123456789012:role/missing", at).await;
    assert!(r.status.starts_with("failed") && r.status.contains("NoSuchEntity"), "{}", r.status);
}
