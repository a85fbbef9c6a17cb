//! The containment steps the sweep plans, in the shape `plan.json` stores them.
//!
//! They live apart from the incident model's IAM steps so that the sweep owns its own side of
//! `rekey contain` (see `contain.rs` beside this file); the model embeds them untagged, so a step
//! reads `{"type": "stop_instance", …}` in a plan like any other. Every step has a reverse here,
//! because `contain --undo` must be able to put back whatever the plan changed.
//!
//! This file imports nothing from the rest of the crate: the incident model depends on it, and
//! it must not depend back.

use serde::{Deserialize, Serialize};

/// An inbound rule, as one (protocol, port range, source range) triple: the unit EC2 revokes and
/// authorizes, so undo puts back exactly what apply took away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressRule {
    /// `tcp`, `udp`, `icmp`, or `-1` for every protocol.
    pub protocol: String,
    pub from_port: Option<i32>,
    pub to_port: Option<i32>,
    /// `0.0.0.0/0`, or an IPv6 range such as `::/0`.
    pub cidr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl IngressRule {
    pub fn is_ipv6(&self) -> bool {
        self.cidr.contains(':')
    }

    /// `tcp 22 from 0.0.0.0/0`, `all traffic from ::/0`.
    pub fn describe(&self) -> String {
        let ports = match (self.from_port, self.to_port) {
            (Some(a), Some(b)) if a == b => format!(" {a}"),
            (Some(-1), _) | (None, _) => String::new(),
            (Some(a), Some(b)) => format!(" {a}-{b}"),
            (Some(a), None) => format!(" {a}"),
        };
        match self.protocol.as_str() {
            "-1" => format!("all traffic from {}", self.cidr),
            p => format!("{p}{ports} from {}", self.cidr),
        }
    }
}

/// The resource a policy statement is removed from (and put back on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PolicyHolder {
    Bucket { bucket: String, region: String },
    Secret { secret_id: String, region: String },
    KmsKey { key_id: String, region: String },
}

impl PolicyHolder {
    pub fn region(&self) -> &str {
        match self {
            PolicyHolder::Bucket { region, .. }
            | PolicyHolder::Secret { region, .. }
            | PolicyHolder::KmsKey { region, .. } => region,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            PolicyHolder::Bucket { bucket, region } => format!("bucket {bucket} ({region})"),
            PolicyHolder::Secret { secret_id, region } => format!("secret {secret_id} in {region}"),
            PolicyHolder::KmsKey { key_id, region } => format!("KMS key {key_id} in {region}"),
        }
    }
}

/// Who a shared snapshot or image is shared with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sharing {
    /// Account ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accounts: Vec<String>,
    /// Shared with everyone (the `all` group).
    #[serde(default)]
    pub public: bool,
}

/// One side of a VPC peering connection, enough to request it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeeringSide {
    pub vpc_id: String,
    pub owner_id: String,
    pub region: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SweepAction {
    /// Stop (never terminate) an instance: its disks stay, and so does the evidence on them.
    StopInstance {
        region: String,
        instance_id: String,
    },
    /// The reverse of `StopInstance`.
    StartInstance {
        region: String,
        instance_id: String,
    },
    RevokeIngress {
        region: String,
        group_id: String,
        rule: IngressRule,
    },
    /// The reverse of `RevokeIngress`.
    AuthorizeIngress {
        region: String,
        group_id: String,
        rule: IngressRule,
    },
    /// Take one statement out of a resource policy, leaving the rest; the whole policy as it was is
    /// kept in the plan (`policy`) for undo and for the record.
    RemovePolicyStatement {
        holder: PolicyHolder,
        statement: serde_json::Value,
        policy: serde_json::Value,
    },
    /// The reverse: put the statement back into the policy the resource has now (or, if it has none
    /// left, the recorded one).
    RestorePolicyStatement {
        holder: PolicyHolder,
        statement: serde_json::Value,
        policy: serde_json::Value,
    },
    /// Reject a peering request the account was asked to accept, or delete a connection; `ours` is the
    /// account's side (where the call is made), `theirs` the other one.
    EndPeering {
        region: String,
        peering_id: String,
        reject: bool,
        ours: PeeringSide,
        theirs: PeeringSide,
    },
    /// The reverse: request a new peering between the same VPCs (a peering cannot be revived; the new
    /// one has another id, and the other side must accept it unless it is this account's).
    RequestPeering {
        region: String,
        old_peering_id: String,
        ours: PeeringSide,
        theirs: PeeringSide,
    },
    UnshareSnapshot {
        region: String,
        snapshot_id: String,
        sharing: Sharing,
    },
    ShareSnapshot {
        region: String,
        snapshot_id: String,
        sharing: Sharing,
    },
    UnshareImage {
        region: String,
        image_id: String,
        sharing: Sharing,
    },
    ShareImage {
        region: String,
        image_id: String,
        sharing: Sharing,
    },
    /// Reserved concurrency 0: the function cannot run, and its code and settings stay as evidence.
    ThrottleFunction {
        region: String,
        function_name: String,
        previous_reserved: Option<i32>,
    },
    /// The reverse: the reserved concurrency it had (none: remove the setting).
    UnthrottleFunction {
        region: String,
        function_name: String,
        previous_reserved: Option<i32>,
    },
}

impl SweepAction {
    /// The region the call goes to, for the log and the dry run.
    pub fn region(&self) -> &str {
        match self {
            SweepAction::StopInstance { region, .. }
            | SweepAction::StartInstance { region, .. }
            | SweepAction::RevokeIngress { region, .. }
            | SweepAction::AuthorizeIngress { region, .. }
            | SweepAction::EndPeering { region, .. }
            | SweepAction::RequestPeering { region, .. }
            | SweepAction::UnshareSnapshot { region, .. }
            | SweepAction::ShareSnapshot { region, .. }
            | SweepAction::UnshareImage { region, .. }
            | SweepAction::ShareImage { region, .. }
            | SweepAction::ThrottleFunction { region, .. }
            | SweepAction::UnthrottleFunction { region, .. } => region,
            SweepAction::RemovePolicyStatement { holder, .. } | SweepAction::RestorePolicyStatement { holder, .. } => {
                holder.region()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::incident::model::Action;

    use super::*;

    #[test]
    fn sweep_steps_read_like_every_other_step_in_a_plan() {
        let stop = Action::Sweep(SweepAction::StopInstance { region: "us-west-2".into(), instance_id: "i-1".into() });
        let text = serde_json::to_string(&stop).unwrap();
        assert_eq!(text, r#"{"type":"stop_instance","region":"us-west-2","instance_id":"i-1"}"#);
        assert_eq!(serde_json::from_str::<Action>(&text).unwrap(), stop);
        // The incident's own steps keep their shape and still win their tag.
        let iam = r#"{"type":"delete_user","user":"backdoor"}"#;
        assert_eq!(serde_json::from_str::<Action>(iam).unwrap(), Action::DeleteUser { user: "backdoor".into() });
        let rule = IngressRule {
            protocol: "tcp".into(),
            from_port: Some(22),
            to_port: Some(22),
            cidr: "::/0".into(),
            description: None,
        };
        let revoke = Action::Sweep(SweepAction::RevokeIngress { region: "r".into(), group_id: "sg-1".into(), rule });
        assert_eq!(serde_json::from_str::<Action>(&serde_json::to_string(&revoke).unwrap()).unwrap(), revoke);
        assert!(serde_json::from_str::<Action>(r#"{"type":"terminate_instance","instance_id":"i-1"}"#).is_err());
    }

    #[test]
    fn rules_describe_themselves() {
        let r = |p: &str, f, t, c: &str| IngressRule {
            protocol: p.into(),
            from_port: f,
            to_port: t,
            cidr: c.into(),
            description: None,
        };
        assert_eq!(r("tcp", Some(22), Some(22), "0.0.0.0/0").describe(), "tcp 22 from 0.0.0.0/0");
        assert_eq!(r("tcp", Some(0), Some(65535), "::/0").describe(), "tcp 0-65535 from ::/0");
        assert_eq!(r("-1", None, None, "0.0.0.0/0").describe(), "all traffic from 0.0.0.0/0");
    }
}
