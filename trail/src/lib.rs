//! Fast CloudTrail log scanning: every record signed by an access key, and with `follow`, by every
//! key it minted (AssumeRole, GetSessionToken, GetFederationToken credentials; CreateAccessKey), to
//! a fixpoint.
//!
//! Why it is fast (figures in the README, measured by `cargo bench -p rekey-trail`):
//! - decompression dominates, so it uses zlib-rs and spreads files over every core;
//! - a file is parsed only if the bytes of a wanted key id occur in it (key ids are `[A-Z0-9]`, so a
//!   byte search cannot miss one), and inside such a file only the records that contain one;
//! - matching records are parsed into typed, borrowed structs, never into `serde_json::Value`.
//!
//! Memory is bounded by the number of files in flight, not by the size of the trail: files are
//! fetched into a bounded channel and dropped once scanned; matches are handed to the caller as they
//! are found.
//!
//! Following keys in one pass: files are scanned in delivery order, so a key is usually learnt before
//! the files holding its records are read. A record signed by a key can only be in a file delivered
//! after the key was minted, so when a key is learnt late, only files delivered since its minting
//! (less a margin) that were scanned without it are read again.

use std::time::{Duration, SystemTime};

pub mod athena;
pub mod classify;
pub mod record;
mod scan;
pub mod source;
pub mod time;

pub use record::{Record, RecordError, Records};
pub use scan::scan;
pub use source::{Item, LocalSource, Source, SourceError};

/// CloudTrail delivers a record within about 15 minutes of the call; files are named by delivery
/// time. Time windows are widened by this much so that late files are still read.
pub const DELIVERY_MARGIN: Duration = Duration::from_secs(3600);

/// What to look for.
#[derive(Debug, Clone)]
pub struct Query {
    /// Access key ids whose records are wanted.
    pub keys: Vec<String>,
    /// Also follow the keys those keys minted, recursively.
    pub follow: bool,
    /// Records with these event names are wanted too, whoever signed them (an investigation's
    /// context: the alternate contacts and trust policies recorded before the attack).
    pub event_names: Vec<String>,
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    /// Threads that decompress and scan (default: the number of cores).
    pub workers: usize,
}

impl Query {
    pub fn new(keys: Vec<String>) -> Self {
        Query {
            keys,
            follow: false,
            event_names: Vec::new(),
            since: None,
            until: None,
            workers: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
        }
    }
}

/// One record signed by a followed key.
#[derive(Debug, Clone)]
pub struct Match {
    /// The key chain from a queried key to the signing key: `[AKIA…, ASIA…]`; empty for a record
    /// wanted for its event name only.
    pub chain: Vec<String>,
    /// The file (or object) it came from.
    pub source: String,
    /// The record exactly as it was in the log.
    pub raw: String,
    pub event_time: Option<String>,
    pub event_name: Option<String>,
    pub event_source: Option<String>,
    pub aws_region: Option<String>,
    pub source_ip: Option<String>,
    pub error_code: Option<String>,
    pub event_id: Option<String>,
}

/// A key minted by a followed key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivedKey {
    pub key: String,
    pub parent: String,
    /// The event that minted it (`AssumeRole`, `CreateAccessKey`, …) and when.
    pub event_name: String,
    pub event_time: Option<String>,
    /// The role or user the new key acts as, when the record says.
    pub principal: Option<String>,
}

/// What a scan read, for the summary on stderr.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub files: u64,
    /// Files not read because their delivery time is outside the window.
    pub files_outside_window: u64,
    pub bytes_read: u64,
    /// Uncompressed JSON scanned.
    pub bytes_scanned: u64,
    /// Records in the files read (counted by their `eventID`, without parsing).
    pub records: u64,
    pub matches: u64,
    /// Files that could not be read or decoded, with the reason; the scan goes on without them.
    pub corrupt: Vec<(String, String)>,
    /// Records in matching files that could not be parsed.
    pub malformed_records: u64,
    pub derived: Vec<DerivedKey>,
    /// Files read a second time because a key was learnt after they were scanned.
    pub rescanned: u64,
    pub elapsed: Duration,
}

impl Summary {
    /// Uncompressed MB/s.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        self.bytes_scanned as f64 / 1e6 / secs
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("no access key to look for")]
    NoKeys,
}
