//! The test bed's own guarantees: with auth on, moto rejects what AWS rejects, and the
//! Rust SDK sees the error codes rekey branches on.

use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use testbed::moto::create_user;
use testbed::{Creds, Moto, seed};

fn sts_code<E: ProvideErrorMetadata>(e: &aws_sdk_sts::error::SdkError<E>) -> Option<String> {
    e.as_service_error().and_then(|s| s.code().map(str::to_string))
}

#[tokio::test]
async fn auth_enforcement_matches_aws() {
    let moto = Moto::start();
    let seeded = seed(&moto).await;
    let iam = aws_sdk_iam::Client::new(&moto.sdk_config(&seeded.admin));
    moto.set_auth(true).await;

    // A good key works and is identified as its owner.
    let sts_app = aws_sdk_sts::Client::new(&moto.sdk_config(&seeded.app_key));
    let arn = sts_app.get_caller_identity().send().await.expect("good key");
    assert!(arn.arn().unwrap_or_default().ends_with(":user/app-integration-user"));

    // Patch 1: an Inactive key is rejected, and works again once reactivated.
    iam.update_access_key()
        .user_name(&seeded.app_user)
        .access_key_id(&seeded.app_key.access_key_id)
        .status(aws_sdk_iam::types::StatusType::Inactive)
        .send()
        .await
        .expect("deactivate");
    let err = sts_app.get_caller_identity().send().await.expect_err("inactive key accepted");
    assert_eq!(sts_code(&err).as_deref(), Some("InvalidClientTokenId"), "{err:?}");
    iam.update_access_key()
        .user_name(&seeded.app_user)
        .access_key_id(&seeded.app_key.access_key_id)
        .status(aws_sdk_iam::types::StatusType::Active)
        .send()
        .await
        .expect("reactivate");
    sts_app.get_caller_identity().send().await.expect("reactivated key");

    // A wrong secret is a signature error.
    let wrong = Creds::new(seeded.app_key.access_key_id.clone(), "not-the-secret");
    let sts_wrong = aws_sdk_sts::Client::new(&moto.sdk_config(&wrong));
    let err = sts_wrong.get_caller_identity().send().await.expect_err("wrong secret");
    assert_eq!(sts_code(&err).as_deref(), Some("SignatureDoesNotMatch"));

    // Patch 2: a JSON-protocol service reports the auth error with a code.
    let unknown = Creds::new("AKIAUNKNOWNKEY000000", "whatever");
    let sm = aws_sdk_secretsmanager::Client::new(&moto.sdk_config(&unknown));
    let err = sm.list_secrets().send().await.expect_err("unknown key accepted");
    let code = err.as_service_error().and_then(|e| e.code().map(str::to_string));
    assert_eq!(code.as_deref(), Some("InvalidClientTokenId"), "{err:?}");
    let sm = aws_sdk_secretsmanager::Client::new(&moto.sdk_config(&wrong));
    let err = sm.list_secrets().send().await.expect_err("wrong secret accepted");
    let code = err.as_service_error().and_then(|e| e.code().map(str::to_string));
    assert_eq!(code.as_deref(), Some("SignatureDoesNotMatch"), "{err:?}");

    // Policies are enforced: the app user may not manage secrets, the admin may.
    let sm_app = aws_sdk_secretsmanager::Client::new(&moto.sdk_config(&seeded.app_key));
    let err = sm_app.list_secrets().send().await.expect_err("app user listed secrets");
    let code = err.as_service_error().and_then(|e| e.code().map(str::to_string));
    assert_eq!(code.as_deref(), Some("AccessDenied"), "{err:?}");
    let sm_admin = aws_sdk_secretsmanager::Client::new(&moto.sdk_config(&seeded.admin));
    sm_admin.list_secrets().send().await.expect("admin lists secrets");

    // Users created through the admin while auth is on work too.
    let platform = create_user(&moto, &seeded.admin, "platform", &["secretsmanager:*"]).await;
    aws_sdk_secretsmanager::Client::new(&moto.sdk_config(&platform))
        .list_secrets()
        .send()
        .await
        .expect("platform user lists secrets");

    moto.set_auth(false).await;
}
