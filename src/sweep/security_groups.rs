//! Security-group rules that let the whole internet reach an admin or database port.
//!
//! Opening SSH to `0.0.0.0/0` is an attacker's first step to keep a way into instances after the
//! key is rotated, and EC2 keeps no creation time for a rule: any such rule is a finding whenever
//! it was made. Revoking the rule is reversible (authorize it again), so the plan does it.

use aws_sdk_ec2::types::IpPermission;
use serde_json::json;

use super::actions::{IngressRule, SweepAction};
use super::{Cx, Found, Item, Planned, Problem, finding};
use crate::incident::model::{Action, Severity, Undo};

/// Ports that should never face the internet: remote administration and data stores.
const RISKY_PORTS: &[(i32, &str)] = &[
    (21, "FTP"),
    (22, "SSH"),
    (23, "Telnet"),
    (135, "MS RPC"),
    (139, "NetBIOS"),
    (445, "SMB"),
    (1433, "SQL Server"),
    (1521, "Oracle"),
    (2375, "Docker API"),
    (2376, "Docker API"),
    (2379, "etcd"),
    (3306, "MySQL"),
    (3389, "RDP"),
    (5432, "PostgreSQL"),
    (5601, "Kibana"),
    (5900, "VNC"),
    (5984, "CouchDB"),
    (5985, "WinRM"),
    (5986, "WinRM"),
    (6379, "Redis"),
    (6443, "Kubernetes API"),
    (9042, "Cassandra"),
    (9200, "Elasticsearch"),
    (9300, "Elasticsearch"),
    (10250, "kubelet"),
    (11211, "Memcached"),
    (27017, "MongoDB"),
];

const WORLD: [&str; 2] = ["0.0.0.0/0", "::/0"];

/// What a rule exposes: every port (`all`), or the risky ports its range covers.
fn exposed(protocol: &str, from: Option<i32>, to: Option<i32>) -> Vec<&'static str> {
    match protocol {
        "-1" | "all" => vec!["all ports"],
        "tcp" | "udp" | "6" | "17" => {
            let (lo, hi) = match (from, to) {
                (Some(-1), _) | (None, _) => (0, 65535),
                (Some(a), Some(b)) => (a, b),
                (Some(a), None) => (a, a),
            };
            let mut names: Vec<&'static str> = Vec::new();
            for (port, name) in RISKY_PORTS {
                if (lo..=hi).contains(port) && !names.contains(name) {
                    names.push(name);
                }
            }
            names
        }
        _ => Vec::new(),
    }
}

/// The world-open (protocol, ports, range) triples of one permission.
fn world_rules(p: &IpPermission) -> Vec<IngressRule> {
    let protocol = p.ip_protocol().unwrap_or("-1").to_string();
    let v4 = p.ip_ranges().iter().filter_map(|r| r.cidr_ip().map(|c| (c, r.description())));
    let v6 = p.ipv6_ranges().iter().filter_map(|r| r.cidr_ipv6().map(|c| (c, r.description())));
    v4.chain(v6)
        .filter(|(cidr, _)| WORLD.contains(cidr))
        .map(|(cidr, description)| IngressRule {
            protocol: protocol.clone(),
            from_port: p.from_port(),
            to_port: p.to_port(),
            cidr: cidr.to_string(),
            description: description.map(str::to_string),
        })
        .collect()
}

pub(super) async fn open_rules(cx: &Cx) -> Result<Found, Problem> {
    let pages =
        cx.c.ec2
            .describe_security_groups()
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| Problem::sdk("ec2:DescribeSecurityGroups", &e))?;
    let mut found = Found::default();
    let region = cx.region();
    let mut seen = 0;
    for g in pages.iter().flat_map(|p| p.security_groups()) {
        seen += 1;
        let Some(group_id) = g.group_id() else { continue };
        for rule in g.ip_permissions().iter().flat_map(world_rules) {
            let ports = exposed(&rule.protocol, rule.from_port, rule.to_port);
            if ports.is_empty() {
                continue;
            }
            let name = g.group_name().unwrap_or_default();
            let mut f = finding(
                "open_security_group",
                Severity::High,
                region,
                group_id,
                cx.arn("ec2", &format!("security-group/{group_id}")),
                format!(
                    "security group {group_id} ({name}) in {region} allows {} ({})",
                    rule.describe(),
                    ports.join(", ")
                ),
                "An admin or database port open to the whole internet is a way into every instance in the group, \
                 whoever opened it and whenever (EC2 keeps no creation time for a rule).",
            );
            f.evidence = json!({
                "group_id": group_id,
                "group_name": name,
                "vpc_id": g.vpc_id(),
                "rule": rule.describe(),
                "exposes": ports,
                "rule_description": rule.description,
            });
            let actions = vec![Planned {
                description: format!("revoke {} on {group_id} in {region}", rule.describe()),
                action: Action::Sweep(SweepAction::RevokeIngress {
                    region: region.to_string(),
                    group_id: group_id.to_string(),
                    rule: rule.clone(),
                }),
                undo: Undo::Action {
                    action: Action::Sweep(SweepAction::AuthorizeIngress {
                        region: region.to_string(),
                        group_id: group_id.to_string(),
                        rule,
                    }),
                },
            }];
            found.items.push(Item { finding: f, actions });
        }
    }
    found.seen.push(("security groups", seen));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_and_database_ports_and_all_traffic_are_exposed() {
        assert_eq!(exposed("tcp", Some(22), Some(22)), vec!["SSH"]);
        assert_eq!(exposed("-1", None, None), vec!["all ports"]);
        assert_eq!(exposed("tcp", Some(0), Some(65535)).len(), 24, "WinRM, Docker and Elasticsearch count once each");
        assert_eq!(exposed("tcp", Some(3300), Some(3400)), vec!["MySQL", "RDP"]);
        assert!(exposed("tcp", Some(443), Some(443)).is_empty());
        assert!(exposed("icmp", Some(-1), Some(-1)).is_empty());
    }
}
