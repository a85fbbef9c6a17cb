//! One owner per rotation, against the emulator (issue 13 item 1): while `rekey rotate` waits on a
//! slow probe, `resume --rollback` for the same user and a second `rotate` are refused with exit 2,
//! naming the process that holds the journal, and change nothing; `status` shows the rotation as
//! running; the rotation then finishes. Once with the local journal, once with the DynamoDB one
//! (whose `resume` runs from another state folder, as another container would).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::*;
use testbed::moto::Creds;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TABLE: &str = "rekey-journals";

/// A health endpoint that answers 503 until `healthy` is set: the probe keeps rekey waiting.
async fn slow_probe() -> (String, Arc<AtomicBool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = healthy.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { return };
            let ok = flag.load(Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = conn.read(&mut buf).await;
                let status = if ok { "200 OK" } else { "503 Service Unavailable" };
                let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
    (url, healthy)
}

async fn create_journal_table(sc: &Scenario) {
    use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
    let ddb = aws_sdk_dynamodb::Client::new(&sc.moto.sdk_config(&sc.seeded.admin));
    let attr = |name: &str, t: ScalarAttributeType| {
        AttributeDefinition::builder().attribute_name(name).attribute_type(t).build()
    };
    let key = |name: &str, t: KeyType| KeySchemaElement::builder().attribute_name(name).key_type(t).build();
    ddb.create_table()
        .table_name(TABLE)
        .attribute_definitions(attr("pk", ScalarAttributeType::S).unwrap())
        .attribute_definitions(attr("sk", ScalarAttributeType::N).unwrap())
        .key_schema(key("pk", KeyType::Hash).unwrap())
        .key_schema(key("sk", KeyType::Range).unwrap())
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .expect("CreateTable");
}

/// Everything a bystander can see: IAM keys, the target file, and the journal (file or table).
async fn world(sc: &Scenario, env: &std::path::Path, shared: bool) -> String {
    let keys = keys_of(&sc.moto, &sc.seeded.admin, &sc.seeded.app_user).await;
    let journal = if shared {
        let ddb = aws_sdk_dynamodb::Client::new(&sc.moto.sdk_config(&sc.seeded.admin));
        let items = ddb.scan().table_name(TABLE).send().await.expect("Scan").items().to_vec();
        let mut records: Vec<String> =
            items.iter().filter_map(|i| i.get("record").and_then(|v| v.as_s().ok()).cloned()).collect();
        records.sort();
        records.join("\n")
    } else {
        journal_text(sc.dir.path())
    };
    format!("{keys:?}\n{}\n{journal}", std::fs::read_to_string(env).unwrap())
}

async fn one_owner(shared: bool) {
    let sc = Scenario::start().await;
    if shared {
        create_journal_table(&sc).await;
    }
    let env = sc.env_file();
    let (probe, healthy) = slow_probe().await;
    sc.enforce_auth().await;
    let (s, admin): (_, &Creds) = (&sc.seeded, &sc.seeded.admin);
    let table: &[&str] = if shared { &["--journal-table", TABLE] } else { &[] };

    let mut cmd = sc
        .rotate()
        .target(format!("env:{}", env.display()))
        .args(&["--probe", &probe, "--probe-timeout", "2m", "--output", "json"])
        .args(table)
        .command();
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = child.id().unwrap();

    // Waiting on the probe: the targets hold the new key, the old key is still Active.
    let other = state_dir();
    let status_dir = if shared { other.path() } else { sc.dir.path() };
    let status_args = [&["status", "--output", "json"][..], table].concat();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let row = loop {
        let status = rekey(&sc.moto, admin, status_dir, &status_args).await;
        status.assert_code(0);
        let rows = status.json()["unfinished"].as_array().unwrap().clone();
        if let Some(r) = rows.first().filter(|r| r["last_step"] == "probe") {
            break r.clone();
        }
        assert!(std::time::Instant::now() < deadline, "the rotation never reached its probe: {rows:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(row["running"], true, "status shows it running, not unfinished: {row}");
    assert_eq!(row["owner"]["pid"], pid, "{row}");
    assert!(row["owner"]["host"].is_string() && row["owner"]["since"].is_string(), "{row}");
    assert!(row["next"].is_null(), "no `resume` to suggest while it runs: {row}");
    let text = rekey(&sc.moto, admin, status_dir, &[&["status"][..], table].concat()).await;
    assert!(text.stdout.contains(&format!("is running (pid {pid} on host ")), "{}", text.stdout);

    let before = world(&sc, &env, shared).await;
    let target = format!("env:{}", env.display());
    let mut rollback = vec!["resume", "--user", &s.app_user, "--rollback", "--target", &target];
    rollback.extend(table);
    rollback.extend(FAST);
    let refused = rekey(&sc.moto, admin, if shared { other.path() } else { sc.dir.path() }, &rollback).await;
    refused.assert_code(2);
    let line = refused.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.contains("is running right now")
            && line.contains(&format!("pid {pid} on host "))
            && line.contains("since "),
        "names the owner: {line}"
    );
    let again = rekey(&sc.moto, admin, sc.dir.path(), &sc_rotate_args(&sc, &target, &probe, table)).await;
    again.assert_code(2);
    assert!(again.stderr.contains(&format!("pid {pid} on host ")), "{}", again.stderr);
    assert_eq!(world(&sc, &env, shared).await, before, "the refusals changed nothing");

    // The application gets healthy: the rotation that owns the journal finishes it.
    healthy.store(true, Ordering::SeqCst);
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["outcome"], "rotated", "{json}");
    let new = json["new_key_id"].as_str().unwrap().to_string();
    assert_eq!(
        keys_of(&sc.moto, admin, &s.app_user).await,
        vec![(s.app_key.access_key_id.clone(), "Inactive".into()), (new, "Active".into())]
    );
    let status = rekey(&sc.moto, admin, status_dir, &status_args).await;
    assert_eq!(status.json()["unfinished"], serde_json::json!([]), "closed");
}

fn sc_rotate_args<'a>(sc: &'a Scenario, target: &'a str, probe: &'a str, table: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["rotate", "--user", &sc.seeded.app_user, "--target", target, "--probe", probe];
    a.extend(table);
    a.extend(FAST);
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_rotation_refuses_resume_rollback_and_a_second_rotate_then_finishes() {
    one_owner(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_rotation_journaled_in_dynamodb_refuses_other_runners_then_finishes() {
    one_owner(true).await;
}
