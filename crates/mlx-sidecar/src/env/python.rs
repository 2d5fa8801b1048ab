//! Finding a Python interpreter and running Python (and pip) as a child process with its
//! output captured.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

use super::error::EnvError;

/// The oldest Python the worker supports, as (major, minor).
pub(crate) const MIN_VERSION: (u32, u32) = (3, 10);
/// [`MIN_VERSION`] as text.
pub(crate) const MIN_VERSION_TEXT: &str = "3.10";

/// The names looked up on `PATH`, in order, to find an interpreter that creates the venv.
pub(crate) const CANDIDATES: [&str; 2] = ["python3", "python"];

/// How many lines of a failed command's output an error keeps.
const TAIL_LINES: usize = 30;

/// Environment variables removed from every Python child: they would make the interpreter
/// look at other packages than the environment's own.
const SCRUBBED_ENV: [&str; 4] = [
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONUSERBASE",
];

/// An interpreter and the version it reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpreter {
    /// The interpreter's path as found (not canonicalized: a venv's python is a symlink).
    pub path: PathBuf,
    /// Its version, e.g. "3.11.7".
    pub version: String,
}

/// Finds the interpreter that creates the venv: the first of [`CANDIDATES`] on `PATH` whose
/// version is at least [`MIN_VERSION`] and that has the `venv` module.
pub(crate) async fn find_base() -> Result<Interpreter, EnvError> {
    let mut found = Vec::new();
    for name in CANDIDATES {
        let Ok(path) = which::which(name) else {
            continue;
        };
        match version_of(&path).await {
            Ok(interp) if version_ok(&interp.version) => return Ok(interp),
            Ok(interp) => found.push((path, format!("Python {}", interp.version))),
            Err(e) => found.push((path, e.to_string())),
        }
    }
    Err(EnvError::NoPython {
        tried: CANDIDATES.iter().map(|s| (*s).to_owned()).collect(),
        found,
    })
}

/// Asks `python` for its version with `python --version` (no Python code runs, so even an
/// interpreter too old for the worker answers; before 3.4 it answers on stderr).
pub(crate) async fn version_of(python: &Path) -> Result<Interpreter, EnvError> {
    let not_runnable = |reason: String| EnvError::PythonNotRunnable {
        python: python.to_path_buf(),
        reason,
    };
    let out = command(python)
        .arg("--version")
        .output()
        .await
        .map_err(|e| not_runnable(e.to_string()))?;
    if !out.status.success() {
        return Err(not_runnable(format!(
            "{}: {}",
            out.status,
            last_lines(&out.stderr, 5)
        )));
    }
    let banner = String::from_utf8_lossy(if out.stdout.is_empty() {
        &out.stderr
    } else {
        &out.stdout
    });
    let Some(version) = version_from_banner(&banner) else {
        return Err(not_runnable(format!(
            "it printed {:?} instead of its version",
            banner.trim()
        )));
    };
    Ok(Interpreter {
        path: python.to_path_buf(),
        version,
    })
}

/// Checks that `python` runs and is recent enough.
pub(crate) async fn require_version(python: &Path) -> Result<Interpreter, EnvError> {
    let interp = version_of(python).await?;
    if !version_ok(&interp.version) {
        return Err(EnvError::PythonTooOld {
            python: python.to_path_buf(),
            version: interp.version,
        });
    }
    Ok(interp)
}

/// The version in `python --version`'s "Python 3.11.7", if it is one.
fn version_from_banner(banner: &str) -> Option<String> {
    let version = banner.trim().strip_prefix("Python ")?;
    parse_version(version).map(|_| version.to_owned())
}

/// Parses "3.11.7" (or "3.11") into (major, minor).
pub(crate) fn parse_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether a version text is at least [`MIN_VERSION`].
pub(crate) fn version_ok(text: &str) -> bool {
    parse_version(text).is_some_and(|v| v >= MIN_VERSION)
}

/// A `Command` for `python` with the variables that would mislead it removed.
pub(crate) fn command(python: &Path) -> Command {
    let mut cmd = Command::new(python);
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    cmd.env("PYTHONNOUSERSITE", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// The last `n` non-empty lines of some output, joined with " | ".
pub(crate) fn last_lines(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Runs a command to completion, handing each line of its combined stdout and stderr to
/// `on_line` as it comes; on failure returns [`EnvError::Command`] with the command line and
/// the last lines of output.
pub(crate) async fn run_logged(
    mut cmd: Command,
    what: &str,
    mut on_line: impl FnMut(&str),
) -> Result<(), EnvError> {
    let command_line = describe(&cmd);
    let spawn_error = |e: std::io::Error| EnvError::Command {
        what: what.to_owned(),
        command: command_line.clone(),
        status: format!("could not start: {e}"),
        output_tail: Vec::new(),
    };
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(spawn_error)?;
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let readers = [
        child.stdout.take().map(|s| spawn_reader(s, tx.clone())),
        child.stderr.take().map(|s| spawn_reader(s, tx.clone())),
    ];
    drop(tx);
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    while let Some(line) = rx.recv().await {
        on_line(&line);
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    for reader in readers.into_iter().flatten() {
        let _ = reader.await;
    }
    let status = child.wait().await.map_err(spawn_error)?;
    if status.success() {
        return Ok(());
    }
    Err(EnvError::Command {
        what: what.to_owned(),
        command: command_line,
        status: status.to_string(),
        output_tail: tail.into(),
    })
}

fn spawn_reader(
    stream: impl AsyncRead + Unpin + Send + 'static,
    tx: mpsc::UnboundedSender<String>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    })
}

/// The command line of `cmd`, quoted where needed, for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let std = cmd.as_std();
    std::iter::once(std.get_program())
        .chain(std.get_args())
        .map(|a| quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@".contains(c));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("3.11.7"), Some((3, 11)));
        assert_eq!(parse_version("3.9"), Some((3, 9)));
        assert_eq!(parse_version("three"), None);
        assert!(version_ok("3.10.0"));
        assert!(version_ok("3.13.1"));
        assert!(!version_ok("3.9.18"));
        assert!(!version_ok("2.7.18"));
        assert_eq!(
            version_from_banner("Python 3.13.0rc1\n").as_deref(),
            Some("3.13.0rc1")
        );
        assert_eq!(version_from_banner("Python three"), None);
        assert_eq!(version_from_banner(""), None);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("-m"), "-m");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

    #[tokio::test]
    async fn failed_command_keeps_its_command_line_and_last_lines() {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "for i in $(seq 1 40); do echo out $i; done; echo 'ERROR: no wheel' >&2; exit 3",
        ]);
        let mut seen = 0;
        let err = run_logged(cmd, "installing", |_| seen += 1)
            .await
            .expect_err("exit 3");
        assert_eq!(seen, 41);
        let EnvError::Command {
            command,
            status,
            output_tail,
            ..
        } = &err
        else {
            panic!("{err:?}");
        };
        assert!(command.starts_with("sh -c 'for i in"), "{command}");
        assert!(status.contains('3'), "{status}");
        assert_eq!(output_tail.len(), TAIL_LINES);
        assert!(output_tail.iter().any(|l| l == "ERROR: no wheel"));
        assert!(
            !output_tail.iter().any(|l| l == "out 1"),
            "only the last lines are kept"
        );
        let text = err.to_string();
        assert!(
            text.contains("installing failed") && text.contains("ERROR: no wheel"),
            "{text}"
        );
    }

    #[test]
    fn tails() {
        assert_eq!(last_lines(b"a\n\nb\nc\n", 2), "b | c");
    }
}
