//! The hold before deactivation and `rekey retire`, driven with the recording fakes: a consumer
//! nobody told rekey about keeps signing with the old key, or stops.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;
use crate::progress::Progress;
use crate::rotate::fakes::{FakeClock, FakeEvidence, FakeFactory, FakeIam, FakeKeyCheck, World};
use crate::rotate::iam::KeyStatus::{Active, Inactive};
use crate::rotate::journal::{Journal, Journals};
use crate::rotate::machine::{Effects, Report, Settings, TargetSetting, rotate};
use crate::rotate::wait::{Streak, Verify};

const OLD: &str = "AKIAOLD0000000000001";
const USER: &str = "app-integration-user";

fn at(clock: &FakeClock, secs: u64) -> SystemTime {
    clock.now() - clock.elapsed() + Duration::from_secs(secs)
}

fn use_at(t: SystemTime) -> Use {
    Use::last_used(t, Some("s3".into()), Some("eu-west-1".into()))
}

#[test]
fn a_use_after_the_moment_holds_and_an_earlier_one_does_not() {
    let clock = FakeClock::new();
    let since = at(&clock, 100);
    let j = judge(OLD, Ok(Some(use_at(at(&clock, 101)))), (Vec::new(), Vec::new()), since, at(&clock, 110));
    assert_eq!(j.verdict, Verdict::InUse);
    assert!(j.holds());
    assert!(j.summary().contains("s3 in eu-west-1"), "{}", j.summary());

    let j = judge(OLD, Ok(Some(use_at(at(&clock, 99)))), (Vec::new(), Vec::new()), since, at(&clock, 110));
    assert_eq!(j.verdict, Verdict::Unused);
    assert!(!j.holds());
    // Ten seconds of watching cannot speak for minutes of lag, and the report says so.
    assert!(j.caveat.as_deref().unwrap().contains("may not show yet"), "{j:?}");
    let j = judge(OLD, Ok(None), (Vec::new(), Vec::new()), since, since + 2 * LAST_USED_LAG);
    assert_eq!((j.verdict, j.caveat.is_none()), (Verdict::Unused, true), "{j:?}");
}

#[test]
fn no_readable_source_is_not_taken_for_no_use() {
    let clock = FakeClock::new();
    let since = at(&clock, 0);
    let j = judge(OLD, Err("AccessDenied".into()), (Vec::new(), Vec::new()), since, at(&clock, 10));
    assert_eq!(j.verdict, Verdict::Unknown);
    assert!(j.holds());
    assert!(j.sources[0].status.contains("AccessDenied"));
}

#[test]
fn event_history_names_the_caller_and_counts_each_one_once() {
    let recs = [
        r#"{"eventTime":"2027-01-15T10:00:00Z","eventSource":"sts.amazonaws.com","awsRegion":"eu-west-2","sourceIPAddress":"203.0.113.9","userAgent":"cron/1.0"}"#,
        r#"{"eventTime":"2027-01-15T10:05:00Z","eventSource":"s3.amazonaws.com","awsRegion":"eu-west-2","sourceIPAddress":"203.0.113.9","userAgent":"cron/1.0"}"#,
        r#"{"eventTime":"2027-01-15T10:01:00Z","eventSource":"sts.amazonaws.com","awsRegion":"us-east-1","sourceIPAddress":"198.51.100.7","userAgent":"app/3"}"#,
        r#"not json"#,
    ];
    let mut uses = Vec::new();
    for r in recs {
        if let Some(u) = use_from_record(r) {
            merge(&mut uses, u);
        }
    }
    assert_eq!(uses.len(), 2, "{uses:?}");
    let cron = uses.iter().find(|u| u.user_agent.as_deref() == Some("cron/1.0")).unwrap();
    assert_eq!((cron.calls, cron.last_seen.as_str(), cron.service.as_deref()), (2, "2027-01-15T10:05:00Z", Some("s3")));
    let since = rekey_trail::time::parse("2027-01-15T10:02:00Z").unwrap();
    let j = judge(OLD, Ok(None), (uses, Vec::new()), since, since + Duration::from_secs(60));
    assert_eq!(j.consumers.len(), 1, "only the caller after the moment: {j:?}");
    assert_eq!(j.consumers[0].source_ip.as_deref(), Some("203.0.113.9"));
}

#[tokio::test]
async fn watching_stops_at_the_first_use_and_reads_history_to_name_it() {
    let clock = Arc::new(FakeClock::new());
    let mut ev = FakeEvidence::new(clock.clone(), Some(Duration::from_secs(3)));
    ev.history = true;
    let j = watch(&ev, clock.as_ref(), OLD, Duration::from_secs(60)).await;
    assert_eq!(j.verdict, Verdict::InUse, "{j:?}");
    assert!(clock.elapsed() <= Duration::from_secs(4), "stopped at the first use: {:?}", clock.elapsed());
    assert_eq!(j.consumers[0].user_agent.as_deref(), Some("nightly-report/2.1 aws-sdk-go/1.44"));
    assert!(j.summary().contains("203.0.113.9"), "{}", j.summary());
}

#[tokio::test]
async fn a_quiet_key_is_watched_for_the_whole_window() {
    let clock = Arc::new(FakeClock::new());
    let ev = FakeEvidence::new(clock.clone(), Some(Duration::from_secs(30)));
    // The caller's last call was at 0 s; watching starts at 1 s.
    clock.sleep(Duration::from_secs(1)).await;
    let j = watch(&ev, clock.as_ref(), OLD, Duration::from_secs(10)).await;
    assert_eq!(j.verdict, Verdict::Unused, "{j:?}");
    assert!(clock.elapsed() >= Duration::from_secs(11));
    assert!(j.last_use.is_some(), "the earlier use is reported");
}

/// A rotation with one env target, a passing probe and `retire` as given.
struct Bed {
    world: Arc<World>,
    clock: Arc<FakeClock>,
    dir: tempfile::TempDir,
}

impl Bed {
    fn new() -> Bed {
        let world = World::new().with_user(USER, &[(OLD, Active)]);
        world.target_values.lock().unwrap().insert(0, OLD.into());
        Bed { world, clock: Arc::new(FakeClock::new()), dir: tempfile::tempdir().unwrap() }
    }

    async fn rotate(&self, retire: Retire) -> Report {
        let streak = Streak { successes: 3, timeout: Duration::from_secs(60), interval: Duration::from_secs(1) };
        let settings = Settings {
            user: USER.into(),
            old_key: None,
            targets: vec![TargetSetting { spec: "env:/a".parse().unwrap(), restart_cmd: None }],
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
            retire,
        };
        let (iam, check) = (FakeIam(self.world.clone()), FakeKeyCheck(self.world.clone()));
        let factory = FakeFactory { world: self.world.clone(), specs: vec!["env:/a".into()] };
        let progress = Progress::off();
        let fx = Effects {
            iam: &iam,
            key_check: &check,
            clock: self.clock.as_ref(),
            factory: &factory,
            progress: &progress,
            journals: Journals::Local(self.dir.path().to_path_buf()),
        };
        rotate(&fx, &settings, std::future::pending()).await.expect("not refused")
    }

    fn evidence(&self, every: Option<Duration>) -> Arc<FakeEvidence> {
        Arc::new(FakeEvidence::new(self.clock.clone(), every))
    }
}

#[tokio::test]
async fn an_untold_consumer_holds_the_old_key_active_and_is_named() {
    let bed = Bed::new();
    let ev = bed.evidence(Some(Duration::from_secs(2)));
    let report = bed.rotate(Retire { source: Some(ev), ..Retire::default() }).await;
    assert_eq!(report.outcome, "held", "{report:?}");
    assert_eq!(report.old_key_status, Some(Active));
    let keys = bed.world.keys_of(USER);
    assert_eq!(keys.len(), 2);
    assert!(keys.iter().all(|(_, s)| *s == Active), "both keys stay Active: {keys:?}");
    assert_eq!(bed.world.value(0), report.new_key_id, "the target keeps the new key");
    let calls = bed.world.calls();
    assert!(!calls.iter().any(|c| c.starts_with("set_status")), "{calls:?}");
    assert!(calls.contains(&format!("tag_key {OLD}")), "the hold is recorded on the user: {calls:?}");
    assert!(report.left.iter().any(|l| l.contains("sts in eu-west-2")), "{:?}", report.left);
    assert!(report.left.iter().any(|l| l.contains(&format!("rekey retire --user {USER}"))), "{:?}", report.left);
    let j = report.evidence.as_ref().unwrap();
    assert_eq!(j.verdict, Verdict::InUse);
    assert!(Journal::list_unfinished(bed.dir.path()).unwrap().is_empty(), "the journal is closed");
    assert_eq!(report.outcome(), crate::rotate::journal::Outcome::Held);
}

#[tokio::test]
async fn a_consumer_that_moved_before_the_check_lets_the_rotation_finish() {
    let bed = Bed::new();
    let ev = bed.evidence(Some(Duration::from_secs(1)));
    // It moves right away: every use it made is from before the targets were even written.
    *ev.moves_at.lock().unwrap() = Some(bed.clock.now());
    let report = bed.rotate(Retire { source: Some(ev), ..Retire::default() }).await;
    assert_eq!(report.outcome, "rotated", "{report:?}");
    assert_eq!(report.old_key_status, Some(Inactive));
    let j = report.evidence.as_ref().expect("the check is reported");
    assert_eq!(j.verdict, Verdict::Unused);
    assert!(j.caveat.is_some(), "ten seconds cannot cover the sources' lag, and the report says so");
}

#[tokio::test]
async fn force_deactivate_skips_the_check() {
    let bed = Bed::new();
    let ev = bed.evidence(Some(Duration::from_secs(1)));
    let report = bed.rotate(Retire { source: Some(ev), ..Retire::forced("--force-deactivate") }).await;
    assert_eq!(report.outcome, "rotated", "{report:?}");
    assert_eq!(report.old_key_status, Some(Inactive));
    assert_eq!(report.evidence.unwrap().verdict, Verdict::Skipped);
}

#[tokio::test]
async fn a_last_use_rekey_cannot_read_holds_rather_than_guesses() {
    let bed = Bed::new();
    let mut ev = FakeEvidence::new(bed.clock.clone(), None);
    ev.unreadable = true;
    let report = bed.rotate(Retire { source: Some(Arc::new(ev)), ..Retire::default() }).await;
    assert_eq!(report.outcome, "held", "{report:?}");
    assert!(report.left[0].contains("could not tell"), "{:?}", report.left);
}

#[tokio::test]
async fn without_a_source_the_rotation_reads_last_used_through_its_iam_client() {
    // The fake IAM reports the key as never used: nothing holds it.
    let bed = Bed::new();
    let report = bed.rotate(Retire::default()).await;
    assert_eq!(report.outcome, "rotated", "{report:?}");
    assert_eq!(report.evidence.unwrap().verdict, Verdict::Unused);
    assert!(bed.clock.elapsed() >= DEFAULT_QUIET, "the old key was watched");
}

fn two_keys(bed: &Bed) {
    let mut keys = bed.world.keys.lock().unwrap();
    let list = keys.get_mut(USER).unwrap();
    list.clear();
    let t0 = bed.clock.now() - Duration::from_secs(86_400);
    list.push(KeyInfo {
        id: "AKIANEW0000000000009".into(),
        status: Active,
        created: Some(t0 + Duration::from_secs(60)),
    });
    list.push(KeyInfo { id: OLD.into(), status: Active, created: Some(t0) });
}

fn retire_settings(idle: u64) -> RetireSettings {
    RetireSettings { user: USER.into(), key: None, idle: Duration::from_secs(idle), force: false }
}

#[tokio::test]
async fn retire_holds_a_key_still_in_use_then_deactivates_it_once_idle() {
    let bed = Bed::new();
    two_keys(&bed);
    let ev = FakeEvidence::new(bed.clock.clone(), Some(Duration::from_secs(5)));
    let iam = FakeIam(bed.world.clone());
    bed.clock.sleep(Duration::from_secs(100)).await;

    let r = retire(&iam, &ev, bed.clock.as_ref(), &retire_settings(60)).await.unwrap();
    assert_eq!((r.outcome, r.key_id.as_deref()), ("held", Some(OLD)), "{r:?}");
    assert!(r.message.contains("sts in eu-west-2"), "{}", r.message);
    assert!(bed.world.keys_of(USER).iter().all(|(_, s)| *s == Active));

    // The consumer moves; a minute later the key has been idle long enough.
    *ev.moves_at.lock().unwrap() = Some(bed.clock.now());
    bed.clock.sleep(Duration::from_secs(30)).await;
    let r = retire(&iam, &ev, bed.clock.as_ref(), &retire_settings(60)).await.unwrap();
    assert_eq!(r.outcome, "held", "idle for 30 s only: {r:?}");
    bed.clock.sleep(Duration::from_secs(31)).await;
    let r = retire(&iam, &ev, bed.clock.as_ref(), &retire_settings(60)).await.unwrap();
    assert_eq!(r.outcome, "retired", "{r:?}");
    assert_eq!(r.current_key_id.as_deref(), Some("AKIANEW0000000000009"));
    assert!(bed.world.keys_of(USER).contains(&(OLD.to_string(), Inactive)));
    assert!(bed.world.keys_of(USER).contains(&("AKIANEW0000000000009".to_string(), Active)));
    assert!(bed.world.calls().contains(&format!("set_status {OLD} Inactive")));
}

#[tokio::test]
async fn retire_refuses_to_cut_off_the_only_key_and_has_nothing_to_do_with_one() {
    let bed = Bed::new();
    let ev = FakeEvidence::new(bed.clock.clone(), None);
    let iam = FakeIam(bed.world.clone());
    let r = retire(&iam, &ev, bed.clock.as_ref(), &retire_settings(60)).await.unwrap();
    assert_eq!(r.outcome, "nothing_to_retire");
    let s = RetireSettings { key: Some(OLD.into()), force: true, ..retire_settings(60) };
    let e = retire(&iam, &ev, bed.clock.as_ref(), &s).await.unwrap_err();
    assert!(e.to_string().contains("only Active key"), "{e}");
    let s = RetireSettings { user: "nobody".into(), ..retire_settings(60) };
    assert!(matches!(retire(&iam, &ev, bed.clock.as_ref(), &s).await, Err(RetireError::Refused(_))));
    assert!(bed.world.calls().is_empty(), "nothing changed: {:?}", bed.world.calls());
}

#[tokio::test]
async fn retire_force_deactivates_without_looking() {
    let bed = Bed::new();
    two_keys(&bed);
    let ev = FakeEvidence::new(bed.clock.clone(), Some(Duration::from_secs(1)));
    let iam = FakeIam(bed.world.clone());
    let s = RetireSettings { force: true, ..retire_settings(3600) };
    let r = retire(&iam, &ev, bed.clock.as_ref(), &s).await.unwrap();
    assert_eq!(r.outcome, "retired");
    assert_eq!(r.evidence.unwrap().verdict, Verdict::Skipped);
}

#[tokio::test]
async fn a_runner_asks_whether_the_key_was_used_since_its_grace_ended() {
    let clock = Arc::new(FakeClock::new());
    let ev = FakeEvidence::new(clock.clone(), Some(Duration::from_secs(10)));
    *ev.moves_at.lock().unwrap() = Some(at(&clock, 100));
    clock.sleep(Duration::from_secs(3600)).await;
    let grace_ended = at(&clock, 95);
    assert_eq!(check_since(&ev, clock.as_ref(), OLD, grace_ended).await.verdict, Verdict::InUse);
    let grace_ended = at(&clock, 101);
    let j = check_since(&ev, clock.as_ref(), OLD, grace_ended).await;
    assert_eq!(j.verdict, Verdict::Unused, "{j:?}");
    assert!(j.caveat.is_none(), "an hour covers the sources' lag");
}

#[tokio::test]
async fn a_hold_is_a_tag_a_runner_can_read_back() {
    let bed = Bed::new();
    let iam = FakeIam(bed.world.clone());
    record_hold(&iam, bed.clock.as_ref(), USER, OLD).await.unwrap();
    assert_eq!(bed.world.calls(), vec![format!("tag_key {OLD}")]);
    let value = format!("{HELD_AT}{}", rekey_trail::time::format(bed.clock.now()));
    assert_eq!(held_at(&value), Some(bed.clock.now()));
    assert_eq!(held_at("rekey-deactivate-after-2027-01-15T10:00:00Z"), None);
}
