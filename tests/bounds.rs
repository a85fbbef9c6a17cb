//! Nothing rekey waits on can hold it for ever, and what it starts cannot outlive its say: an AWS
//! endpoint and a health URL that accept the connection and never answer, a restart command whose
//! child would outlive a plain kill, a command's environment, and a credentials failure that must
//! be one line.
//!
//! No assertion is on elapsed time: a call that is not bounded hangs, and the run's own five-minute
//! limit (`support::rekey_env`) turns the hang into a failure.

mod support;

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use support::*;
use testbed::moto::{Moto, seed};

/// `http://<addr>` of a server that accepts every connection, reads what it is sent, and never
/// answers: the hung endpoint a network partition or an overloaded proxy looks like.
fn silent_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    let url = format!("http://{}", listener.local_addr().expect("bound"));
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 4096];
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    url
}

/// Runs `rekey` with exactly `env` (and PATH): no developer profile, no instance metadata.
async fn rekey_with(env: &[(String, String)], args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rekey"));
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in [
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
        ("AWS_REGION", "us-east-1"),
    ] {
        cmd.env(k, v);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v))).args(args).stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .expect("rekey finished within 5 minutes")
        .expect("rekey binary runs");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The one line an error must be.
fn one_line(out: &Output) -> &str {
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got:\n{}", out.stderr);
    lines[0]
}

#[tokio::test]
async fn a_credentials_failure_is_one_line() {
    let dir = state_dir();
    let state = dir.path().to_str().unwrap();
    let args = ["--state-dir", state, "rotate", "--user", "app", "--target", "env:/nonexistent/app.env"];

    // A profile that does not exist (the config file is empty).
    let mut with_profile = args.to_vec();
    with_profile.extend(["--profile", "ghost"]);
    let out = rekey_with(&[], &with_profile).await;
    out.assert_code(2);
    let line = one_line(&out);
    assert!(line.starts_with("rekey: ") && line.contains("no providers in chain provided credentials"), "{line}");

    // Keys, but an STS endpoint nothing listens on.
    let closed = dead_probe_url().trim_end_matches("/health").to_string();
    let env = pairs(&[
        ("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        ("AWS_ENDPOINT_URL", &closed),
    ]);
    let out = rekey_with(&env, &args).await;
    out.assert_code(2);
    let line = one_line(&out);
    assert!(line.contains("cannot tell who rekey runs as") && line.contains("check your AWS credentials"), "{line}");
    assert!(line.len() < 600, "a line, not a dump: {line}");
}

#[tokio::test]
async fn an_aws_endpoint_that_never_answers_fails_the_call() {
    let silent = silent_server();
    let dir = state_dir();
    let state = dir.path().to_str().unwrap();
    let env = pairs(&[
        ("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        ("AWS_ENDPOINT_URL", &silent),
    ]);
    let args =
        ["--state-dir", state, "--aws-timeout", "1s", "rotate", "--user", "app", "--target", "env:/nonexistent/x"];
    let out = rekey_with(&env, &args).await;
    out.assert_code(2);
    let line = one_line(&out).to_lowercase();
    assert!(line.contains("cannot tell who rekey runs as") && line.contains("time"), "{line}");

    // A zero bound is bad input, not "no bound".
    let mut zero = args.to_vec();
    zero[3] = "0s";
    let out = rekey_with(&env, &zero).await;
    out.assert_code(2);
    assert!(one_line(&out).contains("--aws-timeout"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_whose_service_never_answers_is_refused_before_any_change() {
    let moto = Moto::start();
    let s = seed(&moto).await;
    let sm = aws_sdk_secretsmanager::Client::new(&moto.sdk_config(&s.admin));
    let value = serde_json::json!({"AWS_ACCESS_KEY_ID": s.app_key.access_key_id, "AWS_SECRET_ACCESS_KEY": "x"});
    sm.create_secret().name("prod/app/aws").secret_string(value.to_string()).send().await.unwrap();
    let silent = silent_server();
    let dir = state_dir();
    let args = ["--aws-timeout", "1s", "rotate", "--user", &s.app_user, "--target", "secretsmanager:prod/app/aws"];
    let out = rekey_env(&moto, &s.admin, dir.path(), &args, &[("AWS_ENDPOINT_URL_SECRETS_MANAGER", &silent)]).await;
    out.assert_code(2);
    let line = one_line(&out).to_lowercase();
    assert!(line.contains("secretsmanager:prod/app/aws") && line.contains("time"), "{line}");
    assert_eq!(keys_of(&moto, &s.admin, &s.app_user).await.len(), 1, "no key was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_that_never_answers_rolls_back_at_its_deadline() {
    let moto = Moto::start();
    let s = seed(&moto).await;
    let dir = state_dir();
    let env_path = write_env_file(dir.path(), &s.app_key);
    let before = std::fs::read(&env_path).unwrap();
    moto.set_auth(true).await;
    let target = format!("env:{}", env_path.display());
    let probe = format!("{}/health", silent_server());
    let mut args =
        vec!["rotate", "--user", &s.app_user, "--target", &target, "--probe", &probe, "--probe-timeout", "3s"];
    args.extend(FAST);
    let out = rekey(&moto, &s.admin, dir.path(), &args).await;
    out.assert_code(3);
    assert!(out.stderr.contains(&probe) && out.stderr.contains("not healthy"), "{}", out.stderr);
    assert_eq!(std::fs::read(&env_path).unwrap(), before, "the file is restored");
    assert_eq!(keys_of(&moto, &s.admin, &s.app_user).await, vec![(s.app_key.access_key_id.clone(), "Active".into())]);
    moto.set_auth(false).await;
}

/// Whether `pid` is a live process (a zombie waiting to be reaped is not).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

async fn wait_for(path: &Path, what: &str) -> String {
    for _ in 0..1200 {
        if let Ok(text) = std::fs::read_to_string(path)
            && !text.trim().is_empty()
        {
            return text.trim().to_string();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} never appeared at {}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_rekey_kills_the_restart_command_and_its_children_and_rolls_back() {
    let moto = Moto::start();
    let s = seed(&moto).await;
    let dir = state_dir();
    let env_path = write_env_file(dir.path(), &s.app_key);
    let before = std::fs::read(&env_path).unwrap();
    moto.set_auth(true).await;
    let d = dir.path().display();
    // On apply the command starts a child and waits for it: killing `sh` alone would leave the
    // child running for five minutes. Each run records its environment.
    let restart = format!(
        "env > {d}/env-$REKEY_ACTION; if [ \"$REKEY_ACTION\" = apply ]; then sleep 300 & echo $! > {d}/child; wait; fi"
    );
    let target = format!("env:{}", env_path.display());
    let mut args = vec!["rotate", "--user", &s.app_user, "--target", &target, "--restart-cmd", &restart];
    args.extend(FAST);

    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rekey"));
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd.envs(moto.env_for(&s.admin));
    // rekey's own credentials, as a container or a CI runner would give them.
    cmd.env("AWS_ROLE_SESSION_NAME", "rekey-admin-session").env("AWS_CONTAINER_AUTHORIZATION_TOKEN", "admin-token");
    cmd.arg("--state-dir").arg(dir.path()).args(&args);
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("rekey starts");
    let rekey_pid = child.id().expect("running") as i32;

    let grandchild = wait_for(&dir.path().join("child"), "the restart command's child").await;
    assert!(alive(&grandchild));
    // What Ctrl-C or `docker stop` does. (Ctrl-C in a terminal signals the foreground process
    // group, which the command is no longer part of: rekey alone decides.)
    // SAFETY: kill sends a signal to the rekey process this test started.
    assert_eq!(unsafe { libc::kill(rekey_pid, libc::SIGTERM) }, 0);
    let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .expect("rekey stopped within 5 minutes")
        .expect("rekey ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "rolled back\n{stderr}");
    for _ in 0..50 {
        if !alive(&grandchild) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!alive(&grandchild), "the restart command's child outlived rekey giving up on it");
    assert_eq!(std::fs::read(&env_path).unwrap(), before, "the file is restored");
    assert_eq!(keys_of(&moto, &s.admin, &s.app_user).await, vec![(s.app_key.access_key_id.clone(), "Active".into())]);

    for action in ["apply", "rollback"] {
        let env = std::fs::read_to_string(dir.path().join(format!("env-{action}"))).unwrap();
        assert!(env.contains(&format!("REKEY_ACTION={action}")), "{env}");
        for own in [
            s.admin.access_key_id.as_str(),
            s.admin.secret_access_key.as_str(),
            "AWS_ROLE_SESSION_NAME",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        ] {
            assert!(!env.contains(own), "the {action} command saw rekey's own credentials ({own})");
        }
    }
    moto.set_auth(false).await;
}
