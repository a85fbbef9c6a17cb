//! `report.md`: headline, what happened, what rekey did, findings, timeline, blind spots, sources,
//! what is left to do, and a draft reply to the AWS support case. Everything from the data is made
//! inert markdown (`md`, `code`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use super::*;
use crate::incident::model::Undo;

/// Timeline rows the markdown lists before pointing at `report.json` / `report.html` for the rest.
const MD_TIMELINE_LIMIT: usize = 1000;

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
    // Time to containment is the figure responders are asked for first.
    let t = &r.timings;
    let milestones: Vec<String> = [
        ("fence applied", t.fence_applied_s),
        ("cutover done", t.cutover_done_s),
        ("investigation done", t.investigation_done_s),
    ]
    .iter()
    .filter_map(|(what, at)| at.map(|s| format!("{what} {s:.1} s")))
    .collect();
    if !milestones.is_empty() {
        let _ = writeln!(o, "**Timings** (from the start of `rekey incident`): {}.\n", milestones.join(", "));
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
