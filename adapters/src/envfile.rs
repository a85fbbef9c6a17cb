//! `env:<path>`: a dotenv file that an app reads its key from.
//!
//! Only the bytes of the two values change; every other byte of the file (comments, order, quoting,
//! `export`, line endings, a missing final newline) stays as the user wrote it, so a rotation shows
//! up in a diff as exactly two changed values. This module only knows the dotenv format; the
//! atomic rewrite, the backup that makes rollback byte-exact and the restart command are the shared
//! engine's (`keyfile.rs`).

use std::ffi::OsStr;
use std::fs::Metadata;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::keyfile::{KeyFileTarget, KeyFormat, Located};
use crate::{ErrorKind, Options, TargetSpec};

pub type EnvFileTarget = KeyFileTarget<EnvFile>;

impl EnvFileTarget {
    pub fn new(spec: &TargetSpec, options: &Options) -> Self {
        let format = EnvFile {
            path: PathBuf::from(&spec.location),
            id_fields: spec.id_fields(),
            secret_fields: spec.secret_fields(),
        };
        KeyFileTarget::with_format(&spec.raw, format, options)
    }
}

/// A dotenv file and the variable names that may hold the key.
#[derive(Clone)]
pub struct EnvFile {
    path: PathBuf,
    id_fields: Vec<String>,
    secret_fields: Vec<String>,
}

/// The variables the snapshot found the key in, so apply and rollback look at the same ones.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvVars {
    id_var: String,
    secret_var: String,
}

impl KeyFormat for EnvFile {
    const FILE: &'static str = "env file";
    const RESTART_SO: &'static str = "the app reads the new file";
    const RESTORE_BY_HAND: &'static str = "file";
    type Names = EnvVars;
    type Value = Assignment;

    fn path(&self) -> &Path {
        &self.path
    }

    fn locate(&self, bytes: &[u8]) -> Result<Located<Assignment>, ErrorKind> {
        let path = self.path.display();
        let vars = parse(bytes).map_err(|e| ErrorKind::Unusable(format!("{path}: {e}")))?;
        let find = |names: &[String], what: &str, option: &str| -> Result<Assignment, ErrorKind> {
            let present: Vec<&String> = names.iter().filter(|n| vars.iter().any(|a| &a.name == *n)).collect();
            let Some(name) = present.first() else {
                return Err(ErrorKind::Unusable(format!(
                    "{path} sets no {what} variable (looked for {}); add it, or name the variable with ?{option}=NAME",
                    names.join(", ")
                )));
            };
            if present.len() > 1 {
                let both: Vec<&str> = present.iter().map(|s| s.as_str()).collect();
                return Err(ErrorKind::Unusable(format!(
                    "{path} sets {} as {what} variables; keep one, or pick one with ?{option}=NAME",
                    both.join(" and ")
                )));
            }
            let hits: Vec<&Assignment> = vars.iter().filter(|a| &a.name == *name).collect();
            if hits.len() > 1 {
                let lines: Vec<String> = hits.iter().map(|a| a.line.to_string()).collect();
                return Err(ErrorKind::Unusable(format!(
                    "{path} sets {name} more than once (lines {}); remove all but one",
                    lines.join(", ")
                )));
            }
            let a = hits[0].clone();
            if a.unterminated || a.multiline {
                return Err(ErrorKind::Unusable(format!(
                    "{path} line {}: the value of {name} is an unterminated or multi-line quoted value; put it on one line",
                    a.line
                )));
            }
            Ok(a)
        };
        let id = find(&self.id_fields, "key id", "id-field")?;
        let secret = find(&self.secret_fields, "secret key", "secret-field")?;
        Ok(Located { key_id: key_id(&id), id, secret })
    }

    fn names(&self, found: &Located<Assignment>) -> EnvVars {
        EnvVars { id_var: found.id.name.clone(), secret_var: found.secret.name.clone() }
    }

    fn relocate(&self, names: &EnvVars, file: &Path, bytes: &[u8]) -> Result<Located<Assignment>, ErrorKind> {
        let vars = parse(bytes).map_err(|e| ErrorKind::Unusable(format!("{}: {e}", file.display())))?;
        let find = |name: &str| {
            vars.iter()
                .find(|a| a.name == name)
                .cloned()
                .ok_or_else(|| ErrorKind::Unusable(format!("{} no longer sets {name}", file.display())))
        };
        let (id, secret) = (find(&names.id_var)?, find(&names.secret_var)?);
        Ok(Located { key_id: key_id(&id), id, secret })
    }

    fn range(value: &Assignment) -> Range<usize> {
        value.value.clone()
    }

    fn holds(value: &Assignment, _bytes: &[u8], wanted: &str) -> bool {
        value.decoded.as_slice() == wanted.as_bytes()
    }

    fn check_writable(
        &self,
        found: &Located<Assignment>,
        file: &Path,
        key_id: &str,
        secret: &str,
    ) -> Result<(), ErrorKind> {
        for (a, value) in [(&found.id, key_id), (&found.secret, secret)] {
            if let Err(why) = fits(a, value) {
                return Err(ErrorKind::Unusable(format!(
                    "the new value of {} cannot be written {why} in {}; quote it with double quotes",
                    a.name,
                    file.display()
                )));
            }
        }
        Ok(())
    }

    fn holds_key_id(&self, names: &EnvVars, bytes: &[u8], old_key_id: Option<&str>) -> bool {
        let Ok(vars) = parse(bytes) else { return false };
        vars.iter()
            .find(|a| a.name == names.id_var)
            .is_some_and(|id| Some(String::from_utf8_lossy(&id.decoded).trim()) == old_key_id)
    }

    fn secret(&self, names: &EnvVars, bytes: &[u8]) -> Option<Zeroizing<String>> {
        let vars = parse(bytes).ok()?;
        let a = vars.iter().find(|a| a.name == names.secret_var)?;
        Some(Zeroizing::new(String::from_utf8_lossy(&a.decoded).into_owned()))
    }

    fn describe(&self, found: &Located<Assignment>) -> String {
        format!("{} and {}", found.id.name, found.secret.name)
    }

    fn scope(_names: &EnvVars, file: &Path) -> String {
        file.display().to_string()
    }

    fn warnings(
        &self,
        found: &Located<Assignment>,
        file: &Path,
        meta: &Metadata,
        restart_cmd: Option<&str>,
    ) -> Vec<String> {
        let mut warnings = Vec::new();
        if found.key_id.is_none() {
            warnings.push(format!("{} is empty in {}", found.id.name, file.display()));
        }
        if meta.mode() & 0o004 != 0 {
            warnings.push(format!("{} is readable by every user (mode {:04o})", file.display(), meta.mode() & 0o7777));
        }
        if restart_cmd.is_none() {
            warnings.push(format!(
                "no --restart-cmd: apps that read {} only at start keep the old key until restarted",
                file.display()
            ));
        }
        warnings
    }

    fn restart_env(_names: &EnvVars) -> Vec<(&'static str, &OsStr)> {
        Vec::new()
    }
}

fn key_id(id: &Assignment) -> Option<String> {
    Some(String::from_utf8_lossy(&id.decoded).trim().to_string()).filter(|s| !s.is_empty())
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
pub struct Assignment {
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

/// Whether the quoting the user chose can hold `value` as it is, and if not, what that quoting is.
fn fits(a: &Assignment, value: &str) -> Result<(), &'static str> {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NewKey, Target};
    use secrecy::SecretString;
    use std::fs::{self, Permissions};
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

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

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let content = format!(
            "# deployed by ops\r\nexport AWS_ACCESS_KEY_ID=\"{OLD_ID}\" # rotated by rekey\r\nREGION=eu-west-1\r\nAWS_SECRET_ACCESS_KEY='old/secret+value'"
        );
        let path = write(dir.path(), ".env", content.as_bytes(), 0o640);
        let fixture = crate::conformance::FileFixture::new(&path, &format!("env:{}", path.display()), OLD_ID);
        crate::conformance::run(&fixture, &key()).await;
        drop(dir);
    }
}
