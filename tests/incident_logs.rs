//! Reading the trail cannot be turned against the response. Against the emulator, with trail
//! files written into the trail's bucket in the real layout (moto records no CloudTrail):
//! - a decompression bomb among the log files (1 GiB of zeros in about 1 MB of gzip) is named in
//!   the blind spots and skipped, and the peak memory of `rekey incident` stays bounded (printed);
//! - `rekey contain` acts only on what the attacker provably did: a user the key created from the
//!   application's own address is an "unattributed, review" finding, and a user shown only by a log
//!   file altered after delivery (its SHA-256 no longer matches the trail's digest) is marked and
//!   not planned; the attacker's real backdoor is planned and removed.

mod support;

use std::io::Write;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::*;
use testbed::moto::{Moto, seed};

const ACCOUNT: &str = "123456789012";
const BUCKET: &str = "acme-cloudtrail";
const ATTACKER_IP: &str = "198.51.100.50";
const APP_IP: &str = "203.0.113.10";

fn ts(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `AWSLogs/<acct>/<folder>/us-east-1/YYYY/MM/DD/` of a time.
fn folder(kind: &str, t: SystemTime) -> String {
    let s = ts(t);
    format!("AWSLogs/{ACCOUNT}/{kind}/us-east-1/{}/{}/{}/", &s[..4], &s[5..7], &s[8..10])
}

fn log_key(delivered: SystemTime, tag: &str) -> String {
    let s = ts(delivered);
    let stamp = format!("{}{}{}T{}{}Z", &s[..4], &s[5..7], &s[8..10], &s[11..13], &s[14..16]);
    format!("{}{ACCOUNT}_CloudTrail_us-east-1_{stamp}_{tag:0>16}.json.gz", folder("CloudTrail", delivered))
}

fn record(at: SystemTime, id: &str, key: &str, user: &str, ip: &str, name: &str, request: Value) -> Value {
    let source = if name == "GetCallerIdentity" { "sts" } else { "iam" };
    json!({
        "eventVersion": "1.09",
        "userIdentity": {"type": "IAMUser", "principalId": "AIDAEXAMPLE", "arn": format!("arn:aws:iam::{ACCOUNT}:user/{user}"),
            "accountId": ACCOUNT, "accessKeyId": key, "userName": user},
        "eventTime": ts(at), "eventSource": format!("{source}.amazonaws.com"), "eventName": name,
        "awsRegion": "us-east-1", "sourceIPAddress": ip, "userAgent": "aws-cli/2.15.0",
        "requestParameters": request, "responseElements": null, "requestID": id,
        "eventID": format!("00000000-0000-4000-8000-{id:0>12}"), "readOnly": false, "eventType": "AwsApiCall",
        "managementEvent": true, "recipientAccountId": ACCOUNT,
    })
}

fn gzip(text: &str) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes()).unwrap();
    gz.finish().unwrap()
}

fn sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

struct World {
    moto: Moto,
    seeded: testbed::moto::Seeded,
    s3: aws_sdk_s3::Client,
    admin_iam: aws_sdk_iam::Client,
}

async fn world() -> World {
    let moto = Moto::start();
    let seeded = seed(&moto).await;
    let admin = moto.sdk_config(&seeded.admin);
    let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&admin).force_path_style(true).build());
    s3.create_bucket().bucket(BUCKET).send().await.unwrap();
    let ct = aws_sdk_cloudtrail::Client::new(&admin);
    ct.create_trail().name("main").s3_bucket_name(BUCKET).is_multi_region_trail(true).send().await.unwrap();
    World { admin_iam: aws_sdk_iam::Client::new(&admin), moto, seeded, s3 }
}

impl World {
    async fn put(&self, key: &str, body: Vec<u8>) {
        self.s3.put_object().bucket(BUCKET).key(key).body(body.into()).send().await.unwrap();
    }

    /// A log file of `records`; returns its key and the SHA-256 of its uncompressed text.
    async fn log(&self, delivered: SystemTime, tag: &str, records: Vec<Value>) -> (String, String) {
        let text = json!({ "Records": records }).to_string();
        let key = log_key(delivered, tag);
        self.put(&key, gzip(&text)).await;
        (key, sha256(&text))
    }

    /// The application's ordinary use of its key, from its own address, on the days before.
    async fn app_history(&self) {
        let now = SystemTime::now();
        let key = &self.seeded.app_key.access_key_id;
        for d in 2..8u64 {
            let at = now - Duration::from_secs(86_400 * d);
            let r = record(at, &format!("h{d}"), key, &self.seeded.app_user, APP_IP, "GetCallerIdentity", json!(null));
            self.log(at + Duration::from_secs(300), &format!("hist{d}"), vec![r]).await;
        }
    }
}

/// Runs `rekey incident` without a cutover or fence, and returns its report and its peak RSS.
async fn incident(w: &World, dir: &std::path::Path) -> (Value, u64) {
    let rd = dir.join("report").display().to_string();
    let key = w.seeded.app_key.access_key_id.clone();
    let args = [
        "incident",
        "--access-key",
        &key,
        "--no-cutover",
        "--no-fence",
        "--attacker-ip",
        ATTACKER_IP,
        "--since",
        "30d",
        "--report-dir",
        &rd,
        "--no-history",
        "--no-sweep",
        "--region",
        "us-east-1",
    ];
    let mut cmd = rekey_command(&w.moto, &w.seeded.admin, dir, &args, &[]);
    let out = cmd.output().await.expect("rekey runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "rekey incident\n{stderr}");
    // The largest resident size of the children this test waited for: rekey's (the emulator
    // still runs).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) }, 0);
    let peak = usage.ru_maxrss as u64 * 1024;
    let report = serde_json::from_str(&std::fs::read_to_string(dir.join("report/report.json")).unwrap()).unwrap();
    (report, peak)
}

/// 1 GiB of zeros as one gzip member of about 1 MB, made without ever holding the GiB: a deflate
/// block of 1 MiB of zeros repeated (each refers back into zeros only), and the true CRC and size.
fn bomb() -> Vec<u8> {
    const MIB: usize = 1 << 20;
    let mut deflate = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    deflate.write_all(&[0u8; MIB]).unwrap();
    deflate.flush().unwrap();
    let block = deflate.get_ref().clone();
    let zeros = vec![0u8; MIB];
    let (mut crc, mut one) = (flate2::Crc::new(), flate2::Crc::new());
    crc.update(&zeros);
    one.update(&zeros);
    let mut out = vec![0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0xff];
    out.extend_from_slice(&block);
    for _ in 1..1024 {
        out.extend_from_slice(&block);
        crc.combine(&one);
    }
    out.extend_from_slice(&[0x03, 0x00]);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(1u32 << 30).to_le_bytes());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decompression_bomb_in_the_trail_bucket_is_named_and_skipped_within_bounded_memory() {
    let w = world().await;
    w.app_history().await;
    let now = SystemTime::now();
    let key = w.seeded.app_key.access_key_id.clone();
    let at = now - Duration::from_secs(1800);
    let call = record(at, "a1", &key, &w.seeded.app_user, ATTACKER_IP, "ListUsers", json!(null));
    w.log(at + Duration::from_secs(300), "attack", vec![call]).await;
    let bomb = bomb();
    assert!(bomb.len() < 2 << 20, "{} bytes", bomb.len());
    let bomb_key = log_key(at + Duration::from_secs(360), "bomb");
    w.put(&bomb_key, bomb).await;

    let dir = state_dir();
    w.moto.set_auth(true).await;
    let (report, peak) = incident(&w, dir.path()).await;
    w.moto.set_auth(false).await;
    eprintln!(
        "peak RSS of rekey incident with a 1 GiB gzip bomb in the bucket: {:.0} MiB",
        peak as f64 / (1 << 20) as f64
    );
    let spots = report["blind_spots"].as_array().unwrap();
    assert!(
        spots.iter().any(|b| b["kind"] == "file_too_large" && b["detail"].as_str().unwrap().contains(&bomb_key)),
        "the bomb is named: {spots:#?}"
    );
    assert!(report["timeline"].to_string().contains("ListUsers"), "the other files were still read");
    // Inflating it whole would take a GiB; the cap is 64 MiB.
    assert!(peak < 512 << 20, "peak RSS {peak} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contain_acts_only_on_what_the_attacker_provably_did() {
    let w = world().await;
    w.app_history().await;
    for user in ["backdoor", "app-made", "ops-alice"] {
        w.admin_iam.create_user().user_name(user).send().await.unwrap();
    }
    let now = SystemTime::now();
    let (key, user) = (w.seeded.app_key.access_key_id.clone(), w.seeded.app_user.clone());
    let at = |m: u64| now - Duration::from_secs(60 * m);
    let create =
        |m, id: &str, ip: &str, name: &str| record(at(m), id, &key, &user, ip, "CreateUser", json!({"userName": name}));
    // The attacker's backdoor, and a user the application made itself, in an honest file.
    let (file_a, hash_a) =
        w.log(at(45), "a", vec![create(50, "c1", ATTACKER_IP, "backdoor"), create(49, "c2", APP_IP, "app-made")]).await;
    // A file that held a harmless call when delivered, rewritten since to frame a real user.
    let honest =
        json!({"Records": [record(at(40), "c3", &key, &user, ATTACKER_IP, "ListUsers", json!(null))]}).to_string();
    let (file_b, _) = w
        .log(
            at(35),
            "b",
            vec![
                record(at(40), "c3", &key, &user, ATTACKER_IP, "ListUsers", json!(null)),
                create(39, "c4", ATTACKER_IP, "ops-alice"),
            ],
        )
        .await;
    // The digests: the hour before, and the hour holding both files, chained.
    let digest = |start: SystemTime, end: SystemTime, previous: Option<(&str, &str)>, files: &[(&str, &str)]| {
        let mut v = json!({
            "awsAccountId": ACCOUNT, "digestStartTime": ts(start), "digestEndTime": ts(end),
            "digestS3Bucket": BUCKET, "digestSignatureAlgorithm": "SHA256withRSA",
            "logFiles": files.iter().map(|(k, h)| json!({"s3Bucket": BUCKET, "s3Object": k, "hashValue": h, "hashAlgorithm": "SHA-256"})).collect::<Vec<_>>(),
        });
        if let Some((k, h)) = previous {
            v["previousDigestS3Bucket"] = json!(BUCKET);
            v["previousDigestS3Object"] = json!(k);
            v["previousDigestHashValue"] = json!(h);
            v["previousDigestHashAlgorithm"] = json!("SHA-256");
        }
        v.to_string()
    };
    let digest_key = |end: SystemTime| {
        let s = ts(end);
        let stamp = format!("{}{}{}T{}{}{}Z", &s[..4], &s[5..7], &s[8..10], &s[11..13], &s[14..16], &s[17..19]);
        format!(
            "{}{ACCOUNT}_CloudTrail-Digest_us-east-1_main_us-east-1_{stamp}.json.gz",
            folder("CloudTrail-Digest", end)
        )
    };
    let d0 = digest(at(130), at(70), None, &[]);
    let d0_key = digest_key(at(70));
    w.put(&d0_key, gzip(&d0)).await;
    let d1 = digest(at(70), at(10), Some((&d0_key, &sha256(&d0))), &[(&file_a, &hash_a), (&file_b, &sha256(&honest))]);
    w.put(&digest_key(at(10)), gzip(&d1)).await;

    let dir = state_dir();
    w.moto.set_auth(true).await;
    let (report, _) = incident(&w, dir.path()).await;
    let findings = report["findings"].as_array().unwrap();
    let on = |name: &str| {
        findings.iter().find(|f| f["resource"] == name).unwrap_or_else(|| panic!("a finding on {name}: {findings:#?}"))
    };
    assert_eq!(on("backdoor")["kind"], "backdoor_user");
    assert_eq!(on("app-made")["kind"], "unattributed", "{}", on("app-made"));
    assert!(
        on("ops-alice")["title"].as_str().unwrap().contains("failed CloudTrail digest validation"),
        "{}",
        on("ops-alice")
    );
    let spots = report["blind_spots"].to_string();
    assert!(spots.contains("log_file_failed_validation") && spots.contains(&file_b), "{spots}");
    assert!(!spots.contains(&file_a), "the honest file passed: {spots}");
    assert!(report["sources"].as_array().unwrap().iter().any(|s| s["kind"] == "digests"), "{}", report["sources"]);
    let plan: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report/plan.json")).unwrap()).unwrap();
    let actions = plan["actions"].to_string();
    assert!(actions.contains("\"backdoor\""), "{actions}");
    assert!(!actions.contains("app-made") && !actions.contains("ops-alice"), "{actions}");

    let plan_s = dir.path().join("report/plan.json").display().to_string();
    rekey(&w.moto, &w.seeded.admin, dir.path(), &["contain", "--plan", &plan_s, "--apply"]).await.assert_code(0);
    assert!(w.admin_iam.get_user().user_name("backdoor").send().await.is_err(), "the attacker's user is gone");
    for kept in ["app-made", "ops-alice"] {
        assert!(w.admin_iam.get_user().user_name(kept).send().await.is_ok(), "{kept} is left alone");
    }
    w.moto.set_auth(false).await;
}
