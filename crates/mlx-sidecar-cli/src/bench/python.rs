//! Runs the Python side of the bench: `bench_inprocess.py` (embedded in the binary and written
//! to the bench's scratch directory) and mlx-lm's HTTP server, with the same interpreter, the
//! same `PYTHONPATH` (the worker's source) and the same environment as the worker.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// The in-process baseline script, shipped in `scripts/` and carried by the binary.
const INPROCESS_SCRIPT: &str = include_str!("../../../../scripts/bench_inprocess.py");

/// The variables the supervisor passes to the worker from its own environment (the rest is
/// cleared); kept the same as `PASSED_ENV` in `src/supervisor/command.rs`.
const PASSED_ENV: [&str; 6] = [
    "PATH",
    "HOME",
    "LANG",
    "TMPDIR",
    "XDG_CACHE_HOME",
    "MLX_SIDECAR_CACHE_DIR",
];

/// A scratch directory, removed when dropped.
#[derive(Debug)]
pub(crate) struct ScratchDir(PathBuf);

impl ScratchDir {
    /// Makes a fresh private directory under the system's temporary directory.
    pub(crate) fn new() -> anyhow::Result<Self> {
        let base = std::env::temp_dir();
        for attempt in 0..100u32 {
            let dir = base.join(format!(
                "mlx-sidecar-bench-{}-{attempt}",
                std::process::id()
            ));
            match std::fs::create_dir(&dir) {
                Ok(()) => return Ok(Self(dir)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
            }
        }
        bail!("no free scratch directory name under {}", base.display())
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How to run Python code the way the worker runs.
#[derive(Debug, Clone)]
pub(crate) struct PythonEnv {
    /// The interpreter.
    pub(crate) python: PathBuf,
    /// The worker's source directory, put on `PYTHONPATH`.
    pub(crate) worker_dir: PathBuf,
    /// Extra environment variables (the same the worker gets).
    pub(crate) env: Vec<(String, String)>,
    /// The baseline script, written into the scratch directory.
    pub(crate) script: PathBuf,
}

impl PythonEnv {
    /// Writes the baseline script into `scratch` and returns the environment.
    pub(crate) fn new(
        python: PathBuf,
        worker_dir: PathBuf,
        env: Vec<(String, String)>,
        scratch: &Path,
    ) -> anyhow::Result<Self> {
        let script = scratch.join("bench_inprocess.py");
        std::fs::write(&script, INPROCESS_SCRIPT)
            .with_context(|| format!("writing {}", script.display()))?;
        Ok(Self {
            python,
            worker_dir,
            env,
            script,
        })
    }

    /// A command running the interpreter with `args`, in its own process group, killed if
    /// dropped. Its environment is the one the supervisor gives the worker (cleared, then
    /// [`PASSED_ENV`] and `PYTHONPATH`), so that no inherited variable (such as
    /// `OPENBLAS_CORETYPE`) makes a baseline compute differently from the worker.
    pub(crate) fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(&self.python);
        cmd.args(args).env_clear();
        for key in PASSED_ENV {
            if let Some(value) = std::env::var_os(key) {
                cmd.env(key, value);
            }
        }
        cmd.env("PYTHONPATH", &self.worker_dir)
            .env("PYTHONUNBUFFERED", "1")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .process_group(0);
        cmd
    }

    /// A command running the baseline script with `args` (see [`PythonEnv::command`]).
    pub(crate) fn script_command(&self, args: &[String]) -> Command {
        self.command(
            std::iter::once(self.script.as_os_str().to_owned())
                .chain(args.iter().map(|a| a.into())),
        )
    }

    /// Runs the baseline script with `args`, feeding `input` on stdin; returns its stdout
    /// parsed as JSON. Its stderr goes to ours (progress lines).
    pub(crate) async fn run_script(
        &self,
        args: &[String],
        input: Option<&[u8]>,
    ) -> anyhow::Result<(serde_json::Value, Option<u32>)> {
        let mut cmd = self.script_command(args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        if input.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.python.display()))?;
        let pid = child.id();
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin
                .write_all(input)
                .await
                .context("writing the workload")?;
            stdin.shutdown().await.ok();
        }
        let out = child
            .wait_with_output()
            .await
            .context("waiting for the script")?;
        if !out.status.success() {
            bail!(
                "bench_inprocess.py {} failed: {}",
                args.join(" "),
                out.status
            );
        }
        let value = serde_json::from_slice(&out.stdout)
            .context("bench_inprocess.py printed no valid JSON")?;
        Ok((value, pid))
    }
}
