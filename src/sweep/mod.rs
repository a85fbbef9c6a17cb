//! A live, read-only sweep of every enabled Region for what an attacker leaves outside IAM.
//!
//! CloudTrail may be off, or its logs unread, and whatever the attacker does while rekey responds is
//! in no log yet: only the account itself shows instances mining in a Region nobody uses, SSH opened
//! to the world, data shared with a foreign account or a mail identity for spam. So `rekey sweep`,
//! and `investigate`/`incident` with it, read the account as it is now, whatever the logs say:
//! - what was **created in the window** (by the creation time the API gives): instances, spot
//!   requests, launch templates, key pairs, Lambda functions (last change: Lambda keeps no creation
//!   time) and layers, buckets;
//! - **risky state whenever it was made**: security-group rules open to the internet on admin and
//!   database ports, VPC peering with another account or Region, bucket policies and ACLs, secret and
//!   KMS key policies granting outside principals, snapshots and AMIs shared out, SES identities in
//!   Regions the account does not use.
//!
//! Each is a finding with its Region, id, why it matters and the live evidence, tied to the key's
//! events when a timeline is given, and, where a safe reversible step exists, a containment action
//! (`actions.rs`, carried out by `contain.rs`).
//!
//! Bounded: every Region is read in parallel (AWS throttles Regions independently), at most
//! `concurrency` resource families at once, each family under one deadline counted from the start;
//! per-item reads (snapshot and image permissions, bucket, secret and key policies) stop at
//! `max_items` per family and Region. What was not read in time, or could not be read (an SCP, a
//! disabled Region), is a blind spot, never a silent gap. Every request is counted (`clients.rs`).

pub mod actions;
mod clients;
pub mod contain;
mod ec2;
mod lambda;
mod peering;
pub mod policy;
mod resource_policies;
pub mod review;
mod s3;
mod security_groups;
mod ses;

pub use clients::{Clients, Counter};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_iam::error::{ProvideErrorMetadata, SdkError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

use crate::incident::model::{Action, BlindSpot, Finding, PlanAction, Severity, TimelineEvent, Undo};

/// The Regions every account has enabled (those launched before March 2019): what is swept when
/// DescribeRegions cannot be read, with a blind spot that says so.
pub const DEFAULT_REGIONS: [&str; 17] = [
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "ap-south-1",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-southeast-1",
    "ap-southeast-2",
    "ca-central-1",
    "eu-central-1",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-north-1",
    "sa-east-1",
];

#[derive(Debug, Clone)]
pub struct Options {
    /// Start of the window: what was created from then on is a finding.
    pub since: SystemTime,
    /// End of the window, for the record: things created after it (while rekey responds) count too.
    pub until: SystemTime,
    /// Regions to sweep; empty: every Region enabled in the account.
    pub regions: Vec<String>,
    /// Every family of every Region must be read within this time from the start.
    pub deadline: Duration,
    /// Resource families read at once, over all Regions.
    pub concurrency: usize,
    /// Per-item reads per family and Region (newest first).
    pub max_items: usize,
    /// The account swept; None: asked of STS.
    pub account: Option<String>,
    /// Regions known to be in use (the key's last-used Region), besides the ones the sweep sees.
    pub regions_in_use: Vec<String>,
}

impl Options {
    pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);
    pub const DEFAULT_CONCURRENCY: usize = 24;
    pub const DEFAULT_MAX_ITEMS: usize = 200;

    pub fn new(since: SystemTime, until: SystemTime) -> Options {
        Options {
            since,
            until,
            regions: Vec::new(),
            deadline: Self::DEFAULT_DEADLINE,
            concurrency: Self::DEFAULT_CONCURRENCY,
            max_items: Self::DEFAULT_MAX_ITEMS,
            account: None,
            regions_in_use: Vec::new(),
        }
    }
}

/// One thing found, with what a responder needs to judge it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepFinding {
    /// `S1`, `S2`, … in report order.
    pub id: String,
    pub severity: Severity,
    /// `instance`, `spot_request`, `launch_template`, `key_pair`, `shared_image`, `shared_snapshot`,
    /// `open_security_group`, `vpc_peering`, `bucket_policy`, `bucket_acl`, `bucket_created`,
    /// `lambda_function`, `lambda_layer`, `ses_identity`, `secret_policy`, `kms_key_policy`.
    pub kind: String,
    pub region: String,
    /// The id AWS gives it (`i-…`, `sg-…`, `pcx-…`, a bucket or function name, an identity).
    pub resource_id: String,
    pub arn: String,
    pub title: String,
    /// Why it matters.
    pub why: String,
    /// When it was created (or last changed, for Lambda functions), when the API says.
    pub created: Option<String>,
    /// What the account shows now: the rule, the policy statement, the instance's type and state, …
    pub evidence: Value,
    /// Events of the key (and the keys it minted) that touched it, when a timeline was given.
    pub events: Vec<String>,
}

/// How the read of one Region went.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegionReport {
    pub region: String,
    /// `ok`, `partial` (some families not read: see the blind spots) or `unreadable`.
    pub status: String,
    pub requests: u64,
    /// Until its last family finished.
    pub elapsed_ms: u64,
    /// Resources seen per family.
    pub seen: BTreeMap<String, u64>,
    /// Instances launched before the window, and in it.
    pub compute_before: u64,
    pub compute_in_window: u64,
}

/// What `rekey sweep` prints and `investigate` merges into its report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sweep {
    pub account: Option<String>,
    pub window_start: String,
    pub window_end: String,
    pub deadline_s: u64,
    pub elapsed_ms: u64,
    /// Every HTTP request the sweep sent, retries included.
    pub requests: u64,
    pub regions: Vec<RegionReport>,
    /// Regions with signs of use from before the window, the one rekey runs in, and the key's.
    pub regions_in_use: Vec<String>,
    pub findings: Vec<SweepFinding>,
    /// Containment, in the order it runs; `finding` names an `S…` id.
    pub plan: Vec<PlanAction>,
    pub blind_spots: Vec<BlindSpot>,
    /// The post-incident checklist, answered.
    pub review: review::Review,
}

impl Sweep {
    /// The sweep's findings in the incident model's shape (`resource` is the ARN, which names the
    /// Region; the live evidence is in `detail`).
    pub fn findings_for_report(&self) -> Vec<Finding> {
        self.findings.iter().map(to_finding).collect()
    }

    /// Adds the sweep's findings and plan to an investigation's. A resource the investigation
    /// already has a finding for (an instance the trail shows the attacker launching) keeps that
    /// finding, which gains the sweep's events and steps. Forensic snapshots go after the ones
    /// already planned and before every other step; the rest follows the plan as it is.
    /// The review's finding ids follow.
    pub fn merge_into(&mut self, findings: &mut Vec<Finding>, plan: &mut Vec<PlanAction>) {
        let mut next_f = next_number(findings.iter().map(|f| f.id.as_str()), 'F');
        let mut ids: BTreeMap<String, String> = BTreeMap::new();
        for sf in &self.findings {
            let existing = findings.iter_mut().find(|f| f.resource == sf.resource_id || f.resource == sf.arn);
            match existing {
                Some(f) => {
                    for e in &sf.events {
                        if !f.evidence.contains(e) {
                            f.evidence.push(e.clone());
                        }
                    }
                    if self
                        .plan
                        .iter()
                        .any(|a| a.finding == sf.id && !matches!(a.action, Action::SnapshotVolume { .. }))
                    {
                        f.detail =
                            format!("{} The sweep plans: {}.", f.detail.trim_end(), planned_steps(&self.plan, &sf.id));
                    }
                    ids.insert(sf.id.clone(), f.id.clone());
                }
                None => {
                    let mut f = to_finding(sf);
                    f.id = format!("F{next_f}");
                    next_f += 1;
                    ids.insert(sf.id.clone(), f.id.clone());
                    findings.push(f);
                }
            }
        }
        let mut next_a = next_number(plan.iter().map(|a| a.id.as_str()), 'A');
        let mut snapshot_at =
            plan.iter().rposition(|a| matches!(a.action, Action::SnapshotVolume { .. })).map_or(0, |i| i + 1);
        for a in &self.plan {
            if plan.iter().any(|p| same_step(&p.action, &a.action)) {
                continue;
            }
            let mut a = a.clone();
            a.id = format!("A{next_a}");
            next_a += 1;
            if let Some(f) = ids.get(&a.finding) {
                a.finding = f.clone();
            }
            if matches!(a.action, Action::SnapshotVolume { .. }) {
                plan.insert(snapshot_at, a);
                snapshot_at += 1;
            } else {
                plan.push(a);
            }
        }
        self.review.renumber(&ids);
    }
}

/// One line for an incident's "what rekey did".
pub fn summary(s: &Sweep) -> String {
    let unreadable = s.review.regions_unreadable.len();
    format!(
        "swept {} Region(s) live in {:.1} s ({} requests): {} finding(s) outside IAM{}",
        s.review.regions,
        s.elapsed_ms as f64 / 1000.0,
        s.requests,
        s.findings.len(),
        if unreadable > 0 { format!(", {unreadable} Region(s) unreadable") } else { String::new() }
    )
}

/// What `rekey sweep` prints without `--output json`.
pub fn text(s: &Sweep) -> String {
    use std::fmt::Write as _;
    let mut o = summary(s);
    o.push('\n');
    for f in &s.findings {
        let _ = writeln!(o, "  {} {:?} [{}] {}", f.id, f.severity, f.region, f.title);
    }
    for b in &s.blind_spots {
        let _ = writeln!(o, "  blind spot: {}", b.detail);
    }
    for i in &s.review.items {
        let _ = writeln!(o, "  review: {}: {} ({})", i.check, i.status, i.answer);
    }
    o
}

fn planned_steps(plan: &[PlanAction], finding: &str) -> String {
    plan.iter()
        .filter(|a| a.finding == finding && !matches!(a.action, Action::SnapshotVolume { .. }))
        .map(|a| a.description.clone())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Two snapshot steps of one volume are one step, whichever way the Region was written.
fn same_step(a: &Action, b: &Action) -> bool {
    match (a, b) {
        (Action::SnapshotVolume { volume_id: x, .. }, Action::SnapshotVolume { volume_id: y, .. }) => x == y,
        _ => a == b,
    }
}

fn next_number<'a>(ids: impl Iterator<Item = &'a str>, prefix: char) -> usize {
    ids.filter_map(|id| id.strip_prefix(prefix).and_then(|n| n.parse::<usize>().ok())).max().unwrap_or(0) + 1
}

fn to_finding(sf: &SweepFinding) -> Finding {
    let created = sf.created.as_deref().map(|c| format!(" Created {c}.")).unwrap_or_default();
    Finding {
        id: sf.id.clone(),
        severity: sf.severity,
        kind: sf.kind.clone(),
        title: sf.title.clone(),
        resource: sf.arn.clone(),
        still_present: Some(true),
        evidence: sf.events.clone(),
        detail: format!("{}{created} Evidence (live, {}): {}", sf.why, sf.region, compact(&sf.evidence)),
    }
}

fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// A family's read failed.
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    /// `ec2:DescribeInstances`.
    pub what: String,
    /// The error's code and message in one line.
    pub message: String,
}

impl Problem {
    pub(crate) fn sdk<E, R>(what: &str, e: &SdkError<E, R>) -> Problem
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        Problem { what: what.to_string(), message: crate::aws::error_text(e) }
    }
}

/// A containment step a family plans for its finding.
pub(crate) struct Planned {
    pub description: String,
    pub action: Action,
    pub undo: Undo,
}

pub(crate) struct Item {
    pub finding: SweepFinding,
    pub actions: Vec<Planned>,
}

/// What one family found in one Region.
#[derive(Default)]
pub(crate) struct Found {
    pub items: Vec<Item>,
    pub seen: Vec<(&'static str, u64)>,
    pub compute_before: u64,
    pub compute_in_window: u64,
    /// Something in the Region predates the window: the account uses it.
    pub in_use: bool,
    pub ses: Vec<ses::Identity>,
    /// Partial coverage (a cap, a deadline, single items that could not be read).
    pub gaps: Vec<String>,
    /// Regions with signs of use before the window, for a global family (buckets).
    pub used_regions: Vec<String>,
}

/// What a family reads with.
pub(crate) struct Cx {
    pub sdk: aws_types::SdkConfig,
    pub c: Clients,
    pub since: SystemTime,
    pub account: Option<String>,
    pub max_items: usize,
    /// Per-item loops stop here, so the family returns what it has before the hard deadline.
    pub soft_deadline: Instant,
}

impl Cx {
    pub fn region(&self) -> &str {
        &self.c.region
    }

    pub fn in_window(&self, t: Option<SystemTime>) -> bool {
        t.is_some_and(|t| t >= self.since)
    }

    pub fn before_window(&self, t: Option<SystemTime>) -> bool {
        t.is_some_and(|t| t < self.since)
    }

    pub fn time_left(&self) -> bool {
        Instant::now() < self.soft_deadline
    }

    pub fn arn(&self, service: &str, resource: &str) -> String {
        format!("arn:aws:{service}:{}:{}:{resource}", self.region(), self.account.as_deref().unwrap_or(""))
    }

    /// The statements of a policy that let someone outside the account in; with the account
    /// unknown, only public ones can be told.
    pub fn outside_grants(&self, policy: &Value) -> Vec<policy::Grant> {
        match &self.account {
            Some(a) => policy::outside_grants(policy, a),
            None => policy::outside_grants(policy, "").into_iter().filter(|g| g.public).collect(),
        }
    }
}

pub(crate) fn finding(
    kind: &str,
    severity: Severity,
    region: &str,
    resource_id: &str,
    arn: String,
    title: String,
    why: &str,
) -> SweepFinding {
    SweepFinding {
        id: String::new(),
        severity,
        kind: kind.to_string(),
        region: region.to_string(),
        resource_id: resource_id.to_string(),
        arn,
        title,
        why: why.to_string(),
        created: None,
        evidence: Value::Null,
        events: Vec::new(),
    }
}

/// An SDK timestamp as a `SystemTime`.
pub(crate) fn time_of(dt: Option<&aws_sdk_ec2::primitives::DateTime>) -> Option<SystemTime> {
    dt.and_then(|d| SystemTime::try_from(*d).ok())
}

pub(crate) fn rfc3339(t: Option<SystemTime>) -> Option<String> {
    t.map(rekey_trail::time::format)
}

/// The resource families; each is read in every Region, buckets once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Family {
    Instances,
    SpotRequests,
    LaunchTemplates,
    KeyPairs,
    Images,
    Snapshots,
    SecurityGroups,
    Peering,
    Functions,
    Layers,
    Ses,
    Secrets,
    KmsKeys,
    Buckets,
}

impl Family {
    const REGIONAL: [Family; 13] = [
        Family::Instances,
        Family::SpotRequests,
        Family::LaunchTemplates,
        Family::KeyPairs,
        Family::Images,
        Family::Snapshots,
        Family::SecurityGroups,
        Family::Peering,
        Family::Functions,
        Family::Layers,
        Family::Ses,
        Family::Secrets,
        Family::KmsKeys,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Family::Instances => "instances",
            Family::SpotRequests => "spot requests",
            Family::LaunchTemplates => "launch templates",
            Family::KeyPairs => "key pairs",
            Family::Images => "AMIs",
            Family::Snapshots => "snapshots",
            Family::SecurityGroups => "security groups",
            Family::Peering => "VPC peering",
            Family::Functions => "Lambda functions",
            Family::Layers => "Lambda layers",
            Family::Ses => "SES identities",
            Family::Secrets => "Secrets Manager secrets",
            Family::KmsKeys => "KMS keys",
            Family::Buckets => "S3 buckets",
        }
    }

    async fn read(self, cx: Arc<Cx>) -> Result<Found, Problem> {
        match self {
            Family::Instances => ec2::instances(&cx).await,
            Family::SpotRequests => ec2::spot_requests(&cx).await,
            Family::LaunchTemplates => ec2::launch_templates(&cx).await,
            Family::KeyPairs => ec2::key_pairs(&cx).await,
            Family::Images => ec2::images(&cx).await,
            Family::Snapshots => ec2::snapshots(&cx).await,
            Family::SecurityGroups => security_groups::open_rules(&cx).await,
            Family::Peering => peering::connections(&cx).await,
            Family::Functions => lambda::functions(&cx).await,
            Family::Layers => lambda::layers(&cx).await,
            Family::Ses => ses::identities(&cx).await,
            Family::Secrets => resource_policies::secrets(&cx).await,
            Family::KmsKeys => resource_policies::kms_keys(&cx).await,
            Family::Buckets => s3::buckets(cx).await,
        }
    }
}

/// How one family's read ended.
enum Read {
    Done(Found),
    Failed(Problem),
    /// Not finished by the deadline.
    Late,
}

const LATE: &str = "not read within the";

/// Where buckets (a global listing) are accounted.
pub const GLOBAL: &str = "global";

/// Sweeps the account; see the module documentation. Never fails: what cannot be read is a blind
/// spot in the result.
pub async fn sweep(sdk: &aws_types::SdkConfig, opts: &Options, timeline: &[TimelineEvent]) -> Sweep {
    let started = Instant::now();
    let deadline = started + opts.deadline;
    // Per-item loops stop a little early so a family returns what it read rather than nothing.
    let soft_deadline = deadline - (opts.deadline / 10).min(Duration::from_secs(2));
    let home = sdk.region().map(|r| r.to_string()).unwrap_or_else(|| DEFAULT_REGIONS[0].to_string());
    let global_counter = Counter::default();
    let global = Clients::new(sdk, &home, global_counter.clone());
    let mut blind_spots = Vec::new();

    let account = match &opts.account {
        Some(a) => Some(a.clone()),
        None => match global.sts.get_caller_identity().send().await {
            Ok(o) => o.account().map(str::to_string),
            Err(e) => {
                blind_spots.push(BlindSpot {
                    kind: "sweep_account_unknown".into(),
                    detail: format!(
                        "sts:GetCallerIdentity: {}; without the account id, grants to other accounts cannot be told \
                         from the account's own: only public ones are findings",
                        crate::aws::error_text(&e)
                    ),
                    evidence: Vec::new(),
                });
                None
            }
        },
    };
    let regions: Vec<String> = if opts.regions.is_empty() {
        match enabled_regions(&global.ec2).await {
            Ok(r) if !r.is_empty() => r,
            Ok(_) => default_regions("ec2:DescribeRegions listed no Region", &mut blind_spots),
            Err(e) => default_regions(&format!("ec2:DescribeRegions: {}", e.message), &mut blind_spots),
        }
    } else {
        opts.regions.clone()
    };

    let semaphore = Arc::new(tokio::sync::Semaphore::new(opts.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut counters: BTreeMap<String, Counter> = BTreeMap::new();
    let mut spawn = |region: &str, family: Family, cx: Arc<Cx>| {
        let semaphore = semaphore.clone();
        let region = region.to_string();
        tasks.spawn(async move {
            let read = tokio::time::timeout_at(deadline, async {
                let _permit = semaphore.acquire_owned().await;
                family.read(cx).await
            })
            .await;
            let read = match read {
                Ok(Ok(found)) => Read::Done(found),
                Ok(Err(p)) => Read::Failed(p),
                Err(_) => Read::Late,
            };
            (region, family, started.elapsed(), read)
        });
    };
    let cx_for = |region: &str, counter: &Counter| {
        Arc::new(Cx {
            sdk: sdk.clone(),
            c: Clients::new(sdk, region, counter.clone()),
            since: opts.since,
            account: account.clone(),
            max_items: opts.max_items,
            soft_deadline,
        })
    };
    for region in &regions {
        let counter = Counter::default();
        let cx = cx_for(region, &counter);
        counters.insert(region.clone(), counter);
        for family in Family::REGIONAL {
            spawn(region, family, cx.clone());
        }
    }
    // S3 lists buckets once, for every Region; each bucket is read in its own Region.
    let s3_counter = Counter::default();
    spawn(GLOBAL, Family::Buckets, cx_for(&home, &s3_counter));
    counters.insert(GLOBAL.to_string(), s3_counter);

    let mut reports: BTreeMap<String, RegionReport> = regions
        .iter()
        .chain(std::iter::once(&GLOBAL.to_string()))
        .map(|r| {
            (
                r.clone(),
                RegionReport {
                    region: r.clone(),
                    status: "ok".into(),
                    requests: 0,
                    elapsed_ms: 0,
                    seen: BTreeMap::new(),
                    compute_before: 0,
                    compute_in_window: 0,
                },
            )
        })
        .collect();
    let mut items: Vec<Item> = Vec::new();
    let mut ses_found: Vec<(String, ses::Identity)> = Vec::new();
    let mut in_use: BTreeSet<String> = BTreeSet::new();
    let mut failures: BTreeMap<String, Vec<(Family, String)>> = BTreeMap::new();
    let mut gaps: Vec<(String, Family, String)> = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let Ok((region, family, elapsed, read)) = joined else {
            // A panic in a family is a bug; the rest of the sweep still counts.
            blind_spots.push(BlindSpot {
                kind: "sweep_incomplete".into(),
                detail: "a sweep task stopped unexpectedly (a bug in rekey): some resources were not read".into(),
                evidence: Vec::new(),
            });
            continue;
        };
        let report = reports.get_mut(&region).expect("every region has a report");
        report.elapsed_ms = report.elapsed_ms.max(elapsed.as_millis() as u64);
        match read {
            Read::Done(found) => {
                for (what, n) in found.seen {
                    *report.seen.entry(what.to_string()).or_default() += n;
                }
                report.compute_before += found.compute_before;
                report.compute_in_window += found.compute_in_window;
                if found.in_use {
                    in_use.insert(region.clone());
                }
                in_use.extend(found.used_regions);
                items.extend(found.items);
                ses_found.extend(found.ses.into_iter().map(|i| (region.clone(), i)));
                gaps.extend(found.gaps.into_iter().map(|g| (region.clone(), family, g)));
            }
            Read::Failed(p) => {
                failures.entry(region.clone()).or_default().push((family, format!("{}: {}", p.what, p.message)));
            }
            Read::Late => failures
                .entry(region.clone())
                .or_default()
                .push((family, format!("{LATE} {}s deadline", opts.deadline.as_secs()))),
        }
    }
    for (region, counter) in &counters {
        if let Some(r) = reports.get_mut(region) {
            r.requests = counter.get();
        }
    }

    // A Region is in use when something there predates the window, when rekey runs there, or when
    // the key was last used there.
    in_use.insert(home.clone());
    in_use.extend(opts.regions_in_use.iter().cloned());
    for (region, identity) in ses_found {
        if let Some(item) = ses::judge(&region, identity, &in_use, account.as_deref(), timeline) {
            items.push(item);
        }
    }

    for (region, failed) in &failures {
        let report = reports.get_mut(region).expect("every region has a report");
        let families = if region == GLOBAL { 1 } else { Family::REGIONAL.len() };
        if failed.len() >= families && region != GLOBAL {
            report.status = "unreadable".into();
            let late = failed.iter().all(|(_, why)| why.starts_with(LATE));
            let detail = if late {
                format!(
                    "{region} {LATE} {}s deadline: nothing there was checked (a throttled or slow Region); check it \
                     by hand or sweep it alone with a longer --deadline",
                    opts.deadline.as_secs()
                )
            } else {
                // The refusal that says most: an error code over a timeout.
                let why = failed.iter().map(|(_, w)| w.as_str()).find(|w| !w.starts_with(LATE)).unwrap_or_default();
                format!(
                    "{region} could not be read ({why}): nothing there was checked; an SCP, a Region the account \
                     disabled, or missing permissions? Check it by hand"
                )
            };
            blind_spots.push(BlindSpot { kind: "region_unreadable".into(), detail, evidence: Vec::new() });
        } else {
            report.status = "partial".into();
            for (family, why) in failed {
                blind_spots.push(BlindSpot {
                    kind: "sweep_incomplete".into(),
                    detail: format!("{} in {region} not checked: {why}", family.name()),
                    evidence: Vec::new(),
                });
            }
        }
    }
    for (region, family, gap) in gaps {
        blind_spots.push(BlindSpot {
            kind: "sweep_incomplete".into(),
            detail: format!("{} in {region}: {gap}", family.name()),
            evidence: Vec::new(),
        });
    }

    let (findings, plan) = number(items, timeline);
    let regions_report: Vec<RegionReport> = reports.into_values().collect();
    let mut out = Sweep {
        account,
        window_start: rekey_trail::time::format(opts.since),
        window_end: rekey_trail::time::format(opts.until),
        deadline_s: opts.deadline.as_secs(),
        elapsed_ms: started.elapsed().as_millis() as u64,
        requests: global_counter.get() + regions_report.iter().map(|r| r.requests).sum::<u64>(),
        regions: regions_report,
        regions_in_use: in_use.into_iter().collect(),
        findings,
        plan,
        blind_spots,
        review: review::Review::default(),
    };
    out.review = review::answer(&out);
    out
}

fn default_regions(why: &str, blind_spots: &mut Vec<BlindSpot>) -> Vec<String> {
    blind_spots.push(BlindSpot {
        kind: "sweep_regions_unknown".into(),
        detail: format!(
            "{why}: swept the {} Regions every account has enabled; Regions the account opted into were not \
             checked",
            DEFAULT_REGIONS.len()
        ),
        evidence: Vec::new(),
    });
    DEFAULT_REGIONS.iter().map(|r| r.to_string()).collect()
}

/// The Regions enabled in the account (DescribeRegions without `AllRegions` lists only those).
async fn enabled_regions(ec2: &aws_sdk_ec2::Client) -> Result<Vec<String>, Problem> {
    let out = ec2.describe_regions().send().await.map_err(|e| Problem::sdk("ec2:DescribeRegions", &e))?;
    let mut regions: Vec<String> = out
        .regions()
        .iter()
        .filter(|r| r.opt_in_status().is_none_or(|s| s != "not-opted-in"))
        .filter_map(|r| r.region_name().map(str::to_string))
        .collect();
    regions.sort();
    regions.dedup();
    Ok(regions)
}

/// Ties findings to the key's events, orders them (worst first), numbers findings `S…` and
/// actions `A…`, and orders the plan: forensic snapshots first, then the rest by kind.
fn number(mut items: Vec<Item>, timeline: &[TimelineEvent]) -> (Vec<SweepFinding>, Vec<PlanAction>) {
    for item in &mut items {
        let f = &mut item.finding;
        f.events = events_about(timeline, &[f.resource_id.as_str(), f.arn.as_str()]);
    }
    items.sort_by(|a, b| {
        let (a, b) = (&a.finding, &b.finding);
        b.severity
            .cmp(&a.severity)
            .then_with(|| (&a.kind, &a.region, &a.resource_id).cmp(&(&b.kind, &b.region, &b.resource_id)))
    });
    let mut findings = Vec::new();
    let mut planned: Vec<(u8, PlanAction)> = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let id = format!("S{}", i + 1);
        for p in item.actions {
            planned.push((
                rank(&p.action),
                PlanAction {
                    id: String::new(),
                    finding: id.clone(),
                    description: p.description,
                    action: p.action,
                    undo: p.undo,
                },
            ));
        }
        let mut f = item.finding;
        f.id = id;
        findings.push(f);
    }
    planned.sort_by_key(|(rank, _)| *rank);
    let plan = planned
        .into_iter()
        .enumerate()
        .map(|(i, (_, mut a))| {
            a.id = format!("A{}", i + 1);
            a
        })
        .collect();
    (findings, plan)
}

/// Evidence before change: snapshots, then stopping what runs, then closing what is open.
fn rank(a: &Action) -> u8 {
    use actions::SweepAction as S;
    match a {
        Action::SnapshotVolume { .. } => 0,
        Action::Sweep(S::StopInstance { .. }) => 1,
        Action::Sweep(S::ThrottleFunction { .. }) => 2,
        Action::Sweep(S::RevokeIngress { .. }) => 3,
        Action::Sweep(S::RemovePolicyStatement { .. }) => 4,
        Action::Sweep(S::UnshareSnapshot { .. } | S::UnshareImage { .. }) => 5,
        Action::Sweep(S::EndPeering { .. }) => 6,
        _ => 7,
    }
}

/// Events whose parameters or response name one of `ids` (exactly, or as the last part of an ARN).
pub fn events_about(timeline: &[TimelineEvent], ids: &[&str]) -> Vec<String> {
    let ids: Vec<&str> = ids.iter().copied().filter(|i| !i.is_empty()).collect();
    if ids.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<String> = Vec::new();
    for e in timeline.iter().filter(|e| !e.failed) {
        let hit = [&e.request_parameters, &e.response_elements].into_iter().flatten().any(|v| mentions(v, &ids));
        if hit && !out.contains(&e.event_id) {
            out.push(e.event_id.clone());
        }
    }
    out
}

fn mentions(v: &Value, ids: &[&str]) -> bool {
    match v {
        Value::String(s) => {
            ids.iter().any(|id| s == id || s.strip_suffix(id).is_some_and(|head| head.ends_with(['/', ':'])))
        }
        Value::Array(a) => a.iter().any(|v| mentions(v, ids)),
        Value::Object(m) => m.values().any(|v| mentions(v, ids)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::sweep::actions::SweepAction;

    fn event(id: &str, req: Value, resp: Value) -> TimelineEvent {
        TimelineEvent {
            event_id: id.into(),
            request_parameters: Some(req),
            response_elements: Some(resp),
            ..TimelineEvent::default()
        }
    }

    #[test]
    fn events_are_tied_by_exact_ids_and_arn_tails() {
        let t = vec![
            event("e1", json!({"groupId": "sg-1"}), json!(null)),
            event("e2", json!(null), json!({"instancesSet": {"items": [{"instanceId": "i-0abc"}]}})),
            event("e3", json!({"bucketName": "data-archive"}), json!(null)),
            event("e4", json!({"functionName": "arn:aws:lambda:us-east-1:1:function:miner"}), json!(null)),
        ];
        assert_eq!(events_about(&t, &["sg-1"]), vec!["e1"]);
        assert_eq!(events_about(&t, &["i-0abc"]), vec!["e2"]);
        assert!(events_about(&t, &["data"]).is_empty(), "a bucket named data is not data-archive");
        assert_eq!(events_about(&t, &["miner"]), vec!["e4"]);
    }

    fn planned(action: Action) -> Planned {
        Planned { description: "d".into(), action, undo: Undo::None { reason: "r".into() } }
    }

    #[test]
    fn snapshots_come_first_and_findings_are_numbered_worst_first() {
        let stop = Action::Sweep(SweepAction::StopInstance { region: "r".into(), instance_id: "i-1".into() });
        let snap =
            Action::SnapshotVolume { volume_id: "vol-1".into(), instance_id: "i-1".into(), region: Some("r".into()) };
        let peer = Action::Sweep(SweepAction::EndPeering {
            region: "r".into(),
            peering_id: "pcx-1".into(),
            reject: false,
            ours: actions::PeeringSide { vpc_id: "v".into(), owner_id: "1".into(), region: "r".into() },
            theirs: actions::PeeringSide { vpc_id: "w".into(), owner_id: "2".into(), region: "r".into() },
        });
        let item = |kind: &str, sev, actions| Item {
            finding: finding(kind, sev, "r", kind, String::new(), kind.into(), "why"),
            actions,
        };
        let (findings, plan) = number(
            vec![
                item("vpc_peering", Severity::Medium, vec![planned(peer)]),
                item("instance", Severity::Critical, vec![planned(stop), planned(snap)]),
            ],
            &[],
        );
        assert_eq!(findings[0].kind, "instance");
        assert_eq!(findings[0].id, "S1");
        let kinds: Vec<(&str, &str, u8)> =
            plan.iter().map(|a| (a.id.as_str(), a.finding.as_str(), rank(&a.action))).collect();
        assert_eq!(kinds, vec![("A1", "S1", 0), ("A2", "S1", 1), ("A3", "S2", 6)]);
    }

    #[test]
    fn merging_keeps_the_investigations_finding_and_puts_snapshots_with_its_own() {
        let sweep = Sweep {
            account: None,
            window_start: String::new(),
            window_end: String::new(),
            deadline_s: 60,
            elapsed_ms: 0,
            requests: 0,
            regions: Vec::new(),
            regions_in_use: Vec::new(),
            findings: vec![
                SweepFinding {
                    events: vec!["e9".into()],
                    ..finding("instance", Severity::High, "r", "i-1", "arn:i-1".into(), "t".into(), "w")
                },
                finding("vpc_peering", Severity::High, "r", "pcx-1", "arn:pcx-1".into(), "t".into(), "w"),
            ],
            plan: vec![
                PlanAction {
                    id: "A1".into(),
                    finding: String::new(),
                    description: "snap".into(),
                    action: Action::SnapshotVolume {
                        volume_id: "vol-1".into(),
                        instance_id: "i-1".into(),
                        region: Some("r".into()),
                    },
                    undo: Undo::None { reason: String::new() },
                },
                PlanAction {
                    id: "A2".into(),
                    finding: String::new(),
                    description: "stop".into(),
                    action: Action::Sweep(SweepAction::StopInstance { region: "r".into(), instance_id: "i-1".into() }),
                    undo: Undo::None { reason: String::new() },
                },
            ],
            blind_spots: Vec::new(),
            review: review::Review::default(),
        };
        let mut sweep = sweep;
        sweep.findings[0].id = "S1".into();
        sweep.findings[1].id = "S2".into();
        sweep.plan[0].finding = "S1".into();
        sweep.plan[1].finding = "S1".into();
        let mut findings = vec![Finding {
            id: "F1".into(),
            severity: Severity::High,
            kind: "instance".into(),
            title: "attacker launched instance i-1".into(),
            resource: "i-1".into(),
            still_present: Some(true),
            evidence: vec!["e1".into()],
            detail: "running.".into(),
        }];
        let mut plan = vec![
            PlanAction {
                id: "A1".into(),
                finding: "F1".into(),
                description: "snap".into(),
                action: Action::SnapshotVolume { volume_id: "vol-1".into(), instance_id: "i-1".into(), region: None },
                undo: Undo::None { reason: String::new() },
            },
            PlanAction {
                id: "A2".into(),
                finding: "F1".into(),
                description: "deactivate".into(),
                action: Action::DeactivateAccessKey { user: "u".into(), access_key_id: "k".into() },
                undo: Undo::None { reason: String::new() },
            },
        ];
        sweep.merge_into(&mut findings, &mut plan);
        assert_eq!(findings.len(), 2);
        assert_eq!(findings[0].evidence, vec!["e1".to_string(), "e9".to_string()]);
        assert!(findings[0].detail.contains("The sweep plans: stop"), "{}", findings[0].detail);
        assert_eq!(findings[1].id, "F2");
        assert_eq!(findings[1].resource, "arn:pcx-1");
        let ids: Vec<(&str, &str)> = plan.iter().map(|a| (a.id.as_str(), a.finding.as_str())).collect();
        assert_eq!(ids, vec![("A1", "F1"), ("A2", "F1"), ("A3", "F1")], "the duplicate snapshot is dropped");
        assert!(matches!(plan[2].action, Action::Sweep(SweepAction::StopInstance { .. })));
    }
}
