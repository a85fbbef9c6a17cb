//! Recording fakes for every side effect of a rotation, with faults that can be switched on per
//! step, so that unit tests drive each path of the state machine without the emulator.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rekey_adapters::{ErrorKind, NewKey, Preflight, Role, Snapshot, Target, TargetError, TargetSpec};
use secrecy::SecretString;

use crate::rotate::clock::Clock;
use crate::rotate::iam::{Answer, Caller, Iam, IamError, KeyCheck, KeyInfo, KeyStatus, LastUsed};
use crate::rotate::machine::Factory;
use crate::rotate::probe::Probe;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A clock whose sleeps return at once and move time forward.
pub struct FakeClock {
    start: SystemTime,
    now: Mutex<SystemTime>,
}

/// Where every [`FakeClock`] starts; the fake IAM dates the keys it creates by it.
pub fn fake_start() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

impl FakeClock {
    pub fn new() -> Self {
        let start = fake_start();
        FakeClock { start, now: Mutex::new(start) }
    }

    pub fn elapsed(&self) -> Duration {
        lock(&self.now).duration_since(self.start).unwrap_or_default()
    }
}

#[async_trait]
impl Clock for FakeClock {
    fn now(&self) -> SystemTime {
        *lock(&self.now)
    }

    async fn sleep(&self, duration: Duration) {
        *lock(&self.now) += duration;
        tokio::task::yield_now().await;
    }
}

/// The operations a fault can be put on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Create,
    Delete,
    SetStatus,
    Tag,
    Apply(usize),
    Wait(usize),
    Rollback(usize),
    Stage(usize),
}

/// Shared by all fakes: the calls made, in order, and the faults to inject.
#[derive(Default)]
pub struct World {
    pub calls: Mutex<Vec<String>>,
    faults: Mutex<HashMap<Op, String>>,
    /// user -> keys
    pub keys: Mutex<HashMap<String, Vec<KeyInfo>>>,
    pub caller_user: Mutex<Option<String>>,
    next_key: Mutex<u32>,
    /// What each target hands to consumers, by target index.
    pub target_values: Mutex<HashMap<usize, String>>,
    /// Checks of the new key that fail before they start succeeding (u32::MAX: never works).
    pub key_check_failures: Mutex<u32>,
    /// Probe answers, consumed in order; once empty, probes pass.
    pub probe_answers: Mutex<Vec<bool>>,
    /// User tags: (user, tag key) -> value.
    pub tags: Mutex<HashMap<(String, String), String>>,
    /// The next tag write lands, but its answer is lost (the caller sees an error).
    pub tag_answer_lost: Mutex<bool>,
    /// Another actor creates this key (created at the given time) just before rekey's CreateAccessKey.
    pub intruder: Mutex<Option<(String, SystemTime)>>,
    /// CreateAccessKey creates the key, but its answer is lost.
    pub create_answer_lost: Mutex<bool>,
}

impl World {
    pub fn new() -> Arc<Self> {
        Arc::new(World::default())
    }

    pub fn with_user(self: &Arc<Self>, user: &str, keys: &[(&str, KeyStatus)]) -> Arc<Self> {
        lock(&self.keys).insert(
            user.to_string(),
            keys.iter().map(|(id, status)| KeyInfo { id: id.to_string(), status: *status, created: None }).collect(),
        );
        self.clone()
    }

    pub fn fail(&self, op: Op, message: &str) {
        lock(&self.faults).insert(op, message.to_string());
    }

    pub fn faults_clear(&self) {
        lock(&self.faults).clear();
    }

    fn fault(&self, op: Op) -> Option<String> {
        lock(&self.faults).get(&op).cloned()
    }

    fn log(&self, call: String) {
        lock(&self.calls).push(call);
    }

    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    pub fn keys_of(&self, user: &str) -> Vec<(String, KeyStatus)> {
        lock(&self.keys).get(user).map(|ks| ks.iter().map(|k| (k.id.clone(), k.status)).collect()).unwrap_or_default()
    }

    pub fn tag(&self, user: &str, key: &str) -> Option<String> {
        lock(&self.tags).get(&(user.to_string(), key.to_string())).cloned()
    }

    pub fn set_tag(&self, user: &str, key: &str, value: &str) {
        lock(&self.tags).insert((user.to_string(), key.to_string()), value.to_string());
    }

    pub fn value(&self, target: usize) -> Option<String> {
        lock(&self.target_values).get(&target).cloned()
    }
}

pub struct FakeIam(pub Arc<World>);

#[async_trait]
impl Iam for FakeIam {
    async fn caller(&self) -> Result<Caller, IamError> {
        let user = lock(&self.0.caller_user).clone().unwrap_or_else(|| "admin".into());
        Ok(Caller::from_arn(&format!("arn:aws:iam::123456789012:user/{user}"), "123456789012"))
    }

    async fn list_keys(&self, user: &str) -> Result<Vec<KeyInfo>, IamError> {
        lock(&self.0.keys).get(user).cloned().ok_or_else(|| IamError::NoSuchUser(user.into()))
    }

    async fn last_used(&self, _key_id: &str) -> Result<LastUsed, IamError> {
        Ok(LastUsed::default())
    }

    async fn create_key(&self, user: &str) -> Result<NewKey, IamError> {
        self.0.log(format!("create_key {user}"));
        if let Some(e) = self.0.fault(Op::Create) {
            return Err(IamError::Other(e));
        }
        let mut keys = lock(&self.0.keys);
        let list = keys.get_mut(user).ok_or_else(|| IamError::NoSuchUser(user.into()))?;
        if let Some((id, created)) = lock(&self.0.intruder).take() {
            list.push(KeyInfo { id, status: KeyStatus::Active, created: Some(created) });
        }
        if list.len() >= 2 {
            return Err(IamError::LimitExceeded);
        }
        let mut n = lock(&self.0.next_key);
        *n += 1;
        let id = format!("AKIANEW{:013}", *n);
        list.push(KeyInfo { id: id.clone(), status: KeyStatus::Active, created: Some(fake_start()) });
        if *lock(&self.0.create_answer_lost) {
            return Err(IamError::Other("dispatch failure: connection reset".into()));
        }
        Ok(NewKey::new(id, SecretString::from(format!("secret-of-new-key-{n}"))))
    }

    async fn set_status(&self, user: &str, key_id: &str, status: KeyStatus) -> Result<(), IamError> {
        self.0.log(format!("set_status {key_id} {status}"));
        if let Some(e) = self.0.fault(Op::SetStatus) {
            return Err(IamError::Other(e));
        }
        let mut keys = lock(&self.0.keys);
        let k = keys
            .get_mut(user)
            .and_then(|l| l.iter_mut().find(|k| k.id == key_id))
            .ok_or_else(|| IamError::NoSuchKey(key_id.into()))?;
        k.status = status;
        Ok(())
    }

    async fn delete_key(&self, user: &str, key_id: &str) -> Result<(), IamError> {
        self.0.log(format!("delete_key {key_id}"));
        if let Some(e) = self.0.fault(Op::Delete) {
            return Err(IamError::Other(e));
        }
        let mut keys = lock(&self.0.keys);
        let list = keys.get_mut(user).ok_or_else(|| IamError::NoSuchUser(user.into()))?;
        let before = list.len();
        list.retain(|k| k.id != key_id);
        if list.len() == before { Err(IamError::NoSuchKey(key_id.into())) } else { Ok(()) }
    }

    async fn tag_key(&self, user: &str, key_id: &str, description: &str) -> Result<(), IamError> {
        self.0.log(format!("tag_key {key_id}"));
        if let Some(e) = self.0.fault(Op::Tag) {
            return Err(IamError::AccessDenied(e));
        }
        self.0.set_tag(user, key_id, description);
        if std::mem::take(&mut *lock(&self.0.tag_answer_lost)) {
            return Err(IamError::Other("connection reset before the answer".into()));
        }
        Ok(())
    }

    async fn untag_key(&self, user: &str, key_id: &str) -> Result<(), IamError> {
        self.0.log(format!("untag_key {key_id}"));
        lock(&self.0.tags).remove(&(user.to_string(), key_id.to_string()));
        Ok(())
    }

    async fn user_tags(&self, user: &str) -> Result<Vec<(String, String)>, IamError> {
        let tags = lock(&self.0.tags);
        Ok(tags.iter().filter(|((u, _), _)| u == user).map(|((_, k), v)| (k.clone(), v.clone())).collect())
    }
}

pub struct FakeKeyCheck(pub Arc<World>);

#[async_trait]
impl KeyCheck for FakeKeyCheck {
    fn regions(&self) -> Vec<String> {
        vec!["us-east-1".into()]
    }

    async fn check(&self, _key: &NewKey, _region: usize) -> Answer {
        self.0.log("check_key".into());
        let mut failures = lock(&self.0.key_check_failures);
        if *failures > 0 {
            if *failures != u32::MAX {
                *failures -= 1;
            }
            return Answer::Rejected("InvalidClientTokenId".into());
        }
        Answer::Accepted
    }
}

/// A target holding one key id; the secret it receives is recorded only as "was given".
pub struct FakeTarget {
    world: Arc<World>,
    index: usize,
    name: String,
    role: Role,
    stages: bool,
}

#[async_trait]
impl Target for FakeTarget {
    fn name(&self) -> &str {
        &self.name
    }

    fn role(&self) -> Role {
        self.role
    }

    async fn preflight(&self) -> Result<Preflight, TargetError> {
        Ok(Preflight { current_key_id: self.world.value(self.index), ..Preflight::default() })
    }

    async fn snapshot(&self) -> Result<Snapshot, TargetError> {
        self.world.log(format!("snapshot {}", self.index));
        Ok(Snapshot(serde_json::json!({ "value": self.world.value(self.index) })))
    }

    async fn stage(&self, _key: &NewKey, _snapshot: &Snapshot) -> Result<bool, TargetError> {
        self.world.log(format!("stage {}", self.index));
        if let Some(e) = self.world.fault(Op::Stage(self.index)) {
            return Err(TargetError::new(&self.name, ErrorKind::Backend(e)));
        }
        Ok(self.stages)
    }

    async fn apply(&self, key: &NewKey, _snapshot: &Snapshot) -> Result<(), TargetError> {
        self.world.log(format!("apply {}", self.index));
        if let Some(e) = self.world.fault(Op::Apply(self.index)) {
            return Err(TargetError::new(&self.name, ErrorKind::Backend(e)));
        }
        lock(&self.world.target_values).insert(self.index, key.access_key_id.clone());
        Ok(())
    }

    async fn wait_consumers(&self, _snapshot: &Snapshot) -> Result<(), TargetError> {
        self.world.log(format!("wait {}", self.index));
        match self.world.fault(Op::Wait(self.index)) {
            Some(e) => Err(TargetError::new(&self.name, ErrorKind::Consumers(e))),
            None => Ok(()),
        }
    }

    async fn current_key_id(&self) -> Result<Option<String>, TargetError> {
        Ok(self.world.value(self.index))
    }

    async fn rollback(&self, snapshot: &Snapshot) -> Result<(), TargetError> {
        self.world.log(format!("rollback {}", self.index));
        if let Some(e) = self.world.fault(Op::Rollback(self.index)) {
            return Err(TargetError::new(&self.name, ErrorKind::Backend(e)));
        }
        let old = snapshot.0["value"].as_str().map(str::to_string);
        let mut values = lock(&self.world.target_values);
        match old {
            Some(v) => values.insert(self.index, v),
            None => values.remove(&self.index),
        };
        Ok(())
    }

    async fn finish(&self, _snapshot: &Snapshot) -> Result<(), TargetError> {
        self.world.log(format!("finish {}", self.index));
        Ok(())
    }
}

pub struct FakeProbe(pub Arc<World>);

#[async_trait]
impl Probe for FakeProbe {
    fn name(&self) -> &str {
        "http://app/health"
    }

    async fn check(&self) -> Result<(), String> {
        self.0.log("probe".into());
        let mut answers = lock(&self.0.probe_answers);
        if answers.is_empty() || answers.remove(0) { Ok(()) } else { Err("http://app/health: HTTP 503".into()) }
    }
}

/// Builds fake targets: `env:` ones are stores that cannot stage, `secretsmanager:` stores that
/// can, `ecs:` deployers. The index is the order of creation within one rotation.
pub struct FakeFactory {
    pub world: Arc<World>,
    pub specs: Vec<String>,
}

impl Factory for FakeFactory {
    fn target(&self, spec: &TargetSpec, _cx: &crate::rotate::machine::TargetContext<'_>) -> Box<dyn Target> {
        let index = self.specs.iter().position(|s| *s == spec.raw).expect("spec registered with the fake factory");
        let (role, stages) = match spec.kind {
            rekey_adapters::TargetKind::Ecs => (Role::Deployer, false),
            rekey_adapters::TargetKind::SecretsManager => (Role::Store, true),
            _ => (Role::Store, false),
        };
        Box::new(FakeTarget { world: self.world.clone(), index, name: spec.raw.clone(), role, stages })
    }

    fn probe(&self, _url: &str) -> Result<Box<dyn Probe>, String> {
        Ok(Box::new(FakeProbe(self.world.clone())))
    }
}

/// The old key's consumers as evidence sees them: one caller that signs every `every` from the
/// fake clock's start until it moves to the new key (`moves_at`), or never calls when `every` is
/// `None`. Last-used reports it by service and Region, event history by address and agent.
pub struct FakeEvidence {
    pub clock: Arc<FakeClock>,
    pub every: Option<Duration>,
    pub moves_at: Mutex<Option<SystemTime>>,
    /// `GetAccessKeyLastUsed` is denied.
    pub unreadable: bool,
    /// Event history can be read and names the caller.
    pub history: bool,
}

impl FakeEvidence {
    pub fn new(clock: Arc<FakeClock>, every: Option<Duration>) -> Self {
        FakeEvidence { clock, every, moves_at: Mutex::new(None), unreadable: false, history: false }
    }

    /// The caller's last call so far, and how many it made.
    fn last_call(&self) -> Option<(SystemTime, u64)> {
        let every = self.every?;
        let now = self.clock.now();
        let start = now - self.clock.elapsed();
        let stop = lock(&self.moves_at).map_or(now, |m| m.min(now));
        let n = stop.duration_since(start).ok()?.as_nanos() / every.as_nanos();
        Some((start + every * n as u32, n as u64 + 1))
    }
}

#[async_trait]
impl crate::rotate::evidence::Evidence for FakeEvidence {
    async fn last_used(&self, _key_id: &str) -> Result<Option<crate::rotate::evidence::Use>, String> {
        if self.unreadable {
            return Err("access denied: iam:GetAccessKeyLastUsed".into());
        }
        Ok(self
            .last_call()
            .map(|(at, _)| crate::rotate::evidence::Use::last_used(at, Some("sts".into()), Some("eu-west-2".into()))))
    }

    async fn history(
        &self,
        _key_id: &str,
        since: SystemTime,
        _hint: Option<&str>,
    ) -> (Vec<crate::rotate::evidence::Use>, Vec<crate::rotate::evidence::SourceCheck>) {
        if !self.history {
            return (Vec::new(), Vec::new());
        }
        let check = crate::rotate::evidence::SourceCheck {
            source: "event-history",
            ok: true,
            status: "eu-west-2: ok".into(),
            as_of: rekey_trail::time::format(self.clock.now()),
            lag_secs: 900,
        };
        let uses = self
            .last_call()
            .filter(|(at, _)| *at >= since)
            .map(|(at, calls)| crate::rotate::evidence::Use {
                source_ip: Some("203.0.113.9".into()),
                user_agent: Some("nightly-report/2.1 aws-sdk-go/1.44".into()),
                region: Some("eu-west-2".into()),
                service: Some("sts".into()),
                last_seen: rekey_trail::time::format(at),
                at,
                calls,
                seen_in: "event-history",
            })
            .into_iter()
            .collect();
        (uses, vec![check])
    }
}
