//! `rekey incident` and `rekey investigate`, containment first: how fast the attacker is shut out
//! must not depend on how busy the leaked key was.
//!
//! 1. identify the key's owner (a root key is P1; quarantine policies are explained);
//! 2. revoke the owner's sessions issued before the incident's start (the application signs with
//!    the key itself, so it holds no session to lose);
//! 3. sample the key's own recent use, bounded in requests and seconds (`sample`), and fence the
//!    attacker out with a policy that only lets those sources and `--allow-source` in; the fence
//!    is journaled, so a crash leaves nothing `rekey resume` cannot lift;
//! 4. check the application behind the fence: when it fails, widen the fence from the full
//!    history; when it still fails, lift the fence, say so loudly, and go on;
//! 5. cut over to a new key with the zero-downtime rotation (no access key is deleted: the leaked
//!    key is deactivated, an Inactive second key is only deleted when named with `--free-slot`),
//!    then lift the fence;
//! 6. meanwhile, from the moment the fence is on, investigate: every source, the whole window;
//! 7. revoke the sessions of every local role the key's sessions assumed, issued before the start;
//! 8. hunt the backdoors that still exist, and write the report and the containment plan.
//!
//! `investigate` is steps 1, 6 and 8 only: it changes nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::fence;
use super::fence_step::{self, Fence, Learnt};
use super::history::AwsEventHistory;
use super::hunt;
use super::identify;
use super::investigate::{AwsTrails, Inputs, Investigation, OpenS3, investigate, rfc3339};
use super::model::{CutoverReport, FenceReport, FenceSource, Finding, Plan, Report, Severity, Timings};
use super::report::write_reports;
use super::revoke;
use super::sample;
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
    /// `--allow-source`, validated: always allowed by the fence.
    pub allow_sources: Vec<FenceSource>,
    /// The `--logs` sources opened a second time, for the bounded sample.
    pub sample_logs: Vec<(String, Box<dyn rekey_trail::Source>)>,
    /// LookupEvents requests per second per Region (AWS allows 2; tests against a scaled emulator
    /// raise it).
    pub history_rate: f64,
    /// Where the fence is journaled (the state folder).
    pub state_dir: PathBuf,
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
    mut settings: IncidentSettings,
    fx: Option<&Effects<'_>>,
    open_s3: OpenS3<'_>,
    interrupt: impl std::future::Future<Output = ()>,
) -> Result<Outcome, IncidentRefusal> {
    let clock = Instant::now();
    // Sessions issued before this are revoked; the new key's, minted after, are not.
    let incident_start = SystemTime::now();
    let since_start = move || (clock.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    let mut timings = Timings::default();
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

    // 2. The owner's older sessions, at once.
    let mut sessions_revoked = Vec::new();
    if !settings.read_only
        && let Some(user) = &user
    {
        let r = revoke::revoke_user(&iam, user, incident_start).await;
        actions_taken.push(format!(
            "revoked sessions of user {user} issued before {}: {}",
            rfc3339(incident_start),
            r.status
        ));
        sessions_revoked.push(r);
    }

    let history = AwsEventHistory::new(sdk);
    let athena_client = aws_sdk_athena::Client::new(sdk);
    let trails = AwsTrails::new(sdk);
    let objects = super::digest::S3Objects::new(sdk);
    let containing = !settings.read_only;
    let (fenced_tx, fenced_rx) = tokio::sync::watch::channel(!(containing && settings.fence));
    let (inv_tx, inv_rx) = tokio::sync::watch::channel::<Option<Arc<Investigation>>>(None);

    // 6. The full investigation, from the moment the fence is on: it must not compete with the
    // sample for the 2 requests/s of event history, nor hold the fence back.
    let investigation = {
        let mut fenced_rx = fenced_rx.clone();
        let (key, start, end, regions) = (settings.key.clone(), settings.start, settings.end, settings.regions.clone());
        let history = settings.use_history.then_some(&history as &dyn super::history::EventHistory);
        let trails = settings.use_trails.then_some(&trails as &dyn super::investigate::Trails);
        let objects = settings.use_trails.then_some(&objects as &dyn super::digest::Objects);
        let logs = std::mem::take(&mut settings.logs);
        let athena =
            settings.athena.clone().map(|settings| super::investigate::AthenaReader { api: &athena_client, settings });
        let rate = settings.history_rate;
        async move {
            let _ = fenced_rx.wait_for(|on| *on).await;
            let inv = investigate(Inputs {
                key,
                start,
                end,
                history,
                regions,
                trails,
                logs,
                open_s3,
                history_rate: rate,
                objects,
                athena,
            })
            .await;
            let inv = Arc::new(inv);
            let _ = inv_tx.send(Some(inv.clone()));
            (inv, since_start())
        }
    };

    // 3-5. Contain: sample, fence, check, cut over, lift.
    let sample_logs = std::mem::take(&mut settings.sample_logs);
    let settings = &settings;
    let containment = async {
        let mut fence: Option<Fence> = None;
        let mut cutover_report = None;
        let mut exit = crate::exit::Status::Ok;
        let mut other_keys = Vec::new();
        let mut fence_applied_s = None;
        let mut cutover_done_s = None;
        let mut actions = Vec::new();
        let mut todo = Vec::new();
        if !containing {
            return (fence, cutover_report, exit, other_keys, fence_applied_s, cutover_done_s, actions, todo);
        }
        let probes: Vec<Box<dyn crate::rotate::probe::Probe>> = match (&settings.cutover, fx) {
            (Cutover::Rotate(s), Some(fx)) => s.probes.iter().filter_map(|u| fx.factory.probe(u).ok()).collect(),
            _ => Vec::new(),
        };
        let probe_streak = match &settings.cutover {
            Cutover::Rotate(s) => (s.probe.successes, s.probe.interval),
            _ => (1, Duration::ZERO),
        };
        if settings.fence {
            let f = match &user {
                None => Fence::not_possible("a root key cannot be fenced by an IAM policy"),
                Some(user) => {
                    // The application's health before anything changes: a probe that already
                    // fails says nothing about the fence.
                    let healthy_before = fence_step::probes_fail(&probes, 1, Duration::ZERO).await.is_none();
                    let s = sample::sample(sample::Inputs {
                        key: settings.key.clone(),
                        start: settings.start,
                        history: settings.use_history.then_some(&history as &dyn super::history::EventHistory),
                        regions: settings.regions.clone(),
                        trails: settings.use_trails.then_some(&trails as &dyn super::investigate::Trails),
                        open_s3,
                        logs: sample_logs,
                        bounds: sample::Bounds { rate: settings.history_rate, ..sample::Bounds::default() },
                    })
                    .await;
                    let (sampled, excluded) = fence::learn_sources_from(&s.events, None, &settings.attacker_ips);
                    let unstable_egress = match &settings.cutover {
                        Cutover::Rotate(r) => {
                            let specs: Vec<_> = r.targets.iter().map(|t| t.spec.clone()).collect();
                            super::egress::unstable(sdk, &specs).await
                        }
                        _ => Vec::new(),
                    };
                    let learnt = Learnt {
                        sampled,
                        excluded,
                        given: settings.allow_sources.clone(),
                        sample_line: s.describe(),
                        unstable_egress,
                    };
                    let mut f = fence_step::put_on(
                        &iam,
                        &settings.state_dir,
                        user,
                        &settings.key,
                        learnt,
                        &settings.attacker_ips,
                    )
                    .await;
                    if f.is_on() {
                        fence_applied_s = Some(since_start());
                        actions.push(format!(
                            "fenced {user} {:.1} s after the start: every call is denied unless it comes from {} source(s) the application used",
                            since_start(),
                            f.report.allowed.len()
                        ));
                    }
                    let _ = fenced_tx.send(true);
                    if f.is_on() && healthy_before {
                        check_behind_the_fence(
                            &mut f,
                            &iam,
                            &probes,
                            probe_streak,
                            &settings.key,
                            &settings.attacker_ips,
                            inv_rx.clone(),
                            &mut actions,
                            &mut todo,
                        )
                        .await;
                    }
                    f
                }
            };
            if f.report.status != "applied" && f.report.status != "lifted" {
                todo.push(format!(
                    "fence not applied: {}",
                    f.report.detail.clone().unwrap_or_else(|| f.report.status.clone())
                ));
            }
            fence = Some(f);
        }
        let _ = fenced_tx.send(true);

        // 5. Cut over.
        let skip = |todo: &mut Vec<String>, why: String| {
            todo.push(format!(
                "the leaked key {} is still Active ({why}): rotate it with `rekey rotate --user {} --target …` or deactivate it",
                settings.key,
                user.clone().unwrap_or_else(|| "root".into())
            ));
            CutoverReport { outcome: "skipped".into(), detail: Some(why), ..CutoverReport::default() }
        };
        if let Some(u) = &user {
            match super::keys::other_keys(&iam, u, &settings.key).await {
                Ok(k) => other_keys = k,
                Err(e) => todo.push(format!("the user's other access keys could not be read: {e}")),
            }
        }
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
                // Evidence: the leaked key is deactivated, never deleted, and so is any other key
                // unless the operator named it with --free-slot.
                rotate_settings.delete_old = false;
                rotate_settings.keep_keys = true;
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
        actions.push(format!("cutover: {}", report.outcome));
        if matches!(report.outcome.as_str(), "rotated" | "deactivated_now") {
            cutover_done_s = Some(since_start());
        }
        if let (Some(f), Some(user)) = (fence.as_mut(), &user)
            && f.is_on()
        {
            let (status, why) = match report.outcome.as_str() {
                "rotated" | "deactivated_now" => ("removed", "lifted: the leaked key is off".to_string()),
                // Nothing was changed by the rotation: the fence is all that holds the attacker.
                "skipped" | "refused" => ("", String::new()),
                other => (
                    "removed",
                    format!(
                        "lifted: the cutover {other}, and the fence is undone with it (like a target); the leaked key is Active and unfenced"
                    ),
                ),
            };
            if status.is_empty() {
                // No cutover (asked for, or refused before any change): the fence stays on, by
                // design, until someone rotates.
                f.keep();
                todo.push(format!("lift the fence ({}) once the key is rotated", fence::POLICY_NAME));
            } else {
                match f.take_off(&iam, status, &why).await {
                    Ok(()) => {
                        actions.push(format!("lifted the fence on {user}: {}", why.trim_start_matches("lifted: ")))
                    }
                    Err(e) => todo.push(format!("remove the fence policy {} from {user}: {e}", fence::POLICY_NAME)),
                }
            }
        }
        if let Some(k) = other_keys.iter().find(|k| k.status == "Inactive")
            && report.outcome == "refused"
        {
            todo.push(format!(
                "{}'s other key {} (created {}, last used {}) fills the second slot and was kept as evidence; once you have looked at it, free the slot with `rekey incident … --free-slot {}`",
                user.clone().unwrap_or_default(),
                k.access_key_id,
                k.created.as_deref().unwrap_or("unknown"),
                k.last_used.as_deref().unwrap_or("never"),
                k.access_key_id
            ));
        }
        cutover_report = Some(report);
        (fence, cutover_report, exit, other_keys, fence_applied_s, cutover_done_s, actions, todo)
    };

    let (
        (fence_done, cutover_report, exit, other_keys, fence_applied_s, cutover_done_s, actions, more_todo),
        (inv, inv_done_s),
    ) = tokio::join!(containment, investigation);
    let inv: Investigation = Arc::try_unwrap(inv).unwrap_or_else(|shared| (*shared).clone());
    timings.fence_applied_s = fence_applied_s;
    timings.cutover_done_s = cutover_done_s;
    timings.investigation_done_s = Some(inv_done_s);
    actions_taken.extend(actions);
    todo.extend(more_todo);
    actions_taken.push(format!(
        "read {} source(s): {} events of the key and {} key(s) it minted ({:.1} s after the start)",
        inv.sources.len(),
        inv.timeline.len(),
        inv.derived_keys.len(),
        inv_done_s
    ));
    let fence_report: Option<FenceReport> = fence_done.map(|f| f.report);

    // 7. Role sessions, issued before the start: the application's sessions minted with the new key
    // keep working. Never a role in another account, never the session rekey runs under.
    if containing {
        let (local, foreign) = revoke::roles_used(&inv.timeline, owner.account.as_deref());
        let own_role = who.caller_arn.contains(":assumed-role/").then(|| revoke::role_name(&who.caller_arn)).flatten();
        for role in &local {
            if own_role.as_deref() == Some(role.as_str()) {
                let why = format!(
                    "rekey itself runs under a session of {role} ({}); revoke its older sessions yourself once the response is over",
                    who.caller_arn
                );
                todo.push(format!("role {role}: {why}"));
                sessions_revoked.push(revoke::not_revoked(role, incident_start, why));
                continue;
            }
            let r = revoke::revoke_role(&iam, role, incident_start).await;
            actions_taken.push(format!(
                "revoked sessions of role {role} issued before {}: {}",
                rfc3339(incident_start),
                r.status
            ));
            sessions_revoked.push(r);
        }
        for arn in &foreign {
            let why = "a role in another account: revoke its sessions from that account (a same-named role here is a different role)".to_string();
            todo.push(format!("{arn}: {why}"));
            sessions_revoked.push(revoke::not_revoked(arn, incident_start, why));
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
        response_started: Some(hunt::response_began(settings.end, incident_start)),
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
        timings,
        other_keys,
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

/// Step 4: the application behind the fence. A failing probe means the sample missed one of its
/// sources: widen the fence with what the full history shows for the key (never an attacker's
/// address) and check again; if it still fails, lift the fence, loudly, and go on with the cutover.
#[allow(clippy::too_many_arguments)]
async fn check_behind_the_fence(
    f: &mut Fence,
    iam: &aws_sdk_iam::Client,
    probes: &[Box<dyn crate::rotate::probe::Probe>],
    (times, interval): (u32, Duration),
    key: &str,
    attacker_ips: &[String],
    mut inv_rx: tokio::sync::watch::Receiver<Option<Arc<Investigation>>>,
    actions: &mut Vec<String>,
    todo: &mut Vec<String>,
) {
    let Some(failure) = fence_step::probes_fail(probes, times, interval).await else { return };
    tracing::warn!("the application fails behind the fence ({failure}): widening it from the full history");
    let inv = match inv_rx.wait_for(|i| i.is_some()).await {
        Ok(i) => i.clone().expect("waited for it"),
        Err(_) => return,
    };
    let events: Vec<_> = inv.context.iter().chain(&inv.timeline).cloned().collect();
    let more = fence_step::widening(&events, key, &f.report.allowed, attacker_ips);
    let why = format!("the probes failed behind the fence ({failure})");
    if !more.is_empty() {
        match f.widen(iam, more, &why, attacker_ips).await {
            Ok(()) => {
                actions.push(format!("widened the fence: {}", f.report.notes.last().cloned().unwrap_or_default()));
                match fence_step::probes_fail(probes, times, interval).await {
                    None => return,
                    Some(again) => f.report.notes.push(format!("the probes still failed after widening ({again})")),
                }
            }
            Err(e) => f.report.notes.push(format!("could not widen the fence: {e}")),
        }
    } else {
        f.report.notes.push("the full history shows no other source of the application to widen with".into());
    }
    let loud = format!(
        "LIFTED THE FENCE: the application still failed behind it ({why}); the attacker is not fenced out until the cutover deactivates the leaked key"
    );
    tracing::error!("{loud}");
    match f.take_off(iam, "lifted", &loud).await {
        Ok(()) => actions.push(loud.clone()),
        Err(e) => todo.push(format!("remove the fence policy {}: {e}", fence::POLICY_NAME)),
    }
    todo.push(loud);
}
