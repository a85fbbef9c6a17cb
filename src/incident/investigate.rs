//! Step 5 of an incident, and all of `rekey investigate`: every event of the key and of the keys it
//! minted, from every source there is, as one classified timeline, with what the sources cannot see.
//!
//! Sources, each reported with what it covers:
//! - the CloudTrail event history (`LookupEvents`): 90 days, management events only, per region;
//! - the trails' log files, found through `DescribeTrails` (S3 bucket and prefix, organization
//!   trails), read by the `rekey-trail` engine;
//! - log folders or S3 prefixes given with `--logs`.
//!
//! Keys found in one source are looked up in the others, until no source reveals a new key.
//!
//! A log file over the engine's per-file size limit (a decompression bomb, a huge object dropped in
//! the bucket) is skipped and named in the blind spots. The trail's files that hold the key's
//! changes are checked against the trail's digest files (`super::digest`): events whose only
//! source failed that check are returned apart, so that nothing is planned on them alone.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rekey_trail::classify::{Category, classify};
use rekey_trail::{DerivedKey, Query, Record, Source};
use serde_json::Value;
use serde_json::value::RawValue;

use super::history::{EventHistory, collect};
use super::model::{BlindSpot, DerivedKeyReport, SourceReport, TimelineEvent};

/// What `DescribeTrails`, `GetTrailStatus` and `GetEventSelectors` say about one trail.
#[derive(Debug, Clone, Default)]
pub struct TrailDesc {
    pub name: String,
    pub arn: Option<String>,
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub multi_region: bool,
    pub organization: bool,
    pub home_region: Option<String>,
    pub is_logging: Option<bool>,
    pub stopped_at: Option<String>,
    pub delivery_error: Option<String>,
    /// Management events recorded (false when a selector excludes them).
    pub management_events: bool,
    /// `All`, `ReadOnly` or `WriteOnly`.
    pub read_write: Option<String>,
    /// Any data-event selector (S3 objects, Lambda invocations, …).
    pub data_events: bool,
    /// Why the status or selectors could not be read.
    pub problem: Option<String>,
}

#[async_trait]
pub trait Trails: Send + Sync {
    async fn describe(&self) -> Result<Vec<TrailDesc>, String>;
}

pub struct AwsTrails {
    client: aws_sdk_cloudtrail::Client,
}

impl AwsTrails {
    pub fn new(sdk: &aws_types::SdkConfig) -> Self {
        AwsTrails { client: aws_sdk_cloudtrail::Client::new(sdk) }
    }
}

use aws_sdk_cloudtrail::error::ProvideErrorMetadata;

fn sdk_problem<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    e: aws_sdk_cloudtrail::error::SdkError<E>,
) -> String {
    match e.code() {
        Some(code) => format!("{code}: {}", e.message().unwrap_or("no message")),
        None => aws_sdk_cloudtrail::error::DisplayErrorContext(&e).to_string(),
    }
}

#[async_trait]
impl Trails for AwsTrails {
    async fn describe(&self) -> Result<Vec<TrailDesc>, String> {
        let out = self.client.describe_trails().include_shadow_trails(true).send().await.map_err(sdk_problem)?;
        let mut trails = Vec::new();
        for t in out.trail_list() {
            let name = t.trail_arn().or(t.name()).unwrap_or_default().to_string();
            let mut desc = TrailDesc {
                name: t.name().unwrap_or_default().to_string(),
                arn: t.trail_arn().map(str::to_string),
                bucket: t.s3_bucket_name().map(str::to_string),
                prefix: t.s3_key_prefix().map(str::to_string),
                multi_region: t.is_multi_region_trail().unwrap_or(false),
                organization: t.is_organization_trail().unwrap_or(false),
                home_region: t.home_region().map(str::to_string),
                management_events: true,
                ..TrailDesc::default()
            };
            match self.client.get_trail_status().name(&name).send().await {
                Ok(s) => {
                    desc.is_logging = s.is_logging();
                    desc.stopped_at = s.time_logging_stopped().map(str::to_string);
                    desc.delivery_error = s.latest_delivery_error().filter(|e| !e.is_empty()).map(str::to_string);
                }
                Err(e) => desc.problem = Some(format!("GetTrailStatus: {}", sdk_problem(e))),
            }
            match self.client.get_event_selectors().trail_name(&name).send().await {
                Ok(sel) => {
                    let basic = sel.event_selectors();
                    if !basic.is_empty() {
                        desc.management_events = basic.iter().any(|s| s.include_management_events().unwrap_or(true));
                        desc.read_write =
                            basic.first().and_then(|s| s.read_write_type()).map(|r| r.as_str().to_string());
                        desc.data_events = basic.iter().any(|s| !s.data_resources().is_empty());
                    }
                    for adv in sel.advanced_event_selectors() {
                        let categories: Vec<&str> = adv
                            .field_selectors()
                            .iter()
                            .filter(|f| f.field() == "eventCategory")
                            .flat_map(|f| f.equals().iter().map(String::as_str))
                            .collect();
                        desc.data_events |= categories.contains(&"Data");
                    }
                }
                // The trail still counts when its selectors cannot be read; the report says so.
                Err(e) => desc.problem = Some(format!("GetEventSelectors: {}", sdk_problem(e))),
            }
            trails.push(desc);
        }
        Ok(trails)
    }
}

/// Opens `s3://bucket/prefix` as a log source.
pub type OpenS3<'a> = &'a (dyn Fn(&str) -> Result<Box<dyn Source>, String> + Sync);

pub struct Inputs<'a> {
    pub key: String,
    pub start: SystemTime,
    pub end: SystemTime,
    /// The event history, unless switched off.
    pub history: Option<&'a dyn EventHistory>,
    /// Regions to read the event history of; empty: every enabled region.
    pub regions: Vec<String>,
    /// Discover trails and read their log files, unless switched off.
    pub trails: Option<&'a dyn Trails>,
    /// `--logs` sources.
    pub logs: Vec<(String, Box<dyn Source>)>,
    pub open_s3: OpenS3<'a>,
    /// LookupEvents requests per second per region (AWS allows 2).
    pub history_rate: f64,
    /// Query the trail bucket with Athena instead of reading its files (`--athena`).
    pub athena: Option<AthenaReader<'a>>,
    /// Where the trail's digest files are read from, to validate the log files; None: not validated.
    pub objects: Option<&'a dyn super::digest::Objects>,
}

/// The trail read through Athena: the same records, found by SQL over the bucket.
pub struct AthenaReader<'a> {
    pub api: &'a dyn crate::trace::athena::AthenaApi,
    pub settings: crate::trace::athena::AthenaSettings,
}

#[derive(Debug, Clone, Default)]
pub struct Investigation {
    pub sources: Vec<SourceReport>,
    pub timeline: Vec<TimelineEvent>,
    pub derived_keys: Vec<DerivedKeyReport>,
    pub blind_spots: Vec<BlindSpot>,
    /// Roles the key or its sessions assumed (role names), for session revocation.
    pub roles_assumed: Vec<String>,
    pub trails: Vec<String>,
    /// Events from the 90 days before the window: the key's normal use (what the fence learns
    /// from) and, whoever made them, the changes whose earlier values a restore needs (alternate
    /// contacts, trust policies).
    pub context: Vec<TimelineEvent>,
    /// Events whose every source is a trail log file that failed digest validation, with why.
    pub unverified: BTreeMap<String, String>,
}

/// Events whose values before the window let a backdoor be put back exactly as it was.
const CONTEXT_EVENTS: &[&str] =
    &["PutAlternateContact", "DeleteAlternateContact", "UpdateAssumeRolePolicy", "CreateRole"];
const CONTEXT_SPAN: Duration = Duration::from_secs(90 * 24 * 3600);

/// Credential fields that responses may carry: never copied into a report.
const SECRET_FIELDS: &[&str] = &["secretAccessKey", "sessionToken", "SecretAccessKey", "SessionToken", "password"];

fn redact(mut v: Value) -> Value {
    match &mut v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if SECRET_FIELDS.contains(&k.as_str()) {
                    *val = Value::String("[redacted]".into());
                } else {
                    *val = redact(val.take());
                }
            }
        }
        Value::Array(items) => {
            for item in items.iter_mut() {
                *item = redact(item.take());
            }
        }
        _ => {}
    }
    v
}

/// One record as a timeline event, classified.
pub fn timeline_event(raw: &str, chain: Vec<String>, seen_in: &str) -> Option<TimelineEvent> {
    let raw: &RawValue = serde_json::from_str(raw).ok()?;
    let rec = Record::parse(raw).ok()?;
    let vpc_endpoint_id = serde_json::from_str::<Value>(rec.raw())
        .ok()
        .and_then(|v| v.get("vpcEndpointId").and_then(Value::as_str).map(str::to_string));
    let class = classify(&rec);
    let own = |s: Option<&str>| s.map(str::to_string);
    let json = |r: Option<&RawValue>| {
        r.and_then(|r| serde_json::from_str::<Value>(r.get()).ok()).filter(|v| !v.is_null()).map(redact)
    };
    let time = rec.time().unwrap_or_default().to_string();
    let event_name = rec.event_name.get().unwrap_or_default().to_string();
    let signer = own(rec.access_key_id());
    Some(TimelineEvent {
        event_id: rec
            .event_id
            .get()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{time}/{event_name}/{}", signer.clone().unwrap_or_default())),
        time,
        event_name,
        event_source: rec.event_source.get().unwrap_or_default().to_string(),
        region: own(rec.aws_region.get()),
        source_ip: own(rec.source_ip.get()),
        vpc_endpoint_id,
        user_agent: own(rec.user_agent.get()),
        signer,
        chain,
        arn: own(rec.arn()),
        categories: class.categories,
        failed: class.failed,
        error_code: own(rec.error_code.get()),
        notes: class.notes,
        request_parameters: json(rec.request_parameters),
        response_elements: json(rec.response_elements),
        seen_in: vec![seen_in.to_string()],
    })
}

/// The role a session acts as, from an assumed-role or role ARN.
pub fn role_name(arn: &str) -> Option<String> {
    if let Some(rest) = arn.split_once(":assumed-role/").map(|(_, r)| r) {
        return rest.split('/').next().map(str::to_string);
    }
    arn.split_once(":role/").map(|(_, r)| r.rsplit('/').next().unwrap_or(r).to_string())
}

#[derive(Default)]
struct Collected {
    events: BTreeMap<String, TimelineEvent>,
    derived: BTreeMap<String, DerivedKey>,
    /// The log files each event was read from, by event id.
    files: BTreeMap<String, BTreeSet<String>>,
    /// Log files the engine skipped (over the size limit, unreadable), with why; each once however
    /// many scans met it.
    skipped: BTreeMap<String, (bool, String)>,
}

impl Collected {
    fn add_from_file(&mut self, event: TimelineEvent, file: &str) {
        self.files.entry(event.event_id.clone()).or_default().insert(file.to_string());
        self.add(event);
    }

    fn skipped(&mut self, summary: &rekey_trail::Summary) {
        for (file, problem) in &summary.corrupt {
            let too_large = summary.too_large_files.contains(file);
            self.skipped.entry(file.clone()).or_insert_with(|| (too_large, problem.clone()));
        }
    }

    fn add(&mut self, event: TimelineEvent) {
        match self.events.get_mut(&event.event_id) {
            Some(seen) => {
                for s in event.seen_in {
                    if !seen.seen_in.contains(&s) {
                        seen.seen_in.push(s);
                    }
                }
                if event.chain.len() > seen.chain.len() {
                    seen.chain = event.chain;
                }
            }
            None => {
                self.events.insert(event.event_id.clone(), event);
            }
        }
    }

    fn keys(&self, root: &str) -> Vec<String> {
        std::iter::once(root.to_string()).chain(self.derived.keys().cloned()).collect()
    }

    /// Chains from the queried key, rebuilt over every source's derived keys.
    fn chain_of(&self, key: &str) -> Vec<String> {
        let mut chain = vec![key.to_string()];
        while let Some(d) = self.derived.get(chain.last().expect("non-empty")) {
            if chain.contains(&d.parent) {
                break;
            }
            chain.push(d.parent.clone());
        }
        chain.reverse();
        chain
    }
}

pub async fn investigate(inputs: Inputs<'_>) -> Investigation {
    let mut inv = Investigation::default();
    let mut collected = Collected::default();
    let mut log_sources: Vec<(String, Box<dyn Source>)> = inputs.logs;

    // Trails: what they cover, and their log files as sources.
    match inputs.trails {
        None => {}
        Some(trails) => match trails.describe().await {
            Err(problem) => inv.blind_spots.push(BlindSpot {
                kind: "source_unreadable".into(),
                detail: format!("the account's trails could not be listed ({problem}); only the event history and --logs were read"),
                evidence: Vec::new(),
            }),
            Ok(list) if list.is_empty() => inv.blind_spots.push(BlindSpot {
                kind: "no_trail".into(),
                detail: "the account has no CloudTrail trail: only the 90-day event history (management events, no data events) is available".into(),
                evidence: Vec::new(),
            }),
            Ok(list) => {
                for t in list {
                    trail_blind_spots(&t, &mut inv.blind_spots);
                    inv.trails.push(t.name.clone());
                    if let Some(bucket) = &t.bucket {
                        let url = match t.prefix.as_deref().filter(|p| !p.is_empty()) {
                            Some(p) => format!("s3://{bucket}/{}/", p.trim_end_matches('/')),
                            None => format!("s3://{bucket}/"),
                        };
                        if log_sources.iter().any(|(name, _)| *name == url) {
                            continue;
                        }
                        match (inputs.open_s3)(&url) {
                            Ok(source) => log_sources.push((url, source)),
                            Err(problem) => inv.blind_spots.push(BlindSpot {
                                kind: "source_unreadable".into(),
                                detail: format!("the log files of trail {} at {url} could not be read: {problem}", t.name),
                                evidence: Vec::new(),
                            }),
                        }
                    }
                }
            }
        },
    }

    // Read every source; a key learnt from one is looked up in the others, to a fixpoint.
    let mut searched_logs: BTreeSet<String> = BTreeSet::new();
    let mut searched_history: BTreeSet<String> = BTreeSet::new();
    let mut log_reports: BTreeMap<String, SourceReport> = BTreeMap::new();
    let mut history_reports: BTreeMap<String, SourceReport> = BTreeMap::new();
    let regions = match (inputs.history, inputs.regions.is_empty()) {
        (Some(h), true) => h.regions().await.unwrap_or_else(|e| {
            inv.blind_spots.push(BlindSpot {
                kind: "source_unreadable".into(),
                detail: format!(
                    "the enabled regions could not be listed ({e}); the event history of us-east-1 only was read"
                ),
                evidence: Vec::new(),
            });
            vec!["us-east-1".to_string()]
        }),
        _ => inputs.regions.clone(),
    };
    if let Some(athena) = &inputs.athena {
        // The bucket is queried where it lies: its files are not also downloaded.
        log_sources.clear();
        let location = format!("athena {}.{}", athena.settings.table.database, athena.settings.table.table);
        let mut query = Query::new(vec![inputs.key.clone()]);
        query.follow = true;
        query.since = Some(inputs.start);
        query.until = Some(inputs.end);
        let mut matches = Vec::new();
        let result = crate::trace::athena::search(athena.api, &athena.settings, &query, &mut |m| matches.push(m)).await;
        let status = match &result {
            Ok(summary) => {
                for d in &summary.derived {
                    collected.derived.entry(d.key.clone()).or_insert_with(|| d.clone());
                }
                format!(
                    "ok ({} queries, {:.2} GB scanned, about ${:.2})",
                    summary.queries.len(),
                    summary.bytes_scanned() as f64 / 1e9,
                    summary.estimated_cost_usd()
                )
            }
            Err(e) => e.to_string(),
        };
        for m in matches {
            let Some(signer) = m.chain.last() else { continue };
            if let Some(e) = timeline_event(&m.raw, collected.chain_of(signer), &location) {
                collected.add(e);
            }
        }
        searched_logs.extend(collected.keys(&inputs.key));
        log_reports.insert(
            location.clone(),
            SourceReport {
                kind: "athena".into(),
                location,
                covers: format!(
                    "the trail files in s3://{}/{} for {} in {}, {} to {}",
                    athena.settings.table.bucket,
                    athena.settings.table.prefix,
                    athena.settings.table.accounts.join(", "),
                    athena.settings.table.regions.join(", "),
                    rfc3339(inputs.start),
                    rfc3339(inputs.end)
                ),
                status,
                events: 0,
            },
        );
    }
    for _round in 0..4 {
        let keys = collected.keys(&inputs.key);
        let new_for_logs: Vec<String> = keys.iter().filter(|k| !searched_logs.contains(*k)).cloned().collect();
        if !new_for_logs.is_empty() && !log_sources.is_empty() {
            searched_logs.extend(new_for_logs.iter().cloned());
            let (sources, result) = scan_logs(log_sources, new_for_logs, Vec::new(), inputs.start, inputs.end).await;
            log_sources = sources;
            let (matches, summary, names) = result;
            for m in matches {
                let Some(signer) = m.chain.last() else { continue };
                let chain = collected.chain_of(signer);
                let seen = names.get(&m.source).cloned().unwrap_or_else(|| m.source.clone());
                if let Some(e) = timeline_event(&m.raw, chain, &seen) {
                    collected.add_from_file(e, &m.source);
                }
            }
            collected.skipped(&summary);
            for d in summary.derived {
                collected.derived.entry(d.key.clone()).or_insert(d);
            }
            for (name, _) in &log_sources {
                let r = log_reports.entry(name.clone()).or_insert_with(|| SourceReport {
                    kind: if name.starts_with("s3://") { "trail-logs".into() } else { "logs".into() },
                    location: name.clone(),
                    covers: format!(
                        "log files delivered {} to {} (+1 h for late delivery); management and any data events the trail recorded",
                        rfc3339(inputs.start),
                        rfc3339(inputs.end)
                    ),
                    status: "ok".into(),
                    events: 0,
                });
                let bad: Vec<_> = summary
                    .corrupt
                    .iter()
                    .filter(|(f, _)| f.starts_with(name.trim_end_matches('/')) || !name.starts_with("s3://"))
                    .collect();
                if !bad.is_empty() {
                    r.status = format!("{} unreadable file(s), e.g. {}: {}", bad.len(), bad[0].0, bad[0].1);
                }
            }
        }
        let keys = collected.keys(&inputs.key);
        let new_for_history: Vec<String> = keys.iter().filter(|k| !searched_history.contains(*k)).cloned().collect();
        if let Some(history) = inputs.history.filter(|_| !new_for_history.is_empty()) {
            searched_history.extend(new_for_history.iter().cloned());
            let result =
                collect(history, &new_for_history, true, &regions, inputs.start, inputs.end, inputs.history_rate).await;
            for d in result.derived {
                collected.derived.entry(d.key.clone()).or_insert(d);
            }
            for r in result.records {
                let signer_chain = collected.chain_of(r.chain.last().map(String::as_str).unwrap_or(&inputs.key));
                if let Some(e) = timeline_event(&r.raw, signer_chain, &format!("event history {}", r.region)) {
                    collected.add(e);
                }
            }
            for region in result.regions {
                let report = history_reports.entry(region.region.clone()).or_insert_with(|| SourceReport {
                    kind: "event-history".into(),
                    location: region.region.clone(),
                    covers: format!(
                        "management events of the last 90 days in {} (no data events){}",
                        region.region,
                        if region.region == "us-east-1" {
                            "; IAM and sign-in events of global endpoints are only here"
                        } else {
                            ""
                        }
                    ),
                    status: region.status.clone(),
                    events: 0,
                });
                if region.status != "ok" {
                    report.status = region.status.clone();
                }
            }
        }
        let keys_now = collected.keys(&inputs.key);
        let done_logs = log_sources.is_empty() || keys_now.iter().all(|k| searched_logs.contains(k));
        let done_history = inputs.history.is_none() || keys_now.iter().all(|k| searched_history.contains(k));
        if done_logs && done_history {
            break;
        }
    }

    // What was true before the window, from the same log files.
    if !log_sources.is_empty() {
        let (sources, (matches, summary, names)) = scan_logs(
            log_sources,
            vec![inputs.key.clone()],
            CONTEXT_EVENTS.iter().map(|n| n.to_string()).collect(),
            inputs.start - CONTEXT_SPAN,
            inputs.start,
        )
        .await;
        log_sources = sources;
        collected.skipped(&summary);
        for m in matches {
            let seen = names.get(&m.source).cloned().unwrap_or_else(|| m.source.clone());
            if let Some(e) = timeline_event(&m.raw, m.chain.clone(), &seen)
                && rekey_trail::time::parse(&e.time).is_some_and(|t| t < inputs.start)
            {
                inv.context.push(e);
            }
        }
        inv.context.sort_by(|a, b| a.time.cmp(&b.time));
    }
    drop(log_sources);

    // Chains may have grown as other sources revealed parents.
    let mut timeline: Vec<TimelineEvent> = collected.events.values().cloned().collect();
    for e in &mut timeline {
        if let Some(signer) = &e.signer {
            let chain = collected.chain_of(signer);
            if chain.len() > e.chain.len() {
                e.chain = chain;
            }
        }
    }
    timeline.sort_by(|a, b| a.time.cmp(&b.time).then(a.event_id.cmp(&b.event_id)));
    for report in log_reports.values_mut().chain(history_reports.values_mut()) {
        report.events = timeline
            .iter()
            .filter(|e| {
                e.seen_in.iter().any(|s| s == &report.location || s.ends_with(&format!(" {}", report.location)))
            })
            .count() as u64;
        if report.status != "ok" {
            inv.blind_spots.push(BlindSpot {
                kind: "source_unreadable".into(),
                detail: format!("{} {}: {}", report.kind, report.location, report.status),
                evidence: Vec::new(),
            });
        }
    }
    inv.sources = history_reports.into_values().chain(log_reports.into_values()).collect();
    if inv.sources.is_empty() {
        inv.blind_spots.push(BlindSpot {
            kind: "no_source".into(),
            detail: "no event source could be read: nothing is known about what the key did".into(),
            evidence: Vec::new(),
        });
    }
    event_blind_spots(&timeline, &mut inv.blind_spots);
    skipped_blind_spots(&collected.skipped, &mut inv.blind_spots);
    if let Some(objects) = inputs.objects {
        validate_evidence(objects, &timeline, &collected.files, &mut inv).await;
    }
    let history_floor = SystemTime::now() - Duration::from_secs(90 * 24 * 3600);
    if inputs.start < history_floor && inv.sources.iter().all(|s| s.kind == "event-history") {
        inv.blind_spots.push(BlindSpot {
            kind: "period_not_covered".into(),
            detail: format!(
                "the event history keeps 90 days: {} to {} is not covered without trail log files (--logs)",
                rfc3339(inputs.start),
                rfc3339(history_floor)
            ),
            evidence: Vec::new(),
        });
    }
    let mut roles = BTreeSet::new();
    for e in &timeline {
        if e.failed {
            continue;
        }
        if e.event_name == "AssumeRole"
            && let Some(role) =
                e.request_parameters.as_ref().and_then(|r| r.get("roleArn")).and_then(Value::as_str).and_then(role_name)
        {
            roles.insert(role);
        }
        if let Some(role) = e.arn.as_deref().filter(|a| a.contains(":assumed-role/")).and_then(role_name) {
            roles.insert(role);
        }
    }
    inv.roles_assumed = roles.into_iter().collect();
    inv.derived_keys = collected
        .derived
        .values()
        .map(|d| DerivedKeyReport {
            key: d.key.clone(),
            parent: d.parent.clone(),
            event_name: d.event_name.clone(),
            event_time: d.event_time.clone(),
            principal: d.principal.clone(),
        })
        .collect();
    inv.timeline = timeline;
    inv
}

type ScanOutput = (Vec<rekey_trail::Match>, rekey_trail::Summary, BTreeMap<String, String>);

/// Run the blocking scan engine off the async runtime; the sources come back for the next round.
async fn scan_logs(
    sources: Vec<(String, Box<dyn Source>)>,
    keys: Vec<String>,
    event_names: Vec<String>,
    start: SystemTime,
    end: SystemTime,
) -> (Vec<(String, Box<dyn Source>)>, ScanOutput) {
    tokio::task::spawn_blocking(move || {
        let mut query = Query::new(keys);
        query.follow = true;
        query.event_names = event_names;
        query.since = Some(start);
        query.until = Some(end);
        let mut matches = Vec::new();
        let refs: Vec<&dyn Source> = sources.iter().map(|(_, s)| s.as_ref()).collect();
        // Which source each file belongs to, for `seen_in`.
        let mut names = BTreeMap::new();
        let summary = match rekey_trail::scan(&refs, &query, &mut |m| {
            matches.push(m);
        }) {
            Ok(s) => s,
            Err(e) => {
                let mut s = rekey_trail::Summary::default();
                s.corrupt.push((sources.first().map(|(n, _)| n.clone()).unwrap_or_default(), e.to_string()));
                s
            }
        };
        for m in &matches {
            let owner = sources
                .iter()
                .map(|(n, _)| n)
                .find(|n| {
                    m.source.starts_with(n.trim_end_matches('/'))
                        || m.source.contains(n.trim_start_matches("s3://").split('/').next().unwrap_or(""))
                })
                .cloned()
                .unwrap_or_else(|| m.source.clone());
            names.insert(m.source.clone(), owner);
        }
        (sources, (matches, summary, names))
    })
    .await
    .expect("the scan thread does not panic")
}

/// Log files named one by one, up to this many; the rest are counted.
const SKIPPED_NAMED: usize = 50;

/// Every log file the engine skipped, by name: what it held is missing from the timeline.
fn skipped_blind_spots(skipped: &BTreeMap<String, (bool, String)>, out: &mut Vec<BlindSpot>) {
    for (i, (file, (too_large, problem))) in skipped.iter().enumerate() {
        if i == SKIPPED_NAMED {
            out.push(BlindSpot {
                kind: "files_skipped".into(),
                detail: format!(
                    "{} more log files were skipped (see the sources above)",
                    skipped.len() - SKIPPED_NAMED
                ),
                evidence: Vec::new(),
            });
            break;
        }
        let kind = if *too_large { "file_too_large" } else { "file_unreadable" };
        out.push(BlindSpot {
            kind: kind.into(),
            detail: format!("{file}: {problem}; skipped, its records are not in the timeline"),
            evidence: Vec::new(),
        });
    }
}

/// Files worth validating hold the key's changes: the events a finding can rest on.
fn is_change(e: &TimelineEvent) -> bool {
    let read = ["Get", "List", "Describe", "Lookup", "Head"];
    !e.failed && !read.iter().any(|p| e.event_name.starts_with(p))
}

/// At most this many log files are fetched again to be hashed.
const VALIDATED_FILES: usize = 500;

/// Checks the trail files that hold the key's changes against the trail's digests; events whose
/// every source failed are `unverified`.
async fn validate_evidence(
    objects: &dyn super::digest::Objects,
    timeline: &[TimelineEvent],
    files: &BTreeMap<String, BTreeSet<String>>,
    inv: &mut Investigation,
) {
    use super::digest::Verdict;
    let mut wanted = BTreeSet::new();
    for e in timeline.iter().filter(|e| is_change(e)) {
        wanted.extend(files.get(&e.event_id).into_iter().flatten().filter(|f| f.starts_with("s3://")).cloned());
    }
    if wanted.is_empty() {
        return;
    }
    let left_out = wanted.len().saturating_sub(VALIDATED_FILES);
    let wanted: BTreeSet<String> = wanted.into_iter().take(VALIDATED_FILES).collect();
    let v = super::digest::validate(objects, &wanted).await;
    let count = |f: fn(&Verdict) -> bool| v.verdicts.values().filter(|x| f(x)).count();
    let (valid, failed, unchecked) = (
        count(|x| matches!(x, Verdict::Valid)),
        count(|x| matches!(x, Verdict::Failed(_))),
        count(|x| matches!(x, Verdict::Unchecked(_))),
    );
    let location = {
        let first = wanted.iter().next().cloned().unwrap_or_default();
        let bucket = first.strip_prefix("s3://").and_then(|r| r.split('/').next()).unwrap_or_default().to_string();
        format!("s3://{bucket}/…/CloudTrail-Digest/")
    };
    inv.sources.push(SourceReport {
        kind: "digests".into(),
        location,
        covers: format!(
            "{} digest file(s) read; the SHA-256 of the {} log file(s) holding the key's changes checked against them,              and each digest against the hash its successor records{}; the digests' signatures are not verified",
            v.digests,
            wanted.len(),
            if left_out > 0 { format!(" ({left_out} more files not checked)") } else { String::new() }
        ),
        status: if failed == 0 && v.problems.is_empty() {
            format!("ok ({valid} valid, {unchecked} not covered by a digest yet)")
        } else {
            format!("{failed} file(s) failed validation, {valid} valid, {unchecked} not covered")
        },
        events: 0,
    });
    for p in &v.problems {
        inv.blind_spots.push(BlindSpot { kind: "digest_chain_broken".into(), detail: p.clone(), evidence: Vec::new() });
    }
    let failed: BTreeMap<&String, &String> = v
        .verdicts
        .iter()
        .filter_map(|(f, x)| match x {
            Verdict::Failed(why) => Some((f, why)),
            _ => None,
        })
        .collect();
    for (file, why) in &failed {
        let evidence: Vec<String> =
            files.iter().filter(|(_, fs)| fs.contains(*file)).map(|(id, _)| id.clone()).collect();
        inv.blind_spots.push(BlindSpot {
            kind: "log_file_failed_validation".into(),
            detail: format!("{file}: {why}; its records cannot be trusted, and nothing is planned on them alone"),
            evidence,
        });
    }
    // An event stands on its own when any other source has it: the event history, or a file that
    // did not fail.
    for e in timeline {
        let Some(fs) = files.get(&e.event_id) else { continue };
        let other_source = e.seen_in.iter().any(|s| s.starts_with("event history"));
        if other_source || fs.iter().any(|f| !failed.contains_key(f)) {
            continue;
        }
        let why: Vec<String> = fs.iter().filter_map(|f| failed.get(f).map(|w| format!("{f}: {w}"))).collect();
        inv.unverified.insert(e.event_id.clone(), why.join("; "));
    }
}

fn trail_blind_spots(t: &TrailDesc, out: &mut Vec<BlindSpot>) {
    let name = &t.name;
    if t.is_logging == Some(false) {
        out.push(BlindSpot {
            kind: "logging_stopped".into(),
            detail: format!(
                "trail {name} is not logging{}: nothing after that is in its files",
                t.stopped_at.as_deref().map(|s| format!(" (stopped {s})")).unwrap_or_default()
            ),
            evidence: Vec::new(),
        });
    }
    if !t.multi_region {
        out.push(BlindSpot {
            kind: "region_not_logged".into(),
            detail: format!(
                "trail {name} records only its home region {}: calls in other regions are only in their event history",
                t.home_region.as_deref().unwrap_or("?")
            ),
            evidence: Vec::new(),
        });
    }
    if !t.management_events || t.read_write.as_deref().is_some_and(|r| r != "All") {
        out.push(BlindSpot {
            kind: "selectors_changed".into(),
            detail: format!(
                "trail {name} does not record all management events ({}): some calls are missing from its files",
                t.read_write.as_deref().unwrap_or("management events excluded")
            ),
            evidence: Vec::new(),
        });
    }
    if !t.data_events {
        out.push(BlindSpot {
            kind: "no_data_events".into(),
            detail: format!("trail {name} records no data events: S3 object reads and writes, Lambda invocations and the like are not visible"),
            evidence: Vec::new(),
        });
    }
    if let Some(e) = &t.delivery_error {
        out.push(BlindSpot {
            kind: "delivery_error".into(),
            detail: format!("trail {name} cannot deliver its files: {e}"),
            evidence: Vec::new(),
        });
    }
    if let Some(p) = &t.problem {
        out.push(BlindSpot {
            kind: "source_unreadable".into(),
            detail: format!("trail {name}: {p}"),
            evidence: Vec::new(),
        });
    }
}

/// What the key itself did to the logging.
fn event_blind_spots(timeline: &[TimelineEvent], out: &mut Vec<BlindSpot>) {
    for e in timeline.iter().filter(|e| !e.failed && e.categories.contains(&Category::DefenseEvasion)) {
        let kind = match e.event_name.as_str() {
            "StopLogging" => "logging_stopped",
            "DeleteTrail" => "trail_deleted",
            "UpdateTrail" | "PutEventSelectors" | "PutInsightSelectors" => "selectors_changed",
            "DeleteFlowLogs" | "DeleteResolverQueryLogConfig" | "DeleteLogGroup" => "logs_deleted",
            _ => "defense_evasion",
        };
        let target = e
            .request_parameters
            .as_ref()
            .and_then(|r| r.get("name").or_else(|| r.get("trailName")))
            .and_then(Value::as_str)
            .unwrap_or("");
        out.push(BlindSpot {
            kind: kind.into(),
            detail: format!(
                "{} {target} at {} by {}: records after this may be missing",
                e.event_name,
                e.time,
                e.signer.as_deref().unwrap_or("?")
            ),
            evidence: vec![e.event_id.clone()],
        });
    }
}

pub use rekey_trail::time::format as rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_events_are_classified_and_carry_no_credentials() {
        let raw = r#"{"eventID":"e1","eventTime":"2026-11-27T12:12:00Z","eventSource":"sts.amazonaws.com","eventName":"AssumeRole",
            "sourceIPAddress":"198.51.100.50","userIdentity":{"type":"IAMUser","accessKeyId":"AKIALEAK","userName":"app"},
            "requestParameters":{"roleArn":"arn:aws:iam::123456789012:role/admin","roleSessionName":"x"},
            "responseElements":{"credentials":{"accessKeyId":"ASIANEW","sessionToken":"IQoJb3JpZ2luX2VjE","secretAccessKey":"never"}}}"#;
        let e = timeline_event(raw, vec!["AKIALEAK".into()], "event history us-east-1").unwrap();
        assert_eq!(e.categories, vec![Category::PrivilegeEscalation]);
        let text = serde_json::to_string(&e).unwrap();
        assert!(!text.contains("IQoJb3JpZ2luX2VjE") && !text.contains("never"), "{text}");
        assert!(text.contains("ASIANEW"));
    }

    #[test]
    fn role_names_from_arns() {
        assert_eq!(role_name("arn:aws:sts::1:assumed-role/admin/session").as_deref(), Some("admin"));
        assert_eq!(role_name("arn:aws:iam::1:role/path/to/admin").as_deref(), Some("admin"));
        assert_eq!(role_name("arn:aws:iam::1:user/bob"), None);
    }

    #[test]
    fn stopped_single_region_trails_without_data_events_are_blind_spots() {
        let mut out = Vec::new();
        trail_blind_spots(
            &TrailDesc {
                name: "main".into(),
                is_logging: Some(false),
                stopped_at: Some("2026-11-27T12:30:00Z".into()),
                management_events: true,
                home_region: Some("us-east-1".into()),
                ..TrailDesc::default()
            },
            &mut out,
        );
        let kinds: Vec<&str> = out.iter().map(|b| b.kind.as_str()).collect();
        assert_eq!(kinds, ["logging_stopped", "region_not_logged", "no_data_events"]);
    }
}
