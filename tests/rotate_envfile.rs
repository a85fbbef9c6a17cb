//! `rekey rotate` with an env-file target against the emulator, with a live app under load that
//! re-reads the file on every request and signs an STS call with what it finds.

mod support;

use std::time::Duration;

use support::*;
use testbed::app::{self, CredentialSource};
use testbed::moto::Creds;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_file_rotation_has_zero_failed_requests_and_retires_the_old_key() {
    let sc = Scenario::start().await;
    let (moto, s, dir) = (&sc.moto, &sc.seeded, &sc.dir);
    let env_path = sc.env_file();
    let before = std::fs::read_to_string(&env_path).unwrap();
    let app = app::start(moto, CredentialSource::EnvFile(env_path.clone())).await;
    sc.enforce_auth().await;

    let out =
        sc.rotate().target(format!("env:{}", env_path.display())).probe(&app).json().under_load(&app, 40).run().await;

    out.assert_code(0);
    let json = out.json();
    assert_eq!(json["outcome"], "rotated");
    assert_eq!(json["old_key_id"], s.app_key.access_key_id.as_str());
    assert_eq!(json["old_key_status"], "Inactive");
    assert_eq!(json["targets"][0]["status"], "updated");
    assert!(json["steps"].as_array().unwrap().iter().all(|s| s["duration_ms"].is_u64()));

    // The file now holds the new key; every other byte is as it was.
    let new_id = json["new_key_id"].as_str().unwrap().to_string();
    let after = std::fs::read_to_string(&env_path).unwrap();
    let new_secret = after
        .lines()
        .find_map(|l| l.strip_prefix("AWS_SECRET_ACCESS_KEY='"))
        .unwrap()
        .trim_end_matches('\'')
        .to_string();
    let expected = before.replace(&s.app_key.access_key_id, &new_id).replace(&s.app_key.secret_access_key, &new_secret);
    assert_eq!(after, expected);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&env_path).unwrap().permissions().mode() & 0o777, 0o640, "mode kept");
    assert_eq!(
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("rekey"))
            .count(),
        0,
        "no backup left behind"
    );

    // The emulator now rejects the old key and accepts the new one.
    assert_eq!(sts_check(moto, &s.app_key).await, Err("InvalidClientTokenId".into()));
    assert!(sts_check(moto, &Creds::new(new_id.clone(), new_secret.clone())).await.is_ok());
    assert_secret_absent(&new_secret, &[&out], dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_probe_restores_the_file_byte_for_byte_and_deletes_the_new_key() {
    let sc = Scenario::start().await;
    let (moto, s) = (&sc.moto, &sc.seeded);
    let env_path = sc.env_file();
    let before = std::fs::read(&env_path).unwrap();
    sc.enforce_auth().await;
    // Nothing listens there: the probe can never pass.
    let probe = dead_probe_url();
    let out = sc
        .rotate()
        .target(format!("env:{}", env_path.display()))
        .args(&["--probe", &probe, "--probe-timeout", "3s"])
        .run()
        .await;
    out.assert_code(3);
    assert!(out.stdout.contains("rolled back"), "{}", out.stdout);
    assert!(out.stderr.contains("is not healthy"), "{}", out.stderr);
    assert_eq!(std::fs::read(&env_path).unwrap(), before, "file restored byte for byte");
    assert_eq!(keys_of(moto, &s.admin, &s.app_user).await, vec![(s.app_key.access_key_id.clone(), "Active".into())]);
    assert!(sts_check(moto, &s.app_key).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_never_works_is_deleted_and_the_file_is_untouched() {
    let sc = Scenario::start().await;
    let (moto, s) = (&sc.moto, &sc.seeded);
    let env_path = sc.env_file();
    let before = std::fs::read(&env_path).unwrap();
    sc.enforce_auth().await;

    // Stand-in for a key that never propagates: switch every new key off as soon as it exists,
    // so that STS rejects it exactly as it rejects a key it does not know yet.
    let watcher = {
        let iam = aws_sdk_iam::Client::new(&moto.sdk_config(&s.admin));
        let (user, old) = (s.app_user.clone(), s.app_key.access_key_id.clone());
        tokio::spawn(async move {
            for _ in 0..600 {
                if let Ok(out) = iam.list_access_keys().user_name(&user).send().await {
                    for k in out.access_key_metadata() {
                        let id = k.access_key_id().unwrap_or_default();
                        if id != old && k.status().map(|s| s.as_str()) == Some("Active") {
                            let _ = iam
                                .update_access_key()
                                .user_name(&user)
                                .access_key_id(id)
                                .status(aws_sdk_iam::types::StatusType::Inactive)
                                .send()
                                .await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let out =
        sc.rotate().target(format!("env:{}", env_path.display())).args(&["--verify-timeout", "4s"]).json().run().await;
    watcher.abort();
    out.assert_code(3);
    let json = out.json();
    assert_eq!(json["outcome"], "rolled_back");
    assert!(json["error"].as_str().unwrap().contains("never worked"), "{json}");
    assert_eq!(std::fs::read(&env_path).unwrap(), before);
    assert_eq!(keys_of(moto, &s.admin, &s.app_user).await, vec![(s.app_key.access_key_id.clone(), "Active".into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_restart_command_rolls_back_and_reruns_after_restore() {
    let sc = Scenario::start().await;
    let (moto, s, dir) = (&sc.moto, &sc.seeded, &sc.dir);
    let env_path = sc.env_file();
    let before = std::fs::read(&env_path).unwrap();
    let log = dir.path().join("restarts.log");
    sc.enforce_auth().await;
    // Fails while the file holds a key other than the original one.
    let cmd = format!(
        "echo restart >> {log}; grep -q {old} {env} || {{ echo 'app refused to start' >&2; exit 7; }}",
        log = log.display(),
        old = s.app_key.access_key_id,
        env = env_path.display()
    );
    let out = sc.rotate().target(format!("env:{}", env_path.display())).args(&["--restart-cmd", &cmd]).run().await;
    out.assert_code(3);
    assert!(out.stderr.contains("app refused to start"), "{}", out.stderr);
    assert_eq!(std::fs::read(&env_path).unwrap(), before);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap().lines().count(),
        2,
        "restarted after the write and after the restore"
    );
    assert_eq!(keys_of(moto, &s.admin, &s.app_user).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_the_rotation_rolls_back() {
    let sc = Scenario::start().await;
    let (moto, s) = (&sc.moto, &sc.seeded);
    let env_path = sc.env_file();
    let before = std::fs::read(&env_path).unwrap();
    sc.enforce_auth().await;
    // A probe that never passes keeps rekey waiting, with the file already rewritten.
    let probe = dead_probe_url();

    let mut cmd = sc
        .rotate()
        .target(format!("env:{}", env_path.display()))
        .args(&["--probe", &probe, "--probe-timeout", "5m"])
        .command();
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = child.id().unwrap().to_string();
    // Wait until the new key is in the file, then interrupt.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::fs::read(&env_path).unwrap() == before {
        assert!(std::time::Instant::now() < deadline, "rekey never wrote the file");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(std::fs::read(&env_path).unwrap(), before);
    assert_eq!(keys_of(moto, &s.admin, &s.app_user).await, vec![(s.app_key.access_key_id.clone(), "Active".into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_old_removes_the_old_key_and_a_stale_inactive_key_frees_the_slot() {
    let sc = Scenario::start().await;
    let (moto, s) = (&sc.moto, &sc.seeded);
    let env_path = sc.env_file();
    // A stale Inactive second key occupies the other slot.
    let iam = aws_sdk_iam::Client::new(&moto.sdk_config(&s.admin));
    let stale = iam.create_access_key().user_name(&s.app_user).send().await.unwrap();
    let stale_id = stale.access_key().unwrap().access_key_id().to_string();
    iam.update_access_key()
        .user_name(&s.app_user)
        .access_key_id(&stale_id)
        .status(aws_sdk_iam::types::StatusType::Inactive)
        .send()
        .await
        .unwrap();
    sc.enforce_auth().await;
    let out = sc.rotate().target(format!("env:{}", env_path.display())).args(&["--delete-old"]).json().run().await;
    out.assert_code(0);
    let json = out.json();
    assert!(json["warnings"].to_string().contains(&stale_id), "the deleted stale key is reported: {json}");
    assert!(json["old_key_status"].is_null(), "the old key is gone: {json}");
    let new_id = json["new_key_id"].as_str().unwrap();
    assert_eq!(keys_of(moto, &s.admin, &s.app_user).await, vec![(new_id.to_string(), "Active".into())]);
    // The new key carries rekey's description, like the console's key description tag.
    let tags = iam.list_user_tags().user_name(&s.app_user).send().await.unwrap();
    assert!(tags.tags().iter().any(|t| t.key() == new_id && t.value().starts_with("rekey-rotation-")), "{tags:?}");
}

/// The zero-failure check every test under load relies on must itself be able to fail: an app
/// whose key is wrong fails every request, and the scenario says so even though rekey (a dry run
/// here) succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "failed app requests during the rotation")]
async fn the_load_check_fails_a_rotation_with_downtime() {
    let sc = Scenario::start().await;
    let wrong = Creds::new(sc.seeded.app_key.access_key_id.clone(), "not-the-secret-0000000000000000000000000");
    let env_path = write_env_file(sc.dir.path(), &wrong);
    let app = app::start(&sc.moto, CredentialSource::EnvFile(env_path.clone())).await;
    sc.enforce_auth().await;
    let out =
        sc.rotate().target(format!("env:{}", env_path.display())).args(&["--dry-run"]).under_load(&app, 1).run().await;
    out.assert_code(0);
}
