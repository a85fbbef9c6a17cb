//! The fence as a journaled step: a fence left on by a killed `rekey incident` would deny the
//! application from every address the sample missed, with nobody left to lift it. So, like a
//! target's snapshot in the rotation journal, the intent is made durable *before* the policy is
//! put, and cleared only once the run has finished with the fence (lifted, or left on purpose and
//! said so in the report). `rekey resume --user U` lifts a fence whose entry is still there.
//!
//! One small JSON file per user in `<state dir>/incident-fences/`, written and fsynced with its
//! folder. It holds the user, the key and the policy name: nothing secret.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Test hook: abort the process right after the fence is applied (value `fence_applied`), as a
/// `kill -9` would, to prove that `rekey resume` lifts it.
pub const CRASH_AT_ENV: &str = "REKEY_TEST_CRASH_AT";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub user: String,
    pub access_key_id: String,
    pub policy_name: String,
    pub started_at: String,
}

/// A fence that is, or may be, on the user.
#[derive(Debug)]
pub struct Pending {
    path: PathBuf,
    pub entry: Entry,
}

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("incident-fences")
}

fn file_name(user: &str) -> String {
    // IAM user names are [\w+=,.@-]; none of them is a path separator.
    format!("{user}.json")
}

fn sync_dir(d: &Path) -> Result<(), String> {
    File::open(d).and_then(|f| f.sync_all()).map_err(|e| format!("cannot sync {}: {e}", d.display()))
}

/// Records that a fence is about to go on `user`; call before `PutUserPolicy`.
pub fn begin(state_dir: &Path, entry: Entry) -> Result<Pending, String> {
    let d = dir(state_dir);
    // Private like the rotation journals beside it (it names the user and the addresses the
    // application calls from), and never written through a link someone else planted.
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&d)
        .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    let path = d.join(file_name(&entry.user));
    let text = serde_json::to_string(&entry).expect("a fence entry serializes");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    sync_dir(&d)?;
    Ok(Pending { path, entry })
}

impl Pending {
    /// The run is finished with the fence (lifted, or knowingly left on and reported).
    pub fn finish(self) -> Result<(), String> {
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove {}: {e}", self.path.display())),
        }
        self.path.parent().map(sync_dir).transpose().map(|_| ())
    }
}

/// The fence entry a crashed run left for `user`, if any. An unreadable entry still names the
/// user by its file name, which is all lifting needs.
pub fn pending(state_dir: &Path, user: &str) -> Option<Pending> {
    let path = dir(state_dir).join(file_name(user));
    let text = fs::read_to_string(&path).ok()?;
    let entry = serde_json::from_str(&text).unwrap_or_else(|_| Entry {
        user: user.to_string(),
        access_key_id: String::new(),
        policy_name: super::fence::POLICY_NAME.to_string(),
        started_at: String::new(),
    });
    Some(Pending { path, entry })
}

/// Lifts the fence a crashed run left on `user` and clears its entry; `Ok(None)` when there was none.
pub async fn lift_pending(iam: &aws_sdk_iam::Client, state_dir: &Path, user: &str) -> Result<Option<String>, String> {
    let Some(p) = pending(state_dir, user) else { return Ok(None) };
    super::fence::remove(iam, user).await.map_err(|e| e.to_string())?;
    let key = p.entry.access_key_id.clone();
    p.finish()?;
    Ok(Some(format!(
        "lifted the incident fence {} that an interrupted `rekey incident` left on {user}{}",
        super::fence::POLICY_NAME,
        if key.is_empty() { String::new() } else { format!(" (leaked key {key})") }
    )))
}

/// The crash hook (tests only): abort at `point` when asked to.
pub fn crash_point(point: &str) {
    if std::env::var(CRASH_AT_ENV).is_ok_and(|v| v == point) {
        eprintln!("rekey: {CRASH_AT_ENV}={point} reached, aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_survives_until_finished() {
        let d = tempfile::tempdir().unwrap();
        assert!(pending(d.path(), "app").is_none());
        let entry = Entry {
            user: "app".into(),
            access_key_id: "AKIAEXAMPLEKEY000001".into(),
            policy_name: "rekey-incident-fence".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
        };
        let p = begin(d.path(), entry.clone()).unwrap();
        let mode = |path: &Path| std::os::unix::fs::PermissionsExt::mode(&fs::metadata(path).unwrap().permissions());
        assert_eq!(mode(&p.path) & 0o777, 0o600, "the entry is private");
        assert_eq!(mode(p.path.parent().unwrap()) & 0o777, 0o700);
        // A new process sees it.
        assert_eq!(pending(d.path(), "app").unwrap().entry, entry);
        assert!(pending(d.path(), "other").is_none());
        p.finish().unwrap();
        assert!(pending(d.path(), "app").is_none());
    }

    #[test]
    fn an_entry_is_never_written_through_a_planted_link() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, "untouched").unwrap();
        fs::create_dir_all(dir(d.path())).unwrap();
        std::os::unix::fs::symlink(&victim, dir(d.path()).join(file_name("app"))).unwrap();
        let entry = Entry {
            user: "app".into(),
            access_key_id: "AKIAEXAMPLEKEY000001".into(),
            policy_name: "rekey-incident-fence".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
        };
        assert!(begin(d.path(), entry).is_err());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "untouched");
    }
}
