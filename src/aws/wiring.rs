//! The real side effects of a rotation, built in one place for `rotate`, `resume`, `incident` and
//! every account of a fleet run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rekey_adapters::{Options, Target, TargetSpec, WaitStatus};

use crate::progress::Progress;
use crate::rotate::clock::SystemClock;
use crate::rotate::iam::{AwsIam, Iam, StsKeyCheck};
use crate::rotate::journal::{Journals, SharedJournals};
use crate::rotate::machine::{Effects, Factory, TargetContext};
use crate::rotate::probe::{HttpProbe, Probe};

/// The SDK configuration from the usual chain (env, profile, SSO, IMDS), with `--profile` and
/// `--region` on top. A region is required: every client needs one.
///
/// Every call is bounded, here and once for every client built from this configuration (fleet
/// accounts and verify regions copy it): `attempt` per attempt, and the whole call, retries and
/// their backoff included, four times that. Without a bound the SDK waits for ever on an endpoint
/// that accepted the connection and never answers, and so would every deadline of a rotation.
pub async fn load_sdk(
    profile: Option<&str>,
    region: Option<&str>,
    attempt: Duration,
) -> Result<aws_types::SdkConfig, String> {
    if attempt.is_zero() {
        return Err("--aws-timeout must be more than 0s (e.g. 30s)".into());
    }
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).timeout_config(call_timeouts(attempt));
    if let Some(p) = profile {
        loader = loader.profile_name(p);
    }
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r.to_string()));
    }
    let sdk = loader.load().await;
    if sdk.region().is_none() {
        return Err("no AWS region configured; pass --region or set AWS_REGION".into());
    }
    Ok(sdk)
}

/// The bounds of one AWS call when one attempt may take `attempt`.
pub fn call_timeouts(attempt: Duration) -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(attempt.min(Duration::from_secs(5)))
        .operation_attempt_timeout(attempt)
        .operation_timeout(attempt.saturating_mul(4))
        .build()
}

/// Where rotations are journaled: the local state folder, or with a table name the shared
/// DynamoDB journals of `account` (checked to exist, so a typo fails before any side effect).
pub async fn journals(
    sdk: &aws_types::SdkConfig,
    state_dir: PathBuf,
    table: Option<&str>,
    account: Option<&str>,
) -> Result<Journals, String> {
    let Some(table) = table else { return Ok(Journals::Local(state_dir)) };
    let account = match account {
        Some(a) => a.to_string(),
        None => {
            AwsIam::new(sdk)
                .caller()
                .await
                .map_err(|e| format!("cannot tell who rekey runs as: {e}; check your AWS credentials"))?
                .account
        }
    };
    let shared = SharedJournals::new(aws_sdk_dynamodb::Client::new(sdk), table, &account);
    shared.check_table().await?;
    Ok(Journals::Shared(shared))
}

/// The real clients behind the rotation's traits, for one account.
pub struct Wiring {
    pub iam: AwsIam,
    pub key_check: StsKeyCheck,
    pub factory: AwsFactory,
    pub progress: Progress,
}

impl Wiring {
    /// `terminal`: draw progress (and let adapters draw theirs) because stderr is a terminal.
    pub fn new(sdk: &aws_types::SdkConfig, verify_regions: &[String], terminal: bool) -> Wiring {
        Wiring {
            iam: AwsIam::new(sdk),
            key_check: StsKeyCheck::new(sdk, verify_regions),
            factory: AwsFactory::new(sdk.clone(), terminal),
            progress: Progress::new(terminal),
        }
    }

    pub fn effects(&self, journals: Journals) -> Effects<'_> {
        self.effects_with(&self.iam, journals)
    }

    /// The same effects with another IAM signer (`rotate --self` signs with its own keys).
    pub fn effects_with<'a>(&'a self, iam: &'a dyn Iam, journals: Journals) -> Effects<'a> {
        Effects {
            iam,
            key_check: &self.key_check,
            clock: &SystemClock,
            factory: &self.factory,
            progress: &self.progress,
            journals,
        }
    }
}

/// Builds the real target adapters and probes of a rotation.
pub struct AwsFactory {
    sdk: aws_types::SdkConfig,
    /// The status line of the targets' own waits (ECS rollouts), on a terminal.
    status: Option<Arc<dyn WaitStatus>>,
    poll_interval: Duration,
}

impl AwsFactory {
    /// `terminal`: the targets' waits show a status line, as the rotation's own do.
    pub fn new(sdk: aws_types::SdkConfig, terminal: bool) -> Self {
        let status = terminal.then(|| Arc::new(Progress::new(true)) as Arc<dyn WaitStatus>);
        AwsFactory { sdk, status, poll_interval: Duration::from_secs(5) }
    }
}

impl Factory for AwsFactory {
    fn target(&self, spec: &TargetSpec, cx: &TargetContext<'_>) -> Box<dyn Target> {
        let options = Options {
            ecs_timeout: cx.ecs_timeout,
            poll_interval: self.poll_interval,
            restart_cmd: cx.restart_cmd.map(str::to_string),
            status: self.status.clone(),
            old_key_id: Some(cx.old_key_id.to_string()),
            new_key_id: cx.new_key_id.map(str::to_string),
            ..Options::default()
        };
        rekey_adapters::build(spec, &self.sdk, &options)
    }

    fn probe(&self, url: &str) -> Result<Box<dyn Probe>, String> {
        Ok(Box::new(HttpProbe::new(url, Duration::from_secs(5))?))
    }
}
