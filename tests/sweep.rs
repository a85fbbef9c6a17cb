//! The live sweep against the emulator. CloudTrail was never enabled; with the leaked key an
//! attacker launches big instances in three Regions, opens SSH to the world, peers a VPC with a
//! foreign account, grants that account read on a bucket, creates a key pair, a Lambda function in
//! another Region and an SES identity. `rekey investigate` must name all nine with their Region and
//! id, leave the account's own older, ordinary resources out, and plan containment that `contain
//! --apply` carries out (instances stopped after their snapshots, never terminated) and `--undo`
//! reverses. Then: with a trail, the same resources carry the key's events and are not doubled; the
//! sweep of every Region costs a counted, bounded number of requests (the emulator counts them too);
//! a Region it cannot read, or not in time, is a blind spot.

mod support;

use std::io::Write;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use support::*;
use testbed::moto::{Creds, Moto, seed};

const ACCOUNT: &str = "123456789012";
const FOREIGN: &str = "999999999999";
const ATTACKER_IP: &str = "198.51.100.50";
/// Where the attacker's compute went: Regions with none before.
const MINING_REGIONS: [&str; 3] = ["us-west-2", "eu-west-1", "ap-southeast-1"];
/// An empty zip archive (only its end record): enough for CreateFunction.
const EMPTY_ZIP: [u8; 22] = [0x50, 0x4b, 0x05, 0x06, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

fn ec2(conf: &aws_types::SdkConfig, region: &str) -> aws_sdk_ec2::Client {
    let r = aws_sdk_ec2::config::Region::new(region.to_string());
    aws_sdk_ec2::Client::from_conf(aws_sdk_ec2::config::Builder::from(conf).region(r).build())
}

fn s3(conf: &aws_types::SdkConfig) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(conf).force_path_style(true).build())
}

fn lambda(conf: &aws_types::SdkConfig, region: &str) -> aws_sdk_lambda::Client {
    let r = aws_sdk_lambda::config::Region::new(region.to_string());
    aws_sdk_lambda::Client::from_conf(aws_sdk_lambda::config::Builder::from(conf).region(r).build())
}

fn ses(conf: &aws_types::SdkConfig, region: &str) -> aws_sdk_sesv2::Client {
    let r = aws_sdk_sesv2::config::Region::new(region.to_string());
    aws_sdk_sesv2::Client::from_conf(aws_sdk_sesv2::config::Builder::from(conf).region(r).build())
}

/// Launches one instance; returns its id and root volume.
async fn launch(ec2: &aws_sdk_ec2::Client, instance_type: &str) -> (String, String) {
    let out = ec2
        .run_instances()
        .image_id("ami-12345678")
        .instance_type(aws_sdk_ec2::types::InstanceType::from(instance_type))
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .expect("RunInstances");
    let i = &out.instances()[0];
    let volume = i.block_device_mappings()[0].ebs().and_then(|e| e.volume_id()).expect("a root volume").to_string();
    (i.instance_id().unwrap().to_string(), volume)
}

async fn state(ec2: &aws_sdk_ec2::Client, id: &str) -> String {
    let out = ec2.describe_instances().instance_ids(id).send().await.expect("DescribeInstances");
    out.reservations()[0].instances()[0].state().unwrap().name().unwrap().as_str().to_string()
}

async fn default_vpc(ec2: &aws_sdk_ec2::Client) -> String {
    let out = ec2.describe_vpcs().send().await.expect("DescribeVpcs");
    out.vpcs()
        .iter()
        .find(|v| v.is_default() == Some(true))
        .and_then(|v| v.vpc_id())
        .expect("a default VPC")
        .to_string()
}

async fn group_with(ec2: &aws_sdk_ec2::Client, name: &str, port: i32, cidr: &str) -> String {
    let vpc = default_vpc(ec2).await;
    let g = ec2
        .create_security_group()
        .group_name(name)
        .description(name)
        .vpc_id(vpc)
        .send()
        .await
        .expect("CreateSecurityGroup");
    let id = g.group_id().unwrap().to_string();
    let rule = aws_sdk_ec2::types::IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(port)
        .to_port(port)
        .ip_ranges(aws_sdk_ec2::types::IpRange::builder().cidr_ip(cidr).build())
        .build();
    ec2.authorize_security_group_ingress().group_id(&id).ip_permissions(rule).send().await.expect("Authorize");
    id
}

/// (protocol, from, cidr) of a group's inbound rules.
async fn rules(ec2: &aws_sdk_ec2::Client, group: &str) -> Vec<(String, i32, String)> {
    let out = ec2.describe_security_groups().group_ids(group).send().await.expect("DescribeSecurityGroups");
    let mut r: Vec<(String, i32, String)> = out.security_groups()[0]
        .ip_permissions()
        .iter()
        .flat_map(|p| {
            p.ip_ranges().iter().map(move |c| {
                (
                    p.ip_protocol().unwrap_or_default().to_string(),
                    p.from_port().unwrap_or(-1),
                    c.cidr_ip().unwrap_or_default().to_string(),
                )
            })
        })
        .collect();
    r.sort();
    r
}

async fn bucket_statements(s3: &aws_sdk_s3::Client, bucket: &str) -> Vec<Value> {
    let p = s3.get_bucket_policy().bucket(bucket).send().await.expect("GetBucketPolicy");
    let v: Value = serde_json::from_str(p.policy().unwrap()).unwrap();
    let mut s = v["Statement"].as_array().cloned().unwrap_or_default();
    s.sort_by_key(|s| s.to_string());
    s
}

/// Credentials of a session in the foreign account (the emulator keeps one store per account).
async fn foreign_account(moto: &Moto, any: &Creds) -> aws_types::SdkConfig {
    let sts = aws_sdk_sts::Client::new(&moto.sdk_config(any));
    let out = sts
        .assume_role()
        .role_arn(format!("arn:aws:iam::{FOREIGN}:role/peer"))
        .role_session_name("attacker")
        .send()
        .await
        .expect("AssumeRole into the foreign account");
    let c = out.credentials().unwrap();
    moto.sdk_config(any)
        .to_builder()
        .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(
            aws_credential_types::Credentials::new(
                c.access_key_id(),
                c.secret_access_key(),
                Some(c.session_token().to_string()),
                None,
                "foreign",
            ),
        ))
        .build()
}

/// The window starts on a whole second after everything "before" it, as creation times have
/// whole seconds.
async fn window_start() -> String {
    tokio::time::sleep(Duration::from_millis(1200)).await;
    rekey_trail::time::format(SystemTime::now())
}

fn findings(report: &Value) -> Vec<Value> {
    report["findings"].as_array().cloned().unwrap_or_default()
}

/// The finding about `id`, which must name `region` too.
fn finding_about<'a>(findings: &'a [Value], id: &str, region: &str) -> &'a Value {
    let f = findings
        .iter()
        .find(|f| {
            f["resource"].as_str().unwrap_or_default().contains(id)
                || f["title"].as_str().unwrap_or_default().contains(id)
        })
        .unwrap_or_else(|| panic!("a finding about {id}: {findings:#?}"));
    let text = f.to_string();
    assert!(text.contains(region), "the finding about {id} names its Region {region}: {f:#}");
    assert_eq!(f["still_present"], true, "{f:#}");
    assert!(!f["detail"].as_str().unwrap_or_default().is_empty(), "why and evidence: {f:#}");
    f
}

fn actions_of(plan: &Value, kind: &str) -> Vec<Value> {
    plan["actions"].as_array().unwrap().iter().filter(|a| a["action"]["type"] == kind).cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cloudtrail_the_sweep_finds_all_nine_and_contain_reverses_each() {
    let moto = Moto::start();
    let s = seed(&moto).await;
    let admin = moto.sdk_config(&s.admin);
    let east = ec2(&admin, "us-east-1");
    let s3c = s3(&admin);

    // The account before the window: an ordinary instance, a private bucket, a bucket with the
    // account's own policy, a closed group and a web group, the mail identity the app sends from.
    let (old_instance, _) = launch(&east, "t3.micro").await;
    s3c.create_bucket().bucket("acme-private").send().await.unwrap();
    s3c.create_bucket().bucket("acme-data").send().await.unwrap();
    let own = json!({"Sid": "own", "Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:root")}, "Action": "s3:GetObject", "Resource": "arn:aws:s3:::acme-data/*"});
    s3c.put_bucket_policy()
        .bucket("acme-data")
        .policy(json!({"Version": "2012-10-17", "Statement": [own.clone()]}).to_string())
        .send()
        .await
        .unwrap();
    let closed = group_with(&east, "internal", 5432, "10.0.0.0/8").await;
    let web = group_with(&east, "web", 443, "0.0.0.0/0").await;
    ses(&admin, "us-east-1").create_email_identity().email_identity("noreply@acme.example").send().await.unwrap();
    let since = window_start().await;

    // The attacker, with the leaked key.
    let k = moto.sdk_config(&s.app_key);
    let mut mined = Vec::new();
    for r in MINING_REGIONS {
        let (id, volume) = launch(&ec2(&k, r), "p3.16xlarge").await;
        mined.push((r, id, volume));
    }
    let k_east = ec2(&k, "us-east-1");
    let ssh = group_with(&k_east, "ssh", 22, "0.0.0.0/0").await;
    let foreign = foreign_account(&moto, &s.app_key).await;
    let their_vpc = ec2(&foreign, "us-east-1").create_vpc().cidr_block("10.50.0.0/16").send().await.unwrap();
    let their_vpc = their_vpc.vpc().unwrap().vpc_id().unwrap().to_string();
    let our_vpc = k_east
        .create_vpc()
        .cidr_block("10.9.0.0/16")
        .send()
        .await
        .unwrap()
        .vpc()
        .unwrap()
        .vpc_id()
        .unwrap()
        .to_string();
    let pcx = k_east
        .create_vpc_peering_connection()
        .vpc_id(&our_vpc)
        .peer_vpc_id(&their_vpc)
        .peer_owner_id(FOREIGN)
        .send()
        .await
        .unwrap();
    let pcx = pcx.vpc_peering_connection().unwrap().vpc_peering_connection_id().unwrap().to_string();
    ec2(&foreign, "us-east-1").accept_vpc_peering_connection().vpc_peering_connection_id(&pcx).send().await.unwrap();
    let grant = json!({"Sid": "partner", "Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{FOREIGN}:root")}, "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": ["arn:aws:s3:::acme-data", "arn:aws:s3:::acme-data/*"]});
    s3(&k)
        .put_bucket_policy()
        .bucket("acme-data")
        .policy(json!({"Version": "2012-10-17", "Statement": [own.clone(), grant.clone()]}).to_string())
        .send()
        .await
        .unwrap();
    ec2(&k, "us-west-2").create_key_pair().key_name("attacker-key").send().await.unwrap();
    let role = aws_sdk_iam::Client::new(&k)
        .create_role()
        .role_name("miner-role")
        .assume_role_policy_document(json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]}).to_string())
        .send()
        .await
        .unwrap();
    lambda(&k, "ap-northeast-1")
        .create_function()
        .function_name("miner")
        .runtime(aws_sdk_lambda::types::Runtime::Python312)
        .role(role.role().unwrap().arn())
        .handler("index.handler")
        .code(
            aws_sdk_lambda::types::FunctionCode::builder()
                .zip_file(aws_sdk_lambda::primitives::Blob::new(EMPTY_ZIP.to_vec()))
                .build(),
        )
        .send()
        .await
        .unwrap();
    ses(&k, "eu-central-1").create_email_identity().email_identity("promo@spam.example").send().await.unwrap();

    moto.set_auth(true).await;
    let dir = state_dir();
    let report_dir = dir.path().join("report");
    let rd = report_dir.display().to_string();
    let key = s.app_key.access_key_id.clone();
    let out = rekey(
        &moto,
        &s.admin,
        dir.path(),
        &[
            "investigate",
            "--access-key",
            &key,
            "--since",
            &since,
            "--report-dir",
            &rd,
            "--no-history",
            "--region",
            "us-east-1",
        ],
    )
    .await;
    out.assert_code(0);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(report_dir.join("report.json")).unwrap()).unwrap();
    let all = findings(&report);

    // All nine, each with its Region and id.
    for (region, id, _) in &mined {
        let f = finding_about(&all, id, region);
        assert_eq!(f["severity"], "critical", "p3.16xlarge in a Region with no compute before: {f:#}");
        assert!(f["detail"].as_str().unwrap().contains("p3.16xlarge"), "the evidence names the type: {f:#}");
    }
    let f = finding_about(&all, &ssh, "us-east-1");
    assert!(f["title"].as_str().unwrap().contains("tcp 22 from 0.0.0.0/0"), "{f:#}");
    let f = finding_about(&all, &pcx, "us-east-1");
    assert!(f["title"].as_str().unwrap().contains(FOREIGN), "{f:#}");
    let f = finding_about(&all, "acme-data", "us-east-1");
    assert!(f["detail"].as_str().unwrap().contains("partner"), "the statement is the evidence: {f:#}");
    finding_about(&all, "attacker-key", "us-west-2");
    finding_about(&all, "function:miner", "ap-northeast-1");
    let f = finding_about(&all, "promo@spam.example", "eu-central-1");
    assert!(f["title"].as_str().unwrap().contains("does not otherwise use"), "{f:#}");

    // What existed before the window and is not risky is not a finding.
    let text = serde_json::to_string(&all).unwrap();
    for ordinary in [old_instance.as_str(), "acme-private", closed.as_str(), web.as_str(), "noreply@acme.example"] {
        assert!(!text.contains(ordinary), "{ordinary} is not a finding: {all:#?}");
    }
    assert!(
        report["blind_spots"].as_array().unwrap().iter().any(|b| b.to_string().to_lowercase().contains("trail")),
        "the missing trail is a blind spot: {}",
        report["blind_spots"]
    );
    let md = std::fs::read_to_string(report_dir.join("report.md")).unwrap();
    assert!(md.contains("## Review for unexpected usage"), "{md}");
    for check in [
        "Security group rules | **findings**",
        "VPC peering | **findings**",
        "S3 bucket policies and ACLs | **findings**",
    ] {
        assert!(md.contains(check), "the checklist answers {check}:\n{md}");
    }

    // The plan: every snapshot before any stop; one step per risky thing.
    let plan: Value = serde_json::from_str(&std::fs::read_to_string(report_dir.join("plan.json")).unwrap()).unwrap();
    let types: Vec<String> =
        plan["actions"].as_array().unwrap().iter().map(|a| a["action"]["type"].as_str().unwrap().to_string()).collect();
    let last_snapshot = types.iter().rposition(|t| t == "snapshot_volume").expect("snapshots are planned");
    let first_stop = types.iter().position(|t| t == "stop_instance").expect("stops are planned");
    assert!(last_snapshot < first_stop, "evidence first: {types:?}");
    assert!(!types.iter().any(|t| t.contains("terminate")), "{types:?}");
    assert_eq!(actions_of(&plan, "stop_instance").len(), 3, "{types:?}");
    assert_eq!(actions_of(&plan, "snapshot_volume").len(), 3, "{types:?}");
    for t in ["revoke_ingress", "remove_policy_statement", "end_peering", "throttle_function"] {
        assert_eq!(actions_of(&plan, t).len(), 1, "{t}: {types:?}");
    }

    let plan_s = report_dir.join("plan.json").display().to_string();
    rekey(&moto, &s.admin, dir.path(), &["contain", "--plan", &plan_s]).await.assert_code(0);
    assert_eq!(state(&ec2(&admin, "us-west-2"), &mined[0].1).await, "running", "a dry run changes nothing");
    let applied = rekey(&moto, &s.admin, dir.path(), &["contain", "--plan", &plan_s, "--apply"]).await;
    applied.assert_code(0);
    for (region, id, volume) in &mined {
        let c = ec2(&admin, region);
        assert!(matches!(state(&c, id).await.as_str(), "stopped" | "stopping"), "{id} stopped\n{}", applied.stdout);
        let snaps = c
            .describe_snapshots()
            .owner_ids("self")
            .filters(aws_sdk_ec2::types::Filter::builder().name("volume-id").values(volume).build())
            .send()
            .await
            .unwrap();
        assert!(
            snaps.snapshots().iter().any(|s| s.tags().iter().any(|t| t.key() == Some("rekey:incident"))),
            "a forensic snapshot of {volume} in {region}"
        );
    }
    assert_eq!(state(&east, &old_instance).await, "running", "the account's own instance is left alone");
    assert!(rules(&east, &ssh).await.is_empty(), "the world-open SSH rule is revoked");
    assert_eq!(rules(&east, &web).await, vec![("tcp".into(), 443, "0.0.0.0/0".into())], "the web rule stays");
    assert_eq!(bucket_statements(&s3c, "acme-data").await, vec![own.clone()], "only the foreign grant is removed");
    let peering = east.describe_vpc_peering_connections().vpc_peering_connection_ids(&pcx).send().await.unwrap();
    let status = peering.vpc_peering_connections()[0].status().unwrap().code().unwrap().as_str().to_string();
    assert_eq!(status, "deleted");
    let throttled =
        lambda(&admin, "ap-northeast-1").get_function_concurrency().function_name("miner").send().await.unwrap();
    assert_eq!(throttled.reserved_concurrent_executions(), Some(0));

    let undone = rekey(&moto, &s.admin, dir.path(), &["contain", "--plan", &plan_s, "--undo"]).await;
    undone.assert_code(0);
    for (region, id, volume) in &mined {
        let c = ec2(&admin, region);
        assert!(matches!(state(&c, id).await.as_str(), "running" | "pending"), "{id} started again\n{}", undone.stdout);
        let snaps = c.describe_snapshots().owner_ids("self").send().await.unwrap();
        assert!(snaps.snapshots().iter().any(|s| s.volume_id() == Some(volume.as_str())), "evidence is kept");
    }
    assert_eq!(rules(&east, &ssh).await, vec![("tcp".into(), 22, "0.0.0.0/0".into())], "the rule is back");
    let mut both = vec![own.clone(), grant.clone()];
    both.sort_by_key(|s| s.to_string());
    assert_eq!(bucket_statements(&s3c, "acme-data").await, both, "the policy is whole again");
    let again = east
        .describe_vpc_peering_connections()
        .filters(aws_sdk_ec2::types::Filter::builder().name("requester-vpc-info.vpc-id").values(&our_vpc).build())
        .send()
        .await
        .unwrap();
    assert!(
        again.vpc_peering_connections().iter().any(|p| {
            p.vpc_peering_connection_id() != Some(pcx.as_str())
                && p.accepter_vpc_info().and_then(|a| a.vpc_id()) == Some(their_vpc.as_str())
                && p.status().and_then(|s| s.code()).is_some_and(|c| c.as_str() != "deleted")
        }),
        "undo requests the peering again (for the other account to accept)\n{}",
        undone.stdout
    );
    let back = lambda(&admin, "ap-northeast-1").get_function_concurrency().function_name("miner").send().await.unwrap();
    assert_eq!(back.reserved_concurrent_executions(), None, "the function runs again");
    moto.set_auth(false).await;
}

struct Trail {
    records: Vec<Value>,
}

impl Trail {
    fn add(&mut self, key: &str, region: &str, source: &str, name: &str, request: Value, response: Value) -> String {
        let id = format!("00000000-0000-4000-8000-{:012}", self.records.len() + 1);
        self.records.push(json!({
            "eventVersion": "1.09",
            "userIdentity": {"type": "IAMUser", "principalId": "AIDAEXAMPLE", "arn": format!("arn:aws:iam::{ACCOUNT}:user/app-integration-user"), "accountId": ACCOUNT, "accessKeyId": key, "userName": "app-integration-user"},
            "eventTime": rekey_trail::time::format(SystemTime::now()),
            "eventSource": format!("{source}.amazonaws.com"),
            "eventName": name,
            "awsRegion": region,
            "sourceIPAddress": ATTACKER_IP,
            "userAgent": "aws-cli/2.15.0",
            "requestParameters": request,
            "responseElements": response,
            "eventID": id,
            "eventType": "AwsApiCall",
            "managementEvent": true,
            "recipientAccountId": ACCOUNT,
        }));
        id
    }

    async fn upload(&self, s3: &aws_sdk_s3::Client, bucket: &str) {
        let stamp = rekey_trail::time::format(SystemTime::now() + Duration::from_secs(300));
        let (date, time) = (&stamp[..10], &stamp[11..16]);
        let key = format!(
            "AWSLogs/{ACCOUNT}/CloudTrail/us-east-1/{}/{ACCOUNT}_CloudTrail_us-east-1_{}T{}Z_sweeptest00000001.json.gz",
            date.replace('-', "/"),
            date.replace('-', ""),
            time.replace(':', "")
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(json!({ "Records": self.records }).to_string().as_bytes()).unwrap();
        s3.put_object().bucket(bucket).key(key).body(gz.finish().unwrap().into()).send().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_trail_the_sweeps_findings_carry_the_keys_events_and_are_not_doubled() {
    let moto = Moto::start();
    let s = seed(&moto).await;
    let admin = moto.sdk_config(&s.admin);
    let s3c = s3(&admin);
    s3c.create_bucket().bucket("acme-trail").send().await.unwrap();
    let ct = aws_sdk_cloudtrail::Client::new(&admin);
    ct.create_trail().name("main").s3_bucket_name("acme-trail").is_multi_region_trail(true).send().await.unwrap();
    ct.start_logging().name("main").send().await.unwrap();
    let since = window_start().await;

    let k = moto.sdk_config(&s.app_key);
    let (instance, volume) = launch(&ec2(&k, "us-west-2"), "p3.16xlarge").await;
    let ssh = group_with(&ec2(&k, "us-east-1"), "ssh", 22, "0.0.0.0/0").await;
    let key = s.app_key.access_key_id.clone();
    let mut trail = Trail { records: Vec::new() };
    let launched = trail.add(
        &key,
        "us-west-2",
        "ec2",
        "RunInstances",
        json!({"instanceType": "p3.16xlarge"}),
        json!({"instancesSet": {"items": [{"instanceId": instance}]}}),
    );
    let opened = trail.add(
        &key,
        "us-east-1",
        "ec2",
        "AuthorizeSecurityGroupIngress",
        json!({"groupId": ssh, "ipPermissions": {"items": [{"ipProtocol": "tcp", "fromPort": 22, "toPort": 22}]}}),
        json!({"_return": true}),
    );
    trail.upload(&s3c, "acme-trail").await;

    let dir = state_dir();
    let report_dir = dir.path().join("report");
    let rd = report_dir.display().to_string();
    let out = rekey(
        &moto,
        &s.admin,
        dir.path(),
        &[
            "investigate",
            "--access-key",
            &key,
            "--since",
            &since,
            "--report-dir",
            &rd,
            "--no-history",
            "--region",
            "us-east-1",
        ],
    )
    .await;
    out.assert_code(0);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(report_dir.join("report.json")).unwrap()).unwrap();
    let all = findings(&report);
    let about_instance: Vec<&Value> = all.iter().filter(|f| f.to_string().contains(&instance)).collect();
    assert_eq!(about_instance.len(), 1, "one finding for the instance, the trail's and the sweep's merged: {all:#?}");
    let f = about_instance[0];
    assert!(f.to_string().contains("us-west-2"), "{f:#}");
    assert!(f["evidence"].as_array().unwrap().contains(&json!(launched)), "tied to the RunInstances event: {f:#}");
    let g = finding_about(&all, &ssh, "us-east-1");
    assert!(g["evidence"].as_array().unwrap().contains(&json!(opened)), "tied to the Authorize event: {g:#}");

    let plan: Value = serde_json::from_str(&std::fs::read_to_string(report_dir.join("plan.json")).unwrap()).unwrap();
    let snaps = actions_of(&plan, "snapshot_volume");
    assert_eq!(snaps.len(), 1, "the volume is snapshotted once: {plan:#}");
    assert_eq!(snaps[0]["action"]["volume_id"], volume.as_str());
    let stops = actions_of(&plan, "stop_instance");
    assert_eq!(stops.len(), 1, "{plan:#}");
    assert_eq!(stops[0]["finding"], f["id"], "the stop answers the instance's one finding");
    let ids: Vec<&str> = plan["actions"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    let pos = |id: &Value| ids.iter().position(|i| *i == id.as_str().unwrap()).unwrap();
    assert!(pos(&snaps[0]["id"]) < pos(&stops[0]["id"]), "snapshot before stop: {ids:?}");
}

/// (Region, count) of what the emulator served, all services.
fn served_by_region(rows: &[(String, String, u64)]) -> std::collections::BTreeMap<String, u64> {
    let mut m = std::collections::BTreeMap::new();
    for (r, _, n) in rows {
        *m.entry(r.clone()).or_default() += n;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seventeen_regions_cost_a_counted_bounded_number_of_requests_and_what_cannot_be_read_is_a_blind_spot() {
    let moto = Moto::start();
    let s = seed(&moto).await;
    let admin = moto.sdk_config(&s.admin);
    // A few things that cost one request each to check.
    let east = ec2(&admin, "us-east-1");
    let (_, volume) = launch(&east, "t3.micro").await;
    east.create_snapshot().volume_id(&volume).send().await.unwrap();
    s3(&admin).create_bucket().bucket("acme-logs").send().await.unwrap();
    let dir = state_dir();

    moto.clear_requests().await;
    let out = rekey(&moto, &s.admin, dir.path(), &["sweep", "--since", "1h", "--output", "json"]).await;
    let sweep = out.json();
    let served = moto.requests_served().await;
    let regions = sweep["regions"].as_array().unwrap();
    let swept: Vec<&str> = regions.iter().map(|r| r["region"].as_str().unwrap()).filter(|r| *r != "global").collect();
    assert_eq!(swept.len(), 17, "every enabled Region, and only those: {swept:?}");
    assert!(!swept.contains(&"af-south-1") && !swept.contains(&"cn-north-1"), "{swept:?}");
    let total: u64 = served.iter().map(|(_, _, n)| n).sum();
    assert_eq!(sweep["requests"].as_u64(), Some(total), "the sweep counts what the emulator served: {served:?}");
    // Each Region: one listing per family (13), plus one read per item that has permissions or a
    // policy of its own (here the one snapshot and the one instance's AMI-less Region: none).
    for r in regions.iter().filter(|r| r["region"] != "global") {
        let region = r["region"].as_str().unwrap();
        let expected = if region == "us-east-1" { 13 + 1 } else { 13 };
        assert_eq!(r["requests"].as_u64(), Some(expected), "{region}: {r:#}");
        assert_eq!(r["status"], "ok", "{r:#}");
    }
    // Buckets: one listing, then location, policy and ACL of each; STS and DescribeRegions once.
    let global = regions.iter().find(|r| r["region"] == "global").unwrap();
    assert_eq!(global["requests"].as_u64(), Some(1 + 3));
    assert_eq!(total, 17 * 13 + 1 + 4 + 2, "{served:?}");
    assert_eq!(served_by_region(&served).len(), 17, "no request left the enabled Regions: {served:?}");
    assert!(sweep["blind_spots"].as_array().unwrap().is_empty(), "{:#}", sweep["blind_spots"]);

    // deploy/iam-policy-sweep.json is all it needs: as a principal holding exactly that, with the
    // emulator enforcing it, every Region reads in full.
    let sweeper = testbed::moto::create_user(&moto, &s.admin, "sweeper", &["sts:GetCallerIdentity"]).await;
    let policy =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/iam-policy-sweep.json"))
            .unwrap();
    aws_sdk_iam::Client::new(&admin)
        .put_user_policy()
        .user_name("sweeper")
        .policy_name("sweeper-inline")
        .policy_document(policy)
        .send()
        .await
        .unwrap();
    moto.set_auth(true).await;
    let out = rekey(&moto, &sweeper, dir.path(), &["sweep", "--since", "1h", "--output", "json"]).await;
    moto.set_auth(false).await;
    let as_sweeper = out.json();
    assert!(as_sweeper["blind_spots"].as_array().unwrap().is_empty(), "{:#}", as_sweeper["blind_spots"]);
    assert_eq!(as_sweeper["findings"], sweep["findings"], "the same sweep as the admin's");

    // A Region an SCP-like policy denies, and one that answers too slowly for the deadline.
    aws_sdk_iam::Client::new(&admin)
        .put_user_policy()
        .user_name(testbed::moto::ADMIN_USER)
        .policy_name("deny-eu-north-1")
        .policy_document(
            json!({"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "*", "Resource": "*",
                "Condition": {"StringEquals": {"aws:RequestedRegion": "eu-north-1"}}}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    moto.set_auth(true).await;
    moto.set_region_delay("sa-east-1", 30.0).await;
    let out =
        rekey(&moto, &s.admin, dir.path(), &["sweep", "--since", "1h", "--deadline", "8s", "--output", "json"]).await;
    moto.set_region_delay("sa-east-1", 0.0).await;
    moto.set_auth(false).await;
    out.assert_code(5);
    let sweep = out.json();
    let status = |region: &str| {
        sweep["regions"].as_array().unwrap().iter().find(|r| r["region"] == region).map(|r| r["status"].clone())
    };
    assert_eq!(status("eu-north-1"), Some(json!("unreadable")), "{:#}", sweep["regions"]);
    assert_eq!(status("sa-east-1"), Some(json!("unreadable")), "{:#}", sweep["regions"]);
    assert_eq!(status("us-west-2"), Some(json!("ok")), "the other Regions are read: {:#}", sweep["regions"]);
    let blind: Vec<String> =
        sweep["blind_spots"].as_array().unwrap().iter().map(|b| b["detail"].as_str().unwrap().to_string()).collect();
    assert!(blind.iter().any(|b| b.starts_with("eu-north-1") && b.contains("AccessDenied")), "{blind:#?}");
    assert!(blind.iter().any(|b| b.starts_with("sa-east-1") && b.contains("8s deadline")), "{blind:#?}");
    let review = sweep["review"]["items"].as_array().unwrap();
    assert!(review.iter().all(|i| i["status"] != "clear"), "nothing is clear while Regions are unread: {review:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sweep_input_is_one_line_and_exit_2() {
    let dir = state_dir();
    let missing = dir.path().join("no-such-folder/plan.json").display().to_string();
    let cases: [(&[&str], &str); 4] = [
        (&["sweep", "--sweep-region", "mars"], "is not a Region name"),
        (&["sweep", "--since", "1h", "--until", "2h"], "--since is not before --until"),
        (&["sweep", "--deadline", "0s"], "--deadline 0s"),
        (&["sweep", "--plan", &missing], "does not exist"),
    ];
    for (args, needle) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rekey"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line: {stderr}");
        assert!(lines[0].starts_with("rekey: ") && lines[0].contains(needle), "{args:?}: {stderr}");
    }
}

/// `scripts/bench-sweep.sh`: wall time of `rekey sweep` over the 17 Regions of an empty account and
/// of one with things to read in every Region, against the emulator (one Python process; AWS's own
/// per-Region throttling, not the emulator's, is what limits it in production). Prints BENCH lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run with scripts/bench-sweep.sh"]
async fn bench_sweep_all_regions() {
    let runs: usize = std::env::var("REKEY_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let moto = Moto::start();
    let s = seed(&moto).await;
    let admin = moto.sdk_config(&s.admin);
    let dir = state_dir();
    let measure = |label: &'static str| {
        let (moto, admin_creds, dir) = (&moto, &s.admin, dir.path().to_path_buf());
        async move {
            let mut walls = Vec::new();
            let mut last = Value::Null;
            for _ in 0..runs {
                let started = std::time::Instant::now();
                let out = rekey(moto, admin_creds, &dir, &["sweep", "--since", "1h", "--output", "json"]).await;
                walls.push(started.elapsed().as_secs_f64());
                last = out.json();
            }
            walls.sort_by(|a, b| a.total_cmp(b));
            let regions = last["regions"].as_array().map_or(0, |r| r.len() - 1);
            println!(
                "BENCH sweep {label}: {regions} Regions, {} requests, {} findings; wall median {:.2} s (min {:.2}, max {:.2}) over {runs} runs",
                last["requests"],
                last["findings"].as_array().map_or(0, Vec::len),
                walls[walls.len() / 2],
                walls[0],
                walls[walls.len() - 1]
            );
        }
    };
    // The first sweep loads every service of the emulator; it is not measured.
    rekey(&moto, &s.admin, dir.path(), &["sweep", "--since", "1h", "--output", "json"]).await;
    measure("empty account").await;

    // Per Region: 4 instances, 4 security groups (one open to the world), 3 shared and private
    // snapshots, 2 secrets; 20 buckets; a Lambda function in 3 Regions.
    let regions: Vec<String> = ec2(&admin, "us-east-1")
        .describe_regions()
        .send()
        .await
        .unwrap()
        .regions()
        .iter()
        .filter_map(|r| r.region_name().map(str::to_string))
        .collect();
    for (n, region) in regions.iter().enumerate() {
        let c = ec2(&admin, region);
        for _ in 0..4 {
            launch(&c, "m5.large").await;
        }
        for g in 0..4 {
            let cidr = if g == 0 { "0.0.0.0/0" } else { "10.0.0.0/8" };
            group_with(&c, &format!("bench-{g}"), 22, cidr).await;
        }
        let vol = c.create_volume().availability_zone(format!("{region}a")).size(8).send().await.unwrap();
        for i in 0..3 {
            let snap = c.create_snapshot().volume_id(vol.volume_id().unwrap()).send().await.unwrap();
            if i == 0 {
                c.modify_snapshot_attribute()
                    .snapshot_id(snap.snapshot_id().unwrap())
                    .attribute(aws_sdk_ec2::types::SnapshotAttributeName::CreateVolumePermission)
                    .operation_type(aws_sdk_ec2::types::OperationType::Add)
                    .user_ids(FOREIGN)
                    .send()
                    .await
                    .unwrap();
            }
        }
        let sm = aws_sdk_secretsmanager::Client::from_conf(
            aws_sdk_secretsmanager::config::Builder::from(&admin)
                .region(aws_sdk_secretsmanager::config::Region::new(region.clone()))
                .build(),
        );
        for i in 0..2 {
            sm.create_secret().name(format!("bench-{n}-{i}")).secret_string("x").send().await.unwrap();
        }
    }
    let s3c = s3(&admin);
    for b in 0..20 {
        s3c.create_bucket().bucket(format!("bench-bucket-{b}")).send().await.unwrap();
    }
    let role = aws_sdk_iam::Client::new(&admin)
        .create_role()
        .role_name("bench-fn")
        .assume_role_policy_document(json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]}).to_string())
        .send()
        .await
        .unwrap();
    for region in regions.iter().take(3) {
        lambda(&admin, region)
            .create_function()
            .function_name("bench")
            .runtime(aws_sdk_lambda::types::Runtime::Python312)
            .role(role.role().unwrap().arn())
            .handler("index.handler")
            .code(
                aws_sdk_lambda::types::FunctionCode::builder()
                    .zip_file(aws_sdk_lambda::primitives::Blob::new(EMPTY_ZIP.to_vec()))
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }
    measure("busy account").await;
}
