//! Where log files come from: a local folder here, S3 in the rekey crate. A source lists items
//! once, then fetches them by item, possibly again (a late-learnt key makes the scan re-read a few).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::DELIVERY_MARGIN;

/// One log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Path or object key, as reported to the user.
    pub name: String,
    pub size: Option<u64>,
    /// Delivery time, read from a CloudTrail file name (`…_20261128T1205Z_…`); None for other names.
    pub delivered: Option<SystemTime>,
}

impl Item {
    pub fn new(name: String, size: Option<u64>) -> Self {
        let delivered = delivery_time(&name);
        Item { name, size, delivered }
    }

    /// Whether the file can hold records from the window: it cannot if it was delivered before the
    /// window began, or long after it ended.
    pub fn may_overlap(&self, since: Option<SystemTime>, until: Option<SystemTime>) -> bool {
        let Some(d) = self.delivered else { return true };
        since.is_none_or(|s| d >= s) && until.is_none_or(|u| d <= u + DELIVERY_MARGIN)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{location}: {problem}")]
pub struct SourceError {
    pub location: String,
    pub problem: String,
}

pub trait Source: Send + Sync {
    /// The source as the user named it (`./logs`, `s3://bucket/prefix`).
    fn describe(&self) -> String;
    /// Every log file that may hold records from the window.
    fn list(&self, since: Option<SystemTime>, until: Option<SystemTime>) -> Result<Vec<Item>, SourceError>;
    /// The file's bytes, compressed or not.
    fn fetch(&self, item: &Item) -> Result<Vec<u8>, SourceError>;
    /// How many fetches to keep in flight: more for a network source, whose latency dominates.
    fn fetch_parallelism(&self) -> usize {
        1
    }
    /// Whether a fetch is a local read, cheap enough for the worker that scans the file to do it
    /// itself. Handing a file from a fetcher thread to a worker costs a context switch or two per
    /// file, which on few cores is a measurable share of a scan that reads from the page cache.
    fn fetch_inline(&self) -> bool {
        false
    }
}

/// The delivery time in a CloudTrail log file name: `<acct>_CloudTrail_<region>_<YYYYMMDDTHHmmZ>_…`.
pub fn delivery_time(name: &str) -> Option<SystemTime> {
    let file = name.rsplit('/').next()?;
    let stamp = file.split('_').find(|p| p.len() == 14 && p.as_bytes()[8] == b'T' && p.ends_with('Z'))?;
    let b = stamp.as_bytes();
    if !b[..8].iter().chain(&b[9..13]).all(u8::is_ascii_digit) {
        return None;
    }
    let text = format!("{}-{}-{}T{}:{}:00Z", &stamp[..4], &stamp[4..6], &stamp[6..8], &stamp[9..11], &stamp[11..13]);
    humantime::parse_rfc3339(&text).ok()
}

/// Is this a file name a trail (or an export of one) uses?
pub fn is_log_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".json.gz", ".json", ".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz"].iter().any(|ext| lower.ends_with(ext))
        && !lower.contains("cloudtrail-digest")
}

/// A folder of log files, nested to any depth (the trail's own layout or a flat export).
pub struct LocalSource {
    root: PathBuf,
}

impl LocalSource {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalSource { root: root.into() }
    }

    fn walk(&self, dir: &Path, out: &mut Vec<Item>) -> Result<(), SourceError> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| SourceError { location: dir.display().to_string(), problem: e.to_string() })?;
        for entry in entries {
            let entry =
                entry.map_err(|e| SourceError { location: dir.display().to_string(), problem: e.to_string() })?;
            let path = entry.path();
            let kind = entry
                .file_type()
                .map_err(|e| SourceError { location: path.display().to_string(), problem: e.to_string() })?;
            if kind.is_dir() {
                self.walk(&path, out)?;
            } else if is_log_name(&path.to_string_lossy()) {
                let size = entry.metadata().ok().map(|m| m.len());
                out.push(Item::new(path.to_string_lossy().into_owned(), size));
            }
        }
        Ok(())
    }
}

impl Source for LocalSource {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    // Every file, even outside the window: the engine skips those and counts them in the summary.
    fn list(&self, _since: Option<SystemTime>, _until: Option<SystemTime>) -> Result<Vec<Item>, SourceError> {
        let meta = std::fs::metadata(&self.root).map_err(|e| SourceError {
            location: self.describe(),
            problem: format!("{e}; give a folder or file of CloudTrail logs"),
        })?;
        let mut items = Vec::new();
        if meta.is_file() {
            items.push(Item::new(self.describe(), Some(meta.len())));
        } else {
            self.walk(&self.root, &mut items)?;
        }
        Ok(items)
    }

    fn fetch(&self, item: &Item) -> Result<Vec<u8>, SourceError> {
        std::fs::read(&item.name).map_err(|e| SourceError { location: item.name.clone(), problem: e.to_string() })
    }

    fn fetch_inline(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_time_comes_from_trail_file_names_only() {
        let t = delivery_time(
            "AWSLogs/1/CloudTrail/us-east-1/2023/07/10/218007301253_CloudTrail_us-east-1_20230710T1145Z_7xgocspSowgK0Gto.json.gz",
        );
        assert_eq!(t, humantime::parse_rfc3339("2023-07-10T11:45:00Z").ok());
        assert_eq!(delivery_time("aws.persistence.iam-backdoor-user.json"), None);
        assert_eq!(delivery_time("x_2023071XT1145Z_y.json"), None);
    }

    #[test]
    fn files_delivered_before_the_window_are_skipped() {
        let item = Item::new("1_CloudTrail_us-east-1_20230710T1145Z_a.json.gz".into(), None);
        let at = |s: &str| humantime::parse_rfc3339(s).ok();
        assert!(item.may_overlap(at("2023-07-10T11:00:00Z"), None));
        assert!(!item.may_overlap(at("2023-07-10T12:00:00Z"), None));
        assert!(item.may_overlap(None, at("2023-07-10T11:00:00Z")), "late delivery is allowed for");
        assert!(!item.may_overlap(None, at("2023-07-10T09:00:00Z")));
    }
}
