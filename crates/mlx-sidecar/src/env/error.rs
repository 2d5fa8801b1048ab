//! Errors of the managed Python environment.

use std::path::PathBuf;

/// What went wrong while finding, creating or checking the worker's Python environment.
///
/// Every variant says what was being done and, where there is one, what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// No interpreter of a usable version was found on `PATH` to create the environment with.
    #[error(
        "no Python {min} or newer found on PATH (looked for {tried}){found}; install Python \
         {min}+ with its venv module (Debian/Ubuntu: `apt install python3 python3-venv`; macOS: \
         `brew install python@3.12`), or pass --python / MLX_SIDECAR_PYTHON with an interpreter \
         that already has the worker's packages",
        min = crate::env::python::MIN_VERSION_TEXT,
        tried = .tried.join(", "),
        found = describe_found(.found)
    )]
    NoPython {
        /// The names looked up on `PATH`.
        tried: Vec<String>,
        /// Interpreters that were found but are too old or did not run: (path, what they said).
        found: Vec<(PathBuf, String)>,
    },
    /// A given interpreter is older than the worker supports.
    #[error(
        "{python} is Python {version}, but the worker needs Python {min} or newer",
        python = .python.display(),
        min = crate::env::python::MIN_VERSION_TEXT
    )]
    PythonTooOld {
        /// The interpreter.
        python: PathBuf,
        /// The version it reported.
        version: String,
    },
    /// An interpreter could not be run at all.
    #[error("cannot run Python interpreter {python}: {reason}", python = .python.display())]
    PythonNotRunnable {
        /// The interpreter.
        python: PathBuf,
        /// Why (the OS error, or what it printed).
        reason: String,
    },
    /// The interpreter runs but lacks the worker's packages (or importing them fails).
    #[error(
        "{python} cannot import the worker's packages: {reason}{fix}",
        python = .python.display(),
        fix = match .fix { Some(f) => format!("; {f}"), None => String::new() }
    )]
    MissingPackages {
        /// The interpreter.
        python: PathBuf,
        /// The failing import and its error (the last lines of the traceback).
        reason: String,
        /// What to do about it.
        fix: Option<String>,
    },
    /// A command (venv creation, pip) failed; keeps the command and the end of its output.
    #[error(
        "{what} failed ({status}): `{command}`\n--- last lines of its output ---\n{tail}",
        tail = .output_tail.join("\n")
    )]
    Command {
        /// What the command was for, e.g. "installing the worker's requirements".
        what: String,
        /// The command line, shell-quoted for copying.
        command: String,
        /// The exit status, e.g. "exit status: 1".
        status: String,
        /// The last lines of its combined stdout and stderr.
        output_tail: Vec<String>,
    },
    /// An unknown platform variant was asked for.
    #[error("unknown variant '{0}': expected one of cpu, metal, cuda12, cuda13")]
    UnknownVariant(String),
    /// A file-system operation failed.
    #[error("{op} {path}: {source}", path = .path.display())]
    Io {
        /// What was being done, e.g. "creating directory".
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// No cache directory could be determined (no home directory) and none was given.
    #[error(
        "cannot determine a cache directory for the environment (no home directory?); pass \
         --env-dir or set MLX_SIDECAR_ENV_DIR"
    )]
    NoCacheDir,
}

impl EnvError {
    /// An [`EnvError::Io`] for `op` on `path`.
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| EnvError::Io { op, path, source }
    }
}

fn describe_found(found: &[(PathBuf, String)]) -> String {
    if found.is_empty() {
        return String::new();
    }
    let list: Vec<String> = found
        .iter()
        .map(|(p, what)| format!("{} ({what})", p.display()))
        .collect();
    format!("; found only {}", list.join(", "))
}
