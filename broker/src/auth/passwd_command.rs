//! `starling passwd [--iterations N] [--delete] FILE USER`: adds a user to
//! a password file, changes its password, or deletes it. The password is
//! asked twice on a terminal (not echoed), or read as one line from
//! standard input; only its `$7$` hash is written, which Mosquitto reads
//! too. Every other line of the file, comments included, stays as it was;
//! the file is replaced in one rename, and a new one is readable by its
//! owner only.

use std::ffi::OsString;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, Command, value_parser};

use super::password_file::{PasswordFile, with_user, without_user};
use super::password_hash::{DEFAULT_PBKDF2_ITERATIONS, MAX_PBKDF2_ITERATIONS, PasswordHash};

/// Why `starling passwd` did nothing.
#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    #[error(transparent)]
    Usage(#[from] clap::Error),
    #[error("{path}: {problem}")]
    File { path: PathBuf, problem: String },
    #[error("{0}")]
    Password(String),
}

fn command() -> Command {
    Command::new("passwd")
        .bin_name("starling passwd")
        .about("Add a user to a password file, change its password, or delete it")
        .arg(
            Arg::new("iterations")
                .long("iterations")
                .short('I')
                .value_name("N")
                .value_parser(value_parser!(u32).range(1..=i64::from(MAX_PBKDF2_ITERATIONS)))
                .default_value(DEFAULT_PBKDF2_ITERATIONS.to_string())
                .help("PBKDF2 iterations of the new hash"),
        )
        .arg(
            Arg::new("delete")
                .long("delete")
                .short('D')
                .action(ArgAction::SetTrue)
                .help("Delete the user instead"),
        )
        .arg(
            Arg::new("file")
                .required(true)
                .value_name("FILE")
                .value_parser(value_parser!(PathBuf)),
        )
        .arg(Arg::new("user").required(true).value_name("USER"))
}

/// Runs the command (`args` without the leading `starling passwd`);
/// returns what to print.
pub fn run(args: impl IntoIterator<Item = OsString>) -> Result<String, PasswdError> {
    let matches =
        command().try_get_matches_from(std::iter::once(OsString::from("passwd")).chain(args))?;
    let path = matches
        .get_one::<PathBuf>("file")
        .cloned()
        .unwrap_or_default();
    let user = matches
        .get_one::<String>("user")
        .cloned()
        .unwrap_or_default();
    if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
        return Err(PasswdError::Password(
            "a user name must be non-empty, without ':' or control characters".to_string(),
        ));
    }
    let delete = matches.get_flag("delete");
    let existing = read_existing(&path)?;
    let text = if delete {
        let Some(text) = without_user(&existing, &user) else {
            return Err(PasswdError::File {
                path,
                problem: format!("no user {user:?}"),
            });
        };
        text
    } else {
        let iterations = matches
            .get_one::<u32>("iterations")
            .copied()
            .unwrap_or(DEFAULT_PBKDF2_ITERATIONS);
        let password = read_password()?;
        let hash = PasswordHash::new_pbkdf2(password.as_bytes(), iterations)
            .map_err(|e| PasswdError::Password(format!("no random source for the salt: {e}")))?;
        with_user(&existing, &user, &hash)
    };
    write_replacing(&path, &text)?;
    Ok(format!(
        "{}: user {user:?} {}",
        path.display(),
        if delete { "deleted" } else { "set" }
    ))
}

/// The file's text, checked: a file the broker could not load is not
/// edited (fix it first). A missing file is empty.
fn read_existing(path: &Path) -> Result<String, PasswdError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => {
            return Err(PasswdError::File {
                path: path.to_path_buf(),
                problem: error.to_string(),
            });
        }
    };
    PasswordFile::parse(&text).map_err(|error| PasswdError::File {
        path: path.to_path_buf(),
        problem: format!("{error} (fix it first: the broker would not load it)"),
    })?;
    Ok(text)
}

/// The new password: asked twice without echo on a terminal, else one
/// line of standard input.
fn read_password() -> Result<String, PasswdError> {
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        let first = prompt_hidden("Password: ")?;
        let again = prompt_hidden("Password again: ")?;
        if first != again {
            return Err(PasswdError::Password("the passwords differ".to_string()));
        }
        first
    } else {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| PasswdError::Password(format!("cannot read the password: {e}")))?;
        line.trim_end_matches(['\n', '\r']).to_string()
    };
    if password.is_empty() {
        return Err(PasswdError::Password("the password is empty".to_string()));
    }
    Ok(password)
}

/// Reads one line from the terminal with echo off.
fn prompt_hidden(prompt: &str) -> Result<String, PasswdError> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let failed =
        |e: std::io::Error| PasswdError::Password(format!("cannot read the password: {e}"));
    let stdin = std::io::stdin();
    let before = tcgetattr(&stdin).map_err(|e| failed(e.into()))?;
    let mut quiet = before.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    tcsetattr(&stdin, OptionalActions::Now, &quiet).map_err(|e| failed(e.into()))?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    let _ = tcsetattr(&stdin, OptionalActions::Now, &before);
    eprintln!();
    read.map_err(failed)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Writes `text` next to `path` and renames it over: a reader sees the old
/// file or the new one, never half of it. A new file is mode 0600; an
/// existing one keeps its mode.
fn write_replacing(path: &Path, text: &str) -> Result<(), PasswdError> {
    let failed = |e: std::io::Error| PasswdError::File {
        path: path.to_path_buf(),
        problem: e.to_string(),
    };
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".starling-passwd-{}", std::process::id()));
    let temporary = PathBuf::from(temporary);
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mode = std::fs::metadata(path)
                .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
                .unwrap_or(0o600);
            options.mode(mode);
        }
        let mut file = options.open(&temporary).map_err(failed)?;
        let written = file
            .write_all(text.as_bytes())
            .and_then(|()| file.sync_all());
        if let Err(error) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(failed(error));
        }
    }
    std::fs::rename(&temporary, path).map_err(|error| {
        let _ = std::fs::remove_file(&temporary);
        failed(error)
    })
}
