//! `env:<path>`: a dotenv file that an app reads its key from.
//!
//! Only the bytes of the two values change; every other byte of the file (comments, order, quoting,
//! `export`, line endings, a missing final newline) stays as the user wrote it, so a rotation shows
//! up in a diff as exactly two changed values. Writes are atomic (temp file, fsync, rename, fsync of
//! the folder) because an app restarting in the middle must read the old file or the new one, never
//! half of one.
//!
//! The snapshot cannot hold the old file (it contains the old secret and is journalled), so it
//! points at a backup written next to the file, with the same mode, and records its length and hash
//! to make sure the rollback restores exactly what was captured.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions, Permissions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::file::{RunError, backup_path, fnv1a64, parent, redact, run_sh, sync_dir, write_atomic, write_atomic_with};
use crate::{ErrorKind, NewKey, Options, Preflight, Snapshot, Target, TargetError, TargetSpec};

pub struct EnvFileTarget {
    file: EnvFile,
    restart_cmd: Option<String>,
    restart_timeout: Duration,
}

/// The part of the target that blocking file work needs, cloned into `spawn_blocking`.
#[derive(Clone)]
struct EnvFile {
    name: String,
    path: PathBuf,
    id_fields: Vec<String>,
    secret_fields: Vec<String>,
}

/// What the journal keeps about the file. Never its content: that holds the old secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EnvSnapshot {
    /// The file as resolved through symlinks, so rollback writes where apply wrote.
    path: PathBuf,
    backup: PathBuf,
    len: u64,
    /// FNV-1a 64 of the bytes, hex: a stable fingerprint to tell "restored" from "changed", too
    /// short to help anyone guess the secret inside.
    fnv1a64: String,
    mode: u32,
    uid: u32,
    gid: u32,
    id_var: String,
    secret_var: String,
    old_key_id: Option<String>,
}

impl EnvFileTarget {
    pub fn new(spec: &TargetSpec, options: &Options) -> Self {
        EnvFileTarget {
            file: EnvFile {
                name: spec.raw.clone(),
                path: PathBuf::from(&spec.location),
                id_fields: spec.id_fields(),
                secret_fields: spec.secret_fields(),
            },
            restart_cmd: options.restart_cmd.clone(),
            restart_timeout: options.restart_timeout,
        }
    }

    async fn blocking<T, F>(&self, work: F) -> Result<T, TargetError>
    where
        T: Send + 'static,
        F: FnOnce(EnvFile) -> Result<T, TargetError> + Send + 'static,
    {
        let file = self.file.clone();
        let name = self.file.name.clone();
        tokio::task::spawn_blocking(move || work(file))
            .await
            .map_err(|e| TargetError::new(name, ErrorKind::Backend(format!("file task failed: {e}"))))?
    }

    /// Runs `--restart-cmd` so the app picks up the file. The secret is never handed to it: the
    /// command reads the file like the app does.
    async fn restart(&self, snap: &EnvSnapshot, action: &str) -> Result<(), TargetError> {
        let Some(cmd) = &self.restart_cmd else {
            return Ok(());
        };
        let err = |kind| TargetError::new(&self.file.name, kind);
        let env = [("REKEY_FILE", snap.path.as_os_str()), ("REKEY_ACTION", OsStr::new(action))];
        match run_sh(cmd, &env, &[], self.restart_timeout).await {
            Ok(()) => Ok(()),
            Err(RunError::Spawn(e)) => {
                Err(err(ErrorKind::Consumers(format!("cannot start restart command `{cmd}`: {e}"))))
            }
            Err(RunError::Wait(e)) => Err(err(ErrorKind::Consumers(format!("restart command `{cmd}` failed: {e}")))),
            Err(RunError::Timeout) => {
                Err(err(ErrorKind::Timeout { what: format!("restart command `{cmd}`"), waited: self.restart_timeout }))
            }
            Err(RunError::Failed { status, last_stderr }) => {
                // The command may print the file it just read; keep any secret in it out of the error.
                let secrets = self.known_secrets(snap).await;
                let last = redact(&last_stderr, secrets.iter().map(|s| s.as_str()));
                Err(err(ErrorKind::Consumers(format!("restart command `{cmd}` exited with {status}: {last}"))))
            }
        }
    }

    /// The secret values in the file and its backup, to scrub them from command output.
    async fn known_secrets(&self, snap: &EnvSnapshot) -> Vec<Zeroizing<String>> {
        let snap = snap.clone();
        self.blocking(move |_| {
            let mut found = Vec::new();
            for path in [&snap.path, &snap.backup] {
                let Ok(bytes) = fs::read(path).map(Zeroizing::new) else {
                    continue;
                };
                let Ok(vars) = parse(&bytes) else { continue };
                if let Some(a) = vars.iter().find(|a| a.name == snap.secret_var) {
                    found.push(Zeroizing::new(String::from_utf8_lossy(&a.decoded).into_owned()));
                }
            }
            Ok(found)
        })
        .await
        .unwrap_or_default()
    }
}

#[async_trait]
impl Target for EnvFileTarget {
    fn name(&self) -> &str {
        &self.file.name
    }

    async fn preflight(&self) -> Result<Preflight, TargetError> {
        let restart = self.restart_cmd.clone();
        self.blocking(move |f| f.preflight(restart.as_deref())).await
    }

    async fn snapshot(&self) -> Result<Snapshot, TargetError> {
        let state = self.blocking(|f| f.snapshot()).await?;
        Ok(Snapshot::from_state(&state))
    }

    async fn apply(&self, key: &NewKey, snapshot: &Snapshot) -> Result<(), TargetError> {
        let snap: EnvSnapshot = snapshot.to_state(&self.file.name)?;
        let id = key.access_key_id.clone();
        let secret = Zeroizing::new(key.secret().to_string());
        self.blocking(move |f| f.apply(&snap, &id, &secret)).await
    }

    async fn wait_consumers(&self, snapshot: &Snapshot) -> Result<(), TargetError> {
        let snap: EnvSnapshot = snapshot.to_state(&self.file.name)?;
        self.restart(&snap, "apply").await
    }

    async fn current_key_id(&self) -> Result<Option<String>, TargetError> {
        self.blocking(|f| {
            let (_, bytes) = f.read()?;
            let vars = f.locate(&bytes)?;
            Ok(vars.key_id)
        })
        .await
    }

    async fn rollback(&self, snapshot: &Snapshot) -> Result<(), TargetError> {
        let snap: EnvSnapshot = snapshot.to_state(&self.file.name)?;
        let for_task = snap.clone();
        let restored = self.blocking(move |f| f.rollback(&for_task)).await?;
        if restored {
            self.restart(&snap, "rollback").await?;
        }
        Ok(())
    }

    async fn finish(&self, snapshot: &Snapshot) -> Result<(), TargetError> {
        let snap: EnvSnapshot = snapshot.to_state(&self.file.name)?;
        self.blocking(move |f| {
            match fs::remove_file(&snap.backup) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(f.io_err("cannot delete backup", &snap.backup, e)),
            }
            sync_dir(&snap.backup).map_err(|e| f.io_err("cannot sync folder of", &snap.backup, e))
        })
        .await
    }
}

/// The id and secret variables as found in the file.
struct Located {
    id: Assignment,
    secret: Assignment,
    key_id: Option<String>,
}

impl EnvFile {
    fn err(&self, kind: ErrorKind) -> TargetError {
        TargetError::new(&self.name, kind)
    }

    fn io_err(&self, what: &str, path: &Path, e: io::Error) -> TargetError {
        let detail = format!("{what} {}: {e}", path.display());
        self.err(match e.kind() {
            io::ErrorKind::NotFound => ErrorKind::NotFound(detail),
            io::ErrorKind::PermissionDenied => ErrorKind::AccessDenied(detail),
            _ => ErrorKind::Backend(detail),
        })
    }

    /// The real file behind the path (a symlinked `.env` is rewritten where it lives) and its bytes.
    fn read(&self) -> Result<(PathBuf, Zeroizing<Vec<u8>>), TargetError> {
        let path = fs::canonicalize(&self.path).map_err(|e| self.io_err("cannot open env file", &self.path, e))?;
        let bytes = fs::read(&path).map_err(|e| self.io_err("cannot read env file", &path, e))?;
        Ok((path, Zeroizing::new(bytes)))
    }

    /// Finds exactly one id and one secret variable, or says how to make the file usable.
    fn locate(&self, bytes: &[u8]) -> Result<Located, TargetError> {
        let path = self.path.display();
        let vars = parse(bytes).map_err(|e| self.err(ErrorKind::Unusable(format!("{path}: {e}"))))?;
        let find = |names: &[String], what: &str, option: &str| -> Result<Assignment, TargetError> {
            let present: Vec<&String> = names.iter().filter(|n| vars.iter().any(|a| &a.name == *n)).collect();
            let Some(name) = present.first() else {
                return Err(self.err(ErrorKind::Unusable(format!(
                    "{path} sets no {what} variable (looked for {}); add it, or name the variable with ?{option}=NAME",
                    names.join(", ")
                ))));
            };
            if present.len() > 1 {
                let both: Vec<&str> = present.iter().map(|s| s.as_str()).collect();
                return Err(self.err(ErrorKind::Unusable(format!(
                    "{path} sets {} as {what} variables; keep one, or pick one with ?{option}=NAME",
                    both.join(" and ")
                ))));
            }
            let hits: Vec<&Assignment> = vars.iter().filter(|a| &a.name == *name).collect();
            if hits.len() > 1 {
                let lines: Vec<String> = hits.iter().map(|a| a.line.to_string()).collect();
                return Err(self.err(ErrorKind::Unusable(format!(
                    "{path} sets {name} more than once (lines {}); remove all but one",
                    lines.join(", ")
                ))));
            }
            let a = hits[0].clone();
            if a.unterminated || a.multiline {
                return Err(self.err(ErrorKind::Unusable(format!(
                    "{path} line {}: the value of {name} is an unterminated or multi-line quoted value; put it on one line",
                    a.line
                ))));
            }
            Ok(a)
        };
        let id = find(&self.id_fields, "key id", "id-field")?;
        let secret = find(&self.secret_fields, "secret key", "secret-field")?;
        let key_id = Some(String::from_utf8_lossy(&id.decoded).trim().to_string()).filter(|s| !s.is_empty());
        Ok(Located { id, secret, key_id })
    }

    fn preflight(&self, restart_cmd: Option<&str>) -> Result<Preflight, TargetError> {
        let (path, bytes) = self.read()?;
        let vars = self.locate(&bytes)?;
        let meta = fs::metadata(&path).map_err(|e| self.io_err("cannot stat env file", &path, e))?;
        // Opening for write without truncating proves write access and changes nothing.
        OpenOptions::new().write(true).open(&path).map_err(|e| self.io_err("cannot write env file", &path, e))?;
        let dir = parent(&path);
        let probe = tempfile::Builder::new().prefix(".rekey-check-").tempfile_in(dir).map_err(|e| {
            self.io_err("cannot create files (needed for the atomic rewrite and backup) in folder", dir, e)
        })?;
        // The rewritten file is a new file: it belongs to whoever creates it unless that is root.
        let creator = probe.as_file().metadata().map(|m| m.uid()).ok();
        let changes_owner = creator.is_some_and(|uid| uid != 0 && uid != meta.uid());
        drop(probe);
        let backup = backup_path(&path);
        if let Some(problem) = self.stale_backup(&backup, &bytes)? {
            return Err(self.err(ErrorKind::Unusable(problem)));
        }

        let mut pf = Preflight { current_key_id: vars.key_id.clone(), ..Preflight::default() };
        pf.changes.push(format!(
            "rewrite {} and {} in {} (mode {:04o} kept)",
            vars.id.name,
            vars.secret.name,
            path.display(),
            meta.mode() & 0o7777
        ));
        pf.changes.push(format!("keep a backup of the old file at {} until the rotation ends", backup.display()));
        if let Some(cmd) = restart_cmd {
            pf.changes.push(format!("run `{cmd}` so the app reads the new file"));
        }
        if path != self.path {
            pf.warnings.push(format!(
                "{} is a link: the file it points to, {}, is rewritten",
                self.path.display(),
                path.display()
            ));
        }
        if changes_owner {
            pf.warnings.push(format!(
                "{} belongs to uid {}: rewriting it as uid {} makes it yours; run as root or as its owner to keep the owner",
                path.display(),
                meta.uid(),
                creator.unwrap_or_default()
            ));
        }
        if vars.key_id.is_none() {
            pf.warnings.push(format!("{} is empty in {}", vars.id.name, path.display()));
        }
        if meta.mode() & 0o004 != 0 {
            pf.warnings.push(format!(
                "{} is readable by every user (mode {:04o})",
                path.display(),
                meta.mode() & 0o7777
            ));
        }
        if restart_cmd.is_none() {
            pf.warnings.push(format!(
                "no --restart-cmd: apps that read {} only at start keep the old key until restarted",
                path.display()
            ));
        }
        Ok(pf)
    }

    /// A backup that differs from the file belongs to a rotation that never ended; overwriting it
    /// would lose the only copy of what that rotation must restore.
    fn stale_backup(&self, backup: &Path, current: &[u8]) -> Result<Option<String>, TargetError> {
        match fs::read(backup).map(Zeroizing::new) {
            Ok(old) if old.as_slice() == current => Ok(None),
            Ok(_) => Ok(Some(format!(
                "{} holds a backup from a rotation that did not finish; resume or roll back that rotation, \
                 or delete the backup if it is over",
                backup.display()
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io_err("cannot read backup", backup, e)),
        }
    }

    fn snapshot(&self) -> Result<EnvSnapshot, TargetError> {
        let (path, bytes) = self.read()?;
        let vars = self.locate(&bytes)?;
        let meta = fs::metadata(&path).map_err(|e| self.io_err("cannot stat env file", &path, e))?;
        let backup = backup_path(&path);
        if let Some(problem) = self.stale_backup(&backup, &bytes)? {
            return Err(self.err(ErrorKind::Unusable(problem)));
        }
        write_atomic(&backup, &bytes, &meta).map_err(|e| self.io_err("cannot write backup", &backup, e))?;
        Ok(EnvSnapshot {
            path,
            backup,
            len: bytes.len() as u64,
            fnv1a64: fnv1a64(&bytes),
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            id_var: vars.id.name,
            secret_var: vars.secret.name,
            old_key_id: vars.key_id,
        })
    }

    fn apply(&self, snap: &EnvSnapshot, key_id: &str, secret: &str) -> Result<(), TargetError> {
        let bytes =
            Zeroizing::new(fs::read(&snap.path).map_err(|e| self.io_err("cannot read env file", &snap.path, e))?);
        let vars = parse(&bytes).map_err(|e| self.err(ErrorKind::Unusable(format!("{}: {e}", snap.path.display()))))?;
        let find = |name: &str| {
            vars.iter()
                .find(|a| a.name == name)
                .cloned()
                .ok_or_else(|| self.err(ErrorKind::Unusable(format!("{} no longer sets {name}", snap.path.display()))))
        };
        let (id, sec) = (find(&snap.id_var)?, find(&snap.secret_var)?);
        if id.decoded.as_slice() == key_id.as_bytes() && sec.decoded.as_slice() == secret.as_bytes() {
            return Ok(());
        }
        // A file edited since the snapshot would lose that edit on rollback: stop before changing it.
        if !snap.matches(&bytes) {
            return Err(self.err(ErrorKind::Unusable(format!(
                "{} changed since its snapshot was taken; start the rotation again",
                snap.path.display()
            ))));
        }
        let new_id = encode(&id, key_id).map_err(|why| self.unwritable(&snap.id_var, why, snap))?;
        let new_secret = encode(&sec, secret).map_err(|why| self.unwritable(&snap.secret_var, why, snap))?;
        let mut edits = [(id.value.clone(), new_id), (sec.value.clone(), new_secret)];
        edits.sort_by_key(|(range, _)| std::cmp::Reverse(range.start));
        let mut out = Zeroizing::new(bytes.to_vec());
        for (range, value) in edits.iter() {
            out.splice(range.clone(), value.iter().copied());
        }
        let meta = fs::metadata(&snap.path).map_err(|e| self.io_err("cannot stat env file", &snap.path, e))?;
        write_atomic(&snap.path, &out, &meta).map_err(|e| self.io_err("cannot rewrite env file", &snap.path, e))
    }

    fn unwritable(&self, var: &str, why: &str, snap: &EnvSnapshot) -> TargetError {
        self.err(ErrorKind::Unusable(format!(
            "the new value of {var} cannot be written {why} in {}; quote it with double quotes",
            snap.path.display()
        )))
    }

    /// Returns whether the file had to be restored.
    fn rollback(&self, snap: &EnvSnapshot) -> Result<bool, TargetError> {
        let current = match fs::read(&snap.path) {
            Ok(b) => Some(Zeroizing::new(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(self.io_err("cannot read env file", &snap.path, e)),
        };
        if let Some(bytes) = &current
            && snap.matches(bytes)
        {
            let mode = fs::metadata(&snap.path).map(|m| m.mode() & 0o7777).unwrap_or(snap.mode);
            if mode != snap.mode {
                fs::set_permissions(&snap.path, Permissions::from_mode(snap.mode))
                    .map_err(|e| self.io_err("cannot restore mode of", &snap.path, e))?;
            }
            return Ok(false);
        }
        let backup = match fs::read(&snap.backup) {
            Ok(b) => Zeroizing::new(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Restored by hand, or the rotation finished: the old key id is all we can check.
                if let Some(bytes) = &current
                    && let Ok(vars) = parse(bytes)
                    && let Some(id) = vars.iter().find(|a| a.name == snap.id_var)
                    && Some(String::from_utf8_lossy(&id.decoded).trim()) == snap.old_key_id.as_deref()
                {
                    return Ok(false);
                }
                return Err(self.err(ErrorKind::NotFound(format!(
                    "backup {} is gone and {} does not hold the old key {}; restore the file by hand",
                    snap.backup.display(),
                    snap.path.display(),
                    snap.old_key_id.as_deref().unwrap_or("(none)")
                ))));
            }
            Err(e) => return Err(self.io_err("cannot read backup", &snap.backup, e)),
        };
        if !snap.matches(&backup) {
            return Err(self.err(ErrorKind::Backend(format!(
                "backup {} is not the one this rotation wrote (it changed since); restore {} by hand",
                snap.backup.display(),
                snap.path.display()
            ))));
        }
        write_atomic_with(&snap.path, &backup, snap.mode, snap.uid, snap.gid)
            .map_err(|e| self.io_err("cannot restore env file", &snap.path, e))?;
        Ok(true)
    }
}

impl EnvSnapshot {
    fn matches(&self, bytes: &[u8]) -> bool {
        bytes.len() as u64 == self.len && fnv1a64(bytes) == self.fnv1a64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Single,
    Double,
}

/// One `NAME=value` line. `value` is the byte range of the value inside the quotes (or of the bare
/// value), which is all a rewrite replaces.
#[derive(Clone)]
struct Assignment {
    name: String,
    line: usize,
    value: Range<usize>,
    quote: Quote,
    decoded: Zeroizing<Vec<u8>>,
    unterminated: bool,
    multiline: bool,
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Parses the assignments of a dotenv file. Lines that are not assignments are skipped: they are
/// kept byte for byte and are none of this adapter's business.
fn parse(bytes: &[u8]) -> Result<Vec<Assignment>, String> {
    let mut out = Vec::new();
    let mut pos = if bytes.starts_with(b"\xEF\xBB\xBF") { 3 } else { 0 };
    let mut line = 1;
    let line_end = |from: usize| bytes[from..].iter().position(|&b| b == b'\n').map_or(bytes.len(), |p| from + p);
    while pos < bytes.len() {
        let end = line_end(pos);
        let mut i = pos;
        let skip_blank = |mut i: usize| {
            while i < end && is_blank(bytes[i]) {
                i += 1;
            }
            i
        };
        i = skip_blank(i);
        if bytes[i..end].starts_with(b"export") && i + 6 < end && is_blank(bytes[i + 6]) {
            i = skip_blank(i + 6);
        }
        let name_start = i;
        while i < end && (bytes[i].is_ascii_alphanumeric() || matches!(bytes[i], b'_' | b'.' | b'-')) {
            i += 1;
        }
        let name_ok = i > name_start && !bytes[name_start].is_ascii_digit();
        let name_end = i;
        i = skip_blank(i);
        if !name_ok || i >= end || bytes[i] != b'=' {
            pos = end + 1;
            line += 1;
            continue;
        }
        let name = String::from_utf8_lossy(&bytes[name_start..name_end]).into_owned();
        let eq = i;
        i = skip_blank(i + 1);
        let start_line = line;
        let (quote, value, decoded, unterminated, next) = match bytes.get(i) {
            Some(&q @ (b'"' | b'\'')) if i < end => {
                let quote = if q == b'"' { Quote::Double } else { Quote::Single };
                let mut j = i + 1;
                let mut decoded = Vec::new();
                let mut closed = None;
                while j < bytes.len() {
                    let b = bytes[j];
                    if b == q {
                        closed = Some(j);
                        break;
                    }
                    if b == b'\\' && quote == Quote::Double && j + 1 < bytes.len() {
                        decoded.push(bytes[j + 1]);
                        j += 2;
                        continue;
                    }
                    if b == b'\n' {
                        line += 1;
                    }
                    decoded.push(b);
                    j += 1;
                }
                match closed {
                    Some(c) => (quote, i + 1..c, decoded, false, line_end(c) + 1),
                    // An unclosed quote: only that line is taken, so later lines are still parsed.
                    None => {
                        line = start_line;
                        (quote, i + 1..end, decoded, true, end + 1)
                    }
                }
            }
            _ => {
                // A bare value ends at a comment (a `#` after a blank) or the end of the line.
                let mut j = i;
                while j < end && !(bytes[j] == b'#' && j > eq + 1 && is_blank(bytes[j - 1])) {
                    j += 1;
                }
                while j > i && (is_blank(bytes[j - 1]) || bytes[j - 1] == b'\r') {
                    j -= 1;
                }
                // An empty value with a comment after it: the new value goes right after `=`.
                let range = if j == i && i < end && bytes[i] == b'#' { eq + 1..eq + 1 } else { i..j };
                (Quote::None, range.clone(), bytes[range].to_vec(), false, end + 1)
            }
        };
        out.push(Assignment {
            name,
            line: start_line,
            multiline: line != start_line,
            value,
            quote,
            decoded: Zeroizing::new(decoded),
            unterminated,
        });
        line += 1;
        pos = next;
    }
    Ok(out)
}

/// The new value as it must appear in the file for the quoting the user chose, or why it cannot.
fn encode(a: &Assignment, value: &str) -> Result<Vec<u8>, &'static str> {
    let bad: &[char] = match a.quote {
        Quote::None => &[' ', '\t', '#', '"', '\'', '\\', '$', '`'],
        Quote::Single => &['\''],
        Quote::Double => &['"', '\\', '$', '`'],
    };
    if value.chars().any(|c| c.is_control() || bad.contains(&c)) {
        return Err(match a.quote {
            Quote::None => "unquoted",
            Quote::Single => "in single quotes",
            Quote::Double => "in double quotes",
        });
    }
    Ok(value.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    const OLD_ID: &str = "AKIAOLDOLDOLDOLD0001";
    const NEW_ID: &str = "AKIANEWNEWNEWNEW0002";
    const NEW_SECRET: &str = "nEw/SeCrEt+kEy0123456789abcdefghijklmnop";

    fn key() -> NewKey {
        NewKey::new(NEW_ID, SecretString::from(NEW_SECRET.to_string()))
    }

    fn target_for(path: &Path, query: &str, options: &Options) -> EnvFileTarget {
        let spec: TargetSpec = format!("env:{}{query}", path.display()).parse().expect("spec");
        EnvFileTarget::new(&spec, options)
    }

    fn write(dir: &Path, name: &str, content: &[u8], mode: u32) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, Permissions::from_mode(mode)).unwrap();
        path
    }

    async fn rotate(content: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), ".env", content, 0o600);
        let t = target_for(&path, "", &Options::default());
        let snap = t.snapshot().await.unwrap();
        t.apply(&key(), &snap).await.unwrap();
        fs::read(&path).unwrap()
    }

    #[tokio::test]
    async fn rewrites_only_the_two_values() {
        let cases: &[(&[u8], &[u8])] = &[
            (
                b"# app\nAWS_ACCESS_KEY_ID=AKIAOLDOLDOLDOLD0001\nAWS_SECRET_ACCESS_KEY=old\nOTHER=1",
                b"# app\nAWS_ACCESS_KEY_ID=AKIANEWNEWNEWNEW0002\nAWS_SECRET_ACCESS_KEY=nEw/SeCrEt+kEy0123456789abcdefghijklmnop\nOTHER=1",
            ),
            (
                b"export AWS_ACCESS_KEY_ID=\"AKIAOLD\"  # id\r\n\r\nexport  AWS_SECRET_ACCESS_KEY = 'old secret' # s\r\n",
                b"export AWS_ACCESS_KEY_ID=\"AKIANEWNEWNEWNEW0002\"  # id\r\n\r\nexport  AWS_SECRET_ACCESS_KEY = 'nEw/SeCrEt+kEy0123456789abcdefghijklmnop' # s\r\n",
            ),
            (
                b"aws_secret_access_key=old   # trailing\naws_access_key_id=  # empty\n",
                b"aws_secret_access_key=nEw/SeCrEt+kEy0123456789abcdefghijklmnop   # trailing\naws_access_key_id=AKIANEWNEWNEWNEW0002  # empty\n",
            ),
            (
                b"\xEF\xBB\xBFMULTI=\"a\nAWS_ACCESS_KEY_ID=not-a-var\nb\"\nAWS_ACCESS_KEY_ID=x#y\nAWS_SECRET_ACCESS_KEY=\"o\\\"ld\"\n",
                b"\xEF\xBB\xBFMULTI=\"a\nAWS_ACCESS_KEY_ID=not-a-var\nb\"\nAWS_ACCESS_KEY_ID=AKIANEWNEWNEWNEW0002\nAWS_SECRET_ACCESS_KEY=\"nEw/SeCrEt+kEy0123456789abcdefghijklmnop\"\n",
            ),
        ];
        for (before, after) in cases {
            let got = rotate(before).await;
            assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(after));
        }
    }

    #[tokio::test]
    async fn preflight_reports_key_and_problems() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options::default();
        let path = write(
            dir.path(),
            "app.env",
            format!("AWS_ACCESS_KEY_ID={OLD_ID}\nAWS_SECRET_ACCESS_KEY=s\n").as_bytes(),
            0o640,
        );
        let pf = target_for(&path, "", &opts).preflight().await.unwrap();
        assert_eq!(pf.current_key_id.as_deref(), Some(OLD_ID));
        assert!(pf.changes[0].contains("mode 0640 kept"), "{:?}", pf.changes);

        let missing = target_for(&dir.path().join("nope.env"), "", &opts).preflight().await.unwrap_err();
        assert!(matches!(missing.kind, ErrorKind::NotFound(_)), "{missing}");
        assert!(missing.to_string().contains("nope.env"), "{missing}");

        let e = target_for(&path, "?id-field=KEY_ID", &opts).preflight().await.unwrap_err();
        assert!(matches!(&e.kind, ErrorKind::Unusable(m) if m.contains("KEY_ID") && m.contains("?id-field=")), "{e}");

        let twice = write(
            dir.path(),
            "twice.env",
            b"AWS_ACCESS_KEY_ID=a\nAWS_ACCESS_KEY_ID=b\nAWS_SECRET_ACCESS_KEY=s\n",
            0o600,
        );
        let e = target_for(&twice, "", &opts).preflight().await.unwrap_err();
        assert!(e.to_string().contains("lines 1, 2"), "{e}");

        let both = write(
            dir.path(),
            "both.env",
            b"AWS_ACCESS_KEY_ID=a\naws_access_key_id=b\nAWS_SECRET_ACCESS_KEY=s\n",
            0o600,
        );
        let e = target_for(&both, "", &opts).preflight().await.unwrap_err();
        assert!(e.to_string().contains("keep one"), "{e}");
    }

    #[tokio::test]
    async fn keeps_mode_and_rolls_back_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let original = b"AWS_ACCESS_KEY_ID=AKIAOLD\nAWS_SECRET_ACCESS_KEY=oldsecret";
        let path = write(dir.path(), ".env", original, 0o640);
        let t = target_for(&path, "", &Options::default());
        let snap = t.snapshot().await.unwrap();
        let backup = dir.path().join("..env.rekey-backup");
        assert_eq!(fs::metadata(&backup).unwrap().mode() & 0o7777, 0o640);
        let json = serde_json::to_string(&snap).unwrap();
        assert!(!json.contains("oldsecret"), "{json}");

        t.apply(&key(), &snap).await.unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o640);
        assert_eq!(t.current_key_id().await.unwrap().as_deref(), Some(NEW_ID));
        t.rollback(&snap).await.unwrap();
        t.rollback(&snap).await.unwrap();
        assert_eq!(fs::read(&path).unwrap(), original);

        // With the backup gone, a file that holds the old key again is fine; one that does not is not.
        fs::remove_file(&backup).unwrap();
        t.rollback(&snap).await.unwrap();
        t.apply(&key(), &snap).await.unwrap();
        let e = t.rollback(&snap).await.unwrap_err();
        assert!(matches!(e.kind, ErrorKind::NotFound(_)), "{e}");
        assert!(!e.to_string().contains(NEW_SECRET));
    }

    #[tokio::test]
    async fn refuses_a_stale_backup_and_a_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), ".env", b"AWS_ACCESS_KEY_ID=A\nAWS_SECRET_ACCESS_KEY=s\n", 0o600);
        let t = target_for(&path, "", &Options::default());
        let snap = t.snapshot().await.unwrap();
        fs::write(&path, b"AWS_ACCESS_KEY_ID=A\nAWS_SECRET_ACCESS_KEY=s\nX=1\n").unwrap();
        let e = t.apply(&key(), &snap).await.unwrap_err();
        assert!(e.to_string().contains("changed since"), "{e}");
        let e = t.snapshot().await.unwrap_err();
        assert!(e.to_string().contains("did not finish"), "{e}");
        assert!(t.preflight().await.is_err());
        t.finish(&snap).await.unwrap();
        t.finish(&snap).await.unwrap();
        t.snapshot().await.unwrap();
    }

    #[tokio::test]
    async fn follows_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let real = write(dir.path(), "real.env", b"AWS_ACCESS_KEY_ID=A\nAWS_SECRET_ACCESS_KEY=s\n", 0o600);
        let link = dir.path().join("link.env");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let t = target_for(&link, "", &Options::default());
        let snap = t.snapshot().await.unwrap();
        t.apply(&key(), &snap).await.unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert!(fs::read_to_string(&real).unwrap().contains(NEW_ID));
    }

    #[tokio::test]
    async fn rejects_a_value_its_quoting_cannot_hold() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), ".env", b"AWS_ACCESS_KEY_ID=A\nAWS_SECRET_ACCESS_KEY=s\n", 0o600);
        let t = target_for(&path, "", &Options::default());
        let snap = t.snapshot().await.unwrap();
        let odd = NewKey::new(NEW_ID, SecretString::from("has space#x".to_string()));
        let e = t.apply(&odd, &snap).await.unwrap_err();
        assert!(e.to_string().contains("unquoted") && !e.to_string().contains("has space"), "{e}");
    }

    #[tokio::test]
    async fn restart_command_runs_and_reports_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), ".env", b"AWS_ACCESS_KEY_ID=A\nAWS_SECRET_ACCESS_KEY=s\n", 0o600);
        let marker = dir.path().join("restarted");
        let ok = Options {
            restart_cmd: Some(format!("echo \"$REKEY_ACTION\" >> {}", marker.display())),
            ..Options::default()
        };
        let t = target_for(&path, "", &ok);
        let snap = t.snapshot().await.unwrap();
        t.apply(&key(), &snap).await.unwrap();
        t.wait_consumers(&snap).await.unwrap();
        t.rollback(&snap).await.unwrap();
        t.rollback(&snap).await.unwrap();
        assert_eq!(fs::read_to_string(&marker).unwrap(), "apply\nrollback\n");

        let failing = Options {
            restart_cmd: Some(format!("echo first >&2; grep SECRET {} >&2; exit 3", path.display())),
            ..Options::default()
        };
        let t = target_for(&path, "", &failing);
        t.apply(&key(), &snap).await.unwrap();
        let e = t.wait_consumers(&snap).await.unwrap_err();
        let text = e.to_string();
        assert!(matches!(e.kind, ErrorKind::Consumers(_)), "{text}");
        assert!(text.contains("3") && text.contains("[redacted]") && !text.contains(NEW_SECRET), "{text}");

        let slow = Options {
            restart_cmd: Some("sleep 5".into()),
            restart_timeout: Duration::from_millis(200),
            ..Options::default()
        };
        let e = target_for(&path, "", &slow).wait_consumers(&snap).await.unwrap_err();
        assert!(matches!(e.kind, ErrorKind::Timeout { .. }), "{e}");
    }

    struct TempEnv {
        dir: tempfile::TempDir,
        path: PathBuf,
    }

    #[async_trait]
    impl crate::conformance::Fixture for TempEnv {
        fn target(&self) -> Box<dyn Target> {
            Box::new(target_for(&self.path, "", &Options::default()))
        }

        async fn observe(&self) -> Vec<u8> {
            let mut out = fs::read(&self.path).unwrap();
            out.extend(format!("\nmode {:o}", fs::metadata(&self.path).unwrap().mode()).bytes());
            out
        }

        fn old_key_id(&self) -> Option<String> {
            Some(OLD_ID.to_string())
        }

        async fn residue(&self) -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(self.dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != ".env")
                .collect();
            names.sort();
            names
        }
    }

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let content = format!(
            "# deployed by ops\r\nexport AWS_ACCESS_KEY_ID=\"{OLD_ID}\" # rotated by rekey\r\nREGION=eu-west-1\r\nAWS_SECRET_ACCESS_KEY='old/secret+value'"
        );
        let path = write(dir.path(), ".env", content.as_bytes(), 0o640);
        let fixture = TempEnv { dir, path };
        crate::conformance::run(&fixture, &key()).await;
    }
}
