//! `rekey rotate` with AWS targets against the emulator: a Secrets Manager secret read by a
//! caching app, an ECS service with the key in its task definition (environment) or read from
//! the secret (secrets), a rollback when a target cannot be written, the least-privilege policy
//! shipped in deploy/, and a rollout that never completes.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_ecs::types::{ContainerDefinition, KeyValuePair, Secret};
use serde_json::{Value, json};
use support::*;
use testbed::app::{self, CredentialSource};
use testbed::moto::{Creds, Moto, MotoOptions, create_user};

const SECRET_ID: &str = "prod/app/aws";
/// A field of the secret that is not the key: a rotation must leave it alone.
const OTHER_FIELD: (&str, &str) = ("DATABASE_URL", "postgres://db.internal:5432/app");
const CLUSTER: &str = "prod";
const SERVICE: &str = "api";
/// Tasks moto reports as running (`MOTO_ECS_SERVICE_RUNNING`); services are created with this
/// desiredCount so that their deployment is COMPLETED.
const RUNNING: u32 = 2;
const ID: &str = "AWS_ACCESS_KEY_ID";
const SECRET: &str = "AWS_SECRET_ACCESS_KEY";

/// What the app's platform identity (a task role, an instance profile) may do.
const PLATFORM_ACTIONS: &[&str] =
    &["secretsmanager:GetSecretValue", "ecs:DescribeServices", "ecs:DescribeTaskDefinition"];

async fn scenario_with_ecs() -> Scenario {
    Scenario::start_with(MotoOptions { ecs_service_running: Some(RUNNING) }).await
}

// ---------------------------------------------------------------------------------------------
// Secrets Manager

/// Creates `prod/app/aws` holding the key and one unrelated field; returns its ARN.
async fn create_secret(moto: &Moto, admin: &Creds, key: &Creds) -> String {
    let sm = aws_sdk_secretsmanager::Client::new(&moto.sdk_config(admin));
    let value = json!({
        ID: key.access_key_id,
        SECRET: key.secret_access_key,
        OTHER_FIELD.0: OTHER_FIELD.1,
    });
    let out = sm.create_secret().name(SECRET_ID).secret_string(value.to_string()).send().await.expect("CreateSecret");
    out.arn().expect("secret ARN").to_string()
}

/// The secret's AWSCURRENT value, parsed.
async fn secret_current(moto: &Moto, admin: &Creds) -> Value {
    let sm = aws_sdk_secretsmanager::Client::new(&moto.sdk_config(admin));
    // Explicit stage: moto returns a stale value without one after AWSCURRENT moved.
    let out = sm.get_secret_value().secret_id(SECRET_ID).version_stage("AWSCURRENT").send().await.expect("Get");
    serde_json::from_str(out.secret_string().expect("SecretString")).expect("secret is JSON")
}

/// The secret's AWSCURRENT text, byte for byte.
async fn secret_current_text(moto: &Moto, admin: &Creds) -> String {
    let sm = aws_sdk_secretsmanager::Client::new(&moto.sdk_config(admin));
    let out = sm.get_secret_value().secret_id(SECRET_ID).version_stage("AWSCURRENT").send().await.expect("Get");
    out.secret_string().expect("SecretString").to_string()
}

/// Version id -> staging labels.
async fn secret_labels(moto: &Moto, admin: &Creds) -> HashMap<String, Vec<String>> {
    let sm = aws_sdk_secretsmanager::Client::new(&moto.sdk_config(admin));
    let out = sm.describe_secret().secret_id(SECRET_ID).send().await.expect("DescribeSecret");
    out.version_ids_to_stages().cloned().unwrap_or_default()
}

fn holders(labels: &HashMap<String, Vec<String>>, stage: &str) -> Vec<String> {
    labels.iter().filter(|(_, s)| s.iter().any(|l| l == stage)).map(|(v, _)| v.clone()).collect()
}

fn creds_in(value: &Value) -> Creds {
    Creds::new(value[ID].as_str().expect("key id field"), value[SECRET].as_str().expect("secret field"))
}

// ---------------------------------------------------------------------------------------------
// ECS

/// Where a task definition gets the key from.
enum KeyIn<'a> {
    Environment(&'a Creds),
    /// `secrets[].valueFrom` = `<secret ARN>:<field>::`.
    Secret(&'a str),
}

fn kv(name: &str, value: &str) -> KeyValuePair {
    KeyValuePair::builder().name(name).value(value).build()
}

async fn create_cluster(moto: &Moto, admin: &Creds) {
    let ecs = aws_sdk_ecs::Client::new(&moto.sdk_config(admin));
    ecs.create_cluster().cluster_name(CLUSTER).send().await.expect("CreateCluster");
}

/// Registers `<service>:1` and creates the service on it with desiredCount [`RUNNING`]; returns
/// the task definition ARN. No network configuration: moto validates subnets and security
/// groups against EC2 only when one is given, and the default launch type (EC2) needs none.
async fn create_service(moto: &Moto, admin: &Creds, service: &str, key: KeyIn<'_>) -> String {
    let ecs = aws_sdk_ecs::Client::new(&moto.sdk_config(admin));
    let mut web = ContainerDefinition::builder()
        .name("web")
        .image("example/app:1")
        // moto's RegisterTaskDefinition requires memory.
        .memory(128)
        .environment(kv("LOG_LEVEL", "info"));
    web = match key {
        KeyIn::Environment(k) => {
            web.environment(kv(ID, &k.access_key_id)).environment(kv(SECRET, &k.secret_access_key))
        }
        KeyIn::Secret(arn) => web
            .secrets(Secret::builder().name(ID).value_from(format!("{arn}:{ID}::")).build().unwrap())
            .secrets(Secret::builder().name(SECRET).value_from(format!("{arn}:{SECRET}::")).build().unwrap()),
    };
    let sidecar = ContainerDefinition::builder()
        .name("proxy")
        .image("example/proxy:1")
        .memory(64)
        .environment(kv("UPSTREAM", "127.0.0.1:8080"))
        .build();
    let out = ecs
        .register_task_definition()
        .family(service)
        .container_definitions(web.build())
        .container_definitions(sidecar)
        .send()
        .await
        .expect("RegisterTaskDefinition");
    let td = out.task_definition().and_then(|t| t.task_definition_arn()).expect("task definition ARN").to_string();
    ecs.create_service()
        .cluster(CLUSTER)
        .service_name(service)
        .task_definition(&td)
        .desired_count(RUNNING as i32)
        .send()
        .await
        .expect("CreateService");
    td
}

/// The task definition the service points at now.
async fn service_task_definition(moto: &Moto, admin: &Creds, service: &str) -> String {
    let ecs = aws_sdk_ecs::Client::new(&moto.sdk_config(admin));
    let out = ecs.describe_services().cluster(CLUSTER).services(service).send().await.expect("DescribeServices");
    out.services().first().and_then(|s| s.task_definition()).expect("service task definition").to_string()
}

/// The environment of the task definition's `web` container.
async fn web_environment(moto: &Moto, admin: &Creds, task_definition: &str) -> HashMap<String, String> {
    let ecs = aws_sdk_ecs::Client::new(&moto.sdk_config(admin));
    let out =
        ecs.describe_task_definition().task_definition(task_definition).send().await.expect("DescribeTaskDefinition");
    let td = out.task_definition().expect("task definition");
    let web = td.container_definitions().iter().find(|c| c.name() == Some("web")).expect("web container");
    web.environment()
        .iter()
        .map(|kv| (kv.name().unwrap_or_default().to_string(), kv.value().unwrap_or_default().to_string()))
        .collect()
}

fn revision(task_definition: &str) -> u32 {
    task_definition.rsplit(':').next().and_then(|r| r.parse().ok()).expect("revision")
}

fn ecs_app(service: &str, platform: &Creds) -> CredentialSource {
    CredentialSource::Ecs { cluster: CLUSTER.into(), service: service.into(), platform: platform.clone() }
}

// ---------------------------------------------------------------------------------------------

/// The checks every successful rotation makes on IAM: the old key is Inactive and rejected, the
/// new one works.
async fn assert_rotated(moto: &Moto, s: &testbed::Seeded, json: &Value, new: &Creds) {
    assert_eq!(json["outcome"], "rotated", "{json}");
    assert_eq!(json["old_key_id"], s.app_key.access_key_id.as_str());
    assert_eq!(json["new_key_id"], new.access_key_id.as_str());
    assert_eq!(json["old_key_status"], "Inactive");
    assert!(json["targets"].as_array().unwrap().iter().all(|t| t["status"] == "updated"), "{json}");
    let mut keys = keys_of(moto, &s.admin, &s.app_user).await;
    keys.sort();
    let mut expected =
        vec![(s.app_key.access_key_id.clone(), "Inactive".to_string()), (new.access_key_id.clone(), "Active".into())];
    expected.sort();
    assert_eq!(keys, expected);
    assert_eq!(sts_check(moto, &s.app_key).await, Err("InvalidClientTokenId".into()), "old key rejected");
    assert!(sts_check(moto, new).await.is_ok(), "new key works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secretsmanager_rotation_under_load_has_zero_failed_requests() {
    let sc = Scenario::start().await;
    let (moto, s, dir) = (&sc.moto, &sc.seeded, &sc.dir);
    create_secret(moto, &s.admin, &s.app_key).await;
    let platform = create_user(moto, &s.admin, "app-platform", PLATFORM_ACTIONS).await;
    let app = app::start(
        moto,
        CredentialSource::SecretsManager { secret_id: SECRET_ID.into(), platform, cache_ttl: Duration::from_secs(1) },
    )
    .await;
    sc.enforce_auth().await;

    // The app caches the secret for 1 s: after AWSCURRENT moves it keeps signing with the old key
    // for up to that long, so the old key must stay Active longer than the cache lives.
    let out = sc
        .rotate()
        .target(format!("secretsmanager:{SECRET_ID}"))
        .probe(&app)
        .args(&["--grace", "2s"])
        .json()
        .under_load(&app, 60)
        .run()
        .await;

    out.assert_code(0);
    let json = out.json();
    assert!(json["steps"].as_array().unwrap().iter().any(|s| s["name"] == "grace"), "{json}");

    let current = secret_current(moto, &s.admin).await;
    let new = creds_in(&current);
    assert_rotated(moto, s, &json, &new).await;
    assert_eq!(current[OTHER_FIELD.0], OTHER_FIELD.1, "the other field is untouched");
    assert_eq!(
        current.as_object().unwrap().len(),
        3,
        "no field added or removed: {:?}",
        current.as_object().unwrap().keys()
    );
    let labels = secret_labels(moto, &s.admin).await;
    assert!(holders(&labels, "AWSPENDING").is_empty(), "no AWSPENDING left: {labels:?}");
    assert_eq!(holders(&labels, "AWSCURRENT").len(), 1);
    assert_eq!(holders(&labels, "AWSPREVIOUS").len(), 1, "the old value stays as AWSPREVIOUS: {labels:?}");
    assert_eq!(app.stats().last_key_id.as_deref(), Some(new.access_key_id.as_str()), "the app uses the new key");
    assert_secret_absent(&new.secret_access_key, &[&out], dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_environment_rotation_under_load_deploys_a_new_revision() {
    let sc = scenario_with_ecs().await;
    let (moto, s, dir) = (&sc.moto, &sc.seeded, &sc.dir);
    create_cluster(moto, &s.admin).await;
    let original = create_service(moto, &s.admin, SERVICE, KeyIn::Environment(&s.app_key)).await;
    let platform = create_user(moto, &s.admin, "app-platform", PLATFORM_ACTIONS).await;
    let app = app::start(moto, ecs_app(SERVICE, &platform)).await;
    sc.enforce_auth().await;

    // moto reports the new deployment COMPLETED the moment UpdateService returns, and the model
    // app switches its tasks on its next 200 ms poll; on AWS a COMPLETED rollout has already
    // stopped the old tasks. The 1 s grace covers that gap of the model, not a cache.
    let out = sc
        .rotate()
        .target(format!("ecs:{CLUSTER}/{SERVICE}"))
        .probe(&app)
        .args(&["--ecs-timeout", "60s", "--grace", "1s"])
        .json()
        .under_load(&app, 40)
        .run()
        .await;

    out.assert_code(0);
    let json = out.json();

    let now = service_task_definition(moto, &s.admin, SERVICE).await;
    assert_ne!(now, original, "the service runs a new revision");
    assert_eq!(revision(&now), revision(&original) + 1);
    let env = web_environment(moto, &s.admin, &now).await;
    let new = Creds::new(&env[ID], &env[SECRET]);
    assert_eq!(json["new_key_id"], new.access_key_id.as_str());
    assert_eq!(env["LOG_LEVEL"], "info", "other variables kept");
    assert_eq!(
        web_environment(moto, &s.admin, &original).await[ID],
        s.app_key.access_key_id,
        "the original revision is unchanged"
    );
    assert_rotated(moto, s, &json, &new).await;
    assert_eq!(app.stats().last_key_id.as_deref(), Some(new.access_key_id.as_str()), "the tasks use the new key");
    assert_secret_absent(&new.secret_access_key, &[&out], dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_and_ecs_secrets_mode_rotate_together_under_load() {
    let sc = scenario_with_ecs().await;
    let (moto, s, dir) = (&sc.moto, &sc.seeded, &sc.dir);
    let arn = create_secret(moto, &s.admin, &s.app_key).await;
    create_cluster(moto, &s.admin).await;
    let original = create_service(moto, &s.admin, SERVICE, KeyIn::Secret(&arn)).await;
    let platform = create_user(moto, &s.admin, "app-platform", PLATFORM_ACTIONS).await;
    let app = app::start(moto, ecs_app(SERVICE, &platform)).await;
    sc.enforce_auth().await;

    // See the environment-mode test for why a 1 s grace.
    let out = sc
        .rotate()
        .target(format!("secretsmanager:{SECRET_ID}"))
        .target(format!("ecs:{CLUSTER}/{SERVICE}"))
        .probe(&app)
        .args(&["--ecs-timeout", "60s", "--grace", "1s"])
        .json()
        .under_load(&app, 40)
        .run()
        .await;

    out.assert_code(0);
    let json = out.json();
    assert_eq!(json["targets"].as_array().unwrap().len(), 2, "{json}");

    let current = secret_current(moto, &s.admin).await;
    let new = creds_in(&current);
    assert_rotated(moto, s, &json, &new).await;
    assert_eq!(current[OTHER_FIELD.0], OTHER_FIELD.1);
    assert!(holders(&secret_labels(moto, &s.admin).await, "AWSPENDING").is_empty());
    // Secrets mode restarts tasks; the task definition itself does not change.
    assert_eq!(service_task_definition(moto, &s.admin, SERVICE).await, original);
    assert_eq!(app.stats().last_key_id.as_deref(), Some(new.access_key_id.as_str()), "the tasks use the new key");
    assert_secret_absent(&new.secret_access_key, &[&out], dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_cannot_be_written_rolls_everything_back() {
    let sc = Scenario::start().await;
    let (moto, s) = (&sc.moto, &sc.seeded);
    create_secret(moto, &s.admin, &s.app_key).await;
    let env_path = sc.env_file();
    let env_before = std::fs::read(&env_path).unwrap();
    let secret_before = secret_current_text(moto, &s.admin).await;
    let labels_before = secret_labels(moto, &s.admin).await;
    // Everything rekey needs but secretsmanager:PutSecretValue.
    let limited = create_user(
        moto,
        &s.admin,
        "rekey-limited",
        &[
            "iam:ListAccessKeys",
            "iam:GetAccessKeyLastUsed",
            "iam:CreateAccessKey",
            "iam:UpdateAccessKey",
            "iam:DeleteAccessKey",
            "iam:TagUser",
            "iam:UntagUser",
            "secretsmanager:DescribeSecret",
            "secretsmanager:GetSecretValue",
            "secretsmanager:UpdateSecretVersionStage",
        ],
    )
    .await;
    sc.enforce_auth().await;

    // The env file goes first: the first target is the one `stage` writes to, so the secret is
    // only written (and refused) at apply, after the env file already holds the new key.
    let out = sc
        .rotate()
        .signed_by(&limited)
        .target(format!("env:{}", env_path.display()))
        .target(format!("secretsmanager:{SECRET_ID}"))
        .json()
        .run()
        .await;

    out.assert_code(3);
    let json = out.json();
    assert_eq!(json["outcome"], "rolled_back", "{json}");
    assert_eq!(json["old_key_status"], "Active");
    let error = json["error"].as_str().unwrap();
    assert!(error.contains("apply:secretsmanager:") && error.contains("access denied"), "{error}");
    assert_eq!(json["targets"][0]["status"], "restored", "{json}");
    assert_eq!(std::fs::read(&env_path).unwrap(), env_before, "env file restored byte for byte");
    assert_eq!(secret_current_text(moto, &s.admin).await, secret_before, "AWSCURRENT value unchanged");
    assert_eq!(secret_labels(moto, &s.admin).await, labels_before, "no version written, no label moved");
    assert_eq!(keys_of(moto, &s.admin, &s.app_user).await, vec![(s.app_key.access_key_id.clone(), "Active".into())]);
    assert!(sts_check(moto, &s.app_key).await.is_ok());
}

/// The actions of the Allow statements of deploy/iam-policy-rotate.json.
fn shipped_policy_actions() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/iam-policy-rotate.json");
    let policy: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut actions = Vec::new();
    for statement in policy["Statement"].as_array().unwrap() {
        assert_eq!(statement["Resource"], "*", "moto evaluates only Resource \"*\" reliably");
        if statement["Effect"] != "Allow" {
            continue;
        }
        match &statement["Action"] {
            Value::String(a) => actions.push(a.clone()),
            Value::Array(list) => actions.extend(list.iter().map(|a| a.as_str().unwrap().to_string())),
            other => panic!("unexpected Action {other}"),
        }
    }
    actions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_least_privilege_policy_is_enough_for_every_target_kind() {
    let sc = scenario_with_ecs().await;
    let (moto, s, dir) = (&sc.moto, &sc.seeded, &sc.dir);
    let arn = create_secret(moto, &s.admin, &s.app_key).await;
    create_cluster(moto, &s.admin).await;
    let reads_secret = create_service(moto, &s.admin, "reads-secret", KeyIn::Secret(&arn)).await;
    let holds_key = create_service(moto, &s.admin, "holds-key", KeyIn::Environment(&s.app_key)).await;
    let env_path = sc.env_file();
    let actions = shipped_policy_actions();
    let actions: Vec<&str> = actions.iter().map(String::as_str).collect();
    let rotator = create_user(moto, &s.admin, "rekey-rotator", &actions).await;
    sc.enforce_auth().await;

    let out = sc
        .rotate()
        .signed_by(&rotator)
        .target(format!("secretsmanager:{SECRET_ID}"))
        .target(format!("ecs:{CLUSTER}/reads-secret"))
        .target(format!("ecs:{CLUSTER}/holds-key"))
        .target(format!("env:{}", env_path.display()))
        .args(&["--ecs-timeout", "60s"])
        .json()
        .run()
        .await;

    out.assert_code(0);
    let json = out.json();
    assert!(json.get("warnings").is_none_or(|w| !w.to_string().contains("could not")), "{json}");
    let current = secret_current(moto, &s.admin).await;
    let new = creds_in(&current);
    assert_rotated(moto, s, &json, &new).await;
    assert_eq!(service_task_definition(moto, &s.admin, "reads-secret").await, reads_secret);
    let now = service_task_definition(moto, &s.admin, "holds-key").await;
    assert_ne!(now, holds_key);
    assert_eq!(web_environment(moto, &s.admin, &now).await[ID], new.access_key_id);
    let env_text = std::fs::read_to_string(&env_path).unwrap();
    assert!(env_text.contains(&new.access_key_id) && env_text.contains(&new.secret_access_key));
    assert_secret_absent(&new.secret_access_key, &[&out], dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ecs_rollback_with_the_shipped_policy_restores_the_revision_and_deregisters_the_copy() {
    let sc = scenario_with_ecs().await;
    let (moto, s) = (&sc.moto, &sc.seeded);
    create_cluster(moto, &s.admin).await;
    let original = create_service(moto, &s.admin, SERVICE, KeyIn::Environment(&s.app_key)).await;
    let actions = shipped_policy_actions();
    let actions: Vec<&str> = actions.iter().map(String::as_str).collect();
    let rotator = create_user(moto, &s.admin, "rekey-rotator", &actions).await;
    sc.enforce_auth().await;

    // Nothing listens there: the probe fails after the new revision is deployed.
    let probe = dead_probe_url();
    let out = sc
        .rotate()
        .signed_by(&rotator)
        .target(format!("ecs:{CLUSTER}/{SERVICE}"))
        .args(&["--probe", &probe, "--probe-timeout", "2s", "--ecs-timeout", "30s"])
        .json()
        .run()
        .await;

    out.assert_code(3);
    let json = out.json();
    assert_eq!(json["outcome"], "rolled_back", "{json}");
    assert_eq!(json["targets"][0]["status"], "restored", "{json}");
    assert_eq!(service_task_definition(moto, &s.admin, SERVICE).await, original, "back on the original revision");
    // The revision that held the new key is deregistered: no copy of the new secret is left.
    let ecs = aws_sdk_ecs::Client::new(&moto.sdk_config(&s.admin));
    let active = ecs
        .list_task_definitions()
        .family_prefix(SERVICE)
        .status(aws_sdk_ecs::types::TaskDefinitionStatus::Active)
        .send()
        .await
        .expect("ListTaskDefinitions");
    assert_eq!(
        active.task_definition_arns(),
        std::slice::from_ref(&original),
        "only the original revision is ACTIVE; rekey said:\n{}",
        out.stderr
    );
    assert_eq!(keys_of(moto, &s.admin, &s.app_user).await, vec![(s.app_key.access_key_id.clone(), "Active".into())]);
    assert!(sts_check(moto, &s.app_key).await.is_ok());
}

/// Without `MOTO_ECS_SERVICE_RUNNING` moto never completes any rollout: not rekey's, and not the
/// one its rollback starts to put the original revision back. rekey cannot then tell that no task
/// runs the new key, so it keeps the new key, reports `failed` (exit 4) and leaves the journal
/// for `rekey resume`: the safe side. The service itself is already back on its revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_that_never_completes_points_the_service_back_and_keeps_the_new_key() {
    let sc = Scenario::start().await;
    let (moto, s, dir) = (&sc.moto, &sc.seeded, &sc.dir);
    create_cluster(moto, &s.admin).await;
    let original = create_service(moto, &s.admin, SERVICE, KeyIn::Environment(&s.app_key)).await;
    sc.enforce_auth().await;

    let out = sc.rotate().target(format!("ecs:{CLUSTER}/{SERVICE}")).args(&["--ecs-timeout", "5s"]).json().run().await;

    out.assert_code(4);
    let json = out.json();
    assert_eq!(json["outcome"], "failed", "{json}");
    assert!(json["error"].as_str().unwrap().contains("timed out"), "{json}");
    assert_eq!(json["targets"][0]["status"], "restore_failed", "{json}");
    assert!(json["left"].to_string().contains("resume"), "{json}");
    assert_eq!(service_task_definition(moto, &s.admin, SERVICE).await, original, "back on the original revision");
    let keys = keys_of(moto, &s.admin, &s.app_user).await;
    assert!(keys.contains(&(s.app_key.access_key_id.clone(), "Active".into())), "old key Active: {keys:?}");
    assert_eq!(keys.len(), 2, "the new key is kept while a task might use it: {keys:?}");
    assert!(sts_check(moto, &s.app_key).await.is_ok());
    assert!(dir.path().join("active").read_dir().unwrap().count() == 1, "journal left for `rekey resume`");
}
