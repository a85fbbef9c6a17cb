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

use rekey_trail::time::parse as parse_time;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rekey_trail::classify::Category;

use super::model::{Plan, Report, Severity, TimelineEvent, Undo};

/// Timeline rows the markdown lists before pointing at `report.json` / `report.html` for the rest.
const MD_TIMELINE_LIMIT: usize = 1000;

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
        ("report.json", serde_json::to_string_pretty(report).map_err(io::Error::other)? + "\n"),
        ("plan.json", serde_json::to_string_pretty(plan).map_err(io::Error::other)? + "\n"),
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

// ---------------------------------------------------------------------------------------------
// Markdown
// ---------------------------------------------------------------------------------------------

/// Text from the data, made inert in markdown: no HTML, links, code spans or table breaks.
fn md(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '`' | '*' | '[' | ']' | '<' | '>' | '|' | '!' | '#' | '~' | '&' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' | '\t' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Text from the data as a code span (backticks inside are replaced, pipes escaped for tables).
fn code(s: &str) -> String {
    let clean: String = s
        .chars()
        .map(|c| {
            if c == '`' {
                '\''
            } else if c.is_control() {
                ' '
            } else {
                c
            }
        })
        .collect();
    format!("`{}`", clean.replace('|', "\\|"))
}

fn opt_code(s: &Option<String>) -> String {
    s.as_deref().map(code).unwrap_or_else(|| "—".into())
}

fn owner_label(report: &Report) -> String {
    let o = &report.owner;
    match (&o.user, &o.arn) {
        _ if o.is_root => "the account's root user".into(),
        (Some(u), _) => format!("IAM user {}", code(u)),
        (None, Some(a)) => code(a),
        (None, None) => "an owner IAM does not know".into(),
    }
}

/// Writes `report.md`.
pub fn markdown(r: &Report, plan: &Plan, plan_path: &Path) -> String {
    let mut o = String::new();
    let events = sorted_events(r);
    let prio = priority(r);
    let sev = severity_word(r.severity).to_uppercase();

    // Headline.
    let _ = writeln!(o, "# {prio} · {sev}: leaked access key {} of {}\n", code(&r.access_key_id), owner_label(r));
    if r.owner.is_root {
        let _ = writeln!(
            o,
            "> **This is the account's root key: a P1 incident.** Root can't be restrained by IAM policies, \
             so whoever holds this key can do anything in the account and nothing but removing the key stops \
             them.\n>\n> 1. **Rotate now**: deactivate and delete the root key (root should have none; create a \
             new one only if something truly needs it).\n> 2. **Audit** all root activity for the last 30+ \
             days, not only this window.\n> 3. **Contact AWS Security now**: reply to the support case and ask \
             for help; secure the root password and MFA.\n"
        );
    }
    let o_ = &r.owner;
    let mut facts = Vec::new();
    if let Some(a) = &o_.account {
        facts.push(format!("account {}", code(a)));
    }
    if let Some(a) = &o_.arn {
        facts.push(code(a));
    }
    facts.push(format!("key status {}", o_.key_status.as_deref().map(code).unwrap_or_else(|| "unknown".into())));
    if let Some(l) = &o_.last_used {
        let mut s = format!("last used {}", code(l));
        if let Some(svc) = &o_.last_used_service {
            let _ = write!(s, " ({}", md(svc));
            if let Some(reg) = &o_.last_used_region {
                let _ = write!(s, ", {}", md(reg));
            }
            s.push(')');
        }
        facts.push(s);
    }
    if !o_.quarantine_policies.is_empty() {
        let q: Vec<_> = o_.quarantine_policies.iter().map(|p| code(p)).collect();
        facts.push(format!("AWS quarantine policy attached: {}", q.join(", ")));
    }
    let _ = writeln!(o, "{}  ", facts.join(" · "));
    let _ = writeln!(
        o,
        "Window investigated: {} → {} · report made {}\n",
        code(&r.window_start),
        code(&r.window_end),
        code(&r.generated_at)
    );
    let failed = events.iter().filter(|e| e.failed).count();
    let present = r.findings.iter().filter(|f| f.still_present == Some(true)).count();
    let _ = writeln!(
        o,
        "**At a glance:** {} ({failed} failed) · {} minted from it · {}, {present} still present · {} · {}\n",
        count(events.len(), "event"),
        count(r.derived_keys.len(), "key"),
        count(r.findings.len(), "finding"),
        count(r.blind_spots.len(), "blind spot"),
        count(plan.actions.len(), "plan action")
    );

    // What happened.
    let _ = writeln!(o, "## What happened\n");
    for p in narrative(r, &events) {
        let _ = writeln!(o, "{p}\n");
    }

    // What rekey did.
    let _ = writeln!(o, "## What rekey did\n");
    if r.actions_taken.is_empty() {
        let _ = writeln!(o, "Nothing yet: rekey only read.\n");
    } else {
        for (i, a) in r.actions_taken.iter().enumerate() {
            let _ = writeln!(o, "{}. {}", i + 1, md(a));
        }
        o.push('\n');
    }
    match &r.fence {
        Some(f) => {
            let _ = write!(o, "**Fence:** {}", code(&f.status));
            if let Some(p) = &f.policy_name {
                let _ = write!(o, ", policy {}", code(p));
            }
            if let Some(d) = &f.detail {
                let _ = write!(o, ": {}", md(d));
            }
            o.push_str("\n\n");
            if !f.allowed.is_empty() {
                let _ = writeln!(o, "The key is only allowed from the sources it was used from before the attack:\n");
                let _ = writeln!(o, "| Kind | Allowed source | Uses before the attack | First seen | Last seen |");
                let _ = writeln!(o, "|---|---|---:|---|---|");
                for s in &f.allowed {
                    let _ = writeln!(
                        o,
                        "| {} | {} | {} | {} | {} |",
                        md(&s.kind),
                        code(&s.value),
                        s.events,
                        opt_code(&s.first_seen),
                        opt_code(&s.last_seen)
                    );
                }
                o.push('\n');
            }
            if !f.excluded.is_empty() {
                let ex: Vec<_> = f.excluded.iter().map(|e| code(e)).collect();
                let _ = writeln!(o, "Left out of the fence: {}\n", ex.join(", "));
            }
        }
        None => {
            let _ = writeln!(o, "**Fence:** none.\n");
        }
    }
    match &r.cutover {
        Some(c) => {
            let _ = write!(o, "**Cutover:** {}", code(&c.outcome));
            if let Some(k) = &c.new_key_id {
                let _ = write!(o, ", new key {}", code(k));
            }
            if !c.targets.is_empty() {
                let t: Vec<_> = c.targets.iter().map(|t| code(t)).collect();
                let _ = write!(o, ", targets {}", t.join(", "));
            }
            if let Some(d) = &c.detail {
                let _ = write!(o, ": {}", md(d));
            }
            o.push_str("\n\n");
        }
        None => {
            let _ = writeln!(o, "**Cutover:** not run.\n");
        }
    }
    if r.sessions_revoked.is_empty() {
        let _ = writeln!(o, "**Sessions revoked:** none.\n");
    } else {
        let _ = writeln!(o, "**Sessions revoked** (sessions issued before the time are denied):\n");
        let _ = writeln!(o, "| Kind | Name | Policy | Issued before | Status |");
        let _ = writeln!(o, "|---|---|---|---|---|");
        for s in &r.sessions_revoked {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} |",
                md(&s.kind),
                code(&s.name),
                code(&s.policy_name),
                code(&s.issued_before),
                md(&s.status)
            );
        }
        o.push('\n');
    }

    // Findings.
    let _ = writeln!(o, "## Findings\n");
    if r.findings.is_empty() {
        let _ = writeln!(o, "None.\n");
    } else {
        let _ = writeln!(o, "| ID | Severity | Finding | Resource | Still present? | Evidence |");
        let _ = writeln!(o, "|---|---|---|---|---|---|");
        for f in &r.findings {
            let still = match f.still_present {
                Some(true) => "**yes**",
                Some(false) => "no",
                None => "—",
            };
            let ev: Vec<_> = f.evidence.iter().map(|e| code(e)).collect();
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {still} | {} |",
                md(&f.id),
                severity_word(f.severity),
                md(&f.title),
                code(&f.resource),
                ev.join(" ")
            );
        }
        o.push('\n');
        for f in r.findings.iter().filter(|f| !f.detail.is_empty()) {
            let _ = writeln!(o, "- **{}** ({}): {}", md(&f.id), md(&f.kind), md(&f.detail));
        }
        o.push('\n');
    }

    if let Some(review) = &r.review {
        o.push_str(&review.markdown());
    }

    // Timeline.
    let _ = writeln!(o, "## Timeline\n");
    let ok: Vec<_> = events.iter().filter(|e| !e.failed).collect();
    let bad: Vec<_> = events.iter().filter(|e| e.failed).collect();
    if events.is_empty() {
        let _ = writeln!(o, "No events from the key or keys it minted in the window.\n");
    } else {
        let _ = writeln!(o, "Calls that succeeded, oldest first ({}):\n", ok.len());
        timeline_table(&mut o, &ok, false);
        if !bad.is_empty() {
            let _ = writeln!(o, "### Failed calls\n\nAttempts that AWS refused ({}):\n", bad.len());
            timeline_table(&mut o, &bad, true);
        }
    }

    // Blind spots.
    let _ = writeln!(o, "## Blind spots\n");
    if r.blind_spots.is_empty() {
        let _ = writeln!(o, "None found in the sources read.\n");
    } else {
        for b in &r.blind_spots {
            let _ = write!(o, "- **{}**: {}", md(&b.kind), md(&b.detail));
            if !b.evidence.is_empty() {
                let ev: Vec<_> = b.evidence.iter().map(|e| code(e)).collect();
                let _ = write!(o, " (evidence: {})", ev.join(", "));
            }
            o.push('\n');
        }
        o.push('\n');
    }

    // Sources.
    let _ = writeln!(o, "## Sources\n");
    if r.sources.is_empty() {
        let _ = writeln!(o, "No source of events was read.\n");
    } else {
        let _ = writeln!(o, "| Kind | Location | Status | Events | Covers |");
        let _ = writeln!(o, "|---|---|---|---:|---|");
        for s in &r.sources {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} |",
                md(&s.kind),
                code(&s.location),
                md(&s.status),
                s.events,
                md(&s.covers)
            );
        }
        o.push('\n');
    }

    // What is left to do.
    let _ = writeln!(o, "## What is left to do\n");
    for t in &r.todo {
        let _ = writeln!(o, "- [ ] {}", md(t));
    }
    if !r.todo.is_empty() {
        o.push('\n');
    }
    if plan.actions.is_empty() {
        let _ = writeln!(o, "The containment plan is empty: nothing rekey can undo for you.\n");
    } else {
        let _ = writeln!(
            o,
            "### Containment plan ({} actions)\n\nReview `plan.json`, then apply it (each action records how \
             to undo it):\n\n```sh\n{}\n```\n",
            plan.actions.len(),
            contain_command(plan_path)
        );
        for (i, a) in plan.actions.iter().enumerate() {
            let undo = match &a.undo {
                Undo::None { reason } => format!("cannot be undone: {}", md(reason)),
                Undo::Action { action } => format!("undo: {}", code(&action_type(action))),
                other => format!("undo: {}", code(&undo_type(other))),
            };
            let _ = writeln!(
                o,
                "{}. **{}** (answers {}) {} — {}; {undo}",
                i + 1,
                md(&a.id),
                md(&a.finding),
                md(&a.description),
                code(&action_type(&a.action))
            );
        }
        o.push('\n');
    }

    // Draft reply.
    let _ = writeln!(o, "## Draft reply to the AWS support case\n");
    let _ = writeln!(o, "Check every line before sending; edit what rekey could not know.\n");
    for line in support_reply(r, &events).lines() {
        if line.is_empty() {
            let _ = writeln!(o, ">");
        } else {
            let _ = writeln!(o, "> {line}");
        }
    }
    o
}

fn action_type(a: &impl serde::Serialize) -> String {
    serde_json::to_value(a)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn undo_type(u: &Undo) -> String {
    action_type(u)
}

fn timeline_table(o: &mut String, events: &[&&TimelineEvent], failed: bool) {
    if failed {
        let _ = writeln!(o, "| Time (UTC) | Key chain | Event | Error | Source IP | Categories | Notes |");
        let _ = writeln!(o, "|---|---|---|---|---|---|---|");
    } else {
        let _ = writeln!(o, "| Time (UTC) | Key chain | Event | Source IP | Categories | Notes |");
        let _ = writeln!(o, "|---|---|---|---|---|---|");
    }
    for ev in events.iter().take(MD_TIMELINE_LIMIT) {
        let cats: Vec<_> = ev.categories.iter().map(|c| category_word(*c)).collect();
        let name = format!("{}:{}", service(ev), ev.event_name);
        let mut row = format!("| {} | {} | {} ", code(&ev.time), code(&chain_label(ev)), code(&name));
        if failed {
            let _ = write!(row, "| {} ", opt_code(&ev.error_code));
        }
        let mut ip = opt_code(&ev.source_ip);
        if let Some(v) = &ev.vpc_endpoint_id {
            let _ = write!(ip, " via {}", code(v));
        }
        let _ = writeln!(
            row,
            "| {ip} | {} | {} |",
            cats.join(", "),
            ev.notes.iter().map(|n| md(n)).collect::<Vec<_>>().join("; ")
        );
        o.push_str(&row);
    }
    if events.len() > MD_TIMELINE_LIMIT {
        let _ =
            writeln!(o, "| … | | {} more in `report.json` and `report.html` | | | |", events.len() - MD_TIMELINE_LIMIT);
    }
    o.push('\n');
}

fn name_list(events: &[&TimelineEvent]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for e in events {
        match counts.iter_mut().find(|(n, _)| *n == e.event_name) {
            Some((_, c)) => *c += 1,
            None => counts.push((&e.event_name, 1)),
        }
    }
    let shown: Vec<String> =
        counts.iter().take(12).map(|(n, c)| if *c > 1 { format!("{} ×{c}", code(n)) } else { code(n) }).collect();
    let more = counts.len().saturating_sub(12);
    if more > 0 { format!("{} and {more} more", shown.join(", ")) } else { shown.join(", ") }
}

fn span(events: &[&TimelineEvent]) -> String {
    match (events.first(), events.last()) {
        (Some(a), Some(b)) if a.time != b.time => format!("{} to {}", code(&a.time), code(&b.time)),
        (Some(a), _) => format!("at {}", code(&a.time)),
        _ => String::new(),
    }
}

/// Paragraphs of "what happened", from the timeline and the findings.
fn narrative(r: &Report, events: &[&TimelineEvent]) -> Vec<String> {
    let mut out = Vec::new();
    let Some(first) = events.first() else {
        out.push(format!(
            "No event from the key or a key it minted was found between {} and {}. That is not proof of no \
             use: check the blind spots and sources below.",
            code(&r.window_start),
            code(&r.window_end)
        ));
        return out;
    };
    let suspects = suspect_ips(r);
    let mut p =
        format!("The first use of the key in the window is {} at {}", code(&first.event_name), code(&first.time));
    if let Some(ip) = &first.source_ip {
        let _ = write!(p, " from {}", code(ip));
    }
    if let Some(ua) = &first.user_agent {
        let _ = write!(p, " (user agent {})", code(ua));
    }
    p.push('.');
    if first.event_name == "GetCallerIdentity" {
        p.push_str(" That is a caller checking that a stolen key works: the key was taken, not guessed.");
    }
    if !suspects.is_empty() {
        let ips: Vec<_> = suspects.iter().map(|i| code(i)).collect();
        let _ = write!(
            p,
            " Calls came from {} address{} outside the key's usual sources: {}.",
            suspects.len(),
            if suspects.len() == 1 { "" } else { "es" },
            ips.join(", ")
        );
    }
    out.push(p);

    let mut steps = Vec::new();
    for cat in STORY_ORDER {
        let evs: Vec<&TimelineEvent> =
            events.iter().copied().filter(|e| !e.failed && e.categories.contains(&cat)).collect();
        if evs.is_empty() {
            continue;
        }
        let mut word = category_word(cat).to_string();
        if let Some(c) = word.get_mut(0..1) {
            c.make_ascii_uppercase();
        }
        steps.push(format!(
            "- **{word}** ({} call{}, {}): {}.",
            evs.len(),
            if evs.len() == 1 { "" } else { "s" },
            span(&evs),
            name_list(&evs)
        ));
    }
    if !steps.is_empty() {
        out.push(format!("What the calls that succeeded did, by kind:\n\n{}", steps.join("\n")));
    }

    if !r.derived_keys.is_empty() {
        let mut lines = Vec::new();
        for d in &r.derived_keys {
            let used: Vec<&TimelineEvent> = events
                .iter()
                .copied()
                .filter(|e| e.signer.as_deref() == Some(d.key.as_str()) || e.chain.last() == Some(&d.key))
                .collect();
            let mut l =
                format!("- {} minted by {} through {}", code(&d.key), code(&short_key(&d.parent)), code(&d.event_name));
            if let Some(t) = &d.event_time {
                let _ = write!(l, " at {}", code(t));
            }
            if let Some(pr) = &d.principal {
                let _ = write!(l, ", acting as {}", code(pr));
            }
            if used.is_empty() {
                l.push_str("; no call signed with it was found.");
            } else {
                let _ = write!(
                    l,
                    "; it made {} call{}: {}.",
                    used.len(),
                    if used.len() == 1 { "" } else { "s" },
                    name_list(&used)
                );
            }
            lines.push(l);
        }
        out.push(format!(
            "The key minted {}, and the attacker used {} too (rotating the leaked key does not end {}):\n\n{}",
            count(r.derived_keys.len(), "other key"),
            if r.derived_keys.len() == 1 { "it" } else { "them" },
            if r.derived_keys.len() == 1 { "it" } else { "them" },
            lines.join("\n")
        ));
    }

    let failed: Vec<&TimelineEvent> = events.iter().copied().filter(|e| e.failed).collect();
    if !failed.is_empty() {
        let mut by_code: BTreeMap<&str, usize> = BTreeMap::new();
        for e in &failed {
            *by_code.entry(e.error_code.as_deref().unwrap_or("error")).or_default() += 1;
        }
        let codes: Vec<_> = by_code.iter().map(|(c, n)| format!("{} ×{n}", code(c))).collect();
        out.push(format!(
            "{} call{} failed ({}): {}. They show intent, not effect; they are listed apart in the timeline.",
            failed.len(),
            if failed.len() == 1 { "" } else { "s" },
            codes.join(", "),
            name_list(&failed)
        ));
    }

    if !r.findings.is_empty() {
        let mut by_sev: BTreeMap<std::cmp::Reverse<Severity>, usize> = BTreeMap::new();
        for f in &r.findings {
            *by_sev.entry(std::cmp::Reverse(f.severity)).or_default() += 1;
        }
        let sev: Vec<_> = by_sev.iter().map(|(s, n)| format!("{n} {}", severity_word(s.0))).collect();
        let present: Vec<_> = r.findings.iter().filter(|f| f.still_present == Some(true)).map(|f| md(&f.id)).collect();
        let mut p = format!(
            "rekey found {} thing{} to act on ({})",
            r.findings.len(),
            if r.findings.len() == 1 { "" } else { "s" },
            sev.join(", ")
        );
        if present.is_empty() {
            p.push_str("; none of them is still in the account.");
        } else {
            let _ = write!(
                p,
                "; **{} still exist{} in the account**: {}.",
                present.len(),
                if present.len() == 1 { "s" } else { "" },
                present.join(", ")
            );
        }
        out.push(p);
    }

    if let Some(last) = events.last() {
        let mut p = format!(
            "The last event from the key or a key it minted is {} at {}",
            code(&last.event_name),
            code(&last.time)
        );
        if let (Some(a), Some(b)) = (parse_time(&last.time), parse_time(&r.window_end))
            && let Ok(d) = b.duration_since(a)
        {
            let _ = write!(
                p,
                "; nothing after it for {} up to the window's end ({})",
                human_duration(d.as_secs()),
                code(&r.window_end)
            );
        }
        p.push('.');
        out.push(p);
    }
    out
}

/// A polite, factual reply to the AWS support case, from what the report knows.
fn support_reply(r: &Report, events: &[&TimelineEvent]) -> String {
    let mut o = String::new();
    let who = match (&r.owner.user, r.owner.is_root) {
        (_, true) => "the account's root user".to_string(),
        (Some(u), _) => format!("IAM user {}", code(u)),
        _ => "an IAM principal".into(),
    };
    let acct = r.owner.account.as_deref().map(|a| format!(" in account {}", code(a))).unwrap_or_default();
    let _ = writeln!(o, "Hello,\n");
    let _ = writeln!(
        o,
        "Thank you for the notification about access key {} ({who}{acct}). Here is what we have done:\n",
        code(&r.access_key_id)
    );
    let status = r.owner.key_status.as_deref().unwrap_or("unknown");
    let rotated = r.cutover.as_ref().filter(|c| c.outcome == "rotated" || c.outcome == "deactivated_now");
    let mut s = match rotated {
        Some(c) => {
            let mut s = "- The key was rotated".to_string();
            if let Some(k) = &c.new_key_id {
                let _ = write!(s, " (the application now uses {})", code(k));
            }
            s
        }
        None => "- The key has not been rotated yet".to_string(),
    };
    if status.eq_ignore_ascii_case("inactive") {
        let _ = write!(s, "; the exposed key was deactivated and is inactive as of {}.", code(&r.generated_at));
    } else if status.eq_ignore_ascii_case("active") {
        s.push_str("; the exposed key is still active and will be deactivated as soon as the cutover is confirmed.");
    } else {
        let _ = write!(s, "; the exposed key's status is {}.", code(status));
    }
    let _ = writeln!(o, "{s}");
    let revoked: Vec<_> = r.sessions_revoked.iter().filter(|s| s.status == "revoked").map(|s| code(&s.name)).collect();
    if !revoked.is_empty() {
        let _ =
            writeln!(o, "- Sessions issued from the compromised credentials were revoked for {}.", revoked.join(", "));
    }
    let srcs: Vec<_> = r.sources.iter().filter(|s| s.status == "ok").map(|s| md(&s.location)).collect();
    let _ = writeln!(
        o,
        "- We reviewed CloudTrail for {} to {}{}, following the key and every temporary credential it obtained.",
        code(&r.window_start),
        code(&r.window_end),
        if srcs.is_empty() { String::new() } else { format!(" ({})", srcs.join(", ")) }
    );
    let ips = suspect_ips(r);
    if !ips.is_empty() {
        let ips: Vec<_> = ips.iter().map(|i| code(i)).collect();
        let _ = writeln!(
            o,
            "- We found {} calls made with the key or credentials derived from it from {}.",
            events.len(),
            ips.join(", ")
        );
    }
    let resources: Vec<_> = r.findings.iter().filter(|f| f.still_present.is_some()).collect();
    if !resources.is_empty() {
        let present = resources.iter().filter(|f| f.still_present == Some(true)).count();
        let names: Vec<_> = resources.iter().map(|f| format!("{} ({})", md(&f.title), code(&f.resource))).collect();
        let state = if present == 0 {
            "All of them have been removed.".to_string()
        } else {
            format!("{present} of them are being removed now.")
        };
        let _ = writeln!(o, "- Unauthorized resources found: {}. {state}", names.join("; "));
    }
    if let Some(last) = events.last() {
        let _ = writeln!(
            o,
            "- No further use of the key or its derived credentials has been observed since {} (checked through {}).",
            code(&last.time),
            code(&r.window_end)
        );
    }
    let _ = writeln!(o, "\nPlease let us know if you see any further activity or need more information.\n\nRegards,");
    o
}

// ---------------------------------------------------------------------------------------------
// HTML
// ---------------------------------------------------------------------------------------------

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// JSON that is safe inside `<script type="application/json">`: no `<` at all (so neither `</script`
/// nor `<!--` can occur), and `>`/`&` escaped too for good measure. Only strings can hold them, and
/// `\u003c` is the same string to `JSON.parse`.
fn script_json(v: &serde_json::Value) -> io::Result<String> {
    let s = serde_json::to_string(v).map_err(io::Error::other)?;
    Ok(s.replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026"))
}

/// Writes `report.html`.
pub fn html(r: &Report, plan: &Plan, plan_path: &Path) -> io::Result<String> {
    let data = serde_json::json!({
        "report": r,
        "plan": plan,
        "priority": priority(r),
        "command": contain_command(plan_path),
    });
    let title = format!("{} {} · rekey incident {}", priority(r), severity_word(r.severity), r.access_key_id);
    Ok(HTML_TEMPLATE
        .replace("{{TITLE}}", &html_escape(&title))
        .replace("{{CSS}}", CSS)
        .replace("{{JS}}", JS)
        .replace("{{DATA}}", &script_json(&data)?))
}

const HTML_TEMPLATE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<title>{{TITLE}}</title>
<style>{{CSS}}</style>
</head>
<body>
<noscript><p class="noscript">This page draws the report with JavaScript. Without it, read report.md next to this file.</p></noscript>
<div id="app"></div>
<script type="application/json" id="rekey-data">{{DATA}}</script>
<script>{{JS}}</script>
</body>
</html>
"##;

const CSS: &str = r##"
:root{--bg:#f4f6fa;--card:#fff;--ink:#1c2333;--muted:#667085;--line:#e3e8ef;--head:#0f172a;
--recon:#2563eb;--persist:#dc2626;--privesc:#ea580c;--evasion:#9333ea;--exfil:#ca8a04;--account:#db2777;--ses:#0d9488;--other:#94a3b8}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;font-size:12.5px}
.noscript{padding:2em;font-size:16px}
header.top{background:var(--head);color:#e2e8f0;padding:22px 32px 18px}
.top .row{display:flex;gap:20px;align-items:center;flex-wrap:wrap}
.badge-sev{border-radius:10px;padding:10px 16px;text-align:center;font-weight:800;color:#fff;min-width:96px;line-height:1.1}
.badge-sev .p{font-size:26px;display:block}.badge-sev .s{font-size:11px;letter-spacing:.12em;text-transform:uppercase}
.sev-critical{background:#b91c1c}.sev-high{background:#ea580c}.sev-medium{background:#ca8a04}.sev-low{background:#2563eb}.sev-info{background:#64748b}
.top h1{margin:0;font-size:22px;font-weight:650;color:#fff}
.top h1 code{font-size:21px;background:#1e293b;padding:2px 8px;border-radius:6px;color:#fde68a}
.top .meta{margin-top:6px;display:flex;flex-wrap:wrap;gap:6px 18px;color:#cbd5e1;font-size:13px}
.top .meta b{color:#94a3b8;font-weight:500;margin-right:4px}
.rootbanner{background:#7f1d1d;color:#fff;border:2px solid #fca5a5;border-radius:10px;padding:12px 16px;margin-top:14px;font-size:14px}
.rootbanner strong{font-size:15px}
.stats{display:flex;gap:12px;flex-wrap:wrap;padding:10px 0 0}
.stat{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:10px 16px;min-width:120px}
.stat .n{font-size:22px;font-weight:750}.stat .l{color:var(--muted);font-size:12px}
.stat.alert .n{color:#dc2626}
main{padding:8px 32px 40px;max-width:1400px}
section{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:16px 20px;margin-top:16px}
section h2{margin:0 0 12px;font-size:17px}
section h2 .sub{color:var(--muted);font-weight:400;font-size:13px;margin-left:8px}
.filters{display:flex;flex-wrap:wrap;gap:8px;margin-bottom:12px}
.filters button{border:1px solid var(--line);background:#fff;border-radius:999px;padding:4px 12px 4px 8px;font:inherit;font-size:12.5px;cursor:pointer;display:flex;align-items:center;gap:6px;color:var(--ink)}
.filters button .dot{width:10px;height:10px;border-radius:50%}
.filters button.off{opacity:.4;text-decoration:line-through}
.filters button .cnt{color:var(--muted)}
.lanes{border:1px solid var(--line);border-radius:10px;padding:10px 12px 4px;margin-bottom:14px;background:#fbfcfe}
.lane{display:flex;align-items:center;height:30px}
.lane .lbl{width:210px;flex:none;font-size:12px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;color:var(--muted)}
.lane .track{position:relative;flex:1;height:100%;border-bottom:1px dashed var(--line)}
.lane .tick{position:absolute;top:50%;width:11px;height:11px;margin:-5.5px 0 0 -5.5px;border-radius:50%;border:2px solid #fff;box-shadow:0 0 0 1px rgba(0,0,0,.15);cursor:pointer}
.lane .tick.failed{background:repeating-linear-gradient(45deg,#cbd5e1 0 2px,#fff 2px 4px)!important}
.axis{position:relative;margin-left:210px;height:22px;font-size:11px;color:var(--muted)}
.axis span{position:absolute;transform:translateX(-50%);white-space:nowrap;top:4px}
.axis span:first-child{transform:none}.axis span:last-child{transform:translateX(-100%)}
.day{font-weight:700;color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.06em;margin:14px 0 6px}
.gap{color:var(--muted);font-size:12px;margin:6px 0 6px 84px;display:flex;align-items:center;gap:8px}
.gap:before,.gap:after{content:"";flex:0 0 28px;border-top:2px dotted #cbd5e1}
.run{border-left:4px solid var(--keyc,#64748b);border-radius:4px;padding:2px 0 2px 0;margin:6px 0}
.run>.runhead{font-size:12px;color:var(--muted);padding:2px 10px 4px}
.run>.runhead code{color:var(--ink);background:#eef2f7;padding:1px 5px;border-radius:4px}
.run.derived{background:#fafaff}
.ev{display:grid;grid-template-columns:72px 14px 1fr;gap:0 10px;padding:5px 10px;border-radius:6px;align-items:start}
.ev:hover{background:#f1f5f9}
.ev.hl{background:#fef9c3;box-shadow:0 0 0 2px #facc15 inset}
.ev .t{font-variant-numeric:tabular-nums;color:var(--muted);font-size:12.5px;padding-top:1px}
.ev .dot{width:12px;height:12px;border-radius:50%;margin-top:4px}
.ev .name{font-weight:650}
.ev .svc{color:var(--muted);font-weight:400;margin-right:2px}
.ev .line2{color:var(--muted);font-size:12px;display:flex;flex-wrap:wrap;gap:2px 12px;margin-top:1px}
.ev .ua{max-width:560px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;display:inline-block;vertical-align:bottom}
.ip.sus{color:#b91c1c;font-weight:600}.ip.ok{color:#15803d}
.chip{display:inline-block;border-radius:999px;padding:0 8px;font-size:11px;font-weight:600;color:#fff;margin-left:6px;vertical-align:1px}
.chip.fref{background:#fff;color:#b91c1c;border:1px solid #fca5a5;text-decoration:none}
.ev.failed{background:repeating-linear-gradient(135deg,#f8fafc 0 6px,#eef1f5 6px 12px);color:#64748b}
.ev.failed .name{text-decoration:line-through;text-decoration-color:#94a3b8;font-weight:500}
.ev.failed .dot{background:repeating-linear-gradient(45deg,#94a3b8 0 2px,#fff 2px 4px)!important;box-shadow:0 0 0 1px #94a3b8}
.err{background:#475569;color:#fff;border-radius:4px;padding:0 6px;font-size:11px;margin-left:6px;font-weight:600}
.note{color:#7c2d12;font-size:12px}
details.raw{margin-top:2px}details.raw summary{cursor:pointer;color:var(--muted);font-size:11.5px}
details.raw pre{background:#0f172a;color:#e2e8f0;padding:8px 10px;border-radius:6px;overflow:auto;max-height:260px;font-size:12px;margin:4px 0}
.hidden{display:none!important}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:12px}
.card{border:1px solid var(--line);border-left:6px solid var(--sevc,#64748b);border-radius:10px;padding:10px 14px;background:#fff}
.card .hd{display:flex;justify-content:space-between;align-items:center;gap:8px;font-size:12px;color:var(--muted)}
.card .ttl{font-weight:650;margin:4px 0 2px;font-size:14.5px}
.card .res{word-break:break-all;color:#334155}
.card .det{color:#475569;font-size:12.5px;margin-top:6px}
.card .evs{margin-top:6px;font-size:12px}
.card .evs a{margin-right:6px;color:#2563eb}
.pill{border-radius:999px;padding:1px 9px;font-size:11px;font-weight:700;letter-spacing:.04em;white-space:nowrap}
.pill.present{background:#dc2626;color:#fff}.pill.gone{background:#dcfce7;color:#166534}.pill.na{background:#f1f5f9;color:#64748b}
.blind{border:1px solid #fcd34d;background:#fffbeb;border-radius:10px;padding:10px 14px}
.blind .k{font-weight:700;color:#92400e}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{color:var(--muted);font-weight:600;font-size:12px}
.cmd{display:flex;align-items:center;gap:10px;background:#0f172a;color:#a7f3d0;border-radius:8px;padding:10px 14px;margin:4px 0 12px}
.cmd code{flex:1;font-size:13.5px;word-break:break-all}
.cmd button{background:#1e293b;color:#e2e8f0;border:1px solid #334155;border-radius:6px;padding:4px 10px;cursor:pointer;font:inherit;font-size:12px}
.two{display:grid;grid-template-columns:1fr 1fr;gap:16px}
@media (max-width:900px){.two{grid-template-columns:1fr}}
ul.todo{list-style:none;padding:0;margin:0}ul.todo li{padding:4px 0}ul.todo li:before{content:"☐ ";color:var(--muted)}
ol.did{margin:0;padding-left:22px}ol.did li{padding:2px 0}
.kv{color:var(--muted)}
.nav{display:flex;gap:18px;margin:14px 2px 0;font-size:13px}.nav a{color:#2563eb;text-decoration:none}.nav a:hover{text-decoration:underline}.empty{color:var(--muted);font-style:italic}
"##;

const JS: &str = r##"
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("rekey-data").textContent);
  const R = D.report, P = D.plan;
  const CATS = {
    reconnaissance: ["Reconnaissance", "var(--recon)"],
    privilege_escalation: ["Privilege escalation", "var(--privesc)"],
    persistence: ["Persistence", "var(--persist)"],
    defense_evasion: ["Defense evasion", "var(--evasion)"],
    exfiltration: ["Credential & data access", "var(--exfil)"],
    account_level: ["Account level", "var(--account)"],
    ses_abuse: ["SES abuse", "var(--ses)"],
    other: ["Other", "var(--other)"]
  };
  const SEV = { critical: "#b91c1c", high: "#ea580c", medium: "#ca8a04", low: "#2563eb", info: "#64748b" };
  const KEYC = ["#334155", "#7c3aed", "#0891b2", "#be185d", "#4d7c0f", "#b45309"];

  // Every string from the data goes through text nodes or attribute values, never markup.
  function h(tag, props) {
    const e = document.createElement(tag);
    if (props) for (const k of Object.keys(props)) {
      const v = props[k];
      if (v === undefined || v === null) continue;
      if (k === "class") e.className = v;
      else if (k === "style") e.style.cssText = v;
      else if (k.slice(0, 2) === "on") e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, String(v));
    }
    for (let i = 2; i < arguments.length; i++) add(e, arguments[i]);
    return e;
  }
  function add(e, k) {
    if (k === undefined || k === null || k === false) return;
    if (Array.isArray(k)) { k.forEach(function (x) { add(e, x); }); return; }
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  function short(k) { return k && k.length > 12 ? k.slice(0, 4) + "\u2026" + k.slice(-4) : (k || "?"); }
  function ms(t) { const v = Date.parse(t); return isNaN(v) ? null : v; }
  function hms(t) { const v = ms(t); return v === null ? String(t) : new Date(v).toISOString().slice(11, 19); }
  function day(t) { const v = ms(t); return v === null ? "" : new Date(v).toISOString().slice(0, 10); }
  function dur(s) {
    s = Math.round(s);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.round(s / 60) + " min";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.round((s % 86400) / 3600) + " h";
  }
  function svc(ev) { return String(ev.event_source || "").replace(/\.amazonaws\.com$/, ""); }
  function cats(ev) { return ev.categories && ev.categories.length ? ev.categories : ["other"]; }
  function catColor(c) { return (CATS[c] || CATS.other)[1]; }
  function catName(c) { return (CATS[c] || [c])[0]; }
  function chainKey(ev) { return (ev.chain && ev.chain.length ? ev.chain : [ev.signer || "?"]).join(">"); }
  function flash(id) {
    const el = document.getElementById(id);
    if (!el) return;
    el.scrollIntoView({ block: "center" });
    el.classList.add("hl");
    setTimeout(function () { el.classList.remove("hl"); }, 1800);
  }

  const app = document.getElementById("app");
  const events = R.timeline.map(function (e, i) { return { e: e, i: i, t: ms(e.time) }; });
  events.sort(function (a, b) {
    if (a.t !== null && b.t !== null && a.t !== b.t) return a.t - b.t;
    if (a.t === null && b.t !== null) return 1;
    if (b.t === null && a.t !== null) return -1;
    return a.i - b.i;
  });
  const allowed = new Set((R.fence && R.fence.allowed || []).map(function (s) { return s.value; }));
  const derived = {};
  (R.derived_keys || []).forEach(function (d) { derived[d.key] = d; });
  const evidenceOf = {};
  R.findings.forEach(function (f) { f.evidence.forEach(function (id) { (evidenceOf[id] = evidenceOf[id] || []).push(f); }); });

  // Header.
  const sev = R.severity;
  const o = R.owner || {};
  const ownerText = o.is_root ? "root user" : (o.user || o.arn || "unknown owner");
  const meta = h("div", { class: "meta" },
    h("span", null, h("b", null, "owner"), ownerText),
    o.arn ? h("span", { class: "mono" }, o.arn) : null,
    o.account ? h("span", null, h("b", null, "account"), o.account) : null,
    h("span", null, h("b", null, "key status"), o.key_status || "unknown"),
    h("span", null, h("b", null, "window"), R.window_start + " \u2192 " + R.window_end),
    h("span", null, h("b", null, "report"), R.generated_at));
  const header = h("header", { class: "top" },
    h("div", { class: "row" },
      h("div", { class: "badge-sev sev-" + sev }, h("span", { class: "p" }, D.priority), h("span", { class: "s" }, sev)),
      h("div", { style: "flex:1;min-width:0" }, h("h1", null, "Leaked access key ", h("code", null, R.access_key_id)), meta)));
  if (o.is_root) {
    header.append(h("div", { class: "rootbanner" },
      h("strong", null, "This is the account's root key: a P1 incident. "),
      "Root can't be restrained by IAM policies. Rotate it now (delete it unless something truly needs one), audit all root activity for the last 30+ days, and contact AWS Security right away."));
  }
  if ((o.quarantine_policies || []).length) {
    header.append(h("div", { class: "meta" }, h("span", null, h("b", null, "AWS quarantine policy"), o.quarantine_policies.join(", "))));
  }
  app.append(header);
  const main = h("main");
  app.append(main);

  // Numbers at a glance.
  const failedN = events.filter(function (x) { return x.e.failed; }).length;
  const presentN = R.findings.filter(function (f) { return f.still_present === true; }).length;
  const ips = [];
  events.forEach(function (x) { const ip = x.e.source_ip; if (ip && !allowed.has(ip) && ips.indexOf(ip) < 0) ips.push(ip); });
  function stat(n, l, alert) { return h("div", { class: "stat" + (alert ? " alert" : "") }, h("div", { class: "n" }, n), h("div", { class: "l" }, l)); }
  main.append(h("div", { class: "stats" },
    stat(events.length, "events (" + failedN + " failed)"),
    stat(R.derived_keys.length, "keys minted from it", R.derived_keys.length > 0),
    stat(R.findings.length, "findings"),
    stat(presentN, "still present", presentN > 0),
    stat(R.blind_spots.length, "blind spots", R.blind_spots.length > 0),
    stat(ips.length, "suspect source IPs", ips.length > 0),
    stat(P.actions.length, "plan actions")));
  main.append(h("nav", { class: "nav" }, [["Timeline", "s-timeline"], ["Findings", "s-findings"], ["What is left to do", "s-what-is-left-to-do"],
    ["Blind spots & sources", "s-blind"], ["What rekey did", "s-what-rekey-did"]].map(function (l) {
    return h("a", { href: "#" + l[1] }, l[0]);
  })));

  function sec(title, sub) {
    const s = h("section", { id: "s-" + title.toLowerCase().replace(/[^a-z]+/g, "-") }, h("h2", null, title, sub ? h("span", { class: "sub" }, sub) : null));
    main.append(s);
    return s;
  }

  // Timeline.
  const tl = sec("Timeline", events.length ? events.length + " events from " + (events[0].e.time) + " to " + events[events.length - 1].e.time : "no events");
  const present = {};
  events.forEach(function (x) { cats(x.e).forEach(function (c) { present[c] = (present[c] || 0) + 1; }); });
  const active = {};
  Object.keys(present).forEach(function (c) { active[c] = true; });
  let showFailed = true;
  const filters = h("div", { class: "filters" });
  const catOrder = Object.keys(CATS).filter(function (c) { return present[c]; });
  Object.keys(present).forEach(function (c) { if (catOrder.indexOf(c) < 0) catOrder.push(c); });
  catOrder.forEach(function (c) {
    const b = h("button", { type: "button", "data-cat": c, onclick: function () { active[c] = !active[c]; b.classList.toggle("off", !active[c]); apply(); } },
      h("span", { class: "dot", style: "background:" + catColor(c) }), catName(c), h("span", { class: "cnt" }, present[c]));
    filters.append(b);
  });
  if (failedN) {
    const fb = h("button", { type: "button", "data-cat": "failed", onclick: function () { showFailed = !showFailed; fb.classList.toggle("off", !showFailed); apply(); } },
      h("span", { class: "dot", style: "background:repeating-linear-gradient(45deg,#94a3b8 0 2px,#fff 2px 4px)" }), "Failed calls", h("span", { class: "cnt" }, failedN));
    filters.append(fb);
  }
  tl.append(filters);

  // Swimlanes: one lane per key chain, events placed on a time axis.
  const lanes = [];
  const laneOf = {};
  events.forEach(function (x) {
    const k = chainKey(x.e);
    if (!(k in laneOf)) { laneOf[k] = lanes.length; lanes.push({ key: k, chain: x.e.chain && x.e.chain.length ? x.e.chain : [x.e.signer || "?"], evs: [] }); }
    lanes[laneOf[k]].evs.push(x);
  });
  const timed = events.filter(function (x) { return x.t !== null; });
  const nodes = [];
  if (timed.length) {
    let t0 = timed[0].t, t1 = timed[timed.length - 1].t;
    if (t1 === t0) { t0 -= 60000; t1 += 60000; }
    const pad = (t1 - t0) * 0.02;
    t0 -= pad; t1 += pad;
    const pos = function (t) { return ((t - t0) / (t1 - t0)) * 100; };
    const box = h("div", { class: "lanes" });
    lanes.forEach(function (L, li) {
      const depth = L.chain.length - 1;
      const last = L.chain[L.chain.length - 1];
      const d = derived[last];
      const label = (depth ? "\u21b3 ".repeat(1) : "") + short(last) + (d && d.principal ? " \u00b7 " + String(d.principal).split("/").slice(-2).join("/") : (depth ? "" : " (leaked key)"));
      const track = h("div", { class: "track" });
      L.evs.forEach(function (x) {
        if (x.t === null) return;
        const c = cats(x.e)[0];
        const dot = h("div", { class: "tick" + (x.e.failed ? " failed" : ""), style: "left:" + pos(x.t).toFixed(3) + "%;background:" + catColor(c),
          title: hms(x.e.time) + " " + x.e.event_name + (x.e.failed ? " (failed)" : ""),
          onclick: function () { flash("ev-" + x.e.event_id); } });
        dot.dataset.idx = String(x.i);
        nodes.push({ x: x, el: dot });
        track.append(dot);
      });
      box.append(h("div", { class: "lane", style: "padding-left:" + (depth * 14) + "px" },
        h("div", { class: "lbl mono", title: L.chain.join(" \u2192 "), style: "color:" + KEYC[li % KEYC.length] }, label), track));
    });
    const axis = h("div", { class: "axis" });
    const spanMs = t1 - t0;
    for (let i = 0; i <= 5; i++) {
      const t = t0 + (spanMs * i) / 5;
      const iso = new Date(t).toISOString();
      axis.append(h("span", { style: "left:" + (i * 20) + "%" }, spanMs > 86400000 * 2 ? iso.slice(5, 16).replace("T", " ") : iso.slice(11, 19)));
    }
    box.append(axis);
    tl.append(box);
  }

  // The list: day headers, gaps, runs of consecutive events by the same key chain.
  const list = h("div", { class: "list" });
  let run = null, prevKey = null, prevT = null, prevDay = null;
  const runs = [];
  events.forEach(function (x) {
    const e = x.e;
    const dy = day(e.time);
    if (dy && dy !== prevDay) { list.append(h("div", { class: "day" }, dy)); prevDay = dy; prevKey = null; }
    if (prevT !== null && x.t !== null && x.t - prevT > 10 * 60 * 1000) {
      list.append(h("div", { class: "gap" }, dur((x.t - prevT) / 1000) + " later"));
      prevKey = null;
    }
    const k = chainKey(e);
    if (k !== prevKey) {
      const chain = e.chain && e.chain.length ? e.chain : [e.signer || "?"];
      const depth = chain.length - 1;
      const last = chain[chain.length - 1];
      const d = derived[last];
      const head = h("div", { class: "runhead" }, depth ? "via " : "key ",
        chain.map(function (c, i) { return [i ? " \u2192 " : "", h("code", { title: c }, short(c))]; }),
        d ? " \u00b7 " + d.event_name + (d.principal ? " as " + d.principal : "") : (depth ? "" : " (the leaked key)"));
      run = h("div", { class: "run" + (depth ? " derived" : ""), style: "margin-left:" + (depth * 36) + "px;--keyc:" + KEYC[laneOf[k] % KEYC.length] }, head);
      runs.push(run);
      list.append(run);
      prevKey = k;
    }
    if (x.t !== null) prevT = x.t;
    const cs = cats(e);
    const ip = e.source_ip;
    const line2 = h("div", { class: "line2" },
      ip ? h("span", { class: "ip mono " + (allowed.has(ip) ? "ok" : "sus"), title: allowed.has(ip) ? "an allowed source of the fence" : "not a usual source of the key" }, ip) : null,
      e.vpc_endpoint_id ? h("span", { class: "mono", title: "VPC endpoint" }, "via " + e.vpc_endpoint_id) : null,
      e.region ? h("span", null, e.region) : null,
      e.user_agent ? h("span", { class: "ua mono", title: e.user_agent }, e.user_agent) : null,
      h("span", { class: "mono", title: "event id" }, e.event_id));
    const raw = {};
    ["request_parameters", "response_elements"].forEach(function (f) { if (e[f] !== null && e[f] !== undefined) raw[f] = e[f]; });
    if (Object.keys(raw).length) { if (e.arn) raw.arn = e.arn; if (e.seen_in && e.seen_in.length) raw.seen_in = e.seen_in; }
    const body = h("div", null,
      h("div", null,
        h("span", { class: "svc" }, svc(e) + ":"), h("span", { class: "name" }, e.event_name),
        e.failed ? h("span", { class: "err" }, "FAILED " + (e.error_code || "")) : null,
        e.categories.map(function (c) { return h("span", { class: "chip", style: "background:" + catColor(c) }, catName(c)); }),
        (evidenceOf[e.event_id] || []).map(function (f) { return h("a", { class: "chip fref", href: "#finding-" + encodeURIComponent(f.id), title: f.title }, f.id); })),
      line2,
      e.notes.length ? h("div", { class: "note" }, e.notes.join(" \u00b7 ")) : null,
      Object.keys(raw).length ? h("details", { class: "raw" }, h("summary", null, "request and response"), h("pre", null, JSON.stringify(raw, null, 2))) : null);
    const row = h("div", { class: "ev" + (e.failed ? " failed" : ""), id: "ev-" + e.event_id, "data-event": e.event_name, "data-cats": cs.join(" ") },
      h("div", { class: "t", title: e.time }, hms(e.time)),
      h("div", { class: "dot", style: "background:" + catColor(cs[0]) }),
      body);
    nodes.push({ x: x, el: row });
    run.append(row);
  });
  tl.append(list);

  function visible(e) {
    if (e.failed && !showFailed) return false;
    return cats(e).some(function (c) { return active[c]; });
  }
  function apply() {
    nodes.forEach(function (n) { n.el.classList.toggle("hidden", !visible(n.x.e)); });
    runs.forEach(function (r) { r.classList.toggle("hidden", !r.querySelector(".ev:not(.hidden)")); });
  }

  // Findings.
  const fs = sec("Findings", R.findings.length + " found, " + presentN + " still present");
  if (!R.findings.length) fs.append(h("p", { class: "empty" }, "None."));
  const cards = h("div", { class: "cards" });
  R.findings.forEach(function (f) {
    const pill = f.still_present === true ? h("span", { class: "pill present" }, "STILL PRESENT")
      : f.still_present === false ? h("span", { class: "pill gone" }, "GONE") : h("span", { class: "pill na" }, "N/A");
    cards.append(h("div", { class: "card", id: "finding-" + f.id, style: "--sevc:" + (SEV[f.severity] || "#64748b") },
      h("div", { class: "hd" }, h("span", null, h("b", { style: "color:" + (SEV[f.severity] || "#64748b") }, f.id), " \u00b7 " + f.severity + " \u00b7 " + f.kind), pill),
      h("div", { class: "ttl" }, f.title),
      h("div", { class: "res mono" }, f.resource),
      f.detail ? h("div", { class: "det" }, f.detail) : null,
      f.evidence.length ? h("div", { class: "evs" }, "evidence: ", f.evidence.map(function (id) {
        return h("a", { href: "#ev-" + encodeURIComponent(id), onclick: function (ev) { ev.preventDefault(); flash("ev-" + id); } }, id);
      })) : null));
  });
  fs.append(cards);

  // Blind spots and sources.
  const two = h("div", { class: "two" });
  const bs = h("section", { style: "margin-top:0" }, h("h2", null, "Blind spots", h("span", { class: "sub" }, "what the sources could not show")));
  if (!R.blind_spots.length) bs.append(h("p", { class: "empty" }, "None found in the sources read."));
  R.blind_spots.forEach(function (b) {
    bs.append(h("div", { class: "blind", style: "margin-bottom:8px" }, h("div", { class: "k" }, "\u26a0 " + b.kind), h("div", null, b.detail),
      b.evidence.length ? h("div", { class: "kv" }, "evidence: ", b.evidence.map(function (id) {
        return h("a", { href: "#ev-" + encodeURIComponent(id), onclick: function (ev) { ev.preventDefault(); flash("ev-" + id); } }, id + " ");
      })) : null));
  });
  const so = h("section", { style: "margin-top:0" }, h("h2", null, "Sources"));
  if (!R.sources.length) so.append(h("p", { class: "empty" }, "No source was read."));
  else so.append(h("table", null, h("tr", null, h("th", null, "Source"), h("th", null, "Status"), h("th", null, "Events"), h("th", null, "Covers")),
    R.sources.map(function (s) {
      return h("tr", null, h("td", null, h("b", null, s.kind), h("div", { class: "mono" }, s.location)),
        h("td", { style: "color:" + (s.status === "ok" ? "#15803d" : "#b91c1c") }, s.status), h("td", null, s.events), h("td", null, s.covers));
    })));
  two.append(bs, so);
  const wrap = h("div", { id: "s-blind", style: "margin-top:16px" }, two);
  main.append(wrap);

  // What is left: todo and the plan.
  const left = sec("What is left to do");
  if (R.todo.length) left.append(h("ul", { class: "todo" }, R.todo.map(function (t) { return h("li", null, t); })));
  left.append(h("h3", null, "Containment plan", h("span", { class: "sub kv", style: "font-weight:400;font-size:13px;margin-left:8px" }, P.actions.length + " actions \u00b7 review plan.json, then run:")));
  const copyBtn = h("button", { type: "button", onclick: function () {
    if (navigator.clipboard) navigator.clipboard.writeText(D.command).then(function () { copyBtn.textContent = "copied"; }, function () {});
  } }, "copy");
  left.append(h("div", { class: "cmd" }, h("code", null, D.command), copyBtn));
  if (P.actions.length) {
    left.append(h("table", null, h("tr", null, h("th", null, "#"), h("th", null, "Answers"), h("th", null, "Action"), h("th", null, "Undo")),
      P.actions.map(function (a) {
        const params = Object.assign({}, a.action); delete params.type;
        if (params.policy_document) params.policy_document = "(" + String(params.policy_document).length + " chars)";
        const u = a.undo || {};
        const undo = u.type === "none" ? "cannot be undone: " + (u.reason || "") : u.type === "action" ? (u.action && u.action.type) : u.type;
        return h("tr", null, h("td", null, h("b", null, a.id)),
          h("td", null, h("a", { href: "#finding-" + encodeURIComponent(a.finding), onclick: function (ev) { ev.preventDefault(); flash("finding-" + a.finding); } }, a.finding)),
          h("td", null, a.description, h("div", { class: "mono kv" }, a.action.type + " " + JSON.stringify(params))),
          h("td", { class: u.type === "none" ? "note" : "kv" }, undo));
      })));
  } else {
    left.append(h("p", { class: "empty" }, "The plan is empty."));
  }

  // What rekey did.
  const did = sec("What rekey did");
  if (R.actions_taken.length) did.append(h("ol", { class: "did" }, R.actions_taken.map(function (a) { return h("li", null, a); })));
  else did.append(h("p", { class: "empty" }, "Nothing yet: rekey only read."));
  const f = R.fence;
  if (f) {
    did.append(h("h3", null, "Fence: ", h("span", { class: "pill " + (f.status === "applied" ? "gone" : "na") }, f.status), f.policy_name ? h("code", { style: "margin-left:8px" }, f.policy_name) : null));
    if (f.detail) did.append(h("p", null, f.detail));
    if (f.allowed.length) did.append(h("table", null, h("tr", null, h("th", null, "Allowed source"), h("th", null, "Kind"), h("th", null, "Uses before the attack"), h("th", null, "First seen"), h("th", null, "Last seen")),
      f.allowed.map(function (s) { return h("tr", null, h("td", { class: "mono" }, s.value), h("td", null, s.kind), h("td", null, s.events), h("td", null, s.first_seen || "\u2014"), h("td", null, s.last_seen || "\u2014")); })));
    if (f.excluded.length) did.append(h("p", { class: "kv" }, "Left out of the fence: " + f.excluded.join(", ")));
  }
  const c = R.cutover;
  if (c) {
    did.append(h("h3", null, "Cutover: ", h("span", { class: "pill " + (c.outcome === "rotated" ? "gone" : "present") }, c.outcome)));
    did.append(h("p", null, c.new_key_id ? ["new key ", h("code", null, c.new_key_id)] : null, c.targets.length ? " \u00b7 targets: " + c.targets.join(", ") : null, c.detail ? [h("br"), c.detail] : null));
  }
  if (R.sessions_revoked.length) {
    did.append(h("h3", null, "Sessions revoked"));
    did.append(h("table", null, h("tr", null, h("th", null, "Principal"), h("th", null, "Policy"), h("th", null, "Issued before"), h("th", null, "Status")),
      R.sessions_revoked.map(function (s) { return h("tr", null, h("td", null, s.kind + " ", h("code", null, s.name)), h("td", { class: "mono" }, s.policy_name), h("td", null, s.issued_before), h("td", null, s.status)); })));
  }

  document.body.setAttribute("data-rendered", "ok");
})();
"##;
