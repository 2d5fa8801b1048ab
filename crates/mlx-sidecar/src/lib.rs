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
//! With [`SupervisorConfig::replicas`], the supervisor runs that many owner tasks, each
//! with its own worker, socket, restart policy and health probes (and standby); clients read
//! every replica's published worker and send each call to the ready one with the fewest
//! calls in flight, so a call that had not started on a replica that died, or a stream
//! resumed after one, goes to another ready replica ([`Supervisor::replicas`] shows each).
//!
//! With [`WorkerCommand::with_shard`], the worker is rank 0 of a [`ShardGroup`]: one model
//! split over several processes by `mx.distributed`, which rank 0 starts as its children and
//! dies with, so the supervisor watches, probes and restarts the group as one worker.
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
//! hangs on a dead worker. A generation whose worker dies after output began is resumed
//! on the next ready worker (restarted or standby), which continues after the tokens
//! already delivered: the caller sees one stream (up to 3 resumes by default,
//! [`GenerateRequest::max_resumes`]). Past the limit or the deadline, or with resuming
//! off, it ends with [`Error::WorkerDied`] holding the text already streamed.
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
//! - [`cache`]: the worker's cache of converted models (listing, removing the unused);
//! - `config`: [`SupervisorConfig`], [`WorkerCommand`], [`RestartPolicy`]; `shard`:
//!   [`ShardGroup`]; `error`: [`Error`].
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
//!
//! # Testing your service
//!
//! [`WorkerCommand::test_worker`] (or [`WorkerCommand::with_test_model`]) runs the real worker
//! on its test model: a tiny llama with random weights, written once into the worker's cache
//! directory and loaded in a fraction of a second after that. It speaks the whole contract
//! (streaming, stop strings, logprobs, tokenize, chat templates), so a service's own tests can
//! start a real, supervised worker per test in about as long as Python takes to import MLX;
//! its text is gibberish that never ends by itself, so give requests `max_tokens` or stop
//! strings. The command line's `--test-model` does the same. A complete test of a small
//! service (this crate's `tests/test_worker.rs`, run by `cargo test` in CI):
//!
#![doc = concat!("```rust,ignore\n", include_str!("../tests/test_worker.rs"), "```")]

pub mod cache;
mod client;
mod config;
pub mod daemon;
pub mod env;
mod error;
mod shard;
mod supervisor;
mod worker;

pub use client::{
    ChatMessage, Client, Completion, Continuation, DEFAULT_MAX_RESUMES, DaemonListener,
    DaemonReplica, DaemonStatus, Endpoint, FinishReason, Finished, GenerateEvent, GenerateRequest,
    GenerateStream, HealthStatus, JsonSchema, ModelInfo, Prompt, RESUMES_METADATA, ResponseFormat,
    ShardInfo, Timings, TokenLogprob, TokenizeRequest, Tokenized, TopLogprob, Usage,
};
pub use config::{PrefixCacheLimits, RestartPolicy, SupervisorConfig, WorkerCommand};
pub use error::Error;
pub use shard::{ShardBackend, ShardGroup};
pub use supervisor::{LifecycleEvent, ReplicaMonitor, ReplicaStatus, StartupTimes, Supervisor};
pub use worker::{ExitStatusInfo, WorkerState};
