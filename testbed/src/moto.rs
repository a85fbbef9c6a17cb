//! One patched moto server per caller, reached over loopback by the real AWS SDK.
//!
//! moto's auth enforcement has three gaps against AWS (inactive keys accepted, JSON-protocol
//! auth errors without an error code, Lambda GET signatures); `moto_launcher.py` closes them
//! before the server starts, so tests can prove that an old key really stops working.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_types::SdkConfig;

const LAUNCHER: &str = include_str!("../moto_launcher.py");
const INSTALL_HINT: &str =
    "run scripts/install-moto.sh (or set REKEY_MOTO_PYTHON to a python with moto[server]==5.2.5)";
/// Two cores, several servers starting in parallel, lazy imports: generous on purpose.
const START_TIMEOUT: Duration = Duration::from_secs(90);
const LOG_TAIL: usize = 40;

/// The user the tool runs as in every scenario.
pub const ADMIN_USER: &str = "rekey-admin";
/// The user whose key the app consumes and the tool rotates.
pub const APP_USER: &str = "app-integration-user";
pub const REGION: &str = "us-east-1";

/// A long-term access key pair.
#[derive(Clone, PartialEq, Eq)]
pub struct Creds {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl Creds {
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        Self { access_key_id: access_key_id.into(), secret_access_key: secret_access_key.into() }
    }
}

// Secrets must not end up in test logs.
impl std::fmt::Debug for Creds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Creds")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone, Default)]
pub struct MotoOptions {
    /// `MOTO_ECS_SERVICE_RUNNING`: without it moto's ECS services never run a task and
    /// every deployment stays IN_PROGRESS forever.
    pub ecs_service_running: Option<u32>,
}

/// A running moto server; killed on drop.
pub struct Moto {
    child: Child,
    endpoint: String,
    log: Arc<Mutex<VecDeque<String>>>,
    // Held so the launcher file outlives the process that was started from it.
    _launcher: tempfile::TempPath,
}

impl Moto {
    pub fn start() -> Moto {
        Self::start_with(MotoOptions::default())
    }

    /// Panics (loudly, naming scripts/install-moto.sh) if moto is missing or does not come
    /// up: a test bed that silently skips would hide exactly the failures it exists for.
    pub fn start_with(opts: MotoOptions) -> Moto {
        let python = find_python();
        let launcher = write_launcher();

        let mut cmd = Command::new(&python);
        cmd.arg("-u")
            .arg(&launcher)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
            .env("PYTHONUNBUFFERED", "1")
            // The developer's shell must not change how the emulator behaves.
            .env_remove("MOTO_PORT")
            .env_remove("INITIAL_NO_AUTH_ACTION_COUNT")
            .env_remove("MOTO_ECS_SERVICE_RUNNING");
        if let Some(n) = opts.ecs_service_running {
            cmd.env("MOTO_ECS_SERVICE_RUNNING", n.to_string());
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("MOTO NOT AVAILABLE: cannot run {} ({e}); {INSTALL_HINT}", python.display()));

        let log = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_TAIL)));
        let (port_tx, port_rx) = mpsc::channel::<u16>();
        let stdout = child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>);
        let stderr = child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>);
        for stream in [stdout, stderr].into_iter().flatten() {
            spawn_log_reader(stream, log.clone(), port_tx.clone());
        }
        drop(port_tx);

        let deadline = Instant::now() + START_TIMEOUT;
        let port = loop {
            match port_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(port) => break port,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("MOTO FAILED TO START with {}: {}; {INSTALL_HINT}", python.display(), tail(&log));
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                // Give the readers a moment to capture the traceback.
                std::thread::sleep(Duration::from_millis(200));
                panic!("MOTO FAILED TO START with {} ({status}): {}; {INSTALL_HINT}", python.display(), tail(&log));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("MOTO DID NOT START within {START_TIMEOUT:?}: {}", tail(&log));
            }
        };

        let endpoint = format!("http://127.0.0.1:{port}");
        let moto = Moto { child, endpoint, log, _launcher: launcher };
        moto.wait_ready(port, deadline);
        moto
    }

    fn wait_ready(&self, port: u16, deadline: Instant) {
        loop {
            if http_answers(port) {
                return;
            }
            if Instant::now() > deadline {
                panic!("MOTO DID NOT ANSWER on port {port} within {START_TIMEOUT:?}: {}", tail(&self.log));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The last lines moto printed, for assertion messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// Clears all emulated state. Does not change auth enforcement.
    pub async fn reset(&self) {
        self.post("/moto-api/reset", "").await;
    }

    /// Turns IAM auth enforcement on (every request signed with a valid, active key and
    /// allowed by policy) or off (anything goes).
    pub async fn set_auth(&self, on: bool) {
        self.post("/moto-api/reset-auth", if on { "0" } else { "inf" }).await;
    }

    /// Requests served since the last [`Moto::clear_requests`], as (Region, service, count) from
    /// their SigV4 scope (launcher patch 8): what a client really sent, retries included.
    pub async fn requests_served(&self) -> Vec<(String, String, u64)> {
        let url = format!("{}/moto-api/rekey/requests", self.endpoint);
        let text = reqwest::Client::new()
            .get(&url)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("moto control call GET {url} failed: {e}"))
            .text()
            .await
            .unwrap_or_else(|e| panic!("moto control call GET {url}: {e}"));
        let rows: Vec<serde_json::Value> = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("moto control call GET {url}: not JSON ({e}): {text}"));
        rows.iter()
            .map(|r| {
                let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                (s("region"), s("service"), r["count"].as_u64().unwrap_or(0))
            })
            .collect()
    }

    pub async fn clear_requests(&self) {
        self.post("/moto-api/rekey/requests", "").await;
    }

    /// Answers every request signed for `region` `seconds` late, as a throttled or far Region does
    /// (launcher patch 8); 0 answers at once again.
    pub async fn set_region_delay(&self, region: &str, seconds: f64) {
        self.post(&format!("/moto-api/rekey/region-delay?region={region}&seconds={seconds}"), "").await;
    }

    /// Models IAM's eventual consistency (launcher patch 12): `endpoints` hosts, each of which sees
    /// a key's creation, deactivation or reactivation at its own moment within `window`, and every
    /// request lands on a random one. `endpoints` 0 turns the model off.
    pub async fn set_propagation(&self, endpoints: u32, window: Duration, seed: u64) {
        let window = window.as_secs_f64();
        self.post(&format!("/moto-api/rekey/propagation?endpoints={endpoints}&window={window}&seed={seed}"), "").await;
    }

    /// Requests the propagation model refused because the host they landed on had not yet seen
    /// (or had already forgotten) the key.
    pub async fn lag_rejections(&self) -> u64 {
        self.get_json("/moto-api/rekey/propagation").await["lag_rejections"].as_u64().unwrap_or(0)
    }

    /// Holds the next CreateAccessKey `seconds` before IAM handles it (launcher patch 12b).
    pub async fn hold_next_create_key(&self, seconds: f64) {
        self.post(&format!("/moto-api/rekey/hold-create-key?seconds={seconds}"), "").await;
    }

    /// CreateAccessKey calls being held right now.
    pub async fn create_keys_held(&self) -> u64 {
        self.get_json("/moto-api/rekey/hold-create-key").await["holding"].as_u64().unwrap_or(0)
    }

    async fn get_json(&self, path: &str) -> serde_json::Value {
        let url = format!("{}{path}", self.endpoint);
        let text = reqwest::Client::new()
            .get(&url)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("moto control call GET {url} failed: {e}"))
            .text()
            .await
            .unwrap_or_else(|e| panic!("moto control call GET {url}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("moto control call GET {url}: not JSON ({e}): {text}"))
    }

    /// Seeds the CloudTrail event history that `LookupEvents` serves (launcher patch 11): `spec` is
    /// `{"series": [...], "events": [...], "rate": N, "reset": bool}`. Returns the events now held.
    pub async fn seed_history(&self, spec: &serde_json::Value) -> u64 {
        let url = format!("{}/moto-api/rekey/history", self.endpoint);
        let text = reqwest::Client::new()
            .post(&url)
            .header("Content-Type", "application/json")
            .body(spec.to_string())
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("moto control call POST {url} failed: {e}"))
            .text()
            .await
            .unwrap_or_else(|e| panic!("moto control call POST {url}: {e}"));
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {url}: not JSON ({e}): {text}"));
        v["events"].as_u64().unwrap_or_else(|| panic!("POST {url}: no event count in {text}"))
    }

    async fn post(&self, path: &str, body: &'static str) {
        // A client per call: pooled connections are bound to the runtime that opened them,
        // and one Moto may be shared by tests that each run their own runtime.
        let url = format!("{}{path}", self.endpoint);
        let resp = reqwest::Client::new()
            .post(&url)
            .header("Content-Type", "text/plain")
            .body(body)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap_or_else(|e| panic!("moto control call POST {url} failed: {e}"));
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            panic!("moto control call POST {url} answered {status}: {text}");
        }
    }

    /// An SDK config that reaches only this emulator, whatever the developer's environment
    /// holds.
    pub fn sdk_config(&self, creds: &Creds) -> SdkConfig {
        sdk_config_at(&self.endpoint, creds)
    }

    /// The environment a child process (the rekey binary) needs to reach this emulator as
    /// `creds`. The config and credentials files point at /dev/null so a developer's own
    /// profile cannot leak in; see [`Moto::configure_command`] to also drop inherited
    /// variables that would override these.
    pub fn env_for(&self, creds: &Creds) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", creds.access_key_id.as_str()),
            ("AWS_SECRET_ACCESS_KEY", creds.secret_access_key.as_str()),
            ("AWS_REGION", REGION),
            ("AWS_DEFAULT_REGION", REGION),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_CONFIG_FILE", "/dev/null"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Removes inherited AWS variables that would win over [`Moto::env_for`] (a session
    /// token, a profile, service-specific endpoints, container or web-identity credentials),
    /// then sets `env_for(creds)`. For a tokio command, pass `cmd.as_std_mut()`.
    pub fn configure_command(&self, cmd: &mut Command, creds: &Creds) {
        for (key, _) in std::env::vars_os() {
            let Some(key) = key.to_str() else { continue };
            if is_overriding_aws_var(key) {
                cmd.env_remove(key);
            }
        }
        cmd.envs(self.env_for(creds));
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        // SIGKILL: moto takes 5-10 s to exit on SIGTERM, and its state is disposable.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// [`Moto::sdk_config`] for code that keeps only the endpoint (the app outlives no `&Moto`).
pub(crate) fn sdk_config_at(endpoint: &str, creds: &Creds) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            creds.access_key_id.clone(),
            creds.secret_access_key.clone(),
            None,
            None,
            "rekey-testbed",
        )))
        .endpoint_url(endpoint.to_string())
        // moto answers 500 for unimplemented operations; the SDK's default 3 attempts
        // with backoff only slow a failing test down.
        .retry_config(RetryConfig::standard().with_max_attempts(2))
        .timeout_config(TimeoutConfig::builder().operation_timeout(Duration::from_secs(60)).build())
        .build()
}

fn is_overriding_aws_var(key: &str) -> bool {
    matches!(
        key,
        "AWS_SESSION_TOKEN"
            | "AWS_SECURITY_TOKEN"
            | "AWS_PROFILE"
            | "AWS_DEFAULT_PROFILE"
            | "AWS_ROLE_ARN"
            | "AWS_ROLE_SESSION_NAME"
            | "AWS_WEB_IDENTITY_TOKEN_FILE"
            | "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"
            | "AWS_USE_FIPS_ENDPOINT"
            | "AWS_USE_DUALSTACK_ENDPOINT"
    ) || key.starts_with("AWS_ENDPOINT_URL_")
        || key.starts_with("AWS_CONTAINER_")
}

fn find_python() -> PathBuf {
    if let Some(p) = std::env::var_os("REKEY_MOTO_PYTHON").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.exists() {
            panic!("MOTO NOT INSTALLED: REKEY_MOTO_PYTHON={} does not exist; {INSTALL_HINT}", p.display());
        }
        return p;
    }
    let workspace_venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-moto/bin/python");
    if workspace_venv.exists() {
        return workspace_venv;
    }
    if let Some(home) = std::env::var_os("HOME") {
        let cached = Path::new(&home).join(".cache/rekey-moto-venv/bin/python");
        if cached.exists() {
            return cached;
        }
    }
    panic!(
        "MOTO NOT INSTALLED: no REKEY_MOTO_PYTHON, no {}, no $HOME/.cache/rekey-moto-venv; {INSTALL_HINT}",
        workspace_venv.display()
    );
}

fn write_launcher() -> tempfile::TempPath {
    let mut file = tempfile::Builder::new()
        .prefix("rekey-moto-launcher-")
        .suffix(".py")
        .tempfile()
        .unwrap_or_else(|e| panic!("cannot create the moto launcher file: {e}"));
    file.write_all(LAUNCHER.as_bytes())
        .and_then(|()| file.flush())
        .unwrap_or_else(|e| panic!("cannot write the moto launcher file: {e}"));
    file.into_temp_path()
}

// Keeps draining the pipe for the server's whole life: werkzeug logs every request, and a
// full pipe would block moto mid-test.
fn spawn_log_reader(stream: Box<dyn Read + Send>, log: Arc<Mutex<VecDeque<String>>>, port_tx: mpsc::Sender<u16>) {
    let echo = std::env::var_os("REKEY_MOTO_LOG").is_some();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Some(port) = parse_port(&line) {
                let _ = port_tx.send(port);
            }
            if echo {
                eprintln!("[moto] {line}");
            }
            if let Ok(mut log) = log.lock() {
                if log.len() == LOG_TAIL {
                    log.pop_front();
                }
                log.push_back(line);
            }
        }
    });
}

fn parse_port(line: &str) -> Option<u16> {
    let rest = &line[line.find("Running on http://127.0.0.1:")? + 28..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok().filter(|p| *p != 0)
}

fn http_answers(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    if stream.write_all(b"GET /moto-api/reset-auth HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).is_ok() && &head == b"HTTP/"
}

fn tail(log: &Mutex<VecDeque<String>>) -> String {
    match log.lock() {
        Ok(log) if !log.is_empty() => log.iter().rev().take(6).rev().cloned().collect::<Vec<_>>().join(" | "),
        _ => "(no output)".to_string(),
    }
}

/// What [`seed`] created.
#[derive(Debug, Clone)]
pub struct Seeded {
    /// `rekey-admin`: inline Allow * on *; the identity the tool runs as.
    pub admin: Creds,
    /// `app-integration-user`.
    pub app_user: String,
    /// The app user's one key, the one a rotation replaces.
    pub app_key: Creds,
}

/// Resets moto and creates the admin and app users with one key each. Leaves auth off:
/// tests seed their targets (secrets, services) first, then call `set_auth(true)`.
pub async fn seed(moto: &Moto) -> Seeded {
    // A previous scenario may have left enforcement on, and reset does not clear it.
    moto.set_auth(false).await;
    moto.reset().await;
    // With auth off any key signs; the bootstrap key never needs to exist.
    let bootstrap = Creds::new("AKIAIOSFODNN7EXAMPLE", "bootstrap-secret");
    let admin = create_user(moto, &bootstrap, ADMIN_USER, &["*"]).await;
    // GetCallerIdentity is always allowed; the policy documents what the app does.
    let app_key = create_user(moto, &bootstrap, APP_USER, &["sts:GetCallerIdentity"]).await;
    Seeded { admin, app_user: APP_USER.to_string(), app_key }
}

/// Creates `name` with an inline policy allowing `actions` on `*` (moto evaluates only
/// `"Resource": "*"` reliably) and one access key. `signer` must be allowed to do it when
/// auth is on (the admin from [`seed`]). Useful for platform identities (a task role).
pub async fn create_user(moto: &Moto, signer: &Creds, name: &str, actions: &[&str]) -> Creds {
    let iam = aws_sdk_iam::Client::new(&moto.sdk_config(signer));
    iam.create_user().user_name(name).send().await.unwrap_or_else(|e| panic!("seed: CreateUser {name}: {e:?}"));
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]
    });
    iam.put_user_policy()
        .user_name(name)
        .policy_name(format!("{name}-inline"))
        .policy_document(policy.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("seed: PutUserPolicy {name}: {e:?}"));
    let out = iam
        .create_access_key()
        .user_name(name)
        .send()
        .await
        .unwrap_or_else(|e| panic!("seed: CreateAccessKey {name}: {e:?}"));
    let key = out.access_key().unwrap_or_else(|| panic!("seed: CreateAccessKey {name} returned no key"));
    Creds::new(key.access_key_id(), key.secret_access_key())
}

#[cfg(test)]
mod tests {
    use super::parse_port;

    #[test]
    fn parses_werkzeug_banner() {
        assert_eq!(parse_port(" * Running on http://127.0.0.1:40123"), Some(40123));
        assert_eq!(parse_port("INFO: Running on http://127.0.0.1:5000 (Press CTRL+C to quit)"), Some(5000));
        assert_eq!(parse_port("Running on http://127.0.0.1:0"), None);
        assert_eq!(parse_port("127.0.0.1 - - GET / 200"), None);
    }
}
