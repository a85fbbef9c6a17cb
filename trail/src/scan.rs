//! The scan engine: fetchers fill a bounded channel with files, workers inflate and search them,
//! and the calling thread collects matches, learns minted keys and schedules the few re-reads a
//! late-learnt key needs.
//!
//! Following keys: the first read of every file also notes which key ids its `accessKeyId` fields
//! hold (a fingerprint each). When a key is learnt after a file was searched, the file is read
//! again only if that key is among them; rounds of such re-reads go on until no key is new. So a
//! file is read twice only if it holds a key of the chain, however late its hops were delivered.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, RwLock};
use std::time::Instant;

use aho_corasick::AhoCorasick;
use memchr::memmem;

use crate::budget::{Budget, Lease};
use crate::inflate::{InflateError, Inflater, retain_per_worker};
use crate::record::{Record, Records};
use crate::source::{Item, Source};
use crate::{DerivedKey, Match, Progress, Query, ScanError, Summary};

enum Searcher {
    One(Box<memmem::Finder<'static>>),
    Many(Box<AhoCorasick>),
}

impl Searcher {
    fn new(patterns: &[String]) -> Searcher {
        match patterns {
            [one] => Searcher::One(Box::new(memmem::Finder::new(one.as_bytes()).into_owned())),
            many => Searcher::Many(Box::new(AhoCorasick::new(many).expect("key ids are plain ASCII patterns"))),
        }
    }

    fn is_match(&self, hay: &[u8]) -> bool {
        match self {
            Searcher::One(f) => f.find(hay).is_some(),
            Searcher::Many(ac) => ac.is_match(hay),
        }
    }
}

/// The keys known so far, in the order learnt, and what looks for them. Replaced whole when a
/// key is learnt; workers take the current one as they start a file.
struct Known {
    keys: Vec<String>,
    /// Fingerprints of `keys`, sorted.
    fingerprints: Vec<u32>,
    /// The keys and the wanted event names: the pre-filter of a first read.
    searcher: Arc<Searcher>,
}

impl Known {
    fn new(keys: Vec<String>, names: &[String]) -> Known {
        let mut fingerprints: Vec<u32> = keys.iter().map(|k| fingerprint(k.as_bytes())).collect();
        fingerprints.sort_unstable();
        let patterns: Vec<String> = keys.iter().chain(names).cloned().collect();
        Known { searcher: Arc::new(Searcher::new(&patterns)), keys, fingerprints }
    }
}

/// What one read of a file looks for: the keys from `from` on (a re-read skips those the file
/// was already searched for), and on a first read the wanted event names.
struct Wanted<'a> {
    keys: &'a [String],
    from: usize,
    names: &'a [String],
    searcher: Arc<Searcher>,
}

impl Wanted<'_> {
    fn signer(&self, key: &str) -> bool {
        self.keys[self.from..].iter().any(|k| k == key)
    }

    fn name(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }
}

/// One read of one file; `from` is None for its first read.
struct Unit {
    index: usize,
    from: Option<usize>,
}

/// A matching record, as a place in the result's text: kept small, because a hostile file can
/// match in every record. The collecting thread parses it again for its fields.
struct Found {
    raw: Range<usize>,
    /// Signed by a wanted key (rather than wanted for its event name alone).
    by_key: bool,
}

/// Why a file was not scanned.
enum Problem {
    /// Over `Query::max_file_bytes`, stored or inflated.
    TooLarge,
    Unreadable(String),
}

/// Bytes a result keeps for its matches, with the lease that accounts for them.
struct Text {
    bytes: Vec<u8>,
    _lease: Lease,
}

struct FileResult {
    index: usize,
    first: bool,
    /// How many keys of the key set the file was searched for.
    searched: usize,
    bytes_read: u64,
    bytes_scanned: u64,
    records: u64,
    malformed: u64,
    /// With `follow`, on a first read: fingerprints of the key ids in the file, sorted.
    key_ids: Option<Box<[u32]>>,
    /// Keys learnt from this file and already searched in it.
    also: Vec<String>,
    problem: Option<Problem>,
    text: Option<Text>,
    found: Vec<Found>,
}

/// What a file's text held.
struct Scanned {
    records: u64,
    malformed: u64,
    key_ids: Option<Box<[u32]>>,
    found: Vec<Found>,
    /// Keys minted in the file by a key it was searched for, and searched in it at once.
    also: Vec<String>,
}

static RECORD_MARK: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"\"eventID\""));
static KEY_FIELD: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"\"accessKeyId\""));

/// Fetched files waiting to be scanned, all together. A fetcher waits when this is spent; one
/// larger file (up to the per-file limit) goes through alone.
const FETCHED_BUDGET: u64 = 32 << 20;
/// Matched records copied out of the workers' reused buffers and not yet handed to the caller.
const FOUND_BUDGET: u64 = 16 << 20;

/// FNV-1a: a stable 32-bit fingerprint of a key id. Two ids sharing one only cost a re-read.
fn fingerprint(key: &[u8]) -> u32 {
    key.iter().fold(0x811c_9dc5u32, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// Fingerprints of the values of every `"accessKeyId"` field in `text`, sorted and distinct: the
/// keys that sign its records, with those minted or named in them (a superset only costs a
/// re-read). A record's signer is always in such a field, so nothing signed can be left out.
fn key_ids(text: &[u8]) -> Box<[u32]> {
    let mut out = Vec::new();
    for at in KEY_FIELD.find_iter(text) {
        let mut i = at + KEY_FIELD.needle().len();
        while let Some(b' ' | b'\t' | b'\n' | b'\r' | b':') = text.get(i) {
            i += 1;
        }
        if text.get(i) != Some(&b'"') {
            continue;
        }
        // The raw bytes up to the closing quote: a record's signer matches a key only when its
        // bytes are the key's, so an escaped value need not be decoded.
        let value = &text[(i + 1).min(text.len())..];
        if let Some(len) = memchr::memchr(b'"', value).filter(|&n| n > 0) {
            out.push(fingerprint(&value[..len]));
        }
    }
    out.sort_unstable();
    out.dedup();
    out.into_boxed_slice()
}

/// `64 MiB`, or bytes when not a whole number of MiB.
fn mib(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) { format!("{} MiB", bytes >> 20) } else { format!("{bytes} bytes") }
}

/// Where `inner` lies in `outer`, when it is a slice of it.
fn range_in(outer: &[u8], inner: &str) -> Option<Range<usize>> {
    let start = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    let end = start.checked_add(inner.len())?;
    (end <= outer.len()).then_some(start..end)
}

/// Pre-filter the text, and parse only the records that may hold a wanted key or event name.
fn scan_text(text: &[u8], wanted: &Wanted, follow: bool, first: bool, known: &Known) -> Result<Scanned, String> {
    // Records are counted once, on a file's first read.
    let records = if first { RECORD_MARK.find_iter(text).count() as u64 } else { 0 };
    let mut scanned = Scanned { records, malformed: 0, key_ids: None, found: Vec::new(), also: Vec::new() };
    let candidate = if follow && first {
        // The key fields are read anyway to note the file's key ids; checking them against the
        // wanted keys saves a search of the whole text. Event names still need one.
        let ids = key_ids(text);
        let hit = known.fingerprints.iter().any(|f| ids.binary_search(f).is_ok());
        scanned.key_ids = Some(ids);
        hit || (!wanted.names.is_empty() && wanted.searcher.is_match(text))
    } else {
        wanted.searcher.is_match(text)
    };
    if !candidate {
        return Ok(scanned);
    }
    let mut malformed = 0;
    let mut found = Vec::new();
    let mut minted: Vec<String> = Vec::new();
    let lines_malformed = Records::each(text, |raw| {
        if !wanted.searcher.is_match(raw.get().as_bytes()) {
            return;
        }
        let Ok(rec) = Record::parse(raw) else {
            malformed += 1;
            return;
        };
        let by_key = rec.access_key_id().is_some_and(|k| wanted.signer(k));
        if !by_key && !rec.event_name.get().is_some_and(|n| wanted.name(n)) {
            return;
        }
        let Some(range) = range_in(text, rec.raw()) else {
            malformed += 1;
            return;
        };
        found.push(Found { raw: range, by_key });
        if follow && by_key {
            note_minted(&rec, known, &mut minted);
        }
    })
    .map_err(|e| e.to_string())?;
    scanned.malformed += malformed + lines_malformed;

    // A key minted here is searched here at once: the file holds its id (in the minting
    // response), so otherwise it would be read again for it.
    let mut done = 0;
    while done < minted.len() {
        let fresh: Vec<String> = minted[done..].to_vec();
        done = minted.len();
        let searcher = Searcher::new(&fresh);
        let seen: Vec<usize> = found.iter().map(|f| f.raw.start).collect();
        Records::each(text, |raw| {
            if !searcher.is_match(raw.get().as_bytes()) {
                return;
            }
            let Ok(rec) = Record::parse(raw) else { return };
            if !rec.access_key_id().is_some_and(|k| fresh.iter().any(|f| f == k)) {
                return;
            }
            if let Some(range) = range_in(text, rec.raw()).filter(|r| !seen.contains(&r.start)) {
                found.push(Found { raw: range, by_key: true });
                note_minted(&rec, known, &mut minted);
            }
        })
        .map_err(|e| e.to_string())?;
    }
    scanned.found = found;
    scanned.also = minted;
    Ok(scanned)
}

/// Add the key `rec` minted to `minted`, unless it is known already.
fn note_minted(rec: &Record, known: &Known, minted: &mut Vec<String>) {
    if let Some(m) = rec.minted()
        && !known.keys.contains(&m.key)
        && !minted.contains(&m.key)
    {
        minted.push(m.key);
    }
}

/// Copy the matched records out of a reused buffer into one of their own, leased from `budget`.
fn copy_found(text: &[u8], found: &mut [Found], budget: &Arc<Budget>) -> Text {
    let total: usize = found.iter().map(|f| f.raw.len()).sum();
    let lease = budget.take(total as u64);
    let mut bytes = Vec::with_capacity(total);
    for f in found {
        let start = bytes.len();
        bytes.extend_from_slice(&text[f.raw.clone()]);
        f.raw = start..bytes.len();
    }
    Text { bytes, _lease: lease }
}

/// What every thread of a scan shares.
struct Ctx<'a> {
    sources: &'a [&'a dyn Source],
    items: &'a [(usize, Item)],
    query: &'a Query,
    current: RwLock<Arc<Known>>,
    limit: usize,
    fetched: Arc<Budget>,
    large: Arc<Budget>,
    found: Arc<Budget>,
}

/// One read of one file, on a worker.
fn read_file(ctx: &Ctx, unit: Unit, data: Result<(Vec<u8>, Lease), Problem>, inflater: &mut Inflater) -> FileResult {
    // The freshest key set: keys learnt while earlier files were scanned.
    let known = ctx.current.read().unwrap_or_else(PoisonError::into_inner).clone();
    let first = unit.from.is_none();
    let from = unit.from.unwrap_or(0);
    let wanted = Wanted {
        keys: &known.keys,
        from,
        names: if first { &ctx.query.event_names } else { &[] },
        searcher: if first { known.searcher.clone() } else { Arc::new(Searcher::new(&known.keys[from..])) },
    };
    let mut result = FileResult {
        index: unit.index,
        first,
        searched: known.keys.len(),
        bytes_read: 0,
        bytes_scanned: 0,
        records: 0,
        malformed: 0,
        key_ids: None,
        also: Vec::new(),
        problem: None,
        text: None,
        found: Vec::new(),
    };
    let (raw, raw_lease) = match data {
        Ok(d) => d,
        Err(problem) => {
            result.problem = Some(problem);
            return result;
        }
    };
    result.bytes_read = raw.len() as u64;
    let follow = ctx.query.follow;
    if raw.starts_with(&[0x1f, 0x8b]) {
        match inflater.inflate(&raw, ctx.limit) {
            Ok(_) => {}
            Err(InflateError::TooLarge) => result.problem = Some(Problem::TooLarge),
            Err(InflateError::Corrupt(e)) => result.problem = Some(Problem::Unreadable(e)),
        }
        // The compressed bytes are done with: let the fetchers have their budget back.
        drop((raw, raw_lease));
        if result.problem.is_none() {
            let text = inflater.text();
            result.bytes_scanned = text.len() as u64;
            match scan_text(text, &wanted, follow, first, &known) {
                Ok(s) => {
                    (result.records, result.malformed, result.key_ids) = (s.records, s.malformed, s.key_ids);
                    (result.found, result.also) = (s.found, s.also);
                }
                Err(e) => {
                    result.bytes_scanned = 0;
                    result.problem = Some(Problem::Unreadable(e));
                }
            }
            if !result.found.is_empty() {
                // A buffer of the file's own goes to the caller whole; the reused one is copied from.
                result.text = match inflater.take_large() {
                    Some((bytes, lease)) => Some(Text { bytes, _lease: lease }),
                    None => Some(copy_found(inflater.text(), &mut result.found, &ctx.found)),
                };
            }
        }
        inflater.finish();
    } else {
        result.bytes_scanned = raw.len() as u64;
        match scan_text(&raw, &wanted, follow, first, &known) {
            Ok(s) => {
                (result.records, result.malformed, result.key_ids) = (s.records, s.malformed, s.key_ids);
                (result.found, result.also) = (s.found, s.also);
            }
            Err(e) => {
                result.bytes_scanned = 0;
                result.problem = Some(Problem::Unreadable(e));
            }
        }
        if !result.found.is_empty() {
            result.text = Some(Text { bytes: raw, _lease: raw_lease });
        }
    }
    if result.problem.is_some() {
        result.found.clear();
        result.text = None;
    }
    result
}

/// Scan `sources` for the records of `query.keys` (and, with `follow`, of every key they minted),
/// calling `on_match` on this thread for each, in roughly delivery order.
pub fn scan(sources: &[&dyn Source], query: &Query, on_match: &mut dyn FnMut(Match)) -> Result<Summary, ScanError> {
    scan_with_progress(sources, query, on_match, &mut |_| {})
}

/// [`scan`], calling `on_progress` on this thread after every file read.
pub fn scan_with_progress(
    sources: &[&dyn Source],
    query: &Query,
    on_match: &mut dyn FnMut(Match),
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<Summary, ScanError> {
    let started = Instant::now();
    let mut keys: Vec<String> = Vec::new();
    for k in &query.keys {
        let k = k.trim().to_string();
        if !k.is_empty() && !keys.contains(&k) {
            keys.push(k);
        }
    }
    if keys.is_empty() {
        return Err(ScanError::NoKeys);
    }
    let mut summary = Summary::default();

    // Every file, in delivery order; files with no delivery time in their name go last.
    let mut items: Vec<(usize, Item)> = Vec::new();
    for (s, source) in sources.iter().enumerate() {
        for item in source.list(query.since, query.until)? {
            if item.may_overlap(query.since, query.until) {
                items.push((s, item));
            } else {
                summary.files_outside_window += 1;
            }
        }
    }
    items.sort_by(|a, b| {
        (a.1.delivered.is_none(), a.1.delivered, &a.1.name).cmp(&(b.1.delivered.is_none(), b.1.delivered, &b.1.name))
    });

    let limit = usize::try_from(query.max_file_bytes).unwrap_or(usize::MAX);
    let ctx = Ctx {
        sources,
        items: &items,
        query,
        current: RwLock::new(Arc::new(Known::new(keys, &query.event_names))),
        limit,
        fetched: Budget::new(FETCHED_BUDGET),
        large: Budget::new(query.max_file_bytes.saturating_add(1)),
        found: Budget::new(FOUND_BUDGET),
    };
    let mut parent: HashMap<String, String> = HashMap::new();
    let mut searched = vec![0usize; items.len()];
    let mut key_ids: Vec<Option<Box<[u32]>>> = vec![None; items.len()];
    // Fingerprints of keys learnt from a file and searched in it already.
    let mut searched_also: Vec<Vec<u32>> = vec![Vec::new(); items.len()];
    let mut unreadable = vec![false; items.len()];
    let mut progress = Progress {
        files_total: items.len() as u64,
        bytes_total: items.iter().map(|(_, i)| i.size).sum(),
        ..Progress::default()
    };
    on_progress(&progress);

    // A first read of every file, then rounds of re-reads for keys learnt too late, until no key
    // is new.
    let mut units: Vec<Unit> = (0..items.len()).map(|index| Unit { index, from: None }).collect();
    while !units.is_empty() {
        let whole = run_pass(&ctx, units, |mut result| {
            let name = &items[result.index].1.name;
            summary.bytes_read += result.bytes_read;
            progress.files_done += 1;
            progress.bytes_read += items[result.index].1.size.unwrap_or(result.bytes_read);
            if result.first {
                summary.files += 1;
                summary.bytes_scanned += result.bytes_scanned;
                summary.records += result.records;
                summary.malformed_records += result.malformed;
                key_ids[result.index] = result.key_ids.take();
            } else {
                summary.rescanned += 1;
            }
            searched[result.index] = searched[result.index].max(result.searched);
            searched_also[result.index].extend(result.also.iter().map(|k| fingerprint(k.as_bytes())));
            if let Some(problem) = &result.problem {
                unreadable[result.index] = true;
                let problem = match problem {
                    Problem::TooLarge => {
                        summary.too_large += 1;
                        summary.too_large_files.push(name.clone());
                        format!(
                            "larger than the per-file limit of {} uncompressed; not read, to keep memory bounded",
                            mib(query.max_file_bytes)
                        )
                    }
                    Problem::Unreadable(p) if result.first => p.clone(),
                    // Its first read counted; what may be missing are the late keys' records.
                    Problem::Unreadable(p) => format!("{p} (when read again for keys learnt later)"),
                };
                summary.corrupt.push((name.clone(), problem));
            }
            let text: &[u8] = result.text.as_ref().map_or(&[], |t| &t.bytes);
            for f in result.found.drain(..) {
                // The worker parsed this record already; it parses again the same way.
                let raw = String::from_utf8_lossy(text.get(f.raw).unwrap_or_default());
                let Some(rec) = serde_json::from_str(&raw).ok().and_then(|r| Record::parse(r).ok()) else {
                    summary.malformed_records += 1;
                    continue;
                };
                let signer = if f.by_key { rec.access_key_id().unwrap_or_default() } else { "" };
                let minted = if query.follow && f.by_key { rec.minted() } else { None };
                let own = |s: Option<&str>| s.map(str::to_string);
                if let Some(m) = minted {
                    let mut current = ctx.current.write().unwrap_or_else(PoisonError::into_inner);
                    if !current.keys.contains(&m.key) {
                        let mut keys = current.keys.clone();
                        keys.push(m.key.clone());
                        *current = Arc::new(Known::new(keys, &query.event_names));
                        parent.insert(m.key.clone(), signer.to_string());
                        summary.derived.push(DerivedKey {
                            key: m.key,
                            parent: signer.to_string(),
                            event_name: rec.event_name.get().unwrap_or_default().to_string(),
                            event_time: own(rec.time()),
                            principal: m.principal,
                        });
                    }
                }
                // A record wanted for its event name alone has no chain.
                let mut chain = if signer.is_empty() { Vec::new() } else { vec![signer.to_string()] };
                while let Some(p) = chain.last().and_then(|last| parent.get(last)) {
                    if chain.contains(p) {
                        break;
                    }
                    chain.push(p.clone());
                }
                chain.reverse();
                summary.matches += 1;
                on_match(Match {
                    chain,
                    source: name.clone(),
                    raw: rec.raw().to_string(),
                    event_time: own(rec.time()),
                    event_name: own(rec.event_name.get()),
                    event_source: own(rec.event_source.get()),
                    aws_region: own(rec.aws_region.get()),
                    source_ip: own(rec.source_ip.get()),
                    error_code: own(rec.error_code.get()),
                    event_id: own(rec.event_id.get()),
                });
            }
            progress.bytes_scanned = summary.bytes_scanned;
            progress.matches = summary.matches;
            progress.derived_keys = summary.derived.len() as u64;
            progress.rereads = summary.rescanned;
            progress.elapsed = started.elapsed();
            on_progress(&progress);
        });
        if !whole {
            summary.stopped = true;
            break;
        }
        if !query.follow {
            break;
        }

        // A file needs another read only if a key learnt after it was searched is among its key
        // ids. The others hold none of the new keys: they count as searched for all of them.
        let known = ctx.current.read().unwrap_or_else(PoisonError::into_inner).clone();
        let n = known.keys.len();
        let prints: Vec<u32> = known.keys.iter().map(|k| fingerprint(k.as_bytes())).collect();
        units = Vec::new();
        for i in 0..items.len() {
            let holds_new_key = !unreadable[i]
                && searched[i] < n
                && key_ids[i].as_ref().is_some_and(|ids| {
                    prints[searched[i]..].iter().any(|p| ids.binary_search(p).is_ok() && !searched_also[i].contains(p))
                });
            if holds_new_key {
                units.push(Unit { index: i, from: Some(searched[i]) });
            } else {
                searched[i] = n;
            }
        }
        progress.files_total += units.len() as u64;
        if let Some(total) = &mut progress.bytes_total {
            *total += units.iter().map(|u| items[u.index].1.size.unwrap_or(0)).sum::<u64>();
        }
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Fetch one unit's file, within the per-file limit and the budget for fetched bytes.
fn fetch_unit(ctx: &Ctx, unit: &Unit) -> Result<(Vec<u8>, Lease), Problem> {
    let (s, item) = &ctx.items[unit.index];
    let limit = ctx.query.max_file_bytes;
    // A listed size over the limit is not even downloaded.
    if item.size.is_some_and(|size| size > limit) {
        return Err(Problem::TooLarge);
    }
    let mut lease = ctx.fetched.take(item.size.unwrap_or(0));
    match ctx.sources[*s].fetch(item) {
        Ok(bytes) if bytes.len() as u64 > limit => Err(Problem::TooLarge),
        Ok(bytes) => {
            lease.set(bytes.len() as u64);
            Ok((bytes, lease))
        }
        Err(e) => Err(Problem::Unreadable(e.problem)),
    }
}

/// Fetch and scan `units` with bounded memory, handing each file's result to `collect` on this
/// thread. False when [`Query::stop`] left some of them unread.
fn run_pass(ctx: &Ctx, units: Vec<Unit>, mut collect: impl FnMut(FileResult)) -> bool {
    let workers = ctx.query.workers.max(1);
    let next = AtomicUsize::new(0);
    let units: Vec<Mutex<Option<Unit>>> = units.into_iter().map(|u| Mutex::new(Some(u))).collect();
    let left_unread = AtomicBool::new(false);
    let take_unit = || loop {
        if ctx.query.stopped() {
            if next.load(Ordering::Relaxed) < units.len() {
                left_unread.store(true, Ordering::Relaxed);
            }
            return None;
        }
        let i = next.fetch_add(1, Ordering::Relaxed);
        let slot = units.get(i)?;
        if let Some(unit) = slot.lock().unwrap_or_else(PoisonError::into_inner).take() {
            return Some(unit);
        }
    };
    let (result_tx, result_rx) = sync_channel::<FileResult>(workers * 2);

    // Local files: each worker reads its own, with no fetcher thread to hand them over.
    if ctx.sources.iter().all(|s| s.fetch_inline()) {
        std::thread::scope(|scope| {
            for _ in 0..workers {
                let result_tx = result_tx.clone();
                let take_unit = &take_unit;
                let mut inflater = Inflater::new(ctx.large.clone(), retain_per_worker(workers));
                scope.spawn(move || {
                    while let Some(unit) = take_unit() {
                        let data = fetch_unit(ctx, &unit);
                        if result_tx.send(read_file(ctx, unit, data, &mut inflater)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(result_tx);
            for result in result_rx {
                collect(result);
            }
        });
        return !left_unread.load(Ordering::Relaxed);
    }

    let fetchers = ctx.sources.iter().map(|s| s.fetch_parallelism()).max().unwrap_or(1).max(1);
    // Files fetched and not yet scanned: bounded in number here, and in bytes by `ctx.fetched`.
    let (work_tx, work_rx) = sync_channel::<(Unit, Result<(Vec<u8>, Lease), Problem>)>(workers * 2);
    let work_rx = Arc::new(Mutex::new(work_rx));
    std::thread::scope(|scope| {
        for _ in 0..fetchers {
            let work_tx = work_tx.clone();
            let take_unit = &take_unit;
            scope.spawn(move || {
                while let Some(unit) = take_unit() {
                    let data = fetch_unit(ctx, &unit);
                    if work_tx.send((unit, data)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(work_tx);
        for _ in 0..workers {
            let work_rx: Arc<Mutex<Receiver<_>>> = work_rx.clone();
            let result_tx = result_tx.clone();
            let mut inflater = Inflater::new(ctx.large.clone(), retain_per_worker(workers));
            scope.spawn(move || {
                loop {
                    let next = work_rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    let Ok((unit, data)) = next else { break };
                    let result = read_file(ctx, unit, data, &mut inflater);
                    if result_tx.send(result).is_err() {
                        break;
                    }
                }
            });
        }
        drop(result_tx);
        for result in result_rx {
            collect(result);
        }
    });
    !left_unread.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_read_from_every_key_field_whatever_the_spacing() {
        let text = br#"{"userIdentity":{"accessKeyId":"AKIAONE0000000000001"},
            "responseElements":{"credentials":{"accessKeyId" :
              "ASIATWO0000000000002"}}, "x": {"accessKeyId": null}, "y": {"accessKeyId": ""},
            "z": {"accessKeyId": "AKIA-MOCK-1"}, "w":"accessKeyId","v":{"accessKeyId":"AKIAONE0000000000001"}"#;
        let ids = key_ids(text);
        let mut want =
            [fingerprint(b"AKIAONE0000000000001"), fingerprint(b"ASIATWO0000000000002"), fingerprint(b"AKIA-MOCK-1")];
        want.sort_unstable();
        assert_eq!(&ids[..], &want[..]);
        // Cut short anywhere: no panic, and no id read past the end.
        for cut in 0..text.len() {
            let _ = key_ids(&text[..cut]);
        }
        assert!(key_ids(br#""accessKeyId":"AKIAONE0000000000001"#).is_empty(), "an unterminated value is not an id");
    }

    #[test]
    fn a_stop_ends_the_scan_with_what_it_found() {
        use crate::LocalSource;
        let dir = tempfile::tempdir().unwrap();
        const FILES: usize = 40;
        for i in 0..FILES {
            let record = format!(
                r#"{{"Records":[{{"eventID":"e{i}","eventTime":"2024-05-01T00:00:00Z","eventName":"GetCallerIdentity","userIdentity":{{"accessKeyId":"AKIASTOPTEST00000001"}}}}]}}"#
            );
            std::fs::write(dir.path().join(format!("f{i:02}.json")), record).unwrap();
        }
        let source = LocalSource::new(dir.path());
        let mut query = Query::new(vec!["AKIASTOPTEST00000001".into()]);
        query.workers = 1;

        let all = scan(&[&source], &query, &mut |_| {}).unwrap();
        assert_eq!((all.files, all.matches, all.stopped), (FILES as u64, FILES as u64, false));

        // Stopped at the first match: the worker is at most a few files ahead of the caller.
        let stop = Arc::new(AtomicBool::new(false));
        query.stop = Some(stop.clone());
        let some = scan(&[&source], &query, &mut |_| stop.store(true, Ordering::Relaxed)).unwrap();
        assert!(some.stopped, "{some:?}");
        assert!(some.files >= 1 && some.files < FILES as u64 / 2, "{some:?}");
        assert_eq!(some.matches, some.files, "what was read is all reported");

        // Stopped before it starts: nothing read.
        let none = scan(&[&source], &query, &mut |_| {}).unwrap();
        assert_eq!((none.files, none.matches, none.stopped), (0, 0, true));
    }

    #[test]
    fn a_record_range_is_found_only_inside_its_text() {
        let text = "abcdef";
        assert_eq!(range_in(text.as_bytes(), &text[2..4]), Some(2..4));
        let elsewhere = String::from("cd");
        assert_eq!(range_in(text.as_bytes(), &elsewhere), None);
    }
}
