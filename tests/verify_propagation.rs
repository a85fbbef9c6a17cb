//! The new key verified the way the application will meet it, on an emulator that models IAM's
//! eventual consistency (launcher patch 12: several hosts per endpoint, each learning a key at its
//! own moment within a window); and a rollback that undoes only what rekey did, old key first.

mod support;

use std::time::{Duration, Instant};

use support::*;
use testbed::app::{self, CredentialSource};
use testbed::load;

/// Hosts behind each endpoint, and the window within which each learns a change of a key.
const HOSTS: u32 = 8;
const WINDOW: Duration = Duration::from_secs(2);
const SEEDS: [u64; 4] = [11, 23, 37, 41];
const ROTATIONS_PER_SEED: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_rotations_under_eventual_consistency_fail_no_app_request() {
    let sc = Scenario::start().await;
    let env_path = sc.env_file();
    // The app re-reads the file on every request and signs with the key against the same
    // emulator: a host that does not know the key yet fails the app's request.
    let app = app::start(&sc.moto, CredentialSource::EnvFile(env_path.clone())).await;
    sc.enforce_auth().await;
    let target = format!("env:{}", env_path.display());

    let started = Instant::now();
    let load = load::start(app.url(), 25);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut verify_ms = Vec::new();
    for seed in SEEDS {
        sc.moto.set_propagation(HOSTS, WINDOW, seed).await;
        for n in 0..ROTATIONS_PER_SEED {
            // Nothing but the app uses the old key: a short watch of it is enough.
            let out = sc.rotate().target(&target).probe(&app).args(&["--quiet-period", "0s"]).json().run().await;
            out.assert_code(0);
            let json = out.json();
            assert_eq!(json["outcome"], "rotated", "seed {seed}, rotation {n}: {json}");
            let verify = json["steps"].as_array().unwrap().iter().find(|s| s["name"] == "verify_key").cloned();
            verify_ms.push(verify.and_then(|s| s["duration_ms"].as_u64()).expect("a verify_key step"));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = load.stop().await;
    let refused = sc.moto.lag_rejections().await;
    verify_ms.sort_unstable();
    eprintln!(
        "{} rotations in {:.1}s; app requests {} ({} failed); verify_key ms: min {} median {} max {}; requests refused by a lagging host: {refused}",
        verify_ms.len(),
        started.elapsed().as_secs_f64(),
        report.total,
        report.failed,
        verify_ms[0],
        verify_ms[verify_ms.len() / 2],
        verify_ms[verify_ms.len() - 1],
    );
    assert_eq!(report.failed, 0, "failed app requests: {:?}", report.first_failures);
    assert!(report.total >= 25 * 20, "the app was under load the whole time: {} requests", report.total);
    // The model bit: the verification met hosts that did not know the key yet, and waited them out.
    assert!(refused >= 20, "only {refused} requests met a lagging host: the model was not in play");
    assert!(
        verify_ms[verify_ms.len() / 2] >= 500,
        "verification took {verify_ms:?} ms: it cannot have waited for hosts that learn within {WINDOW:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_another_actor_creates_during_the_rotation_is_left_alone() {
    let sc = Scenario::start().await;
    let (moto, s) = (&sc.moto, &sc.seeded);
    let env_path = sc.env_file();
    let before = std::fs::read(&env_path).unwrap();
    sc.enforce_auth().await;

    // rekey's CreateAccessKey waits at IAM's door while someone else takes the user's free slot.
    moto.hold_next_create_key(3.0).await;
    let mut cmd = sc.rotate().target(format!("env:{}", env_path.display())).json().command();
    let child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while moto.create_keys_held().await == 0 {
        assert!(Instant::now() < deadline, "rekey never called CreateAccessKey");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let theirs = aws_sdk_iam::Client::new(&moto.sdk_config(&s.admin))
        .create_access_key()
        .user_name(&s.app_user)
        .send()
        .await
        .expect("the other actor's CreateAccessKey")
        .access_key()
        .unwrap()
        .access_key_id()
        .to_string();

    let out = child.wait_with_output().await.unwrap();
    let (code, stdout, stderr) =
        (out.status.code(), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(code, Some(3), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["outcome"], "rolled_back", "{json}");
    assert!(json["error"].as_str().unwrap().contains("2 access keys"), "{json}");
    let mut keys = keys_of(moto, &s.admin, &s.app_user).await;
    keys.sort();
    let mut expected = vec![(s.app_key.access_key_id.clone(), "Active".to_string()), (theirs, "Active".to_string())];
    expected.sort();
    assert_eq!(keys, expected, "the other actor's key is not rekey's to delete");
    assert_eq!(std::fs::read(&env_path).unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_turns_the_old_key_back_on_before_restoring_the_targets() {
    let sc = Scenario::start().await;
    let (moto, s) = (&sc.moto, &sc.seeded);
    let env_path = sc.env_file();
    let before = std::fs::read(&env_path).unwrap();
    // A consumer rekey was not told about, on a copy of the file: it breaks when the old key goes off.
    let untold_dir = state_dir();
    let untold = app::start(moto, CredentialSource::EnvFile(write_env_file(untold_dir.path(), &s.app_key))).await;
    sc.enforce_auth().await;

    let out = sc
        .rotate()
        .target(format!("env:{}", env_path.display()))
        .probe(&untold)
        .args(&["--force-deactivate", "--probe-timeout", "2s"])
        .json()
        .run()
        .await;
    out.assert_code(3);
    let json = out.json();
    assert_eq!(json["outcome"], "rolled_back", "{json}");
    let steps: Vec<&str> = json["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    let at = |name: &str| steps.iter().position(|s| s.starts_with(name)).unwrap_or_else(|| panic!("{name}: {steps:?}"));
    assert!(at("deactivate_old") < at("reactivate_old"), "{steps:?}");
    assert!(at("reactivate_old") < at("rollback:env:"), "the old key comes back first: {steps:?}");
    assert_eq!(std::fs::read(&env_path).unwrap(), before);
    assert_eq!(keys_of(moto, &s.admin, &s.app_user).await, vec![(s.app_key.access_key_id.clone(), "Active".into())]);
    assert!(sts_check(moto, &s.app_key).await.is_ok());
}
