//! What `rotate`, `resume` and `status` print: a human summary on stderr, or one JSON document on
//! stdout with `--output json`. Never a secret.

use crate::exit::Status;
use crate::rotate::journal::{Journals, Outcome};
use crate::rotate::machine::Report;

pub(super) fn refuse(json: bool, user: &str, error: &str) -> Status {
    if json {
        println!("{}", serde_json::to_string(&Report::refused(user, error)).expect("report serializes"));
    }
    eprintln!("rekey: {error}");
    Status::Refused
}

pub(super) fn print_report(r: &Report, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(r).expect("report serializes"));
        if let Some(e) = &r.error {
            eprintln!("rekey: {}: {e}", r.outcome);
        }
        return;
    }
    let key = |k: &Option<String>| k.clone().unwrap_or_else(|| "-".into());
    let headline = match r.outcome() {
        Outcome::Rotated => format!(
            "rotated {}: {} -> {} (old key {})",
            r.user,
            key(&r.old_key_id),
            key(&r.new_key_id),
            r.old_key_status.map(|s| s.to_string()).unwrap_or_else(|| "deleted".into())
        ),
        Outcome::Planned => format!("plan for {}: replace {} (dry run, nothing changed)", r.user, key(&r.old_key_id)),
        Outcome::RolledBack => {
            format!("rolled back {}: {} is still the Active key; every target was restored", r.user, key(&r.old_key_id))
        }
        Outcome::Failed => format!("FAILED and could not roll back fully for {}", r.user),
        Outcome::Refused => format!("refused for {}", r.user),
        Outcome::Held => format!(
            "held {}: every target holds {}, but {} stays Active: something rekey did not move still uses it",
            r.user,
            key(&r.new_key_id),
            key(&r.old_key_id)
        ),
    };
    println!("{headline}");
    if let Some(e) = &r.error {
        println!("  cause: {e}");
    }
    if !r.targets.is_empty() {
        println!("  targets:");
        for t in &r.targets {
            println!("    {:<48} {}", t.target, t.status);
            for c in &t.changes {
                println!("      would {c}");
            }
        }
    }
    if !r.steps.is_empty() {
        println!("  steps:");
        for s in &r.steps {
            println!("    {:<48} {:<8} {:>8} ms", s.name, s.status, s.duration_ms);
        }
    }
    if let Some(j) = &r.evidence {
        println!("  old key's use: {}", j.summary());
        if let Some(c) = &j.caveat {
            println!("    note: {c}");
        }
    }
    for w in &r.warnings {
        println!("  warning: {w}");
    }
    if !r.left.is_empty() {
        println!("  left to do:");
        for l in &r.left {
            println!("    - {l}");
        }
    }
    if let Some(j) = &r.journal {
        println!("  journal: {}", j.display());
    }
    if let Some(e) = r.error.as_ref().filter(|_| r.outcome() != Outcome::Rotated) {
        eprintln!("rekey: {}: {e}", r.outcome);
    } else if let Some(l) = r.left.first().filter(|_| r.outcome() == Outcome::Rotated) {
        // The key is rotated, but a copy of a secret was left: the journal stays open for `resume`.
        eprintln!("rekey: rotated, but {l}; run `rekey resume --user {}` to finish the cleanup", r.user);
    }
}

pub(super) async fn status(journals: &Journals, user: Option<&str>, json: bool) -> Status {
    let unfinished = match journals.list_unfinished().await {
        Ok(u) => u,
        Err(e) => {
            eprintln!("rekey: {e}");
            return Status::Internal;
        }
    };
    let rows: Vec<serde_json::Value> = unfinished
        .iter()
        .filter(|u| user.is_none_or(|name| name == u.state.begin.user))
        .map(|u| {
            let (path, s) = (&u.path, &u.state);
            serde_json::json!({
                "user": s.begin.user,
                "rotation_id": s.begin.rotation_id,
                "old_key_id": s.begin.old_key_id,
                "new_key_id": s.new_key_id,
                "last_step": s.last_step(),
                // Set when the rotation ended and only its cleanup is left.
                "ended": s.ended.map(|o| o.as_str()),
                "targets": s.begin.targets.iter().map(|t| &t.spec).collect::<Vec<_>>(),
                "journal": path,
                // Driven by a live process right now: not for `resume`, which would be refused.
                "running": u.running.is_some(),
                "owner": u.running.as_ref().and_then(|r| r.owner.as_ref()),
                "next": if u.running.is_some() { None } else { Some(format!("rekey resume --user {}", s.begin.user)) },
            })
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "unfinished": rows })).expect("serializes"));
    } else if rows.is_empty() {
        println!("no unfinished rotations in {journals}");
    } else {
        for (r, u) in rows.iter().zip(unfinished.iter().filter(|u| user.is_none_or(|n| n == u.state.begin.user))) {
            if let Some(running) = &u.running {
                println!(
                    "{}: rotation {} of {} is running ({}), at \"{}\"",
                    u.state.begin.user,
                    u.state.begin.rotation_id,
                    u.state.begin.old_key_id,
                    crate::rotate::journal::owner::describe(running.owner.as_ref()),
                    u.state.last_step(),
                );
                println!("  journal: {}", u.path.display());
                continue;
            }
            if let Some(outcome) = r["ended"].as_str() {
                println!(
                    "{}: rotation {} ended ({outcome}) but its cleanup did not finish (a backup may still hold a \
                     secret); run `{}`",
                    r["user"].as_str().unwrap_or_default(),
                    r["rotation_id"].as_str().unwrap_or_default(),
                    r["next"].as_str().unwrap_or_default(),
                );
                println!("  journal: {}", r["journal"].as_str().unwrap_or_default());
                continue;
            }
            println!(
                "{}: unfinished rotation {} of {} (new key {}), stopped at \"{}\"; run `{}`",
                r["user"].as_str().unwrap_or_default(),
                r["rotation_id"].as_str().unwrap_or_default(),
                r["old_key_id"].as_str().unwrap_or_default(),
                r["new_key_id"].as_str().unwrap_or("not created"),
                r["last_step"].as_str().unwrap_or_default(),
                r["next"].as_str().unwrap_or_default(),
            );
            println!("  journal: {}", r["journal"].as_str().unwrap_or_default());
        }
    }
    Status::Ok
}
