//! The incident's report, written for the people who act on it:
//!
//! - `report.md`: headline, what happened, what rekey did, findings, timeline, blind spots, sources,
//!   what is left to do, and a draft reply to the AWS support case;
//! - `report.json` and `plan.json`: the model as is (its field names are the interface);
//! - `report.html`: one self-contained page (inline CSS and JS, no external assets) with a visual
//!   timeline, category filters, finding cards and the plan.
//!
//! Everything in the data may come from the attacker (user agents, user and role names, request
//! parameters). Markdown escapes it; the page embeds the data as JSON with every `<` escaped and
//! renders it with `textContent` only, never as markup.
//!
//! One file per format: `text` (the markdown), `json`, `html` (the page's HTML, CSS and JS sit
//! next to it in `page.html`, `page.css`, `page.js`). The helpers they share are here.

mod html;
mod json;
mod text;

pub use html::html;
pub use text::markdown;

use rekey_trail::time::parse as parse_time;
use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rekey_trail::classify::Category;

use super::model::{Plan, Report, Severity, TimelineEvent};

/// Writes `report.md`, `report.json`, `plan.json` and `report.html` into `dir` (created 0700 if
/// needed), each through a temporary file and a rename, and returns their paths in that order.
pub fn write_reports(dir: &Path, report: &Report, plan: &Plan) -> io::Result<Vec<PathBuf>> {
    {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let plan_path = dir.join("plan.json");
    let files = [
        ("report.md", markdown(report, plan, &plan_path)),
        ("report.json", json::report(report)?),
        ("plan.json", json::plan(plan)?),
        ("report.html", html(report, plan, &plan_path)?),
    ];
    let mut written = Vec::with_capacity(files.len());
    for (name, text) in files {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        write_private(&tmp, text.as_bytes())?;
        // A rename replaces a link planted at `path`; it never writes through it.
        fs::rename(&tmp, &path)?;
        written.push(path);
    }
    Ok(written)
}

/// Creates `path` anew, 0600 (the report names the account's users, keys and addresses), and
/// writes `bytes`. `create_new` never follows a symlink: a link planted at `path` (a stale temp
/// name in a shared folder) makes this fail instead of writing where the link points.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The command that applies the containment plan written next to the report.
pub fn contain_command(plan_path: &Path) -> String {
    format!("rekey contain --plan {} --apply", shell_quote(&plan_path.display().to_string()))
}

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// `P1` … `P4`: a root key is P1 whatever else is found.
pub fn priority(report: &Report) -> &'static str {
    if report.owner.is_root {
        return "P1";
    }
    match report.severity {
        Severity::Critical => "P1",
        Severity::High => "P2",
        Severity::Medium => "P3",
        Severity::Low | Severity::Info => "P4",
    }
}

fn severity_word(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
        Severity::Critical => "critical",
    }
}

fn category_word(c: Category) -> &'static str {
    match c {
        Category::Reconnaissance => "reconnaissance",
        Category::Persistence => "persistence",
        Category::PrivilegeEscalation => "privilege escalation",
        Category::DefenseEvasion => "defense evasion",
        Category::Exfiltration => "credential and data access",
        Category::AccountLevel => "account-level changes",
        Category::SesAbuse => "SES abuse",
    }
}

/// The order the narrative tells categories in: roughly the order an attack unfolds.
const STORY_ORDER: [Category; 7] = [
    Category::Reconnaissance,
    Category::Persistence,
    Category::PrivilegeEscalation,
    Category::DefenseEvasion,
    Category::Exfiltration,
    Category::AccountLevel,
    Category::SesAbuse,
];

/// `AKIA1234567890ABCDEF` → `AKIA…CDEF`.
pub fn short_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 12 {
        return key.to_string();
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

fn chain_label(ev: &TimelineEvent) -> String {
    if ev.chain.is_empty() {
        return ev.signer.as_deref().map(short_key).unwrap_or_else(|| "?".into());
    }
    ev.chain.iter().map(|k| short_key(k)).collect::<Vec<_>>().join(" → ")
}

fn service(ev: &TimelineEvent) -> &str {
    ev.event_source.strip_suffix(".amazonaws.com").unwrap_or(&ev.event_source)
}

/// Events in time order (unparseable times sort by their text, after the rest).
fn sorted_events(report: &Report) -> Vec<&TimelineEvent> {
    let mut events: Vec<&TimelineEvent> = report.timeline.iter().collect();
    events.sort_by(|a, b| match (parse_time(&a.time), parse_time(&b.time)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.time.cmp(&b.time),
    });
    events
}

fn allowed_ips(report: &Report) -> BTreeSet<&str> {
    report.fence.iter().flat_map(|f| f.allowed.iter()).map(|s| s.value.as_str()).collect()
}

/// Source IPs of the timeline that the fence did not allow: where the attacker called from.
fn suspect_ips(report: &Report) -> Vec<String> {
    let allowed = allowed_ips(report);
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for ev in sorted_events(report) {
        if let Some(ip) = ev.source_ip.as_deref()
            && !allowed.contains(ip)
            && !ip.ends_with(".amazonaws.com")
            && seen.insert(ip)
        {
            out.push(ip.to_string());
        }
    }
    out
}

/// `1 event`, `2 events`.
fn count(n: usize, word: &str) -> String {
    if n == 1 { format!("1 {word}") } else { format!("{n} {word}s") }
}

fn human_duration(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min", secs / 60),
        3600..=86_399 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} d {} h", secs / 86_400, secs % 86_400 / 3600),
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:=,@".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}
