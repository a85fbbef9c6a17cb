//! No copy of a secret outlives a rotation unnoticed: when the cleanup that drops the backup fails,
//! the journal stays open, `status` says so, no new rotation starts over it, and `resume` finishes
//! the cleanup. A probe URL's password is in no journal and no output. (Temp files and backups after
//! a crash at every record: `crash_resume.rs`; a Lambda backup version published before it was
//! journaled: the conformance suite.)

mod support;

use support::*;
use testbed::moto::{Moto, seed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_cleanup_keeps_the_journal_open_until_resume_finishes_it() {
    let moto = Moto::start();
    let s = seed(&moto).await;
    let dir = state_dir();
    let env_path = write_env_file(dir.path(), &s.app_key);
    let backup = dir.path().join(".app.env.rekey-backup");
    moto.set_auth(true).await;
    // Something takes the backup's place while the rotation runs, so that deleting it fails.
    let restart = format!("if [ \"$REKEY_ACTION\" = apply ]; then rm -f {b} && mkdir {b}; fi", b = backup.display());
    let target = format!("env:{}", env_path.display());
    let mut args = vec!["rotate", "--user", &s.app_user, "--target", &target, "--restart-cmd", &restart];
    args.extend(FAST);
    let out = rekey(&moto, &s.admin, dir.path(), &args).await;
    out.assert_code(0);
    assert!(out.stdout.contains("the cleanup of env:"), "{}", out.stdout);
    let line = out.stderr.lines().last().unwrap_or_default();
    assert!(line.contains("rotated, but") && line.contains(&format!("rekey resume --user {}", s.app_user)), "{line}");

    let status = rekey(&moto, &s.admin, dir.path(), &["status"]).await;
    assert!(status.stdout.contains("ended (rotated) but its cleanup did not finish"), "{}", status.stdout);
    let again = rekey(&moto, &s.admin, dir.path(), &args).await;
    again.assert_code(2);
    assert!(again.stderr.contains("rekey resume --user"), "{}", again.stderr);

    // Still in the way: resume fails the same way and keeps the journal.
    let resume = [&["resume", "--user", &s.app_user][..], FAST].concat();
    let out = rekey(&moto, &s.admin, dir.path(), &resume).await;
    out.assert_code(0);
    assert!(out.stdout.contains("the cleanup of env:"), "{}", out.stdout);

    std::fs::remove_dir(&backup).unwrap();
    let out = rekey(&moto, &s.admin, dir.path(), &[&resume[..], &["--output", "json"]].concat()).await;
    out.assert_code(0);
    let json = out.json();
    assert_eq!(json["outcome"], "rotated");
    assert!(json.get("left").is_none(), "{json:#}");
    assert!(json["journal"].as_str().unwrap().contains("/history/"), "{json:#}");
    let status = rekey(&moto, &s.admin, dir.path(), &["status"]).await;
    assert!(status.stdout.contains("no unfinished rotations"), "{}", status.stdout);
    let keys = keys_of(&moto, &s.admin, &s.app_user).await;
    assert_eq!(keys[0], (s.app_key.access_key_id.clone(), "Inactive".into()), "the rotation itself was not undone");
    moto.set_auth(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_password_reaches_no_journal_and_no_output() {
    let moto = Moto::start();
    let s = seed(&moto).await;
    let dir = state_dir();
    let env_path = write_env_file(dir.path(), &s.app_key);
    moto.set_auth(true).await;
    let password = "hunter2-probe-password";
    let probe = dead_probe_url().replace("http://", &format!("http://ops:{password}@"));
    let target = format!("env:{}", env_path.display());
    let mut args =
        vec!["rotate", "--user", &s.app_user, "--target", &target, "--probe", &probe, "--probe-timeout", "2s"];
    args.extend(FAST);
    let text = rekey(&moto, &s.admin, dir.path(), &args).await;
    text.assert_code(3);
    assert!(text.stderr.contains("http://ops:redacted@"), "the probe is named: {}", text.stderr);
    args.extend(["--output", "json"]);
    let json = rekey(&moto, &s.admin, dir.path(), &args).await;
    json.assert_code(3);
    for out in [&text, &json] {
        assert!(!out.stdout.contains(password) && !out.stderr.contains(password), "{}\n{}", out.stdout, out.stderr);
    }
    let journals = journal_text(dir.path());
    assert!(journals.contains("http://ops:redacted@") && !journals.contains(password), "{journals}");
    moto.set_auth(false).await;
}
