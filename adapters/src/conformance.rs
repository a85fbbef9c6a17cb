//! The suite every adapter must pass: apply, verify, roll back, and roll back after a crash from a
//! snapshot that went through the journal.
//!
//! A test implements [`Fixture`] for a prepared target (a temp file, a secret in the emulator) and
//! calls [`run`], or one case (`crash_after_apply`, …) while the adapter is being written. The suite
//! panics, naming the case, at the first broken promise; every case but `apply_then_finish` leaves
//! the target as it found it.

use async_trait::async_trait;

use crate::{NewKey, Snapshot, Target};

#[async_trait]
pub trait Fixture: Send + Sync {
    /// A fresh adapter for the fixture's target, as a new process would build after a crash.
    fn target(&self) -> Box<dyn Target>;

    /// Everything observable about the target that a rotation may change, byte for byte.
    async fn observe(&self) -> Vec<u8>;

    /// The key id the target holds before the suite runs, when it holds one itself.
    ///
    /// `None` is for a target that holds no key (an ECS service whose tasks read it from a secret):
    /// the suite then checks that the target reports none, and does not expect `apply` to show in
    /// [`Fixture::observe`], since such a target only restarts consumers and a restart cannot be
    /// undone byte for byte.
    fn old_key_id(&self) -> Option<String>;

    /// Leftovers of a rotation that the fixture can see besides the target itself (backup files,
    /// staging labels), one line each. Must be empty once a rotation has finished. The default sees
    /// none.
    async fn residue(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Runs every case against the fixture, in an order where each case but the last leaves the target
/// as it found it. `new_key` is what the suite rotates to; its secret must be unique enough that
/// finding it in a snapshot means the snapshot leaked it.
///
/// Each case is also a public function of its own, so that an adapter's test can run one case
/// alone while it is being written, as object_store's integration suite does.
pub async fn run(fixture: &dyn Fixture, new_key: &NewKey) {
    preflight_changes_nothing(fixture, new_key).await;
    apply_then_rollback(fixture, new_key).await;
    crash_before_apply(fixture, new_key).await;
    crash_while_snapshotting(fixture, new_key).await;
    crash_after_apply(fixture, new_key).await;
    stage_then_rollback(fixture, new_key).await;
    // Leaves the new key in place, so it comes last.
    apply_then_finish(fixture, new_key).await;
}

/// `preflight` reports the key the target holds and changes nothing.
pub async fn preflight_changes_nothing(fixture: &dyn Fixture, new_key: &NewKey) {
    let case = "preflight";
    let before = fixture.observe().await;
    let t = fixture.target();
    let pf = t.preflight().await.unwrap_or_else(|e| fail(case, &format!("preflight failed: {e}")));
    if let Some(old) = fixture.old_key_id() {
        check(case, pf.current_key_id.as_deref() == Some(old.as_str()), || {
            format!("preflight reports key {:?}, the target holds {old}", pf.current_key_id)
        });
        expect_key(case, t.as_ref(), &old).await;
    } else {
        check(case, pf.current_key_id.is_none(), || {
            format!("preflight reports key {:?}, the fixture says the target holds none", pf.current_key_id)
        });
        expect_no_key(case, t.as_ref()).await;
    }
    same(case, "preflight changed the target", &before, &fixture.observe().await, new_key);
}

/// Apply, then roll back twice in the same process: both rollbacks restore the target byte for byte.
pub async fn apply_then_rollback(fixture: &dyn Fixture, new_key: &NewKey) {
    let case = "apply then rollback";
    let before = fixture.observe().await;
    let old = fixture.old_key_id();
    let t = fixture.target();
    let snap = take_snapshot(case, t.as_ref()).await;
    t.apply(new_key, &snap).await.unwrap_or_else(|e| fail(case, &format!("apply failed: {e}")));
    if old.is_some() {
        expect_key(case, t.as_ref(), &new_key.access_key_id).await;
        check(case, fixture.observe().await != before, || "apply changed nothing the fixture observes".into());
    } else {
        expect_no_key(case, t.as_ref()).await;
    }
    for attempt in ["first", "second"] {
        t.rollback(&snap).await.unwrap_or_else(|e| fail(case, &format!("{attempt} rollback failed: {e}")));
        let after = fixture.observe().await;
        same(case, &format!("{attempt} rollback did not restore the target"), &before, &after, new_key);
    }
    if let Some(old) = &old {
        expect_key(case, t.as_ref(), old).await;
    }
    no_secret_in(case, &snap, new_key);
}

/// A crash before apply: only the journaled snapshot survives, and a rollback from it in a new
/// process changes nothing.
pub async fn crash_before_apply(fixture: &dyn Fixture, new_key: &NewKey) {
    let case = "crash before apply";
    let before = fixture.observe().await;
    let json = journal(case, &take_snapshot(case, fixture.target().as_ref()).await);
    let t = fixture.target();
    let snap = unjournal(case, &json);
    t.rollback(&snap).await.unwrap_or_else(|e| fail(case, &format!("rollback in a new process failed: {e}")));
    same(case, "rollback changed an untouched target", &before, &fixture.observe().await, new_key);
    no_secret_in(case, &snap, new_key);
}

/// A crash while the snapshot is taken: only its stand-in was journaled, and whatever the snapshot
/// made outside the process (a backup holding the old secret) must go with the rollback. A target
/// without a stand-in passes trivially.
pub async fn crash_while_snapshotting(fixture: &dyn Fixture, new_key: &NewKey) {
    let case = "crash while snapshotting";
    let before = fixture.observe().await;
    let t = fixture.target();
    let Some(pending) = t.pending_snapshot() else { return };
    let json = journal(case, &pending);
    take_snapshot(case, t.as_ref()).await;
    drop(t);
    let t = fixture.target();
    let snap = unjournal(case, &json);
    t.rollback(&snap).await.unwrap_or_else(|e| fail(case, &format!("rollback from the stand-in failed: {e}")));
    t.finish(&snap).await.unwrap_or_else(|e| fail(case, &format!("finish from the stand-in failed: {e}")));
    same(
        case,
        "rollback from the stand-in did not leave the target as it was",
        &before,
        &fixture.observe().await,
        new_key,
    );
    let residue = fixture.residue().await;
    check(case, residue.is_empty(), || format!("what the snapshot made is left behind: {residue:?}"));
}

/// A crash after apply: a new process rolls back from the journaled snapshot.
pub async fn crash_after_apply(fixture: &dyn Fixture, new_key: &NewKey) {
    let case = "crash after apply";
    let before = fixture.observe().await;
    let json = {
        let t = fixture.target();
        let snap = take_snapshot(case, t.as_ref()).await;
        let json = journal(case, &snap);
        t.apply(new_key, &snap).await.unwrap_or_else(|e| fail(case, &format!("apply failed: {e}")));
        json
    };
    let t = fixture.target();
    let snap = unjournal(case, &json);
    t.rollback(&snap).await.unwrap_or_else(|e| fail(case, &format!("rollback in a new process failed: {e}")));
    same(case, "rollback in a new process did not restore the target", &before, &fixture.observe().await, new_key);
    if let Some(old) = fixture.old_key_id() {
        expect_key(case, t.as_ref(), &old).await;
    }
    no_secret_in(case, &snap, new_key);
}

/// Stage, crash, roll back: staging does not reach consumers, and the rollback undoes it.
pub async fn stage_then_rollback(fixture: &dyn Fixture, new_key: &NewKey) {
    let case = "stage then rollback";
    let before = fixture.observe().await;
    let json = {
        let t = fixture.target();
        let snap = take_snapshot(case, t.as_ref()).await;
        let json = journal(case, &snap);
        t.stage(new_key, &snap).await.unwrap_or_else(|e| fail(case, &format!("stage failed: {e}")));
        if let Some(old) = fixture.old_key_id() {
            // Staging must not reach consumers: they still get the old key.
            expect_key(case, t.as_ref(), &old).await;
        }
        json
    };
    let t = fixture.target();
    let snap = unjournal(case, &json);
    t.rollback(&snap).await.unwrap_or_else(|e| fail(case, &format!("rollback in a new process failed: {e}")));
    same(case, "rollback after stage did not restore the target", &before, &fixture.observe().await, new_key);
    no_secret_in(case, &snap, new_key);
}

/// A rotation that completes: the new key stays, nothing is left behind, and the next rotation (a
/// new process) finds the target usable. Leaves the target holding the new key.
pub async fn apply_then_finish(fixture: &dyn Fixture, new_key: &NewKey) {
    let case = "apply then finish";
    let before = fixture.observe().await;
    let old = fixture.old_key_id();
    let t = fixture.target();
    let snap = take_snapshot(case, t.as_ref()).await;
    t.stage(new_key, &snap).await.unwrap_or_else(|e| fail(case, &format!("stage failed: {e}")));
    t.apply(new_key, &snap).await.unwrap_or_else(|e| fail(case, &format!("apply failed: {e}")));
    t.finish(&snap).await.unwrap_or_else(|e| fail(case, &format!("finish failed: {e}")));
    if old.is_some() {
        let after = fixture.observe().await;
        check(case, after != before, || "the target no longer shows the new key after finish".into());
    }
    let residue = fixture.residue().await;
    check(case, residue.is_empty(), || format!("finish left residue behind: {residue:?}"));
    let t = fixture.target();
    let pf = t.preflight().await.unwrap_or_else(|e| fail(case, &format!("preflight after finish failed: {e}")));
    if old.is_some() {
        check(case, pf.current_key_id.as_deref() == Some(new_key.access_key_id.as_str()), || {
            format!("preflight after finish reports key {:?}, not the new key", pf.current_key_id)
        });
        expect_key(case, t.as_ref(), &new_key.access_key_id).await;
    } else {
        check(case, pf.current_key_id.is_none(), || {
            format!("preflight after finish reports key {:?} on a target that holds none", pf.current_key_id)
        });
    }
    no_secret_in(case, &snap, new_key);
}

/// Snapshots are journaled: neither their JSON nor their Debug may carry the new secret.
fn no_secret_in(case: &str, snap: &Snapshot, new_key: &NewKey) {
    let secret = new_key.secret();
    check(case, !journal(case, snap).contains(secret), || "the journaled snapshot contains the new secret".into());
    check(case, !format!("{snap:?}").contains(secret), || "the Debug of the snapshot contains the new secret".into());
}

fn fail(case: &str, message: &str) -> ! {
    panic!("conformance case `{case}`: {message}")
}

fn check(case: &str, ok: bool, message: impl FnOnce() -> String) {
    if !ok {
        fail(case, &message());
    }
}

async fn take_snapshot(case: &str, t: &dyn Target) -> Snapshot {
    t.snapshot().await.unwrap_or_else(|e| fail(case, &format!("snapshot failed: {e}")))
}

async fn expect_key(case: &str, t: &dyn Target, want: &str) {
    let got = t.current_key_id().await.unwrap_or_else(|e| fail(case, &format!("current_key_id failed: {e}")));
    check(case, got.as_deref() == Some(want), || format!("current_key_id is {got:?}, expected {want}"));
}

async fn expect_no_key(case: &str, t: &dyn Target) {
    let got = t.current_key_id().await.unwrap_or_else(|e| fail(case, &format!("current_key_id failed: {e}")));
    check(case, got.is_none(), || format!("current_key_id is {got:?} on a target that holds no key"));
}

/// What the orchestrator does with a snapshot: write it to the journal as JSON text.
fn journal(case: &str, snap: &Snapshot) -> String {
    serde_json::to_string(snap).unwrap_or_else(|e| fail(case, &format!("snapshot does not serialize: {e}")))
}

fn unjournal(case: &str, json: &str) -> Snapshot {
    serde_json::from_str(json).unwrap_or_else(|e| fail(case, &format!("journalled snapshot does not deserialize: {e}")))
}

/// Asserts two observations are byte-identical; on failure shows where they differ, with the new
/// secret masked so that a failing test does not print it.
fn same(case: &str, message: &str, want: &[u8], got: &[u8], key: &NewKey) {
    if want == got {
        return;
    }
    let at = want.iter().zip(got).position(|(a, b)| a != b).unwrap_or(want.len().min(got.len()));
    let show = |bytes: &[u8]| String::from_utf8_lossy(bytes).replace(key.secret(), "[new secret]");
    fail(
        case,
        &format!(
            "{message}: first difference at byte {at} (expected {} bytes, got {})\n--- expected\n{}\n--- got\n{}",
            want.len(),
            got.len(),
            show(want),
            show(got)
        ),
    );
}

/// A target kept in one local file (`env:`, `profile:`): observed as the file's bytes and mode, with
/// any other file in its folder (a backup, a temp file) as residue. The test owns the folder.
pub struct FileFixture {
    pub path: std::path::PathBuf,
    pub spec: crate::TargetSpec,
    pub old_key_id: String,
}

impl FileFixture {
    /// `spec` names the file; a spec that does not parse is a broken test.
    pub fn new(path: impl Into<std::path::PathBuf>, spec: &str, old_key_id: &str) -> Self {
        let spec = spec.parse().unwrap_or_else(|e| panic!("fixture spec {spec}: {e}"));
        FileFixture { path: path.into(), spec, old_key_id: old_key_id.to_string() }
    }
}

#[async_trait]
impl Fixture for FileFixture {
    fn target(&self) -> Box<dyn Target> {
        // Building talks to nothing; a local file needs no AWS configuration.
        crate::build(&self.spec, &aws_types::SdkConfig::builder().build(), &crate::Options::default())
    }

    async fn observe(&self) -> Vec<u8> {
        use std::os::unix::fs::PermissionsExt;
        let mut out = std::fs::read(&self.path).expect("the fixture's file is readable");
        let mode = std::fs::metadata(&self.path).expect("the fixture's file exists").permissions().mode();
        out.extend(format!("\nmode {mode:o}").bytes());
        out
    }

    fn old_key_id(&self) -> Option<String> {
        Some(self.old_key_id.clone())
    }

    async fn residue(&self) -> Vec<String> {
        let folder = self.path.parent().expect("the fixture's file is in a folder");
        let mut names: Vec<String> = std::fs::read_dir(folder)
            .expect("the fixture's folder is readable")
            .filter_map(|e| e.ok())
            .filter(|e| e.path() != self.path)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use secrecy::SecretString;
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::{Preflight, TargetError};

    /// A store holding `id:secret`, with a switch to break its rollback.
    #[derive(Clone)]
    struct Memory {
        value: Arc<Mutex<String>>,
        rollback_works: bool,
    }

    #[derive(Serialize, Deserialize)]
    struct MemorySnapshot {
        old: String,
    }

    impl Memory {
        fn get(&self) -> String {
            self.value.lock().map(|v| v.clone()).unwrap_or_default()
        }

        fn set(&self, v: String) {
            if let Ok(mut g) = self.value.lock() {
                *g = v;
            }
        }
    }

    #[async_trait]
    impl Target for Memory {
        fn name(&self) -> &str {
            "memory"
        }
        async fn preflight(&self) -> Result<Preflight, TargetError> {
            Ok(Preflight { current_key_id: self.current_key_id().await?, ..Preflight::default() })
        }
        async fn snapshot(&self) -> Result<Snapshot, TargetError> {
            // Only the id: the secret half must never reach the journal.
            Ok(Snapshot::from_state(&MemorySnapshot { old: self.get() }))
        }
        async fn apply(&self, key: &NewKey, _: &Snapshot) -> Result<(), TargetError> {
            self.set(format!("{}:{}", key.access_key_id, key.secret()));
            Ok(())
        }
        async fn current_key_id(&self) -> Result<Option<String>, TargetError> {
            Ok(self.get().split(':').next().map(str::to_string))
        }
        async fn rollback(&self, snapshot: &Snapshot) -> Result<(), TargetError> {
            if self.rollback_works {
                self.set(snapshot.to_state::<MemorySnapshot>("memory")?.old);
            }
            Ok(())
        }
    }

    #[async_trait]
    impl Fixture for Memory {
        fn target(&self) -> Box<dyn Target> {
            Box::new(self.clone())
        }
        async fn observe(&self) -> Vec<u8> {
            self.get().into_bytes()
        }
        fn old_key_id(&self) -> Option<String> {
            Some("AKIAOLD".into())
        }
    }

    fn memory(rollback_works: bool) -> Memory {
        // The old "secret" is a public placeholder, so snapshotting the whole value is fine here.
        Memory { value: Arc::new(Mutex::new("AKIAOLD:placeholder".into())), rollback_works }
    }

    fn key() -> NewKey {
        NewKey::new("AKIANEW", SecretString::from("the-new-secret-value".to_string()))
    }

    #[tokio::test]
    async fn a_correct_adapter_passes() {
        run(&memory(true), &key()).await;
    }

    #[tokio::test]
    #[should_panic(expected = "conformance case `apply then rollback`: first rollback did not restore")]
    async fn a_rollback_that_restores_nothing_fails() {
        run(&memory(false), &key()).await;
    }

    #[tokio::test]
    #[should_panic(expected = "conformance case `crash after apply`: rollback in a new process did not restore")]
    async fn one_case_runs_alone_and_names_itself() {
        let fixture = memory(false);
        preflight_changes_nothing(&fixture, &key()).await;
        crash_after_apply(&fixture, &key()).await;
    }

    /// A fixture that claims its target holds no key, to skip the checks that `apply` shows.
    struct Keyless(Memory);

    #[async_trait]
    impl Fixture for Keyless {
        fn target(&self) -> Box<dyn Target> {
            Box::new(self.0.clone())
        }
        async fn observe(&self) -> Vec<u8> {
            self.0.get().into_bytes()
        }
        fn old_key_id(&self) -> Option<String> {
            None
        }
    }

    #[tokio::test]
    #[should_panic(expected = "conformance case `preflight`: preflight reports key Some(\"AKIAOLD\")")]
    async fn a_target_holding_a_key_cannot_pass_as_keyless() {
        run(&Keyless(memory(true)), &key()).await;
    }
}
