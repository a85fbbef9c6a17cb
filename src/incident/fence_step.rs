//! The fence's life in an incident, containment first: learn the allowed sources from the bounded
//! sample and `--allow-source`, put the fence on (journaled first, see `fence_journal`), check the
//! application behind it, widen it from the full history when the application fails, lift it
//! when even that does not help, and lift it once the leaked key is off.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::fence::{self, FenceError};
use super::fence_journal::{self, Entry, Pending};
use super::model::{FenceReport, FenceSource, TimelineEvent};
use crate::rotate::probe::Probe;

/// What the fence is learnt from.
pub struct Learnt {
    /// Sources from the sample (attacker addresses already out).
    pub sampled: Vec<FenceSource>,
    pub excluded: Vec<String>,
    /// `--allow-source`, validated.
    pub given: Vec<FenceSource>,
    pub sample_line: String,
    /// Consumers whose egress addresses change: only VPC / endpoint conditions may be used.
    pub unstable_egress: Vec<String>,
}

/// A fence on a user, journaled.
pub struct Fence {
    pub report: FenceReport,
    journal: Option<Pending>,
    user: String,
}

/// Sources the allowed list lacks, taken from `events` (the full history), never an attacker's.
pub fn widening(
    events: &[TimelineEvent],
    key: &str,
    allowed: &[FenceSource],
    attacker_ips: &[String],
) -> Vec<FenceSource> {
    let own: Vec<TimelineEvent> = events.iter().filter(|e| e.signer.as_deref() == Some(key)).cloned().collect();
    let (learnt, _) = fence::learn_sources(&own, None, attacker_ips);
    learnt
        .into_iter()
        .filter(|s| !allowed.iter().any(|a| a.kind == s.kind && same_value(&a.value, &s.value)))
        .filter(|s| fence::admits_attacker(s, attacker_ips).is_none())
        .collect()
}

fn same_value(a: &str, b: &str) -> bool {
    a.trim_end_matches("/32") == b.trim_end_matches("/32") || a.trim_end_matches("/128") == b.trim_end_matches("/128")
}

/// Builds the fence from what was learnt and puts it on `user`; never fails (the outcome is in the
/// report). The journal entry is written before the policy.
pub async fn put_on(
    iam: &aws_sdk_iam::Client,
    state_dir: &Path,
    user: &str,
    key: &str,
    learnt: Learnt,
    attacker_ips: &[String],
) -> Fence {
    let mut report = FenceReport {
        excluded: learnt.excluded,
        learnt_from: Some(format!(
            "{}{}",
            learnt.sample_line,
            if learnt.given.is_empty() {
                String::new()
            } else {
                format!(
                    "; --allow-source {}",
                    learnt.given.iter().map(|s| s.value.as_str()).collect::<Vec<_>>().join(", ")
                )
            }
        )),
        ..FenceReport::default()
    };
    let mut allowed: Vec<FenceSource> = learnt.given.into_iter().chain(learnt.sampled).collect();
    if !learnt.unstable_egress.is_empty() {
        let before = allowed.len();
        allowed.retain(|s| s.kind != "ip");
        report.notes.push(format!(
            "no IP condition: {} ({} address source(s) left out)",
            learnt.unstable_egress.join("; "),
            before - allowed.len()
        ));
        if allowed.is_empty() {
            report.status = "skipped".into();
            report.detail = Some(format!(
                "not fenced: a consumer's addresses change ({}) and the key's use shows no VPC or VPC endpoint to fence on; give --allow-source vpce-… if the calls go through one",
                learnt.unstable_egress.join("; ")
            ));
            return Fence { report, journal: None, user: user.to_string() };
        }
    }
    let policy = match fence::build_fence(&allowed, attacker_ips) {
        Ok(p) => p,
        Err(e) => {
            report.status = e.status().into();
            report.detail = Some(e.to_string());
            report.allowed = allowed;
            return Fence { report, journal: None, user: user.to_string() };
        }
    };
    report.allowed = policy.allowed.clone();
    report.notes.extend(policy.notes.iter().cloned());
    let journal = match fence_journal::begin(
        state_dir,
        Entry {
            user: user.to_string(),
            access_key_id: key.to_string(),
            policy_name: fence::POLICY_NAME.to_string(),
            started_at: rekey_trail::time::format(SystemTime::now()),
        },
    ) {
        Ok(j) => j,
        Err(e) => {
            // Without the journal a crash would leave the fence on with nobody to lift it.
            report.status = "failed".into();
            report.detail = Some(format!("not applied: the fence could not be journaled ({e})"));
            return Fence { report, journal: None, user: user.to_string() };
        }
    };
    match fence::apply(iam, user, &policy.document).await {
        Ok(()) => {
            report.status = "applied".into();
            report.policy_name = Some(fence::POLICY_NAME.into());
            fence_journal::crash_point("fence_applied");
            Fence { report, journal: Some(journal), user: user.to_string() }
        }
        Err(e) => {
            report.status = "failed".into();
            report.detail = Some(e.to_string());
            // Nothing was put; a policy half-put is removed by a later resume anyway.
            let _ = fence::remove(iam, user).await;
            let _ = journal.finish();
            Fence { report, journal: None, user: user.to_string() }
        }
    }
}

/// Checks every probe `times` times, `interval` apart; the first failure, if any.
pub async fn probes_fail(probes: &[Box<dyn Probe>], times: u32, interval: Duration) -> Option<String> {
    for i in 0..times.max(1) {
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        for p in probes {
            if let Err(e) = p.check().await {
                return Some(e);
            }
        }
    }
    None
}

impl Fence {
    /// A fence that cannot be put on at all.
    pub fn not_possible(why: &str) -> Fence {
        Fence {
            report: FenceReport { status: "not_possible".into(), detail: Some(why.into()), ..FenceReport::default() },
            journal: None,
            user: String::new(),
        }
    }

    pub fn is_on(&self) -> bool {
        self.report.status == "applied"
    }

    /// Adds `more` to the allowed sources and puts the widened fence on.
    pub async fn widen(
        &mut self,
        iam: &aws_sdk_iam::Client,
        more: Vec<FenceSource>,
        why: &str,
        attacker_ips: &[String],
    ) -> Result<(), FenceError> {
        let allowed: Vec<FenceSource> = self.report.allowed.iter().cloned().chain(more.iter().cloned()).collect();
        let policy = fence::build_fence(&allowed, attacker_ips)?;
        fence::apply(iam, &self.user, &policy.document).await?;
        self.report.allowed = policy.allowed;
        self.report.notes.push(format!(
            "widened with {} source(s) from the full history ({}) because {why}",
            more.len(),
            more.iter().map(|s| s.value.as_str()).collect::<Vec<_>>().join(", ")
        ));
        self.report.widened.extend(more);
        Ok(())
    }

    /// Takes the fence off (status `status`: `removed` once the key is off, `lifted` when the
    /// application could not work behind it) and clears its journal entry.
    pub async fn take_off(&mut self, iam: &aws_sdk_iam::Client, status: &str, why: &str) -> Result<(), FenceError> {
        if !self.is_on() {
            return Ok(());
        }
        fence::remove(iam, &self.user).await?;
        self.report.status = status.into();
        self.report.notes.push(why.to_string());
        if let Some(j) = self.journal.take()
            && let Err(e) = j.finish()
        {
            tracing::warn!("{e}");
        }
        Ok(())
    }

    /// The run is over and the fence stays on on purpose (no cutover): nothing for `resume` to do.
    pub fn keep(&mut self) {
        if let Some(j) = self.journal.take()
            && let Err(e) = j.finish()
        {
            tracing::warn!("{e}");
        }
    }
}
