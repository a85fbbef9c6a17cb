//! `profile:<name>[@<credentials-file>]`: a profile in an AWS shared credentials file, as
//! `aws-vault` and `aws-rotate-key` rotate it.
//!
//! The file is `<credentials-file>` if given, else `$AWS_SHARED_CREDENTIALS_FILE`, else
//! `~/.aws/credentials`. Only the values of `aws_access_key_id` and `aws_secret_access_key` in the
//! `[name]` section change; comments, other profiles, other settings of the profile, their order,
//! spacing around `=`, line endings and the file mode stay byte for byte. Like `env:`, the file goes
//! through the shared engine (`keyfile.rs`): atomic rewrite, and a backup next to it that makes the
//! rollback byte-exact, even after a crash.
//!
//! The parser follows what the AWS CLI (botocore) and the SDKs read: `[section]` headers, `#` and
//! `;` comment lines, `key = value` properties, and indented lines after a property as its
//! continuation (nested `s3 =` settings), which are never taken for the key.

use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::keyfile::{KeyFileTarget, KeyFormat, Located};
use crate::{ErrorKind, Options, TargetSpec};

const ID_KEY: &str = "aws_access_key_id";
const SECRET_KEY: &str = "aws_secret_access_key";
/// A profile with one of these holds temporary credentials (or is fed by a tool that writes them):
/// swapping in a long-term key beside a stale token would break it.
const SESSION_KEYS: [&str; 2] = ["aws_session_token", "aws_security_token"];

pub type ProfileTarget = KeyFileTarget<CredFile>;

impl ProfileTarget {
    pub fn new(spec: &TargetSpec, _sdk: &aws_types::SdkConfig, options: &Options) -> Self {
        let (profile, path) = split_location(&spec.location, |name| std::env::var_os(name));
        KeyFileTarget::with_format(&spec.raw, CredFile { profile, path }, options)
    }
}

/// A credentials file and the profile in it that holds the key.
#[derive(Clone)]
pub struct CredFile {
    profile: String,
    path: PathBuf,
}

/// The profile the snapshot was taken of, for the restart command and rollback messages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProfileName {
    profile: String,
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

impl KeyFormat for CredFile {
    const FILE: &'static str = "credentials file";
    const RESTART_SO: &'static str = "long-running consumers read the new key";
    const RESTORE_BY_HAND: &'static str = "profile";
    type Names = ProfileName;
    type Value = Property;

    fn path(&self) -> &Path {
        &self.path
    }

    /// Finds the one `[profile]` section and its one id and one secret, or says how to fix the file.
    fn locate(&self, bytes: &[u8]) -> Result<Located<Property>, ErrorKind> {
        let path = self.path.display();
        let profile = &self.profile;
        if profile.is_empty() {
            return Err(ErrorKind::Unusable("no profile name; write profile:<name>[@<file>]".into()));
        }
        let sections = parse(bytes);
        let hits: Vec<&Section> = sections.iter().filter(|s| &s.name == profile).collect();
        let section = match hits.as_slice() {
            [] => {
                let names: Vec<&str> = sections.iter().map(|s| s.name.as_str()).collect();
                return Err(ErrorKind::NotFound(format!(
                    "{path} has no [{profile}] profile (it has: {})",
                    if names.is_empty() { "none".to_string() } else { names.join(", ") }
                )));
            }
            [one] => *one,
            many => {
                let lines: Vec<String> = many.iter().map(|s| s.line.to_string()).collect();
                return Err(ErrorKind::Unusable(format!(
                    "{path} has [{profile}] more than once (lines {}); the AWS CLI refuses such a file: merge them",
                    lines.join(", ")
                )));
            }
        };
        if let Some(token) = section.props.iter().find(|p| SESSION_KEYS.contains(&p.key.as_str())) {
            return Err(ErrorKind::Unusable(format!(
                "[{profile}] in {path} has {} (line {}): it holds temporary credentials, not a long-term access key; \
                 name the profile that holds the user's access key",
                token.key, token.line
            )));
        }
        let find = |key: &str| -> Result<Property, ErrorKind> {
            let found: Vec<&Property> = section.props.iter().filter(|p| p.key == key).collect();
            match found.as_slice() {
                [] => Err(ErrorKind::Unusable(format!(
                    "[{profile}] in {path} has no {key}; add it (rekey only replaces an existing key)"
                ))),
                [one] if one.spaced => Err(ErrorKind::Unusable(format!(
                    "{path} line {}: the value of {key} has blanks in it; an access key has none, fix the line",
                    one.line
                ))),
                [one] => Ok((*one).clone()),
                many => {
                    let lines: Vec<String> = many.iter().map(|p| p.line.to_string()).collect();
                    Err(ErrorKind::Unusable(format!(
                        "[{profile}] in {path} sets {key} more than once (lines {}); remove all but one",
                        lines.join(", ")
                    )))
                }
            }
        };
        let id = find(ID_KEY)?;
        let secret = find(SECRET_KEY)?;
        let key_id = Some(String::from_utf8_lossy(&bytes[id.value.clone()]).into_owned()).filter(|s| !s.is_empty());
        Ok(Located { id, secret, key_id })
    }

    fn names(&self, _found: &Located<Property>) -> ProfileName {
        ProfileName { profile: self.profile.clone() }
    }

    /// The profile is found afresh: the spec names it, and the checks of `locate` still apply.
    fn relocate(&self, _names: &ProfileName, _file: &Path, bytes: &[u8]) -> Result<Located<Property>, ErrorKind> {
        self.locate(bytes)
    }

    fn range(value: &Property) -> Range<usize> {
        value.value.clone()
    }

    fn holds(value: &Property, bytes: &[u8], wanted: &str) -> bool {
        &bytes[value.value.clone()] == wanted.as_bytes()
    }

    fn check_writable(
        &self,
        _found: &Located<Property>,
        file: &Path,
        key_id: &str,
        secret: &str,
    ) -> Result<(), ErrorKind> {
        for (key, value) in [(ID_KEY, key_id), (SECRET_KEY, secret)] {
            // Anything the parser would cut or read differently must not be half-written.
            if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ErrorKind::Unusable(format!(
                    "the new value of {key} is empty or has blanks; it cannot be written to {}",
                    file.display()
                )));
            }
        }
        Ok(())
    }

    fn holds_key_id(&self, _names: &ProfileName, bytes: &[u8], old_key_id: Option<&str>) -> bool {
        self.locate(bytes).is_ok_and(|found| found.key_id.as_deref() == old_key_id)
    }

    fn secret(&self, _names: &ProfileName, bytes: &[u8]) -> Option<Zeroizing<String>> {
        let found = self.locate(bytes).ok()?;
        Some(Zeroizing::new(String::from_utf8_lossy(&bytes[found.secret.value]).into_owned()))
    }

    fn describe(&self, _found: &Located<Property>) -> String {
        format!("{ID_KEY} and {SECRET_KEY} of [{}]", self.profile)
    }

    fn scope(names: &ProfileName, file: &Path) -> String {
        format!("[{}] in {}", names.profile, file.display())
    }

    fn warnings(
        &self,
        found: &Located<Property>,
        file: &Path,
        meta: &Metadata,
        _restart_cmd: Option<&str>,
    ) -> Vec<String> {
        let mut warnings = Vec::new();
        if found.key_id.is_none() {
            warnings.push(format!("{ID_KEY} of [{}] is empty in {}", self.profile, file.display()));
        }
        if meta.mode() & 0o077 != 0 {
            warnings.push(format!(
                "{} is readable or writable by other users (mode {:04o}); the AWS CLI creates it 0600",
                file.display(),
                meta.mode() & 0o7777
            ));
        }
        warnings
    }

    fn restart_env(names: &ProfileName) -> Vec<(&'static str, &OsStr)> {
        vec![("REKEY_PROFILE", OsStr::new(&names.profile))]
    }
}

/// One `key = value` line of a section. `value` is the byte range of the value, which is all a
/// rewrite replaces.
#[derive(Clone)]
pub struct Property {
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
    use crate::{NewKey, Target, TargetError};
    use secrecy::SecretString;
    use std::fs::{self, Permissions};
    use std::os::unix::fs::PermissionsExt;

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

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let content = format!(
            "[default]\r\naws_access_key_id = AKIADEFAULT\r\naws_secret_access_key = d\r\n\r\n[app]\r\n\
             aws_access_key_id = {OLD_ID}\r\nregion = eu-west-1\r\naws_secret_access_key = old/secret+value"
        );
        let path = write(dir.path(), "credentials", content.as_bytes(), 0o600);
        let fixture = crate::conformance::FileFixture::new(&path, &format!("profile:app@{}", path.display()), OLD_ID);
        crate::conformance::run(&fixture, &key()).await;
        drop(dir);
    }
}
