//! The attacker keeps acting while `rekey incident` runs. With the leaked key, an attacker task
//! creates IAM users (a key and a console password on one of them), a key and a password on an
//! existing user, and a role, from the moment rekey has started until the cutover turns the key
//! off. CloudTrail has none of it yet (moto records no trail, and real trails deliver minutes late),
//! so only the live account shows it: every one of them must be a finding of `report.json` and be
//! taken out by `plan.json`, whose `--undo` puts them back; the cutover's own new key must not be.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;
use testbed::app::{self, CredentialSource};
use testbed::load;
use testbed::moto::{Moto, seed};

/// What the attacker made, as IAM confirmed each call.
#[derive(Debug, Default)]
struct Made {
    users: Vec<String>,
    keys: Vec<(String, String)>,
    passwords: Vec<String>,
    roles: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_attacker_makes_while_rekey_runs_is_found_and_planned() {
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
    // A person's user from before the incident, which the attacker gives a key and a password.
    admin_iam.create_user().user_name("ops-bob").send().await.unwrap();

    let dir = state_dir();
    let env_path = write_env_file(dir.path(), &s.app_key);
    let app = app::start(&moto, CredentialSource::EnvFile(env_path.clone())).await;
    moto.set_auth(true).await;
    let load = load::start(app.url(), 25);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let report_dir = dir.path().join("report");
    let (key, target, probe, rd) = (
        s.app_key.access_key_id.clone(),
        format!("env:{}", env_path.display()),
        format!("{}/health", app.url()),
        report_dir.display().to_string(),
    );
    let mut args = vec![
        "incident",
        "--access-key",
        &key,
        "--target",
        &target,
        "--probe",
        &probe,
        "--since",
        "1d",
        "--report-dir",
        &rd,
        "--no-history",
        "--region",
        "us-east-1",
        // No trail here, so there is nothing to learn a fence from; the attacker's time is the
        // cutover's, until the key is off.
        "--no-fence",
        "--no-sweep",
    ];
    args.extend(WAITS);
    let started = Instant::now();
    let mut child = rekey_command(&moto, &s.admin, dir.path(), &args, &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("rekey runs");

    // The attacker starts once rekey is at work on the user (its first change is a policy on it).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let names = admin_iam.list_user_policies().user_name(&s.app_user).send().await.unwrap();
        if names.policy_names().iter().any(|n| n.starts_with("rekey-")) {
            break;
        }
        let finished = child.try_wait().unwrap().is_some();
        assert!(Instant::now() < deadline && !finished, "rekey never changed the user");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = tokio::spawn({
        let iam = aws_sdk_iam::Client::new(&moto.sdk_config(&s.app_key));
        let stop = stop.clone();
        async move {
            let mut made = Made::default();
            let trust = json!({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::999999999999:root"},"Action":"sts:AssumeRole"}]}).to_string();
            // Each step until the key stops working (the cutover deactivates it).
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let user = format!("bd-{n}");
                if iam.create_user().user_name(&user).send().await.is_err() {
                    break;
                }
                made.users.push(user.clone());
                if n == 0 {
                    let Ok(k) = iam.create_access_key().user_name(&user).send().await else { break };
                    made.keys.push((user.clone(), k.access_key().unwrap().access_key_id().to_string()));
                    if iam.create_login_profile().user_name(&user).password("Attacker-Pass-1!").send().await.is_err() {
                        break;
                    }
                    made.passwords.push(user.clone());
                    let Ok(k) = iam.create_access_key().user_name("ops-bob").send().await else { break };
                    made.keys.push(("ops-bob".into(), k.access_key().unwrap().access_key_id().to_string()));
                    if iam
                        .create_login_profile()
                        .user_name("ops-bob")
                        .password("Attacker-Pass-2!")
                        .send()
                        .await
                        .is_err()
                    {
                        break;
                    }
                    made.passwords.push("ops-bob".into());
                    if iam.create_role().role_name("bd-role").assume_role_policy_document(&trust).send().await.is_err()
                    {
                        break;
                    }
                    made.roles.push("bd-role".into());
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            made
        }
    });
    let out = child.wait_with_output().await.unwrap();
    let out = Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    let wall = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let made = attacker.await.unwrap();
    let served = load.stop().await;
    out.assert_code(0);
    assert_eq!(served.failed, 0, "failed app requests: {:?}", served.first_failures);
    eprintln!(
        "rekey incident ran {:.1} s; the attacker made {} user(s), {} key(s), {} password(s), {} role(s) meanwhile",
        wall.as_secs_f64(),
        made.users.len(),
        made.keys.len(),
        made.passwords.len(),
        made.roles.len()
    );
    assert!(
        made.users.len() >= 2 && made.keys.len() == 2 && made.passwords.len() == 2 && made.roles.len() == 1,
        "the attacker got to act while rekey ran: {made:?}"
    );

    let read = |name: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(report_dir.join(name)).unwrap()).unwrap()
    };
    let (report, plan) = (read("report.json"), read("plan.json"));
    assert_eq!(report["cutover"]["outcome"], "rotated", "{}", report["cutover"]);
    let new_key = report["cutover"]["new_key_id"].as_str().unwrap().to_string();
    let findings = report["findings"].as_array().unwrap();
    let actions = plan["actions"].as_array().unwrap();
    let finding_on = |resource: &str| {
        findings
            .iter()
            .find(|f| f["resource"] == resource && f["kind"] == "created_during_response")
            .unwrap_or_else(|| panic!("a created_during_response finding on {resource}: {findings:#?}"))
    };
    let planned = |action: Value| {
        assert!(
            actions.iter().any(|a| json!(a["action"]) == action),
            "plan.json has {action}: {}",
            serde_json::to_string_pretty(actions).unwrap()
        );
    };
    for user in &made.users {
        let f = finding_on(user);
        assert!(matches!(f["severity"].as_str(), Some("high" | "critical")), "{f}");
        assert!(f["title"].as_str().unwrap().contains("creator not yet in CloudTrail"), "{f}");
        planned(json!({"type": "delete_user", "user": user}));
    }
    for (user, k) in &made.keys {
        if user == "ops-bob" {
            assert_eq!(finding_on(k)["severity"], "high");
        }
        planned(json!({"type": "deactivate_access_key", "user": user, "access_key_id": k}));
    }
    for user in &made.passwords {
        if user == "ops-bob" {
            finding_on(user);
        }
        planned(json!({"type": "delete_login_profile", "user": user}));
    }
    finding_on("bd-role");
    planned(json!({"type": "delete_role", "role": "bd-role"}));
    // rekey's own doing is not the attacker's.
    assert!(!findings.iter().any(|f| f.to_string().contains(&new_key)), "the cutover's key is no finding");
    assert!(!actions.iter().any(|a| a.to_string().contains(&new_key)));
    assert!(!actions.iter().any(|a| a["action"]["user"] == "ops-bob" && a["action"]["type"] == "delete_user"));

    // The plan takes them out, and its undo puts them back.
    let plan_s = report_dir.join("plan.json").display().to_string();
    rekey(&moto, &s.admin, dir.path(), &["contain", "--plan", &plan_s, "--apply"]).await.assert_code(0);
    for user in &made.users {
        assert!(admin_iam.get_user().user_name(user).send().await.is_err(), "{user} is deleted");
    }
    assert!(admin_iam.get_role().role_name("bd-role").send().await.is_err());
    assert!(admin_iam.get_login_profile().user_name("ops-bob").send().await.is_err());
    let bob_key = &made.keys[1].1;
    assert!(keys_of(&moto, &s.admin, "ops-bob").await.contains(&(bob_key.clone(), "Inactive".into())));
    rekey(&moto, &s.admin, dir.path(), &["contain", "--plan", &plan_s, "--undo"]).await.assert_code(0);
    for user in &made.users {
        assert!(admin_iam.get_user().user_name(user).send().await.is_ok(), "undo recreates {user}");
    }
    assert!(admin_iam.get_role().role_name("bd-role").send().await.is_ok());
    assert!(admin_iam.get_login_profile().user_name("ops-bob").send().await.is_ok());
    assert!(keys_of(&moto, &s.admin, "ops-bob").await.contains(&(bob_key.clone(), "Active".into())));
    moto.set_auth(false).await;
}
