//! The [`Target`] for a key kept in a local file (`env:`, `profile:`). A file format only says
//! where the id and the secret are in the bytes ([`KeyFormat`]); everything a rotation must get right
//! about the file itself lives here once.
//!
//! Only the bytes of the two values change; every other byte stays as the user wrote it. Writes are
//! atomic (temp file, fsync, rename, fsync of the folder) because an app restarting in the middle
//! must read the old file or the new one, never half of one.
//!
//! The snapshot cannot hold the old file (it contains the old secret and is journalled), so it
//! points at a backup written next to the file, with the same mode, and records its length and hash
//! to make sure the rollback restores exactly what was captured.
//!
//! No copy of a secret is left behind: the backup goes when the rotation ends (`finish`); it is
//! written before its snapshot is journaled, so [`Target::pending_snapshot`] journals the file's
//! name first, and a rollback given only that removes a backup that is still a copy of the file. The
//! temp files of an atomic write that a crash interrupted (`.rekey-<file>.XXXXXX.tmp`, holding the
//! new secret or a backup's old one) are swept by the next snapshot, rollback or finish of the
//! file, which is what `rekey resume` and the next rotation run.
//!
//! The file work of one target runs one step at a time: a step that is given up (Ctrl-C drops
//! `apply`) finishes its write on its thread, and the rollback that follows waits for it instead of
//! reading the file halfway and then having the write land after it.
//!
//! A snapshot read back from a journal is used only for the file this target names (the one on the
//! command line): a journal is data, and must not choose what rekey overwrites.

use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, Metadata, OpenOptions, Permissions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::redact;
use crate::file::{
    RunError, backup_path, fnv1a64, parent, run_sh, sweep_temps, sync_dir, write_atomic, write_atomic_with,
};
use crate::{ErrorKind, NewKey, Options, Preflight, Snapshot, Target, TargetError};

/// The id and the secret as a format found them in a file.
pub struct Located<V> {
    pub id: V,
    pub secret: V,
    /// The id as consumers read it; `None` when it is empty.
    pub key_id: Option<String>,
}

/// How one file format holds a key. Errors are [`ErrorKind`]s: the engine names the target.
pub trait KeyFormat: Clone + Send + Sync + 'static {
    /// What messages call the file ("env file").
    const FILE: &'static str;
    /// Why `--restart-cmd` runs, as preflight tells it ("the app reads the new file").
    const RESTART_SO: &'static str;
    /// What a rollback that lost its backup asks the user to restore by hand ("file").
    const RESTORE_BY_HAND: &'static str;
    /// What the snapshot records to find the values again. Flattened into the snapshot, so its field
    /// names are part of the journal format.
    type Names: Serialize + DeserializeOwned + Clone + fmt::Debug + Send + Sync + 'static;
    /// One value as found in the file.
    type Value;

    /// The file as the user named it, before symlinks are resolved.
    fn path(&self) -> &Path;

    /// Finds exactly one id and one secret, or says how to make the file usable.
    fn locate(&self, bytes: &[u8]) -> Result<Located<Self::Value>, ErrorKind>;

    /// What the snapshot keeps of `found`, so that apply and rollback look at the same values even
    /// if the file or the spec would now point elsewhere.
    fn names(&self, found: &Located<Self::Value>) -> Self::Names;

    /// Finds the values the snapshot recorded in `file` as `apply` reads it now.
    fn relocate(&self, names: &Self::Names, file: &Path, bytes: &[u8]) -> Result<Located<Self::Value>, ErrorKind>;

    /// The bytes a rewrite replaces.
    fn range(value: &Self::Value) -> Range<usize>;

    /// Whether `value` already reads as `wanted`, so that a repeated `apply` changes nothing.
    fn holds(value: &Self::Value, bytes: &[u8], wanted: &str) -> bool;

    /// Refuses new values that the file would not read back as written, before anything changes.
    fn check_writable(
        &self,
        found: &Located<Self::Value>,
        file: &Path,
        key_id: &str,
        secret: &str,
    ) -> Result<(), ErrorKind>;

    /// Whether the file holds `old_key_id` again: all a rollback can check once the backup is gone.
    fn holds_key_id(&self, names: &Self::Names, bytes: &[u8], old_key_id: Option<&str>) -> bool;

    /// The secret in a file, to scrub it from a restart command's output.
    fn secret(&self, names: &Self::Names, bytes: &[u8]) -> Option<Zeroizing<String>>;

    /// The two values, as preflight names them ("ID and SECRET of [profile]").
    fn describe(&self, found: &Located<Self::Value>) -> String;

    /// Where the key sits, as a rollback that cannot restore it names it ("[profile] in <file>").
    fn scope(names: &Self::Names, file: &Path) -> String;

    /// What else preflight should tell about this file.
    fn warnings(
        &self,
        found: &Located<Self::Value>,
        file: &Path,
        meta: &Metadata,
        restart_cmd: Option<&str>,
    ) -> Vec<String>;

    /// Variables for the restart command besides `REKEY_FILE` and `REKEY_ACTION`.
    fn restart_env(names: &Self::Names) -> Vec<(&'static str, &OsStr)>;
}

/// A file target: `envfile::EnvFileTarget` and `profile::ProfileTarget` are this with their format.
pub struct KeyFileTarget<F> {
    file: KeyFile<F>,
    restart_cmd: Option<String>,
    restart_timeout: Duration,
    /// Held by the file step under way, on its blocking thread, until it ends.
    busy: Arc<tokio::sync::Mutex<()>>,
}

/// The part of the target that blocking file work needs, cloned into `spawn_blocking`.
#[derive(Clone)]
struct KeyFile<F> {
    name: String,
    format: F,
}

/// What the journal keeps about the file. Never its content: that holds the old secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FileSnapshot<N> {
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
    #[serde(flatten)]
    names: N,
    old_key_id: Option<String>,
}

/// What the journal holds before the backup is written: the file as the command line named it.
const PENDING: &str = "pending_backup_of";

/// A journaled snapshot, or its stand-in when the process died while taking it.
enum Journaled<N> {
    Taken(FileSnapshot<N>),
    Pending,
}

impl<N> FileSnapshot<N> {
    fn matches(&self, bytes: &[u8]) -> bool {
        bytes.len() as u64 == self.len && fnv1a64(bytes) == self.fnv1a64
    }
}

impl<F: KeyFormat> KeyFileTarget<F> {
    pub(crate) fn with_format(name: &str, format: F, options: &Options) -> Self {
        KeyFileTarget {
            file: KeyFile { name: name.to_string(), format },
            restart_cmd: options.restart_cmd.clone(),
            restart_timeout: options.restart_timeout,
            busy: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Runs one file step on a blocking thread, after the step before it has ended. The lock goes
    /// with the work, not with this future: dropping the future does not stop a write, so the next
    /// step must wait for the write, not for the future.
    async fn blocking<T, W>(&self, work: W) -> Result<T, TargetError>
    where
        T: Send + 'static,
        W: FnOnce(KeyFile<F>) -> Result<T, TargetError> + Send + 'static,
    {
        let file = self.file.clone();
        let name = self.file.name.clone();
        let turn = self.busy.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            work(file)
        })
        .await
        .map_err(|e| TargetError::new(name, ErrorKind::Backend(format!("file task failed: {e}"))))?
    }

    /// Runs `--restart-cmd` so consumers that read the file only at start pick it up. The secret is
    /// never handed to it: the command reads the file like the consumers do.
    async fn restart(&self, snap: &FileSnapshot<F::Names>, action: &str) -> Result<(), TargetError> {
        let Some(cmd) = &self.restart_cmd else {
            return Ok(());
        };
        let err = |kind| TargetError::new(&self.file.name, kind);
        let mut env = vec![("REKEY_FILE", snap.path.as_os_str())];
        env.extend(F::restart_env(&snap.names));
        env.push(("REKEY_ACTION", OsStr::new(action)));
        match run_sh(cmd, &env, self.restart_timeout).await {
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
                let for_task = snap.clone();
                let secrets = self.blocking(move |f| Ok(f.known_secrets(&for_task))).await.unwrap_or_default();
                let last = redact(&last_stderr, &secrets.iter().map(|s| s.as_str()).collect::<Vec<_>>());
                Err(err(ErrorKind::Consumers(format!("restart command `{cmd}` exited with {status}: {last}"))))
            }
        }
    }
}

#[async_trait]
impl<F: KeyFormat> Target for KeyFileTarget<F> {
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

    fn pending_snapshot(&self) -> Option<Snapshot> {
        Some(Snapshot(serde_json::json!({ PENDING: self.file.format.path() })))
    }

    async fn apply(&self, key: &NewKey, snapshot: &Snapshot) -> Result<(), TargetError> {
        let snap = self.taken(snapshot).await?;
        let id = key.access_key_id.clone();
        let secret = Zeroizing::new(key.secret().to_string());
        self.blocking(move |f| f.apply(&snap, &id, &secret)).await
    }

    async fn wait_consumers(&self, snapshot: &Snapshot) -> Result<(), TargetError> {
        let snap = self.taken(snapshot).await?;
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
        let Journaled::Taken(snap) = self.own_snapshot(snapshot).await? else {
            // Nothing was applied before the snapshot was journaled: only a backup may be left.
            return self.blocking(|f| f.drop_unjournaled_backup()).await;
        };
        let for_task = snap.clone();
        let restored = self.blocking(move |f| f.rollback(&for_task)).await?;
        if restored {
            self.restart(&snap, "rollback").await?;
        }
        Ok(())
    }

    async fn finish(&self, snapshot: &Snapshot) -> Result<(), TargetError> {
        let Journaled::Taken(snap) = self.own_snapshot(snapshot).await? else {
            return self.blocking(|f| f.drop_unjournaled_backup()).await;
        };
        self.blocking(move |f| {
            f.sweep(&snap.path)?;
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

impl<F: KeyFormat> KeyFileTarget<F> {
    /// The snapshot, if it is one of the file this target names.
    async fn own_snapshot(&self, snapshot: &Snapshot) -> Result<Journaled<F::Names>, TargetError> {
        if let Some(named) = snapshot.0.get(PENDING) {
            let mine = serde_json::to_value(self.file.format.path()).unwrap_or_default();
            if *named != mine {
                return Err(TargetError::new(
                    &self.file.name,
                    ErrorKind::Unusable(format!(
                        "the journaled snapshot names the file {named}, not {mine}; rekey writes only the files \
                         given on its command line"
                    )),
                ));
            }
            return Ok(Journaled::Pending);
        }
        let snap: FileSnapshot<F::Names> = snapshot.to_state(&self.file.name)?;
        let (path, backup) = (snap.path.clone(), snap.backup.clone());
        self.blocking(move |f| f.check_own(&path, &backup)).await?;
        Ok(Journaled::Taken(snap))
    }

    /// A snapshot that was taken, for the steps that need one.
    async fn taken(&self, snapshot: &Snapshot) -> Result<FileSnapshot<F::Names>, TargetError> {
        match self.own_snapshot(snapshot).await? {
            Journaled::Taken(snap) => Ok(snap),
            Journaled::Pending => Err(TargetError::new(
                &self.file.name,
                ErrorKind::Unusable("its snapshot was never journaled; start the rotation again".into()),
            )),
        }
    }
}

impl<F: KeyFormat> KeyFile<F> {
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

    fn file_err(&self, what: &str, path: &Path, e: io::Error) -> TargetError {
        self.io_err(&format!("{what} {}", F::FILE), path, e)
    }

    /// The file the path names, through symlinks; when it is missing (deleted meanwhile), where it
    /// would be.
    fn resolved(&self) -> Result<PathBuf, TargetError> {
        let given = self.format.path();
        match fs::canonicalize(given) {
            Ok(p) => Ok(p),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let dir = parent(given);
                let dir = fs::canonicalize(dir).map_err(|e| self.io_err("cannot open folder", dir, e))?;
                Ok(dir.join(given.file_name().unwrap_or_default()))
            }
            Err(e) => Err(self.file_err("cannot open", given, e)),
        }
    }

    /// Refuses a snapshot that would make rekey write anywhere but this target's file and its backup.
    fn check_own(&self, path: &Path, backup: &Path) -> Result<(), TargetError> {
        let mine = self.resolved()?;
        if path != mine || backup != backup_path(&mine) {
            return Err(self.err(ErrorKind::Unusable(format!(
                "the journaled snapshot names {} (backup {}), not {}, the file this target names now; rekey \
                 writes only the files given on its command line: restore the file by hand",
                path.display(),
                backup.display(),
                mine.display()
            ))));
        }
        Ok(())
    }

    /// After a crash while the snapshot was taken: the backup, if it is still a copy of the file (so
    /// that it holds nothing the file does not), and the temp files. A backup that differs is
    /// another rotation's, and stays.
    fn drop_unjournaled_backup(&self) -> Result<(), TargetError> {
        let path = self.resolved()?;
        self.sweep(&path)?;
        let backup = backup_path(&path);
        let (Ok(copy), Ok(file)) = (fs::read(&backup).map(Zeroizing::new), fs::read(&path).map(Zeroizing::new)) else {
            return Ok(());
        };
        if copy != file {
            return Ok(());
        }
        fs::remove_file(&backup).map_err(|e| self.io_err("cannot delete backup", &backup, e))?;
        sync_dir(&backup).map_err(|e| self.io_err("cannot sync folder of", &backup, e))
    }

    /// Removes temp files an interrupted write of the file or its backup left.
    fn sweep(&self, path: &Path) -> Result<(), TargetError> {
        for p in [path.to_path_buf(), backup_path(path)] {
            sweep_temps(&p).map_err(|e| self.io_err("cannot remove old temp files of", &p, e))?;
        }
        Ok(())
    }

    /// The real file behind the path (a symlinked file is rewritten where it lives) and its bytes.
    fn read(&self) -> Result<(PathBuf, Zeroizing<Vec<u8>>), TargetError> {
        let given = self.format.path();
        let path = fs::canonicalize(given).map_err(|e| self.file_err("cannot open", given, e))?;
        let bytes = fs::read(&path).map_err(|e| self.file_err("cannot read", &path, e))?;
        Ok((path, Zeroizing::new(bytes)))
    }

    fn locate(&self, bytes: &[u8]) -> Result<Located<F::Value>, TargetError> {
        self.format.locate(bytes).map_err(|kind| self.err(kind))
    }

    fn preflight(&self, restart_cmd: Option<&str>) -> Result<Preflight, TargetError> {
        let (path, bytes) = self.read()?;
        let found = self.locate(&bytes)?;
        let meta = fs::metadata(&path).map_err(|e| self.file_err("cannot stat", &path, e))?;
        // Opening for write without truncating proves write access and changes nothing.
        OpenOptions::new().write(true).open(&path).map_err(|e| self.file_err("cannot write", &path, e))?;
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
            "rewrite {} in {} (mode {:04o} kept)",
            self.format.describe(&found),
            path.display(),
            meta.mode() & 0o7777
        ));
        pf.changes.push(format!("keep a backup of the old file at {} until the rotation ends", backup.display()));
        if let Some(cmd) = restart_cmd {
            pf.changes.push(format!("run `{cmd}` so {}", F::RESTART_SO));
        }
        let given = self.format.path();
        if path != given {
            pf.warnings.push(format!(
                "{} is a link: the file it points to, {}, is rewritten",
                given.display(),
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
        pf.warnings.extend(self.format.warnings(&found, &path, &meta, restart_cmd));
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

    fn snapshot(&self) -> Result<FileSnapshot<F::Names>, TargetError> {
        let (path, bytes) = self.read()?;
        self.sweep(&path)?;
        let found = self.locate(&bytes)?;
        let meta = fs::metadata(&path).map_err(|e| self.file_err("cannot stat", &path, e))?;
        let backup = backup_path(&path);
        if let Some(problem) = self.stale_backup(&backup, &bytes)? {
            return Err(self.err(ErrorKind::Unusable(problem)));
        }
        write_atomic(&backup, &bytes, &meta).map_err(|e| self.io_err("cannot write backup", &backup, e))?;
        Ok(FileSnapshot {
            path,
            backup,
            len: bytes.len() as u64,
            fnv1a64: fnv1a64(&bytes),
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            names: self.format.names(&found),
            old_key_id: found.key_id,
        })
    }

    fn apply(&self, snap: &FileSnapshot<F::Names>, key_id: &str, secret: &str) -> Result<(), TargetError> {
        let bytes = Zeroizing::new(fs::read(&snap.path).map_err(|e| self.file_err("cannot read", &snap.path, e))?);
        let found = self.format.relocate(&snap.names, &snap.path, &bytes).map_err(|kind| self.err(kind))?;
        if F::holds(&found.id, &bytes, key_id) && F::holds(&found.secret, &bytes, secret) {
            return Ok(());
        }
        // A file edited since the snapshot would lose that edit on rollback: stop before changing it.
        if !snap.matches(&bytes) {
            return Err(self.err(ErrorKind::Unusable(format!(
                "{} changed since its snapshot was taken; start the rotation again",
                snap.path.display()
            ))));
        }
        self.format.check_writable(&found, &snap.path, key_id, secret).map_err(|kind| self.err(kind))?;
        let mut edits = [(F::range(&found.id), key_id.as_bytes()), (F::range(&found.secret), secret.as_bytes())];
        edits.sort_by_key(|(range, _)| std::cmp::Reverse(range.start));
        let mut out = Zeroizing::new(bytes.to_vec());
        for (range, value) in edits.iter() {
            out.splice(range.clone(), value.iter().copied());
        }
        let meta = fs::metadata(&snap.path).map_err(|e| self.file_err("cannot stat", &snap.path, e))?;
        write_atomic(&snap.path, &out, &meta).map_err(|e| self.file_err("cannot rewrite", &snap.path, e))
    }

    /// Returns whether the file had to be restored.
    fn rollback(&self, snap: &FileSnapshot<F::Names>) -> Result<bool, TargetError> {
        self.sweep(&snap.path)?;
        let current = match fs::read(&snap.path) {
            Ok(b) => Some(Zeroizing::new(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(self.file_err("cannot read", &snap.path, e)),
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
                    && self.format.holds_key_id(&snap.names, bytes, snap.old_key_id.as_deref())
                {
                    return Ok(false);
                }
                return Err(self.err(ErrorKind::NotFound(format!(
                    "backup {} is gone and {} does not hold the old key {}; restore the {} by hand",
                    snap.backup.display(),
                    F::scope(&snap.names, &snap.path),
                    snap.old_key_id.as_deref().unwrap_or("(none)"),
                    F::RESTORE_BY_HAND
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
            .map_err(|e| self.file_err("cannot restore", &snap.path, e))?;
        Ok(true)
    }

    /// The secret values in the file and its backup.
    fn known_secrets(&self, snap: &FileSnapshot<F::Names>) -> Vec<Zeroizing<String>> {
        let mut found = Vec::new();
        for path in [&snap.path, &snap.backup] {
            let Ok(bytes) = fs::read(path).map(Zeroizing::new) else { continue };
            found.extend(self.format.secret(&snap.names, &bytes));
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use secrecy::SecretString;

    use super::*;
    use crate::envfile::EnvFileTarget;
    use crate::{NewKey, TargetSpec};

    const OLD: &[u8] = b"AWS_ACCESS_KEY_ID=AKIAOLDOLDOLDOLD0001\nAWS_SECRET_ACCESS_KEY=old-secret-value\n";
    const NEW_SECRET: &str = "nEw/SeCrEt+kEy0123456789abcdefghijklmnop";

    fn key() -> NewKey {
        NewKey::new("AKIANEWNEWNEWNEW0002", SecretString::from(NEW_SECRET.to_string()))
    }

    fn env_file(dir: &Path) -> (PathBuf, EnvFileTarget) {
        let path = dir.join("app.env");
        fs::write(&path, OLD).unwrap();
        let spec: TargetSpec = format!("env:{}", path.display()).parse().unwrap();
        (path, EnvFileTarget::new(&spec, &Options::default()))
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut n: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        n.sort();
        n
    }

    #[tokio::test]
    async fn a_rollback_waits_for_a_write_that_was_given_up() {
        let dir = tempfile::tempdir().unwrap();
        let (path, t) = env_file(dir.path());
        let snapshot = t.snapshot().await.unwrap();
        let snap: FileSnapshot<crate::envfile::EnvVars> = snapshot.to_state("t").unwrap();
        // Ctrl-C while the new key is being written: the future is dropped, the write goes on.
        let write = t.blocking(move |f| {
            std::thread::sleep(Duration::from_millis(400));
            f.apply(&snap, "AKIANEWNEWNEWNEW0002", NEW_SECRET)
        });
        assert!(tokio::time::timeout(Duration::from_millis(50), write).await.is_err(), "the write was given up");
        t.rollback(&snapshot).await.unwrap();
        // Had the rollback read the file before the write landed, it would have found nothing to
        // restore, and the write would have put the new key back after it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(String::from_utf8(fs::read(&path).unwrap()).unwrap(), String::from_utf8_lossy(OLD));
    }

    #[tokio::test]
    async fn temp_files_of_the_file_are_swept_and_no_others() {
        let dir = tempfile::tempdir().unwrap();
        let (_, t) = env_file(dir.path());
        let leftovers = [".rekey-app.env.Ab12Cd.tmp", ".rekey-.app.env.rekey-backup.x9Y8z7.tmp"];
        let others = [".rekey-app.env.local.Ab12Cd.tmp", ".rekey-other.env.Ab12Cd.tmp", "app.env.tmp"];
        for n in leftovers.iter().chain(&others) {
            fs::write(dir.path().join(n), NEW_SECRET).unwrap();
        }
        let snapshot = t.snapshot().await.unwrap();
        let mut want: Vec<String> =
            others.iter().chain(&[".app.env.rekey-backup", "app.env"]).map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(names(dir.path()), want, "the next rotation sweeps what a crash left");

        t.apply(&key(), &snapshot).await.unwrap();
        fs::write(dir.path().join(leftovers[0]), NEW_SECRET).unwrap();
        t.finish(&snapshot).await.unwrap();
        want.retain(|n| n != ".app.env.rekey-backup");
        assert_eq!(names(dir.path()), want, "finish (and so resume) sweeps too");
    }

    #[tokio::test]
    async fn a_crash_while_snapshotting_leaves_no_backup_after_rollback() {
        let dir = tempfile::tempdir().unwrap();
        let (_, t) = env_file(dir.path());
        let pending = t.pending_snapshot().unwrap();
        let json = serde_json::to_string(&pending).unwrap();
        t.snapshot().await.unwrap();
        assert!(dir.path().join(".app.env.rekey-backup").exists());
        let (_, fresh) = env_file(dir.path());
        let pending: Snapshot = serde_json::from_str(&json).unwrap();
        fresh.rollback(&pending).await.unwrap();
        assert_eq!(names(dir.path()), ["app.env"]);
        assert!(fresh.apply(&key(), &pending).await.is_err(), "nothing is applied without a snapshot");
    }

    #[tokio::test]
    async fn a_journaled_snapshot_cannot_point_at_another_file() {
        let dir = tempfile::tempdir().unwrap();
        let (_, t) = env_file(dir.path());
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep me").unwrap();
        let mut snapshot = t.snapshot().await.unwrap();
        snapshot.0["path"] = serde_json::json!(victim);
        let e = t.rollback(&snapshot).await.unwrap_err();
        assert!(e.to_string().contains("only the files given on its command line"), "{e}");
        let mut snapshot = t.snapshot().await.unwrap();
        snapshot.0["backup"] = serde_json::json!(victim);
        assert!(t.finish(&snapshot).await.is_err());
        assert_eq!(fs::read(&victim).unwrap(), b"keep me");
        let e = t.rollback(&Snapshot(serde_json::json!({ PENDING: victim }))).await.unwrap_err();
        assert!(e.to_string().contains("only the files given on its command line"), "{e}");
    }
}
