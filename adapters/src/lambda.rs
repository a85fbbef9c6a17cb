//! `lambda:<function>`: two environment variables of a Lambda function's `$LATEST`.
//!
//! Only the two variables change; every other variable stays as it is at the time of the write,
//! so a deploy that changed other variables meanwhile is kept. Each write passes the `RevisionId`
//! it read, so a concurrent update makes the write fail instead of being overwritten.
//!
//! Rolling back needs the old secret, the snapshot cannot hold it (it is journalled), and Lambda
//! keeps no history of `$LATEST`. A published version is the one place Lambda itself keeps a copy:
//! versions are immutable and keep their configuration, environment included. So `snapshot`
//! publishes a version as the backup and records its number; `rollback` reads the two values back
//! from it (`GetFunctionConfiguration Qualifier=<n>`) and writes them into `$LATEST`. A published
//! version holds the old secret, so once it is no longer needed (`rollback` done, or `finish`) it is
//! deleted.
//!
//! The version exists before its number is journaled. So that a crash in between leaves no copy
//! nobody knows of, every backup this target publishes carries a token in its description, and
//! [`Target::pending_snapshot`] hands the orchestrator that token to journal first: `rollback` and
//! `finish` given it delete every version whose description holds it.
//!
//! `PublishVersion` returns the last version instead of a new one when nothing changed since it
//! was published (AWS and moto alike). Such a version belongs to the user (an alias may point at
//! it), so it is used as the backup but never deleted. The version rekey publishes carries a
//! description unique to the snapshot, which is how the two cases are told apart.
//!
//! Versions and aliases that point at one keep their frozen environment: consumers that invoke
//! them never see the new key. Preflight refuses such functions.
//!
//! An update is not live until `LastUpdateStatus` is `Successful`; `wait_consumers` and
//! `rollback` wait for it, bounded by [`UPDATE_TIMEOUT`].

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_lambda::Client;
use aws_sdk_lambda::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_lambda::types::{Environment, LastUpdateStatus, State};
use serde::{Deserialize, Serialize};

use crate::error::SdkFailure;
use crate::{ErrorKind, NewKey, Options, Preflight, Snapshot, Target, TargetError, TargetSpec};

/// Bound on waiting for a configuration update to go live. Lambda applies one in seconds; a
/// function in a VPC can take a few minutes.
pub const UPDATE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Start of the description of the versions rekey publishes as backups.
const BACKUP_PREFIX: &str = "rekey backup";

pub struct LambdaTarget {
    name: String,
    function: String,
    id_fields: Vec<String>,
    secret_fields: Vec<String>,
    poll_interval: Duration,
    client: Client,
    /// In the description of every backup this target publishes: how a backup whose number was
    /// never journaled is found.
    token: String,
}

/// What the journal holds before the backup is published: enough to find it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingBackup {
    pending_backup_token: String,
}

/// A journaled snapshot: the backup's number, or only its token when the process died between
/// publishing it and journaling the number.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Journaled {
    Published(LambdaSnapshot),
    Pending(PendingBackup),
}

/// What the journal keeps: where the backup is and which variables to restore, never a value.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LambdaSnapshot {
    function_arn: String,
    /// `$LATEST`'s revision when the backup was published.
    revision_id: Option<String>,
    backup_version: String,
    /// Tells the backup from another version with the same number (moto reuses deleted numbers).
    backup_description: String,
    /// rekey published the backup, so it deletes it; otherwise it is the user's last version.
    backup_created: bool,
    id_var: String,
    secret_var: String,
    old_key_id: Option<String>,
}

/// A function configuration as GetFunctionConfiguration returned it.
struct Config {
    arn: String,
    revision_id: Option<String>,
    description: String,
    variables: HashMap<String, String>,
    state: Option<State>,
    state_reason: Option<String>,
    status: Option<LastUpdateStatus>,
    status_reason: Option<String>,
}

impl Config {
    /// An update is under way and another would be refused (`ResourceConflictException`).
    fn busy(&self) -> bool {
        matches!(self.state, Some(State::Pending)) || matches!(self.status, Some(LastUpdateStatus::InProgress))
    }
}

impl LambdaTarget {
    pub fn new(spec: &TargetSpec, sdk: &aws_types::SdkConfig, options: &Options) -> Self {
        LambdaTarget {
            name: spec.raw.clone(),
            function: spec.location.clone(),
            id_fields: spec.id_fields(),
            secret_fields: spec.secret_fields(),
            poll_interval: options.poll_interval,
            client: Client::new(sdk),
            token: backup_token(),
        }
    }

    fn journaled(&self, snapshot: &Snapshot) -> Result<Journaled, TargetError> {
        snapshot.to_state(&self.name)
    }

    /// Deletes the backups published with `token` whose numbers were never journaled.
    async fn delete_pending(&self, token: &str) -> Result<(), TargetError> {
        let mut marker = None;
        let mut found = Vec::new();
        loop {
            let out = self
                .client
                .list_versions_by_function()
                .function_name(&self.function)
                .set_marker(marker)
                .send()
                .await
                .map_err(|e| self.sdk_err("ListVersionsByFunction", e, &[]))?;
            for v in out.versions() {
                let ours = v.description().is_some_and(|d| d.starts_with(BACKUP_PREFIX) && d.contains(token));
                if let (true, Some(n)) = (ours, v.version()) {
                    found.push(n.to_string());
                }
            }
            marker = out.next_marker().filter(|m| !m.is_empty()).map(str::to_string);
            if marker.is_none() {
                break;
            }
        }
        for version in found {
            tracing::debug!(target = %self.name, %version, "deleting a backup version that was never journaled");
            match self.client.delete_function().function_name(&self.function).qualifier(&version).send().await {
                Ok(_) => {}
                Err(e) if e.code() == Some("ResourceNotFoundException") => {}
                Err(e) => return Err(self.sdk_err("DeleteFunction (backup version)", e, &[])),
            }
        }
        Ok(())
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
        let message = failure.message.clone();
        self.err(match failure.code.as_str() {
            "ResourceNotFoundException" => ErrorKind::NotFound(format!("{action}: {message}")),
            "PreconditionFailedException" | "ResourceConflictException" => ErrorKind::Backend(format!(
                "{action}: function {} was changed by someone else meanwhile ({message}); try again",
                self.function
            )),
            _ => failure.common_kind(),
        })
    }

    async fn config(&self, qualifier: Option<&str>) -> Result<Config, TargetError> {
        let out = self
            .client
            .get_function_configuration()
            .function_name(&self.function)
            .set_qualifier(qualifier.map(str::to_string))
            .send()
            .await
            .map_err(|e| self.sdk_err("GetFunctionConfiguration", e, &[]))?;
        let env = out.environment();
        if let Some(e) = env.and_then(|e| e.error()) {
            // Lambda answers this way when it cannot decrypt the variables for the caller.
            return Err(self.err(ErrorKind::AccessDenied(format!(
                "cannot read the environment of function {}: {} {}",
                self.function,
                e.error_code().unwrap_or("error"),
                e.message().unwrap_or_default()
            ))));
        }
        Ok(Config {
            arn: out.function_arn().unwrap_or(&self.function).to_string(),
            revision_id: out.revision_id().map(str::to_string),
            description: out.description().unwrap_or_default().to_string(),
            variables: env.and_then(|e| e.variables()).cloned().unwrap_or_default(),
            state: out.state().cloned(),
            state_reason: out.state_reason().map(str::to_string),
            status: out.last_update_status().cloned(),
            status_reason: out.last_update_status_reason().map(str::to_string),
        })
    }

    /// The one variable of `names` the function sets. Both spellings set is ambiguous: the code may
    /// read either.
    fn variable(&self, config: &Config, names: &[String], what: &str, option: &str) -> Result<String, TargetError> {
        let present: Vec<&String> = names.iter().filter(|n| config.variables.contains_key(n.as_str())).collect();
        match present.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(self.err(ErrorKind::Unusable(format!(
                "function {} sets no {what} variable (looked for {}); add it, or name the variable with ?{option}=NAME",
                self.function,
                names.join(", ")
            )))),
            many => Err(self.err(ErrorKind::Unusable(format!(
                "function {} sets {} as {what} variables; keep one, or pick one with ?{option}=NAME",
                self.function,
                many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" and ")
            )))),
        }
    }

    fn locate(&self, config: &Config) -> Result<(String, String, Option<String>), TargetError> {
        let id_var = self.variable(config, &self.id_fields, "key id", "id-field")?;
        let secret_var = self.variable(config, &self.secret_fields, "secret key", "secret-field")?;
        let key_id = config.variables.get(&id_var).filter(|v| !v.is_empty()).cloned();
        Ok((id_var, secret_var, key_id))
    }

    /// Waits, bounded, until no update is under way; then the configuration is the one invocations
    /// get. `Failed` is returned to the caller to judge.
    async fn settled(&self) -> Result<Config, TargetError> {
        let started = Instant::now();
        loop {
            let config = self.config(None).await?;
            if !config.busy() {
                return Ok(config);
            }
            if started.elapsed() >= UPDATE_TIMEOUT {
                return Err(self.err(ErrorKind::Timeout {
                    what: format!("the update of function {} to finish", self.function),
                    waited: started.elapsed(),
                }));
            }
            tracing::debug!(target = %self.name, "waiting for the function update to finish");
            tokio::time::sleep(self.poll_interval).await;
        }
    }

    /// Waits for the last update to go live, and fails when Lambda could not apply it.
    async fn live(&self) -> Result<Config, TargetError> {
        let config = self.settled().await?;
        if matches!(config.status, Some(LastUpdateStatus::Failed)) || matches!(config.state, Some(State::Failed)) {
            return Err(self.err(ErrorKind::Consumers(format!(
                "Lambda could not apply the update of function {}: {}",
                self.function,
                config.status_reason.as_deref().or(config.state_reason.as_deref()).unwrap_or("no reason given")
            ))));
        }
        Ok(config)
    }

    /// Writes the two variables into `$LATEST`, keeping every other variable as `config` shows it.
    async fn write(&self, config: &Config, snap: &LambdaSnapshot, id: &str, secret: &str) -> Result<(), TargetError> {
        let mut variables = config.variables.clone();
        variables.insert(snap.id_var.clone(), id.to_string());
        variables.insert(snap.secret_var.clone(), secret.to_string());
        self.client
            .update_function_configuration()
            .function_name(&self.function)
            .environment(Environment::builder().set_variables(Some(variables)).build())
            .set_revision_id(config.revision_id.clone())
            .send()
            .await
            .map_err(|e| self.sdk_err("UpdateFunctionConfiguration", e, &[secret]))?;
        Ok(())
    }

    /// The backup version, or None when it is gone (deleted by an earlier rollback or finish).
    async fn backup(&self, snap: &LambdaSnapshot) -> Result<Option<Config>, TargetError> {
        match self.config(Some(&snap.backup_version)).await {
            Ok(c) if c.description == snap.backup_description => Ok(Some(c)),
            Ok(_) => Ok(None),
            Err(TargetError { kind: ErrorKind::NotFound(_), .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn delete_backup(&self, snap: &LambdaSnapshot) -> Result<(), TargetError> {
        if !snap.backup_created || self.backup(snap).await?.is_none() {
            return Ok(());
        }
        tracing::debug!(target = %self.name, version = %snap.backup_version, "deleting the backup version");
        match self.client.delete_function().function_name(&self.function).qualifier(&snap.backup_version).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ResourceNotFoundException") => Ok(()),
            Err(e) => Err(self.sdk_err("DeleteFunction (backup version)", e, &[])),
        }
    }

    /// Versions that aliases point at: their environment is frozen, so their callers keep the old key.
    async fn pinned_aliases(&self) -> Result<Vec<String>, TargetError> {
        let mut pinned = Vec::new();
        let mut marker = None;
        loop {
            let out = self
                .client
                .list_aliases()
                .function_name(&self.function)
                .set_marker(marker)
                .send()
                .await
                .map_err(|e| self.sdk_err("ListAliases", e, &[]))?;
            for a in out.aliases() {
                let mut versions: Vec<&str> = a.function_version().into_iter().collect();
                if let Some(weights) = a.routing_config().and_then(|r| r.additional_version_weights()) {
                    versions.extend(weights.keys().map(String::as_str));
                }
                for v in versions.into_iter().filter(|v| *v != "$LATEST") {
                    pinned.push(format!("{} -> version {v}", a.name().unwrap_or("?")));
                }
            }
            marker = out.next_marker().filter(|m| !m.is_empty()).map(str::to_string);
            if marker.is_none() {
                return Ok(pinned);
            }
        }
    }
}

#[async_trait]
impl Target for LambdaTarget {
    fn name(&self) -> &str {
        &self.name
    }

    /// Checks that the function exists, its environment can be read and holds the two variables,
    /// and no alias pins a version. Write permission (`lambda:UpdateFunctionConfiguration`,
    /// `PublishVersion`, `DeleteFunction`) is not checked: Lambda has no dry run, and a missing one
    /// shows up at `snapshot` or `apply`, before consumers see anything.
    async fn preflight(&self) -> Result<Preflight, TargetError> {
        let config = self.config(None).await?;
        let (id_var, secret_var, key_id) = self.locate(&config)?;
        let pinned = self.pinned_aliases().await?;
        if !pinned.is_empty() {
            return Err(self.err(ErrorKind::Unusable(format!(
                "function {} has aliases on published versions ({}); a version's environment cannot change, so \
                 their callers would keep the old key. rekey updates $LATEST only: point the aliases at $LATEST, or \
                 rotate by deploying a new version yourself",
                self.function,
                pinned.join(", ")
            ))));
        }
        let mut pf = Preflight { current_key_id: key_id.clone(), ..Preflight::default() };
        pf.changes.push(format!(
            "publish a version of function {} as a backup of its environment (deleted when the rotation ends)",
            config.arn
        ));
        pf.changes.push(format!(
            "set {id_var} and {secret_var} of function {} ($LATEST), keeping its other {} variables",
            config.arn,
            config.variables.len().saturating_sub(2)
        ));
        if config.busy() {
            pf.warnings.push(format!("function {} is being updated; rekey will wait for it", self.function));
        }
        if key_id.is_none() {
            pf.warnings.push(format!("variable {id_var} of function {} is empty", self.function));
        }
        Ok(pf)
    }

    async fn snapshot(&self) -> Result<Snapshot, TargetError> {
        let config = self.settled().await?;
        let (id_var, secret_var, old_key_id) = self.locate(&config)?;
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
        let description = format!(
            "{BACKUP_PREFIX} {} of {id_var}/{secret_var} before replacing {}, {nanos}",
            self.token,
            old_key_id.as_deref().unwrap_or("an empty key id")
        );
        let out = self
            .client
            .publish_version()
            .function_name(&self.function)
            .description(&description)
            .set_revision_id(config.revision_id.clone())
            .send()
            .await
            .map_err(|e| self.sdk_err("PublishVersion (backup)", e, &[]))?;
        let Some(version) = out.version().map(str::to_string) else {
            return Err(self.err(ErrorKind::Backend("PublishVersion returned no version number".into())));
        };
        let snap = LambdaSnapshot {
            function_arn: config.arn.clone(),
            revision_id: config.revision_id.clone(),
            backup_version: version,
            backup_created: out.description() == Some(description.as_str()),
            backup_description: out.description().unwrap_or_default().to_string(),
            id_var,
            secret_var,
            old_key_id,
        };
        // A reused version must hold what $LATEST holds, or it is no backup of it.
        let backed_up = out.environment().and_then(|e| e.variables());
        let same = |var: &str| backed_up.and_then(|v| v.get(var)) == config.variables.get(var);
        if !same(&snap.id_var) || !same(&snap.secret_var) {
            self.delete_backup(&snap).await?;
            return Err(self.err(ErrorKind::Backend(format!(
                "the version published as a backup of function {} ({}) does not hold its current key; try again",
                self.function, snap.backup_version
            ))));
        }
        Ok(Snapshot::from_state(&snap))
    }

    fn pending_snapshot(&self) -> Option<Snapshot> {
        Some(Snapshot::from_state(&PendingBackup { pending_backup_token: self.token.clone() }))
    }

    async fn apply(&self, key: &NewKey, snapshot: &Snapshot) -> Result<(), TargetError> {
        let snap: LambdaSnapshot = snapshot.to_state(&self.name)?;
        let config = self.settled().await?;
        let var = |name: &str| config.variables.get(name).map(String::as_str);
        if var(&snap.id_var) == Some(key.access_key_id.as_str()) && var(&snap.secret_var) == Some(key.secret()) {
            return Ok(());
        }
        if var(&snap.id_var).filter(|v| !v.is_empty()) != snap.old_key_id.as_deref() {
            return Err(self.err(ErrorKind::Unusable(format!(
                "variable {} of function {} changed since its snapshot (holds {:?}, held {:?}); start the rotation \
                 again",
                snap.id_var,
                self.function,
                var(&snap.id_var),
                snap.old_key_id
            ))));
        }
        tracing::debug!(target = %self.name, "updating the environment");
        self.write(&config, &snap, &key.access_key_id, key.secret()).await
    }

    async fn wait_consumers(&self, _snapshot: &Snapshot) -> Result<(), TargetError> {
        self.live().await.map(|_| ())
    }

    async fn current_key_id(&self) -> Result<Option<String>, TargetError> {
        Ok(self.locate(&self.config(None).await?)?.2)
    }

    async fn rollback(&self, snapshot: &Snapshot) -> Result<(), TargetError> {
        let snap = match self.journaled(snapshot)? {
            Journaled::Published(snap) => snap,
            // Nothing was applied before the snapshot was journaled: only the backup is left.
            Journaled::Pending(p) => return self.delete_pending(&p.pending_backup_token).await,
        };
        let config = self.settled().await?;
        let Some(backup) = self.backup(&snap).await? else {
            // Gone: an earlier rollback restored the values before deleting it, or someone deleted it.
            let held = config.variables.get(&snap.id_var).filter(|v| !v.is_empty());
            if held == snap.old_key_id.as_ref() {
                return Ok(());
            }
            return Err(self.err(ErrorKind::Backend(format!(
                "function {} holds key {held:?} in {}, and its backup version {} is gone; set {} and {} back by hand",
                self.function, snap.id_var, snap.backup_version, snap.id_var, snap.secret_var
            ))));
        };
        let old = |name: &str| backup.variables.get(name).cloned().unwrap_or_default();
        let (old_id, old_secret) = (old(&snap.id_var), zeroize::Zeroizing::new(old(&snap.secret_var)));
        let now = |name: &str| config.variables.get(name).map(String::as_str);
        if now(&snap.id_var) != Some(old_id.as_str()) || now(&snap.secret_var) != Some(old_secret.as_str()) {
            tracing::debug!(target = %self.name, version = %snap.backup_version, "restoring from the backup");
            self.write(&config, &snap, &old_id, &old_secret).await?;
            self.live().await?;
        }
        self.delete_backup(&snap).await
    }

    async fn finish(&self, snapshot: &Snapshot) -> Result<(), TargetError> {
        match self.journaled(snapshot)? {
            Journaled::Published(snap) => self.delete_backup(&snap).await,
            Journaled::Pending(p) => self.delete_pending(&p.pending_backup_token).await,
        }
    }
}

/// Unique to one target object: the process and the time it was built.
fn backup_token() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    format!("rekey-{}-{nanos:x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journaled_snapshot_is_told_from_its_pending_stand_in() {
        let t = target("lambda:fn");
        let pending = t.pending_snapshot().unwrap();
        assert!(matches!(t.journaled(&pending).unwrap(), Journaled::Pending(p) if p.pending_backup_token == t.token));
        let full = Snapshot::from_state(&LambdaSnapshot {
            function_arn: "arn".into(),
            revision_id: None,
            backup_version: "3".into(),
            backup_description: format!("{BACKUP_PREFIX} {}", t.token),
            backup_created: true,
            id_var: "A".into(),
            secret_var: "B".into(),
            old_key_id: None,
        });
        assert!(matches!(t.journaled(&full).unwrap(), Journaled::Published(s) if s.backup_version == "3"));
    }

    fn target(spec: &str) -> LambdaTarget {
        let spec: TargetSpec = spec.parse().unwrap();
        let sdk =
            aws_types::SdkConfig::builder().behavior_version(aws_sdk_lambda::config::BehaviorVersion::latest()).build();
        LambdaTarget::new(&spec, &sdk, &Options::default())
    }

    fn config(vars: &[(&str, &str)]) -> Config {
        Config {
            arn: "arn".into(),
            revision_id: None,
            description: String::new(),
            variables: vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            state: Some(State::Active),
            state_reason: None,
            status: Some(LastUpdateStatus::Successful),
            status_reason: None,
        }
    }

    #[test]
    fn finds_the_variables_and_refuses_both_spellings() {
        let t = target("lambda:fn");
        let c = config(&[("AWS_ACCESS_KEY_ID", "AKIAOLD"), ("AWS_SECRET_ACCESS_KEY", "s"), ("REGION", "x")]);
        assert_eq!(
            t.locate(&c).unwrap(),
            ("AWS_ACCESS_KEY_ID".into(), "AWS_SECRET_ACCESS_KEY".into(), Some("AKIAOLD".into()))
        );
        let c = config(&[("AWS_ACCESS_KEY_ID", "a"), ("aws_access_key_id", "b"), ("AWS_SECRET_ACCESS_KEY", "s")]);
        let e = t.locate(&c).unwrap_err().to_string();
        assert!(e.contains("AWS_ACCESS_KEY_ID and aws_access_key_id"), "{e}");
        let t = target("lambda:fn?id-field=KEY&secret-field=SECRET");
        let e = t.locate(&config(&[("KEY", "a")])).unwrap_err().to_string();
        assert!(e.contains("?secret-field=NAME"), "{e}");
    }

    #[test]
    fn busy_while_an_update_is_under_way() {
        let mut c = config(&[]);
        assert!(!c.busy());
        c.status = Some(LastUpdateStatus::InProgress);
        assert!(c.busy());
    }
}
