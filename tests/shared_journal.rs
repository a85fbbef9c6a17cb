//! The journal in a DynamoDB table (`--journal-table`): a rotation killed in one container is seen
//! by `status` and finished or undone by `resume` in another one (another `--state-dir`), and a
//! second `rotate` of the user is refused while the first is unfinished.

mod support;

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use support::*;
use testbed::app::{self, CredentialSource};
use testbed::moto::{Creds, Moto, seed};

const TABLE: &str = "rekey-journals";

async fn create_journal_table(moto: &Moto, admin: &Creds) {
    use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
    let ddb = aws_sdk_dynamodb::Client::new(&moto.sdk_config(admin));
    let attr = |name: &str, t: ScalarAttributeType| {
        AttributeDefinition::builder().attribute_name(name).attribute_type(t).build().unwrap()
    };
    let key = |name: &str, t: KeyType| KeySchemaElement::builder().attribute_name(name).key_type(t).build().unwrap();
    ddb.create_table()
        .table_name(TABLE)
        .attribute_definitions(attr("pk", ScalarAttributeType::S))
        .attribute_definitions(attr("sk", ScalarAttributeType::N))
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .expect("CreateTable");
}

async fn items(moto: &Moto, admin: &Creds) -> Vec<HashMap<String, AttributeValue>> {
    let ddb = aws_sdk_dynamodb::Client::new(&moto.sdk_config(admin));
    ddb.scan().table_name(TABLE).send().await.expect("Scan").items().to_vec()
}

fn s<'a>(item: &'a HashMap<String, AttributeValue>, k: &str) -> &'a str {
    item.get(k).and_then(|v| v.as_s().ok()).map(String::as_str).unwrap_or_default()
}

/// The journal records in the table, in order, as JSON.
async fn records(moto: &Moto, admin: &Creds) -> Vec<serde_json::Value> {
    let mut out: Vec<(String, u64, serde_json::Value)> = items(moto, admin)
        .await
        .iter()
        .filter(|i| s(i, "pk").starts_with("journal#"))
        .map(|i| {
            let sk = i["sk"].as_n().unwrap().parse().unwrap();
            (s(i, "pk").to_string(), sk, serde_json::from_str(s(i, "record")).unwrap())
        })
        .collect();
    out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    out.into_iter().map(|r| r.2).collect()
}

async fn active_markers(moto: &Moto, admin: &Creds) -> usize {
    items(moto, admin).await.iter().filter(|i| s(i, "pk").starts_with("active#")).count()
}

/// A seeded world with the journal table, the app reading its env file, and auth on.
struct World {
    s: testbed::moto::Seeded,
    dir: tempfile::TempDir,
    env_path: std::path::PathBuf,
    _app: app::App,
    probe: String,
}

async fn world(moto: &Moto) -> World {
    let s = seed(moto).await;
    create_journal_table(moto, &s.admin).await;
    let dir = state_dir();
    let env_path = write_env_file(dir.path(), &s.app_key);
    let app = app::start(moto, CredentialSource::EnvFile(env_path.clone())).await;
    let probe = format!("{}/health", app.url());
    moto.set_auth(true).await;
    World { s, dir, env_path, _app: app, probe }
}

impl World {
    fn rotate_args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "rotate",
            "--user",
            &self.s.app_user,
            "--target",
            &format!("env:{}", self.env_path.display()),
            "--probe",
            &self.probe,
            "--journal-table",
            TABLE,
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.extend(FAST.iter().map(|x| x.to_string()));
        a
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn find_seq(records: &[serde_json::Value], event: &str) -> u64 {
    records
        .iter()
        .find(|r| r["event"] == event && r["phase"] == "done")
        .unwrap_or_else(|| panic!("no {event} done in {records:#?}"))["seq"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_journaled_in_dynamodb_is_resumed_from_another_state_dir() {
    let moto = Moto::start();

    // A whole rotation first: it leaves its records (history) and no marker, and tells at which
    // records the crashes below happen.
    let w = world(&moto).await;
    let out = rekey(&moto, &w.s.admin, w.dir.path(), &strs(&w.rotate_args())).await;
    out.assert_code(0);
    assert_eq!(active_markers(&moto, &w.s.admin).await, 0, "the marker goes with the archive");
    assert!(!w.dir.path().join("active").exists(), "nothing journaled in the state folder");
    let full = records(&moto, &w.s.admin).await;
    assert_eq!(full.last().unwrap()["event"], "end", "{full:#?}");
    let points = [
        ("create_key", find_seq(&full, "create_key")),
        ("apply", find_seq(&full, "apply")),
        ("probe", find_seq(&full, "probe")),
    ];
    drop(w);

    let mut outcomes = Vec::new();
    for (step, n) in points {
        let w = world(&moto).await;
        let env_before = std::fs::read(&w.env_path).unwrap();
        let args = w.rotate_args();
        let crashed =
            rekey_env(&moto, &w.s.admin, w.dir.path(), &strs(&args), &[("REKEY_TEST_CRASH_AFTER", &n.to_string())])
                .await;
        assert_eq!(crashed.code, -1, "crash after {step}: the process was aborted\n{}", crashed.stderr);
        let journaled = records(&moto, &w.s.admin).await;
        assert_eq!(journaled.last().unwrap()["event"], step, "crash after {step}");

        // Another container: an empty state folder of its own.
        let other = state_dir();
        let status =
            rekey(&moto, &w.s.admin, other.path(), &["status", "--journal-table", TABLE, "--output", "json"]).await;
        status.assert_code(0);
        let rows = status.json()["unfinished"].as_array().unwrap().clone();
        assert_eq!(rows.len(), 1, "crash after {step}: {rows:?}");
        assert_eq!(rows[0]["user"], w.s.app_user.as_str());
        assert_eq!(rows[0]["next"], format!("rekey resume --user {}", w.s.app_user));
        assert!(rows[0]["journal"].as_str().unwrap().starts_with(&format!("dynamodb://{TABLE}/journal#")));
        let local = rekey(&moto, &w.s.admin, other.path(), &["status"]).await;
        assert!(local.stdout.contains("no unfinished rotations"), "the state folder is not the table");

        let refused = rekey(&moto, &w.s.admin, other.path(), &strs(&args)).await;
        refused.assert_code(2);
        assert!(refused.stderr.contains(&format!("rekey resume --user {}", w.s.app_user)), "{}", refused.stderr);

        // The env file is written on this machine: a shared journal alone may not ask for that.
        let env_target = format!("env:{}", w.env_path.display());
        let mut resume = vec![
            "resume",
            "--user",
            &w.s.app_user,
            "--target",
            &env_target,
            "--journal-table",
            TABLE,
            "--output",
            "json",
        ];
        resume.extend(FAST);
        let resumed = rekey(&moto, &w.s.admin, other.path(), &resume).await;
        let json = resumed.json();
        let keys = keys_of(&moto, &w.s.admin, &w.s.app_user).await;
        let old = w.s.app_key.access_key_id.clone();
        match json["outcome"].as_str().unwrap() {
            "rotated" => {
                resumed.assert_code(0);
                let new_id = json["new_key_id"].as_str().unwrap();
                assert_eq!(keys, vec![(old, "Inactive".into()), (new_id.to_string(), "Active".into())], "{step}");
                let env = std::fs::read_to_string(&w.env_path).unwrap();
                assert!(env.contains(new_id));
                let secret = env.lines().find_map(|l| l.strip_prefix("AWS_SECRET_ACCESS_KEY=")).unwrap();
                let secret = secret.trim_matches(|c| c == '\'' || c == '"');
                let table_text = format!("{:?}", items(&moto, &w.s.admin).await);
                assert!(secret.len() >= 20 && !table_text.contains(secret), "the new secret is in the table");
            }
            "rolled_back" => {
                resumed.assert_code(3);
                assert_eq!(keys, vec![(old, "Active".into())], "crash after {step}: no orphan key");
                assert_eq!(std::fs::read(&w.env_path).unwrap(), env_before, "crash after {step}: env file restored");
            }
            other => panic!("crash after {step}: resume ended {other}: {}", resumed.stderr),
        }
        assert_eq!(active_markers(&moto, &w.s.admin).await, 0, "crash after {step}: the journal is closed");
        let status = rekey(&moto, &w.s.admin, other.path(), &["status", "--journal-table", TABLE]).await;
        assert!(
            status.stdout.contains(&format!("no unfinished rotations in the DynamoDB table {TABLE}")),
            "{}",
            status.stdout
        );
        outcomes.push(json["outcome"].as_str().unwrap().to_string());
        moto.set_auth(false).await;
    }
    assert_eq!(outcomes, ["rolled_back", "rolled_back", "rotated"], "after the probe, resume finishes");

    // A missing table is refused before anything changes.
    let w = world(&moto).await;
    let mut args = w.rotate_args();
    let at = args.iter().position(|a| a == TABLE).unwrap();
    args[at] = "no-such-table".into();
    let out = rekey(&moto, &w.s.admin, w.dir.path(), &strs(&args)).await;
    out.assert_code(2);
    assert!(out.stderr.contains("the journal table no-such-table does not exist"), "{}", out.stderr);
    assert_eq!(keys_of(&moto, &w.s.admin, &w.s.app_user).await.len(), 1);
    moto.set_auth(false).await;
}

/// Replaces `from` by `to` in every journal record of the table, as anyone allowed to write it could.
async fn rewrite_records(moto: &Moto, admin: &Creds, from: &str, to: &str) {
    let ddb = aws_sdk_dynamodb::Client::new(&moto.sdk_config(admin));
    // As the text appears inside the records' JSON.
    let json = |t: &str| serde_json::to_string(t).unwrap().trim_matches('"').to_string();
    let (from, to) = (json(from), json(to));
    let (from, to) = (from.as_str(), to.as_str());
    let mut rewritten = 0;
    for mut item in items(moto, admin).await {
        if !s(&item, "pk").starts_with("journal#") || !s(&item, "record").contains(from) {
            continue;
        }
        let record = s(&item, "record").replace(from, to);
        item.insert("record".into(), AttributeValue::S(record));
        ddb.put_item().table_name(TABLE).set_item(Some(item)).send().await.expect("PutItem");
        rewritten += 1;
    }
    assert!(rewritten > 0, "no record holds {from}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_journal_runs_no_command_its_resume_does_not_repeat() {
    let moto = Moto::start();
    let work = state_dir();
    let d = work.path().display();
    let apply = format!("printf %s \"$AWS_ACCESS_KEY_ID\" > {d}/applied");
    let undo = format!("echo \"$REKEY_ACTION $REKEY_NEW_ACCESS_KEY_ID\" >> {d}/undone");
    let evil = format!("touch {d}/pwned");
    let target = format!("exec:{apply}");
    let rotate_args = |user: &str| {
        let mut a: Vec<String> =
            ["rotate", "--user", user, "--target", &target, "--restart-cmd", &undo, "--journal-table", TABLE]
                .iter()
                .map(|x| x.to_string())
                .collect();
        a.extend(FAST.iter().map(|x| x.to_string()));
        a
    };

    // A whole rotation first, to learn which record ends the command's run.
    let s = seed(&moto).await;
    create_journal_table(&moto, &s.admin).await;
    let dir = state_dir();
    rekey(&moto, &s.admin, dir.path(), &strs(&rotate_args(&s.app_user))).await.assert_code(0);
    let applied = find_seq(&records(&moto, &s.admin).await, "apply");

    // The rotation dies right after the command ran.
    let s = seed(&moto).await;
    create_journal_table(&moto, &s.admin).await;
    let crashed = rekey_env(
        &moto,
        &s.admin,
        dir.path(),
        &strs(&rotate_args(&s.app_user)),
        &[("REKEY_TEST_CRASH_AFTER", &applied.to_string())],
    )
    .await;
    assert_eq!(crashed.code, -1, "aborted after the command ran\n{}", crashed.stderr);
    let keys_after_crash = keys_of(&moto, &s.admin, &s.app_user).await;
    assert_eq!(keys_after_crash.len(), 2);

    // Another machine resumes from the table alone: the rollback command is not run on the
    // journal's word.
    let other = state_dir();
    let bare = ["resume", "--user", &s.app_user, "--journal-table", TABLE];
    let refused = rekey(&moto, &s.admin, other.path(), &bare).await;
    refused.assert_code(2);
    let line = refused.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.contains("not trusted to run commands"), "{line}");
    assert!(line.contains(&format!("--target '{target}' --restart-cmd '{undo}'")), "{line}");
    assert!(!work.path().join("undone").exists(), "nothing ran");
    assert_eq!(keys_of(&moto, &s.admin, &s.app_user).await, keys_after_crash, "nothing changed");

    // Someone with write access to the table swaps the rollback command.
    rewrite_records(&moto, &s.admin, &undo, &evil).await;
    let mut resume: Vec<&str> = bare.to_vec();
    resume.extend(["--target", &target, "--restart-cmd", &undo]);
    resume.extend(FAST);
    let refused = rekey(&moto, &s.admin, other.path(), &resume).await;
    refused.assert_code(2);
    assert!(refused.stderr.contains(&format!("the restart command `{evil}`, not `{undo}`")), "{}", refused.stderr);
    assert!(!work.path().join("pwned").exists() && !work.path().join("undone").exists(), "nothing ran");

    // Put back, and repeated on the command line, it runs.
    rewrite_records(&moto, &s.admin, &evil, &undo).await;
    let resumed = rekey(&moto, &s.admin, other.path(), &resume).await;
    resumed.assert_code(3);
    let undone = std::fs::read_to_string(work.path().join("undone")).unwrap();
    assert!(undone.starts_with("rollback AKIA"), "{undone}");
    assert_eq!(keys_of(&moto, &s.admin, &s.app_user).await, vec![(s.app_key.access_key_id.clone(), "Active".into())]);
    assert!(!work.path().join("pwned").exists());
}
