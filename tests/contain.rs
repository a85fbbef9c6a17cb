//! Hunt the backdoors an attacker left, contain them, and undo the containment, against moto.
//!
//! The attacker's changes are made with the admin key (moto records no CloudTrail events), and
//! the timeline the investigation would have produced is built by hand with the same
//! requestParameters/responseElements CloudTrail records.

use std::time::{Duration, SystemTime};

use rekey::incident::contain::{self, Mode, Status};
use rekey::incident::hunt::{Scope, hunt};
use rekey::incident::model::{Action, Owner, Plan, PlanAction, Severity, TimelineEvent, Undo};
use serde_json::{Value, json};
use testbed::moto::{Moto, seed};

const ACCOUNT: &str = "123456789012";
const OUTSIDER: &str = "arn:aws:iam::999999999999:root";

/// The hunt over a window that ended before it runs: nothing read past it, nothing marked.
fn scope(window: (SystemTime, SystemTime), compromised: Owner) -> Scope {
    Scope {
        window,
        key: "AKIANOTINTHETIMELINE".into(),
        compromised,
        response_started: None,
        own_keys: Vec::new(),
        attacker_ips: Vec::new(),
        unverified: Default::default(),
    }
}

fn at(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn event(id: &str, time: &str, source: &str, name: &str, req: Value, resp: Value) -> TimelineEvent {
    TimelineEvent {
        event_id: id.into(),
        time: time.into(),
        event_name: name.into(),
        event_source: format!("{source}.amazonaws.com"),
        region: Some("us-east-1".into()),
        source_ip: Some("198.51.100.50".into()),
        signer: Some("AKIA1234567890ABCDEF".into()),
        arn: Some(format!("arn:aws:iam::{ACCOUNT}:user/app-integration-user")),
        request_parameters: Some(req),
        response_elements: (!resp.is_null()).then_some(resp),
        ..Default::default()
    }
}

fn trust(principal: &str) -> String {
    json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": principal}, "Action": "sts:AssumeRole"}]})
    .to_string()
}

fn admin_doc() -> String {
    json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}).to_string()
}

async fn contact(account: &aws_sdk_account::Client) -> Option<String> {
    account
        .get_alternate_contact()
        .alternate_contact_type(aws_sdk_account::types::AlternateContactType::Security)
        .send()
        .await
        .ok()
        .and_then(|o| o.alternate_contact().and_then(|c| c.email_address().map(str::to_string)))
}

async fn put_contact(account: &aws_sdk_account::Client, name: &str, email: &str) {
    account
        .put_alternate_contact()
        .alternate_contact_type(aws_sdk_account::types::AlternateContactType::Security)
        .name(name)
        .title("Security")
        .email_address(email)
        .phone_number("+1-555-0100")
        .send()
        .await
        .unwrap();
}

async fn key_status(iam: &aws_sdk_iam::Client, user: &str, key: &str) -> Option<String> {
    let out = iam.list_access_keys().user_name(user).send().await.ok()?;
    out.access_key_metadata()
        .iter()
        .find(|k| k.access_key_id() == Some(key))
        .and_then(|k| k.status().map(|s| s.as_str().to_string()))
}

async fn role_trusts(iam: &aws_sdk_iam::Client, role: &str) -> Option<String> {
    let out = iam.get_role().role_name(role).send().await.ok()?;
    out.role().and_then(|r| r.assume_role_policy_document()).map(rekey::incident::hunt::decode_doc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hunt_contain_and_undo_backdoors() {
    let moto = Moto::start();
    let s = seed(&moto).await;
    let config = moto.sdk_config(&s.admin);
    let iam = aws_sdk_iam::Client::new(&config);
    let account = aws_sdk_account::Client::new(&config);
    let ec2 = aws_sdk_ec2::Client::new(&config);

    // Before the window: the legitimate state.
    let before = SystemTime::now() - Duration::from_secs(86_400);
    put_contact(&account, "Sec Team", "security@example.com").await;
    let own_trust = trust(&format!("arn:aws:iam::{ACCOUNT}:root"));
    iam.create_role().role_name("deploy").assume_role_policy_document(&own_trust).send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let start = SystemTime::now();
    let t = at(start + Duration::from_secs(1));

    // The attacker, inside the window.
    let bd = "backdoor-ops";
    iam.create_user().user_name(bd).send().await.unwrap();
    let bd_key = iam.create_access_key().user_name(bd).send().await.unwrap().access_key().unwrap().clone();
    iam.create_login_profile().user_name(bd).password("Attacker-Pass-123!").send().await.unwrap();
    let pol = iam
        .create_policy()
        .policy_name("AdministratorAccess")
        .policy_document(admin_doc())
        .send()
        .await
        .unwrap()
        .policy()
        .unwrap()
        .clone();
    let pol_arn = pol.arn().unwrap().to_string();
    iam.attach_user_policy().user_name(bd).policy_arn(&pol_arn).send().await.unwrap();
    let app_extra = iam.create_access_key().user_name(&s.app_user).send().await.unwrap().access_key().unwrap().clone();
    let role = "ops-support";
    iam.create_role().role_name(role).assume_role_policy_document(trust(OUTSIDER)).send().await.unwrap();
    iam.put_role_policy().role_name(role).policy_name("ops").policy_document(admin_doc()).send().await.unwrap();
    let escalate = admin_doc();
    iam.put_user_policy().user_name(&s.app_user).policy_name("sync").policy_document(&escalate).send().await.unwrap();
    let both = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": [format!("arn:aws:iam::{ACCOUNT}:root"), OUTSIDER]},
         "Action": "sts:AssumeRole"}]})
    .to_string();
    iam.update_assume_role_policy().role_name("deploy").policy_document(&both).send().await.unwrap();
    put_contact(&account, "Totally Legit", "attacker@evil.example").await;
    // A backdoor someone already removed.
    iam.create_user().user_name("temp-backdoor").send().await.unwrap();
    iam.delete_user().user_name("temp-backdoor").send().await.unwrap();

    let bd_key_id = bd_key.access_key_id().to_string();
    let extra_id = app_extra.access_key_id().to_string();
    let key_resp = |user: &str, id: &str| json!({"accessKey": {"userName": user, "accessKeyId": id, "status": "Active", "createDate": t}});
    let timeline = vec![
        event(
            "ev-0",
            &at(before),
            "iam",
            "CreateRole",
            json!({"roleName": "deploy", "assumeRolePolicyDocument": own_trust}),
            json!({"role": {"roleName": "deploy"}}),
        ),
        event(
            "ev-00",
            &at(before),
            "account",
            "PutAlternateContact",
            json!({"alternateContactType": "SECURITY", "name": "Sec Team", "title": "Security",
                   "emailAddress": "security@example.com", "phoneNumber": "+1-555-0100"}),
            Value::Null,
        ),
        event(
            "ev-1",
            &t,
            "iam",
            "CreateUser",
            json!({"userName": bd}),
            json!({"user": {"userName": bd, "arn": format!("arn:aws:iam::{ACCOUNT}:user/{bd}")}}),
        ),
        event("ev-2", &t, "iam", "CreateAccessKey", json!({"userName": bd}), key_resp(bd, &bd_key_id)),
        event(
            "ev-3",
            &t,
            "iam",
            "CreateLoginProfile",
            json!({"userName": bd, "passwordResetRequired": false}),
            json!({}),
        ),
        event(
            "ev-4",
            &t,
            "iam",
            "CreatePolicy",
            json!({"policyName": "AdministratorAccess", "policyDocument": admin_doc()}),
            json!({"policy": {"arn": pol_arn, "policyName": "AdministratorAccess", "defaultVersionId": "v1"}}),
        ),
        event("ev-5", &t, "iam", "AttachUserPolicy", json!({"userName": bd, "policyArn": pol_arn}), Value::Null),
        // The attacker's own new key on the compromised user: no userName, the caller is the user.
        event("ev-6", &t, "iam", "CreateAccessKey", json!({}), key_resp(&s.app_user, &extra_id)),
        event(
            "ev-7",
            &t,
            "iam",
            "CreateRole",
            json!({"roleName": role, "assumeRolePolicyDocument": trust(OUTSIDER)}),
            json!({"role": {"roleName": role, "arn": format!("arn:aws:iam::{ACCOUNT}:role/{role}")}}),
        ),
        event(
            "ev-8",
            &t,
            "iam",
            "PutRolePolicy",
            json!({"roleName": role, "policyName": "ops", "policyDocument": admin_doc()}),
            Value::Null,
        ),
        event(
            "ev-9",
            &t,
            "iam",
            "PutUserPolicy",
            json!({"userName": s.app_user, "policyName": "sync", "policyDocument": escalate}),
            Value::Null,
        ),
        event(
            "ev-10",
            &t,
            "iam",
            "UpdateAssumeRolePolicy",
            json!({"roleName": "deploy", "policyDocument": both}),
            Value::Null,
        ),
        event(
            "ev-11",
            &t,
            "account",
            "PutAlternateContact",
            json!({"alternateContactType": "SECURITY", "name": "Totally Legit", "title": "Security",
                   "emailAddress": "attacker@evil.example", "phoneNumber": "+1-555-0100"}),
            Value::Null,
        ),
        event("ev-12", &t, "iam", "CreateUser", json!({"userName": "temp-backdoor"}), Value::Null),
        // A failed attempt is not a backdoor.
        TimelineEvent {
            failed: true,
            error_code: Some("AccessDenied".into()),
            ..event("ev-13", &t, "iam", "CreateUser", json!({"userName": "never-made"}), Value::Null)
        },
    ];
    let owner = Owner {
        user: Some(s.app_user.clone()),
        arn: Some(format!("arn:aws:iam::{ACCOUNT}:user/{}", s.app_user)),
        account: Some(ACCOUNT.into()),
        ..Default::default()
    };
    let window = (start, SystemTime::now() + Duration::from_secs(600));

    let h = hunt(&iam, &account, &ec2, &timeline, &scope(window, owner)).await;
    let dump = format!(
        "findings: {:#?}\nplan: {}\nnotes: {:?}",
        h.findings,
        serde_json::to_string_pretty(&h.plan).unwrap(),
        h.notes
    );
    let find = |kind: &str, resource: &str| {
        h.findings
            .iter()
            .find(|f| f.kind == kind && f.resource == resource)
            .unwrap_or_else(|| panic!("no {kind} finding for {resource}\n{dump}"))
    };
    let actions_of = |id: &str| h.plan.iter().filter(|a| a.finding == id).map(|a| &a.action).collect::<Vec<_>>();

    let user_f = find("backdoor_user", bd);
    assert_eq!(user_f.still_present, Some(true), "{dump}");
    assert_eq!(user_f.severity, Severity::Critical, "{dump}");
    assert_eq!(user_f.evidence, vec!["ev-1".to_string()]);
    assert!(actions_of(&user_f.id).contains(&&Action::DeleteUser { user: bd.into() }), "{dump}");
    for (kind, res, ev) in [
        ("access_key", bd_key_id.as_str(), "ev-2"),
        ("login_profile", bd, "ev-3"),
        ("attached_policy", &format!("user/{bd}"), "ev-5"),
        ("access_key", extra_id.as_str(), "ev-6"),
        ("role", role, "ev-7"),
        ("inline_policy", &format!("role/{role}/ops"), "ev-8"),
        ("inline_policy", &format!("user/{}/sync", s.app_user), "ev-9"),
        ("trust_policy", "deploy", "ev-10"),
        ("alternate_contact", "SECURITY", "ev-11"),
    ] {
        let f = find(kind, res);
        assert_eq!(f.still_present, Some(true), "{kind} {res}\n{dump}");
        assert!(f.evidence.contains(&ev.to_string()), "{kind} {res}\n{dump}");
        assert!(!actions_of(&f.id).is_empty(), "{kind} {res} has no action\n{dump}");
    }
    assert_eq!(find("attached_policy", &format!("user/{bd}")).severity, Severity::Critical);
    assert_eq!(find("role", role).severity, Severity::Critical, "trusts an outside account");
    let gone = find("backdoor_user", "temp-backdoor");
    assert_eq!(gone.still_present, Some(false), "{dump}");
    assert!(actions_of(&gone.id).is_empty(), "{dump}");
    assert!(!h.findings.iter().any(|f| f.resource == "never-made"), "{dump}");
    // The compromised user's own key belongs to the cutover; the attacker's key on it does not.
    assert!(
        !h.plan.iter().any(|a| serde_json::to_string(&a.action).unwrap().contains(&s.app_key.access_key_id)),
        "{dump}"
    );
    assert!(
        h.plan.contains_action(&Action::DeactivateAccessKey {
            user: s.app_user.clone(),
            access_key_id: extra_id.clone()
        })
    );
    // Deletions come last, after what empties them.
    let pos = |a: &Action| h.plan.iter().position(|p| &p.action == a).unwrap();
    let del_user = pos(&Action::DeleteUser { user: bd.into() });
    assert!(pos(&Action::DeleteLoginProfile { user: bd.into() }) < del_user);
    assert!(pos(&Action::DetachUserPolicy { user: bd.into(), policy_arn: pol_arn.clone() }) < del_user);
    assert!(
        h.plan.iter().enumerate().all(|(i, a)| a.id == format!("A{}", i + 1)),
        "actions are numbered in order\n{dump}"
    );

    let plan = Plan {
        incident: "inc-1".into(),
        access_key_id: s.app_key.access_key_id.clone(),
        account: Some(ACCOUNT.into()),
        created_at: at(SystemTime::now()),
        actions: h.plan.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let log = contain::log_path_for(&dir.path().join("plan.json"));

    // Dry run: changes nothing, writes nothing.
    let dry = contain::run(&iam, &account, &ec2, &plan, Mode::DryRun, &log).await.unwrap();
    assert!(dry.outcomes.iter().all(|o| o.status == Status::Planned), "{dry}");
    assert!(!log.exists());
    assert!(iam.get_user().user_name(bd).send().await.is_ok());

    let applied = contain::run(&iam, &account, &ec2, &plan, Mode::Apply, &log).await.unwrap_or_else(|e| panic!("{e}"));
    let shown = applied.to_string();
    assert_eq!(applied.outcomes.len(), plan.actions.len(), "{shown}");
    assert!(applied.outcomes.iter().all(|o| o.status == Status::Applied), "{shown}");
    assert!(iam.get_user().user_name(bd).send().await.is_err(), "backdoor user deleted\n{shown}");
    assert!(iam.get_role().role_name(role).send().await.is_err(), "backdoor role deleted\n{shown}");
    assert_eq!(contact(&account).await.as_deref(), Some("security@example.com"), "{shown}");
    assert!(iam.get_user_policy().user_name(&s.app_user).policy_name("sync").send().await.is_err());
    assert!(!role_trusts(&iam, "deploy").await.unwrap().contains("999999999999"), "{shown}");
    assert_eq!(key_status(&iam, &s.app_user, &extra_id).await.as_deref(), Some("Inactive"));
    assert_eq!(key_status(&iam, &s.app_user, &s.app_key.access_key_id).await.as_deref(), Some("Active"));
    let lines = std::fs::read_to_string(&log).unwrap();
    assert!(lines.contains(&bd_key_id), "the deleted key is recorded in the log:\n{lines}");

    // Idempotent: a second apply does nothing.
    let again = contain::run(&iam, &account, &ec2, &plan, Mode::Apply, &log).await.unwrap();
    assert!(again.outcomes.iter().all(|o| o.status == Status::AlreadyApplied), "{again}");

    let undone = contain::run(&iam, &account, &ec2, &plan, Mode::Undo, &log).await.unwrap_or_else(|e| panic!("{e}"));
    let shown = undone.to_string();
    assert_eq!(undone.outcomes.first().map(|o| o.action_id.clone()), plan.actions.last().map(|a| a.id.clone()));
    assert!(iam.get_user().user_name(bd).send().await.is_ok(), "user back\n{shown}");
    let attached = iam.list_attached_user_policies().user_name(bd).send().await.unwrap();
    assert!(attached.attached_policies().iter().any(|p| p.policy_arn() == Some(pol_arn.as_str())), "{shown}");
    // moto ignores PasswordResetRequired on CreateLoginProfile (AWS honours it): only existence is
    // checked here; the plan's undo data carries the flag.
    assert!(iam.get_login_profile().user_name(bd).send().await.is_ok(), "login profile back\n{shown}");
    assert!(
        plan.actions
            .iter()
            .any(|a| a.undo == Undo::RecreateLoginProfile { user: bd.into(), password_reset_required: true })
    );
    assert!(role_trusts(&iam, role).await.unwrap().contains("999999999999"), "role back with its trust\n{shown}");
    assert!(iam.get_role_policy().role_name(role).policy_name("ops").send().await.is_ok());
    assert!(iam.get_user_policy().user_name(&s.app_user).policy_name("sync").send().await.is_ok());
    assert!(role_trusts(&iam, "deploy").await.unwrap().contains("999999999999"));
    assert_eq!(contact(&account).await.as_deref(), Some("attacker@evil.example"));
    assert_eq!(key_status(&iam, &s.app_user, &extra_id).await.as_deref(), Some("Active"));
    // A deleted access key cannot come back, and the report says so.
    let deact = plan
        .actions
        .iter()
        .find(|a| a.action == Action::DeactivateAccessKey { user: bd.into(), access_key_id: bd_key_id.clone() })
        .unwrap();
    let o = undone.outcome(&deact.id).unwrap();
    assert_eq!(o.status, Status::NotReversible, "{shown}");
    assert!(o.detail.as_deref().unwrap_or_default().contains("cannot be recreated"), "{shown}");
    let recreate = plan.actions.iter().find(|a| a.action == Action::DeleteUser { user: bd.into() }).unwrap();
    let o = undone.outcome(&recreate.id).unwrap();
    assert!(o.detail.as_deref().unwrap_or_default().contains(&bd_key_id), "{shown}");
    assert!(key_status(&iam, bd, &bd_key_id).await.is_none());

    // Undo twice: nothing left to reverse.
    let twice = contain::run(&iam, &account, &ec2, &plan, Mode::Undo, &log).await.unwrap();
    assert!(twice.outcomes.is_empty(), "{twice}");
}

/// The incident's snapshots of `volume`: (id, state, tags, description).
async fn incident_snapshots(
    ec2: &aws_sdk_ec2::Client,
    incident: &str,
    volume: &str,
) -> Vec<(String, String, Vec<(String, String)>, String)> {
    use aws_sdk_ec2::types::Filter;
    let out = ec2
        .describe_snapshots()
        .filters(Filter::builder().name("tag:rekey:incident").values(incident).build())
        .filters(Filter::builder().name("volume-id").values(volume).build())
        .send()
        .await
        .unwrap();
    out.snapshots()
        .iter()
        .map(|s| {
            (
                s.snapshot_id().unwrap_or_default().to_string(),
                s.state().map(|st| st.as_str().to_string()).unwrap_or_default(),
                s.tags()
                    .iter()
                    .map(|t| (t.key().unwrap_or_default().to_string(), t.value().unwrap_or_default().to_string()))
                    .collect(),
                s.description().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forensic_snapshots_of_the_attackers_instance_come_first_and_are_kept() {
    use aws_sdk_ec2::types::{BlockDeviceMapping, EbsBlockDevice};
    let moto = Moto::start();
    let s = seed(&moto).await;
    let config = moto.sdk_config(&s.admin);
    let iam = aws_sdk_iam::Client::new(&config);
    let account = aws_sdk_account::Client::new(&config);
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let start = SystemTime::now() - Duration::from_secs(1);
    let t = at(start + Duration::from_secs(1));

    // The attacker launches an instance with a data volume (moto accepts any image id while AMI
    // validation is off, its default) and leaves a backdoor user with a console password.
    let run = ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .instance_type(aws_sdk_ec2::types::InstanceType::T2Micro)
        .min_count(1)
        .max_count(1)
        .block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name("/dev/sdf")
                .ebs(EbsBlockDevice::builder().volume_size(10).delete_on_termination(false).build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    let instance = run.instances()[0].instance_id().unwrap().to_string();
    let described = ec2.describe_instances().instance_ids(&instance).send().await.unwrap();
    let volumes: Vec<String> = described.reservations()[0].instances()[0]
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs().and_then(|e| e.volume_id()).map(str::to_string))
        .collect();
    assert!(!volumes.is_empty(), "moto attached no volume: {described:?}");
    let bd = "backdoor-ec2";
    iam.create_user().user_name(bd).send().await.unwrap();
    iam.create_login_profile().user_name(bd).password("Attacker-Pass-123!").send().await.unwrap();

    let gone = "i-0123456789abcdef0";
    let timeline = vec![
        event("ev-1", &t, "iam", "CreateUser", json!({"userName": bd}), json!({"user": {"userName": bd}})),
        event("ev-2", &t, "iam", "CreateLoginProfile", json!({"userName": bd}), json!({})),
        event(
            "ev-3",
            &t,
            "ec2",
            "RunInstances",
            json!({"instancesSet": {"items": [{"imageId": "ami-12c6146b", "minCount": 1, "maxCount": 1}]}}),
            json!({"instancesSet": {"items": [{"instanceId": instance, "imageId": "ami-12c6146b"}]}}),
        ),
        event(
            "ev-4",
            &t,
            "ssm",
            "SendCommand",
            json!({"documentName": "AWS-RunShellScript", "instanceIds": [instance, gone]}),
            Value::Null,
        ),
    ];
    let owner = Owner {
        user: Some(s.app_user.clone()),
        arn: Some(format!("arn:aws:iam::{ACCOUNT}:user/{}", s.app_user)),
        account: Some(ACCOUNT.into()),
        ..Default::default()
    };
    let window = (start, SystemTime::now() + Duration::from_secs(600));
    let h = hunt(&iam, &account, &ec2, &timeline, &scope(window, owner)).await;
    let dump = format!(
        "findings: {:#?}\nplan: {}\nnotes: {:?}",
        h.findings,
        serde_json::to_string_pretty(&h.plan).unwrap(),
        h.notes
    );

    let f = h.findings.iter().find(|f| f.kind == "instance" && f.resource == instance).expect(&dump);
    assert_eq!(f.still_present, Some(true), "{dump}");
    assert_eq!(f.severity, Severity::High, "{dump}");
    assert_eq!(f.evidence, vec!["ev-3".to_string(), "ev-4".to_string()], "{dump}");
    let f_gone = h.findings.iter().find(|f| f.kind == "instance" && f.resource == gone).expect(&dump);
    assert_eq!(f_gone.still_present, Some(false), "{dump}");
    assert!(!h.plan.iter().any(|a| a.finding == f_gone.id), "{dump}");

    // Evidence first: one snapshot per volume, before every other action.
    let snaps: Vec<&PlanAction> =
        h.plan.iter().take_while(|a| matches!(a.action, Action::SnapshotVolume { .. })).collect();
    assert_eq!(snaps.len(), volumes.len(), "{dump}");
    assert_eq!(
        h.plan.iter().filter(|a| matches!(a.action, Action::SnapshotVolume { .. })).count(),
        volumes.len(),
        "{dump}"
    );
    assert!(h.plan.len() > snaps.len(), "the backdoor user is contained too\n{dump}");
    for a in &snaps {
        assert_eq!(a.finding, f.id);
        assert!(
            volumes.iter().any(|v| a.action
                == Action::SnapshotVolume {
                    volume_id: v.clone(),
                    instance_id: instance.clone(),
                    region: Some("us-east-1".into())
                }),
            "{}\n{dump}",
            a.id
        );
        assert_eq!(a.undo, Undo::None { reason: "a forensic snapshot is evidence and is kept".into() });
    }

    let plan = Plan {
        incident: "inc-ec2".into(),
        access_key_id: s.app_key.access_key_id.clone(),
        account: Some(ACCOUNT.into()),
        created_at: at(SystemTime::now()),
        actions: h.plan.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let log = contain::log_path_for(&dir.path().join("plan.json"));

    let dry = contain::run(&iam, &account, &ec2, &plan, Mode::DryRun, &log).await.unwrap();
    assert!(dry.outcomes.iter().all(|o| o.status == Status::Planned), "{dry}");
    assert!(incident_snapshots(&ec2, "inc-ec2", &volumes[0]).await.is_empty());

    let applied = contain::run(&iam, &account, &ec2, &plan, Mode::Apply, &log).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(applied.outcomes.iter().all(|o| o.status == Status::Applied), "{applied}");
    assert!(iam.get_user().user_name(bd).send().await.is_err(), "backdoor user deleted\n{applied}");
    for v in &volumes {
        let found = incident_snapshots(&ec2, "inc-ec2", v).await;
        assert_eq!(found.len(), 1, "{v}: {found:?}\n{applied}");
        let (id, state, tags, description) = &found[0];
        assert_eq!(state, "completed");
        for (k, want) in [
            ("rekey:incident", "inc-ec2"),
            ("rekey:instance", instance.as_str()),
            ("rekey:access-key", s.app_key.access_key_id.as_str()),
        ] {
            assert!(tags.iter().any(|(tk, tv)| tk == k && tv == want), "{k}={want} not in {tags:?}");
        }
        assert!(description.contains("inc-ec2") && description.contains(&instance), "{description}");
        assert!(applied.to_string().contains(id.as_str()), "the outcome names the snapshot\n{applied}");
    }
    let lines = std::fs::read_to_string(&log).unwrap();
    assert!(lines.contains("snapshot_volume") && lines.contains("completed"), "logged:\n{lines}");

    // Undo reverses the containment but keeps the evidence.
    let undone = contain::run(&iam, &account, &ec2, &plan, Mode::Undo, &log).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(iam.get_user().user_name(bd).send().await.is_ok(), "user back\n{undone}");
    for a in &snaps {
        let o = undone.outcome(&a.id).unwrap();
        assert_eq!(o.status, Status::NotReversible, "{undone}");
        assert!(o.detail.as_deref().unwrap_or_default().contains("evidence"), "{undone}");
    }
    for v in &volumes {
        assert_eq!(incident_snapshots(&ec2, "inc-ec2", v).await.len(), 1, "kept after undo: {v}");
    }

    // Applying again finds the incident's snapshots by their tags instead of taking new ones.
    let again = contain::run(&iam, &account, &ec2, &plan, Mode::Apply, &log).await.unwrap_or_else(|e| panic!("{e}"));
    for a in &snaps {
        assert_eq!(again.outcome(&a.id).unwrap().status, Status::AlreadyDone, "{again}");
    }
    for v in &volumes {
        assert_eq!(incident_snapshots(&ec2, "inc-ec2", v).await.len(), 1, "no second snapshot of {v}");
    }
}

trait PlanExt {
    fn contains_action(&self, a: &Action) -> bool;
}

impl PlanExt for Vec<PlanAction> {
    fn contains_action(&self, a: &Action) -> bool {
        self.iter().any(|p| &p.action == a)
    }
}
