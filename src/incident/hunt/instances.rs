//! EC2 instances the attacker launched or reached into (`RunInstances`, `SendCommand`,
//! `AssociateIamInstanceProfile`, …) that still exist: a finding each and, for each EBS volume, a
//! forensic snapshot the plan takes before anything else.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::Hunter;
use crate::incident::model::{Action, Severity, TimelineEvent, Undo};

impl Hunter<'_> {
    /// Instances the attacker launched or reached into that still exist: a finding each, and a
    /// forensic snapshot of every EBS volume attached to them.
    pub(super) async fn instances(&mut self, events: &[&TimelineEvent]) {
        // (region, instance) → what the attacker did to it.
        let mut seen: BTreeMap<(Option<String>, String), SeenInstance> = BTreeMap::new();
        for e in events {
            let Some((launched, ids)) = instances_of(e) else { continue };
            for id in ids {
                let s = seen.entry((e.region.clone(), id)).or_default();
                s.launched |= launched;
                if !s.evidence.contains(&e.event_id) {
                    s.evidence.push(e.event_id.clone());
                }
                if !launched {
                    s.calls.insert(e.event_name.clone());
                }
            }
        }
        let mut regions: BTreeMap<Option<String>, Vec<String>> = BTreeMap::new();
        for (region, id) in seen.keys() {
            regions.entry(region.clone()).or_default().push(id.clone());
        }
        for (region, ids) in regions {
            let live = self.describe_instances(region.as_deref(), &ids).await;
            for id in ids {
                let s = seen.remove(&(region.clone(), id.clone())).unwrap_or_default();
                self.instance(region.as_deref(), &id, s, &live);
            }
        }
    }

    /// `Some(map)`: the instances that exist (terminated ones excluded) with their volumes; `None`:
    /// the check could not run (a note says why).
    async fn describe_instances(
        &mut self,
        region: Option<&str>,
        ids: &[String],
    ) -> Option<BTreeMap<String, (String, Vec<String>)>> {
        let ec2 = ec2_in(self.ec2, region);
        let mut out = BTreeMap::new();
        // A filter, not InstanceIds: one unknown id would fail the whole call.
        for chunk in ids.chunks(100) {
            let filter = aws_sdk_ec2::types::Filter::builder().name("instance-id").set_values(Some(chunk.to_vec()));
            let pages = ec2
                .describe_instances()
                .filters(filter.build())
                .into_paginator()
                .send()
                .collect::<Result<Vec<_>, _>>()
                .await;
            let pages = match pages {
                Ok(p) => p,
                Err(e) => {
                    let r = region.unwrap_or("the default region");
                    self.note(format!(
                        "DescribeInstances in {r}: {}; the attacker's instances {} are not checked and no forensic \
                         snapshot is planned: snapshot their volumes by hand",
                        aws_sdk_ec2::error::DisplayErrorContext(&e),
                        chunk.join(", ")
                    ));
                    return None;
                }
            };
            for i in pages.iter().flat_map(|p| p.reservations()).flat_map(|r| r.instances()) {
                let Some(id) = i.instance_id() else { continue };
                let state = i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_default();
                if matches!(state.as_str(), "terminated" | "shutting-down") {
                    continue;
                }
                let volumes = i
                    .block_device_mappings()
                    .iter()
                    .filter_map(|m| m.ebs().and_then(|e| e.volume_id()))
                    .map(str::to_string)
                    .collect();
                out.insert(id.to_string(), (state, volumes));
            }
        }
        Some(out)
    }

    fn instance(
        &mut self,
        region: Option<&str>,
        id: &str,
        seen: SeenInstance,
        live: &Option<BTreeMap<String, (String, Vec<String>)>>,
    ) {
        let calls = seen.calls.iter().cloned().collect::<Vec<_>>().join(", ");
        let title = match (seen.launched, calls.is_empty()) {
            (true, true) => format!("attacker launched instance {id}"),
            (true, false) => format!("attacker launched instance {id} and used it ({calls})"),
            (false, _) => format!("attacker used instance {id} ({calls})"),
        };
        let title = match region {
            Some(r) => format!("{title} in {r}"),
            None => title,
        };
        // Stopping or starting alone is disruption; the rest is a foothold or code execution.
        let severity =
            if seen.launched || seen.calls.iter().any(|c| !matches!(c.as_str(), "StopInstances" | "StartInstances")) {
                Severity::High
            } else {
                Severity::Medium
            };
        let (present, detail, volumes) = match live {
            None => (None, "could not check whether it still exists".to_string(), Vec::new()),
            Some(m) => match m.get(id) {
                None => (Some(false), "it no longer exists (or is terminated)".to_string(), Vec::new()),
                Some((state, volumes)) if volumes.is_empty() => (
                    Some(true),
                    format!("{state}; no EBS volume to snapshot (instance store is lost when it stops)"),
                    Vec::new(),
                ),
                Some((state, volumes)) => (
                    Some(true),
                    format!(
                        "{state}; the plan snapshots its volumes {} first, as evidence; rekey does not stop or \
                         terminate instances: do it once the snapshots are taken",
                        volumes.join(", ")
                    ),
                    volumes.clone(),
                ),
            },
        };
        let f = self.finding("instance", severity, title, id.to_string(), present, seen.evidence, detail);
        for v in volumes {
            self.act(
                &f,
                format!("snapshot volume {v} of instance {id} as evidence"),
                Action::SnapshotVolume {
                    volume_id: v,
                    instance_id: id.to_string(),
                    region: region.map(str::to_string),
                },
                Undo::None { reason: "a forensic snapshot is evidence and is kept".into() },
            );
        }
    }
}

/// What the attacker did to one instance.
#[derive(Debug, Default)]
struct SeenInstance {
    launched: bool,
    /// The calls that reached into it (`SendCommand`, …), launch aside.
    calls: BTreeSet<String>,
    evidence: Vec<String>,
}

/// The instances an event launched (`true`) or reached into (`false`), by id.
pub(super) fn instances_of(e: &TimelineEvent) -> Option<(bool, Vec<String>)> {
    let service = e.event_source.split('.').next().unwrap_or_default();
    match (service, e.event_name.as_str()) {
        ("ec2", "RunInstances") => {
            let items = e
                .response_elements
                .as_ref()
                .and_then(|v| v.pointer("/instancesSet/items"))
                .and_then(Value::as_array)?;
            let ids: Vec<String> = items
                .iter()
                .filter_map(|i| i.get("instanceId").and_then(Value::as_str))
                .filter(|id| is_instance_id(id))
                .map(str::to_string)
                .collect();
            Some((true, ids))
        }
        (
            "ec2",
            "ModifyInstanceAttribute"
            | "StopInstances"
            | "StartInstances"
            | "AssociateIamInstanceProfile"
            | "GetPasswordData",
        )
        | ("ssm", "SendCommand")
        | ("ec2-instance-connect", "SendSSHPublicKey") => {
            // The ids sit in different places per call (`instanceId`, `instancesSet.items[]`,
            // `AssociateIamInstanceProfileRequest.InstanceId`, `instanceIds`, `targets[].values`):
            // every string of the parameters that is an instance id.
            let mut ids = Vec::new();
            if let Some(v) = &e.request_parameters {
                collect_instance_ids(v, &mut ids);
            }
            Some((false, ids))
        }
        _ => None,
    }
}

fn collect_instance_ids(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) if is_instance_id(s) && !out.contains(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|v| collect_instance_ids(v, out)),
        Value::Object(m) => m.values().for_each(|v| collect_instance_ids(v, out)),
        _ => {}
    }
}

/// `i-` and 8 or 17 hex digits.
fn is_instance_id(s: &str) -> bool {
    s.strip_prefix("i-").is_some_and(|h| matches!(h.len(), 8 | 17) && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The EC2 client for a region: the given one, or a copy pointed at `region` (same credentials and
/// endpoint settings).
pub fn ec2_in(ec2: &aws_sdk_ec2::Client, region: Option<&str>) -> aws_sdk_ec2::Client {
    match region {
        Some(r) if ec2.config().region().map(|c| c.as_ref()) != Some(r) => aws_sdk_ec2::Client::from_conf(
            ec2.config().to_builder().region(aws_sdk_ec2::config::Region::new(r.to_string())).build(),
        ),
        _ => ec2.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance_event(name: &str, source: &str, req: Value, resp: Value) -> TimelineEvent {
        TimelineEvent {
            event_id: name.into(),
            event_name: name.into(),
            event_source: format!("{source}.amazonaws.com"),
            request_parameters: Some(req),
            response_elements: Some(resp),
            ..Default::default()
        }
    }

    #[test]
    fn instance_ids_from_launch_and_touch_events() {
        let run = instance_event(
            "RunInstances",
            "ec2",
            serde_json::json!({"instancesSet": {"items": [{"imageId": "ami-1"}]}}),
            serde_json::json!({"instancesSet": {"items": [{"instanceId": "i-0123456789abcdef0"}, {"instanceId": "i-1234abcd"}]}}),
        );
        assert_eq!(instances_of(&run), Some((true, vec!["i-0123456789abcdef0".into(), "i-1234abcd".into()])));
        let ssm = instance_event(
            "SendCommand",
            "ssm",
            serde_json::json!({"documentName": "AWS-RunShellScript",
                "targets": [{"key": "InstanceIds", "values": ["i-0123456789abcdef0"]}], "instanceIds": ["i-1234abcd"]}),
            Value::Null,
        );
        assert_eq!(instances_of(&ssm), Some((false, vec!["i-0123456789abcdef0".into(), "i-1234abcd".into()])));
        let profile = instance_event(
            "AssociateIamInstanceProfile",
            "ec2",
            serde_json::json!({"AssociateIamInstanceProfileRequest": {"InstanceId": "i-1234abcd",
                "IamInstanceProfile": {"Name": "admin"}}}),
            Value::Null,
        );
        assert_eq!(instances_of(&profile), Some((false, vec!["i-1234abcd".into()])));
        let stop = instance_event(
            "StopInstances",
            "ec2",
            serde_json::json!({"instancesSet": {"items": [{"instanceId": "i-1234abcd"}]}, "force": false}),
            Value::Null,
        );
        assert_eq!(instances_of(&stop), Some((false, vec!["i-1234abcd".into()])));
        let ssh = instance_event(
            "SendSSHPublicKey",
            "ec2-instance-connect",
            serde_json::json!({"instanceId": "i-1234abcd", "instanceOSUser": "ec2-user", "sSHPublicKey": "ssh-ed25519 x"}),
            Value::Null,
        );
        assert_eq!(instances_of(&ssh), Some((false, vec!["i-1234abcd".into()])));
        assert!(instances_of(&instance_event("DescribeInstances", "ec2", Value::Null, Value::Null)).is_none());
        assert!(!is_instance_id("i-xyz") && !is_instance_id("ami-12345678"));
    }
}
