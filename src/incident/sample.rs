//! The bounded sample the fence is learnt from: the key's own recent use, read in seconds whatever
//! the size of its history.
//!
//! Reading a busy key's whole event history takes minutes to hours (50 events a page, 2 requests/s
//! per Region); the attacker keeps acting all that time. So the fence is learnt from a sample that
//! is bounded in requests and in seconds:
//! - event history, in every Region at once: the newest pages of the window, then one page ending
//!   at each of a few earlier moments (1, 3 and 7 days ago), so that sources seen on several days
//!   show up even when the newest pages are all the attacker's;
//! - trail log files of the most recent days, newest day first, until the deadline.
//!
//! The sample can miss a source the application uses rarely; the probes behind the fence catch
//! that, and the fence is then widened from the full history (see `run`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::fence::SourceEvent;
use super::history::{EventHistory, HistoryError};
use super::investigate::{OpenS3, Trails};

/// How much the sample may read.
#[derive(Debug, Clone)]
pub struct Bounds {
    /// Newest pages of the window, per Region.
    pub newest_pages: usize,
    /// One more page ending this long before now, per Region, each.
    pub earlier: Vec<Duration>,
    /// Requests per second per Region (AWS allows 2).
    pub rate: f64,
    /// The whole sample, event history and trail files together.
    pub deadline: Duration,
    /// Days of trail files, newest first.
    pub trail_days: u32,
}

impl Default for Bounds {
    fn default() -> Self {
        let day = Duration::from_secs(86_400);
        Bounds {
            newest_pages: 3,
            earlier: vec![day, day * 3, day * 7],
            rate: super::history::DEFAULT_RATE_PER_REGION,
            deadline: Duration::from_secs(6),
            trail_days: 7,
        }
    }
}

impl Bounds {
    /// Requests per Region at most, throttling retries included.
    pub fn max_requests_per_region(&self) -> usize {
        (self.newest_pages + self.earlier.len()) * 2
    }
}

#[derive(Debug, Default)]
pub struct Sample {
    /// Events signed by the key itself, from every source read.
    pub events: Vec<SourceEvent>,
    pub history_requests: usize,
    pub history_events: usize,
    pub trail_events: usize,
    pub elapsed: Duration,
    /// What the sample could not read, and where the deadline cut it short.
    pub notes: Vec<String>,
}

impl Sample {
    /// One line for the report.
    pub fn describe(&self) -> String {
        format!(
            "a bounded sample of the key's own use read in {:.1} s: {} event history record(s) in {} request(s), {} \
             trail record(s){}",
            self.elapsed.as_secs_f64(),
            self.history_events,
            self.history_requests,
            self.trail_events,
            if self.notes.is_empty() { String::new() } else { format!(" ({})", self.notes.join("; ")) }
        )
    }
}

pub struct Inputs<'a> {
    pub key: String,
    /// The investigation window: the sample never reads before its start.
    pub start: SystemTime,
    pub history: Option<&'a dyn EventHistory>,
    /// Regions to read; empty: every enabled Region.
    pub regions: Vec<String>,
    pub trails: Option<&'a dyn Trails>,
    pub open_s3: OpenS3<'a>,
    /// `--logs` sources (opened for the sample alone: the full investigation reads its own).
    pub logs: Vec<(String, Box<dyn rekey_trail::Source>)>,
    pub bounds: Bounds,
}

/// Reads the sample; never fails and never runs past `bounds.deadline` (plus one request's latency).
pub async fn sample(mut inputs: Inputs<'_>) -> Sample {
    let logs = std::mem::take(&mut inputs.logs);
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + inputs.bounds.deadline;
    let now = SystemTime::now();
    let (history, trails) = tokio::join!(
        history_sample(&inputs, now, deadline),
        trail_sample(inputs.trails, inputs.open_s3, logs, &inputs.key, inputs.start, now, &inputs.bounds, deadline)
    );
    let mut out = Sample { elapsed: started.elapsed(), ..Sample::default() };
    out.history_requests = history.requests;
    out.history_events = history.events.len();
    out.trail_events = trails.0.len();
    out.notes.extend(history.notes);
    out.notes.extend(trails.1);
    out.events = history.events.into_iter().chain(trails.0).collect();
    out
}

#[derive(Default)]
struct HistorySample {
    events: Vec<SourceEvent>,
    requests: usize,
    notes: Vec<String>,
}

async fn history_sample(inputs: &Inputs<'_>, now: SystemTime, deadline: tokio::time::Instant) -> HistorySample {
    let Some(history) = inputs.history else { return HistorySample::default() };
    let regions = if inputs.regions.is_empty() {
        match tokio::time::timeout_at(deadline, history.regions()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                return HistorySample {
                    notes: vec![format!("event history not sampled: the Regions could not be listed ({e})")],
                    ..HistorySample::default()
                };
            }
            Err(_) => {
                return HistorySample {
                    notes: vec!["event history not sampled: listing the Regions took past the deadline".into()],
                    ..HistorySample::default()
                };
            }
        }
    } else {
        inputs.regions.clone()
    };
    let shared = Mutex::new(HistorySample::default());
    let per_region = regions.iter().map(|region| {
        let shared = &shared;
        async move {
            let done = tokio::time::timeout_at(deadline, region_sample(history, region, inputs, now, shared)).await;
            if done.is_err() {
                shared.lock().expect("sample lock").notes.push(format!("{region}: cut short by the deadline"));
            }
        }
    });
    super::history::join_all(per_region.collect()).await;
    shared.into_inner().expect("sample lock")
}

/// The newest pages of the window, then one page ending at each earlier moment.
async fn region_sample(
    history: &dyn EventHistory,
    region: &str,
    inputs: &Inputs<'_>,
    now: SystemTime,
    shared: &Mutex<HistorySample>,
) {
    let bounds = &inputs.bounds;
    let interval = Duration::from_secs_f64(1.0 / if bounds.rate > 0.0 { bounds.rate } else { 2.0 });
    let mut budget = bounds.max_requests_per_region();
    let mut next_at = tokio::time::Instant::now();
    // (end of the slice, pages wanted)
    let mut slices: Vec<(SystemTime, usize)> = vec![(now, bounds.newest_pages)];
    slices.extend(
        bounds.earlier.iter().filter_map(|d| now.checked_sub(*d)).filter(|end| *end > inputs.start).map(|end| (end, 1)),
    );
    for (end, pages) in slices {
        let mut token: Option<String> = None;
        let mut read = 0;
        while read < pages && budget > 0 {
            tokio::time::sleep_until(next_at).await;
            next_at = tokio::time::Instant::now() + interval;
            budget -= 1;
            shared.lock().expect("sample lock").requests += 1;
            match history.lookup(region, &inputs.key, inputs.start, end, token.clone()).await {
                Ok(page) => {
                    read += 1;
                    let mut s = shared.lock().expect("sample lock");
                    for raw in &page.events {
                        if let Ok(v) = serde_json::from_str::<serde_json::Value>(raw)
                            && signer(&v) == Some(inputs.key.as_str())
                        {
                            s.events.push(SourceEvent::from_record(&v));
                        }
                    }
                    match page.next {
                        Some(t) if token.as_deref() != Some(t.as_str()) => token = Some(t),
                        _ => break,
                    }
                }
                // Another reader shares the account's budget: wait a little and try again.
                Err(HistoryError::Throttled(_)) => next_at += Duration::from_secs(1),
                Err(e) => {
                    shared.lock().expect("sample lock").notes.push(format!("{region}: {e}"));
                    return;
                }
            }
        }
    }
}

fn signer(record: &serde_json::Value) -> Option<&str> {
    record.get("userIdentity").and_then(|u| u.get("accessKeyId")).and_then(|k| k.as_str())
}

/// Trail files of the most recent days, newest day first, until the deadline. The scan runs on a
/// blocking thread; at the deadline it is told to stop, and starts no more file: the sample returns
/// with what was found by then, and the scan does not read on in the background beside the
/// investigation.
#[allow(clippy::too_many_arguments)]
async fn trail_sample(
    trails: Option<&dyn Trails>,
    open_s3: OpenS3<'_>,
    mut sources: Vec<(String, Box<dyn rekey_trail::Source>)>,
    key: &str,
    start: SystemTime,
    now: SystemTime,
    bounds: &Bounds,
    deadline: tokio::time::Instant,
) -> (Vec<SourceEvent>, Vec<String>) {
    let mut notes = Vec::new();
    if let Some(trails) = trails {
        match tokio::time::timeout_at(deadline, trails.describe()).await {
            Ok(Ok(list)) => {
                for t in list {
                    let Some(bucket) = &t.bucket else { continue };
                    let url = match t.prefix.as_deref().filter(|p| !p.is_empty()) {
                        Some(p) => format!("s3://{bucket}/{}/", p.trim_end_matches('/')),
                        None => format!("s3://{bucket}/"),
                    };
                    if sources.iter().any(|(n, _)| *n == url) {
                        continue;
                    }
                    match open_s3(&url) {
                        Ok(s) => sources.push((url, s)),
                        Err(e) => notes.push(format!("trail {}: {e}", t.name)),
                    }
                }
            }
            Ok(Err(e)) => notes.push(format!("trails not sampled: {e}")),
            Err(_) => notes.push("trails not sampled: listing them took past the deadline".into()),
        }
    }
    if sources.is_empty() || bounds.trail_days == 0 {
        return (Vec::new(), notes);
    }
    let found = Arc::new(Mutex::new(Vec::<SourceEvent>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let days_read = Arc::new(Mutex::new(0u32));
    let task = {
        let (found, stop, days_read, key) = (found.clone(), stop.clone(), days_read.clone(), key.to_string());
        let days = bounds.trail_days;
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&dyn rekey_trail::Source> = sources.iter().map(|(_, s)| s.as_ref()).collect();
            let day = Duration::from_secs(86_400);
            for d in 0..days {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let until = now - day * d;
                let since = (now - day * (d + 1)).max(start);
                if until <= start {
                    break;
                }
                let mut query = rekey_trail::Query::new(vec![key.clone()]);
                query.since = Some(since);
                query.until = Some(until);
                query.stop = Some(stop.clone());
                let scanned = rekey_trail::scan(&refs, &query, &mut |m| {
                    if m.chain.len() == 1
                        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&m.raw)
                    {
                        found.lock().expect("sample lock").push(SourceEvent::from_record(&v));
                    }
                });
                // A day cut short by the deadline is not a day read.
                if scanned.is_ok_and(|s| s.stopped) {
                    break;
                }
                *days_read.lock().expect("sample lock") = d + 1;
            }
        })
    };
    if tokio::time::timeout_at(deadline, task).await.is_err() {
        stop.store(true, Ordering::Relaxed);
        notes.push(format!(
            "trail files: {} of {} day(s) read before the deadline",
            *days_read.lock().expect("sample lock"),
            bounds.trail_days
        ));
    }
    let events = std::mem::take(&mut *found.lock().expect("sample lock"));
    (events, notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incident::history::Page;
    use async_trait::async_trait;

    const KEY: &str = "AKIAEXAMPLEKEY000001";

    /// A history of `total` events, one a minute, newest first, 50 a page, whatever the slice:
    /// reading all of it would take `total / 50 / 2` seconds.
    struct Busy {
        total: usize,
        calls: Mutex<Vec<tokio::time::Instant>>,
    }

    #[async_trait]
    impl EventHistory for Busy {
        async fn regions(&self) -> Result<Vec<String>, HistoryError> {
            Ok(vec!["us-east-1".into(), "eu-west-1".into()])
        }

        async fn lookup(
            &self,
            _region: &str,
            key: &str,
            _start: SystemTime,
            end: SystemTime,
            next: Option<String>,
        ) -> Result<Page, HistoryError> {
            self.calls.lock().unwrap().push(tokio::time::Instant::now());
            let from: usize = next.as_deref().map_or(0, |n| n.parse().unwrap());
            let events = (from..(from + 50).min(self.total))
                .map(|i| {
                    let t = end - Duration::from_secs(60 * i as u64 + 1);
                    serde_json::json!({
                        "eventTime": rekey_trail::time::format(t),
                        "sourceIPAddress": if i % 2 == 0 { "203.0.113.10" } else { "198.51.100.50" },
                        "userIdentity": {"accessKeyId": key},
                    })
                    .to_string()
                })
                .collect();
            let next = (from + 50 < self.total).then(|| (from + 50).to_string());
            Ok(Page { events, next })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_sample_is_bounded_in_requests_and_time_whatever_the_history() {
        for total in [30_000, 3_000_000] {
            let busy = Busy { total, calls: Mutex::new(Vec::new()) };
            let started = tokio::time::Instant::now();
            let s = sample(Inputs {
                key: KEY.into(),
                start: SystemTime::now() - Duration::from_secs(30 * 86_400),
                history: Some(&busy),
                regions: Vec::new(),
                trails: None,
                open_s3: &|_| Err("no S3 here".into()),
                logs: Vec::new(),
                bounds: Bounds::default(),
            })
            .await;
            let bounds = Bounds::default();
            let calls = busy.calls.lock().unwrap().clone();
            assert!(calls.len() <= 2 * bounds.max_requests_per_region(), "{} requests", calls.len());
            assert_eq!(calls.len(), 2 * (bounds.newest_pages + bounds.earlier.len()));
            assert!(started.elapsed() <= bounds.deadline, "{:?}", started.elapsed());
            // Sampled at the real rate: two Regions in parallel, 2 requests/s each.
            assert!(started.elapsed() >= Duration::from_millis(500 * 5));
            assert_eq!(s.history_events, 2 * 6 * 50);
            assert_eq!(s.history_requests, calls.len());
        }
    }

    /// Trail files slower to read than the deadline allows: the sample returns at the deadline with
    /// what it found, and the scan stops with it rather than read on in the background.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_trail_scan_stops_at_the_deadline() {
        struct Slow {
            fetched: Arc<std::sync::atomic::AtomicUsize>,
        }
        impl rekey_trail::Source for Slow {
            fn describe(&self) -> String {
                "slow".into()
            }
            fn list(
                &self,
                _: Option<SystemTime>,
                _: Option<SystemTime>,
            ) -> Result<Vec<rekey_trail::Item>, rekey_trail::SourceError> {
                Ok((0..200).map(|i| rekey_trail::Item::new(format!("f{i}.json"), Some(200))).collect())
            }
            fn fetch(&self, item: &rekey_trail::Item) -> Result<Vec<u8>, rekey_trail::SourceError> {
                std::thread::sleep(Duration::from_millis(25));
                self.fetched.fetch_add(1, Ordering::SeqCst);
                let now = humantime::format_rfc3339_seconds(SystemTime::now());
                Ok(format!(
                    r#"{{"Records":[{{"eventID":"{}","eventTime":"{now}","eventName":"ListBuckets","sourceIPAddress":"198.51.100.50","userIdentity":{{"accessKeyId":"{KEY}"}}}}]}}"#,
                    item.name
                )
                .into_bytes())
            }
        }
        let fetched = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let bounds = Bounds { deadline: Duration::from_millis(500), ..Bounds::default() };
        let started = Instant::now();
        let s = sample(Inputs {
            key: KEY.into(),
            start: SystemTime::now() - Duration::from_secs(86_400),
            history: None,
            regions: Vec::new(),
            trails: None,
            open_s3: &|_| Err("no S3 here".into()),
            logs: vec![("slow".into(), Box::new(Slow { fetched: fetched.clone() }))],
            bounds: bounds.clone(),
        })
        .await;
        let at_return = fetched.load(Ordering::SeqCst);
        // Reading everything would take 5 s; the margin is for a loaded machine.
        assert!(started.elapsed() < bounds.deadline + Duration::from_secs(2), "{:?}", started.elapsed());
        assert!(s.trail_events > 0 && s.trail_events < 200, "{} trail events", s.trail_events);
        assert!(s.notes.iter().any(|n| n.contains("0 of 7 day(s) read before the deadline")), "{:?}", s.notes);
        // 200 files at 25 ms would keep a scan that ignored the deadline reading for 5 s.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let later = fetched.load(Ordering::SeqCst);
        assert!(later <= at_return + 2, "the scan read on after the deadline: {at_return} then {later} files");
    }

    /// A Region that throttles every request is cut by the deadline, and the others are kept.
    #[tokio::test(start_paused = true)]
    async fn endless_throttling_is_cut_by_the_deadline() {
        struct Throttled;
        #[async_trait]
        impl EventHistory for Throttled {
            async fn regions(&self) -> Result<Vec<String>, HistoryError> {
                Ok(vec!["us-east-1".into()])
            }
            async fn lookup(
                &self,
                _: &str,
                _: &str,
                _: SystemTime,
                _: SystemTime,
                _: Option<String>,
            ) -> Result<Page, HistoryError> {
                Err(HistoryError::Throttled("Rate exceeded".into()))
            }
        }
        let started = tokio::time::Instant::now();
        let s = sample(Inputs {
            key: KEY.into(),
            start: SystemTime::now() - Duration::from_secs(86_400),
            history: Some(&Throttled),
            regions: Vec::new(),
            trails: None,
            open_s3: &|_| Err("no S3 here".into()),
            logs: Vec::new(),
            bounds: Bounds::default(),
        })
        .await;
        assert!(started.elapsed() <= Bounds::default().deadline + Duration::from_millis(1));
        assert!(s.events.is_empty());
        assert!(s.history_requests <= Bounds::default().max_requests_per_region());
    }
}
