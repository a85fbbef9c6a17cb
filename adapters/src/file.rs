//! What the adapters that work on this machine share: rewriting a file atomically with a backup
//! next to it (`env:`, `profile:`), and running a shell command bounded by a timeout (`env:` and
//! `profile:` restart commands, `exec:`).

use std::ffi::OsStr;
use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

pub(crate) fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

pub(crate) fn backup_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    parent(path).join(format!(".{name}.rekey-backup"))
}

pub(crate) fn fnv1a64(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8], like: &fs::Metadata) -> io::Result<()> {
    write_atomic_with(path, bytes, like.mode() & 0o7777, like.uid(), like.gid())
}

/// Replaces `path` so that a reader sees the old bytes or the new ones, and a crash leaves one of
/// them on disk.
pub(crate) fn write_atomic_with(path: &Path, bytes: &[u8], mode: u32, uid: u32, gid: u32) -> io::Result<()> {
    let dir = parent(path);
    // tempfile creates the file 0600, so the secret is never readable by others while it is written.
    let mut tmp = tempfile::Builder::new().prefix(".rekey-").suffix(".tmp").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    let mine = tmp.as_file().metadata()?;
    // Only root can give a file away; as anyone else the new file is simply ours, as before.
    if mine.uid() == 0 && (mine.uid() != uid || mine.gid() != gid) {
        std::os::unix::fs::chown(tmp.path(), Some(uid), Some(gid))?;
    }
    // After chown, which clears set-id bits.
    tmp.as_file().set_permissions(Permissions::from_mode(mode))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(path)
}

/// Makes a rename in the folder durable.
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(parent(path))?.sync_all()
}

pub(crate) fn redact<'a>(text: &str, secrets: impl Iterator<Item = &'a str>) -> String {
    let mut out = text.to_string();
    for s in secrets.filter(|s| s.len() >= 4) {
        out = out.replace(s, "[redacted]");
    }
    out
}

/// How a shell command went wrong; each caller words it for its own target.
#[derive(Debug)]
pub(crate) enum RunError {
    Spawn(io::Error),
    Wait(io::Error),
    Timeout,
    /// Exited unsuccessfully. `last_stderr` is the last non-blank line it wrote to stderr, not yet
    /// redacted: the caller knows which secrets to scrub.
    Failed {
        status: ExitStatus,
        last_stderr: String,
    },
}

/// Runs `sh -c <cmd>` with stdin and stdout closed, bounded by `timeout`.
///
/// Values go to the child through its environment only: a command line is visible to every user
/// of the machine (`ps`, `/proc/<pid>/cmdline`), an environment only to the same user and root.
pub(crate) async fn run_sh(
    cmd: &str,
    set: &[(&str, &OsStr)],
    remove: &[&str],
    timeout: Duration,
) -> Result<(), RunError> {
    let mut command = tokio::process::Command::new("sh");
    command.arg("-c").arg(cmd);
    for name in remove {
        command.env_remove(name);
    }
    for (name, value) in set {
        command.env(name, value);
    }
    let child = command
        .stdin(Stdio::null())
        // rekey's own stdout may be a JSON document; a command's chatter must not end up in it.
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // A timed-out command must not linger holding the app half-restarted.
        .kill_on_drop(true)
        .spawn()
        .map_err(RunError::Spawn)?;
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(result) => result.map_err(RunError::Wait)?,
        Err(_) => return Err(RunError::Timeout),
    };
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(no stderr)").to_string();
    Err(RunError::Failed { status: output.status, last_stderr: last })
}
