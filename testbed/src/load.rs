//! Steady GET traffic against the app while a rotation runs: a single failed request during
//! the rotation is downtime.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// A stuck rotation must not keep a test (or CI) busy forever.
pub const MAX_DURATION: Duration = Duration::from_secs(600);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const KEEP_FAILURES: usize = 20;
const MIN_RPS: u32 = 20;

#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub total: u64,
    pub failed: u64,
    /// The first few failures, as "#n +seconds: reason".
    pub first_failures: Vec<String>,
}

/// Running load; [`Load::stop`] waits for in-flight requests and reports.
pub struct Load {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<LoadReport>,
}

/// Sends GET `url` at `rps` requests a second (at least 20), each in its own task so a slow
/// answer does not lower the rate. Must be called inside a tokio runtime.
pub fn start(url: String, rps: u32) -> Load {
    let rps = rps.max(MIN_RPS);
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(run(url, rps, stop_rx));
    Load { stop: Some(stop_tx), task }
}

impl Load {
    pub async fn stop(mut self) -> LoadReport {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(report) => report,
            Err(e) => LoadReport { total: 0, failed: 1, first_failures: vec![format!("load generator crashed: {e}")] },
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Tally {
    total: u64,
    failed: u64,
    first_failures: Vec<String>,
}

async fn run(url: String, rps: u32, mut stop: oneshot::Receiver<()>) -> LoadReport {
    let tally = Arc::new(Mutex::new(Tally { total: 0, failed: 0, first_failures: Vec::new() }));
    let client = match reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build() {
        Ok(client) => client,
        Err(e) => {
            return LoadReport { total: 0, failed: 1, first_failures: vec![format!("cannot build HTTP client: {e}")] };
        }
    };
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / rps);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = tokio::time::sleep(MAX_DURATION);
    tokio::pin!(deadline);
    let mut in_flight = JoinSet::new();
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            () = &mut deadline => break,
            _ = ticker.tick() => {}
        }
        n += 1;
        let (client, url, tally) = (client.clone(), url.clone(), tally.clone());
        in_flight.spawn(async move {
            let outcome = match client.get(&url).send().await {
                Ok(resp) if resp.status().is_success() => Ok(()),
                Ok(resp) => {
                    let status = resp.status();
                    let body = resp.text().await.unwrap_or_default();
                    Err(format!("{status}: {}", body.trim()))
                }
                Err(e) => Err(format!("request error: {e}")),
            };
            let Ok(mut tally) = tally.lock() else { return };
            tally.total += 1;
            if let Err(reason) = outcome {
                tally.failed += 1;
                if tally.first_failures.len() < KEEP_FAILURES {
                    let at = started.elapsed().as_secs_f64();
                    tally.first_failures.push(format!("#{n} +{at:.2}s: {reason}"));
                }
            }
        });
        // Reap finished requests so the set does not grow for the whole run.
        while in_flight.try_join_next().is_some() {}
    }
    while in_flight.join_next().await.is_some() {}
    let Ok(tally) = tally.lock() else {
        return LoadReport { total: 0, failed: 1, first_failures: vec!["load tally lock poisoned".to_string()] };
    };
    LoadReport { total: tally.total, failed: tally.failed, first_failures: tally.first_failures.clone() }
}
