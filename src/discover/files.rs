//! Keys in local files under each `--path`: dotenv files (`env:` targets) and AWS shared
//! credentials and config files (`profile:` targets), whatever the files are called.
//!
//! The walk is bounded, because `--path /` must not read a whole disk: at most [`MAX_DEPTH`]
//! folders deep, files up to [`MAX_FILE_SIZE`], [`MAX_FILES`] files in all. Symbolic links are
//! never followed (a link can lead out of the path, or in a circle) and are counted in the notes;
//! files and folders that cannot be read are listed, since the key may be in them.

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::matching::{find_fields, mentions};
use super::{Found, Place, Target, Unreadable};
use rekey_adapters::TargetKind;

pub const MAX_DEPTH: usize = 8;
pub const MAX_FILE_SIZE: u64 = 1024 * 1024;
pub const MAX_FILES: usize = 100_000;
/// Unreadable files listed one by one; beyond, only their number.
const MAX_UNREADABLE_LISTED: usize = 50;
/// Folders that hold dependencies or history, never deployed configuration.
const SKIPPED_DIRS: [&str; 4] = [".git", "node_modules", "target", "__pycache__"];

#[derive(Default)]
struct Walk {
    files: usize,
    symlinks: usize,
    too_big: usize,
    unreadable: usize,
    truncated: bool,
}

/// Every file under `roots` that holds one of `keys`.
pub fn scan(roots: &[PathBuf], keys: &[String]) -> Found {
    let mut found = Found::default();
    let mut walk = Walk::default();
    for root in roots {
        let root = if root.is_absolute() {
            root.clone()
        } else {
            std::env::current_dir().map(|d| d.join(root)).unwrap_or_else(|_| root.clone())
        };
        match std::fs::symlink_metadata(&root) {
            Ok(m) if m.is_dir() => visit(&root, 0, keys, &mut found, &mut walk),
            Ok(m) if m.is_file() => file(&root, m.len(), keys, &mut found, &mut walk),
            Ok(_) => found.notes.push(format!("{}: a symbolic link or special file, not followed", root.display())),
            Err(e) => found.unreadable.push(Unreadable { place: root.display().to_string(), error: e.to_string() }),
        }
    }
    if walk.unreadable > MAX_UNREADABLE_LISTED {
        found.notes.push(format!(
            "{} more files or folders could not be read (the first {MAX_UNREADABLE_LISTED} are listed)",
            walk.unreadable - MAX_UNREADABLE_LISTED
        ));
    }
    if walk.symlinks > 0 {
        found.notes.push(format!("{} symbolic links under --path were not followed", walk.symlinks));
    }
    if walk.too_big > 0 {
        found.notes.push(format!("{} files larger than {} KiB were not read", walk.too_big, MAX_FILE_SIZE / 1024));
    }
    if walk.truncated {
        found.notes.push(format!("stopped after {MAX_FILES} files: narrow --path"));
    }
    found
}

fn unreadable(found: &mut Found, walk: &mut Walk, path: &Path, error: String) {
    walk.unreadable += 1;
    if walk.unreadable <= MAX_UNREADABLE_LISTED {
        found.unreadable.push(Unreadable { place: path.display().to_string(), error });
    }
}

fn visit(dir: &Path, depth: usize, keys: &[String], found: &mut Found, walk: &mut Walk) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return unreadable(found, walk, dir, e.to_string()),
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if walk.files >= MAX_FILES {
            walk.truncated = true;
            return;
        }
        let path = entry.path();
        // `DirEntry::metadata` does not follow symbolic links.
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) => {
                unreadable(found, walk, &path, e.to_string());
                continue;
            }
        };
        if meta.file_type().is_symlink() {
            walk.symlinks += 1;
        } else if meta.is_dir() {
            let name = entry.file_name();
            if depth + 1 < MAX_DEPTH && !SKIPPED_DIRS.iter().any(|s| name == *s) {
                visit(&path, depth + 1, keys, found, walk);
            }
        } else if meta.is_file() {
            file(&path, meta.len(), keys, found, walk);
        }
    }
}

fn file(path: &Path, size: u64, keys: &[String], found: &mut Found, walk: &mut Walk) {
    walk.files += 1;
    if size > MAX_FILE_SIZE {
        walk.too_big += 1;
        return;
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => Zeroizing::new(b),
        Err(e) => return unreadable(found, walk, path, e.to_string()),
    };
    let Some(key) = mentions(&bytes, keys) else { return };
    let text = String::from_utf8_lossy(&bytes);
    let shown = path.display();
    if let Some((profile, line)) = credentials_profile(&text, keys) {
        found.targets.push(Target::new(
            format!("profile:{profile}@{shown}"),
            TargetKind::Profile,
            None,
            &key,
            format!("{shown}:{line}: profile [{profile}] has aws_access_key_id = {key}"),
        ));
        return;
    }
    let assignments = dotenv(&text);
    let pairs = assignments.iter().map(|(n, v, _)| (n.as_str(), v.as_str()));
    if let Some(fields) = find_fields(pairs, keys) {
        let line = assignments.iter().find(|(n, _, _)| *n == fields.id_field).map_or(0, |(_, _, l)| *l);
        let evidence = format!("{shown}:{line}: {}", fields.describe("variable"));
        match fields.options() {
            Some(opts) => found.targets.push(Target::new(
                format!("env:{shown}{opts}"),
                TargetKind::Env,
                None,
                &fields.key_id,
                evidence,
            )),
            None => found.other.push(Place {
                place: format!("env:{shown}"),
                kind: "env",
                region: None,
                evidence,
                why: fields.problem.clone().unwrap_or_else(|| "its variable names cannot be written in a spec".into()),
            }),
        }
        return;
    }
    let line = text.lines().position(|l| l.contains(key.as_str())).map_or(0, |i| i + 1);
    found.other.push(Place {
        place: shown.to_string(),
        kind: "file",
        region: None,
        evidence: format!("{shown}:{line} mentions {key}"),
        why: "not as a dotenv variable or a credentials-file profile, the two file layouts rekey rewrites".into(),
    });
}

/// The profile whose `aws_access_key_id` is one of `keys`, in a credentials or config file, and
/// its line. The section name is what the `profile:` target matches (`profile ops` in a config file).
fn credentials_profile(text: &str, keys: &[String]) -> Option<(String, usize)> {
    let mut section: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.trim().to_string());
            continue;
        }
        // Indented lines continue the property before them (nested `s3 =` settings).
        if raw.starts_with([' ', '\t']) {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else { continue };
        if k.trim().eq_ignore_ascii_case("aws_access_key_id")
            && super::matching::key_in(v, keys).is_some()
            && let Some(s) = &section
        {
            return Some((s.clone(), i + 1));
        }
    }
    None
}

/// `NAME=value` assignments of a dotenv file, with `export` and quotes as the `env:` target reads
/// them, and their line numbers.
fn dotenv(text: &str) -> Vec<(String, Zeroizing<String>, usize)> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map(str::trim_start).unwrap_or(line);
        let Some((name, value)) = line.split_once('=') else { continue };
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-') {
            continue;
        }
        let value = value.trim();
        let value = match value.chars().next() {
            Some(q @ ('"' | '\'')) => value[1..].split(q).next().unwrap_or(""),
            _ => value.split(" #").next().unwrap_or("").trim_end(),
        };
        out.push((name.to_string(), Zeroizing::new(value.to_string()), i + 1));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "AKIAEXAMPLE000000001";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn keys() -> Vec<String> {
        vec![ID.into()]
    }

    #[test]
    fn finds_each_layout_and_not_another_users_key() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("srv/billing")).unwrap();
        std::fs::write(
            d.join("srv/billing/settings.conf"),
            format!("# billing\nexport BILLING_KEY=\"{ID}\"\nBILLING_SECRET='{SECRET}' \nMODE=prod # x\n"),
        )
        .unwrap();
        std::fs::write(
            d.join("srv/aws-config"),
            format!("[default]\nregion = eu-west-1\n\n[profile ops]\naws_access_key_id = {ID}\naws_secret_access_key = {SECRET}\n"),
        )
        .unwrap();
        std::fs::write(d.join("srv/notes.json"), format!("{{\"key\": \"{ID}\"}}")).unwrap();
        std::fs::write(
            d.join("decoy.env"),
            format!("AWS_ACCESS_KEY_ID=AKIAOTHER00000000002\nAWS_SECRET_ACCESS_KEY={SECRET}\n"),
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc", d.join("link")).unwrap();
        let found = scan(&[d.to_path_buf()], &keys());
        let specs: Vec<&str> = found.targets.iter().map(|t| t.spec.as_str()).collect();
        let base = d.display();
        assert_eq!(
            specs,
            [
                format!("profile:profile ops@{base}/srv/aws-config"),
                format!("env:{base}/srv/billing/settings.conf?id-field=BILLING_KEY&secret-field=BILLING_SECRET"),
            ],
            "{found:?}"
        );
        assert_eq!(found.other.len(), 1, "the JSON file is a place, not a target: {:?}", found.other);
        assert!(found.other[0].evidence.contains("notes.json:1"));
        assert!(found.notes.iter().any(|n| n.contains("1 symbolic links")), "{:?}", found.notes);
        for t in &found.targets {
            assert!(!t.evidence.contains(SECRET) && !t.spec.contains(SECRET));
            t.spec.parse::<rekey_adapters::TargetSpec>().expect("a spec rotate accepts");
        }
    }
}
