//! `ssm:<parameter-name>`: a Parameter Store parameter holding the key, in one of two layouts.
//!
//! - One parameter (SecureString, or String) holding a JSON object with the key fields, like the
//!   Secrets Manager target: `ssm:/app/aws`.
//! - Two parameters holding the bare values: `ssm:/app/aws_access_key_id?secret-param=/app/aws_secret_access_key`
//!   (the named parameter holds the id, `secret-param` the secret).
//!
//! Parameter Store keeps every version of a parameter but has no way to make an older one current
//! again: consumers always read the newest. So `apply` writes a new version (`PutParameter
//! Overwrite=true`, with the type, KMS key, tier and data type the parameter had) and `rollback`
//! writes another one holding the value of the version the snapshot names, read back with
//! `name:version`. The snapshot therefore needs only version numbers, never a value.
//!
//! Each version rekey writes is labelled `rekey-<new key id>`. The snapshot is taken before the key
//! exists and cannot name that version; the label lets a process that restarts after a crash tell
//! its own write from someone else's, which rollback must not overwrite. The label is put on the
//! snapshot's version just before the write and moved to the new version after it, so a crash in
//! between still leaves the mark. Labels pin versions (AWS refuses new versions once the oldest of
//! the 100 it keeps is labelled), so `finish` and `rollback` remove them again.
//!
//! Every read asks for decryption: without it moto returns `kms:<key>:<plaintext>` and AWS the
//! ciphertext, neither of which parses.

use async_trait::async_trait;
use aws_sdk_ssm::Client;
use aws_sdk_ssm::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ssm::types::{ParameterTier, ParameterType};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::SdkFailure;
use crate::json_key::KeyObject;
use crate::{ErrorKind, NewKey, Options, Preflight, Snapshot, Target, TargetError, TargetSpec};

/// Prefix of the labels rekey puts on the versions it writes; the rest is the new access key id.
const LABEL_PREFIX: &str = "rekey-";

/// Parameter Store keeps this many versions of a parameter.
const VERSION_LIMIT: usize = 100;

pub struct SsmTarget {
    name: String,
    param: String,
    secret_param: Option<String>,
    id_fields: Vec<String>,
    secret_fields: Vec<String>,
    /// `id-field`/`secret-field` were given: they mean nothing for a pair of bare parameters.
    fields_named: bool,
    client: Client,
}

/// What the journal keeps: parameter names, versions and settings, never a value.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SsmSnapshot {
    layout: Layout,
    /// The JSON parameter, or the id parameter then the secret parameter.
    params: Vec<ParamSnapshot>,
    old_key_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum Layout {
    Json { id_field: String, secret_field: String, pretty: bool },
    Pair,
}

/// One parameter as it was: the version consumers got, and the settings a rewrite must keep.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ParamSnapshot {
    name: String,
    version: i64,
    #[serde(rename = "type")]
    kind: String,
    key_id: Option<String>,
    tier: Option<String>,
    data_type: Option<String>,
}

/// A value as GetParameter returned it, decrypted.
struct Read {
    version: i64,
    kind: ParameterType,
    arn: Option<String>,
    value: Zeroizing<String>,
}

/// One version as GetParameterHistory lists it, without its value.
struct VersionMeta {
    version: i64,
    kind: Option<ParameterType>,
    key_id: Option<String>,
    tier: Option<ParameterTier>,
    data_type: Option<String>,
    labels: Vec<String>,
}

/// What the parameter(s) hold now, for preflight, snapshot and `current_key_id`.
struct Current {
    layout: Layout,
    reads: Vec<(String, Read)>,
    key_id: Option<String>,
}

/// `rekey-<key id>`, kept to the characters and length a version label allows.
fn label_for(access_key_id: &str) -> String {
    let id: String = access_key_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' })
        .take(100 - LABEL_PREFIX.len())
        .collect();
    format!("{LABEL_PREFIX}{id}")
}

impl SsmTarget {
    pub fn new(spec: &TargetSpec, sdk: &aws_types::SdkConfig, _options: &Options) -> Self {
        SsmTarget {
            name: spec.raw.clone(),
            param: spec.location.clone(),
            secret_param: spec.option("secret-param").map(str::to_string),
            id_fields: spec.id_fields(),
            secret_fields: spec.secret_fields(),
            fields_named: spec.option("id-field").is_some() || spec.option("secret-field").is_some(),
            client: Client::new(sdk),
        }
    }

    fn err(&self, kind: ErrorKind) -> TargetError {
        TargetError::new(&self.name, kind)
    }

    /// Maps an SDK error to the kind the orchestrator acts on. `secrets` are values this call had in
    /// hand; they are scrubbed in case the error text echoes the request.
    fn sdk_err<E>(&self, action: &str, param: &str, err: SdkError<E>, secrets: &[&str]) -> TargetError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let failure = SdkFailure::new(&format!("{action} {param}"), &err, secrets);
        let message = failure.message.clone();
        self.err(match failure.code.as_str() {
            "ParameterNotFound" => ErrorKind::NotFound(format!("parameter {param} not found ({action})")),
            "ParameterVersionNotFound" => ErrorKind::NotFound(format!("{action} {param}: {message}")),
            "ParameterMaxVersionLimitExceeded" => ErrorKind::Unusable(format!(
                "{action} {param}: {message} (Parameter Store keeps {VERSION_LIMIT} versions and will not drop a \
                 labelled one; remove the label from the oldest version with `aws ssm unlabel-parameter-version`)"
            )),
            // GetParameter WithDecryption reports a KMS key the caller may not use this way.
            "InvalidKeyId" => ErrorKind::AccessDenied(failure.line),
            _ => failure.common_kind(),
        })
    }

    /// The parameters this target writes: the JSON one, or the id one then the secret one.
    fn params(&self) -> Vec<&str> {
        std::iter::once(self.param.as_str()).chain(self.secret_param.as_deref()).collect()
    }

    async fn get(&self, param: &str, version: Option<i64>) -> Result<Read, TargetError> {
        let selector = match version {
            Some(v) => format!("{param}:{v}"),
            None => param.to_string(),
        };
        let out = self
            .client
            .get_parameter()
            .name(&selector)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| self.sdk_err("GetParameter", &selector, e, &[]))?;
        let Some(p) = out.parameter() else {
            return Err(self.err(ErrorKind::Backend(format!("GetParameter {selector} returned no parameter"))));
        };
        Ok(Read {
            version: p.version(),
            kind: p.r#type().cloned().unwrap_or(ParameterType::String),
            arn: p.arn().map(str::to_string),
            value: Zeroizing::new(p.value().unwrap_or_default().to_string()),
        })
    }

    /// Every version's settings and labels. Values are asked for undecrypted and dropped at once.
    async fn history(&self, param: &str) -> Result<Vec<VersionMeta>, TargetError> {
        let mut versions = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .client
                .get_parameter_history()
                .name(param)
                .with_decryption(false)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| self.sdk_err("GetParameterHistory", param, e, &[]))?;
            versions.extend(out.parameters().iter().map(|h| VersionMeta {
                version: h.version(),
                kind: h.r#type().cloned(),
                key_id: h.key_id().map(str::to_string),
                tier: h.tier().cloned(),
                data_type: h.data_type().map(str::to_string),
                labels: h.labels().to_vec(),
            }));
            token = out.next_token().filter(|t| !t.is_empty()).map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        versions.sort_by_key(|v| v.version);
        Ok(versions)
    }

    fn check_kind(&self, param: &str, kind: &ParameterType) -> Result<(), TargetError> {
        match kind {
            ParameterType::SecureString | ParameterType::String => Ok(()),
            other => Err(self.err(ErrorKind::Unusable(format!(
                "parameter {param} is a {}; rekey writes SecureString or String parameters",
                other.as_str()
            )))),
        }
    }

    fn parse(&self, text: &str) -> Result<KeyObject, TargetError> {
        let place = format!("parameter {}", self.param);
        let two_parameters =
            ", or keep the id and the secret in two parameters and name the second with ?secret-param=NAME";
        KeyObject::parse(text, &place, &self.id_fields, &self.secret_fields, two_parameters).map_err(|k| self.err(k))
    }

    async fn read_current(&self) -> Result<Current, TargetError> {
        if self.secret_param.is_some() && self.fields_named {
            return Err(self.err(ErrorKind::Unusable(
                "id-field and secret-field name fields of a JSON parameter; with secret-param each parameter holds a \
                 bare value: drop them"
                    .into(),
            )));
        }
        let mut reads = Vec::new();
        for param in self.params() {
            let read = self.get(param, None).await?;
            self.check_kind(param, &read.kind)?;
            if read.value.is_empty() {
                return Err(self.err(ErrorKind::Unusable(format!("parameter {param} is empty"))));
            }
            reads.push((param.to_string(), read));
        }
        let (layout, key_id) = if self.secret_param.is_some() {
            (Layout::Pair, Some(reads[0].1.value.trim().to_string()))
        } else {
            let json = self.parse(&reads[0].1.value)?;
            (
                Layout::Json { id_field: json.id_field, secret_field: json.secret_field, pretty: json.pretty },
                json.key_id,
            )
        };
        Ok(Current { layout, reads, key_id })
    }

    async fn put(&self, p: &ParamSnapshot, value: &str) -> Result<i64, TargetError> {
        let secure = p.kind == ParameterType::SecureString.as_str();
        let out = self
            .client
            .put_parameter()
            .name(&p.name)
            .value(value)
            .overwrite(true)
            .r#type(ParameterType::from(p.kind.as_str()))
            .set_key_id(p.key_id.clone().filter(|_| secure))
            .set_tier(p.tier.as_deref().map(ParameterTier::from))
            .set_data_type(p.data_type.clone())
            .send()
            .await
            .map_err(|e| self.sdk_err("PutParameter", &p.name, e, &[value]))?;
        Ok(out.version())
    }

    async fn label(&self, param: &str, version: i64, label: &str) -> Result<(), TargetError> {
        let out = self
            .client
            .label_parameter_version()
            .name(param)
            .parameter_version(version)
            .labels(label)
            .send()
            .await
            .map_err(|e| self.sdk_err("LabelParameterVersion", param, e, &[]))?;
        if !out.invalid_labels().is_empty() {
            return Err(self.err(ErrorKind::Backend(format!(
                "LabelParameterVersion {param}: label {label} was refused as invalid"
            ))));
        }
        Ok(())
    }

    /// Removes rekey's labels from the snapshot's version and the versions written after it.
    async fn unlabel_since(&self, p: &ParamSnapshot, history: &[VersionMeta]) -> Result<(), TargetError> {
        for v in history.iter().filter(|v| v.version >= p.version) {
            let ours: Vec<String> = v.labels.iter().filter(|l| l.starts_with(LABEL_PREFIX)).cloned().collect();
            if ours.is_empty() {
                continue;
            }
            self.client
                .unlabel_parameter_version()
                .name(&p.name)
                .parameter_version(v.version)
                .set_labels(Some(ours))
                .send()
                .await
                .map_err(|e| self.sdk_err("UnlabelParameterVersion", &p.name, e, &[]))?;
        }
        Ok(())
    }

    /// Makes `value` the newest version of the parameter, labelled `label`, unless it already is
    /// (an `apply` that ran before a crash). Refuses when someone else wrote since the snapshot.
    async fn ensure(&self, p: &ParamSnapshot, value: &str, label: &str) -> Result<(), TargetError> {
        let current = self.get(&p.name, None).await?;
        if current.value.as_str() == value {
            return self.label(&p.name, current.version, label).await;
        }
        if current.version != p.version {
            return Err(self.err(ErrorKind::Unusable(format!(
                "parameter {} changed since its snapshot (version {} now, {} then); start the rotation again",
                p.name, current.version, p.version
            ))));
        }
        // The label goes on the snapshot's version first and moves to the new one once it exists,
        // so a crash between the write and the label still leaves a mark that the write was ours.
        self.label(&p.name, p.version, label).await?;
        tracing::debug!(target = %self.name, param = %p.name, "writing a new version");
        let version = self.put(p, value).await?;
        self.label(&p.name, version, label).await
    }

    /// Writes the snapshot's version back as the newest, unless the parameter holds it already.
    async fn restore(&self, p: &ParamSnapshot) -> Result<(), TargetError> {
        let current = self.get(&p.name, None).await?;
        let history = self.history(&p.name).await?;
        if current.version != p.version {
            let old = self.get(&p.name, Some(p.version)).await.map_err(|e| match e.kind {
                ErrorKind::NotFound(_) => self.err(ErrorKind::Backend(format!(
                    "parameter {}: version {} from before the rotation is gone (Parameter Store keeps the last \
                     {VERSION_LIMIT}); put the old value back by hand",
                    p.name, p.version
                ))),
                _ => e,
            })?;
            if current.value != old.value {
                let labelled = |version: i64| {
                    history
                        .iter()
                        .find(|v| v.version == version)
                        .is_some_and(|v| v.labels.iter().any(|l| l.starts_with(LABEL_PREFIX)))
                };
                // The label still on the snapshot's version means `apply` crashed between writing the
                // next version and moving the label onto it.
                let ours = labelled(current.version) || (current.version == p.version + 1 && labelled(p.version));
                if !ours {
                    return Err(self.err(ErrorKind::Backend(format!(
                        "parameter {}: version {} was not written by rekey; it was at version {} before the \
                         rotation. Check the parameter and put the old value back by hand",
                        p.name, current.version, p.version
                    ))));
                }
                tracing::debug!(target = %self.name, param = %p.name, version = p.version, "writing back");
                self.put(p, &old.value).await?;
            }
        }
        self.unlabel_since(p, &history).await
    }
}

#[async_trait]
impl Target for SsmTarget {
    fn name(&self) -> &str {
        &self.name
    }

    /// Checks that the parameters exist, can be read and decrypted, and hold the key in a known
    /// shape. Write permission (`ssm:PutParameter`, `ssm:LabelParameterVersion`, `kms:Encrypt` on a
    /// customer key) is not checked: Parameter Store has no dry run, and a missing permission shows
    /// up at `apply` before anything changed.
    async fn preflight(&self) -> Result<Preflight, TargetError> {
        let current = self.read_current().await?;
        let mut pf = Preflight {
            current_key_id: current.key_id.clone(),
            store_arn: current.reads[0].1.arn.clone(),
            ..Preflight::default()
        };
        for (param, read) in &current.reads {
            let history = self.history(param).await?;
            if history.len() >= VERSION_LIMIT && history.first().is_some_and(|v| !v.labels.is_empty()) {
                return Err(self.err(ErrorKind::Unusable(format!(
                    "parameter {param} has {VERSION_LIMIT} versions and the oldest is labelled, so Parameter Store \
                     refuses new ones; remove that label with `aws ssm unlabel-parameter-version`"
                ))));
            }
            if history.iter().any(|v| v.labels.iter().any(|l| l.starts_with(LABEL_PREFIX))) {
                pf.warnings.push(format!(
                    "parameter {param} carries a {LABEL_PREFIX}* label from an earlier rotation that did not finish"
                ));
            }
            let holds_secret =
                matches!(current.layout, Layout::Json { .. }) || Some(param) == self.secret_param.as_ref();
            if holds_secret && read.kind == ParameterType::String {
                pf.warnings.push(format!(
                    "parameter {param} is a String: the secret key is stored unencrypted; make it a SecureString"
                ));
            }
        }
        match &current.layout {
            Layout::Json { id_field, secret_field, .. } => pf.changes.push(format!(
                "put version {} of parameter {} with {id_field} and {secret_field} replaced, labelled {LABEL_PREFIX}<new \
                 key id> until the rotation ends",
                current.reads[0].1.version + 1,
                self.param
            )),
            Layout::Pair => {
                for (param, read) in current.reads.iter().rev() {
                    let what = if *param == self.param { "key id" } else { "secret key" };
                    pf.changes.push(format!(
                        "put version {} of parameter {param} holding the new {what}, labelled {LABEL_PREFIX}<new key \
                         id> until the rotation ends",
                        read.version + 1
                    ));
                }
            }
        }
        if current.key_id.is_none() {
            pf.warnings.push(format!("the key id in parameter {} is empty", self.param));
        }
        Ok(pf)
    }

    async fn snapshot(&self) -> Result<Snapshot, TargetError> {
        let current = self.read_current().await?;
        let mut params = Vec::new();
        for (param, read) in &current.reads {
            let history = self.history(param).await?;
            let meta = history.iter().find(|v| v.version == read.version);
            params.push(ParamSnapshot {
                name: param.clone(),
                version: read.version,
                kind: meta.and_then(|m| m.kind.as_ref()).unwrap_or(&read.kind).as_str().to_string(),
                key_id: meta.and_then(|m| m.key_id.clone()),
                tier: meta.and_then(|m| m.tier.as_ref()).map(|t| t.as_str().to_string()),
                data_type: meta.and_then(|m| m.data_type.clone()),
            });
        }
        Ok(Snapshot::from_state(&SsmSnapshot { layout: current.layout, params, old_key_id: current.key_id }))
    }

    async fn apply(&self, key: &NewKey, snapshot: &Snapshot) -> Result<(), TargetError> {
        let snap: SsmSnapshot = snapshot.to_state(&self.name)?;
        let label = label_for(&key.access_key_id);
        match &snap.layout {
            Layout::Json { id_field, secret_field, pretty } => {
                let p = &snap.params[0];
                // Built from the snapshot's version, so a retried apply computes the same value.
                let old = self.get(&p.name, Some(p.version)).await?;
                let text =
                    self.parse(&old.value)?.with_key(id_field, secret_field, key, *pretty).map_err(|k| self.err(k))?;
                self.ensure(p, &text, &label).await
            }
            Layout::Pair => {
                let [id_param, secret_param] = snap.params.as_slice() else {
                    return Err(self.err(ErrorKind::Unusable("journal snapshot names no parameter pair".into())));
                };
                // The id last: once it shows the new key, the secret beside it is new too.
                self.ensure(secret_param, key.secret(), &label).await?;
                self.ensure(id_param, &key.access_key_id, &label).await
            }
        }
    }

    async fn current_key_id(&self) -> Result<Option<String>, TargetError> {
        Ok(self.read_current().await?.key_id)
    }

    async fn rollback(&self, snapshot: &Snapshot) -> Result<(), TargetError> {
        let snap: SsmSnapshot = snapshot.to_state(&self.name)?;
        for p in &snap.params {
            self.restore(p).await?;
        }
        Ok(())
    }

    async fn finish(&self, snapshot: &Snapshot) -> Result<(), TargetError> {
        let snap: SsmSnapshot = snapshot.to_state(&self.name)?;
        for p in &snap.params {
            let history = self.history(&p.name).await?;
            self.unlabel_since(p, &history).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_fit_what_parameter_store_allows() {
        assert_eq!(label_for("AKIAIOSFODNN7EXAMPLE"), "rekey-AKIAIOSFODNN7EXAMPLE");
        assert_eq!(label_for("AKIA/x+y"), "rekey-AKIA_x_y");
        assert_eq!(label_for(&"A".repeat(300)).len(), 100);
    }

    #[test]
    fn snapshots_name_versions_not_values() {
        let snap = SsmSnapshot {
            layout: Layout::Json { id_field: "AWS_ACCESS_KEY_ID".into(), secret_field: "s".into(), pretty: false },
            params: vec![ParamSnapshot {
                name: "/app/aws".into(),
                version: 3,
                kind: "SecureString".into(),
                key_id: Some("alias/aws/ssm".into()),
                tier: Some("Standard".into()),
                data_type: Some("text".into()),
            }],
            old_key_id: Some("AKIAOLD".into()),
        };
        let json = serde_json::to_value(&snap).unwrap();
        assert_eq!(json["layout"]["kind"], "json");
        assert_eq!(json["params"][0]["type"], "SecureString");
        let back: SsmSnapshot = serde_json::from_value(json).unwrap();
        assert_eq!(back.params[0].version, 3);
    }
}
