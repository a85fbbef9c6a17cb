//! CloudTrail digest validation of the log files an investigation rests on.
//!
//! A trail with validation on writes, every hour, a digest file under
//! `AWSLogs/<acct>/CloudTrail-Digest/<region>/YYYY/MM/DD/` that lists the log files it delivered in
//! that hour with the SHA-256 of their uncompressed content, and the SHA-256 of the previous digest's
//! uncompressed content (the chain). Whoever can write to the bucket can alter a log file, so that a
//! containment plan deletes what the attacker wants deleted, or hide their own records; a digest
//! shows both. Checked here, for the log files that hold evidence only:
//! - the file's hash against the digest that lists it;
//! - the digest against the hash its successor records (a tampered digest lists tampered hashes),
//!   fetching the predecessor a digest names when it is not among those listed;
//! - a file that a digest covering its delivery time does not list was not delivered by CloudTrail.
//!
//! Not checked: the digests' RSA signatures (that needs the trail's public keys from
//! `ListPublicKeys`), so a newest digest rewritten together with its files is not caught; the
//! report says so.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// A digest or log file larger than this uncompressed is not validated (memory stays bounded).
pub const MAX_DIGEST_BYTES: u64 = 16 << 20;

/// The S3 calls validation makes.
#[async_trait]
pub trait Objects: Send + Sync {
    /// Every key under `prefix`.
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, String>;
    async fn get(&self, bucket: &str, key: &str) -> Result<Vec<u8>, String>;
}

pub struct S3Objects {
    client: aws_sdk_s3::Client,
}

impl S3Objects {
    pub fn new(sdk: &aws_types::SdkConfig) -> Self {
        S3Objects { client: crate::trace::sources::client_for(sdk, None) }
    }
}

#[async_trait]
impl Objects for S3Objects {
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, String> {
        let pages = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| crate::aws::error_text(&e))?;
        Ok(pages.iter().flat_map(|p| p.contents()).filter_map(|o| o.key().map(str::to_string)).collect())
    }

    async fn get(&self, bucket: &str, key: &str) -> Result<Vec<u8>, String> {
        let out =
            self.client.get_object().bucket(bucket).key(key).send().await.map_err(|e| crate::aws::error_text(&e))?;
        let body = out.body.collect().await.map_err(|e| crate::aws::chain(&e))?;
        Ok(body.into_bytes().to_vec())
    }
}

/// The fields of a digest file that validation reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DigestJson {
    digest_start_time: Option<String>,
    digest_end_time: Option<String>,
    previous_digest_s3_bucket: Option<String>,
    previous_digest_s3_object: Option<String>,
    previous_digest_hash_value: Option<String>,
    #[serde(default)]
    log_files: Vec<LogFileJson>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogFileJson {
    s3_bucket: String,
    s3_object: String,
    hash_value: String,
}

/// One digest file, read.
#[derive(Debug, Clone)]
pub struct Digest {
    /// `s3://bucket/key`.
    pub name: String,
    /// SHA-256 of its uncompressed content, hex.
    pub sha256: String,
    pub start: Option<SystemTime>,
    pub end: Option<SystemTime>,
    /// The previous digest (`s3://bucket/key`) and the hash this one records for it.
    pub previous: Option<(String, String)>,
    /// Log files (`s3://bucket/key`) and their hashes.
    pub files: BTreeMap<String, String>,
}

impl Digest {
    /// Reads a digest from its bytes (gzipped or not).
    pub fn parse(name: &str, bytes: &[u8]) -> Result<Digest, String> {
        let text = gunzip(bytes, MAX_DIGEST_BYTES)?;
        let sha256 = hex(&Sha256::digest(&text));
        let json: DigestJson = serde_json::from_slice(&text).map_err(|e| format!("not a CloudTrail digest: {e}"))?;
        let at = |s: &Option<String>| s.as_deref().and_then(rekey_trail::time::parse);
        let previous = match (
            &json.previous_digest_s3_bucket,
            &json.previous_digest_s3_object,
            &json.previous_digest_hash_value,
        ) {
            (Some(b), Some(k), Some(h)) if !b.is_empty() && !k.is_empty() => {
                Some((format!("s3://{b}/{k}"), h.to_ascii_lowercase()))
            }
            _ => None,
        };
        Ok(Digest {
            name: name.to_string(),
            sha256,
            start: at(&json.digest_start_time),
            end: at(&json.digest_end_time),
            previous,
            files: json
                .log_files
                .into_iter()
                .map(|f| (format!("s3://{}/{}", f.s3_bucket, f.s3_object), f.hash_value.to_ascii_lowercase()))
                .collect(),
        })
    }

    /// Whether the digest covers files delivered at `t` (with a minute's margin either side: file
    /// names give the delivery time to the minute).
    fn covers(&self, t: SystemTime) -> bool {
        match (self.start, self.end) {
            (Some(s), Some(e)) => t > s + Duration::from_secs(60) && t + Duration::from_secs(60) < e,
            _ => false,
        }
    }
}

/// What validation concluded about one log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Its hash matches a digest whose successor vouches for it (or the newest digest).
    Valid,
    /// It failed validation: why.
    Failed(String),
    /// Neither shown good nor bad: why (no digest covers it yet, or it could not be read).
    Unchecked(String),
}

#[derive(Debug, Clone, Default)]
pub struct Validation {
    /// Per log file (`s3://bucket/key`).
    pub verdicts: BTreeMap<String, Verdict>,
    /// Digest files read.
    pub digests: usize,
    /// Broken links of the chain and unreadable digests, in words.
    pub problems: Vec<String>,
}

/// Digests that fail the chain: a successor records another hash for them, with why.
pub fn check_chain(digests: &BTreeMap<String, Digest>) -> BTreeMap<String, String> {
    let mut bad = BTreeMap::new();
    for d in digests.values() {
        let Some((prev, hash)) = &d.previous else { continue };
        if let Some(p) = digests.get(prev)
            && p.sha256 != *hash
        {
            bad.insert(
                prev.clone(),
                format!("its SHA-256 {} differs from the {hash} that the next digest {} records", p.sha256, d.name),
            );
        }
    }
    bad
}

/// The verdict on a log file whose uncompressed SHA-256 is `actual` (None: not computed yet),
/// delivered at `delivered`, given the digests read and those that failed the chain.
pub fn verdict(
    file: &str,
    actual: Option<&str>,
    delivered: Option<SystemTime>,
    digests: &BTreeMap<String, Digest>,
    bad: &BTreeMap<String, String>,
) -> Verdict {
    let listing: Vec<&Digest> = digests.values().filter(|d| d.files.contains_key(file)).collect();
    if let Some(d) = listing.iter().find(|d| !bad.contains_key(&d.name)) {
        let expected = &d.files[file];
        return match actual {
            Some(a) if a == expected => Verdict::Valid,
            Some(a) => Verdict::Failed(format!(
                "its SHA-256 {a} differs from the {expected} that digest {} records: the file was changed after delivery",
                d.name
            )),
            None => Verdict::Unchecked("not read".into()),
        };
    }
    if let Some(d) = listing.first() {
        return Verdict::Failed(format!("the digest that lists it, {}, failed the chain: {}", d.name, bad[&d.name]));
    }
    if let Some(d) = delivered.and_then(|t| digests.values().find(|d| d.covers(t) && same_trail(&d.name, file))) {
        return Verdict::Failed(format!(
            "digest {}, which covers its delivery time, does not list it: CloudTrail did not deliver it",
            d.name
        ));
    }
    Verdict::Unchecked(
        "no digest covers it (digests come an hour after the files, and only when validation is on)".into(),
    )
}

/// Whether a digest and a log file belong to the same account and region of one bucket.
fn same_trail(digest: &str, file: &str) -> bool {
    let account_region = |s: &str, marker: &str| -> Option<String> {
        let (before, after) = s.split_once(marker)?;
        Some(format!("{before}|{}", after.split('/').next()?))
    };
    account_region(digest, "/CloudTrail-Digest/").is_some_and(|d| Some(d) == account_region(file, "/CloudTrail/"))
}

/// The digest folders that can list `file` (`s3://bucket/…/CloudTrail/<region>/Y/M/D/name`): its
/// day's and the next day's, as (bucket, prefix).
pub fn digest_folders(file: &str) -> Vec<(String, String)> {
    let Some(rest) = file.strip_prefix("s3://") else { return Vec::new() };
    let Some((bucket, key)) = rest.split_once('/') else { return Vec::new() };
    let Some((root, tail)) = key.rsplit_once("/CloudTrail/") else { return Vec::new() };
    let parts: Vec<&str> = tail.split('/').collect();
    let [region, y, m, d, _name] = parts[..] else { return Vec::new() };
    let Some(day) = rekey_trail::time::parse(&format!("{y}-{m}-{d}T00:00:00Z")) else { return Vec::new() };
    [day, day + Duration::from_secs(86_400)]
        .iter()
        .map(|t| {
            let s = rekey_trail::time::format(*t);
            let folder = format!("{root}/CloudTrail-Digest/{region}/{}/{}/{}/", &s[..4], &s[5..7], &s[8..10]);
            (bucket.to_string(), folder)
        })
        .collect()
}

/// Validates `files` (`s3://bucket/key`) against the digests next to them.
pub async fn validate(objects: &dyn Objects, files: &BTreeSet<String>) -> Validation {
    let mut out = Validation::default();
    let folders: BTreeSet<(String, String)> = files.iter().flat_map(|f| digest_folders(f)).collect();
    let mut digests = BTreeMap::new();
    for (bucket, prefix) in &folders {
        let keys = match objects.list(bucket, prefix).await {
            Ok(k) => k,
            Err(e) => {
                out.problems.push(format!("digests in s3://{bucket}/{prefix} could not be listed: {e}"));
                continue;
            }
        };
        for key in keys.into_iter().filter(|k| k.contains("CloudTrail-Digest")) {
            let name = format!("s3://{bucket}/{key}");
            read_digest(objects, &name, &mut digests, &mut out.problems).await;
        }
    }
    // The predecessors the read digests name, when they lie in another folder (the first digest
    // of a day names the last of the day before).
    let named: Vec<String> = digests
        .values()
        .filter_map(|d| d.previous.as_ref().map(|p| p.0.clone()))
        .filter(|p| !digests.contains_key(p))
        .collect();
    for prev in named {
        if !read_digest(objects, &prev, &mut digests, &mut out.problems).await {
            out.problems
                .push(format!("digest {prev}, named by the next digest, is missing: the chain is broken there"));
        }
    }
    out.digests = digests.len();
    let bad = check_chain(&digests);
    for (name, why) in &bad {
        out.problems.push(format!("digest {name} failed the chain: {why}"));
    }
    for file in files {
        let delivered = rekey_trail::source::delivery_time(file);
        let first = verdict(file, None, delivered, &digests, &bad);
        let v = if first == Verdict::Unchecked("not read".into()) {
            match hash_object(objects, file).await {
                Ok(h) => verdict(file, Some(&h), delivered, &digests, &bad),
                Err(e) => Verdict::Unchecked(e),
            }
        } else {
            first
        };
        out.verdicts.insert(file.clone(), v);
    }
    out
}

async fn read_digest(
    objects: &dyn Objects,
    name: &str,
    digests: &mut BTreeMap<String, Digest>,
    problems: &mut Vec<String>,
) -> bool {
    let Some((bucket, key)) = name.strip_prefix("s3://").and_then(|r| r.split_once('/')) else { return false };
    match objects.get(bucket, key).await {
        Ok(bytes) => match Digest::parse(name, &bytes) {
            Ok(d) => {
                digests.insert(name.to_string(), d);
                true
            }
            Err(e) => {
                problems.push(format!("digest {name} is unreadable: {e}"));
                true
            }
        },
        Err(_) => false,
    }
}

async fn hash_object(objects: &dyn Objects, file: &str) -> Result<String, String> {
    let (bucket, key) =
        file.strip_prefix("s3://").and_then(|r| r.split_once('/')).ok_or_else(|| format!("{file}: not in S3"))?;
    let bytes = objects.get(bucket, key).await.map_err(|e| format!("could not be read again: {e}"))?;
    let mut h = Sha256::new();
    inflate_into(&bytes, rekey_trail::DEFAULT_MAX_FILE_BYTES, |chunk| h.update(chunk))?;
    Ok(hex(&h.finalize()))
}

/// Decompresses `bytes` (gzip, or taken as they are) into `sink` chunk by chunk, refusing more than
/// `max` bytes: a bomb is never held in memory.
fn inflate_into(bytes: &[u8], max: u64, mut sink: impl FnMut(&[u8])) -> Result<(), String> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        if bytes.len() as u64 > max {
            return Err(format!("larger than {} MiB", max >> 20));
        }
        sink(bytes);
        return Ok(());
    }
    let mut reader = flate2::read::MultiGzDecoder::new(bytes);
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(|e| format!("not valid gzip: {e}"))?;
        if n == 0 {
            return Ok(());
        }
        total += n as u64;
        if total > max {
            return Err(format!("larger than {} MiB uncompressed: not validated", max >> 20));
        }
        sink(&buf[..n]);
    }
}

fn gunzip(bytes: &[u8], max: u64) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    inflate_into(bytes, max, |c| out.extend_from_slice(c))?;
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(text: &str) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap()
    }

    const LOG: &str = "s3://b/AWSLogs/123456789012/CloudTrail/us-east-1/2026/11/28/123456789012_CloudTrail_us-east-1_20261128T1205Z_abc.json.gz";
    const LOG2: &str = "s3://b/AWSLogs/123456789012/CloudTrail/us-east-1/2026/11/28/123456789012_CloudTrail_us-east-1_20261128T1215Z_def.json.gz";
    const D1: &str = "AWSLogs/123456789012/CloudTrail-Digest/us-east-1/2026/11/28/123456789012_CloudTrail-Digest_us-east-1_main_us-east-1_20261128T130000Z.json.gz";
    const D2: &str = "AWSLogs/123456789012/CloudTrail-Digest/us-east-1/2026/11/28/123456789012_CloudTrail-Digest_us-east-1_main_us-east-1_20261128T140000Z.json.gz";

    fn digest_text(start: &str, end: &str, prev: Option<(&str, &str)>, files: &[(&str, &str)]) -> String {
        let files: Vec<_> = files
            .iter()
            .map(|(f, h)| {
                let key = f.strip_prefix("s3://b/").unwrap();
                serde_json::json!({"s3Bucket": "b", "s3Object": key, "hashValue": h, "hashAlgorithm": "SHA-256"})
            })
            .collect();
        let mut v = serde_json::json!({"awsAccountId": "123456789012", "digestStartTime": start, "digestEndTime": end,
            "digestS3Bucket": "b", "digestSignatureAlgorithm": "SHA256withRSA", "logFiles": files});
        if let Some((k, h)) = prev {
            v["previousDigestS3Bucket"] = "b".into();
            v["previousDigestS3Object"] = k.into();
            v["previousDigestHashValue"] = h.into();
        }
        v.to_string()
    }

    #[test]
    fn a_file_is_valid_only_with_the_hash_its_digest_records() {
        let log = r#"{"Records":[]}"#;
        let hash = hex(&Sha256::digest(log.as_bytes()));
        let d1 = digest_text("2026-11-28T12:00:00Z", "2026-11-28T13:00:00Z", None, &[(LOG, &hash)]);
        let d1 = Digest::parse(&format!("s3://b/{D1}"), &gz(&d1)).unwrap();
        assert_eq!(d1.files.get(LOG), Some(&hash));
        let digests = BTreeMap::from([(d1.name.clone(), d1)]);
        let bad = check_chain(&digests);
        let at = rekey_trail::source::delivery_time(LOG);
        assert_eq!(verdict(LOG, Some(&hash), at, &digests, &bad), Verdict::Valid);
        let other = hex(&Sha256::digest(b"{\"Records\":[{}]}"));
        assert!(
            matches!(verdict(LOG, Some(&other), at, &digests, &bad), Verdict::Failed(w) if w.contains("changed after delivery"))
        );
        // A file in the covered hour that the digest does not list was not delivered by CloudTrail.
        let at2 = rekey_trail::source::delivery_time(LOG2);
        assert!(
            matches!(verdict(LOG2, Some(&hash), at2, &digests, &bad), Verdict::Failed(w) if w.contains("does not list it"))
        );
        // Nothing covers a file of a later hour yet.
        assert!(matches!(verdict(LOG2, Some(&hash), at2, &BTreeMap::new(), &bad), Verdict::Unchecked(_)));
    }

    #[test]
    fn a_digest_whose_successor_records_another_hash_fails_and_so_do_its_files() {
        let hash = hex(&Sha256::digest(b"x"));
        let d1_text = digest_text("2026-11-28T12:00:00Z", "2026-11-28T13:00:00Z", None, &[(LOG, &hash)]);
        let d1_hash = hex(&Sha256::digest(d1_text.as_bytes()));
        let d2_text = digest_text("2026-11-28T13:00:00Z", "2026-11-28T14:00:00Z", Some((D1, &d1_hash)), &[]);
        let d1 = Digest::parse(&format!("s3://b/{D1}"), &gz(&d1_text)).unwrap();
        let d2 = Digest::parse(&format!("s3://b/{D2}"), d2_text.as_bytes()).unwrap();
        assert_eq!(d2.previous, Some((format!("s3://b/{D1}"), d1_hash.clone())));
        let good = BTreeMap::from([(d1.name.clone(), d1), (d2.name.clone(), d2.clone())]);
        assert!(check_chain(&good).is_empty());
        // The first digest rewritten (its file's hash replaced): the chain catches it.
        let forged_text = digest_text("2026-11-28T12:00:00Z", "2026-11-28T13:00:00Z", None, &[(LOG, "00ff")]);
        let forged = Digest::parse(&format!("s3://b/{D1}"), forged_text.as_bytes()).unwrap();
        let digests = BTreeMap::from([(forged.name.clone(), forged), (d2.name.clone(), d2)]);
        let bad = check_chain(&digests);
        assert!(bad.contains_key(&format!("s3://b/{D1}")), "{bad:?}");
        let v = verdict(LOG, Some("00ff"), rekey_trail::source::delivery_time(LOG), &digests, &bad);
        assert!(matches!(v, Verdict::Failed(w) if w.contains("failed the chain")));
    }

    #[test]
    fn digest_folders_are_the_files_day_and_the_next() {
        let f = digest_folders(LOG);
        assert_eq!(
            f,
            [
                ("b".to_string(), "AWSLogs/123456789012/CloudTrail-Digest/us-east-1/2026/11/28/".to_string()),
                ("b".to_string(), "AWSLogs/123456789012/CloudTrail-Digest/us-east-1/2026/11/29/".to_string()),
            ]
        );
        assert!(digest_folders("/local/file.json").is_empty());
        assert!(same_trail(&format!("s3://b/{D1}"), LOG));
        assert!(!same_trail(&format!("s3://b/{D1}"), &LOG.replace("us-east-1", "eu-west-1")));
    }

    #[test]
    fn inflation_is_capped() {
        let big = gz(&"a".repeat(100_000));
        assert!(inflate_into(&big, 50_000, |_| {}).is_err());
        let mut n = 0;
        inflate_into(&big, 200_000, |c| n += c.len()).unwrap();
        assert_eq!(n, 100_000);
    }
}
