//! Fast CloudTrail log scanning: every record signed by an access key, and with `follow`, by every
//! key it minted (AssumeRole, GetSessionToken, GetFederationToken credentials; CreateAccessKey), to
//! a fixpoint.
//!
//! Why it is fast (figures in the README, measured by `scripts/bench-trace.sh`):
//! - decompression dominates, so CloudTrail's single-member gzip files are inflated whole by
//!   libdeflate (anything else streams through zlib-rs), and files are spread over every core;
//! - a file is parsed only if the bytes of a wanted key id occur in it (key ids are `[A-Z0-9]`, so a
//!   byte search cannot miss one), and inside such a file only the records that contain one;
//! - matching records are parsed into typed, borrowed structs, never into `serde_json::Value`.
//!
//! Memory is bounded by budgets, not by the size of the trail or of its files: fetched files,
//! large decompression buffers and copied matches each have one, a file over
//! [`Query::max_file_bytes`] (a gzip bomb) is skipped and reported, and matches are handed to the
//! caller as they are found. What grows with the trail is its listing and, with `follow`, a few
//! bytes per key id per file.
//!
//! Following keys in one pass: files are scanned in delivery order, so a key is usually learnt before
//! the files holding its records are read. For the others, the first read notes the key ids each
//! file holds; a key learnt late sends back only the files that hold it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

pub mod athena;
mod budget;
pub mod classify;
mod inflate;
pub mod record;
mod scan;
pub mod source;
pub mod time;

pub use record::{Record, RecordError, Records};
pub use scan::{scan, scan_with_progress};
pub use source::{Item, LocalSource, Source, SourceError};

/// CloudTrail delivers a record within about 15 minutes of the call; files are named by delivery
/// time. Time windows are widened by this much so that late files are still read.
pub const DELIVERY_MARGIN: Duration = Duration::from_secs(3600);

/// The default of [`Query::max_file_bytes`]: many times the few MB of a CloudTrail file, and small
/// enough that a scan stays within about 200 MB whatever the files hold.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 << 20;

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
    /// A file larger than this, stored or decompressed, is skipped and reported instead of read:
    /// a gzip bomb or a file of several GB must not exhaust memory.
    pub max_file_bytes: u64,
    /// Once set, the scan starts no more file and returns what it has found ([`Summary::stopped`]):
    /// how a caller with a deadline (the incident's bounded sample) ends it without leaving a
    /// thread behind that reads on for nobody.
    pub stop: Option<Arc<AtomicBool>>,
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
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            stop: None,
        }
    }

    fn stopped(&self) -> bool {
        self.stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed))
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
    /// Files that could not be read or decoded, or were over the size limit, with the reason; the
    /// scan goes on without them.
    pub corrupt: Vec<(String, String)>,
    /// How many of `corrupt` were skipped for being over [`Query::max_file_bytes`].
    pub too_large: u64,
    /// Those files, by name (a caller names them; the problem text is for people).
    pub too_large_files: Vec<String>,
    /// Records in matching files that could not be parsed.
    pub malformed_records: u64,
    pub derived: Vec<DerivedKey>,
    /// Re-reads: a file is read again when it holds a key learnt after it was scanned.
    pub rescanned: u64,
    pub elapsed: Duration,
    /// The scan ended early on [`Query::stop`]: files were left unread.
    pub stopped: bool,
}

impl Summary {
    /// Uncompressed MB/s.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        self.bytes_scanned as f64 / 1e6 / secs
    }
}

/// How far a scan has got, for a progress display; given after every file read.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Reads done and to do, re-reads included (the total grows when a re-read is scheduled).
    pub files_done: u64,
    pub files_total: u64,
    /// Stored (compressed) bytes read, and to read when every listed size is known: what an
    /// estimate of the time left can be based on.
    pub bytes_read: u64,
    pub bytes_total: Option<u64>,
    /// Uncompressed JSON scanned.
    pub bytes_scanned: u64,
    pub matches: u64,
    pub derived_keys: u64,
    pub rereads: u64,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("no access key to look for")]
    NoKeys,
}
