//! Who uses the keys, from where: the keys' last use, a bounded read of event history, and the
//! trail files given with `--logs`; each caller marked with the target that explains it.
//!
//! A CloudTrail record names a caller by source address, user agent and Region, not by the place
//! its key came from, so "explained" can only be inferred: the AWS SDKs put the execution
//! environment in the user agent (`exec-env/AWS_Lambda_…`, `exec-env/AWS_ECS_…`), which ties a
//! caller to the Lambda functions or ECS services found in its Region. Any other caller, and every
//! caller `GetAccessKeyLastUsed` reports (it names none), is "not explained by any target": the
//! person reading the output knows their hosts, rekey does not.

use std::time::SystemTime;

use serde::Serialize;

use super::Target;
use crate::incident::history::EventHistory;
use crate::rotate::evidence::{SourceCheck, Use, merge, read_history, use_from_record};
use crate::rotate::iam::{Iam, KeyInfo};

/// Event history pages read per key and Region (50 events each, newest first).
pub const HISTORY_PAGES: usize = 10;
/// Trail records read at most: the newest callers are in the first ones found.
pub const MAX_TRAIL_RECORDS: u64 = 200_000;

pub const NOT_EXPLAINED: &str = "not explained by any target";

/// A caller and the target that explains it.
#[derive(Debug, Clone, Serialize)]
pub struct Consumer {
    pub key_id: String,
    #[serde(flatten)]
    pub seen: Use,
    pub explained_by: String,
}

/// Where to look.
pub struct Sources<'a> {
    pub iam: &'a dyn Iam,
    pub history: Option<&'a dyn EventHistory>,
    /// Regions whose history is read, besides each key's last-used Region and us-east-1.
    pub regions: Vec<String>,
    pub since: SystemTime,
    /// `--logs`, opened.
    pub logs: Vec<Box<dyn rekey_trail::Source>>,
    /// LookupEvents requests a second per Region.
    pub rate: f64,
}

/// Every caller of `keys` the sources show since `since`, with what was read.
pub async fn find(src: Sources<'_>, keys: &[KeyInfo]) -> (Vec<(String, Use)>, Vec<SourceCheck>, Vec<String>) {
    let now = SystemTime::now();
    let mut uses: Vec<(String, Use)> = Vec::new();
    let mut checks = Vec::new();
    let mut notes = Vec::new();
    for k in keys {
        let last = match src.iam.last_used(&k.id).await {
            Ok(lu) => {
                checks.push(check("last-used", true, format!("{}: ok", k.id), now));
                lu.date.map(|at| Use::last_used(at, lu.service, lu.region))
            }
            Err(e) => {
                checks.push(check("last-used", false, format!("{}: not read: {e}", k.id), now));
                None
            }
        };
        let mut from_history = Vec::new();
        if let Some(h) = src.history {
            let mut regions: Vec<String> = Vec::new();
            let hint = last.as_ref().and_then(|u| u.region.clone());
            for r in hint.into_iter().chain(src.regions.iter().cloned()).chain(["us-east-1".to_string()]) {
                if !regions.contains(&r) {
                    regions.push(r);
                }
            }
            let (h_uses, h_checks) = read_history(h, &k.id, src.since, now, &regions, HISTORY_PAGES, src.rate).await;
            from_history = h_uses;
            checks.extend(h_checks.into_iter().map(|mut c| {
                c.status = format!("{} {}", k.id, c.status);
                c
            }));
        }
        // The last-used record is a caller only when history names none more precisely.
        if let Some(l) = last.filter(|l| l.at >= src.since && !from_history.iter().any(|u| u.at >= l.at)) {
            uses.push((k.id.clone(), l));
        }
        uses.extend(from_history.into_iter().map(|u| (k.id.clone(), u)));
    }
    if !src.logs.is_empty() {
        let (trail, summary_note) = trail_callers(src.logs, keys, src.since, now).await;
        notes.extend(summary_note);
        for (key, u) in trail {
            match uses.iter_mut().find(|(k, x)| {
                *k == key && x.source_ip == u.source_ip && x.user_agent == u.user_agent && x.region == u.region
            }) {
                Some((_, x)) if x.seen_in == "trail" => {
                    x.calls += u.calls;
                    if u.at > x.at {
                        x.at = u.at;
                        x.last_seen = u.last_seen.clone();
                    }
                }
                _ => uses.push((key, u)),
            }
        }
    }
    uses.sort_by_key(|u| std::cmp::Reverse(u.1.at));
    (uses, checks, notes)
}

fn check(source: &'static str, ok: bool, status: String, now: SystemTime) -> SourceCheck {
    let lag = if source == "last-used" {
        crate::rotate::evidence::LAST_USED_LAG
    } else {
        crate::rotate::evidence::HISTORY_LAG
    };
    SourceCheck { source, ok, status, as_of: rekey_trail::time::format(now), lag_secs: lag.as_secs() }
}

/// The callers in the trail files, grouped per key and (address, agent, Region).
async fn trail_callers(
    logs: Vec<Box<dyn rekey_trail::Source>>,
    keys: &[KeyInfo],
    since: SystemTime,
    until: SystemTime,
) -> (Vec<(String, Use)>, Option<String>) {
    let ids: Vec<String> = keys.iter().map(|k| k.id.clone()).collect();
    // The engine blocks, and S3 sources block on the runtime: run it on the blocking pool.
    let scanned = tokio::task::spawn_blocking(move || {
        let refs: Vec<&dyn rekey_trail::Source> = logs.iter().map(|s| s.as_ref()).collect();
        let mut query = rekey_trail::Query::new(ids.clone());
        query.since = Some(since);
        query.until = Some(until);
        let mut per_key: Vec<(String, Vec<Use>)> = ids.iter().map(|k| (k.clone(), Vec::new())).collect();
        let mut records = 0u64;
        let result = rekey_trail::scan(&refs, &query, &mut |m| {
            records += 1;
            if records > MAX_TRAIL_RECORDS {
                return;
            }
            let Some(key) = m.chain.first() else { return };
            let Some(mut u) = use_from_record(&m.raw) else { return };
            if u.at < since {
                return;
            }
            u.seen_in = "trail";
            if let Some((_, list)) = per_key.iter_mut().find(|(k, _)| k == key) {
                merge(list, u);
            }
        });
        (result, per_key, records)
    })
    .await;
    match scanned {
        Ok((Ok(summary), per_key, records)) => {
            let mut note = (records > MAX_TRAIL_RECORDS).then(|| {
                format!("trail files: {records} records of the keys; callers taken from the first {MAX_TRAIL_RECORDS}")
            });
            if !summary.corrupt.is_empty() {
                note = Some(format!(
                    "trail files: {} could not be read (first: {})",
                    summary.corrupt.len(),
                    summary.corrupt[0].0
                ));
            }
            (per_key.into_iter().flat_map(|(k, us)| us.into_iter().map(move |u| (k.clone(), u))).collect(), note)
        }
        Ok((Err(e), _, _)) => (Vec::new(), Some(format!("trail files not read: {e}"))),
        Err(e) => (Vec::new(), Some(format!("trail files not read: the scan stopped ({e})"))),
    }
}

/// Marks each caller with the target that explains it, from the execution environment the SDKs
/// put in the user agent.
pub fn explain(uses: Vec<(String, Use)>, targets: &[Target]) -> Vec<Consumer> {
    uses.into_iter()
        .map(|(key_id, seen)| {
            let ua = seen.user_agent.as_deref().unwrap_or("");
            let kind = if ua.contains("exec-env/AWS_Lambda") {
                Some(rekey_adapters::TargetKind::Lambda)
            } else if ua.contains("exec-env/AWS_ECS") {
                Some(rekey_adapters::TargetKind::Ecs)
            } else {
                None
            };
            let candidates: Vec<&str> = kind
                .map(|kind| {
                    targets
                        .iter()
                        .filter(|t| t.kind == kind.as_str())
                        .filter(|t| seen.region.is_none() || t.region == seen.region)
                        .map(|t| t.spec.as_str())
                        .collect()
                })
                .unwrap_or_default();
            let explained_by = match candidates.as_slice() {
                [] => NOT_EXPLAINED.to_string(),
                [one] => one.to_string(),
                many => format!("one of {}", many.join(", ")),
            };
            Consumer { key_id, seen, explained_by }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(ua: &str, region: &str) -> (String, Use) {
        let raw = format!(
            r#"{{"eventTime":"2027-01-15T10:00:00Z","eventSource":"sts.amazonaws.com","awsRegion":"{region}","sourceIPAddress":"203.0.113.9","userAgent":"{ua}"}}"#
        );
        ("AKIAEXAMPLE000000001".into(), use_from_record(&raw).unwrap())
    }

    #[test]
    fn a_lambda_caller_is_explained_by_the_function_in_its_region_and_others_are_not() {
        let targets = vec![
            Target::new(
                "lambda:billing".into(),
                rekey_adapters::TargetKind::Lambda,
                Some("eu-west-1"),
                "",
                String::new(),
            ),
            Target::new("lambda:far".into(), rekey_adapters::TargetKind::Lambda, Some("us-west-2"), "", String::new()),
            Target::new("ecs:prod/api".into(), rekey_adapters::TargetKind::Ecs, Some("eu-west-1"), "", String::new()),
        ];
        let out = explain(
            vec![
                caller("aws-sdk-python/1.0 exec-env/AWS_Lambda_python3.12", "eu-west-1"),
                caller("aws-sdk-go-v2/1.30 exec-env/AWS_ECS_FARGATE", "eu-west-1"),
                caller("curl/8.0", "eu-west-1"),
            ],
            &targets,
        );
        assert_eq!(out[0].explained_by, "lambda:billing");
        assert_eq!(out[1].explained_by, "ecs:prod/api");
        assert_eq!(out[2].explained_by, NOT_EXPLAINED);
    }
}
