//! Step 2 of an incident: lock the attacker out within seconds while production keeps working, by an
//! inline policy on the key's owner that denies everything unless the request comes from where the
//! application itself called from before the attack.
//!
//! How IAM evaluates the one Deny statement (IAM User Guide, "Condition operators" and "AWS global
//! condition context keys"; example policy "AWS: Denies access to AWS based on the source IP"):
//! - Operators in one `Condition` block are ANDed, and so are several keys under one operator; the
//!   values listed for one key are ORed. The statement denies only when every condition holds.
//! - `NotIpAddress aws:SourceIp [ips]` holds when the caller's public IP is none of ours. A request
//!   through a VPC endpoint has no `aws:SourceIp` at all (only `aws:VpcSourceIp`, a private address),
//!   and a negated operator on a missing key evaluates to *true*: alone, it would deny the
//!   application's VPC-endpoint traffic. It must stay a plain `NotIpAddress`, never `...IfExists`:
//!   that would let through anyone calling from their own VPC endpoint.
//! - `StringNotEqualsIfExists aws:SourceVpc/aws:SourceVpce [ours]` is what lets our endpoint traffic
//!   through: those keys exist only on VPC-endpoint requests; present and ours → false → no deny;
//!   present and someone else's → true; absent (public internet) → true, leaving the decision to the
//!   IP condition.
//! - `Bool aws:ViaAWSService false`: when a service calls on the principal's behalf (CloudFormation,
//!   forward access sessions) the key is true, the statement does not apply, and the app's
//!   service-mediated calls keep working. The attacker's own first call to that service still
//!   comes from their IP and is denied.
//! - No IP learned → the `NotIpAddress` condition is left out (every non-endpoint request is then
//!   denied by the VPC condition alone); no VPC learned → the VPC condition is left out. Neither →
//!   the statement would deny everything: that is refused, not applied.

use rekey_trail::time::parse as parse_time;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime};

use aws_sdk_iam::error::ProvideErrorMetadata;
use serde_json::json;

use super::model::{FenceReport, FenceSource, TimelineEvent};

pub const POLICY_NAME: &str = "rekey-incident-fence";
/// IAM's limit on a user's inline policies, counted without whitespace.
pub const MAX_USER_INLINE_POLICY_CHARS: usize = 2048;

/// What `learn_sources` reads from an event. `TimelineEvent` carries no `vpcEndpointId` (CloudTrail
/// records have it at top level for calls through an endpoint), so a caller holding raw records
/// should build these with [`SourceEvent::from_record`] to learn VPC endpoints.
#[derive(Debug, Clone, Default)]
pub struct SourceEvent {
    pub time: Option<SystemTime>,
    pub source_ip: Option<String>,
    pub vpc_endpoint_id: Option<String>,
    /// Not in CloudTrail records; set it when the endpoint's VPC is known from elsewhere.
    pub vpc_id: Option<String>,
}

impl SourceEvent {
    /// From a raw CloudTrail record (`eventTime`, `sourceIPAddress`, `vpcEndpointId`).
    pub fn from_record(record: &serde_json::Value) -> SourceEvent {
        let text = |k: &str| record.get(k).and_then(|v| v.as_str()).map(str::to_string).filter(|s| !s.is_empty());
        SourceEvent {
            time: text("eventTime").as_deref().and_then(parse_time),
            source_ip: text("sourceIPAddress"),
            vpc_endpoint_id: text("vpcEndpointId"),
            vpc_id: text("vpcId"),
        }
    }
}

impl From<&TimelineEvent> for SourceEvent {
    fn from(e: &TimelineEvent) -> Self {
        SourceEvent {
            time: parse_time(&e.time),
            source_ip: e.source_ip.clone(),
            vpc_endpoint_id: e.vpc_endpoint_id.clone(),
            vpc_id: None,
        }
    }
}

/// Learns the fence's allowed sources from the key's own history. See [`learn_sources_from`].
pub fn learn_sources(
    history: &[TimelineEvent],
    attack_start: Option<SystemTime>,
    attacker_ips: &[String],
) -> (Vec<FenceSource>, Vec<String>) {
    let events: Vec<SourceEvent> = history.iter().map(SourceEvent::from).collect();
    learn_sources_from(&events, attack_start, attacker_ips)
}

/// Which events are "before the attack":
/// - `attack_start` given: events strictly before it;
/// - else, attacker IPs given: events before the first event from one of them (all events when none
///   of them appears);
/// - else a heuristic, since nothing marks the attack: the application is what used the key
///   steadily, so a source is trusted only if it was seen on at least two distinct UTC days before
///   the last 24 hours of the history (a fresh leak is typically exploited within hours; a source
///   seen only recently or on a single day is not trusted).
///
/// Attacker IPs (addresses or CIDRs) are never learned, even before the attack. AWS service names
/// (`*.amazonaws.com`, `AWS Internal`) are not IPs: those calls are kept working by
/// `aws:ViaAWSService`. A call through a VPC endpoint teaches its endpoint (and VPC when known), not
/// its private IP. Returns the sources and, for each source not trusted, `"<value>: <why>"`.
pub fn learn_sources_from(
    events: &[SourceEvent],
    attack_start: Option<SystemTime>,
    attacker_ips: &[String],
) -> (Vec<FenceSource>, Vec<String>) {
    let attackers: Vec<Net> = attacker_ips.iter().filter_map(|s| Net::parse(s)).collect();
    let is_attacker = |ip: &IpAddr| attackers.iter().any(|n| n.contains(ip));

    let first_attack = || {
        events
            .iter()
            .filter(|e| e.source_ip.as_deref().and_then(parse_ip).is_some_and(|ip| is_attacker(&ip)))
            .filter_map(|e| e.time)
            .min()
    };
    let heuristic = attack_start.is_none() && attackers.is_empty();
    let cutoff = match attack_start {
        Some(t) => Some(t),
        None if !attackers.is_empty() => first_attack(),
        None => events.iter().filter_map(|e| e.time).max().map(|end| end - Duration::from_secs(86_400)),
    };
    let before = |t: SystemTime| cutoff.is_none_or(|c| t < c);

    let mut excluded = BTreeMap::<String, String>::new();
    let mut learned = BTreeMap::<(u8, String), Seen>::new();
    let mut later = BTreeSet::<(u8, String)>::new();
    for e in events {
        let mut sources = Vec::new();
        if let Some(vpce) = &e.vpc_endpoint_id {
            sources.push((2u8, vpce.clone()));
            if let Some(vpc) = &e.vpc_id {
                sources.push((1u8, vpc.clone()));
            }
        } else if let Some(raw) = e.source_ip.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            if raw.ends_with(".amazonaws.com") || raw.eq_ignore_ascii_case("AWS Internal") {
                excluded.entry(raw.to_string()).or_insert_with(|| {
                    "an AWS service acting for the key, kept working by aws:ViaAWSService".to_string()
                });
                continue;
            }
            let Some(ip) = parse_ip(raw) else {
                excluded.entry(raw.to_string()).or_insert_with(|| "not a valid IP address, ignored".to_string());
                continue;
            };
            if is_attacker(&ip) {
                excluded.insert(ip.to_string(), "attacker".to_string());
                continue;
            }
            if !is_public(&ip) {
                excluded.entry(ip.to_string()).or_insert_with(|| {
                    "private address: a call through a VPC endpoint whose id the event lacks; aws:SourceIp never \
                     carries it, so the fence would block it"
                        .to_string()
                });
                continue;
            }
            sources.push((0u8, ip.to_string()));
        }
        let Some(t) = e.time else { continue };
        for s in sources {
            if before(t) {
                learned.entry(s).or_default().add(t);
            } else {
                later.insert(s);
            }
        }
    }

    let mut out = Vec::new();
    for ((kind, value), seen) in learned {
        if heuristic && seen.days.len() < 2 {
            excluded.entry(value).or_insert_with(|| {
                "seen on a single day before the last 24h; with no attack start or attacker IP known, only \
                 sources seen on two days or more are trusted"
                    .to_string()
            });
            continue;
        }
        later.remove(&(kind, value.clone()));
        out.push(FenceSource {
            kind: KINDS[kind as usize].to_string(),
            value,
            events: seen.count,
            first_seen: seen.first.map(rekey_trail::time::format),
            last_seen: seen.last.map(rekey_trail::time::format),
        });
    }
    for (_, value) in later {
        let why = match (heuristic, cutoff) {
            (true, _) => "seen only in the last 24h of the history, not trusted".to_string(),
            (false, Some(c)) => {
                format!("seen only from {} on, when the attack had begun", rekey_trail::time::format(c))
            }
            (false, None) => "seen only after the attack began".to_string(),
        };
        excluded.entry(value).or_insert(why);
    }
    (out, excluded.into_iter().map(|(v, why)| format!("{v}: {why}")).collect())
}

const KINDS: [&str; 3] = ["ip", "vpc", "vpce"];

#[derive(Default)]
struct Seen {
    count: u64,
    first: Option<SystemTime>,
    last: Option<SystemTime>,
    days: BTreeSet<u64>,
}

impl Seen {
    fn add(&mut self, t: SystemTime) {
        self.count += 1;
        self.first = Some(self.first.map_or(t, |f| f.min(t)));
        self.last = Some(self.last.map_or(t, |l| l.max(t)));
        self.days.insert(t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() / 86_400).unwrap_or(0));
    }
}

/// IPv4-mapped IPv6 is folded to IPv4 so one host has one spelling; std's parser refuses
/// leading-zero octets (`211.9.016.253`), which anonymised logs contain.
fn parse_ip(s: &str) -> Option<IpAddr> {
    let ip: IpAddr = s.trim().trim_start_matches('[').trim_end_matches(']').parse().ok()?;
    Some(match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    })
}

fn is_public(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                // 100.64.0.0/10, carrier-grade NAT: not routable from AWS's side.
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_loopback() || v6.is_unspecified() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// An address or a CIDR block.
#[derive(Debug, Clone, Copy)]
struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    fn parse(s: &str) -> Option<Net> {
        match s.trim().split_once('/') {
            None => parse_ip(s).map(|addr| Net { addr, prefix: if addr.is_ipv4() { 32 } else { 128 } }),
            Some((a, p)) => {
                let addr = parse_ip(a)?;
                let prefix: u8 = p.parse().ok()?;
                (prefix <= if addr.is_ipv4() { 32 } else { 128 }).then_some(Net { addr, prefix })
            }
        }
    }

    fn contains(&self, ip: &IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(n) & mask == u32::from(*a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(n) & mask == u128::from(*a) & mask
            }
            _ => false,
        }
    }

    fn cidr(&self) -> String {
        format!("{}/{}", self.addr, self.prefix)
    }
}

/// An `--allow-source`: an address or CIDR block (`203.0.113.0/24`), a VPC (`vpc-…`) or a VPC
/// endpoint (`vpce-…`), checked before anything changes. A block wider than /16 (IPv4) or /32
/// (IPv6) is refused: a fence that admits a sixteenth of the internet fences nobody out.
pub fn parse_allow_source(text: &str) -> Result<FenceSource, String> {
    let t = text.trim();
    let hex_id = |rest: &str| (rest.len() == 8 || rest.len() == 17) && rest.bytes().all(|b| b.is_ascii_hexdigit());
    let source = |kind: &str, value: String| FenceSource {
        kind: kind.into(),
        value,
        events: 0,
        first_seen: None,
        last_seen: None,
    };
    if let Some(rest) = t.strip_prefix("vpce-") {
        return if hex_id(rest) {
            Ok(source("vpce", t.to_ascii_lowercase()))
        } else {
            Err(format!(
                "--allow-source {t:?} is not a VPC endpoint id; give vpce- and 8 or 17 hex digits (e.g. vpce-0a1b2c3d4e5f67890)"
            ))
        };
    }
    if let Some(rest) = t.strip_prefix("vpc-") {
        return if hex_id(rest) {
            Ok(source("vpc", t.to_ascii_lowercase()))
        } else {
            Err(format!(
                "--allow-source {t:?} is not a VPC id; give vpc- and 8 or 17 hex digits (e.g. vpc-0a1b2c3d4e5f67890)"
            ))
        };
    }
    let Some(net) = Net::parse(t) else {
        return Err(format!(
            "--allow-source {t:?} is not an IP address, a CIDR block, vpc-… or vpce-…; give e.g. 203.0.113.10, 203.0.113.0/24 or vpce-0a1b2c3d4e5f67890"
        ));
    };
    let min = if net.addr.is_ipv4() { 16 } else { 32 };
    if net.prefix < min {
        return Err(format!(
            "--allow-source {t:?} admits too many addresses for a fence (wider than /{min}); name the application's own addresses or its VPC endpoint"
        ));
    }
    if !is_public(&net.addr) {
        return Err(format!(
            "--allow-source {t:?} is a private address: aws:SourceIp never carries one (calls through a VPC endpoint are matched by its id); give the vpce-… id instead"
        ));
    }
    Ok(source("ip", Net { addr: network(&net), prefix: net.prefix }.cidr()))
}

/// The first attacker address `source` (an `ip` source) would admit, if any.
pub fn admits_attacker(source: &FenceSource, attacker_ips: &[String]) -> Option<String> {
    if source.kind != "ip" {
        return None;
    }
    let block = Net::parse(&source.value)?;
    attacker_ips
        .iter()
        .find(|a| {
            Net::parse(a)
                .is_some_and(|a| block.contains(&a.addr) || (a.prefix < block.prefix && a.contains(&block.addr)))
        })
        .cloned()
}

/// A fence ready to apply.
#[derive(Debug, Clone)]
pub struct FencePolicy {
    pub document: serde_json::Value,
    /// The sources it allows: the learned ones, or /24 (IPv4) and /64 (IPv6) blocks when addresses
    /// had to be collapsed to fit.
    pub allowed: Vec<FenceSource>,
    /// What was changed to make it fit, in plain words.
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error(
        "no source the application used before the attack is known: a fence would deny every request, \
         production included; it was not applied (cut over to a new key and deactivate this one instead)"
    )]
    NoSources,
    #[error(
        "the fence needs {chars} characters for {sources} sources even with addresses collapsed to /24 blocks, \
         over IAM's {MAX_USER_INLINE_POLICY_CHARS}-character limit for a user's inline policy; it was not applied"
    )]
    TooLarge { chars: usize, sources: usize },
    #[error("the account's root user cannot be fenced: IAM policies do not apply to root")]
    Root,
    #[error("{0}")]
    Iam(String),
}

impl FenceError {
    /// The `FenceReport.status` this outcome maps to.
    pub fn status(&self) -> &'static str {
        match self {
            FenceError::Iam(_) => "failed",
            _ => "not_possible",
        }
    }
}

/// The fence document for `sources`, or why there can be none. Prefer [`build_fence`]: it also
/// says which addresses were collapsed to fit, and never collapses into a block that holds an
/// attacker's address (this one cannot know them).
pub fn fence_policy(sources: &[FenceSource]) -> Result<serde_json::Value, FenceError> {
    build_fence(sources, &[]).map(|f| f.document)
}

/// Builds the fence for `sources`, collapsing IPv4 addresses to /24 (IPv6 to /64) blocks when the
/// document would exceed IAM's size limit, largest groups first, and never into a block that holds
/// one of `attacker_ips`.
pub fn build_fence(sources: &[FenceSource], attacker_ips: &[String]) -> Result<FencePolicy, FenceError> {
    let mut allowed: Vec<FenceSource> = sources.iter().filter(|s| !s.value.trim().is_empty()).cloned().collect();
    if allowed.is_empty() {
        return Err(FenceError::NoSources);
    }
    let mut notes = Vec::new();
    let mut document = fence_document(&allowed);
    if policy_chars(&document) <= MAX_USER_INLINE_POLICY_CHARS {
        return Ok(FencePolicy { document, allowed, notes });
    }

    let attackers: Vec<Net> = attacker_ips.iter().filter_map(|s| Net::parse(s)).collect();
    let mut groups = BTreeMap::<String, Vec<FenceSource>>::new();
    let mut rest = Vec::new();
    for s in allowed {
        let block = (s.kind == "ip").then(|| Net::parse(&s.value)).flatten().map(|n| {
            let prefix = if n.addr.is_ipv4() { 24 } else { 64 };
            Net { addr: n.addr, prefix: prefix.min(n.prefix) }
        });
        match block.map(|b| Net { addr: network(&b), prefix: b.prefix }) {
            Some(b) if !attackers.iter().any(|a| b.contains(&a.addr)) => groups.entry(b.cidr()).or_default().push(s),
            _ => rest.push(s),
        }
    }
    // Largest groups first: collapsing a group of n addresses saves about n-1 entries.
    let mut order: Vec<(String, Vec<FenceSource>)> = groups.into_iter().collect();
    order.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(&b.0)));
    let mut collapsed = Vec::new();
    let mut kept: Vec<FenceSource> = order.iter().flat_map(|(_, g)| g.iter().cloned()).collect();
    for (cidr, group) in &order {
        if group.len() < 2 {
            break;
        }
        kept.retain(|s| !group.iter().any(|g| g.value == s.value));
        collapsed.push(merge(cidr, group));
        allowed = collapsed.iter().chain(kept.iter()).chain(rest.iter()).cloned().collect();
        document = fence_document(&allowed);
        if policy_chars(&document) <= MAX_USER_INLINE_POLICY_CHARS {
            notes.push(format!(
                "{} addresses did not fit IAM's {MAX_USER_INLINE_POLICY_CHARS}-character limit: collapsed into {} \
                 block(s) ({}), which also admit their neighbours",
                sources.len(),
                collapsed.len(),
                collapsed.iter().map(|s| s.value.as_str()).collect::<Vec<_>>().join(", ")
            ));
            return Ok(FencePolicy { document, allowed, notes });
        }
    }
    Err(FenceError::TooLarge { chars: policy_chars(&document), sources: sources.len() })
}

fn network(n: &Net) -> IpAddr {
    match n.addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(n.prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(n.prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

fn merge(cidr: &str, group: &[FenceSource]) -> FenceSource {
    FenceSource {
        kind: "ip".to_string(),
        value: cidr.to_string(),
        events: group.iter().map(|s| s.events).sum(),
        first_seen: group.iter().filter_map(|s| s.first_seen.clone()).min(),
        last_seen: group.iter().filter_map(|s| s.last_seen.clone()).max(),
    }
}

/// IAM counts a policy's characters without whitespace; the compact serialisation has none
/// outside strings, and no value here contains any.
pub fn policy_chars(document: &serde_json::Value) -> usize {
    document.to_string().chars().filter(|c| !c.is_whitespace()).count()
}

/// The document for exactly these sources (no size check, no refusal): see the module comment for
/// why each condition is what it is.
fn fence_document(sources: &[FenceSource]) -> serde_json::Value {
    let of = |kind: &str| -> Vec<String> {
        let mut v: Vec<String> = sources.iter().filter(|s| s.kind == kind).map(|s| s.value.clone()).collect();
        v.sort();
        v.dedup();
        v
    };
    // aws:SourceIp takes CIDR notation; a bare address becomes a single-host block.
    let ips: Vec<String> = of("ip")
        .iter()
        .filter_map(|v| Net::parse(v))
        .map(|n| Net { addr: network(&n), prefix: n.prefix }.cidr())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let (vpcs, vpces) = (of("vpc"), of("vpce"));

    let mut condition = serde_json::Map::new();
    if !ips.is_empty() {
        condition.insert("NotIpAddress".into(), json!({ "aws:SourceIp": ips }));
    }
    if !vpcs.is_empty() || !vpces.is_empty() {
        let mut keys = serde_json::Map::new();
        if !vpcs.is_empty() {
            keys.insert("aws:SourceVpc".into(), json!(vpcs));
        }
        if !vpces.is_empty() {
            keys.insert("aws:SourceVpce".into(), json!(vpces));
        }
        condition.insert("StringNotEqualsIfExists".into(), serde_json::Value::Object(keys));
    }
    condition.insert("Bool".into(), json!({ "aws:ViaAWSService": "false" }));
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "RekeyIncidentFence",
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
            "Condition": condition,
        }]
    })
}

use crate::aws::error_text as describe;

/// Puts the fence on `user` as the inline policy `rekey-incident-fence` (replacing an earlier one).
pub async fn apply(iam: &aws_sdk_iam::Client, user: &str, policy: &serde_json::Value) -> Result<(), FenceError> {
    iam.put_user_policy()
        .user_name(user)
        .policy_name(POLICY_NAME)
        .policy_document(policy.to_string())
        .send()
        .await
        .map_err(|e| FenceError::Iam(format!("PutUserPolicy {POLICY_NAME} on {user}: {}", describe(&e))))?;
    Ok(())
}

/// Removes the fence; a fence already gone is not an error, so that an interrupted run can be
/// finished by running again.
pub async fn remove(iam: &aws_sdk_iam::Client, user: &str) -> Result<(), FenceError> {
    match iam.delete_user_policy().user_name(user).policy_name(POLICY_NAME).send().await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("NoSuchEntity") => Ok(()),
        Err(e) => Err(FenceError::Iam(format!("DeleteUserPolicy {POLICY_NAME} on {user}: {}", describe(&e)))),
    }
}

/// Builds and applies the fence, never failing: the outcome is in the report's `status`.
pub async fn fence_user(
    iam: &aws_sdk_iam::Client,
    user: &str,
    is_root: bool,
    sources: &[FenceSource],
    excluded: Vec<String>,
    attacker_ips: &[String],
) -> FenceReport {
    let built = if is_root { Err(FenceError::Root) } else { build_fence(sources, attacker_ips) };
    let result = match built {
        Ok(policy) => apply(iam, user, &policy.document).await.map(|()| policy),
        Err(e) => Err(e),
    };
    match result {
        Ok(policy) => FenceReport {
            status: "applied".to_string(),
            policy_name: Some(POLICY_NAME.to_string()),
            allowed: policy.allowed,
            excluded,
            detail: Some(policy.notes.join("; ")).filter(|d| !d.is_empty()),
            ..FenceReport::default()
        },
        Err(e) => FenceReport {
            status: e.status().to_string(),
            policy_name: None,
            allowed: sources.to_vec(),
            excluded,
            detail: Some(e.to_string()),
            ..FenceReport::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    fn ev(time: &str, ip: &str) -> SourceEvent {
        SourceEvent { time: Some(at(time)), source_ip: Some(ip.to_string()), ..Default::default() }
    }

    fn ip(value: &str) -> FenceSource {
        FenceSource { kind: "ip".into(), value: value.into(), events: 1, first_seen: None, last_seen: None }
    }

    fn values(s: &[FenceSource]) -> Vec<String> {
        s.iter().map(|s| format!("{}:{}", s.kind, s.value)).collect()
    }

    #[test]
    fn attacker_ips_and_services_are_never_learned() {
        let events = vec![
            ev("2024-05-01T10:00:00Z", "203.0.113.10"),
            ev("2024-05-01T11:00:00Z", "203.0.113.10"),
            // The attacker tested the key before the declared start: still excluded.
            ev("2024-05-01T12:00:00Z", "198.51.100.50"),
            ev("2024-05-01T12:30:00Z", "cloudformation.amazonaws.com"),
            ev("2024-05-01T12:40:00Z", "AWS Internal"),
            ev("2024-05-01T12:50:00Z", "211.9.016.253"),
            ev("2024-05-02T12:11:58Z", "198.51.100.50"),
            ev("2024-05-02T13:00:00Z", "192.0.2.77"),
        ];
        let (learned, excluded) =
            learn_sources_from(&events, Some(at("2024-05-02T00:00:00Z")), &["198.51.100.50".to_string()]);
        assert_eq!(values(&learned), ["ip:203.0.113.10"]);
        assert_eq!(learned[0].events, 2);
        assert_eq!(learned[0].first_seen.as_deref(), Some("2024-05-01T10:00:00Z"));
        assert_eq!(learned[0].last_seen.as_deref(), Some("2024-05-01T11:00:00Z"));
        let ex = excluded.join("\n");
        assert!(ex.contains("198.51.100.50: attacker"), "{ex}");
        assert!(ex.contains("cloudformation.amazonaws.com: an AWS service"), "{ex}");
        assert!(ex.contains("AWS Internal: an AWS service"), "{ex}");
        assert!(ex.contains("211.9.016.253: not a valid IP"), "{ex}");
        assert!(ex.contains("192.0.2.77: seen only from 2024-05-02T00:00:00Z on"), "{ex}");
    }

    #[test]
    fn without_a_start_the_first_attacker_event_is_the_start() {
        let events = vec![
            ev("2024-05-01T10:00:00Z", "203.0.113.10"),
            ev("2024-05-01T12:00:00Z", "2001:db8::1"),
            ev("2024-05-01T12:11:58Z", "198.51.100.50"),
            ev("2024-05-01T13:00:00Z", "192.0.2.77"),
        ];
        let (learned, excluded) = learn_sources_from(&events, None, &["198.51.100.0/24".to_string()]);
        assert_eq!(values(&learned), ["ip:2001:db8::1", "ip:203.0.113.10"]);
        assert!(excluded.iter().any(|e| e.starts_with("192.0.2.77: seen only from 2024-05-01T12:11:58Z")));
    }

    #[test]
    fn without_any_marker_only_sources_seen_on_two_days_before_the_last_24h_are_trusted() {
        let events = vec![
            ev("2024-05-01T10:00:00Z", "203.0.113.10"),
            ev("2024-05-02T10:00:00Z", "203.0.113.10"),
            ev("2024-05-02T11:00:00Z", "192.0.2.1"),
            ev("2024-05-04T09:00:00Z", "198.51.100.50"),
            ev("2024-05-04T10:00:00Z", "203.0.113.10"),
        ];
        let (learned, excluded) = learn_sources_from(&events, None, &[]);
        assert_eq!(values(&learned), ["ip:203.0.113.10"]);
        assert_eq!(learned[0].events, 2, "only events before the last 24h count");
        let ex = excluded.join("\n");
        assert!(ex.contains("192.0.2.1: seen on a single day"), "{ex}");
        assert!(ex.contains("198.51.100.50: seen only in the last 24h"), "{ex}");
    }

    #[test]
    fn addresses_are_normalised_and_endpoints_learned_from_records() {
        let records = [
            json!({"eventTime": "2024-05-01T10:00:00Z", "sourceIPAddress": "10.0.1.5", "vpcEndpointId": "vpce-0abc"}),
            json!({"eventTime": "2024-05-01T10:05:00Z", "sourceIPAddress": "10.0.1.6", "vpcEndpointId": "vpce-0abc"}),
            json!({"eventTime": "2024-05-01T10:10:00Z", "sourceIPAddress": "::ffff:203.0.113.10"}),
            json!({"eventTime": "2024-05-01T10:20:00Z", "sourceIPAddress": "2001:DB8:0:0::1"}),
            json!({"eventTime": "2024-05-01T10:30:00Z", "sourceIPAddress": "10.9.9.9"}),
            json!({"eventTime": "2024-05-01T11:00:00Z", "sourceIPAddress": "198.51.100.50"}),
        ];
        let events: Vec<SourceEvent> = records.iter().map(SourceEvent::from_record).collect();
        let (learned, excluded) = learn_sources_from(&events, None, &["198.51.100.50".to_string()]);
        assert_eq!(values(&learned), ["ip:2001:db8::1", "ip:203.0.113.10", "vpce:vpce-0abc"]);
        assert_eq!(learned[2].events, 2);
        // Private addresses of endpoint calls are not sources; one without an endpoint id is flagged.
        assert!(!excluded.iter().any(|e| e.starts_with("10.0.1.")));
        assert!(excluded.iter().any(|e| e.starts_with("10.9.9.9: private address")));
    }

    #[test]
    fn timeline_events_feed_the_same_learning() {
        let t = |time: &str, ip: &str| TimelineEvent {
            time: time.into(),
            source_ip: Some(ip.into()),
            ..TimelineEvent::default()
        };
        let history = [t("2024-05-01T10:00:00Z", "203.0.113.10"), t("2024-05-01T12:00:00Z", "198.51.100.50")];
        let (learned, _) = learn_sources(&history, None, &["198.51.100.50".to_string()]);
        assert_eq!(values(&learned), ["ip:203.0.113.10"]);
    }

    #[test]
    fn fence_shape_has_the_exact_operators_and_keys() {
        let sources = vec![
            ip("203.0.113.10"),
            ip("2001:db8::1"),
            FenceSource {
                kind: "vpce".into(),
                value: "vpce-0abc".into(),
                events: 2,
                first_seen: None,
                last_seen: None,
            },
            FenceSource { kind: "vpc".into(), value: "vpc-0def".into(), events: 2, first_seen: None, last_seen: None },
        ];
        let fence = build_fence(&sources, &[]).unwrap();
        assert!(fence.notes.is_empty());
        assert_eq!(
            fence.document,
            json!({
                "Version": "2012-10-17",
                "Statement": [{
                    "Sid": "RekeyIncidentFence",
                    "Effect": "Deny",
                    "Action": "*",
                    "Resource": "*",
                    "Condition": {
                        "NotIpAddress": {"aws:SourceIp": ["2001:db8::1/128", "203.0.113.10/32"]},
                        "StringNotEqualsIfExists": {"aws:SourceVpc": ["vpc-0def"], "aws:SourceVpce": ["vpce-0abc"]},
                        "Bool": {"aws:ViaAWSService": "false"}
                    }
                }]
            })
        );
        // Only IPs: no VPC condition (its absence denies every endpoint request, as it should).
        let only_ips = fence_policy(&[ip("203.0.113.10")]).unwrap();
        let cond = &only_ips["Statement"][0]["Condition"];
        assert!(cond.get("StringNotEqualsIfExists").is_none());
        assert!(cond.get("NotIpAddressIfExists").is_none(), "IfExists would admit foreign endpoints");
        // Only an endpoint: no IP condition, since an empty list would match nothing.
        let vpce =
            FenceSource { kind: "vpce".into(), value: "vpce-1".into(), events: 1, first_seen: None, last_seen: None };
        let only_vpce = fence_policy(&[vpce]).unwrap();
        assert!(only_vpce["Statement"][0]["Condition"].get("NotIpAddress").is_none());
    }

    #[test]
    fn allow_sources_are_validated() {
        let ok = |t: &str| parse_allow_source(t).map(|s| format!("{}:{}", s.kind, s.value));
        assert_eq!(ok("203.0.113.10").unwrap(), "ip:203.0.113.10/32");
        assert_eq!(ok(" 203.0.113.77/24 ").unwrap(), "ip:203.0.113.0/24");
        assert_eq!(ok("2001:db8::1/64").unwrap(), "ip:2001:db8::/64");
        assert_eq!(ok("vpc-0a1b2c3d").unwrap(), "vpc:vpc-0a1b2c3d");
        assert_eq!(ok("vpce-0A1B2C3D4E5F67890").unwrap(), "vpce:vpce-0a1b2c3d4e5f67890");
        for (bad, says) in [
            ("vpce-xyz", "not a VPC endpoint id"),
            ("vpc-12", "not a VPC id"),
            ("203.0.113.300", "not an IP address"),
            ("203.0.113.0/33", "not an IP address"),
            ("0.0.0.0/0", "too many addresses"),
            ("10.0.0.0/16", "private address"),
            ("", "not an IP address"),
        ] {
            let e = parse_allow_source(bad).unwrap_err();
            assert!(e.contains(says) && !e.contains('\n'), "{bad}: {e}");
        }
        let block = parse_allow_source("198.51.100.0/24").unwrap();
        assert_eq!(admits_attacker(&block, &["198.51.100.50".into()]).as_deref(), Some("198.51.100.50"));
        assert_eq!(admits_attacker(&block, &["192.0.2.1".into()]), None);
        assert_eq!(admits_attacker(&parse_allow_source("vpce-0a1b2c3d").unwrap(), &["198.51.100.50".into()]), None);
    }

    #[test]
    fn no_source_is_a_refusal_not_a_deny_all() {
        let err = fence_policy(&[]).unwrap_err();
        assert_eq!(err.status(), "not_possible");
        assert!(err.to_string().contains("deny every request"));
    }

    #[test]
    fn too_many_addresses_collapse_to_24_blocks_but_never_over_an_attacker() {
        let mut sources: Vec<FenceSource> = (0..=119).map(|i| ip(&format!("203.0.113.{i}"))).collect();
        sources.push(ip("192.0.2.1"));
        sources.push(ip("192.0.2.2"));
        let fence = build_fence(&sources, &[]).unwrap();
        assert!(policy_chars(&fence.document) <= MAX_USER_INLINE_POLICY_CHARS);
        assert_eq!(
            fence.document["Statement"][0]["Condition"]["NotIpAddress"]["aws:SourceIp"],
            json!(["192.0.2.1/32", "192.0.2.2/32", "203.0.113.0/24"]),
            "only the group that had to be collapsed is"
        );
        assert!(fence.notes[0].contains("203.0.113.0/24"), "{:?}", fence.notes);
        assert_eq!(fence.allowed.iter().find(|s| s.value == "203.0.113.0/24").unwrap().events, 120);

        // The attacker sits in that /24: collapsing would let them in, so the fence is refused.
        let err = build_fence(&sources, &["203.0.113.200".to_string()]).unwrap_err();
        assert!(matches!(err, FenceError::TooLarge { .. }), "{err}");
        assert_eq!(err.status(), "not_possible");

        // Scattered addresses cannot be collapsed usefully.
        let scattered: Vec<FenceSource> = (1..=120).map(|i| ip(&format!("198.{i}.100.7"))).collect();
        assert!(matches!(fence_policy(&scattered), Err(FenceError::TooLarge { .. })));
    }
}
