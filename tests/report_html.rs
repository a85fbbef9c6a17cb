//! The incident report as people read it: `report.md` has every section, `report.json` keeps the
//! model's field names, and `report.html` renders in headless Chromium, with attacker-controlled
//! strings shown as text, into a screenshot that is not blank.
//!
//! Chromium is required (`apt-get install chromium`; scripts/test.sh installs it): without it these
//! tests fail, they never skip.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rekey::incident::model::*;
use rekey::incident::report::write_reports;
use rekey_trail::classify::Category;
use serde_json::json;

const CHROMIUM: &str = "/usr/bin/chromium";
const KEY: &str = "AKIA1234567890ABCDEF";
const SESSION: &str = "ASIAQWERTYUIOPASDFGH";
const BACKDOOR_KEY: &str = "AKIABACKDOORKEY00001";
const ATTACKER: &str = "198.51.100.50";
const XSS_UA: &str = "aws-cli/2.15.0 <script>window.__pwned=1;document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">";

#[allow(clippy::too_many_arguments)]
fn ev(
    id: &str,
    time: &str,
    name: &str,
    source: &str,
    chain: &[&str],
    cats: &[Category],
    ua: &str,
    params: serde_json::Value,
) -> TimelineEvent {
    TimelineEvent {
        event_id: id.into(),
        time: time.into(),
        event_name: name.into(),
        event_source: format!("{source}.amazonaws.com"),
        region: Some("us-east-1".into()),
        source_ip: Some(ATTACKER.into()),
        vpc_endpoint_id: None,
        user_agent: Some(ua.into()),
        signer: chain.last().map(|s| s.to_string()),
        chain: chain.iter().map(|s| s.to_string()).collect(),
        arn: Some(if chain.len() > 1 {
            "arn:aws:sts::111122223333:assumed-role/support-audit/x".into()
        } else {
            "arn:aws:iam::111122223333:user/app-integration-user".into()
        }),
        categories: cats.to_vec(),
        failed: false,
        error_code: None,
        notes: vec![],
        request_parameters: if params.is_null() { None } else { Some(params) },
        response_elements: None,
        seen_in: vec!["event history us-east-1".into()],
    }
}

/// The seed story: a key of app-integration-user leaks; the attacker checks it, maps the account,
/// leaves a backdoor user with admin rights and a role trusting their account, assumes it, and
/// changes the security contact.
fn scenario() -> (Report, Plan) {
    use Category::*;
    let k = &[KEY][..];
    let s = &[KEY, SESSION][..];
    let cli = "aws-cli/2.15.0 Python/3.11.6 Linux/6.5.0 exe/x86_64.kali.2023";
    let mut timeline = vec![
        ev("e01", "2024-05-14T12:11:58Z", "GetCallerIdentity", "sts", k, &[Reconnaissance], cli, json!(null)),
        ev("e02", "2024-05-14T12:12:30Z", "ListUsers", "iam", k, &[Reconnaissance], cli, json!(null)),
        ev("e03", "2024-05-14T12:12:41Z", "ListRoles", "iam", k, &[Reconnaissance], cli, json!(null)),
        ev("e04", "2024-05-14T12:13:05Z", "ListAccessKeys", "iam", k, &[Reconnaissance], XSS_UA, json!(null)),
        ev(
            "e05",
            "2024-05-14T12:31:10Z",
            "CreateUser",
            "iam",
            k,
            &[Persistence],
            cli,
            json!({"userName": "svc-backup"}),
        ),
        ev(
            "e06",
            "2024-05-14T12:31:22Z",
            "CreateAccessKey",
            "iam",
            k,
            &[Persistence, PrivilegeEscalation],
            cli,
            json!({"userName": "svc-backup"}),
        ),
        ev(
            "e07",
            "2024-05-14T12:31:40Z",
            "CreateLoginProfile",
            "iam",
            k,
            &[Persistence, PrivilegeEscalation],
            cli,
            json!({"userName": "svc-backup", "passwordResetRequired": false}),
        ),
        ev(
            "e08",
            "2024-05-14T12:32:02Z",
            "AttachUserPolicy",
            "iam",
            k,
            &[PrivilegeEscalation, Persistence],
            cli,
            json!({"userName": "svc-backup", "policyArn": "arn:aws:iam::aws:policy/AdministratorAccess"}),
        ),
        ev(
            "e09",
            "2024-05-14T12:34:15Z",
            "CreateRole",
            "iam",
            k,
            &[Persistence],
            cli,
            json!({"roleName": "support-audit", "assumeRolePolicyDocument": "{\"Statement\":[{\"Effect\":\"Allow\",\"Principal\":{\"AWS\":\"arn:aws:iam::999999999999:root\"},\"Action\":\"sts:AssumeRole\"}]}"}),
        ),
        ev(
            "e10",
            "2024-05-14T12:35:00Z",
            "AssumeRole",
            "sts",
            k,
            &[],
            cli,
            json!({"roleArn": "arn:aws:iam::111122223333:role/support-audit", "roleSessionName": "x"}),
        ),
        ev("e11", "2024-05-14T12:36:12Z", "ListBuckets", "s3", s, &[Reconnaissance], cli, json!(null)),
        ev(
            "e12",
            "2024-05-14T12:37:40Z",
            "GetSecretValue",
            "secretsmanager",
            s,
            &[Exfiltration],
            cli,
            json!({"secretId": "prod/db"}),
        ),
        ev(
            "e14",
            "2024-05-14T14:02:11Z",
            "PutAlternateContact",
            "account",
            k,
            &[AccountLevel],
            cli,
            json!({"alternateContactType": "SECURITY", "emailAddress": "sec@attacker.example"}),
        ),
    ];
    let mut failed = ev(
        "e13",
        "2024-05-14T12:40:03Z",
        "StopLogging",
        "cloudtrail",
        s,
        &[DefenseEvasion],
        cli,
        json!({"name": "org-trail"}),
    );
    failed.failed = true;
    failed.error_code = Some("AccessDenied".into());
    timeline.push(failed);

    let finding = |id: &str, sev, kind: &str, title: &str, resource: &str, present, evidence: &[&str]| Finding {
        id: id.into(),
        severity: sev,
        kind: kind.into(),
        title: title.into(),
        resource: resource.into(),
        still_present: present,
        evidence: evidence.iter().map(|s| s.to_string()).collect(),
        detail: format!("{title} (seen in {}).", evidence.join(", ")),
    };
    let findings = vec![
        finding(
            "F1",
            Severity::Critical,
            "backdoor_user",
            "Backdoor user svc-backup with AdministratorAccess",
            "arn:aws:iam::111122223333:user/svc-backup",
            Some(true),
            &["e05", "e08"],
        ),
        finding(
            "F2",
            Severity::Critical,
            "access_key",
            "Access key for svc-backup",
            BACKDOOR_KEY,
            Some(true),
            &["e06"],
        ),
        finding(
            "F3",
            Severity::High,
            "login_profile",
            "Console password for svc-backup",
            "svc-backup",
            Some(true),
            &["e07"],
        ),
        finding(
            "F4",
            Severity::Critical,
            "trust_policy",
            "Role support-audit trusts account 999999999999",
            "arn:aws:iam::111122223333:role/support-audit",
            Some(true),
            &["e09", "e10"],
        ),
        finding(
            "F5",
            Severity::High,
            "alternate_contact",
            "Security contact changed to sec@attacker.example",
            "SECURITY",
            Some(true),
            &["e14"],
        ),
        finding(
            "F6",
            Severity::Medium,
            "activity",
            "Secret prod/db read with a role session",
            "prod/db",
            None,
            &["e12"],
        ),
    ];

    let report = Report {
        access_key_id: KEY.into(),
        owner: Owner {
            user: Some("app-integration-user".into()),
            arn: Some("arn:aws:iam::111122223333:user/app-integration-user".into()),
            account: Some("111122223333".into()),
            is_root: false,
            key_status: Some("Inactive".into()),
            last_used: Some("2024-05-14T14:02:00Z".into()),
            last_used_service: Some("account".into()),
            last_used_region: Some("us-east-1".into()),
            quarantine_policies: vec!["AWSCompromisedKeyQuarantineV3".into()],
        },
        severity: Severity::Critical,
        generated_at: "2024-05-15T08:30:00Z".into(),
        window_start: "2024-04-14T12:11:58Z".into(),
        window_end: "2024-05-15T08:25:00Z".into(),
        fence: Some(FenceReport {
            status: "applied".into(),
            policy_name: Some("rekey-fence-AKIA1234567890ABCDEF".into()),
            allowed: vec![FenceSource {
                kind: "ip".into(),
                value: "203.0.113.10".into(),
                events: 18_402,
                first_seen: Some("2024-04-14T12:15:00Z".into()),
                last_seen: Some("2024-05-14T12:10:02Z".into()),
            }],
            excluded: vec![ATTACKER.into()],
            detail: None,
            ..FenceReport::default()
        }),
        cutover: Some(CutoverReport {
            outcome: "rotated".into(),
            new_key_id: Some("AKIANEWKEY0000000001".into()),
            targets: vec!["ecs:prod/mailer".into(), "secretsmanager:prod/ses-creds".into()],
            detail: Some("new key verified by the app before the old one was deactivated".into()),
        }),
        sessions_revoked: vec![RevokedSessions {
            kind: "role".into(),
            name: "support-audit".into(),
            policy_name: "AWSRevokeOlderSessions".into(),
            issued_before: "2024-05-15T08:20:00Z".into(),
            status: "revoked".into(),
        }],
        sources: vec![
            SourceReport {
                kind: "event-history".into(),
                location: "us-east-1".into(),
                covers: "90 days of management events in us-east-1; no data events".into(),
                status: "ok".into(),
                events: 14,
            },
            SourceReport {
                kind: "trail-logs".into(),
                location: "s3://org-trail-logs/AWSLogs/111122223333/".into(),
                covers: "all regions".into(),
                status: "AccessDenied reading the bucket".into(),
                events: 0,
            },
        ],
        derived_keys: vec![DerivedKeyReport {
            key: SESSION.into(),
            parent: KEY.into(),
            event_name: "AssumeRole".into(),
            event_time: Some("2024-05-14T12:35:00Z".into()),
            principal: Some("arn:aws:sts::111122223333:assumed-role/support-audit/x".into()),
        }],
        timeline,
        findings,
        blind_spots: vec![BlindSpot {
            kind: "source_unreadable".into(),
            detail: "the organisation trail's bucket could not be read: other regions are not covered".into(),
            evidence: vec![],
        }],
        actions_taken: vec![
            "Attached fence policy rekey-fence-AKIA1234567890ABCDEF allowing only 203.0.113.10".into(),
            "Rotated the key: the app now uses AKIANEWKEY0000000001".into(),
            "Deactivated AKIA1234567890ABCDEF".into(),
            "Revoked sessions of role support-audit issued before 2024-05-15T08:20:00Z".into(),
        ],
        todo: vec![
            "Review and apply the containment plan".into(),
            "Rotate the secret prod/db: it was read".into(),
            "Get read access to s3://org-trail-logs and rerun for all regions".into(),
        ],
        review: None,
        timings: Default::default(),
        other_keys: Vec::new(),
    };
    let plan = Plan {
        incident: "incident-20240515-AKIA1234567890ABCDEF".into(),
        access_key_id: KEY.into(),
        account: Some("111122223333".into()),
        created_at: "2024-05-15T08:30:00Z".into(),
        actions: vec![
            PlanAction {
                id: "A1".into(),
                finding: "F2".into(),
                description: "Deactivate svc-backup's key".into(),
                action: Action::DeactivateAccessKey { user: "svc-backup".into(), access_key_id: BACKDOOR_KEY.into() },
                undo: Undo::None { reason: "reactivating a backdoor key is not offered".into() },
            },
            PlanAction {
                id: "A2".into(),
                finding: "F3".into(),
                description: "Delete svc-backup's console password".into(),
                action: Action::DeleteLoginProfile { user: "svc-backup".into() },
                undo: Undo::RecreateLoginProfile { user: "svc-backup".into(), password_reset_required: true },
            },
            PlanAction {
                id: "A3".into(),
                finding: "F1".into(),
                description: "Detach AdministratorAccess from svc-backup".into(),
                action: Action::DetachUserPolicy {
                    user: "svc-backup".into(),
                    policy_arn: "arn:aws:iam::aws:policy/AdministratorAccess".into(),
                },
                undo: Undo::None { reason: "not re-granting admin".into() },
            },
            PlanAction {
                id: "A4".into(),
                finding: "F4".into(),
                description: "Delete role support-audit".into(),
                action: Action::DeleteRole { role: "support-audit".into() },
                undo: Undo::RecreateRole {
                    role: "support-audit".into(),
                    path: None,
                    assume_role_policy_document: "{}".into(),
                    description: None,
                },
            },
        ],
    };
    (report, plan)
}

fn write(dir: &Path) -> Vec<PathBuf> {
    let (report, plan) = scenario();
    write_reports(dir, &report, &plan).expect("write reports")
}

#[test]
fn markdown_has_every_section_and_finding() {
    let dir = tempfile::tempdir().unwrap();
    let paths = write(dir.path());
    let names: Vec<_> = paths.iter().map(|p| p.file_name().unwrap().to_str().unwrap().to_string()).collect();
    assert_eq!(names, ["report.md", "report.json", "plan.json", "report.html"]);
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    let sections = [
        "# P1 · CRITICAL",
        "## What happened",
        "## What rekey did",
        "## Findings",
        "## Timeline",
        "### Failed calls",
        "## Blind spots",
        "## Sources",
        "## What is left to do",
        "## Draft reply to the AWS support case",
    ];
    let mut at = 0;
    for s in sections {
        let pos = md[at..].find(s).unwrap_or_else(|| panic!("{s:?} missing or out of order in:\n{md}"));
        at += pos + s.len();
    }
    for f in ["F1", "F2", "F3", "F4", "F5", "F6"] {
        assert!(md.contains(&format!("| {f} |")), "{f} not in the findings table:\n{md}");
    }
    let command = format!("rekey contain --plan {}/plan.json --apply", dir.path().display());
    assert!(md.contains(&command), "no contain command {command:?}");
    // The story: first use from the attacker's IP, then what the calls did.
    assert!(md.contains("`GetCallerIdentity` at `2024-05-14T12:11:58Z` from `198.51.100.50`"), "{md}");
    for s in ["**Reconnaissance**", "**Persistence**", "**Privilege escalation**", "**Account-level changes**"] {
        assert!(md.contains(s), "narrative lacks {s}");
    }
    assert!(md.contains("`ASIAQWERTYUIOPASDFGH` minted by `AKIA…CDEF` through `AssumeRole`"), "{md}");
    assert!(md.contains("`AKIA…CDEF → ASIA…ASDFGH`") || md.contains("`AKIA…CDEF → ASIA…DFGH`"), "{md}");
    assert!(md.contains("`StopLogging`") && md.contains("`AccessDenied`"));
    assert!(md.contains("`203.0.113.10` | 18402"), "fence evidence missing");
    assert!(md.contains("> Thank you for the notification about access key `AKIA1234567890ABCDEF`"));
    assert!(md.contains("inactive as of `2024-05-15T08:30:00Z`"));
    // Attacker strings cannot become HTML in rendered markdown.
    assert!(!md.contains("<script>"), "raw <script> in markdown");
    assert!(!md.contains("<img"), "raw <img> in markdown");
}

#[test]
fn markdown_puts_root_p1_first() {
    let (mut report, plan) = scenario();
    report.owner.is_root = true;
    report.owner.user = Some("root".into());
    report.severity = Severity::High;
    let dir = tempfile::tempdir().unwrap();
    write_reports(dir.path(), &report, &plan).unwrap();
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    let first_lines: String = md.lines().take(8).collect::<Vec<_>>().join("\n");
    assert!(first_lines.starts_with("# P1 ·"), "{first_lines}");
    for s in ["root key: a P1 incident", "can't be restrained by IAM policies", "Rotate now", "30+", "AWS Security"] {
        assert!(first_lines.contains(s), "{s:?} not in the headline:\n{first_lines}");
    }
}

#[test]
fn json_round_trips_with_stable_field_names() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path());
    let text = std::fs::read_to_string(dir.path().join("report.json")).unwrap();
    let back: Report = serde_json::from_str(&text).expect("report.json parses into Report");
    let (orig, _) = scenario();
    assert_eq!(back.access_key_id, orig.access_key_id);
    assert_eq!(back.timeline.len(), orig.timeline.len());
    assert_eq!(back.findings.len(), orig.findings.len());
    assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&orig).unwrap());
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for field in [
        "access_key_id",
        "owner",
        "severity",
        "generated_at",
        "window_start",
        "window_end",
        "fence",
        "cutover",
        "sessions_revoked",
        "sources",
        "derived_keys",
        "timeline",
        "findings",
        "blind_spots",
        "actions_taken",
        "todo",
    ] {
        assert!(v.get(field).is_some(), "report.json lacks {field}");
    }
    assert_eq!(v["severity"], "critical");
    assert_eq!(v["owner"]["user"], "app-integration-user");
    assert_eq!(v["timeline"][0]["event_name"], "GetCallerIdentity");
    assert_eq!(v["timeline"][0]["categories"][0], "reconnaissance");
    assert_eq!(v["findings"][0]["still_present"], true);
    assert!(text.contains("\n  \"access_key_id\""), "not pretty-printed");

    let plan_text = std::fs::read_to_string(dir.path().join("plan.json")).unwrap();
    let plan: Plan = serde_json::from_str(&plan_text).expect("plan.json parses into Plan");
    assert_eq!(plan.actions.len(), 4);
    assert!(plan_text.contains("\"type\": \"deactivate_access_key\""), "{plan_text}");
}

#[test]
fn html_is_self_contained_and_embeds_data_safely() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path());
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    for external in ["http://", "https://", "<link", " src=\""] {
        assert!(!html.contains(external), "report.html refers to something outside it: {external}");
    }
    // The data block: the attacker's markup is there only escaped, and the block cannot be closed early.
    let start = html.find("<script type=\"application/json\" id=\"rekey-data\">").unwrap();
    let body = &html[start..];
    let block = &body[body.find('>').unwrap() + 1..body.find("</script>").unwrap()];
    assert!(!block.contains('<'), "a raw '<' in the JSON block");
    let data: serde_json::Value = serde_json::from_str(block).expect("the JSON block parses");
    assert_eq!(data["report"]["timeline"][3]["user_agent"], XSS_UA);
    assert_eq!(html.matches("<script").count(), 2, "only the data block and the page's script");
}

// ---------------------------------------------------------------------------------------------
// Headless Chromium
// ---------------------------------------------------------------------------------------------

fn chromium() -> &'static str {
    if !Path::new(CHROMIUM).exists() {
        panic!(
            "{CHROMIUM} is missing: these tests need headless Chromium. Install it with \
             `apt-get update && apt-get install -y chromium` (scripts/test.sh does this)."
        );
    }
    CHROMIUM
}

/// Runs Chromium headless on `page` with `extra` arguments; returns (stdout, stderr).
fn run_chromium(page: &Path, profile: &Path, extra: &[&str]) -> (String, String) {
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(["--enable-logging=stderr", "--v=0"])
    .args(extra)
    .arg(format!("file://{}", page.display()))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {CHROMIUM}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).ok();
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).ok();
        s
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            panic!("chromium did not finish within 90 s: {}", err_t.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (stdout, stderr) = (out_t.join().unwrap(), err_t.join().unwrap());
    assert!(status.success(), "chromium failed ({status}):\n{stderr}");
    (stdout, stderr)
}

/// Lines where the page itself reported a problem (console errors, exceptions).
fn page_errors(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| {
            l.contains("Uncaught")
                || l.contains("SyntaxError")
                || l.contains("TypeError")
                || l.contains("ReferenceError")
                || l.contains("Content Security Policy")
                || (l.contains(":CONSOLE") && l.contains("report.html"))
        })
        .collect()
}

#[test]
fn html_renders_in_chromium_without_errors() {
    let dir = tempfile::tempdir().unwrap();
    let profile = tempfile::tempdir().unwrap();
    write(dir.path());
    let (dom, stderr) = run_chromium(&dir.path().join("report.html"), profile.path(), &["--dump-dom"]);
    let errors = page_errors(&stderr);
    assert!(errors.is_empty(), "the page reported errors:\n{}", errors.join("\n"));
    assert!(dom.contains("data-rendered=\"ok\""), "the page's script did not finish:\n{stderr}");

    let (report, _) = scenario();
    for e in &report.timeline {
        let needle = format!("id=\"ev-{}\" data-event=\"{}\"", e.event_id, e.event_name);
        assert!(dom.contains(&needle), "no timeline entry {needle}");
    }
    assert!(dom.contains("class=\"ev failed\" id=\"ev-e13\""), "the failed call is not marked apart");
    assert!(dom.contains("class=\"run derived\""), "the session's events are not grouped apart");
    for f in &report.findings {
        assert!(dom.contains(&format!("id=\"finding-{}\"", f.id)), "no card for {}", f.id);
    }
    assert!(dom.contains("STILL PRESENT"));
    assert!(dom.contains("source_unreadable"), "blind spot not shown");
    assert!(dom.contains(&format!("rekey contain --plan {}/plan.json --apply", dir.path().display())));
    for c in ["reconnaissance", "persistence", "privilege_escalation", "account_level", "failed"] {
        assert!(dom.contains(&format!("data-cat=\"{c}\"")), "no filter button for {c}");
    }

    // The attacker's user agent is text, not markup.
    assert!(dom.contains("&lt;script&gt;window.__pwned=1;"), "user agent not rendered as text");
    assert!(!dom.contains("<script>window.__pwned"), "user agent injected a script");
    assert!(!dom.contains("<img src=\"x\""), "user agent injected an element");
    assert!(!dom.contains("<title>pwned"), "injected script ran");
}

/// A minimal PNG reader: 8-bit RGB/RGBA, non-interlaced (what Chromium writes).
fn decode_png(bytes: &[u8]) -> (u32, u32, usize, Vec<u8>) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let (mut pos, mut idat, mut ihdr) = (8, Vec::new(), None);
    while pos + 8 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        let kind = &bytes[pos + 4..pos + 8];
        let data = &bytes[pos + 8..pos + 8 + len];
        match kind {
            b"IHDR" => ihdr = Some(data.to_vec()),
            b"IDAT" => idat.extend_from_slice(data),
            b"IEND" => break,
            _ => {}
        }
        pos += 12 + len;
    }
    let ihdr = ihdr.expect("no IHDR");
    let w = u32::from_be_bytes(ihdr[0..4].try_into().unwrap());
    let h = u32::from_be_bytes(ihdr[4..8].try_into().unwrap());
    assert_eq!(ihdr[8], 8, "bit depth");
    assert_eq!(ihdr[12], 0, "interlaced");
    let bpp = match ihdr[9] {
        2 => 3,
        6 => 4,
        t => panic!("colour type {t}"),
    };
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(&idat[..]).read_to_end(&mut raw).expect("IDAT inflates");
    let stride = w as usize * bpp;
    assert_eq!(raw.len(), (stride + 1) * h as usize, "IDAT size");
    let mut px = vec![0u8; stride * h as usize];
    for y in 0..h as usize {
        let filter = raw[y * (stride + 1)];
        let line = &raw[y * (stride + 1) + 1..(y + 1) * (stride + 1)];
        for x in 0..stride {
            let a = if x >= bpp { px[y * stride + x - bpp] as i32 } else { 0 };
            let b = if y > 0 { px[(y - 1) * stride + x] as i32 } else { 0 };
            let c = if x >= bpp && y > 0 { px[(y - 1) * stride + x - bpp] as i32 } else { 0 };
            let pred = match filter {
                0 => 0,
                1 => a,
                2 => b,
                3 => (a + b) / 2,
                4 => {
                    let p = a + b - c;
                    let (pa, pb, pc) = ((p - a).abs(), (p - b).abs(), (p - c).abs());
                    if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        b
                    } else {
                        c
                    }
                }
                f => panic!("filter {f}"),
            };
            px[y * stride + x] = (line[x] as i32 + pred) as u8;
        }
    }
    (w, h, bpp, px)
}

#[test]
fn html_screenshot_is_a_real_page() {
    // Kept under the target dir so a person can look at it after the run.
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("report_html");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let profile = tempfile::tempdir().unwrap();
    write(&out);
    let shot = out.join("timeline.png");
    let (_, stderr) = run_chromium(
        &out.join("report.html"),
        profile.path(),
        &[&format!("--screenshot={}", shot.display()), "--window-size=1280,2000"],
    );
    let errors = page_errors(&stderr);
    assert!(errors.is_empty(), "the page reported errors:\n{}", errors.join("\n"));
    let bytes = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot at {}: {e}\n{stderr}", shot.display()));
    let (w, h, bpp, px) = decode_png(&bytes);
    assert_eq!((w, h), (1280, 2000), "screenshot size");

    let mut counts = std::collections::HashMap::new();
    for p in px.chunks(bpp) {
        *counts.entry((p[0], p[1], p[2])).or_insert(0usize) += 1;
    }
    let total = (w * h) as usize;
    let top = counts.values().max().copied().unwrap();
    assert!(counts.len() > 200, "only {} colours: the page looks blank", counts.len());
    assert!(top < total * 9 / 10, "one colour covers {}% of the page", top * 100 / total);
    // The header is dark and the severity badge red: both are drawn.
    let at = |x: usize, y: usize| {
        let i = (y * w as usize + x) * bpp;
        (px[i], px[i + 1], px[i + 2])
    };
    let (r, g, b) = at(5, 5);
    assert!(r < 60 && g < 60 && b < 80, "the header is not dark: {:?}", (r, g, b));
    let red = counts.iter().filter(|((r, g, b), _)| *r > 150 && *g < 60 && *b < 60).map(|(_, n)| n).sum::<usize>();
    assert!(red > 500, "no severity red on the page");
    println!("screenshot: {}", shot.display());
}

#[test]
fn report_files_are_private_and_never_written_through_a_link() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let reports = dir.path().join("reports");
    std::fs::create_dir(&reports).unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "keep me").unwrap();
    // Links planted where the report and its temp file go (a shared folder, another user).
    std::os::unix::fs::symlink(&victim, reports.join("report.md")).unwrap();
    std::os::unix::fs::symlink(&victim, reports.join(".report.json.tmp")).unwrap();
    let paths = write(&reports);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    for p in paths {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        assert!(meta.file_type().is_file(), "{} is a plain file", p.display());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{}", p.display());
    }
    let fresh = dir.path().join("new/reports");
    write(&fresh);
    assert_eq!(std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777, 0o700);
}
