//! The state machine driven through each of its paths with recording fakes.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;
use crate::rotate::fakes::{FakeClock, FakeFactory, FakeIam, FakeKeyCheck, Op, World};
use crate::rotate::iam::KeyStatus::{Active, Inactive};
use crate::rotate::journal::{Journal, Journals};

const OLD: &str = "AKIAOLD0000000000001";
const USER: &str = "app-integration-user";

struct Bed {
    world: Arc<World>,
    clock: FakeClock,
    dir: tempfile::TempDir,
    specs: Vec<String>,
}

impl Bed {
    fn new(specs: &[&str]) -> Bed {
        let world = World::new().with_user(USER, &[(OLD, Active)]);
        for i in 0..specs.len() {
            world.target_values.lock().unwrap().insert(i, OLD.into());
        }
        Bed {
            world,
            clock: FakeClock::new(),
            dir: tempfile::tempdir().unwrap(),
            specs: specs.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn settings(&self) -> Settings {
        let streak = Streak { successes: 3, timeout: Duration::from_secs(60), interval: Duration::from_secs(1) };
        Settings {
            user: USER.into(),
            old_key: None,
            targets: self.specs.iter().map(|s| TargetSetting { spec: s.parse().unwrap(), restart_cmd: None }).collect(),
            probes: vec!["http://app/health".into()],
            verify: Verify { rounds: streak.clone(), checks: 4, max_reject: 0.0 },
            probe: streak,
            grace: Duration::ZERO,
            delete_old: false,
            dry_run: false,
            ecs_timeout: Duration::from_secs(900),
            verify_regions: Vec::new(),
            defer_deactivation: false,
            mark_deactivated: false,
            keep_keys: false,
            free_slot: None,
            own_key: false,
            retire: Default::default(),
        }
    }

    async fn run_with(&self, settings: &Settings) -> Result<Report, Refusal> {
        let (iam, check) = (FakeIam(self.world.clone()), FakeKeyCheck(self.world.clone()));
        let factory = FakeFactory { world: self.world.clone(), specs: self.specs.clone() };
        let progress = Progress::off();
        let fx = Effects {
            iam: &iam,
            key_check: &check,
            clock: &self.clock,
            factory: &factory,
            progress: &progress,
            journals: Journals::Local(self.dir.path().to_path_buf()),
        };
        rotate(&fx, settings, std::future::pending()).await
    }

    async fn run(&self) -> Report {
        self.run_with(&self.settings()).await.expect("not refused")
    }

    async fn resume(&self, force_rollback: bool) -> Result<Report, Refusal> {
        self.resume_with(force_rollback, &self.settings()).await
    }

    async fn resume_with(&self, force_rollback: bool, settings: &Settings) -> Result<Report, Refusal> {
        let (iam, check) = (FakeIam(self.world.clone()), FakeKeyCheck(self.world.clone()));
        let factory = FakeFactory { world: self.world.clone(), specs: self.specs.clone() };
        let progress = Progress::off();
        let fx = Effects {
            iam: &iam,
            key_check: &check,
            clock: &self.clock,
            factory: &factory,
            progress: &progress,
            journals: Journals::Local(self.dir.path().to_path_buf()),
        };
        resume(&fx, USER, force_rollback, settings, std::future::pending()).await
    }

    /// The clean state after a rollback: only the old key, Active, and every target back on it.
    fn assert_rolled_back(&self) {
        assert_eq!(self.world.keys_of(USER), vec![(OLD.to_string(), Active)]);
        for i in 0..self.specs.len() {
            assert_eq!(self.world.value(i).as_deref(), Some(OLD), "target {i} restored");
        }
        assert!(Journal::list_unfinished(self.dir.path()).unwrap().is_empty());
    }

    fn assert_rotated(&self) -> String {
        let keys = self.world.keys_of(USER);
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert_eq!(keys[0], (OLD.to_string(), Inactive));
        let (new, status) = keys[1].clone();
        assert_eq!(status, Active);
        for i in 0..self.specs.len() {
            assert_eq!(self.world.value(i).as_deref(), Some(new.as_str()), "target {i} holds the new key");
        }
        assert!(Journal::list_unfinished(self.dir.path()).unwrap().is_empty());
        new
    }
}

#[tokio::test]
async fn rotates_and_deactivates_only_after_targets_and_probes() {
    let bed = Bed::new(&["secretsmanager:app", "ecs:prod/api"]);
    let report = bed.run().await;
    assert_eq!(report.outcome, "rotated", "{report:?}");
    let new = bed.assert_rotated();
    assert_eq!(report.new_key_id.as_deref(), Some(new.as_str()));
    let calls = bed.world.calls();
    let pos = |c: &str| calls.iter().position(|x| x == c).unwrap_or_else(|| panic!("{c} not in {calls:?}"));
    assert!(pos("stage 0") < pos("apply 0"), "the secret is staged before anything else");
    assert!(pos("apply 0") < pos("apply 1") && pos("wait 1") < pos("probe"));
    assert!(pos("probe") < pos(&format!("set_status {OLD} Inactive")));
    assert!(calls.contains(&"finish 0".to_string()));
    let names: Vec<_> = report.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "preflight",
            "create_key",
            "verify_key",
            "apply:secretsmanager:app",
            "apply:ecs:prod/api",
            "probe",
            "deactivate_old",
            "probe_after_deactivation"
        ]
    );
}

#[tokio::test]
async fn a_failing_probe_rolls_back_every_target_and_deletes_the_new_key() {
    let bed = Bed::new(&["env:/a", "secretsmanager:app"]);
    *bed.world.probe_answers.lock().unwrap() = vec![false; 1000];
    let report = bed.run().await;
    assert_eq!(report.outcome, "rolled_back", "{report:?}");
    assert!(report.error.as_deref().unwrap().contains("probe"), "{report:?}");
    bed.assert_rolled_back();
    let calls = bed.world.calls();
    let pos = |c: &str| calls.iter().position(|x| x == c).unwrap();
    assert!(pos("rollback 1") < pos("rollback 0"), "reverse order");
    assert!(!calls.iter().any(|c| c.starts_with("set_status")), "the old key was never touched");
    assert_eq!(report.old_key_status, Some(Active));
}

#[tokio::test]
async fn stores_are_restored_before_deployers_that_read_them() {
    let bed = Bed::new(&["secretsmanager:app", "ecs:prod/api", "env:/a"]);
    bed.world.fail(Op::Apply(2), "disk full");
    let report = bed.run().await;
    assert_eq!(report.outcome, "rolled_back");
    let calls = bed.world.calls();
    let rollbacks: Vec<_> = calls.iter().filter(|c| c.starts_with("rollback")).cloned().collect();
    assert_eq!(rollbacks, ["rollback 2", "rollback 0", "rollback 1"]);
    bed.assert_rolled_back();
}

#[tokio::test]
async fn a_key_that_never_propagates_is_deleted_and_nothing_else_changes() {
    let bed = Bed::new(&["env:/a"]);
    *bed.world.key_check_failures.lock().unwrap() = u32::MAX;
    let report = bed.run().await;
    assert_eq!(report.outcome, "rolled_back");
    assert!(report.error.as_deref().unwrap().contains("never worked"), "{report:?}");
    assert!(!bed.world.calls().contains(&"apply 0".to_string()));
    bed.assert_rolled_back();
    assert!(bed.clock.elapsed() >= Duration::from_secs(60), "waited the whole verify timeout");
}

#[tokio::test]
async fn a_slow_key_is_used_once_it_works_three_times_in_a_row() {
    let bed = Bed::new(&["env:/a"]);
    *bed.world.key_check_failures.lock().unwrap() = 4;
    assert_eq!(bed.run().await.outcome, "rotated");
    bed.assert_rotated();
}

#[tokio::test]
async fn a_failed_rollback_keeps_the_new_key_and_says_what_is_left() {
    let bed = Bed::new(&["env:/a", "env:/b"]);
    bed.world.fail(Op::Wait(1), "restart failed");
    bed.world.fail(Op::Rollback(0), "permission denied");
    let report = bed.run().await;
    assert_eq!(report.outcome, "failed", "{report:?}");
    assert!(report.left.iter().any(|l| l.contains("env:/a") && l.contains("permission denied")), "{:?}", report.left);
    assert!(report.left.iter().any(|l| l.contains("rekey resume --user")), "{:?}", report.left);
    assert_eq!(bed.world.keys_of(USER).len(), 2, "the new key stays while a target uses it");
    assert_eq!(Journal::list_unfinished(bed.dir.path()).unwrap().len(), 1, "the journal stays for resume");

    // Once the cause is fixed, resume finishes the rollback.
    bed.world.faults_clear();
    let report = bed.resume(false).await.unwrap();
    assert_eq!(report.outcome, "rolled_back", "{report:?}");
    bed.assert_rolled_back();
}

#[tokio::test]
async fn two_active_keys_are_refused_naming_both() {
    let bed = Bed::new(&["env:/a"]);
    bed.world.with_user(USER, &[(OLD, Active), ("AKIAOTHER00000000002", Active)]);
    let err = bed.run_with(&bed.settings()).await.unwrap_err();
    assert!(err.0.contains(OLD) && err.0.contains("AKIAOTHER00000000002") && err.0.contains("never used"), "{err}");
    assert!(bed.world.calls().is_empty(), "nothing changed");
}

#[tokio::test]
async fn an_inactive_second_key_is_deleted_to_free_the_slot() {
    let bed = Bed::new(&["env:/a"]);
    bed.world.with_user(USER, &[(OLD, Active), ("AKIASTALE00000000002", Inactive)]);
    let report = bed.run().await;
    assert_eq!(report.outcome, "rotated");
    assert!(report.warnings.iter().any(|w| w.contains("AKIASTALE00000000002")));
    assert_eq!(bed.world.calls()[0], "delete_key AKIASTALE00000000002");
}

#[tokio::test]
async fn keeping_keys_refuses_a_full_user_until_the_operator_names_the_key_to_free() {
    const STALE: &str = "AKIASTALE00000000002";
    let bed = Bed::new(&["env:/a"]);
    bed.world.with_user(USER, &[(OLD, Active), (STALE, Inactive)]);
    let keep = Settings { keep_keys: true, ..bed.settings() };
    let err = bed.run_with(&keep).await.unwrap_err();
    assert!(err.0.contains(&format!("--free-slot {STALE}")) && !err.0.contains('\n'), "{err}");
    let wrong = Settings { free_slot: Some("AKIAWRONG0000000000X".into()), ..keep.clone() };
    assert!(bed.run_with(&wrong).await.unwrap_err().0.contains("is not app-integration-user's other access key"));
    assert!(bed.world.calls().is_empty(), "nothing changed: {:?}", bed.world.calls());

    let freed = Settings { free_slot: Some(STALE.into()), ..keep };
    let report = bed.run_with(&freed).await.unwrap();
    assert_eq!(report.outcome, "rotated");
    assert_eq!(bed.world.calls()[0], format!("delete_key {STALE}"));
    // The leaked key itself is deactivated, never deleted.
    assert!(bed.world.keys_of(USER).contains(&(OLD.to_string(), Inactive)));
}

#[tokio::test]
async fn keeping_keys_with_a_free_slot_deletes_nothing() {
    let bed = Bed::new(&["env:/a"]);
    let report = bed.run_with(&Settings { keep_keys: true, ..bed.settings() }).await.unwrap();
    assert_eq!(report.outcome, "rotated");
    assert!(!bed.world.calls().iter().any(|c| c.starts_with("delete_key")), "{:?}", bed.world.calls());
    bed.assert_rotated();
}

#[tokio::test]
async fn refusals_change_nothing() {
    let bed = Bed::new(&["env:/a"]);
    let mut s = bed.settings();
    s.user = "nobody".into();
    assert!(bed.run_with(&s).await.unwrap_err().0.contains("no IAM user named \"nobody\""));
    let mut s = bed.settings();
    s.old_key = Some("AKIANOPE000000000000".into());
    assert!(bed.run_with(&s).await.unwrap_err().0.contains("check --old-key"));
    *bed.world.caller_user.lock().unwrap() = Some(USER.into());
    assert!(bed.run_with(&bed.settings()).await.unwrap_err().0.contains("running as app-integration-user"));
    *bed.world.caller_user.lock().unwrap() = None;
    bed.world.target_values.lock().unwrap().insert(0, "AKIASOMETHINGELSE000".into());
    assert!(bed.run_with(&bed.settings()).await.unwrap_err().0.contains("holds key AKIASOMETHINGELSE000"));
    assert!(bed.world.calls().is_empty(), "nothing changed: {:?}", bed.world.calls());
}

#[tokio::test]
async fn dry_run_plans_and_changes_nothing() {
    let bed = Bed::new(&["env:/a"]);
    let mut s = bed.settings();
    s.dry_run = true;
    let report = bed.run_with(&s).await.unwrap();
    assert_eq!(report.outcome, "planned");
    assert!(bed.world.calls().is_empty());
    assert!(Journal::list_unfinished(bed.dir.path()).unwrap().is_empty());
}

#[tokio::test]
async fn a_probe_failing_after_deactivation_turns_the_old_key_back_on() {
    let bed = Bed::new(&["env:/a"]);
    // Three passes before deactivation, then the app breaks.
    *bed.world.probe_answers.lock().unwrap() = [vec![true; 3], vec![false; 1000]].concat();
    let report = bed.run().await;
    assert_eq!(report.outcome, "rolled_back", "{report:?}");
    assert!(bed.world.calls().contains(&format!("set_status {OLD} Active")));
    bed.assert_rolled_back();
}

#[tokio::test]
async fn grace_keeps_the_old_key_active_that_long() {
    let bed = Bed::new(&["env:/a"]);
    let mut s = bed.settings();
    s.grace = Duration::from_secs(3600);
    assert_eq!(bed.run_with(&s).await.unwrap().outcome, "rotated");
    assert!(bed.clock.elapsed() >= Duration::from_secs(3600));
}

#[tokio::test]
async fn an_unfinished_rotation_blocks_the_next_one() {
    let bed = Bed::new(&["env:/a", "env:/b"]);
    bed.world.fail(Op::Wait(1), "restart failed");
    bed.world.fail(Op::Rollback(0), "permission denied");
    assert_eq!(bed.run().await.outcome, "failed");
    let err = bed.run_with(&bed.settings()).await.unwrap_err();
    assert!(err.0.contains("rekey resume --user app-integration-user"), "{err}");
}

#[tokio::test]
async fn ctrl_c_rolls_back() {
    let bed = Bed::new(&["env:/a"]);
    let (iam, check) = (FakeIam(bed.world.clone()), FakeKeyCheck(bed.world.clone()));
    let factory = FakeFactory { world: bed.world.clone(), specs: bed.specs.clone() };
    let progress = Progress::off();
    let fx = Effects {
        iam: &iam,
        key_check: &check,
        clock: &bed.clock,
        factory: &factory,
        progress: &progress,
        journals: Journals::Local(bed.dir.path().into()),
    };
    // The app never gets healthy, and the user gives up while rekey waits.
    *bed.world.probe_answers.lock().unwrap() = vec![false; 1000];
    let interrupt = async {
        for _ in 0..200 {
            tokio::task::yield_now().await;
        }
    };
    let mut settings = bed.settings();
    settings.probe.timeout = Duration::from_secs(10 * 24 * 3600);
    let report = rotate(&fx, &settings, interrupt).await.unwrap();
    assert_eq!(report.outcome, "rolled_back");
    assert!(report.error.unwrap().contains("interrupted"));
    bed.assert_rolled_back();
}

/// A crash after every journal record, then `resume`: the end state is one of the two clean ones.
#[tokio::test]
async fn resume_after_a_crash_at_every_step_ends_clean() {
    // A full run writes this many records; crash after each.
    let probe = Bed::new(&["secretsmanager:app", "env:/a"]);
    assert_eq!(probe.run().await.outcome, "rotated");
    let history = std::fs::read_dir(probe.dir.path().join("history")).unwrap().next().unwrap().unwrap().path();
    let records = std::fs::read_to_string(history).unwrap().lines().count();
    assert!(records > 15, "{records}");

    for crash_after in 1..records {
        let bed = Bed::new(&["secretsmanager:app", "env:/a"]);
        let journal = simulate_crash(&bed, crash_after).await;
        let report = bed.resume(false).await.unwrap_or_else(|e| panic!("crash after {crash_after}: {e}"));
        match report.outcome {
            "rotated" => {
                bed.assert_rotated();
            }
            "rolled_back" => bed.assert_rolled_back(),
            other => panic!("crash after record {crash_after} ({journal}): resume ended {other}: {report:?}"),
        }
    }
}

/// Run a rotation whose journal stops after `n` records, as if the process died there: the
/// effects of the step that was begun may or may not have happened, and both are tried.
async fn simulate_crash(bed: &Bed, n: usize) -> String {
    assert_eq!(bed.run().await.outcome, "rotated");
    // Rewind the world to the state the journal describes after `n` records, by replaying the
    // full history's effects up to that point on a fresh world.
    let history = std::fs::read_dir(bed.dir.path().join("history")).unwrap().next().unwrap().unwrap().path();
    let text = std::fs::read_to_string(&history).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::remove_dir_all(bed.dir.path().join("history")).unwrap();
    std::fs::create_dir_all(bed.dir.path().join("active")).unwrap();
    std::fs::write(bed.dir.path().join(format!("active/{USER}.jsonl")), lines[..n].join("\n") + "\n").unwrap();
    let (state, _) = Journal::load(&bed.dir.path().join(format!("active/{USER}.jsonl"))).unwrap();
    replay_effects(bed, &state);
    lines[n - 1].to_string()
}

/// Set the fake world to what had happened when the journal stopped: a step that was begun but not
/// recorded done is taken as having happened (the worst case for recovery).
fn replay_effects(bed: &Bed, state: &crate::rotate::journal::State) {
    let new_key =
        state.new_key_id.clone().or_else(|| state.create.started().then(|| "AKIANEW0000000000001".to_string()));
    let mut keys = vec![(OLD, if state.deactivate.started() { Inactive } else { Active })];
    if let Some(k) = &new_key {
        keys.push((k.as_str(), Active));
    }
    bed.world.with_user(USER, &keys);
    if let Some(k) = &new_key
        && let Some(info) = bed.world.keys.lock().unwrap().get_mut(USER).and_then(|l| l.iter_mut().find(|i| &i.id == k))
    {
        info.created = Some(crate::rotate::fakes::fake_start());
    }
    for (i, applied) in state.applied.iter().enumerate() {
        let value = if applied.started() { new_key.clone().unwrap() } else { OLD.to_string() };
        bed.world.target_values.lock().unwrap().insert(i, value);
    }
    bed.world.calls.lock().unwrap().clear();
}

#[tokio::test]
async fn a_deferred_deactivation_ends_rotated_with_the_old_key_active_and_tagged() {
    let bed = Bed::new(&["env:/a"]);
    let settings = Settings { defer_deactivation: true, grace: Duration::from_secs(3600), ..bed.settings() };
    let report = bed.run_with(&settings).await.expect("not refused");
    assert_eq!(report.outcome, "rotated", "{report:?}");
    assert_eq!(report.old_key_status, Some(Active));
    let keys = bed.world.keys_of(USER);
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().all(|(_, s)| *s == Active), "{keys:?}");
    assert_eq!(bed.world.value(0), report.new_key_id, "the target holds the new key");
    let calls = bed.world.calls();
    assert!(calls.contains(&format!("tag_key {OLD}")), "{calls:?}");
    assert!(!calls.iter().any(|c| c.starts_with("set_status")), "{calls:?}");
    assert!(bed.clock.elapsed() < Duration::from_secs(3600), "the grace period is not waited out here");
    let names: Vec<_> = report.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names.last(), Some(&"defer_deactivation"));
    assert!(Journal::list_unfinished(bed.dir.path()).unwrap().is_empty(), "the journal is closed");
}

#[tokio::test]
async fn a_deferral_that_cannot_be_recorded_rolls_back() {
    let bed = Bed::new(&["env:/a"]);
    let settings = Settings { defer_deactivation: true, ..bed.settings() };
    // The first tag (the new key's description) may fail harmlessly; the deferral's may not.
    bed.world.fail(Op::Tag, "denied");
    let report = bed.run_with(&settings).await.expect("not refused");
    assert_eq!(report.outcome, "rolled_back", "{report:?}");
    assert!(report.error.as_deref().unwrap().contains("defer_deactivation"), "{report:?}");
    bed.assert_rolled_back();
}

impl Bed {
    /// A deferred rotation that ended: the old key Active and tagged for a later `run`, the
    /// targets on the new key.
    async fn deferred(&self) -> Report {
        let settings = Settings { defer_deactivation: true, grace: Duration::from_secs(3600), ..self.settings() };
        let report = self.run_with(&settings).await.expect("not refused");
        assert_eq!(report.outcome, "rotated", "{report:?}");
        report
    }

    async fn finish_deferred(&self) -> Report {
        // These tests are about the steps; the look at the old key's use has its own test below.
        self.finish_deferred_with(Retire::forced("the test does not look at the old key's use")).await
    }

    async fn finish_deferred_with(&self, retire: Retire) -> Report {
        let (iam, check) = (FakeIam(self.world.clone()), FakeKeyCheck(self.world.clone()));
        let factory = FakeFactory { world: self.world.clone(), specs: self.specs.clone() };
        let progress = Progress::off();
        let fx = Effects {
            iam: &iam,
            key_check: &check,
            clock: &self.clock,
            factory: &factory,
            progress: &progress,
            journals: Journals::Local(self.dir.path().to_path_buf()),
        };
        let deferral = Deferral {
            user: USER.into(),
            key_id: OLD.into(),
            probes: vec!["http://app/health".into()],
            probe: self.settings().probe,
            retire,
        };
        finish_deferred(&fx, &deferral, std::future::pending()).await.expect("not refused")
    }

    /// The newest journal in history (ids are times: the last one sorts last).
    fn last_history(&self) -> std::path::PathBuf {
        let mut files: Vec<_> =
            std::fs::read_dir(self.dir.path().join("history")).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files.pop().unwrap()
    }
}

/// Issue 13 item 8: a deferral whose tag landed but whose answer was lost rolls back, and the
/// rollback puts the old key's tag back as it was (here a console description), so that no later
/// `run` deactivates the key the restored targets use.
#[tokio::test]
async fn a_rollback_takes_back_the_deferral_tag_it_wrote() {
    let bed = Bed::new(&["env:/a"]);
    bed.world.set_tag(USER, OLD, "the CI key");
    let settings = Settings { defer_deactivation: true, grace: Duration::from_secs(3600), ..bed.settings() };
    let (iam, check) = (FakeIam(bed.world.clone()), FakeKeyCheck(bed.world.clone()));
    let factory = FakeFactory { world: bed.world.clone(), specs: bed.specs.clone() };
    let progress = Progress::off();
    let fx = Effects {
        iam: &iam,
        key_check: &check,
        clock: &bed.clock,
        factory: &factory,
        progress: &progress,
        journals: Journals::Local(bed.dir.path().to_path_buf()),
    };
    // The new key's description is tagged first; once the probes run, the next tag (the
    // deferral's) lands but its answer is lost.
    let world = bed.world.clone();
    let arm = async move {
        loop {
            if world.calls().iter().any(|c| c == "probe") {
                *world.tag_answer_lost.lock().unwrap() = true;
                return std::future::pending::<()>().await;
            }
            tokio::task::yield_now().await;
        }
    };
    let report = tokio::select! {
        r = rotate(&fx, &settings, std::future::pending()) => r.unwrap(),
        () = arm => unreachable!(),
    };
    assert_eq!(report.outcome, "rolled_back", "{report:?}");
    assert!(report.error.as_deref().unwrap().contains("defer_deactivation"), "{report:?}");
    bed.assert_rolled_back();
    assert_eq!(bed.world.tag(USER, OLD).as_deref(), Some("the CI key"), "the description is back, the deferral gone");
}

/// The same after a crash right after the deferral was recorded: `resume --rollback` takes it back.
#[tokio::test]
async fn resume_rollback_after_a_deferred_rotation_removes_the_deferral_tag() {
    let bed = Bed::new(&["env:/a"]);
    bed.deferred().await;
    let history = bed.last_history();
    let text = std::fs::read_to_string(&history).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let defer_done = lines.iter().position(|l| l.contains(r#""event":"defer","#) && l.contains(r#""done""#)).unwrap();
    std::fs::remove_file(&history).unwrap();
    std::fs::write(bed.dir.path().join(format!("active/{USER}.jsonl")), lines[..=defer_done].join("\n") + "\n")
        .unwrap();
    assert!(bed.world.tag(USER, OLD).unwrap().starts_with(DEACTIVATE_AFTER));
    let report = bed.resume(true).await.unwrap();
    assert_eq!(report.outcome, "rolled_back", "{report:?}");
    bed.assert_rolled_back();
    assert_eq!(bed.world.tag(USER, OLD), None, "no deferral left for a later run");
}

#[tokio::test]
async fn a_deferred_deactivation_is_finished_through_the_machine_and_marks_the_key() {
    let bed = Bed::new(&["env:/a"]);
    let rotated = bed.deferred().await;
    bed.world.calls.lock().unwrap().clear();
    let report = bed.finish_deferred().await;
    assert_eq!(report.outcome, "rotated", "{report:?}");
    assert_eq!(report.old_key_status, Some(Inactive));
    bed.assert_rotated();
    assert!(bed.world.tag(USER, OLD).unwrap().starts_with(DEACTIVATED_AT), "{:?}", bed.world.tag(USER, OLD));
    let names: Vec<_> = report.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["probe", "deactivate_old", "probe_after_deactivation", "mark_deactivated"]);
    assert_eq!(bed.world.value(0), rotated.new_key_id, "no target touched");
    assert!(!bed.world.calls().iter().any(|c| c.starts_with("create_key") || c.starts_with("apply")));

    // The app breaks once the old key is off: it goes back on, still tagged for the next run.
    let bed = Bed::new(&["env:/a"]);
    bed.deferred().await;
    let deferral = bed.world.tag(USER, OLD).unwrap();
    *bed.world.probe_answers.lock().unwrap() = [vec![true; 3], vec![false; 1000]].concat();
    let report = bed.finish_deferred().await;
    assert_eq!(report.outcome, "rolled_back", "{report:?}");
    assert_eq!(bed.world.keys_of(USER)[0], (OLD.to_string(), Active));
    assert_eq!(bed.world.tag(USER, OLD), Some(deferral), "tried again by the next run");
    assert!(Journal::list_unfinished(bed.dir.path()).unwrap().is_empty());
}

/// Issue 8 item 3: the deferred deactivation, crashed after every journal record (between
/// deactivating and tagging too), then `resume`: the old key is either off and marked for
/// `delete_after`, or Active and still tagged for the next run. Nothing in between.
#[tokio::test]
async fn a_deferred_deactivation_resumed_after_a_crash_at_every_record_ends_clean() {
    let full = Bed::new(&["env:/a"]);
    full.deferred().await;
    assert_eq!(full.finish_deferred().await.outcome, "rotated");
    let records = std::fs::read_to_string(full.last_history()).unwrap().lines().count();
    assert!(records >= 10, "{records}");

    let mut between_deactivating_and_tagging = false;
    for crash_after in 1..records {
        let bed = Bed::new(&["env:/a"]);
        let new_key = bed.deferred().await.new_key_id.unwrap();
        let deferral = bed.world.tag(USER, OLD).unwrap();
        assert_eq!(bed.finish_deferred().await.outcome, "rotated");
        let history = bed.last_history();
        let text = std::fs::read_to_string(&history).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        std::fs::remove_file(&history).unwrap();
        let active = bed.dir.path().join(format!("active/{USER}.jsonl"));
        std::fs::write(&active, lines[..crash_after].join("\n") + "\n").unwrap();
        // The world as the journal leaves it, each begun step taken as having happened.
        let (state, _) = Journal::load(&active).unwrap();
        let old_status = if state.deactivate.started() { Inactive } else { Active };
        bed.world.with_user(USER, &[(OLD, old_status), (new_key.as_str(), Active)]);
        if !state.marked.started() {
            bed.world.set_tag(USER, OLD, &deferral);
        }
        between_deactivating_and_tagging |= state.deactivate == StepState::Done && !state.marked.started();

        // A deferred deactivation writes no target: `resume` is given none.
        let settings = Settings { targets: Vec::new(), ..bed.settings() };
        let report =
            bed.resume_with(false, &settings).await.unwrap_or_else(|e| panic!("crash after {crash_after}: {e}"));
        let tag = bed.world.tag(USER, OLD).unwrap_or_default();
        match report.outcome {
            "rotated" => {
                bed.assert_rotated();
                assert!(tag.starts_with(DEACTIVATED_AT), "crash after {crash_after}: marked, not {tag}");
            }
            "rolled_back" => {
                assert_eq!(bed.world.keys_of(USER)[0], (OLD.to_string(), Active), "crash after {crash_after}");
                assert_eq!(tag, deferral, "crash after {crash_after}: still deferred, for the next run");
                assert!(Journal::list_unfinished(bed.dir.path()).unwrap().is_empty());
            }
            other => panic!(
                "crash after record {crash_after} ({}): resume ended {other}: {report:?}",
                lines[crash_after - 1]
            ),
        }
        assert_eq!(bed.world.value(0).as_deref(), Some(new_key.as_str()), "the targets keep the new key");
    }
    assert!(between_deactivating_and_tagging, "a crash between deactivating and tagging was tried");
}

#[tokio::test]
async fn rollback_reactivates_the_old_key_before_restoring_any_target() {
    let bed = Bed::new(&["secretsmanager:app", "ecs:prod/api"]);
    // Healthy until the old key is turned off, then the app breaks: roll back.
    *bed.world.probe_answers.lock().unwrap() = [vec![true; 3], vec![false; 1000]].concat();
    let report = bed.run().await;
    assert_eq!(report.outcome, "rolled_back", "{report:?}");
    bed.assert_rolled_back();
    let calls = bed.world.calls();
    let pos = |c: &str| calls.iter().position(|x| x == c).unwrap_or_else(|| panic!("{c} not in {calls:?}"));
    let reactivate = pos(&format!("set_status {OLD} Active"));
    assert!(reactivate < pos("rollback 0") && reactivate < pos("rollback 1"), "{calls:?}");
    let names: Vec<_> = report.steps.iter().map(|s| s.name.as_str()).collect();
    let step = |n: &str| names.iter().position(|x| *x == n).unwrap_or_else(|| panic!("{n} not in {names:?}"));
    assert!(step("reactivate_old") < step("rollback:secretsmanager:app"), "{names:?}");
}

#[tokio::test]
async fn a_rollback_that_cannot_reactivate_the_old_key_leaves_the_targets_on_the_new_one() {
    // Crash right after the old key was deactivated, then roll back while IAM refuses to turn it on.
    let probe = Bed::new(&["env:/a"]);
    assert_eq!(probe.run().await.outcome, "rotated");
    let history = std::fs::read_dir(probe.dir.path().join("history")).unwrap().next().unwrap().unwrap().path();
    let text = std::fs::read_to_string(history).unwrap();
    let deactivated = text
        .lines()
        .position(|l| l.contains("\"deactivate\"") && l.contains("\"done\""))
        .unwrap_or_else(|| panic!("no deactivation record in {text}"))
        + 1;
    let bed = Bed::new(&["env:/a"]);
    simulate_crash(&bed, deactivated).await;
    bed.world.fail(Op::SetStatus, "AccessDenied");
    let report = bed.resume(true).await.unwrap();
    assert_eq!(report.outcome, "failed", "{report:?}");
    assert!(report.left.iter().any(|l| l.contains("still Inactive")), "{:?}", report.left);
    let calls = bed.world.calls();
    assert!(!calls.iter().any(|c| c.starts_with("rollback")), "no target was moved to the Inactive key: {calls:?}");
    let new = bed.world.value(0).unwrap();
    assert_ne!(new, OLD, "the target keeps the new key, which works");
    assert!(bed.world.keys_of(USER).iter().any(|(k, s)| *k == new && *s == Active), "and the new key stays");

    bed.world.faults_clear();
    assert_eq!(bed.resume(false).await.unwrap().outcome, "rolled_back");
    bed.assert_rolled_back();
}

#[tokio::test]
async fn a_key_another_actor_created_before_rekeys_create_is_left_alone() {
    let bed = Bed::new(&["env:/a"]);
    let theirs = "AKIATHEIRS0000000001";
    // Between preflight and CreateAccessKey someone else takes the free slot: IAM answers LimitExceeded.
    *bed.world.intruder.lock().unwrap() = Some((theirs.to_string(), crate::rotate::fakes::fake_start()));
    let report = bed.run().await;
    assert_eq!(report.outcome, "rolled_back", "{report:?}");
    assert!(report.error.as_deref().unwrap().contains("2 access keys"), "{report:?}");
    assert_eq!(bed.world.keys_of(USER), vec![(OLD.to_string(), Active), (theirs.to_string(), Active)]);
    assert!(!bed.world.calls().iter().any(|c| c.starts_with("delete_key")), "{:?}", bed.world.calls());
    assert!(Journal::list_unfinished(bed.dir.path()).unwrap().is_empty());
}

#[tokio::test]
async fn a_lost_create_answer_deletes_the_orphan_it_made() {
    let bed = Bed::new(&["env:/a"]);
    *bed.world.create_answer_lost.lock().unwrap() = true;
    let report = bed.run().await;
    assert_eq!(report.outcome, "rolled_back", "{report:?}");
    assert!(bed.world.calls().contains(&"delete_key AKIANEW0000000000001".to_string()), "{:?}", bed.world.calls());
    bed.assert_rolled_back();
}

#[tokio::test]
async fn a_lost_create_answer_never_deletes_a_key_older_than_the_rotation() {
    let bed = Bed::new(&["env:/a"]);
    *bed.world.create_answer_lost.lock().unwrap() = true;
    // The unknown key is dated before the rotation began: not provably rekey's.
    bed.clock.sleep(Duration::from_secs(60)).await;
    let report = bed.run().await;
    assert_eq!(report.outcome, "rolled_back", "{report:?}");
    assert!(!bed.world.calls().iter().any(|c| c.starts_with("delete_key")), "{:?}", bed.world.calls());
    assert!(
        report.warnings.iter().any(|w| w.contains("AKIANEW0000000000001") && w.contains("left alone")),
        "{report:?}"
    );
}

#[test]
fn the_rotation_id_says_when_it_began() {
    let began = std::time::SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_000_123);
    let id = humantime::format_rfc3339_millis(began).to_string().replace([':', '-', '.'], "");
    assert_eq!(rotation_began(&id), Some(began));
    assert_eq!(rotation_began("garbage"), None);
}

/// A caller that used the key one minute after the grace period ended, from 192.0.2.7.
struct UsedAfterGrace(SystemTime);

#[async_trait::async_trait]
impl crate::rotate::evidence::Evidence for UsedAfterGrace {
    async fn last_used(&self, _key_id: &str) -> Result<Option<crate::rotate::evidence::Use>, String> {
        Ok(Some(crate::rotate::evidence::Use {
            source_ip: None,
            user_agent: None,
            region: Some("us-east-1".into()),
            service: Some("sts".into()),
            last_seen: rekey_trail::time::format(self.0 + Duration::from_secs(60)),
            at: self.0 + Duration::from_secs(60),
            calls: 0,
            seen_in: "last-used",
        }))
    }
    async fn history(
        &self,
        _key_id: &str,
        _since: SystemTime,
        _hint_region: Option<&str>,
    ) -> (Vec<crate::rotate::evidence::Use>, Vec<crate::rotate::evidence::SourceCheck>) {
        (Vec::new(), Vec::new())
    }
}

#[tokio::test]
async fn a_deferred_deactivation_is_held_while_a_consumer_still_uses_the_old_key() {
    let bed = Bed::new(&["secretsmanager:app"]);
    bed.deferred().await;
    let grace_ended = bed.clock.now();
    let retire = Retire {
        source: Some(Arc::new(UsedAfterGrace(grace_ended))),
        since: Some(grace_ended),
        quiet: Duration::from_secs(5),
        ..Retire::default()
    };
    let report = bed.finish_deferred_with(retire).await;
    assert_eq!(report.outcome, "held", "{report:?}");
    assert!(bed.world.keys_of(USER).iter().any(|(id, st)| id == OLD && *st == Active), "the old key stays Active");
    let tag = bed.world.tag(USER, OLD).unwrap_or_default();
    assert!(tag.starts_with(crate::rotate::evidence::HELD_AT), "the hold is recorded for runners: {tag}");
}
