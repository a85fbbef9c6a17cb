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

use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, Metadata, OpenOptions, Permissions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::redact;
use crate::file::{RunError, backup_path, fnv1a64, parent, run_sh, sync_dir, write_atomic, write_atomic_with};
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
        }
    }

    async fn blocking<T, W>(&self, work: W) -> Result<T, TargetError>
    where
        T: Send + 'static,
        W: FnOnce(KeyFile<F>) -> Result<T, TargetError> + Send + 'static,
    {
        let file = self.file.clone();
        let name = self.file.name.clone();
        tokio::task::spawn_blocking(move || work(file))
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

    async fn apply(&self, key: &NewKey, snapshot: &Snapshot) -> Result<(), TargetError> {
        let snap: FileSnapshot<F::Names> = snapshot.to_state(&self.file.name)?;
        let id = key.access_key_id.clone();
        let secret = Zeroizing::new(key.secret().to_string());
        self.blocking(move |f| f.apply(&snap, &id, &secret)).await
    }

    async fn wait_consumers(&self, snapshot: &Snapshot) -> Result<(), TargetError> {
        let snap: FileSnapshot<F::Names> = snapshot.to_state(&self.file.name)?;
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
        let snap: FileSnapshot<F::Names> = snapshot.to_state(&self.file.name)?;
        let for_task = snap.clone();
        let restored = self.blocking(move |f| f.rollback(&for_task)).await?;
        if restored {
            self.restart(&snap, "rollback").await?;
        }
        Ok(())
    }

    async fn finish(&self, snapshot: &Snapshot) -> Result<(), TargetError> {
        let snap: FileSnapshot<F::Names> = snapshot.to_state(&self.file.name)?;
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
