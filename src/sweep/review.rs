//! The post-incident checklist ("check S3 bucket policies, security group rules and VPC peering …"),
//! answered from the sweep: for each check, what was read, what was found, and whether the read was
//! complete. It is the report's "Review for unexpected usage" section, so that a responder sees at
//! a glance which checks are clear, which have findings, and which still need a person.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::{Family, Sweep};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReviewItem {
    /// The checklist line.
    pub check: String,
    pub answer: String,
    /// `clear`, `findings`, or `incomplete` (something it needs could not be read: see the blind spots).
    pub status: String,
    /// The findings that answer it.
    pub findings: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Review {
    pub regions: usize,
    pub regions_unreadable: Vec<String>,
    pub requests: u64,
    pub elapsed_ms: u64,
    pub items: Vec<ReviewItem>,
}

struct Check {
    check: &'static str,
    families: &'static [Family],
    kinds: &'static [&'static str],
}

const CHECKS: &[Check] = &[
    Check {
        check: "Compute in every Region (instances, spot requests, launch templates)",
        families: &[Family::Instances, Family::SpotRequests, Family::LaunchTemplates],
        kinds: &["instance", "spot_request", "launch_template"],
    },
    Check { check: "Security group rules", families: &[Family::SecurityGroups], kinds: &["open_security_group"] },
    Check { check: "VPC peering", families: &[Family::Peering], kinds: &["vpc_peering"] },
    Check {
        check: "S3 bucket policies and ACLs",
        families: &[Family::Buckets],
        kinds: &["bucket_policy", "bucket_acl", "bucket_created"],
    },
    Check {
        check: "Snapshots and AMIs shared outside the account",
        families: &[Family::Snapshots, Family::Images],
        kinds: &["shared_snapshot", "shared_image"],
    },
    Check {
        check: "Lambda functions and layers",
        families: &[Family::Functions, Family::Layers],
        kinds: &["lambda_function", "lambda_layer"],
    },
    Check {
        check: "SES identities (mail sent in the account's name)",
        families: &[Family::Ses],
        kinds: &["ses_identity"],
    },
    Check {
        check: "Secrets Manager and KMS resource policies",
        families: &[Family::Secrets, Family::KmsKeys],
        kinds: &["secret_policy", "kms_key_policy"],
    },
    Check { check: "EC2 key pairs", families: &[Family::KeyPairs], kinds: &["key_pair"] },
];

/// Answers every check from what the sweep read and found.
pub fn answer(s: &Sweep) -> Review {
    let unreadable: Vec<String> =
        s.regions.iter().filter(|r| r.status == "unreadable").map(|r| r.region.clone()).collect();
    let seen = |what: &str| -> (u64, usize) {
        let mut n = 0;
        let mut regions = 0;
        for r in &s.regions {
            if let Some(k) = r.seen.get(what)
                && *k > 0
            {
                n += k;
                regions += 1;
            }
        }
        (n, regions)
    };
    let count = |kinds: &[&str]| s.findings.iter().filter(|f| kinds.contains(&f.kind.as_str())).count();
    let mut items = Vec::new();
    for c in CHECKS {
        let findings: Vec<String> =
            s.findings.iter().filter(|f| c.kinds.contains(&f.kind.as_str())).map(|f| f.id.clone()).collect();
        let answer = match c.kinds[0] {
            "instance" => {
                let (n, regions) = seen("instances");
                let launched = s.regions.iter().map(|r| r.compute_in_window).sum::<u64>();
                let new: Vec<&str> = s
                    .regions
                    .iter()
                    .filter(|r| r.compute_before == 0 && r.compute_in_window > 0)
                    .map(|r| r.region.as_str())
                    .collect();
                let mut a = format!("{n} instance(s) in {regions} Region(s), {launched} launched in the window");
                if !new.is_empty() {
                    let _ = write!(a, "; compute appeared where there was none: {}", new.join(", "));
                }
                let _ = write!(
                    a,
                    "; {} spot request(s) and {} launch template(s) made in the window",
                    count(&["spot_request"]),
                    count(&["launch_template"])
                );
                a
            }
            "open_security_group" => format!(
                "{} security group(s) read; {} rule(s) open to the internet on admin or database ports",
                seen("security groups").0,
                findings.len()
            ),
            "vpc_peering" => format!(
                "{} live peering connection(s); {} with another account or Region",
                seen("VPC peering connections").0,
                findings.len()
            ),
            "bucket_policy" => format!(
                "{} bucket(s) read; {} policy statement(s) and {} ACL grant(s) open outside the account; {} bucket(s) \
                 created in the window",
                seen("buckets").0,
                count(&["bucket_policy"]),
                count(&["bucket_acl"]),
                count(&["bucket_created"])
            ),
            "shared_snapshot" => format!(
                "{} snapshot(s) and {} AMI(s) owned; {} shared outside the account",
                seen("snapshots").0,
                seen("AMIs").0,
                findings.len()
            ),
            "lambda_function" => format!(
                "{} function(s) and {} layer(s); {} function(s) created or changed and {} layer(s) published in the window",
                seen("Lambda functions").0,
                seen("Lambda layers").0,
                count(&["lambda_function"]),
                count(&["lambda_layer"])
            ),
            "ses_identity" => {
                let (n, regions) = seen("SES identities");
                format!(
                    "{n} identit(ies) in {regions} Region(s); {} in a Region the account does not use or made with the key \
                     (Regions in use: {})",
                    findings.len(),
                    s.regions_in_use.join(", ")
                )
            }
            "secret_policy" => format!(
                "{} secret(s) and {} KMS key(s) read; {} policy statement(s) grant access outside the account",
                seen("secrets").0,
                seen("KMS keys").0,
                findings.len()
            ),
            _ => format!("{} key pair(s); {} created in the window", seen("key pairs").0, findings.len()),
        };
        let incomplete = !unreadable.is_empty()
            || s.blind_spots
                .iter()
                .any(|b| b.kind.starts_with("sweep") && c.families.iter().any(|f| b.detail.starts_with(f.name())));
        let status = if !findings.is_empty() {
            "findings"
        } else if incomplete {
            "incomplete"
        } else {
            "clear"
        };
        items.push(ReviewItem { check: c.check.to_string(), answer, status: status.to_string(), findings });
    }
    items.push(ReviewItem {
        check: "Other IAM users, roles and policies; MFA on human users and root".into(),
        answer: "not read by the sweep: the IAM backdoors the key left are the hunt's findings (`rekey \
                 investigate`), and `rekey audit` lists every user's keys and the humans without MFA"
            .into(),
        status: "not_checked".into(),
        findings: Vec::new(),
    });
    Review {
        regions: s.regions.iter().filter(|r| r.region != super::GLOBAL).count(),
        regions_unreadable: unreadable,
        requests: s.requests,
        elapsed_ms: s.elapsed_ms,
        items,
    }
}

impl Review {
    /// Finding ids after the sweep's were merged into a report (`S3` → `F7`).
    pub fn renumber(&mut self, ids: &std::collections::BTreeMap<String, String>) {
        for item in &mut self.items {
            for f in &mut item.findings {
                if let Some(new) = ids.get(f) {
                    *f = new.clone();
                }
            }
        }
    }

    /// The report's section, in Markdown.
    pub fn markdown(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "## Review for unexpected usage\n");
        let _ = writeln!(
            o,
            "The post-incident checklist, answered from a live read of {} Region(s) ({} requests, {:.1} s){}.\n",
            self.regions,
            self.requests,
            self.elapsed_ms as f64 / 1000.0,
            if self.regions_unreadable.is_empty() {
                String::new()
            } else {
                format!("; **not readable: {}**", self.regions_unreadable.join(", "))
            }
        );
        let _ = writeln!(o, "| Check | Status | Answer | Findings |");
        let _ = writeln!(o, "|---|---|---|---|");
        for i in &self.items {
            let status = match i.status.as_str() {
                "findings" => "**findings**",
                "incomplete" => "incomplete (see blind spots)",
                "clear" => "clear",
                _ => "not checked here",
            };
            let _ = writeln!(o, "| {} | {status} | {} | {} |", cell(&i.check), cell(&i.answer), i.findings.join(" "));
        }
        o.push('\n');
        o
    }
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::incident::model::{BlindSpot, Severity};
    use crate::sweep::{RegionReport, finding};

    fn region(name: &str, status: &str, seen: &[(&str, u64)]) -> RegionReport {
        RegionReport {
            region: name.into(),
            status: status.into(),
            requests: 13,
            elapsed_ms: 1,
            seen: seen.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            compute_before: 0,
            compute_in_window: 0,
        }
    }

    fn sweep(regions: Vec<RegionReport>, kinds: &[&str], blind: &[&str]) -> Sweep {
        Sweep {
            account: None,
            window_start: String::new(),
            window_end: String::new(),
            deadline_s: 60,
            elapsed_ms: 1500,
            requests: 30,
            regions,
            regions_in_use: vec!["us-east-1".into()],
            findings: kinds
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    let mut f = finding(k, Severity::High, "us-east-1", "x", String::new(), String::new(), "");
                    f.id = format!("S{}", i + 1);
                    f
                })
                .collect(),
            plan: Vec::new(),
            blind_spots: blind
                .iter()
                .map(|d| BlindSpot { kind: "sweep_incomplete".into(), detail: d.to_string(), evidence: Vec::new() })
                .collect(),
            review: Review::default(),
        }
    }

    fn status<'a>(r: &'a Review, check: &str) -> (&'a str, &'a [String]) {
        let i = r.items.iter().find(|i| i.check.starts_with(check)).unwrap();
        (i.status.as_str(), i.findings.as_slice())
    }

    #[test]
    fn each_check_is_clear_has_findings_or_is_incomplete() {
        let s = sweep(
            vec![region("us-east-1", "ok", &[("security groups", 4)]), region("eu-west-1", "ok", &[])],
            &["open_security_group"],
            &["Lambda functions in eu-west-1 not checked: lambda:ListFunctions: AccessDenied: no"],
        );
        let mut r = answer(&s);
        assert_eq!(r.regions, 2);
        assert_eq!(status(&r, "Security group rules"), ("findings", &["S1".to_string()][..]));
        assert!(r.items.iter().any(|i| i.answer.starts_with("4 security group(s) read; 1 rule(s)")));
        assert_eq!(status(&r, "Lambda").0, "incomplete");
        assert_eq!(status(&r, "VPC peering").0, "clear");
        r.renumber(&BTreeMap::from([("S1".to_string(), "F7".to_string())]));
        assert_eq!(status(&r, "Security group rules").1, &["F7".to_string()][..]);
        let md = r.markdown();
        assert!(md.starts_with("## Review for unexpected usage"), "{md}");
        assert!(md.contains("| Security group rules | **findings** |") && md.contains("| F7 |"), "{md}");
    }

    #[test]
    fn an_unreadable_region_leaves_no_check_clear() {
        let s = sweep(vec![region("us-east-1", "ok", &[]), region("eu-north-1", "unreadable", &[])], &[], &[]);
        let r = answer(&s);
        assert_eq!(r.regions_unreadable, vec!["eu-north-1".to_string()]);
        assert!(r.items.iter().all(|i| i.status != "clear"), "{:#?}", r.items);
        assert!(r.markdown().contains("not readable: eu-north-1"));
    }
}
