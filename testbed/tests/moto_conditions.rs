//! Patch 5 of the launcher: with auth on, moto evaluates identity-policy conditions the way IAM
//! does, so the incident fence and the session revocation lock the attacker out while the
//! application keeps working. A test calls "from" another IP with an `X-Forwarded-For` header,
//! which the patched moto reads as `aws:SourceIp` (real AWS ignores it).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_iam::error::ProvideErrorMetadata;
use aws_sdk_iam::primitives::{DateTime, DateTimeFormat};
use serde_json::{Value, json};
use testbed::moto::{ADMIN_USER, create_user};
use testbed::{Moto, seed};

const ATTACKER_IP: &str = "198.51.100.50";

/// The error code of a call that must fail (IAM and STS errors share the smithy error type).
fn code<T: std::fmt::Debug, E: ProvideErrorMetadata, R>(
    result: Result<T, aws_sdk_iam::error::SdkError<E, R>>,
) -> String {
    match result {
        Ok(out) => panic!("expected an error, got {out:?}"),
        Err(e) => e.as_service_error().and_then(|s| s.code()).map(str::to_string).unwrap_or_else(|| "<no code>".into()),
    }
}

fn fence(allowed: &[&str]) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "RekeyIncidentFence",
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
            "Condition": {
                "NotIpAddress": {"aws:SourceIp": allowed},
                "StringNotEqualsIfExists": {"aws:SourceVpc": ["vpc-0app"], "aws:SourceVpce": ["vpce-0app"]},
                "Bool": {"aws:ViaAWSService": "false"}
            }
        }]
    })
}

fn allow_all() -> Value {
    json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
}

fn statement(effect: &str, condition: Value) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": effect, "Action": "*", "Resource": "*", "Condition": condition}]
    })
}

async fn put_user_policy(iam: &aws_sdk_iam::Client, user: &str, name: &str, doc: &Value) {
    iam.put_user_policy()
        .user_name(user)
        .policy_name(name)
        .policy_document(doc.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("PutUserPolicy {user}/{name}: {e:?}"));
}

async fn delete_user_policy(iam: &aws_sdk_iam::Client, user: &str, name: &str) {
    iam.delete_user_policy()
        .user_name(user)
        .policy_name(name)
        .send()
        .await
        .unwrap_or_else(|e| panic!("DeleteUserPolicy {user}/{name}: {e:?}"));
}

async fn list_users_from(iam: &aws_sdk_iam::Client, ip: &'static str) -> Result<(), String> {
    iam.list_users()
        .customize()
        .mutate_request(move |req| {
            req.headers_mut().insert("X-Forwarded-For", ip);
        })
        .send()
        .await
        .map(|_| ())
        .map_err(|e| code(Err::<(), _>(e)))
}

#[tokio::test]
async fn fence_denies_the_attacker_ip_but_not_the_app() {
    let moto = Moto::start();
    let seeded = seed(&moto).await;
    let admin = aws_sdk_iam::Client::new(&moto.sdk_config(&seeded.admin));
    moto.set_auth(true).await;

    let app = create_user(&moto, &seeded.admin, "fenced-app", &["*"]).await;
    put_user_policy(&admin, "fenced-app", "rekey-incident-fence", &fence(&["127.0.0.1/32", "203.0.113.0/24"])).await;
    let iam = aws_sdk_iam::Client::new(&moto.sdk_config(&app));
    let sts = aws_sdk_sts::Client::new(&moto.sdk_config(&app));

    // The app calls from loopback, inside the fence: nothing changes for it.
    sts.get_caller_identity().send().await.expect("app GetCallerIdentity behind the fence");
    iam.list_users().send().await.expect("app ListUsers behind the fence");
    list_users_from(&iam, "203.0.113.9").await.expect("another allowed address");

    // The same key from the attacker's address is denied...
    assert_eq!(list_users_from(&iam, ATTACKER_IP).await, Err("AccessDenied".to_string()));
    // ...except GetCallerIdentity, which needs no permission in AWS either.
    sts.get_caller_identity()
        .customize()
        .mutate_request(|req| {
            req.headers_mut().insert("X-Forwarded-For", "198.51.100.50, 10.0.0.1");
        })
        .send()
        .await
        .expect("GetCallerIdentity is never denied");

    // Lifting the fence lets the attacker's address in again: the deny came from the fence.
    delete_user_policy(&admin, "fenced-app", "rekey-incident-fence").await;
    list_users_from(&iam, ATTACKER_IP).await.expect("no fence, no deny");

    moto.set_auth(false).await;
}

#[tokio::test]
async fn revocation_denies_older_sessions_only() {
    let moto = Moto::start();
    let seeded = seed(&moto).await;
    let admin = aws_sdk_iam::Client::new(&moto.sdk_config(&seeded.admin));
    let account = aws_sdk_sts::Client::new(&moto.sdk_config(&seeded.admin))
        .get_caller_identity()
        .send()
        .await
        .expect("admin identity")
        .account()
        .expect("account")
        .to_string();
    moto.set_auth(true).await;

    let user = create_user(&moto, &seeded.admin, "long-term", &["*"]).await;
    let trust = json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"AWS": format!("arn:aws:iam::{account}:user/{ADMIN_USER}")},
            "Action": "sts:AssumeRole"
        }]
    });
    let role_arn = admin
        .create_role()
        .role_name("app-role")
        .assume_role_policy_document(trust.to_string())
        .send()
        .await
        .expect("CreateRole")
        .role()
        .expect("role")
        .arn()
        .to_string();
    admin
        .put_role_policy()
        .role_name("app-role")
        .policy_name("allow-all")
        .policy_document(allow_all().to_string())
        .send()
        .await
        .expect("PutRolePolicy allow");

    let sts_admin = aws_sdk_sts::Client::new(&moto.sdk_config(&seeded.admin));
    let assume = |name: &'static str| {
        let sts_admin = sts_admin.clone();
        let role_arn = role_arn.clone();
        let moto_config = moto.sdk_config(&seeded.admin);
        async move {
            let out =
                sts_admin.assume_role().role_arn(role_arn).role_session_name(name).send().await.expect("AssumeRole");
            let c = out.credentials().expect("session credentials");
            let creds = Credentials::new(
                c.access_key_id(),
                c.secret_access_key(),
                Some(c.session_token().to_string()),
                None,
                "assumed",
            );
            let config = moto_config.to_builder().credentials_provider(SharedCredentialsProvider::new(creds)).build();
            aws_sdk_iam::Client::new(&config)
        }
    };

    let old_session = assume("before-revocation").await;
    old_session.list_users().send().await.expect("a fresh session works");

    // Revoke every token issued before a whole second at least 1 s ahead (the old session's issue
    // time is behind it), then wait past it for the new session. Same clock as moto: same machine.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    let revoke_at = now + 2;
    let revocation = statement(
        "Deny",
        json!({"DateLessThan": {"aws:TokenIssueTime": DateTime::from_secs(revoke_at as i64).fmt(DateTimeFormat::DateTime).expect("format")}}),
    );
    put_user_policy(&admin, "long-term", "rekey-revoke-sessions", &revocation).await;
    admin
        .put_role_policy()
        .role_name("app-role")
        .policy_name("rekey-revoke-sessions")
        .policy_document(revocation.to_string())
        .send()
        .await
        .expect("PutRolePolicy revocation");
    let wait = UNIX_EPOCH + Duration::from_secs(revoke_at) + Duration::from_millis(300);
    tokio::time::sleep(wait.duration_since(SystemTime::now()).unwrap_or_default()).await;
    let new_session = assume("after-revocation").await;

    // A long-term key has no aws:TokenIssueTime: DateLessThan is false and the Deny does not apply.
    aws_sdk_iam::Client::new(&moto.sdk_config(&user)).list_users().send().await.expect("long-term key unaffected");
    assert_eq!(code(old_session.list_users().send().await), "AccessDenied");
    new_session.list_users().send().await.expect("a session issued after the revocation works");

    moto.set_auth(false).await;
}

#[tokio::test]
async fn a_condition_that_does_not_hold_makes_the_statement_not_apply() {
    let moto = Moto::start();
    let seeded = seed(&moto).await;
    let admin = aws_sdk_iam::Client::new(&moto.sdk_config(&seeded.admin));
    moto.set_auth(true).await;

    // No inline policy from create_user: each case below installs exactly one.
    let user = create_user(&moto, &seeded.admin, "conditional", &["sts:GetCallerIdentity"]).await;
    delete_user_policy(&admin, "conditional", "conditional-inline").await;
    let iam = aws_sdk_iam::Client::new(&moto.sdk_config(&user));

    // An Allow whose condition fails allows nothing (moto used to ignore the condition).
    put_user_policy(
        &admin,
        "conditional",
        "p",
        &statement("Allow", json!({"StringEquals": {"aws:username": "someone-else"}})),
    )
    .await;
    assert_eq!(code(iam.list_users().send().await), "AccessDenied");
    // The same Allow with a condition that holds allows.
    put_user_policy(
        &admin,
        "conditional",
        "p",
        &statement("Allow", json!({"StringEquals": {"aws:username": "conditional"}})),
    )
    .await;
    iam.list_users().send().await.expect("Allow with a holding condition");
    // A key absent from the request context fails a positive operator.
    put_user_policy(
        &admin,
        "conditional",
        "p",
        &statement("Allow", json!({"StringEquals": {"aws:SourceVpc": "vpc-1"}})),
    )
    .await;
    assert_eq!(code(iam.list_users().send().await), "AccessDenied");

    // A Deny whose condition fails does not deny (moto used to deny regardless).
    put_user_policy(&admin, "conditional", "p", &allow_all()).await;
    put_user_policy(&admin, "conditional", "d", &statement("Deny", json!({"StringLike": {"aws:username": "other-*"}})))
        .await;
    iam.list_users().send().await.expect("a Deny whose condition fails does not apply");
    put_user_policy(&admin, "conditional", "d", &statement("Deny", json!({"StringLike": {"aws:username": "cond*"}})))
        .await;
    assert_eq!(code(iam.list_users().send().await), "AccessDenied");
    // Null: no session token on a long-term key, so aws:TokenIssueTime is absent.
    put_user_policy(&admin, "conditional", "d", &statement("Deny", json!({"Null": {"aws:TokenIssueTime": "false"}})))
        .await;
    iam.list_users().send().await.expect("Null false on an absent key does not hold");

    moto.set_auth(false).await;
}

#[tokio::test]
async fn trust_policy_external_id_still_checked() {
    let moto = Moto::start();
    let seeded = seed(&moto).await;
    let admin = aws_sdk_iam::Client::new(&moto.sdk_config(&seeded.admin));
    moto.set_auth(true).await;

    let trust = json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"AWS": "*"},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"sts:ExternalId": "rekey-ext"}}
        }]
    });
    let role_arn = admin
        .create_role()
        .role_name("external")
        .assume_role_policy_document(trust.to_string())
        .send()
        .await
        .expect("CreateRole")
        .role()
        .expect("role")
        .arn()
        .to_string();
    let sts = aws_sdk_sts::Client::new(&moto.sdk_config(&seeded.admin));
    let wrong = sts.assume_role().role_arn(&role_arn).role_session_name("s").external_id("wrong").send().await;
    assert_eq!(code(wrong), "AccessDenied");
    let missing = sts.assume_role().role_arn(&role_arn).role_session_name("s").send().await;
    assert_eq!(code(missing), "AccessDenied");
    sts.assume_role()
        .role_arn(&role_arn)
        .role_session_name("s")
        .external_id("rekey-ext")
        .send()
        .await
        .expect("AssumeRole with the right external id");

    moto.set_auth(false).await;
}
