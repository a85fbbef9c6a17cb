//! The scan engine against public CloudTrail data (tests/data, with licences), checked against a
//! slow, obvious reference written on `serde_json::Value`: for every access key in every dataset,
//! the engine must find exactly the records the reference finds, with and without following.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

use rekey_trail::{LocalSource, Match, Query, Source, scan};
use serde_json::Value;

fn data(dir: &str) -> String {
    format!("{}/tests/data/{dir}", env!("CARGO_MANIFEST_DIR"))
}

/// Every record of every log file under `dir`, the slow way.
fn reference_records(dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let name = p.to_string_lossy().to_string();
            if !(name.ends_with(".json") || name.ends_with(".jsonl")) {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            let values: Vec<Value> = match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(mut o)) if o.contains_key("Records") => {
                    o.remove("Records").unwrap().as_array().unwrap().clone()
                }
                Ok(Value::Array(a)) => a,
                Ok(v) => vec![v],
                Err(_) => text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect(),
            };
            out.extend(
                values
                    .into_iter()
                    .map(|v| if v.get("eventName").is_none() && v.get("log").is_some() { v["log"].clone() } else { v }),
            );
        }
    }
    out
}

fn signer(v: &Value) -> Option<&str> {
    v.get("userIdentity")?.get("accessKeyId")?.as_str().filter(|s| !s.is_empty())
}

fn minted(v: &Value) -> Option<String> {
    if v.get("errorCode").and_then(Value::as_str).is_some() {
        return None;
    }
    let name = v.get("eventName")?.as_str()?;
    let r = v.get("responseElements")?;
    let key = if name.starts_with("AssumeRole") || name == "GetSessionToken" || name == "GetFederationToken" {
        r.get("credentials")?.get("accessKeyId")?
    } else if name == "CreateAccessKey" {
        r.get("accessKey")?.get("accessKeyId")?
    } else {
        return None;
    };
    key.as_str().map(str::to_string)
}

/// The records signed by `key` (and, following, by every key minted from them), by event id.
fn reference(records: &[Value], key: &str, follow: bool) -> BTreeSet<String> {
    let mut keys = BTreeSet::from([key.to_string()]);
    loop {
        let before = keys.len();
        if follow {
            for r in records {
                if signer(r).is_some_and(|s| keys.contains(s))
                    && let Some(m) = minted(r)
                {
                    keys.insert(m);
                }
            }
        }
        if keys.len() == before {
            break;
        }
    }
    records.iter().filter(|r| signer(r).is_some_and(|s| keys.contains(s))).map(ident).collect()
}

fn ident(r: &Value) -> String {
    let s = |f: &str| r.get(f).and_then(Value::as_str).unwrap_or("").to_string();
    format!("{}|{}|{}|{}", s("eventID"), s("eventTime"), s("@timestamp"), s("eventName"))
}

fn engine(dir: &str, key: &str, follow: bool) -> (BTreeSet<String>, Vec<Match>) {
    let source = LocalSource::new(dir);
    let mut query = Query::new(vec![key.to_string()]);
    query.follow = follow;
    let mut found = Vec::new();
    let summary = scan(&[&source as &dyn Source], &query, &mut |m| found.push(m)).unwrap();
    assert!(summary.corrupt.is_empty(), "{:?}", summary.corrupt);
    assert_eq!(summary.matches as usize, found.len());
    let ids = found.iter().map(|m| ident(&serde_json::from_str(&m.raw).unwrap())).collect();
    (ids, found)
}

#[test]
fn every_key_of_every_dataset_matches_the_reference() {
    for dataset in ["invictus-aws_dataset", "stratus-red-team", "otrf", "panther-analysis"] {
        let dir = data(dataset);
        let records = reference_records(Path::new(&dir));
        assert!(!records.is_empty(), "{dataset}");
        let keys: BTreeSet<&str> = records.iter().filter_map(signer).collect();
        assert!(!keys.is_empty(), "{dataset} has signed records");
        for key in &keys {
            for follow in [false, true] {
                let expected = reference(&records, key, follow);
                let (got, _) = engine(&dir, key, follow);
                assert_eq!(got, expected, "{dataset}, key {key}, follow {follow}");
            }
        }
    }
}

#[test]
fn follows_the_invictus_attackers_sessions_with_their_key_chain() {
    let dir = data("invictus-aws_dataset");
    let records = reference_records(Path::new(&dir));
    // The key that minted the most session keys.
    let mut minters: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &records {
        if let (Some(s), Some(_)) = (signer(r), minted(r)) {
            *minters.entry(s).or_default() += 1;
        }
    }
    let (&root, &n) = minters.iter().max_by_key(|(_, n)| **n).unwrap();
    assert!(n >= 2);
    let (_, found) = engine(&dir, root, true);
    let derived: BTreeSet<&str> =
        found.iter().filter(|m| m.chain.len() > 1).map(|m| m.chain.last().unwrap().as_str()).collect();
    assert!(!derived.is_empty(), "records signed by minted keys are found");
    for m in &found {
        assert_eq!(m.chain[0], root, "every chain starts at the queried key");
        let signer_in_record = signer(&serde_json::from_str::<Value>(&m.raw).unwrap()).unwrap().to_string();
        assert_eq!(m.chain.last().unwrap(), &signer_in_record);
    }
}

#[test]
fn corrupt_files_are_reported_by_name_and_the_scan_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"{"Records":[{"eventID":"1","eventName":"ListUsers","userIdentity":{"accessKeyId":"AKIAGOOD000000000001"}}]}"#;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(good.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
    std::fs::write(dir.path().join("a/b/good.json.gz"), &gz).unwrap();
    std::fs::write(dir.path().join("a/truncated.json.gz"), &gz[..gz.len() / 2]).unwrap();
    std::fs::write(dir.path().join("notjson.json"), b"AKIAGOOD000000000001 <html>").unwrap();
    std::fs::write(dir.path().join("ignored.txt"), b"AKIAGOOD000000000001").unwrap();
    let source = LocalSource::new(dir.path());
    let mut n = 0;
    let summary =
        scan(&[&source as &dyn Source], &Query::new(vec!["AKIAGOOD000000000001".into()]), &mut |_| n += 1).unwrap();
    assert_eq!(n, 1);
    assert_eq!(summary.files, 3);
    let bad: BTreeSet<&str> = summary.corrupt.iter().map(|(name, _)| name.rsplit('/').next().unwrap()).collect();
    assert_eq!(bad, BTreeSet::from(["truncated.json.gz", "notjson.json"]));
}
