//! `rekey.toml`: the rotations a team runs on a schedule.
//!
//! ```toml
//! [defaults]
//! max_age = "90d"          # rotate keys older than this
//! grace = "1h"             # the old key stays Active this long after the probes pass
//! delete_after = "7d"      # deactivated keys are deleted this long after deactivation
//!
//! [[rotation]]
//! user = "app-integration-user"
//! targets = ["secretsmanager:prod/app/aws", "ecs:prod/api"]
//! probes = ["https://api.example.com/health"]
//!
//! [[account]]              # other accounts, reached by assuming a role
//! id = "111122223333"
//! role_arn = "arn:aws:iam::111122223333:role/rekey"
//!
//! [lock]                   # runners on several machines
//! dynamodb_table = "rekey-locks"
//!
//! [journal]                # journals in DynamoDB too, for runners whose disk does not last
//! dynamodb_table = "rekey-journals"
//! ```
//!
//! Everything is checked when the file is read — unknown keys, durations, target specs, probe URLs,
//! accounts — and a problem is reported with the file, line and field, before anything runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rekey_adapters::TargetSpec;
use serde::{Deserialize, Deserializer};

/// A duration written as `90d`, `1h`, `30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(Dur)
            .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a duration ({e}); write e.g. 90d, 1h, 30m")))
    }
}

fn specs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TargetSpec>, D::Error> {
    let texts = Vec::<String>::deserialize(d)?;
    texts.iter().map(|t| t.parse::<TargetSpec>().map_err(serde::de::Error::custom)).collect()
}

fn urls<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let texts = Vec::<String>::deserialize(d)?;
    for t in &texts {
        if !(t.starts_with("http://") || t.starts_with("https://")) {
            return Err(serde::de::Error::custom(format!("probe {t:?} is not an http:// or https:// URL")));
        }
    }
    Ok(texts)
}

fn account_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let id = String::deserialize(d)?;
    if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(serde::de::Error::custom(format!("account id {id:?} is not 12 digits")));
    }
    Ok(id)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    #[serde(default = "ninety_days")]
    pub max_age: Dur,
    #[serde(default = "zero")]
    pub grace: Dur,
    /// None: deactivated keys are left for a person to delete.
    #[serde(default)]
    pub delete_after: Option<Dur>,
    /// Keys not used for this long are reported by `audit`.
    #[serde(default = "ninety_days")]
    pub unused_after: Dur,
}

fn ninety_days() -> Dur {
    Dur(Duration::from_secs(90 * 24 * 3600))
}

fn zero() -> Dur {
    Dur(Duration::ZERO)
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults { max_age: ninety_days(), grace: zero(), delete_after: None, unused_after: ninety_days() }
    }
}

/// One user whose key is rotated on schedule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    pub user: String,
    #[serde(deserialize_with = "specs")]
    pub targets: Vec<TargetSpec>,
    #[serde(default, deserialize_with = "urls")]
    pub probes: Vec<String>,
    /// The account the user lives in (an `[[account]]` id); default: the one rekey runs in.
    #[serde(default)]
    pub account: Option<String>,
    pub max_age: Option<Dur>,
    pub grace: Option<Dur>,
    pub delete_after: Option<Dur>,
    /// Shell command run after each file target is written, by target index.
    #[serde(default)]
    pub restart_cmd: Option<String>,
}

/// Another account, reached by assuming a role in it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    #[serde(deserialize_with = "account_id")]
    pub id: String,
    pub role_arn: String,
    #[serde(default)]
    pub external_id: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
}

/// Where runners on several machines coordinate: a DynamoDB table of per-user locks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub dynamodb_table: String,
    /// A runner that crashed holds its locks this long at most.
    #[serde(default = "lock_ttl")]
    pub ttl: Dur,
}

/// Journals in a DynamoDB table (partition key `pk` String, sort key `sk` Number) instead of the
/// state folder, so that a rotation begun in one container can be resumed from another.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalTable {
    pub dynamodb_table: String,
}

fn lock_ttl() -> Dur {
    Dur(Duration::from_secs(30 * 60))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default, rename = "rotation")]
    pub rotations: Vec<Rotation>,
    #[serde(default, rename = "account")]
    pub accounts: Vec<Account>,
    #[serde(default)]
    pub lock: Option<Lock>,
    #[serde(default)]
    pub journal: Option<JournalTable>,
    /// Where the config was read from, for messages.
    #[serde(skip)]
    pub path: PathBuf,
}

impl Rotation {
    pub fn max_age(&self, d: &Defaults) -> Duration {
        self.max_age.unwrap_or(d.max_age).0
    }
    pub fn grace(&self, d: &Defaults) -> Duration {
        self.grace.unwrap_or(d.grace).0
    }
    pub fn delete_after(&self, d: &Defaults) -> Option<Duration> {
        self.delete_after.or(d.delete_after).map(|x| x.0)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{file}{at}: {message}")]
pub struct ConfigError {
    pub file: String,
    /// `:LINE` when known.
    pub at: String,
    pub message: String,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            at: String::new(),
            message: format!("{e}; write a rekey.toml or pass --config"),
        })?;
        Self::parse(&text, &file)
    }

    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| format!(":{}", line_of(text, s.start))).unwrap_or_default();
            ConfigError { file: file.to_string(), at, message: e.message().trim().to_string() }
        })?;
        config.path = PathBuf::from(file);
        config.check(text)?;
        Ok(config)
    }

    /// What the types alone cannot say: references between sections, duplicates.
    fn check(&self, text: &str) -> Result<(), ConfigError> {
        let err = |needle: &str, message: String| ConfigError {
            file: self.path.display().to_string(),
            at: text.find(needle).map(|i| format!(":{}", line_of(text, i))).unwrap_or_default(),
            message,
        };
        let mut seen = std::collections::BTreeSet::new();
        for r in &self.rotations {
            if r.targets.is_empty() {
                return Err(err(
                    &r.user,
                    format!("rotation of {}: targets is empty; name where the key is used", r.user),
                ));
            }
            if let Some(a) = &r.account
                && !self.accounts.iter().any(|x| &x.id == a)
            {
                return Err(err(a, format!("rotation of {}: account {a} has no [[account]] section", r.user)));
            }
            if !seen.insert((r.account.clone(), r.user.clone())) {
                return Err(err(&r.user, format!("user {} is rotated twice; keep one [[rotation]]", r.user)));
            }
        }
        // Shared journals without shared locks would let two machines race for one user, and the
        // loser's rotation would fail at the journal instead of being skipped.
        if self.journal.is_some() && self.lock.is_none() {
            return Err(err(
                "[journal]",
                "[journal] needs [lock]: runners that share journals must share locks; add [lock] dynamodb_table = \"…\"".into(),
            ));
        }
        for a in &self.accounts {
            if !a.role_arn.starts_with(&format!("arn:aws:iam::{}:role/", a.id)) {
                return Err(err(
                    &a.role_arn,
                    format!("account {}: role_arn {} is not a role in that account", a.id, a.role_arn),
                ));
            }
        }
        Ok(())
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[defaults]
max_age = "90d"
grace = "1h"
delete_after = "7d"

[[rotation]]
user = "app-integration-user"
targets = ["secretsmanager:prod/app/aws", "ecs:prod/api"]
probes = ["https://api.example.com/health"]

[[rotation]]
user = "reports"
account = "111122223333"
targets = ["env:/srv/reports/.env"]
max_age = "30d"

[[account]]
id = "111122223333"
role_arn = "arn:aws:iam::111122223333:role/rekey"
"#;

    #[test]
    fn reads_the_documented_shape() {
        let c = Config::parse(GOOD, "rekey.toml").unwrap();
        assert_eq!(c.rotations.len(), 2);
        assert_eq!(c.rotations[1].max_age(&c.defaults), Duration::from_secs(30 * 86400));
        assert_eq!(c.rotations[0].grace(&c.defaults), Duration::from_secs(3600));
        assert_eq!(c.rotations[0].delete_after(&c.defaults), Some(Duration::from_secs(7 * 86400)));
        assert_eq!(c.accounts[0].id, "111122223333");
    }

    #[test]
    fn a_shared_journal_comes_with_a_shared_lock() {
        let with_both =
            format!("{GOOD}\n[lock]\ndynamodb_table = \"locks\"\n\n[journal]\ndynamodb_table = \"journals\"\n");
        let c = Config::parse(&with_both, "rekey.toml").unwrap();
        assert_eq!(c.journal.unwrap().dynamodb_table, "journals");
        assert!(Config::parse(GOOD, "rekey.toml").unwrap().journal.is_none(), "the local journal is the default");

        let alone = format!("{GOOD}\n[journal]\ndynamodb_table = \"journals\"\n");
        let e = Config::parse(&alone, "rekey.toml").unwrap_err().to_string();
        assert!(e.starts_with("rekey.toml:22:"), "{e}");
        assert!(e.contains("[journal] needs [lock]"), "{e}");

        let typo = format!("{GOOD}\n[lock]\ndynamodb_table = \"l\"\n[journal]\ntable = \"j\"\n");
        let e = Config::parse(&typo, "rekey.toml").unwrap_err().to_string();
        assert!(e.contains("unknown field `table`"), "{e}");
    }

    #[test]
    fn problems_name_file_line_and_field() {
        let cases = [
            (GOOD.replace("grace = \"1h\"", "grace = \"soon\""), ":4", "not a duration"),
            (GOOD.replace("max_age = \"90d\"", "max_age = \"90d\"\ncolour = \"red\""), ":4", "unknown field `colour`"),
            (GOOD.replace("\"ecs:prod/api\"", "\"s3:bucket\""), ":9", "unknown kind \"s3\""),
            (GOOD.replace("https://api", "ftp://api"), ":10", "not an http"),
            (GOOD.replace("id = \"111122223333\"", "id = \"1111\""), ":19", "not 12 digits"),
            (GOOD.replace("account = \"111122223333\"", "account = \"999999999999\""), ":14", "no [[account]]"),
        ];
        for (text, line, needle) in cases {
            let e = Config::parse(&text, "rekey.toml").unwrap_err();
            let shown = e.to_string();
            assert!(shown.starts_with(&format!("rekey.toml{line}:")), "{shown}");
            assert!(shown.contains(needle), "{shown}");
        }
    }
}
