//! `rekey incident` and `rekey investigate`, in the order the playbook asks for:
//!
//! 1. identify the key's owner (a root key is P1; quarantine policies are explained);
//! 2. revoke the owner's older sessions at once (the application signs with the key itself, so it
//!    holds no session to lose);
//! 3. investigate: the fence below is learnt from the key's own history, so the history is read
//!    before anything else changes;
//! 4. fence the attacker out with a policy that only lets the application's own sources in;
//! 5. cut over to a new key with the zero-downtime rotation (the leaked key is deactivated, never
//!    deleted: it is evidence), then lift the fence;
//! 6. revoke the sessions of every role the key's sessions assumed;
//! 7. hunt the backdoors that still exist, and write the report and the containment plan.
//!
//! `investigate` is steps 1, 3 and 7 only: it changes nothing.

use std::path::PathBuf;
use std::time::SystemTime;

use super::fence;
use super::history::AwsEventHistory;
use super::hunt;
use super::identify;
use super::investigate::{AwsTrails, Inputs, OpenS3, investigate, rfc3339};
use super::model::{CutoverReport, FenceReport, Finding, Plan, Report, Severity};
use super::report::write_reports;
use super::revoke;
use crate::rotate::machine::{self as rotation, Effects, Settings};

/// How the leaked key is replaced.
pub enum Cutover {
    /// The zero-downtime rotation, with these targets and probes.
    Rotate(Box<Settings>),
    /// No consumer to move: deactivate the key at once (consumers break).
    DeactivateNow,
    /// Leave the key as it is (`--no-cutover`, or no target given).
    Skip { why: String },
}

pub struct IncidentSettings {
    pub key: String,
    pub start: SystemTime,
    pub end: SystemTime,
    /// `--logs` sources, already opened.
    pub logs: Vec<(String, Box<dyn rekey_trail::Source>)>,
    pub report_dir: PathBuf,
    pub attacker_ips: Vec<String>,
    pub regions: Vec<String>,
    pub use_history: bool,
    pub use_trails: bool,
    /// `investigate`: change nothing.
    pub read_only: bool,
    pub fence: bool,
    pub cutover: Cutover,
    /// Query the trail bucket with Athena instead of reading its files.
    pub athena: Option<crate::trace::athena::AthenaSettings>,
    /// The live sweep of every Region (`crate::sweep`); None: `--no-sweep`.
    pub sweep: Option<crate::sweep::Options>,
}

/// What the command line prints and exits with.
pub struct Outcome {
    pub report: Report,
    pub files: Vec<PathBuf>,
    pub exit: crate::exit::Status,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct IncidentRefusal(pub String);

pub async fn run(
    sdk: &aws_types::SdkConfig,
    settings: IncidentSettings,
    fx: Option<&Effects<'_>>,
    open_s3: OpenS3<'_>,
    interrupt: impl std::future::Future<Output = ()>,
) -> Result<Outcome, IncidentRefusal> {
    let started = SystemTime::now();
    let iam = aws_sdk_iam::Client::new(sdk);
    let sts = aws_sdk_sts::Client::new(sdk);
    let account = aws_sdk_account::Client::new(sdk);
    let mut actions_taken = Vec::new();
    let mut todo = Vec::new();

    // 1. Identify.
    let own_key = identify::own_key_id(sdk).await;
    let who = identify::identify(&iam, &sts, &settings.key, own_key.as_deref())
        .await
        .map_err(|e| IncidentRefusal(e.to_string()))?;
    for w in &who.warnings {
        tracing::warn!("{w}");
    }
    let owner = who.owner.clone();
    let user = owner.user.clone().filter(|_| !owner.is_root);
    let now = SystemTime::now();

    // 2. The owner's older sessions, at once.
    let mut sessions_revoked = Vec::new();
    if !settings.read_only
        && let Some(user) = &user
    {
        let r = revoke::revoke_user(&iam, user, now).await;
        actions_taken.push(format!("revoked sessions of user {user} issued before {}: {}", rfc3339(now), r.status));
        sessions_revoked.push(r);
    }

    // 3. Investigate.
    let history = AwsEventHistory::new(sdk);
    let athena_client = aws_sdk_athena::Client::new(sdk);
    let trails = AwsTrails::new(sdk);
    let objects = super::digest::S3Objects::new(sdk);
    let inv = investigate(Inputs {
        key: settings.key.clone(),
        start: settings.start,
        end: settings.end,
        history: settings.use_history.then_some(&history as &dyn super::history::EventHistory),
        regions: settings.regions.clone(),
        trails: settings.use_trails.then_some(&trails as &dyn super::investigate::Trails),
        logs: settings.logs,
        open_s3,
        history_rate: 2.0,
        athena: settings
            .athena
            .clone()
            .map(|settings| super::investigate::AthenaReader { api: &athena_client, settings }),
        objects: settings.use_trails.then_some(&objects as &dyn super::digest::Objects),
    })
    .await;
    actions_taken.push(format!(
        "read {} source(s): {} events of the key and {} key(s) it minted",
        inv.sources.len(),
        inv.timeline.len(),
        inv.derived_keys.len()
    ));

    // 4. Fence, learnt from the key's own events.
    let mut fence_report: Option<FenceReport> = None;
    if !settings.read_only && settings.fence {
        // The key's own use, before the window and in it (the attacker's addresses are excluded).
        let own_events: Vec<_> = inv
            .context
            .iter()
            .chain(&inv.timeline)
            .filter(|e| e.signer.as_deref() == Some(&settings.key))
            .cloned()
            .collect();
        let (allowed, excluded) = fence::learn_sources(&own_events, None, &settings.attacker_ips);
        let mut report = FenceReport { allowed: allowed.clone(), excluded, ..FenceReport::default() };
        match (&user, fence::build_fence(&allowed, &settings.attacker_ips)) {
            (None, _) => {
                report.status = "not_possible".into();
                report.detail = Some("a root key cannot be fenced by an IAM policy".into());
            }
            (_, Err(why)) => {
                report.status = why.status().into();
                report.detail = Some(why.to_string());
                todo.push(format!("fence not applied: {why}"));
            }
            (Some(user), Ok(policy)) => {
                report.allowed = policy.allowed.clone();
                match fence::apply(&iam, user, &policy.document).await {
                    Ok(()) => {
                        report.status = "applied".into();
                        report.policy_name = Some(fence::POLICY_NAME.into());
                        report.detail = (!policy.notes.is_empty()).then(|| policy.notes.join(" "));
                        actions_taken.push(format!(
                            "fenced {user}: every call is denied unless it comes from {} source(s) the application used before the attack",
                            policy.allowed.len()
                        ));
                    }
                    Err(e) => {
                        report.status = "failed".into();
                        report.detail = Some(e.to_string());
                    }
                }
            }
        }
        fence_report = Some(report);
    }

    // 5. Cut over.
    let mut cutover_report = None;
    let mut exit = crate::exit::Status::Ok;
    if !settings.read_only {
        let skip = |todo: &mut Vec<String>, why: String| {
            todo.push(format!(
                "the leaked key {} is still Active ({why}): rotate it with `rekey rotate --user {} --target …` or deactivate it",
                settings.key,
                user.clone().unwrap_or_else(|| "root".into())
            ));
            CutoverReport { outcome: "skipped".into(), detail: Some(why), ..CutoverReport::default() }
        };
        let report = match (&settings.cutover, fx) {
            (Cutover::Skip { why }, _) => skip(&mut todo, why.clone()),
            (Cutover::Rotate(_), None) => skip(&mut todo, "no rotation was set up".into()),
            (Cutover::Rotate(_), Some(_)) if user.is_none() => {
                skip(&mut todo, "the key's owner is not an IAM user rekey can rotate".into())
            }
            (Cutover::Rotate(rotate_settings), Some(fx)) => {
                let mut rotate_settings = (**rotate_settings).clone();
                rotate_settings.user = user.clone().unwrap_or_default();
                rotate_settings.old_key = Some(settings.key.clone());
                // The leaked key is evidence: deactivate it, never delete it.
                rotate_settings.delete_old = false;
                match rotation::rotate(fx, &rotate_settings, interrupt).await {
                    Ok(r) => {
                        exit = match r.outcome() {
                            crate::rotate::journal::Outcome::Rotated => exit,
                            crate::rotate::journal::Outcome::RolledBack => crate::exit::Status::RolledBack,
                            _ => crate::exit::Status::Failed,
                        };
                        if r.outcome != "rotated" {
                            todo.push(format!(
                                "the cutover {}: {}; the leaked key {} is still Active",
                                r.outcome,
                                r.error.clone().unwrap_or_default(),
                                settings.key
                            ));
                        }
                        CutoverReport {
                            outcome: r.outcome.to_string(),
                            new_key_id: r.new_key_id.clone(),
                            targets: r.targets.iter().map(|t| format!("{} {}", t.target, t.status)).collect(),
                            detail: r.error.clone(),
                        }
                    }
                    Err(refusal) => {
                        todo.push(format!("the cutover was refused: {}", refusal.0));
                        exit = crate::exit::Status::Refused;
                        CutoverReport { outcome: "refused".into(), detail: Some(refusal.0), ..CutoverReport::default() }
                    }
                }
            }
            (Cutover::DeactivateNow, _) => {
                let user_name = user.clone().unwrap_or_default();
                let r = iam
                    .update_access_key()
                    .user_name(&user_name)
                    .access_key_id(&settings.key)
                    .status(aws_sdk_iam::types::StatusType::Inactive)
                    .send()
                    .await;
                match r {
                    Ok(_) => CutoverReport {
                        outcome: "deactivated_now".into(),
                        detail: Some(
                            "deactivated at once without a replacement: its consumers fail until they get a new key"
                                .into(),
                        ),
                        ..CutoverReport::default()
                    },
                    Err(e) => {
                        exit = crate::exit::Status::Failed;
                        CutoverReport {
                            outcome: "failed".into(),
                            detail: Some(aws_sdk_iam::error::DisplayErrorContext(&e).to_string()),
                            ..CutoverReport::default()
                        }
                    }
                }
            }
        };
        actions_taken.push(format!("cutover: {}", report.outcome));
        // The fence has done its job once the leaked key is off.
        if matches!(report.outcome.as_str(), "rotated" | "deactivated_now")
            && let (Some(f), Some(user)) = (fence_report.as_mut(), &user)
            && f.status == "applied"
        {
            match fence::remove(&iam, user).await {
                Ok(()) => {
                    f.status = "removed".into();
                    actions_taken.push(format!("lifted the fence on {user}: the leaked key is off"));
                }
                Err(e) => todo.push(format!("remove the fence policy {} from {user}: {e}", fence::POLICY_NAME)),
            }
        } else if fence_report.as_ref().is_some_and(|f| f.status == "applied") {
            todo.push(format!("lift the fence ({}) once the key is rotated", fence::POLICY_NAME));
        }
        cutover_report = Some(report);

        // 6. Role sessions.
        for role in &inv.roles_assumed {
            let r = revoke::revoke_role(&iam, role, SystemTime::now()).await;
            actions_taken.push(format!("revoked older sessions of role {role}: {}", r.status));
            sessions_revoked.push(r);
        }
    }

    // 7. Hunt, report, plan.
    // The hunt reads earlier values (contacts, trust policies) from the events before the window.
    let with_context: Vec<_> = inv.context.iter().chain(&inv.timeline).cloned().collect();
    let ec2 = aws_sdk_ec2::Client::new(sdk);
    // The live account is read up to now: what appeared since the response began is the attacker's
    // unless an event says otherwise, except the cutover's own key.
    let scope = hunt::Scope {
        window: (settings.start, settings.end),
        key: settings.key.clone(),
        compromised: owner.clone(),
        response_started: Some(hunt::response_began(settings.end, started)),
        own_keys: cutover_report.as_ref().and_then(|c| c.new_key_id.clone()).into_iter().collect(),
        attacker_ips: settings.attacker_ips.clone(),
        unverified: inv.unverified.clone(),
    };
    let mut found = hunt::hunt(&iam, &account, &ec2, &with_context, &scope).await;
    // What the attacker left outside IAM, read live in every Region whatever the logs say.
    let mut swept = None;
    if let Some(mut opts) = settings.sweep.clone() {
        opts.account = opts.account.or_else(|| owner.account.clone());
        let mut s = crate::sweep::sweep(sdk, &opts, &with_context).await;
        s.merge_into(&mut found.findings, &mut found.plan);
        actions_taken.push(crate::sweep::summary(&s));
        swept = Some(s);
    }
    let mut findings: Vec<Finding> = Vec::new();
    if owner.is_root || who.p1 {
        findings.push(Finding {
            id: String::new(),
            severity: Severity::Critical,
            kind: "root_key".into(),
            title: "P1: a root access key is involved".into(),
            resource: owner.arn.clone().unwrap_or_else(|| "root".into()),
            still_present: None,
            evidence: Vec::new(),
            detail: "IAM policies cannot restrain root: rotate or delete the root key now, audit all root activity of the last 30+ days, and contact AWS Security.".into(),
        });
    }
    if !owner.quarantine_policies.is_empty() {
        findings.push(Finding {
            id: String::new(),
            severity: Severity::High,
            kind: "quarantine".into(),
            title: format!("AWS quarantined the user: {}", owner.quarantine_policies.join(", ")),
            resource: owner.arn.clone().unwrap_or_default(),
            still_present: Some(true),
            evidence: Vec::new(),
            detail: who.quarantine_explained.join(" "),
        });
    }
    findings.extend(found.findings);
    let mut id_map = std::collections::BTreeMap::new();
    for (i, f) in findings.iter_mut().enumerate() {
        let new = format!("F{}", i + 1);
        if !f.id.is_empty() {
            id_map.insert(f.id.clone(), new.clone());
        }
        f.id = new;
    }
    if let Some(s) = swept.as_mut() {
        s.review.renumber(&id_map);
    }
    let mut plan_actions = found.plan;
    for (i, a) in plan_actions.iter_mut().enumerate() {
        a.id = format!("A{}", i + 1);
        if let Some(new) = id_map.get(&a.finding) {
            a.finding = new.clone();
        }
    }
    todo.extend(found.notes);
    if !plan_actions.is_empty() {
        todo.push(format!(
            "review and apply the containment plan: `rekey contain --plan {} --apply` ({} action(s); `--undo` reverses them)",
            settings.report_dir.join("plan.json").display(),
            plan_actions.len()
        ));
    }
    let severity =
        findings.iter().map(|f| f.severity).max().unwrap_or(if inv.timeline.iter().any(|e| !e.categories.is_empty()) {
            Severity::Medium
        } else {
            Severity::Low
        });
    let report = Report {
        access_key_id: settings.key.clone(),
        owner,
        severity,
        generated_at: rfc3339(SystemTime::now()),
        window_start: rfc3339(settings.start),
        window_end: rfc3339(settings.end),
        fence: fence_report,
        cutover: cutover_report,
        sessions_revoked,
        sources: inv.sources,
        derived_keys: inv.derived_keys,
        timeline: inv.timeline,
        findings,
        blind_spots: inv.blind_spots.into_iter().chain(swept.iter().flat_map(|s| s.blind_spots.clone())).collect(),
        actions_taken,
        todo,
        review: swept.map(|s| s.review),
    };
    let plan = Plan {
        incident: settings.report_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        access_key_id: settings.key.clone(),
        account: report.owner.account.clone(),
        created_at: report.generated_at.clone(),
        actions: plan_actions,
    };
    let files = write_reports(&settings.report_dir, &report, &plan)
        .map_err(|e| IncidentRefusal(format!("cannot write the report into {}: {e}", settings.report_dir.display())))?;
    Ok(Outcome { report, files, exit })
}
