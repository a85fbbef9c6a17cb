//! What a package installs besides the binary: shell completions and man pages. Both are generated
//! from the clap definition the binary parses with, so they cannot drift from its flags.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;

use super::args::{Cli, CompletionShell};
use crate::exit::Status;

pub(super) fn completions(shell: CompletionShell) -> Status {
    let shell = match shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    // Into memory first: clap_complete panics when its writer fails, and stdout may be a closed pipe.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "rekey", &mut script);
    print_all(&script)
}

pub(super) fn man(out_dir: Option<&Path>) -> Status {
    let Some(dir) = out_dir else {
        let mut page = Vec::new();
        if let Err(e) = page_of(Cli::command()).render(&mut page) {
            eprintln!("rekey: cannot render the man page: {e}");
            return Status::Internal;
        }
        return print_all(&page);
    };
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Gives every subcommand its display name, rekey-<command>, which names its page.
    cmd.build();
    let mut pages = vec![cmd.clone()];
    pages.extend(cmd.get_subcommands().filter(|c| !c.is_hide_set()).cloned());
    for page in pages {
        if let Err(e) = page_of(page).generate_to(dir) {
            eprintln!(
                "rekey: cannot write the man pages to {}: {e}; give --out-dir a folder that exists and you can write to",
                dir.display()
            );
            return Status::Refused;
        }
    }
    println!("wrote rekey.1 and a rekey-<command>.1 per command to {}", dir.display());
    Status::Ok
}

/// A page titled in capitals, as man pages are (clap_mangen keeps the command's own case).
fn page_of(cmd: clap::Command) -> clap_mangen::Man {
    let title = cmd.get_display_name().unwrap_or_else(|| cmd.get_name()).to_uppercase();
    // Subcommands carry no version of their own: name the release on every page.
    clap_mangen::Man::new(cmd).title(title).source(concat!("rekey ", env!("CARGO_PKG_VERSION")))
}

fn print_all(bytes: &[u8]) -> Status {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Status::Ok,
        // `rekey man | head`: the reader stopped on purpose.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Status::Ok,
        Err(e) => {
            eprintln!("rekey: cannot write to stdout: {e}");
            Status::Internal
        }
    }
}
