//! `--config FILE`: a daemon's settings from a TOML file, for the systemd units of
//! `deploy/systemd` (one file per daemon in /etc/sheep instead of a long `ExecStart=`).
//!
//! The file names the daemon's long flags without their dashes, one `name = value` each:
//!
//! ```toml
//! listen = "10.0.0.1:7000"
//! data = "/var/lib/sheep/groupd"
//! join = ["10.0.0.2:7000", "10.0.0.3:7000"]   # or "10.0.0.2:7000,10.0.0.3:7000"
//! lease-ms = 5000
//! insecure = false
//! ```
//!
//! How it works: the file's settings become `--name=value` arguments, which clap then parses
//! with everything else, so a value from the file is checked exactly as the same flag on the
//! command line would be (its error then names the file). For a command with subcommands
//! (`ublk-dev ublk|nbd`) the whole file applies to the subcommand given: its own flags and
//! the global ones; the arguments go right after the subcommand's name.
//!
//! Which value wins, highest first: a flag on the command line, then the flag's environment
//! variable (`SHEEP_KEYRING`, `SHEEP_GROUPD`: clap's `env`), then the file, then the default.
//! clap alone would rank the file above the environment (it reads a variable only for an
//! argument absent from the command line, and the file's are on it), so a setting whose
//! variable is set is left out of the arguments here. A flag given on the command line
//! replaces the file's value entirely, a list too (`--join A` with `join = [B, C]` is A).
//! Settings are left out by a first, error-tolerant parse of the real command line (clap's
//! `ignore_errors`) that says which were given; should it miss one, the file's arguments
//! still come first and the command is parsed with `args_override_self`, so the later, real,
//! flag wins anyway.
//!
//! Refused, with the file and the key named: a key that is no long flag of the command (a
//! typo must not be ignored), `config` itself, a value of the wrong TOML type (a table, a
//! date, a string for an on/off flag), a file that is not TOML.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command, Parser};

/// The `--config` flag every daemon flattens into its command line.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// Read settings from this TOML file: `name = value` per long flag, e.g. `listen =
    /// "10.0.0.1:7000"`, `join = ["10.0.0.2:7000"]`, `lease-ms = 5000`, `insecure = true`. A
    /// flag on the command line, then its environment variable, win over the file
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", file.display())]
    Read { file: PathBuf, source: std::io::Error },
    #[error("config file {} is not valid TOML: {message}", file.display())]
    Syntax { file: PathBuf, message: String },
    #[error("config file {}: unknown setting `{key}` (the settings are: {known})", file.display())]
    UnknownKey { file: PathBuf, key: String, known: String },
    #[error("config file {}: `config` cannot be set in a config file", file.display())]
    Nested { file: PathBuf },
    #[error("config file {}: `{key}` must be {expected}, not {found}", file.display())]
    BadType { file: PathBuf, key: String, expected: &'static str, found: &'static str },
}

/// Why the command line (with its config file) was refused.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// clap refused a value that came from the file.
    #[error("config file {}: `{key}`: {message}", file.display())]
    FileValue { file: PathBuf, key: String, message: String },
    /// clap's own error (usage, help, version): see [`super::exit_clap`].
    #[error(transparent)]
    Clap(#[from] clap::Error),
}

/// The command line to parse: the real one with the file's settings put in.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    pub args: Vec<OsString>,
    /// The config file read, if any.
    pub file: Option<PathBuf>,
    /// The settings that were taken from it (those not given otherwise).
    pub from_file: Vec<String>,
}

/// Parses this process's command line with its `--config` file; on an error prints it (one
/// line, naming the file when the file is at fault) and exits 2, help and version as clap does.
pub fn parse<P: Parser>(help_for: &str) -> P {
    match try_parse_from::<P>(std::env::args_os().collect()) {
        Ok(p) => p,
        Err(ParseError::Clap(e)) => super::exit_clap(e, help_for),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}

/// [`parse`] of the given arguments (the first is the program's name), without exiting.
pub fn try_parse_from<P: Parser>(argv: Vec<OsString>) -> Result<P, ParseError> {
    let cmd = P::command().args_override_self(true);
    let merged = merge(&cmd, argv)?;
    let matches = cmd.try_get_matches_from(&merged.args).map_err(|e| blame_file(e, &merged))?;
    Ok(P::from_arg_matches(&matches)?)
}

/// clap's refusal of a value from the file, reworded to name the file and its key.
fn blame_file(e: clap::Error, merged: &Merged) -> ParseError {
    let (Some(file), ErrorKind::InvalidValue | ErrorKind::ValueValidation | ErrorKind::InvalidUtf8) =
        (&merged.file, e.kind())
    else {
        return e.into();
    };
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else { return e.into() };
    // "--lease-ms <MS>" → "lease-ms"
    let key = arg.trim_start_matches("--").split([' ', '=']).next().unwrap_or_default();
    if !merged.from_file.iter().any(|k| k == key) {
        return e.into();
    }
    let message = super::one_line(&e.to_string());
    let message = message.strip_prefix("error: ").unwrap_or(&message).to_string();
    ParseError::FileValue { file: file.clone(), key: key.to_string(), message }
}

/// Puts the settings of the `--config` file named in `argv` into it (see the module's
/// comment); `argv` unchanged when there is none, or when the command line is help, version
/// or no command at all (clap then says so).
pub fn merge(cmd: &Command, argv: Vec<OsString>) -> Result<Merged, ConfigError> {
    let unchanged = |argv| Ok(Merged { args: argv, file: None, from_file: Vec::new() });
    let mut cmd = cmd.clone();
    cmd.build();
    // Which flags the real command line gives, and which subcommand: errors (a required
    // flag that only the file has) do not stop this parse; help and version do.
    let Ok(probe) = cmd.clone().ignore_errors(true).try_get_matches_from(&argv) else {
        return unchanged(argv);
    };
    let (target, matches): (&Command, &ArgMatches) = match probe.subcommand() {
        Some((name, sub)) => match cmd.find_subcommand(name) {
            Some(c) => (c, sub),
            None => return unchanged(argv),
        },
        None if cmd.is_subcommand_required_set() => return unchanged(argv),
        None => (&cmd, &probe),
    };
    let Some(file) = config_path(target, matches).or_else(|| config_path(&cmd, &probe)) else {
        return unchanged(argv);
    };
    let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::Read { file: file.clone(), source })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax { file: file.clone(), message: syntax_error(&text, &e) })?;
    let (args, from_file) = file_args(target, matches, &table, &file)?;
    let at = match probe.subcommand_name() {
        Some(name) => subcommand_index(&cmd, &argv, name).map_or(argv.len(), |i| i + 1),
        None => 1.min(argv.len()),
    };
    let mut out = argv;
    out.splice(at..at, args);
    Ok(Merged { args: out, file: Some(file), from_file })
}

/// `--config`'s value in these matches.
fn config_path(cmd: &Command, m: &ArgMatches) -> Option<PathBuf> {
    let arg = cmd.get_arguments().find(|a| a.get_long() == Some("config"))?;
    let mut raw = m.try_get_raw(arg.get_id().as_str()).ok().flatten()?;
    raw.next_back().map(PathBuf::from)
}

/// The long flags a file may set: all but help and version.
fn settings(cmd: &Command) -> impl Iterator<Item = &clap::Arg> {
    cmd.get_arguments().filter(|a| {
        a.get_long().is_some()
            && !matches!(
                a.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            )
    })
}

/// The arguments for the file's settings that neither the command line nor the environment
/// gives, and their names.
fn file_args(
    cmd: &Command,
    given: &ArgMatches,
    table: &toml::Table,
    file: &Path,
) -> Result<(Vec<OsString>, Vec<String>), ConfigError> {
    let mut args = Vec::new();
    let mut names = Vec::new();
    for (key, value) in table {
        if key == "config" {
            return Err(ConfigError::Nested { file: file.to_path_buf() });
        }
        let Some(arg) = settings(cmd).find(|a| a.get_long() == Some(key.as_str())) else {
            let mut known: Vec<&str> = settings(cmd).filter_map(|a| a.get_long()).filter(|l| *l != "config").collect();
            known.sort_unstable();
            return Err(ConfigError::UnknownKey {
                file: file.to_path_buf(),
                key: key.clone(),
                known: known.join(", "),
            });
        };
        let bad = |expected| ConfigError::BadType {
            file: file.to_path_buf(),
            key: key.clone(),
            expected,
            found: value.type_str(),
        };
        // Checked before skipping, so that a wrong file fails whatever the command line says.
        let values = to_args(key, arg, value).ok_or_else(|| bad(expected(arg.get_action())))?;
        if matches!(
            given.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        args.extend(values);
        names.push(key.clone());
    }
    Ok((args, names))
}

fn expected(action: &ArgAction) -> &'static str {
    match action {
        ArgAction::SetTrue | ArgAction::SetFalse => "true or false",
        ArgAction::Count => "a whole number from 0 to 255",
        _ => "a string, a number, a boolean or a list of them",
    }
}

/// One setting as arguments; `None` for a value of the wrong type. `--name=value` in one
/// argument, so that a value starting with '-' is not taken for a flag.
fn to_args(key: &str, arg: &clap::Arg, value: &toml::Value) -> Option<Vec<OsString>> {
    let flag = || OsString::from(format!("--{key}"));
    let with = |v: &str| OsString::from(format!("--{key}={v}"));
    match arg.get_action() {
        ArgAction::SetTrue => Some(if value.as_bool()? { vec![flag()] } else { vec![] }),
        ArgAction::SetFalse => Some(if value.as_bool()? { vec![] } else { vec![flag()] }),
        // A count (`-vvv`) of at most 255: a huge number is no reason to run out of memory.
        ArgAction::Count => Some(vec![flag(); usize::from(u8::try_from(value.as_integer()?).ok()?)]),
        ArgAction::Append => match value {
            toml::Value::Array(items) => items.iter().map(|v| scalar(v).map(|s| with(&s))).collect(),
            v => Some(vec![with(&scalar(v)?)]),
        },
        // A single value; a list is joined as a comma string ("ADDR,ADDR"), the form every
        // list flag of these daemons takes.
        _ => match value {
            toml::Value::Array(items) if items.is_empty() => Some(vec![]),
            toml::Value::Array(items) => {
                let sep = arg.get_value_delimiter().unwrap_or(',').to_string();
                Some(vec![with(&items.iter().map(scalar).collect::<Option<Vec<_>>>()?.join(&sep))])
            }
            v => Some(vec![with(&scalar(v)?)]),
        },
    }
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Datetime(_) | toml::Value::Array(_) | toml::Value::Table(_) => None,
    }
}

/// Where the subcommand `name` is in `argv`: the first argument that is neither a flag nor a
/// flag's value of the top command.
fn subcommand_index(cmd: &Command, argv: &[OsString], name: &str) -> Option<usize> {
    let takes_value = |a: &clap::Arg| a.get_action().takes_values();
    let mut i = 1;
    while i < argv.len() {
        let tok = argv[i].to_string_lossy();
        if tok == "--" {
            return None;
        }
        if let Some(long) = tok.strip_prefix("--") {
            if !long.contains('=') && cmd.get_arguments().any(|a| a.get_long() == Some(long) && takes_value(a)) {
                i += 1;
            }
        } else if let Some(shorts) = tok.strip_prefix('-').filter(|s| !s.is_empty()) {
            let last = shorts.chars().last();
            if shorts.chars().count() == 1 && cmd.get_arguments().any(|a| a.get_short() == last && takes_value(a)) {
                i += 1;
            }
        } else if cmd.find_subcommand(&*tok).is_some_and(|c| c.get_name() == name) {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// toml's error on one line, "line L, column C: what" (its Display is several lines, with
/// the line quoted and a caret under the place).
fn syntax_error(text: &str, e: &toml::de::Error) -> String {
    let what = e.message().trim();
    let Some(at) = e.span().map(|s| s.start.min(text.len())) else { return what.to_string() };
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}: {what}")
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
