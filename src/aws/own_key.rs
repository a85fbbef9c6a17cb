//! `rekey rotate --self`: the caller rotates the key it runs with, as aws-vault and
//! aws-rotate-key do for a developer's own `~/.aws/credentials`.
//!
//! The rotation is the ordinary state machine and journal; what differs is which key signs each
//! IAM call ([`Signer`]): the old key creates the new one; once the targets hold the new key,
//! the new key signs (deactivate, delete, tags), because the old one is about to stop working;
//! a rollback signs with the old key while it is still Active. After a crash `resume --self`
//! signs with whichever key the file then holds: either can finish or undo the rotation.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use rekey_adapters::{NewKey, TargetSpec};

use crate::rotate::iam::{AwsIam, Caller, Iam, IamError, KeyInfo, KeyStatus, LastUsed, Signer};

/// The policies AWS attaches to a user whose key it found leaked; they deny CreateAccessKey.
const QUARANTINE_PREFIX: &str = "AWSCompromisedKeyQuarantine";

/// The key rekey runs with, and where it came from.
#[derive(Debug)]
pub struct OwnKey {
    pub user: String,
    pub key_id: String,
    /// Where to write the new key when no `--target` is given: the profile the key was read from.
    pub default_target: Option<TargetSpec>,
}

/// Finds the caller's own long-term key and refuses what cannot be rotated by itself: temporary
/// credentials (SSO, roles, sessions), environment variables with nowhere to write the new key,
/// principals that are not IAM users, and quarantined users.
pub async fn locate(sdk: &aws_types::SdkConfig, profile: Option<&str>, have_targets: bool) -> Result<OwnKey, String> {
    let provider =
        sdk.credentials_provider().ok_or("no AWS credentials found; configure a profile with your access key")?;
    let creds = provider
        .provide_credentials()
        .await
        .map_err(|e| format!("cannot load your AWS credentials ({}); check the profile", crate::aws::chain(&e)))?;
    let key_id = creds.access_key_id().to_string();
    if creds.session_token().is_some() || key_id.starts_with("ASIA") {
        return Err(format!(
            "rekey runs with temporary credentials ({key_id}, from SSO, a role or a session): they have no access key to rotate; pass --profile with the profile that holds your long-term key"
        ));
    }
    let from_env = std::env::var("AWS_ACCESS_KEY_ID").is_ok_and(|v| v == key_id);
    if from_env && profile.is_none() && !have_targets {
        return Err("your key comes from the AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY environment variables, which rekey cannot rewrite; keep it in a credentials profile, or name the file the variables are loaded from with --target env:<path>".into());
    }
    let default_target = if have_targets {
        None
    } else {
        let name = profile
            .map(str::to_string)
            .or_else(|| std::env::var("AWS_PROFILE").ok().filter(|p| !p.is_empty()))
            .unwrap_or_else(|| "default".into());
        let file = match std::env::var_os("AWS_SHARED_CREDENTIALS_FILE").filter(|f| !f.is_empty()) {
            Some(f) => std::path::PathBuf::from(f),
            None => match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
                Some(home) => std::path::PathBuf::from(home).join(".aws/credentials"),
                None => {
                    return Err(
                        "no HOME to find ~/.aws/credentials in; name the file with --target profile:<name>@<path>"
                            .into(),
                    );
                }
            },
        };
        let spec = format!("profile:{name}@{}", file.display());
        Some(spec.parse().map_err(|e: rekey_adapters::SpecError| {
            format!("{e}; name the file with --target profile:<name>@<path>")
        })?)
    };

    let caller = AwsIam::new(sdk)
        .caller()
        .await
        .map_err(|e| format!("cannot tell who rekey runs as: {e}; check your AWS credentials"))?;
    let Some(user) = caller.user_name.clone() else {
        return Err(if caller.arn.ends_with(":root") {
            "rekey runs with the account's root user key: root keys should not exist at all; delete it in the console (Security credentials) and use an IAM user".to_string()
        } else {
            format!("rekey runs as {}, which is not an IAM user: only IAM users have access keys to rotate", caller.arn)
        });
    };
    // A denied lookup says nothing: CreateAccessKey will tell.
    let attached = aws_sdk_iam::Client::new(sdk).list_attached_user_policies().user_name(&user).send().await;
    if let Ok(out) = attached
        && let Some(q) =
            out.attached_policies().iter().filter_map(|p| p.policy_name()).find(|n| n.starts_with(QUARANTINE_PREFIX))
    {
        return Err(format!(
            "{user} is under {q}, the policy AWS attaches to leaked keys: it denies CreateAccessKey, so this key cannot rotate itself; respond from another principal with `rekey incident --access-key {key_id}`"
        ));
    }
    Ok(OwnKey { user, key_id, default_target })
}

/// IAM signed by the caller's own keys: the old one until the machine says [`Signer::New`].
pub struct SelfIam {
    sdk: aws_types::SdkConfig,
    old: Arc<AwsIam>,
    /// Built from the new key's secret when it is created; the secret lives only in memory.
    new: Mutex<Option<Arc<AwsIam>>>,
    signer: Mutex<Signer>,
}

impl SelfIam {
    pub fn new(sdk: &aws_types::SdkConfig) -> Self {
        SelfIam {
            sdk: sdk.clone(),
            old: Arc::new(AwsIam::new(sdk)),
            new: Mutex::new(None),
            signer: Mutex::new(Signer::Old),
        }
    }

    fn signing(&self) -> Arc<AwsIam> {
        let signer = *self.signer.lock().unwrap_or_else(|p| p.into_inner());
        let new = self.new.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match (signer, new) {
            (Signer::New, Some(new)) => new,
            // `resume --self` has one key only, whichever the file holds: it signs everything.
            _ => self.old.clone(),
        }
    }
}

#[async_trait]
impl Iam for SelfIam {
    async fn caller(&self) -> Result<Caller, IamError> {
        self.signing().caller().await
    }
    async fn list_keys(&self, user: &str) -> Result<Vec<KeyInfo>, IamError> {
        self.signing().list_keys(user).await
    }
    async fn last_used(&self, key_id: &str) -> Result<LastUsed, IamError> {
        self.signing().last_used(key_id).await
    }
    async fn create_key(&self, user: &str) -> Result<NewKey, IamError> {
        let key = self.signing().create_key(user).await?;
        // Credentials keeps its copy of the secret in a Zeroizing<String>.
        let creds =
            Credentials::new(key.access_key_id.clone(), key.secret().to_string(), None, None, "rekey-own-new-key");
        let sdk = self.sdk.to_builder().credentials_provider(SharedCredentialsProvider::new(creds)).build();
        *self.new.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(AwsIam::new(&sdk)));
        Ok(key)
    }
    async fn set_status(&self, user: &str, key_id: &str, status: KeyStatus) -> Result<(), IamError> {
        self.signing().set_status(user, key_id, status).await
    }
    async fn delete_key(&self, user: &str, key_id: &str) -> Result<(), IamError> {
        self.signing().delete_key(user, key_id).await
    }
    async fn tag_key(&self, user: &str, key_id: &str, description: &str) -> Result<(), IamError> {
        self.signing().tag_key(user, key_id, description).await
    }
    async fn untag_key(&self, user: &str, key_id: &str) -> Result<(), IamError> {
        self.signing().untag_key(user, key_id).await
    }

    async fn user_tags(&self, user: &str) -> Result<Vec<(String, String)>, IamError> {
        self.signing().user_tags(user).await
    }
    fn sign_with(&self, signer: Signer) {
        *self.signer.lock().unwrap_or_else(|p| p.into_inner()) = signer;
    }
}
