//! What the integration tests share: running the real `rekey` binary against the emulator, and
//! the checks every rotation test makes (the secret never leaks, the old key is really off).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use testbed::moto::{Creds, Moto};

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("stdout is not one JSON document ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr)
        })
    }

    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "exit code\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
}

/// Run `rekey` as the given principal, with journals in `state_dir`.
pub async fn rekey(moto: &Moto, creds: &Creds, state_dir: &Path, args: &[&str]) -> Output {
    rekey_env(moto, creds, state_dir, args, &[]).await
}

pub async fn rekey_env(
    moto: &Moto,
    creds: &Creds,
    state_dir: &Path,
    args: &[&str],
    extra_env: &[(&str, &str)],
) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rekey"));
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in moto.env_for(creds) {
        cmd.env(k, v);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.arg("--state-dir").arg(state_dir).args(args).stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .expect("rekey finished within 5 minutes")
        .expect("rekey binary runs");
    Output {
        // A process killed by a signal (the crash tests abort on purpose) has no code.
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Fast waits for the emulator, where a key works at once.
pub const FAST: &[&str] = &["--verify-successes", "2", "--probe-successes", "2", "--check-interval", "200ms"];

/// Every file under the state folder (journals, active and archived).
pub fn journal_text(state_dir: &Path) -> String {
    let mut text = String::new();
    for dir in ["active", "history"] {
        if let Ok(entries) = std::fs::read_dir(state_dir.join(dir)) {
            for e in entries.flatten() {
                text.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    text
}

/// The new secret must appear nowhere but in the targets.
pub fn assert_secret_absent(secret: &str, outputs: &[&Output], state_dir: &Path) {
    assert!(secret.len() >= 20, "a real secret to look for");
    for (i, o) in outputs.iter().enumerate() {
        assert!(!o.stdout.contains(secret), "the new secret is in the stdout of run {i}");
        assert!(!o.stderr.contains(secret), "the new secret is in the stderr of run {i}");
    }
    assert!(!journal_text(state_dir).contains(secret), "the new secret is in the journal");
}

pub async fn sts_check(moto: &Moto, creds: &Creds) -> Result<String, String> {
    use aws_sdk_sts::error::ProvideErrorMetadata;
    let sts = aws_sdk_sts::Client::new(&moto.sdk_config(creds));
    match sts.get_caller_identity().send().await {
        Ok(o) => Ok(o.arn().unwrap_or_default().to_string()),
        Err(e) => Err(e.code().unwrap_or("no code").to_string()),
    }
}

/// The user's keys and their status, as IAM has them now.
pub async fn keys_of(moto: &Moto, admin: &Creds, user: &str) -> Vec<(String, String)> {
    let iam = aws_sdk_iam::Client::new(&moto.sdk_config(admin));
    let out = iam.list_access_keys().user_name(user).send().await.expect("ListAccessKeys");
    out.access_key_metadata()
        .iter()
        .map(|k| {
            (
                k.access_key_id().unwrap_or_default().to_string(),
                k.status().map(|s| s.as_str().to_string()).unwrap_or_default(),
            )
        })
        .collect()
}

/// A health URL nothing listens on: a probe that can never pass.
pub fn dead_probe_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    format!("http://{}/health", listener.local_addr().expect("bound"))
}

pub fn state_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

pub fn write_env_file(dir: &Path, creds: &Creds) -> PathBuf {
    let path = dir.join("app.env");
    let text = format!(
        "# the app's settings\nexport APP_MODE=production\nAWS_ACCESS_KEY_ID=\"{}\"\nAWS_SECRET_ACCESS_KEY='{}'\nAWS_REGION=us-east-1 # where it runs\n",
        creds.access_key_id, creds.secret_access_key
    );
    std::fs::write(&path, text).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    path
}

/// A zip holding one file, stored uncompressed: enough for Lambda's CreateFunction on the emulator.
pub fn tiny_zip(name: &str, content: &[u8]) -> Vec<u8> {
    let mut crc = flate2::Crc::new();
    crc.update(content);
    let (crc, size, name_len) = (crc.sum(), content.len() as u32, name.len() as u16);
    let mut local = Vec::new();
    local.extend(0x0403_4b50u32.to_le_bytes());
    local.extend([20u16, 0, 0, 0, 0].iter().flat_map(|v| v.to_le_bytes()));
    local.extend(crc.to_le_bytes());
    local.extend(size.to_le_bytes());
    local.extend(size.to_le_bytes());
    local.extend(name_len.to_le_bytes());
    local.extend(0u16.to_le_bytes());
    local.extend(name.as_bytes());
    local.extend(content);
    let mut central = Vec::new();
    central.extend(0x0201_4b50u32.to_le_bytes());
    central.extend([20u16, 20, 0, 0, 0, 0].iter().flat_map(|v| v.to_le_bytes()));
    central.extend(crc.to_le_bytes());
    central.extend(size.to_le_bytes());
    central.extend(size.to_le_bytes());
    central.extend(name_len.to_le_bytes());
    central.extend([0u16, 0, 0, 0].iter().flat_map(|v| v.to_le_bytes()));
    central.extend(0u32.to_le_bytes());
    central.extend(0u32.to_le_bytes());
    central.extend(name.as_bytes());
    let mut zip = local.clone();
    zip.extend(&central);
    zip.extend(0x0605_4b50u32.to_le_bytes());
    zip.extend([0u16, 0, 1, 1].iter().flat_map(|v| v.to_le_bytes()));
    zip.extend((central.len() as u32).to_le_bytes());
    zip.extend((local.len() as u32).to_le_bytes());
    zip.extend(0u16.to_le_bytes());
    zip
}
