//! What the integration tests share: running the real `rekey` binary against the emulator, the
//! checks every rotation test makes (the secret never leaks, the old key is really off), and
//! [`Scenario`], the world a rotation test starts from, so each test reads as what it seeds, what it
//! runs and what it checks.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use testbed::app::App;
use testbed::load;
use testbed::moto::{Creds, Moto, MotoOptions, Seeded, seed};

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
    let mut cmd = rekey_command(moto, creds, state_dir, args, extra_env);
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

/// The `rekey` process [`rekey_env`] runs: nothing inherited but PATH, the emulator's endpoint and
/// `creds` as the only AWS configuration.
pub fn rekey_command(
    moto: &Moto,
    creds: &Creds,
    state_dir: &Path,
    args: &[&str],
    extra_env: &[(&str, &str)],
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rekey"));
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in moto.env_for(creds) {
        cmd.env(k, v);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.arg("--state-dir").arg(state_dir).args(args).stdin(std::process::Stdio::null());
    cmd
}

/// Fast waits for the emulator, where a key works at once: the flags every command that rotates
/// takes (`rotate`, `resume`, `run`, `incident`).
pub const WAITS: &[&str] = &["--verify-successes", "2", "--probe-successes", "2", "--check-interval", "200ms"];

/// [`WAITS`] and a short watch of the old key before it goes off (the default 10 s would be most of
/// each rotation's time here); for `rotate`, `resume` and `run`. `incident` deactivates the leaked
/// key without watching it, and takes [`WAITS`]. 2 s still sees a consumer that signs every
/// second, which `tests/retire.rs` relies on.
pub const FAST: &[&str] =
    &["--verify-successes", "2", "--probe-successes", "2", "--check-interval", "200ms", "--quiet-period", "2s"];

/// Every journal under the state folder, active and archived (not the `.owner` file that names the
/// process holding an active one).
pub fn journal_text(state_dir: &Path) -> String {
    let mut text = String::new();
    for dir in ["active", "history"] {
        if let Ok(entries) = std::fs::read_dir(state_dir.join(dir)) {
            for e in entries.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "jsonl")) {
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

/// Requests a second the app gets while a rotation runs under load.
const LOAD_RPS: u32 = 25;
/// Load before rekey starts and after it ends, so the edges of the rotation are covered too.
const LOAD_MARGIN: Duration = Duration::from_secs(1);

/// A rotation test's world: its own emulator with the admin and the app user (one key) seeded, and
/// a state folder. Auth stays off until [`Scenario::enforce_auth`], so the test seeds its targets
/// first; [`Scenario::rotate`] then runs `rekey rotate` on the app user.
pub struct Scenario {
    pub moto: Moto,
    pub seeded: Seeded,
    /// The state folder; tests keep their env files here too.
    pub dir: tempfile::TempDir,
}

impl Scenario {
    pub async fn start() -> Scenario {
        Self::start_with(MotoOptions::default()).await
    }

    pub async fn start_with(options: MotoOptions) -> Scenario {
        let moto = Moto::start_with(options);
        let seeded = seed(&moto).await;
        Scenario { moto, seeded, dir: state_dir() }
    }

    /// An env file in the state folder holding the app user's key (see [`write_env_file`]).
    pub fn env_file(&self) -> PathBuf {
        write_env_file(self.dir.path(), &self.seeded.app_key)
    }

    /// From here on the emulator checks every request as IAM does: an inactive or deleted key fails.
    pub async fn enforce_auth(&self) {
        self.moto.set_auth(true).await;
    }

    /// `rekey rotate --user <app user>` as the admin, with [`FAST`] waits; the builder adds the rest.
    pub fn rotate(&self) -> Rotation<'_> {
        Rotation { scenario: self, signer: &self.seeded.admin, args: Vec::new(), load: None }
    }
}

/// One `rekey rotate` run of a [`Scenario`], built flag by flag.
pub struct Rotation<'a> {
    scenario: &'a Scenario,
    signer: &'a Creds,
    args: Vec<String>,
    load: Option<(&'a App, u64)>,
}

impl<'a> Rotation<'a> {
    pub fn target(self, spec: impl std::fmt::Display) -> Self {
        self.args(&["--target", &spec.to_string()])
    }

    /// The app's own health check as the probe.
    pub fn probe(self, app: &App) -> Self {
        self.args(&["--probe", &format!("{}/health", app.url())])
    }

    pub fn json(self) -> Self {
        self.args(&["--output", "json"])
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Run as another principal than the admin (a least-privilege rotator).
    pub fn signed_by(mut self, creds: &'a Creds) -> Self {
        self.signer = creds;
        self
    }

    /// Keep `app` under steady load from before rekey starts until after it ends, then assert that
    /// not one request failed (downtime) and that at least `min_requests` were made (it really was
    /// under load the whole time).
    pub fn under_load(mut self, app: &'a App, min_requests: u64) -> Self {
        self.load = Some((app, min_requests));
        self
    }

    fn argv(&self) -> Vec<&str> {
        let mut argv = vec!["rotate", "--user", self.scenario.seeded.app_user.as_str()];
        argv.extend(self.args.iter().map(String::as_str));
        // A test that sets its own watch of the old key keeps it (clap refuses a flag twice).
        argv.extend(if self.args.iter().any(|a| a == "--quiet-period") { WAITS } else { FAST });
        argv
    }

    pub async fn run(self) -> Output {
        let sc = self.scenario;
        let Some((app, min_requests)) = self.load else {
            return rekey(&sc.moto, self.signer, sc.dir.path(), &self.argv()).await;
        };
        let load = load::start(app.url(), LOAD_RPS);
        tokio::time::sleep(LOAD_MARGIN).await;
        let out = rekey(&sc.moto, self.signer, sc.dir.path(), &self.argv()).await;
        tokio::time::sleep(LOAD_MARGIN).await;
        let report = load.stop().await;
        assert_eq!(
            report.failed, 0,
            "failed app requests during the rotation: {:?}\nrekey exited {}:\n{}",
            report.first_failures, out.code, out.stderr
        );
        assert!(
            report.total >= min_requests,
            "the app was not under load the whole time: {} requests, expected at least {min_requests}",
            report.total
        );
        out
    }

    /// The process [`Rotation::run`] would run, for a test that signals it while it works.
    pub fn command(self) -> tokio::process::Command {
        let sc = self.scenario;
        rekey_command(&sc.moto, self.signer, sc.dir.path(), &self.argv(), &[])
    }
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
