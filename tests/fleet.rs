//! `rekey plan` and `rekey run` against the emulator: many users from one config, concurrent
//! runners kept apart by the DynamoDB lock, rollback of one user without stopping the others, and
//! the deferred deactivation and deletion, and users in other accounts reached through `[[account]]`.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rekey::fleet::lock::{Acquired, DynamoDbLock, UserLock};
use support::*;
use testbed::moto::{Creds, Moto, create_user, seed};

const TABLE: &str = "rekey-locks";

struct Fleet {
    dir: tempfile::TempDir,
    /// user -> (its first key, its env file)
    users: Vec<(String, Creds, PathBuf)>,
}

/// `due` users whose key is old enough to rotate, then `not_due` users, each with an env file.
async fn fleet(moto: &Moto, admin: &Creds, due: usize, not_due: usize) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let mut users = Vec::new();
    for i in 0..due + not_due {
        let name = format!("fleet-{i:02}");
        let creds = create_user(moto, admin, &name, &["sts:GetCallerIdentity"]).await;
        let path = dir.path().join(format!("{name}.env"));
        std::fs::write(
            &path,
            format!("AWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY={}\n", creds.access_key_id, creds.secret_access_key),
        )
        .unwrap();
        users.push((name, creds, path));
    }
    // moto's CreateDate is "now": with max_age = 1s the keys are due once a second has passed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    Fleet { dir, users }
}

impl Fleet {
    /// A config rotating every user; the first `due` have max_age 1s, the others 1h.
    fn config(&self, due: usize, head: &str, extra: &HashMap<usize, &str>) -> PathBuf {
        let mut text = format!("{head}\n");
        for (i, (name, _, path)) in self.users.iter().enumerate() {
            let max_age = if i < due { "1s" } else { "1h" };
            text.push_str(&format!(
                "[[rotation]]\nuser = \"{name}\"\ntargets = [\"env:{}\"]\nmax_age = \"{max_age}\"\n{}\n",
                path.display(),
                extra.get(&i).copied().unwrap_or("")
            ));
        }
        let path = self.dir.path().join("rekey.toml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn run_args<'a>(config: &'a str, concurrency: &'a str) -> Vec<&'a str> {
    let mut a =
        vec!["run", "--config", config, "--concurrency", concurrency, "--output", "json", "--probe-timeout", "2s"];
    a.extend(FAST);
    a
}

fn results(out: &Output) -> HashMap<String, serde_json::Value> {
    out.json()["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| (r["user"].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

fn env_key_id(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().find_map(|l| l.strip_prefix("AWS_ACCESS_KEY_ID=")).unwrap().trim_matches('"').to_string()
}

async fn tags_of(moto: &Moto, admin: &Creds, user: &str) -> HashMap<String, String> {
    let iam = aws_sdk_iam::Client::new(&moto.sdk_config(admin));
    let out = iam.list_user_tags().user_name(user).send().await.expect("ListUserTags");
    out.tags().iter().map(|t| (t.key().to_string(), t.value().to_string())).collect()
}

async fn create_lock_table(moto: &Moto, admin: &Creds) {
    use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
    let ddb = aws_sdk_dynamodb::Client::new(&moto.sdk_config(admin));
    ddb.create_table()
        .table_name(TABLE)
        .attribute_definitions(
            AttributeDefinition::builder().attribute_name("pk").attribute_type(ScalarAttributeType::S).build().unwrap(),
        )
        .key_schema(KeySchemaElement::builder().attribute_name("pk").key_type(KeyType::Hash).build().unwrap())
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .expect("CreateTable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_rotates_exactly_the_due_users_and_one_failure_rolls_back_alone() {
    let moto = Moto::start();
    let s = seed(&moto).await;
    let fleet = fleet(&moto, &s.admin, 15, 5).await;
    moto.set_auth(true).await;
    let state = state_dir();

    // A config with a mistake: nothing runs, and the message names file, line and field.
    let bad = fleet.config(15, "[defaults]\ncolour = \"red\"", &HashMap::new());
    let out = rekey(&moto, &s.admin, state.path(), &["run", "--config", bad.to_str().unwrap()]).await;
    out.assert_code(2);
    let line = out.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.starts_with(&format!("rekey: {}:2:", bad.display())), "{line}");
    assert!(line.contains("unknown field `colour`"), "{line}");

    // fleet-14's probe can never pass: that rotation rolls back, the others go through.
    let probe = format!("probes = [\"{}\"]", dead_probe_url());
    let config = fleet.config(15, "", &HashMap::from([(14, probe.as_str())]));
    let config = config.to_str().unwrap();

    let plan = rekey(&moto, &s.admin, state.path(), &["plan", "--config", config, "--output", "json"]).await;
    plan.assert_code(0);
    let users = plan.json()["users"].as_array().unwrap().clone();
    assert_eq!(users.len(), 20);
    for (i, u) in users.iter().enumerate() {
        assert_eq!(u["due"], i < 15, "{u}");
        let reason = u["reason"].as_str().unwrap();
        assert!(reason.contains(&fleet.users[i].1.access_key_id) && reason.contains(" old, max "), "{reason}");
        if i < 15 {
            assert_eq!(u["targets"][0]["target"], format!("env:{}", fleet.users[i].2.display()));
        }
    }
    for (name, creds, _) in &fleet.users {
        assert_eq!(keys_of(&moto, &s.admin, name).await, vec![(creds.access_key_id.clone(), "Active".into())]);
    }

    let started = std::time::Instant::now();
    let out = rekey(&moto, &s.admin, state.path(), &run_args(config, "4")).await;
    let took = started.elapsed();
    out.assert_code(3);
    let by_user = results(&out);
    let summary = out.json();
    assert_eq!(summary["counts"]["rotated"], 14, "{summary}");
    assert_eq!(summary["counts"]["rolled_back"], 1);
    assert_eq!(summary["counts"]["not_due"], 5);
    assert_eq!(summary["exit_code"], 3);
    for (i, (name, creds, path)) in fleet.users.iter().enumerate() {
        let r = &by_user[name];
        let keys = keys_of(&moto, &s.admin, name).await;
        if i < 14 {
            assert_eq!(r["outcome"], "rotated", "{r}");
            let new = r["new_key_id"].as_str().unwrap();
            assert_eq!(r["old_key_id"], creds.access_key_id.as_str());
            assert_eq!(r["old_key_status"], "Inactive");
            assert_eq!(
                keys,
                vec![(creds.access_key_id.clone(), "Inactive".into()), (new.to_string(), "Active".into())],
                "{name}"
            );
            assert_eq!(env_key_id(path), new, "{name}'s file holds the new key");
            assert!(tags_of(&moto, &s.admin, name).await[&creds.access_key_id].starts_with("rekey-deactivated-at-"));
        } else {
            let expected = if i == 14 { "rolled_back" } else { "not_due" };
            assert_eq!(r["outcome"], expected, "{r}");
            assert_eq!(keys, vec![(creds.access_key_id.clone(), "Active".into())], "{name}");
            assert_eq!(env_key_id(path), creds.access_key_id, "{name}'s file is unchanged");
        }
    }
    assert!(by_user["fleet-14"]["error"].as_str().unwrap().contains("is not healthy"));
    assert!(out.stderr.contains("rolled_back fleet-14"), "{}", out.stderr);
    eprintln!("15 rotations at concurrency 4 took {took:?}");
    moto.set_auth(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_at_once_rotate_each_due_user_exactly_once() {
    let moto = Moto::start();
    let s = seed(&moto).await;
    let fleet = fleet(&moto, &s.admin, 15, 5).await;
    let config = fleet.config(15, &format!("[lock]\ndynamodb_table = \"{TABLE}\"\nttl = \"10m\""), &HashMap::new());
    let config = config.to_str().unwrap();
    let (a, b) = (state_dir(), state_dir());

    // No table: a clear refusal before anything runs.
    let out = rekey(&moto, &s.admin, a.path(), &run_args(config, "4")).await;
    out.assert_code(2);
    assert!(out.stderr.contains("lock table rekey-locks does not exist"), "{}", out.stderr);
    assert_eq!(keys_of(&moto, &s.admin, "fleet-00").await.len(), 1);

    create_lock_table(&moto, &s.admin).await;
    let args = run_args(config, "4");
    let (out_a, out_b) = tokio::join!(rekey(&moto, &s.admin, a.path(), &args), rekey(&moto, &s.admin, b.path(), &args));
    out_a.assert_code(0);
    out_b.assert_code(0);
    let (ra, rb) = (results(&out_a), results(&out_b));
    let mut skipped = 0;
    for (i, (name, creds, path)) in fleet.users.iter().enumerate() {
        let outcomes = [ra[name]["outcome"].as_str().unwrap(), rb[name]["outcome"].as_str().unwrap()];
        let rotated = outcomes.iter().filter(|o| **o == "rotated").count();
        let keys = keys_of(&moto, &s.admin, name).await;
        if i < 15 {
            assert_eq!(rotated, 1, "{name}: {outcomes:?}");
            assert!(outcomes.iter().all(|o| ["rotated", "skipped", "not_due"].contains(o)), "{name}: {outcomes:?}");
            skipped += outcomes.iter().filter(|o| **o == "skipped").count();
            let active: Vec<_> = keys.iter().filter(|(_, st)| st == "Active").collect();
            assert_eq!(keys.len(), 2, "{name}: exactly one new key: {keys:?}");
            assert_eq!(active.len(), 1, "{name}: {keys:?}");
            assert_ne!(active[0].0, creds.access_key_id);
            assert_eq!(env_key_id(path), active[0].0);
        } else {
            assert_eq!(outcomes, ["not_due", "not_due"], "{name}");
            assert_eq!(keys.len(), 1);
        }
    }
    for r in ra.values().chain(rb.values()).filter(|r| r["outcome"] == "skipped") {
        assert!(r["reason"].as_str().unwrap().starts_with("locked by "), "{r}");
    }
    eprintln!("{skipped} user(s) were found locked by the other run");

    // The lock's own rules, on the emulator: exclusive, expiring, released only by its owner.
    let lock = DynamoDbLock::new(&moto.sdk_config(&s.admin), TABLE);
    let minute = Duration::from_secs(60);
    let Acquired::Got(g) = lock.acquire("1", "u", "runner-a", minute).await.unwrap() else { panic!("free") };
    match lock.acquire("1", "u", "runner-b", minute).await.unwrap() {
        Acquired::Held(h) => {
            assert_eq!(h.owner, "runner-a");
            assert!(h.to_string().starts_with("locked by runner-a until "), "{h}");
        }
        Acquired::Got(_) => panic!("taken twice"),
    }
    lock.release(g).await.unwrap();
    let Acquired::Got(stale) = lock.acquire("1", "u", "runner-b", Duration::from_secs(1)).await.unwrap() else {
        panic!("released")
    };
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let Acquired::Got(_fresh) = lock.acquire("1", "u", "runner-c", minute).await.unwrap() else {
        panic!("an expired lock is taken over")
    };
    lock.release(stale).await.unwrap();
    match lock.acquire("1", "u", "runner-d", minute).await.unwrap() {
        Acquired::Held(h) => assert_eq!(h.owner, "runner-c", "the stale owner did not free the new holder's lock"),
        Acquired::Got(_) => panic!("the stale owner's release freed runner-c's lock"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grace_period_defers_deactivation_to_a_later_run_and_delete_after_deletes() {
    let moto = Moto::start();
    let s = seed(&moto).await;
    let fleet = fleet(&moto, &s.admin, 3, 0).await;
    let state = state_dir();
    let head = "[defaults]\ngrace = \"2s\"\ndelete_after = \"1s\"";
    let config = fleet.config(3, head, &HashMap::new());
    let config = config.to_str().unwrap().to_string();

    let out = rekey(&moto, &s.admin, state.path(), &run_args(&config, "4")).await;
    out.assert_code(0);
    let first = results(&out);
    let mut new_keys = HashMap::new();
    for (name, creds, path) in &fleet.users {
        let r = &first[name];
        assert_eq!(r["outcome"], "rotated", "{r}");
        assert_eq!(r["old_key_status"], "Active");
        assert!(r["deactivate_after"].is_string(), "{r}");
        let new = r["new_key_id"].as_str().unwrap().to_string();
        assert_eq!(env_key_id(path), new);
        let keys = keys_of(&moto, &s.admin, name).await;
        assert!(keys.iter().all(|(_, st)| st == "Active") && keys.len() == 2, "{keys:?}");
        assert!(tags_of(&moto, &s.admin, name).await[&creds.access_key_id].starts_with("rekey-deactivate-after-"));
        new_keys.insert(name.clone(), new);
    }

    // The new keys are older than 1s by now: a larger max_age keeps them from being rotated again.
    let config = fleet.config(0, head, &HashMap::new());
    let config = config.to_str().unwrap().to_string();
    let out = rekey(&moto, &s.admin, state.path(), &run_args(&config, "4")).await;
    out.assert_code(0);
    for (name, _, _) in &fleet.users {
        assert_eq!(results(&out)[name]["deferred"], serde_json::json!([]), "grace not over yet");
    }

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let out = rekey(&moto, &s.admin, state.path(), &run_args(&config, "4")).await;
    out.assert_code(0);
    let second = results(&out);
    for (name, creds, _) in &fleet.users {
        let r = &second[name];
        assert_eq!(r["outcome"], "not_due", "{r}");
        assert_eq!(r["deferred"][0]["action"], "deactivated", "{r}");
        assert_eq!(r["deferred"][0]["status"], "ok", "{r}");
        assert_eq!(
            keys_of(&moto, &s.admin, name).await,
            vec![(creds.access_key_id.clone(), "Inactive".into()), (new_keys[name].clone(), "Active".into())]
        );
        assert!(tags_of(&moto, &s.admin, name).await[&creds.access_key_id].starts_with("rekey-deactivated-at-"));
    }

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let out = rekey(&moto, &s.admin, state.path(), &run_args(&config, "4")).await;
    out.assert_code(0);
    let third = results(&out);
    for (name, creds, _) in &fleet.users {
        assert_eq!(third[name]["deferred"][0]["action"], "deleted", "{}", third[name]);
        assert_eq!(keys_of(&moto, &s.admin, name).await, vec![(new_keys[name].clone(), "Active".into())]);
        assert!(!tags_of(&moto, &s.admin, name).await.contains_key(&creds.access_key_id), "tag removed with the key");
    }
}

const REMOTE: &str = "111122223333";
const REMOTE_ROLE: &str = "arn:aws:iam::111122223333:role/rekey";
const DENIED: &str = "444455556666";
const DENIED_ROLE: &str = "arn:aws:iam::444455556666:role/not-the-rekey-role";

/// The admin's session in another account. moto hands out credentials in whatever account the
/// role ARN names, role or not; with auth on, the role's own policies then decide.
async fn assume(moto: &Moto, admin: &Creds, role_arn: &str) -> aws_types::SdkConfig {
    use aws_credential_types::Credentials;
    use aws_credential_types::provider::SharedCredentialsProvider;
    let sts = aws_sdk_sts::Client::new(&moto.sdk_config(admin));
    let out = sts.assume_role().role_arn(role_arn).role_session_name("test-setup").send().await.expect("AssumeRole");
    let c = out.credentials().unwrap();
    moto.sdk_config(admin)
        .to_builder()
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_string()),
            None,
            "test-setup",
        )))
        .build()
}

/// A user with one key in the account of `sdk`, and an env file holding it.
async fn remote_user(sdk: &aws_types::SdkConfig, name: &str, dir: &Path) -> (Creds, PathBuf) {
    let iam = aws_sdk_iam::Client::new(sdk);
    iam.create_user().user_name(name).send().await.unwrap();
    let k = iam.create_access_key().user_name(name).send().await.unwrap();
    let k = k.access_key().unwrap();
    let creds = Creds::new(k.access_key_id(), k.secret_access_key());
    let path = dir.join(format!("{name}.env"));
    std::fs::write(
        &path,
        format!("AWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY={}\n", k.access_key_id(), k.secret_access_key()),
    )
    .unwrap();
    (creds, path)
}

async fn keys_in(sdk: &aws_types::SdkConfig, user: &str) -> Vec<(String, String)> {
    let iam = aws_sdk_iam::Client::new(sdk);
    let out = iam.list_access_keys().user_name(user).send().await.expect("ListAccessKeys");
    out.access_key_metadata()
        .iter()
        .map(|k| (k.access_key_id().unwrap_or_default().to_string(), k.status().unwrap().as_str().to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_in_other_accounts_rotate_through_the_role_and_a_bad_role_fails_only_its_account() {
    let moto = Moto::start();
    let s = seed(&moto).await;
    let dir = state_dir();

    // Account 111122223333: the role rekey assumes may do anything there.
    let remote = assume(&moto, &s.admin, REMOTE_ROLE).await;
    let remote_iam = aws_sdk_iam::Client::new(&remote);
    remote_iam
        .create_role()
        .role_name("rekey")
        .assume_role_policy_document(
            serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    remote_iam
        .put_role_policy()
        .role_name("rekey")
        .policy_name("rekey-inline")
        .policy_document(
            serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    let (remote_key, remote_env) = remote_user(&remote, "remote-app", dir.path()).await;
    // Account 444455556666 has a user too, but the config names a role rekey may not assume:
    // AWS answers AccessDenied for a role that does not exist or does not trust the caller.
    let denied = assume(&moto, &s.admin, DENIED_ROLE).await;
    let (denied_key, denied_env) = remote_user(&denied, "denied-app", dir.path()).await;
    let iam = aws_sdk_iam::Client::new(&moto.sdk_config(&s.admin));
    iam.put_user_policy()
        .user_name(testbed::moto::ADMIN_USER)
        .policy_name("no-wrong-role")
        .policy_document(
            serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "sts:AssumeRole", "Resource": DENIED_ROLE}]})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    // Every key above is due once it is older than max_age (1s); fleet() waits that long.
    let fleet = fleet(&moto, &s.admin, 1, 0).await;
    let extra = format!(
        "[[rotation]]\nuser = \"remote-app\"\naccount = \"{REMOTE}\"\ntargets = [\"env:{}\"]\nmax_age = \"1s\"\n\n\
         [[rotation]]\nuser = \"denied-app\"\naccount = \"{DENIED}\"\ntargets = [\"env:{}\"]\nmax_age = \"1s\"\n\n\
         [[account]]\nid = \"{REMOTE}\"\nrole_arn = \"{REMOTE_ROLE}\"\nexternal_id = \"rekey-run-ext\"\n\n\
         [[account]]\nid = \"{DENIED}\"\nrole_arn = \"{DENIED_ROLE}\"\n",
        remote_env.display(),
        denied_env.display()
    );
    let config = fleet.config(1, "", &HashMap::new());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&extra);
    std::fs::write(&config, text).unwrap();
    moto.set_auth(true).await;

    let out = rekey(&moto, &s.admin, dir.path(), &run_args(config.to_str().unwrap(), "4")).await;
    out.assert_code(4);
    let by_user = results(&out);
    let (home_name, _, home_env) = &fleet.users[0];
    assert_eq!(by_user[home_name]["outcome"], "rotated", "{}", by_user[home_name]);
    assert_eq!(env_key_id(home_env), by_user[home_name]["new_key_id"].as_str().unwrap());

    let r = &by_user["remote-app"];
    assert_eq!(r["outcome"], "rotated", "{r}");
    assert_eq!(r["account"], REMOTE);
    let new = r["new_key_id"].as_str().unwrap().to_string();
    assert_eq!(env_key_id(&remote_env), new, "the remote user's file holds the new key");

    let d = &by_user["denied-app"];
    assert_eq!(d["outcome"], "failed", "{d}");
    assert_eq!(d["account"], DENIED);
    assert!(d["error"].as_str().unwrap().contains("not authorized to perform: sts:AssumeRole"), "{d}");
    assert_eq!(out.json()["counts"]["rotated"], 2);
    assert_eq!(out.json()["counts"]["failed"], 1);

    moto.set_auth(false).await;
    assert_eq!(
        keys_in(&remote, "remote-app").await,
        vec![(remote_key.access_key_id.clone(), "Inactive".into()), (new, "Active".into())],
        "rotated in account {REMOTE}, through the role"
    );
    assert_eq!(keys_in(&denied, "denied-app").await, vec![(denied_key.access_key_id.clone(), "Active".into())]);
    assert_eq!(env_key_id(&denied_env), denied_key.access_key_id, "untouched");
}

/// `scripts/bench-fleet.sh`: wall time of `run` over REKEY_BENCH_USERS (100) due users at
/// concurrency 1 and 8, each on a freshly seeded emulator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run scripts/bench-fleet.sh"]
async fn bench_fleet_concurrency() {
    let n: usize = std::env::var("REKEY_BENCH_USERS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let moto = Moto::start();
    let mut times = Vec::new();
    for concurrency in ["1", "8"] {
        let s = seed(&moto).await;
        let fleet = fleet(&moto, &s.admin, n, 0).await;
        let config = fleet.config(n, "", &HashMap::new());
        let state = state_dir();
        let started = std::time::Instant::now();
        let out = rekey(&moto, &s.admin, state.path(), &run_args(config.to_str().unwrap(), concurrency)).await;
        let took = started.elapsed();
        out.assert_code(0);
        assert_eq!(out.json()["counts"]["rotated"], n);
        eprintln!("BENCH users={n} concurrency={concurrency} wall={:.2}s", took.as_secs_f64());
        times.push(took.as_secs_f64());
    }
    eprintln!("BENCH speedup concurrency 8 vs 1: {:.2}x", times[0] / times[1]);
}

/// Issue 13 item 8: a rotation that deferred its deactivation and is then rolled back (here the run
/// is killed right after the deferral tag is journaled, then `resume --rollback`) takes the tag
/// back, so that a later `run` never deactivates the key the restored file uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_deferral_leaves_no_tag_for_a_later_run() {
    let moto = Moto::start();
    let s = seed(&moto).await;
    let fleet = fleet(&moto, &s.admin, 2, 0).await;
    moto.set_auth(true).await;
    let one = |i: usize, max_age: &str| {
        let (name, _, path) = &fleet.users[i];
        let text = format!(
            "[defaults]\ngrace = \"1s\"\n[[rotation]]\nuser = \"{name}\"\ntargets = [\"env:{}\"]\nmax_age = \"{max_age}\"\n",
            path.display()
        );
        let file = fleet.dir.path().join(format!("one-{i}-{max_age}.toml"));
        std::fs::write(&file, text).unwrap();
        file.to_str().unwrap().to_string()
    };

    // A whole deferred rotation of the second user tells which record says the tag was written.
    let learn = state_dir();
    rekey(&moto, &s.admin, learn.path(), &run_args(&one(1, "1s"), "1")).await.assert_code(0);
    let history = std::fs::read_dir(learn.path().join("history")).unwrap().next().unwrap().unwrap().path();
    let text = std::fs::read_to_string(history).unwrap();
    let defer_done = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["event"] == "defer" && r["phase"] == "done")
        .expect("the deferral is journaled")["seq"]
        .to_string();

    let (name, creds, path) = &fleet.users[0];
    let before = std::fs::read(path).unwrap();
    let state = state_dir();
    let crashed = rekey_env(
        &moto,
        &s.admin,
        state.path(),
        &run_args(&one(0, "1s"), "1"),
        &[("REKEY_TEST_CRASH_AFTER", &defer_done)],
    )
    .await;
    assert_eq!(crashed.code, -1, "killed after the deferral: {}", crashed.stderr);
    assert!(tags_of(&moto, &s.admin, name).await[&creds.access_key_id].starts_with("rekey-deactivate-after-"));

    let mut rollback = vec!["resume", "--user", name, "--rollback", "--output", "json"];
    rollback.extend(FAST);
    let out = rekey(&moto, &s.admin, state.path(), &rollback).await;
    out.assert_code(3);
    assert_eq!(out.json()["outcome"], "rolled_back");
    assert!(!tags_of(&moto, &s.admin, name).await.contains_key(&creds.access_key_id), "the deferral is gone");
    assert_eq!(std::fs::read(path).unwrap(), before, "the file holds the old key again");

    // The grace period is long over: a later run has nothing to deactivate.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let out = rekey(&moto, &s.admin, state.path(), &run_args(&one(0, "1h"), "1")).await;
    out.assert_code(0);
    assert_eq!(results(&out)[name.as_str()]["deferred"], serde_json::json!([]), "{}", out.stdout);
    assert_eq!(keys_of(&moto, &s.admin, name).await, vec![(creds.access_key_id.clone(), "Active".into())]);
    assert_eq!(sts_check(&moto, creds).await.map(|_| ()), Ok(()), "the key in use still works");
}
