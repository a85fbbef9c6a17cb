//! `rekey completions` and `rekey man`: what a package installs besides the binary. Each output is
//! checked for what its consumer needs (bash must be able to complete a subcommand from it), not
//! only for being non-empty.

use std::process::Command;

fn rekey(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rekey"))
        .args(args)
        // Packaging runs these without a home or any AWS configuration.
        .env_clear()
        .output()
        .expect("rekey runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_bash_script_completes_subcommands_and_flags() {
    let (code, script, stderr) = rekey(&["completions", "bash"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(script.contains("_rekey()"), "defines the completion function:\n{script}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rekey.bash");
    std::fs::write(&path, &script).unwrap();
    // What bash does on <TAB>: call the function with the words typed so far, read COMPREPLY.
    let complete = |words: &str| {
        let probe = format!(
            "source {}; complete -p rekey >/dev/null || exit 9; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
             _rekey rekey \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            path.display()
        );
        let out = Command::new("bash").arg("-c").arg(probe).output().expect("bash runs");
        assert!(out.status.success(), "bash: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect::<Vec<_>>()
    };
    assert_eq!(complete("rekey ro"), ["rotate"]);
    let flags = complete("rekey rotate --ta");
    assert_eq!(flags, ["--target"]);
    let shells = complete("rekey completions ''");
    assert!(["bash", "zsh", "fish"].iter().all(|s| shells.iter().any(|c| c == s)), "{shells:?}");
}

#[test]
fn the_zsh_and_fish_scripts_name_rekey_and_its_commands() {
    let (code, zsh, stderr) = rekey(&["completions", "zsh"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(zsh.starts_with("#compdef rekey"), "zsh loads it by its first line:\n{}", &zsh[..zsh.len().min(200)]);
    assert!(zsh.contains("'rotate:") && zsh.contains("--target="), "zsh knows rotate and --target");
    let (code, fish, stderr) = rekey(&["completions", "fish"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(fish.contains("complete -c rekey"), "{fish}");
    assert!(fish.contains("-a \"rotate\"") && fish.contains("-l target"), "fish knows rotate and --target");
}

#[test]
fn an_unknown_shell_is_refused_in_one_line() {
    let (code, stdout, stderr) = rekey(&["completions", "tcsh"]);
    assert_eq!(code, 2);
    assert!(stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("tcsh"), "{stderr}");
}

#[test]
fn man_prints_the_page_and_writes_one_per_command() {
    let (code, page, stderr) = rekey(&["man"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(page.contains(".TH REKEY 1"), "{page}");
    assert!(page.contains(".SH SYNOPSIS"), "{page}");
    assert!(
        page.contains(".SH SUBCOMMANDS") && page.contains("rekey\\-rotate(1)"),
        "points to the command pages: {page}"
    );
    assert!(page.contains("AWS_PROFILE"), "the variables flags read are documented: {page}");

    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = rekey(&["man", "--out-dir", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let rotate = std::fs::read_to_string(dir.path().join("rekey-rotate.1")).expect("rekey-rotate.1 written");
    assert!(rotate.contains(".TH REKEY-ROTATE 1"), "{rotate}");
    assert!(rotate.contains("lambda:<function>"), "the page carries --target's help: {rotate}");
    for name in ["rekey.1", "rekey-incident.1", "rekey-trace.1", "rekey-audit.1"] {
        assert!(dir.path().join(name).exists(), "{name} written");
    }

    let missing = dir.path().join("no-such-folder");
    let (code, _, stderr) = rekey(&["man", "--out-dir", missing.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no-such-folder") && stderr.contains("--out-dir"), "{stderr}");
}
