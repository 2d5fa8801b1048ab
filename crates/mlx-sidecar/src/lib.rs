//! mlx-sidecar: real MLX inference for Rust programs, served by a supervised Python worker.
//!
//! # Theory of operation
//!
//! MLX and mlx-lm are Python libraries, so inference runs in a Python *worker* process
//! (`python -m mlx_worker`, in `sidecar/`) that loads one model and serves the
//! `mlx_sidecar.v1.Inference` gRPC service (see `proto/`, compiled by the
//! `mlx-sidecar-proto` crate) on a Unix domain socket. This crate starts that worker, keeps
//! it alive, and calls it.
//!
//! **One task owns the worker.** [`Supervisor::spawn`] starts a tokio task that alone
//! holds the child process (like watchexec's supervisor). Everything else holds a handle:
//! the [`Supervisor`] sends control messages (shutdown) to the task, and reads its state
//! from a `watch` channel; [`Client`]s read the same channel to find the current worker.
//! What the two sides share lives in neither of them but in `worker/`: the published worker
//! state, the Unix-socket transport and the health check. The task is a state machine (`supervisor/owner.rs`) with one function per phase:
//!
//! - *start*: claim the socket path (a stale file is removed, a live socket is never taken
//!   over), spawn the worker with a clean environment in its own process group, and wait
//!   for `grpc.health.v1` to say `SERVING` within the start-up window;
//! - *serve*: publish a channel to the worker (a new one per worker generation), probe
//!   health every interval with a deadline, and notice the child's exit at once;
//! - *crashed*: after an exit, or after too many failed probes (the worker is then killed:
//!   SIGTERM and SIGCONT, a grace period, SIGKILL to the group), ask the restart policy;
//! - *backoff*: none for the first restart after a worker that served (Erlang/OTP style),
//!   else wait the exponential, jittered delay, then start again — or *gave up*
//!   when the restart intensity limit is hit, after which every call fails with
//!   [`Error::GaveUp`] saying why (last exit status, last log lines);
//! - *stop*: on [`Supervisor::shutdown`], SIGTERM lets the worker drain in-flight
//!   requests; after the grace it is killed; the socket directory is removed.
//!
//! With [`SupervisorConfig::standby`], a second task keeps a standby worker loaded and idle
//! on a second socket; when the active worker dies, *crashed* promotes it instead of
//! starting a new one (no start-up, no backoff), and a new standby follows.
//!
//! Each change is broadcast as a [`LifecycleEvent`] and logged with `tracing`. The
//! worker's own JSON log lines on stderr are re-emitted as `tracing` events (target
//! `mlx_worker`), and the last ones are kept for error reports.
//!
//! **No worker outlives its supervisor.** Dropping the [`Supervisor`] SIGKILLs the worker's
//! process group synchronously and removes the socket directory. If the supervisor's
//! process dies outright, the worker reads EOF on its stdin (held open by the supervisor)
//! and exits; on Linux it also gets a parent-death SIGKILL.
//!
//! **Calls survive restarts.** A [`Client`] call waits (within its deadline) for a ready
//! worker, retries `UNAVAILABLE` with backoff until the first output arrives, and never
//! hangs on a dead worker: a generation cut short ends with [`Error::WorkerDied`] holding
//! the text already streamed.
//!
//! # Where things are
//!
//! - `client/`: [`Client`], the request and response types, [`GenerateStream`] and how a
//!   dying worker ends it, [`Endpoint`] and the API key for talking to a daemon;
//! - [`daemon`]: where a `mlx-sidecar serve` daemon listens by default;
//! - `supervisor/`: [`Supervisor`], the owner task, the standby, restarts, the worker's
//!   process and logs, [`LifecycleEvent`];
//! - `worker/`: what client and supervisor share ([`WorkerState`] and the view behind it,
//!   the transport, the health check);
//! - [`env`](mod@env): the managed Python environment the worker runs in;
//! - `config`: [`SupervisorConfig`], [`WorkerCommand`], [`RestartPolicy`]; `error`: [`Error`].
//!
//! ```no_run
//! # async fn example() -> Result<(), mlx_sidecar::Error> {
//! use mlx_sidecar::{ChatMessage, GenerateRequest, Supervisor, SupervisorConfig, WorkerCommand};
//!
//! let worker = WorkerCommand::new(".venv/bin/python", "sidecar");
//! let supervisor = Supervisor::spawn(SupervisorConfig::new(worker)).await?;
//! let client = supervisor.client();
//! let answer = client
//!     .generate(GenerateRequest::chat(vec![ChatMessage::user("What is the capital of France?")]))
//!     .await?
//!     .collect()
//!     .await?;
//! println!("{}", answer.text);
//! supervisor.shutdown().await
//! # }
//! ```

mod client;
mod config;
pub mod daemon;
pub mod env;
mod error;
mod supervisor;
mod worker;

pub use client::{
    ChatMessage, Client, Completion, DaemonListener, DaemonStatus, Endpoint, FinishReason,
    Finished, GenerateEvent, GenerateRequest, GenerateStream, HealthStatus, ModelInfo, Prompt,
    Timings, TokenLogprob, TokenizeRequest, Tokenized, TopLogprob, Usage,
};
pub use config::{PrefixCacheLimits, RestartPolicy, SupervisorConfig, WorkerCommand};
pub use error::Error;
pub use supervisor::{LifecycleEvent, StartupTimes, Supervisor};
pub use worker::{ExitStatusInfo, WorkerState};
