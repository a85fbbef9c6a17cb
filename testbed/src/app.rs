//! A live app that consumes the rotated key the way deployed services do.
//!
//! Every `GET /` or `GET /health` fetches credentials from the app's [`CredentialSource`] and
//! calls STS `GetCallerIdentity` with them against the emulator: 200 with the caller ARN when
//! the key works, 502 with the error when it does not. Under load this turns "the rotation
//! caused no downtime" into a count of failed requests.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use aws_sdk_ecs::types::ContainerDefinition;
use aws_sdk_sts::error::DisplayErrorContext;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::moto::{Creds, Moto, sdk_config_at};

const ECS_POLL: Duration = Duration::from_millis(200);
const ECS_FIRST_START_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_HEAD: usize = 16 * 1024;

/// Where the app gets its AWS key.
#[derive(Debug, Clone)]
pub enum CredentialSource {
    /// A dotenv file (`AWS_ACCESS_KEY_ID=...`, `AWS_SECRET_ACCESS_KEY=...`, values optionally
    /// quoted), re-read on every request: the app picks up a rewritten file at once.
    EnvFile(PathBuf),
    /// A Secrets Manager secret holding a JSON object with the key pair, read with the
    /// platform's identity (like a task role) at stage AWSCURRENT and cached for `cache_ttl`,
    /// as caching clients do: a rotation must keep the old key valid at least that long.
    SecretsManager { secret_id: String, platform: Creds, cache_ttl: Duration },
    /// An ECS service whose tasks get the key from their task definition. See [`ecs`].
    Ecs { cluster: String, service: String, platform: Creds },
}

/// Counters of what the app served.
#[derive(Debug, Clone, Default)]
pub struct AppStats {
    pub ok: u64,
    pub failed: u64,
    /// The key id of the most recent request, whatever its outcome.
    pub last_key_id: Option<String>,
}

/// A running app; stopped on drop.
pub struct App {
    url: String,
    state: Arc<State>,
    tasks: Vec<JoinHandle<()>>,
}

impl App {
    pub fn url(&self) -> String {
        self.url.clone()
    }

    pub fn stats(&self) -> AppStats {
        AppStats {
            ok: self.state.ok.load(Ordering::Relaxed),
            failed: self.state.failed.load(Ordering::Relaxed),
            last_key_id: self.state.last_key_id.lock().ok().and_then(|k| k.clone()),
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts the app on 127.0.0.1 (a free port). For an ECS source this waits until the
/// service's first deployment has "started" (runningCount == desiredCount > 0) and panics if
/// it never does: moto needs `MotoOptions { ecs_service_running: Some(desired) }` for that.
pub async fn start(moto: &Moto, source: CredentialSource) -> App {
    start_from(moto, source, None).await
}

/// [`start`], with every AWS call the app makes sent as if from `source_ip` (an
/// `X-Forwarded-For` header, which launcher patch 5 turns into `aws:SourceIp`), so that an IP
/// fence sees the app where its history says it runs. Such an app also answers `GET /iam`: an
/// IAM `GetUser` call, which a fence can deny (`GetCallerIdentity` never is denied, in AWS too).
pub async fn start_from(moto: &Moto, source: CredentialSource, source_ip: Option<&str>) -> App {
    let listener =
        TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("app: cannot bind 127.0.0.1:0: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("app: no local address: {e}"));
    let endpoint = moto.endpoint().to_string();
    let mut tasks = Vec::new();

    let resolver = match source {
        CredentialSource::EnvFile(path) => Resolver::EnvFile(path),
        CredentialSource::SecretsManager { secret_id, platform, cache_ttl } => Resolver::Secrets {
            client: aws_sdk_secretsmanager::Client::new(&sdk_config_at(&endpoint, &platform)),
            secret_id,
            cache_ttl,
            cached: Mutex::new(None),
        },
        CredentialSource::Ecs { cluster, service, platform } => {
            let tasks_creds = Arc::new(RwLock::new(None));
            let poller = ecs::Poller::new(&endpoint, &platform, cluster, service);
            let first = poller.first_start(ECS_FIRST_START_TIMEOUT).await;
            if let Ok(mut slot) = tasks_creds.write() {
                *slot = Some(first.creds.clone());
            }
            tasks.push(tokio::spawn(poller.run(first.identity, tasks_creds.clone())));
            Resolver::Ecs(tasks_creds)
        }
    };

    let state = Arc::new(State {
        endpoint,
        resolver,
        source_ip: source_ip.map(str::to_string),
        sts: Mutex::new(None),
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        last_key_id: Mutex::new(None),
    });
    let accept_state = state.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(serve_connection(stream, accept_state.clone()));
        }
    }));

    App { url: format!("http://{addr}"), state, tasks }
}

struct State {
    endpoint: String,
    resolver: Resolver,
    source_ip: Option<String>,
    // One client per key: building a client per request would open a connection per request.
    sts: Mutex<Option<(Creds, aws_sdk_sts::Client)>>,
    ok: AtomicU64,
    failed: AtomicU64,
    last_key_id: Mutex<Option<String>>,
}

enum Resolver {
    EnvFile(PathBuf),
    Secrets {
        client: aws_sdk_secretsmanager::Client,
        secret_id: String,
        cache_ttl: Duration,
        cached: Mutex<Option<(Instant, Creds)>>,
    },
    Ecs(Arc<RwLock<Option<Creds>>>),
}

impl Resolver {
    async fn creds(&self) -> Result<Creds, String> {
        match self {
            Resolver::EnvFile(path) => {
                let text =
                    tokio::fs::read_to_string(path).await.map_err(|e| format!("reading {}: {e}", path.display()))?;
                parse_dotenv(&text)
            }
            Resolver::Secrets { client, secret_id, cache_ttl, cached } => {
                if let Ok(slot) = cached.lock()
                    && let Some((at, creds)) = slot.as_ref()
                    && at.elapsed() < *cache_ttl
                {
                    return Ok(creds.clone());
                }
                let creds = read_secret_creds(client, secret_id).await?;
                if let Ok(mut slot) = cached.lock() {
                    *slot = Some((Instant::now(), creds.clone()));
                }
                Ok(creds)
            }
            Resolver::Ecs(current) => current
                .read()
                .map_err(|_| "task credentials lock poisoned".to_string())?
                .clone()
                .ok_or_else(|| "no task has started".to_string()),
        }
    }
}

impl State {
    fn sts_for(&self, creds: &Creds) -> aws_sdk_sts::Client {
        let mut slot = match self.sts.lock() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((cached, client)) = slot.as_ref()
            && cached == creds
        {
            return client.clone();
        }
        let client = aws_sdk_sts::Client::new(&sdk_config_at(&self.endpoint, creds));
        *slot = Some((creds.clone(), client.clone()));
        client
    }

    async fn handle(&self, iam_call: bool) -> (u16, String) {
        let creds = match self.resolver.creds().await {
            Ok(creds) => creds,
            Err(e) => return (502, format!("credentials unavailable: {e}\n")),
        };
        if let Ok(mut last) = self.last_key_id.lock() {
            *last = Some(creds.access_key_id.clone());
        }
        let from = self.source_ip.clone();
        if iam_call {
            let iam = aws_sdk_iam::Client::new(&sdk_config_at(&self.endpoint, &creds));
            let call = iam.get_user().customize().mutate_request(move |r| {
                if let Some(ip) = &from {
                    r.headers_mut().insert("X-Forwarded-For", ip.clone());
                }
            });
            return match call.send().await {
                Ok(out) => (200, format!("{}\n", out.user().map(|u| u.arn()).unwrap_or("(no user)"))),
                Err(e) => (502, format!("GetUser with {} failed: {}\n", creds.access_key_id, DisplayErrorContext(&e))),
            };
        }
        match self
            .sts_for(&creds)
            .get_caller_identity()
            .customize()
            .mutate_request(move |r| {
                if let Some(ip) = &from {
                    r.headers_mut().insert("X-Forwarded-For", ip.clone());
                }
            })
            .send()
            .await
        {
            Ok(out) => (200, format!("{}\n", out.arn().unwrap_or("(no arn)"))),
            Err(e) => {
                (502, format!("GetCallerIdentity with {} failed: {}\n", creds.access_key_id, DisplayErrorContext(&e)))
            }
        }
    }
}

// Minimal HTTP/1.1: request line + headers, bodies skipped by Content-Length, keep-alive
// unless the client asks to close. Enough for reqwest, curl and the rekey probe.
async fn serve_connection(stream: TcpStream, state: Arc<State>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let Some(request) = read_request(&mut reader).await else {
            return;
        };
        let (status, body) = match (request.method.as_str(), request.path.as_str()) {
            ("GET" | "HEAD", path @ ("/" | "/health" | "/iam")) if path != "/iam" || state.source_ip.is_some() => {
                let (status, body) = state.handle(path == "/iam").await;
                let counter = if status == 200 { &state.ok } else { &state.failed };
                counter.fetch_add(1, Ordering::Relaxed);
                (status, body)
            }
            ("GET" | "HEAD", _) => (404, "not found\n".to_string()),
            _ => (405, "method not allowed\n".to_string()),
        };
        let reason = match status {
            200 => "OK",
            404 => "Not Found",
            405 => "Method Not Allowed",
            _ => "Bad Gateway",
        };
        let connection = if request.close { "close" } else { "keep-alive" };
        let mut response = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n",
            body.len()
        );
        if request.method != "HEAD" {
            response.push_str(&body);
        }
        if write.write_all(response.as_bytes()).await.is_err() || request.close {
            return;
        }
    }
}

struct Request {
    method: String,
    path: String,
    close: bool,
}

async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> Option<Request> {
    let mut line = String::new();
    let mut head_len = 0;
    if reader.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?;
    let path = target.split('?').next().unwrap_or(target).to_string();
    let version = parts.next().unwrap_or("HTTP/1.0");
    let mut close = version == "HTTP/1.0";
    let mut content_length = 0u64;
    loop {
        let mut header = String::new();
        let n = reader.read_line(&mut header).await.ok()?;
        head_len += n;
        if n == 0 || head_len > MAX_HEAD {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.parse().ok()?;
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
    }
    if content_length > 0 {
        let mut sink = tokio::io::sink();
        let copied = tokio::io::copy(&mut reader.take(content_length), &mut sink).await.ok()?;
        if copied != content_length {
            return None;
        }
    }
    Some(Request { method, path, close })
}

/// Reads `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` from dotenv text (optional `export `,
/// single or double quotes, comments).
pub fn parse_dotenv(text: &str) -> Result<Creds, String> {
    let mut id = None;
    let mut secret = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = unquote(value.trim());
        match key.trim() {
            "AWS_ACCESS_KEY_ID" => id = Some(value),
            "AWS_SECRET_ACCESS_KEY" => secret = Some(value),
            _ => {}
        }
    }
    match (id, secret) {
        (Some(id), Some(secret)) => Ok(Creds::new(id, secret)),
        _ => Err("AWS_ACCESS_KEY_ID or AWS_SECRET_ACCESS_KEY missing".to_string()),
    }
}

fn unquote(value: &str) -> String {
    for quote in ['"', '\''] {
        if let Some(inner) = value.strip_prefix(quote).and_then(|v| v.strip_suffix(quote)) {
            return inner.to_string();
        }
    }
    // An unquoted value may carry a trailing comment.
    value.split(" #").next().unwrap_or(value).trim().to_string()
}

/// Which version of a secret to read.
struct SecretRef<'a> {
    stage: Option<&'a str>,
    version_id: Option<&'a str>,
}

impl SecretRef<'_> {
    fn current() -> Self {
        SecretRef { stage: None, version_id: None }
    }
}

/// Reads a secret at AWSCURRENT and extracts the key pair from its JSON.
async fn read_secret_creds(client: &aws_sdk_secretsmanager::Client, secret_id: &str) -> Result<Creds, String> {
    let text = read_secret_string(client, secret_id, &SecretRef::current()).await?;
    creds_from_json(&text).map_err(|e| format!("secret {secret_id}: {e}"))
}

async fn read_secret_string(
    client: &aws_sdk_secretsmanager::Client,
    secret_id: &str,
    version: &SecretRef<'_>,
) -> Result<String, String> {
    let mut req = client.get_secret_value().secret_id(secret_id);
    // moto keeps returning the old value without a stage after AWSCURRENT moved, so the
    // stage is always explicit unless a version id pins it.
    match (version.stage, version.version_id) {
        (stage, Some(id)) => {
            req = req.version_id(id);
            if let Some(stage) = stage {
                req = req.version_stage(stage);
            }
        }
        (stage, None) => req = req.version_stage(stage.unwrap_or("AWSCURRENT")),
    }
    let out = req.send().await.map_err(|e| {
        format!("GetSecretValue {secret_id}: {}", aws_sdk_secretsmanager::error::DisplayErrorContext(&e))
    })?;
    out.secret_string().map(str::to_string).ok_or_else(|| format!("secret {secret_id} has no SecretString"))
}

/// Accepts the common spellings of the two fields (`AWS_ACCESS_KEY_ID`, `aws_access_key_id`,
/// `AccessKeyId`, `accessKeyId`, `access_key_id`, and the same for the secret), since the
/// layout is the deployer's choice, not AWS's.
pub fn creds_from_json(text: &str) -> Result<Creds, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let object = value.as_object().ok_or("not a JSON object")?;
    let mut id = None;
    let mut secret = None;
    for (key, value) in object {
        let normalized: String =
            key.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_ascii_lowercase();
        let normalized = normalized.strip_prefix("aws").unwrap_or(&normalized);
        match (normalized, value.as_str()) {
            ("accesskeyid", Some(v)) => id = Some(v.to_string()),
            ("secretaccesskey", Some(v)) => secret = Some(v.to_string()),
            _ => {}
        }
    }
    match (id, secret) {
        (Some(id), Some(secret)) => Ok(Creds::new(id, secret)),
        _ => Err("no access key id / secret access key fields".to_string()),
    }
}

/// ECS task semantics, modelled because moto runs no tasks.
///
/// On ECS, a container's `environment` values and `secrets[].valueFrom` references are
/// resolved once, when a task starts; a running task never sees a later change to the task
/// definition or to the secret. So the app here "is" the tasks of the service's PRIMARY
/// deployment: a poller (every 200 ms) watches DescribeServices, and when a new PRIMARY
/// deployment has runningCount == desiredCount > 0 — its tasks have started — the app
/// resolves the key from that deployment's task definition *at that moment* and switches to
/// it. Until then it keeps the key its current tasks started with, exactly like old tasks
/// draining during a rollout.
///
/// moto gaps this compensates for: UpdateService with a new task definition keeps the
/// deployment id (AWS starts a new deployment), and the deployment's own `taskDefinition`
/// never changes. So a deployment is identified by (id, the service's task definition), and
/// the task definition is read from the service, which on AWS equals the PRIMARY one's.
pub mod ecs {
    use super::*;

    /// Identifies the set of running tasks.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(super) struct DeploymentIdentity {
        id: String,
        task_definition: String,
    }

    pub(super) struct Started {
        pub identity: DeploymentIdentity,
        pub creds: Creds,
    }

    pub(super) struct Poller {
        ecs: aws_sdk_ecs::Client,
        secrets: aws_sdk_secretsmanager::Client,
        cluster: String,
        service: String,
    }

    impl Poller {
        pub fn new(endpoint: &str, platform: &Creds, cluster: String, service: String) -> Self {
            let config = sdk_config_at(endpoint, platform);
            Poller {
                ecs: aws_sdk_ecs::Client::new(&config),
                secrets: aws_sdk_secretsmanager::Client::new(&config),
                cluster,
                service,
            }
        }

        /// The service's tasks as they stand at app start; panics (test setup) if none ever
        /// run.
        pub async fn first_start(&self, timeout: Duration) -> Started {
            let deadline = Instant::now() + timeout;
            let mut last = String::from("not polled");
            while Instant::now() < deadline {
                match self.poll(None).await {
                    Ok(Some(started)) => return started,
                    Ok(None) => {
                        last = "PRIMARY deployment has runningCount != desiredCount (start moto with MotoOptions { ecs_service_running: Some(desired) })".into();
                    }
                    Err(e) => last = e,
                }
                tokio::time::sleep(ECS_POLL).await;
            }
            panic!("app: ECS service {}/{} never started tasks within {timeout:?}: {last}", self.cluster, self.service);
        }

        pub async fn run(self, mut running: DeploymentIdentity, creds: Arc<RwLock<Option<Creds>>>) {
            loop {
                tokio::time::sleep(ECS_POLL).await;
                // A failed poll or resolution is a task that failed to start: the old tasks
                // keep serving, and ECS (here: the next tick) tries again.
                if let Ok(Some(started)) = self.poll(Some(&running)).await {
                    if let Ok(mut slot) = creds.write() {
                        *slot = Some(started.creds);
                    }
                    running = started.identity;
                }
            }
        }

        /// `Some` when a deployment other than `running` is PRIMARY and fully started.
        async fn poll(&self, running: Option<&DeploymentIdentity>) -> Result<Option<Started>, String> {
            let out = self
                .ecs
                .describe_services()
                .cluster(&self.cluster)
                .services(&self.service)
                .send()
                .await
                .map_err(|e| format!("DescribeServices: {}", aws_sdk_ecs::error::DisplayErrorContext(&e)))?;
            let service = out.services().first().ok_or_else(|| format!("service {} not found", self.service))?;
            let Some(primary) = service.deployments().iter().find(|d| d.status() == Some("PRIMARY")) else {
                return Ok(None);
            };
            let task_definition =
                service.task_definition().or(primary.task_definition()).ok_or("no task definition")?;
            let identity = DeploymentIdentity {
                id: primary.id().unwrap_or_default().to_string(),
                task_definition: task_definition.to_string(),
            };
            let started = primary.desired_count() > 0 && primary.running_count() == primary.desired_count();
            if running == Some(&identity) || !started {
                return Ok(None);
            }
            let creds = self.resolve(task_definition).await?;
            Ok(Some(Started { identity, creds }))
        }

        /// What a task starting now would get in its environment.
        async fn resolve(&self, task_definition: &str) -> Result<Creds, String> {
            let out =
                self.ecs.describe_task_definition().task_definition(task_definition).send().await.map_err(|e| {
                    format!("DescribeTaskDefinition {task_definition}: {}", aws_sdk_ecs::error::DisplayErrorContext(&e))
                })?;
            let containers = out.task_definition().map(|td| td.container_definitions()).unwrap_or_default();
            let id = self.variable(containers, "AWS_ACCESS_KEY_ID").await?;
            let secret = self.variable(containers, "AWS_SECRET_ACCESS_KEY").await?;
            Ok(Creds::new(id, secret))
        }

        async fn variable(&self, containers: &[ContainerDefinition], name: &str) -> Result<String, String> {
            for container in containers {
                if let Some(value) =
                    container.environment().iter().find(|kv| kv.name() == Some(name)).and_then(|kv| kv.value())
                {
                    return Ok(value.to_string());
                }
                if let Some(secret) = container.secrets().iter().find(|s| s.name() == name) {
                    return self.value_from(secret.value_from()).await;
                }
            }
            Err(format!("task definition sets {name} neither in environment nor in secrets"))
        }

        async fn value_from(&self, value_from: &str) -> Result<String, String> {
            let reference = parse_value_from(value_from)?;
            let text = read_secret_string(
                &self.secrets,
                &reference.secret_id,
                &SecretRef { stage: reference.version_stage.as_deref(), version_id: reference.version_id.as_deref() },
            )
            .await?;
            match reference.json_key {
                None => Ok(text),
                Some(key) => {
                    let value: serde_json::Value = serde_json::from_str(&text)
                        .map_err(|e| format!("secret {}: not JSON: {e}", reference.secret_id))?;
                    value
                        .get(&key)
                        .and_then(|v| v.as_str())
                        .map(str::to_string)
                        .ok_or_else(|| format!("secret {} has no string field {key}", reference.secret_id))
                }
            }
        }
    }

    /// A parsed `secrets[].valueFrom`.
    #[derive(Debug, PartialEq, Eq)]
    pub struct ValueFrom {
        pub secret_id: String,
        pub json_key: Option<String>,
        pub version_stage: Option<String>,
        pub version_id: Option<String>,
    }

    /// `arn:aws:secretsmanager:region:account:secret:name[:json-key:version-stage:version-id]`
    /// (empty fields mean "not given"), or a bare secret name. SSM parameters are not modelled.
    pub fn parse_value_from(value_from: &str) -> Result<ValueFrom, String> {
        if !value_from.starts_with("arn:") {
            return Ok(ValueFrom {
                secret_id: value_from.to_string(),
                json_key: None,
                version_stage: None,
                version_id: None,
            });
        }
        let parts: Vec<&str> = value_from.split(':').collect();
        if parts.len() < 7 || parts[2] != "secretsmanager" || parts[5] != "secret" {
            return Err(format!("valueFrom {value_from} is not a Secrets Manager secret ARN"));
        }
        let field = |i: usize| parts.get(i).filter(|s| !s.is_empty()).map(|s| s.to_string());
        Ok(ValueFrom {
            secret_id: parts[..7].join(":"),
            json_key: field(7),
            version_stage: field(8),
            version_id: field(9),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::ecs::{ValueFrom, parse_value_from};
    use super::*;

    #[test]
    fn dotenv_quoted_and_plain() {
        let c = parse_dotenv("# app\nexport AWS_ACCESS_KEY_ID=\"AKIA1\"\nAWS_SECRET_ACCESS_KEY='s/e+c'\nOTHER=1\n")
            .unwrap();
        assert_eq!(c, Creds::new("AKIA1", "s/e+c"));
        let c = parse_dotenv("AWS_ACCESS_KEY_ID=AKIA2 # old\nAWS_SECRET_ACCESS_KEY = x=y\n").unwrap();
        assert_eq!(c, Creds::new("AKIA2", "x=y"));
        assert!(parse_dotenv("AWS_ACCESS_KEY_ID=A\n").is_err());
    }

    #[test]
    fn secret_json_spellings() {
        for text in [
            r#"{"AWS_ACCESS_KEY_ID":"A","AWS_SECRET_ACCESS_KEY":"S"}"#,
            r#"{"AccessKeyId":"A","SecretAccessKey":"S","UserName":"u"}"#,
            r#"{"access_key_id":"A","secret_access_key":"S"}"#,
        ] {
            assert_eq!(creds_from_json(text).unwrap(), Creds::new("A", "S"));
        }
        assert!(creds_from_json(r#"{"a":1}"#).is_err());
    }

    #[test]
    fn value_from_forms() {
        let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:app-AbCdEf";
        assert_eq!(
            parse_value_from(arn).unwrap(),
            ValueFrom { secret_id: arn.into(), json_key: None, version_stage: None, version_id: None }
        );
        let v = parse_value_from(&format!("{arn}:AWS_ACCESS_KEY_ID::")).unwrap();
        assert_eq!(v.secret_id, arn);
        assert_eq!(v.json_key.as_deref(), Some("AWS_ACCESS_KEY_ID"));
        assert_eq!(v.version_stage, None);
        let v = parse_value_from(&format!("{arn}:k:AWSPREVIOUS:")).unwrap();
        assert_eq!(v.version_stage.as_deref(), Some("AWSPREVIOUS"));
        assert!(parse_value_from("arn:aws:ssm:us-east-1:1:parameter/x").is_err());
    }

    #[tokio::test]
    async fn parses_requests() {
        let raw = b"GET /health?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nConnection: close\r\n\r\n";
        let mut reader = BufReader::new(&raw[..]);
        let r = read_request(&mut reader).await.unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str(), r.close), ("GET", "/health", false));
        let r = read_request(&mut reader).await.unwrap();
        assert_eq!((r.path.as_str(), r.close), ("/", true));
        assert!(read_request(&mut reader).await.is_none());
    }
}
