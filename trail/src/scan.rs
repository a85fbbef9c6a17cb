//! The scan engine: fetchers fill a bounded channel with files, workers decompress and search
//! them, and the calling thread collects matches, learns minted keys and schedules the few re-reads
//! a late-learnt key needs.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use aho_corasick::AhoCorasick;
use memchr::memmem;

use crate::record::{Record, Records};
use crate::source::{Item, Source};
use crate::{DerivedKey, Match, Query, ScanError, Summary};

/// The keys known so far, and a searcher for those from `from` on.
struct KeySet {
    keys: Vec<String>,
    /// When each key was minted (None for the queried keys, or when the record had no time).
    minted_at: Vec<Option<SystemTime>>,
}

enum Searcher {
    One(Box<memmem::Finder<'static>>),
    Many(Box<AhoCorasick>),
}

impl Searcher {
    fn new(keys: &[String]) -> Searcher {
        match keys {
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

/// A view of the key set for one unit of work: the keys from `from` to `to` are wanted.
struct Wanted {
    keys: Arc<Vec<String>>,
    from: usize,
    /// Event names wanted whoever signed them (only on a file's first read).
    names: Arc<Vec<String>>,
    searcher: Arc<Searcher>,
}

impl Wanted {
    fn signer(&self, key: &str) -> bool {
        self.keys[self.from..].iter().any(|k| k == key)
    }

    fn name(&self, name: &str) -> bool {
        self.from == 0 && self.names.iter().any(|n| n == name)
    }
}

/// What the pre-filter looks for: the keys, and the event names wanted whoever signed them.
fn patterns(keys: &[String], names: &[String]) -> Vec<String> {
    keys.iter().chain(names).cloned().collect()
}

struct Unit {
    index: usize,
    wanted: Wanted,
}

struct Found {
    raw: String,
    signer: String,
    minted: Option<(String, Option<String>)>,
    event_time: Option<String>,
    event_name: Option<String>,
    event_source: Option<String>,
    aws_region: Option<String>,
    source_ip: Option<String>,
    error_code: Option<String>,
    event_id: Option<String>,
}

struct FileResult {
    index: usize,
    /// How many keys of the key set the file was searched for.
    searched: usize,
    bytes_read: u64,
    bytes_scanned: u64,
    records: u64,
    malformed: u64,
    corrupt: Option<String>,
    found: Vec<Found>,
}

static RECORD_MARK: &[u8] = b"\"eventID\"";

/// File names carry the delivery minute; allow for that rounding and for clock skew.
const MINT_SKEW: std::time::Duration = std::time::Duration::from_secs(300);

/// Decompress (when gzipped), pre-filter, and parse only what contains a wanted key.
fn process(
    data: &[u8],
    wanted: &Wanted,
    follow: bool,
    buf: &mut Vec<u8>,
) -> Result<(u64, u64, u64, Vec<Found>), String> {
    let text: &[u8] = if data.starts_with(&[0x1f, 0x8b]) {
        buf.clear();
        flate2::read::MultiGzDecoder::new(data).read_to_end(buf).map_err(|e| format!("gzip: {e}"))?;
        buf
    } else {
        data
    };
    let records = memmem::find_iter(text, RECORD_MARK).count() as u64;
    let mut found = Vec::new();
    let mut malformed = 0;
    if wanted.searcher.is_match(text) {
        let split = Records::split(text).map_err(|e| e.to_string())?;
        malformed += split.malformed;
        for raw in split.records {
            if !wanted.searcher.is_match(raw.get().as_bytes()) {
                continue;
            }
            let Ok(rec) = Record::parse(raw) else {
                malformed += 1;
                continue;
            };
            let by_key = rec.access_key_id().filter(|k| wanted.signer(k));
            if by_key.is_none() && !rec.event_name.get().is_some_and(|n| wanted.name(n)) {
                continue;
            }
            let own = |s: Option<&str>| s.map(str::to_string);
            found.push(Found {
                raw: rec.raw().to_string(),
                signer: by_key.unwrap_or_default().to_string(),
                minted: if follow && by_key.is_some() { rec.minted().map(|m| (m.key, m.principal)) } else { None },
                event_time: own(rec.time()),
                event_name: own(rec.event_name.get()),
                event_source: own(rec.event_source.get()),
                aws_region: own(rec.aws_region.get()),
                source_ip: own(rec.source_ip.get()),
                error_code: own(rec.error_code.get()),
                event_id: own(rec.event_id.get()),
            });
        }
    }
    Ok((text.len() as u64, records, malformed, found))
}

/// Scan `sources` for the records of `query.keys` (and, with `follow`, of every key they minted),
/// calling `on_match` on this thread for each, in roughly delivery order.
pub fn scan(sources: &[&dyn Source], query: &Query, on_match: &mut dyn FnMut(Match)) -> Result<Summary, ScanError> {
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

    let set = RwLock::new(KeySet { minted_at: vec![None; keys.len()], keys });
    let current: RwLock<Wanted> = RwLock::new(Wanted {
        keys: Arc::new(set.read().expect("fresh lock").keys.clone()),
        from: 0,
        names: Arc::new(query.event_names.clone()),
        searcher: Arc::new(Searcher::new(&patterns(&set.read().expect("fresh lock").keys, &query.event_names))),
    });
    let mut parent: HashMap<String, String> = HashMap::new();
    let mut searched = vec![0usize; items.len()];
    let mut corrupt = vec![false; items.len()];

    // First pass over everything, then re-reads for keys learnt too late, until nothing is new.
    let mut pass: Vec<usize> = (0..items.len()).collect();
    let mut first = true;
    while !pass.is_empty() {
        let units: Vec<Unit> = pass
            .iter()
            .map(|&index| {
                let cur = current.read().expect("lock");
                let from = if first { 0 } else { searched[index] };
                let searcher = if first { cur.searcher.clone() } else { Arc::new(Searcher::new(&cur.keys[from..])) };
                Unit { index, wanted: Wanted { keys: cur.keys.clone(), from, names: cur.names.clone(), searcher } }
            })
            .collect();
        if !first {
            summary.rescanned += units.len() as u64;
        }
        run_pass(sources, &items, units, first, &current, query, |result| {
            summary.bytes_read += result.bytes_read;
            if first {
                summary.files += 1;
                summary.bytes_scanned += result.bytes_scanned;
                summary.records += result.records;
                summary.malformed_records += result.malformed;
            }
            searched[result.index] = searched[result.index].max(result.searched);
            if let Some(problem) = result.corrupt {
                corrupt[result.index] = true;
                summary.corrupt.push((items[result.index].1.name.clone(), problem));
                return;
            }
            for f in result.found {
                if let Some((key, principal)) = &f.minted {
                    let mut ks = set.write().expect("lock");
                    if !ks.keys.contains(key) {
                        ks.keys.push(key.clone());
                        ks.minted_at.push(f.event_time.as_deref().and_then(crate::time::parse));
                        parent.insert(key.clone(), f.signer.clone());
                        summary.derived.push(DerivedKey {
                            key: key.clone(),
                            parent: f.signer.clone(),
                            event_name: f.event_name.clone().unwrap_or_default(),
                            event_time: f.event_time.clone(),
                            principal: principal.clone(),
                        });
                        let mut cur = current.write().expect("lock");
                        cur.keys = Arc::new(ks.keys.clone());
                        cur.searcher = Arc::new(Searcher::new(&patterns(&ks.keys, &query.event_names)));
                    }
                }
                // A record wanted for its event name alone has no chain.
                let mut chain = if f.signer.is_empty() { Vec::new() } else { vec![f.signer.clone()] };
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
                    source: items[result.index].1.name.clone(),
                    raw: f.raw,
                    event_time: f.event_time,
                    event_name: f.event_name,
                    event_source: f.event_source,
                    aws_region: f.aws_region,
                    source_ip: f.source_ip,
                    error_code: f.error_code,
                    event_id: f.event_id,
                });
            }
        });
        first = false;

        // A file needs another read if a key learnt after it was searched could be in it. A key's
        // records are all delivered after it was minted, so only files delivered since then (less
        // the minute that file names round down to, and some clock skew) can hold them.
        let ks = set.read().expect("lock");
        pass = (0..items.len())
            .filter(|&i| {
                let delivered = items[i].1.delivered;
                searched[i] < ks.keys.len()
                    && ks.minted_at[searched[i]..].iter().any(|m| match (m, delivered) {
                        (Some(m), Some(d)) => d + MINT_SKEW >= *m,
                        _ => true,
                    })
                    && !corrupt[i]
            })
            .collect();
        // Files that need no re-read count as searched for every key.
        let mut again = vec![false; items.len()];
        for &i in &pass {
            again[i] = true;
        }
        for (i, s) in searched.iter_mut().enumerate() {
            if !again[i] {
                *s = ks.keys.len();
            }
        }
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Fetch and scan `units` with bounded memory, handing each file's result to `collect` on this thread.
fn run_pass(
    sources: &[&dyn Source],
    items: &[(usize, Item)],
    units: Vec<Unit>,
    first: bool,
    current: &RwLock<Wanted>,
    query: &Query,
    mut collect: impl FnMut(FileResult),
) {
    let workers = query.workers.max(1);
    let fetchers = sources.iter().map(|s| s.fetch_parallelism()).max().unwrap_or(1).max(1);
    // The bound on memory: files fetched but not yet scanned.
    let (work_tx, work_rx) = sync_channel::<(Unit, Result<Vec<u8>, String>)>(workers * 2);
    let work_rx = Arc::new(Mutex::new(work_rx));
    let (result_tx, result_rx) = std::sync::mpsc::channel::<FileResult>();
    let next = AtomicUsize::new(0);
    let units: Vec<Mutex<Option<Unit>>> = units.into_iter().map(|u| Mutex::new(Some(u))).collect();

    std::thread::scope(|scope| {
        for _ in 0..fetchers {
            let work_tx = work_tx.clone();
            let (units, next) = (&units, &next);
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(slot) = units.get(i) else { break };
                    let Some(mut unit) = slot.lock().expect("lock").take() else { continue };
                    if first {
                        // Take the freshest key set: keys learnt while earlier files were scanned.
                        let cur = current.read().expect("lock");
                        unit.wanted = Wanted {
                            keys: cur.keys.clone(),
                            from: 0,
                            names: cur.names.clone(),
                            searcher: cur.searcher.clone(),
                        };
                    }
                    let (s, item) = &items[unit.index];
                    let data = sources[*s].fetch(item).map_err(|e| e.problem);
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
            let follow = query.follow;
            scope.spawn(move || {
                let mut buf = Vec::new();
                loop {
                    let next = work_rx.lock().expect("lock").recv();
                    let Ok((unit, data)) = next else { break };
                    let searched = unit.wanted.keys.len();
                    let mut result = FileResult {
                        index: unit.index,
                        searched,
                        bytes_read: 0,
                        bytes_scanned: 0,
                        records: 0,
                        malformed: 0,
                        corrupt: None,
                        found: Vec::new(),
                    };
                    match data {
                        Err(problem) => result.corrupt = Some(problem),
                        Ok(data) => {
                            result.bytes_read = data.len() as u64;
                            match process(&data, &unit.wanted, follow, &mut buf) {
                                Ok((scanned, records, malformed, found)) => {
                                    (result.bytes_scanned, result.records, result.malformed, result.found) =
                                        (scanned, records, malformed, found);
                                }
                                Err(problem) => result.corrupt = Some(problem),
                            }
                        }
                    }
                    // A decompression buffer grown by one huge file is not kept for the rest.
                    if buf.capacity() > 256 << 20 {
                        buf = Vec::new();
                    }
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
}
