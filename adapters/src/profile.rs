//! `profile:<name>[@<credentials-file>]`: a profile in an AWS shared credentials file, as
//! `aws-vault` and `aws-rotate-key` rotate it.
//!
//! The file is `<credentials-file>` if given, else `$AWS_SHARED_CREDENTIALS_FILE`, else
//! `~/.aws/credentials`. Only the values of `aws_access_key_id` and `aws_secret_access_key` in the
//! `[name]` section change; comments, other profiles, other settings of the profile, their order,
//! spacing around `=`, line endings and the file mode stay byte for byte. Like `env:`, the file is
//! rewritten atomically and a backup next to it makes the rollback byte-exact, even after a crash
//! (the snapshot is journalled, so it cannot hold the old file and its secret).
//!
//! The parser follows what the AWS CLI (botocore) and the SDKs read: `[section]` headers, `#` and
//! `;` comment lines, `key = value` properties, and indented lines after a property as its
//! continuation (nested `s3 =` settings), which are never taken for the key.

use std::ffi::{OsStr, OsString};
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

const ID_KEY: &str = "aws_access_key_id";
const SECRET_KEY: &str = "aws_secret_access_key";
/// A profile with one of these holds temporary credentials (or is fed by a tool that writes them):
/// swapping in a long-term key beside a stale token would break it.
const SESSION_KEYS: [&str; 2] = ["aws_session_token", "aws_security_token"];

pub struct ProfileTarget {
    file: CredFile,
    restart_cmd: Option<String>,
    restart_timeout: Duration,
}

/// The part of the target that blocking file work needs, cloned into `spawn_blocking`.
#[derive(Clone)]
struct CredFile {
    name: String,
    profile: String,
    path: PathBuf,
}

/// What the journal keeps about the file. Never its content: that holds the old secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ProfileSnapshot {
    /// The file as resolved through symlinks, so rollback writes where apply wrote.
    path: PathBuf,
    backup: PathBuf,
    profile: String,
    len: u64,
    /// FNV-1a 64 of the bytes, hex: tells "restored" from "changed" without holding the secret.
    fnv1a64: String,
    mode: u32,
    uid: u32,
    gid: u32,
    old_key_id: Option<String>,
}

impl ProfileSnapshot {
    fn matches(&self, bytes: &[u8]) -> bool {
        bytes.len() as u64 == self.len && fnv1a64(bytes) == self.fnv1a64
    }
}

impl ProfileTarget {
    pub fn new(spec: &TargetSpec, _sdk: &aws_types::SdkConfig, options: &Options) -> Self {
        let (profile, path) = split_location(&spec.location, |name| std::env::var_os(name));
        ProfileTarget {
            file: CredFile { name: spec.raw.clone(), profile, path },
            restart_cmd: options.restart_cmd.clone(),
            restart_timeout: options.restart_timeout,
        }
    }

    async fn blocking<T, F>(&self, work: F) -> Result<T, TargetError>
    where
        T: Send + 'static,
        F: FnOnce(CredFile) -> Result<T, TargetError> + Send + 'static,
    {
        let file = self.file.clone();
        let name = self.file.name.clone();
        tokio::task::spawn_blocking(move || work(file))
            .await
            .map_err(|e| TargetError::new(name, ErrorKind::Backend(format!("file task failed: {e}"))))?
    }

    /// Runs `--restart-cmd` (a daemon that reads the profile only at start). It never gets the
    /// secret: it reads the file like the consumers do.
    async fn restart(&self, snap: &ProfileSnapshot, action: &str) -> Result<(), TargetError> {
        let Some(cmd) = &self.restart_cmd else {
            return Ok(());
        };
        let err = |kind| TargetError::new(&self.file.name, kind);
        let env = [
            ("REKEY_FILE", snap.path.as_os_str()),
            ("REKEY_PROFILE", OsStr::new(&snap.profile)),
            ("REKEY_ACTION", OsStr::new(action)),
        ];
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
                // The command may print the file it read; keep the secrets in it out of the error.
                let for_task = snap.clone();
                let secrets = self.blocking(move |f| Ok(f.known_secrets(&for_task))).await.unwrap_or_default();
                let last = redact(&last_stderr, secrets.iter().map(|s| s.as_str()));
                Err(err(ErrorKind::Consumers(format!("restart command `{cmd}` exited with {status}: {last}"))))
            }
        }
    }
}

/// `name[@file]` into the profile name and the file it lives in.
fn split_location(location: &str, env: impl Fn(&str) -> Option<OsString>) -> (String, PathBuf) {
    let home = || env("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"));
    let (profile, path) = match location.split_once('@') {
        Some((profile, file)) => {
            let path = match file.strip_prefix("~/") {
                Some(rest) => home().join(rest),
                None => PathBuf::from(file),
            };
            (profile, path)
        }
        None => {
            let path = env("AWS_SHARED_CREDENTIALS_FILE")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| home().join(".aws").join("credentials"));
            (location, path)
        }
    };
    (profile.to_string(), path)
}

#[async_trait]
impl Target for ProfileTarget {
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
        let snap: ProfileSnapshot = snapshot.to_state(&self.file.name)?;
        let id = key.access_key_id.clone();
        let secret = Zeroizing::new(key.secret().to_string());
        self.blocking(move |f| f.apply(&snap, &id, &secret)).await
    }

    async fn wait_consumers(&self, snapshot: &Snapshot) -> Result<(), TargetError> {
        let snap: ProfileSnapshot = snapshot.to_state(&self.file.name)?;
        self.restart(&snap, "apply").await
    }

    async fn current_key_id(&self) -> Result<Option<String>, TargetError> {
        self.blocking(|f| {
            let (_, bytes) = f.read()?;
            Ok(f.locate(&bytes)?.key_id)
        })
        .await
    }

    async fn rollback(&self, snapshot: &Snapshot) -> Result<(), TargetError> {
        let snap: ProfileSnapshot = snapshot.to_state(&self.file.name)?;
        let for_task = snap.clone();
        let restored = self.blocking(move |f| f.rollback(&for_task)).await?;
        if restored {
            self.restart(&snap, "rollback").await?;
        }
        Ok(())
    }

    async fn finish(&self, snapshot: &Snapshot) -> Result<(), TargetError> {
        let snap: ProfileSnapshot = snapshot.to_state(&self.file.name)?;
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

/// The two properties of the profile as found in the file.
struct Located {
    id: Property,
    secret: Property,
    key_id: Option<String>,
}

impl CredFile {
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

    /// The real file behind the path (a symlinked credentials file is rewritten where it lives).
    fn read(&self) -> Result<(PathBuf, Zeroizing<Vec<u8>>), TargetError> {
        let path =
            fs::canonicalize(&self.path).map_err(|e| self.io_err("cannot open credentials file", &self.path, e))?;
        let bytes = fs::read(&path).map_err(|e| self.io_err("cannot read credentials file", &path, e))?;
        Ok((path, Zeroizing::new(bytes)))
    }

    /// Finds the one `[profile]` section and its one id and one secret, or says how to fix the file.
    fn locate(&self, bytes: &[u8]) -> Result<Located, TargetError> {
        let path = self.path.display();
        let profile = &self.profile;
        if profile.is_empty() {
            return Err(self.err(ErrorKind::Unusable("no profile name; write profile:<name>[@<file>]".into())));
        }
        let sections = parse(bytes);
        let hits: Vec<&Section> = sections.iter().filter(|s| &s.name == profile).collect();
        let section = match hits.as_slice() {
            [] => {
                let names: Vec<&str> = sections.iter().map(|s| s.name.as_str()).collect();
                return Err(self.err(ErrorKind::NotFound(format!(
                    "{path} has no [{profile}] profile (it has: {})",
                    if names.is_empty() { "none".to_string() } else { names.join(", ") }
                ))));
            }
            [one] => *one,
            many => {
                let lines: Vec<String> = many.iter().map(|s| s.line.to_string()).collect();
                return Err(self.err(ErrorKind::Unusable(format!(
                    "{path} has [{profile}] more than once (lines {}); the AWS CLI refuses such a file: merge them",
                    lines.join(", ")
                ))));
            }
        };
        if let Some(token) = section.props.iter().find(|p| SESSION_KEYS.contains(&p.key.as_str())) {
            return Err(self.err(ErrorKind::Unusable(format!(
                "[{profile}] in {path} has {} (line {}): it holds temporary credentials, not a long-term access key; \
                 name the profile that holds the user's access key",
                token.key, token.line
            ))));
        }
        let find = |key: &str| -> Result<Property, TargetError> {
            let found: Vec<&Property> = section.props.iter().filter(|p| p.key == key).collect();
            match found.as_slice() {
                [] => Err(self.err(ErrorKind::Unusable(format!(
                    "[{profile}] in {path} has no {key}; add it (rekey only replaces an existing key)"
                )))),
                [one] if one.spaced => Err(self.err(ErrorKind::Unusable(format!(
                    "{path} line {}: the value of {key} has blanks in it; an access key has none, fix the line",
                    one.line
                )))),
                [one] => Ok((*one).clone()),
                many => {
                    let lines: Vec<String> = many.iter().map(|p| p.line.to_string()).collect();
                    Err(self.err(ErrorKind::Unusable(format!(
                        "[{profile}] in {path} sets {key} more than once (lines {}); remove all but one",
                        lines.join(", ")
                    ))))
                }
            }
        };
        let id = find(ID_KEY)?;
        let secret = find(SECRET_KEY)?;
        let key_id = Some(String::from_utf8_lossy(&bytes[id.value.clone()]).into_owned()).filter(|s| !s.is_empty());
        Ok(Located { id, secret, key_id })
    }

    fn preflight(&self, restart_cmd: Option<&str>) -> Result<Preflight, TargetError> {
        let (path, bytes) = self.read()?;
        let found = self.locate(&bytes)?;
        let meta = fs::metadata(&path).map_err(|e| self.io_err("cannot stat credentials file", &path, e))?;
        // Opening for write without truncating proves write access and changes nothing.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| self.io_err("cannot write credentials file", &path, e))?;
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

        let mut pf = Preflight { current_key_id: found.key_id.clone(), ..Preflight::default() };
        pf.changes.push(format!(
            "rewrite {ID_KEY} and {SECRET_KEY} of [{}] in {} (mode {:04o} kept)",
            self.profile,
            path.display(),
            meta.mode() & 0o7777
        ));
        pf.changes.push(format!("keep a backup of the old file at {} until the rotation ends", backup.display()));
        if let Some(cmd) = restart_cmd {
            pf.changes.push(format!("run `{cmd}` so long-running consumers read the new key"));
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
        if found.key_id.is_none() {
            pf.warnings.push(format!("{ID_KEY} of [{}] is empty in {}", self.profile, path.display()));
        }
        if meta.mode() & 0o077 != 0 {
            pf.warnings.push(format!(
                "{} is readable or writable by other users (mode {:04o}); the AWS CLI creates it 0600",
                path.display(),
                meta.mode() & 0o7777
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

    fn snapshot(&self) -> Result<ProfileSnapshot, TargetError> {
        let (path, bytes) = self.read()?;
        let found = self.locate(&bytes)?;
        let meta = fs::metadata(&path).map_err(|e| self.io_err("cannot stat credentials file", &path, e))?;
        let backup = backup_path(&path);
        if let Some(problem) = self.stale_backup(&backup, &bytes)? {
            return Err(self.err(ErrorKind::Unusable(problem)));
        }
        write_atomic(&backup, &bytes, &meta).map_err(|e| self.io_err("cannot write backup", &backup, e))?;
        Ok(ProfileSnapshot {
            path,
            backup,
            profile: self.profile.clone(),
            len: bytes.len() as u64,
            fnv1a64: fnv1a64(&bytes),
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            old_key_id: found.key_id,
        })
    }

    fn apply(&self, snap: &ProfileSnapshot, key_id: &str, secret: &str) -> Result<(), TargetError> {
        let bytes = Zeroizing::new(
            fs::read(&snap.path).map_err(|e| self.io_err("cannot read credentials file", &snap.path, e))?,
        );
        let found = self.locate(&bytes)?;
        if &bytes[found.id.value.clone()] == key_id.as_bytes()
            && &bytes[found.secret.value.clone()] == secret.as_bytes()
        {
            return Ok(());
        }
        // A file edited since the snapshot would lose that edit on rollback: stop before changing it.
        if !snap.matches(&bytes) {
            return Err(self.err(ErrorKind::Unusable(format!(
                "{} changed since its snapshot was taken; start the rotation again",
                snap.path.display()
            ))));
        }
        for (key, value) in [(ID_KEY, key_id), (SECRET_KEY, secret)] {
            // Anything the parser would cut or read differently must not be half-written.
            if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(self.err(ErrorKind::Unusable(format!(
                    "the new value of {key} is empty or has blanks; it cannot be written to {}",
                    snap.path.display()
                ))));
            }
        }
        let mut edits = [(found.id.value, key_id.as_bytes()), (found.secret.value, secret.as_bytes())];
        edits.sort_by_key(|(range, _)| std::cmp::Reverse(range.start));
        let mut out = Zeroizing::new(bytes.to_vec());
        for (range, value) in edits.iter() {
            out.splice(range.clone(), value.iter().copied());
        }
        let meta = fs::metadata(&snap.path).map_err(|e| self.io_err("cannot stat credentials file", &snap.path, e))?;
        write_atomic(&snap.path, &out, &meta).map_err(|e| self.io_err("cannot rewrite credentials file", &snap.path, e))
    }

    /// Returns whether the file had to be restored.
    fn rollback(&self, snap: &ProfileSnapshot) -> Result<bool, TargetError> {
        let current = match fs::read(&snap.path) {
            Ok(b) => Some(Zeroizing::new(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(self.io_err("cannot read credentials file", &snap.path, e)),
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
                    && let Ok(found) = self.locate(bytes)
                    && found.key_id == snap.old_key_id
                {
                    return Ok(false);
                }
                return Err(self.err(ErrorKind::NotFound(format!(
                    "backup {} is gone and [{}] in {} does not hold the old key {}; restore the profile by hand",
                    snap.backup.display(),
                    snap.profile,
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
            .map_err(|e| self.io_err("cannot restore credentials file", &snap.path, e))?;
        Ok(true)
    }

    /// The secrets of the profile in the file and its backup, to scrub them from command output.
    fn known_secrets(&self, snap: &ProfileSnapshot) -> Vec<Zeroizing<String>> {
        let mut found = Vec::new();
        for path in [&snap.path, &snap.backup] {
            let Ok(bytes) = fs::read(path).map(Zeroizing::new) else { continue };
            if let Ok(located) = self.locate(&bytes) {
                found.push(Zeroizing::new(String::from_utf8_lossy(&bytes[located.secret.value]).into_owned()));
            }
        }
        found
    }
}

/// One `key = value` line of a section. `value` is the byte range of the value, which is all a
/// rewrite replaces.
#[derive(Clone)]
struct Property {
    /// Lower-cased: botocore reads `AWS_ACCESS_KEY_ID =` as `aws_access_key_id`.
    key: String,
    line: usize,
    value: Range<usize>,
    /// The value has blanks in it.
    spaced: bool,
}

struct Section {
    name: String,
    line: usize,
    props: Vec<Property>,
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// The sections of an INI credentials file and their top-level properties. Anything else
/// (comments, blank lines, continuation lines, lines before the first section) is kept byte for
/// byte and is none of this adapter's business.
fn parse(bytes: &[u8]) -> Vec<Section> {
    let mut sections: Vec<Section> = Vec::new();
    let mut pos = if bytes.starts_with(b"\xEF\xBB\xBF") { 3 } else { 0 };
    let mut line = 0;
    while pos < bytes.len() {
        line += 1;
        let nl = bytes[pos..].iter().position(|&b| b == b'\n').map_or(bytes.len(), |i| pos + i);
        let mut end = nl;
        if end > pos && bytes[end - 1] == b'\r' {
            end -= 1;
        }
        let start = pos;
        pos = nl + 1;
        let mut i = start;
        while i < end && is_blank(bytes[i]) {
            i += 1;
        }
        if i == end || matches!(bytes[i], b'#' | b';') {
            continue;
        }
        let indented = i > start;
        if bytes[i] == b'[' && !indented {
            let Some(close) = bytes[i..end].iter().position(|&b| b == b']').map(|c| i + c) else { continue };
            let name = String::from_utf8_lossy(&bytes[i + 1..close]).trim().to_string();
            sections.push(Section { name, line, props: Vec::new() });
            continue;
        }
        let Some(section) = sections.last_mut() else { continue };
        // An indented line after a property continues it (`s3 =` then `  region = ...`).
        if indented && !section.props.is_empty() {
            continue;
        }
        let Some(eq) = bytes[i..end].iter().position(|&b| b == b'=').map(|e| i + e) else { continue };
        let key = String::from_utf8_lossy(&bytes[i..eq]).trim().to_ascii_lowercase();
        let mut v = eq + 1;
        while v < end && is_blank(bytes[v]) {
            v += 1;
        }
        let mut value_end = end;
        while value_end > v && is_blank(bytes[value_end - 1]) {
            value_end -= 1;
        }
        // botocore takes everything after `=` as the value, `#` or `;` included: a value with blanks
        // in it is not an access key, and keeping a trailing "comment" would corrupt the new one.
        let spaced = bytes[v..value_end].iter().any(|&b| is_blank(b));
        section.props.push(Property { key, line, value: v..value_end, spaced });
    }
    sections
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

    fn target_for(profile: &str, path: &Path, options: &Options) -> ProfileTarget {
        let spec: TargetSpec = format!("profile:{profile}@{}", path.display()).parse().expect("spec");
        let sdk = aws_types::SdkConfig::builder().build();
        ProfileTarget::new(&spec, &sdk, options)
    }

    fn write(dir: &Path, name: &str, content: &[u8], mode: u32) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, Permissions::from_mode(mode)).unwrap();
        path
    }

    async fn rotate(profile: &str, content: &[u8]) -> Result<Vec<u8>, TargetError> {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "credentials", content, 0o600);
        let t = target_for(profile, &path, &Options::default());
        let snap = t.snapshot().await?;
        t.apply(&key(), &snap).await?;
        Ok(fs::read(&path).unwrap())
    }

    #[test]
    fn resolves_the_file_like_the_aws_cli() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| OsString::from(v))
        };
        let home = env(&[("HOME", "/home/u")]);
        assert_eq!(split_location("dev", home), ("dev".into(), PathBuf::from("/home/u/.aws/credentials")));
        let both = env(&[("HOME", "/home/u"), ("AWS_SHARED_CREDENTIALS_FILE", "/etc/creds")]);
        assert_eq!(split_location("dev", both), ("dev".into(), PathBuf::from("/etc/creds")));
        assert_eq!(split_location("dev@~/x/creds", both), ("dev".into(), PathBuf::from("/home/u/x/creds")));
        assert_eq!(split_location("dev@/srv/c", both), ("dev".into(), PathBuf::from("/srv/c")));
    }

    #[tokio::test]
    async fn rewrites_only_the_two_values_of_that_profile() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "app",
                "# managed by hand\n[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = dsecret\n\n[app]\nregion=eu-west-1\naws_access_key_id=AKIAOLD\naws_secret_access_key=oldsecret\n",
                "# managed by hand\n[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = dsecret\n\n[app]\nregion=eu-west-1\naws_access_key_id=AKIANEWNEWNEWNEW0002\naws_secret_access_key=nEw/SeCrEt+kEy0123456789abcdefghijklmnop\n",
            ),
            (
                "app",
                "\u{feff}[ app ]\r\n\taws_access_key_id = AKIAOLD\r\n; the key\r\nAWS_Secret_Access_Key   =   old   \r\ns3 =\r\n  aws_access_key_id = nested\r\n[other]\r\naws_access_key_id = x",
                "\u{feff}[ app ]\r\n\taws_access_key_id = AKIANEWNEWNEWNEW0002\r\n; the key\r\nAWS_Secret_Access_Key   =   nEw/SeCrEt+kEy0123456789abcdefghijklmnop   \r\ns3 =\r\n  aws_access_key_id = nested\r\n[other]\r\naws_access_key_id = x",
            ),
            (
                "default",
                "[default]\naws_access_key_id =\naws_secret_access_key = s",
                "[default]\naws_access_key_id =AKIANEWNEWNEWNEW0002\naws_secret_access_key = nEw/SeCrEt+kEy0123456789abcdefghijklmnop",
            ),
        ];
        for (profile, before, after) in cases {
            let got = rotate(profile, before.as_bytes()).await.unwrap();
            assert_eq!(String::from_utf8_lossy(&got), *after);
        }
    }

    #[tokio::test]
    async fn refuses_files_it_cannot_rotate_safely() {
        let refused: &[(&str, &str, &str)] = &[
            (
                "app",
                "[default]\naws_access_key_id=A\naws_secret_access_key=s\n",
                "has no [app] profile (it has: default)",
            ),
            (
                "app",
                "[app]\naws_access_key_id=A\naws_secret_access_key=s\naws_session_token=t\n",
                "temporary credentials",
            ),
            ("app", "[app]\naws_access_key_id=A\n", "has no aws_secret_access_key"),
            ("app", "[app]\naws_access_key_id=A\naws_secret_access_key=s\n[app]\nregion=x\n", "lines 1, 4"),
            ("app", "[app]\naws_access_key_id=A\nAWS_ACCESS_KEY_ID=B\naws_secret_access_key=s\n", "more than once"),
            ("app", "[app]\naws_access_key_id=A B\naws_secret_access_key=s\n", "blanks"),
            (
                "app",
                "[app]\naws_access_key_id=A ; a comment botocore reads as value\naws_secret_access_key=s\n",
                "blanks",
            ),
            // The key is only under a nested setting: not the profile's key.
            ("app", "[app]\ns3 =\n  aws_access_key_id = A\naws_secret_access_key=s\n", "has no aws_access_key_id"),
        ];
        for (profile, content, why) in refused {
            let e = rotate(profile, content.as_bytes()).await.map(|_| ()).unwrap_err();
            assert!(e.to_string().contains(why), "{content:?}: {e}");
        }
    }

    #[tokio::test]
    async fn preflight_reports_key_and_problems() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options::default();
        let content = format!("[app]\naws_access_key_id = {OLD_ID}\naws_secret_access_key = s\n");
        let path = write(dir.path(), "credentials", content.as_bytes(), 0o644);
        let pf = target_for("app", &path, &opts).preflight().await.unwrap();
        assert_eq!(pf.current_key_id.as_deref(), Some(OLD_ID));
        assert!(pf.changes[0].contains("[app]") && pf.changes[0].contains("mode 0644 kept"), "{:?}", pf.changes);
        assert!(pf.warnings.iter().any(|w| w.contains("other users")), "{:?}", pf.warnings);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "preflight left files behind");

        let missing = target_for("app", &dir.path().join("nope"), &opts).preflight().await.unwrap_err();
        assert!(matches!(missing.kind, ErrorKind::NotFound(_)), "{missing}");
        let e = target_for("other", &path, &opts).preflight().await.unwrap_err();
        assert!(matches!(e.kind, ErrorKind::NotFound(_)), "{e}");
    }

    #[tokio::test]
    async fn keeps_mode_and_rolls_back_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let original = format!("[app]\naws_access_key_id = {OLD_ID}\naws_secret_access_key = oldsecret");
        let path = write(dir.path(), "credentials", original.as_bytes(), 0o600);
        let t = target_for("app", &path, &Options::default());
        let snap = t.snapshot().await.unwrap();
        let backup = dir.path().join(".credentials.rekey-backup");
        assert_eq!(fs::metadata(&backup).unwrap().mode() & 0o7777, 0o600);
        assert!(!serde_json::to_string(&snap).unwrap().contains("oldsecret"));

        t.apply(&key(), &snap).await.unwrap();
        t.apply(&key(), &snap).await.unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
        assert_eq!(t.current_key_id().await.unwrap().as_deref(), Some(NEW_ID));
        t.rollback(&snap).await.unwrap();
        t.rollback(&snap).await.unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), original);

        // Without the backup, a file holding the old key again is fine; one that does not is not.
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
        let path = write(dir.path(), "credentials", b"[app]\naws_access_key_id=A\naws_secret_access_key=s\n", 0o600);
        let t = target_for("app", &path, &Options::default());
        let snap = t.snapshot().await.unwrap();
        fs::write(&path, b"[app]\naws_access_key_id=A\naws_secret_access_key=s\nregion=x\n").unwrap();
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
    async fn restart_command_gets_the_file_not_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "credentials", b"[app]\naws_access_key_id=A\naws_secret_access_key=s\n", 0o600);
        let marker = dir.path().join("restarted");
        let ok = Options {
            restart_cmd: Some(format!(
                "echo \"$REKEY_ACTION $REKEY_PROFILE ${{AWS_SECRET_ACCESS_KEY:-none}}\" >> {}",
                marker.display()
            )),
            ..Options::default()
        };
        let t = target_for("app", &path, &ok);
        let snap = t.snapshot().await.unwrap();
        t.apply(&key(), &snap).await.unwrap();
        t.wait_consumers(&snap).await.unwrap();
        t.rollback(&snap).await.unwrap();
        t.rollback(&snap).await.unwrap();
        let log = fs::read_to_string(&marker).unwrap();
        assert!(log.starts_with("apply app ") && log.lines().nth(1).unwrap().starts_with("rollback app "), "{log}");
        assert!(!log.contains(NEW_SECRET));

        let failing =
            Options { restart_cmd: Some(format!("cat {} >&2; exit 3", path.display())), ..Options::default() };
        let t = target_for("app", &path, &failing);
        t.apply(&key(), &snap).await.unwrap();
        let e = t.wait_consumers(&snap).await.unwrap_err();
        let text = e.to_string();
        assert!(matches!(e.kind, ErrorKind::Consumers(_)), "{text}");
        assert!(text.contains("[redacted]") && !text.contains(NEW_SECRET), "{text}");
    }

    struct TempProfile {
        dir: tempfile::TempDir,
        path: PathBuf,
    }

    #[async_trait]
    impl crate::conformance::Fixture for TempProfile {
        fn target(&self) -> Box<dyn Target> {
            Box::new(target_for("app", &self.path, &Options::default()))
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
                .filter(|n| n != "credentials")
                .collect();
            names.sort();
            names
        }
    }

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let content = format!(
            "[default]\r\naws_access_key_id = AKIADEFAULT\r\naws_secret_access_key = d\r\n\r\n[app]\r\n\
             aws_access_key_id = {OLD_ID}\r\nregion = eu-west-1\r\naws_secret_access_key = old/secret+value"
        );
        let path = write(dir.path(), "credentials", content.as_bytes(), 0o600);
        crate::conformance::run(&TempProfile { dir, path }, &key()).await;
    }
}
