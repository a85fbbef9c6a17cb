//! The shared conformance suite (`rekey_adapters::conformance`) against every adapter, from one
//! place: an env file in a temp folder, and Secrets Manager and ECS (both shapes) on the emulator.
//! Every adapter must keep the same promises: apply, verify, roll back, roll back after a crash from
//! a journalled snapshot, stage, finish.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ecs::types::{ContainerDefinition, KeyValuePair, TaskDefinitionStatus};
use rekey_adapters::conformance::{FileFixture, Fixture, run};
use rekey_adapters::{NewKey, Options, Target, TargetSpec};
use secrecy::SecretString;
use serde_json::{Value, json};
use testbed::moto::{Moto, MotoOptions, seed};

mod support;
use support::tiny_zip;

/// What the suite rotates to. The secret is unique, so finding it in a snapshot means a leak.
fn new_key() -> NewKey {
    NewKey::new("AKIACONFORMANCE0NEW1", SecretString::from("conformance/New+Secret0123456789abcdefXY".to_string()))
}

fn options() -> Options {
    Options { poll_interval: Duration::from_millis(200), ecs_timeout: Duration::from_secs(30), ..Options::default() }
}

fn spec(text: &str) -> TargetSpec {
    text.parse().unwrap_or_else(|e| panic!("spec {text}: {e}"))
}

async fn timed(what: &str, fixture: &dyn Fixture) {
    let started = std::time::Instant::now();
    run(fixture, &new_key()).await;
    eprintln!("conformance suite for {what}: passed in {:.1?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// env file

const ENV_OLD_ID: &str = "AKIAENVOLDKEY0000001";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_file_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.env");
    std::fs::write(
        &path,
        format!(
            "# deployed by ops\nexport AWS_ACCESS_KEY_ID=\"{ENV_OLD_ID}\" # rotated by rekey\r\nREGION=eu-west-1\n\
             AWS_SECRET_ACCESS_KEY='old/secret+value'"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    timed("env file", &FileFixture::new(&path, &format!("env:{}", path.display()), ENV_OLD_ID)).await;
    drop(dir);
}

// ---------------------------------------------------------------------------------------------
// Secrets Manager

struct SecretFixture {
    sdk: aws_types::SdkConfig,
    client: aws_sdk_secretsmanager::Client,
    secret_id: String,
    old_id: String,
}

impl SecretFixture {
    /// Each labelled version with its labels, sorted. Versions without labels are deprecated (AWS
    /// does not list them): rekey never deletes a version, it only moves labels back.
    async fn labels(&self) -> Vec<(String, Vec<String>)> {
        let out = self.client.describe_secret().secret_id(&self.secret_id).send().await.expect("DescribeSecret");
        let mut versions: Vec<(String, Vec<String>)> = out
            .version_ids_to_stages()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, labels)| !labels.is_empty())
            .map(|(v, mut labels)| {
                labels.sort();
                (v, labels)
            })
            .collect();
        versions.sort();
        versions
    }
}

#[async_trait]
impl Fixture for SecretFixture {
    fn target(&self) -> Box<dyn Target> {
        rekey_adapters::build(&spec(&format!("secretsmanager:{}", self.secret_id)), &self.sdk, &options())
    }

    /// The value consumers get (read as AWSCURRENT: moto serves a stale value without the stage),
    /// and where every staging label sits.
    async fn observe(&self) -> Vec<u8> {
        let current = self
            .client
            .get_secret_value()
            .secret_id(&self.secret_id)
            .version_stage("AWSCURRENT")
            .send()
            .await
            .expect("GetSecretValue");
        let labels: Vec<String> =
            self.labels().await.into_iter().map(|(v, l)| format!("{v}: {}", l.join(","))).collect();
        let view = json!({
            "current_version": current.version_id(),
            "current_value": current.secret_string(),
            "labels": labels,
        });
        serde_json::to_vec_pretty(&view).unwrap()
    }

    fn old_key_id(&self) -> Option<String> {
        Some(self.old_id.clone())
    }

    /// A staged version left behind.
    async fn residue(&self) -> Vec<String> {
        self.labels()
            .await
            .into_iter()
            .filter(|(_, labels)| labels.iter().any(|l| l == "AWSPENDING"))
            .map(|(v, labels)| format!("version {v} labelled {}", labels.join(",")))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secretsmanager_passes_the_conformance_suite() {
    let moto = Moto::start();
    let s = seed(&moto).await;
    let sdk = moto.sdk_config(&s.admin);
    let client = aws_sdk_secretsmanager::Client::new(&sdk);
    let value = json!({
        "region": "us-east-1",
        "AWS_ACCESS_KEY_ID": s.app_key.access_key_id,
        "AWS_SECRET_ACCESS_KEY": s.app_key.secret_access_key,
        "endpoint": "https://api.example.com",
    });
    client
        .create_secret()
        .name("prod/app/aws")
        .secret_string(serde_json::to_string_pretty(&value).unwrap())
        .send()
        .await
        .expect("CreateSecret");
    let fixture = SecretFixture { sdk, client, secret_id: "prod/app/aws".into(), old_id: s.app_key.access_key_id };
    timed("secretsmanager", &fixture).await;
}

// ---------------------------------------------------------------------------------------------
// ECS

const CLUSTER: &str = "prod";
const SERVICE: &str = "api";
const DESIRED: i32 = 2;

struct EcsFixture {
    _moto: Moto,
    sdk: aws_types::SdkConfig,
    ecs: aws_sdk_ecs::Client,
    family: String,
    old_id: Option<String>,
}

impl EcsFixture {
    async fn service(&self) -> aws_sdk_ecs::types::Service {
        let out =
            self.ecs.describe_services().cluster(CLUSTER).services(SERVICE).send().await.expect("DescribeServices");
        out.services().first().cloned().expect("the service exists")
    }
}

fn pairs(kvs: &[KeyValuePair]) -> Vec<Value> {
    kvs.iter().map(|kv| json!([kv.name(), kv.value()])).collect()
}

#[async_trait]
impl Fixture for EcsFixture {
    fn target(&self) -> Box<dyn Target> {
        rekey_adapters::build(&spec(&format!("ecs:{CLUSTER}/{SERVICE}")), &self.sdk, &options())
    }

    /// The revision the service runs, what its containers get (environment and secret references),
    /// and the state of its deployments (not their ids or times: every restart makes new ones).
    async fn observe(&self) -> Vec<u8> {
        let svc = self.service().await;
        let arn = svc.task_definition().expect("service has a task definition").to_string();
        let td =
            self.ecs.describe_task_definition().task_definition(&arn).send().await.expect("DescribeTaskDefinition");
        let containers: Vec<Value> = td
            .task_definition()
            .expect("task definition")
            .container_definitions()
            .iter()
            .map(|c| {
                json!({
                    "name": c.name(),
                    "environment": pairs(c.environment()),
                    "secrets": c.secrets().iter().map(|s| json!([s.name(), s.value_from()])).collect::<Vec<_>>(),
                })
            })
            .collect();
        let deployments: Vec<Value> = svc
            .deployments()
            .iter()
            .map(|d| {
                json!({
                    "status": d.status(),
                    "task_definition": d.task_definition(),
                    "rollout_state": d.rollout_state().map(|s| s.as_str().to_string()),
                    "running": d.running_count(),
                    "desired": d.desired_count(),
                })
            })
            .collect();
        let view = json!({
            "task_definition": arn,
            "desired": svc.desired_count(),
            "containers": containers,
            "deployments": deployments,
        });
        serde_json::to_vec_pretty(&view).unwrap()
    }

    fn old_key_id(&self) -> Option<String> {
        self.old_id.clone()
    }

    /// Revisions of the family still ACTIVE besides the one the service runs: a copy holding the
    /// new key that was never used, or the old one kept for a rollback that can no longer happen.
    async fn residue(&self) -> Vec<String> {
        let current = self.service().await.task_definition().map(str::to_string);
        let out = self
            .ecs
            .list_task_definitions()
            .family_prefix(&self.family)
            .status(TaskDefinitionStatus::Active)
            .send()
            .await
            .expect("ListTaskDefinitions");
        out.task_definition_arns()
            .iter()
            .filter(|arn| Some(arn.as_str()) != current.as_deref())
            .map(|arn| format!("ACTIVE revision {arn}"))
            .collect()
    }
}

/// moto with services that run `DESIRED` tasks (else no rollout ever completes), and the admin.
async fn ecs_moto() -> (Moto, testbed::Seeded, aws_types::SdkConfig) {
    let moto = Moto::start_with(MotoOptions { ecs_service_running: Some(DESIRED as u32) });
    let s = seed(&moto).await;
    let sdk = moto.sdk_config(&s.admin);
    (moto, s, sdk)
}

/// A cluster and a service running `DESIRED` tasks of the first revision of `family`.
async fn ecs_fixture(
    (moto, sdk): (Moto, aws_types::SdkConfig),
    family: &str,
    container: ContainerDefinition,
    old_id: Option<String>,
) -> EcsFixture {
    let ecs = aws_sdk_ecs::Client::new(&sdk);
    ecs.create_cluster().cluster_name(CLUSTER).send().await.expect("CreateCluster");
    let td = ecs
        .register_task_definition()
        .family(family)
        .container_definitions(container)
        .send()
        .await
        .expect("RegisterTaskDefinition");
    let arn = td.task_definition().and_then(|t| t.task_definition_arn()).expect("task definition ARN").to_string();
    ecs.create_service()
        .cluster(CLUSTER)
        .service_name(SERVICE)
        .task_definition(&arn)
        .desired_count(DESIRED)
        .send()
        .await
        .expect("CreateService");
    EcsFixture { _moto: moto, sdk, ecs, family: family.to_string(), old_id }
}

fn env(name: &str, value: &str) -> KeyValuePair {
    KeyValuePair::builder().name(name).value(value).build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_environment_mode_passes_the_conformance_suite() {
    let (moto, s, sdk) = ecs_moto().await;
    let container = ContainerDefinition::builder()
        .name("app")
        .image("app:1")
        .memory(128)
        .environment(env("REGION", "us-east-1"))
        .environment(env("AWS_ACCESS_KEY_ID", &s.app_key.access_key_id))
        .environment(env("AWS_SECRET_ACCESS_KEY", &s.app_key.secret_access_key))
        .environment(env("LOG_LEVEL", "info"))
        .build();
    let fixture = ecs_fixture((moto, sdk), "api-env", container, Some(s.app_key.access_key_id.clone())).await;
    timed("ecs (environment)", &fixture).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_secrets_mode_passes_the_conformance_suite() {
    let (moto, s, sdk) = ecs_moto().await;
    let value =
        json!({"AWS_ACCESS_KEY_ID": s.app_key.access_key_id, "AWS_SECRET_ACCESS_KEY": s.app_key.secret_access_key});
    let arn = aws_sdk_secretsmanager::Client::new(&sdk)
        .create_secret()
        .name("prod/app/aws")
        .secret_string(value.to_string())
        .send()
        .await
        .expect("CreateSecret")
        .arn()
        .expect("secret ARN")
        .to_string();
    let secret = |name: &str| {
        aws_sdk_ecs::types::Secret::builder().name(name).value_from(format!("{arn}:{name}::")).build().expect("secret")
    };
    let container = ContainerDefinition::builder()
        .name("app")
        .image("app:1")
        .memory(128)
        .environment(env("REGION", "us-east-1"))
        .secrets(secret("AWS_ACCESS_KEY_ID"))
        .secrets(secret("AWS_SECRET_ACCESS_KEY"))
        .build();
    // The service hands out no key itself: its tasks read the secret, which another target rotates.
    let fixture = ecs_fixture((moto, sdk), "api-secrets", container, None).await;
    timed("ecs (secrets)", &fixture).await;
}

// ---------------------------------------------------------------------------------------------
// AWS shared credentials file profile

const PROFILE_OLD_ID: &str = "AKIAPROFILEOLDKEY001";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("credentials");
    std::fs::write(
        &path,
        format!(
            "# written by aws configure\n[default]\naws_access_key_id = AKIADEFAULTKEY000001\n\
             aws_secret_access_key = default/secret\n\n[app]\r\nregion=eu-west-1\r\n\
             aws_access_key_id={PROFILE_OLD_ID}\r\naws_secret_access_key=old/secret+value\r\n\
             s3 =\r\n  max_concurrent_requests = 4\r\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    timed("profile", &FileFixture::new(&path, &format!("profile:app@{}", path.display()), PROFILE_OLD_ID)).await;
    drop(dir);
}

// ---------------------------------------------------------------------------------------------
// exec: a command the user supplies

/// A command that "deploys" the key into a file, and a rollback command that puts the old id back.
/// The target itself holds no key (`current_key_id` is None), so the suite runs in its keyless mode:
/// it checks that rollback restores what the fixture observes, in the same process and after a
/// crash, and that no snapshot carries the secret. That `apply` delivers the key is checked below.
struct ExecFixture {
    dir: tempfile::TempDir,
    sdk: aws_types::SdkConfig,
}

const EXEC_OLD_ID: &str = "AKIAEXECOLDKEY000001";

impl ExecFixture {
    fn deployed(&self) -> PathBuf {
        self.dir.path().join("deployed")
    }

    /// Built directly rather than through `build`, to hand it the old key id the orchestrator knows
    /// (`Options` has no field for it yet).
    fn exec_target(&self, rollback: Option<String>) -> rekey_adapters::exec::ExecTarget {
        let deployed = self.deployed();
        let command = format!(
            "exec:printf '%s\\n' \"$AWS_ACCESS_KEY_ID\" > {d}.tmp && \
             printf %s \"$AWS_SECRET_ACCESS_KEY\" | wc -c >> {d}.tmp && mv {d}.tmp {d}",
            d = deployed.display()
        );
        let options = Options { restart_cmd: rollback, ..options() };
        rekey_adapters::exec::ExecTarget::new(&spec(&command), &self.sdk, &options)
            .with_key_ids(Some(EXEC_OLD_ID.into()), None)
    }

    fn rollback_cmd(&self) -> String {
        format!("printf '%s\\n' \"$REKEY_OLD_ACCESS_KEY_ID\" > {}", self.deployed().display())
    }
}

#[async_trait]
impl Fixture for ExecFixture {
    fn target(&self) -> Box<dyn Target> {
        Box::new(self.exec_target(Some(self.rollback_cmd())))
    }

    async fn observe(&self) -> Vec<u8> {
        std::fs::read(self.deployed()).unwrap()
    }

    fn old_key_id(&self) -> Option<String> {
        None
    }

    async fn residue(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "deployed")
            .collect();
        names.sort();
        names
    }
}

fn exec_fixture() -> ExecFixture {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("deployed"), format!("{EXEC_OLD_ID}\n")).unwrap();
    let sdk = aws_types::SdkConfig::builder().behavior_version(aws_config::BehaviorVersion::latest()).build();
    ExecFixture { dir, sdk }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_passes_the_conformance_suite() {
    let fixture = exec_fixture();
    timed("exec", &fixture).await;
}

/// What the keyless suite cannot see: `apply` delivers the key (id and secret through the
/// environment), and without a rollback command a rollback after `apply` reports what is left
/// instead of claiming the target restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_delivers_the_key_and_is_honest_without_a_rollback_command() {
    let fixture = exec_fixture();
    let key = new_key();
    let t = fixture.target();
    let pf = t.preflight().await.unwrap();
    assert!(pf.warnings.is_empty(), "{:?}", pf.warnings);
    let snap = t.snapshot().await.unwrap();
    t.apply(&key, &snap).await.unwrap();
    let deployed = std::fs::read_to_string(fixture.deployed()).unwrap();
    assert_eq!(deployed.split_whitespace().collect::<Vec<_>>(), [key.access_key_id.as_str(), "40"]);
    t.rollback(&snap).await.unwrap();
    assert_eq!(std::fs::read_to_string(fixture.deployed()).unwrap(), format!("{EXEC_OLD_ID}\n"));

    let bare = fixture.exec_target(None);
    let pf = bare.preflight().await.unwrap();
    assert!(pf.warnings.iter().any(|w| w.contains("no --restart-cmd")), "{:?}", pf.warnings);
    let snap = bare.snapshot().await.unwrap();
    bare.rollback(&snap).await.expect("nothing ran yet: nothing to undo");
    bare.apply(&key, &snap).await.unwrap();
    let e = bare.rollback(&snap).await.unwrap_err();
    assert!(e.to_string().contains("by hand") && e.to_string().contains(EXEC_OLD_ID), "{e}");

    // The spec path the CLI takes builds the same adapter.
    let built = rekey_adapters::build(&spec("exec:true ?not=an-option"), &fixture.sdk, &options());
    assert_eq!(built.current_key_id().await.unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// SSM Parameter Store

struct SsmFixture {
    _moto: Moto,
    sdk: aws_types::SdkConfig,
    client: aws_sdk_ssm::Client,
    spec: String,
    /// The JSON parameter, or the id parameter then the secret parameter.
    params: Vec<String>,
    old_id: String,
}

impl SsmFixture {
    async fn history(&self, name: &str) -> Vec<aws_sdk_ssm::types::ParameterHistory> {
        let out = self
            .client
            .get_parameter_history()
            .name(name)
            .with_decryption(false)
            .max_results(50)
            .send()
            .await
            .expect("GetParameterHistory");
        assert!(out.next_token().is_none(), "the fixture keeps under 50 versions");
        out.parameters().to_vec()
    }
}

#[async_trait]
impl Fixture for SsmFixture {
    fn target(&self) -> Box<dyn Target> {
        rekey_adapters::build(&spec(&self.spec), &self.sdk, &options())
    }

    /// What consumers get from each parameter (the decrypted value, its type and KMS key), and the
    /// labels on any version. Version numbers are left out: Parameter Store cannot make an older
    /// version current again, so a rollback necessarily writes a new one.
    async fn observe(&self) -> Vec<u8> {
        let mut view = Vec::new();
        for name in &self.params {
            let out = self.client.get_parameter().name(name).with_decryption(true).send().await.expect("GetParameter");
            let p = out.parameter().expect("parameter");
            let history = self.history(name).await;
            let current = history.iter().find(|h| h.version() == p.version()).expect("current version in history");
            let labels: Vec<String> = history
                .iter()
                .filter(|h| !h.labels().is_empty())
                .map(|h| format!("{}: {}", h.version(), h.labels().join(",")))
                .collect();
            view.push(json!({
                "name": name,
                "type": p.r#type().map(|t| t.as_str().to_string()),
                "key_id": current.key_id(),
                "tier": current.tier().map(|t| t.as_str().to_string()),
                "value": p.value(),
                "labels": labels,
            }));
        }
        serde_json::to_vec_pretty(&view).unwrap()
    }

    fn old_key_id(&self) -> Option<String> {
        Some(self.old_id.clone())
    }

    /// A `rekey-*` label left on any version.
    async fn residue(&self) -> Vec<String> {
        let mut left = Vec::new();
        for name in &self.params {
            for h in self.history(name).await {
                for l in h.labels().iter().filter(|l| l.starts_with("rekey-")) {
                    left.push(format!("{name} version {} labelled {l}", h.version()));
                }
            }
        }
        left
    }
}

async fn ssm_moto() -> (Moto, testbed::Seeded, aws_types::SdkConfig, aws_sdk_ssm::Client) {
    let moto = Moto::start();
    let s = seed(&moto).await;
    let sdk = moto.sdk_config(&s.admin);
    let client = aws_sdk_ssm::Client::new(&sdk);
    (moto, s, sdk, client)
}

async fn put_param(client: &aws_sdk_ssm::Client, name: &str, value: &str, kind: aws_sdk_ssm::types::ParameterType) {
    client.put_parameter().name(name).value(value).r#type(kind).send().await.expect("PutParameter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssm_json_parameter_passes_the_conformance_suite() {
    let (moto, s, sdk, client) = ssm_moto().await;
    let value = json!({
        "region": "us-east-1",
        "aws_access_key_id": s.app_key.access_key_id,
        "aws_secret_access_key": s.app_key.secret_access_key,
    });
    let name = "/prod/app/aws";
    // Two versions before the suite, so the one to restore is not the first.
    put_param(&client, name, "{}", aws_sdk_ssm::types::ParameterType::SecureString).await;
    client
        .put_parameter()
        .name(name)
        .value(serde_json::to_string_pretty(&value).unwrap())
        .overwrite(true)
        .send()
        .await
        .expect("PutParameter");
    let fixture = SsmFixture {
        _moto: moto,
        sdk,
        client,
        spec: format!("ssm:{name}"),
        params: vec![name.to_string()],
        old_id: s.app_key.access_key_id,
    };
    timed("ssm (JSON SecureString)", &fixture).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssm_parameter_pair_passes_the_conformance_suite() {
    let (moto, s, sdk, client) = ssm_moto().await;
    let (id_param, secret_param) = ("/prod/app/aws_access_key_id", "/prod/app/aws_secret_access_key");
    put_param(&client, id_param, &s.app_key.access_key_id, aws_sdk_ssm::types::ParameterType::String).await;
    put_param(&client, secret_param, &s.app_key.secret_access_key, aws_sdk_ssm::types::ParameterType::SecureString)
        .await;
    let fixture = SsmFixture {
        _moto: moto,
        sdk,
        client,
        spec: format!("ssm:{id_param}?secret-param={secret_param}"),
        params: vec![id_param.to_string(), secret_param.to_string()],
        old_id: s.app_key.access_key_id,
    };
    timed("ssm (parameter pair)", &fixture).await;
}

// ---------------------------------------------------------------------------------------------
// Lambda

const FUNCTION: &str = "app-worker";

struct LambdaFixture {
    _moto: Moto,
    sdk: aws_types::SdkConfig,
    client: aws_sdk_lambda::Client,
    old_id: String,
}

#[async_trait]
impl Fixture for LambdaFixture {
    fn target(&self) -> Box<dyn Target> {
        rekey_adapters::build(&spec(&format!("lambda:{FUNCTION}")), &self.sdk, &options())
    }

    /// The environment of `$LATEST`, sorted, and every published version with its description and
    /// environment (a backup version that outlives a rollback is a copy of the old secret).
    async fn observe(&self) -> Vec<u8> {
        let out = self
            .client
            .list_versions_by_function()
            .function_name(FUNCTION)
            .send()
            .await
            .expect("ListVersionsByFunction");
        let mut versions = Vec::new();
        for v in out.versions() {
            let qualifier = v.version().expect("version");
            let config = self
                .client
                .get_function_configuration()
                .function_name(FUNCTION)
                .qualifier(qualifier)
                .send()
                .await
                .expect("GetFunctionConfiguration");
            let env: std::collections::BTreeMap<String, String> =
                config.environment().and_then(|e| e.variables()).cloned().unwrap_or_default().into_iter().collect();
            versions.push(json!({
                "version": qualifier,
                "description": config.description(),
                "environment": env,
                "last_update_status": config.last_update_status().map(|s| s.as_str().to_string()),
            }));
        }
        serde_json::to_vec_pretty(&versions).unwrap()
    }

    fn old_key_id(&self) -> Option<String> {
        Some(self.old_id.clone())
    }

    /// A backup version left behind.
    async fn residue(&self) -> Vec<String> {
        let out = self
            .client
            .list_versions_by_function()
            .function_name(FUNCTION)
            .send()
            .await
            .expect("ListVersionsByFunction");
        out.versions()
            .iter()
            .filter(|v| v.description().is_some_and(|d| d.starts_with("rekey")))
            .map(|v| format!("version {:?}: {:?}", v.version(), v.description()))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_environment_passes_the_conformance_suite() {
    let moto = Moto::start();
    let s = seed(&moto).await;
    let sdk = moto.sdk_config(&s.admin);
    // moto checks that the execution role exists.
    let role = aws_sdk_iam::Client::new(&sdk)
        .create_role()
        .role_name("app-worker-role")
        .assume_role_policy_document(
            json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
                .to_string(),
        )
        .send()
        .await
        .expect("CreateRole");
    let role_arn = role.role().expect("role").arn().to_string();
    let client = aws_sdk_lambda::Client::new(&sdk);
    let env = aws_sdk_lambda::types::Environment::builder()
        .variables("REGION", "us-east-1")
        .variables("AWS_ACCESS_KEY_ID", &s.app_key.access_key_id)
        .variables("AWS_SECRET_ACCESS_KEY", &s.app_key.secret_access_key)
        .variables("LOG_LEVEL", "info")
        .build();
    let zip = tiny_zip("index.py", b"def handler(event, context):\n    return 'ok'\n");
    client
        .create_function()
        .function_name(FUNCTION)
        .runtime(aws_sdk_lambda::types::Runtime::Python312)
        .role(role_arn)
        .handler("index.handler")
        .code(
            aws_sdk_lambda::types::FunctionCode::builder().zip_file(aws_sdk_lambda::primitives::Blob::new(zip)).build(),
        )
        .environment(env)
        .send()
        .await
        .expect("CreateFunction");
    // A version the user published, and an alias on $LATEST: the first backup reuses the version
    // (nothing changed since), so rekey must leave it alone; the alias follows $LATEST and is fine.
    client.publish_version().function_name(FUNCTION).description("release 1").send().await.expect("PublishVersion");
    client
        .create_alias()
        .function_name(FUNCTION)
        .name("live")
        .function_version("$LATEST")
        .send()
        .await
        .expect("CreateAlias");
    let fixture = LambdaFixture { _moto: moto, sdk, client, old_id: s.app_key.access_key_id };
    timed("lambda", &fixture).await;

    // An alias on a published version keeps that version's frozen environment: rekey must refuse.
    fixture
        .client
        .create_alias()
        .function_name(FUNCTION)
        .name("pinned")
        .function_version("1")
        .send()
        .await
        .expect("CreateAlias");
    let e = fixture.target().preflight().await.expect_err("preflight refuses an alias on a version");
    assert!(e.to_string().contains("pinned -> version 1"), "{e}");
}
