//! Waiting for an ECS rollout, behind a narrow seam ([`ServiceObserver`]).
//!
//! moto never finishes a rollout nor shows a replaced deployment, so the edge cases (stuck, failed,
//! rolled back by the circuit breaker) are tested here against scripted service states.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::{ErrorKind, TargetError, WaitStatus};

/// One entry of a service's `deployments[]`, as the wait needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeploymentState {
    pub id: String,
    /// `PRIMARY`, `ACTIVE` (being replaced) or `INACTIVE`.
    pub status: String,
    pub task_definition: Option<String>,
    /// `IN_PROGRESS`, `COMPLETED` or `FAILED`; absent when the service has no rollout tracking.
    pub rollout_state: Option<String>,
    pub rollout_state_reason: Option<String>,
    pub running: i32,
    pub desired: i32,
    pub pending: i32,
    pub failed_tasks: i32,
    /// Milliseconds since the epoch.
    pub created_at: Option<i64>,
}

/// What a `DescribeServices` says about the service's rollouts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceState {
    pub deployments: Vec<DeploymentState>,
    /// The task definition the service points at.
    pub task_definition: Option<String>,
}

/// Reads the service's current state; the real one wraps `DescribeServices`.
#[async_trait]
pub trait ServiceObserver: Send + Sync {
    async fn observe(&self) -> Result<ServiceState, TargetError>;
}

/// The deployment a wait is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    /// The first deployment created that is not among these: the one an update started after they
    /// were recorded. This is how a resumed process finds the rollout from the snapshot alone.
    NewSince(Vec<String>),
    Id(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitFor {
    pub deployment_id: String,
    /// A task definition the service must not point at: pointing back at the old revision means the
    /// circuit breaker rolled the new one back.
    pub not_task_definition: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    InProgress { running: i32, desired: i32, pending: i32, failed_tasks: i32, old_running: i32 },
    Completed,
    Failed(String),
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Progress::InProgress { running, desired, pending, failed_tasks, old_running } => {
                write!(f, "{running}/{desired} running")?;
                if *pending > 0 {
                    write!(f, ", {pending} pending")?;
                }
                if *old_running > 0 {
                    write!(f, ", {old_running} old still running")?;
                }
                if *failed_tasks > 0 {
                    write!(f, ", {failed_tasks} failed tasks")?;
                }
                Ok(())
            }
            Progress::Completed => f.write_str("complete"),
            Progress::Failed(reason) => f.write_str(reason),
        }
    }
}

/// The deployment started after `before` was recorded: the oldest of those not in it, because a
/// circuit-breaker rollback creates another one after ours.
pub fn identify<'a>(state: &'a ServiceState, before: &[String]) -> Option<&'a DeploymentState> {
    state
        .deployments
        .iter()
        .enumerate()
        .filter(|(_, d)| !before.contains(&d.id))
        // ECS lists the newest first; the index breaks ties when creation times are missing.
        .min_by_key(|(i, d)| (d.created_at.unwrap_or(i64::MAX), usize::MAX - i))
        .map(|(_, d)| d)
}

fn reason_suffix(d: &DeploymentState) -> String {
    d.rollout_state_reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
}

/// Where the awaited deployment stands.
pub fn assess(state: &ServiceState, waiting_for: &WaitFor) -> Progress {
    let id = &waiting_for.deployment_id;
    let ours = state.deployments.iter().find(|d| &d.id == id);
    let primary = state.deployments.iter().find(|d| d.status == "PRIMARY");
    let replaced_by = || {
        primary
            .filter(|p| &p.id != id)
            .map(|p| {
                format!(
                    "; deployment {} (task definition {}) replaced it, as a circuit-breaker rollback does",
                    p.id,
                    p.task_definition.as_deref().unwrap_or("?")
                )
            })
            .unwrap_or_default()
    };

    if let (Some(bad), Some(now)) = (&waiting_for.not_task_definition, &state.task_definition)
        && bad == now
    {
        let why = ours.map(reason_suffix).unwrap_or_default();
        return Progress::Failed(format!("the service was rolled back to {bad} while deployment {id} rolled out{why}"));
    }
    let Some(ours) = ours else {
        return Progress::Failed(format!("deployment {id} is gone{}", replaced_by()));
    };
    if ours.rollout_state.as_deref() == Some("FAILED") {
        return Progress::Failed(format!("deployment {id} failed{}{}", reason_suffix(ours), replaced_by()));
    }
    if ours.status != "PRIMARY" {
        return Progress::Failed(format!("deployment {id} is {}{}{}", ours.status, reason_suffix(ours), replaced_by()));
    }

    // Old tasks still hold the old key: deactivating it before they stop would break them.
    let old_running: i32 = state.deployments.iter().filter(|d| &d.id != id).map(|d| d.running.max(0)).sum();
    let settled = match ours.rollout_state.as_deref() {
        Some(s) => s == "COMPLETED",
        None => state.deployments.len() == 1,
    };
    if settled && ours.running == ours.desired && old_running == 0 {
        return Progress::Completed;
    }
    Progress::InProgress {
        running: ours.running,
        desired: ours.desired,
        pending: ours.pending,
        failed_tasks: ours.failed_tasks,
        old_running,
    }
}

/// How long and how loudly to wait.
#[derive(Debug, Clone)]
pub struct WaitSettings {
    /// The target's name, which starts every status line.
    pub name: String,
    pub timeout: Duration,
    pub poll_interval: Duration,
    /// Where the wait shows its progress; None: a log line every [`LOG_EVERY`].
    pub status: Option<Arc<dyn WaitStatus>>,
}

/// Throttling or a dropped connection during a long rollout should not fail a rotation at once.
const TRANSIENT_ERRORS: u32 = 3;
/// Polls without any new deployment before concluding none was started.
const UNSEEN_POLLS: u32 = 3;
const LOG_EVERY: Duration = Duration::from_secs(15);

/// Poll until the deployment is complete, fails, is replaced, or the timeout passes.
pub async fn wait_rollout(
    observer: &dyn ServiceObserver,
    which: Which,
    not_task_definition: Option<&str>,
    settings: &WaitSettings,
) -> Result<(), TargetError> {
    let started = Instant::now();
    let mut status = Status { settings, last_log: None };
    let mut id = match &which {
        Which::Id(id) => Some(id.clone()),
        Which::NewSince(_) => None,
    };
    let (mut errors, mut unseen) = (0, 0);
    let fail = |kind| Err(TargetError::new(&settings.name, kind));

    let result = loop {
        let line = match observer.observe().await {
            Err(e) if matches!(e.kind, ErrorKind::Backend(_)) && errors < TRANSIENT_ERRORS => {
                errors += 1;
                tracing::warn!(target_name = %settings.name, "reading the rollout failed, retrying: {}", e.kind);
                "could not read the service".to_string()
            }
            Err(e) => break Err(e),
            Ok(state) => {
                errors = 0;
                if let (None, Which::NewSince(before)) = (&id, &which) {
                    id = identify(&state, before).map(|d| d.id.clone());
                }
                match &id {
                    None => {
                        unseen += 1;
                        if unseen >= UNSEEN_POLLS {
                            break fail(ErrorKind::Consumers(format!(
                                "no deployment was started since the snapshot (deployments now: {})",
                                state.deployments.iter().map(|d| d.id.as_str()).collect::<Vec<_>>().join(", ")
                            )));
                        }
                        "waiting for the new deployment to appear".to_string()
                    }
                    Some(deployment_id) => {
                        let waiting_for = WaitFor {
                            deployment_id: deployment_id.clone(),
                            not_task_definition: not_task_definition.map(str::to_string),
                        };
                        match assess(&state, &waiting_for) {
                            Progress::Completed => {
                                status.show("complete", started.elapsed(), true);
                                break Ok(());
                            }
                            Progress::Failed(reason) => break fail(ErrorKind::Consumers(reason)),
                            p => p.to_string(),
                        }
                    }
                }
            }
        };
        let waited = started.elapsed();
        if waited >= settings.timeout {
            let what = match &id {
                Some(id) => format!("the rollout of deployment {id} ({line})"),
                None => "a new deployment to appear".to_string(),
            };
            break fail(ErrorKind::Timeout { what, waited: Duration::from_secs(waited.as_secs()) });
        }
        status.show(&line, waited, false);
        tokio::time::sleep(settings.poll_interval.min(settings.timeout - waited)).await;
    };
    status.finish();
    result
}

/// The status line, or a log line at most every [`LOG_EVERY`].
struct Status<'a> {
    settings: &'a WaitSettings,
    last_log: Option<Instant>,
}

impl Status<'_> {
    fn show(&mut self, line: &str, waited: Duration, last: bool) {
        match &self.settings.status {
            Some(status) => status.update(&format!("{}: rollout {line}", self.settings.name)),
            None if last || self.last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) => {
                tracing::info!("{}: rollout {line}, {}s", self.settings.name, waited.as_secs());
                self.last_log = Some(Instant::now());
            }
            None => {}
        }
    }

    fn finish(&mut self) {
        if let Some(status) = &self.settings.status {
            status.done();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// Plays states in order, then keeps returning the last one.
    struct Script(Mutex<VecDeque<Result<ServiceState, TargetError>>>, Mutex<u32>);

    impl Script {
        fn new(states: Vec<Result<ServiceState, TargetError>>) -> Self {
            Script(Mutex::new(states.into()), Mutex::new(0))
        }
        fn ok(states: Vec<ServiceState>) -> Self {
            Self::new(states.into_iter().map(Ok).collect())
        }
        fn calls(&self) -> u32 {
            *self.1.lock().unwrap()
        }
    }

    #[async_trait]
    impl ServiceObserver for Script {
        async fn observe(&self) -> Result<ServiceState, TargetError> {
            *self.1.lock().unwrap() += 1;
            let mut q = self.0.lock().unwrap();
            if q.len() > 1 {
                return q.pop_front().unwrap();
            }
            match q.front().unwrap() {
                Ok(s) => Ok(s.clone()),
                Err(_) => q.pop_front().unwrap(),
            }
        }
    }

    fn dep(id: &str, status: &str, rollout: Option<&str>, running: i32, desired: i32, created: i64) -> DeploymentState {
        DeploymentState {
            id: id.into(),
            status: status.into(),
            task_definition: Some(format!("td-{id}")),
            rollout_state: rollout.map(str::to_string),
            rollout_state_reason: None,
            running,
            desired,
            pending: desired - running,
            failed_tasks: 0,
            created_at: Some(created),
        }
    }

    fn svc(deployments: Vec<DeploymentState>) -> ServiceState {
        ServiceState { deployments, task_definition: Some("td:2".into()) }
    }

    fn settings() -> WaitSettings {
        WaitSettings {
            name: "ecs:prod/api".into(),
            timeout: Duration::from_secs(600),
            poll_interval: Duration::from_secs(6),
            status: None,
        }
    }

    fn since_old() -> Which {
        Which::NewSince(vec!["old".into()])
    }

    #[tokio::test(start_paused = true)]
    async fn completes_when_new_deployment_is_the_only_one_running() {
        let obs = Script::ok(vec![
            svc(vec![
                dep("new", "PRIMARY", Some("IN_PROGRESS"), 0, 2, 20),
                dep("old", "ACTIVE", Some("COMPLETED"), 2, 2, 10),
            ]),
            svc(vec![
                dep("new", "PRIMARY", Some("IN_PROGRESS"), 2, 2, 20),
                dep("old", "ACTIVE", Some("COMPLETED"), 1, 2, 10),
            ]),
            svc(vec![dep("new", "PRIMARY", Some("COMPLETED"), 2, 2, 20)]),
        ]);
        let start = Instant::now();
        wait_rollout(&obs, since_old(), Some("td:1"), &settings()).await.unwrap();
        assert_eq!((obs.calls(), start.elapsed()), (3, Duration::from_secs(12)));
    }

    #[tokio::test(start_paused = true)]
    async fn stuck_rollout_times_out() {
        let obs = Script::ok(vec![svc(vec![dep("new", "PRIMARY", Some("IN_PROGRESS"), 1, 2, 20)])]);
        let start = Instant::now();
        let e = wait_rollout(&obs, since_old(), None, &settings()).await.unwrap_err();
        assert_eq!(start.elapsed(), Duration::from_secs(600));
        match e.kind {
            ErrorKind::Timeout { what, waited } => {
                assert_eq!(waited, Duration::from_secs(600));
                assert!(what.contains("deployment new (1/2 running, 1 pending)"), "{what}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_rollout_state_fails_fast_with_the_reason() {
        let mut failed = dep("new", "PRIMARY", Some("FAILED"), 0, 2, 20);
        failed.rollout_state_reason = Some("ECS deployment circuit breaker: tasks failed to start.".into());
        let obs = Script::ok(vec![svc(vec![dep("new", "PRIMARY", Some("IN_PROGRESS"), 0, 2, 20)]), svc(vec![failed])]);
        let e = wait_rollout(&obs, since_old(), None, &settings()).await.unwrap_err();
        match e.kind {
            ErrorKind::Consumers(r) => assert!(r.contains("failed") && r.contains("tasks failed to start"), "{r}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(obs.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn circuit_breaker_rollback_fails_fast() {
        // Another deployment became PRIMARY: ours was replaced.
        let obs = Script::ok(vec![
            svc(vec![dep("new", "PRIMARY", Some("IN_PROGRESS"), 0, 2, 20), dep("old", "ACTIVE", None, 2, 2, 10)]),
            svc(vec![
                dep("back", "PRIMARY", Some("IN_PROGRESS"), 0, 2, 30),
                dep("new", "ACTIVE", Some("IN_PROGRESS"), 0, 2, 20),
            ]),
        ]);
        let e = wait_rollout(&obs, since_old(), None, &settings()).await.unwrap_err();
        assert!(
            matches!(&e.kind, ErrorKind::Consumers(r) if r.contains("new is ACTIVE") && r.contains("deployment back")),
            "{e}"
        );

        // Ours disappeared altogether.
        let obs = Script::ok(vec![
            svc(vec![dep("new", "PRIMARY", Some("IN_PROGRESS"), 0, 2, 20)]),
            svc(vec![dep("back", "PRIMARY", Some("COMPLETED"), 2, 2, 30)]),
        ]);
        let e = wait_rollout(&obs, Which::Id("new".into()), None, &settings()).await.unwrap_err();
        assert!(matches!(&e.kind, ErrorKind::Consumers(r) if r.contains("new is gone") && r.contains("back")), "{e}");

        // The service points at the old revision again.
        let mut state = svc(vec![dep("new", "PRIMARY", Some("IN_PROGRESS"), 0, 2, 20)]);
        state.task_definition = Some("td:1".into());
        let e = wait_rollout(&Script::ok(vec![state]), since_old(), Some("td:1"), &settings()).await.unwrap_err();
        assert!(matches!(&e.kind, ErrorKind::Consumers(r) if r.contains("rolled back to td:1")), "{e}");
    }

    #[test]
    fn a_resumed_wait_finds_ours_not_the_rollback() {
        // After a crash: ours (created first) and the circuit breaker's (created later) are both new.
        let state = svc(vec![
            dep("back", "PRIMARY", Some("IN_PROGRESS"), 0, 2, 30),
            dep("new", "ACTIVE", Some("FAILED"), 0, 2, 20),
            dep("old", "INACTIVE", None, 0, 2, 10),
        ]);
        assert_eq!(identify(&state, &["old".into()]).unwrap().id, "new");
        assert_eq!(identify(&state, &["old".into(), "new".into(), "back".into()]), None);
    }

    #[tokio::test(start_paused = true)]
    async fn without_rollout_state_waits_until_it_is_the_only_deployment() {
        let obs = Script::ok(vec![
            svc(vec![dep("new", "PRIMARY", None, 2, 2, 20), dep("old", "ACTIVE", None, 1, 2, 10)]),
            svc(vec![dep("new", "PRIMARY", None, 2, 2, 20), dep("old", "ACTIVE", None, 0, 0, 10)]),
            svc(vec![dep("new", "PRIMARY", None, 2, 2, 20)]),
        ]);
        wait_rollout(&obs, since_old(), None, &settings()).await.unwrap();
        assert_eq!(obs.calls(), 3);
    }

    #[test]
    fn completed_needs_all_tasks_running_and_old_ones_gone() {
        let w = WaitFor { deployment_id: "new".into(), not_task_definition: None };
        let p = assess(&svc(vec![dep("new", "PRIMARY", Some("COMPLETED"), 1, 2, 20)]), &w);
        assert_eq!(p.to_string(), "1/2 running, 1 pending");
        let p = assess(
            &svc(vec![dep("new", "PRIMARY", Some("COMPLETED"), 2, 2, 20), dep("old", "ACTIVE", None, 1, 2, 1)]),
            &w,
        );
        assert_eq!(p.to_string(), "2/2 running, 1 old still running");
        assert_eq!(assess(&svc(vec![dep("new", "PRIMARY", Some("COMPLETED"), 0, 0, 20)]), &w), Progress::Completed);
    }

    #[tokio::test(start_paused = true)]
    async fn no_new_deployment_fails() {
        let obs = Script::ok(vec![svc(vec![dep("old", "PRIMARY", Some("COMPLETED"), 2, 2, 10)])]);
        let e = wait_rollout(&obs, since_old(), None, &settings()).await.unwrap_err();
        assert!(matches!(&e.kind, ErrorKind::Consumers(r) if r.contains("no deployment was started")), "{e}");
        assert_eq!(obs.calls(), UNSEEN_POLLS);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_but_denials_are_not() {
        let backend = || Err(TargetError::new("x", ErrorKind::Backend("throttled".into())));
        let obs =
            Script::new(vec![backend(), backend(), Ok(svc(vec![dep("new", "PRIMARY", Some("COMPLETED"), 2, 2, 20)]))]);
        wait_rollout(&obs, since_old(), None, &settings()).await.unwrap();

        let obs = Script::new(vec![backend(), backend(), backend(), backend()]);
        assert!(matches!(
            wait_rollout(&obs, since_old(), None, &settings()).await.unwrap_err().kind,
            ErrorKind::Backend(_)
        ));

        let obs = Script::new(vec![Err(TargetError::new("x", ErrorKind::AccessDenied("no".into())))]);
        assert!(matches!(
            wait_rollout(&obs, since_old(), None, &settings()).await.unwrap_err().kind,
            ErrorKind::AccessDenied(_)
        ));
        assert_eq!(obs.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_status_line_shows_the_rollout_and_is_taken_off_at_the_end() {
        #[derive(Default)]
        struct Lines(Mutex<Vec<String>>);
        impl WaitStatus for Lines {
            fn update(&self, line: &str) {
                self.0.lock().unwrap().push(line.to_string());
            }
            fn done(&self) {
                self.0.lock().unwrap().push("<done>".into());
            }
        }
        let obs = Script::ok(vec![
            svc(vec![dep("new", "PRIMARY", Some("IN_PROGRESS"), 1, 2, 20)]),
            svc(vec![dep("new", "PRIMARY", Some("COMPLETED"), 2, 2, 20)]),
        ]);
        let lines = Arc::new(Lines::default());
        let s = WaitSettings { status: Some(lines.clone()), ..settings() };
        wait_rollout(&obs, Which::Id("new".into()), None, &s).await.unwrap();
        let lines = lines.0.lock().unwrap().clone();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].starts_with("ecs:prod/api: rollout ") && lines[0].contains("1/2"), "{lines:?}");
        assert_eq!(lines[1..], ["ecs:prod/api: rollout complete", "<done>"]);

        // A failed rollout takes its line off too.
        let lines = Arc::new(Lines::default());
        let obs = Script::ok(vec![svc(vec![dep("new", "PRIMARY", Some("FAILED"), 0, 2, 20)])]);
        let s = WaitSettings { status: Some(lines.clone()), ..settings() };
        assert!(wait_rollout(&obs, Which::Id("new".into()), None, &s).await.is_err());
        assert_eq!(lines.0.lock().unwrap().last().map(String::as_str), Some("<done>"));
    }
}
