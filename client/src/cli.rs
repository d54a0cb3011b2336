//! What every binary of the project does the same way at start: logs to stderr, and clap's
//! usage errors as one line on stderr with exit code 2; a daemon's settings from `--config FILE`
//! (`config`).

pub mod config;

/// Logs (tracing) to stderr, filtered by `RUST_LOG` or else `default_filter`; colours only
/// on a terminal.
pub fn init_logging(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .init();
}

/// Help and version as clap prints them (exit 0), a missing subcommand with its group's help
/// (exit 2), any other usage error on one line ending "see '<help_for> --help'" (exit 2).
pub fn exit_clap(e: clap::Error, help_for: &str) -> ! {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            std::process::exit(0);
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            let _ = e.print();
            std::process::exit(2);
        }
        _ => {
            eprintln!("{}; see '{help_for} --help'", one_line(&e.to_string()));
            std::process::exit(2);
        }
    }
}

/// clap's message without its usage and tips, on one line.
pub fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_keeps_the_message_only() {
        let msg = "error: invalid value 'x' for '--copies <N>': invalid digit\n\n  tip: try 3\n\nUsage: sheepctl \
            cluster format [OPTIONS]\n\nFor more information, try '--help'.\n";
        assert_eq!(one_line(msg), "error: invalid value 'x' for '--copies <N>': invalid digit");
    }
}
