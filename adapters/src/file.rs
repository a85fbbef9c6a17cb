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

/// The start of the names of `path`'s temp files: `.rekey-<file name>.`, then
/// [`TEMP_RANDOM`] random characters and `.tmp`.
fn temp_prefix(path: &Path) -> String {
    format!(".rekey-{}.", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default())
}

const TEMP_RANDOM: usize = 6;

/// Replaces `path` so that a reader sees the old bytes or the new ones, and a crash leaves one of
/// them on disk (and at worst a temp file that [`sweep_temps`] removes).
pub(crate) fn write_atomic_with(path: &Path, bytes: &[u8], mode: u32, uid: u32, gid: u32) -> io::Result<()> {
    let dir = parent(path);
    // tempfile creates the file 0600, so the secret is never readable by others while it is written.
    let mut tmp =
        tempfile::Builder::new().prefix(&temp_prefix(path)).rand_bytes(TEMP_RANDOM).suffix(".tmp").tempfile_in(dir)?;
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

/// Removes the temp files that writes of `path` left when the process died before the rename.
/// Only `path`'s own: another file in the folder may be in the middle of its own write.
pub(crate) fn sweep_temps(path: &Path) -> io::Result<()> {
    let prefix = temp_prefix(path);
    let mut removed = false;
    for entry in fs::read_dir(parent(path))? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(random) =
            name.to_str().and_then(|n| n.strip_prefix(prefix.as_str())).and_then(|n| n.strip_suffix(".tmp"))
        else {
            continue;
        };
        // `.rekey-a.env.` must not sweep the temp files of `a.env.local`.
        if random.len() != TEMP_RANDOM || !random.bytes().all(|b| b.is_ascii_alphanumeric()) {
            continue;
        }
        match fs::remove_file(entry.path()) {
            Ok(()) => removed = true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if removed {
        sync_dir(path)?;
    }
    Ok(())
}

/// Makes a rename in the folder durable.
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(parent(path))?.sync_all()
}

/// Variables of rekey's own environment that hold or lead to its AWS credentials. A command of the
/// user's runs without them: it must not act as the rotating principal (an admin), and a session
/// token beside the key handed to `exec:` would make every call with that key fail.
pub(crate) const OWN_CREDENTIALS: [&str; 14] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CREDENTIAL_EXPIRATION",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
];

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

/// How much of a command's stderr is kept to quote its last line.
const STDERR_TAIL: usize = 8 * 1024;

/// How long stderr is read after the command exited. Something it started in the background may
/// hold stderr open for as long as it runs: its output is drained, not waited for.
const STDERR_AFTER_EXIT: Duration = Duration::from_millis(200);

/// Runs `sh -c <cmd>` with stdin and stdout closed, bounded by `timeout`.
///
/// Values go to the child through its environment only: a command line is visible to every user
/// of the machine (`ps`, `/proc/<pid>/cmdline`), an environment only to the same user and root.
/// rekey's own credentials are removed from that environment ([`OWN_CREDENTIALS`]) before `set`
/// is applied.
///
/// The command runs in a process group of its own. On timeout, or when the caller stops waiting
/// (Ctrl-C drops the future), the whole group is killed: a plain kill of `sh` would leave what it
/// started (`sleep`, a half-done deploy) running. Being its own group also keeps the terminal's
/// Ctrl-C away from it: rekey decides whether it stops. A command that exits by itself keeps what
/// it started in the background (a restart command may launch the app that way).
pub(crate) async fn run_sh(cmd: &str, set: &[(&str, &OsStr)], timeout: Duration) -> Result<(), RunError> {
    let mut command = tokio::process::Command::new("sh");
    command.arg("-c").arg(cmd);
    for name in OWN_CREDENTIALS {
        command.env_remove(name);
    }
    for (name, value) in set {
        command.env(name, value);
    }
    let mut child = command
        .stdin(Stdio::null())
        // rekey's own stdout may be a JSON document; a command's chatter must not end up in it.
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(RunError::Spawn)?;
    let group = child.id().map(ProcessGroup::new);
    let tail = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = child.stderr.take().map(|stderr| tokio::spawn(drain(stderr, tail.clone())));
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status,
        // `group` is dropped on return, which kills it.
        Ok(Err(e)) => return Err(RunError::Wait(e)),
        Err(_) => {
            drop(group);
            // Reaped here, so that no zombie outlives the call.
            let _ = child.wait().await;
            if let Some(r) = reader {
                r.abort();
            }
            return Err(RunError::Timeout);
        }
    };
    if let Some(g) = group {
        g.disarm();
    }
    if status.success() {
        return Ok(());
    }
    if let Some(r) = reader {
        // Not aborted when it runs late: the task goes on draining for the background process.
        let _ = tokio::time::timeout(STDERR_AFTER_EXIT, r).await;
    }
    let bytes = tail.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let stderr = String::from_utf8_lossy(&bytes);
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(no stderr)").to_string();
    Err(RunError::Failed { status, last_stderr: last })
}

/// Reads `stderr` to its end, keeping the last [`STDERR_TAIL`] bytes in `tail`.
async fn drain(mut stderr: tokio::process::ChildStderr, tail: std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    while let Ok(n) = stderr.read(&mut buf).await {
        if n == 0 {
            return;
        }
        let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.extend_from_slice(&buf[..n]);
        let excess = tail.len().saturating_sub(STDERR_TAIL);
        tail.drain(..excess);
    }
}

/// The process group of a command rekey started, killed (SIGKILL) when this is dropped unless
/// [`ProcessGroup::disarm`]ed first.
///
/// Its id is the leader's pid, which stays reserved while the leader is not reaped: the group is
/// disarmed as soon as the leader is, so the signal cannot reach an unrelated group.
struct ProcessGroup(Option<i32>);

impl ProcessGroup {
    fn new(leader: u32) -> Self {
        ProcessGroup(i32::try_from(leader).ok().filter(|p| *p > 0))
    }

    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: killpg only sends a signal; a group already gone yields ESRCH, which is fine.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
}
