//! `rekey audit`: a read-only report of the access-key posture of every account rekey can reach.
//!
//! Reading (the AWS calls, [`audit`]) and judging ([`evaluate`], pure) are apart, so that every
//! rule is unit-tested on plain facts and the emulator tests only have to prove the reading.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_iam::error::ProvideErrorMetadata;
use aws_sdk_iam::types::{StatusType, SummaryKeyType};
use serde::Serialize;

use crate::aws::error_text;
use crate::fleet::config::{Config, Defaults, Rotation};

/// IAM throttles per account: a few calls in flight keep large accounts quick without tripping it.
const USERS_IN_FLIGHT: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Critical,
    High,
    Medium,
    Low,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    RootAccessKeys,
    CannotAudit,
    HumanWithoutMfa,
    OldKey,
    UnusedKey,
    HeldRotation,
    TwoActiveKeys,
    NotCovered,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub kind: Kind,
    pub account: String,
    pub user: Option<String>,
    pub key: Option<String>,
    pub what: String,
    pub why: String,
    /// One line: a command to run, or the console steps when there is no API for it.
    pub fix: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AccountReport {
    pub id: String,
    /// None for the account rekey runs in.
    pub role_arn: Option<String>,
    pub audited: bool,
    pub error: Option<String>,
    pub users: usize,
    pub access_keys: usize,
    pub active_access_keys: usize,
    /// None when `GetAccountSummary` could not be read.
    pub root_access_keys: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub generated_at: String,
    pub config: Option<String>,
    pub accounts: usize,
    pub users: usize,
    pub access_keys: usize,
    pub findings: usize,
    pub critical: usize,
    pub high: usize,
    pub medium: usize,
    pub low: usize,
    pub needs_action: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub accounts: Vec<AccountReport>,
    pub findings: Vec<Finding>,
    pub summary: Summary,
}

/// What IAM says about one account, before any judgement.
#[derive(Debug, Clone, Default)]
pub struct AccountFacts {
    pub id: String,
    /// The account rekey runs in: where a `[[rotation]]` without `account` lives.
    pub home: bool,
    pub role_arn: Option<String>,
    /// Set when nothing could be read (the role could not be assumed, ListUsers was denied).
    pub error: Option<String>,
    /// Reads that failed without stopping the rest.
    pub problems: Vec<String>,
    pub root_access_keys: Option<bool>,
    pub users: Vec<UserFacts>,
}

#[derive(Debug, Clone, Default)]
pub struct UserFacts {
    pub name: String,
    pub keys: Vec<KeyFacts>,
    pub login_profile: bool,
    pub mfa_devices: usize,
    /// A read of this user failed; the other facts may be incomplete.
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct KeyFacts {
    pub id: String,
    pub active: bool,
    pub created: Option<SystemTime>,
    pub last_used: Option<SystemTime>,
    /// A rotation left this (old) key Active because something it did not move still used it:
    /// when the last check that held it ran (the user tag rekey records, keyed by the key id).
    pub held_since: Option<SystemTime>,
}

/// Audits the account of `sdk`'s principal and every `[[account]]` of `config`. Fails only when
/// the principal itself cannot be identified; anything else unreadable becomes a finding.
pub async fn audit(
    sdk: &aws_types::SdkConfig,
    config: Option<&Config>,
    now: SystemTime,
) -> Result<AuditReport, String> {
    let sts = aws_sdk_sts::Client::new(sdk);
    let me = sts.get_caller_identity().send().await.map_err(|e| {
        format!("cannot identify the caller ({}); check the AWS credentials and region", error_text(&e))
    })?;
    let home = me.account().unwrap_or_default().to_string();
    let mut accounts = vec![read_account(sdk, &home, true, None).await];
    let mut seen = vec![home];
    for a in config.map(|c| c.accounts.as_slice()).unwrap_or_default() {
        if seen.contains(&a.id) {
            continue;
        }
        seen.push(a.id.clone());
        let facts = match assume(&sts, sdk, a).await {
            Ok(assumed) => read_account(&assumed, &a.id, false, Some(&a.role_arn)).await,
            Err(e) => AccountFacts {
                id: a.id.clone(),
                role_arn: Some(a.role_arn.clone()),
                error: Some(format!("cannot assume {}: {e}", a.role_arn)),
                ..Default::default()
            },
        };
        accounts.push(facts);
    }
    Ok(evaluate(&accounts, config, now))
}

async fn assume(
    sts: &aws_sdk_sts::Client,
    sdk: &aws_types::SdkConfig,
    account: &crate::fleet::config::Account,
) -> Result<aws_types::SdkConfig, String> {
    let out = sts
        .assume_role()
        .role_arn(&account.role_arn)
        .role_session_name("rekey-audit")
        .set_external_id(account.external_id.clone())
        .send()
        .await
        .map_err(|e| error_text(&e))?;
    let c = out.credentials().ok_or("AssumeRole returned no credentials")?;
    let creds = Credentials::new(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_string()),
        SystemTime::try_from(*c.expiration()).ok(),
        "rekey-audit-assumed-role",
    );
    let mut builder = sdk.to_builder().credentials_provider(SharedCredentialsProvider::new(creds));
    if let Some(r) = &account.region {
        builder = builder.region(aws_types::region::Region::new(r.clone()));
    }
    Ok(builder.build())
}

async fn read_account(sdk: &aws_types::SdkConfig, id: &str, home: bool, role_arn: Option<&str>) -> AccountFacts {
    let iam = aws_sdk_iam::Client::new(sdk);
    let mut facts =
        AccountFacts { id: id.to_string(), home, role_arn: role_arn.map(str::to_string), ..Default::default() };
    match iam.get_account_summary().send().await {
        Ok(out) => {
            facts.root_access_keys = Some(
                out.summary_map().and_then(|m| m.get(&SummaryKeyType::AccountAccessKeysPresent)).copied().unwrap_or(0)
                    > 0,
            )
        }
        Err(e) => facts.problems.push(format!("cannot read GetAccountSummary (root access keys): {}", error_text(&e))),
    }
    // The paginator follows Marker/IsTruncated, so it is right whether or not MaxItems is honoured.
    let users = match iam.list_users().into_paginator().items().send().collect::<Result<Vec<_>, _>>().await {
        Ok(u) => u,
        Err(e) => {
            facts.error = Some(format!("cannot list users: {}", error_text(&e)));
            return facts;
        }
    };
    let mut names: Vec<String> = users.iter().map(|u| u.user_name().to_string()).collect();
    let mut tasks = tokio::task::JoinSet::new();
    while !names.is_empty() || !tasks.is_empty() {
        while tasks.len() < USERS_IN_FLIGHT
            && let Some(name) = names.pop()
        {
            let iam = iam.clone();
            tasks.spawn(async move { read_user(&iam, name).await });
        }
        match tasks.join_next().await {
            Some(Ok(u)) => facts.users.push(u),
            Some(Err(e)) => facts.problems.push(format!("a user read stopped: {e}")),
            None => {}
        }
    }
    facts.users.sort_by(|a, b| a.name.cmp(&b.name));
    facts
}

async fn read_user(iam: &aws_sdk_iam::Client, name: String) -> UserFacts {
    let mut user = UserFacts { name, ..Default::default() };
    let listed = iam
        .list_access_keys()
        .user_name(&user.name)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await;
    let keys = match listed {
        Ok(k) => k,
        Err(e) => {
            user.error = Some(format!("ListAccessKeys: {}", error_text(&e)));
            return user;
        }
    };
    for k in keys {
        let id = k.access_key_id().unwrap_or_default().to_string();
        let last_used = match iam.get_access_key_last_used().access_key_id(&id).send().await {
            Ok(out) => {
                out.access_key_last_used().and_then(|u| u.last_used_date()).and_then(|d| SystemTime::try_from(*d).ok())
            }
            Err(e) => {
                user.error = Some(format!("GetAccessKeyLastUsed {id}: {}", error_text(&e)));
                None
            }
        };
        user.keys.push(KeyFacts {
            id,
            active: k.status() == Some(&StatusType::Active),
            created: k.create_date().and_then(|d| SystemTime::try_from(*d).ok()),
            last_used,
            held_since: None,
        });
    }
    // A hold always leaves two keys; a user with one has none to read.
    if user.keys.len() >= 2 {
        match iam
            .list_user_tags()
            .user_name(&user.name)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
        {
            Ok(tags) => {
                for t in tags {
                    if let (Some(k), Some(at)) =
                        (user.keys.iter_mut().find(|k| k.id == t.key()), crate::rotate::evidence::held_at(t.value()))
                    {
                        k.held_since = Some(at);
                    }
                }
            }
            Err(e) => user.error = Some(format!("ListUserTags: {}", error_text(&e))),
        }
    }
    if user.keys.is_empty() {
        // MFA only matters here for users that hold keys: skip two calls per keyless user.
        return user;
    }
    match iam.get_login_profile().user_name(&user.name).send().await {
        Ok(_) => user.login_profile = true,
        Err(e) if e.code() == Some("NoSuchEntity") => return user,
        Err(e) => {
            user.error = Some(format!("GetLoginProfile: {}", error_text(&e)));
            return user;
        }
    }
    match iam
        .list_mfa_devices()
        .user_name(&user.name)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
    {
        Ok(d) => user.mfa_devices = d.len(),
        Err(e) => {
            // Unknown MFA must not read as "no MFA": count one so no false finding is raised.
            user.mfa_devices = 1;
            user.error = Some(format!("ListMFADevices: {}", error_text(&e)));
        }
    }
    user
}

/// Judges the facts: which findings, for whom, and how to fix each.
pub fn evaluate(accounts: &[AccountFacts], config: Option<&Config>, now: SystemTime) -> AuditReport {
    let fallback = Defaults::default();
    let defaults = config.map(|c| &c.defaults).unwrap_or(&fallback);
    let mut findings = Vec::new();
    let mut reports = Vec::new();
    for acct in accounts {
        judge_account(acct, config, defaults, now, &mut findings);
        let keys = acct.users.iter().flat_map(|u| &u.keys);
        reports.push(AccountReport {
            id: acct.id.clone(),
            role_arn: acct.role_arn.clone(),
            audited: acct.error.is_none(),
            error: acct.error.clone(),
            users: acct.users.len(),
            access_keys: keys.clone().count(),
            active_access_keys: keys.filter(|k| k.active).count(),
            root_access_keys: acct.root_access_keys,
        });
    }
    findings.sort_by(|a, b| {
        (a.severity, &a.account, &a.user, a.kind, &a.key).cmp(&(b.severity, &b.account, &b.user, b.kind, &b.key))
    });
    let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    let summary = Summary {
        generated_at: rekey_trail::time::format(now),
        config: config.map(|c| c.path.display().to_string()),
        accounts: reports.len(),
        users: reports.iter().map(|a| a.users).sum(),
        access_keys: reports.iter().map(|a| a.access_keys).sum(),
        findings: findings.len(),
        critical: count(Severity::Critical),
        high: count(Severity::High),
        medium: count(Severity::Medium),
        low: count(Severity::Low),
        needs_action: !findings.is_empty(),
    };
    AuditReport { accounts: reports, findings, summary }
}

fn judge_account(
    acct: &AccountFacts,
    config: Option<&Config>,
    defaults: &Defaults,
    now: SystemTime,
    out: &mut Vec<Finding>,
) {
    let finding =
        |severity, kind, user: Option<&str>, key: Option<&str>, what: String, why: &str, fix: String| Finding {
            severity,
            kind,
            account: acct.id.clone(),
            user: user.map(str::to_string),
            key: key.map(str::to_string),
            what,
            why: why.to_string(),
            fix,
        };
    // Commands act on the caller's account; elsewhere they need credentials there.
    let there = if acct.home { String::new() } else { format!(" (with credentials in account {})", acct.id) };
    let cannot_fix = match &acct.role_arn {
        Some(role) => format!(
            "let rekey's principal assume {role} (sts:AssumeRole on it, the role's trust policy, \
             the external id), then audit again"
        ),
        None => "grant rekey's principal deploy/iam-policy-audit.json, then audit again".to_string(),
    };
    if let Some(e) = &acct.error {
        out.push(finding(
            Severity::High,
            Kind::CannotAudit,
            None,
            None,
            format!("cannot audit account {}: {e}", acct.id),
            "an account nobody can read may hold any number of old, unused or root keys",
            cannot_fix,
        ));
        return;
    }
    for p in &acct.problems {
        out.push(finding(
            Severity::High,
            Kind::CannotAudit,
            None,
            None,
            format!("cannot audit account {} fully: {p}", acct.id),
            "what could not be read was not checked",
            cannot_fix.clone(),
        ));
    }
    if acct.root_access_keys == Some(true) {
        out.push(finding(
            Severity::Critical,
            Kind::RootAccessKeys,
            Some("root"),
            None,
            format!("the root user of account {} has access keys", acct.id),
            "no IAM policy restrains the root user; AWS advises that it have no access keys at all",
            "delete the root user's access keys: sign in as root -> Security credentials -> Access keys -> Delete"
                .to_string(),
        ));
    }
    for user in &acct.users {
        let name = user.name.as_str();
        if let Some(e) = &user.error {
            out.push(finding(
                Severity::High,
                Kind::CannotAudit,
                Some(name),
                None,
                format!("cannot audit user {name} in account {} fully: {e}", acct.id),
                "what could not be read was not checked",
                cannot_fix.clone(),
            ));
        }
        let rotation = config.and_then(|c| c.rotations.iter().find(|r| r.user == name && covers(r, acct)));
        let max_age = rotation.map(|r| r.max_age(defaults)).unwrap_or(defaults.max_age.0);
        let unused_after = defaults.unused_after.0;
        let active: Vec<&KeyFacts> = user.keys.iter().filter(|k| k.active).collect();
        for k in &active {
            let age = k.created.map(|c| since(now, c));
            let idle = match k.last_used {
                Some(used) => Some(since(now, used))
                    .filter(|d| *d >= unused_after)
                    .map(|d| format!("was last used {} ({} ago)", rekey_trail::time::format(used), short(d))),
                None => {
                    age.filter(|d| *d >= unused_after).map(|d| format!("was never used (created {} ago)", short(d)))
                }
            };
            // Rotating a key nobody uses only renews the risk: say delete, not rotate.
            if let Some(idle) = idle {
                out.push(finding(
                    Severity::Medium,
                    Kind::UnusedKey,
                    Some(name),
                    Some(&k.id),
                    format!("key {} of {name} {idle}; unused_after is {}", k.id, short(unused_after)),
                    "a key nobody uses can only serve whoever should not have it",
                    format!(
                        "delete the unused key: aws iam delete-access-key --user-name {name} --access-key-id {}{there}",
                        k.id
                    ),
                ));
            } else if let Some(age) = age.filter(|a| *a > max_age) {
                out.push(finding(
                    Severity::Medium,
                    Kind::OldKey,
                    Some(name),
                    Some(&k.id),
                    format!("key {} of {name} is {} old; max_age is {}", k.id, short(age), short(max_age)),
                    "the older a key, the more places it may have leaked to (laptops, CI logs, images); \
                     rotation bounds how long a leak is worth anything",
                    format!("rotate: {}{there}", rotate_command(name, rotation)),
                ));
            }
        }
        let held = active.iter().find_map(|k| k.held_since.map(|at| (k, at)));
        if let Some((old, at)) = held {
            out.push(finding(
                Severity::Medium,
                Kind::HeldRotation,
                Some(name),
                Some(&old.id),
                format!(
                    "{name}'s rotation is held: {} stays Active because something rekey did not move still used it \
                     (last checked {} ago)",
                    old.id,
                    short(since(now, at))
                ),
                "every target holds the new key, but a consumer nobody listed is still on the old one; \
                 both keys stay Active until it moves",
                format!(
                    "find it with `rekey discover --user {name}`, move it, then `rekey retire --user {name}`{there}"
                ),
            ));
        } else if active.len() >= 2 {
            // The one to switch off: the longest idle (never used counts as idlest), then the oldest.
            let stale =
                active.iter().min_by_key(|k| (k.last_used.is_some(), k.last_used, k.created)).expect("two keys");
            let ids: Vec<&str> = active.iter().map(|k| k.id.as_str()).collect();
            out.push(finding(
                Severity::Medium,
                Kind::TwoActiveKeys,
                Some(name),
                Some(&stale.id),
                format!("{name} has two Active keys ({}); {} is the staler one", ids.join(", "), stale.id),
                "two Active keys double the exposure, usually from a rotation never finished; \
                 rekey refuses to rotate such a user",
                format!(
                    "deactivate the key not in use (check its last use first): \
                     aws iam update-access-key --user-name {name} --access-key-id {} --status Inactive{there}",
                    stale.id
                ),
            ));
        }
        if user.login_profile && user.mfa_devices == 0 && !user.keys.is_empty() {
            let ids: Vec<&str> = user.keys.iter().map(|k| k.id.as_str()).collect();
            out.push(finding(
                Severity::High,
                Kind::HumanWithoutMfa,
                Some(name),
                None,
                format!(
                    "keys of a human user without MFA: {name} has a console password, no MFA device, and keys {}",
                    ids.join(", ")
                ),
                "a phished or reused password alone opens the console, where the user can read, create or reuse keys",
                format!(
                    "enable MFA for {name} (IAM console -> Users -> {name} -> Security credentials -> Assign MFA \
                     device), or if no console is needed: aws iam delete-login-profile --user-name {name}{there}"
                ),
            ));
        }
        if let Some(c) = config
            && rotation.is_none()
            && !active.is_empty()
        {
            let account = if acct.home { String::new() } else { format!(" with account = \"{}\"", acct.id) };
            out.push(finding(
                Severity::Low,
                Kind::NotCovered,
                Some(name),
                None,
                format!("{name} has Active keys but no [[rotation]] in {}", c.path.display()),
                "nothing rotates its key on schedule, so it only grows older",
                format!(
                    "add a [[rotation]] for {name}{account} to {}, or delete its keys if nothing uses them",
                    c.path.display()
                ),
            ));
        }
    }
}

fn covers(r: &Rotation, acct: &AccountFacts) -> bool {
    match &r.account {
        None => acct.home,
        Some(id) => *id == acct.id,
    }
}

fn rotate_command(user: &str, rotation: Option<&Rotation>) -> String {
    let Some(r) = rotation else {
        return format!("rekey rotate --user {user} --target <where the key is used>");
    };
    let mut cmd = format!("rekey rotate --user {user}");
    for t in &r.targets {
        cmd.push_str(&format!(" --target {t}"));
    }
    for p in &r.probes {
        cmd.push_str(&format!(" --probe {p}"));
    }
    cmd
}

fn since(now: SystemTime, then: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or_default()
}

/// `95d`, `5h`, `12m`, `3s`: a finding needs the order of magnitude, not humantime's full breakdown.
fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        86400.. => format!("{}d", s / 86400),
        3600.. => format!("{}h", s / 3600),
        60.. => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

pub fn status(report: &AuditReport) -> crate::exit::Status {
    if report.findings.is_empty() { crate::exit::Status::Ok } else { crate::exit::Status::NeedsAction }
}

pub fn print(report: &AuditReport, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(report).expect("report serializes"));
        return;
    }
    print!("{}", text(report));
}

fn text(report: &AuditReport) -> String {
    let s = &report.summary;
    let mut out = format!(
        "audited {} account{}, {} users, {} access keys: ",
        s.accounts,
        if s.accounts == 1 { "" } else { "s" },
        s.users,
        s.access_keys
    );
    if report.findings.is_empty() {
        out.push_str("nothing needs action\n");
        return out;
    }
    let by: Vec<String> = [("critical", s.critical), ("high", s.high), ("medium", s.medium), ("low", s.low)]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| format!("{n} {name}"))
        .collect();
    out.push_str(&format!("{} findings ({})\n", s.findings, by.join(", ")));
    for f in &report.findings {
        let sev =
            serde_json::to_value(f.severity).ok().and_then(|v| v.as_str().map(str::to_uppercase)).unwrap_or_default();
        out.push_str(&format!("\n{sev:<8} {}: {}\n", f.account, f.what));
        out.push_str(&format!("         why: {}\n", f.why));
        out.push_str(&format!("         fix: {}\n", f.fix));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86400);

    fn days(n: u64) -> Duration {
        Duration::from_secs(n * 86400)
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + 20_000 * DAY
    }

    fn key(id: &str, active: bool, age_days: u64, used_days_ago: Option<u64>) -> KeyFacts {
        KeyFacts {
            id: id.into(),
            active,
            created: Some(now() - days(age_days)),
            last_used: used_days_ago.map(|d| now() - days(d)),
            held_since: None,
        }
    }

    fn user(name: &str, keys: Vec<KeyFacts>) -> UserFacts {
        UserFacts { name: name.into(), keys, ..Default::default() }
    }

    fn home(users: Vec<UserFacts>) -> AccountFacts {
        AccountFacts {
            id: "123456789012".into(),
            home: true,
            root_access_keys: Some(false),
            users,
            ..Default::default()
        }
    }

    const CONFIG: &str = r#"
[defaults]
max_age = "90d"
unused_after = "30d"

[[rotation]]
user = "app"
targets = ["secretsmanager:prod/app/aws", "ecs:prod/api"]
probes = ["https://api.example.com/health"]

[[rotation]]
user = "reports"
targets = ["env:/srv/reports/.env"]
max_age = "400d"

[[rotation]]
user = "remote"
account = "111122223333"
targets = ["env:/srv/remote/.env"]

[[account]]
id = "111122223333"
role_arn = "arn:aws:iam::111122223333:role/rekey"
"#;

    fn kinds(r: &AuditReport) -> Vec<(Kind, Option<&str>, Option<&str>)> {
        let mut k: Vec<_> = r.findings.iter().map(|f| (f.kind, f.user.as_deref(), f.key.as_deref())).collect();
        k.sort();
        k
    }

    #[test]
    fn each_rule_fires_where_it_should_and_nowhere_else() {
        let config = Config::parse(CONFIG, "rekey.toml").unwrap();
        let mut alice = user("alice", vec![key("AKIAALICE", true, 10, Some(1))]);
        alice.login_profile = true;
        let mut bob = user("bob", vec![key("AKIABOB", true, 10, Some(1))]);
        bob.login_profile = true;
        bob.mfa_devices = 1;
        let mut carol = user("carol", vec![]);
        carol.login_profile = true;
        let accounts = vec![
            home(vec![
                user("app", vec![key("AKIAAPPOLD", true, 100, Some(0))]),
                user("reports", vec![key("AKIAREPORTS", true, 300, Some(0))]),
                user("twokeys", vec![key("AKIAUSED", true, 5, Some(0)), key("AKIANEVER", true, 40, None)]),
                user("idle", vec![key("AKIAIDLE", true, 200, Some(31)), key("AKIAOFF", false, 500, None)]),
                user("fresh", vec![key("AKIAFRESH", true, 1, None)]),
                alice,
                bob,
                carol,
            ]),
            AccountFacts {
                id: "111122223333".into(),
                role_arn: Some("arn:aws:iam::111122223333:role/rekey".into()),
                root_access_keys: Some(true),
                users: vec![user("remote", vec![key("AKIAREMOTE", true, 91, Some(0))])],
                ..Default::default()
            },
        ];
        let r = evaluate(&accounts, Some(&config), now());
        assert_eq!(
            kinds(&r),
            vec![
                (Kind::RootAccessKeys, Some("root"), None),
                (Kind::HumanWithoutMfa, Some("alice"), None),
                (Kind::OldKey, Some("app"), Some("AKIAAPPOLD")),
                (Kind::OldKey, Some("remote"), Some("AKIAREMOTE")),
                (Kind::UnusedKey, Some("idle"), Some("AKIAIDLE")),
                (Kind::UnusedKey, Some("twokeys"), Some("AKIANEVER")),
                (Kind::TwoActiveKeys, Some("twokeys"), Some("AKIANEVER")),
                (Kind::NotCovered, Some("alice"), None),
                (Kind::NotCovered, Some("bob"), None),
                (Kind::NotCovered, Some("fresh"), None),
                (Kind::NotCovered, Some("idle"), None),
                (Kind::NotCovered, Some("twokeys"), None),
            ]
        );
        assert_eq!(r.findings[0].severity, Severity::Critical, "root keys come first");
        assert_eq!(status(&r), crate::exit::Status::NeedsAction);
        let old = r.findings.iter().find(|f| f.key.as_deref() == Some("AKIAAPPOLD")).unwrap();
        assert_eq!(
            old.fix,
            "rotate: rekey rotate --user app --target secretsmanager:prod/app/aws --target ecs:prod/api \
             --probe https://api.example.com/health"
        );
        assert!(old.what.contains("100d old; max_age is 90d"), "{}", old.what);
        let remote = r.findings.iter().find(|f| f.key.as_deref() == Some("AKIAREMOTE")).unwrap();
        assert!(remote.fix.ends_with("(with credentials in account 111122223333)"), "{}", remote.fix);
        let unused = r.findings.iter().find(|f| f.key.as_deref() == Some("AKIAIDLE")).unwrap();
        assert!(unused.fix.starts_with("delete the unused key: aws iam delete-access-key --user-name idle"));
        assert_eq!(r.summary.accounts, 2);
        assert_eq!(r.summary.critical, 1);
        assert!(r.summary.needs_action);
        assert_eq!(r.accounts[0].active_access_keys, 8);
    }

    #[test]
    fn a_held_rotation_is_reported_as_held_not_as_two_forgotten_keys() {
        let mut old = key("AKIAOLDHELD", true, 30, Some(0));
        old.held_since = Some(now() - Duration::from_secs(7200));
        let accounts = vec![home(vec![user("app", vec![old, key("AKIANEWKEY", true, 0, Some(0))])])];
        let r = evaluate(&accounts, None, now());
        assert_eq!(kinds(&r), vec![(Kind::HeldRotation, Some("app"), Some("AKIAOLDHELD"))]);
        let f = &r.findings[0];
        assert!(f.what.contains("held") && f.what.contains("2h ago"), "{}", f.what);
        assert!(f.fix.contains("rekey discover --user app") && f.fix.contains("rekey retire --user app"), "{}", f.fix);
    }

    #[test]
    fn without_a_config_the_defaults_apply_and_coverage_is_not_judged() {
        let accounts = vec![home(vec![
            user("a", vec![key("AKIA89", true, 89, Some(0))]),
            user("b", vec![key("AKIA91", true, 91, Some(0))]),
            user("c", vec![key("AKIAUNUSED", true, 91, Some(90))]),
        ])];
        let r = evaluate(&accounts, None, now());
        assert_eq!(
            kinds(&r),
            vec![(Kind::OldKey, Some("b"), Some("AKIA91")), (Kind::UnusedKey, Some("c"), Some("AKIAUNUSED"))]
        );
        let b = &r.findings[0];
        assert_eq!(b.fix, "rotate: rekey rotate --user b --target <where the key is used>");
        assert_eq!(r.summary.config, None);
    }

    #[test]
    fn an_unreadable_account_is_a_finding_not_a_crash() {
        let accounts = vec![
            home(vec![]),
            AccountFacts {
                id: "111122223333".into(),
                role_arn: Some("arn:aws:iam::111122223333:role/rekey".into()),
                error: Some("cannot assume arn:aws:iam::111122223333:role/rekey: AccessDenied: no".into()),
                ..Default::default()
            },
        ];
        let r = evaluate(&accounts, None, now());
        assert_eq!(r.findings.len(), 1);
        let f = &r.findings[0];
        assert_eq!((f.kind, f.severity), (Kind::CannotAudit, Severity::High));
        assert!(f.what.starts_with("cannot audit account 111122223333: cannot assume"), "{}", f.what);
        assert!(!r.accounts[1].audited);
        assert_eq!(status(&r), crate::exit::Status::NeedsAction);
    }

    #[test]
    fn a_clean_account_needs_nothing_and_json_has_stable_fields() {
        let r = evaluate(&[home(vec![user("a", vec![key("AKIAOK", true, 1, Some(0))])])], None, now());
        assert_eq!(status(&r), crate::exit::Status::Ok);
        assert!(text(&r).ends_with("nothing needs action\n"));
        let v = serde_json::to_value(&r).unwrap();
        let fields: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(fields, ["accounts", "findings", "summary"]);
        assert_eq!(v["summary"]["needs_action"], false);
        assert_eq!(v["accounts"][0]["root_access_keys"], false);
    }

    #[test]
    fn findings_serialize_with_snake_case_names() {
        let config = Config::parse(CONFIG, "rekey.toml").unwrap();
        let r = evaluate(&[home(vec![user("x", vec![key("AKIAX", true, 1, Some(0))])])], Some(&config), now());
        let v = serde_json::to_value(&r.findings[0]).unwrap();
        let fields: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(fields, ["severity", "kind", "account", "user", "key", "what", "why", "fix"]);
        assert_eq!(v["kind"], "not_covered");
        assert_eq!(v["severity"], "low");
        assert!(text(&r).contains("LOW      123456789012: x has Active keys"), "{}", text(&r));
    }

    #[test]
    fn short_durations() {
        assert_eq!(short(Duration::from_secs(1)), "1s");
        assert_eq!(short(Duration::from_secs(61)), "1m");
        assert_eq!(short(Duration::from_secs(7200)), "2h");
        assert_eq!(short(95 * DAY), "95d");
    }
}
