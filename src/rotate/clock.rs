//! Time, behind a trait: every wait in a rotation is bounded, and tests drive the bounds without
//! waiting for them.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;

#[async_trait]
pub trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;
    async fn sleep(&self, duration: Duration);

    /// Time left until `deadline`, zero once it has passed.
    fn until(&self, deadline: SystemTime) -> Duration {
        deadline.duration_since(self.now()).unwrap_or(Duration::ZERO)
    }
}

pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await
    }
}
