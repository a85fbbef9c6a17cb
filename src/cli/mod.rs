//! The command line: parsing, wiring the real AWS clients into the rotation, and printing.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches};

mod args;
mod install;
mod output;

use args::*;
use output::{print_report, refuse, status};

use crate::aws::Wiring;
use crate::exit::Status;
use crate::rotate::journal::{Journals, Outcome};
use crate::rotate::machine::{self as rotation, Refusal, Settings, TargetSetting};
use crate::rotate::wait::{Streak, Verify};

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
    crate::aws::load_sdk(cli.profile.as_deref(), cli.region.as_deref(), cli.aws_timeout).await
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
        .with_writer(|| crate::progress::AboveStatusLines)
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
pub async fn main() -> Status {
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return Status::Ok;
        }
        Err(e) => {
            // One line: clap's own text adds a usage block and a tip that bury the problem.
            let text = e.to_string();
            let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
            let mut first = lines.next().unwrap_or("invalid usage").trim_start_matches("error: ").to_string();
            // "the following required arguments were not provided:" names them on the next line.
            if first.ends_with(':') {
                first = format!("{first} {}", lines.next().unwrap_or_default());
            }
            eprintln!("rekey: {first}; see `rekey --help`");
            return Status::Refused;
        }
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return Status::Refused;
        }
    };
    // Packaging runs these at build time, where there may be no HOME and no AWS configuration.
    match &cli.command {
        Command::Completions(args) => return install::completions(args.shell),
        Command::Man(args) => return install::man(args.out_dir.as_deref()),
        _ => {}
    }
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
            let sdk = if args.logs.iter().any(crate::trace::sources::LogsSpec::is_s3) {
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
                Err(e) => return refuse(json, args.user.as_deref().unwrap_or_default(), &e),
            };
            let mut targets: Vec<TargetSetting> = args
                .targets
                .iter()
                .cloned()
                .zip(restart)
                .map(|(spec, restart_cmd)| TargetSetting { spec, restart_cmd })
                .collect();
            if args.discover {
                let Some(user) = args.user.clone() else {
                    return refuse(
                        json,
                        "",
                        "--discover finds the places of a named user's key; give --user (with --self, name the --target)",
                    );
                };
                let who = crate::discover::Who::User(user.clone());
                match discovered(&cli, who, args.old_key.as_deref(), &args.paths, &mut targets).await {
                    Ok(()) => {}
                    Err(e) => return refuse(json, &user, &e),
                }
            }
            let settings = Settings {
                // With --self, the caller: known once the credentials are loaded.
                user: args.user.clone().unwrap_or_default(),
                old_key: args.old_key.clone(),
                targets,
                probes: args.probes.clone(),
                verify: args.waits.verify(),
                probe: args.waits.probe(),
                grace: args.grace,
                delete_old: args.delete_old,
                dry_run: args.dry_run,
                ecs_timeout: args.ecs_timeout,
                verify_regions: args.waits.verify_regions.clone(),
                defer_deactivation: false,
                mark_deactivated: false,
                keep_keys: false,
                free_slot: None,
                own_key: args.own_key,
                retire: crate::rotate::evidence::Retire {
                    force: args.force_deactivate.then(|| "--force-deactivate".to_string()),
                    quiet: args.quiet_period,
                    ..Default::default()
                },
            };
            run_with_aws(&cli, state_dir, &args.journal, &settings, json, None).await
        }
        Command::Incident(args) => {
            let sub = matches.subcommand_matches("incident").expect("incident matched");
            let restart = match restart_cmds_by_target(sub, args.targets.len()) {
                Ok(r) => r,
                Err(e) => return refuse(json, "", &e),
            };
            let mut targets: Vec<TargetSetting> = args
                .targets
                .iter()
                .cloned()
                .zip(restart)
                .map(|(spec, restart_cmd)| TargetSetting { spec, restart_cmd })
                .collect();
            if args.discover {
                let key = args.investigate.key.clone();
                let who = crate::discover::Who::Key(key.clone());
                if let Err(e) = discovered(&cli, who, Some(&key), &args.paths, &mut targets).await {
                    return refuse(json, "", &e);
                }
            }
            let mut cutover = if args.no_cutover {
                crate::incident::run::Cutover::Skip { why: "--no-cutover".into() }
            } else if args.deactivate_now {
                crate::incident::run::Cutover::DeactivateNow
            } else if targets.is_empty() {
                crate::incident::run::Cutover::Skip {
                    why: "no --target given to move the consumers to a new key (or --deactivate-now)".into(),
                }
            } else {
                crate::incident::run::Cutover::Rotate(Box::new(Settings {
                    user: String::new(),
                    old_key: None,
                    targets,
                    probes: args.probes.clone(),
                    verify: args.waits.verify(),
                    probe: args.waits.probe(),
                    grace: Duration::ZERO,
                    delete_old: false,
                    dry_run: false,
                    ecs_timeout: args.ecs_timeout,
                    verify_regions: args.waits.verify_regions.clone(),
                    defer_deactivation: false,
                    mark_deactivated: false,
                    keep_keys: false,
                    free_slot: None,
                    own_key: false,
                    // The attacker's own calls are exactly "a consumer rekey did not move": the
                    // leaked key goes off whoever still uses it (discover lists them beforehand).
                    retire: crate::rotate::evidence::Retire::forced("incident: the leaked key is deactivated"),
                }))
            };
            if let crate::incident::run::Cutover::Rotate(s) = &mut cutover {
                s.keep_keys = true;
                s.free_slot = args.free_slot.clone();
            } else if let Some(k) = &args.free_slot {
                return refuse(
                    json,
                    "",
                    &format!(
                        "--free-slot {k} frees a slot for the cutover's new key, but there is no cutover here; drop it or give --target"
                    ),
                );
            }
            for given in &args.allow_sources {
                if let Some(a) = crate::incident::fence::admits_attacker(given, &args.investigate.attacker_ips) {
                    return refuse(
                        json,
                        "",
                        &format!(
                            "--allow-source {} admits the attacker address {a} given with --attacker-ip; narrow it",
                            given.value
                        ),
                    );
                }
            }
            let extra = Extra { allow_sources: args.allow_sources.clone() };
            incident(&cli, state_dir, &args.investigate, cutover, !args.no_fence, false, json, extra).await
        }
        Command::Investigate(args) => {
            let skip = crate::incident::run::Cutover::Skip { why: "investigate changes nothing".into() };
            incident(&cli, state_dir, args, skip, false, true, json, Extra::default()).await
        }
        Command::Completions(_) | Command::Man(_) => unreachable!("answered before the state folder is needed"),
        Command::Contain(args) => contain(&cli, args, json).await,
        Command::Audit(args) => audit(&cli, args, json).await,
        Command::Sweep(args) => sweep(&cli, args, json).await,
        Command::Discover(args) => discover(&cli, args, json).await,
        Command::Retire(args) => retire(&cli, args, json).await,
        Command::Plan(args) => fleet(&cli, state_dir, &args.config, None, json).await,
        Command::Run(args) => fleet(&cli, state_dir, &args.config, Some(args), json).await,
        Command::Resume(args) => {
            let sub = matches.subcommand_matches("resume").expect("resume matched");
            let restart = match restart_cmds_by_target(sub, args.targets.len()) {
                Ok(r) => r,
                Err(e) => return refuse(json, args.user.as_deref().unwrap_or_default(), &e),
            };
            let settings = Settings {
                user: args.user.clone().unwrap_or_default(),
                old_key: None,
                // Not a new rotation: what the journal's targets and probes are checked against.
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
                ecs_timeout: Duration::from_secs(900),
                verify_regions: args.waits.verify_regions.clone(),
                defer_deactivation: false,
                mark_deactivated: false,
                keep_keys: false,
                free_slot: None,
                own_key: args.own_key,
                retire: crate::rotate::evidence::Retire { quiet: args.quiet_period, ..Default::default() },
            };
            // A fence an interrupted `rekey incident` left on is lifted first, like a target.
            if let Some(user) = &args.user
                && crate::incident::fence_journal::pending(&state_dir, user).is_some()
            {
                let sdk = match load_sdk(&cli).await {
                    Ok(s) => s,
                    Err(e) => return refuse(json, user, &e),
                };
                let iam = aws_sdk_iam::Client::new(&sdk);
                match crate::incident::fence_journal::lift_pending(&iam, &state_dir, user).await {
                    Ok(Some(said)) => eprintln!("rekey: {said}"),
                    Ok(None) => {}
                    Err(e) => {
                        return refuse(json, user, &format!("the incident fence on {user} could not be lifted: {e}"));
                    }
                }
                // The incident may have been killed before its cutover began: then the fence was
                // all there was to undo.
                let journals = Journals::Local(state_dir.clone());
                if args.journal.journal_table.is_none() && journals.vacant(user).await.is_ok() {
                    if json {
                        println!("{}", serde_json::json!({"user": user, "outcome": "fence_lifted"}));
                    } else {
                        println!("{user}: the incident fence is lifted; no unfinished rotation was left");
                    }
                    return Status::Ok;
                }
            }
            run_with_aws(&cli, state_dir, &args.journal, &settings, json, Some(args.rollback)).await
        }
    }
}

/// What `incident` takes beyond `investigate`'s arguments.
#[derive(Default)]
struct Extra {
    allow_sources: Vec<crate::incident::model::FenceSource>,
}

#[allow(clippy::too_many_arguments)]
async fn incident(
    cli: &Cli,
    state_dir: PathBuf,
    args: &InvestigateArgs,
    cutover: crate::incident::run::Cutover,
    fence: bool,
    read_only: bool,
    json: bool,
    extra: Extra,
) -> Status {
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
    if !(args.history_rate.is_finite() && args.history_rate > 0.0) {
        return refuse(json, "", "--history-rate must be a positive number of requests per second (AWS allows 2)");
    }
    let mut logs = Vec::new();
    let mut sample_logs = Vec::new();
    for spec in &args.logs {
        match (spec.source(Some(&sdk), &handle), spec.source(Some(&sdk), &handle)) {
            (Ok(s), Ok(again)) => {
                logs.push((spec.to_string(), s));
                sample_logs.push((spec.to_string(), again));
            }
            (Err(e), _) | (_, Err(e)) => return refuse(json, "", &e),
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
        let stamp = rekey_trail::time::format(std::time::SystemTime::now()).replace([':', '-'], "");
        PathBuf::from(format!("rekey-incident-{}-{stamp}", args.key))
    });
    let verify_regions = match &cutover {
        crate::incident::run::Cutover::Rotate(s) => s.verify_regions.clone(),
        _ => Vec::new(),
    };
    let wiring = Wiring::new(&sdk, &verify_regions, std::io::stderr().is_terminal());
    let fx = wiring.effects(Journals::Local(state_dir.clone()));
    let open_s3 = |url: &str| -> Result<Box<dyn rekey_trail::Source>, String> {
        crate::trace::sources::LogsSpec::parse(url)?.source(Some(&sdk), &handle)
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
        sweep: (!args.no_sweep).then(|| {
            let mut o = crate::sweep::Options::new(args.since, end);
            o.deadline = args.sweep_deadline;
            o
        }),
        allow_sources: extra.allow_sources,
        sample_logs,
        history_rate: args.history_rate,
        state_dir,
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
                    "timings": r.timings,
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
                let t = &r.timings;
                let secs = |s: Option<f64>| s.map_or("-".to_string(), |s| format!("{s:.1} s"));
                if !read_only {
                    println!(
                        "  timings from the start: fence applied {}, cutover done {}, investigation done {}",
                        secs(t.fence_applied_s),
                        secs(t.cutover_done_s),
                        secs(t.investigation_done_s)
                    );
                }
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

async fn audit(cli: &Cli, args: &AuditArgs, json: bool) -> Status {
    let config = match args.config.as_deref().map(crate::fleet::config::Config::load).transpose() {
        Ok(c) => c,
        Err(e) => return refuse(json, "", &e.to_string()),
    };
    let sdk = match load_sdk(cli).await {
        Ok(s) => s,
        Err(e) => return refuse(json, "", &e),
    };
    match crate::fleet::audit::audit(&sdk, config.as_ref(), std::time::SystemTime::now()).await {
        Ok(report) => {
            crate::fleet::audit::print(&report, json);
            crate::fleet::audit::status(&report)
        }
        Err(e) => refuse(json, "", &e),
    }
}

/// `rekey sweep`: read-only; the plan, when asked for, is a local file for `rekey contain`.
async fn sweep(cli: &Cli, args: &SweepArgs, json: bool) -> Status {
    let until = args.until.unwrap_or_else(std::time::SystemTime::now);
    if args.since >= until {
        return refuse(json, "", "--since is not before --until; give an earlier --since (e.g. 30d)");
    }
    if args.deadline.is_zero() {
        return refuse(json, "", "--deadline 0s leaves no time to read anything; give e.g. 60s");
    }
    if let Some(dir) = args.plan.as_deref().and_then(|p| p.parent()).filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        return refuse(
            json,
            "",
            &format!("--plan: folder {} does not exist; create it or pick another path", dir.display()),
        );
    }
    let sdk = match load_sdk(cli).await {
        Ok(s) => s,
        Err(e) => return refuse(json, "", &e),
    };
    let mut opts = crate::sweep::Options::new(args.since, until);
    opts.regions = args.regions.clone();
    opts.deadline = args.deadline;
    opts.concurrency = args.concurrency as usize;
    let swept = crate::sweep::sweep(&sdk, &opts, &[]).await;
    if let Some(path) = &args.plan {
        let stamp = rekey_trail::time::format(std::time::SystemTime::now()).replace([':', '-'], "");
        let plan = crate::incident::model::Plan {
            incident: format!("sweep-{stamp}"),
            access_key_id: String::new(),
            account: swept.account.clone(),
            created_at: rekey_trail::time::format(std::time::SystemTime::now()),
            actions: swept.plan.clone(),
        };
        let text = serde_json::to_string_pretty(&plan).expect("a plan serializes");
        if let Err(e) = std::fs::write(path, text) {
            return refuse(
                json,
                "",
                &format!("cannot write the plan {}: {e}; pick another --plan path", path.display()),
            );
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&swept).expect("a sweep serializes"));
    } else {
        print!("{}", crate::sweep::text(&swept));
        if let Some(path) = &args.plan {
            println!(
                "  plan: {} ({} action(s)); review it, then `rekey contain --plan {} --apply` (`--undo` reverses it)",
                path.display(),
                swept.plan.len(),
                path.display()
            );
        }
    }
    if swept.findings.is_empty() && swept.blind_spots.is_empty() { Status::Ok } else { Status::NeedsAction }
}

async fn contain(cli: &Cli, args: &ContainArgs, json: bool) -> Status {
    use crate::incident::contain::{Mode, run_with};
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
    let sweep = crate::sweep::contain::Executor::new(&sdk);
    match run_with(&iam, &account, &ec2, Some(&sweep), &plan, mode, &log).await {
        Ok(report) => {
            print(&report);
            Status::Ok
        }
        Err(e) => {
            if let Some(report) = e.report() {
                print(report);
            }
            eprintln!("rekey: {e}");
            Status::Failed
        }
    }
}

/// `plan` (no `run` args) and `run`: nothing runs unless the config reads cleanly and, with
/// `[lock]`, the lock table exists.
async fn fleet(cli: &Cli, state_dir: PathBuf, config: &std::path::Path, run: Option<&RunArgs>, json: bool) -> Status {
    use crate::fleet::lock::{DynamoDbLock, FileLock, UserLock};
    let config = match crate::fleet::config::Config::load(config) {
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
        verify: run.map_or(Verify { rounds: idle.clone(), checks: 1, max_reject: 0.0 }, |r| r.waits.verify()),
        probe: run.map_or(idle, |r| r.waits.probe()),
        ecs_timeout: run.map_or(Duration::from_secs(900), |r| r.ecs_timeout),
        quiet: run.map_or(crate::rotate::evidence::DEFAULT_QUIET, |r| r.quiet_period),
        lock_ttl: config.lock.as_ref().map_or(Duration::from_secs(30 * 60), |l| l.ttl.0),
        owner: crate::fleet::lock::owner_id(),
    };
    if run.is_none() {
        let entries = crate::fleet::plan(&config, &accounts, &opts).await;
        crate::fleet::print_plan(&entries, json);
        return if entries.iter().any(|e| e.error.is_some()) { Status::Failed } else { Status::Ok };
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
    crate::aws::journals(&sdk, state_dir, Some(table), None).await
}

async fn run_with_aws(
    cli: &Cli,
    state_dir: PathBuf,
    journal: &JournalArgs,
    settings: &Settings,
    json: bool,
    resume: Option<bool>,
) -> Status {
    let sdk = match load_sdk(cli).await {
        Ok(s) => s,
        Err(e) => return refuse(json, &settings.user, &e),
    };
    let mut settings = settings.clone();
    if settings.own_key {
        let have_targets = !settings.targets.is_empty() || resume.is_some();
        match crate::aws::own_key::locate(&sdk, cli.profile.as_deref(), have_targets).await {
            Ok(own) => {
                settings.user = own.user;
                if resume.is_none() {
                    settings.old_key = Some(own.key_id);
                    settings.targets.extend(own.default_target.map(|spec| TargetSetting { spec, restart_cmd: None }));
                }
            }
            Err(e) => return refuse(json, &settings.user, &e),
        }
    }
    if !settings.own_key {
        // Rotating its own key, rekey must not read the old key's last use signed by the old key
        // itself: the default source goes through the rotation's IAM, by then signed by the new one.
        settings
            .retire
            .source
            .get_or_insert_with(|| std::sync::Arc::new(crate::rotate::evidence::AwsEvidence::new(&sdk)));
    }
    let settings = &settings;
    let journals = match crate::aws::journals(&sdk, state_dir, journal.journal_table.as_deref(), None).await {
        Ok(j) => j,
        Err(e) => return refuse(json, &settings.user, &e),
    };
    let wiring = Wiring::new(&sdk, &settings.verify_regions, std::io::stderr().is_terminal());
    let own_iam = settings.own_key.then(|| crate::aws::own_key::SelfIam::new(&sdk));
    let fx = match &own_iam {
        Some(iam) => wiring.effects_with(iam, journals),
        None => wiring.effects(journals),
    };
    let result = match resume {
        None => rotation::rotate(&fx, settings, interrupted()).await,
        Some(force_rollback) => rotation::resume(&fx, &settings.user, force_rollback, settings, interrupted()).await,
    };
    match result {
        Ok(report) => {
            print_report(&report, json);
            match report.outcome() {
                Outcome::Rotated | Outcome::Planned => Status::Ok,
                Outcome::RolledBack => Status::RolledBack,
                Outcome::Failed => Status::Failed,
                Outcome::Refused => Status::Refused,
                Outcome::Held => Status::Held,
            }
        }
        Err(Refusal(e)) => refuse(json, &settings.user, &e),
    }
}

/// `--discover` on `rotate` and `incident`: the targets `discover` finds for the key, added after
/// the ones given, then ordered so that stores come before the services that read them.
async fn discovered(
    cli: &Cli,
    who: crate::discover::Who,
    key: Option<&str>,
    paths: &[PathBuf],
    targets: &mut Vec<TargetSetting>,
) -> Result<(), String> {
    let sdk = load_sdk(cli).await?;
    for spec in crate::discover::targets_for(&sdk, who, key, paths.to_vec()).await? {
        if !targets.iter().any(|t| t.spec.raw == spec.raw) {
            targets.push(TargetSetting { spec, restart_cmd: None });
        }
    }
    targets.sort_by_key(|t| crate::discover::rank(t.spec.kind));
    Ok(())
}

async fn discover(cli: &Cli, args: &DiscoverArgs, json: bool) -> Status {
    let sdk = match load_sdk(cli).await {
        Ok(s) => s,
        Err(e) => return refuse(false, "", &e),
    };
    let who = match (&args.user, &args.key) {
        (_, Some(k)) => crate::discover::Who::Key(k.clone()),
        (Some(u), None) => crate::discover::Who::User(u.clone()),
        (None, None) => return refuse(false, "", "give --user or --access-key"),
    };
    let settings = crate::discover::Settings {
        who,
        paths: args.paths.clone(),
        regions: args.regions.clone(),
        since: args.since,
        logs: args.logs.clone(),
        history: !args.no_history,
    };
    crate::discover::command(&sdk, settings, json).await
}

async fn retire(cli: &Cli, args: &RetireArgs, json: bool) -> Status {
    use crate::rotate::evidence::{AwsEvidence, RetireError, RetireSettings, print_retire, retire};
    let sdk = match load_sdk(cli).await {
        Ok(s) => s,
        Err(e) => return refuse(false, "", &e),
    };
    let iam = crate::rotate::iam::AwsIam::new(&sdk);
    let evidence = AwsEvidence::new(&sdk);
    let settings =
        RetireSettings { user: args.user.clone(), key: args.old_key.clone(), idle: args.idle, force: args.force };
    match retire(&iam, &evidence, &crate::rotate::clock::SystemClock, &settings).await {
        Ok(report) => print_retire(&report, json),
        Err(RetireError::Refused(e)) => refuse(false, "", &e),
        Err(RetireError::Failed(e)) => {
            eprintln!("rekey: {e}");
            Status::Failed
        }
    }
}
