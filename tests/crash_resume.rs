//! Kill the real binary right after each journal record (the test-only REKEY_TEST_CRASH_AFTER hook
//! aborts the process, like kill -9), then `rekey resume`: the end state must be one of the two
//! clean ones every time, with no orphan key.

mod support;

use support::*;
use testbed::app::{self, CredentialSource};
use testbed::moto::{Creds, Moto, seed};

async fn secret_current(moto: &Moto, admin: &Creds, id: &str) -> String {
    let sm = aws_sdk_secretsmanager::Client::new(&moto.sdk_config(admin));
    let out = sm.get_secret_value().secret_id(id).version_stage("AWSCURRENT").send().await.expect("GetSecretValue");
    out.secret_string().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_a_crash_at_every_journal_record_ends_clean() {
    let moto = Moto::start();
    let mut crash_after = 1;
    let mut outcomes = Vec::new();
    loop {
        let s = seed(&moto).await;
        let dir = state_dir();
        let env_path = write_env_file(dir.path(), &s.app_key);
        let env_before = std::fs::read(&env_path).unwrap();
        let secret_before = serde_json::json!({
            "AWS_ACCESS_KEY_ID": s.app_key.access_key_id, "AWS_SECRET_ACCESS_KEY": s.app_key.secret_access_key, "db": "postgres://app"
        })
        .to_string();
        let sm = aws_sdk_secretsmanager::Client::new(&moto.sdk_config(&s.admin));
        sm.create_secret().name("prod/app/aws").secret_string(&secret_before).send().await.unwrap();
        let app = app::start(&moto, CredentialSource::EnvFile(env_path.clone())).await;
        moto.set_auth(true).await;

        let env_target = format!("env:{}", env_path.display());
        let probe = format!("{}/health", app.url());
        let mut args = vec![
            "rotate",
            "--user",
            &s.app_user,
            "--target",
            "secretsmanager:prod/app/aws",
            "--target",
            &env_target,
            "--probe",
            &probe,
        ];
        args.extend(FAST);
        let n = crash_after.to_string();
        let crashed = rekey_env(&moto, &s.admin, dir.path(), &args, &[("REKEY_TEST_CRASH_AFTER", &n)]).await;
        if crashed.code == 0 {
            // The journal has fewer records than this: every boundary has been tried.
            assert!(crash_after > 15, "a full rotation journals more than 15 records");
            break;
        }
        assert_eq!(crashed.code, -1, "crash {crash_after}: the process was aborted\n{}", crashed.stderr);

        let status = rekey(&moto, &s.admin, dir.path(), &["status", "--user", &s.app_user]).await;
        status.assert_code(0);
        assert!(
            status.stdout.contains("rekey resume --user app-integration-user"),
            "crash {crash_after}: {}",
            status.stdout
        );
        let refused = rekey(&moto, &s.admin, dir.path(), &args).await;
        refused.assert_code(2);
        assert!(refused.stderr.contains("rekey resume"), "{}", refused.stderr);

        let mut resume_args = vec!["resume", "--user", &s.app_user, "--output", "json"];
        resume_args.extend(FAST);
        let resumed = rekey(&moto, &s.admin, dir.path(), &resume_args).await;
        let json = resumed.json();
        let keys = keys_of(&moto, &s.admin, &s.app_user).await;
        match json["outcome"].as_str().unwrap() {
            "rotated" => {
                resumed.assert_code(0);
                let new_id = json["new_key_id"].as_str().unwrap();
                assert_eq!(
                    keys,
                    vec![(s.app_key.access_key_id.clone(), "Inactive".into()), (new_id.to_string(), "Active".into())],
                    "crash {crash_after}"
                );
                assert!(std::fs::read_to_string(&env_path).unwrap().contains(new_id));
                let secret: serde_json::Value =
                    serde_json::from_str(&secret_current(&moto, &s.admin, "prod/app/aws").await).unwrap();
                assert_eq!(secret["AWS_ACCESS_KEY_ID"], new_id);
                assert_eq!(secret["db"], "postgres://app");
            }
            "rolled_back" => {
                resumed.assert_code(3);
                assert_eq!(
                    keys,
                    vec![(s.app_key.access_key_id.clone(), "Active".into())],
                    "crash {crash_after}: no orphan key"
                );
                assert_eq!(std::fs::read(&env_path).unwrap(), env_before, "crash {crash_after}: env file restored");
                assert_eq!(
                    secret_current(&moto, &s.admin, "prod/app/aws").await,
                    secret_before,
                    "crash {crash_after}: secret restored"
                );
                assert!(sts_check(&moto, &s.app_key).await.is_ok());
            }
            other => panic!("crash {crash_after}: resume ended {other}: {}", resumed.stderr),
        }
        let status = rekey(&moto, &s.admin, dir.path(), &["status"]).await;
        assert!(status.stdout.contains("no unfinished rotations"), "{}", status.stdout);
        // No copy of a secret is left beside the file: no backup, no temp file of a cut write.
        let copies: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("rekey"))
            .collect();
        assert!(copies.is_empty(), "crash {crash_after}: left behind: {copies:?}");
        outcomes.push(json["outcome"].as_str().unwrap().to_string());
        moto.set_auth(false).await;
        crash_after += 1;
    }
    // Early crashes roll back, late ones finish: both paths were exercised.
    assert!(outcomes.contains(&"rotated".to_string()) && outcomes.contains(&"rolled_back".to_string()), "{outcomes:?}");
}
