//! The incident fence's life against the emulator (issue 9 items 1, 2, 5, 6): it survives a crash
//! only until `rekey resume`; it is widened from the full history when the application fails
//! behind it, and lifted, loudly, when even that does not help; an incident deletes no access key
//! unless the operator names it with `--free-slot`; `--allow-source` is validated.
//!
//! Event history is served by launcher patch 11; the application calls from an address of its
//! own (X-Forwarded-For, launcher patch 5), on an IAM call the fence can deny.

mod support;

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use support::*;
use testbed::app::{self, CredentialSource};
use testbed::load;
use testbed::moto::{Moto, Seeded, seed};

const APP_IP: &str = "203.0.113.10";
/// Where the application also runs, seen in its history only weeks ago.
const RARE_IP: &str = "203.0.113.77";
/// Never seen anywhere.
const UNKNOWN_IP: &str = "192.0.2.200";
const ATTACKER_IP: &str = "198.51.100.50";
const FENCE: &str = "rekey-incident-fence";

fn epoch(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// An app user allowed everything, and a history: the app every 90 s from APP_IP for 26 days, 40
/// calls from RARE_IP three weeks ago (beyond every page the sample reads), and the attacker half
/// an hour ago.
async fn world(moto: &Moto) -> Seeded {
    let s = seed(moto).await;
    let admin_iam = aws_sdk_iam::Client::new(&moto.sdk_config(&s.admin));
    let allow_all = json!({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]});
    admin_iam
        .put_user_policy()
        .user_name(&s.app_user)
        .policy_name("app-broad")
        .policy_document(allow_all.to_string())
        .send()
        .await
        .unwrap();
    let now = SystemTime::now();
    let key = &s.app_key.access_key_id;
    let series = |id: &str, ip: &str, newest: SystemTime, interval: f64, count: u64| {
        json!({"id": id, "region": "us-east-1", "access_key_id": key, "source_ip": ip, "newest": epoch(newest),
               "interval": interval, "count": count, "user_name": s.app_user})
    };
    moto.seed_history(&json!({
        "reset": true,
        "rate": 200.0,
        "series": [
            series("app", APP_IP, now - Duration::from_secs(600), 90.0, 25_000),
            series("rare", RARE_IP, now - Duration::from_secs(21 * 86_400), 3600.0, 40),
            series("attacker", ATTACKER_IP, now - Duration::from_secs(1800), 1.0, 100),
        ],
    }))
    .await;
    s
}

fn incident_args<'a>(key: &'a str, target: &'a str, probe: &'a str, report_dir: &'a str) -> Vec<&'a str> {
    let mut args = vec![
        "incident",
        "--access-key",
        key,
        "--target",
        target,
        "--probe",
        probe,
        "--since",
        "30d",
        "--attacker-ip",
        ATTACKER_IP,
        "--report-dir",
        report_dir,
        "--no-trails",
        "--no-sweep",
        "--history-region",
        "us-east-1",
        "--history-rate",
        "200",
    ];
    args.extend(WAITS);
    args
}

fn read_report(dir: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

async fn fence_on(moto: &Moto, s: &Seeded) -> bool {
    let admin_iam = aws_sdk_iam::Client::new(&moto.sdk_config(&s.admin));
    admin_iam.get_user_policy().user_name(&s.app_user).policy_name(FENCE).send().await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_fence_is_applied_is_undone_by_resume() {
    let moto = Moto::start();
    let s = world(&moto).await;
    let dir = state_dir();
    let env_path = write_env_file(dir.path(), &s.app_key);
    let app = app::start_from(&moto, CredentialSource::EnvFile(env_path.clone()), Some(APP_IP)).await;
    moto.set_auth(true).await;
    let (target, probe) = (format!("env:{}", env_path.display()), format!("{}/iam", app.url()));
    let rd = dir.path().join("report").display().to_string();
    let args = incident_args(&s.app_key.access_key_id, &target, &probe, &rd);
    let out = rekey_env(&moto, &s.admin, dir.path(), &args, &[("REKEY_TEST_CRASH_AT", "fence_applied")]).await;
    assert_eq!(out.code, -1, "killed at the crash point\n{}", out.stderr);
    assert!(out.stderr.contains("fence_applied reached"), "{}", out.stderr);
    assert!(fence_on(&moto, &s).await, "the crash left the fence on");
    assert!(dir.path().join("incident-fences").read_dir().unwrap().next().is_some(), "and its journal entry");

    let out = rekey(&moto, &s.admin, dir.path(), &["resume", "--user", &s.app_user]).await;
    out.assert_code(0);
    assert!(out.stderr.contains("lifted the incident fence"), "{}", out.stderr);
    assert!(!fence_on(&moto, &s).await, "resume lifted the fence");
    assert!(dir.path().join("incident-fences").read_dir().unwrap().next().is_none(), "no fence entry is left");
    assert!(!dir.path().join("active").exists() || dir.path().join("active").read_dir().unwrap().next().is_none());
    // The crash came before the cutover: the key is as it was, and the app works.
    let keys = keys_of(&moto, &s.admin, &s.app_user).await;
    assert_eq!(keys, vec![(s.app_key.access_key_id.clone(), "Active".into())]);
    assert_eq!(reqwest::get(&probe).await.unwrap().status(), 200);
    // A second resume has nothing left to do.
    rekey(&moto, &s.admin, dir.path(), &["resume", "--user", &s.app_user]).await.assert_code(2);
    moto.set_auth(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fence_is_widened_from_the_full_history_when_the_app_fails_behind_it() {
    let moto = Moto::start();
    let s = world(&moto).await;
    let dir = state_dir();
    let env_path = write_env_file(dir.path(), &s.app_key);
    // The app runs from the address its history shows only three weeks ago: the sample misses it.
    let app = app::start_from(&moto, CredentialSource::EnvFile(env_path.clone()), Some(RARE_IP)).await;
    moto.set_auth(true).await;
    let (target, probe) = (format!("env:{}", env_path.display()), format!("{}/iam", app.url()));
    let rd = dir.path().join("report");
    let rds = rd.display().to_string();
    let out = rekey(&moto, &s.admin, dir.path(), &incident_args(&s.app_key.access_key_id, &target, &probe, &rds)).await;
    out.assert_code(0);
    let report = read_report(&rd);
    let fence = &report["fence"];
    assert_eq!(fence["status"], "removed", "{fence}");
    assert!(fence["widened"].to_string().contains(RARE_IP), "{fence}");
    assert!(!fence["widened"].to_string().contains(ATTACKER_IP), "{fence}");
    assert!(fence["notes"].to_string().contains("probes failed behind the fence"), "{fence}");
    assert!(report["actions_taken"].to_string().contains("widened the fence"), "{}", report["actions_taken"]);
    assert_eq!(report["cutover"]["outcome"], "rotated");
    assert!(!fence_on(&moto, &s).await);
    moto.set_auth(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_the_app_cannot_live_behind_is_lifted_loudly_and_the_cutover_goes_on() {
    let moto = Moto::start();
    let s = world(&moto).await;
    let dir = state_dir();
    let env_path = write_env_file(dir.path(), &s.app_key);
    let app = app::start_from(&moto, CredentialSource::EnvFile(env_path.clone()), Some(UNKNOWN_IP)).await;
    moto.set_auth(true).await;
    let load = load::start(format!("{}/iam", app.url()), 10);
    let (target, probe) = (format!("env:{}", env_path.display()), format!("{}/iam", app.url()));
    let rd = dir.path().join("report");
    let rds = rd.display().to_string();
    let out = rekey(&moto, &s.admin, dir.path(), &incident_args(&s.app_key.access_key_id, &target, &probe, &rds)).await;
    let served = load.stop().await;
    out.assert_code(0);
    let report = read_report(&rd);
    assert_eq!(report["fence"]["status"], "lifted", "{}", report["fence"]);
    assert!(report["todo"].to_string().contains("LIFTED THE FENCE"), "{}", report["todo"]);
    assert!(out.stderr.contains("LIFTED THE FENCE") || out.stdout.contains("LIFTED THE FENCE"));
    assert_eq!(report["cutover"]["outcome"], "rotated", "{}", report["cutover"]);
    assert!(!fence_on(&moto, &s).await);
    // The application paid only while the fence was being checked, never after.
    let last = app.stats();
    assert_eq!(last.last_key_id.as_deref(), Some(report["cutover"]["new_key_id"].as_str().unwrap()));
    println!("app requests during the lifted-fence run: {} sent, {} failed", served.total, served.failed);
    moto.set_auth(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_is_deleted_without_free_slot_and_allow_source_is_validated() {
    let moto = Moto::start();
    let s = world(&moto).await;
    let admin_iam = aws_sdk_iam::Client::new(&moto.sdk_config(&s.admin));
    let second = admin_iam.create_access_key().user_name(&s.app_user).send().await.unwrap();
    let stale = second.access_key().unwrap().access_key_id().to_string();
    admin_iam
        .update_access_key()
        .user_name(&s.app_user)
        .access_key_id(&stale)
        .status(aws_sdk_iam::types::StatusType::Inactive)
        .send()
        .await
        .unwrap();
    admin_iam
        .tag_user()
        .user_name(&s.app_user)
        .tags(aws_sdk_iam::types::Tag::builder().key(&stale).value("old laptop").build().unwrap())
        .send()
        .await
        .unwrap();
    let dir = state_dir();
    let env_path = write_env_file(dir.path(), &s.app_key);
    let app = app::start_from(&moto, CredentialSource::EnvFile(env_path.clone()), Some(APP_IP)).await;
    moto.set_auth(true).await;
    let key = s.app_key.access_key_id.clone();
    let (target, probe) = (format!("env:{}", env_path.display()), format!("{}/iam", app.url()));

    // Bad --allow-source: one line, exit 2, nothing changed.
    for (bad, says) in [("vpce-nothex", "not a VPC endpoint id"), ("198.51.100.0/24", "admits the attacker address")] {
        let rd = dir.path().join("never").display().to_string();
        let mut args = incident_args(&key, &target, &probe, &rd);
        args.extend(["--allow-source", bad]);
        let out = rekey(&moto, &s.admin, dir.path(), &args).await;
        out.assert_code(2);
        assert!(out.stderr.contains(says), "{bad}: {}", out.stderr);
        assert!(out.stderr.trim().lines().count() <= 2, "one clear line: {}", out.stderr);
        assert!(!dir.path().join("never").exists());
    }
    assert_eq!(keys_of(&moto, &s.admin, &s.app_user).await.len(), 2);

    // No free slot: the cutover is refused, naming the command; the stale key is kept and described.
    let rd = dir.path().join("refused");
    let rds = rd.display().to_string();
    let mut args = incident_args(&key, &target, &probe, &rds);
    args.extend(["--allow-source", "203.0.113.0/28"]);
    let out = rekey(&moto, &s.admin, dir.path(), &args).await;
    out.assert_code(2);
    let report = read_report(&rd);
    assert_eq!(report["cutover"]["outcome"], "refused", "{}", report["cutover"]);
    assert!(report["cutover"]["detail"].as_str().unwrap().contains(&format!("--free-slot {stale}")));
    let other = &report["other_keys"][0];
    assert_eq!(other["access_key_id"], stale.as_str());
    assert_eq!(other["status"], "Inactive");
    assert!(other["created"].is_string(), "{other}");
    assert_eq!(other["tags"], json!([[stale, "old laptop"]]));
    assert!(report["fence"]["allowed"].to_string().contains("203.0.113.0/28"), "{}", report["fence"]);
    let keys = keys_of(&moto, &s.admin, &s.app_user).await;
    assert!(keys.contains(&(stale.clone(), "Inactive".into())) && keys.contains(&(key.clone(), "Active".into())));
    assert!(fence_on(&moto, &s).await, "nothing else holds the attacker: the fence stays until the key is rotated");
    assert!(report["todo"].to_string().contains("lift the fence"), "{}", report["todo"]);

    // Named after looking: that key, and only it, makes room.
    let rd = dir.path().join("freed");
    let rds = rd.display().to_string();
    let mut args = incident_args(&key, &target, &probe, &rds);
    args.extend(["--free-slot", &stale]);
    let out = rekey(&moto, &s.admin, dir.path(), &args).await;
    out.assert_code(0);
    let report = read_report(&rd);
    assert_eq!(report["cutover"]["outcome"], "rotated", "{}", report["cutover"]);
    assert_eq!(report["other_keys"][0]["access_key_id"], stale.as_str(), "recorded before it was deleted");
    let keys = keys_of(&moto, &s.admin, &s.app_user).await;
    assert!(!keys.iter().any(|(k, _)| *k == stale), "{keys:?}");
    assert!(keys.contains(&(key.clone(), "Inactive".into())), "the leaked key is kept: {keys:?}");
    assert!(!fence_on(&moto, &s).await, "lifted once the key is off");
    moto.set_auth(false).await;
}
