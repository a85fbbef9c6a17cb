//! Retire the old key only on evidence. The outage every rotation tool is blamed for is the
//! consumer nobody listed: rekey moves the key to the targets it was told about, and before it
//! turns the old key off (at the end of `rotate`, in `rekey retire`, in a runner's deferred step)
//! it looks for signs that someone it did not move still signs with it. When there are, the old
//! key stays Active ("held", exit 6) and the output names who still uses it.
//!
//! The sources, and how far behind each one is (AWS publishes no figure for either):
//! - `GetAccessKeyLastUsed`: time, service and Region of the key's most recent use. Cheap, so it is
//!   polled; it trails real use by minutes ([`LAST_USED_LAG`] is what rekey assumes).
//! - CloudTrail event history (`LookupEvents`): who called, from which address, with which user
//!   agent, in which Region. Management events only, shown ~5-15 min after the call
//!   ([`HISTORY_LAG`]), 50 a page at 2 requests/s per Region: read once per check, newest first,
//!   at most [`HISTORY_PAGES`] pages a Region.
//!
//! A use seen after the moment that matters is conclusive. Its absence is only as good as the
//! freshest source, so every check says what it read, when, and what it cannot see yet.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use serde::Serialize;

use crate::incident::history::{EventHistory, HistoryError};
use crate::rotate::clock::Clock;
use crate::rotate::iam::{Iam, IamError, KeyInfo, KeyStatus};

/// How far `GetAccessKeyLastUsed` is assumed to trail real use ("within minutes", no SLA).
pub const LAST_USED_LAG: Duration = Duration::from_secs(15 * 60);
/// How far event history trails real use (AWS: "typically within 5 to 15 minutes").
pub const HISTORY_LAG: Duration = Duration::from_secs(15 * 60);
/// `rekey retire`'s default quiet time: four times the sources' lag, so that a use the sources
/// have not shown yet cannot be the only one in the window.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(3600);
/// How long `rotate` watches the old key after the grace period. It catches consumers that call
/// at least this often and shows up at once in sources without lag; against AWS's lag it is a
/// first look, which the report says (see [`Judgement::caveat`]).
pub const DEFAULT_QUIET: Duration = Duration::from_secs(10);
/// Pause between two polls of `GetAccessKeyLastUsed` while watching.
pub const POLL: Duration = Duration::from_secs(1);
/// Event history pages read per Region and check (50 events a page, newest first).
pub const HISTORY_PAGES: usize = 4;
/// Value prefix of the user tag, keyed by the old access key id, that records a hold and when
/// the last check that held it ran (`rekey-held-at-<rfc3339>`).
pub const HELD_AT: &str = "rekey-held-at-";

/// The time a tag value records a hold at, for `status`, `audit` and runners.
pub fn held_at(tag_value: &str) -> Option<SystemTime> {
    tag_value.strip_prefix(HELD_AT).and_then(rekey_trail::time::parse)
}

/// Records a hold on the user, as a tag keyed by the key id (the console's key description).
pub async fn record_hold(iam: &dyn Iam, clock: &dyn Clock, user: &str, key_id: &str) -> Result<(), IamError> {
    iam.tag_key(user, key_id, &format!("{HELD_AT}{}", rekey_trail::time::format(clock.now()))).await
}

/// What the sources say about uses of `key_id` from `since` until now, in one look: the check of
/// `rekey retire`, and of a runner before a deferred deactivation (`since`: when the grace period
/// ended) or deletion (`since`: when the key was deactivated).
pub async fn check_since(ev: &dyn Evidence, clock: &dyn Clock, key_id: &str, since: SystemTime) -> Judgement {
    let last = ev.last_used(key_id).await;
    let hint = last.as_ref().ok().and_then(|l| l.as_ref()).and_then(|u| u.region.clone());
    let history = ev.history(key_id, since, hint.as_deref()).await;
    judge(key_id, last, history, since, clock.now())
}

/// One caller of a key, as a source saw it. Never holds a secret: key ids, addresses and agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Use {
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub region: Option<String>,
    pub service: Option<String>,
    pub last_seen: String,
    #[serde(skip)]
    pub at: SystemTime,
    /// Calls seen (0 when the source does not count them, as `GetAccessKeyLastUsed`).
    pub calls: u64,
    /// `last-used`, `event-history` or `trail`.
    pub seen_in: &'static str,
}

impl Use {
    /// The one use `GetAccessKeyLastUsed` reports.
    pub fn last_used(at: SystemTime, service: Option<String>, region: Option<String>) -> Use {
        let known = |s: Option<String>| s.filter(|s| !s.is_empty() && s != "N/A");
        Use {
            source_ip: None,
            user_agent: None,
            region: known(region),
            service: known(service),
            last_seen: rekey_trail::time::format(at),
            at,
            calls: 0,
            seen_in: "last-used",
        }
    }
}

impl fmt::Display for Use {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut who = Vec::new();
        if let Some(ip) = &self.source_ip {
            who.push(ip.clone());
        }
        if let Some(ua) = &self.user_agent {
            // Agents run to hundreds of characters; the first words name the program.
            let short: String = ua.chars().take(60).collect();
            who.push(if short.len() < ua.len() { format!("\"{short}…\"") } else { format!("\"{short}\"") });
        }
        if let Some(s) = &self.service {
            who.push(s.clone());
        }
        if who.is_empty() {
            who.push("a caller".into());
        }
        write!(f, "{}", who.join(" "))?;
        if let Some(r) = &self.region {
            write!(f, " in {r}")?;
        }
        write!(f, ", last {}", self.last_seen)?;
        if self.calls > 0 {
            write!(f, " ({} calls)", self.calls)?;
        }
        write!(f, " [{}]", self.seen_in)
    }
}

/// What one source said, and how fresh that is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceCheck {
    pub source: &'static str,
    /// It was read: what it says counts.
    pub ok: bool,
    /// What was read, or why it could not be (the check goes on without it).
    pub status: String,
    pub as_of: String,
    /// How far the source is assumed to trail real use.
    pub lag_secs: u64,
}

/// Where evidence comes from: behind a trait so that the hold can be driven by a fake.
#[async_trait]
pub trait Evidence: Send + Sync {
    /// The key's most recent use, `None` when it was never used.
    async fn last_used(&self, key_id: &str) -> Result<Option<Use>, String>;

    /// The key's callers from `since` on, per (address, agent, Region), with what was read.
    /// `hint_region` is where the key was last used: its history is read first.
    async fn history(&self, key_id: &str, since: SystemTime, hint_region: Option<&str>)
    -> (Vec<Use>, Vec<SourceCheck>);
}

/// `GetAccessKeyLastUsed` through the rotation's own IAM client: the fallback when no other source
/// is wired (the fleet), and all most principals are allowed to read.
pub struct IamLastUsed<'a>(pub &'a dyn Iam);

#[async_trait]
impl Evidence for IamLastUsed<'_> {
    async fn last_used(&self, key_id: &str) -> Result<Option<Use>, String> {
        let lu = self.0.last_used(key_id).await.map_err(|e| e.to_string())?;
        Ok(lu.date.map(|at| Use::last_used(at, lu.service, lu.region)))
    }

    async fn history(&self, _: &str, _: SystemTime, _: Option<&str>) -> (Vec<Use>, Vec<SourceCheck>) {
        (Vec::new(), Vec::new())
    }
}

/// `GetAccessKeyLastUsed` plus a bounded read of event history.
pub struct AwsEvidence {
    iam: crate::rotate::iam::AwsIam,
    history: Box<dyn EventHistory>,
    /// Regions whose history is read besides the last-used one and us-east-1 (IAM and global STS
    /// calls are recorded there).
    regions: Vec<String>,
    /// Requests a second per Region (AWS allows 2).
    rate: f64,
}

impl AwsEvidence {
    pub fn new(sdk: &aws_types::SdkConfig) -> Self {
        let regions = sdk.region().map(|r| vec![r.to_string()]).unwrap_or_default();
        AwsEvidence {
            iam: crate::rotate::iam::AwsIam::new(sdk),
            history: Box::new(crate::incident::history::AwsEventHistory::new(sdk)),
            regions,
            rate: 2.0,
        }
    }

    /// The same sources with another event history (tests, or a scaled rate).
    pub fn with_history(sdk: &aws_types::SdkConfig, history: Box<dyn EventHistory>, rate: f64) -> Self {
        AwsEvidence { history, rate, ..AwsEvidence::new(sdk) }
    }
}

#[async_trait]
impl Evidence for AwsEvidence {
    async fn last_used(&self, key_id: &str) -> Result<Option<Use>, String> {
        IamLastUsed(&self.iam).last_used(key_id).await
    }

    async fn history(&self, key_id: &str, since: SystemTime, hint: Option<&str>) -> (Vec<Use>, Vec<SourceCheck>) {
        let mut regions: Vec<String> = Vec::new();
        for r in hint.into_iter().map(str::to_string).chain(self.regions.iter().cloned()).chain(["us-east-1".into()]) {
            if !regions.contains(&r) {
                regions.push(r);
            }
        }
        read_history(self.history.as_ref(), key_id, since, SystemTime::now(), &regions, HISTORY_PAGES, self.rate).await
    }
}

/// The newest `pages` pages of a key's event history in each Region, grouped by caller. Regions
/// are throttled separately by AWS, so they are read side by side, each paced to `rate`.
pub async fn read_history(
    history: &dyn EventHistory,
    key_id: &str,
    since: SystemTime,
    until: SystemTime,
    regions: &[String],
    pages: usize,
    rate: f64,
) -> (Vec<Use>, Vec<SourceCheck>) {
    let pace = Duration::from_secs_f64(1.0 / if rate.is_finite() && rate > 0.0 { rate } else { 2.0 });
    let reads = regions.iter().map(|region| async move {
        let mut events = Vec::new();
        let mut next = None;
        let mut status = Ok("ok".to_string());
        for page_no in 0..pages {
            if page_no > 0 {
                tokio::time::sleep(pace).await;
            }
            let page = (|| history.lookup(region, key_id, since, until, next.clone()))
                .retry(ExponentialBuilder::default().with_min_delay(pace).with_max_times(3).with_jitter())
                .when(|e| matches!(e, HistoryError::Throttled(_)))
                .await;
            match page {
                Ok(p) => {
                    events.extend(p.events);
                    match p.next {
                        None => break,
                        Some(_) if page_no + 1 == pages => {
                            status = Ok(format!("ok, newest {} events only (bounded to {pages} pages)", events.len()));
                        }
                        Some(t) => next = Some(t),
                    }
                }
                Err(e) => {
                    status = Err(format!("not read: {e}"));
                    break;
                }
            }
        }
        (region.clone(), events, status)
    });
    let results = futures_join(reads.collect()).await;
    let mut uses: Vec<Use> = Vec::new();
    let mut checks = Vec::new();
    for (region, events, status) in results {
        for raw in &events {
            if let Some(u) = use_from_record(raw) {
                merge(&mut uses, u);
            }
        }
        checks.push(SourceCheck {
            source: "event-history",
            ok: status.is_ok(),
            status: format!("{region}: {}", status.unwrap_or_else(|e| e)),
            as_of: rekey_trail::time::format(until),
            lag_secs: HISTORY_LAG.as_secs(),
        });
    }
    uses.sort_by_key(|u| std::cmp::Reverse(u.at));
    (uses, checks)
}

/// Polls every future to completion, in order of the input (a small `join_all`).
async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    out.into_iter().map(|o| o.expect("every future finished")).collect()
}

/// The caller of one CloudTrail record (event history's `CloudTrailEvent`, or a trail file's).
pub fn use_from_record(raw: &str) -> Option<Use> {
    #[derive(serde::Deserialize)]
    struct Rec {
        #[serde(rename = "eventTime")]
        time: Option<String>,
        #[serde(rename = "eventSource")]
        source: Option<String>,
        #[serde(rename = "awsRegion")]
        region: Option<String>,
        #[serde(rename = "sourceIPAddress")]
        ip: Option<String>,
        #[serde(rename = "userAgent")]
        agent: Option<String>,
    }
    let r: Rec = serde_json::from_str(raw).ok()?;
    let at = r.time.as_deref().and_then(rekey_trail::time::parse)?;
    let text = |s: Option<String>| s.filter(|s| !s.is_empty());
    Some(Use {
        source_ip: text(r.ip),
        user_agent: text(r.agent),
        region: text(r.region),
        service: text(r.source).map(|s| s.trim_end_matches(".amazonaws.com").to_string()),
        last_seen: rekey_trail::time::format(at),
        at,
        calls: 1,
        seen_in: "event-history",
    })
}

/// Adds one call to the caller it belongs to (same address, agent and Region).
pub fn merge(uses: &mut Vec<Use>, u: Use) {
    match uses.iter_mut().find(|x| x.source_ip == u.source_ip && x.user_agent == u.user_agent && x.region == u.region) {
        Some(x) => {
            x.calls += u.calls;
            if u.at > x.at {
                x.at = u.at;
                x.last_seen = u.last_seen;
                x.service = u.service;
            }
        }
        None => uses.push(u),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// A use after the moment that matters: someone still signs with the key.
    InUse,
    /// No source shows a use since then (as far as the sources can see yet).
    Unused,
    /// No source could be read: rekey cannot tell, and does not guess.
    Unknown,
    /// Not checked: `--force-deactivate` / `--force`.
    Skipped,
}

/// The answer of a check, for the report and `--output json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Judgement {
    pub key_id: String,
    pub verdict: Verdict,
    /// Uses from this moment on count.
    pub since: String,
    pub checked_at: String,
    /// The callers seen since then: who still uses the key.
    pub consumers: Vec<Use>,
    /// The key's most recent use known, whenever it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_use: Option<Use>,
    pub sources: Vec<SourceCheck>,
    /// What the check cannot see yet, when that matters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caveat: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl Judgement {
    /// The old key must stay Active.
    pub fn holds(&self) -> bool {
        matches!(self.verdict, Verdict::InUse | Verdict::Unknown)
    }

    pub fn skipped(key_id: &str, now: SystemTime, why: &str) -> Judgement {
        let t = rekey_trail::time::format(now);
        Judgement {
            key_id: key_id.to_string(),
            verdict: Verdict::Skipped,
            since: t.clone(),
            checked_at: t,
            consumers: Vec::new(),
            last_use: None,
            sources: Vec::new(),
            caveat: Some(format!("not checked: {why}")),
            warnings: Vec::new(),
        }
    }

    /// One line on what was found, for summaries.
    pub fn summary(&self) -> String {
        match self.verdict {
            Verdict::InUse => format!(
                "{} is still used since {} by: {}",
                self.key_id,
                self.since,
                self.consumers.iter().map(Use::to_string).collect::<Vec<_>>().join("; ")
            ),
            Verdict::Unused => format!(
                "no use of {} since {} ({})",
                self.key_id,
                self.since,
                match &self.last_use {
                    Some(u) => format!("last use: {u}"),
                    None => "never used".into(),
                }
            ),
            Verdict::Unknown => format!(
                "could not tell whether {} is still used: {}",
                self.key_id,
                self.sources.iter().map(|s| format!("{} {}", s.source, s.status)).collect::<Vec<_>>().join("; ")
            ),
            Verdict::Skipped => format!("{}: use not checked", self.key_id),
        }
    }
}

/// Puts what the sources said together. `since` is the moment from which a use means someone
/// rekey did not move; `now` is when the sources were read.
pub fn judge(
    key_id: &str,
    last_used: Result<Option<Use>, String>,
    history: (Vec<Use>, Vec<SourceCheck>),
    since: SystemTime,
    now: SystemTime,
) -> Judgement {
    let fmt = rekey_trail::time::format;
    let mut sources = vec![SourceCheck {
        source: "last-used",
        ok: last_used.is_ok(),
        status: match &last_used {
            Ok(_) => "ok".into(),
            Err(e) => format!("not read: {e}"),
        },
        as_of: fmt(now),
        lag_secs: LAST_USED_LAG.as_secs(),
    }];
    let history_read = history.1.iter().any(|c| c.ok);
    sources.extend(history.1);
    let last = last_used.as_ref().ok().cloned().flatten();
    let mut consumers: Vec<Use> = history.0.into_iter().filter(|u| u.at >= since).collect();
    // The last-used record names a caller only by service and Region: it counts when event
    // history, which names callers better, has none.
    if let Some(l) = last.as_ref().filter(|l| l.at >= since)
        && consumers.is_empty()
    {
        consumers.push(l.clone());
    }
    consumers.sort_by_key(|u| std::cmp::Reverse(u.at));
    let verdict = if !consumers.is_empty() {
        Verdict::InUse
    } else if last_used.is_err() && !history_read {
        Verdict::Unknown
    } else {
        Verdict::Unused
    };
    let watched = now.duration_since(since).unwrap_or_default();
    let lag = if history_read { LAST_USED_LAG.min(HISTORY_LAG) } else { LAST_USED_LAG };
    let caveat = (verdict == Verdict::Unused && watched < lag).then(|| {
        format!(
            "watched {} after {}; the sources trail real use by up to ~{} min, so a use in the last {} min may not \
             show yet: to be sure, keep the old key longer (--grace) and retire it later with `rekey retire`",
            show(watched),
            fmt(since),
            lag.as_secs() / 60,
            lag.as_secs() / 60
        )
    });
    Judgement {
        key_id: key_id.to_string(),
        verdict,
        since: fmt(since),
        checked_at: fmt(now),
        consumers,
        last_use: last,
        sources,
        caveat,
        warnings: Vec::new(),
    }
}

fn show(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h {}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m {}s", s / 60, s % 60)
    } else {
        format!("{}.{}s", s, d.subsec_millis() / 100)
    }
}

/// Watches the key from now for `quiet`, polling its last use; stops at the first use seen.
/// Event history is read once, at the end (or at the first use, to name the caller).
pub async fn watch(ev: &dyn Evidence, clock: &dyn Clock, key_id: &str, quiet: Duration) -> Judgement {
    watch_since(ev, clock, key_id, quiet, clock.now()).await
}

/// [`watch`], where a use from `since` (earlier than now) on counts too: a runner finishing a
/// deferred deactivation counts every use since the grace period ended, not only those it sees.
pub async fn watch_since(
    ev: &dyn Evidence,
    clock: &dyn Clock,
    key_id: &str,
    quiet: Duration,
    since: SystemTime,
) -> Judgement {
    let start = clock.now();
    let since = since.min(start);
    let end = start + quiet;
    let mut last = Err("not read".to_string());
    loop {
        let read = ev.last_used(key_id).await;
        // A read that failed once must not hide one that worked earlier in the window.
        if read.is_ok() || last.is_err() {
            last = read;
        }
        let seen = matches!(&last, Ok(Some(u)) if u.at >= since);
        if seen || clock.until(end).is_zero() {
            break;
        }
        clock.sleep(POLL.min(clock.until(end))).await;
    }
    let hint = last.as_ref().ok().and_then(|l| l.as_ref()).and_then(|u| u.region.clone());
    let history = ev.history(key_id, since, hint.as_deref()).await;
    judge(key_id, last, history, since, clock.now())
}

/// What `rotate` does about the old key's use once every target holds the new key.
#[derive(Clone)]
pub struct Retire {
    /// `--force-deactivate`: deactivate whatever the evidence says.
    pub force: Option<String>,
    /// How long the old key is watched after the grace period.
    pub quiet: Duration,
    /// Where evidence comes from; `None`: `GetAccessKeyLastUsed` through the rotation's IAM client.
    pub source: Option<Arc<dyn Evidence>>,
    /// Uses from this moment on count, not only those seen while watching: for a deferred
    /// deactivation, the end of its grace period (consumers had until then to move).
    pub since: Option<SystemTime>,
}

impl Default for Retire {
    fn default() -> Self {
        Retire { force: None, quiet: DEFAULT_QUIET, source: None, since: None }
    }
}

impl Retire {
    /// Deactivate without looking, saying why (an incident: the leaked key must go off, and the
    /// attacker's own calls are exactly "a consumer rekey did not move").
    pub fn forced(why: &str) -> Retire {
        Retire { force: Some(why.to_string()), ..Retire::default() }
    }
}

impl fmt::Debug for Retire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retire")
            .field("force", &self.force)
            .field("quiet", &self.quiet)
            .field("source", &self.source.as_ref().map(|_| "custom"))
            .field("since", &self.since)
            .finish()
    }
}

/// The rotation's check before deactivation: watch, and when the key holds, record the hold as a
/// user tag (keyed by the old key id, like a console key description) so that `status`, `audit`
/// and any runner see it.
pub async fn before_deactivation(
    retire: &Retire,
    iam: &dyn Iam,
    clock: &dyn Clock,
    user: &str,
    old: &str,
) -> Judgement {
    if let Some(why) = &retire.force {
        return Judgement::skipped(old, clock.now(), why);
    }
    let fallback = IamLastUsed(iam);
    let ev: &dyn Evidence = match &retire.source {
        Some(s) => s.as_ref(),
        None => &fallback,
    };
    let mut j = watch_since(ev, clock, old, retire.quiet, retire.since.unwrap_or_else(|| clock.now())).await;
    if j.holds()
        && let Err(e) = record_hold(iam, clock, user, old).await
    {
        j.warnings.push(format!("could not record the hold on {user} ({e}); runners will not see it"));
    }
    j
}

/// What is left to do after a hold, for the report's "left to do".
pub fn left_after_hold(j: &Judgement, user: &str) -> Vec<String> {
    let mut left = vec![j.summary()];
    if j.verdict == Verdict::InUse {
        left.push(format!(
            "move that consumer to the new key (`rekey discover --user {user}` lists where the user's keys are), \
             then run `rekey retire --user {user}`; or `rekey retire --user {user} --force` to cut it off"
        ));
    } else {
        left.push(format!(
            "once the sources can be read, run `rekey retire --user {user}` (or `--force` to deactivate without looking)"
        ));
    }
    left
}

/// How `rekey retire` ended.
#[derive(Debug, Clone, Serialize)]
pub struct RetireReport {
    pub user: String,
    /// `retired`, `held`, or `nothing_to_retire`.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_key_id: Option<String>,
    pub idle_secs: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Judgement>,
    pub message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RetireError {
    /// Bad input or a state rekey will not act on; nothing changed.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
}

/// Settings of `rekey retire`.
#[derive(Debug, Clone)]
pub struct RetireSettings {
    pub user: String,
    /// The key to retire; default: the older of two Active keys.
    pub key: Option<String>,
    pub idle: Duration,
    pub force: bool,
}

/// Deactivate the user's old (not current) key once it has not been used for `idle`. The key is
/// tagged `rekey-deactivated-at-…` (the tag `rekey run` deletes after `delete_after`).
pub async fn retire(
    iam: &dyn Iam,
    ev: &dyn Evidence,
    clock: &dyn Clock,
    s: &RetireSettings,
) -> Result<RetireReport, RetireError> {
    let user = &s.user;
    let keys = iam.list_keys(user).await.map_err(|e| match e {
        IamError::NoSuchUser(_) => RetireError::Refused(format!("no IAM user named {user:?}; check --user")),
        other => RetireError::Failed(format!("cannot list the access keys of {user}: {other}")),
    })?;
    let mut report = RetireReport {
        user: user.clone(),
        outcome: "nothing_to_retire",
        key_id: None,
        current_key_id: None,
        idle_secs: s.idle.as_secs(),
        evidence: None,
        message: String::new(),
        warnings: Vec::new(),
    };
    let (old, current) = pick_old(&keys, s.key.as_deref(), user)?;
    report.current_key_id = current.map(|k| k.id.clone());
    let Some(old) = old else {
        report.message = match current {
            Some(c) => format!("{user} has one Active key, {}, the current one: nothing to retire", c.id),
            None => format!("{user} has no Active key: nothing to retire"),
        };
        return Ok(report);
    };
    report.key_id = Some(old.id.clone());
    let now = clock.now();
    let judgement = if s.force {
        Judgement::skipped(&old.id, now, "--force")
    } else {
        if s.idle < LAST_USED_LAG {
            report.warnings.push(format!(
                "--idle {} is shorter than the ~{} min GetAccessKeyLastUsed may trail real use: a recent use may not show yet",
                show(s.idle),
                LAST_USED_LAG.as_secs() / 60
            ));
        }
        check_since(ev, clock, &old.id, now.checked_sub(s.idle).unwrap_or(SystemTime::UNIX_EPOCH)).await
    };
    if judgement.holds() {
        report.outcome = "held";
        report.message = format!(
            "{} stays Active: {}; retire it once it has been idle for {} (or --force)",
            old.id,
            judgement.summary(),
            show(s.idle)
        );
        if let Err(e) = record_hold(iam, clock, user, &old.id).await {
            report.warnings.push(format!("could not record the hold on {user} ({e})"));
        }
        report.evidence = Some(judgement);
        return Ok(report);
    }
    iam.set_status(user, &old.id, KeyStatus::Inactive)
        .await
        .map_err(|e| RetireError::Failed(format!("deactivating {}: {e}; it is still Active", old.id)))?;
    let tag = format!("{}{}", crate::fleet::DEACTIVATED_AT, rekey_trail::time::format(clock.now()));
    if let Err(e) = iam.tag_key(user, &old.id, &tag).await {
        report.warnings.push(format!(
            "{} is Inactive, but recording when failed ({e}); `rekey run` will not delete it after delete_after",
            old.id
        ));
    }
    report.outcome = "retired";
    report.message = format!("deactivated {} of {user} ({})", old.id, judgement.summary());
    report.evidence = Some(judgement);
    Ok(report)
}

/// The key to retire and the current one. The current key is the newest Active one: rekey's
/// rotations create the new key, so the older of two Active keys is the one they replaced.
fn pick_old<'a>(
    keys: &'a [KeyInfo],
    wanted: Option<&str>,
    user: &str,
) -> Result<(Option<&'a KeyInfo>, Option<&'a KeyInfo>), RetireError> {
    let active: Vec<&KeyInfo> = keys.iter().filter(|k| k.status == KeyStatus::Active).collect();
    if let Some(id) = wanted {
        let k = keys.iter().find(|k| k.id == id).ok_or_else(|| {
            RetireError::Refused(format!(
                "{user} has no access key {id} (its keys: {}); check --old-key",
                keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>().join(", ")
            ))
        })?;
        if k.status != KeyStatus::Active {
            return Err(RetireError::Refused(format!("{id} of {user} is already Inactive: nothing to retire")));
        }
        if active.len() < 2 {
            return Err(RetireError::Refused(format!(
                "{id} is {user}'s only Active key: retiring it would cut off every consumer; rotate first (`rekey rotate --user {user} …`)"
            )));
        }
        let current = active.iter().find(|k| k.id != id).copied();
        return Ok((Some(k), current));
    }
    match active.as_slice() {
        [] => Ok((None, None)),
        [one] => Ok((None, Some(*one))),
        [a, b] => match (a.created, b.created) {
            (Some(ca), Some(cb)) if ca != cb => Ok(if ca < cb { (Some(*a), Some(*b)) } else { (Some(*b), Some(*a)) }),
            _ => Err(RetireError::Refused(format!(
                "cannot tell which of {user}'s Active keys {} and {} is the old one; name it with --old-key",
                a.id, b.id
            ))),
        },
        _ => Err(RetireError::Refused(format!(
            "{user} has more than two Active keys; name the one to retire with --old-key"
        ))),
    }
}

/// Prints the report of `rekey retire` and says how it ended.
pub fn print_retire(r: &RetireReport, json: bool) -> crate::exit::Status {
    if json {
        println!("{}", serde_json::to_string_pretty(r).expect("the report serializes"));
    } else {
        println!("{}: {}", r.outcome.replace('_', " "), r.message);
        if let Some(j) = &r.evidence {
            for s in &j.sources {
                println!(
                    "  checked {} as of {}: {} (trails real use by up to ~{} min)",
                    s.source,
                    s.as_of,
                    s.status,
                    s.lag_secs / 60
                );
            }
            if let Some(c) = &j.caveat {
                println!("  note: {c}");
            }
        }
        for w in &r.warnings {
            println!("  warning: {w}");
        }
    }
    if r.outcome == "held" {
        eprintln!("rekey: held: {}", r.message);
        crate::exit::Status::Held
    } else {
        crate::exit::Status::Ok
    }
}

#[cfg(test)]
#[path = "evidence_tests.rs"]
mod tests;
