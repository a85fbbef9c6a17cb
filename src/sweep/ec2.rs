//! EC2 compute and what can carry data out: instances, spot requests, launch templates, key pairs,
//! AMIs and snapshots.
//!
//! Instances are what a leaked key is most often used for (GPU instances mining, in Regions nobody
//! watches): those launched in the window are findings, worst when their Region had no compute
//! before. Their volumes are snapshotted as evidence before they are stopped (never terminated).
//! Spot requests and launch templates relaunch compute after it is stopped; a key pair created in
//! the window is the attacker's way in. AMIs and snapshots shared with another account, or public,
//! hand a copy of the disks out, whenever that was done.

use std::time::SystemTime;

use aws_sdk_ec2::types::{Filter, ImageAttributeName, PermissionGroup, SnapshotAttributeName};
use serde_json::json;

use super::actions::{Sharing, SweepAction};
use super::{Cx, Found, Item, Planned, Problem, finding, rfc3339, time_of};
use crate::incident::model::{Action, Severity, Undo};

/// Accelerated and very large instance families: the ones bought for mining.
fn costly(instance_type: &str) -> bool {
    let family = instance_type.split('.').next().unwrap_or_default();
    let size = instance_type.split('.').nth(1).unwrap_or_default();
    family.starts_with(['p', 'g']) && family.len() <= 4
        || ["inf1", "inf2", "trn1", "trn2", "dl1", "dl2q", "f1", "f2", "vt1"].contains(&family)
        || size == "metal"
        || size.strip_suffix("xlarge").and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n >= 24)
}

pub(super) async fn instances(cx: &Cx) -> Result<Found, Problem> {
    let pages =
        cx.c.ec2
            .describe_instances()
            .max_results(1000)
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| Problem::sdk("ec2:DescribeInstances", &e))?;
    let mut found = Found::default();
    let mut new = Vec::new();
    let mut seen = 0;
    for i in pages.iter().flat_map(|p| p.reservations()).flat_map(|r| r.instances()) {
        let state = i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_default();
        if matches!(state.as_str(), "terminated" | "shutting-down") {
            continue;
        }
        seen += 1;
        let launched = time_of(i.launch_time());
        if cx.in_window(launched) {
            new.push((i, state, launched));
        } else {
            found.compute_before += 1;
        }
    }
    found.seen.push(("instances", seen));
    found.in_use = found.compute_before > 0;
    found.compute_in_window = new.len() as u64;
    // Compute appearing where there was none is the clearest sign of a stolen key.
    let new_region = found.compute_before == 0 && !new.is_empty();
    for (i, state, launched) in new {
        found.items.push(instance_item(cx, i, &state, launched, new_region));
    }
    Ok(found)
}

fn instance_item(
    cx: &Cx,
    i: &aws_sdk_ec2::types::Instance,
    state: &str,
    launched: Option<SystemTime>,
    new_region: bool,
) -> Item {
    let region = cx.region();
    let id = i.instance_id().unwrap_or_default();
    let itype = i.instance_type().map(|t| t.as_str().to_string()).unwrap_or_default();
    let spot = i.instance_lifecycle().is_some_and(|l| l.as_str() == "spot");
    let ebs_root = i.root_device_type().is_none_or(|t| t.as_str() == "ebs");
    let volumes: Vec<String> = i
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs().and_then(|e| e.volume_id()))
        .map(str::to_string)
        .collect();
    let severity = if new_region || costly(&itype) { Severity::Critical } else { Severity::High };
    let mut title = format!("instance {id} ({itype}, {state}) launched in {region} in the window");
    if new_region {
        title.push_str(", a Region with no compute before it");
    }
    let mut f = finding(
        "instance",
        severity,
        region,
        id,
        cx.arn("ec2", &format!("instance/{id}")),
        title,
        "Launched in the window: compute started with a stolen key (often GPU instances mining) runs on the \
         account's bill, may hold the attacker's tools and credentials, and its disks are evidence.",
    );
    f.created = rfc3339(launched);
    f.evidence = json!({
        "launch_time": f.created,
        "instance_type": itype,
        "state": state,
        "image_id": i.image_id(),
        "key_name": i.key_name(),
        "lifecycle": i.instance_lifecycle().map(|l| l.as_str()),
        "iam_instance_profile": i.iam_instance_profile().and_then(|p| p.arn()),
        "public_ip": i.public_ip_address(),
        "security_groups": i.security_groups().iter().filter_map(|g| g.group_id()).collect::<Vec<_>>(),
        "volumes": volumes,
        "region_had_compute_before": !new_region,
    });
    let mut actions: Vec<Planned> = volumes
        .iter()
        .map(|v| Planned {
            description: format!("snapshot volume {v} of instance {id} in {region} as evidence"),
            action: Action::SnapshotVolume {
                volume_id: v.clone(),
                instance_id: id.to_string(),
                region: Some(region.to_string()),
            },
            undo: Undo::None { reason: "a forensic snapshot is evidence and is kept".into() },
        })
        .collect();
    let stoppable = matches!(state, "running" | "pending");
    if stoppable && !spot && ebs_root {
        actions.push(Planned {
            description: format!("stop instance {id} in {region} (not terminate: its disks stay)"),
            action: Action::Sweep(SweepAction::StopInstance {
                region: region.to_string(),
                instance_id: id.to_string(),
            }),
            undo: Undo::Action {
                action: Action::Sweep(SweepAction::StartInstance {
                    region: region.to_string(),
                    instance_id: id.to_string(),
                }),
            },
        });
    } else if stoppable {
        let why = if spot { "a spot instance cannot be stopped" } else { "an instance-store root cannot be stopped" };
        f.why.push_str(&format!(
            " rekey plans no stop ({why}): once its volumes are snapshotted, cancel its spot request and terminate it by hand."
        ));
    }
    Item { finding: f, actions }
}

pub(super) async fn spot_requests(cx: &Cx) -> Result<Found, Problem> {
    let state = Filter::builder().name("state").values("open").values("active").build();
    let pages =
        cx.c.ec2
            .describe_spot_instance_requests()
            .filters(state)
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| Problem::sdk("ec2:DescribeSpotInstanceRequests", &e))?;
    let mut found = Found::default();
    let mut seen = 0;
    for r in pages.iter().flat_map(|p| p.spot_instance_requests()) {
        seen += 1;
        let created = time_of(r.create_time());
        if !cx.in_window(created) {
            found.in_use |= cx.before_window(created);
            continue;
        }
        let id = r.spot_instance_request_id().unwrap_or_default();
        let itype = r
            .launch_specification()
            .and_then(|l| l.instance_type())
            .map(|t| t.as_str().to_string())
            .unwrap_or_default();
        let mut f = finding(
            "spot_request",
            if costly(&itype) { Severity::Critical } else { Severity::High },
            cx.region(),
            id,
            cx.arn("ec2", &format!("spot-instances-request/{id}")),
            format!("spot request {id} ({itype}) made in {} in the window", cx.region()),
            "A spot request made in the window relaunches the attacker's compute after it is stopped. Cancel it \
             (`aws ec2 cancel-spot-instance-requests`) once its instance's volumes are snapshotted.",
        );
        f.created = rfc3339(created);
        f.evidence = json!({
            "create_time": f.created,
            "state": r.state().map(|s| s.as_str()),
            "type": r.r#type().map(|t| t.as_str()),
            "instance_type": itype,
            "instance_id": r.instance_id(),
            "spot_price": r.spot_price(),
        });
        found.items.push(Item { finding: f, actions: Vec::new() });
    }
    found.seen.push(("spot requests", seen));
    Ok(found)
}

pub(super) async fn launch_templates(cx: &Cx) -> Result<Found, Problem> {
    let pages =
        cx.c.ec2
            .describe_launch_templates()
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| Problem::sdk("ec2:DescribeLaunchTemplates", &e))?;
    let mut found = Found::default();
    let mut seen = 0;
    for t in pages.iter().flat_map(|p| p.launch_templates()) {
        seen += 1;
        let created = time_of(t.create_time());
        if !cx.in_window(created) {
            found.in_use |= cx.before_window(created);
            continue;
        }
        let id = t.launch_template_id().unwrap_or_default();
        let name = t.launch_template_name().unwrap_or_default();
        let mut f = finding(
            "launch_template",
            Severity::Medium,
            cx.region(),
            id,
            cx.arn("ec2", &format!("launch-template/{id}")),
            format!("launch template {name} ({id}) created in {} in the window", cx.region()),
            "A launch template made in the window can start the attacker's instances again (from an Auto Scaling \
             group or a fleet) after they are stopped.",
        );
        f.created = rfc3339(created);
        f.evidence = json!({
            "create_time": f.created,
            "name": name,
            "created_by": t.created_by(),
            "latest_version": t.latest_version_number(),
        });
        found.items.push(Item { finding: f, actions: Vec::new() });
    }
    found.seen.push(("launch templates", seen));
    Ok(found)
}

pub(super) async fn key_pairs(cx: &Cx) -> Result<Found, Problem> {
    let out = cx.c.ec2.describe_key_pairs().send().await.map_err(|e| Problem::sdk("ec2:DescribeKeyPairs", &e))?;
    let mut found = Found::default();
    found.seen.push(("key pairs", out.key_pairs().len() as u64));
    for k in out.key_pairs() {
        let created = time_of(k.create_time());
        if !cx.in_window(created) {
            found.in_use |= cx.before_window(created);
            continue;
        }
        let name = k.key_name().unwrap_or_default();
        let id = k.key_pair_id().unwrap_or(name);
        let mut f = finding(
            "key_pair",
            Severity::Medium,
            cx.region(),
            name,
            cx.arn("ec2", &format!("key-pair/{id}")),
            format!("key pair {name} created in {} in the window", cx.region()),
            "A key pair created (or imported) in the window is how the attacker logs into instances launched with \
             it. Deleting it does not remove it from those instances: stop them, and delete the key pair once \
             they are dealt with.",
        );
        f.created = rfc3339(created);
        f.evidence = json!({
            "create_time": f.created,
            "key_pair_id": k.key_pair_id(),
            "fingerprint": k.key_fingerprint(),
            "key_type": k.key_type().map(|t| t.as_str()),
        });
        found.items.push(Item { finding: f, actions: Vec::new() });
    }
    Ok(found)
}

/// Who a permission list shares with, other than the account itself.
fn sharing(accounts: impl Iterator<Item = String>, public: bool, own: Option<&str>) -> Sharing {
    let mut out = Sharing { accounts: Vec::new(), public };
    for a in accounts {
        if Some(a.as_str()) != own && !out.accounts.contains(&a) {
            out.accounts.push(a);
        }
    }
    out
}

fn shared_with(s: &Sharing) -> String {
    match (s.public, s.accounts.is_empty()) {
        (true, true) => "everyone (public)".to_string(),
        (true, false) => format!("everyone (public) and accounts {}", s.accounts.join(", ")),
        (false, _) => format!("accounts {}", s.accounts.join(", ")),
    }
}

pub(super) async fn images(cx: &Cx) -> Result<Found, Problem> {
    let out =
        cx.c.ec2.describe_images().owners("self").send().await.map_err(|e| Problem::sdk("ec2:DescribeImages", &e))?;
    let mut found = Found::default();
    let mut images: Vec<_> = out.images().iter().collect();
    found.seen.push(("AMIs", images.len() as u64));
    // Newest first: what the attacker made is recent.
    images.sort_by(|a, b| b.creation_date().cmp(&a.creation_date()));
    let total = images.len();
    for (checked, image) in images.into_iter().enumerate() {
        let created = image.creation_date().and_then(rekey_trail::time::parse);
        found.in_use |= cx.before_window(created);
        if checked >= cx.max_items || !cx.time_left() {
            found.gaps.push(format!(
                "only the newest {checked} of {total} AMIs were checked for sharing ({})",
                if checked >= cx.max_items { "the per-Region cap" } else { "the deadline" }
            ));
            break;
        }
        let Some(id) = image.image_id() else { continue };
        let attr =
            cx.c.ec2
                .describe_image_attribute()
                .image_id(id)
                .attribute(ImageAttributeName::LaunchPermission)
                .send()
                .await;
        let perms = match attr {
            Ok(a) => a.launch_permissions().to_vec(),
            Err(e) => {
                found.gaps.push(format!("ec2:DescribeImageAttribute {id}: {}", crate::aws::error_text(&e)));
                Vec::new()
            }
        };
        let public = image.public().unwrap_or(false) || perms.iter().any(|p| p.group() == Some(&PermissionGroup::All));
        let s = sharing(perms.iter().filter_map(|p| p.user_id().map(str::to_string)), public, cx.account.as_deref());
        if !s.public && s.accounts.is_empty() {
            continue;
        }
        let region = cx.region();
        let mut f = finding(
            "shared_image",
            if s.public { Severity::Critical } else { Severity::High },
            region,
            id,
            cx.arn("ec2", &format!("image/{id}")),
            format!("AMI {id} in {region} is shared with {}", shared_with(&s)),
            "An AMI shared out gives a copy of the disks it was made from, with whatever data and credentials \
             they hold, to whoever it is shared with.",
        );
        f.created = rfc3339(created);
        f.evidence = json!({
            "name": image.name(),
            "creation_date": image.creation_date(),
            "public": s.public,
            "shared_with_accounts": s.accounts,
        });
        let actions = vec![Planned {
            description: format!("stop sharing AMI {id} in {region} with {}", shared_with(&s)),
            action: Action::Sweep(SweepAction::UnshareImage {
                region: region.to_string(),
                image_id: id.to_string(),
                sharing: s.clone(),
            }),
            undo: Undo::Action {
                action: Action::Sweep(SweepAction::ShareImage {
                    region: region.to_string(),
                    image_id: id.to_string(),
                    sharing: s,
                }),
            },
        }];
        found.items.push(Item { finding: f, actions });
    }
    Ok(found)
}

pub(super) async fn snapshots(cx: &Cx) -> Result<Found, Problem> {
    let pages =
        cx.c.ec2
            .describe_snapshots()
            .owner_ids("self")
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| Problem::sdk("ec2:DescribeSnapshots", &e))?;
    let mut found = Found::default();
    let mut snapshots: Vec<_> = pages.iter().flat_map(|p| p.snapshots()).collect();
    found.seen.push(("snapshots", snapshots.len() as u64));
    snapshots.sort_by_key(|s| std::cmp::Reverse(time_of(s.start_time())));
    let total = snapshots.len();
    for (checked, snap) in snapshots.into_iter().enumerate() {
        let started: Option<SystemTime> = time_of(snap.start_time());
        found.in_use |= cx.before_window(started);
        if checked >= cx.max_items || !cx.time_left() {
            found.gaps.push(format!(
                "only the newest {checked} of {total} snapshots were checked for sharing ({})",
                if checked >= cx.max_items { "the per-Region cap" } else { "the deadline" }
            ));
            break;
        }
        let Some(id) = snap.snapshot_id() else { continue };
        let attr =
            cx.c.ec2
                .describe_snapshot_attribute()
                .snapshot_id(id)
                .attribute(SnapshotAttributeName::CreateVolumePermission)
                .send()
                .await;
        let perms = match attr {
            Ok(a) => a.create_volume_permissions().to_vec(),
            Err(e) => {
                found.gaps.push(format!("ec2:DescribeSnapshotAttribute {id}: {}", crate::aws::error_text(&e)));
                continue;
            }
        };
        let public = perms.iter().any(|p| p.group() == Some(&PermissionGroup::All));
        let s = sharing(perms.iter().filter_map(|p| p.user_id().map(str::to_string)), public, cx.account.as_deref());
        if !s.public && s.accounts.is_empty() {
            continue;
        }
        let region = cx.region();
        let mut f = finding(
            "shared_snapshot",
            if s.public { Severity::Critical } else { Severity::High },
            region,
            id,
            cx.arn("ec2", &format!("snapshot/{id}")),
            format!("snapshot {id} in {region} is shared with {}", shared_with(&s)),
            "A snapshot shared out lets another account create a volume from it: a full copy of the disk.",
        );
        f.created = rfc3339(started);
        f.evidence = json!({
            "start_time": f.created,
            "volume_id": snap.volume_id(),
            "volume_size_gib": snap.volume_size(),
            "description": snap.description(),
            "public": s.public,
            "shared_with_accounts": s.accounts,
        });
        let actions = vec![Planned {
            description: format!("stop sharing snapshot {id} in {region} with {}", shared_with(&s)),
            action: Action::Sweep(SweepAction::UnshareSnapshot {
                region: region.to_string(),
                snapshot_id: id.to_string(),
                sharing: s.clone(),
            }),
            undo: Undo::Action {
                action: Action::Sweep(SweepAction::ShareSnapshot {
                    region: region.to_string(),
                    snapshot_id: id.to_string(),
                    sharing: s,
                }),
            },
        }];
        found.items.push(Item { finding: f, actions });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mining_instance_types_are_costly() {
        for t in ["p3.16xlarge", "g5.xlarge", "p4d.24xlarge", "inf2.xlarge", "c5.metal", "m5.24xlarge", "x1e.32xlarge"]
        {
            assert!(costly(t), "{t}");
        }
        for t in ["t3.micro", "m5.large", "c6g.4xlarge", "r5.12xlarge"] {
            assert!(!costly(t), "{t}");
        }
    }

    #[test]
    fn sharing_leaves_the_account_itself_out() {
        let s = sharing(
            ["123456789012", "999999999999", "999999999999"].map(String::from).into_iter(),
            false,
            Some("123456789012"),
        );
        assert_eq!(s.accounts, vec!["999999999999".to_string()]);
        assert_eq!(shared_with(&s), "accounts 999999999999");
    }
}
