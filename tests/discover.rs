//! `rekey discover` against the emulator: the app user's key planted under unusual names in every
//! kind of place rekey can rotate, another user's key in the same kinds of places as decoys, a
//! secret the tool is denied, and a key kept in layouts rekey cannot rewrite. Every place must be
//! found with a spec `rotate` accepts, no decoy, no secret in the output; then `rotate --discover`
//! rotates every one of them for real.

mod support;

use std::path::Path;

use aws_sdk_ecs::types::{ContainerDefinition, KeyValuePair, Secret};
use serde_json::{Value, json};
use support::*;
use testbed::moto::{Creds, Moto, MotoOptions, create_user, seed};

const REGION_CLUSTER: &str = "prod";
const DECOY_USER: &str = "billing-robot";

fn kv(name: &str, value: &str) -> KeyValuePair {
    KeyValuePair::builder().name(name).value(value).build()
}

struct Planted {
    /// Every target spec discover must print for the app user's key (the files' under `root`).
    expected: Vec<String>,
    locked_secret: String,
}

async fn plant_secrets(moto: &Moto, admin: &Creds, key: &Creds, decoy: &Creds) -> (String, String) {
    let sm = aws_sdk_secretsmanager::Client::new(&moto.sdk_config(admin));
    let put = |name: &'static str, value: String| {
        let sm = sm.clone();
        async move {
            let out = sm.create_secret().name(name).secret_string(value).send().await.expect("CreateSecret");
            out.arn().expect("arn").to_string()
        }
    };
    let billing = put(
        "billing/creds",
        json!({"svc_login": key.access_key_id, "svc_pw": key.secret_access_key, "db": "postgres://db:5432/b"})
            .to_string(),
    )
    .await;
    put(
        "billing/creds-decoy",
        json!({"svc_login": decoy.access_key_id, "svc_pw": decoy.secret_access_key}).to_string(),
    )
    .await;
    // The bare key id: found, but no target rewrites a secret holding half a key.
    put("legacy/key-id", key.access_key_id.clone()).await;
    put("unrelated/db", json!({"user": "app", "password": "hunter2hunter2hunter2hunter2hunter2hunt"}).to_string())
        .await;
    let locked = put(
        "locked/creds",
        json!({"AWS_ACCESS_KEY_ID": key.access_key_id, "AWS_SECRET_ACCESS_KEY": key.secret_access_key}).to_string(),
    )
    .await;
    (billing, locked)
}

async fn plant_parameters(moto: &Moto, admin: &Creds, key: &Creds, decoy: &Creds) {
    use aws_sdk_ssm::types::ParameterType::{SecureString, String as Plain};
    let ssm = aws_sdk_ssm::Client::new(&moto.sdk_config(admin));
    let json_value = json!({"keyId": key.access_key_id, "keySecret": key.secret_access_key, "bucket": "reports"});
    let params = [
        ("/apps/report/conf", json_value.to_string(), SecureString),
        ("/teams/etl/user_key", key.access_key_id.clone(), Plain),
        ("/teams/etl/user_pass", key.secret_access_key.clone(), SecureString),
        ("/decoy/etl/user_key", decoy.access_key_id.clone(), Plain),
        ("/decoy/etl/user_pass", decoy.secret_access_key.clone(), SecureString),
        ("/apps/report/color", "blue".into(), Plain),
    ];
    for (name, value, kind) in params {
        ssm.put_parameter().name(name).value(value).r#type(kind).send().await.expect("PutParameter");
    }
}

async fn plant_functions(moto: &Moto, admin: &Creds, key: &Creds, decoy: &Creds) {
    let sdk = moto.sdk_config(admin);
    let role = aws_sdk_iam::Client::new(&sdk)
        .create_role()
        .role_name("mailer-role")
        .assume_role_policy_document(
            json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
                .to_string(),
        )
        .send()
        .await
        .expect("CreateRole");
    let role_arn = role.role().expect("role").arn().to_string();
    let lambda = aws_sdk_lambda::Client::new(&sdk);
    for (name, k) in [("report-mailer", key), ("decoy-mailer", decoy)] {
        let env = aws_sdk_lambda::types::Environment::builder()
            .variables("FROM", "reports@example.com")
            .variables("MAILER_ID", &k.access_key_id)
            .variables("MAILER_TOKEN", &k.secret_access_key)
            .build();
        let zip = tiny_zip("index.py", b"def handler(event, context):\n    return 'ok'\n");
        lambda
            .create_function()
            .function_name(name)
            .runtime(aws_sdk_lambda::types::Runtime::Python312)
            .role(&role_arn)
            .handler("index.handler")
            .code(
                aws_sdk_lambda::types::FunctionCode::builder()
                    .zip_file(aws_sdk_lambda::primitives::Blob::new(zip))
                    .build(),
            )
            .environment(env)
            .send()
            .await
            .expect("CreateFunction");
    }
}

async fn plant_services(moto: &Moto, admin: &Creds, key: &Creds, decoy: &Creds, billing_arn: &str) {
    let ecs = aws_sdk_ecs::Client::new(&moto.sdk_config(admin));
    ecs.create_cluster().cluster_name(REGION_CLUSTER).send().await.expect("CreateCluster");
    let env_container = |k: &Creds| {
        ContainerDefinition::builder()
            .name("web")
            .image("example/api:7")
            .memory(128)
            .environment(kv("AKID", &k.access_key_id))
            .environment(kv("AKSECRET", &k.secret_access_key))
            .environment(kv("PORT", "8080"))
            .build()
    };
    let secret = |name: &str, field: &str| {
        Secret::builder().name(name).value_from(format!("{billing_arn}:{field}::")).build().expect("secret")
    };
    let worker = ContainerDefinition::builder()
        .name("worker")
        .image("example/worker:3")
        .memory(128)
        .secrets(secret("BILL_ID", "svc_login"))
        .secrets(secret("BILL_SECRET", "svc_pw"))
        .build();
    let services = [("api", env_container(key)), ("decoy-api", env_container(decoy)), ("worker", worker)];
    for (service, container) in services {
        let out = ecs
            .register_task_definition()
            .family(service)
            .container_definitions(container)
            .send()
            .await
            .expect("RegisterTaskDefinition");
        let td = out.task_definition().and_then(|t| t.task_definition_arn()).expect("arn").to_string();
        ecs.create_service()
            .cluster(REGION_CLUSTER)
            .service_name(service)
            .task_definition(td)
            .desired_count(1)
            .send()
            .await
            .expect("CreateService");
    }
}

fn plant_files(root: &Path, key: &Creds, decoy: &Creds) {
    let write = |rel: &str, text: String| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write(
        "srv/billing/settings.conf",
        format!(
            "# billing job\nexport BILLING_KEY=\"{}\"\nBILLING_SECRET='{}'\nMODE=prod\n",
            key.access_key_id, key.secret_access_key
        ),
    );
    write(
        "home/ops/.aws/credentials",
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n\n[ops]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            decoy.access_key_id, decoy.secret_access_key, key.access_key_id, key.secret_access_key
        ),
    );
    write(
        "home/ops/.aws/config",
        format!(
            "[default]\nregion = us-east-1\n\n[profile nightly]\nregion = eu-west-1\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            key.access_key_id, key.secret_access_key
        ),
    );
    write(
        "srv/decoy/.env",
        format!("AWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY={}\n", decoy.access_key_id, decoy.secret_access_key),
    );
    write("srv/docs/runbook.md", format!("The reporting key is {} (ask ops for the secret).\n", key.access_key_id));
}

async fn plant(moto: &Moto, admin: &Creds, key: &Creds, decoy: &Creds, root: &Path) -> Planted {
    let (billing, locked) = plant_secrets(moto, admin, key, decoy).await;
    plant_parameters(moto, admin, key, decoy).await;
    plant_functions(moto, admin, key, decoy).await;
    plant_services(moto, admin, key, decoy, &billing).await;
    plant_files(root, key, decoy);
    let r = root.display();
    let expected = vec![
        "secretsmanager:billing/creds?id-field=svc_login&secret-field=svc_pw".to_string(),
        "ssm:/apps/report/conf?id-field=keyId&secret-field=keySecret".into(),
        "ssm:/teams/etl/user_key?secret-param=/teams/etl/user_pass".into(),
        "lambda:report-mailer?id-field=MAILER_ID&secret-field=MAILER_TOKEN".into(),
        "ecs:prod/api?id-field=AKID&secret-field=AKSECRET".into(),
        "ecs:prod/worker?id-field=BILL_ID&secret-field=BILL_SECRET".into(),
        format!("profile:ops@{r}/home/ops/.aws/credentials"),
        format!("profile:profile nightly@{r}/home/ops/.aws/config"),
        format!("env:{r}/srv/billing/settings.conf?id-field=BILLING_KEY&secret-field=BILLING_SECRET"),
    ];
    Planted { expected, locked_secret: locked }
}

/// The admin may read everything but the one secret.
async fn deny_locked_secret(moto: &Moto, admin: &Creds, locked_arn: &str) {
    let iam = aws_sdk_iam::Client::new(&moto.sdk_config(admin));
    let policy = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Deny", "Action": "secretsmanager:GetSecretValue", "Resource": locked_arn}
    ]});
    iam.put_user_policy()
        .user_name(testbed::moto::ADMIN_USER)
        .policy_name("no-locked-secret")
        .policy_document(policy.to_string())
        .send()
        .await
        .expect("PutUserPolicy");
}

/// A user holding exactly `deploy/iam-policy-discover.json` (and the test's Deny on one secret).
async fn least_privilege_user(moto: &Moto, admin: &Creds, locked_arn: &str) -> Creds {
    let iam = aws_sdk_iam::Client::new(&moto.sdk_config(admin));
    let policy = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/iam-policy-discover.json"))
        .expect("the shipped policy");
    iam.create_user().user_name("discoverer").send().await.expect("CreateUser");
    iam.put_user_policy()
        .user_name("discoverer")
        .policy_name("rekey-discover")
        .policy_document(policy)
        .send()
        .await
        .expect("PutUserPolicy");
    let deny = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Deny", "Action": "secretsmanager:GetSecretValue", "Resource": locked_arn}
    ]});
    iam.put_user_policy()
        .user_name("discoverer")
        .policy_name("no-locked-secret")
        .policy_document(deny.to_string())
        .send()
        .await
        .expect("PutUserPolicy");
    let key = iam.create_access_key().user_name("discoverer").send().await.expect("CreateAccessKey");
    let key = key.access_key().expect("key");
    Creds::new(key.access_key_id(), key.secret_access_key())
}

fn specs(json: &Value) -> Vec<String> {
    json["targets"].as_array().unwrap().iter().map(|t| t["spec"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_finds_every_place_by_value_and_rotate_discover_moves_them_all() {
    let moto = Moto::start_with(MotoOptions { ecs_service_running: Some(1) });
    let s = seed(&moto).await;
    let decoy = create_user(&moto, &s.admin, DECOY_USER, &["sts:GetCallerIdentity"]).await;
    let dir = state_dir();
    let root = tempfile::tempdir().unwrap();
    let planted = plant(&moto, &s.admin, &s.app_key, &decoy, root.path()).await;
    deny_locked_secret(&moto, &s.admin, &planted.locked_secret).await;
    // Policies are put before auth is on: moto's signature check fails on some form-encoded
    // policy documents.
    let discoverer = least_privilege_user(&moto, &s.admin, &planted.locked_secret).await;
    moto.set_auth(true).await;
    // The app has used its key: discover lists it as a caller no target explains.
    sts_check(&moto, &s.app_key).await.expect("the app key works");

    let path = root.path().display().to_string();
    let args = ["discover", "--user", &s.app_user, "--path", &path, "--output", "json"];
    let out = rekey(&moto, &s.admin, dir.path(), &args).await;
    out.assert_code(0);
    let json = out.json();
    let mut found = specs(&json);
    let mut expected = planted.expected.clone();
    found.sort();
    expected.sort();
    assert_eq!(found, expected, "every place, no decoy:\n{}", out.stdout);
    for t in json["targets"].as_array().unwrap() {
        assert_eq!(t["key_id"], s.app_key.access_key_id.as_str(), "{t}");
        assert!(!t["evidence"].as_str().unwrap().is_empty());
    }
    // Stores come before the services that read them.
    let order = specs(&json);
    let pos = |p: &str| order.iter().position(|s| s.starts_with(p)).unwrap();
    assert!(pos("secretsmanager:billing/creds") < pos("ecs:prod/worker"), "{order:?}");

    let unreadable = json["unreadable"].as_array().unwrap();
    assert!(
        unreadable.iter().any(|u| u["place"].as_str().unwrap().starts_with("secretsmanager:locked/creds")
            && u["error"].as_str().unwrap().contains("AccessDenied")),
        "the denied secret is listed: {unreadable:?}"
    );
    let other: Vec<&str> =
        json["not_rotatable"].as_array().unwrap().iter().map(|p| p["place"].as_str().unwrap()).collect();
    assert!(other.contains(&"secretsmanager:legacy/key-id"), "{other:?}");
    assert!(other.iter().any(|p| p.ends_with("runbook.md")), "{other:?}");
    assert_eq!(json["user"], s.app_user.as_str());
    let consumers = json["consumers"].as_array().unwrap();
    assert!(
        consumers.iter().any(|c| c["service"] == "sts" && c["explained_by"] == "not explained by any target"),
        "{consumers:?}"
    );
    // Event history was asked; a source that could not be read (moto has no LookupEvents) says so
    // instead of reading as "no callers".
    let sources = json["sources"].as_array().unwrap();
    assert!(sources.iter().any(|s| s["source"] == "event-history"), "{sources:?}");
    for src in sources.iter().filter(|s| s["ok"] == false) {
        assert!(src["status"].as_str().unwrap().contains("not read"), "{src}");
    }
    for secret in [&s.app_key.secret_access_key, &decoy.secret_access_key] {
        assert!(!out.stdout.contains(secret.as_str()) && !out.stderr.contains(secret.as_str()), "a secret was printed");
    }
    assert!(!out.stdout.contains(&decoy.access_key_id), "the decoy key is nowhere in the output");

    // The shipped least-privilege policy is enough: a principal holding exactly it finds the same.
    let out = rekey(&moto, &discoverer, dir.path(), &args).await;
    out.assert_code(0);
    let mut with_policy = specs(&out.json());
    with_policy.sort();
    assert_eq!(with_policy, expected, "as the deploy/iam-policy-discover.json principal:\n{}", out.stdout);

    // The text report ends with the ready command and the rekey.toml block.
    let text = rekey(&moto, &s.admin, dir.path(), &["discover", "--user", &s.app_user, "--path", &path]).await;
    text.assert_code(0);
    assert!(text.stdout.contains(&format!("rekey rotate --user {}", s.app_user)), "{}", text.stdout);
    assert!(
        text.stdout.contains("--target 'ssm:/teams/etl/user_key?secret-param=/teams/etl/user_pass'"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("[[rotation]]"), "{}", text.stdout);
    assert!(text.stdout.contains("could not read"), "{}", text.stdout);
    assert!(!text.stdout.contains(&s.app_key.secret_access_key));

    // Bad input: one line, exit 2, nothing read.
    let bad = rekey(&moto, &s.admin, dir.path(), &["discover", "--user", "nobody"]).await;
    bad.assert_code(2);
    assert_eq!(bad.stderr.lines().count(), 1, "{}", bad.stderr);
    assert!(bad.stderr.contains("no IAM user named \"nobody\""), "{}", bad.stderr);

    // Every place found rotates for real, in one rotation.
    let mut rotate_args = vec![
        "rotate",
        "--user",
        &s.app_user,
        "--discover",
        "--path",
        &path,
        "--ecs-timeout",
        "60s",
        "--output",
        "json",
    ];
    rotate_args.extend(FAST);
    let out = rekey(&moto, &s.admin, dir.path(), &rotate_args).await;
    out.assert_code(0);
    let report = out.json();
    assert_eq!(report["outcome"], "rotated", "{report}");
    let rotated: Vec<&str> =
        report["targets"].as_array().unwrap().iter().map(|t| t["target"].as_str().unwrap()).collect();
    assert_eq!(rotated.len(), planted.expected.len(), "{rotated:?}");
    assert!(out.stderr.contains("--discover found 9 target(s)"), "printed before use:\n{}", out.stderr);
    let new_id = report["new_key_id"].as_str().unwrap().to_string();

    // Each place now holds the new key id; the decoys still hold theirs.
    moto.set_auth(false).await;
    let after = rekey(
        &moto,
        &s.admin,
        dir.path(),
        &["discover", "--user", &s.app_user, "--path", &path, "--output", "json", "--no-history"],
    )
    .await;
    let after = after.json();
    let on_new: Vec<String> = after["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["key_id"] == new_id.as_str())
        .map(|t| t["spec"].as_str().unwrap().to_string())
        .collect();
    let mut on_new_sorted = on_new.clone();
    on_new_sorted.sort();
    assert_eq!(on_new_sorted, expected, "every place holds the new key:\n{after}");
    let env_text = std::fs::read_to_string(root.path().join("srv/billing/settings.conf")).unwrap();
    let new_secret =
        env_text.lines().find_map(|l| l.strip_prefix("BILLING_SECRET='")).unwrap().trim_end_matches('\'').to_string();
    assert!(sts_check(&moto, &Creds::new(new_id.clone(), new_secret.clone())).await.is_ok());
    assert_secret_absent(&new_secret, &[&out], dir.path());
    let decoy_text = std::fs::read_to_string(root.path().join("srv/decoy/.env")).unwrap();
    assert!(decoy_text.contains(&decoy.access_key_id), "the decoy file is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incident_discover_cuts_over_the_places_found_and_deactivates_the_leaked_key() {
    let moto = Moto::start();
    let s = seed(&moto).await;
    let dir = state_dir();
    let root = tempfile::tempdir().unwrap();
    // The app's key sits in a file nobody named on the command line.
    let app_dir = root.path().join("srv/app");
    std::fs::create_dir_all(&app_dir).unwrap();
    let env_path = write_env_file(&app_dir, &s.app_key);
    // The app is the probe; zero downtime under load through an incident is tests/incident.rs's.
    let app = testbed::app::start(&moto, testbed::app::CredentialSource::EnvFile(env_path.clone())).await;
    moto.set_auth(true).await;

    let (path, probe, rd) = (
        root.path().display().to_string(),
        format!("{}/health", app.url()),
        dir.path().join("report").display().to_string(),
    );
    let key = s.app_key.access_key_id.clone();
    let mut args = vec![
        "incident",
        "--access-key",
        &key,
        "--discover",
        "--path",
        &path,
        "--probe",
        &probe,
        "--report-dir",
        &rd,
        "--no-history",
        "--no-trails",
        "--no-fence",
    ];
    args.extend(WAITS);
    let out = rekey(&moto, &s.admin, dir.path(), &args).await;
    out.assert_code(0);
    assert!(out.stderr.contains("--discover found 1 target(s)"), "printed before use:\n{}", out.stderr);
    assert!(out.stderr.contains(&format!("env:{}", env_path.display())), "{}", out.stderr);
    assert_eq!(app.stats().failed, 0, "the app never failed a request: {:?}", app.stats());
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report/report.json")).unwrap()).unwrap();
    assert_eq!(report["cutover"]["outcome"], "rotated", "{}", report["cutover"]);
    // The leaked key is off: an incident deactivates it without watching for other callers (the
    // attacker is one), which is why --discover lists the places first.
    let keys = keys_of(&moto, &s.admin, &s.app_user).await;
    assert!(keys.contains(&(key.clone(), "Inactive".to_string())), "{keys:?}");
    let moved = testbed::app::parse_dotenv(&std::fs::read_to_string(&env_path).unwrap()).unwrap();
    assert_ne!(moved.access_key_id, key, "the discovered file holds the new key");
    assert_secret_absent(&moved.secret_access_key, &[&out], dir.path());
    moto.set_auth(false).await;
}

/// Not a test: the figures of the README's "Discovery speed". Run with
/// `cargo test --test discover -- --ignored --nocapture bench_`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark; prints figures, asserts none"]
async fn bench_discover_an_account_of_a_few_hundred_places() {
    const SECRETS: usize = 400;
    const PARAMETERS: usize = 400;
    const FILES: usize = 20_000;
    let moto = Moto::start();
    let s = seed(&moto).await;
    let sdk = moto.sdk_config(&s.admin);
    let sm = aws_sdk_secretsmanager::Client::new(&sdk);
    let ssm = aws_sdk_ssm::Client::new(&sdk);
    let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    for i in 0..SECRETS {
        let id = if i % 40 == 0 { s.app_key.access_key_id.clone() } else { format!("AKIAOTHER{i:011}") };
        let value = json!({"id": id, "secret": secret, "note": "x".repeat(200)}).to_string();
        sm.create_secret().name(format!("team{}/svc{i}", i % 7)).secret_string(value).send().await.unwrap();
    }
    for i in 0..PARAMETERS {
        let value = if i % 40 == 0 { s.app_key.access_key_id.clone() } else { format!("value-{i}") };
        ssm.put_parameter()
            .name(format!("/team{}/param{i}", i % 7))
            .value(value)
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .send()
            .await
            .unwrap();
    }
    let root = tempfile::tempdir().unwrap();
    for i in 0..FILES {
        let dir = root.path().join(format!("d{}/e{}", i % 50, i % 13));
        std::fs::create_dir_all(&dir).unwrap();
        let body = if i % 2000 == 0 {
            format!("AWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY={secret}\n", s.app_key.access_key_id)
        } else {
            format!("LOG_LEVEL=info\nPORT={i}\n{}\n", "# filler\n".repeat(200))
        };
        std::fs::write(dir.join(format!("f{i}.env")), body).unwrap();
    }
    let dir = state_dir();
    let path = root.path().display().to_string();
    for run in 1..=3 {
        let started = std::time::Instant::now();
        let out = rekey(
            &moto,
            &s.admin,
            dir.path(),
            &["discover", "--user", &s.app_user, "--path", &path, "--output", "json", "--no-history"],
        )
        .await;
        let took = started.elapsed();
        out.assert_code(0);
        let json = out.json();
        eprintln!(
            "run {run}: {SECRETS} secrets + {PARAMETERS} parameters + {FILES} files ({:.1} MB): {:.2} s, {} targets",
            (FILES * 1_900) as f64 / 1e6,
            took.as_secs_f64(),
            json["targets"].as_array().unwrap().len()
        );
    }
}
