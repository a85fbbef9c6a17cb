//! Target adapters: the places a rotated access key is delivered to.
//!
//! One small async trait, [`Target`], and one module per backend. A newcomer adding a target copies
//! the smallest module that implements it whole (`exec.rs`), registers it in [`build`], and runs the
//! shared conformance suite (`conformance.rs`) against it: apply, verify, roll back, and roll back
//! after a crash from a snapshot that went through the journal. A key kept in a local file needs
//! only its file format: copy `envfile.rs`, which hands the rest to the engine in `keyfile.rs`.
//!
//! The contract every adapter keeps:
//! - The secret reaches the adapter as a [`NewKey`] and goes nowhere but the target itself: not into
//!   a [`Snapshot`], an error, a log line or a child process's command line.
//! - A [`Snapshot`] is taken before the first change and is enough to put the target back, even from
//!   a new process after a crash (it is persisted in the rotation journal, so it holds no secret).
//! - `rollback` is idempotent: it is safe when `apply` never ran, ran halfway, or was already undone.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

pub mod ecs;
pub mod envfile;
pub mod error;
pub mod exec;
mod file;
mod json_key;
mod keyfile;
pub mod lambda;
pub mod profile;
pub mod secretsmanager;
mod spec;
pub mod ssm;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use error::{chain, error_text};
pub use spec::{SpecError, TargetKind, TargetSpec};

/// The new access key as targets receive it. The secret is zeroized on drop and never printed.
pub struct NewKey {
    pub access_key_id: String,
    pub secret_access_key: SecretString,
}

impl NewKey {
    pub fn new(access_key_id: impl Into<String>, secret_access_key: SecretString) -> Self {
        Self { access_key_id: access_key_id.into(), secret_access_key }
    }

    /// The secret, for the one write that puts it into a target.
    pub fn secret(&self) -> &str {
        self.secret_access_key.expose_secret()
    }
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewKey")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"[redacted]")
            .finish()
    }
}

/// What a target held before the change: enough to put it back, and no secret.
///
/// Each adapter serializes its own small struct into it; the orchestrator only stores it in the
/// journal and hands it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot(pub serde_json::Value);

impl Snapshot {
    pub fn from_state<T: Serialize>(state: &T) -> Self {
        Snapshot(serde_json::to_value(state).expect("snapshot state serializes"))
    }

    pub fn to_state<T: for<'de> Deserialize<'de>>(&self, target: &str) -> Result<T, TargetError> {
        serde_json::from_value(self.0.clone())
            .map_err(|e| TargetError::new(target, ErrorKind::Unusable(format!("journal snapshot unreadable: {e}"))))
    }
}

/// What preflight learned about a target: what it holds now and what a rotation would change.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Preflight {
    /// The access key id the target hands to consumers now, when it holds one itself.
    pub current_key_id: Option<String>,
    /// One line per change a rotation would make, for `--dry-run` and the report.
    pub changes: Vec<String>,
    /// The ARN of the store this target is (a secret's ARN), so deployers can be matched to it.
    pub store_arn: Option<String>,
    /// Stores this target's consumers read the key from (an ECS task's `secrets[].valueFrom`): they
    /// must be rotated by another target placed before this one.
    pub reads_from: Vec<String>,
    /// Things the user should know but that do not stop the rotation.
    pub warnings: Vec<String>,
}

/// The order in which targets are undone.
///
/// A deployer (an ECS service) makes consumers re-read values from stores (a secret). Undoing it
/// before its store is restored would start tasks with the new key again, so deployers are rolled
/// back after every store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Store,
    Deployer,
}

/// Where a target's long waits (an ECS rollout) show how they are going: on a terminal, the
/// command line's status line, shared with its other waits. Without one, a wait logs a line now
/// and then.
pub trait WaitStatus: Send + Sync {
    /// How the wait stands now, in a few words (the display adds the time spent).
    fn update(&self, line: &str);
    /// The wait is over: take the line off.
    fn done(&self);
}

impl fmt::Debug for dyn WaitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WaitStatus")
    }
}

/// Settings that the command line gives to adapters.
#[derive(Debug, Clone)]
pub struct Options {
    /// Bound on waiting for an ECS rollout (`--ecs-timeout`).
    pub ecs_timeout: Duration,
    /// How often to poll while waiting for a rollout.
    pub poll_interval: Duration,
    /// A shell command to run after a file target is written (`--restart-cmd`).
    pub restart_cmd: Option<String>,
    /// Bound on a restart command's run time.
    pub restart_timeout: Duration,
    /// Where long waits show their progress; None: log lines.
    pub status: Option<Arc<dyn WaitStatus>>,
    /// The key being replaced, and the new one once it exists (known on resume from the journal):
    /// for targets that hand them to commands (`exec:`).
    pub old_key_id: Option<String>,
    pub new_key_id: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ecs_timeout: Duration::from_secs(15 * 60),
            poll_interval: Duration::from_secs(6),
            restart_cmd: None,
            restart_timeout: Duration::from_secs(120),
            status: None,
            old_key_id: None,
            new_key_id: None,
        }
    }
}

/// A place the access key is delivered to.
#[async_trait]
pub trait Target: Send + Sync {
    /// The spec as the user wrote it (`secretsmanager:prod/app/aws`); every message names it.
    fn name(&self) -> &str;

    fn role(&self) -> Role {
        Role::Store
    }

    /// Read-only check, before anything changes: the target exists, can be read and written, and
    /// holds a key in a shape this adapter understands.
    async fn preflight(&self) -> Result<Preflight, TargetError>;

    /// Capture what `apply` will change. The orchestrator journals it before calling `stage`/`apply`.
    async fn snapshot(&self) -> Result<Snapshot, TargetError>;

    /// What `snapshot` is about to leave outside this process (a published version holding the old
    /// secret), for the orchestrator to journal before it calls `snapshot`: should the process die
    /// before the snapshot itself is journaled, `rollback` and `finish` given this stand-in find
    /// what `snapshot` left and remove it. `None`, the default, when `snapshot` leaves nothing that
    /// the journal would not know of.
    fn pending_snapshot(&self) -> Option<Snapshot> {
        None
    }

    /// Write the new key durably where consumers do not see it yet (Secrets Manager's AWSPENDING),
    /// so that the secret survives a crash before it is verified. Returns false when the target
    /// cannot stage; then the secret lives only in memory until `apply`.
    async fn stage(&self, _key: &NewKey, _snapshot: &Snapshot) -> Result<bool, TargetError> {
        Ok(false)
    }

    /// Make the new key the one consumers get.
    async fn apply(&self, key: &NewKey, snapshot: &Snapshot) -> Result<(), TargetError>;

    /// Wait, bounded, until consumers use what `apply` wrote (a rollout, a restart command).
    async fn wait_consumers(&self, _snapshot: &Snapshot) -> Result<(), TargetError> {
        Ok(())
    }

    /// The access key id that consumers get from the target now, if the target holds one itself.
    async fn current_key_id(&self) -> Result<Option<String>, TargetError>;

    /// Put back what the snapshot captured, and wait until consumers use it again. Idempotent.
    async fn rollback(&self, snapshot: &Snapshot) -> Result<(), TargetError>;

    /// Drop what was kept for rollback (backup files, staged versions) once the rotation is final.
    async fn finish(&self, _snapshot: &Snapshot) -> Result<(), TargetError> {
        Ok(())
    }
}

/// An error from a target, naming the target it came from.
#[derive(Debug, thiserror::Error)]
#[error("{target}: {kind}")]
pub struct TargetError {
    pub target: String,
    pub kind: ErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("access denied: {0}")]
    AccessDenied(String),
    /// The target exists but does not hold a key in a shape the adapter understands.
    #[error("{0}")]
    Unusable(String),
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout { what: String, waited: Duration },
    /// The consumers could not take the new value (a failed rollout, a failing restart command).
    #[error("{0}")]
    Consumers(String),
    /// Any other failure of the backend.
    #[error("{0}")]
    Backend(String),
}

impl TargetError {
    pub fn new(target: impl Into<String>, kind: ErrorKind) -> Self {
        TargetError { target: target.into(), kind }
    }
}

/// Build the adapter for a spec. Building talks to nothing; `preflight` does.
pub fn build(spec: &TargetSpec, sdk: &aws_types::SdkConfig, options: &Options) -> Box<dyn Target> {
    match spec.kind {
        TargetKind::SecretsManager => Box::new(secretsmanager::SecretsManagerTarget::new(spec, sdk, options)),
        TargetKind::Ecs => Box::new(ecs::EcsTarget::new(spec, sdk, options)),
        TargetKind::Env => Box::new(envfile::EnvFileTarget::new(spec, options)),
        TargetKind::Ssm => Box::new(ssm::SsmTarget::new(spec, sdk, options)),
        TargetKind::Lambda => Box::new(lambda::LambdaTarget::new(spec, sdk, options)),
        TargetKind::Profile => Box::new(profile::ProfileTarget::new(spec, sdk, options)),
        TargetKind::Exec => Box::new(exec::ExecTarget::new(spec, sdk, options)),
    }
}
