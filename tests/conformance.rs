//! The shared conformance suite (`rekey_adapters::conformance`) against every adapter, from one
//! place: an env file in a temp folder, and Secrets Manager and ECS (both shapes) on the emulator.
//! Every adapter must keep the same promises: apply, verify, roll back, roll back after a crash from
//! a journalled snapshot, stage, finish.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ecs::types::{ContainerDefinition, KeyValuePair, TaskDefinitionStatus};
use rekey_adapters::conformance::{Fixture, run};
use rekey_adapters::{NewKey, Options, Target, TargetSpec};
use secrecy::SecretString;
use serde_json::{Value, json};
use testbed::moto::{Moto, MotoOptions, seed};

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

struct EnvFixture {
    dir: tempfile::TempDir,
    path: PathBuf,
    sdk: aws_types::SdkConfig,
}

const ENV_OLD_ID: &str = "AKIAENVOLDKEY0000001";

#[async_trait]
impl Fixture for EnvFixture {
    fn target(&self) -> Box<dyn Target> {
        rekey_adapters::build(&spec(&format!("env:{}", self.path.display())), &self.sdk, &options())
    }

    /// The bytes and the mode of the file.
    async fn observe(&self) -> Vec<u8> {
        let mut out = std::fs::read(&self.path).unwrap();
        let mode = std::fs::metadata(&self.path).unwrap().permissions().mode();
        out.extend(format!("\nmode {mode:o}").bytes());
        out
    }

    fn old_key_id(&self) -> Option<String> {
        Some(ENV_OLD_ID.to_string())
    }

    /// Every other file in the folder (backups, temp files).
    async fn residue(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "app.env")
            .collect();
        names.sort();
        names
    }
}

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
    // Building talks to nothing; an env file needs no emulator.
    let sdk = aws_types::SdkConfig::builder().behavior_version(aws_config::BehaviorVersion::latest()).build();
    timed("env file", &EnvFixture { dir, path, sdk }).await;
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
