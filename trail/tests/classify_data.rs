//! Classification on the Stratus Red Team detonations: each technique's own events must land in
//! the category an investigator would file the technique under.

use std::collections::BTreeSet;

use rekey_trail::classify::{Category, classify};
use rekey_trail::{Record, Records};

fn categories_of(file: &str) -> (BTreeSet<Category>, usize) {
    let text = std::fs::read(file).unwrap();
    let split = Records::split(&text).unwrap();
    let mut cats = BTreeSet::new();
    for raw in &split.records {
        let rec = Record::parse(raw).unwrap();
        cats.extend(classify(&rec).categories);
    }
    (cats, split.records.len())
}

#[test]
fn every_stratus_technique_is_classified_as_its_tactic() {
    use Category::*;
    let expected: &[(&str, &[Category])] = &[
        ("aws.credential-access.ec2-get-password-data", &[Exfiltration]),
        ("aws.credential-access.ec2-steal-instance-credentials", &[Persistence]),
        ("aws.credential-access.secretsmanager-batch-retrieve-secrets", &[Exfiltration]),
        ("aws.credential-access.secretsmanager-retrieve-secrets", &[Exfiltration]),
        ("aws.credential-access.ssm-retrieve-securestring-parameters", &[Exfiltration]),
        ("aws.defense-evasion.cloudtrail-delete", &[DefenseEvasion]),
        ("aws.defense-evasion.cloudtrail-event-selectors", &[DefenseEvasion]),
        ("aws.defense-evasion.cloudtrail-stop", &[DefenseEvasion]),
        ("aws.defense-evasion.dns-delete-logs", &[DefenseEvasion]),
        ("aws.defense-evasion.organizations-leave", &[DefenseEvasion]),
        ("aws.defense-evasion.vpc-remove-flow-logs", &[DefenseEvasion]),
        ("aws.discovery.ec2-download-user-data", &[Reconnaissance]),
        ("aws.execution.ec2-launch-unusual-instances", &[Persistence]),
        ("aws.execution.ec2-user-data", &[Persistence]),
        ("aws.execution.ssm-send-command", &[Persistence]),
        ("aws.execution.ssm-start-session", &[Persistence]),
        ("aws.exfiltration.ec2-security-group-open-port-22-ingress", &[Persistence]),
        ("aws.exfiltration.ec2-share-ami", &[Exfiltration]),
        ("aws.exfiltration.ec2-share-ebs-snapshot", &[Exfiltration]),
        ("aws.exfiltration.rds-share-snapshot", &[Exfiltration]),
        ("aws.impact.bedrock-invoke-model", &[Exfiltration]),
        ("aws.initial-access.console-login-without-mfa", &[Persistence]),
        ("aws.lateral-movement.ec2-instance-connect", &[Persistence]),
        ("aws.lateral-movement.ec2-serial-console-send-ssh-public-key", &[Persistence]),
        ("aws.persistence.iam-backdoor-role", &[Persistence]),
        ("aws.persistence.iam-backdoor-user", &[Persistence, PrivilegeEscalation]),
        ("aws.persistence.iam-create-admin-user", &[Persistence]),
        ("aws.persistence.iam-create-backdoor-role", &[Persistence]),
        ("aws.persistence.iam-create-user-login-profile", &[Persistence, PrivilegeEscalation]),
        ("aws.persistence.lambda-backdoor-function", &[Persistence]),
        ("aws.persistence.lambda-layer-extension", &[Persistence]),
        ("aws.persistence.lambda-overwrite-code", &[Persistence]),
        ("aws.persistence.rolesanywhere-create-trust-anchor", &[Persistence]),
        ("aws.persistence.sts-federation-token", &[Persistence]),
        ("aws.privilege-escalation.iam-update-user-login-profile", &[Persistence, PrivilegeEscalation]),
    ];
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/stratus-red-team");
    let files = std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "json"))
        .count();
    assert_eq!(files, expected.len(), "every detonation file has an expectation");
    for (technique, wanted) in expected {
        let (got, n) = categories_of(&format!("{dir}/{technique}.json"));
        assert!(n > 0, "{technique}");
        for w in *wanted {
            assert!(got.contains(w), "{technique}: expected {w:?} among {got:?}");
        }
    }
}
