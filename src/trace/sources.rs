//! Where `rekey trace` reads CloudTrail logs from: a local folder (the engine's [`LocalSource`]) or
//! an S3 prefix ([`S3Source`]).
//!
//! S3 is listed by the trail's own layout, `AWSLogs/[<org-id>/]<acct>/CloudTrail/<region>/YYYY/MM/DD/`,
//! so that a time window skips whole days instead of listing years of objects: the account, org and
//! region levels are discovered with delimiter listings, then only the day folders in the window
//! (widened by [`DELIVERY_MARGIN`]) are listed. A prefix that is not part of that layout is listed
//! recursively.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use rekey_trail::source::is_log_name;
use rekey_trail::{DELIVERY_MARGIN, Item, LocalSource, Source, SourceError};
use tokio::runtime::Handle;
use tokio::task::JoinSet;

/// Listings in flight at once: one per region and day, each a round trip.
const LIST_PARALLELISM: usize = 16;
/// Downloads in flight: S3 latency, not bandwidth, bounds a download of a small log file.
const FETCH_PARALLELISM: usize = 8;
const FETCH_ATTEMPTS: usize = 3;

/// A `--logs` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogsSpec {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl std::fmt::Display for LogsSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogsSpec::Local(p) => write!(f, "{}", p.display()),
            LogsSpec::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

impl LogsSpec {
    /// Parses `PATH` or `s3://bucket[/prefix]`.
    pub fn parse(s: &str) -> Result<LogsSpec, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty; give a folder of CloudTrail logs or s3://bucket/prefix".into());
        }
        let Some(rest) = s.strip_prefix("s3://").or_else(|| s.strip_prefix("S3://")) else {
            return Ok(LogsSpec::Local(PathBuf::from(s)));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err("no bucket; write s3://bucket or s3://bucket/prefix".into());
        }
        Ok(LogsSpec::S3 { bucket: bucket.to_string(), prefix: prefix.to_string() })
    }

    pub fn is_s3(&self) -> bool {
        matches!(self, LogsSpec::S3 { .. })
    }

    /// The source for this spec; `sdk` is needed for S3 only, and must be given then.
    pub fn source(&self, sdk: Option<&aws_types::SdkConfig>, handle: &Handle) -> Result<Box<dyn Source>, String> {
        match self {
            LogsSpec::Local(path) => Ok(Box::new(LocalSource::new(path.clone()))),
            LogsSpec::S3 { bucket, prefix } => {
                let sdk = sdk.ok_or_else(|| format!("s3://{bucket}/{prefix}: no AWS configuration loaded"))?;
                Ok(Box::new(S3Source::new(sdk, bucket, prefix, handle.clone())))
            }
        }
    }
}

/// Log files under an S3 prefix.
///
/// `list` and `fetch` are blocking: the engine calls them from plain threads, and they run their
/// requests on the runtime of `handle`. They must not be called from a task of that runtime.
pub struct S3Source {
    sdk: aws_types::SdkConfig,
    bucket: String,
    prefix: String,
    /// Replaced once if the bucket turns out to live in another region than the configured one.
    client: Mutex<Client>,
    handle: Handle,
}

impl S3Source {
    pub fn new(sdk: &aws_types::SdkConfig, bucket: &str, prefix: &str, handle: Handle) -> Self {
        S3Source {
            sdk: sdk.clone(),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            client: Mutex::new(client_for(sdk, None)),
            handle,
        }
    }

    fn client(&self) -> Client {
        self.client.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn error(&self, problem: String) -> SourceError {
        SourceError { location: self.describe(), problem }
    }

    async fn list_async(&self, window: Window) -> Result<Vec<Item>, SourceError> {
        let root = self.probe().await?;
        let client = self.client();
        let bucket: Arc<str> = Arc::from(self.bucket.as_str());
        let mut pending = vec![root];
        let mut items = Vec::new();
        let mut running = JoinSet::new();
        loop {
            while running.len() < LIST_PARALLELISM {
                let Some(node) = pending.pop() else { break };
                running.spawn(expand(client.clone(), bucket.clone(), node, window));
            }
            let Some(done) = running.join_next().await else { break };
            let (nodes, found) =
                done.map_err(|e| self.error(format!("listing stopped: {e}")))?.map_err(|(prefix, problem)| {
                    SourceError { location: format!("s3://{}/{prefix}", self.bucket), problem }
                })?;
            pending.extend(nodes);
            items.extend(found);
        }
        Ok(items)
    }

    /// The first listing: checks that the bucket is there and readable (following a region
    /// redirect once), and tells where the prefix sits in the trail layout.
    async fn probe(&self) -> Result<Node, SourceError> {
        let folder = folder_of(&self.prefix);
        let level = Level::of(&folder);
        // Outside the layout, look for a trail written under this prefix (or at the bucket root).
        let logs = format!("{folder}AWSLogs/");
        let probed = if level.is_some() { &folder } else { &logs };
        let mut redirected = false;
        let page = loop {
            let client = self.client();
            match list_page(&client, &self.bucket, probed, true, None).await {
                Ok(page) => break page,
                Err(e) => {
                    let region =
                        e.raw_response().and_then(|r| r.headers().get("x-amz-bucket-region")).map(str::to_string);
                    let current = self.sdk.region().map(|r| r.as_ref().to_string());
                    match region {
                        Some(r) if !redirected && Some(&r) != current.as_ref() => {
                            tracing::debug!(bucket = %self.bucket, region = %r, "bucket is in another region");
                            *self.client.lock().unwrap_or_else(|p| p.into_inner()) = client_for(&self.sdk, Some(r));
                            redirected = true;
                        }
                        _ => return Err(self.error(s3_problem(&e))),
                    }
                }
            }
        };
        Ok(match level {
            Some(level) => Node { prefix: folder, level },
            None if !page.folders.is_empty() => Node { prefix: logs, level: Level::AwsLogs },
            None => Node { prefix: self.prefix.clone(), level: Level::Everything },
        })
    }

    async fn fetch_async(&self, item: &Item) -> Result<Vec<u8>, SourceError> {
        let key = item.name.strip_prefix(&format!("s3://{}/", self.bucket)).unwrap_or(&item.name);
        let client = self.client();
        let mut last = String::new();
        for attempt in 0..FETCH_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            let out = match client.get_object().bucket(&self.bucket).key(key).send().await {
                Ok(out) => out,
                // The SDK has retried what can be retried; a service answer (NoSuchKey,
                // AccessDenied) will not change.
                Err(e @ SdkError::ServiceError(_)) => return Err(item_error(item, s3_problem(&e))),
                Err(e) => {
                    last = s3_problem(&e);
                    continue;
                }
            };
            // A connection dropped mid-body is not retried by the SDK.
            match out.body.collect().await {
                Ok(body) => return Ok(body.into_bytes().into()),
                Err(e) => last = format!("download interrupted: {}", one_line(&crate::aws::chain(&e))),
            }
        }
        Err(item_error(item, last))
    }
}

impl Source for S3Source {
    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    fn list(&self, since: Option<SystemTime>, until: Option<SystemTime>) -> Result<Vec<Item>, SourceError> {
        // Files of the listed days outside the window are left in: the engine skips and counts them.
        self.handle.block_on(self.list_async(Window::new(since, until)))
    }

    fn fetch(&self, item: &Item) -> Result<Vec<u8>, SourceError> {
        self.handle.block_on(self.fetch_async(item))
    }

    fn fetch_parallelism(&self) -> usize {
        FETCH_PARALLELISM
    }
}

pub(crate) fn client_for(sdk: &aws_types::SdkConfig, region: Option<String>) -> Client {
    let mut config = aws_sdk_s3::config::Builder::from(sdk);
    // Emulators (and most S3-compatible stores) serve buckets by path, not by virtual host.
    let custom_endpoint =
        sdk.endpoint_url().is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some_and(|v| !v.is_empty());
    if custom_endpoint {
        config = config.force_path_style(true);
    }
    if let Some(r) = region {
        config = config.region(aws_sdk_s3::config::Region::new(r));
    }
    Client::from_conf(config.build())
}

fn item_error(item: &Item, problem: String) -> SourceError {
    SourceError { location: item.name.clone(), problem }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What went wrong, and what to do about it, in one line.
fn s3_problem<E, R>(e: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let code = e.as_service_error().and_then(|s| s.code());
    match code {
        Some("NoSuchBucket") => "bucket not found; check the bucket name in --logs".into(),
        Some("AccessDenied" | "AllAccessDisabled") => {
            "access denied; the principal needs s3:ListBucket on the bucket and s3:GetObject on the logs \
             (and kms:Decrypt if the trail is encrypted with KMS)"
                .into()
        }
        Some(c @ ("InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken" | "InvalidToken")) => {
            format!("the AWS credentials were rejected ({c}); check --profile or the AWS_* variables")
        }
        Some("NoSuchKey") => "the object is gone (deleted since it was listed)".into(),
        _ => match e {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
                format!("cannot reach S3 ({}); check the network and the region", one_line(&crate::aws::chain(e)))
            }
            _ => one_line(&crate::aws::error_text(e)),
        },
    }
}

/// Where a prefix sits in the trail layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    /// `…/AWSLogs/`: organization ids and account ids below.
    AwsLogs,
    /// `…/AWSLogs/<org-id>/`: account ids below.
    Org,
    /// `…/<acct>/`: the trail is in `CloudTrail/` below (next to digests and other services' logs).
    Account,
    /// `…/<acct>/CloudTrail/`: regions below.
    Trail,
    Region,
    Year(u32),
    Month(u32, u32),
    /// Anything else: every log file below, listed recursively.
    Everything,
}

impl Level {
    /// The level of `folder` (ending in `/`), if it is one of the trail layout above a day.
    fn of(folder: &str) -> Option<Level> {
        let segments: Vec<&str> = folder.trim_end_matches('/').split('/').collect();
        let at = segments.iter().position(|s| *s == "AWSLogs")?;
        let mut rest = &segments[at + 1..];
        if rest.is_empty() {
            return Some(Level::AwsLogs);
        }
        if is_org(rest[0]) {
            rest = &rest[1..];
            if rest.is_empty() {
                return Some(Level::Org);
            }
        }
        if !is_account(rest[0]) {
            return None;
        }
        match &rest[1..] {
            [] => Some(Level::Account),
            ["CloudTrail"] => Some(Level::Trail),
            ["CloudTrail", _region] => Some(Level::Region),
            ["CloudTrail", _, y] => Some(Level::Year(number(y, 4)?)),
            ["CloudTrail", _, y, m] => Some(Level::Month(number(y, 4)?, number(m, 2)?)),
            _ => None,
        }
    }
}

fn is_org(s: &str) -> bool {
    s.len() > 2 && s.starts_with("o-") && s[2..].bytes().all(|b| b.is_ascii_alphanumeric())
}

fn is_account(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

fn number(s: &str, digits: usize) -> Option<u32> {
    (s.len() == digits && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
}

/// `prefix` as a folder: ending in `/`, or empty for the bucket root.
fn folder_of(prefix: &str) -> String {
    if prefix.is_empty() || prefix.ends_with('/') { prefix.to_string() } else { format!("{prefix}/") }
}

#[derive(Debug, Clone)]
struct Node {
    prefix: String,
    level: Level,
}

/// The days whose folders can hold files of the window, as (year, month, day); None when unbounded.
#[derive(Debug, Clone, Copy)]
struct Window {
    first: Option<(u32, u32, u32)>,
    last: Option<(u32, u32, u32)>,
}

impl Window {
    fn new(since: Option<SystemTime>, until: Option<SystemTime>) -> Window {
        // Both ends widened: a folder is named by delivery time, and clocks and late deliveries
        // are not exact.
        let first = since.map(|s| civil(s.checked_sub(DELIVERY_MARGIN).unwrap_or(s)));
        let last = until.map(|u| civil(u.checked_add(DELIVERY_MARGIN).unwrap_or(u)));
        Window { first, last }
    }

    fn unbounded(&self) -> bool {
        self.first.is_none() && self.last.is_none()
    }

    fn holds(&self, from: (u32, u32, u32), to: (u32, u32, u32)) -> bool {
        self.first.is_none_or(|f| to >= f) && self.last.is_none_or(|l| from <= l)
    }
}

/// The UTC calendar day of `t` (Howard Hinnant's civil_from_days); times before 1970 read as 1970-01-01.
fn civil(t: SystemTime) -> (u32, u32, u32) {
    let days = (t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as u32;
    (y, m, d)
}

struct Page {
    folders: Vec<String>,
    objects: Vec<Item>,
    next: Option<String>,
}

async fn list_page(
    client: &Client,
    bucket: &str,
    prefix: &str,
    delimited: bool,
    token: Option<String>,
) -> Result<
    Page,
    SdkError<aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Error, aws_sdk_s3::config::http::HttpResponse>,
> {
    let mut req = client.list_objects_v2().bucket(bucket).prefix(prefix).set_continuation_token(token);
    if delimited {
        req = req.delimiter("/");
    }
    let out = req.send().await?;
    let folders = out.common_prefixes().iter().filter_map(|p| p.prefix().map(str::to_string)).collect();
    let objects = out
        .contents()
        .iter()
        .filter_map(|o| {
            let key = o.key()?;
            // Digests share the log's file name pattern; is_log_name leaves them out.
            is_log_name(key).then(|| Item::new(format!("s3://{bucket}/{key}"), o.size().map(|s| s.max(0) as u64)))
        })
        .collect();
    let next = out.next_continuation_token().filter(|_| out.is_truncated().unwrap_or(false)).map(str::to_string);
    Ok(Page { folders, objects, next })
}

/// Every page of a listing.
async fn list_all(client: &Client, bucket: &str, prefix: &str, delimited: bool) -> Result<Page, String> {
    let mut all = Page { folders: Vec::new(), objects: Vec::new(), next: None };
    let mut token = None;
    loop {
        let page = list_page(client, bucket, prefix, delimited, token).await.map_err(|e| s3_problem(&e))?;
        all.folders.extend(page.folders);
        all.objects.extend(page.objects);
        match page.next {
            Some(t) => token = Some(t),
            None => return Ok(all),
        }
    }
}

/// One step down the layout: the folders below `node` worth listing, or, at the bottom, its files.
async fn expand(
    client: Client,
    bucket: Arc<str>,
    node: Node,
    window: Window,
) -> Result<(Vec<Node>, Vec<Item>), (String, String)> {
    let fail = |problem: String| (node.prefix.clone(), problem);
    let child = |folder: &str| folder.trim_end_matches('/').rsplit('/').next().unwrap_or_default().to_string();
    let level = match node.level {
        Level::Region if window.unbounded() => Level::Everything,
        other => other,
    };
    match level {
        Level::Account => {
            // No listing: the account folder also holds digests and other services' logs.
            Ok((vec![Node { prefix: format!("{}CloudTrail/", node.prefix), level: Level::Trail }], Vec::new()))
        }
        Level::Everything => {
            let page = list_all(&client, &bucket, &node.prefix, false).await.map_err(fail)?;
            Ok((Vec::new(), page.objects))
        }
        _ => {
            let page = list_all(&client, &bucket, &node.prefix, true).await.map_err(fail)?;
            let mut nodes = Vec::new();
            for folder in page.folders {
                let name = child(&folder);
                let next = match level {
                    Level::AwsLogs if is_org(&name) => Level::Org,
                    Level::AwsLogs | Level::Org if is_account(&name) => Level::Account,
                    Level::Trail => Level::Region,
                    Level::Region => match number(&name, 4) {
                        Some(y) if window.holds((y, 1, 1), (y, 12, 31)) => Level::Year(y),
                        _ => continue,
                    },
                    Level::Year(y) => match number(&name, 2) {
                        Some(m) if window.holds((y, m, 1), (y, m, 31)) => Level::Month(y, m),
                        _ => continue,
                    },
                    Level::Month(y, m) => match number(&name, 2) {
                        Some(d) if window.holds((y, m, d), (y, m, d)) => Level::Everything,
                        _ => continue,
                    },
                    _ => continue,
                };
                nodes.push(Node { prefix: folder, level: next });
            }
            // Files lying at a level above the days are not the trail's, but they are logs
            // someone put there: read them too.
            Ok((nodes, page.objects))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_specs() {
        assert_eq!(LogsSpec::parse("./logs"), Ok(LogsSpec::Local("./logs".into())));
        assert_eq!(LogsSpec::parse("s3://b"), Ok(LogsSpec::S3 { bucket: "b".into(), prefix: "".into() }));
        assert_eq!(
            LogsSpec::parse("s3://b/AWSLogs/1/"),
            Ok(LogsSpec::S3 { bucket: "b".into(), prefix: "AWSLogs/1/".into() })
        );
        assert!(LogsSpec::parse("s3:///x").is_err());
        assert!(LogsSpec::parse(" ").is_err());
    }

    #[test]
    fn levels_of_the_trail_layout() {
        assert_eq!(Level::of("AWSLogs/"), Some(Level::AwsLogs));
        assert_eq!(Level::of("pre/fix/AWSLogs/"), Some(Level::AwsLogs));
        assert_eq!(Level::of("AWSLogs/o-abc123/"), Some(Level::Org));
        assert_eq!(Level::of("AWSLogs/o-abc123/123456789012/"), Some(Level::Account));
        assert_eq!(Level::of("AWSLogs/123456789012/CloudTrail/"), Some(Level::Trail));
        assert_eq!(Level::of("AWSLogs/123456789012/CloudTrail/eu-west-1/"), Some(Level::Region));
        assert_eq!(Level::of("AWSLogs/123456789012/CloudTrail/eu-west-1/2023/"), Some(Level::Year(2023)));
        assert_eq!(Level::of("AWSLogs/123456789012/CloudTrail/eu-west-1/2023/07/"), Some(Level::Month(2023, 7)));
        // A day folder, digests and anything else are listed whole.
        assert_eq!(Level::of("AWSLogs/123456789012/CloudTrail/eu-west-1/2023/07/10/"), None);
        assert_eq!(Level::of("AWSLogs/123456789012/CloudTrail-Digest/"), None);
        assert_eq!(Level::of("exports/"), None);
        assert_eq!(Level::of(""), None);
    }

    #[test]
    fn civil_days() {
        let at = |s: &str| humantime::parse_rfc3339(s).unwrap();
        assert_eq!(civil(UNIX_EPOCH), (1970, 1, 1));
        assert_eq!(civil(at("2024-02-29T23:59:59Z")), (2024, 2, 29));
        assert_eq!(civil(at("2023-12-31T00:00:00Z")), (2023, 12, 31));
        assert_eq!(civil(UNIX_EPOCH - Duration::from_secs(86_400 * 400)), (1970, 1, 1));
    }

    #[test]
    fn window_is_widened_by_the_delivery_margin() {
        let at = |s: &str| rekey_trail::time::parse(s);
        let w = Window::new(at("2023-07-10T00:30:00Z"), at("2023-07-12T23:30:00Z"));
        assert_eq!(w.first, Some((2023, 7, 9)));
        assert_eq!(w.last, Some((2023, 7, 13)));
        assert!(w.holds((2023, 7, 9), (2023, 7, 9)));
        assert!(!w.holds((2023, 7, 8), (2023, 7, 8)));
        assert!(w.holds((2023, 7, 1), (2023, 7, 31)));
        assert!(!w.holds((2022, 1, 1), (2022, 12, 31)));
        assert!(Window::new(None, None).unbounded());
    }
}
