//! `follow` on a trail whose key chain is learnt late at every hop: each minting record is
//! delivered after the minted key's first uses, in files of other Regions, so the scan cannot learn
//! the chain in delivery order. Every read is counted at the source: the matches must be exactly
//! the planted ones, and a file may be read again only if it holds a key of the chain.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rekey_trail::{Item, LocalSource, Query, Source, SourceError, scan};
use serde_json::{Value, json};

const ACCOUNT: &str = "111122223333";
const REGIONS: [&str; 4] = ["us-east-1", "eu-west-1", "ap-southeast-2", "us-west-2"];
/// 2024-05-01T00:00:00Z; file i is delivered 5 minutes after file i-1.
const T0: u64 = 1_714_521_600;
const FILES: usize = 120;

/// The chain: KEYS[0] is queried; KEYS[i] was minted by KEYS[i-1].
const KEYS: [&str; 5] = [
    "AKIALEAKED0000000001",
    "ASIAHOPONE0000000001",
    "ASIAHOPTWO0000000001",
    "AKIABACKDOOR00000001",
    "ASIAFEDERATED0000001",
];

fn delivered(file: usize) -> u64 {
    T0 + file as u64 * 300
}

fn time(t: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t)).to_string()
}

fn region(file: usize) -> &'static str {
    REGIONS[file % REGIONS.len()]
}

fn record(id: &str, t: u64, key: &str, name: &str, file: usize, response: Value, request: Value) -> Value {
    json!({
        "eventVersion": "1.09",
        "userIdentity": {"type": if key.starts_with("ASIA") { "AssumedRole" } else { "IAMUser" }, "accessKeyId": key, "accountId": ACCOUNT},
        "eventTime": time(t),
        "eventSource": "sts.amazonaws.com",
        "eventName": name,
        "awsRegion": region(file),
        "sourceIPAddress": "198.51.100.7",
        "requestParameters": request,
        "responseElements": response,
        "eventID": id,
        "recipientAccountId": ACCOUNT,
    })
}

/// What a minting call by `parent` returns for `child`.
fn minted(name: &str, child: &str) -> Value {
    match name {
        "CreateAccessKey" => json!({"accessKey": {"accessKeyId": child, "userName": "backup-svc", "status": "Active"}}),
        "GetFederationToken" => json!({
            "credentials": {"accessKeyId": child, "sessionToken": "t", "expiration": "x"},
            "federatedUser": {"arn": format!("arn:aws:sts::{ACCOUNT}:federated-user/f")}
        }),
        _ => json!({
            "credentials": {"accessKeyId": child, "sessionToken": "t", "expiration": "x"},
            "assumedRoleUser": {"arn": format!("arn:aws:sts::{ACCOUNT}:assumed-role/r/s")}
        }),
    }
}

struct Planted {
    /// (file, key index, event id, minted key index)
    records: Vec<(usize, usize, String, Option<usize>)>,
}

/// Where every record of the chain goes. Files are read in delivery order; each hop's minting
/// record is in a file delivered after some use of the key it minted (and in another Region).
fn plan() -> Planted {
    let mut records = Vec::new();
    let mut add = |file: usize, key: usize, mint: Option<usize>| {
        let id = format!("planted-{file}-{key}-{}", records.len());
        records.push((file, key, id, mint));
    };
    for f in [2, 50, 110] {
        add(f, 0, None);
    }
    // Key 1 (AssumeRole by key 0), minting record in file 30; used from file 27 on.
    add(30, 0, Some(1));
    for f in [27, 28, 31, 45, 60] {
        add(f, 1, None);
    }
    // Key 2 (role chaining by key 1) is minted in file 29: read before key 1 is known.
    add(29, 1, Some(2));
    for f in [28, 33, 70, 90] {
        add(f, 2, None);
    }
    // Key 3 (CreateAccessKey by key 2 for another user) in file 34, used to the end.
    add(34, 2, Some(3));
    for f in [35, 47, 66, 95, 119] {
        add(f, 3, None);
    }
    // Key 4 (GetFederationToken by key 3) in file 80, used once before that file's delivery.
    add(80, 3, Some(4));
    for f in [78, 81, 100] {
        add(f, 4, None);
    }
    Planted { records }
}

fn mint_name(child: usize) -> &'static str {
    match child {
        3 => "CreateAccessKey",
        4 => "GetFederationToken",
        _ => "AssumeRole",
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// The trail under `root`; returns, per file path, the chain keys (by index) whose bytes it holds.
fn write_trail(root: &Path) -> BTreeMap<String, BTreeSet<usize>> {
    let planted = plan();
    let mut holds = BTreeMap::new();
    for file in 0..FILES {
        let d = delivered(file);
        let mut records = Vec::new();
        // Background: other keys, some minting keys of their own, and an AWS service's session.
        for n in 0..12 {
            let key = format!("AKIANOISE{:011}", (file * 7 + n) % 40);
            let t = d - 240 + n as u64 * 10;
            if n % 5 == 0 {
                let child = format!("ASIANOISE{:011}", file * 100 + n);
                records.push(record(
                    &format!("noise-{file}-{n}"),
                    t,
                    &key,
                    "AssumeRole",
                    file,
                    minted("AssumeRole", &child),
                    Value::Null,
                ));
            } else {
                records.push(record(
                    &format!("noise-{file}-{n}"),
                    t,
                    &key,
                    "GetCallerIdentity",
                    file,
                    Value::Null,
                    Value::Null,
                ));
            }
        }
        for (f, key, id, mint) in &planted.records {
            if *f != file {
                continue;
            }
            let t = d - 200;
            let r = match mint {
                Some(child) => record(
                    id,
                    t,
                    KEYS[*key],
                    mint_name(*child),
                    file,
                    minted(mint_name(*child), KEYS[*child]),
                    Value::Null,
                ),
                None => record(id, t, KEYS[*key], "ListBuckets", file, Value::Null, Value::Null),
            };
            records.insert(records.len() / 2, r);
        }
        // An administrator deactivates key 1: its id is in the file, unsigned.
        if file == 100 {
            let admin = record(
                "admin-1",
                d - 100,
                "AKIAADMIN00000000001",
                "UpdateAccessKey",
                file,
                Value::Null,
                json!({"accessKeyId": KEYS[1], "status": "Inactive"}),
            );
            records.push(admin);
        }
        let stamp = time(d).replace(['-', ':'], "");
        let name = format!("{ACCOUNT}_CloudTrail_{}_{}Z_f{file:03}.json.gz", region(file), &stamp[..13]);
        let dir = root.join(format!("AWSLogs/{ACCOUNT}/CloudTrail/{}/2024/05/01", region(file)));
        std::fs::create_dir_all(&dir).unwrap();
        let text = json!({"Records": records}).to_string();
        let held: BTreeSet<usize> = (0..KEYS.len()).filter(|&k| text.contains(KEYS[k])).collect();
        let path = dir.join(name);
        std::fs::write(&path, gzip(text.as_bytes())).unwrap();
        holds.insert(path.to_string_lossy().into_owned(), held);
    }
    holds
}

/// A folder that counts how often each file is fetched.
struct Counting {
    inner: LocalSource,
    reads: Mutex<HashMap<String, usize>>,
}

impl Source for Counting {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn list(&self, since: Option<SystemTime>, until: Option<SystemTime>) -> Result<Vec<Item>, SourceError> {
        self.inner.list(since, until)
    }
    fn fetch(&self, item: &Item) -> Result<Vec<u8>, SourceError> {
        *self.reads.lock().unwrap().entry(item.name.clone()).or_default() += 1;
        self.inner.fetch(item)
    }
}

/// (event id, chain) of every planted record a scan must report.
fn expected(follow: bool) -> BTreeSet<(String, String)> {
    plan()
        .records
        .iter()
        .filter(|(_, key, _, _)| follow || *key == 0)
        .map(|(_, key, id, _)| (id.clone(), KEYS[..=*key].join(">")))
        .collect()
}

#[test]
fn a_chain_learnt_late_at_every_hop_is_followed_reading_again_only_files_that_hold_it() {
    let dir = tempfile::tempdir().unwrap();
    let holds = write_trail(dir.path());
    let derived_files: BTreeSet<&String> =
        holds.iter().filter(|(_, keys)| keys.iter().any(|&k| k > 0)).map(|(f, _)| f).collect();
    let chain_files = holds.values().filter(|keys| !keys.is_empty()).count();

    for (follow, workers) in [(false, 2), (true, 1), (true, 2), (true, 4)] {
        let source = Counting { inner: LocalSource::new(dir.path()), reads: Mutex::new(HashMap::new()) };
        let mut query = Query::new(vec![KEYS[0].to_string()]);
        query.follow = follow;
        query.workers = workers;
        let mut found = BTreeSet::new();
        let mut count = 0;
        let summary = scan(&[&source as &dyn Source], &query, &mut |m| {
            count += 1;
            found.insert((m.event_id.unwrap_or_default(), m.chain.join(">")));
        })
        .unwrap();
        let what = format!("follow {follow}, {workers} workers");
        assert_eq!(found, expected(follow), "{what}");
        assert_eq!(count, found.len(), "{what}: no record reported twice");
        assert!(summary.corrupt.is_empty(), "{what}: {:?}", summary.corrupt);
        assert_eq!(summary.files as usize, FILES, "{what}");

        let reads = source.reads.into_inner().unwrap();
        assert_eq!(reads.len(), FILES, "{what}: every file read");
        let again: Vec<(&String, &usize)> = reads.iter().filter(|(_, n)| **n > 1).collect();
        assert_eq!(summary.rescanned as usize, reads.values().map(|n| n - 1).sum::<usize>(), "{what}");
        if !follow {
            assert_eq!(summary.rescanned, 0, "{what}: one key, one read each");
            assert!(summary.derived.is_empty());
            continue;
        }
        let derived: Vec<(&str, &str, &str)> =
            summary.derived.iter().map(|d| (d.key.as_str(), d.parent.as_str(), d.event_name.as_str())).collect();
        let want: Vec<(&str, &str, &str)> = (1..KEYS.len()).map(|k| (KEYS[k], KEYS[k - 1], mint_name(k))).collect();
        assert_eq!(derived, want, "{what}: minted keys, in the order learnt");
        // The chain is learnt late at every hop: some files must be read again…
        assert!(summary.rescanned >= 4, "{what}: {} re-reads", summary.rescanned);
        // …but only files that hold a key of the chain, and each once per key it holds at most.
        for (file, n) in &again {
            assert!(derived_files.contains(file), "{what}: {file} read {n} times without holding a minted key");
            assert!(**n <= 1 + holds[*file].len(), "{what}: {file} read {n} times");
        }
        // A file is searched for the keys minted in it while it is in memory: the file minting key
        // 1 is never read again, the one minting key 2 only once (for key 1, learnt after it,
        // unless a worker was slow enough to start it after).
        let reads_of =
            |file: usize| reads.iter().find(|(f, _)| f.ends_with(&format!("_f{file:03}.json.gz"))).map(|r| *r.1);
        assert_eq!(reads_of(30), Some(1), "{what}");
        assert!(matches!(reads_of(29), Some(1 | 2)), "{what}");
        assert!(
            summary.rescanned as usize <= chain_files,
            "{what}: {} re-reads, {chain_files} files hold chain keys",
            summary.rescanned
        );
    }
}

#[test]
fn a_window_follows_only_keys_minted_inside_it() {
    let dir = tempfile::tempdir().unwrap();
    write_trail(dir.path());
    let source = LocalSource::new(dir.path());
    let mut query = Query::new(vec![KEYS[0].to_string()]);
    query.follow = true;
    // Files 40 to 119: key 3 is minted before (file 34), so only key 0 and key 4's minting (by
    // key 3, not followed) are outside the chain; key 0's own records in the window remain.
    query.since = Some(UNIX_EPOCH + Duration::from_secs(delivered(40)));
    let mut found = BTreeSet::new();
    let summary = scan(&[&source as &dyn Source], &query, &mut |m| {
        found.insert((m.event_id.unwrap_or_default(), m.chain.join(">")));
    })
    .unwrap();
    let want: BTreeSet<(String, String)> = plan()
        .records
        .iter()
        .filter(|(file, key, _, _)| *file >= 40 && *key == 0)
        .map(|(_, _, id, _)| (id.clone(), KEYS[0].to_string()))
        .collect();
    assert_eq!(found, want);
    assert!(summary.derived.is_empty());
    assert_eq!(summary.rescanned, 0);
}
