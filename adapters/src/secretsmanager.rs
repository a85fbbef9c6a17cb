//! `secretsmanager:<secret-id or ARN>`: a Secrets Manager secret holding a JSON object with the key.
//!
//! It follows Secrets Manager's own rotation protocol, so other tools see a rotation they know:
//! `stage` writes the new value as a version labelled AWSPENDING (durable, not yet served), `apply`
//! moves AWSCURRENT to it, `rollback` moves the labels back. Versions are never deleted, so going
//! back is only a label move.
//!
//! The version id is derived from the new access key id, which makes the write idempotent
//! (`ClientRequestToken`) and lets a process that restarts after a crash recognise the version as
//! rekey's from its id alone: the snapshot is taken before the key exists, so it cannot name it.
//!
//! Every read asks for `VersionStage=AWSCURRENT` explicitly: moto returns a stale value without it
//! after labels move, and it states what consumers get.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::SdkFailure;
use crate::json_key::KeyObject;
use crate::{ErrorKind, NewKey, Options, Preflight, Snapshot, Target, TargetError, TargetSpec};

const CURRENT: &str = "AWSCURRENT";
const PENDING: &str = "AWSPENDING";
const PREVIOUS: &str = "AWSPREVIOUS";

/// Prefix of the version ids rekey writes; the rest is the new access key id.
const TOKEN_PREFIX: &str = "rekey-rotation-";

pub struct SecretsManagerTarget {
    name: String,
    secret_id: String,
    id_fields: Vec<String>,
    secret_fields: Vec<String>,
    client: Client,
}

/// What the journal keeps: version ids and field names, never a value.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SmSnapshot {
    arn: String,
    /// The version consumers got before the rotation.
    current_version: String,
    /// Where AWSPREVIOUS and AWSPENDING sat, so rollback can put them back too.
    previous_version: Option<String>,
    pending_version: Option<String>,
    /// Versions whose id starts with this are the ones rekey wrote.
    token_prefix: String,
    id_field: String,
    secret_field: String,
    old_key_id: Option<String>,
}

impl SmSnapshot {
    fn ours(&self, version: &str) -> bool {
        version.starts_with(&self.token_prefix) && version != self.current_version
    }
}

/// The staging labels of a secret's versions, as DescribeSecret reports them.
struct Labels {
    arn: String,
    stages: HashMap<String, Vec<String>>,
    rotation_enabled: bool,
    deleted: bool,
}

impl Labels {
    fn holder(&self, stage: &str) -> Option<&str> {
        self.stages.iter().find(|(_, s)| s.iter().any(|l| l == stage)).map(|(v, _)| v.as_str())
    }

    fn has(&self, version: &str, stage: &str) -> bool {
        self.stages.get(version).is_some_and(|s| s.iter().any(|l| l == stage))
    }

    fn labelled(&self, version: &str) -> bool {
        self.stages.get(version).is_some_and(|s| !s.is_empty())
    }
}

/// The AWSCURRENT value, parsed, with the fields this target rewrites.
struct Current {
    version: String,
    value: KeyObject,
}

/// The version id for a new key: 32 to 64 characters, as `ClientRequestToken` requires.
fn version_token(access_key_id: &str) -> String {
    let id: String = access_key_id.chars().take(64 - TOKEN_PREFIX.len()).collect();
    format!("{:-<32}", format!("{TOKEN_PREFIX}{id}"))
}

impl SecretsManagerTarget {
    pub fn new(spec: &TargetSpec, sdk: &aws_types::SdkConfig, _options: &Options) -> Self {
        SecretsManagerTarget {
            name: spec.raw.clone(),
            secret_id: spec.location.clone(),
            id_fields: spec.id_fields(),
            secret_fields: spec.secret_fields(),
            client: Client::new(sdk),
        }
    }

    fn err(&self, kind: ErrorKind) -> TargetError {
        TargetError::new(&self.name, kind)
    }

    /// Maps an SDK error to the kind the orchestrator acts on. `secrets` are values this call had in
    /// hand; they are scrubbed in case the error text echoes the request.
    fn sdk_err<E>(&self, action: &str, err: SdkError<E>, secrets: &[&str]) -> TargetError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let failure = SdkFailure::new(action, &err, secrets);
        self.err(match failure.code.as_str() {
            "ResourceNotFoundException" => {
                ErrorKind::NotFound(format!("secret {} not found ({action}: {})", self.secret_id, failure.message))
            }
            _ => failure.common_kind(),
        })
    }

    async fn describe(&self) -> Result<Labels, TargetError> {
        let out = self
            .client
            .describe_secret()
            .secret_id(&self.secret_id)
            .send()
            .await
            .map_err(|e| self.sdk_err("DescribeSecret", e, &[]))?;
        Ok(Labels {
            arn: out.arn().unwrap_or(&self.secret_id).to_string(),
            stages: out.version_ids_to_stages().cloned().unwrap_or_default(),
            rotation_enabled: out.rotation_enabled().unwrap_or(false),
            deleted: out.deleted_date().is_some(),
        })
    }

    async fn read_current(&self) -> Result<Current, TargetError> {
        let out = self
            .client
            .get_secret_value()
            .secret_id(&self.secret_id)
            .version_stage(CURRENT)
            .send()
            .await
            .map_err(|e| self.sdk_err("GetSecretValue", e, &[]))?;
        let version = out.version_id().unwrap_or_default().to_string();
        let Some(text) = out.secret_string() else {
            return Err(self.err(ErrorKind::Unusable(format!(
                "secret {} holds a binary value; rekey needs a JSON object with {} and {} (store the key as SecretString)",
                self.secret_id, self.id_fields[0], self.secret_fields[0]
            ))));
        };
        let text = Zeroizing::new(text.to_string());
        let place = format!("secret {}", self.secret_id);
        let value =
            KeyObject::parse(&text, &place, &self.id_fields, &self.secret_fields, "").map_err(|k| self.err(k))?;
        Ok(Current { version, value })
    }

    /// AWSPENDING on a version other than AWSCURRENT means a rotation (rekey's or a Lambda's) is
    /// under way or was abandoned; a second one would fight it for the labels.
    fn pending_elsewhere(&self, labels: &Labels) -> Option<String> {
        let pending = labels.holder(PENDING)?;
        if labels.holder(CURRENT) == Some(pending) {
            return None;
        }
        Some(format!(
            "secret {} has AWSPENDING on version {pending}, not on AWSCURRENT: another rotation is in progress or was \
             abandoned. If none is running, clear it with `aws secretsmanager update-secret-version-stage --secret-id {} \
             --version-stage AWSPENDING --remove-from-version-id {pending}`",
            self.secret_id, labels.arn
        ))
    }

    async fn move_label(&self, stage: &str, to: Option<&str>, from: Option<&str>) -> Result<(), TargetError> {
        tracing::debug!(target = %self.name, stage, ?to, ?from, "moving staging label");
        self.client
            .update_secret_version_stage()
            .secret_id(&self.secret_id)
            .version_stage(stage)
            .set_move_to_version_id(to.map(str::to_string))
            .set_remove_from_version_id(from.map(str::to_string))
            .send()
            .await
            .map_err(|e| self.sdk_err(&format!("UpdateSecretVersionStage {stage}"), e, &[]))?;
        Ok(())
    }

    /// Writes the new value as our AWSPENDING version unless a version of ours already carries a
    /// label (staged earlier, or already current).
    async fn stage_version(&self, key: &NewKey, snap: &SmSnapshot, labels: &Labels) -> Result<String, TargetError> {
        let ours = version_token(&key.access_key_id);
        if labels.labelled(&ours) {
            return Ok(ours);
        }
        if labels.holder(CURRENT) != Some(snap.current_version.as_str()) {
            return Err(self.err(ErrorKind::Unusable(format!(
                "secret {} changed since its snapshot (AWSCURRENT is on {:?}, was {}); start the rotation again",
                self.secret_id,
                labels.holder(CURRENT),
                snap.current_version
            ))));
        }
        let current = self.read_current().await?;
        if current.version != snap.current_version {
            return Err(self.err(ErrorKind::Unusable(format!(
                "secret {} changed since its snapshot; start the rotation again",
                self.secret_id
            ))));
        }
        let pretty = current.value.pretty;
        let text = current.value.with_key(&snap.id_field, &snap.secret_field, key, pretty).map_err(|k| self.err(k))?;
        tracing::debug!(target = %self.name, version = %ours, "staging new version as AWSPENDING");
        self.client
            .put_secret_value()
            .secret_id(&self.secret_id)
            .client_request_token(&ours)
            .secret_string(text.as_str())
            .version_stages(PENDING)
            .send()
            .await
            .map_err(|e| self.sdk_err("PutSecretValue", e, &[key.secret(), text.as_str()]))?;
        Ok(ours)
    }
}

#[async_trait]
impl Target for SecretsManagerTarget {
    fn name(&self) -> &str {
        &self.name
    }

    /// Checks that the secret exists, can be read, holds the key as a JSON object, and is not in the
    /// middle of another rotation.
    ///
    /// Write permission (`secretsmanager:PutSecretValue`, `UpdateSecretVersionStage`, and
    /// `kms:GenerateDataKey` on a customer key) is not checked: Secrets Manager has no dry run, any
    /// write creates a version, and policy simulation misses resource and KMS key policies. A
    /// missing permission shows up at `stage`, before consumers see anything.
    async fn preflight(&self) -> Result<Preflight, TargetError> {
        let labels = self.describe().await?;
        if labels.deleted {
            return Err(self.err(ErrorKind::Unusable(format!(
                "secret {} is scheduled for deletion; restore it with `aws secretsmanager restore-secret --secret-id {}`",
                self.secret_id, labels.arn
            ))));
        }
        let current = self.read_current().await?;
        if let Some(problem) = self.pending_elsewhere(&labels) {
            return Err(self.err(ErrorKind::Unusable(problem)));
        }
        let mut pf = Preflight {
            current_key_id: current.value.key_id.clone(),
            store_arn: Some(labels.arn.clone()),
            ..Preflight::default()
        };
        pf.changes.push(format!(
            "put a new version of secret {} with {} and {} replaced, labelled AWSPENDING",
            labels.arn, current.value.id_field, current.value.secret_field
        ));
        pf.changes.push(format!(
            "move AWSCURRENT of secret {} to it (version {} becomes AWSPREVIOUS)",
            labels.arn, current.version
        ));
        if labels.rotation_enabled {
            pf.warnings.push(format!(
                "secret {} has automatic rotation enabled: its rotation function may overwrite the new key",
                labels.arn
            ));
        }
        if current.value.key_id.is_none() {
            pf.warnings.push(format!("field {} of secret {} is empty", current.value.id_field, labels.arn));
        }
        Ok(pf)
    }

    async fn snapshot(&self) -> Result<Snapshot, TargetError> {
        let labels = self.describe().await?;
        if let Some(problem) = self.pending_elsewhere(&labels) {
            return Err(self.err(ErrorKind::Unusable(problem)));
        }
        let current = self.read_current().await?;
        Ok(Snapshot::from_state(&SmSnapshot {
            arn: labels.arn.clone(),
            previous_version: labels.holder(PREVIOUS).map(str::to_string),
            pending_version: labels.holder(PENDING).map(str::to_string),
            current_version: current.version,
            token_prefix: TOKEN_PREFIX.to_string(),
            id_field: current.value.id_field,
            secret_field: current.value.secret_field,
            old_key_id: current.value.key_id,
        }))
    }

    async fn stage(&self, key: &NewKey, snapshot: &Snapshot) -> Result<bool, TargetError> {
        let snap: SmSnapshot = snapshot.to_state(&self.name)?;
        let labels = self.describe().await?;
        self.stage_version(key, &snap, &labels).await?;
        Ok(true)
    }

    async fn apply(&self, key: &NewKey, snapshot: &Snapshot) -> Result<(), TargetError> {
        let snap: SmSnapshot = snapshot.to_state(&self.name)?;
        let labels = self.describe().await?;
        let ours = version_token(&key.access_key_id);
        if labels.holder(CURRENT) != Some(ours.as_str()) {
            self.stage_version(key, &snap, &labels).await?;
            if labels.holder(CURRENT) != Some(snap.current_version.as_str()) {
                return Err(self.err(ErrorKind::Unusable(format!(
                    "secret {}: AWSCURRENT moved to {:?} since the snapshot (was {}); start the rotation again",
                    self.secret_id,
                    labels.holder(CURRENT),
                    snap.current_version
                ))));
            }
            self.move_label(CURRENT, Some(&ours), Some(&snap.current_version)).await?;
        }
        // Read the labels again: staging may have been a no-op on a version that had lost its label.
        if self.describe().await?.has(&ours, PENDING) {
            self.move_label(PENDING, None, Some(&ours)).await?;
        }
        Ok(())
    }

    async fn current_key_id(&self) -> Result<Option<String>, TargetError> {
        Ok(self.read_current().await?.value.key_id)
    }

    async fn rollback(&self, snapshot: &Snapshot) -> Result<(), TargetError> {
        let snap: SmSnapshot = snapshot.to_state(&self.name)?;
        let mut labels = self.describe().await?;
        match labels.holder(CURRENT) {
            Some(cur) if cur == snap.current_version => {}
            Some(cur) if snap.ours(cur) => {
                let cur = cur.to_string();
                self.move_label(CURRENT, Some(&snap.current_version), Some(&cur)).await?;
                labels = self.describe().await?;
            }
            // Someone else wrote the secret since: moving the label back would undo their change.
            other => {
                return Err(self.err(ErrorKind::Backend(format!(
                    "secret {}: AWSCURRENT is on version {other:?}, which rekey did not write; it was on {} before \
                     the rotation. Check the secret and move AWSCURRENT by hand",
                    snap.arn, snap.current_version
                ))));
            }
        }
        // Moving AWSCURRENT moved AWSPREVIOUS onto our version; put it where it was.
        for (stage, was) in [(PREVIOUS, &snap.previous_version), (PENDING, &snap.pending_version)] {
            let now = labels.holder(stage).map(str::to_string);
            if now.as_deref() == was.as_deref() {
                continue;
            }
            match now {
                Some(now) if snap.ours(&now) => self.move_label(stage, was.as_deref(), Some(&now)).await?,
                None if was.is_some() => self.move_label(stage, was.as_deref(), None).await?,
                _ => {}
            }
        }
        Ok(())
    }

    async fn finish(&self, snapshot: &Snapshot) -> Result<(), TargetError> {
        let snap: SmSnapshot = snapshot.to_state(&self.name)?;
        let labels = self.describe().await?;
        if let Some(pending) = labels.holder(PENDING)
            && pending.starts_with(&snap.token_prefix)
        {
            let pending = pending.to_string();
            self.move_label(PENDING, None, Some(&pending)).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_tokens_fit_client_request_token_bounds() {
        for id in ["AKIAIOSFODNN7EXAMPLE", "AKIA1", &"A".repeat(128)] {
            let t = version_token(id);
            assert!((32..=64).contains(&t.len()), "{t}");
            assert!(t.starts_with(TOKEN_PREFIX));
        }
        assert_eq!(version_token("AKIAIOSFODNN7EXAMPLE"), "rekey-rotation-AKIAIOSFODNN7EXAMPLE");
    }

    #[test]
    fn finds_label_holders() {
        let labels = Labels {
            arn: "arn".into(),
            stages: HashMap::from([
                ("v1".to_string(), vec![CURRENT.to_string(), PENDING.to_string()]),
                ("v0".to_string(), vec![PREVIOUS.to_string()]),
                ("old".to_string(), vec![]),
            ]),
            rotation_enabled: false,
            deleted: false,
        };
        assert_eq!(labels.holder(CURRENT), Some("v1"));
        assert_eq!(labels.holder(PENDING), Some("v1"));
        assert!(!labels.labelled("old"));
        let spec: TargetSpec = "secretsmanager:s".parse().unwrap();
        let sdk = aws_types::SdkConfig::builder()
            .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
            .build();
        let t = SecretsManagerTarget::new(&spec, &sdk, &Options::default());
        assert!(t.pending_elsewhere(&labels).is_none());
    }
}
