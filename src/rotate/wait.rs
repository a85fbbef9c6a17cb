//! The one waiting loop that key verification and health probes share: a check must pass several
//! times in a row, with backoff after failures, within a deadline.
//!
//! One success is not proof: IAM propagates a new key to STS endpoints over 5-20 s and a key that
//! worked once can still fail the next call (aws-rotate-iam-keys #81). Requiring a streak catches that.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::progress::Progress;
use crate::rotate::clock::Clock;

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
            .with_max_delay(Duration::from_secs(5))
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
        let pause = if in_a_row > 0 { streak.interval } else { backoff.next().unwrap_or(Duration::from_secs(5)) };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotate::fakes::FakeClock;
    use std::cell::Cell;

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
}
