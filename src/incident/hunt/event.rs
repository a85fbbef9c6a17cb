//! Fields of a CloudTrail event the hunt reads, and small text helpers for findings.

use std::collections::BTreeSet;

use serde_json::Value;

use super::policy_json::decode_doc;
use crate::incident::model::TimelineEvent;

pub(super) fn req<'e>(e: &'e TimelineEvent, key: &str) -> Option<&'e str> {
    e.request_parameters.as_ref()?.get(key)?.as_str()
}

pub(super) fn req_bool(e: &TimelineEvent, key: &str) -> bool {
    e.request_parameters.as_ref().and_then(|v| v.get(key)).and_then(Value::as_bool).unwrap_or(false)
}

pub(super) fn resp<'e>(e: &'e TimelineEvent, path: &[&str]) -> Option<&'e str> {
    path.iter().try_fold(e.response_elements.as_ref()?, |v, k| v.get(k))?.as_str()
}

pub(super) fn resp_bool(e: &TimelineEvent, path: &[&str]) -> bool {
    e.response_elements
        .as_ref()
        .and_then(|v| path.iter().try_fold(v, |v, k| v.get(k)))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// A policy document parameter: CloudTrail records it as a JSON string, sometimes as an object.
pub(super) fn doc_param(e: &TimelineEvent, key: &str) -> Option<String> {
    match e.request_parameters.as_ref()?.get(key)? {
        Value::String(s) => Some(decode_doc(s)),
        v @ Value::Object(_) => Some(v.to_string()),
        _ => None,
    }
}

pub(super) fn user_from_arn(arn: &str) -> Option<&str> {
    let resource = arn.split(':').nth(5)?;
    resource.strip_prefix("user/").map(|p| p.rsplit('/').next().unwrap_or(p))
}

pub(super) fn join(set: &BTreeSet<String>) -> String {
    if set.is_empty() { "none".into() } else { set.iter().cloned().collect::<Vec<_>>().join(", ") }
}

pub(super) fn join_detail(a: &str, b: &str) -> String {
    if b.is_empty() { a.to_string() } else { format!("{a}; {b}") }
}

pub(super) fn capitalised(kind: &str) -> String {
    let mut c = kind.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}
