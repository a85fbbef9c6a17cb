//! `rekey trace`: every CloudTrail record signed by a leaked key, and with `--follow`, by every key
//! it minted, streamed to stdout as the scan finds them; a summary of what was read on stderr.

pub mod athena;
pub mod sources;

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant, SystemTime};

use indicatif::{ProgressBar, ProgressStyle};
use rekey_trail::{DerivedKey, Match, Progress, Query, Source, Summary};

use crate::exit::Status;
use crate::trace::sources::LogsSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line and match (the default).
    Ndjson,
    /// One JSON document: matches, derived keys and the summary.
    Json,
    /// Aligned columns for a person.
    Table,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub keys: Vec<String>,
    pub logs: Vec<LogsSpec>,
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    pub follow: bool,
    pub format: Format,
    /// Run the search as Athena queries over the trail bucket instead of reading the files.
    pub athena: Option<AthenaOptions>,
}

/// `--athena…` options; the trail's bucket and prefix come from the one `--logs s3://…`.
#[derive(Debug, Clone)]
pub struct AthenaOptions {
    pub database: String,
    pub table: String,
    pub output: String,
    pub workgroup: Option<String>,
    pub timeout: Duration,
    /// Accounts whose logs the bucket holds; empty: the caller's account.
    pub accounts: Vec<String>,
    /// Regions to project; empty: the configured region.
    pub regions: Vec<String>,
    pub org_id: Option<String>,
    pub create_table: bool,
}

/// An access key id as given on the command line: upper-cased, checked for shape.
pub fn parse_key(s: &str) -> Result<String, String> {
    let key = s.trim().to_ascii_uppercase();
    if (16..=128).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(key)
    } else {
        Err("not an access key id; give one like AKIAIOSFODNN7EXAMPLE (letters and digits only)".into())
    }
}

/// `--since`/`--until`: a duration back from now (`30d`, `12h`), an RFC 3339 time
/// (`2026-11-28T12:00:00Z`, `…+02:00`) or a day (`2026-11-28`, midnight UTC).
pub fn parse_when(s: &str) -> Result<SystemTime, String> {
    const HINT: &str = "write a duration back from now (30d, 12h) or an RFC 3339 time (2026-11-28T12:00:00Z)";
    let s = s.trim();
    if s.bytes().next().is_some_and(|b| b.is_ascii_digit()) && !s.contains('-') {
        let d = humantime::parse_duration(s).map_err(|e| format!("{e}; {HINT}"))?;
        return SystemTime::now().checked_sub(d).ok_or_else(|| format!("{s} is too far back; {HINT}"));
    }
    parse_time(s).ok_or_else(|| HINT.to_string())
}

/// A day means its midnight UTC; anything else is an RFC 3339 instant.
fn parse_time(s: &str) -> Option<SystemTime> {
    if s.len() == 10 {
        return rekey_trail::time::parse(&format!("{s}T00:00:00Z"));
    }
    rekey_trail::time::parse(s)
}

/// Run the command; returns the exit code. `sdk` is needed when a source is on S3.
pub async fn run(settings: Settings, sdk: Option<aws_types::SdkConfig>) -> Status {
    if let (Some(s), Some(u)) = (settings.since, settings.until)
        && s > u
    {
        eprintln!("rekey: --since is after --until; swap them");
        return Status::Refused;
    }
    if let Some(athena) = &settings.athena {
        return run_athena(&settings, athena, sdk).await;
    }
    let handle = tokio::runtime::Handle::current();
    let mut sources: Vec<Box<dyn Source>> = Vec::new();
    for spec in &settings.logs {
        match spec.source(sdk.as_ref(), &handle) {
            Ok(s) => sources.push(s),
            Err(e) => {
                eprintln!("rekey: {e}");
                return Status::Refused;
            }
        }
    }
    let mut query = Query::new(settings.keys.clone());
    query.follow = settings.follow;
    query.since = settings.since;
    query.until = settings.until;
    let format = settings.format;
    // The engine blocks, and S3 sources call `Handle::block_on`, which must not run on a runtime
    // worker: run it on the blocking pool.
    let scanned = tokio::task::spawn_blocking(move || {
        let refs: Vec<&dyn Source> = sources.iter().map(|s| s.as_ref()).collect();
        let mut live = Live::new();
        let mut out = Writer::new(format);
        out.below_status_lines = live.terminal && std::io::stdout().is_terminal();
        let result =
            rekey_trail::scan_with_progress(&refs, &query, &mut |m| out.write_match(&m), &mut |p| live.update(p));
        live.finish();
        match result {
            Ok(summary) => {
                out.finish(&summary);
                Ok((summary, out.failed))
            }
            Err(e) => Err(e),
        }
    })
    .await;
    let (summary, write_failed) = match scanned {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            eprintln!("rekey: {}", one_line(&e.to_string()));
            return Status::Refused;
        }
        Err(e) => {
            eprintln!("rekey: the scan stopped unexpectedly: {e}");
            return Status::Internal;
        }
    };
    print_summary(&summary);
    if let Some(e) = write_failed {
        eprintln!("rekey: cannot write the matches to stdout: {e}");
        return Status::Internal;
    }
    if summary.files > 0 && summary.corrupt.len() as u64 == summary.files {
        // Zero matches from zero readable files must not read as "the key was not used".
        let (name, problem) = &summary.corrupt[0];
        eprintln!(
            "rekey: none of the {} log files could be read (first: {name}: {problem}); fix access and run again",
            summary.files
        );
        return Status::Refused;
    }
    Status::Ok
}

/// The Athena settings for a trail bucket: the table sits at the prefix before `AWSLogs/`, and the
/// projection covers the given accounts (default: the caller's) and regions (default: `--region`).
pub async fn athena_settings(
    opts: &AthenaOptions,
    logs: &[LogsSpec],
    sdk: &aws_types::SdkConfig,
) -> Result<crate::trace::athena::AthenaSettings, String> {
    let (bucket, prefix) = match logs {
        [LogsSpec::S3 { bucket, prefix }] => (bucket.clone(), prefix.clone()),
        _ => return Err("--athena reads one trail bucket: give exactly one --logs s3://bucket[/prefix]".into()),
    };
    let prefix = prefix.split("AWSLogs").next().unwrap_or("").trim_end_matches('/').to_string();
    let mut accounts = opts.accounts.clone();
    if accounts.is_empty() {
        let me = aws_sdk_sts::Client::new(sdk).get_caller_identity().send().await.map_err(|e| {
            format!("cannot tell the account to search ({}); pass --athena-account", crate::aws::error_text(&e))
        })?;
        accounts.push(me.account().unwrap_or_default().to_string());
    }
    let mut regions = opts.regions.clone();
    if regions.is_empty() {
        regions.extend(sdk.region().map(|r| r.to_string()));
    }
    Ok(crate::trace::athena::AthenaSettings {
        table: rekey_trail::athena::TableSpec {
            database: opts.database.clone(),
            table: opts.table.clone(),
            bucket,
            prefix,
            accounts,
            org_id: opts.org_id.clone(),
            regions,
            // The table outlives this search: project from a fixed early day.
            start_date: humantime::parse_rfc3339("2020-01-01T00:00:00Z").expect("a valid date"),
        },
        output: opts.output.clone(),
        workgroup: opts.workgroup.clone(),
        timeout: opts.timeout,
        create_table: opts.create_table,
    })
}

/// The same search as Athena queries, one per hop of the key chain.
async fn run_athena(settings: &Settings, opts: &AthenaOptions, sdk: Option<aws_types::SdkConfig>) -> Status {
    let Some(sdk) = sdk else {
        eprintln!("rekey: --athena needs AWS credentials and a region");
        return Status::Refused;
    };
    let athena_settings = match athena_settings(opts, &settings.logs, &sdk).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rekey: {e}");
            return Status::Refused;
        }
    };
    let mut query = Query::new(settings.keys.clone());
    query.follow = settings.follow;
    query.since = settings.since;
    query.until = settings.until;
    let client = aws_sdk_athena::Client::new(&sdk);
    let mut out = Writer::new(settings.format);
    let result = crate::trace::athena::search(&client, &athena_settings, &query, &mut |m| out.write_match(&m)).await;
    match result {
        Ok(summary) => {
            let local = summary.to_summary();
            out.finish(&local);
            for q in &summary.queries {
                eprintln!(
                    "rekey: athena query {} ({}): {} scanned, {} rows, {:.1} s",
                    q.execution_id,
                    q.hop.map(|h| format!("hop {h}: {}", q.keys.join(", "))).unwrap_or_else(|| "table".into()),
                    human_bytes(q.bytes_scanned),
                    q.rows,
                    q.elapsed.as_secs_f64()
                );
            }
            eprintln!(
                "rekey: athena scanned {} in {} queries, about ${:.4} at $5/TB; {} matches, {} derived keys",
                human_bytes(summary.bytes_scanned()),
                summary.queries.len(),
                summary.estimated_cost_usd(),
                summary.matches,
                summary.derived.len()
            );
            if let Some(e) = out.failed {
                eprintln!("rekey: cannot write the matches to stdout: {e}");
                return Status::Internal;
            }
            Status::Ok
        }
        Err(e) => {
            eprintln!("rekey: {}", one_line(&e.to_string()));
            Status::Refused
        }
    }
}

fn human_bytes(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MB", b as f64 / (1u64 << 20) as f64)
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The live line of a long scan (files, bytes, speed, matches, derived keys, time left when the
/// listing gave every size), redrawn on stderr when it is a terminal; nothing at all otherwise,
/// so pipes and CI logs get only the summary.
struct Live {
    terminal: bool,
    /// Made at the first report, which says whether the sizes are known.
    bar: Option<ProgressBar>,
    last: Option<Instant>,
}

impl Live {
    fn new() -> Live {
        Live { terminal: std::io::stderr().is_terminal(), bar: None, last: None }
    }

    fn update(&mut self, p: &Progress) {
        if !self.terminal {
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            // Known sizes give a bar with the time left; unknown ones a spinner.
            let template = match p.bytes_total {
                Some(t) if t > 0 => "{spinner} [{bar:20}] {percent:>3}% {msg}, {eta} left",
                _ => "{spinner} {msg}",
            };
            let style = ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_spinner())
                .progress_chars("=> ");
            // Styled and filled in before it is shown, so that its first drawing is a whole line.
            crate::progress::status_line(ProgressBar::no_length().with_style(style).with_message(progress_line(p)))
        });
        if self.last.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) {
            // Thousands of files a second: format the line at most ten times a second.
            return;
        }
        self.last = Some(Instant::now());
        if let Some(total) = p.bytes_total.filter(|&t| t > 0) {
            bar.set_length(total);
            bar.set_position(p.bytes_read.min(total));
        }
        bar.set_message(progress_line(p));
        bar.tick();
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            crate::progress::end_status_line(bar);
        }
    }
}

/// `1,204/2,575 files, 140.20 MB read, 2,410 MB/s, 3 matches, 1 derived key, 2 re-read`
fn progress_line(p: &Progress) -> String {
    let secs = p.elapsed.as_secs_f64();
    let rate = if secs > 0.0 { p.bytes_scanned as f64 / 1e6 / secs } else { 0.0 };
    let plural = |n: u64, one: &str, many: &str| format!("{} {}", thousands(n), if n == 1 { one } else { many });
    let mut line = format!(
        "{}/{} files, {} read, {} MB/s, {}, {}",
        thousands(p.files_done),
        thousands(p.files_total),
        mb(p.bytes_read),
        thousands(rate.round() as u64),
        plural(p.matches, "match", "matches"),
        plural(p.derived_keys, "derived key", "derived keys"),
    );
    if p.rereads > 0 {
        line.push_str(&format!(", {} re-read", thousands(p.rereads)));
    }
    line
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Streams matches to stdout in the chosen format.
struct Writer {
    format: Format,
    out: std::io::Stdout,
    /// Whether a match has been written (JSON needs commas between them; a table its header).
    started: bool,
    failed: Option<std::io::Error>,
    /// stdout shares the terminal of the progress line, which is lifted while a match is written.
    below_status_lines: bool,
}

const COLUMNS: [(&str, usize); 7] = [
    ("EVENT TIME", 20),
    ("SIGNING KEY", 20),
    ("EVENT NAME", 28),
    ("EVENT SOURCE", 30),
    ("REGION", 14),
    ("SOURCE IP", 16),
    ("ERROR CODE", 0),
];

impl Writer {
    fn new(format: Format) -> Self {
        Writer { format, out: std::io::stdout(), started: false, failed: None, below_status_lines: false }
    }

    fn write_match(&mut self, m: &Match) {
        let mut text = String::new();
        match self.format {
            Format::Ndjson => {
                // A record pretty-printed in its file spans lines; its line breaks can only be
                // whitespace between tokens, so a space keeps it the same JSON on one line.
                text.push_str(&match_json(m, &m.raw.replace(['\n', '\r'], " ")));
            }
            Format::Json => {
                text.push_str(if self.started { ",\n" } else { "{\"matches\":[\n" });
                text.push_str(&match_json(m, &m.raw));
            }
            Format::Table => {
                if !self.started {
                    text.push_str(&table_row(COLUMNS.map(|(name, _)| name)));
                    text.push('\n');
                }
                let field = |f: &Option<String>| f.clone().unwrap_or_else(|| "-".into());
                let signer = m.chain.last().cloned().unwrap_or_default();
                text.push_str(&table_row([
                    &field(&m.event_time),
                    &signer,
                    &field(&m.event_name),
                    &field(&m.event_source),
                    &field(&m.aws_region),
                    &field(&m.source_ip),
                    &field(&m.error_code),
                ]));
            }
        }
        if self.format != Format::Json || self.started {
            text.push('\n');
        }
        self.started = true;
        self.write(&text);
    }

    fn finish(&mut self, summary: &Summary) {
        if self.format != Format::Json {
            return;
        }
        let mut text = String::from(if self.started { "\n]" } else { "{\"matches\":[]" });
        let derived: Vec<_> = summary.derived.iter().map(derived_json).collect();
        text.push_str(&format!(
            ",\"derived_keys\":{},\"summary\":{}}}\n",
            serde_json::Value::Array(derived),
            summary_json(summary)
        ));
        self.write(&text);
    }

    fn write(&mut self, text: &str) {
        if self.failed.is_some() {
            return;
        }
        let mut out = self.out.lock();
        let mut put = || out.write_all(text.as_bytes()).and_then(|()| out.flush());
        let written = if self.below_status_lines { crate::progress::above_status_lines(put) } else { put() };
        if let Err(e) = written {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                // The reader has gone (`| head`): it wants no more, and finishing would read the
                // rest of the trail for nobody.
                std::process::exit(Status::Ok.code());
            }
            self.failed = Some(e);
        }
    }
}

/// `{"keyChain":[…],"source":"…","record":<raw>}`, the record kept byte for byte.
fn match_json(m: &Match, raw: &str) -> String {
    let chain = serde_json::to_string(&m.chain).unwrap_or_else(|_| "[]".into());
    let source = serde_json::Value::String(m.source.clone());
    format!("{{\"keyChain\":{chain},\"source\":{source},\"record\":{raw}}}")
}

fn table_row<S: AsRef<str>>(cells: [S; 7]) -> String {
    let mut line = String::new();
    for (cell, (_, width)) in cells.iter().zip(COLUMNS) {
        line.push_str(&format!("{:<width$}  ", cell.as_ref()));
    }
    line.trim_end().to_string()
}

fn derived_json(d: &DerivedKey) -> serde_json::Value {
    serde_json::json!({
        "key": d.key,
        "parent": d.parent,
        "event_name": d.event_name,
        "event_time": d.event_time,
        "principal": d.principal,
    })
}

fn summary_json(s: &Summary) -> serde_json::Value {
    serde_json::json!({
        "files": s.files,
        "files_outside_window": s.files_outside_window,
        "files_skipped": s.corrupt.iter().map(|(file, problem)| serde_json::json!({"file": file, "problem": problem})).collect::<Vec<_>>(),
        "files_too_large": s.too_large,
        "files_reread": s.rescanned,
        "bytes_read": s.bytes_read,
        "bytes_scanned": s.bytes_scanned,
        "records": s.records,
        "malformed_records": s.malformed_records,
        "matches": s.matches,
        "derived_keys": s.derived.len(),
        "elapsed_ms": s.elapsed.as_millis() as u64,
        "throughput_mb_s": (s.throughput() * 10.0).round() / 10.0,
    })
}

fn mb(bytes: u64) -> String {
    format!("{:.2} MB", bytes as f64 / 1e6)
}

/// Shown in full up to this many; a trail with thousands of bad files needs only the first few.
const CORRUPT_SHOWN: usize = 20;

fn print_summary(s: &Summary) {
    let mut text = String::new();
    for (file, problem) in s.corrupt.iter().take(CORRUPT_SHOWN) {
        text.push_str(&format!("rekey: skipped {file}: {}\n", one_line(problem)));
    }
    if s.corrupt.len() > CORRUPT_SHOWN {
        text.push_str(&format!("rekey: … and {} more skipped files\n", s.corrupt.len() - CORRUPT_SHOWN));
    }
    if s.files == 0 && s.files_outside_window == 0 {
        text.push_str("rekey: no CloudTrail log files (.json.gz, .json) were found in --logs\n");
    }
    text.push_str(&format!("rekey trace: {} matches\n", s.matches));
    text.push_str(&format!(
        "  files          {} read ({}), {} skipped (corrupt), {} skipped (too large), {} outside the window, {} re-read\n",
        s.files,
        mb(s.bytes_read),
        (s.corrupt.len() as u64).saturating_sub(s.too_large),
        s.too_large,
        s.files_outside_window,
        s.rescanned
    ));
    text.push_str(&format!(
        "  scanned        {} uncompressed, {} records ({} malformed)\n",
        mb(s.bytes_scanned),
        s.records,
        s.malformed_records
    ));
    text.push_str(&format!("  derived keys   {}\n", s.derived.len()));
    for d in &s.derived {
        text.push_str(&format!(
            "    {} from {} by {} at {}{}\n",
            d.key,
            d.parent,
            if d.event_name.is_empty() { "?" } else { &d.event_name },
            d.event_time.as_deref().unwrap_or("?"),
            d.principal.as_deref().map(|p| format!(" as {p}")).unwrap_or_default()
        ));
    }
    text.push_str(&format!("  elapsed        {:.2} s, {:.1} MB/s\n", s.elapsed.as_secs_f64(), s.throughput()));
    eprint!("{text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn when_is_a_duration_back_from_now_or_a_time() {
        let before = SystemTime::now();
        let t = parse_when("30d").unwrap();
        let back = before.duration_since(t).unwrap_or_default();
        assert!(back >= Duration::from_secs(30 * 86_400 - 5) && back <= Duration::from_secs(30 * 86_400 + 5));
        assert_eq!(parse_when("2026-11-28T12:00:00Z"), Ok(at("2026-11-28T12:00:00Z")));
        assert_eq!(parse_when("2026-11-28T12:00:00.5Z").map(|t| t > at("2026-11-28T12:00:00Z")), Ok(true));
        assert_eq!(parse_when("2026-11-28T12:00:00+02:00"), Ok(at("2026-11-28T10:00:00Z")));
        assert_eq!(parse_when("2026-11-28T12:00:00-01:30"), Ok(at("2026-11-28T13:30:00Z")));
        assert_eq!(parse_when("2026-11-28"), Ok(at("2026-11-28T00:00:00Z")));
        for bad in ["yesterday", "30", "2026-13-01", "2026-11-28T25:00:00Z", "", "-3d", "2026-11-28T12:00:00+2:00"] {
            let e = parse_when(bad).unwrap_err();
            assert!(e.contains("30d") && !e.contains('\n'), "{bad}: {e}");
        }
    }

    #[test]
    fn the_progress_line_counts_what_matters() {
        let mut p = Progress {
            files_done: 1204,
            files_total: 2575,
            bytes_read: 140_200_000,
            bytes_total: Some(300_000_000),
            bytes_scanned: 2_410_000_000,
            matches: 1,
            derived_keys: 1,
            rereads: 0,
            elapsed: Duration::from_secs(1),
        };
        assert_eq!(progress_line(&p), "1,204/2,575 files, 140.20 MB read, 2,410 MB/s, 1 match, 1 derived key");
        (p.matches, p.derived_keys, p.rereads, p.elapsed) = (3, 0, 12, Duration::ZERO);
        assert_eq!(
            progress_line(&p),
            "1,204/2,575 files, 140.20 MB read, 0 MB/s, 3 matches, 0 derived keys, 12 re-read"
        );
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }

    #[test]
    fn keys_are_checked_for_shape() {
        assert_eq!(parse_key(" akiaiosfodnn7example ").as_deref(), Ok("AKIAIOSFODNN7EXAMPLE"));
        assert!(parse_key("AKIA-IOSFODNN7EXAMPLE").is_err());
        assert!(parse_key("AKIA").is_err());
    }

    #[test]
    fn a_match_line_keeps_the_record_verbatim() {
        let m = Match {
            chain: vec!["AKIA1".into(), "ASIA2".into()],
            source: "a \"b\".json".into(),
            raw: "{\"eventID\": \"x\",\n \"n\":1.50}".into(),
            event_time: None,
            event_name: None,
            event_source: None,
            aws_region: None,
            source_ip: None,
            error_code: None,
            event_id: None,
        };
        let line = match_json(&m, &m.raw);
        assert!(line.contains("\"n\":1.50"), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["keyChain"][1], "ASIA2");
        assert_eq!(v["source"], "a \"b\".json");
        assert_eq!(v["record"]["eventID"], "x");
    }
}
