//! `detector __generate DIR`: writes the man pages (`detector.1` and one page per
//! subcommand, `detector-diagnose.1`, ...) and the bash, zsh and fish completions into
//! DIR, from the same clap definition the command line parses with. Hidden (not in
//! `--help`): `cargo xtask dist` runs it to build the .deb.
use std::{path::Path, process::ExitCode};

use clap_complete::Shell;

/// The hidden subcommand's name.
pub const SUBCOMMAND: &str = "__generate";

/// File names of the completions, as the shells look them up.
const COMPLETIONS: [(Shell, &str); 3] = [
    (Shell::Bash, "detector.bash"),
    (Shell::Zsh, "_detector"),
    (Shell::Fish, "detector.fish"),
];

pub fn run(cmd: clap::Command, dir: Option<&Path>) -> ExitCode {
    let Some(dir) = dir else {
        eprintln!("usage: detector {SUBCOMMAND} DIR");
        return ExitCode::from(2);
    };
    match write_all(cmd, dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("detector {SUBCOMMAND}: {}: {e}", dir.display());
            ExitCode::from(10)
        }
    }
}

fn write_all(mut cmd: clap::Command, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // One page for `detector` and one per subcommand (not for `help`), cross-referenced.
    let mut man = cmd.clone().disable_help_subcommand(true);
    man.build();
    clap_mangen::generate_to(man, dir)?;
    for (shell, file) in COMPLETIONS {
        let mut out = std::fs::File::create(dir.join(file))?;
        clap_complete::generate(shell, &mut cmd, "detector", &mut out);
    }
    Ok(())
}
