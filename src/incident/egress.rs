//! Whether a consumer's calls come from addresses a fence can name.
//!
//! A Lambda function outside a VPC calls AWS from AWS's own, changing addresses; so does a Fargate
//! task with a public IP (a new one each time a task starts, and the cutover starts new tasks).
//! An IP fence learnt from yesterday's addresses would deny them the moment they move. For such
//! consumers the fence may only use VPC / VPC-endpoint conditions, and only when the key's use
//! shows them; otherwise it is skipped, and the report says why.

use aws_sdk_ecs::types::{AssignPublicIp, LaunchType};
use rekey_adapters::{TargetKind, TargetSpec};

/// Why each consumer's egress address is not stable (empty: every consumer's is).
pub async fn unstable(sdk: &aws_types::SdkConfig, targets: &[TargetSpec]) -> Vec<String> {
    let mut out = Vec::new();
    for t in targets {
        match t.kind {
            TargetKind::Lambda => {
                let lambda = aws_sdk_lambda::Client::new(sdk);
                match lambda.get_function_configuration().function_name(&t.location).send().await {
                    Ok(c) => {
                        let in_vpc = c.vpc_config().and_then(|v| v.vpc_id()).is_some_and(|v| !v.is_empty());
                        if !in_vpc {
                            out.push(format!(
                                "{}: a Lambda function outside a VPC calls from AWS's changing addresses",
                                t.raw
                            ));
                        }
                    }
                    Err(e) => out.push(format!(
                        "{}: its network could not be read ({}), so its addresses are not trusted to stay",
                        t.raw,
                        crate::aws::error_text(&e)
                    )),
                }
            }
            TargetKind::Ecs => {
                let Some((cluster, service)) = t.location.split_once('/') else { continue };
                let ecs = aws_sdk_ecs::Client::new(sdk);
                match ecs.describe_services().cluster(cluster).services(service).send().await {
                    Ok(d) => {
                        for s in d.services() {
                            let fargate = s.launch_type() == Some(&LaunchType::Fargate)
                                || s.capacity_provider_strategy()
                                    .iter()
                                    .any(|c| c.capacity_provider().starts_with("FARGATE"));
                            let public = s
                                .network_configuration()
                                .and_then(|n| n.awsvpc_configuration())
                                .and_then(|a| a.assign_public_ip())
                                == Some(&AssignPublicIp::Enabled);
                            if fargate && public {
                                out.push(format!(
                                    "{}: Fargate tasks with public IPs get a new address each time a task starts",
                                    t.raw
                                ));
                            }
                        }
                    }
                    Err(e) => out.push(format!(
                        "{}: its network could not be read ({}), so its addresses are not trusted to stay",
                        t.raw,
                        crate::aws::error_text(&e)
                    )),
                }
            }
            _ => {}
        }
    }
    out
}
