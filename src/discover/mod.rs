//! `rekey discover`: where a user's access keys are deployed, found by value whatever the names,
//! and who uses them from where. Read-only.
//!
//! rekey moves a key only to the places it is told about; the outage every rotation is blamed
//! for is the consumer nobody listed. This looks everywhere rekey can rotate a key ([`cloud`]:
//! Secrets Manager, SSM, Lambda, ECS; [`files`]: dotenv and AWS credentials/config files under
//! `--path`) and at who signs with the keys ([`consumers`]), then prints each place as the target
//! spec `rotate` accepts, the places it cannot rotate or could not read, and the callers no target
//! explains. `rotate --discover` and `incident --discover` use the same search.
//!
//! Output never holds a secret: values are compared in memory and wiped; only key ids, names and
//! the shape of a value ("looks like a secret access key") are reported.

pub mod cloud;
pub mod consumers;
pub mod files;
mod matching;

use std::path::PathBuf;
use std::time::SystemTime;

use rekey_adapters::{TargetKind, TargetSpec};
use serde::Serialize;

use crate::exit::Status;
use crate::incident::history::EventHistory;
use crate::rotate::evidence::SourceCheck;
use crate::rotate::iam::{AwsIam, Iam, IamError, KeyInfo, KeyStatus};
pub use consumers::Consumer;
pub use matching::{rank, shell_quote};

/// Whose keys to look for.
#[derive(Debug, Clone)]
pub enum Who {
    /// Every key of the user.
    User(String),
    /// One key (its owner is looked up): an incident's leaked key.
    Key(String),
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub who: Who,
    /// Folders searched for dotenv and credentials files.
    pub paths: Vec<PathBuf>,
    /// Regions searched (empty: the configured one).
    pub regions: Vec<String>,
    /// Callers seen since then are listed.
    pub since: SystemTime,
    /// Trail log folders or `s3://` prefixes, for callers.
    pub logs: Vec<crate::trace::sources::LogsSpec>,
    /// Read event history (`LookupEvents`) for callers.
    pub history: bool,
}

/// A place rekey can rotate, as the spec `rotate` accepts.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub spec: String,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The key it holds.
    pub key_id: String,
    /// Where exactly, and why rekey thinks so; never a value but the key id.
    pub evidence: String,
}

impl Target {
    pub fn new(spec: String, kind: TargetKind, region: Option<&str>, key_id: &str, evidence: String) -> Target {
        Target { spec, kind: kind.as_str(), region: region.map(str::to_string), key_id: key_id.to_string(), evidence }
    }

    fn rank(&self) -> u8 {
        self.spec.parse::<TargetSpec>().map(|s| matching::rank(s.kind)).unwrap_or(9)
    }
}

/// A place that holds a key in a layout no target rewrites.
#[derive(Debug, Clone, Serialize)]
pub struct Place {
    pub place: String,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub evidence: String,
    /// Why rekey cannot rotate it, and what would make it possible.
    pub why: String,
}

/// A place that could not be read: it may hold the key.
#[derive(Debug, Clone, Serialize)]
pub struct Unreadable {
    pub place: String,
    pub error: String,
}

/// What one part of the search found.
#[derive(Debug, Default)]
pub struct Found {
    pub targets: Vec<Target>,
    pub other: Vec<Place>,
    pub unreadable: Vec<Unreadable>,
    pub notes: Vec<String>,
}

impl Found {
    fn absorb(&mut self, f: Found) {
        self.targets.extend(f.targets);
        self.other.extend(f.other);
        self.unreadable.extend(f.unreadable);
        self.notes.extend(f.notes);
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyView {
    pub id: String,
    pub status: KeyStatus,
}

/// Everything `discover` found, as `--output json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Discovery {
    pub user: String,
    pub keys: Vec<KeyView>,
    pub targets: Vec<Target>,
    pub consumers: Vec<Consumer>,
    pub unreadable: Vec<Unreadable>,
    /// Places that hold a key in a layout rekey does not rewrite.
    pub not_rotatable: Vec<Place>,
    /// What was read for the consumers, and how fresh it is.
    pub sources: Vec<SourceCheck>,
    pub notes: Vec<String>,
}

impl Discovery {
    /// The targets holding `key`, in the order `rotate` needs them (stores before the services
    /// that read them).
    pub fn targets_of(&self, key: &str) -> Vec<&Target> {
        self.targets.iter().filter(|t| t.key_id == key).collect()
    }
}

/// Why discovery could not start; nothing was read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// The user and the keys to look for.
async fn whose(sdk: &aws_types::SdkConfig, iam: &dyn Iam, who: &Who) -> Result<(String, Vec<KeyInfo>), Refusal> {
    match who {
        Who::User(user) => {
            let keys = iam.list_keys(user).await.map_err(|e| match e {
                IamError::NoSuchUser(_) => Refusal(format!("no IAM user named {user:?}; check --user")),
                other => Refusal(format!("cannot list the access keys of {user}: {other}")),
            })?;
            if keys.is_empty() {
                return Err(Refusal(format!("{user} has no access key: there is nothing to look for")));
            }
            Ok((user.clone(), keys))
        }
        Who::Key(key) => {
            crate::incident::identify::validate_key_id(key).map_err(|e| Refusal(e.to_string()))?;
            let raw = aws_sdk_iam::Client::new(sdk);
            let out = raw
                .get_access_key_last_used()
                .access_key_id(key)
                .send()
                .await
                .map_err(|e| Refusal(format!("cannot tell whose key {key} is: {}", crate::aws::error_text(&e))))?;
            let user = out.user_name().map(str::to_string).filter(|u| !u.is_empty()).ok_or_else(|| {
                Refusal(format!("{key} belongs to no IAM user (a root key?): there is no deployment of it to find"))
            })?;
            let keys: Vec<KeyInfo> = iam
                .list_keys(&user)
                .await
                .map_err(|e| Refusal(format!("cannot list the access keys of {user}: {e}")))?
                .into_iter()
                .filter(|k| k.id == *key)
                .collect();
            Ok((user, keys))
        }
    }
}

/// Search every place and every source. `history` is event history (`None`: not read).
pub async fn discover(
    sdk: &aws_types::SdkConfig,
    settings: Settings,
    history: Option<&dyn EventHistory>,
) -> Result<Discovery, Refusal> {
    let iam = AwsIam::new(sdk);
    let (user, keys) = whose(sdk, &iam, &settings.who).await?;
    let ids: Vec<String> = keys.iter().map(|k| k.id.clone()).collect();
    let regions = if settings.regions.is_empty() {
        sdk.region().map(|r| vec![r.to_string()]).unwrap_or_default()
    } else {
        settings.regions.clone()
    };
    let handle = tokio::runtime::Handle::current();
    let mut logs = Vec::new();
    for spec in &settings.logs {
        logs.push(spec.source(Some(sdk), &handle).map_err(Refusal)?);
    }

    let mut found = Found::default();
    let paths = settings.paths.clone();
    let ids_for_files = ids.clone();
    let local = tokio::task::spawn_blocking(move || files::scan(&paths, &ids_for_files));
    for region in &regions {
        let regional = sdk.to_builder().region(aws_types::region::Region::new(region.clone())).build();
        let stores_then_services = async {
            let (mut f, secrets) = cloud::secrets(&regional, region, &ids).await;
            f.absorb(cloud::services(&regional, region, &ids, &secrets).await);
            f
        };
        let (a, b, c) = tokio::join!(
            stores_then_services,
            cloud::parameters(&regional, region, &ids),
            cloud::functions(&regional, region, &ids)
        );
        found.absorb(a);
        found.absorb(b);
        found.absorb(c);
    }
    match local.await {
        Ok(f) => found.absorb(f),
        Err(e) => found.notes.push(format!("the --path search stopped: {e}")),
    }

    let (uses, sources, notes) = consumers::find(
        consumers::Sources {
            iam: &iam,
            history: history.filter(|_| settings.history),
            regions: regions.clone(),
            since: settings.since,
            logs,
            rate: 2.0,
        },
        &keys,
    )
    .await;
    found.notes.extend(notes);

    let mut targets = found.targets;
    targets.sort_by(|a, b| (a.rank(), &a.spec).cmp(&(b.rank(), &b.spec)));
    targets.dedup_by(|a, b| a.spec == b.spec);
    let consumers = consumers::explain(uses, &targets);
    if regions.len() > 1
        && targets.iter().filter_map(|t| t.region.as_deref()).collect::<std::collections::BTreeSet<_>>().len() > 1
    {
        found.notes.push(
            "targets in several Regions: one `rekey rotate` works in one Region (--region); targets elsewhere need the \
             same key moved by hand, or a key per Region"
                .into(),
        );
    }
    Ok(Discovery {
        user,
        keys: keys.iter().map(|k| KeyView { id: k.id.clone(), status: k.status }).collect(),
        targets,
        consumers,
        unreadable: found.unreadable,
        not_rotatable: found.other,
        sources,
        notes: found.notes,
    })
}

/// The key a rotation of this user would replace: its one Active key.
fn current_key(d: &Discovery) -> Option<&str> {
    let active: Vec<&KeyView> = d.keys.iter().filter(|k| k.status == KeyStatus::Active).collect();
    if let [one] = active.as_slice() { Some(one.id.as_str()) } else { None }
}

/// The ready `rekey rotate` command and `[[rotation]]` block for the targets of the current key.
pub fn next_steps(d: &Discovery) -> Vec<String> {
    let targets: Vec<&Target> = match current_key(d) {
        Some(k) => d.targets_of(k),
        None => d.targets.iter().collect(),
    };
    if targets.is_empty() {
        return vec![
            "# no place rekey can rotate was found: pass --target by hand, or widen --path / --search-region".into(),
        ];
    }
    let mut out = vec![format!("rekey rotate --user {} \\", shell_quote(&d.user))];
    for t in &targets {
        out.push(format!("    --target {} \\", shell_quote(&t.spec)));
    }
    out.push("    --probe <health URL of each application>".into());
    out.push(String::new());
    out.push("# or, for `rekey run`, in rekey.toml:".into());
    out.push("[[rotation]]".into());
    out.push(format!("user = {}", toml_string(&d.user)));
    out.push("targets = [".into());
    out.extend(targets.iter().map(|t| format!("    {},", toml_string(&t.spec))));
    out.push("]".into());
    out.push("probes = []  # the applications' health URLs".into());
    out
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// The human report.
pub fn print(d: &Discovery) {
    println!("discovered where the keys of {} are deployed", d.user);
    for k in &d.keys {
        println!("  key {} {}", k.id, k.status);
    }
    println!("targets rekey can rotate ({}):", d.targets.len());
    for t in &d.targets {
        println!("  {}", t.spec);
        println!("      {}", t.evidence);
    }
    if !d.not_rotatable.is_empty() {
        println!("places rekey cannot rotate ({}):", d.not_rotatable.len());
        for p in &d.not_rotatable {
            println!("  {}", p.place);
            println!("      {}; {}", p.evidence, p.why);
        }
    }
    if !d.unreadable.is_empty() {
        println!("could not read ({}), the key may be there too:", d.unreadable.len());
        for u in &d.unreadable {
            println!("  {}: {}", u.place, u.error);
        }
    }
    println!("consumers ({}):", d.consumers.len());
    for c in &d.consumers {
        println!("  {} {}: {}", c.key_id, c.seen, c.explained_by);
    }
    for s in d.sources.iter().filter(|s| !s.ok) {
        println!("  source {} {}: callers it would show are missing above", s.source, s.status);
    }
    for n in &d.notes {
        println!("note: {n}");
    }
    println!();
    println!("next:");
    for line in next_steps(d) {
        println!("  {line}");
    }
}

/// `rekey discover`.
pub async fn command(sdk: &aws_types::SdkConfig, settings: Settings, json: bool) -> Status {
    let history = crate::incident::history::AwsEventHistory::new(sdk);
    match discover(sdk, settings, Some(&history)).await {
        Ok(d) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&d).expect("the discovery serializes"));
            } else {
                print(&d);
            }
            Status::Ok
        }
        Err(Refusal(e)) => {
            eprintln!("rekey: {e}");
            Status::Refused
        }
    }
}

/// `rotate --discover` / `incident --discover`: the targets of `key` (or of the user's current
/// key), printed on stderr before they are used, with what the search could not cover.
pub async fn targets_for(
    sdk: &aws_types::SdkConfig,
    who: Who,
    key: Option<&str>,
    paths: Vec<PathBuf>,
) -> Result<Vec<TargetSpec>, String> {
    let settings = Settings {
        who,
        paths,
        regions: Vec::new(),
        since: SystemTime::now() - std::time::Duration::from_secs(86_400),
        logs: Vec::new(),
        // The rotation itself watches the old key; the callers are not needed to pick targets.
        history: false,
    };
    let d = discover(sdk, settings, None).await.map_err(|e| e.0)?;
    let key = match key.or_else(|| current_key(&d)) {
        Some(k) => k.to_string(),
        None => {
            return Err(format!("{} has no single Active key to find targets for; name it with --old-key", d.user));
        }
    };
    let targets = d.targets_of(&key);
    eprintln!("rekey: --discover found {} target(s) holding {key}:", targets.len());
    for t in &targets {
        eprintln!("  {}  ({})", t.spec, t.evidence);
    }
    for p in d.not_rotatable.iter().filter(|p| p.evidence.contains(&key)) {
        eprintln!("  not rotatable: {} ({}; {})", p.place, p.evidence, p.why);
    }
    for u in &d.unreadable {
        eprintln!("  could not read: {}: {}", u.place, u.error);
    }
    targets.iter().map(|t| t.spec.parse::<TargetSpec>().map_err(|e| e.to_string())).collect()
}
