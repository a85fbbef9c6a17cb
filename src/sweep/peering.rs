//! VPC peering connections with another account or another Region.
//!
//! A peering is a private network path into the account's VPCs: one to the attacker's account
//! survives every key rotation. AWS keeps no creation time for it, so each live connection that
//! crosses an account or a Region is a finding whenever it was made. A connection appears in the
//! listing of both its Regions; it is reported once, from the account's own side (the requester's,
//! when both sides are the account's).

use aws_sdk_ec2::types::{VpcPeeringConnection, VpcPeeringConnectionVpcInfo};
use serde_json::json;

use super::actions::{PeeringSide, SweepAction};
use super::{Cx, Found, Item, Planned, Problem, finding};
use crate::incident::model::{Action, Severity, Undo};

/// States in which a connection carries traffic or is about to.
const LIVE: [&str; 4] = ["initiating-request", "pending-acceptance", "provisioning", "active"];

fn side(info: Option<&VpcPeeringConnectionVpcInfo>, region: &str) -> PeeringSide {
    PeeringSide {
        vpc_id: info.and_then(|i| i.vpc_id()).unwrap_or_default().to_string(),
        owner_id: info.and_then(|i| i.owner_id()).unwrap_or_default().to_string(),
        // Same-Region connections may leave the Region out.
        region: info.and_then(|i| i.region()).unwrap_or(region).to_string(),
    }
}

pub(super) async fn connections(cx: &Cx) -> Result<Found, Problem> {
    let pages =
        cx.c.ec2
            .describe_vpc_peering_connections()
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| Problem::sdk("ec2:DescribeVpcPeeringConnections", &e))?;
    let mut found = Found::default();
    let mut seen = 0;
    for p in pages.iter().flat_map(|p| p.vpc_peering_connections()) {
        let status = p.status().and_then(|s| s.code()).map(|c| c.as_str().to_string()).unwrap_or_default();
        if !LIVE.contains(&status.as_str()) {
            continue;
        }
        seen += 1;
        if let Some(item) = judge(cx, p, &status) {
            found.items.push(item);
        }
    }
    found.seen.push(("VPC peering connections", seen));
    Ok(found)
}

fn judge(cx: &Cx, p: &VpcPeeringConnection, status: &str) -> Option<Item> {
    let region = cx.region();
    let id = p.vpc_peering_connection_id()?;
    let requester = side(p.requester_vpc_info(), region);
    let accepter = side(p.accepter_vpc_info(), region);
    let own = cx.account.as_deref();
    let (ours, theirs, we_accept) = if own.is_none() || Some(requester.owner_id.as_str()) == own {
        (requester, accepter, false)
    } else {
        (accepter, requester, true)
    };
    if ours.region != region {
        return None;
    }
    let cross_account = ours.owner_id != theirs.owner_id;
    let cross_region = ours.region != theirs.region;
    if !cross_account && !cross_region {
        return None;
    }
    let what = match (cross_account, cross_region) {
        (true, true) => format!("account {} in {}", theirs.owner_id, theirs.region),
        (true, false) => format!("account {}", theirs.owner_id),
        _ => format!("{} in {}", theirs.vpc_id, theirs.region),
    };
    let mut f = finding(
        "vpc_peering",
        if cross_account { Severity::High } else { Severity::Medium },
        region,
        id,
        cx.arn("ec2", &format!("vpc-peering-connection/{id}")),
        format!("VPC peering {id} ({status}) joins {} in {region} to {what}", ours.vpc_id),
        "A peering connection is a private network path into the account's VPC that survives every key \
         rotation; one to another account or Region that nobody planned is a way back in.",
    );
    f.evidence = json!({
        "status": status,
        "our_side": {"vpc_id": ours.vpc_id, "owner_id": ours.owner_id, "region": ours.region},
        "their_side": {"vpc_id": theirs.vpc_id, "owner_id": theirs.owner_id, "region": theirs.region},
        "we_are": if we_accept { "accepter" } else { "requester" },
        "cross_account": cross_account,
        "cross_region": cross_region,
    });
    let reject = we_accept && status == "pending-acceptance";
    let verb = if reject { "reject" } else { "delete" };
    let actions = vec![Planned {
        description: format!("{verb} VPC peering {id} in {region}"),
        action: Action::Sweep(SweepAction::EndPeering {
            region: region.to_string(),
            peering_id: id.to_string(),
            reject,
            ours: ours.clone(),
            theirs: theirs.clone(),
        }),
        undo: Undo::Action {
            action: Action::Sweep(SweepAction::RequestPeering {
                region: region.to_string(),
                old_peering_id: id.to_string(),
                ours,
                theirs,
            }),
        },
    }];
    Some(Item { finding: f, actions })
}
