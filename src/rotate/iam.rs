//! IAM access-key lifecycle and the "does this key work" check, behind traits so that the rotation
//! can be driven through every failure in tests.

use std::time::SystemTime;

use async_trait::async_trait;
use aws_credential_types::Credentials;
use aws_sdk_iam::error::ProvideErrorMetadata;
use aws_sdk_iam::types::StatusType;
use rekey_adapters::NewKey;
use secrecy::SecretString;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum KeyStatus {
    Active,
    Inactive,
}

impl std::fmt::Display for KeyStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyStatus::Active => "Active",
            KeyStatus::Inactive => "Inactive",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: String,
    pub status: KeyStatus,
    pub created: Option<SystemTime>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LastUsed {
    pub date: Option<SystemTime>,
    pub service: Option<String>,
    pub region: Option<String>,
}

impl std::fmt::Display for LastUsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.date {
            None => f.write_str("never used"),
            Some(d) => {
                write!(f, "last used {}", rekey_trail::time::format(d))?;
                if let Some(s) = self.service.as_deref().filter(|s| *s != "N/A") {
                    write!(f, " ({s}")?;
                    if let Some(r) = self.region.as_deref().filter(|r| *r != "N/A") {
                        write!(f, " in {r}")?;
                    }
                    f.write_str(")")?;
                }
                Ok(())
            }
        }
    }
}

/// Who rekey itself runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub arn: String,
    pub account: String,
    /// The IAM user name when the caller is an IAM user (not a role session or root).
    pub user_name: Option<String>,
}

impl Caller {
    pub fn from_arn(arn: &str, account: &str) -> Caller {
        let user_name = arn.split_once(":user/").map(|(_, path)| path.rsplit('/').next().unwrap_or(path).to_string());
        Caller { arn: arn.to_string(), account: account.to_string(), user_name }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IamError {
    #[error("no IAM user named {0:?}")]
    NoSuchUser(String),
    #[error("no access key {0} on that user")]
    NoSuchKey(String),
    #[error("the user already has 2 access keys (IAM's limit)")]
    LimitExceeded,
    #[error("access denied: {0}")]
    AccessDenied(String),
    #[error("{0}")]
    Other(String),
}

impl IamError {
    /// IAM answered and refused: the call changed nothing. `Other` covers server errors and lost
    /// answers, after which a call may or may not have taken effect.
    pub fn created_nothing(&self) -> bool {
        !matches!(self, IamError::Other(_))
    }
}

/// Which of the two keys signs a rotation's IAM calls when rekey rotates its own key
/// (`rotate --self`): the machine says when the answer changes, the [`Iam`] acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    /// The key being replaced: it creates the new key, and undoes while it is still Active.
    Old,
    /// The new key, once the targets hold it: the old one is about to stop working.
    New,
}

/// The IAM calls a rotation makes, all signed by the rotating principal.
#[async_trait]
pub trait Iam: Send + Sync {
    async fn caller(&self) -> Result<Caller, IamError>;
    async fn list_keys(&self, user: &str) -> Result<Vec<KeyInfo>, IamError>;
    async fn last_used(&self, key_id: &str) -> Result<LastUsed, IamError>;
    async fn create_key(&self, user: &str) -> Result<NewKey, IamError>;
    async fn set_status(&self, user: &str, key_id: &str, status: KeyStatus) -> Result<(), IamError>;
    async fn delete_key(&self, user: &str, key_id: &str) -> Result<(), IamError>;
    /// Describe a key the way the console does: a user tag whose key is the access key id.
    async fn tag_key(&self, user: &str, key_id: &str, description: &str) -> Result<(), IamError>;
    async fn untag_key(&self, user: &str, key_id: &str) -> Result<(), IamError>;
    /// The user's tags (key, value); those keyed by an access key id describe that key.
    async fn user_tags(&self, user: &str) -> Result<Vec<(String, String)>, IamError>;
    /// Sign the next calls with this key. Only an `Iam` that holds the rotated key itself (the
    /// caller's own) has two to choose from; every other principal signs with its own.
    fn sign_with(&self, _signer: Signer) {}
}

/// What one check of a key answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The endpoint knows the key.
    Accepted,
    /// The endpoint refused the key (the error code): it has not learnt it yet, or it was revoked.
    Rejected(String),
    /// No verdict about the key: throttled, a server error, a timeout, a broken connection.
    Inconclusive(String),
}

/// Signs `sts:GetCallerIdentity` with a key: the only reliable "does it work yet" test, since it
/// needs no permission and fails for a key that has not propagated or was deactivated.
#[async_trait]
pub trait KeyCheck: Send + Sync {
    /// The Regions whose endpoints are checked, by name (for messages); never empty.
    fn regions(&self) -> Vec<String>;
    /// One call signed with `key` to the endpoint of `regions()[region]`, on a connection of its
    /// own: IAM reaches the hosts behind an endpoint one by one, and a pooled connection would ask
    /// the same host every time.
    async fn check(&self, key: &NewKey, region: usize) -> Answer;
}

pub struct AwsIam {
    iam: aws_sdk_iam::Client,
    sts: aws_sdk_sts::Client,
}

impl AwsIam {
    pub fn new(sdk: &aws_types::SdkConfig) -> Self {
        AwsIam { iam: aws_sdk_iam::Client::new(sdk), sts: aws_sdk_sts::Client::new(sdk) }
    }
}

fn iam_error<E>(err: aws_sdk_iam::error::SdkError<E>, user: &str, key_id: Option<&str>) -> IamError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match err.code() {
        Some("NoSuchEntity") => match key_id {
            Some(k) if err.message().is_some_and(|m| m.contains(k)) => IamError::NoSuchKey(k.to_string()),
            _ => IamError::NoSuchUser(user.to_string()),
        },
        Some("LimitExceeded") => IamError::LimitExceeded,
        Some(code)
            if code.starts_with("AccessDenied")
                || code == "InvalidClientTokenId"
                || code == "SignatureDoesNotMatch" =>
        {
            IamError::AccessDenied(err.message().unwrap_or(code).to_string())
        }
        _ => IamError::Other(crate::aws::error_text(&err)),
    }
}

fn to_system_time(t: &aws_sdk_iam::primitives::DateTime) -> Option<SystemTime> {
    SystemTime::try_from(*t).ok()
}

#[async_trait]
impl Iam for AwsIam {
    async fn caller(&self) -> Result<Caller, IamError> {
        let out = self.sts.get_caller_identity().send().await.map_err(|e| match e.code() {
            Some(code) => IamError::AccessDenied(format!("{code}: {}", e.message().unwrap_or("no message"))),
            None => IamError::Other(crate::aws::chain(&e)),
        })?;
        Ok(Caller::from_arn(out.arn().unwrap_or_default(), out.account().unwrap_or_default()))
    }

    async fn list_keys(&self, user: &str) -> Result<Vec<KeyInfo>, IamError> {
        let out = self.iam.list_access_keys().user_name(user).send().await.map_err(|e| iam_error(e, user, None))?;
        Ok(out
            .access_key_metadata()
            .iter()
            .map(|k| KeyInfo {
                id: k.access_key_id().unwrap_or_default().to_string(),
                status: match k.status() {
                    Some(StatusType::Active) => KeyStatus::Active,
                    _ => KeyStatus::Inactive,
                },
                created: k.create_date().and_then(to_system_time),
            })
            .collect())
    }

    async fn last_used(&self, key_id: &str) -> Result<LastUsed, IamError> {
        let out = self
            .iam
            .get_access_key_last_used()
            .access_key_id(key_id)
            .send()
            .await
            .map_err(|e| iam_error(e, "", Some(key_id)))?;
        let used = out.access_key_last_used();
        Ok(LastUsed {
            date: used.and_then(|u| u.last_used_date()).and_then(to_system_time),
            service: used.map(|u| u.service_name().to_string()),
            region: used.map(|u| u.region().to_string()),
        })
    }

    async fn create_key(&self, user: &str) -> Result<NewKey, IamError> {
        let out = self.iam.create_access_key().user_name(user).send().await.map_err(|e| iam_error(e, user, None))?;
        let key = out.access_key().ok_or_else(|| IamError::Other("CreateAccessKey returned no key".into()))?;
        Ok(NewKey::new(key.access_key_id(), SecretString::from(key.secret_access_key().to_string())))
    }

    async fn set_status(&self, user: &str, key_id: &str, status: KeyStatus) -> Result<(), IamError> {
        let status = match status {
            KeyStatus::Active => StatusType::Active,
            KeyStatus::Inactive => StatusType::Inactive,
        };
        self.iam
            .update_access_key()
            .user_name(user)
            .access_key_id(key_id)
            .status(status)
            .send()
            .await
            .map_err(|e| iam_error(e, user, Some(key_id)))?;
        Ok(())
    }

    async fn delete_key(&self, user: &str, key_id: &str) -> Result<(), IamError> {
        self.iam
            .delete_access_key()
            .user_name(user)
            .access_key_id(key_id)
            .send()
            .await
            .map_err(|e| iam_error(e, user, Some(key_id)))?;
        Ok(())
    }

    async fn tag_key(&self, user: &str, key_id: &str, description: &str) -> Result<(), IamError> {
        let tag = aws_sdk_iam::types::Tag::builder()
            .key(key_id)
            .value(description)
            .build()
            .map_err(|e| IamError::Other(e.to_string()))?;
        self.iam.tag_user().user_name(user).tags(tag).send().await.map_err(|e| iam_error(e, user, None))?;
        Ok(())
    }

    async fn untag_key(&self, user: &str, key_id: &str) -> Result<(), IamError> {
        self.iam.untag_user().user_name(user).tag_keys(key_id).send().await.map_err(|e| iam_error(e, user, None))?;
        Ok(())
    }

    async fn user_tags(&self, user: &str) -> Result<Vec<(String, String)>, IamError> {
        // IAM allows 50 tags a user: one page of 100 holds them all.
        let out = self
            .iam
            .list_user_tags()
            .user_name(user)
            .max_items(100)
            .send()
            .await
            .map_err(|e| iam_error(e, user, None))?;
        Ok(out.tags().iter().map(|t| (t.key().to_string(), t.value().to_string())).collect())
    }
}

/// Checks a key against the STS endpoint of every region the workload uses: IAM propagates a new
/// key to each region's data plane on its own schedule, so a success in one region says nothing
/// about another.
pub struct StsKeyCheck {
    regional: Vec<aws_types::SdkConfig>,
}

impl StsKeyCheck {
    /// `regions` empty: the region of `sdk` only.
    pub fn new(sdk: &aws_types::SdkConfig, regions: &[String]) -> Self {
        let http = fresh_connections(sdk);
        let at = |region: Option<&str>| {
            let mut b = sdk.to_builder();
            if let Some(r) = region {
                b = b.region(aws_types::region::Region::new(r.to_string()));
            }
            if let Some(http) = &http {
                b = b.http_client(http.clone());
            }
            b.build()
        };
        let regional =
            if regions.is_empty() { vec![at(None)] } else { regions.iter().map(|r| at(Some(r.as_str()))).collect() };
        StsKeyCheck { regional }
    }
}

/// An HTTP client that never reuses a connection, so that each check may land on another host of
/// the endpoint, as the application's own new connections will. Behind a proxy the proxy picks the
/// upstream connection anyway: the SDK's own client (which honours the proxy settings) is kept.
fn fresh_connections(sdk: &aws_types::SdkConfig) -> Option<aws_types::sdk_config::SharedHttpClient> {
    let proxied = ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|p| !p.is_empty()));
    if proxied && sdk.http_client().is_some() {
        return None;
    }
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    Some(
        aws_smithy_http_client::Builder::new()
            // An idle connection that expired at once is never handed out again.
            .pool_idle_timeout(std::time::Duration::ZERO)
            .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
            .build_https(),
    )
}

/// Error codes that say nothing about the key: the endpoint was busy or failed.
const NO_VERDICT: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "ServiceUnavailable",
    "InternalFailure",
    "InternalError",
    "RequestTimeout",
    "RequestTimeoutException",
];

#[async_trait]
impl KeyCheck for StsKeyCheck {
    fn regions(&self) -> Vec<String> {
        self.regional
            .iter()
            .map(|sdk| sdk.region().map(|r| r.to_string()).unwrap_or_else(|| "default".into()))
            .collect()
    }

    async fn check(&self, key: &NewKey, region: usize) -> Answer {
        let Some(sdk) = self.regional.get(region) else {
            return Answer::Inconclusive(format!("no Region #{region}"));
        };
        // Credentials keeps its copy of the secret in a Zeroizing<String>.
        let creds = Credentials::new(key.access_key_id.clone(), key.secret().to_string(), None, None, "rekey-new-key");
        let conf = aws_sdk_sts::config::Builder::from(sdk).credentials_provider(creds).build();
        match aws_sdk_sts::Client::from_conf(conf).get_caller_identity().send().await {
            Ok(_) => Answer::Accepted,
            Err(e) => match e.code() {
                Some(code) if !NO_VERDICT.contains(&code) => Answer::Rejected(code.to_string()),
                Some(code) => Answer::Inconclusive(code.to_string()),
                // Without a code the error is transport-level; its text carries no request data.
                None => Answer::Inconclusive(crate::aws::chain(&e)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_user_name_comes_from_user_arns_only() {
        assert_eq!(
            Caller::from_arn("arn:aws:iam::123456789012:user/ops/alice", "123456789012").user_name.as_deref(),
            Some("alice")
        );
        assert_eq!(Caller::from_arn("arn:aws:sts::123456789012:assumed-role/admin/s", "1").user_name, None);
        assert_eq!(Caller::from_arn("arn:aws:iam::123456789012:root", "1").user_name, None);
    }
}
