//! Retire the old key only on evidence, against the emulator: a consumer nobody told rekey about
//! keeps signing with the old key while `rotate` runs under load. The rotation must hold (exit 6,
//! old key Active, the consumer named) with no failed request for it or for the known app; once it
//! moves, `rekey retire --idle` deactivates the old key.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use support::*;
use testbed::app::{self, CredentialSource};
use testbed::load;
use testbed::moto::{Creds, Moto, seed};

/// A job rekey was not told about: it signs `GetCallerIdentity` in eu-west-2 every 200 ms with
/// whatever key it holds, and counts its failures.
struct Untold {
    creds: Arc<RwLock<Creds>>,
    calls: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Untold {
    fn start(moto: &Moto, creds: Creds) -> Untold {
        let creds = Arc::new(RwLock::new(creds));
        let (calls, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let endpoint_sdk = {
            let c = creds.read().unwrap().clone();
            moto.sdk_config(&c)
        };
        let task = {
            let (creds, calls, failures) = (creds.clone(), calls.clone(), failures.clone());
            tokio::spawn(async move {
                loop {
                    let c = creds.read().unwrap().clone();
                    let conf = aws_sdk_sts::config::Builder::from(&endpoint_sdk)
                        .region(aws_sdk_sts::config::Region::new("eu-west-2"))
                        .credentials_provider(aws_sdk_sts::config::Credentials::new(
                            c.access_key_id,
                            c.secret_access_key,
                            None,
                            None,
                            "untold-job",
                        ))
                        .build();
                    let ok = aws_sdk_sts::Client::from_conf(conf).get_caller_identity().send().await.is_ok();
                    calls.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };
        Untold { creds, calls, failures, task }
    }

    fn move_to(&self, creds: Creds) {
        *self.creds.write().unwrap() = creds;
    }
}

impl Drop for Untold {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn env_creds(path: &std::path::Path) -> Creds {
    testbed::app::parse_dotenv(&std::fs::read_to_string(path).unwrap()).expect("the env file holds a key")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_rekey_was_not_told_about_holds_the_old_key_until_it_moves() {
    let moto = Moto::start();
    let s = seed(&moto).await;
    let dir = state_dir();
    let env_path = write_env_file(dir.path(), &s.app_key);
    let app = app::start(&moto, CredentialSource::EnvFile(env_path.clone())).await;
    moto.set_auth(true).await;
    let untold = Untold::start(&moto, s.app_key.clone());
    let load = load::start(app.url(), 25);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let target = format!("env:{}", env_path.display());
    let probe = format!("{}/health", app.url());
    let mut args = vec!["rotate", "--user", &s.app_user, "--target", &target, "--probe", &probe, "--output", "json"];
    args.extend(FAST);
    let out = rekey(&moto, &s.admin, dir.path(), &args).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = load.stop().await;

    out.assert_code(6);
    let json = out.json();
    assert_eq!(json["outcome"], "held", "{json}");
    assert_eq!(json["old_key_status"], "Active");
    let new_id = json["new_key_id"].as_str().unwrap().to_string();
    let evidence = &json["evidence"];
    assert_eq!(evidence["verdict"], "in_use", "{evidence}");
    let consumer = &evidence["consumers"][0];
    assert_eq!(
        (consumer["service"].as_str(), consumer["region"].as_str()),
        (Some("sts"), Some("eu-west-2")),
        "{evidence}"
    );
    let left = json["left"].as_array().unwrap();
    assert!(left.iter().any(|l| l.as_str().unwrap().contains("sts in eu-west-2")), "named: {left:?}");
    assert!(left.iter().any(|l| l.as_str().unwrap().contains("rekey retire --user")), "next command: {left:?}");

    // Both keys stay Active; the known app moved, the untold job never failed.
    let keys = keys_of(&moto, &s.admin, &s.app_user).await;
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().all(|(_, st)| st == "Active"), "{keys:?}");
    assert_eq!(report.failed, 0, "failed app requests: {:?}", report.first_failures);
    assert!(report.total >= 40, "the app was under load ({} requests)", report.total);
    assert_eq!(untold.failures.load(Ordering::Relaxed), 0, "the untold job never failed");
    assert!(untold.calls.load(Ordering::Relaxed) >= 5, "the untold job ran throughout");
    let new_creds = env_creds(&env_path);
    assert_eq!(new_creds.access_key_id, new_id, "the known app's file holds the new key");
    assert_secret_absent(&new_creds.secret_access_key, &[&out], dir.path());

    // The hold is recorded on the user for status, audit and runners.
    let iam = aws_sdk_iam::Client::new(&moto.sdk_config(&s.admin));
    let tags = iam.list_user_tags().user_name(&s.app_user).send().await.unwrap();
    let held = tags.tags().iter().find(|t| t.key() == s.app_key.access_key_id).map(|t| t.value().to_string());
    assert!(held.as_deref().is_some_and(|v| v.starts_with("rekey-held-at-")), "{held:?}");

    // While the job still signs with it, retire refuses to cut it off and names the last use.
    let retire = ["retire", "--user", &s.app_user, "--idle", "3s"];
    let out = rekey(&moto, &s.admin, dir.path(), &retire).await;
    out.assert_code(6);
    assert!(out.stdout.contains("eu-west-2"), "names the last use:\n{}", out.stdout);
    assert!(keys_of(&moto, &s.admin, &s.app_user).await.iter().all(|(_, st)| st == "Active"));

    // The job moves to the new key; once the old one has been idle for 3 s, retire deactivates it.
    untold.move_to(new_creds.clone());
    tokio::time::sleep(Duration::from_secs(4)).await;
    let out =
        rekey(&moto, &s.admin, dir.path(), &["retire", "--user", &s.app_user, "--idle", "3s", "--output", "json"])
            .await;
    out.assert_code(0);
    let json = out.json();
    assert_eq!(json["outcome"], "retired", "{json}");
    assert_eq!(json["key_id"], s.app_key.access_key_id.as_str());
    assert_eq!(json["current_key_id"], new_id.as_str());
    let mut keys = keys_of(&moto, &s.admin, &s.app_user).await;
    keys.sort();
    let mut expected =
        vec![(s.app_key.access_key_id.clone(), "Inactive".to_string()), (new_id.clone(), "Active".into())];
    expected.sort();
    assert_eq!(keys, expected);
    assert_eq!(sts_check(&moto, &s.app_key).await, Err("InvalidClientTokenId".into()), "the old key is off");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(untold.failures.load(Ordering::Relaxed), 0, "the job moved before the key went off");
    // A second retire has nothing left to do.
    let again = rekey(&moto, &s.admin, dir.path(), &["retire", "--user", &s.app_user]).await;
    again.assert_code(0);
    assert!(again.stdout.contains("nothing to retire"), "{}", again.stdout);
    moto.set_auth(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_deactivate_cuts_the_untold_consumer_off_and_says_it_was_not_checked() {
    let moto = Moto::start();
    let s = seed(&moto).await;
    let dir = state_dir();
    let env_path = write_env_file(dir.path(), &s.app_key);
    moto.set_auth(true).await;
    let untold = Untold::start(&moto, s.app_key.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let target = format!("env:{}", env_path.display());
    let mut args = vec!["rotate", "--user", &s.app_user, "--target", &target, "--force-deactivate", "--output", "json"];
    args.extend(FAST);
    let out = rekey(&moto, &s.admin, dir.path(), &args).await;
    out.assert_code(0);
    let json = out.json();
    assert_eq!(
        (json["outcome"].as_str(), json["old_key_status"].as_str()),
        (Some("rotated"), Some("Inactive")),
        "{json}"
    );
    assert_eq!(json["evidence"]["verdict"], "skipped");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(untold.failures.load(Ordering::Relaxed) > 0, "what the hold prevents: the job now fails");
    moto.set_auth(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_refuses_bad_input_in_one_line_and_changes_nothing() {
    let moto = Moto::start();
    let s = seed(&moto).await;
    let dir = state_dir();
    let out =
        rekey(&moto, &s.admin, dir.path(), &["retire", "--user", &s.app_user, "--old-key", &s.app_key.access_key_id])
            .await;
    out.assert_code(2);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("only Active key"), "{}", out.stderr);
    let out = rekey(&moto, &s.admin, dir.path(), &["retire", "--user", &s.app_user, "--idle", "soon"]).await;
    out.assert_code(2);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert_eq!(keys_of(&moto, &s.admin, &s.app_user).await, vec![(s.app_key.access_key_id.clone(), "Active".into())]);
}
