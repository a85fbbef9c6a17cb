//! Bad input and unsafe situations: exit 2, one line that names the problem and the fix, and
//! nothing changed in IAM, in the targets or in the journal.

mod support;

use support::*;

fn one_line(out: &Output) -> &str {
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let last = lines.last().copied().unwrap_or_default();
    assert!(last.starts_with("rekey: "), "the refusal is one rekey: line\n{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_exit_2_with_one_line_and_change_nothing() {
    let sc = Scenario::start().await;
    let (moto, s, dir) = (&sc.moto, &sc.seeded, &sc.dir);
    let env_path = sc.env_file();
    let env_target = format!("env:{}", env_path.display());
    let env_before = std::fs::read(&env_path).unwrap();
    let keys_before = keys_of(moto, &s.admin, &s.app_user).await;

    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--user".into(), "no-such-user".into(), "--target".into(), env_target.clone()],
            "no IAM user named \"no-such-user\"",
        ),
        (
            vec!["--user".into(), s.app_user.clone(), "--target".into(), "secretsmanager:prod/missing".into()],
            "prod/missing",
        ),
        (vec!["--user".into(), s.app_user.clone(), "--target".into(), "s3:bucket".into()], "unknown kind \"s3\""),
        (
            vec![
                "--user".into(),
                s.app_user.clone(),
                "--target".into(),
                format!("env:{}/nope.env", dir.path().display()),
            ],
            "nope.env",
        ),
        (
            vec![
                "--user".into(),
                s.app_user.clone(),
                "--target".into(),
                env_target.clone(),
                "--probe".into(),
                "ftp://x".into(),
            ],
            "probe URL",
        ),
        (
            vec![
                "--user".into(),
                s.app_user.clone(),
                "--target".into(),
                env_target.clone(),
                "--grace".into(),
                "soon".into(),
            ],
            "--grace",
        ),
    ];
    moto.set_auth(true).await;
    for (args, expect) in &cases {
        let mut full = vec!["rotate"];
        full.extend(args.iter().map(String::as_str));
        let out = rekey(moto, &s.admin, dir.path(), &full).await;
        out.assert_code(2);
        let line = one_line(&out);
        assert!(line.contains(expect), "{args:?}: {line}");
    }

    // An env file rekey cannot read (tests run as root, who reads any mode: a folder in its place
    // fails the same read).
    let unreadable = dir.path().join("unreadable.env");
    std::fs::create_dir(&unreadable).unwrap();
    let target = format!("env:{}", unreadable.display());
    let out = rekey(moto, &s.admin, dir.path(), &["rotate", "--user", &s.app_user, "--target", &target]).await;
    out.assert_code(2);
    assert!(one_line(&out).contains("unreadable.env"), "{}", out.stderr);

    // Rotating as the user being rotated.
    let out = rekey(moto, &s.app_key, dir.path(), &["rotate", "--user", &s.app_user, "--target", &env_target]).await;
    out.assert_code(2);
    assert!(one_line(&out).contains("running as app-integration-user"), "{}", out.stderr);

    // Two Active keys: both named, with their last use.
    moto.set_auth(false).await;
    let iam = aws_sdk_iam::Client::new(&moto.sdk_config(&s.admin));
    let second = iam.create_access_key().user_name(&s.app_user).send().await.unwrap();
    let second_id = second.access_key().unwrap().access_key_id().to_string();
    moto.set_auth(true).await;
    let out = rekey(
        moto,
        &s.admin,
        dir.path(),
        &["rotate", "--user", &s.app_user, "--target", &env_target, "--output", "json"],
    )
    .await;
    out.assert_code(2);
    let line = one_line(&out);
    assert!(line.contains(&s.app_key.access_key_id) && line.contains(&second_id) && line.contains("retire"), "{line}");
    assert_eq!(out.json()["outcome"], "refused");
    moto.set_auth(false).await;
    iam.delete_access_key().user_name(&s.app_user).access_key_id(&second_id).send().await.unwrap();

    assert_eq!(std::fs::read(&env_path).unwrap(), env_before);
    assert_eq!(keys_of(moto, &s.admin, &s.app_user).await, keys_before);
    assert!(journal_text(dir.path()).is_empty(), "no journal for refused runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_prints_the_plan_and_changes_nothing() {
    let sc = Scenario::start().await;
    let (moto, s) = (&sc.moto, &sc.seeded);
    let env_path = sc.env_file();
    let before = std::fs::read(&env_path).unwrap();
    let out = sc.rotate().target(format!("env:{}", env_path.display())).args(&["--dry-run"]).run().await;
    out.assert_code(0);
    assert!(out.stdout.contains("plan for app-integration-user"), "{}", out.stdout);
    assert!(out.stdout.contains(&s.app_key.access_key_id));
    assert!(out.stderr.contains("no --probe given"), "the missing probe is said loudly: {}", out.stderr);
    assert_eq!(std::fs::read(&env_path).unwrap(), before);
    assert_eq!(keys_of(moto, &s.admin, &s.app_user).await.len(), 1);
}
