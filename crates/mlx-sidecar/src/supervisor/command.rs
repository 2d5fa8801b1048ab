//! Building and spawning the worker process.
//!
//! The worker runs as `python -m mlx_worker --socket SOCK [--model M] EXTRA_ARGS` with a
//! clean environment (`env_clear`, then `PATH`, `HOME`, `LANG`, `TMPDIR`, `XDG_CACHE_HOME`,
//! `MLX_SIDECAR_CACHE_DIR` when set, `PYTHONPATH=worker_dir`, and the configured variables),
//! in its own process group (so the supervisor can signal everything it started), with
//! stdin, stdout and stderr piped. The supervisor holds stdin open and never writes to it:
//! if the supervisor process vanishes, the worker reads EOF and exits.
//!
//! On Linux the worker also gets a parent-death signal (`PR_SET_PDEATHSIG`, SIGKILL). The
//! kernel sends it when the *thread* that forked the child exits, not the process; tokio's
//! blocking-pool threads exit after being idle for a while, and a `block_in_place` can
//! retire a worker thread, so spawning from an arbitrary runtime thread could kill a
//! healthy worker minutes later. Every spawn therefore runs on one dedicated spawner
//! thread that lives as long as the process (it enters the caller's runtime to register
//! the child's pipes and exit notification). `pre_exec` also checks `getppid()` after
//! setting the signal, closing the race where the supervisor died before the `prctl`.

use std::{
    ffi::OsString,
    process::Stdio,
    sync::{Arc, Mutex, OnceLock, mpsc},
};

use tokio::{
    process::{Child, Command},
    sync::oneshot,
};

use crate::{Error, config::WorkerCommand};

/// Environment variables passed through from the supervisor's environment, when set.
const PASSED_ENV: [&str; 6] = [
    "PATH",
    "HOME",
    "LANG",
    "TMPDIR",
    "XDG_CACHE_HOME",
    "MLX_SIDECAR_CACHE_DIR",
];

/// The process groups of the running workers (the active one and, with a standby, the
/// standby), shared with [`crate::Supervisor`]'s `Drop`.
///
/// Spawning happens under this lock and `Drop` sets `closed` under it, so a worker is
/// either never spawned or its group is known to `Drop`.
#[derive(Debug, Default)]
pub(crate) struct ProcessSlot {
    pub(crate) closed: bool,
    pub(crate) pgids: Vec<i32>,
}

pub(crate) type SharedSlot = Arc<Mutex<ProcessSlot>>;

/// The worker's command line and environment for `socket`.
pub(crate) fn build(worker: &WorkerCommand, socket: &std::path::Path) -> Command {
    let mut cmd = Command::new(&worker.python);
    cmd.arg("-m").arg("mlx_worker").arg("--socket").arg(socket);
    if let Some(model) = &worker.model {
        cmd.arg("--model").arg(model);
    }
    if let Some(group) = &worker.shard {
        cmd.args(group.worker_args());
    }
    cmd.args(&worker.extra_args);

    cmd.env_clear();
    for key in PASSED_ENV {
        if let Some(value) = std::env::var_os(key) {
            cmd.env(key, value);
        }
    }
    cmd.env("PYTHONUNBUFFERED", "1");
    let mut python_path = OsString::from(worker.worker_dir.as_os_str());
    for (key, value) in &worker.env {
        if key == "PYTHONPATH" {
            python_path.push(":");
            python_path.push(value);
        } else {
            cmd.env(key, value);
        }
    }
    cmd.env("PYTHONPATH", python_path);

    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    set_parent_death_signal(&mut cmd);
    cmd
}

#[cfg(target_os = "linux")]
fn set_parent_death_signal(cmd: &mut Command) {
    use nix::{
        sys::{prctl, signal::Signal},
        unistd::getppid,
    };
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec and only makes two
    // async-signal-safe system calls (prctl, getppid); it does not allocate.
    unsafe {
        cmd.pre_exec(move || {
            prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            if getppid() != parent {
                // The supervisor died before the prctl took effect.
                return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn set_parent_death_signal(_cmd: &mut Command) {}

/// Starts the worker at the nice value `nice` (its threads inherit it); see `priority`.
#[cfg(target_os = "linux")]
pub(crate) fn lower_priority(cmd: &mut Command, nice: i32) {
    // SAFETY: the closure runs in the forked child before exec and makes one
    // async-signal-safe system call (setpriority); it does not allocate.
    unsafe {
        cmd.pre_exec(move || super::priority::set_nice(0, nice));
    }
}

/// Off Linux the worker starts at the normal priority.
#[cfg(not(target_os = "linux"))]
pub(crate) fn lower_priority(_cmd: &mut Command, _nice: i32) {}

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The process-wide spawner thread (see the module doc).
fn spawner() -> Result<&'static Mutex<mpsc::Sender<Job>>, Error> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    if let Some(tx) = SPAWNER.get() {
        return Ok(tx);
    }
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("mlx-sidecar-spawner".into())
        .spawn(move || {
            for job in rx {
                job();
            }
        })
        .map_err(|e| Error::io("cannot start the spawner thread", e))?;
    // Another caller may have won the race; its thread serves everybody and ours exits
    // when its sender is dropped here.
    Ok(SPAWNER.get_or_init(|| Mutex::new(tx)))
}

/// Spawns `cmd` on the spawner thread, adding its process group to `slot`.
///
/// Fails with [`Error::Stopped`] when the supervisor was dropped meanwhile.
pub(crate) async fn spawn(
    mut cmd: Command,
    python: std::path::PathBuf,
    slot: SharedSlot,
) -> Result<Child, Error> {
    let handle = tokio::runtime::Handle::current();
    let (reply_tx, reply_rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _runtime = handle.enter();
        let result = match slot.lock() {
            Ok(mut slot) if !slot.closed => match cmd.spawn() {
                Ok(child) => {
                    slot.pgids
                        .extend(child.id().and_then(|id| i32::try_from(id).ok()));
                    Ok(child)
                }
                Err(source) => Err(Error::Spawn { python, source }),
            },
            _ => Err(Error::Stopped),
        };
        let _ = reply_tx.send(result);
    });
    spawner()?
        .lock()
        .map_err(|_| Error::io("spawner lock poisoned", std::io::ErrorKind::Other.into()))?
        .send(job)
        .map_err(|_| {
            Error::io(
                "spawner thread is gone",
                std::io::ErrorKind::BrokenPipe.into(),
            )
        })?;
    reply_rx.await.map_err(|_| {
        Error::io(
            "spawner thread dropped the job",
            std::io::ErrorKind::BrokenPipe.into(),
        )
    })?
}
