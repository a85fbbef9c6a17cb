//! Issue 9: a leaked key as busy as an ordinary application's (30,000+ events of event history), an
//! attacker who keeps calling IAM with it from their own address and creates a user every ~2 s,
//! and the application under load throughout. `rekey incident` must shut the attacker out within
//! seconds of its start (containment does not wait for the history), with no failed application
//! request, keep the leaked key as evidence, revoke the right sessions, and report everything the
//! attacker made while it ran.
//!
//! Event history is served by launcher patch 11 (50 a page, newest first, a per-Region rate
//! limit). The rate is scaled up here (`--history-rate`) so that the full read takes seconds of CI
//! instead of 5 minutes; the bound of the sample at AWS's real 2 requests/s is shown by
//! scripts/bench-incident.sh and `sample`'s unit tests.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use support::*;
use testbed::app::{self, CredentialSource};
use testbed::load;
use testbed::moto::{Creds, Moto, seed};

const ACCOUNT: &str = "123456789012";
const APP_IP: &str = "203.0.113.10";
const ATTACKER_IP: &str = "198.51.100.50";
const RATE: &str = "200";

fn epoch(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64()
}

fn ts(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn assume_role_event(id: &str, at: SystemTime, key: &str, role_arn: &str, minted: &str) -> Value {
    json!({
        "eventVersion": "1.09",
        "userIdentity": {"type": "IAMUser", "arn": format!("arn:aws:iam::{ACCOUNT}:user/app-integration-user"), "accountId": ACCOUNT, "accessKeyId": key, "userName": "app-integration-user"},
        "eventTime": ts(at),
        "eventSource": "sts.amazonaws.com",
        "eventName": "AssumeRole",
        "awsRegion": "us-east-1",
        "sourceIPAddress": APP_IP,
        "requestParameters": {"roleArn": role_arn, "roleSessionName": "app"},
        "responseElements": {"credentials": {"accessKeyId": minted}, "assumedRoleUser": {"arn": format!("{role_arn}/app")}},
        "eventID": id,
        "readOnly": true,
        "eventType": "AwsApiCall",
        "managementEvent": true,
        "recipientAccountId": ACCOUNT,
    })
}

fn session_config(moto: &Moto, c: &aws_sdk_sts::types::Credentials) -> aws_types::SdkConfig {
    moto.sdk_config(&Creds::new("unused", "unused"))
        .to_builder()
        .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(
            aws_credential_types::Credentials::new(
                c.access_key_id(),
                c.secret_access_key(),
                Some(c.session_token().to_string()),
                None,
                "app-session",
            ),
        ))
        .build()
}

async fn assume(moto: &Moto, creds: &Creds, role: &str) -> aws_sdk_iam::Client {
    let sts = aws_sdk_sts::Client::new(&moto.sdk_config(creds));
    let out = sts
        .assume_role()
        .role_arn(format!("arn:aws:iam::{ACCOUNT}:role/{role}"))
        .role_session_name("app")
        .send()
        .await
        .unwrap_or_else(|e| panic!("AssumeRole {role}: {e:?}"));
    aws_sdk_iam::Client::new(&session_config(moto, out.credentials().unwrap()))
}

async fn list_roles(iam: &aws_sdk_iam::Client) -> Result<(), String> {
    iam.list_roles()
        .send()
        .await
        .map(|_| ())
        .map_err(|e| e.into_service_error().meta().code().unwrap_or("?").to_string())
}

/// What the attacker's task saw: each call's time and outcome, and the users it managed to create.
#[derive(Default)]
struct AttackLog {
    calls: Vec<(Instant, Result<(), String>)>,
    /// Each user, with when its CreateUser was sent.
    created: Vec<(String, Instant)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_key_is_fenced_in_seconds_while_the_attacker_keeps_acting() {
    let test_started = Instant::now();
    let moto = Moto::start();
    let s = seed(&moto).await;
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
    let trust = json!({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":format!("arn:aws:iam::{ACCOUNT}:user/{}", s.app_user)},"Action":"sts:AssumeRole"}]});
    for role in ["app-role", "partner-role"] {
        admin_iam.create_role().role_name(role).assume_role_policy_document(trust.to_string()).send().await.unwrap();
        admin_iam
            .put_role_policy()
            .role_name(role)
            .policy_name("read")
            .policy_document(allow_all.to_string())
            .send()
            .await
            .unwrap();
    }
    let key = s.app_key.access_key_id.clone();

    // The key's event history: the application every 90 s for 31 days from its own address, the
    // AssumeRole calls it makes (one of them into a partner account's role of the same name as a
    // local one), and the attacker's burst of calls half an hour ago.
    let now = SystemTime::now();
    let lag = Duration::from_secs(600);
    let events = vec![
        assume_role_event(
            "assume-1",
            now - Duration::from_secs(2 * 86_400),
            &key,
            &format!("arn:aws:iam::{ACCOUNT}:role/app-role"),
            "ASIAAPPSESSION000001",
        ),
        assume_role_event(
            "assume-2",
            now - Duration::from_secs(86_400),
            &key,
            "arn:aws:iam::999999999999:role/partner-role",
            "ASIAPARTNER000000001",
        ),
    ];
    let held = moto
        .seed_history(&json!({
            "reset": true,
            "rate": RATE.parse::<f64>().unwrap(),
            "series": [
                {"id": "app", "region": "us-east-1", "access_key_id": key, "source_ip": APP_IP, "newest": epoch(now - lag),
                 "interval": 90, "count": 30_000, "user_name": s.app_user, "arn": format!("arn:aws:iam::{ACCOUNT}:user/{}", s.app_user)},
                {"id": "attacker", "region": "us-east-1", "access_key_id": key, "source_ip": ATTACKER_IP,
                 "newest": epoch(now - Duration::from_secs(1200)), "interval": 0.25, "count": 2_000, "event_source": "iam.amazonaws.com",
                 "event_name": "ListUsers", "user_name": s.app_user, "arn": format!("arn:aws:iam::{ACCOUNT}:user/{}", s.app_user)}
            ],
            "events": events,
        }))
        .await;
    assert!(held >= 30_000, "{held} events seeded");

    // The application, from its own address, under load, on a call a fence can deny.
    let dir = state_dir();
    let env_path = write_env_file(dir.path(), &s.app_key);
    let app = app::start_from(&moto, CredentialSource::EnvFile(env_path.clone()), Some(APP_IP)).await;
    moto.set_auth(true).await;
    // A session the application minted before the incident: revoked with the others.
    let old_session = assume(&moto, &s.app_key, "app-role").await;
    old_session.list_roles().send().await.expect("the app's session works before the incident");
    let load = load::start(format!("{}/iam", app.url()), 25);

    // The attacker: IAM calls from their own address every 0.25 s, a new user every ~2 s.
    let log = Arc::new(Mutex::new(AttackLog::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attacker = {
        let (log, stop) = (log.clone(), stop.clone());
        let iam = aws_sdk_iam::Client::new(&moto.sdk_config(&s.app_key));
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let called = iam
                    .list_users()
                    .customize()
                    .mutate_request(|r| {
                        r.headers_mut().insert("X-Forwarded-For", ATTACKER_IP);
                    })
                    .send()
                    .await;
                let outcome =
                    called.map(|_| ()).map_err(|e| e.into_service_error().meta().code().unwrap_or("?").to_string());
                log.lock().unwrap().calls.push((Instant::now(), outcome));
                if n.is_multiple_of(8) {
                    let name = format!("evil-{n}");
                    let sent = Instant::now();
                    let created = iam
                        .create_user()
                        .user_name(&name)
                        .customize()
                        .mutate_request(|r| {
                            r.headers_mut().insert("X-Forwarded-For", ATTACKER_IP);
                        })
                        .send()
                        .await;
                    if created.is_ok() {
                        log.lock().unwrap().created.push((name, sent));
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        log.lock().unwrap().calls.iter().all(|(_, r)| r.is_ok()),
        "the stolen key works for the attacker before the incident"
    );

    let report_dir = dir.path().join("report");
    let rd = report_dir.display().to_string();
    let target = format!("env:{}", env_path.display());
    let probe = format!("{}/iam", app.url());
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
        "--no-trails",
        "--no-sweep",
        "--history-region",
        "us-east-1",
        "--history-rate",
        RATE,
    ];
    args.extend(WAITS);
    let started = Instant::now();
    let out = rekey(&moto, &s.admin, dir.path(), &args).await;
    let incident_wall = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    attacker.await.unwrap();
    let served = load.stop().await;
    out.assert_code(0);

    // Shut out within seconds, and never let back in.
    let log = std::mem::take(&mut *log.lock().unwrap());
    let first_refusal = log
        .calls
        .iter()
        .find(|(at, r)| *at > started && r.is_err())
        .map(|(at, _)| at.duration_since(started))
        .expect("the attacker was refused");
    println!("attacker refused {first_refusal:?} after rekey started; incident took {incident_wall:?}");
    assert!(first_refusal <= Duration::from_secs(15), "refused only after {first_refusal:?}\n{}", out.stdout);
    let after: Vec<_> =
        log.calls.iter().filter(|(at, _)| *at > started + first_refusal).filter(|(_, r)| r.is_ok()).collect();
    assert!(after.is_empty(), "{} attacker calls succeeded after the first refusal", after.len());
    assert_eq!(served.failed, 0, "failed app requests: {:?}", served.first_failures);
    assert!(served.total > 0);

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(report_dir.join("report.json")).unwrap()).unwrap();
    let timings = &report["timings"];
    println!("timings: {timings}");
    let fence_at = timings["fence_applied_s"].as_f64().expect("fence_applied_s");
    assert!(fence_at <= 10.0, "fence applied {fence_at} s after the start");
    assert!(timings["cutover_done_s"].as_f64().is_some(), "{timings}");
    assert!(timings["investigation_done_s"].as_f64().is_some(), "{timings}");
    assert!(out.stdout.contains("fence applied"), "the text summary prints the timings:\n{}", out.stdout);
    let md = std::fs::read_to_string(report_dir.join("report.md")).unwrap();
    assert!(md.contains("**Timings**") && md.contains("fence applied"), "report.md gives the timings");
    assert_eq!(report["fence"]["status"], "removed", "{}", report["fence"]);
    let allowed = report["fence"]["allowed"].to_string();
    assert!(allowed.contains(APP_IP) && !allowed.contains(ATTACKER_IP), "{allowed}");
    assert!(report["fence"]["learnt_from"].as_str().unwrap().contains("bounded sample"), "{}", report["fence"]);
    // The whole history was still read, beside the cutover.
    let history_events: u64 = report["sources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "event-history")
        .map(|s| s["events"].as_u64().unwrap())
        .sum();
    assert!(history_events >= 30_000, "{}", report["sources"]);

    // The leaked key is evidence: Inactive, not deleted.
    let keys = keys_of(&moto, &s.admin, &s.app_user).await;
    assert!(keys.contains(&(key.clone(), "Inactive".into())), "{keys:?}");
    assert_eq!(keys.len(), 2, "{keys:?}");

    // Sessions: the app's session from before is revoked, the ones it mints with the new key work;
    // the partner account's role was never mapped to the local role of the same name.
    let new_key = std::fs::read_to_string(&env_path).unwrap();
    let new_creds = app::parse_dotenv(&new_key).unwrap();
    assert_ne!(new_creds.access_key_id, key);
    assert_eq!(list_roles(&old_session).await, Err("AccessDenied".into()), "the old session is revoked");
    let fresh = assume(&moto, &new_creds, "app-role").await;
    assert_eq!(list_roles(&fresh).await, Ok(()), "a session minted with the new key works");
    let partner =
        admin_iam.get_role_policy().role_name("partner-role").policy_name("rekey-revoke-older-sessions").send().await;
    assert!(partner.is_err(), "the local partner-role was not touched");
    let revoked = report["sessions_revoked"].to_string();
    assert!(revoked.contains("999999999999") && revoked.contains("another account"), "{revoked}");

    // Everything the attacker created is reported; what it created during the run is planned too
    // (issue 9 item 3). A user made in the seconds before rekey started has no CloudTrail event yet
    // and is listed for review ("created in the window"), not planned: see tests/incident_live.rs
    // for users made during the run, which this fast fence leaves the attacker little time for.
    let findings = report["findings"].to_string();
    let plan = std::fs::read_to_string(report_dir.join("plan.json")).unwrap();
    assert!(!log.created.is_empty(), "the attacker created users before the fence");
    for (user, at) in &log.created {
        assert!(findings.contains(user.as_str()), "{user} is not in the findings");
        // Sent once rekey's own clock had surely started (process start-up is well under 0.5 s).
        if *at > started + Duration::from_millis(500) {
            assert!(plan.contains(user.as_str()), "{user}, created during the run, is not in plan.json");
        }
    }
    moto.set_auth(false).await;
    println!("test wall time {:?}", test_started.elapsed());
}

/// scripts/bench-incident.sh: time from `rekey incident`'s start until the fence is on the user,
/// with 30,000 and 3,000,000 events of history served at AWS's real 2 requests/s per Region. The
/// fence is watched from outside (GetUserPolicy every 100 ms); the run is then stopped, since the
/// full read of 3,000,000 events at 2 requests/s would take 8 hours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: scripts/bench-incident.sh"]
async fn bench_time_to_fence() {
    let runs: usize = std::env::var("REKEY_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    for total in [30_000u64, 3_000_000] {
        let mut times = Vec::new();
        for _ in 0..runs {
            let moto = Moto::start();
            let s = seed(&moto).await;
            let key = s.app_key.access_key_id.clone();
            let now = SystemTime::now();
            let held = moto
                .seed_history(&json!({
                    "reset": true,
                    "rate": 2.0,
                    "series": [
                        {"id": "app", "region": "us-east-1", "access_key_id": key, "source_ip": APP_IP,
                         "newest": epoch(now - Duration::from_secs(600)), "interval": 2_592_000.0 / total as f64, "count": total},
                        {"id": "attacker", "region": "us-east-1", "access_key_id": key, "source_ip": ATTACKER_IP,
                         "newest": epoch(now - Duration::from_secs(1200)), "interval": 0.25, "count": 2_000}
                    ],
                }))
                .await;
            assert!(held >= total);
            moto.set_auth(true).await;
            let admin_iam = aws_sdk_iam::Client::new(&moto.sdk_config(&s.admin));
            let dir = state_dir();
            let rd = dir.path().join("report").display().to_string();
            let args = [
                "incident",
                "--access-key",
                &key,
                "--no-cutover",
                "--since",
                "30d",
                "--attacker-ip",
                ATTACKER_IP,
                "--report-dir",
                &rd,
                "--no-trails",
                "--no-sweep",
                "--history-region",
                "us-east-1",
            ];
            let mut child = rekey_command(&moto, &s.admin, dir.path(), &args, &[])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let started = Instant::now();
            loop {
                let on =
                    admin_iam.get_user_policy().user_name(&s.app_user).policy_name("rekey-incident-fence").send().await;
                if on.is_ok() {
                    times.push(started.elapsed().as_secs_f64());
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(120), "no fence within 2 minutes");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = child.kill().await;
            moto.set_auth(false).await;
        }
        times.sort_by(f64::total_cmp);
        println!(
            "BENCH time to fence, {total} events at 2 req/s: median {:.2} s, min {:.2} s, max {:.2} s ({runs} runs)",
            times[times.len() / 2],
            times[0],
            times[times.len() - 1]
        );
    }
}
