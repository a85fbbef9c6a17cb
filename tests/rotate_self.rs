//! `rekey rotate --self`: a developer rotates the key in their own credentials profile, signed by
//! that key alone under the self-service policy of `deploy/iam-policy-self.json`, which the
//! emulator evaluates with `${aws:username}` (launcher patch 10).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use support::*;
use testbed::moto::{Creds, Moto, seed};

const DEV: &str = "dev-alice";

/// Creates `dev-alice` with the repository's self-service policy and one key.
async fn dev_user(moto: &Moto, admin: &Creds) -> Creds {
    let iam = aws_sdk_iam::Client::new(&moto.sdk_config(admin));
    iam.create_user().user_name(DEV).send().await.unwrap();
    let policy = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/iam-policy-self.json")).unwrap();
    iam.put_user_policy().user_name(DEV).policy_name("self-service").policy_document(policy).send().await.unwrap();
    let key = iam.create_access_key().user_name(DEV).send().await.unwrap();
    let key = key.access_key().unwrap();
    Creds::new(key.access_key_id(), key.secret_access_key())
}

/// A credentials file as people keep them: comments, two profiles, extra settings; mode 0600.
fn credentials_file(dir: &Path, dev: &Creds, other: &Creds) -> PathBuf {
    let path = dir.join("credentials");
    let text = format!(
        "# my keys\n[default]\naws_access_key_id = {}\naws_secret_access_key = {}\nregion = us-east-1\n\n; the other account\n[ops]\naws_access_key_id={}\naws_secret_access_key={}\n",
        dev.access_key_id, dev.secret_access_key, other.access_key_id, other.secret_access_key
    );
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Runs rekey with credentials from the file only (no key in the environment), as a developer does.
async fn rekey_from_profile(moto: &Moto, creds_file: &Path, state: &Path, args: &[&str]) -> Output {
    rekey_from_profile_env(moto, creds_file, state, args, &[]).await
}

async fn rekey_from_profile_env(
    moto: &Moto,
    creds_file: &Path,
    state: &Path,
    args: &[&str],
    extra_env: &[(&str, &str)],
) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rekey"));
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in moto.env_for(&Creds::new("unused", "unused")) {
        if !k.starts_with("AWS_ACCESS_KEY_ID") && !k.starts_with("AWS_SECRET_ACCESS_KEY") {
            cmd.env(k, v);
        }
    }
    cmd.env("AWS_SHARED_CREDENTIALS_FILE", creds_file).env("HOME", state).envs(extra_env.iter().copied());
    cmd.arg("--state-dir").arg(state).args(args).stdin(std::process::Stdio::null());
    let out = cmd.output().await.expect("rekey runs");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The key `[default]` holds now.
fn default_key(path: &Path) -> Creds {
    let text = std::fs::read_to_string(path).unwrap();
    let section: Vec<&str> = text.split("[ops]").next().unwrap().lines().collect();
    let value = |name: &str| {
        section
            .iter()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim_start_matches([' ', '=']).trim().to_string())
            .unwrap()
    };
    Creds::new(value("aws_access_key_id"), value("aws_secret_access_key"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_developer_rotates_the_key_in_their_own_profile() {
    let moto = Moto::start();
    let s = seed(&moto).await;
    let dev = dev_user(&moto, &s.admin).await;
    let dir = state_dir();
    let file = credentials_file(dir.path(), &dev, &s.app_key);
    let before = std::fs::read_to_string(&file).unwrap();
    moto.set_auth(true).await;

    let mut args = vec!["rotate", "--self", "--output", "json"];
    args.extend(FAST);
    let out = rekey_from_profile(&moto, &file, dir.path(), &args).await;
    out.assert_code(0);
    let json = out.json();
    assert_eq!(json["outcome"], "rotated");
    assert_eq!(json["user"], DEV);
    assert_eq!(json["old_key_id"], dev.access_key_id.as_str());

    // The file holds a working new key; every other byte, and the mode, are as they were.
    let new = default_key(&file);
    assert_eq!(json["new_key_id"], new.access_key_id.as_str());
    let after = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        after,
        before.replace(&dev.access_key_id, &new.access_key_id).replace(&dev.secret_access_key, &new.secret_access_key)
    );
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(sts_check(&moto, &new).await.unwrap().ends_with(&format!(":user/{DEV}")));
    assert_eq!(sts_check(&moto, &dev).await, Err("InvalidClientTokenId".into()), "the old key is off");
    moto.set_auth(false).await;
    let keys = keys_of(&moto, &s.admin, DEV).await;
    assert!(keys.contains(&(dev.access_key_id.clone(), "Inactive".into())), "{keys:?}");
    assert_secret_absent(&new.secret_access_key, &[&out], dir.path());

    // Again with --delete-old: the new key signs the deletion of the one it replaces.
    moto.set_auth(true).await;
    let mut args = vec!["rotate", "--self", "--delete-old", "--output", "json"];
    args.extend(FAST);
    // The previous rotation left an Inactive key: it is deleted to free the slot, as for any user.
    let out = rekey_from_profile(&moto, &file, dir.path(), &args).await;
    out.assert_code(0);
    let newer = default_key(&file);
    moto.set_auth(false).await;
    assert_eq!(keys_of(&moto, &s.admin, DEV).await, vec![(newer.access_key_id.clone(), "Active".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_self_service_policy_does_not_reach_another_user() {
    let moto = Moto::start();
    let s = seed(&moto).await;
    let dev = dev_user(&moto, &s.admin).await;
    let dir = state_dir();
    let file = credentials_file(dir.path(), &dev, &s.app_key);
    let env = write_env_file(dir.path(), &s.app_key);
    moto.set_auth(true).await;
    let target = format!("env:{}", env.display());
    let mut args = vec!["rotate", "--user", &s.app_user, "--target", &target];
    args.extend(FAST);
    let out = rekey_from_profile(&moto, &file, dir.path(), &args).await;
    out.assert_code(2);
    assert!(out.stderr.contains("not authorized to perform: iam:ListAccessKeys"), "{}", out.stderr);
    moto.set_auth(false).await;
    assert_eq!(keys_of(&moto, &s.admin, &s.app_user).await.len(), 1, "nothing created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_the_new_key_exists_rolls_back_with_the_old_key() {
    let moto = Moto::start();
    let s = seed(&moto).await;
    let dev = dev_user(&moto, &s.admin).await;
    let dir = state_dir();
    let file = credentials_file(dir.path(), &dev, &s.app_key);
    let before = std::fs::read(&file).unwrap();
    moto.set_auth(true).await;
    let probe = dead_probe_url();
    let mut args = vec!["rotate", "--self", "--probe", &probe, "--probe-timeout", "2s", "--output", "json"];
    args.extend(FAST);
    let out = rekey_from_profile(&moto, &file, dir.path(), &args).await;
    out.assert_code(3);
    assert_eq!(out.json()["outcome"], "rolled_back");
    assert_eq!(std::fs::read(&file).unwrap(), before, "the file is restored byte for byte");
    assert!(sts_check(&moto, &dev).await.is_ok(), "the old key still works");
    moto.set_auth(false).await;
    assert_eq!(keys_of(&moto, &s.admin, DEV).await, vec![(dev.access_key_id.clone(), "Active".to_string())]);
}

/// Journal record 11 is the target's apply done (the file holds the new key, the old one is
/// Active); record 13 is its consumers step done, after which the rotation can be finished. The
/// test checks the last journaled event, so a renumbering fails here loudly rather than testing
/// another crash point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_file_is_written_is_finished_or_undone_by_resume_self() {
    let moto = Moto::start();
    for (crash_after, outcome, last_event) in [("13", "rotated", "consumers"), ("11", "rolled_back", "apply")] {
        let s = seed(&moto).await;
        let dev = dev_user(&moto, &s.admin).await;
        let dir = state_dir();
        let file = credentials_file(dir.path(), &dev, &s.app_key);
        let before = std::fs::read(&file).unwrap();
        moto.set_auth(true).await;
        let mut args = vec!["rotate", "--self"];
        args.extend(FAST);
        let out =
            rekey_from_profile_env(&moto, &file, dir.path(), &args, &[("REKEY_TEST_CRASH_AFTER", crash_after)]).await;
        assert_ne!(out.code, 0, "the process aborted: {}", out.stderr);
        let journal = journal_text(dir.path());
        let last = journal.lines().last().unwrap_or_default();
        assert!(
            last.contains(&format!("\"{last_event}\"")) && last.contains("done"),
            "record {crash_after} is not the {last_event} step done: {last}"
        );
        let holding = default_key(&file);
        assert_ne!(holding.access_key_id, dev.access_key_id, "the file was written before record {crash_after}");

        // Signed by the new key, the only one the file now holds.
        let resume = [&["resume", "--self", "--output", "json"][..], FAST].concat();
        let out = rekey_from_profile(&moto, &file, dir.path(), &resume).await;
        assert_eq!(out.json()["outcome"], outcome, "after a crash at record {crash_after}: {}", out.stderr);
        moto.set_auth(false).await;
        let keys = keys_of(&moto, &s.admin, DEV).await;
        if outcome == "rotated" {
            out.assert_code(0);
            assert!(sts_check(&moto, &holding).await.is_ok());
            assert!(keys.contains(&(dev.access_key_id.clone(), "Inactive".into())), "{keys:?}");
            assert!(keys.contains(&(holding.access_key_id.clone(), "Active".into())), "{keys:?}");
        } else {
            out.assert_code(3);
            assert_eq!(std::fs::read(&file).unwrap(), before, "the file is restored byte for byte");
            assert_eq!(keys, vec![(dev.access_key_id.clone(), "Active".to_string())]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_that_cannot_rotate_themselves_are_refused_with_one_line() {
    let moto = Moto::start();
    let s = seed(&moto).await;
    let dev = dev_user(&moto, &s.admin).await;
    let dir = state_dir();

    // Environment variables: nowhere to write the new key.
    let out = rekey(&moto, &dev, dir.path(), &["rotate", "--self"]).await;
    out.assert_code(2);
    assert!(out.stderr.contains("environment variables"), "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);

    // Session credentials: no access key to rotate.
    let sts = aws_sdk_sts::Client::new(&moto.sdk_config(&dev));
    let session = sts.get_session_token().send().await.unwrap();
    let c = session.credentials().unwrap();
    let session_file = dir.path().join("session");
    std::fs::write(
        &session_file,
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\naws_session_token = {}\n",
            c.access_key_id(),
            c.secret_access_key(),
            c.session_token()
        ),
    )
    .unwrap();
    let out = rekey_from_profile(&moto, &session_file, dir.path(), &["rotate", "--self"]).await;
    out.assert_code(2);
    assert!(out.stderr.contains("temporary credentials"), "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);

    // A quarantined key: CreateAccessKey is denied to it; say so and point to `incident`.
    let iam = aws_sdk_iam::Client::new(&moto.sdk_config(&s.admin));
    let deny = serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "iam:CreateAccessKey", "Resource": "*"}]});
    let p = iam
        .create_policy()
        .policy_name("AWSCompromisedKeyQuarantineV2")
        .policy_document(deny.to_string())
        .send()
        .await
        .unwrap();
    iam.attach_user_policy().user_name(DEV).policy_arn(p.policy().unwrap().arn().unwrap()).send().await.unwrap();
    let file = credentials_file(dir.path(), &dev, &s.app_key);
    moto.set_auth(true).await;
    let out = rekey_from_profile(&moto, &file, dir.path(), &["rotate", "--self"]).await;
    out.assert_code(2);
    assert!(
        out.stderr.contains("AWSCompromisedKeyQuarantineV2") && out.stderr.contains("rekey incident"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    moto.set_auth(false).await;
    assert_eq!(keys_of(&moto, &s.admin, DEV).await.len(), 1, "nothing created");
}
