//! Carrying out the sweep's containment steps (and their reverses) for `rekey contain`.
//!
//! `rekey contain` owns the plan, the log and the order; it hands every step of the sweep's kind
//! here. Each step is idempotent, like the IAM ones: a thing already in the wanted state is "already
//! done" (undo then leaves it alone), so a second `--apply` after a crash, or an undo after someone
//! fixed a thing by hand, changes nothing it should not. Instances are stopped, never terminated.

use std::time::Duration;

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    IpPermission, IpRange, Ipv6Range, LaunchPermission, LaunchPermissionModifications, OperationType, PermissionGroup,
    SnapshotAttributeName,
};
use serde_json::Value;

use super::actions::{IngressRule, PeeringSide, PolicyHolder, Sharing, SweepAction};
use super::clients::{Clients, Counter};
use super::policy::{statements, with_statement, without_statement};

/// What a step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    /// False: it was already so; nothing changed.
    pub changed: bool,
    pub detail: Option<String>,
}

impl Done {
    fn changed() -> Done {
        Done { changed: true, detail: None }
    }
    fn changed_with(detail: String) -> Done {
        Done { changed: true, detail: Some(detail) }
    }
    fn already(why: &str) -> Done {
        Done { changed: false, detail: Some(why.to_string()) }
    }
}

/// The clients the steps run with, per Region, built from the configuration rekey runs with.
pub struct Executor {
    sdk: aws_types::SdkConfig,
    counter: Counter,
    /// How long a start waits for a stopping instance to be stopped.
    stop_wait: Duration,
}

impl Executor {
    pub fn new(sdk: &aws_types::SdkConfig) -> Executor {
        Executor { sdk: sdk.clone(), counter: Counter::default(), stop_wait: Duration::from_secs(300) }
    }

    fn clients(&self, region: &str) -> Clients {
        Clients::new(&self.sdk, region, self.counter.clone())
    }

    /// Runs one step; an error is one line saying what failed.
    pub async fn run(&self, action: &SweepAction) -> Result<Done, String> {
        let c = self.clients(action.region());
        match action {
            SweepAction::StopInstance { instance_id, .. } => stop(&c, instance_id).await,
            SweepAction::StartInstance { instance_id, .. } => start(&c, instance_id, self.stop_wait).await,
            SweepAction::RevokeIngress { group_id, rule, .. } => revoke(&c, group_id, rule).await,
            SweepAction::AuthorizeIngress { group_id, rule, .. } => authorize(&c, group_id, rule).await,
            SweepAction::RemovePolicyStatement { holder, statement, .. } => {
                let Some(current) = read_policy(&c, holder).await? else {
                    return Ok(Done::already("it has no policy any more"));
                };
                let Some(rest) = without_statement(&current, statement) else {
                    return Ok(Done::already("the statement is no longer in the policy"));
                };
                write_policy(&c, holder, &rest).await?;
                Ok(Done::changed_with(format!(
                    "removed one statement from the policy of {}; the policy as it was is in the plan",
                    holder.describe()
                )))
            }
            SweepAction::RestorePolicyStatement { holder, statement, policy } => {
                let current = read_policy(&c, holder).await?;
                if current.as_ref().is_some_and(|p| statements(p).contains(&statement)) {
                    return Ok(Done::already("the statement is in the policy"));
                }
                // With no policy left, the recorded one is the base (its Version and Id come back too).
                let base =
                    current.unwrap_or_else(|| without_statement(policy, statement).unwrap_or_else(|| policy.clone()));
                write_policy(&c, holder, &with_statement(&base, statement)).await?;
                Ok(Done::changed())
            }
            SweepAction::EndPeering { peering_id, reject, .. } => end_peering(&c, peering_id, *reject).await,
            SweepAction::RequestPeering { old_peering_id, ours, theirs, .. } => {
                let accepter = (theirs.owner_id == ours.owner_id).then(|| self.clients(&theirs.region));
                request_peering(&c, accepter.as_ref(), old_peering_id, ours, theirs).await
            }
            SweepAction::UnshareSnapshot { snapshot_id, sharing, .. } => {
                snapshot_permission(&c, snapshot_id, sharing, OperationType::Remove).await
            }
            SweepAction::ShareSnapshot { snapshot_id, sharing, .. } => {
                snapshot_permission(&c, snapshot_id, sharing, OperationType::Add).await
            }
            SweepAction::UnshareImage { image_id, sharing, .. } => image_permission(&c, image_id, sharing, false).await,
            SweepAction::ShareImage { image_id, sharing, .. } => image_permission(&c, image_id, sharing, true).await,
            SweepAction::ThrottleFunction { function_name, .. } => {
                let r = c
                    .lambda
                    .put_function_concurrency()
                    .function_name(function_name)
                    .reserved_concurrent_executions(0)
                    .send()
                    .await;
                match r {
                    Ok(_) => Ok(Done::changed_with("reserved concurrency 0: it cannot run".into())),
                    Err(e) if gone(e.code()) => Ok(Done::already("no such function")),
                    Err(e) => {
                        Err(format!("lambda:PutFunctionConcurrency {function_name}: {}", crate::aws::error_text(&e)))
                    }
                }
            }
            SweepAction::UnthrottleFunction { function_name, previous_reserved, .. } => {
                let r = match previous_reserved {
                    Some(n) => c
                        .lambda
                        .put_function_concurrency()
                        .function_name(function_name)
                        .reserved_concurrent_executions(*n)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|e| (e.code().map(str::to_string), crate::aws::error_text(&e))),
                    None => c
                        .lambda
                        .delete_function_concurrency()
                        .function_name(function_name)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|e| (e.code().map(str::to_string), crate::aws::error_text(&e))),
                };
                match r {
                    Ok(()) => Ok(Done::changed()),
                    Err((code, _)) if gone(code.as_deref()) => Ok(Done::already("no such function")),
                    Err((_, e)) => Err(format!("lambda: give {function_name} its concurrency back: {e}")),
                }
            }
        }
    }
}

fn gone(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "ResourceNotFoundException"
                | "NoSuchBucket"
                | "InvalidInstanceID.NotFound"
                | "InvalidGroup.NotFound"
                | "InvalidVpcPeeringConnectionID.NotFound"
                | "InvalidSnapshot.NotFound"
                | "InvalidAMIID.NotFound"
                | "NotFoundException"
        )
    )
}

async fn instance_state(c: &Clients, id: &str) -> Result<Option<String>, String> {
    match c.ec2.describe_instances().instance_ids(id).send().await {
        Ok(o) => Ok(o
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find_map(|i| i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()))),
        Err(e) if gone(e.code()) => Ok(None),
        Err(e) => Err(format!("ec2:DescribeInstances {id}: {}", crate::aws::error_text(&e))),
    }
}

async fn stop(c: &Clients, id: &str) -> Result<Done, String> {
    match instance_state(c, id).await?.as_deref() {
        None | Some("terminated" | "shutting-down") => return Ok(Done::already("no such instance (terminated?)")),
        Some("stopped" | "stopping") => return Ok(Done::already("already stopped")),
        _ => {}
    }
    c.ec2
        .stop_instances()
        .instance_ids(id)
        .send()
        .await
        .map_err(|e| format!("ec2:StopInstances {id}: {}", crate::aws::error_text(&e)))?;
    Ok(Done::changed_with(format!("stopping {id} in {} (its EBS volumes stay)", c.region)))
}

async fn start(c: &Clients, id: &str, wait: Duration) -> Result<Done, String> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match instance_state(c, id).await?.as_deref() {
            None | Some("terminated" | "shutting-down") => {
                return Err(format!("instance {id} no longer exists: it cannot be started again"));
            }
            Some("running" | "pending") => return Ok(Done::already("already running")),
            // AWS refuses to start an instance that is still stopping.
            Some("stopping") if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            _ => break,
        }
    }
    c.ec2
        .start_instances()
        .instance_ids(id)
        .send()
        .await
        .map_err(|e| format!("ec2:StartInstances {id}: {}", crate::aws::error_text(&e)))?;
    Ok(Done::changed_with(format!("starting {id} in {}", c.region)))
}

fn permission(rule: &IngressRule) -> IpPermission {
    let mut p =
        IpPermission::builder().ip_protocol(&rule.protocol).set_from_port(rule.from_port).set_to_port(rule.to_port);
    if rule.is_ipv6() {
        p = p.ipv6_ranges(Ipv6Range::builder().cidr_ipv6(&rule.cidr).set_description(rule.description.clone()).build());
    } else {
        p = p.ip_ranges(IpRange::builder().cidr_ip(&rule.cidr).set_description(rule.description.clone()).build());
    }
    p.build()
}

async fn revoke(c: &Clients, group: &str, rule: &IngressRule) -> Result<Done, String> {
    match c.ec2.revoke_security_group_ingress().group_id(group).ip_permissions(permission(rule)).send().await {
        // AWS answers `Return: false` (no error) for a rule that is not there.
        Ok(o) if o.r#return() == Some(false) => Ok(Done::already("the rule is no longer there")),
        Ok(_) => Ok(Done::changed()),
        Err(e) if matches!(e.code(), Some("InvalidPermission.NotFound")) || gone(e.code()) => {
            Ok(Done::already("the rule is no longer there"))
        }
        Err(e) => {
            Err(format!("ec2:RevokeSecurityGroupIngress {group} {}: {}", rule.describe(), crate::aws::error_text(&e)))
        }
    }
}

async fn authorize(c: &Clients, group: &str, rule: &IngressRule) -> Result<Done, String> {
    match c.ec2.authorize_security_group_ingress().group_id(group).ip_permissions(permission(rule)).send().await {
        Ok(_) => Ok(Done::changed()),
        Err(e) if e.code() == Some("InvalidPermission.Duplicate") => Ok(Done::already("the rule is there")),
        Err(e) => Err(format!(
            "ec2:AuthorizeSecurityGroupIngress {group} {}: {}",
            rule.describe(),
            crate::aws::error_text(&e)
        )),
    }
}

/// The policy the resource has now; None when it has none.
async fn read_policy(c: &Clients, holder: &PolicyHolder) -> Result<Option<Value>, String> {
    let text: Option<String> = match holder {
        PolicyHolder::Bucket { bucket, .. } => match c.s3.get_bucket_policy().bucket(bucket).send().await {
            Ok(o) => o.policy().map(str::to_string),
            Err(e) if e.code() == Some("NoSuchBucketPolicy") => None,
            Err(e) => return Err(format!("s3:GetBucketPolicy {bucket}: {}", crate::aws::error_text(&e))),
        },
        PolicyHolder::Secret { secret_id, .. } => {
            match c.secrets.get_resource_policy().secret_id(secret_id).send().await {
                Ok(o) => o.resource_policy().map(str::to_string),
                Err(e) => {
                    return Err(format!(
                        "secretsmanager:GetResourcePolicy {secret_id}: {}",
                        crate::aws::error_text(&e)
                    ));
                }
            }
        }
        PolicyHolder::KmsKey { key_id, .. } => {
            match c.kms.get_key_policy().key_id(key_id).policy_name("default").send().await {
                Ok(o) => o.policy().map(str::to_string),
                Err(e) => return Err(format!("kms:GetKeyPolicy {key_id}: {}", crate::aws::error_text(&e))),
            }
        }
    };
    match text {
        None => Ok(None),
        Some(t) => serde_json::from_str(&t)
            .map(Some)
            .map_err(|e| format!("the policy of {} is not JSON ({e}): change it by hand", holder.describe())),
    }
}

/// Writes `policy`; one left with no statement is deleted (S3 and Secrets Manager refuse an empty
/// one), except a key's, which a key cannot be without.
async fn write_policy(c: &Clients, holder: &PolicyHolder, policy: &Value) -> Result<(), String> {
    let empty = statements(policy).is_empty();
    let text = policy.to_string();
    let fail = |what: &str, e: String| format!("{what} {}: {e}", holder.describe());
    match holder {
        PolicyHolder::Bucket { bucket, .. } if empty => {
            c.s3.delete_bucket_policy()
                .bucket(bucket)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| fail("s3:DeleteBucketPolicy", crate::aws::error_text(&e)))
        }
        PolicyHolder::Bucket { bucket, .. } => {
            c.s3.put_bucket_policy()
                .bucket(bucket)
                .policy(text)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| fail("s3:PutBucketPolicy", crate::aws::error_text(&e)))
        }
        PolicyHolder::Secret { secret_id, .. } if empty => c
            .secrets
            .delete_resource_policy()
            .secret_id(secret_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| fail("secretsmanager:DeleteResourcePolicy", crate::aws::error_text(&e))),
        PolicyHolder::Secret { secret_id, .. } => c
            .secrets
            .put_resource_policy()
            .secret_id(secret_id)
            .resource_policy(text)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| fail("secretsmanager:PutResourcePolicy", crate::aws::error_text(&e))),
        PolicyHolder::KmsKey { key_id, .. } if empty => {
            Err(format!("removing the statement would leave KMS key {key_id} with no policy: edit its policy by hand"))
        }
        PolicyHolder::KmsKey { key_id, .. } => c
            .kms
            .put_key_policy()
            .key_id(key_id)
            .policy_name("default")
            .policy(text)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| fail("kms:PutKeyPolicy", crate::aws::error_text(&e))),
    }
}

async fn end_peering(c: &Clients, id: &str, reject: bool) -> Result<Done, String> {
    let status = match c.ec2.describe_vpc_peering_connections().vpc_peering_connection_ids(id).send().await {
        Ok(o) => o
            .vpc_peering_connections()
            .first()
            .and_then(|p| p.status())
            .and_then(|s| s.code())
            .map(|s| s.as_str().to_string()),
        Err(e) if gone(e.code()) => None,
        Err(e) => return Err(format!("ec2:DescribeVpcPeeringConnections {id}: {}", crate::aws::error_text(&e))),
    };
    match status.as_deref() {
        None | Some("deleted" | "deleting" | "rejected" | "failed" | "expired") => {
            return Ok(Done::already("the peering is no longer live"));
        }
        _ => {}
    }
    let r = if reject {
        c.ec2.reject_vpc_peering_connection().vpc_peering_connection_id(id).send().await.map(|_| ()).map_err(|e| {
            (
                e.code().map(str::to_string),
                format!("ec2:RejectVpcPeeringConnection {id}: {}", crate::aws::error_text(&e)),
            )
        })
    } else {
        c.ec2.delete_vpc_peering_connection().vpc_peering_connection_id(id).send().await.map(|_| ()).map_err(|e| {
            (
                e.code().map(str::to_string),
                format!("ec2:DeleteVpcPeeringConnection {id}: {}", crate::aws::error_text(&e)),
            )
        })
    };
    match r {
        Ok(()) => Ok(Done::changed_with(format!("{} {id}", if reject { "rejected" } else { "deleted" }))),
        Err((code, _)) if gone(code.as_deref()) => Ok(Done::already("the peering is no longer live")),
        Err((_, e)) => Err(e),
    }
}

/// A peering ended cannot be revived: ask for a new one between the same VPCs, and accept it when
/// the other side is the account's own.
async fn request_peering(
    c: &Clients,
    accepter: Option<&Clients>,
    old: &str,
    ours: &PeeringSide,
    theirs: &PeeringSide,
) -> Result<Done, String> {
    let live = c
        .ec2
        .describe_vpc_peering_connections()
        .filters(aws_sdk_ec2::types::Filter::builder().name("requester-vpc-info.vpc-id").values(&ours.vpc_id).build())
        .send()
        .await
        .map_err(|e| format!("ec2:DescribeVpcPeeringConnections: {}", crate::aws::error_text(&e)))?;
    if let Some(p) = live.vpc_peering_connections().iter().find(|p| {
        p.accepter_vpc_info().and_then(|a| a.vpc_id()) == Some(theirs.vpc_id.as_str())
            && p.status().and_then(|s| s.code()).is_some_and(|s| {
                matches!(s.as_str(), "initiating-request" | "pending-acceptance" | "provisioning" | "active")
            })
    }) {
        let id = p.vpc_peering_connection_id().unwrap_or_default();
        return Ok(Done::already(&format!("peering {id} already joins {} and {}", ours.vpc_id, theirs.vpc_id)));
    }
    let out = c
        .ec2
        .create_vpc_peering_connection()
        .vpc_id(&ours.vpc_id)
        .peer_vpc_id(&theirs.vpc_id)
        .peer_owner_id(&theirs.owner_id)
        .peer_region(&theirs.region)
        .send()
        .await
        .map_err(|e| {
            format!(
                "ec2:CreateVpcPeeringConnection {} to {}: {}",
                ours.vpc_id,
                theirs.vpc_id,
                crate::aws::error_text(&e)
            )
        })?;
    let new = out.vpc_peering_connection().and_then(|p| p.vpc_peering_connection_id()).unwrap_or_default().to_string();
    let accepted = match accepter {
        Some(a) => {
            a.ec2
                .accept_vpc_peering_connection()
                .vpc_peering_connection_id(&new)
                .send()
                .await
                .map_err(|e| format!("ec2:AcceptVpcPeeringConnection {new}: {}", crate::aws::error_text(&e)))?;
            "accepted it (both sides are this account's)".to_string()
        }
        None => format!("account {} must accept it", theirs.owner_id),
    };
    Ok(Done::changed_with(format!(
        "{old} cannot be revived: requested {new} between the same VPCs and {accepted}; point routes that used {old} at \
         {new}"
    )))
}

async fn snapshot_permission(c: &Clients, id: &str, s: &Sharing, op: OperationType) -> Result<Done, String> {
    let mut req = c
        .ec2
        .modify_snapshot_attribute()
        .snapshot_id(id)
        .attribute(SnapshotAttributeName::CreateVolumePermission)
        .operation_type(op.clone())
        .set_user_ids((!s.accounts.is_empty()).then(|| s.accounts.clone()));
    if s.public {
        req = req.group_names("all");
    }
    match req.send().await {
        Ok(_) => Ok(Done::changed()),
        Err(e) if gone(e.code()) => Ok(Done::already("no such snapshot")),
        Err(e) => Err(format!("ec2:ModifySnapshotAttribute {id} {}: {}", op.as_str(), crate::aws::error_text(&e))),
    }
}

async fn image_permission(c: &Clients, id: &str, s: &Sharing, add: bool) -> Result<Done, String> {
    let mut perms: Vec<LaunchPermission> =
        s.accounts.iter().map(|a| LaunchPermission::builder().user_id(a).build()).collect();
    if s.public {
        perms.push(LaunchPermission::builder().group(PermissionGroup::All).build());
    }
    let mods = if add {
        LaunchPermissionModifications::builder().set_add(Some(perms)).build()
    } else {
        LaunchPermissionModifications::builder().set_remove(Some(perms)).build()
    };
    match c.ec2.modify_image_attribute().image_id(id).launch_permission(mods).send().await {
        Ok(_) => Ok(Done::changed()),
        Err(e) if gone(e.code()) => Ok(Done::already("no such AMI")),
        Err(e) => Err(format!("ec2:ModifyImageAttribute {id}: {}", crate::aws::error_text(&e))),
    }
}
