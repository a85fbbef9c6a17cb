//! The command line as clap parses it: every subcommand and flag, with the help text users read.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgMatches, Args, Parser, Subcommand, ValueEnum};
use rekey_adapters::TargetSpec;

use crate::rotate::wait::{Streak, Verify};
#[derive(Parser, Debug)]
#[command(name = "rekey", version, about = "Rotate AWS IAM access keys of deployed applications with zero downtime")]
pub struct Cli {
    /// AWS profile to run as (the rotating principal, never the user being rotated).
    #[arg(long, global = true, env = "AWS_PROFILE")]
    pub(crate) profile: Option<String>,
    /// AWS region of the targets and of the STS endpoint used to check the new key.
    #[arg(long, global = true)]
    pub(crate) region: Option<String>,
    /// Where journals of rotations are kept (default: $XDG_STATE_HOME/rekey or ~/.local/state/rekey).
    #[arg(long, global = true, env = "REKEY_STATE_DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// Output format on stdout.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub(crate) output: OutputFormat,
    /// More logging on stderr (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Bound on one attempt of an AWS call; a whole call, retries included, gets four times this.
    #[arg(long, global = true, value_name = "DURATION", env = "REKEY_AWS_TIMEOUT", value_parser = parse_duration, default_value = "30s")]
    pub(crate) aws_timeout: Duration,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OutputFormat {
    Text,
    Json,
    /// One JSON object per line (trace only; its default).
    Ndjson,
    /// Aligned columns (trace only).
    Table,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Replace a user's access key everywhere it is used, then deactivate the old key.
    Rotate(RotateArgs),
    /// Finish or roll back a rotation that was interrupted (crash, kill -9, lost connection).
    Resume(ResumeArgs),
    /// Show unfinished rotations.
    Status(StatusArgs),
    /// Find every CloudTrail record signed by a (leaked) access key, in log folders or S3.
    Trace(TraceArgs),
    /// A leaked key: fence the attacker out, cut over without downtime, revoke sessions,
    /// investigate, hunt backdoors, and write a report and a containment plan.
    Incident(Box<IncidentArgs>),
    /// Everything `incident` finds out, changing nothing: owner, timeline, backdoors, report, plan.
    Investigate(InvestigateArgs),
    /// Carry out (or undo) a containment plan written by `incident` or `investigate`.
    Contain(ContainArgs),
    /// What `run` would do now, from the config: which keys are due and why, what changes. Changes nothing.
    Plan(PlanArgs),
    /// Rotate every due key of the config, finish deferred deactivations and deletions, print one summary.
    Run(RunArgs),
    /// Read-only posture report: old, unused and doubled keys, keys of humans without MFA, root keys,
    /// users no [[rotation]] covers. Exits 5 when anything needs action.
    Audit(AuditArgs),
    /// Print a shell completion script (see the README for where each shell looks for it).
    Completions(CompletionsArgs),
    /// Print the man page, or write one page per command into a folder.
    Man(ManArgs),
    /// Read-only live sweep of every enabled Region for what a leaked key leaves outside IAM:
    /// instances, open security groups, peerings, shared data, Lambda, SES. Exits 5 when it finds
    /// anything or cannot read everything.
    Sweep(SweepArgs),
    /// Where a user's keys are deployed (secrets, parameters, Lambda, ECS, files under --path),
    /// found by value, and who uses them from where. Changes nothing.
    Discover(DiscoverArgs),
    /// Deactivate a user's old (not current) key once nothing has used it for --idle; exits 6
    /// naming the last use when something still does.
    Retire(RetireArgs),
}

#[derive(Args, Debug)]
pub(crate) struct CompletionsArgs {
    #[arg(value_enum)]
    pub(crate) shell: CompletionShell,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Args, Debug)]
pub(crate) struct ManArgs {
    /// Write rekey.1 and a rekey-<command>.1 for every command into this folder (it must exist)
    /// instead of printing rekey.1.
    #[arg(long, value_name = "DIR")]
    pub(crate) out_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct SweepArgs {
    /// Start of the window: what was created since is a finding (a duration back from now, or an RFC 3339 time).
    #[arg(long, value_name = "WHEN", value_parser = crate::trace::parse_when, default_value = "30d")]
    pub(crate) since: std::time::SystemTime,
    /// End of the window (default: now); things made after it still count.
    #[arg(long, value_name = "WHEN", value_parser = crate::trace::parse_when)]
    pub(crate) until: Option<std::time::SystemTime>,
    /// Sweep this Region only (repeatable; default: every Region enabled in the account).
    #[arg(long = "sweep-region", value_name = "REGION", value_parser = parse_region)]
    pub(crate) regions: Vec<String>,
    /// Every Region must be read within this time from the start; what is not is a blind spot.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub(crate) deadline: Duration,
    /// Resource families read at once, over all Regions.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub(crate) concurrency: u32,
    /// Write the containment plan for `rekey contain` to this file (the sweep itself changes nothing).
    #[arg(long, value_name = "PATH")]
    pub(crate) plan: Option<PathBuf>,
}

/// `eu-west-1`, `us-gov-west-1`: letters, dashes, a number.
pub(crate) fn parse_region(s: &str) -> Result<String, String> {
    let parts: Vec<&str> = s.split('-').collect();
    let ok = parts.len() >= 3
        && parts[..parts.len() - 1].iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty();
    if ok { Ok(s.to_string()) } else { Err(format!("{s:?} is not a Region name (write e.g. eu-west-1)")) }
}

#[derive(Args, Debug)]
pub(crate) struct DiscoverArgs {
    /// The IAM user whose keys are looked for.
    #[arg(long, required_unless_present = "key", conflicts_with = "key")]
    pub(crate) user: Option<String>,
    /// Look for this key only (its owner is looked up), e.g. a leaked one.
    #[arg(long = "access-key", value_name = "AKIA…", value_parser = crate::trace::parse_key)]
    pub(crate) key: Option<String>,
    /// A folder searched for dotenv and AWS credentials/config files (repeatable; bounded depth and
    /// size, symbolic links not followed).
    #[arg(long = "path", value_name = "DIR")]
    pub(crate) paths: Vec<PathBuf>,
    /// Search this Region (repeatable; default: --region).
    #[arg(long = "search-region", value_name = "REGION")]
    pub(crate) regions: Vec<String>,
    /// List callers seen since then: a duration back from now (30d) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN", value_parser = crate::trace::parse_when, default_value = "30d")]
    pub(crate) since: std::time::SystemTime,
    /// CloudTrail logs to find callers in: a folder or s3://bucket/prefix (repeatable).
    #[arg(long = "logs", value_name = "PATH|s3://BUCKET/PREFIX", value_parser = crate::trace::sources::LogsSpec::parse)]
    pub(crate) logs: Vec<crate::trace::sources::LogsSpec>,
    /// Do not read CloudTrail event history (LookupEvents) for callers.
    #[arg(long)]
    pub(crate) no_history: bool,
}

#[derive(Args, Debug)]
pub(crate) struct RetireArgs {
    /// The IAM user whose old key is retired.
    #[arg(long)]
    pub(crate) user: String,
    /// The key to retire (default: the older of the user's two Active keys).
    #[arg(long, value_name = "AKIA…")]
    pub(crate) old_key: Option<String>,
    /// How long the key must have gone unused (default 1h: four times the ~15 min the sources
    /// may trail real use).
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    pub(crate) idle: Duration,
    /// Deactivate without looking at its use.
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Args, Debug)]
pub(crate) struct AuditArgs {
    /// rekey.toml: its max_age, unused_after, rotations and accounts (default: none; 90-day
    /// defaults, this account only, coverage not judged).
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct PlanArgs {
    /// The rotations: rekey.toml (see the README).
    #[arg(long, default_value = "./rekey.toml")]
    pub(crate) config: PathBuf,
}

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// The rotations: rekey.toml (see the README).
    #[arg(long, default_value = "./rekey.toml")]
    pub(crate) config: PathBuf,
    /// Users rotated at the same time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub(crate) concurrency: u32,
    #[command(flatten)]
    pub(crate) waits: WaitArgs,
    /// Bound on an ECS rollout.
    #[arg(long, value_parser = parse_duration, default_value = "15m")]
    pub(crate) ecs_timeout: Duration,
    /// Before deactivating an old key (rotations without a grace period), watch it this long; a
    /// use by anything rekey did not move keeps it Active (outcome held).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub(crate) quiet_period: Duration,
}

#[derive(Args, Debug)]
pub(crate) struct InvestigateArgs {
    /// The leaked access key.
    #[arg(long = "access-key", value_name = "AKIA…", value_parser = crate::trace::parse_key)]
    pub(crate) key: String,
    /// Start of the window: a duration back from now (30d) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN", value_parser = crate::trace::parse_when, default_value = "30d")]
    pub(crate) since: std::time::SystemTime,
    /// End of the window (default: now).
    #[arg(long, value_name = "WHEN", value_parser = crate::trace::parse_when)]
    pub(crate) until: Option<std::time::SystemTime>,
    /// More CloudTrail logs: a folder or s3://bucket/prefix (repeatable); the trails' own buckets are found anyway.
    #[arg(long = "logs", value_name = "PATH|s3://BUCKET/PREFIX", value_parser = crate::trace::sources::LogsSpec::parse)]
    pub(crate) logs: Vec<crate::trace::sources::LogsSpec>,
    /// Where report.md, report.json, report.html and plan.json go (default ./rekey-incident-<key>-<time>).
    #[arg(long)]
    pub(crate) report_dir: Option<PathBuf>,
    /// An address the attacker used (from AWS's notice; repeatable): never allowed by the fence.
    #[arg(long = "attacker-ip", value_name = "IP")]
    pub(crate) attacker_ips: Vec<String>,
    /// Read the event history of these regions only (repeatable; default: every enabled region).
    #[arg(long = "history-region", value_name = "REGION")]
    pub(crate) history_regions: Vec<String>,
    /// Do not read the CloudTrail event history (LookupEvents).
    #[arg(long)]
    pub(crate) no_history: bool,
    /// Do not look for the account's trails and their log files.
    #[arg(long)]
    pub(crate) no_trails: bool,
    /// Do not sweep every Region live for what the key left outside IAM (see `rekey sweep`).
    #[arg(long)]
    pub(crate) no_sweep: bool,
    /// Bound on the live sweep: every Region must be read within this time.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub(crate) sweep_deadline: Duration,
    #[command(flatten)]
    pub(crate) athena: AthenaArgs,
    /// LookupEvents requests per second per Region. AWS allows 2; only an emulator that scales its
    /// limit (the test suite's) takes more.
    #[arg(long, hide = true, default_value_t = 2.0)]
    pub(crate) history_rate: f64,
}

#[derive(Args, Debug)]
pub(crate) struct IncidentArgs {
    #[command(flatten)]
    pub(crate) investigate: InvestigateArgs,
    /// Where the key is used, as for `rotate` (repeatable): the cutover moves them to a new key.
    #[arg(long = "target", value_name = "SPEC")]
    pub(crate) targets: Vec<TargetSpec>,
    /// Shell command run after the --target just before it is written.
    #[arg(long = "restart-cmd", value_name = "CMD")]
    pub(crate) restart_cmds: Vec<String>,
    /// Health URL that must stay healthy through the cutover (repeatable).
    #[arg(long = "probe", value_name = "URL")]
    pub(crate) probes: Vec<String>,
    #[command(flatten)]
    pub(crate) waits: WaitArgs,
    /// Bound on an ECS rollout.
    #[arg(long, value_parser = parse_duration, default_value = "15m")]
    pub(crate) ecs_timeout: Duration,
    /// Investigate and contain, but leave the key Active (no cutover).
    #[arg(long, conflicts_with = "deactivate_now")]
    pub(crate) no_cutover: bool,
    /// No consumer to move: deactivate the key at once (its consumers break).
    #[arg(long, conflicts_with = "targets")]
    pub(crate) deactivate_now: bool,
    /// Do not fence the user while the cutover runs.
    #[arg(long)]
    pub(crate) no_fence: bool,
    /// A source the fence always lets in (repeatable): an address or CIDR block, vpc-… or vpce-…
    /// (what you know the application calls from; the rest is learnt from its recent use).
    #[arg(long = "allow-source", value_name = "CIDR|vpc-…|vpce-…", value_parser = crate::incident::fence::parse_allow_source, conflicts_with = "no_fence")]
    pub(crate) allow_sources: Vec<crate::incident::model::FenceSource>,
    /// The user's Inactive second key that may be deleted to make room for the new key. rekey
    /// deletes no key in an incident unless named here, after you have looked at it.
    #[arg(long = "free-slot", value_name = "AKIA…", value_parser = crate::trace::parse_key)]
    pub(crate) free_slot: Option<String>,
    /// Also cut over every place `rekey discover` finds the leaked key in (printed before use).
    #[arg(long, conflicts_with_all = ["no_cutover", "deactivate_now"])]
    pub(crate) discover: bool,
    /// With --discover: a folder searched for dotenv and credentials files (repeatable).
    #[arg(long = "path", value_name = "DIR", requires = "discover")]
    pub(crate) paths: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct ContainArgs {
    /// The plan.json written by `incident` or `investigate`.
    #[arg(long)]
    pub(crate) plan: PathBuf,
    /// Carry the plan out (without it: print what it would do).
    #[arg(long, conflicts_with = "undo")]
    pub(crate) apply: bool,
    /// Reverse what `--apply` did, as its log records.
    #[arg(long)]
    pub(crate) undo: bool,
}

#[derive(Args, Debug)]
pub(crate) struct RotateArgs {
    /// The IAM user whose access key is rotated.
    #[arg(long, value_parser = parse_user_name, required_unless_present = "own_key")]
    pub(crate) user: Option<String>,
    /// Rotate the key rekey runs with (your own, from your credentials profile); without --target,
    /// the new key goes to the profile it was read from.
    #[arg(long = "self", conflicts_with_all = ["user", "old_key"])]
    pub(crate) own_key: bool,
    /// The key to replace, when the user has more than one.
    #[arg(long, value_name = "AKIA…")]
    pub(crate) old_key: Option<String>,
    /// Where the key is used, in order (repeatable): secretsmanager:<secret-id>, ecs:[<cluster>/]<service>,
    /// env:<path>, ssm:<parameter>, lambda:<function>, profile:<name>[@<file>] or exec:<command>;
    /// options follow a ?, e.g. env:app.env?id-field=KEY_ID (see the README's table of targets).
    #[arg(long = "target", value_name = "SPEC", required_unless_present_any = ["own_key", "discover"])]
    pub(crate) targets: Vec<TargetSpec>,
    /// Also rotate every place `rekey discover` finds the key in (printed before use).
    #[arg(long)]
    pub(crate) discover: bool,
    /// With --discover: a folder searched for dotenv and credentials files (repeatable).
    #[arg(long = "path", value_name = "DIR", requires = "discover")]
    pub(crate) paths: Vec<PathBuf>,
    /// Deactivate the old key even when something rekey did not move still uses it.
    #[arg(long)]
    pub(crate) force_deactivate: bool,
    /// After the grace period, watch the old key this long; a use by anything rekey did not move
    /// keeps it Active (exit 6).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub(crate) quiet_period: Duration,
    /// Shell command run after the --target just before it is written (and after its rollback).
    #[arg(long = "restart-cmd", value_name = "CMD")]
    pub(crate) restart_cmds: Vec<String>,
    /// Health URL that must answer 2xx several times in a row before the old key is deactivated.
    #[arg(long = "probe", value_name = "URL")]
    pub(crate) probes: Vec<String>,
    #[command(flatten)]
    pub(crate) waits: WaitArgs,
    /// Keep the old key Active this long after the probes pass (e.g. 10m), for consumers that cache credentials.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub(crate) grace: Duration,
    /// Delete the old key after deactivating it (default: leave it Inactive, so the change can be undone).
    #[arg(long)]
    pub(crate) delete_old: bool,
    /// Bound on an ECS rollout.
    #[arg(long, value_parser = parse_duration, default_value = "15m")]
    pub(crate) ecs_timeout: Duration,
    /// Print what would change and change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    #[command(flatten)]
    pub(crate) journal: JournalArgs,
}

/// Where `rotate`, `resume` and `status` keep journals, when not in the state folder.
#[derive(Args, Debug, Clone)]
pub(crate) struct JournalArgs {
    /// Journal in this DynamoDB table (partition key pk String, sort key sk Number) instead of
    /// --state-dir, so that another machine or container can `status` and `resume` the rotation.
    #[arg(long, value_name = "NAME", env = "REKEY_JOURNAL_TABLE")]
    pub(crate) journal_table: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct WaitArgs {
    /// Rounds of checks of the new key (sts:GetCallerIdentity signed with it) that must pass in a
    /// row before any target gets it.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(crate) verify_successes: u32,
    /// Checks of the new key per --verify-region in each round, sent at once, each on a connection
    /// of its own so they reach many of the hosts behind the endpoint.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub(crate) verify_checks: u32,
    /// Fraction of a round's answered checks, per Region, that may still refuse the new key (as
    /// 0.05 or 5%). 0: a single refusal fails the round.
    #[arg(long, default_value = "0", value_parser = parse_fraction)]
    pub(crate) verify_max_reject: f64,
    /// Bound on waiting for the new key to work.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub(crate) verify_timeout: Duration,
    /// Consecutive 2xx answers each probe must give.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(crate) probe_successes: u32,
    /// Bound on waiting for each probe.
    #[arg(long, value_parser = parse_duration, default_value = "2m")]
    pub(crate) probe_timeout: Duration,
    /// Check the new key against the STS endpoint of this region too (repeatable; default: --region).
    #[arg(long = "verify-region", value_name = "REGION")]
    pub(crate) verify_regions: Vec<String>,
    /// Pause between two successful checks.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub(crate) check_interval: Duration,
}

#[derive(Args, Debug)]
pub(crate) struct ResumeArgs {
    /// The user whose rotation was interrupted.
    #[arg(long, value_parser = parse_user_name, required_unless_present = "own_key")]
    pub(crate) user: Option<String>,
    /// The interrupted rotation is of rekey's own key (`rotate --self`): sign with whichever key
    /// the credentials file now holds.
    #[arg(long = "self", conflicts_with = "user")]
    pub(crate) own_key: bool,
    /// Undo the rotation even if it could be finished.
    #[arg(long)]
    pub(crate) rollback: bool,
    /// A target of the journaled rotation, repeated as given to `rotate` (repeatable). Needed with
    /// --journal-table for every target that runs a command or writes a file on this machine
    /// (exec:, env:, profile:, or one with a --restart-cmd): a shared journal is not trusted to.
    #[arg(long = "target", value_name = "SPEC")]
    pub(crate) targets: Vec<TargetSpec>,
    /// The --restart-cmd of the --target before it, repeated as given to `rotate`.
    #[arg(long = "restart-cmd", value_name = "CMD")]
    pub(crate) restart_cmds: Vec<String>,
    /// A probe URL with its password, as given to `rotate` (the journal keeps it without).
    #[arg(long = "probe", value_name = "URL")]
    pub(crate) probes: Vec<String>,
    #[command(flatten)]
    pub(crate) waits: WaitArgs,
    /// Before deactivating the old key, watch it this long, as `rotate` does; a use by anything
    /// rekey did not move keeps it Active (exit 6).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub(crate) quiet_period: Duration,
    #[command(flatten)]
    pub(crate) journal: JournalArgs,
}

#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    /// Only this user.
    #[arg(long, value_parser = parse_user_name)]
    pub(crate) user: Option<String>,
    #[command(flatten)]
    pub(crate) journal: JournalArgs,
}

#[derive(Args, Debug)]
pub(crate) struct TraceArgs {
    /// The access key whose records are wanted (repeatable).
    #[arg(long = "access-key", value_name = "AKIA…", required = true, value_parser = crate::trace::parse_key)]
    pub(crate) keys: Vec<String>,
    /// CloudTrail logs: a local folder (any depth, .json.gz/.json) or s3://bucket[/prefix] (repeatable).
    #[arg(long = "logs", value_name = "PATH|s3://BUCKET/PREFIX", required = true, value_parser = crate::trace::sources::LogsSpec::parse)]
    pub(crate) logs: Vec<crate::trace::sources::LogsSpec>,
    /// Only records from this time on: a duration back from now (30d, 12h) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN", value_parser = crate::trace::parse_when)]
    pub(crate) since: Option<std::time::SystemTime>,
    /// Only records up to this time: a duration back from now (1d) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN", value_parser = crate::trace::parse_when)]
    pub(crate) until: Option<std::time::SystemTime>,
    /// Also find the records of every key the keys minted (AssumeRole, GetSessionToken, CreateAccessKey, …).
    #[arg(long)]
    pub(crate) follow: bool,
    #[command(flatten)]
    pub(crate) athena: AthenaArgs,
}

/// Run the search as Athena queries over the trail bucket (for trails too big for one machine).
#[derive(Args, Debug, Clone)]
pub(crate) struct AthenaArgs {
    /// Query with Athena instead of reading the log files (billed per TB scanned; see the README).
    #[arg(long)]
    pub(crate) athena: bool,
    /// Athena database (it must exist).
    #[arg(long, default_value = "default", requires = "athena")]
    pub(crate) athena_database: String,
    /// Table to create (if missing) and query.
    #[arg(long, default_value = "rekey_cloudtrail", requires = "athena")]
    pub(crate) athena_table: String,
    /// s3://… for query results (leave out when the workgroup sets it).
    #[arg(long, default_value = "", requires = "athena")]
    pub(crate) athena_output: String,
    #[arg(long, requires = "athena")]
    pub(crate) athena_workgroup: Option<String>,
    /// Bound on each query.
    #[arg(long, value_parser = parse_duration, default_value = "10m", requires = "athena")]
    pub(crate) athena_timeout: Duration,
    /// Accounts whose logs the bucket holds (repeatable; default: the caller's).
    #[arg(long = "athena-account", requires = "athena")]
    pub(crate) athena_accounts: Vec<String>,
    /// Regions to search (repeatable; default: --region).
    #[arg(long = "athena-region", requires = "athena")]
    pub(crate) athena_regions: Vec<String>,
    /// Organization id of an organization trail (objects under AWSLogs/<org-id>/).
    #[arg(long, requires = "athena")]
    pub(crate) athena_org_id: Option<String>,
    /// Use an existing table as it is.
    #[arg(long, requires = "athena")]
    pub(crate) athena_no_create_table: bool,
}

impl AthenaArgs {
    pub(crate) fn options(&self) -> Option<crate::trace::AthenaOptions> {
        self.athena.then(|| crate::trace::AthenaOptions {
            database: self.athena_database.clone(),
            table: self.athena_table.clone(),
            output: self.athena_output.clone(),
            workgroup: self.athena_workgroup.clone(),
            timeout: self.athena_timeout,
            accounts: self.athena_accounts.clone(),
            regions: self.athena_regions.clone(),
            org_id: self.athena_org_id.clone(),
            create_table: !self.athena_no_create_table,
        })
    }
}

/// An IAM user name (1 to 64 of letters, digits and `+=,.@_-`), checked before it names a journal
/// file: `../x` or `a/b` would otherwise reach outside the state folder.
pub(crate) fn parse_user_name(s: &str) -> Result<String, String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c);
    if s.is_empty() || s.len() > 64 || !s.chars().all(allowed) {
        return Err(
            "not an IAM user name: use 1 to 64 letters, digits and + = , . @ _ - (the user's name, not its ARN)".into(),
        );
    }
    Ok(s.to_string())
}

/// A fraction from 0 to 0.5, written 0.05 or 5%: past half, refusals would be the norm.
pub(crate) fn parse_fraction(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let value = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| format!("{s:?} is not a fraction: write e.g. 0.05 or 5%"))?;
    if !(0.0..=0.5).contains(&value) {
        return Err(format!("{s} is out of range: write a fraction from 0 to 0.5 (or 0% to 50%)"));
    }
    Ok(value)
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write e.g. 30s, 10m, 1h)"))
}

impl WaitArgs {
    pub(crate) fn verify(&self) -> Verify {
        Verify {
            rounds: Streak {
                successes: self.verify_successes,
                timeout: self.verify_timeout,
                interval: self.check_interval,
            },
            checks: self.verify_checks,
            max_reject: self.verify_max_reject,
        }
    }
    pub(crate) fn probe(&self) -> Streak {
        Streak { successes: self.probe_successes, timeout: self.probe_timeout, interval: self.check_interval }
    }
}

/// Pair each `--restart-cmd` with the `--target` written just before it on the command line.
pub(crate) fn restart_cmds_by_target(m: &ArgMatches, targets: usize) -> Result<Vec<Option<String>>, String> {
    let mut out = vec![None; targets];
    let target_idx: Vec<usize> = m.indices_of("targets").map(|i| i.collect()).unwrap_or_default();
    let cmds: Vec<&String> = m.get_many::<String>("restart_cmds").map(|v| v.collect()).unwrap_or_default();
    let cmd_idx: Vec<usize> = m.indices_of("restart_cmds").map(|i| i.collect()).unwrap_or_default();
    for (cmd, at) in cmds.into_iter().zip(cmd_idx) {
        let Some(t) = target_idx.iter().rposition(|&ti| ti < at) else {
            return Err("--restart-cmd must follow the --target it restarts; write --target env:<path> --restart-cmd '<command>'".into());
        };
        if out[t].replace(cmd.clone()).is_some() {
            return Err("two --restart-cmd for one --target; join them with && in one command".into());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn rotate_matches(args: &[&str]) -> ArgMatches {
        let m = Cli::command().try_get_matches_from(args).unwrap();
        m.subcommand_matches("rotate").unwrap().clone()
    }

    #[test]
    fn restart_cmd_belongs_to_the_target_before_it() {
        let m = rotate_matches(&[
            "rekey",
            "rotate",
            "--user",
            "u",
            "--target",
            "env:/a",
            "--restart-cmd",
            "restart a",
            "--target",
            "secretsmanager:s",
            "--target",
            "env:/b",
            "--restart-cmd",
            "restart b",
        ]);
        let r = restart_cmds_by_target(&m, 3).unwrap();
        assert_eq!(r, vec![Some("restart a".into()), None, Some("restart b".into())]);
    }

    #[test]
    fn restart_cmd_before_any_target_is_refused() {
        let m = rotate_matches(&["rekey", "rotate", "--user", "u", "--restart-cmd", "x", "--target", "env:/a"]);
        assert!(restart_cmds_by_target(&m, 1).unwrap_err().contains("must follow"));
    }

    /// Every kind the adapters parse, named in `--target`'s help. The match has no wildcard, so a
    /// new kind does not compile here until it is added to the list, and then to the help.
    #[test]
    fn target_help_names_every_kind() {
        use rekey_adapters::TargetKind::{self, *};
        let kinds = [SecretsManager, Ecs, Env, Ssm, Lambda, Profile, Exec];
        for kind in kinds {
            match kind {
                SecretsManager | Ecs | Env | Ssm | Lambda | Profile | Exec => {}
            }
        }
        let mut cmd = Cli::command();
        let rotate = cmd.find_subcommand_mut("rotate").expect("rotate");
        let help = rotate.render_help().to_string();
        let missing: Vec<&str> =
            kinds.iter().map(|k: &TargetKind| k.as_str()).filter(|k| !help.contains(&format!("{k}:"))).collect();
        assert!(missing.is_empty(), "--target's help leaves out {missing:?}:\n{help}");
    }

    #[test]
    fn a_user_name_that_could_name_another_path_is_a_usage_error() {
        for bad in ["../etc", "a/b", "", "arn:aws:iam::1:user/x", &"x".repeat(65)] {
            let e = Cli::command().try_get_matches_from(["rekey", "resume", "--user", bad]).expect_err(bad);
            assert!(e.to_string().contains("not an IAM user name"), "{bad}: {e}");
        }
        assert!(Cli::command().try_get_matches_from(["rekey", "status", "--user", "app+ci=1,x.y@z_w-v"]).is_ok());
    }

    #[test]
    fn a_bad_target_spec_is_a_usage_error() {
        let e = Cli::command()
            .try_get_matches_from(["rekey", "rotate", "--user", "u", "--target", "s3:bucket"])
            .unwrap_err();
        assert!(e.to_string().contains("unknown kind"), "{e}");
        assert!(e.use_stderr());
    }
}
