//! Hostile input: gzip bombs, files over the size limit, files that are all matches. Each bad file
//! is named and skipped, the scan goes on, and memory stays bounded: the peak is measured in a
//! child process (this test binary, re-run on one ignored test), so it is the scan's alone.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use rekey_trail::{LocalSource, Query, Source, scan};

const KEY: &str = "AKIAHOSTILE000000001";

fn record(i: usize, key: &str) -> String {
    format!(
        r#"{{"eventVersion":"1.09","userIdentity":{{"type":"IAMUser","accessKeyId":"{key}"}},"eventTime":"2024-05-01T00:00:00Z","eventSource":"s3.amazonaws.com","eventName":"GetObject","awsRegion":"us-east-1","requestParameters":{{"bucketName":"b","key":"k/{i}"}},"eventID":"ev-{i}"}}"#
    )
}

/// About 1 MiB of records, each followed by a comma.
fn chunk(key: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while out.len() < 1 << 20 {
        out.extend_from_slice(record(i, key).as_bytes());
        out.push(b',');
        i += 1;
    }
    out
}

/// One raw deflate segment that stands alone (its matches stay inside it) and does not end the
/// stream, so that segments can be repeated: big gzip files from small work.
fn segment(data: &[u8]) -> Vec<u8> {
    let mut deflate = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    deflate.write_all(data).unwrap();
    deflate.flush().unwrap();
    deflate.get_ref().clone()
}

/// A single gzip member holding `head`, `times` copies of `body`, then `tail`; with its checksum,
/// or a zero one for a bomb (which is refused before its checksum is read).
fn gzip_repeated(head: &[u8], body: &[u8], times: usize, tail: &[u8], checksum: bool) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0xff];
    out.extend(segment(head));
    let body_segment = segment(body);
    let mut crc = flate2::Crc::new();
    crc.update(head);
    for _ in 0..times {
        out.extend_from_slice(&body_segment);
        if checksum {
            crc.update(body);
        }
    }
    out.extend(segment(tail));
    crc.update(tail);
    out.extend_from_slice(&[0x03, 0x00]);
    out.extend_from_slice(&(if checksum { crc.sum() } else { 0 }).to_le_bytes());
    let size = head.len() + body.len() * times + tail.len();
    out.extend_from_slice(&(size as u32).to_le_bytes());
    out
}

/// `mib` MiB of zeros in about 1 KB per MiB.
fn bomb(mib: usize) -> Vec<u8> {
    gzip_repeated(b"", &vec![0; 1 << 20], mib, b"", false)
}

/// A trail file of `mib` MiB of records signed by `key` (and one by KEY at the end).
fn records_gz(key: &str, mib: usize) -> Vec<u8> {
    let tail = format!("{}]}}\n", record(999_999, KEY));
    gzip_repeated(br#"{"Records":["#, &chunk(key), mib, tail.as_bytes(), true)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// A plain JSON trail file of `mib` MiB, written a chunk at a time.
fn write_plain(dir: &Path, name: &str, key: &str, mib: usize) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(dir.join(name)).unwrap());
    file.write_all(br#"{"Records":["#).unwrap();
    let body = chunk(key);
    for _ in 0..mib {
        file.write_all(&body).unwrap();
    }
    file.write_all(format!("{}]}}\n", record(0, "AKIAOTHER00000000001")).as_bytes()).unwrap();
}

fn run(dir: &Path, query: &Query) -> (rekey_trail::Summary, usize) {
    let source = LocalSource::new(dir);
    let mut matches = 0;
    let summary = scan(&[&source as &dyn Source], query, &mut |_| matches += 1).unwrap();
    (summary, matches)
}

fn skipped(summary: &rekey_trail::Summary) -> BTreeSet<String> {
    summary.corrupt.iter().map(|(f, _)| f.rsplit('/').next().unwrap().to_string()).collect()
}

#[test]
fn bombs_and_files_over_the_limit_are_named_and_skipped_and_the_scan_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "good.json.gz", &records_gz("AKIAOTHER00000000001", 1));
    // 5 GB of zeros in 5 MB; its trailer says 1 GB (5 GB modulo 4 GiB).
    write(d, "bomb-5g.json.gz", &bomb(5 << 10));
    // 20 MiB in 20 members of 1 MiB, each trailer honest.
    let member = gzip_repeated(b"", &vec![b' '; 1 << 20], 1, b"", true);
    write(d, "members.json.gz", &member.repeat(20));
    // 6 MiB of plain JSON: over a 4 MiB limit by its size alone.
    write_plain(d, "plain.json", KEY, 6);
    write(d, "cut.json.gz", &records_gz(KEY, 1)[..1000]);

    let mut query = Query::new(vec![KEY.to_string()]);
    query.max_file_bytes = 4 << 20;
    let (summary, matches) = run(d, &query);
    assert_eq!(matches, 1, "good.json.gz's one record signed by the key");
    assert_eq!(summary.files, 5);
    assert_eq!(summary.too_large, 3, "{:?}", summary.corrupt);
    assert_eq!(
        skipped(&summary),
        BTreeSet::from(["bomb-5g.json.gz", "members.json.gz", "plain.json", "cut.json.gz"].map(String::from))
    );
    let bomb_problem = &summary.corrupt.iter().find(|(f, _)| f.ends_with("bomb-5g.json.gz")).unwrap().1;
    assert!(bomb_problem.contains("limit of 4 MiB"), "{bomb_problem}");
    let cut_problem = &summary.corrupt.iter().find(|(f, _)| f.ends_with("cut.json.gz")).unwrap().1;
    assert!(cut_problem.starts_with("gzip:") && !cut_problem.contains("limit"), "{cut_problem}");

    // The default limit takes the 20 MiB and 6 MiB files and still refuses the bomb.
    let mut query = Query::new(vec![KEY.to_string()]);
    query.follow = true;
    let (summary, matches) = run(d, &query);
    assert_eq!(summary.too_large, 1);
    assert_eq!(skipped(&summary), BTreeSet::from(["bomb-5g.json.gz", "cut.json.gz"].map(String::from)));
    assert_eq!(matches, 1 + 6 * chunk(KEY).iter().filter(|&&b| b == b'{').count() / 3);
}

/// The environment variable that makes `hostile_scan_child` run, naming the folder to scan.
const CHILD_DIR: &str = "REKEY_HOSTILE_DIR";

#[test]
fn peak_memory_stays_under_200_mb_on_hostile_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Bombs, four workers to inflate them at once: without the shared budget for large buffers,
    // four buffers at the limit (64 MiB) alone would pass 200 MB.
    for i in 0..4 {
        write(d, &format!("bomb-{i}.json.gz"), &bomb(5 << 10));
    }
    let member = gzip_repeated(b"", &vec![0; 1 << 20], 40, b"", true);
    write(d, "members.json.gz", &member.repeat(3));
    // Files just under the limit: one all matches (its records go to the caller), one none.
    write(d, "all-match.json.gz", &records_gz(KEY, 40));
    write(d, "no-match.json.gz", &records_gz("AKIAOTHER00000000001", 60));
    // Plain JSON, read as stored: three under the limit, one over it by size.
    for i in 0..3 {
        write_plain(d, &format!("plain-{i}.json"), "AKIAOTHER00000000001", 60);
    }
    write_plain(d, "plain-huge.json", "AKIAOTHER00000000001", 70);

    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args(["--exact", "hostile_scan_child", "--ignored", "--nocapture", "--test-threads", "1"])
        .env(CHILD_DIR, d)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // The test harness prints the test's name on the same line, before it.
    let line = stdout.lines().find_map(|l| l.find("hostile:").map(|at| &l[at..])).unwrap_or_else(|| panic!("{stdout}"));
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{line}"))
    };
    assert_eq!(field("too_large="), 6, "{line}");
    assert_eq!(field("corrupt="), 6, "{line}");
    assert!(field("matches=") > 10_000, "{line}");
    let peak_mb = field("peak_kb=") / 1024;
    eprintln!("{line}");
    assert!(peak_mb < 200, "peak RSS {peak_mb} MB on hostile input: {line}");
}

/// Run by `peak_memory_stays_under_200_mb_on_hostile_input` in a process of its own.
#[test]
#[ignore = "run by peak_memory_stays_under_200_mb_on_hostile_input"]
fn hostile_scan_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else { return };
    let mut query = Query::new(vec![KEY.to_string()]);
    query.follow = true;
    query.workers = 4;
    let (summary, matches) = run(Path::new(&dir), &query);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    println!(
        "hostile: files={} too_large={} corrupt={} matches={matches} scanned_mb={} peak_kb={peak_kb}",
        summary.files,
        summary.too_large,
        summary.corrupt.len(),
        summary.bytes_scanned >> 20
    );
}
