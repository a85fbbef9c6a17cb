//! The one waiting loop that key verification and health probes share: a check must pass several
//! times in a row, with backoff after failures, within a deadline.
//!
//! One success is not proof: IAM propagates a new key to STS endpoints over 5-20 s and a key that
//! worked once can still fail the next call (aws-rotate-iam-keys #81). Requiring a streak catches that.
//! Nor is a streak of single calls: behind each endpoint are many hosts that learn the key one by
//! one, and when most already know it a few lucky calls in a row prove little while the
//! application's next requests land on the hosts that do not. So the new key is verified in
//! rounds ([`until_propagated`]): many calls at once, each on a connection of its own, per Region,
//! and a round passes only when at most a set fraction of them was refused.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use rekey_adapters::NewKey;

use crate::progress::Progress;
use crate::rotate::clock::Clock;
use crate::rotate::iam::{Answer, KeyCheck};

#[derive(Debug, Clone)]
pub struct Streak {
    /// Successes needed in a row.
    pub successes: u32,
    /// Bound on the whole wait.
    pub timeout: Duration,
    /// Pause between two successful checks, so that a streak spans some time.
    pub interval: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("no {needed} successes in a row within {timeout:?} ({attempts} attempts; last error: {last_error})")]
pub struct StreakFailed {
    pub needed: u32,
    pub timeout: Duration,
    pub attempts: u32,
    pub last_error: String,
}

/// Run `check` until it succeeds `streak.successes` times in a row. Returns the number of attempts.
pub async fn until_streak<F, Fut>(
    clock: &dyn Clock,
    streak: &Streak,
    progress: &Progress,
    what: &str,
    check: F,
) -> Result<u32, StreakFailed>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    until_streak_paced(clock, streak, Duration::from_secs(5), progress, what, check).await
}

/// [`until_streak`] with backoff after failures up to `max_backoff`.
async fn until_streak_paced<F, Fut>(
    clock: &dyn Clock,
    streak: &Streak,
    max_backoff: Duration,
    progress: &Progress,
    what: &str,
    mut check: F,
) -> Result<u32, StreakFailed>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = clock.now() + streak.timeout;
    let new_backoff = || {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(max_backoff)
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut backoff = new_backoff();
    let (mut in_a_row, mut attempts) = (0u32, 0u32);
    let mut last_error = String::from("none");
    loop {
        attempts += 1;
        // A check in flight ends at the deadline too: a hung call must not stretch the bound.
        let left = clock.until(deadline);
        let outcome = tokio::select! {
            biased;
            r = check() => r,
            () = clock.sleep(left) => Err(format!("no answer before the deadline ({:?})", streak.timeout)),
        };
        match outcome {
            Ok(()) => {
                in_a_row += 1;
                backoff = new_backoff();
                progress.update(&format!("{what}: {in_a_row}/{} in a row", streak.successes));
                if in_a_row >= streak.successes {
                    return Ok(attempts);
                }
            }
            Err(e) => {
                tracing::debug!(%what, attempt = attempts, error = %e, "check failed");
                progress.update(&format!("{what}: waiting ({e})"));
                last_error = e;
                in_a_row = 0;
            }
        }
        let pause = if in_a_row > 0 { streak.interval } else { backoff.next().unwrap_or(max_backoff) };
        let left = clock.until(deadline);
        if left.is_zero() {
            break;
        }
        clock.sleep(pause.min(left)).await;
        if clock.until(deadline).is_zero() && in_a_row == 0 {
            break;
        }
    }
    Err(StreakFailed { needed: streak.successes, timeout: streak.timeout, attempts, last_error })
}

/// How the new key is verified before any target gets it.
#[derive(Debug, Clone)]
pub struct Verify {
    /// Rounds that must pass in a row, the pause between two, and the bound on the whole wait.
    pub rounds: Streak,
    /// Checks per Region in each round, all sent at once.
    pub checks: u32,
    /// The fraction of a Region's answered checks that may still refuse the key in a passing round.
    pub max_reject: f64,
}

/// The longest pause after a failed round of key checks.
const ROUND_BACKOFF: Duration = Duration::from_secs(1);

/// Wait until the new key is accepted in every Region by all but `max_reject` of the hosts a
/// round of checks reaches, `rounds.successes` rounds in a row. Returns the rounds run.
pub async fn until_propagated(
    clock: &dyn Clock,
    verify: &Verify,
    progress: &Progress,
    what: &str,
    key_check: &dyn KeyCheck,
    key: &NewKey,
) -> Result<u32, StreakFailed> {
    let regions = key_check.regions();
    // A round is cheap and the key arrives any moment: each second of backoff past that moment is a
    // second every rotation waits for nothing.
    let check = || round(verify, &regions, key_check, key);
    until_streak_paced(clock, &verify.rounds, ROUND_BACKOFF, progress, what, check).await
}

#[derive(Debug, Default)]
struct Tally {
    accepted: u32,
    rejected: u32,
    inconclusive: u32,
    last_rejection: Option<String>,
    last_inconclusive: Option<String>,
}

/// One round: `checks` calls per Region at once. A Region passes when at least half of its calls
/// got an answer about the key (throttling and server errors say nothing about it) and at most
/// `max_reject` of the answers were refusals.
async fn round(verify: &Verify, regions: &[String], key_check: &dyn KeyCheck, key: &NewKey) -> Result<(), String> {
    let checks = verify.checks.max(1);
    let calls: Vec<_> = (0..regions.len())
        .flat_map(|region| (0..checks).map(move |_| region))
        .map(|region| async move { (region, key_check.check(key, region).await) })
        .collect();
    let mut tallies: Vec<Tally> = regions.iter().map(|_| Tally::default()).collect();
    for (region, answer) in join_all(calls).await {
        let t = &mut tallies[region];
        match answer {
            Answer::Accepted => t.accepted += 1,
            Answer::Rejected(code) => {
                t.rejected += 1;
                t.last_rejection = Some(code);
            }
            Answer::Inconclusive(why) => {
                t.inconclusive += 1;
                t.last_inconclusive = Some(why);
            }
        }
    }
    let mut problems = Vec::new();
    for (name, t) in regions.iter().zip(&tallies) {
        let answered = t.accepted + t.rejected;
        let allowed = (verify.max_reject * f64::from(answered) + 1e-9).floor() as u32;
        if answered * 2 < checks {
            let why = t.last_inconclusive.as_deref().unwrap_or("no answer");
            problems.push(format!("{name}: only {answered} of {checks} checks answered ({why})"));
        } else if t.rejected > allowed {
            let code = t.last_rejection.as_deref().unwrap_or("refused");
            problems.push(format!("{name}: {} of {answered} checks refused the key ({code})", t.rejected));
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

/// Runs the futures concurrently on this task and returns their outputs in order: the checks
/// borrow the key and the checker, which a spawned task could not.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(v) => *output = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending { Poll::Pending } else { Poll::Ready(()) }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotate::fakes::FakeClock;
    use async_trait::async_trait;
    use std::cell::Cell;
    use std::sync::Mutex;

    fn streak(n: u32) -> Streak {
        Streak { successes: n, timeout: Duration::from_secs(60), interval: Duration::from_secs(1) }
    }

    #[tokio::test]
    async fn a_failure_resets_the_streak() {
        let clock = FakeClock::new();
        let results = [true, true, false, true, true, true];
        let i = Cell::new(0);
        let attempts = until_streak(&clock, &streak(3), &Progress::off(), "t", || {
            let ok = results[i.get()];
            i.set(i.get() + 1);
            async move { if ok { Ok(()) } else { Err("InvalidClientTokenId".into()) } }
        })
        .await
        .unwrap();
        assert_eq!(attempts, 6);
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline_with_the_last_error() {
        let clock = FakeClock::new();
        let err =
            until_streak(&clock, &streak(3), &Progress::off(), "t", || async { Err("InvalidClientTokenId".into()) })
                .await
                .unwrap_err();
        assert_eq!(err.last_error, "InvalidClientTokenId");
        assert!(clock.elapsed() >= Duration::from_secs(60) && clock.elapsed() < Duration::from_secs(66));
    }

    #[tokio::test]
    async fn a_check_that_never_answers_ends_at_the_deadline() {
        let clock = FakeClock::new();
        let err = until_streak(&clock, &streak(3), &Progress::off(), "t", std::future::pending::<Result<(), String>>)
            .await
            .unwrap_err();
        assert!(err.last_error.contains("no answer before the deadline"), "{}", err.last_error);
        assert_eq!(err.attempts, 1);
        assert_eq!(clock.elapsed(), Duration::from_secs(60));
    }

    /// Hosts behind each Region's endpoint, of which the first `known[region]` know the key; each
    /// check lands on the next host in turn, as fresh connections spread over them.
    struct Hosts {
        regions: Vec<String>,
        hosts: u32,
        known: Mutex<Vec<u32>>,
        next: Mutex<Vec<u32>>,
        throttled_every: Option<u32>,
        /// One more host knows the key after every this many checks.
        learn_every: Option<u32>,
        calls: Mutex<u32>,
    }

    impl Hosts {
        fn new(regions: &[&str], hosts: u32, known: &[u32]) -> Hosts {
            Hosts {
                regions: regions.iter().map(|r| r.to_string()).collect(),
                hosts,
                known: Mutex::new(known.to_vec()),
                next: Mutex::new(vec![0; regions.len()]),
                throttled_every: None,
                learn_every: None,
                calls: Mutex::new(0),
            }
        }
    }

    #[async_trait]
    impl KeyCheck for Hosts {
        fn regions(&self) -> Vec<String> {
            self.regions.clone()
        }

        async fn check(&self, _key: &NewKey, region: usize) -> Answer {
            let n = {
                let mut calls = self.calls.lock().unwrap();
                *calls += 1;
                *calls
            };
            if self.throttled_every.is_some_and(|every| n % every == 0) {
                return Answer::Inconclusive("Throttling".into());
            }
            let host = {
                let mut next = self.next.lock().unwrap();
                next[region] = (next[region] + 1) % self.hosts;
                next[region]
            };
            // No await point: the fake clock's deadline sleep would jump to the deadline meanwhile.
            let known = self.known.lock().unwrap()[region];
            if self.learn_every.is_some_and(|every| n % every == 0) {
                let mut known = self.known.lock().unwrap();
                known[region] = (known[region] + 1).min(self.hosts);
            }
            if host < known { Answer::Accepted } else { Answer::Rejected("InvalidClientTokenId".into()) }
        }
    }

    fn verify(checks: u32, max_reject: f64) -> Verify {
        Verify {
            rounds: Streak { successes: 1, timeout: Duration::ZERO, interval: Duration::ZERO },
            checks,
            max_reject,
        }
    }

    fn key() -> NewKey {
        NewKey::new("AKIANEW0000000000001", secrecy::SecretString::from("s".repeat(40)))
    }

    #[tokio::test]
    async fn one_host_in_eight_that_refuses_fails_the_round() {
        let hosts = Hosts::new(&["us-east-1"], 8, &[7]);
        let err = round(&verify(32, 0.0), &hosts.regions(), &hosts, &key()).await.unwrap_err();
        assert_eq!(err, "us-east-1: 4 of 32 checks refused the key (InvalidClientTokenId)");
        // A streak of single calls from the first host on would have passed seven times in a row.
        assert_eq!(*hosts.calls.lock().unwrap(), 32, "all the checks of the round ran");
    }

    #[tokio::test]
    async fn the_bound_allows_that_fraction_of_refusals() {
        let hosts = Hosts::new(&["us-east-1"], 8, &[7]);
        round(&verify(32, 0.125), &hosts.regions(), &hosts, &key()).await.unwrap();
        let hosts = Hosts::new(&["us-east-1"], 8, &[6]);
        assert!(round(&verify(32, 0.125), &hosts.regions(), &hosts, &key()).await.is_err());
    }

    #[tokio::test]
    async fn every_region_must_pass_on_its_own() {
        let hosts = Hosts::new(&["us-east-1", "eu-west-1"], 4, &[4, 3]);
        let err = round(&verify(16, 0.0), &hosts.regions(), &hosts, &key()).await.unwrap_err();
        assert!(err.starts_with("eu-west-1: 4 of 16 checks refused"), "{err}");
        assert!(!err.contains("us-east-1"), "{err}");
    }

    #[tokio::test]
    async fn throttled_checks_neither_pass_nor_fail_a_round() {
        let mut hosts = Hosts::new(&["us-east-1"], 4, &[4]);
        hosts.throttled_every = Some(4);
        round(&verify(32, 0.0), &hosts.regions(), &hosts, &key()).await.unwrap();
        let mut hosts = Hosts::new(&["us-east-1"], 4, &[4]);
        hosts.throttled_every = Some(1);
        let err = round(&verify(32, 0.0), &hosts.regions(), &hosts, &key()).await.unwrap_err();
        assert_eq!(err, "us-east-1: only 0 of 32 checks answered (Throttling)");
    }

    #[tokio::test]
    async fn waits_until_every_host_knows_the_key() {
        // Five hosts of eight know the key, and one more learns it with every round of 32 checks.
        let clock = FakeClock::new();
        let mut hosts = Hosts::new(&["us-east-1"], 8, &[5]);
        hosts.learn_every = Some(32);
        let v = Verify {
            rounds: Streak { successes: 3, timeout: Duration::from_secs(60), interval: Duration::from_secs(1) },
            checks: 32,
            max_reject: 0.0,
        };
        let rounds = until_propagated(&clock, &v, &Progress::off(), "t", &hosts, &key()).await.unwrap();
        assert_eq!(rounds, 6, "three rounds refused by a host, then three clean ones");
        assert_eq!(hosts.known.lock().unwrap()[0], 8);
    }
}
