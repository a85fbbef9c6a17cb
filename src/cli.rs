//! The command line: parsing, wiring the real AWS clients into the rotation, and printing.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use rekey_adapters::{Options, Target, TargetSpec};

use crate::clock::SystemClock;
use crate::iam::{AwsIam, Iam, StsKeyCheck};
use crate::journal::{Journals, Outcome, SharedJournals};
use crate::probe::{HttpProbe, Probe};
use crate::progress::Progress;
use crate::rotation::{self, Effects, Factory, Refusal, Report, Settings, TargetSetting};
use crate::wait::Streak;

/// Exit codes, documented in the README.
pub mod exit {
    pub const OK: i32 = 0;
    pub const INTERNAL: i32 = 1;
    pub const REFUSED: i32 = 2;
    pub const ROLLED_BACK: i32 = 3;
    pub const FAILED: i32 = 4;
    /// `audit`: something needs action.
    pub const NEEDS_ACTION: i32 = crate::audit::NEEDS_ACTION;
}

#[derive(Parser, Debug)]
#[command(name = "rekey", version, about = "Rotate AWS IAM access keys of deployed applications with zero downtime")]
pub struct Cli {
    /// AWS profile to run as (the rotating principal, never the user being rotated).
    #[arg(long, global = true, env = "AWS_PROFILE")]
    profile: Option<String>,
    /// AWS region of the targets and of the STS endpoint used to check the new key.
    #[arg(long, global = true)]
    region: Option<String>,
    /// Where journals of rotations are kept (default: $XDG_STATE_HOME/rekey or ~/.local/state/rekey).
    #[arg(long, global = true, env = "REKEY_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Output format on stdout.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
    /// More logging on stderr (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
    /// One JSON object per line (trace only; its default).
    Ndjson,
    /// Aligned columns (trace only).
    Table,
}

#[derive(Subcommand, Debug)]
enum Command {
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
    Incident(IncidentArgs),
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
}

#[derive(Args, Debug)]
struct AuditArgs {
    /// rekey.toml: its max_age, unused_after, rotations and accounts (default: none; 90-day
    /// defaults, this account only, coverage not judged).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct PlanArgs {
    /// The rotations: rekey.toml (see the README).
    #[arg(long, default_value = "./rekey.toml")]
    config: PathBuf,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The rotations: rekey.toml (see the README).
    #[arg(long, default_value = "./rekey.toml")]
    config: PathBuf,
    /// Users rotated at the same time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    concurrency: u32,
    #[command(flatten)]
    waits: WaitArgs,
    /// Bound on an ECS rollout.
    #[arg(long, value_parser = parse_duration, default_value = "15m")]
    ecs_timeout: Duration,
}

#[derive(Args, Debug)]
struct InvestigateArgs {
    /// The leaked access key.
    #[arg(long = "access-key", value_name = "AKIA…", value_parser = crate::trace::parse_key)]
    key: String,
    /// Start of the window: a duration back from now (30d) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN", value_parser = crate::trace::parse_when, default_value = "30d")]
    since: std::time::SystemTime,
    /// End of the window (default: now).
    #[arg(long, value_name = "WHEN", value_parser = crate::trace::parse_when)]
    until: Option<std::time::SystemTime>,
    /// More CloudTrail logs: a folder or s3://bucket/prefix (repeatable); the trails' own buckets are found anyway.
    #[arg(long = "logs", value_name = "PATH|s3://BUCKET/PREFIX", value_parser = crate::logs::LogsSpec::parse)]
    logs: Vec<crate::logs::LogsSpec>,
    /// Where report.md, report.json, report.html and plan.json go (default ./rekey-incident-<key>-<time>).
    #[arg(long)]
    report_dir: Option<PathBuf>,
    /// An address the attacker used (from AWS's notice; repeatable): never allowed by the fence.
    #[arg(long = "attacker-ip", value_name = "IP")]
    attacker_ips: Vec<String>,
    /// Read the event history of these regions only (repeatable; default: every enabled region).
    #[arg(long = "history-region", value_name = "REGION")]
    history_regions: Vec<String>,
    /// Do not read the CloudTrail event history (LookupEvents).
    #[arg(long)]
    no_history: bool,
    /// Do not look for the account's trails and their log files.
    #[arg(long)]
    no_trails: bool,
    #[command(flatten)]
    athena: AthenaArgs,
}

#[derive(Args, Debug)]
struct IncidentArgs {
    #[command(flatten)]
    investigate: InvestigateArgs,
    /// Where the key is used, as for `rotate` (repeatable): the cutover moves them to a new key.
    #[arg(long = "target", value_name = "SPEC")]
    targets: Vec<TargetSpec>,
    /// Shell command run after the --target just before it is written.
    #[arg(long = "restart-cmd", value_name = "CMD")]
    restart_cmds: Vec<String>,
    /// Health URL that must stay healthy through the cutover (repeatable).
    #[arg(long = "probe", value_name = "URL")]
    probes: Vec<String>,
    #[command(flatten)]
    waits: WaitArgs,
    /// Bound on an ECS rollout.
    #[arg(long, value_parser = parse_duration, default_value = "15m")]
    ecs_timeout: Duration,
    /// Investigate and contain, but leave the key Active (no cutover).
    #[arg(long, conflicts_with = "deactivate_now")]
    no_cutover: bool,
    /// No consumer to move: deactivate the key at once (its consumers break).
    #[arg(long, conflicts_with = "targets")]
    deactivate_now: bool,
    /// Do not fence the user while the cutover runs.
    #[arg(long)]
    no_fence: bool,
}

#[derive(Args, Debug)]
struct ContainArgs {
    /// The plan.json written by `incident` or `investigate`.
    #[arg(long)]
    plan: PathBuf,
    /// Carry the plan out (without it: print what it would do).
    #[arg(long, conflicts_with = "undo")]
    apply: bool,
    /// Reverse what `--apply` did, as its log records.
    #[arg(long)]
    undo: bool,
}

#[derive(Args, Debug)]
struct RotateArgs {
    /// The IAM user whose access key is rotated.
    #[arg(long)]
    user: String,
    /// The key to replace, when the user has more than one.
    #[arg(long, value_name = "AKIA…")]
    old_key: Option<String>,
    /// Where the key is used, in order: secretsmanager:<secret-id>, ecs:[<cluster>/]<service>, env:<path>.
    #[arg(long = "target", value_name = "SPEC", required = true)]
    targets: Vec<TargetSpec>,
    /// Shell command run after the --target just before it is written (and after its rollback).
    #[arg(long = "restart-cmd", value_name = "CMD")]
    restart_cmds: Vec<String>,
    /// Health URL that must answer 2xx several times in a row before the old key is deactivated.
    #[arg(long = "probe", value_name = "URL")]
    probes: Vec<String>,
    #[command(flatten)]
    waits: WaitArgs,
    /// Keep the old key Active this long after the probes pass (e.g. 10m), for consumers that cache credentials.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    grace: Duration,
    /// Delete the old key after deactivating it (default: leave it Inactive, so the change can be undone).
    #[arg(long)]
    delete_old: bool,
    /// Bound on an ECS rollout.
    #[arg(long, value_parser = parse_duration, default_value = "15m")]
    ecs_timeout: Duration,
    /// Print what would change and change nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    journal: JournalArgs,
}

/// Where `rotate`, `resume` and `status` keep journals, when not in the state folder.
#[derive(Args, Debug, Clone)]
struct JournalArgs {
    /// Journal in this DynamoDB table (partition key pk String, sort key sk Number) instead of
    /// --state-dir, so that another machine or container can `status` and `resume` the rotation.
    #[arg(long, value_name = "NAME", env = "REKEY_JOURNAL_TABLE")]
    journal_table: Option<String>,
}

#[derive(Args, Debug, Clone)]
struct WaitArgs {
    /// Consecutive successful sts:GetCallerIdentity calls with the new key before it is used.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    verify_successes: u32,
    /// Bound on waiting for the new key to work.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    verify_timeout: Duration,
    /// Consecutive 2xx answers each probe must give.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    probe_successes: u32,
    /// Bound on waiting for each probe.
    #[arg(long, value_parser = parse_duration, default_value = "2m")]
    probe_timeout: Duration,
    /// Check the new key against the STS endpoint of this region too (repeatable; default: --region).
    #[arg(long = "verify-region", value_name = "REGION")]
    verify_regions: Vec<String>,
    /// Pause between two successful checks.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    check_interval: Duration,
}

#[derive(Args, Debug)]
struct ResumeArgs {
    /// The user whose rotation was interrupted.
    #[arg(long)]
    user: String,
    /// Undo the rotation even if it could be finished.
    #[arg(long)]
    rollback: bool,
    #[command(flatten)]
    waits: WaitArgs,
    #[command(flatten)]
    journal: JournalArgs,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// Only this user.
    #[arg(long)]
    user: Option<String>,
    #[command(flatten)]
    journal: JournalArgs,
}

#[derive(Args, Debug)]
struct TraceArgs {
    /// The access key whose records are wanted (repeatable).
    #[arg(long = "access-key", value_name = "AKIA…", required = true, value_parser = crate::trace::parse_key)]
    keys: Vec<String>,
    /// CloudTrail logs: a local folder (any depth, .json.gz/.json) or s3://bucket[/prefix] (repeatable).
    #[arg(long = "logs", value_name = "PATH|s3://BUCKET/PREFIX", required = true, value_parser = crate::logs::LogsSpec::parse)]
    logs: Vec<crate::logs::LogsSpec>,
    /// Only records from this time on: a duration back from now (30d, 12h) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN", value_parser = crate::trace::parse_when)]
    since: Option<std::time::SystemTime>,
    /// Only records up to this time: a duration back from now (1d) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN", value_parser = crate::trace::parse_when)]
    until: Option<std::time::SystemTime>,
    /// Also find the records of every key the keys minted (AssumeRole, GetSessionToken, CreateAccessKey, …).
    #[arg(long)]
    follow: bool,
    #[command(flatten)]
    athena: AthenaArgs,
}

/// Run the search as Athena queries over the trail bucket (for trails too big for one machine).
#[derive(Args, Debug, Clone)]
struct AthenaArgs {
    /// Query with Athena instead of reading the log files (billed per TB scanned; see the README).
    #[arg(long)]
    athena: bool,
    /// Athena database (it must exist).
    #[arg(long, default_value = "default", requires = "athena")]
    athena_database: String,
    /// Table to create (if missing) and query.
    #[arg(long, default_value = "rekey_cloudtrail", requires = "athena")]
    athena_table: String,
    /// s3://… for query results (leave out when the workgroup sets it).
    #[arg(long, default_value = "", requires = "athena")]
    athena_output: String,
    #[arg(long, requires = "athena")]
    athena_workgroup: Option<String>,
    /// Bound on each query.
    #[arg(long, value_parser = parse_duration, default_value = "10m", requires = "athena")]
    athena_timeout: Duration,
    /// Accounts whose logs the bucket holds (repeatable; default: the caller's).
    #[arg(long = "athena-account", requires = "athena")]
    athena_accounts: Vec<String>,
    /// Regions to search (repeatable; default: --region).
    #[arg(long = "athena-region", requires = "athena")]
    athena_regions: Vec<String>,
    /// Organization id of an organization trail (objects under AWSLogs/<org-id>/).
    #[arg(long, requires = "athena")]
    athena_org_id: Option<String>,
    /// Use an existing table as it is.
    #[arg(long, requires = "athena")]
    athena_no_create_table: bool,
}

impl AthenaArgs {
    fn options(&self) -> Option<crate::trace::AthenaOptions> {
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

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write e.g. 30s, 10m, 1h)"))
}

impl WaitArgs {
    fn verify(&self) -> Streak {
        Streak { successes: self.verify_successes, timeout: self.verify_timeout, interval: self.check_interval }
    }
    fn probe(&self) -> Streak {
        Streak { successes: self.probe_successes, timeout: self.probe_timeout, interval: self.check_interval }
    }
}

/// Pair each `--restart-cmd` with the `--target` written just before it on the command line.
fn restart_cmds_by_target(m: &ArgMatches, targets: usize) -> Result<Vec<Option<String>>, String> {
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

pub(crate) struct AwsFactory {
    sdk: aws_types::SdkConfig,
    progress: bool,
    poll_interval: Duration,
}

impl AwsFactory {
    pub(crate) fn new(sdk: aws_types::SdkConfig, progress: bool) -> Self {
        AwsFactory { sdk, progress, poll_interval: Duration::from_secs(5) }
    }
}

impl Factory for AwsFactory {
    fn target(&self, spec: &TargetSpec, cx: &crate::rotation::TargetContext<'_>) -> Box<dyn Target> {
        let options = Options {
            ecs_timeout: cx.ecs_timeout,
            poll_interval: self.poll_interval,
            restart_cmd: cx.restart_cmd.map(str::to_string),
            progress: self.progress,
            old_key_id: Some(cx.old_key_id.to_string()),
            new_key_id: cx.new_key_id.map(str::to_string),
            ..Options::default()
        };
        rekey_adapters::build(spec, &self.sdk, &options)
    }

    fn probe(&self, url: &str) -> Result<Box<dyn Probe>, String> {
        Ok(Box::new(HttpProbe::new(url, Duration::from_secs(5))?))
    }
}

fn default_state_dir() -> Result<PathBuf, String> {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("rekey"));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".local/state/rekey")),
        None => Err("no HOME or XDG_STATE_HOME to keep journals in; pass --state-dir".into()),
    }
}

async fn load_sdk(cli: &Cli) -> Result<aws_types::SdkConfig, String> {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(p) = &cli.profile {
        loader = loader.profile_name(p);
    }
    if let Some(r) = &cli.region {
        loader = loader.region(aws_config::Region::new(r.clone()));
    }
    let sdk = loader.load().await;
    if sdk.region().is_none() {
        return Err("no AWS region configured; pass --region or set AWS_REGION".into());
    }
    Ok(sdk)
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        // aws-config warns about every credential and region source it tries (IMDS off EC2, …):
        // noise unless it fails, and then rekey says what is missing.
        0 => "rekey=info,rekey_adapters=info,rekey_trail=info,aws_config=error,warn",
        1 => "rekey=debug,rekey_adapters=debug,info",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// Resolves when the user asks rekey to stop (Ctrl-C or SIGTERM).
async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
    tracing::warn!("interrupted: rolling back (this may take a moment)");
}

/// Parse, run, print; returns the process exit code.
pub async fn main() -> i32 {
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return exit::OK;
        }
        Err(e) => {
            // One line: clap's own text adds a usage block and a tip that bury the problem.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid usage").trim_start_matches("error: ");
            eprintln!("rekey: {first}; see `rekey --help`");
            return exit::REFUSED;
        }
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return exit::REFUSED;
        }
    };
    init_logging(cli.verbose);
    let json = cli.output == OutputFormat::Json;
    let state_dir = match cli.state_dir.clone().map(Ok).unwrap_or_else(default_state_dir) {
        Ok(d) => d,
        Err(e) => return refuse(json, "", &e),
    };

    match &cli.command {
        Command::Status(args) => {
            let journals = match journals(&cli, state_dir, &args.journal).await {
                Ok(j) => j,
                Err(e) => return refuse(json, "", &e),
            };
            status(&journals, args.user.as_deref(), json).await
        }
        Command::Trace(args) => {
            // `text` is every other command's default; asked for by name, it means the human table.
            let named = matches.value_source("output") == Some(clap::parser::ValueSource::CommandLine);
            let format = match cli.output {
                OutputFormat::Json => crate::trace::Format::Json,
                OutputFormat::Table => crate::trace::Format::Table,
                OutputFormat::Text if named => crate::trace::Format::Table,
                OutputFormat::Ndjson | OutputFormat::Text => crate::trace::Format::Ndjson,
            };
            // Local folders need no AWS configuration (nor a region).
            let sdk = if args.logs.iter().any(crate::logs::LogsSpec::is_s3) {
                match load_sdk(&cli).await {
                    Ok(s) => Some(s),
                    Err(e) => return refuse(false, "", &e),
                }
            } else {
                None
            };
            let settings = crate::trace::Settings {
                keys: args.keys.clone(),
                logs: args.logs.clone(),
                since: args.since,
                until: args.until,
                follow: args.follow,
                format,
                athena: args.athena.options(),
            };
            crate::trace::run(settings, sdk).await
        }
        Command::Rotate(args) => {
            let sub = matches.subcommand_matches("rotate").expect("rotate matched");
            let restart = match restart_cmds_by_target(sub, args.targets.len()) {
                Ok(r) => r,
                Err(e) => return refuse(json, &args.user, &e),
            };
            let settings = Settings {
                user: args.user.clone(),
                old_key: args.old_key.clone(),
                targets: args
                    .targets
                    .iter()
                    .cloned()
                    .zip(restart)
                    .map(|(spec, restart_cmd)| TargetSetting { spec, restart_cmd })
                    .collect(),
                probes: args.probes.clone(),
                verify: args.waits.verify(),
                probe: args.waits.probe(),
                grace: args.grace,
                delete_old: args.delete_old,
                dry_run: args.dry_run,
                ecs_timeout: args.ecs_timeout,
                verify_regions: args.waits.verify_regions.clone(),
                defer_deactivation: false,
            };
            run_with_aws(&cli, state_dir, &args.journal, &settings, json, None).await
        }
        Command::Incident(args) => {
            let sub = matches.subcommand_matches("incident").expect("incident matched");
            let restart = match restart_cmds_by_target(sub, args.targets.len()) {
                Ok(r) => r,
                Err(e) => return refuse(json, "", &e),
            };
            let cutover = if args.no_cutover {
                crate::incident::run::Cutover::Skip { why: "--no-cutover".into() }
            } else if args.deactivate_now {
                crate::incident::run::Cutover::DeactivateNow
            } else if args.targets.is_empty() {
                crate::incident::run::Cutover::Skip {
                    why: "no --target given to move the consumers to a new key (or --deactivate-now)".into(),
                }
            } else {
                crate::incident::run::Cutover::Rotate(Box::new(Settings {
                    user: String::new(),
                    old_key: None,
                    targets: args
                        .targets
                        .iter()
                        .cloned()
                        .zip(restart)
                        .map(|(spec, restart_cmd)| TargetSetting { spec, restart_cmd })
                        .collect(),
                    probes: args.probes.clone(),
                    verify: args.waits.verify(),
                    probe: args.waits.probe(),
                    grace: Duration::ZERO,
                    delete_old: false,
                    dry_run: false,
                    ecs_timeout: args.ecs_timeout,
                    verify_regions: args.waits.verify_regions.clone(),
                    defer_deactivation: false,
                }))
            };
            incident(&cli, state_dir, &args.investigate, cutover, !args.no_fence, false, json).await
        }
        Command::Investigate(args) => {
            let skip = crate::incident::run::Cutover::Skip { why: "investigate changes nothing".into() };
            incident(&cli, state_dir, args, skip, false, true, json).await
        }
        Command::Contain(args) => contain(&cli, args, json).await,
        Command::Audit(args) => audit(&cli, args, json).await,
        Command::Plan(args) => fleet(&cli, state_dir, &args.config, None, json).await,
        Command::Run(args) => fleet(&cli, state_dir, &args.config, Some(args), json).await,
        Command::Resume(args) => {
            let settings = Settings {
                user: args.user.clone(),
                old_key: None,
                targets: Vec::new(),
                probes: Vec::new(),
                verify: args.waits.verify(),
                probe: args.waits.probe(),
                grace: Duration::ZERO,
                delete_old: false,
                dry_run: false,
                ecs_timeout: Duration::from_secs(900),
                verify_regions: args.waits.verify_regions.clone(),
                defer_deactivation: false,
            };
            run_with_aws(&cli, state_dir, &args.journal, &settings, json, Some(args.rollback)).await
        }
    }
}

async fn incident(
    cli: &Cli,
    state_dir: PathBuf,
    args: &InvestigateArgs,
    cutover: crate::incident::run::Cutover,
    fence: bool,
    read_only: bool,
    json: bool,
) -> i32 {
    use crate::incident::run::{IncidentSettings, run};
    let sdk = match load_sdk(cli).await {
        Ok(s) => s,
        Err(e) => return refuse(json, "", &e),
    };
    let end = args.until.unwrap_or_else(std::time::SystemTime::now);
    if args.since >= end {
        return refuse(json, "", "--since is not before --until; give an earlier --since (e.g. 30d)");
    }
    let handle = tokio::runtime::Handle::current();
    let mut logs = Vec::new();
    for spec in &args.logs {
        match spec.source(Some(&sdk), &handle) {
            Ok(s) => logs.push((spec.to_string(), s)),
            Err(e) => return refuse(json, "", &e),
        }
    }
    let athena = match args.athena.options() {
        None => None,
        Some(opts) => match crate::trace::athena_settings(&opts, &args.logs, &sdk).await {
            Ok(s) => Some(s),
            Err(e) => return refuse(json, "", &e),
        },
    };
    let report_dir = args.report_dir.clone().unwrap_or_else(|| {
        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().replace([':', '-'], "");
        PathBuf::from(format!("rekey-incident-{}-{stamp}", args.key))
    });
    let terminal = std::io::stderr().is_terminal();
    let progress = Progress::new(terminal);
    let iam = AwsIam::new(&sdk);
    let verify_regions = match &cutover {
        crate::incident::run::Cutover::Rotate(s) => s.verify_regions.clone(),
        _ => Vec::new(),
    };
    let key_check = StsKeyCheck::new(&sdk, &verify_regions);
    let factory = AwsFactory::new(sdk.clone(), terminal);
    let fx = Effects {
        iam: &iam,
        key_check: &key_check,
        clock: &SystemClock,
        factory: &factory,
        progress: &progress,
        journals: Journals::Local(state_dir),
    };
    let open_s3 = |url: &str| -> Result<Box<dyn rekey_trail::Source>, String> {
        crate::logs::LogsSpec::parse(url)?.source(Some(&sdk), &handle)
    };
    let settings = IncidentSettings {
        key: args.key.clone(),
        start: args.since,
        end,
        logs,
        report_dir: report_dir.clone(),
        attacker_ips: args.attacker_ips.clone(),
        regions: args.history_regions.clone(),
        use_history: !args.no_history,
        use_trails: !args.no_trails,
        read_only,
        fence,
        cutover,
        athena,
    };
    match run(&sdk, settings, Some(&fx), &open_s3, interrupted()).await {
        Err(e) => refuse(json, "", &e.0),
        Ok(outcome) => {
            let r = &outcome.report;
            if json {
                let summary = serde_json::json!({
                    "access_key_id": r.access_key_id,
                    "severity": r.severity,
                    "owner": r.owner.user,
                    "cutover": r.cutover.as_ref().map(|c| &c.outcome),
                    "findings": r.findings.iter().map(|f| serde_json::json!({"id": f.id, "severity": f.severity, "title": f.title, "still_present": f.still_present})).collect::<Vec<_>>(),
                    "report_dir": report_dir,
                    "files": outcome.files,
                });
                println!("{}", serde_json::to_string_pretty(&summary).expect("serializes"));
            } else {
                println!(
                    "{} {}: severity {:?}, owner {}",
                    if read_only { "investigated" } else { "incident" },
                    r.access_key_id,
                    r.severity,
                    r.owner.user.as_deref().unwrap_or("unknown")
                );
                for a in &r.actions_taken {
                    println!("  did: {a}");
                }
                for f in &r.findings {
                    let present = match f.still_present {
                        Some(true) => " (still present)",
                        Some(false) => " (gone)",
                        None => "",
                    };
                    println!("  {} {:?}: {}{present}", f.id, f.severity, f.title);
                }
                for b in &r.blind_spots {
                    println!("  blind spot: {}", b.detail);
                }
                for t in &r.todo {
                    println!("  to do: {t}");
                }
                println!("  report: {}", report_dir.join("report.md").display());
            }
            outcome.exit
        }
    }
}

async fn audit(cli: &Cli, args: &AuditArgs, json: bool) -> i32 {
    let config = match args.config.as_deref().map(crate::config::Config::load).transpose() {
        Ok(c) => c,
        Err(e) => return refuse(json, "", &e.to_string()),
    };
    let sdk = match load_sdk(cli).await {
        Ok(s) => s,
        Err(e) => return refuse(json, "", &e),
    };
    match crate::audit::audit(&sdk, config.as_ref(), std::time::SystemTime::now()).await {
        Ok(report) => {
            crate::audit::print(&report, json);
            crate::audit::exit_code(&report)
        }
        Err(e) => refuse(json, "", &e),
    }
}

async fn contain(cli: &Cli, args: &ContainArgs, json: bool) -> i32 {
    use crate::incident::contain::{Mode, run};
    let text = match std::fs::read_to_string(&args.plan) {
        Ok(t) => t,
        Err(e) => {
            return refuse(
                json,
                "",
                &format!("cannot read the plan {}: {e}; give the plan.json of an incident report", args.plan.display()),
            );
        }
    };
    let plan: crate::incident::model::Plan = match serde_json::from_str(&text) {
        Ok(p) => p,
        Err(e) => {
            return refuse(
                json,
                "",
                &format!("{} is not a rekey plan ({e}); give the plan.json of an incident report", args.plan.display()),
            );
        }
    };
    let sdk = match load_sdk(cli).await {
        Ok(s) => s,
        Err(e) => return refuse(json, "", &e),
    };
    let mode = if args.apply {
        Mode::Apply
    } else if args.undo {
        Mode::Undo
    } else {
        Mode::DryRun
    };
    let log = crate::incident::contain::log_path_for(&args.plan);
    let iam = aws_sdk_iam::Client::new(&sdk);
    let account = aws_sdk_account::Client::new(&sdk);
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    let print = |report: &crate::incident::contain::ContainReport| {
        if json {
            println!("{}", serde_json::to_string_pretty(report).expect("serializes"));
        } else {
            print!("{report}");
        }
    };
    match run(&iam, &account, &ec2, &plan, mode, &log).await {
        Ok(report) => {
            print(&report);
            exit::OK
        }
        Err(e) => {
            if let Some(report) = e.report() {
                print(report);
            }
            eprintln!("rekey: {e}");
            exit::FAILED
        }
    }
}

/// `plan` (no `run` args) and `run`: nothing runs unless the config reads cleanly and, with
/// `[lock]`, the lock table exists.
async fn fleet(cli: &Cli, state_dir: PathBuf, config: &std::path::Path, run: Option<&RunArgs>, json: bool) -> i32 {
    use crate::lock::{DynamoDbLock, FileLock, UserLock};
    let config = match crate::config::Config::load(config) {
        Ok(c) => c,
        Err(e) => return refuse(json, "", &e.to_string()),
    };
    let sdk = match load_sdk(cli).await {
        Ok(s) => s,
        Err(e) => return refuse(json, "", &e),
    };
    let accounts = match crate::fleet::connect(&sdk, &config, &state_dir).await {
        Ok(a) => std::sync::Arc::new(a),
        Err(e) => return refuse(json, "", &e),
    };
    // `plan` only dry-runs, which waits for nothing.
    let idle = Streak { successes: 1, timeout: Duration::ZERO, interval: Duration::ZERO };
    let opts = crate::fleet::Options {
        concurrency: run.map_or(1, |r| r.concurrency as usize),
        state_dir: state_dir.clone(),
        verify: run.map_or(idle.clone(), |r| r.waits.verify()),
        probe: run.map_or(idle, |r| r.waits.probe()),
        ecs_timeout: run.map_or(Duration::from_secs(900), |r| r.ecs_timeout),
        lock_ttl: config.lock.as_ref().map_or(Duration::from_secs(30 * 60), |l| l.ttl.0),
        owner: crate::lock::owner_id(),
    };
    if run.is_none() {
        let entries = crate::fleet::plan(&config, &accounts, &opts).await;
        crate::fleet::print_plan(&entries, json);
        return if entries.iter().any(|e| e.error.is_some()) { exit::FAILED } else { exit::OK };
    }
    let lock: std::sync::Arc<dyn UserLock> = match &config.lock {
        Some(l) => {
            let table = DynamoDbLock::new(&sdk, &l.dynamodb_table);
            if let Err(e) = table.check_table().await {
                return refuse(json, "", &e.to_string());
            }
            std::sync::Arc::new(table)
        }
        None => std::sync::Arc::new(FileLock::new(&state_dir)),
    };
    let summary = crate::fleet::run(&config, accounts, lock, opts, interrupted()).await;
    crate::fleet::print_summary(&summary, json);
    summary.exit_code
}

/// The journals of `rotate`, `resume` and `status`: the state folder, or with --journal-table the
/// table's journals of the account rekey runs in.
async fn journals(cli: &Cli, state_dir: PathBuf, args: &JournalArgs) -> Result<Journals, String> {
    let Some(table) = &args.journal_table else { return Ok(Journals::Local(state_dir)) };
    let sdk = load_sdk(cli).await?;
    shared_journals(&sdk, table).await
}

async fn shared_journals(sdk: &aws_types::SdkConfig, table: &str) -> Result<Journals, String> {
    let caller = AwsIam::new(sdk)
        .caller()
        .await
        .map_err(|e| format!("cannot tell who rekey runs as: {e}; check your AWS credentials"))?;
    let shared = SharedJournals::new(aws_sdk_dynamodb::Client::new(sdk), table, &caller.account);
    shared.check_table().await?;
    Ok(Journals::Shared(shared))
}

async fn run_with_aws(
    cli: &Cli,
    state_dir: PathBuf,
    journal: &JournalArgs,
    settings: &Settings,
    json: bool,
    resume: Option<bool>,
) -> i32 {
    let sdk = match load_sdk(cli).await {
        Ok(s) => s,
        Err(e) => return refuse(json, &settings.user, &e),
    };
    let journals = match &journal.journal_table {
        None => Journals::Local(state_dir),
        Some(table) => match shared_journals(&sdk, table).await {
            Ok(j) => j,
            Err(e) => return refuse(json, &settings.user, &e),
        },
    };
    let terminal = std::io::stderr().is_terminal();
    let progress = Progress::new(terminal);
    let iam = AwsIam::new(&sdk);
    let key_check = StsKeyCheck::new(&sdk, &settings.verify_regions);
    let factory = AwsFactory::new(sdk.clone(), terminal);
    let fx = Effects {
        iam: &iam,
        key_check: &key_check,
        clock: &SystemClock,
        factory: &factory,
        progress: &progress,
        journals,
    };
    let result = match resume {
        None => rotation::rotate(&fx, settings, interrupted()).await,
        Some(force_rollback) => rotation::resume(&fx, &settings.user, force_rollback, settings, interrupted()).await,
    };
    match result {
        Ok(report) => {
            print_report(&report, json);
            match report.outcome() {
                Outcome::Rotated | Outcome::Planned => exit::OK,
                Outcome::RolledBack => exit::ROLLED_BACK,
                Outcome::Failed => exit::FAILED,
                Outcome::Refused => exit::REFUSED,
            }
        }
        Err(Refusal(e)) => refuse(json, &settings.user, &e),
    }
}

fn refuse(json: bool, user: &str, error: &str) -> i32 {
    if json {
        println!("{}", serde_json::to_string(&Report::refused(user, error)).expect("report serializes"));
    }
    eprintln!("rekey: {error}");
    exit::REFUSED
}

fn print_report(r: &Report, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(r).expect("report serializes"));
        if let Some(e) = &r.error {
            eprintln!("rekey: {}: {e}", r.outcome);
        }
        return;
    }
    let key = |k: &Option<String>| k.clone().unwrap_or_else(|| "-".into());
    let headline = match r.outcome() {
        Outcome::Rotated => format!(
            "rotated {}: {} -> {} (old key {})",
            r.user,
            key(&r.old_key_id),
            key(&r.new_key_id),
            r.old_key_status.map(|s| s.to_string()).unwrap_or_else(|| "deleted".into())
        ),
        Outcome::Planned => format!("plan for {}: replace {} (dry run, nothing changed)", r.user, key(&r.old_key_id)),
        Outcome::RolledBack => {
            format!("rolled back {}: {} is still the Active key; every target was restored", r.user, key(&r.old_key_id))
        }
        Outcome::Failed => format!("FAILED and could not roll back fully for {}", r.user),
        Outcome::Refused => format!("refused for {}", r.user),
    };
    println!("{headline}");
    if let Some(e) = &r.error {
        println!("  cause: {e}");
    }
    if !r.targets.is_empty() {
        println!("  targets:");
        for t in &r.targets {
            println!("    {:<48} {}", t.target, t.status);
            for c in &t.changes {
                println!("      would {c}");
            }
        }
    }
    if !r.steps.is_empty() {
        println!("  steps:");
        for s in &r.steps {
            println!("    {:<48} {:<8} {:>8} ms", s.name, s.status, s.duration_ms);
        }
    }
    for w in &r.warnings {
        println!("  warning: {w}");
    }
    if !r.left.is_empty() {
        println!("  left to do:");
        for l in &r.left {
            println!("    - {l}");
        }
    }
    if let Some(j) = &r.journal {
        println!("  journal: {}", j.display());
    }
    if let Some(e) = r.error.as_ref().filter(|_| r.outcome() != Outcome::Rotated) {
        eprintln!("rekey: {}: {e}", r.outcome);
    }
}

async fn status(journals: &Journals, user: Option<&str>, json: bool) -> i32 {
    let unfinished = match journals.list_unfinished().await {
        Ok(u) => u,
        Err(e) => {
            eprintln!("rekey: {e}");
            return exit::INTERNAL;
        }
    };
    let rows: Vec<serde_json::Value> = unfinished
        .iter()
        .filter(|(_, s)| user.is_none_or(|u| u == s.begin.user))
        .map(|(path, s)| {
            serde_json::json!({
                "user": s.begin.user,
                "rotation_id": s.begin.rotation_id,
                "old_key_id": s.begin.old_key_id,
                "new_key_id": s.new_key_id,
                "last_step": s.last_step(),
                "targets": s.begin.targets.iter().map(|t| &t.spec).collect::<Vec<_>>(),
                "journal": path,
                "next": format!("rekey resume --user {}", s.begin.user),
            })
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "unfinished": rows })).expect("serializes"));
    } else if rows.is_empty() {
        println!("no unfinished rotations in {journals}");
    } else {
        for r in &rows {
            println!(
                "{}: unfinished rotation {} of {} (new key {}), stopped at \"{}\"; run `{}`",
                r["user"].as_str().unwrap_or_default(),
                r["rotation_id"].as_str().unwrap_or_default(),
                r["old_key_id"].as_str().unwrap_or_default(),
                r["new_key_id"].as_str().unwrap_or("not created"),
                r["last_step"].as_str().unwrap_or_default(),
                r["next"].as_str().unwrap_or_default(),
            );
            println!("  journal: {}", r["journal"].as_str().unwrap_or_default());
        }
    }
    exit::OK
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn a_bad_target_spec_is_a_usage_error() {
        let e = Cli::command()
            .try_get_matches_from(["rekey", "rotate", "--user", "u", "--target", "s3:bucket"])
            .unwrap_err();
        assert!(e.to_string().contains("unknown kind"), "{e}");
        assert!(e.use_stderr());
    }
}
