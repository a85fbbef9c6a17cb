//! `rekey incident` end to end against the emulator: an attacker signs calls with the app's stolen
//! key (a backdoor user with a key, a password and an admin policy; a role trusting an outside
//! account; a role session that acts; a changed security contact). moto records no CloudTrail, so
//! the test writes the matching trail files into the trail's S3 bucket in the real layout. Then
//! `incident` must find every backdoor still there, follow the session, revoke it, cut over with zero
//! failed app requests, and produce a plan whose `--apply` removes the backdoors and whose `--undo`
//! brings them back.

mod support;

use std::io::Write;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use support::*;
use testbed::app::{self, CredentialSource};
use testbed::load;
use testbed::moto::{Moto, seed};

const ACCOUNT: &str = "123456789012";
const ATTACKER_IP: &str = "198.51.100.50";
const BUCKET: &str = "acme-cloudtrail";
/// Where the application called from before the attack, as its trail shows.
const APP_IP: &str = "203.0.113.10";

fn ts(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

struct Trail {
    records: Vec<(SystemTime, Value)>,
    n: u32,
}

impl Trail {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        at: SystemTime,
        key: &str,
        arn: &str,
        kind: &str,
        ip: &str,
        source: &str,
        name: &str,
        request: Value,
        response: Value,
    ) -> String {
        self.n += 1;
        let id = format!("00000000-0000-4000-8000-{:012}", self.n);
        let user_name = arn.rsplit('/').next().unwrap_or_default();
        self.records.push((
            at,
            json!({
                "eventVersion": "1.09",
                "userIdentity": {"type": kind, "principalId": "AIDAEXAMPLE", "arn": arn, "accountId": ACCOUNT, "accessKeyId": key, "userName": user_name},
                "eventTime": ts(at),
                "eventSource": format!("{source}.amazonaws.com"),
                "eventName": name,
                "awsRegion": "us-east-1",
                "sourceIPAddress": ip,
                "userAgent": "aws-cli/2.15.0 Python/3.11",
                "requestParameters": request,
                "responseElements": response,
                "requestID": format!("req-{}", self.n),
                "eventID": id,
                "readOnly": false,
                "eventType": "AwsApiCall",
                "managementEvent": true,
                "recipientAccountId": ACCOUNT,
            }),
        ));
        id
    }

    /// One gzipped file per record batch, in the trail's layout, delivered 5 minutes after the calls.
    async fn upload(&self, s3: &aws_sdk_s3::Client) {
        let mut by_file: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
        for (at, rec) in &self.records {
            let delivered = *at + Duration::from_secs(300);
            let stamp = ts(delivered);
            let (date, time) = (&stamp[..10], &stamp[11..16]);
            let key = format!(
                "AWSLogs/{ACCOUNT}/CloudTrail/us-east-1/{}/{ACCOUNT}_CloudTrail_us-east-1_{}T{}Z_abcdefgh12345678.json.gz",
                date.replace('-', "/"),
                date.replace('-', ""),
                time.replace(':', "")
            );
            by_file.entry(key).or_default().push(rec.clone());
        }
        for (key, records) in by_file {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(json!({ "Records": records }).to_string().as_bytes()).unwrap();
            let body = gz.finish().unwrap();
            s3.put_object().bucket(BUCKET).key(key).body(body.into()).send().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incident_finds_the_backdoors_follows_the_session_cuts_over_and_plans_containment() {
    let moto = Moto::start();
    let s = seed(&moto).await;
    let admin_iam = aws_sdk_iam::Client::new(&moto.sdk_config(&s.admin));
    let app_user_arn = format!("arn:aws:iam::{ACCOUNT}:user/{}", s.app_user);
    // The story's app user was meant to send mail only, but holds far more.
    admin_iam
        .put_user_policy()
        .user_name(&s.app_user)
        .policy_name("app-broad")
        .policy_document(
            json!({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}).to_string(),
        )
        .send()
        .await
        .unwrap();
    let trust_account = json!({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":format!("arn:aws:iam::{ACCOUNT}:root")},"Action":"sts:AssumeRole"}]});
    admin_iam
        .create_role()
        .role_name("ops-admin")
        .assume_role_policy_document(trust_account.to_string())
        .send()
        .await
        .unwrap();
    let s3 = {
        let conf = aws_sdk_s3::config::Builder::from(&moto.sdk_config(&s.admin)).force_path_style(true).build();
        aws_sdk_s3::Client::from_conf(conf)
    };
    s3.create_bucket().bucket(BUCKET).send().await.unwrap();
    let ct = aws_sdk_cloudtrail::Client::new(&moto.sdk_config(&s.admin));
    ct.create_trail().name("main").s3_bucket_name(BUCKET).is_multi_region_trail(true).send().await.unwrap();
    ct.start_logging().name("main").send().await.unwrap();
    let account = aws_sdk_account::Client::new(&moto.sdk_config(&s.admin));
    account
        .put_alternate_contact()
        .alternate_contact_type(aws_sdk_account::types::AlternateContactType::Security)
        .name("Sec Team")
        .title("CISO")
        .email_address("security@acme.example")
        .phone_number("+1-555-0100")
        .send()
        .await
        .unwrap();

    // The attacker, with the stolen key.
    let stolen = s.app_key.clone();
    let a_iam = aws_sdk_iam::Client::new(&moto.sdk_config(&stolen));
    let a_sts = aws_sdk_sts::Client::new(&moto.sdk_config(&stolen));
    a_sts.get_caller_identity().send().await.unwrap();
    a_iam.list_users().send().await.unwrap();
    a_iam.create_user().user_name("backdoor").send().await.unwrap();
    let bk = a_iam.create_access_key().user_name("backdoor").send().await.unwrap();
    let bk_id = bk.access_key().unwrap().access_key_id().to_string();
    a_iam.create_login_profile().user_name("backdoor").password("Attacker-Pass-123!").send().await.unwrap();
    let admin_doc =
        json!({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}).to_string();
    let pol =
        a_iam.create_policy().policy_name("AdministratorAccess").policy_document(&admin_doc).send().await.unwrap();
    let pol_arn = pol.policy().unwrap().arn().unwrap().to_string();
    a_iam.attach_user_policy().user_name("backdoor").policy_arn(&pol_arn).send().await.unwrap();
    let outside = json!({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::999999999999:root"},"Action":"sts:AssumeRole"}]}).to_string();
    a_iam.create_role().role_name("outside-trust").assume_role_policy_document(&outside).send().await.unwrap();
    let session = a_sts
        .assume_role()
        .role_arn(format!("arn:aws:iam::{ACCOUNT}:role/ops-admin"))
        .role_session_name("x")
        .send()
        .await
        .unwrap();
    let sc = session.credentials().unwrap();
    let asia = sc.access_key_id().to_string();
    // The attacker's role session, kept to check that it is revoked.
    let session_sdk = moto
        .sdk_config(&s.admin)
        .to_builder()
        .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(
            aws_credential_types::Credentials::new(
                asia.clone(),
                sc.secret_access_key().to_string(),
                Some(sc.session_token().to_string()),
                None,
                "attacker-session",
            ),
        ))
        .build();
    let session_iam = aws_sdk_iam::Client::new(&session_sdk);
    session_iam.list_roles().send().await.expect("the session works before the incident");
    let a_account = aws_sdk_account::Client::new(&moto.sdk_config(&stolen));
    a_account
        .put_alternate_contact()
        .alternate_contact_type(aws_sdk_account::types::AlternateContactType::Security)
        .name("Helpdesk")
        .title("Support")
        .email_address("help@attacker.example")
        .phone_number("+1-555-0199")
        .send()
        .await
        .unwrap();

    // What the trail recorded: the app's own history first, then the attack.
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let key = stolen.access_key_id.clone();
    let mut trail = Trail { records: Vec::new(), n: 0 };
    for d in (2..12).rev() {
        trail.add(
            now - day * d,
            &key,
            &app_user_arn,
            "IAMUser",
            APP_IP,
            "sts",
            "GetCallerIdentity",
            json!(null),
            json!(null),
        );
    }
    trail.add(
        now - day * 40,
        "AKIAOLDERSECURITYADM",
        "arn:aws:iam::123456789012:user/rekey-admin",
        "IAMUser",
        "203.0.113.9",
        "account",
        "PutAlternateContact",
        json!({"alternateContactType":"SECURITY","name":"Sec Team","title":"CISO","emailAddress":"security@acme.example","phoneNumber":"+1-555-0100"}),
        json!(null),
    );
    let t0 = now - Duration::from_secs(3600);
    let at = |m: u64| t0 + Duration::from_secs(60 * m);
    let ids: Vec<String> = vec![
        trail.add(at(0), &key, &app_user_arn, "IAMUser", ATTACKER_IP, "sts", "GetCallerIdentity", json!(null), json!(null)),
        trail.add(at(1), &key, &app_user_arn, "IAMUser", ATTACKER_IP, "iam", "ListUsers", json!(null), json!(null)),
        trail.add(at(2), &key, &app_user_arn, "IAMUser", ATTACKER_IP, "iam", "CreateUser", json!({"userName":"backdoor"}), json!({"user":{"userName":"backdoor","arn":format!("arn:aws:iam::{ACCOUNT}:user/backdoor")}})),
        trail.add(at(3), &key, &app_user_arn, "IAMUser", ATTACKER_IP, "iam", "CreateAccessKey", json!({"userName":"backdoor"}), json!({"accessKey":{"accessKeyId":bk_id,"userName":"backdoor","status":"Active"}})),
        trail.add(at(4), &key, &app_user_arn, "IAMUser", ATTACKER_IP, "iam", "CreateLoginProfile", json!({"userName":"backdoor","passwordResetRequired":false}), json!({"loginProfile":{"userName":"backdoor"}})),
        trail.add(at(5), &key, &app_user_arn, "IAMUser", ATTACKER_IP, "iam", "CreatePolicy", json!({"policyName":"AdministratorAccess","policyDocument":admin_doc}), json!({"policy":{"arn":pol_arn}})),
        trail.add(at(6), &key, &app_user_arn, "IAMUser", ATTACKER_IP, "iam", "AttachUserPolicy", json!({"userName":"backdoor","policyArn":pol_arn}), json!(null)),
        trail.add(at(7), &key, &app_user_arn, "IAMUser", ATTACKER_IP, "iam", "CreateRole", json!({"roleName":"outside-trust","assumeRolePolicyDocument":outside}), json!({"role":{"roleName":"outside-trust","arn":format!("arn:aws:iam::{ACCOUNT}:role/outside-trust")}})),
        trail.add(at(8), &key, &app_user_arn, "IAMUser", ATTACKER_IP, "sts", "AssumeRole", json!({"roleArn":format!("arn:aws:iam::{ACCOUNT}:role/ops-admin"),"roleSessionName":"x"}), json!({"credentials":{"accessKeyId":asia,"sessionToken":"IQoJ-not-a-real-token","expiration":"Dec 1, 2026"},"assumedRoleUser":{"arn":format!("arn:aws:sts::{ACCOUNT}:assumed-role/ops-admin/x")}})),
        trail.add(at(9), &asia, &format!("arn:aws:sts::{ACCOUNT}:assumed-role/ops-admin/x"), "AssumedRole", ATTACKER_IP, "iam", "ListRoles", json!(null), json!(null)),
        trail.add(at(10), &asia, &format!("arn:aws:sts::{ACCOUNT}:assumed-role/ops-admin/x"), "AssumedRole", ATTACKER_IP, "s3", "ListBuckets", json!(null), json!(null)),
        trail.add(at(11), &key, &app_user_arn, "IAMUser", ATTACKER_IP, "account", "PutAlternateContact", json!({"alternateContactType":"SECURITY","name":"Helpdesk","title":"Support","emailAddress":"help@attacker.example","phoneNumber":"+1-555-0199"}), json!(null)),
        trail.add(at(12), &key, &app_user_arn, "IAMUser", ATTACKER_IP, "iam", "DeleteUser", json!({"userName":"rekey-admin"}), json!(null)),
    ];
    let _ = &ids;
    // The last call failed: an attempt, to be listed apart.
    if let Some((_, last)) = trail.records.last_mut() {
        last["errorCode"] = json!("AccessDenied");
    }
    trail.upload(&s3).await;

    // The application, under load, through the whole incident.
    let dir = state_dir();
    let env_path = write_env_file(dir.path(), &s.app_key);
    let app = app::start(&moto, CredentialSource::EnvFile(env_path.clone())).await;
    moto.set_auth(true).await;
    let load = load::start(app.url(), 25);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let report_dir = dir.path().join("report");
    let target = format!("env:{}", env_path.display());
    let probe = format!("{}/health", app.url());
    let rd = report_dir.display().to_string();
    let mut args = vec![
        "incident",
        "--access-key",
        &key,
        "--target",
        &target,
        "--probe",
        &probe,
        "--since",
        "30d",
        "--attacker-ip",
        ATTACKER_IP,
        "--report-dir",
        &rd,
        "--no-history",
        "--region",
        "us-east-1",
    ];
    args.extend(WAITS);
    let out = rekey(&moto, &s.admin, dir.path(), &args).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let served = load.stop().await;
    out.assert_code(0);
    assert_eq!(served.failed, 0, "failed app requests: {:?}", served.first_failures);

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(report_dir.join("report.json")).unwrap()).unwrap();
    for field in [
        "access_key_id",
        "owner",
        "severity",
        "cutover",
        "sessions_revoked",
        "sources",
        "derived_keys",
        "timeline",
        "findings",
        "blind_spots",
    ] {
        assert!(report.get(field).is_some(), "report.json has {field}");
    }
    assert_eq!(report["owner"]["user"], s.app_user.as_str());
    assert_eq!(report["cutover"]["outcome"], "rotated", "{}", report["cutover"]);
    // The session was followed, with its chain.
    assert!(
        report["derived_keys"].as_array().unwrap().iter().any(|d| d["key"] == asia.as_str()),
        "{}",
        report["derived_keys"]
    );
    let timeline = report["timeline"].as_array().unwrap();
    let list_roles =
        timeline.iter().find(|e| e["event_name"] == "ListRoles").expect("the session's calls are in the timeline");
    assert_eq!(list_roles["chain"], json!([key, asia]));
    assert!(timeline.iter().any(|e| e["event_name"] == "DeleteUser" && e["failed"] == true));
    assert!(!report.to_string().contains("IQoJ-not-a-real-token"), "session tokens never reach the report");
    // Sessions revoked: the user at once, the role the session used once found.
    let revoked: Vec<(String, String)> = report["sessions_revoked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["kind"].as_str().unwrap().to_string(), r["name"].as_str().unwrap().to_string()))
        .collect();
    assert!(revoked.contains(&("user".into(), s.app_user.clone())), "{revoked:?}");
    assert!(revoked.contains(&("role".into(), "ops-admin".into())), "{revoked:?}");
    let role_policy =
        admin_iam.get_role_policy().role_name("ops-admin").policy_name("rekey-revoke-older-sessions").send().await;
    assert!(role_policy.is_ok(), "the revocation policy is on the role");
    let denied =
        session_iam.list_roles().send().await.map_err(|e| e.into_service_error().meta().code().map(str::to_string));
    assert_eq!(denied.err().flatten().as_deref(), Some("AccessDenied"), "the attacker's session is revoked");
    // Every backdoor that still exists is a finding, with evidence.
    let findings = report["findings"].as_array().unwrap();
    let present = |needle: &str| findings.iter().any(|f| f["still_present"] == true && f.to_string().contains(needle));
    for needle in ["backdoor", &bk_id, "outside-trust", &pol_arn, "help@attacker.example"] {
        assert!(present(needle), "a still-present finding about {needle}: {findings:#?}");
    }
    assert!(findings.iter().all(|f| f["id"].as_str().unwrap().starts_with('F')));
    // The fence went up (learnt from the app's own address) and came down after the cutover.
    let ips: Vec<String> = report["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{} {} {}", e["time"], e["event_name"], e["source_ip"]))
        .collect();
    assert_eq!(report["fence"]["status"], "removed", "{}\n{ips:#?}", report["fence"]);
    assert!(report["fence"]["allowed"].to_string().contains(APP_IP), "{}", report["fence"]);
    assert!(!report["fence"]["allowed"].to_string().contains(ATTACKER_IP), "{}", report["fence"]);
    assert!(
        admin_iam.get_user_policy().user_name(&s.app_user).policy_name("rekey-incident-fence").send().await.is_err()
    );
    // The leaked key is off, kept as evidence; the new key is in the file.
    let keys = keys_of(&moto, &s.admin, &s.app_user).await;
    assert!(keys.contains(&(key.clone(), "Inactive".into())), "{keys:?}");
    for f in ["report.md", "report.html", "plan.json"] {
        assert!(report_dir.join(f).exists(), "{f}");
    }
    let md = std::fs::read_to_string(report_dir.join("report.md")).unwrap();
    assert!(md.contains(ATTACKER_IP) && md.contains("backdoor"));

    // Containment: apply removes the backdoors, undo restores them.
    let plan = report_dir.join("plan.json");
    let plan_s = plan.display().to_string();
    let out = rekey(&moto, &s.admin, dir.path(), &["contain", "--plan", &plan_s]).await;
    out.assert_code(0);
    assert!(admin_iam.get_user().user_name("backdoor").send().await.is_ok(), "a dry run changes nothing");
    let out = rekey(&moto, &s.admin, dir.path(), &["contain", "--plan", &plan_s, "--apply"]).await;
    out.assert_code(0);
    assert!(
        admin_iam.get_user().user_name("backdoor").send().await.is_err(),
        "the backdoor user is gone\n{}",
        out.stdout
    );
    assert!(admin_iam.get_role().role_name("outside-trust").send().await.is_err(), "the outside-trusting role is gone");
    let contact = account
        .get_alternate_contact()
        .alternate_contact_type(aws_sdk_account::types::AlternateContactType::Security)
        .send()
        .await
        .unwrap();
    assert_eq!(contact.alternate_contact().unwrap().email_address(), Some("security@acme.example"));
    let out = rekey(&moto, &s.admin, dir.path(), &["contain", "--plan", &plan_s, "--undo"]).await;
    out.assert_code(0);
    assert!(
        admin_iam.get_user().user_name("backdoor").send().await.is_ok(),
        "undo recreates the backdoor user\n{}",
        out.stdout
    );
    assert!(admin_iam.get_role().role_name("outside-trust").send().await.is_ok());
    let attached = admin_iam.list_attached_user_policies().user_name("backdoor").send().await.unwrap();
    assert!(attached.attached_policies().iter().any(|p| p.policy_arn() == Some(pol_arn.as_str())));
    moto.set_auth(false).await;
}

/// The fence, for real: with it on (no cutover, so it stays), the leaked key still works from the
/// application's own address and is refused from the attacker's. The patched emulator reads the
/// caller's address from `X-Forwarded-For`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fence_locks_the_attacker_out_while_the_app_keeps_working() {
    let moto = Moto::start();
    let s = seed(&moto).await;
    let admin_iam = aws_sdk_iam::Client::new(&moto.sdk_config(&s.admin));
    admin_iam
        .put_user_policy()
        .user_name(&s.app_user)
        .policy_name("app-broad")
        .policy_document(
            json!({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}).to_string(),
        )
        .send()
        .await
        .unwrap();
    let s3 = {
        let conf = aws_sdk_s3::config::Builder::from(&moto.sdk_config(&s.admin)).force_path_style(true).build();
        aws_sdk_s3::Client::from_conf(conf)
    };
    s3.create_bucket().bucket(BUCKET).send().await.unwrap();
    let ct = aws_sdk_cloudtrail::Client::new(&moto.sdk_config(&s.admin));
    ct.create_trail().name("main").s3_bucket_name(BUCKET).is_multi_region_trail(true).send().await.unwrap();

    let key = s.app_key.access_key_id.clone();
    let arn = format!("arn:aws:iam::{ACCOUNT}:user/{}", s.app_user);
    let now = SystemTime::now();
    let mut trail = Trail { records: Vec::new(), n: 0 };
    for d in (2..8).rev() {
        let at = now - Duration::from_secs(86_400 * d);
        trail.add(at, &key, &arn, "IAMUser", APP_IP, "sts", "GetCallerIdentity", json!(null), json!(null));
    }
    let at = now - Duration::from_secs(600);
    trail.add(at, &key, &arn, "IAMUser", ATTACKER_IP, "iam", "ListUsers", json!(null), json!(null));
    trail.upload(&s3).await;

    moto.set_auth(true).await;
    let dir = state_dir();
    let rd = dir.path().join("report").display().to_string();
    let args = [
        "incident",
        "--access-key",
        &key,
        "--no-cutover",
        "--attacker-ip",
        ATTACKER_IP,
        "--report-dir",
        &rd,
        "--no-history",
        "--output",
        "json",
    ];
    let out = rekey(&moto, &s.admin, dir.path(), &args).await;
    out.assert_code(0);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report/report.json")).unwrap()).unwrap();
    assert_eq!(report["fence"]["status"], "applied", "{}", report["fence"]);
    assert!(report["todo"].to_string().contains("fence"), "lifting the fence is left to do: {}", report["todo"]);

    let app_iam = aws_sdk_iam::Client::new(&moto.sdk_config(&s.app_key));
    let from = |ip: &'static str| {
        let iam = app_iam.clone();
        async move {
            iam.list_users()
                .customize()
                .mutate_request(move |r| {
                    r.headers_mut().insert("X-Forwarded-For", ip);
                })
                .send()
                .await
                .map(|_| ())
                .map_err(|e| e.into_service_error().meta().code().unwrap_or("no code").to_string())
        }
    };
    assert_eq!(from(APP_IP).await, Ok(()), "the application's own address still works");
    assert_eq!(from(ATTACKER_IP).await, Err("AccessDenied".to_string()), "the attacker is locked out");
    assert_eq!(keys_of(&moto, &s.admin, &s.app_user).await, vec![(key.clone(), "Active".into())], "no cutover");
    moto.set_auth(false).await;
}
