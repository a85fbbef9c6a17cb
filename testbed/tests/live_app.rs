//! The live app consumes keys like the deployments rekey rotates, and the load generator
//! counts what a rotation would break.

use std::time::Duration;

use testbed::app::{self, CredentialSource};
use testbed::moto::create_user;
use testbed::{Creds, Moto, MotoOptions, load, seed};

async fn get(url: &str) -> (u16, String) {
    let resp = reqwest::get(url).await.expect("app reachable");
    (resp.status().as_u16(), resp.text().await.unwrap_or_default())
}

fn dotenv(c: &Creds) -> String {
    format!("AWS_ACCESS_KEY_ID=\"{}\"\nAWS_SECRET_ACCESS_KEY={}\n", c.access_key_id, c.secret_access_key)
}

async fn new_key(moto: &Moto, admin: &Creds, user: &str) -> Creds {
    let iam = aws_sdk_iam::Client::new(&moto.sdk_config(admin));
    let out = iam.create_access_key().user_name(user).send().await.expect("new key");
    let k = out.access_key().expect("key");
    Creds::new(k.access_key_id(), k.secret_access_key())
}

#[tokio::test]
async fn env_file_app_under_load() {
    let moto = Moto::start();
    let seeded = seed(&moto).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let env_file = dir.path().join("app.env");
    std::fs::write(&env_file, dotenv(&seeded.app_key)).expect("write env");
    let app = app::start(&moto, CredentialSource::EnvFile(env_file.clone())).await;
    moto.set_auth(true).await;

    let (status, body) = get(&format!("{}/health", app.url())).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("user/app-integration-user"), "{body}");

    let load = load::start(format!("{}/health", app.url()), 25);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = load.stop().await;
    assert!(report.total >= 30, "{report:?}");
    assert_eq!(report.failed, 0, "{report:?}");

    // The file is re-read per request: a broken key shows at once, as a 502.
    let broken = Creds::new(seeded.app_key.access_key_id.clone(), "wrong");
    std::fs::write(&env_file, dotenv(&broken)).expect("write env");
    let (status, body) = get(&app.url()).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("SignatureDoesNotMatch"), "{body}");
    let load = load::start(app.url(), 20);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.stop().await;
    assert!(report.failed > 0 && report.failed == report.total, "{report:?}");
    assert!(!report.first_failures.is_empty());
    assert_eq!(get(&format!("{}/nope", app.url())).await.0, 404);
}

#[tokio::test]
async fn secrets_manager_app_caches_awscurrent() {
    let moto = Moto::start();
    let seeded = seed(&moto).await;
    let platform = create_user(&moto, &seeded.admin, "platform", &["secretsmanager:GetSecretValue"]).await;
    let sm = aws_sdk_secretsmanager::Client::new(&moto.sdk_config(&seeded.admin));
    let json = |c: &Creds| {
        serde_json::json!({"AWS_ACCESS_KEY_ID": c.access_key_id, "AWS_SECRET_ACCESS_KEY": c.secret_access_key})
            .to_string()
    };
    sm.create_secret().name("app/key").secret_string(json(&seeded.app_key)).send().await.expect("secret");
    moto.set_auth(true).await;
    let app = app::start(
        &moto,
        CredentialSource::SecretsManager { secret_id: "app/key".into(), platform, cache_ttl: Duration::from_secs(2) },
    )
    .await;
    assert_eq!(get(&app.url()).await.0, 200);
    assert_eq!(app.stats().last_key_id.as_deref(), Some(seeded.app_key.access_key_id.as_str()));

    let second = new_key(&moto, &seeded.admin, &seeded.app_user).await;
    sm.put_secret_value().secret_id("app/key").secret_string(json(&second)).send().await.expect("put");
    // Still cached: the app keeps the old key until the TTL runs out.
    assert_eq!(get(&app.url()).await.0, 200);
    assert_eq!(app.stats().last_key_id.as_deref(), Some(seeded.app_key.access_key_id.as_str()));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(get(&app.url()).await.0, 200);
    assert_eq!(app.stats().last_key_id.as_deref(), Some(second.access_key_id.as_str()));
}

#[tokio::test]
async fn ecs_app_switches_keys_only_when_new_tasks_start() {
    let moto = Moto::start_with(MotoOptions { ecs_service_running: Some(1) });
    let seeded = seed(&moto).await;
    let platform =
        create_user(&moto, &seeded.admin, "platform", &["ecs:Describe*", "secretsmanager:GetSecretValue"]).await;
    let config = moto.sdk_config(&seeded.admin);
    let sm = aws_sdk_secretsmanager::Client::new(&config);
    let ecs = aws_sdk_ecs::Client::new(&config);
    let json = |c: &Creds| {
        serde_json::json!({"AWS_ACCESS_KEY_ID": c.access_key_id, "AWS_SECRET_ACCESS_KEY": c.secret_access_key})
            .to_string()
    };
    let arn = sm
        .create_secret()
        .name("app/key")
        .secret_string(json(&seeded.app_key))
        .send()
        .await
        .expect("secret")
        .arn()
        .expect("arn")
        .to_string();
    ecs.create_cluster().cluster_name("prod").send().await.expect("cluster");
    let secret = |name: &str| {
        aws_sdk_ecs::types::Secret::builder()
            .name(name)
            .value_from(format!("{arn}:{name}::"))
            .build()
            .expect("secret ref")
    };
    let container = aws_sdk_ecs::types::ContainerDefinition::builder()
        .name("app")
        .image("app:1")
        .memory(128)
        .secrets(secret("AWS_ACCESS_KEY_ID"))
        .secrets(secret("AWS_SECRET_ACCESS_KEY"))
        .build();
    ecs.register_task_definition()
        .family("app")
        .container_definitions(container)
        .send()
        .await
        .expect("task definition");
    ecs.create_service()
        .cluster("prod")
        .service_name("web")
        .task_definition("app")
        .desired_count(1)
        .send()
        .await
        .expect("service");
    moto.set_auth(true).await;

    let app =
        app::start(&moto, CredentialSource::Ecs { cluster: "prod".into(), service: "web".into(), platform }).await;
    assert_eq!(get(&app.url()).await.0, 200);
    let first = seeded.app_key.access_key_id.as_str();
    assert_eq!(app.stats().last_key_id.as_deref(), Some(first));

    // A new secret value alone changes nothing: running tasks resolved theirs at start.
    let second = new_key(&moto, &seeded.admin, &seeded.app_user).await;
    sm.put_secret_value().secret_id("app/key").secret_string(json(&second)).send().await.expect("put");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(get(&app.url()).await.0, 200);
    assert_eq!(app.stats().last_key_id.as_deref(), Some(first));

    // A forced deployment starts new tasks, which read AWSCURRENT.
    ecs.update_service()
        .cluster("prod")
        .service("web")
        .force_new_deployment(true)
        .send()
        .await
        .expect("force deployment");
    let mut switched = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(get(&app.url()).await.0, 200);
        if app.stats().last_key_id.as_deref() == Some(second.access_key_id.as_str()) {
            switched = true;
            break;
        }
    }
    assert!(switched, "app never switched to the new key: {:?}", app.stats());
}
