//! `rekey trace` on a planted trail: a leaked key assumes a role, the session mints a backdoor key,
//! and the backdoor key is used days later in another region. The same trail is read from a local
//! folder and from S3 in the real CloudTrail layout, and must give the same matches.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use support::*;
use testbed::moto::{Creds, Moto, seed};

const ACCT: &str = "123456789012";
const LEAKED: &str = "AKIAQLEAKEDKEY000001";
const SESSION: &str = "ASIAQSESSIONKEY00001";
const BACKDOOR: &str = "AKIAQBACKDOORKEY0001";
const OTHER: &str = "AKIAQOTHERUSERKEY001";
const BUCKET: &str = "trail-bucket";

fn admin() -> Creds {
    // moto's auth is off in these tests: any key signs.
    Creds::new("AKIAIOSFODNN7EXAMPLE", "test-secret")
}

fn rec(id: &str, time: &str, key: &str, name: &str, source: &str, region: &str, extra: Value) -> Value {
    let kind = if key.starts_with("ASIA") { "AssumedRole" } else { "IAMUser" };
    let mut r = json!({
        "eventVersion": "1.08",
        "userIdentity": {"type": kind, "accessKeyId": key, "accountId": ACCT, "arn": format!("arn:aws:iam::{ACCT}:user/x")},
        "eventTime": time,
        "eventSource": source,
        "eventName": name,
        "awsRegion": region,
        "sourceIPAddress": "203.0.113.7",
        "userAgent": "aws-cli/2",
        "requestParameters": null,
        "responseElements": null,
        "eventID": id,
        "recipientAccountId": ACCT,
    });
    if let (Some(r), Some(extra)) = (r.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            r.insert(k.clone(), v.clone());
        }
    }
    r
}

/// One trail file: (region, delivery stamp, records).
struct TrailFile {
    region: &'static str,
    stamp: &'static str,
    records: Vec<Value>,
}

impl TrailFile {
    /// `AWSLogs/<acct>/CloudTrail/<region>/YYYY/MM/DD/<acct>_CloudTrail_<region>_<stamp>_<16 chars>.json.gz`
    fn key(&self) -> String {
        let s = self.stamp;
        let suffix = format!("{}{}abcd", &s[..8], &s[9..13]);
        format!(
            "AWSLogs/{ACCT}/CloudTrail/{r}/{}/{}/{}/{ACCT}_CloudTrail_{r}_{s}_{}.json.gz",
            &s[..4],
            &s[4..6],
            &s[6..8],
            suffix,
            r = self.region
        )
    }
}

fn trail() -> Vec<TrailFile> {
    let gci = |id, time, key, region| rec(id, time, key, "GetCallerIdentity", "sts.amazonaws.com", region, json!({}));
    vec![
        TrailFile {
            region: "us-east-1",
            stamp: "20230710T0905Z",
            records: vec![
                gci("ev-1", "2023-07-10T09:01:00Z", LEAKED, "us-east-1"),
                rec(
                    "noise-1",
                    "2023-07-10T09:02:00Z",
                    OTHER,
                    "ListBuckets",
                    "s3.amazonaws.com",
                    "us-east-1",
                    json!({}),
                ),
            ],
        },
        // Used before the file holding its minting was delivered: the engine must re-read this one.
        TrailFile {
            region: "eu-west-1",
            stamp: "20230710T0915Z",
            records: vec![rec(
                "ev-3",
                "2023-07-10T09:12:00Z",
                SESSION,
                "DescribeInstances",
                "ec2.amazonaws.com",
                "eu-west-1",
                json!({}),
            )],
        },
        TrailFile {
            region: "us-east-1",
            stamp: "20230710T0925Z",
            records: vec![
                rec(
                    "ev-2",
                    "2023-07-10T09:10:00Z",
                    LEAKED,
                    "AssumeRole",
                    "sts.amazonaws.com",
                    "us-east-1",
                    json!({
                        "requestParameters": {"roleArn": format!("arn:aws:iam::{ACCT}:role/admin"), "roleSessionName": "s"},
                        "responseElements": {
                            "credentials": {"accessKeyId": SESSION, "sessionToken": "token", "expiration": "Jul 10, 2023, 10:10:00 AM"},
                            "assumedRoleUser": {"arn": format!("arn:aws:sts::{ACCT}:assumed-role/admin/s")}
                        }
                    }),
                ),
                // Names the leaked key without being signed by it.
                rec(
                    "noise-2",
                    "2023-07-10T09:11:00Z",
                    OTHER,
                    "UpdateAccessKey",
                    "iam.amazonaws.com",
                    "us-east-1",
                    json!({"requestParameters": {"accessKeyId": LEAKED, "status": "Inactive"}}),
                ),
            ],
        },
        TrailFile {
            region: "us-east-1",
            stamp: "20230711T1005Z",
            records: vec![
                rec(
                    "ev-4",
                    "2023-07-11T10:00:00Z",
                    SESSION,
                    "CreateAccessKey",
                    "iam.amazonaws.com",
                    "us-east-1",
                    json!({
                        "requestParameters": {"userName": "backdoor"},
                        "responseElements": {"accessKey": {"accessKeyId": BACKDOOR, "userName": "backdoor", "status": "Active"}}
                    }),
                ),
                rec("noise-3", "2023-07-11T10:01:00Z", OTHER, "ListUsers", "iam.amazonaws.com", "us-east-1", json!({})),
            ],
        },
        TrailFile {
            region: "eu-west-1",
            stamp: "20230711T1010Z",
            records: vec![rec(
                "noise-4",
                "2023-07-11T10:08:00Z",
                OTHER,
                "DescribeRegions",
                "ec2.amazonaws.com",
                "eu-west-1",
                json!({}),
            )],
        },
        TrailFile {
            region: "eu-west-1",
            stamp: "20230712T1105Z",
            records: vec![rec(
                "ev-5",
                "2023-07-12T11:00:00Z",
                BACKDOOR,
                "ListUsers",
                "iam.amazonaws.com",
                "eu-west-1",
                json!({"errorCode": "AccessDenied", "errorMessage": "no"}),
            )],
        },
        TrailFile {
            region: "us-east-1",
            stamp: "20230712T1110Z",
            records: vec![
                gci("ev-6", "2023-07-12T11:05:00Z", LEAKED, "us-east-1"),
                rec(
                    "noise-5",
                    "2023-07-12T11:06:00Z",
                    OTHER,
                    "GetCallerIdentity",
                    "sts.amazonaws.com",
                    "us-east-1",
                    json!({}),
                ),
            ],
        },
    ]
}

/// The trail's corrupt file: a gzip stream cut short.
const CORRUPT_KEY: &str = "AWSLogs/123456789012/CloudTrail/us-east-1/2023/07/11/123456789012_CloudTrail_us-east-1_20230711T1200Z_cutshortcutshort.json.gz";
/// A digest names the trail's files; it must never be read as a log.
const DIGEST_KEY: &str = "AWSLogs/123456789012/CloudTrail-Digest/us-east-1/2023/07/10/123456789012_CloudTrail-Digest_us-east-1_trail_us-east-1_20230710T0930Z.json.gz";

/// Every object of the trail, by key, as it is stored.
fn trail_objects() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = trail()
        .into_iter()
        .map(|f| (f.key(), gzip(format!("{}\n", json!({"Records": f.records})).as_bytes())))
        .collect();
    let whole = gzip(format!("{}\n", json!({"Records": [rec("ev-x", "2023-07-11T11:59:00Z", LEAKED, "GetCallerIdentity", "sts.amazonaws.com", "us-east-1", json!({}))]})).as_bytes());
    out.push((CORRUPT_KEY.to_string(), whole[..whole.len() / 2].to_vec()));
    let digest = json!({"logFiles": [{"s3Object": "x", "hashValue": LEAKED}], "Records": [rec("ev-digest", "2023-07-10T09:00:00Z", LEAKED, "GetCallerIdentity", "sts.amazonaws.com", "us-east-1", json!({}))]});
    out.push((DIGEST_KEY.to_string(), gzip(digest.to_string().as_bytes())));
    out
}

/// The trail under `dir/trail`, plus an export elsewhere in `dir`: pretty-printed, uncompressed,
/// deeper, with no delivery time in its name.
fn write_folder(dir: &Path) -> PathBuf {
    let root = dir.join("trail");
    for (key, bytes) in trail_objects() {
        let path = root.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let export = dir.join("exports/2023/incident");
    std::fs::create_dir_all(&export).unwrap();
    let records = json!({"Records": [
        rec("ev-7", "2023-07-13T08:00:00Z", LEAKED, "ListSecrets", "secretsmanager.amazonaws.com", "eu-west-1", json!({})),
        rec("noise-6", "2023-07-13T08:01:00Z", OTHER, "ListSecrets", "secretsmanager.amazonaws.com", "eu-west-1", json!({})),
    ]});
    std::fs::write(export.join("export.json"), serde_json::to_string_pretty(&records).unwrap()).unwrap();
    std::fs::write(export.join("notes.txt"), LEAKED).unwrap();
    root
}

/// gzip with stored (uncompressed) deflate blocks: what a reader must accept, without a compressor.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut chunks: Vec<&[u8]> = data.chunks(65_535).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.iter().enumerate() {
        out.push(u8::from(i == last));
        let len = chunk.len() as u16;
        out.extend(len.to_le_bytes());
        out.extend((!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    out.extend((!crc).to_le_bytes());
    out.extend((data.len() as u32).to_le_bytes());
    out
}

fn lines(out: &Output) -> Vec<Value> {
    out.stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object a line ({e}): {l}\n{}", out.stderr))
        })
        .collect()
}

/// (event id, key chain) of each match, to compare runs whatever the order.
fn found(matches: &[Value]) -> BTreeSet<(String, String)> {
    matches
        .iter()
        .map(|m| {
            let chain: Vec<&str> = m["keyChain"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
            (m["record"]["eventID"].as_str().unwrap().to_string(), chain.join(">"))
        })
        .collect()
}

fn expect(ids: &[(&str, &[&str])]) -> BTreeSet<(String, String)> {
    ids.iter().map(|(id, chain)| (id.to_string(), chain.join(">"))).collect()
}

fn one_line(out: &Output) -> String {
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr:\n{}", out.stderr);
    assert!(lines[0].starts_with("rekey: ") && !out.stderr.contains("panicked"), "{}", out.stderr);
    lines[0].to_string()
}

/// The value after `label` on the summary's line that starts with it (`files          3 read`).
fn summary_number(out: &Output, label: &str) -> u64 {
    let line = out
        .stderr
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("{label}: {}", out.stderr));
    line.trim_start()[label.len()..].split_whitespace().next().unwrap().parse().unwrap()
}

const FOLLOWED: &[(&str, &[&str])] = &[
    ("ev-1", &[LEAKED]),
    ("ev-2", &[LEAKED]),
    ("ev-3", &[LEAKED, SESSION]),
    ("ev-4", &[LEAKED, SESSION]),
    ("ev-5", &[LEAKED, SESSION, BACKDOOR]),
    ("ev-6", &[LEAKED]),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_folder_follows_minted_keys_and_skips_a_corrupt_file() {
    let moto = Moto::start();
    let dir = state_dir();
    write_folder(dir.path());
    let logs = dir.path().to_str().unwrap();
    let started = std::time::Instant::now();

    // Only the key's own records, from a plain folder, nested to any depth.
    let out = rekey(&moto, &admin(), dir.path(), &["trace", "--access-key", LEAKED, "--logs", logs]).await;
    out.assert_code(0);
    let plain = lines(&out);
    assert_eq!(
        found(&plain),
        expect(&[("ev-1", &[LEAKED]), ("ev-2", &[LEAKED]), ("ev-6", &[LEAKED]), ("ev-7", &[LEAKED])])
    );
    let export = plain.iter().find(|m| m["record"]["eventID"] == "ev-7").unwrap();
    assert!(export["source"].as_str().unwrap().ends_with("exports/2023/incident/export.json"), "{export}");
    assert!(out.stderr.contains("cutshortcutshort.json.gz"), "the corrupt file is named:\n{}", out.stderr);
    assert_eq!(summary_number(&out, "files"), 9, "7 trail files, the corrupt one and the export; no digest, no notes");
    assert!(out.stderr.contains("1 skipped (corrupt)"), "{}", out.stderr);

    // With --follow: the session, and the key the session minted, each with its chain.
    let out = rekey(&moto, &admin(), dir.path(), &["trace", "--access-key", LEAKED, "--logs", logs, "--follow"]).await;
    out.assert_code(0);
    let followed = lines(&out);
    let mut want = FOLLOWED.to_vec();
    want.push(("ev-7", &[LEAKED]));
    assert_eq!(found(&followed), expect(&want));
    // The record is written as it was in the file (the trail's compact JSON).
    let ev5 = followed.iter().find(|m| m["record"]["eventID"] == "ev-5").unwrap();
    let planted = trail().into_iter().flat_map(|f| f.records).find(|r| r["eventID"] == "ev-5").unwrap();
    assert!(out.stdout.contains(&format!("\"record\":{planted}}}")), "verbatim record:\n{}", out.stdout);
    assert!(ev5["source"].as_str().unwrap().ends_with("_20230712T1105Z_202307121105abcd.json.gz"), "{ev5}");
    assert!(out.stderr.contains(&format!("{SESSION} from {LEAKED} by AssumeRole")), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("{BACKDOOR} from {SESSION} by CreateAccessKey")), "{}", out.stderr);
    assert_eq!(summary_number(&out, "derived keys"), 2);

    // --output json: one document, streamed.
    let out = rekey(
        &moto,
        &admin(),
        dir.path(),
        &["trace", "--access-key", LEAKED, "--logs", logs, "--follow", "--output", "json"],
    )
    .await;
    out.assert_code(0);
    let doc = out.json();
    assert_eq!(found(doc["matches"].as_array().unwrap()), expect(&want));
    let derived = doc["derived_keys"].as_array().unwrap();
    assert_eq!(derived.len(), 2, "{doc}");
    assert!(derived.iter().any(|d| d["key"] == BACKDOOR && d["parent"] == SESSION && d["principal"] == "backdoor"));
    assert_eq!(doc["summary"]["files"], 9);
    assert_eq!(doc["summary"]["matches"], 7);
    assert_eq!(
        doc["summary"]["files_skipped"][0]["file"].as_str().map(|f| f.ends_with("cutshortcutshort.json.gz")),
        Some(true)
    );

    // No match at all is still one JSON document.
    let out = rekey(
        &moto,
        &admin(),
        dir.path(),
        &["trace", "--access-key", "AKIAQNEVERUSEDKEY001", "--logs", logs, "--output", "json"],
    )
    .await;
    out.assert_code(0);
    assert_eq!(out.json()["matches"], json!([]));

    // --output table: a header and aligned columns.
    let out = rekey(
        &moto,
        &admin(),
        dir.path(),
        &["trace", "--access-key", LEAKED, "--logs", logs, "--follow", "--output", "table"],
    )
    .await;
    out.assert_code(0);
    let rows: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(rows.len(), 8, "a header and 7 rows:\n{}", out.stdout);
    assert!(rows[0].starts_with("EVENT TIME") && rows[0].contains("SIGNING KEY") && rows[0].contains("ERROR CODE"));
    let row = rows.iter().find(|r| r.contains("ListUsers")).unwrap();
    assert!(
        row.starts_with("2023-07-12T11:00:00Z") && row.contains(BACKDOOR) && row.ends_with("AccessDenied"),
        "{row}"
    );
    let column = |r: &str| r.find("sts.amazonaws.com").or_else(|| r.find("iam.amazonaws.com"));
    let at = rows.iter().skip(1).filter_map(|r| column(r)).collect::<BTreeSet<_>>();
    assert_eq!(at.len(), 1, "eventSource starts in one column:\n{}", out.stdout);

    // A window: only files delivered in it are read, and only keys minted in it are followed.
    let out = rekey(
        &moto,
        &admin(),
        dir.path(),
        &[
            "trace",
            "--access-key",
            LEAKED,
            "--logs",
            dir.path().join("trail").to_str().unwrap(),
            "--follow",
            "--since",
            "2023-07-10T00:00:00Z",
            "--until",
            "2023-07-10T23:59:59Z",
        ],
    )
    .await;
    out.assert_code(0);
    assert_eq!(found(&lines(&out)), expect(&FOLLOWED[..3]));
    assert_eq!(summary_number(&out, "files"), 3, "{}", out.stderr);

    // Bad usage: one line, exit 2.
    let out =
        rekey(&moto, &admin(), dir.path(), &["trace", "--access-key", LEAKED, "--logs", logs, "--since", "last week"])
            .await;
    out.assert_code(2);
    let line = one_line(&out);
    assert!(line.contains("--since") && line.contains("30d"), "{line}");
    let missing = dir.path().join("no-such-folder");
    let out =
        rekey(&moto, &admin(), dir.path(), &["trace", "--access-key", LEAKED, "--logs", missing.to_str().unwrap()])
            .await;
    out.assert_code(2);
    let line = one_line(&out);
    assert!(line.contains("no-such-folder") && line.contains("No such file"), "{line}");
    assert!(out.stdout.is_empty());
    eprintln!("local trace runs: {:?}", started.elapsed());
}

/// 5 GB of zeros as one gzip member of about 5 MB: one compressed MiB, repeated. It is refused
/// before its checksum (left at zero) would be read.
fn gzip_bomb() -> Vec<u8> {
    use std::io::Write;
    let mut deflate = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    deflate.write_all(&vec![0u8; 1 << 20]).unwrap();
    deflate.flush().unwrap();
    let mib = deflate.get_ref().clone();
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    for _ in 0..5 << 10 {
        out.extend_from_slice(&mib);
    }
    out.extend_from_slice(&[0x03, 0x00, 0, 0, 0, 0]);
    out.extend_from_slice(&((5u64 << 30) as u32).to_le_bytes());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_is_named_and_skipped_and_re_reads_are_counted() {
    let moto = Moto::start();
    let dir = state_dir();
    let root = write_folder(dir.path());
    let bomb = root.join(
        "AWSLogs/123456789012/CloudTrail/us-east-1/2023/07/11/123456789012_CloudTrail_us-east-1_20230711T1300Z_bombbombbombbomb.json.gz",
    );
    std::fs::write(&bomb, gzip_bomb()).unwrap();
    let logs = root.to_str().unwrap();

    let out = rekey(&moto, &admin(), dir.path(), &["trace", "--access-key", LEAKED, "--logs", logs, "--follow"]).await;
    out.assert_code(0);
    assert_eq!(found(&lines(&out)), expect(FOLLOWED), "the scan goes on past the bomb");
    assert!(
        out.stderr.contains(&format!("skipped {}: larger than the per-file limit of 64 MiB", bomb.display())),
        "the bomb is named:\n{}",
        out.stderr
    );
    assert!(out.stderr.contains("1 skipped (corrupt), 1 skipped (too large)"), "{}", out.stderr);
    // ev-3's file was read before the key that signed it was learnt: read again, as are at most
    // the other files that hold a minted key (the two minting files and ev-5's).
    let files = out.stderr.lines().find(|l| l.trim_start().starts_with("files")).unwrap();
    let rereads: u64 = files.split(", ").find_map(|p| p.strip_suffix(" re-read")).unwrap().parse().unwrap();
    assert!((1..=4).contains(&rereads), "{files}");
    // Not a terminal: no progress line, no escape codes, only the summary.
    assert!(!out.stderr.contains('\r') && !out.stderr.contains('\x1b'), "{:?}", out.stderr);
    assert!(!out.stderr.contains(" files, "), "{}", out.stderr);

    let out = rekey(
        &moto,
        &admin(),
        dir.path(),
        &["trace", "--access-key", LEAKED, "--logs", logs, "--follow", "--output", "json"],
    )
    .await;
    out.assert_code(0);
    let summary = &out.json()["summary"];
    assert_eq!(summary["files_too_large"], 1, "{summary}");
    // Which files are read before a key is learnt depends on how the two workers interleave, so
    // each run is held to the bound, not to the other run's count.
    let json_rereads = summary["files_reread"].as_u64().expect("files_reread");
    assert!((1..=4).contains(&json_rereads), "{summary} (the text run re-read {rereads})");
    let skipped: Vec<&str> =
        summary["files_skipped"].as_array().unwrap().iter().map(|f| f["file"].as_str().unwrap()).collect();
    assert!(skipped.iter().any(|f| f.ends_with("bombbombbombbomb.json.gz")), "{summary}");
}

async fn upload(moto: &Moto) {
    let config = aws_sdk_s3::config::Builder::from(&moto.sdk_config(&admin())).force_path_style(true).build();
    let s3 = aws_sdk_s3::Client::from_conf(config);
    s3.create_bucket().bucket(BUCKET).send().await.expect("CreateBucket");
    for (key, bytes) in trail_objects() {
        s3.put_object()
            .bucket(BUCKET)
            .key(&key)
            .body(aws_sdk_s3::primitives::ByteStream::from(bytes))
            .send()
            .await
            .unwrap_or_else(|e| panic!("PutObject {key}: {e:?}"));
    }
    // Not the trail: a file next to AWSLogs/ is outside the layout that is walked.
    s3.put_object()
        .bucket(BUCKET)
        .key("elsewhere/a.json")
        .body(aws_sdk_s3::primitives::ByteStream::from(b"not json".to_vec()))
        .send()
        .await
        .expect("PutObject");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_trail_gives_the_same_matches_and_skips_days_outside_the_window() {
    let moto = Moto::start();
    upload(&moto).await;
    let dir = state_dir();
    let folder = write_folder(dir.path());
    let folder = folder.to_str().unwrap();
    let started = std::time::Instant::now();
    let trace = |logs: String, extra: &'static [&'static str]| {
        let moto = &moto;
        let dir = dir.path().to_path_buf();
        async move {
            let mut args = vec!["trace", "--access-key", LEAKED, "--follow", "--logs", logs.as_str()];
            args.extend(extra);
            let out = rekey(moto, &admin(), &dir, &args).await;
            out.assert_code(0);
            out
        }
    };

    let local = trace(folder.to_string(), &[]).await;
    assert_eq!(found(&lines(&local)), expect(FOLLOWED));
    for logs in [
        format!("s3://{BUCKET}"),
        format!("s3://{BUCKET}/"),
        format!("s3://{BUCKET}/AWSLogs/"),
        format!("s3://{BUCKET}/AWSLogs/{ACCT}/CloudTrail"),
        format!("s3://{BUCKET}/AWSLogs/{ACCT}/CloudTrail/us-east-1/2023/07/1"),
    ] {
        let out = trace(logs.clone(), &[]).await;
        let matches = lines(&out);
        if logs.ends_with("us-east-1/2023/07/1") {
            // One region only, so ev-3 and ev-5 (eu-west-1) are not there.
            let want: Vec<_> = FOLLOWED.iter().copied().filter(|(id, _)| !["ev-3", "ev-5"].contains(id)).collect();
            assert_eq!(found(&matches), expect(&want), "{logs}");
            continue;
        }
        assert_eq!(found(&matches), found(&lines(&local)), "{logs}\n{}", out.stderr);
        assert!(matches.iter().all(|m| m["source"].as_str().unwrap().starts_with(&format!("s3://{BUCKET}/AWSLogs/"))));
        assert!(out.stderr.contains(CORRUPT_KEY), "{}", out.stderr);
        assert_eq!(summary_number(&out, "files"), 8, "{logs}: 7 files and the corrupt one:\n{}", out.stderr);
    }

    // A window: days outside it are not even listed on S3; the folder lists all and skips them.
    let window: &[&str] = &["--since", "2023-07-12T00:00:00Z", "--until", "2023-07-12T23:59:59Z", "--output", "json"];
    let local = trace(folder.to_string(), window).await.json();
    let remote = trace(format!("s3://{BUCKET}/"), window).await.json();
    for doc in [&local, &remote] {
        // The backdoor key was minted before the window: its later use is not followed.
        assert_eq!(found(doc["matches"].as_array().unwrap()), expect(&[("ev-6", &[LEAKED])]), "{doc}");
        assert_eq!(doc["summary"]["files"], 2, "{doc}");
    }
    assert_eq!(local["summary"]["files_outside_window"], 6);
    // Day 11 is listed (the window is widened by the delivery margin), day 10 is not.
    assert_eq!(remote["summary"]["files_outside_window"], 3, "{remote}");

    // A bucket that is not there: exit 2, one line naming it.
    let out = rekey(
        &moto,
        &admin(),
        dir.path(),
        &["trace", "--access-key", LEAKED, "--logs", "s3://no-such-bucket/AWSLogs/"],
    )
    .await;
    out.assert_code(2);
    let line = one_line(&out);
    assert!(line.contains("s3://no-such-bucket/AWSLogs/") && line.contains("bucket not found"), "{line}");

    // A principal that may not read the bucket: exit 2, one line naming the permission.
    let seeded = seed(&moto).await;
    moto.set_auth(true).await;
    let out = rekey(
        &moto,
        &seeded.app_key,
        dir.path(),
        &["trace", "--access-key", LEAKED, "--logs", &format!("s3://{BUCKET}/")],
    )
    .await;
    moto.set_auth(false).await;
    out.assert_code(2);
    let line = one_line(&out);
    assert!(
        line.contains(&format!("s3://{BUCKET}/")) && line.contains("access denied") && line.contains("s3:ListBucket"),
        "{line}"
    );
    eprintln!("s3 trace runs: {:?}", started.elapsed());
}
