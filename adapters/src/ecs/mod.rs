//! `ecs:[<cluster>/]<service>`: an ECS service whose tasks get the key when they start.
//!
//! Two shapes are understood, found from the service's current task definition:
//! - **secrets**: a container reads the key from a Secrets Manager secret (`secrets[].valueFrom`).
//!   Another target rotates the secret; this one starts new tasks so they read it.
//! - **environment**: the key is written in a container's `environment`. Rotation registers a copy
//!   of the revision with the two values replaced and deploys it; rollback points the service back,
//!   and `finish` deregisters the old revision once the rotation is final.
//!
//! Either way the change reaches consumers only through a rollout, which `wait_consumers` awaits
//! (see [`rollout`]).

use std::fmt::Debug;

use async_trait::async_trait;
use aws_sdk_ecs::Client;
use aws_sdk_ecs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ecs::types::{
    DeploymentControllerType, Service, SortOrder, TaskDefinition, TaskDefinitionField, TaskDefinitionStatus,
};
use serde::{Deserialize, Serialize};

use crate::error::SdkFailure;
use crate::{ErrorKind, NewKey, Options, Preflight, Role, Snapshot, Target, TargetError, TargetSpec};

pub mod rollout;
mod taskdef;

pub use rollout::{
    DeploymentState, Progress, ServiceObserver, ServiceState, WaitFor, WaitSettings, Which, assess, wait_rollout,
};
pub use taskdef::Mode;
use taskdef::{Fields, Found};

/// What the journal keeps for an ECS target. No secret: task definitions are named by ARN only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EcsSnapshot {
    pub cluster: String,
    pub service: String,
    /// The revision the service ran before the rotation.
    pub task_definition: String,
    pub mode: Mode,
    /// Deployments present before `apply`: the one it starts is the first other one, so a resumed
    /// process can find the rollout to wait for from the snapshot and the service alone.
    pub deployments: Vec<String>,
}

pub struct EcsTarget {
    name: String,
    cluster: String,
    service: String,
    fields: Fields,
    region: String,
    client: Client,
    options: Options,
}

impl EcsTarget {
    pub fn new(spec: &TargetSpec, sdk: &aws_types::SdkConfig, options: &Options) -> Self {
        let (cluster, service) = match spec.location.split_once('/') {
            Some((c, s)) => (c.to_string(), s.to_string()),
            None => ("default".to_string(), spec.location.clone()),
        };
        EcsTarget {
            name: spec.raw.clone(),
            cluster,
            service,
            fields: Fields {
                container: spec.option("container").map(str::to_string),
                id: spec.id_fields(),
                secret: spec.secret_fields(),
            },
            region: sdk.region().map(|r| r.to_string()).unwrap_or_else(|| "?".into()),
            client: Client::new(sdk),
            options: options.clone(),
        }
    }

    fn err(&self, kind: ErrorKind) -> TargetError {
        TargetError::new(&self.name, kind)
    }

    fn sdk_err<E, R>(&self, op: &str, e: SdkError<E, R>) -> TargetError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: Debug,
    {
        sdk_error(&self.name, op, &self.cluster, &self.service, &self.region, e)
    }

    fn observer(&self) -> SdkObserver<'_> {
        SdkObserver { target: self }
    }

    fn wait_settings(&self) -> WaitSettings {
        WaitSettings {
            name: self.name.clone(),
            timeout: self.options.ecs_timeout,
            poll_interval: self.options.poll_interval,
            status: self.options.status.clone(),
        }
    }

    async fn describe_service(&self) -> Result<Service, TargetError> {
        let out = self
            .client
            .describe_services()
            .cluster(&self.cluster)
            .services(&self.service)
            .send()
            .await
            .map_err(|e| self.sdk_err("ecs:DescribeServices", e))?;
        let Some(svc) = out.services().first() else {
            let why = out.failures().first().and_then(|f| f.reason()).unwrap_or("MISSING");
            return Err(self.err(ErrorKind::NotFound(format!(
                "service {} not found in cluster {} in {} ({why}); fix: check the region and write ecs:<cluster>/<service>",
                self.service, self.cluster, self.region
            ))));
        };
        match svc.status() {
            Some("ACTIVE") | None => {}
            Some(status) => {
                return Err(self.err(ErrorKind::NotFound(format!(
                    "service {} in cluster {} is {status}; fix: target an ACTIVE service",
                    self.service, self.cluster
                ))));
            }
        }
        Ok(svc.clone())
    }

    async fn describe_task_definition(
        &self,
        arn: &str,
        with_tags: bool,
    ) -> Result<(TaskDefinition, Vec<aws_sdk_ecs::types::Tag>), TargetError> {
        let mut req = self.client.describe_task_definition().task_definition(arn);
        if with_tags {
            req = req.include(TaskDefinitionField::Tags);
        }
        let out = req.send().await.map_err(|e| self.sdk_err("ecs:DescribeTaskDefinition", e))?;
        let td = out
            .task_definition()
            .cloned()
            .ok_or_else(|| self.err(ErrorKind::NotFound(format!("task definition {arn} not found"))))?;
        Ok((td, out.tags().to_vec()))
    }

    fn locate(&self, td: &TaskDefinition) -> Result<Found, TargetError> {
        taskdef::locate(td.container_definitions(), &self.fields).map_err(|problem| {
            self.err(ErrorKind::Unusable(format!(
                "service {} (cluster {}), task definition {}: {problem}",
                self.service,
                self.cluster,
                td.task_definition_arn().unwrap_or("?")
            )))
        })
    }

    /// The service, its current task definition, and where that holds the key.
    async fn inspect(&self) -> Result<(Service, TaskDefinition, Found), TargetError> {
        let svc = self.describe_service().await?;
        if let Some(kind) = svc.deployment_controller().map(|c| c.r#type())
            && *kind != DeploymentControllerType::Ecs
        {
            return Err(self.err(ErrorKind::Unusable(format!(
                "service {} uses the {} deployment controller; rekey deploys only with the ECS (rolling update) \
                 controller; fix: rotate the key through that controller's pipeline, or target its secret only",
                self.service,
                kind.as_str()
            ))));
        }
        let arn = svc
            .task_definition()
            .ok_or_else(|| self.err(ErrorKind::Unusable(format!("service {} has no task definition", self.service))))?
            .to_string();
        let (td, _) = self.describe_task_definition(&arn, false).await?;
        let found = self.locate(&td)?;
        Ok((svc, td, found))
    }

    fn state(&self, snapshot: &Snapshot) -> Result<EcsSnapshot, TargetError> {
        let state: EcsSnapshot = snapshot.to_state(&self.name)?;
        if state.cluster != self.cluster || state.service != self.service {
            return Err(self.err(ErrorKind::Unusable(format!(
                "journal snapshot is for service {}/{}, not {}/{}",
                state.cluster, state.service, self.cluster, self.service
            ))));
        }
        Ok(state)
    }

    /// UpdateService, returning the deployment it started (the PRIMARY one in the answer).
    ///
    /// `forceNewDeployment` also with a new task definition: a re-run that names the revision the
    /// service already has must still restart tasks (and moto starts a deployment only then).
    async fn deploy(&self, task_definition: Option<&str>) -> Result<Option<String>, TargetError> {
        let out = self
            .client
            .update_service()
            .cluster(&self.cluster)
            .service(&self.service)
            .set_task_definition(task_definition.map(str::to_string))
            .force_new_deployment(true)
            .send()
            .await
            .map_err(|e| self.sdk_err("ecs:UpdateService", e))?;
        let primary = out
            .service()
            .and_then(|s| s.deployments().iter().find(|d| d.status() == Some("PRIMARY")))
            .and_then(|d| d.id())
            .map(str::to_string);
        Ok(primary)
    }

    async fn deploy_and_wait(&self, task_definition: Option<&str>) -> Result<(), TargetError> {
        let before = deployment_ids(&self.describe_service().await?);
        let which = match self.deploy(task_definition).await? {
            Some(id) => Which::Id(id),
            None => Which::NewSince(before),
        };
        wait_rollout(&self.observer(), which, None, &self.wait_settings()).await
    }

    /// Deregister the revisions `apply` registered from the snapshot's one: newer ACTIVE revisions of
    /// the family that are the snapshot's with another key. Found by content, so a crash between
    /// RegisterTaskDefinition and UpdateService leaves nothing behind either.
    async fn deregister_ours(&self, state: &EcsSnapshot) -> Result<(), TargetError> {
        let Some((family, base)) = taskdef::family_revision(&state.task_definition) else {
            return Ok(());
        };
        let (original, _) = self.describe_task_definition(&state.task_definition, false).await?;
        let current = self.describe_service().await?.task_definition().map(str::to_string);
        let mut newer = Vec::new();
        let mut pages = self
            .client
            .list_task_definitions()
            .family_prefix(family)
            .status(TaskDefinitionStatus::Active)
            .sort(SortOrder::Desc)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.sdk_err("ecs:ListTaskDefinitions", e))?;
            let mut older_only = true;
            for arn in page.task_definition_arns() {
                // The prefix may also match longer family names.
                if let Some((f, rev)) = taskdef::family_revision(arn)
                    && f == family
                    && rev > base
                {
                    newer.push(arn.clone());
                    older_only = false;
                }
            }
            // Newest first, so a page of older revisions ends the search. The order is not relied on
            // within a page: moto ignores `sort`.
            if older_only {
                break;
            }
        }
        for arn in newer {
            if current.as_deref() == Some(arn.as_str()) {
                continue;
            }
            let (candidate, _) = self.describe_task_definition(&arn, false).await?;
            if taskdef::is_rewrite_of(&candidate, &original, &self.fields) {
                self.client
                    .deregister_task_definition()
                    .task_definition(&arn)
                    .send()
                    .await
                    .map_err(|e| self.sdk_err("ecs:DeregisterTaskDefinition", e))?;
                tracing::info!(target_name = %self.name, "deregistered {arn}, which held the new key");
            }
        }
        Ok(())
    }
}

fn deployment_ids(svc: &Service) -> Vec<String> {
    svc.deployments().iter().filter_map(|d| d.id()).map(str::to_string).collect()
}

fn service_state(svc: &Service) -> ServiceState {
    ServiceState {
        task_definition: svc.task_definition().map(str::to_string),
        deployments: svc
            .deployments()
            .iter()
            .map(|d| DeploymentState {
                id: d.id().unwrap_or_default().to_string(),
                status: d.status().unwrap_or_default().to_string(),
                task_definition: d.task_definition().map(str::to_string),
                rollout_state: d.rollout_state().map(|s| s.as_str().to_string()),
                rollout_state_reason: d.rollout_state_reason().map(str::to_string),
                running: d.running_count(),
                desired: d.desired_count(),
                pending: d.pending_count(),
                failed_tasks: d.failed_tasks(),
                created_at: d.created_at().and_then(|t| t.to_millis().ok()),
            })
            .collect(),
    }
}

fn sdk_error<E, R>(name: &str, op: &str, cluster: &str, service: &str, region: &str, e: SdkError<E, R>) -> TargetError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: Debug,
{
    let message = e.message().unwrap_or_default().to_string();
    let kind = match e.code() {
        Some("AccessDeniedException" | "AccessDenied" | "UnauthorizedOperation") => ErrorKind::AccessDenied(format!(
            "{op} on service {service} in cluster {cluster}: {message}; fix: allow {op}"
        )),
        Some("ClusterNotFoundException") => ErrorKind::NotFound(format!(
            "cluster {cluster} not found in {region}; fix: check the region and write ecs:<cluster>/<service>"
        )),
        Some("ServiceNotFoundException" | "ServiceNotActiveException") => ErrorKind::NotFound(format!(
            "service {service} not found or not active in cluster {cluster} in {region}; fix: check the name and the region"
        )),
        _ => SdkFailure::new(op, &e, &[]).common_kind(),
    };
    TargetError::new(name, kind)
}

/// The rollout seen through `DescribeServices`.
struct SdkObserver<'a> {
    target: &'a EcsTarget,
}

#[async_trait]
impl ServiceObserver for SdkObserver<'_> {
    async fn observe(&self) -> Result<ServiceState, TargetError> {
        Ok(service_state(&self.target.describe_service().await?))
    }
}

#[async_trait]
impl Target for EcsTarget {
    fn name(&self) -> &str {
        &self.name
    }

    fn role(&self) -> Role {
        Role::Deployer
    }

    async fn preflight(&self) -> Result<Preflight, TargetError> {
        let (svc, td, found) = self.inspect().await?;
        let td_arn = td.task_definition_arn().unwrap_or("?");
        let mut pre = Preflight { reads_from: found.secret_arns.clone(), ..Preflight::default() };
        match found.mode {
            Mode::Environment => {
                pre.current_key_id = found.key_ids.first().cloned();
                pre.changes.push(format!(
                    "register a copy of {td_arn} with the new key in the environment of container {}, deploy it to \
                     service {} and wait for the rollout",
                    found.env_containers.join(", "),
                    self.service
                ));
                if found.key_ids.len() > 1 {
                    pre.warnings.push(format!(
                        "containers {} hold different key ids ({}); all get the new key",
                        found.env_containers.join(", "),
                        found.key_ids.join(", ")
                    ));
                }
            }
            Mode::Secrets => pre.changes.push(format!(
                "force a new deployment of service {} so that container {} reads {} again, and wait for the rollout",
                self.service,
                found.secret_containers.join(", "),
                found.secret_arns.join(", ")
            )),
        }
        if svc.desired_count() == 0 {
            pre.warnings
                .push(format!("service {} has desiredCount 0: no task uses the key until it scales up", self.service));
        }
        Ok(pre)
    }

    async fn snapshot(&self) -> Result<Snapshot, TargetError> {
        let (svc, td, found) = self.inspect().await?;
        Ok(Snapshot::from_state(&EcsSnapshot {
            cluster: self.cluster.clone(),
            service: self.service.clone(),
            task_definition: td.task_definition_arn().unwrap_or_default().to_string(),
            mode: found.mode,
            deployments: deployment_ids(&svc),
        }))
    }

    async fn apply(&self, key: &NewKey, snapshot: &Snapshot) -> Result<(), TargetError> {
        let state = self.state(snapshot)?;
        if state.mode == Mode::Secrets {
            self.deploy(None).await?;
            return Ok(());
        }
        let (td, tags) = self.describe_task_definition(&state.task_definition, true).await?;
        let found = self.locate(&td)?;
        let defs = taskdef::with_new_key(
            td.container_definitions(),
            &found.env_containers,
            &self.fields,
            &key.access_key_id,
            key.secret(),
        );
        let registered = taskdef::register_input(&td, &tags, defs)
            .send_with(&self.client)
            .await
            .map_err(|e| redact(self.sdk_err("ecs:RegisterTaskDefinition", e), key.secret()))?;
        let new_arn = registered
            .task_definition()
            .and_then(|t| t.task_definition_arn())
            .ok_or_else(|| self.err(ErrorKind::Backend("RegisterTaskDefinition returned no ARN".into())))?
            .to_string();
        tracing::info!(target_name = %self.name, "registered {new_arn}");
        if let Err(e) = self.deploy(Some(&new_arn)).await {
            // Unused, it would only keep a copy of the new key around.
            let _ = self.client.deregister_task_definition().task_definition(&new_arn).send().await;
            return Err(e);
        }
        Ok(())
    }

    async fn wait_consumers(&self, snapshot: &Snapshot) -> Result<(), TargetError> {
        let state = self.state(snapshot)?;
        let not_td = (state.mode == Mode::Environment).then_some(state.task_definition.as_str());
        wait_rollout(&self.observer(), Which::NewSince(state.deployments.clone()), not_td, &self.wait_settings()).await
    }

    async fn current_key_id(&self) -> Result<Option<String>, TargetError> {
        let (_, _, found) = self.inspect().await?;
        Ok(match found.mode {
            Mode::Environment => found.key_ids.first().cloned(),
            Mode::Secrets => None,
        })
    }

    async fn rollback(&self, snapshot: &Snapshot) -> Result<(), TargetError> {
        let state = self.state(snapshot)?;
        match state.mode {
            // The store was restored first; new tasks read the old key from it.
            Mode::Secrets => self.deploy_and_wait(None).await,
            Mode::Environment => {
                let svc = self.describe_service().await?;
                if svc.task_definition() != Some(state.task_definition.as_str()) {
                    self.deploy_and_wait(Some(&state.task_definition)).await?;
                } else if svc
                    .deployments()
                    .iter()
                    .any(|d| d.id().is_some_and(|id| !state.deployments.iter().any(|s| s == id)))
                {
                    // Already pointing back (an earlier rollback, or the circuit breaker): wait for
                    // whatever rollout is running to finish. Nothing new since the snapshot: nothing to wait for.
                    let primary = svc.deployments().iter().find(|d| d.status() == Some("PRIMARY")).and_then(|d| d.id());
                    if let Some(id) = primary {
                        wait_rollout(&self.observer(), Which::Id(id.to_string()), None, &self.wait_settings()).await?;
                    }
                }
                self.deregister_ours(&state).await
            }
        }
    }

    /// Environment mode: the snapshot's revision was kept only to point the service back at it. Once
    /// the service runs the copy `apply` made of it, deregister it, as an env file's backup is
    /// deleted: it holds the retired key and must not be deployed again by mistake. Nothing is done
    /// after a rollback (the service runs that revision again) or when someone else deployed since.
    async fn finish(&self, snapshot: &Snapshot) -> Result<(), TargetError> {
        let state = self.state(snapshot)?;
        if state.mode != Mode::Environment {
            return Ok(());
        }
        let Some(current) = self.describe_service().await?.task_definition().map(str::to_string) else {
            return Ok(());
        };
        if current == state.task_definition {
            return Ok(());
        }
        let (original, _) = self.describe_task_definition(&state.task_definition, false).await?;
        if original.status() != Some(&TaskDefinitionStatus::Active) {
            return Ok(());
        }
        let (running, _) = self.describe_task_definition(&current, false).await?;
        if !taskdef::is_rewrite_of(&running, &original, &self.fields) {
            return Ok(());
        }
        self.client
            .deregister_task_definition()
            .task_definition(&state.task_definition)
            .send()
            .await
            .map_err(|e| self.sdk_err("ecs:DeregisterTaskDefinition", e))?;
        tracing::info!(target_name = %self.name, "deregistered {}, which held the old key", state.task_definition);
        Ok(())
    }
}

/// Backend messages may quote the request; the secret must not reach an error.
fn redact(mut e: TargetError, secret: &str) -> TargetError {
    if secret.is_empty() {
        return e;
    }
    let scrub = |s: &mut String| *s = s.replace(secret, "[redacted]");
    match &mut e.kind {
        ErrorKind::NotFound(s)
        | ErrorKind::AccessDenied(s)
        | ErrorKind::Unusable(s)
        | ErrorKind::Consumers(s)
        | ErrorKind::Backend(s) => scrub(s),
        ErrorKind::Timeout { what, .. } => scrub(what),
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(spec: &str) -> EcsTarget {
        let sdk = aws_types::SdkConfig::builder()
            .region(aws_types::region::Region::new("us-east-1"))
            .behavior_version(aws_sdk_ecs::config::BehaviorVersion::latest())
            .build();
        EcsTarget::new(&spec.parse().unwrap(), &sdk, &Options::default())
    }

    #[test]
    fn parses_cluster_service_and_options() {
        let t = target("ecs:api");
        assert_eq!((t.cluster.as_str(), t.service.as_str(), t.role()), ("default", "api", Role::Deployer));
        let t = target("ecs:prod/api?container=web&id-field=KEY");
        assert_eq!((t.cluster.as_str(), t.service.as_str()), ("prod", "api"));
        assert_eq!((t.fields.container.as_deref(), t.fields.id.clone()), (Some("web"), vec!["KEY".to_string()]));
        assert_eq!(t.name(), "ecs:prod/api?container=web&id-field=KEY");
    }

    #[test]
    fn snapshot_round_trips_and_checks_its_service() {
        let t = target("ecs:prod/api");
        let state = EcsSnapshot {
            cluster: "prod".into(),
            service: "api".into(),
            task_definition: "arn:aws:ecs:us-east-1:1:task-definition/api:7".into(),
            mode: Mode::Environment,
            deployments: vec!["ecs-svc/1".into()],
        };
        let snap = Snapshot::from_state(&state);
        assert_eq!(snap.0["mode"], "environment");
        assert_eq!(t.state(&snap).unwrap(), state);
        assert!(target("ecs:prod/web").state(&snap).is_err());
    }

    #[test]
    fn redacts_the_secret_from_errors() {
        let e = redact(TargetError::new("t", ErrorKind::Backend("bad value s3cr3t in container".into())), "s3cr3t");
        assert_eq!(e.to_string(), "t: bad value [redacted] in container");
    }
}
