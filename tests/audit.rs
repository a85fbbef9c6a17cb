//! `rekey audit` against the emulator: every finding appears exactly where the account has the
//! problem, nowhere else; a clean account needs nothing; the audit runs with exactly
//! `deploy/iam-policy-audit.json`; an account whose role cannot be assumed is a finding.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use rekey::exit::Status;
use rekey::fleet::audit::AuditReport;

const NEEDS_ACTION: i32 = Status::NeedsAction.code();
use rekey::fleet::config::Config;
use support::*;
use testbed::moto::{ADMIN_USER, APP_USER, Creds, Moto, Seeded, create_user, seed};

/// moto's default account: the one the admin's keys live in.
const HOME: &str = "123456789012";
const REMOTE: &str = "111122223333";
const REMOTE_ROLE: &str = "arn:aws:iam::111122223333:role/rekey-audit";

/// (account, kind, user, key): what a finding is about, without its prose.
type Seen = BTreeSet<(String, String, String, String)>;

fn seen_in_report(r: &AuditReport) -> Seen {
    seen_in_json(&serde_json::to_value(r).unwrap())
}

fn seen_in_json(v: &serde_json::Value) -> Seen {
    let s = |x: &serde_json::Value| x.as_str().unwrap_or("-").to_string();
    v["findings"]
        .as_array()
        .expect("findings is a list")
        .iter()
        .map(|f| (s(&f["account"]), s(&f["kind"]), s(&f["user"]), s(&f["key"])))
        .collect()
}

fn expect(rows: &[(&str, &str, &str, &str)]) -> Seen {
    rows.iter().map(|(a, k, u, key)| (a.to_string(), k.to_string(), u.to_string(), key.to_string())).collect()
}

fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    Config::load(&path).unwrap_or_else(|e| panic!("the test's own config is valid: {e}"));
    path
}

/// Only the seeded users, both covered, with the default (90 days) thresholds.
fn clean_config(dir: &Path) -> PathBuf {
    let text = format!(
        "[[rotation]]\nuser = \"{ADMIN_USER}\"\ntargets = [\"env:/etc/admin.env\"]\n\n\
         [[rotation]]\nuser = \"{APP_USER}\"\ntargets = [\"env:/srv/app/.env\"]\n"
    );
    write_config(dir, "clean.toml", &text)
}

struct Dirty {
    config: PathBuf,
    expected: Seen,
    /// Signed with after the keys are old, so that they are old but not unused.
    to_use: Vec<Creds>,
}

/// Adds a user with one problem each (or none, on purpose) to the home account and to a second
/// account reached through a role, and the config that judges them.
async fn make_dirty(moto: &Moto, s: &Seeded, dir: &Path) -> Dirty {
    let iam = aws_sdk_iam::Client::new(&moto.sdk_config(&s.admin));
    let two_a = create_user(moto, &s.admin, "two-keys", &["sts:GetCallerIdentity"]).await;
    let two_b = iam.create_access_key().user_name("two-keys").send().await.unwrap();
    let two_b = two_b.access_key().unwrap().access_key_id().to_string();
    let idle = create_user(moto, &s.admin, "idle-user", &["sts:GetCallerIdentity"]).await;
    let alice = create_user(moto, &s.admin, "alice", &["sts:GetCallerIdentity"]).await;
    iam.create_login_profile().user_name("alice").password("Correct-Horse-9!").send().await.unwrap();
    let bob = create_user(moto, &s.admin, "bob", &["sts:GetCallerIdentity"]).await;
    iam.create_login_profile().user_name("bob").password("Battery-Staple-9!").send().await.unwrap();
    let mfa = iam.create_virtual_mfa_device().virtual_mfa_device_name("bob").send().await.unwrap();
    let serial = mfa.virtual_mfa_device().unwrap().serial_number().to_string();
    iam.enable_mfa_device()
        .user_name("bob")
        .serial_number(&serial)
        .authentication_code1("123456")
        .authentication_code2("654321")
        .send()
        .await
        .unwrap();
    let stranger = create_user(moto, &s.admin, "stranger", &["sts:GetCallerIdentity"]).await;
    // A console user without keys, and a user whose only key is Inactive: nothing to say.
    iam.create_user().user_name("console-only").send().await.unwrap();
    iam.create_login_profile().user_name("console-only").password("Console-Only-9!").send().await.unwrap();
    let retired = create_user(moto, &s.admin, "retired", &["sts:GetCallerIdentity"]).await;
    iam.update_access_key()
        .user_name("retired")
        .access_key_id(&retired.access_key_id)
        .status(aws_sdk_iam::types::StatusType::Inactive)
        .send()
        .await
        .unwrap();

    // moto hands out credentials in whatever account the role ARN names, role or not.
    let sts = aws_sdk_sts::Client::new(&moto.sdk_config(&s.admin));
    let assumed = sts.assume_role().role_arn(REMOTE_ROLE).role_session_name("test-setup").send().await.unwrap();
    let c = assumed.credentials().unwrap();
    let remote_sdk = moto
        .sdk_config(&s.admin)
        .to_builder()
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_string()),
            None,
            "test-setup",
        )))
        .build();
    let remote_iam = aws_sdk_iam::Client::new(&remote_sdk);
    let mut remote = Vec::new();
    for name in ["remote-app", "remote-stranger"] {
        remote_iam.create_user().user_name(name).send().await.unwrap();
        let k = remote_iam.create_access_key().user_name(name).send().await.unwrap();
        let k = k.access_key().unwrap();
        remote.push(Creds::new(k.access_key_id(), k.secret_access_key()));
    }

    let text = format!(
        r#"[defaults]
max_age = "1s"
unused_after = "2s"

[[rotation]]
user = "{ADMIN_USER}"
targets = ["env:/etc/admin.env"]
max_age = "1000d"

[[rotation]]
user = "{APP_USER}"
targets = ["env:/srv/app/.env"]
probes = ["https://app.example.com/health"]

[[rotation]]
user = "two-keys"
targets = ["env:/srv/two/.env"]

[[rotation]]
user = "idle-user"
targets = ["env:/srv/idle/.env"]

[[rotation]]
user = "bob"
targets = ["env:/home/bob/.env"]

[[rotation]]
user = "remote-app"
account = "{REMOTE}"
targets = ["env:/srv/remote/.env"]

[[account]]
id = "{REMOTE}"
role_arn = "{REMOTE_ROLE}"
external_id = "rekey-audit-ext"
"#
    );
    let config = write_config(dir, "dirty.toml", &text);
    let expected = expect(&[
        (HOME, "old_key", APP_USER, &s.app_key.access_key_id),
        (HOME, "old_key", "two-keys", &two_a.access_key_id),
        (HOME, "unused_key", "two-keys", &two_b),
        (HOME, "two_active_keys", "two-keys", &two_b),
        (HOME, "unused_key", "idle-user", &idle.access_key_id),
        (HOME, "human_without_mfa", "alice", "-"),
        (HOME, "not_covered", "alice", "-"),
        (HOME, "old_key", "alice", &alice.access_key_id),
        (HOME, "old_key", "bob", &bob.access_key_id),
        (HOME, "not_covered", "stranger", "-"),
        (HOME, "old_key", "stranger", &stranger.access_key_id),
        (REMOTE, "old_key", "remote-app", &remote[0].access_key_id),
        (REMOTE, "unused_key", "remote-stranger", &remote[1].access_key_id),
        (REMOTE, "not_covered", "remote-stranger", "-"),
    ]);
    let to_use = vec![s.app_key.clone(), two_a, alice, bob, stranger, remote[0].clone()];
    Dirty { config, expected, to_use }
}

/// Past `max_age` (1s) and `unused_after` (2s) for every key, then fresh use for some.
async fn age_then_use(moto: &Moto, dirty: &Dirty) {
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for c in &dirty.to_use {
        sts_check(moto, c).await.unwrap_or_else(|e| panic!("{} signs: {e}", c.access_key_id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_finds_each_problem_exactly_where_it_is() {
    let moto = Moto::start();
    let s = seed(&moto).await;
    let dir = tempfile::tempdir().unwrap();
    let sdk = moto.sdk_config(&s.admin);

    let clean = Config::load(&clean_config(dir.path())).unwrap();
    let r = rekey::fleet::audit::audit(&sdk, Some(&clean), SystemTime::now()).await.unwrap();
    assert_eq!(seen_in_report(&r), Seen::new(), "{r:#?}");
    assert_eq!(rekey::fleet::audit::status(&r), Status::Ok);
    assert_eq!((r.summary.accounts, r.summary.users, r.summary.access_keys), (1, 2, 2));
    assert_eq!(r.accounts[0].root_access_keys, Some(false));

    let dirty = make_dirty(&moto, &s, dir.path()).await;
    age_then_use(&moto, &dirty).await;
    let config = Config::load(&dirty.config).unwrap();
    let r = rekey::fleet::audit::audit(&sdk, Some(&config), SystemTime::now()).await.unwrap();
    assert_eq!(seen_in_report(&r), dirty.expected, "{r:#?}");
    assert_eq!(rekey::fleet::audit::status(&r), Status::NeedsAction);
    let ids: Vec<&str> = r.accounts.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, [HOME, REMOTE]);
    assert_eq!(r.accounts[1].role_arn.as_deref(), Some(REMOTE_ROLE));
    assert_eq!(r.accounts[1].users, 2);
    let human = r.findings.iter().find(|f| f.kind == rekey::fleet::audit::Kind::HumanWithoutMfa).unwrap();
    assert!(human.what.starts_with("keys of a human user without MFA: alice"), "{}", human.what);
    let app = r.findings.iter().find(|f| f.user.as_deref() == Some(APP_USER)).unwrap();
    assert_eq!(
        app.fix,
        format!(
            "rotate: rekey rotate --user {APP_USER} --target env:/srv/app/.env --probe https://app.example.com/health"
        )
    );

    // Without a config: 90-day defaults, and coverage is not judged; the remote account is not known.
    let r = rekey::fleet::audit::audit(&sdk, None, SystemTime::now()).await.unwrap();
    let two_b = dirty.expected.iter().find(|(_, k, ..)| k == "two_active_keys").unwrap().3.clone();
    let expected = expect(&[(HOME, "human_without_mfa", "alice", "-"), (HOME, "two_active_keys", "two-keys", &two_b)]);
    assert_eq!(seen_in_report(&r), expected, "{r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_runs_with_exactly_the_audit_policy_and_reports_an_unassumable_account() {
    let moto = Moto::start();
    let s = seed(&moto).await;
    let dir = tempfile::tempdir().unwrap();
    let auditor = create_user(&moto, &s.admin, "auditor", &["sts:GetCallerIdentity"]).await;
    let policy =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/iam-policy-audit.json")).unwrap();
    let iam = aws_sdk_iam::Client::new(&moto.sdk_config(&s.admin));
    // Same name as create_user's inline policy: the file's document replaces it, word for word.
    iam.put_user_policy()
        .user_name("auditor")
        .policy_name("auditor-inline")
        .policy_document(policy)
        .send()
        .await
        .unwrap();
    let actions = policy_actions("deploy/iam-policy-audit.json");
    let refs: Vec<&str> = actions.iter().map(String::as_str).collect();
    let without_sts: Vec<&str> = refs.iter().copied().filter(|a| *a != "sts:AssumeRole").collect();
    let blind = create_user(&moto, &s.admin, "auditor-without-sts", &without_sts).await;
    moto.set_auth(true).await;

    let covered = format!(
        "[[rotation]]\nuser = \"{ADMIN_USER}\"\ntargets = [\"env:/a.env\"]\n\n\
         [[rotation]]\nuser = \"{APP_USER}\"\ntargets = [\"env:/b.env\"]\n\n\
         [[rotation]]\nuser = \"auditor\"\ntargets = [\"env:/c.env\"]\n\n\
         [[rotation]]\nuser = \"auditor-without-sts\"\ntargets = [\"env:/d.env\"]\n"
    );
    let clean = Config::load(&write_config(dir.path(), "clean.toml", &covered)).unwrap();
    let r = rekey::fleet::audit::audit(&moto.sdk_config(&auditor), Some(&clean), SystemTime::now()).await.unwrap();
    assert_eq!(seen_in_report(&r), Seen::new(), "the audit policy is enough: {r:#?}");
    assert_eq!(r.summary.users, 4);

    let with_account = format!("{covered}\n[[account]]\nid = \"{REMOTE}\"\nrole_arn = \"{REMOTE_ROLE}\"\n");
    let config = Config::load(&write_config(dir.path(), "accounts.toml", &with_account)).unwrap();
    let r = rekey::fleet::audit::audit(&moto.sdk_config(&blind), Some(&config), SystemTime::now()).await.unwrap();
    assert_eq!(seen_in_report(&r), expect(&[(REMOTE, "cannot_audit", "-", "-")]), "{r:#?}");
    let f = &r.findings[0];
    assert!(f.what.starts_with(&format!("cannot audit account {REMOTE}: cannot assume {REMOTE_ROLE}")), "{}", f.what);
    assert!(f.what.contains("AccessDenied"), "{}", f.what);
    assert!(!r.accounts[1].audited);
    assert_eq!(rekey::fleet::audit::status(&r), Status::NeedsAction);

    moto.set_auth(false).await;
}

/// Drives the real binary (`rekey audit`); needs the `audit` subcommand wired into the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_audit_prints_one_json_document_and_exits_5_when_action_is_needed() {
    let moto = Moto::start();
    let s = seed(&moto).await;
    let dir = tempfile::tempdir().unwrap();
    let state = state_dir();

    let clean = clean_config(dir.path());
    let out = audit_cli(&moto, &s.admin, state.path(), &clean, true).await;
    out.assert_code(0);
    let v = out.json();
    assert_eq!(seen_in_json(&v), Seen::new());
    assert_eq!(v["summary"]["needs_action"], false);

    let dirty = make_dirty(&moto, &s, dir.path()).await;
    age_then_use(&moto, &dirty).await;
    let out = audit_cli(&moto, &s.admin, state.path(), &dirty.config, true).await;
    out.assert_code(NEEDS_ACTION);
    let v = out.json();
    assert_eq!(seen_in_json(&v), dirty.expected, "{}", out.stdout);
    let top: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(top, ["accounts", "findings", "summary"]);
    assert_eq!(v["summary"]["findings"], dirty.expected.len());
    assert_eq!(v["accounts"][1]["id"], REMOTE);

    let out = audit_cli(&moto, &s.admin, state.path(), &dirty.config, false).await;
    out.assert_code(NEEDS_ACTION);
    assert!(out.stdout.contains("keys of a human user without MFA: alice"), "{}", out.stdout);
    assert!(out.stdout.contains("fix: delete the unused key: aws iam delete-access-key --user-name idle-user"));
}

async fn audit_cli(moto: &Moto, creds: &Creds, state: &Path, config: &Path, json: bool) -> Output {
    let config = config.to_str().unwrap();
    let mut args = vec!["audit", "--config", config];
    if json {
        args.extend(["--output", "json"]);
    }
    rekey(moto, creds, state, &args).await
}

fn policy_actions(path: &str) -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut actions = Vec::new();
    for st in doc["Statement"].as_array().unwrap() {
        assert_eq!(st["Effect"], "Allow");
        match &st["Action"] {
            serde_json::Value::String(a) => actions.push(a.clone()),
            serde_json::Value::Array(a) => actions.extend(a.iter().map(|x| x.as_str().unwrap().to_string())),
            other => panic!("Action {other}"),
        }
    }
    actions
}

/// Every JSON file under deploy/ parses, and every policy is a well-formed Allow-only document.
#[test]
fn deploy_json_files_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut stack = vec![root.clone()];
    let mut json_files = Vec::new();
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                json_files.push(p);
            }
        }
    }
    json_files.sort();
    for p in &json_files {
        let text = std::fs::read_to_string(p).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    let names: Vec<String> = json_files.iter().map(|p| p.strip_prefix(&root).unwrap().display().to_string()).collect();
    for must in ["iam-policy-rotate.json", "iam-policy-run.json", "iam-policy-audit.json", "ecs/scheduled-task.json"] {
        assert!(names.iter().any(|n| n == must), "deploy/{must} exists: {names:?}");
    }
    let audit = policy_actions("deploy/iam-policy-audit.json");
    for a in [
        "iam:ListUsers",
        "iam:ListAccessKeys",
        "iam:GetAccessKeyLastUsed",
        "iam:ListMFADevices",
        "iam:GetLoginProfile",
        "iam:GetAccountSummary",
        "sts:AssumeRole",
    ] {
        assert!(audit.iter().any(|x| x == a), "the audit policy allows {a}");
    }
    assert!(audit.iter().all(|a| a.starts_with("iam:Get") || a.starts_with("iam:List") || a == "sts:AssumeRole"));
    let run = policy_actions("deploy/iam-policy-run.json");
    for a in policy_actions("deploy/iam-policy-rotate.json").into_iter().chain(
        [
            "iam:ListUserTags",
            "dynamodb:DescribeTable",
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:DeleteItem",
            // The journal table: a running rotation renews its owner lease with UpdateItem.
            "dynamodb:UpdateItem",
            "dynamodb:Query",
            "dynamodb:Scan",
            "sts:AssumeRole",
        ]
        .map(String::from),
    ) {
        assert!(run.contains(&a), "the run policy allows {a}");
    }
    for other in [
        "systemd/rekey-rotate.service",
        "systemd/rekey-rotate.timer",
        "kubernetes/cronjob.yaml",
        "github-actions/rekey.yml",
    ] {
        let text = std::fs::read_to_string(root.join(other)).unwrap_or_else(|e| panic!("deploy/{other}: {e}"));
        assert!(text.contains("rekey"), "deploy/{other} runs rekey");
    }
    // The ConfigMap's rekey.toml is a block scalar indented by 4: rekey must accept it as written.
    let cronjob = std::fs::read_to_string(root.join("kubernetes/cronjob.yaml")).unwrap();
    let block: String = cronjob
        .lines()
        .skip_while(|l| l.trim() != "rekey.toml: |")
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
        .collect();
    let config = Config::parse(&block, "cronjob.yaml#rekey.toml").unwrap_or_else(|e| panic!("{e}\n{block}"));
    assert!(config.lock.is_some() && !config.rotations.is_empty(), "{block}");
}
