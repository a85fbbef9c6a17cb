//! End-to-end demo: a live app reads its key from a dotenv file under steady load, auth
//! enforcement is on, and `rekey rotate` replaces the key. Success means the rotation
//! finished, no app request failed, the old key is rejected and the new one works.
//!
//! Usage: rekey-demo [--rekey PATH] [--keep]

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use testbed::app::{self, CredentialSource};
use testbed::{Creds, Moto, load, seed};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

const RPS: u32 = 25;
const REKEY_TIMEOUT: Duration = Duration::from_secs(540);

struct Args {
    rekey: PathBuf,
    keep: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut rekey = None;
    let mut keep = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rekey" => rekey = Some(PathBuf::from(args.next().ok_or("--rekey needs a path")?)),
            "--keep" => keep = true,
            "-h" | "--help" => {
                println!("usage: rekey-demo [--rekey PATH] [--keep]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let rekey = match rekey {
        Some(path) => path,
        None => {
            std::env::current_exe().map_err(|e| format!("cannot locate own executable: {e}"))?.with_file_name("rekey")
        }
    };
    Ok(Args { rekey, keep })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("rekey-demo: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args).await {
        Ok(()) => {
            println!("DEMO PASSED");
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for p in &problems {
                eprintln!("FAILED: {p}");
            }
            println!("DEMO FAILED ({} problem(s))", problems.len());
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<(), Vec<String>> {
    if !args.rekey.exists() {
        return Err(vec![format!(
            "rekey binary not found at {} (build it with `cargo build --bins`, or pass --rekey PATH)",
            args.rekey.display()
        )]);
    }
    let tmp = tempfile::Builder::new()
        .prefix("rekey-demo-")
        .tempdir()
        .map_err(|e| vec![format!("cannot create a temp dir: {e}")])?;
    let root = if args.keep { tmp.keep() } else { tmp.path().to_path_buf() };
    let result = scenario(args, &root).await;
    if args.keep {
        println!("kept demo files in {}", root.display());
    }
    result
}

async fn scenario(args: &Args, root: &Path) -> Result<(), Vec<String>> {
    let one = |e: String| vec![e];
    println!("starting moto...");
    let moto = Moto::start();
    let seeded = seed(&moto).await;
    println!("moto at {}; app user {} has key {}", moto.endpoint(), seeded.app_user, seeded.app_key.access_key_id);

    let demo_dir = root.join("demo");
    let state_dir = root.join("state");
    for dir in [&demo_dir, &state_dir] {
        std::fs::create_dir_all(dir).map_err(|e| one(format!("cannot create {}: {e}", dir.display())))?;
    }
    let env_file = demo_dir.join("app.env");
    std::fs::write(
        &env_file,
        format!(
            "# written by rekey-demo\nAWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY={}\n",
            seeded.app_key.access_key_id, seeded.app_key.secret_access_key
        ),
    )
    .map_err(|e| one(format!("cannot write {}: {e}", env_file.display())))?;

    let app = app::start(&moto, CredentialSource::EnvFile(env_file.clone())).await;
    let probe = format!("{}/health", app.url());
    moto.set_auth(true).await;
    check_app(&probe).await.map_err(one)?;
    println!("app at {probe} is healthy with auth on; starting load at {RPS} req/s");
    let load = load::start(probe.clone(), RPS);
    // Let the load establish a baseline before the rotation starts.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let rekey = run_rekey(args, &moto, &seeded.admin, &env_file, &probe, &state_dir).await;
    // A little traffic after the switch shows the app keeps working on the new key.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = load.stop().await;

    let mut problems = Vec::new();
    let summary = match rekey {
        Ok(summary) => Some(summary),
        Err(e) => {
            problems.push(e);
            None
        }
    };
    let field =
        |name: &str| summary.as_ref().and_then(|s| s.get(name)).and_then(|v| v.as_str()).unwrap_or("?").to_string();
    let (outcome, old_key_id, new_key_id) = (field("outcome"), field("old_key_id"), field("new_key_id"));
    println!();
    println!("outcome:    {outcome}");
    println!("old key id: {old_key_id}");
    println!("new key id: {new_key_id}");
    println!("failed app requests: {} of {}", report.failed, report.total);
    for failure in &report.first_failures {
        println!("  {failure}");
    }

    if report.total == 0 {
        problems.push("the load generator completed no request".to_string());
    }
    if report.failed > 0 {
        problems.push(format!("{} of {} app requests failed during the rotation", report.failed, report.total));
    }
    if old_key_id != "?" && old_key_id != seeded.app_key.access_key_id {
        problems.push(format!(
            "rekey reports old key {old_key_id}, but the app's key was {}",
            seeded.app_key.access_key_id
        ));
    }

    match caller_arn(&moto, &seeded.app_key).await {
        Ok(arn) => problems.push(format!("the old key {} still works (as {arn})", seeded.app_key.access_key_id)),
        Err(e) => println!("old key rejected: {e}"),
    }
    match std::fs::read_to_string(&env_file).map_err(|e| e.to_string()).and_then(|text| app::parse_dotenv(&text)) {
        Ok(new_key) => {
            if new_key.access_key_id == seeded.app_key.access_key_id {
                problems.push(format!("{} still holds the old key", env_file.display()));
            } else if new_key_id != "?" && new_key.access_key_id != new_key_id {
                problems.push(format!(
                    "{} holds {}, rekey reports {new_key_id}",
                    env_file.display(),
                    new_key.access_key_id
                ));
            }
            match caller_arn(&moto, &new_key).await {
                Ok(arn) => println!("new key {} works as {arn}", new_key.access_key_id),
                Err(e) => problems.push(format!("the new key {} does not work: {e}", new_key.access_key_id)),
            }
        }
        Err(e) => problems.push(format!("cannot read the new key back: {e}")),
    }
    if let Err(e) = check_app(&probe).await {
        problems.push(format!("after the rotation: {e}"));
    }

    if problems.is_empty() { Ok(()) } else { Err(problems) }
}

/// Runs `rekey rotate`, streaming its stderr, and returns its JSON summary.
async fn run_rekey(
    args: &Args,
    moto: &Moto,
    admin: &Creds,
    env_file: &Path,
    probe: &str,
    state_dir: &Path,
) -> Result<serde_json::Value, String> {
    let mut cmd = tokio::process::Command::new(&args.rekey);
    cmd.arg("rotate")
        .args(["--user", testbed::moto::APP_USER])
        .arg("--target")
        .arg(format!("env:{}", env_file.display()))
        .args(["--probe", probe])
        .arg("--state-dir")
        .arg(state_dir)
        .args(["--output", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    moto.configure_command(cmd.as_std_mut(), admin);
    println!("running {} rotate ...", args.rekey.display());
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {}: {e}", args.rekey.display()))?;

    let stderr = child.stderr.take();
    let echo = tokio::spawn(async move {
        let Some(stderr) = stderr else { return };
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("  rekey | {line}");
        }
    });
    let mut stdout = child.stdout.take();
    let collect = tokio::spawn(async move {
        let mut text = String::new();
        if let Some(out) = stdout.as_mut() {
            let _ = out.read_to_string(&mut text).await;
        }
        text
    });

    let status = match tokio::time::timeout(REKEY_TIMEOUT, child.wait()).await {
        Ok(status) => status.map_err(|e| format!("waiting for rekey: {e}"))?,
        Err(_) => {
            let _ = child.kill().await;
            return Err(format!("rekey did not finish within {REKEY_TIMEOUT:?}"));
        }
    };
    let _ = echo.await;
    let stdout = collect.await.unwrap_or_default();
    let summary = parse_summary(&stdout);
    if !status.success() {
        return Err(format!("rekey exited with {status}; stdout: {}", stdout.trim()));
    }
    summary.ok_or_else(|| format!("rekey printed no JSON summary; stdout: {}", stdout.trim()))
}

/// The whole stdout as JSON, or else its last line that is a JSON object.
fn parse_summary(stdout: &str) -> Option<serde_json::Value> {
    if let Ok(v @ serde_json::Value::Object(_)) = serde_json::from_str(stdout.trim()) {
        return Some(v);
    }
    stdout
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .find(|v| v.is_object())
}

async fn caller_arn(moto: &Moto, creds: &Creds) -> Result<String, String> {
    let sts = aws_sdk_sts::Client::new(&moto.sdk_config(creds));
    match sts.get_caller_identity().send().await {
        Ok(out) => Ok(out.arn().unwrap_or_default().to_string()),
        Err(e) => Err(
            match e.as_service_error().and_then(|s| {
                use aws_sdk_sts::error::ProvideErrorMetadata;
                s.code().map(str::to_string)
            }) {
                Some(code) => code,
                None => aws_sdk_sts::error::DisplayErrorContext(&e).to_string(),
            },
        ),
    }
}

async fn check_app(url: &str) -> Result<(), String> {
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| format!("app at {url} unreachable: {e}"))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if status.is_success() { Ok(()) } else { Err(format!("app at {url} answered {status}: {}", body.trim())) }
}
