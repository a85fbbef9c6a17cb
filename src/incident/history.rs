//! CloudTrail event history (`LookupEvents`): what a key did in the last 90 days, without a trail.
//!
//! Event history is kept per Region and holds management events only (never data events such as
//! S3 `GetObject`). Calls to IAM and to the global STS endpoint are recorded in us-east-1's history
//! only, while calls to regional STS endpoints are recorded in the Region that served them; asking
//! every enabled Region, as [`collect`] does, therefore finds both without special cases.
//!
//! `LookupEvents` allows 2 requests/s per account and Region and answers `ThrottlingException`
//! beyond that. Regions are throttled independently, so they are searched in parallel, each behind
//! its own limiter; throttling that still happens (another tool using the same account) is retried
//! with backoff. A Region that refuses (for example a caller under `AWSCompromisedKeyQuarantine`,
//! which denies `cloudtrail:LookupEvents`) is reported and the other Regions go on.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_cloudtrail::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use backon::{ExponentialBuilder, Retryable};
use rekey_trail::{DerivedKey, Record};
use serde_json::value::RawValue;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How far back event history goes.
pub const RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

/// `LookupEvents` returns at most this many events a page.
pub const MAX_RESULTS: i32 = 50;

/// The documented limit, per account and Region.
pub const DEFAULT_RATE_PER_REGION: f64 = 2.0;

/// Keys followed at most. An application that assumes a role every few minutes mints thousands of
/// session keys in 90 days, and each followed key costs at least one request in every Region at
/// 2 requests/s; past this many the rest are listed as derived but not searched.
pub const MAX_FOLLOWED_KEYS: usize = 256;

/// Throttling retries per request before the request counts as failed.
const THROTTLE_RETRIES: usize = 6;

#[derive(Debug, Clone)]
pub struct Page {
    /// Each event's `CloudTrailEvent`: the record's JSON text.
    pub events: Vec<String>,
    pub next: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("throttled: {0}")]
    Throttled(String),
    /// Includes `AWSCompromisedKeyQuarantine*`, which denies `cloudtrail:LookupEvents` to the
    /// quarantined user: the investigation must run as another principal.
    #[error("access denied: {0}")]
    Denied(String),
    #[error("{0}")]
    Other(String),
}

/// The seam in front of CloudTrail: moto answers `LookupEvents` with HTTP 500, so the collector is
/// tested against a fake.
#[async_trait]
pub trait EventHistory: Send + Sync {
    /// Regions enabled for the account.
    async fn regions(&self) -> Result<Vec<String>, HistoryError>;

    /// One page of `LookupEvents` for `AccessKeyId = key` in `region` between `start` and `end`.
    async fn lookup(
        &self,
        region: &str,
        key: &str,
        start: SystemTime,
        end: SystemTime,
        next: Option<String>,
    ) -> Result<Page, HistoryError>;

    /// What the source had to work around (a Region list it could not read, …), for the report.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The real event history, one CloudTrail client per Region.
pub struct AwsEventHistory {
    sdk: aws_types::SdkConfig,
    clients: Mutex<HashMap<String, aws_sdk_cloudtrail::Client>>,
    notes: Mutex<Vec<String>>,
}

impl AwsEventHistory {
    pub fn new(sdk: &aws_types::SdkConfig) -> Self {
        AwsEventHistory { sdk: sdk.clone(), clients: Mutex::new(HashMap::new()), notes: Mutex::new(Vec::new()) }
    }

    fn client(&self, region: &str) -> aws_sdk_cloudtrail::Client {
        let mut clients = self.clients.lock().expect("client cache lock");
        clients
            .entry(region.to_string())
            .or_insert_with(|| {
                // The SDK's own retries would send requests the per-Region limiter never sees and
                // break the 2 requests/s budget; `collect` retries throttling itself.
                let conf = aws_sdk_cloudtrail::config::Builder::from(&self.sdk)
                    .region(aws_types::region::Region::new(region.to_string()))
                    .retry_config(aws_sdk_cloudtrail::config::retry::RetryConfig::disabled())
                    .build();
                aws_sdk_cloudtrail::Client::from_conf(conf)
            })
            .clone()
    }

    async fn list_regions(&self) -> Result<Vec<String>, HistoryError> {
        use aws_sdk_account::types::RegionOptStatus;
        let account = aws_sdk_account::Client::new(&self.sdk);
        let mut regions = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let out = account
                .list_regions()
                .region_opt_status_contains(RegionOptStatus::Enabled)
                .region_opt_status_contains(RegionOptStatus::EnabledByDefault)
                .max_results(50)
                .set_next_token(next.clone())
                .send()
                .await
                .map_err(sdk_error)?;
            regions.extend(out.regions().iter().filter_map(|r| r.region_name().map(str::to_string)));
            match out.next_token() {
                Some(t) if !t.is_empty() && next.as_deref() != Some(t) => next = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(regions)
    }
}

#[async_trait]
impl EventHistory for AwsEventHistory {
    async fn regions(&self) -> Result<Vec<String>, HistoryError> {
        match self.list_regions().await {
            Ok(regions) if !regions.is_empty() => Ok(regions),
            result => {
                let Some(configured) = self.sdk.region().map(|r| r.to_string()) else {
                    return result.and(Err(HistoryError::Other("no Region enabled and none configured".into())));
                };
                let why = match result {
                    Err(e) => e.to_string(),
                    Ok(_) => "the account listed no enabled Region".into(),
                };
                self.notes.lock().expect("notes lock").push(format!(
                    "could not list the account's enabled Regions ({why}; needs account:ListRegions): \
                     event history searched in {configured} only"
                ));
                Ok(vec![configured])
            }
        }
    }

    async fn lookup(
        &self,
        region: &str,
        key: &str,
        start: SystemTime,
        end: SystemTime,
        next: Option<String>,
    ) -> Result<Page, HistoryError> {
        use aws_sdk_cloudtrail::primitives::DateTime;
        use aws_sdk_cloudtrail::types::{LookupAttribute, LookupAttributeKey};
        let attribute = LookupAttribute::builder()
            .attribute_key(LookupAttributeKey::AccessKeyId)
            .attribute_value(key)
            .build()
            .map_err(|e| HistoryError::Other(e.to_string()))?;
        let out = self
            .client(region)
            .lookup_events()
            .lookup_attributes(attribute)
            .start_time(DateTime::from(start))
            .end_time(DateTime::from(end))
            .max_results(MAX_RESULTS)
            .set_next_token(next)
            .send()
            .await
            .map_err(sdk_error)?;
        let events = out
            .events()
            .iter()
            .map(|e| match e.cloud_trail_event() {
                Some(raw) => raw.to_string(),
                // Never seen in practice; keep what the Event itself says rather than drop it.
                None => serde_json::json!({
                    "eventID": e.event_id(),
                    "eventName": e.event_name(),
                    "eventSource": e.event_source(),
                    "eventTime": e.event_time().and_then(|t| SystemTime::try_from(*t).ok())
                        .map(rekey_trail::time::format),
                    "userIdentity": { "accessKeyId": e.access_key_id(), "userName": e.username() },
                })
                .to_string(),
            })
            .collect();
        Ok(Page { events, next: out.next_token().filter(|t| !t.is_empty()).map(str::to_string) })
    }

    fn notes(&self) -> Vec<String> {
        self.notes.lock().expect("notes lock").clone()
    }
}

fn sdk_error<E, R>(e: SdkError<E, R>) -> HistoryError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e.as_service_error().and_then(|s| s.code()) {
        Some(code) => classify(code, e.as_service_error().and_then(|s| s.message()).unwrap_or("no message")),
        None => HistoryError::Other(DisplayErrorContext(&e).to_string()),
    }
}

/// An AWS error code as a [`HistoryError`].
fn classify(code: &str, message: &str) -> HistoryError {
    let text = format!("{code}: {message}");
    if matches!(code, "ThrottlingException" | "Throttling" | "TooManyRequestsException") {
        HistoryError::Throttled(text)
    } else if code.starts_with("AccessDenied")
        || code.starts_with("UnrecognizedClient")
        || matches!(code, "InvalidClientTokenId" | "SignatureDoesNotMatch" | "ExpiredToken" | "ExpiredTokenException")
    {
        HistoryError::Denied(text)
    } else {
        HistoryError::Other(text)
    }
}

/// A record from event history.
#[derive(Debug, Clone)]
pub struct HistoryRecord {
    /// Whose event history it was read from.
    pub region: String,
    /// The `CloudTrailEvent` JSON.
    pub raw: String,
    /// The key chain from a queried key to the key that signed it: `[AKIA…, ASIA…]`.
    pub chain: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct RegionReport {
    pub region: String,
    /// Records kept from this Region (an event returned twice counts once).
    pub events: u64,
    /// `ok`, or what went wrong, with what it means for the result.
    pub status: String,
    /// Pages read.
    pub pages: u64,
    /// The window searched, and why it is narrower than asked when it is.
    pub covers: String,
}

#[derive(Debug, Clone, Default)]
pub struct HistoryResult {
    /// Oldest first.
    pub records: Vec<HistoryRecord>,
    pub regions: Vec<RegionReport>,
    /// Keys minted by followed keys, in the order they were learnt.
    pub derived: Vec<DerivedKey>,
    /// Whatever limits the result as a whole (a Region list that could not be read, keys not
    /// followed past [`MAX_FOLLOWED_KEYS`], …).
    pub notes: Vec<String>,
}

/// Spaces the requests to one Region at least `interval` apart, retries included.
struct Limiter {
    interval: Duration,
    next: Mutex<Option<Instant>>,
}

impl Limiter {
    fn new(rate: f64) -> Limiter {
        let rate = if rate.is_finite() && rate > 0.0 { rate } else { DEFAULT_RATE_PER_REGION };
        Limiter { interval: Duration::from_secs_f64(1.0 / rate), next: Mutex::new(None) }
    }

    async fn wait(&self) {
        let at = {
            let mut next = self.next.lock().expect("limiter lock");
            let now = Instant::now();
            let at = next.map_or(now, |n| n.max(now));
            *next = Some(at + self.interval);
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

struct RegionState {
    name: String,
    queue: VecDeque<String>,
    events: u64,
    pages: u64,
    problems: Vec<String>,
    /// Refused once: the rest of its work is skipped, since every request would be refused too.
    denied: bool,
}

struct State {
    regions: Vec<RegionState>,
    /// Lookups queued or running, over all Regions: the fixpoint is reached when it is zero.
    pending: usize,
    followed: HashSet<String>,
    parent: HashMap<String, String>,
    seen: HashSet<String>,
    records: Vec<(Option<SystemTime>, String, HistoryRecord)>,
    derived: Vec<DerivedKey>,
    not_followed: usize,
}

struct Shared<'h> {
    history: &'h dyn EventHistory,
    follow: bool,
    start: SystemTime,
    end: SystemTime,
    state: Mutex<State>,
    wake: Notify,
}

/// Every event history record of `keys` in every Region of `regions` (all enabled Regions when
/// empty) between `start` and `end`; with `follow`, also of every key they minted, recursively.
///
/// `start` is moved forward to what event history still holds (90 days). Each Region gets at most
/// `rate_per_region` requests a second ([`DEFAULT_RATE_PER_REGION`] is AWS's limit). Errors are
/// reported per Region and never stop the other Regions.
pub async fn collect(
    history: &dyn EventHistory,
    keys: &[String],
    follow: bool,
    regions: &[String],
    start: SystemTime,
    end: SystemTime,
    rate_per_region: f64,
) -> HistoryResult {
    let mut notes = Vec::new();
    let mut region_names: Vec<String> = Vec::new();
    let asked: Vec<String> = if regions.is_empty() {
        match history.regions().await {
            Ok(r) => r,
            Err(e) => {
                notes.push(format!("event history not searched: the Regions could not be listed ({e})"));
                Vec::new()
            }
        }
    } else {
        regions.to_vec()
    };
    for r in asked {
        let r = r.trim().to_string();
        if !r.is_empty() && !region_names.contains(&r) {
            region_names.push(r);
        }
    }
    let mut wanted: Vec<String> = Vec::new();
    for k in keys {
        let k = k.trim().to_string();
        if !k.is_empty() && !wanted.contains(&k) {
            wanted.push(k);
        }
    }

    let oldest = SystemTime::now().checked_sub(RETENTION).unwrap_or(SystemTime::UNIX_EPOCH);
    let clamped = start < oldest;
    let from = start.max(oldest);
    let fmt = |t: SystemTime| rekey_trail::time::format(t);
    let mut covers = format!("{} to {}, management events only", fmt(from), fmt(end));
    if clamped {
        covers.push_str(&format!(
            "; asked from {}, but event history keeps only 90 days: anything older needs trail logs",
            fmt(start)
        ));
    }
    let empty_window = from >= end;

    let mut state = State {
        regions: region_names
            .iter()
            .map(|name| RegionState {
                name: name.clone(),
                queue: if empty_window { VecDeque::new() } else { wanted.iter().cloned().collect() },
                events: 0,
                pages: 0,
                problems: Vec::new(),
                denied: false,
            })
            .collect(),
        pending: 0,
        followed: wanted.iter().cloned().collect(),
        parent: HashMap::new(),
        seen: HashSet::new(),
        records: Vec::new(),
        derived: Vec::new(),
        not_followed: 0,
    };
    state.pending = state.regions.iter().map(|r| r.queue.len()).sum();
    let shared = Shared { history, follow, start: from, end, state: Mutex::new(state), wake: Notify::new() };
    let limiters: Vec<Limiter> = region_names.iter().map(|_| Limiter::new(rate_per_region)).collect();

    join_all(limiters.iter().enumerate().map(|(i, limiter)| region_worker(&shared, i, limiter)).collect()).await;

    let state = shared.state.into_inner().expect("state lock");
    let mut records = state.records;
    // Regions answer in any order; oldest first reads as a timeline and is stable across runs.
    records.sort_by(|a, b| (a.0.is_none(), a.0, &a.1).cmp(&(b.0.is_none(), b.0, &b.1)));
    let reports = state
        .regions
        .into_iter()
        .map(|r| RegionReport {
            status: if empty_window && end <= oldest {
                "not searched: the whole window is older than the 90 days event history keeps".into()
            } else if empty_window {
                "not searched: the window is empty (its start is not before its end)".into()
            } else if r.problems.is_empty() {
                "ok".into()
            } else {
                r.problems.join("; ")
            },
            region: r.name,
            events: r.events,
            pages: r.pages,
            covers: covers.clone(),
        })
        .collect();
    if state.not_followed > 0 {
        notes.push(format!(
            "{} minted keys were not searched: more than {MAX_FOLLOWED_KEYS} keys to follow (they are listed as \
             derived keys)",
            state.not_followed
        ));
    }
    notes.extend(history.notes());
    HistoryResult {
        records: records.into_iter().map(|(_, _, r)| r).collect(),
        regions: reports,
        derived: state.derived,
        notes,
    }
}

/// Works through one Region's queue until no Region has work left, since another Region can still
/// learn a key this one must search.
async fn region_worker(shared: &Shared<'_>, index: usize, limiter: &Limiter) {
    loop {
        let notified = shared.wake.notified();
        tokio::pin!(notified);
        // Registered before looking at the state, so that a wake-up between the look and the wait
        // is not lost.
        notified.as_mut().enable();
        let job = {
            let mut st = shared.state.lock().expect("state lock");
            if st.pending == 0 {
                return;
            }
            let region = &mut st.regions[index];
            region.queue.pop_front().map(|key| (key, region.denied))
        };
        let Some((key, denied)) = job else {
            notified.await;
            continue;
        };
        if !denied {
            search(shared, index, limiter, &key).await;
        }
        let mut st = shared.state.lock().expect("state lock");
        st.pending -= 1;
        if st.pending == 0 {
            shared.wake.notify_waiters();
        }
    }
}

/// Every page of one key in one Region.
async fn search(shared: &Shared<'_>, index: usize, limiter: &Limiter, key: &str) {
    let region = shared.state.lock().expect("state lock").regions[index].name.clone();
    let mut next: Option<String> = None;
    loop {
        let page = (|| {
            let next = next.clone();
            let region = region.as_str();
            async move {
                limiter.wait().await;
                shared.history.lookup(region, key, shared.start, shared.end, next).await
            }
        })
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_secs(1))
                .with_max_delay(Duration::from_secs(20))
                .with_max_times(THROTTLE_RETRIES)
                .with_jitter(),
        )
        .when(|e| matches!(e, HistoryError::Throttled(_)))
        .notify(|e, after| tracing::debug!(region = %region, key, "LookupEvents {e}; retrying in {after:?}"))
        .await;
        let mut st = shared.state.lock().expect("state lock");
        match page {
            Ok(page) => {
                st.regions[index].pages += 1;
                let learnt = ingest(shared, &mut st, index, key, page.events);
                if learnt {
                    shared.wake.notify_waiters();
                }
                match page.next {
                    // A token that repeats would loop forever.
                    Some(t) if next.as_deref() != Some(t.as_str()) => next = Some(t),
                    _ => return,
                }
            }
            Err(e) => {
                let r = &mut st.regions[index];
                let after = if r.pages > 0 || next.is_some() { " after some pages" } else { "" };
                match e {
                    HistoryError::Denied(m) => {
                        r.denied = true;
                        r.problems.push(format!(
                            "denied ({m}); nothing more searched here. A principal under \
                             AWSCompromisedKeyQuarantine cannot call cloudtrail:LookupEvents: run as another one"
                        ));
                    }
                    HistoryError::Throttled(m) => {
                        r.problems.push(format!("{key} incomplete{after}: still throttled after retries ({m})"))
                    }
                    HistoryError::Other(m) => r.problems.push(format!("{key} incomplete{after}: {m}")),
                }
                return;
            }
        }
    }
}

/// Keeps the new records of a page and learns the keys they minted; true when a key was learnt.
fn ingest(shared: &Shared<'_>, st: &mut State, index: usize, key: &str, events: Vec<String>) -> bool {
    let mut learnt = false;
    for raw in events {
        let parsed: Option<&RawValue> = serde_json::from_str(&raw).ok();
        let record = parsed.and_then(|r| Record::parse(r).ok());
        let id = record.as_ref().and_then(|r| r.event_id.get().map(str::to_string)).unwrap_or_else(|| raw.clone());
        if !st.seen.insert(id.clone()) {
            continue;
        }
        let signer = record
            .as_ref()
            .and_then(|r| r.access_key_id())
            .filter(|k| st.followed.contains(*k))
            .unwrap_or(key)
            .to_string();
        let mut chain = vec![signer.clone()];
        while let Some(p) = st.parent.get(chain.last().expect("non-empty")) {
            if chain.contains(p) {
                break;
            }
            chain.push(p.clone());
        }
        chain.reverse();
        if shared.follow
            && let Some(minted) = record.as_ref().and_then(|r| r.minted())
            && !st.followed.contains(&minted.key)
            && !st.derived.iter().any(|d| d.key == minted.key)
        {
            let rec = record.as_ref().expect("minted implies parsed");
            st.derived.push(DerivedKey {
                key: minted.key.clone(),
                parent: signer.clone(),
                event_name: rec.event_name.get().unwrap_or_default().to_string(),
                event_time: rec.time().map(str::to_string),
                principal: minted.principal,
            });
            st.parent.insert(minted.key.clone(), signer.clone());
            if st.followed.len() < MAX_FOLLOWED_KEYS {
                st.followed.insert(minted.key.clone());
                for r in st.regions.iter_mut() {
                    r.queue.push_back(minted.key.clone());
                }
                st.pending += st.regions.len();
                learnt = true;
            } else {
                st.not_followed += 1;
            }
        }
        let time = record.as_ref().and_then(|r| r.time()).and_then(rekey_trail::time::parse);
        drop(record);
        st.regions[index].events += 1;
        let region = st.regions[index].name.clone();
        st.records.push((time, id, HistoryRecord { region, raw, chain }));
    }
    learnt
}

/// Runs borrowed futures to completion side by side (tokio's `JoinSet` wants `'static` ones).
pub(crate) async fn join_all<F: Future<Output = ()>>(futures: Vec<F>) {
    let mut futures: Vec<Option<Pin<Box<F>>>> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    std::future::poll_fn(|cx| {
        let mut running = false;
        for slot in futures.iter_mut() {
            let Some(f) = slot.as_mut() else { continue };
            if f.as_mut().poll(cx).is_ready() {
                *slot = None;
            } else {
                running = true;
            }
        }
        if running { Poll::Pending } else { Poll::Ready(()) }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone)]
    struct Call {
        region: String,
        key: String,
        start: SystemTime,
        next: Option<String>,
        at: Instant,
    }

    /// Pages per (Region, key); a missing entry is an empty history.
    #[derive(Default)]
    struct Fake {
        regions: Vec<String>,
        pages: HashMap<(String, String), Vec<Vec<String>>>,
        denied: HashSet<String>,
        /// Throttling answers a Region gives before it answers properly.
        throttles: Mutex<HashMap<String, u32>>,
        calls: Mutex<Vec<Call>>,
    }

    impl Fake {
        fn new(regions: &[&str]) -> Fake {
            Fake { regions: regions.iter().map(|r| r.to_string()).collect(), ..Default::default() }
        }

        fn add(&mut self, region: &str, key: &str, pages: Vec<Vec<String>>) {
            self.pages.insert((region.into(), key.into()), pages);
        }

        fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl EventHistory for Fake {
        async fn regions(&self) -> Result<Vec<String>, HistoryError> {
            Ok(self.regions.clone())
        }

        async fn lookup(
            &self,
            region: &str,
            key: &str,
            start: SystemTime,
            _end: SystemTime,
            next: Option<String>,
        ) -> Result<Page, HistoryError> {
            self.calls.lock().unwrap().push(Call {
                region: region.into(),
                key: key.into(),
                start,
                next: next.clone(),
                at: Instant::now(),
            });
            // A request takes a little time, as a real one does.
            tokio::time::sleep(Duration::from_millis(80)).await;
            if self.denied.contains(region) {
                return Err(HistoryError::Denied("AccessDeniedException: explicit deny".into()));
            }
            if let Some(n) = self.throttles.lock().unwrap().get_mut(region).filter(|n| **n > 0) {
                *n -= 1;
                return Err(HistoryError::Throttled("ThrottlingException: Rate exceeded".into()));
            }
            let pages = self.pages.get(&(region.to_string(), key.to_string())).cloned().unwrap_or_default();
            let i: usize = next.as_deref().map_or(0, |n| n.parse().unwrap());
            Ok(Page {
                events: pages.get(i).cloned().unwrap_or_default(),
                next: (i + 1 < pages.len()).then(|| (i + 1).to_string()),
            })
        }
    }

    fn event(id: &str, key: &str, name: &str, time: &str) -> String {
        serde_json::json!({
            "eventID": id, "eventName": name, "eventTime": time, "eventSource": "sts.amazonaws.com",
            "userIdentity": { "type": "IAMUser", "accessKeyId": key },
        })
        .to_string()
    }

    fn minting(id: &str, key: &str, name: &str, time: &str, minted: &str) -> String {
        let mut v: serde_json::Value = serde_json::from_str(&event(id, key, name, time)).unwrap();
        v["responseElements"] = if name == "CreateAccessKey" {
            serde_json::json!({ "accessKey": { "accessKeyId": minted, "userName": "backdoor" } })
        } else {
            serde_json::json!({
                "credentials": { "accessKeyId": minted, "sessionToken": "t" },
                "assumedRoleUser": { "arn": "arn:aws:sts::1:assumed-role/admin/s" },
            })
        };
        v.to_string()
    }

    fn many(prefix: &str, key: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| event(&format!("{prefix}-{i:03}"), key, "GetCallerIdentity", "2026-01-01T00:00:00Z")).collect()
    }

    fn days(n: u64) -> Duration {
        Duration::from_secs(n * 24 * 3600)
    }

    fn window() -> (SystemTime, SystemTime) {
        let now = SystemTime::now();
        (now - days(7), now)
    }

    fn ids(result: &HistoryResult) -> Vec<String> {
        let mut ids: Vec<String> = result
            .records
            .iter()
            .map(|r| {
                serde_json::from_str::<serde_json::Value>(&r.raw).unwrap()["eventID"].as_str().unwrap().to_string()
            })
            .collect();
        ids.sort();
        ids
    }

    fn report<'a>(result: &'a HistoryResult, region: &str) -> &'a RegionReport {
        result.regions.iter().find(|r| r.region == region).unwrap()
    }

    const KEY: &str = "AKIAEXAMPLE";

    #[tokio::test(start_paused = true)]
    async fn reads_every_page_of_every_region_at_two_requests_a_second() {
        let mut fake = Fake::new(&["us-east-1", "eu-west-1", "ap-south-1"]);
        fake.add("us-east-1", KEY, vec![many("a", KEY, 50), many("b", KEY, 50), many("c", KEY, 7)]);
        fake.add("eu-west-1", KEY, vec![many("d", KEY, 50), many("e", KEY, 1)]);
        let (start, end) = window();
        let started = Instant::now();
        let result = collect(&fake, &[KEY.to_string()], false, &[], start, end, 2.0).await;

        assert_eq!(result.records.len(), 158);
        assert_eq!((report(&result, "us-east-1").pages, report(&result, "us-east-1").events), (3, 107));
        assert_eq!((report(&result, "eu-west-1").pages, report(&result, "eu-west-1").events), (2, 51));
        assert_eq!((report(&result, "ap-south-1").pages, report(&result, "ap-south-1").events), (1, 0));
        assert!(result.regions.iter().all(|r| r.status == "ok"), "{:?}", result.regions);
        let calls = fake.calls();
        let tokens: Vec<Option<String>> =
            calls.iter().filter(|c| c.region == "us-east-1").map(|c| c.next.clone()).collect();
        assert_eq!(tokens, vec![None, Some("1".into()), Some("2".into())]);
        for region in &fake.regions {
            let at: Vec<Instant> = calls.iter().filter(|c| &c.region == region).map(|c| c.at).collect();
            for pair in at.windows(2) {
                assert!(pair[1] - pair[0] >= Duration::from_millis(500), "{region}: {:?}", pair[1] - pair[0]);
            }
        }
        // Regions ran side by side: three pages in one Region take 1 s of spacing, not 6 calls' worth.
        assert!(started.elapsed() < Duration::from_millis(1200), "{:?}", started.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_is_retried_with_backoff_until_it_succeeds() {
        let mut fake = Fake::new(&["us-east-1", "eu-west-1"]);
        fake.add("us-east-1", KEY, vec![many("a", KEY, 50), many("b", KEY, 3)]);
        fake.add("eu-west-1", KEY, vec![many("c", KEY, 2)]);
        fake.throttles.lock().unwrap().insert("us-east-1".into(), 3);
        let (start, end) = window();
        let result = collect(&fake, &[KEY.to_string()], false, &[], start, end, 2.0).await;

        assert_eq!(result.records.len(), 55);
        assert_eq!(report(&result, "us-east-1").status, "ok");
        let calls: Vec<Call> = fake.calls().into_iter().filter(|c| c.region == "us-east-1").collect();
        assert_eq!(calls.len(), 2 + 3);
        // Backoff, not just the limiter's spacing: the retries wait longer than 500 ms.
        assert!(calls[1].at - calls[0].at >= Duration::from_secs(1), "{:?}", calls[1].at - calls[0].at);
        for pair in calls.windows(2) {
            assert!(pair[1].at - pair[0].at >= Duration::from_millis(500));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn endless_throttling_gives_up_and_says_so() {
        let mut fake = Fake::new(&["us-east-1"]);
        fake.add("us-east-1", KEY, vec![many("a", KEY, 2)]);
        fake.throttles.lock().unwrap().insert("us-east-1".into(), u32::MAX);
        let (start, end) = window();
        let result = collect(&fake, &[KEY.to_string()], false, &[], start, end, 2.0).await;
        assert!(result.records.is_empty());
        assert_eq!(fake.calls().len(), 1 + THROTTLE_RETRIES);
        let status = &report(&result, "us-east-1").status;
        assert!(status.contains("throttled") && status.contains(KEY), "{status}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_denied_region_is_reported_and_the_others_go_on() {
        let mut fake = Fake::new(&["us-east-1", "eu-west-1", "ap-south-1"]);
        fake.add("us-east-1", KEY, vec![many("a", KEY, 50), many("b", KEY, 1)]);
        fake.add("ap-south-1", KEY, vec![many("c", KEY, 4)]);
        fake.denied.insert("eu-west-1".into());
        let (start, end) = window();
        let result = collect(&fake, &[KEY.to_string()], false, &[], start, end, 2.0).await;

        assert_eq!(result.records.len(), 55);
        let denied = report(&result, "eu-west-1");
        assert!(denied.status.contains("denied") && denied.status.contains("AWSCompromisedKeyQuarantine"));
        assert_eq!((denied.pages, denied.events), (0, 0));
        assert_eq!(report(&result, "us-east-1").status, "ok");
        assert_eq!(report(&result, "ap-south-1").status, "ok");
        // Denied is not retried.
        assert_eq!(fake.calls().iter().filter(|c| c.region == "eu-west-1").count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn follows_minted_keys_in_every_region_with_their_chains() {
        let regions = ["us-east-1", "eu-west-1", "ap-south-1"];
        let mut fake = Fake::new(&regions);
        let assume = minting("e1", KEY, "AssumeRole", "2026-01-01T00:01:00Z", "ASIASESSION");
        fake.add("us-east-1", KEY, vec![many("x", KEY, 50), vec![assume.clone()]]);
        // The AssumeRole event comes back for the session key too: kept once.
        let create = minting("e3", "ASIASESSION", "CreateAccessKey", "2026-01-01T00:03:00Z", "AKIABACKDOOR");
        fake.add("us-east-1", "ASIASESSION", vec![vec![assume, create]]);
        fake.add(
            "eu-west-1",
            "ASIASESSION",
            vec![vec![event("e2", "ASIASESSION", "GetCallerIdentity", "2026-01-01T00:02:00Z")]],
        );
        fake.add(
            "ap-south-1",
            "AKIABACKDOOR",
            vec![vec![event("e4", "AKIABACKDOOR", "RunInstances", "2026-01-01T00:04:00Z")]],
        );
        let (start, end) = window();
        let result = collect(&fake, &[KEY.to_string()], true, &[], start, end, 2.0).await;

        let calls = fake.calls();
        for region in regions {
            for key in ["ASIASESSION", "AKIABACKDOOR"] {
                let n = calls.iter().filter(|c| c.region == region && c.key == key).count();
                assert_eq!(n, 1, "{key} in {region}");
            }
        }
        assert_eq!(result.records.len(), 54);
        let chain = |id: &str| {
            result.records.iter().find(|r| r.raw.contains(&format!("\"{id}\""))).map(|r| r.chain.clone()).unwrap()
        };
        assert_eq!(chain("e1"), vec![KEY]);
        assert_eq!(chain("e2"), vec![KEY, "ASIASESSION"]);
        assert_eq!(chain("e3"), vec![KEY, "ASIASESSION"]);
        assert_eq!(chain("e4"), vec![KEY, "ASIASESSION", "AKIABACKDOOR"]);
        assert_eq!(result.records.iter().filter(|r| r.raw.contains("\"e1\"")).count(), 1);
        assert_eq!(result.records.iter().find(|r| r.raw.contains("\"e4\"")).unwrap().region, "ap-south-1");
        let derived: Vec<(&str, &str, &str)> =
            result.derived.iter().map(|d| (d.key.as_str(), d.parent.as_str(), d.event_name.as_str())).collect();
        assert_eq!(
            derived,
            vec![("ASIASESSION", KEY, "AssumeRole"), ("AKIABACKDOOR", "ASIASESSION", "CreateAccessKey")]
        );
        assert_eq!(result.derived[0].principal.as_deref(), Some("arn:aws:sts::1:assumed-role/admin/s"));
        // Oldest first.
        let named: Vec<&str> = result
            .records
            .iter()
            .filter(|r| !r.raw.contains("\"x-"))
            .map(|r| {
                if r.raw.contains("\"e1\"") {
                    "e1"
                } else if r.raw.contains("\"e2\"") {
                    "e2"
                } else if r.raw.contains("\"e3\"") {
                    "e3"
                } else {
                    "e4"
                }
            })
            .collect();
        assert_eq!(named, vec!["e1", "e2", "e3", "e4"]);
        for region in regions {
            let at: Vec<Instant> = calls.iter().filter(|c| c.region == region).map(|c| c.at).collect();
            for pair in at.windows(2) {
                assert!(pair[1] - pair[0] >= Duration::from_millis(500), "{region}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn without_follow_minted_keys_are_not_searched() {
        let mut fake = Fake::new(&["us-east-1"]);
        fake.add("us-east-1", KEY, vec![vec![minting("e1", KEY, "AssumeRole", "2026-01-01T00:01:00Z", "ASIAS")]]);
        let (start, end) = window();
        let result = collect(&fake, &[KEY.to_string()], false, &[], start, end, 2.0).await;
        assert_eq!(ids(&result), vec!["e1"]);
        assert!(result.derived.is_empty());
        assert_eq!(fake.calls().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_is_clamped_to_ninety_days() {
        let mut fake = Fake::new(&["us-east-1", "eu-west-1"]);
        fake.add("us-east-1", KEY, vec![many("a", KEY, 3)]);
        let now = SystemTime::now();
        let result = collect(&fake, &[KEY.to_string()], false, &[], now - days(200), now, 2.0).await;
        assert_eq!(result.records.len(), 3);
        for call in fake.calls() {
            assert!(call.start >= now - RETENTION && call.start <= SystemTime::now() - RETENTION + days(1));
        }
        for r in &result.regions {
            assert_eq!(r.status, "ok");
            assert!(r.covers.contains("90 days"), "{}", r.covers);
        }

        let fake = Fake::new(&["us-east-1"]);
        let result = collect(&fake, &[KEY.to_string()], false, &[], now - days(200), now - days(100), 2.0).await;
        assert!(fake.calls().is_empty());
        assert!(result.regions[0].status.contains("older than the 90 days"), "{}", result.regions[0].status);

        let fake = Fake::new(&["us-east-1"]);
        let result = collect(&fake, &[KEY.to_string()], false, &[], now - days(3), now, 2.0).await;
        assert!(!result.regions[0].covers.contains("90 days"));
        assert!(fake.calls()[0].start == now - days(3));
    }

    #[tokio::test(start_paused = true)]
    async fn given_regions_are_used_and_others_are_not() {
        let mut fake = Fake::new(&["us-east-1", "eu-west-1"]);
        fake.add("eu-west-1", KEY, vec![many("a", KEY, 1)]);
        let (start, end) = window();
        let regions = vec!["eu-west-1".to_string(), "eu-west-1".to_string()];
        let result = collect(&fake, &[KEY.to_string()], false, &regions, start, end, 2.0).await;
        assert_eq!(result.regions.len(), 1);
        assert!(fake.calls().iter().all(|c| c.region == "eu-west-1"));
        assert_eq!(result.records.len(), 1);
    }

    #[test]
    fn error_codes_map_to_kinds() {
        assert!(matches!(classify("ThrottlingException", "Rate exceeded"), HistoryError::Throttled(_)));
        assert!(matches!(classify("AccessDeniedException", "explicit deny"), HistoryError::Denied(_)));
        assert!(matches!(classify("AccessDenied", "x"), HistoryError::Denied(_)));
        assert!(matches!(classify("UnrecognizedClientException", "x"), HistoryError::Denied(_)));
        assert!(matches!(classify("InvalidLookupAttributesException", "x"), HistoryError::Other(_)));
    }
}
