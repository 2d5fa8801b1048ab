//! What the supervisor runs and how it looks after it.
//!
//! [`WorkerCommand`] says which Python runs the worker and with what model, arguments and
//! environment; [`SupervisorConfig`] adds the timings (start-up window, health probes,
//! shutdown grace), the [`RestartPolicy`] and where the worker's socket lives. Every field
//! has a default fit for production; tests shorten the timings with the `with_*` methods.

use std::{path::PathBuf, time::Duration};

use crate::shard::ShardGroup;

/// The worker's flag for its test model.
const TEST_MODEL_FLAG: &str = "--test-model";

/// How to start the worker: `python -m mlx_worker --socket SOCK [--model MODEL] EXTRA_ARGS`
/// with `PYTHONPATH=worker_dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerCommand {
    /// The Python interpreter (usually the managed environment's `bin/python`).
    pub python: PathBuf,
    /// The directory holding the `mlx_worker` and `mlx_sidecar` packages; put on `PYTHONPATH`.
    pub worker_dir: PathBuf,
    /// The model to load (a GGUF file or an mlx-lm model directory); `None` loads the
    /// worker's default model.
    pub model: Option<PathBuf>,
    /// More worker arguments, appended after the ones above (such as `--max-batch 8`).
    pub extra_args: Vec<String>,
    /// More environment variables for the worker. The worker's environment is otherwise
    /// cleared down to `PATH`, `HOME`, `LANG`, `TMPDIR`, `XDG_CACHE_HOME` and
    /// `MLX_SIDECAR_CACHE_DIR` (those that are set).
    pub env: Vec<(String, String)>,
    /// Split the model over several processes (`None`: one process holds it).
    pub shard: Option<ShardGroup>,
}

impl WorkerCommand {
    /// A command running `python` with the worker sources in `worker_dir` and the default model.
    pub fn new(python: impl Into<PathBuf>, worker_dir: impl Into<PathBuf>) -> Self {
        WorkerCommand {
            python: python.into(),
            worker_dir: worker_dir.into(),
            model: None,
            extra_args: Vec::new(),
            env: Vec::new(),
            shard: None,
        }
    }

    /// Loads this model instead of the default one (or the test model).
    pub fn with_model(mut self, model: impl Into<PathBuf>) -> Self {
        self.extra_args.retain(|a| a != TEST_MODEL_FLAG);
        self.model = Some(model.into());
        self
    }

    /// The real worker on its test model, for the tests of a program built on this crate:
    /// [`new`](Self::new) then [`with_test_model`](Self::with_test_model).
    pub fn test_worker(python: impl Into<PathBuf>, worker_dir: impl Into<PathBuf>) -> Self {
        Self::new(python, worker_dir).with_test_model()
    }

    /// Serves the worker's test model instead of a real one (`--test-model`): a tiny llama
    /// with random weights (2 layers, hidden size 64, a byte-level vocabulary of 384 tokens,
    /// a ChatML template), written once into the worker's cache directory
    /// (`<cache>/test-model/`) and loaded in a fraction of a second after that. It speaks the
    /// whole contract (streaming, stop strings, logprobs, tokenize, chat) but its text is
    /// gibberish that never ends by itself: give requests `max_tokens` or stop strings.
    /// Clears [`model`](Self::model) (the worker takes one or the other).
    pub fn with_test_model(mut self) -> Self {
        self.model = None;
        if !self.extra_args.iter().any(|a| a == TEST_MODEL_FLAG) {
            self.extra_args.push(TEST_MODEL_FLAG.to_owned());
        }
        self
    }

    /// Whether this command serves the test model (see [`with_test_model`](Self::with_test_model)).
    pub fn uses_test_model(&self) -> bool {
        self.extra_args.iter().any(|a| a == TEST_MODEL_FLAG)
    }

    /// Appends worker arguments.
    pub fn with_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Runs the model sharded over a group of worker processes (see [`ShardGroup`]).
    pub fn with_shard(mut self, group: ShardGroup) -> Self {
        self.shard = Some(group);
        self
    }

    /// Sets an environment variable for the worker.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Bounds the worker's prefix cache (the KV caches of earlier requests, reused by requests
    /// that start with the same tokens); the limits left `None` keep the worker's defaults.
    pub fn with_prefix_cache(self, limits: PrefixCacheLimits) -> Self {
        let mut args = Vec::new();
        if let Some(entries) = limits.max_entries {
            args.extend(["--prefix-cache-entries".to_owned(), entries.to_string()]);
        }
        if let Some(bytes) = limits.max_bytes {
            args.extend(["--prefix-cache-bytes".to_owned(), bytes.to_string()]);
        }
        self.with_args(args)
    }
}

/// Bounds of the worker's prefix cache; when either is exceeded, the entries stored longest
/// ago go first. 0 in either turns the cache off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixCacheLimits {
    /// Most entries (the worker's default: 64).
    pub max_entries: Option<u32>,
    /// Most bytes of KV cache (the worker's default: a quarter of the memory the model
    /// leaves, between 64 MiB and 32 GiB).
    pub max_bytes: Option<u64>,
}

/// When and how often a crashed worker is started again.
///
/// Like an Erlang/OTP supervisor, the first restart after a worker that had been serving
/// crashes comes at once (`immediate_first_restart`): one crash after a stable run costs
/// no waiting. A crash in a row after that backs off: the delay grows exponentially from
/// `initial_delay` by `factor` up to `max_delay`, with up to 100 % random jitter added when
/// `jitter` is on (backon's `ExponentialBuilder`). A worker that dies before it ever
/// reported `SERVING` is always restarted after a delay, so a crash loop at start-up never
/// spins. After the worker has served for `reset_after` without a crash the delays start
/// over (and the next restart is immediate again). More than `max_restarts` restarts
/// within `within` and the supervisor gives up (Erlang/OTP's restart intensity); immediate
/// restarts count too.
#[derive(Debug, Clone, PartialEq)]
pub struct RestartPolicy {
    /// Delay before the first backed-off restart (default 100 ms): the first restart of
    /// a worker that never became ready, or the second of a crash in a row after an
    /// immediate one. Must be above zero for the delays to grow.
    pub initial_delay: Duration,
    /// Longest delay between restarts, before jitter (default 30 s).
    pub max_delay: Duration,
    /// Growth of the delay per restart (default 2.0).
    pub factor: f32,
    /// Add random jitter to each delay (default on).
    pub jitter: bool,
    /// After this long serving without a crash, the delays start over: the next restart
    /// is immediate (or after `initial_delay` without `immediate_first_restart`)
    /// (default 60 s).
    pub reset_after: Duration,
    /// Most restarts allowed within `within` (default 5).
    pub max_restarts: u32,
    /// The window of the restart intensity limit (default 30 s).
    pub within: Duration,
    /// Restart at once, without a delay, after a crash of a worker that had been serving,
    /// when it is the first restart since the delays were last reset (or the very first);
    /// the crashes in a row after it back off from `initial_delay` (default on).
    pub immediate_first_restart: bool,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            factor: 2.0,
            jitter: true,
            reset_after: Duration::from_secs(60),
            max_restarts: 5,
            within: Duration::from_secs(30),
            immediate_first_restart: true,
        }
    }
}

impl RestartPolicy {
    /// A policy that never restarts: the first crash makes the supervisor give up.
    pub fn never() -> Self {
        RestartPolicy {
            max_restarts: 0,
            ..RestartPolicy::default()
        }
    }

    /// Sets [`RestartPolicy::immediate_first_restart`].
    pub fn with_immediate_first_restart(mut self, immediate: bool) -> Self {
        self.immediate_first_restart = immediate;
        self
    }
}

/// Everything the supervisor needs; build with [`SupervisorConfig::new`] and the `with_*` methods.
#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorConfig {
    /// What to run.
    pub worker: WorkerCommand,
    /// How long a starting worker may take to report `SERVING` (default 300 s, as the
    /// CLI's: converting the model on first use, and on a GPU with an empty kernel cache
    /// compiling MLX's kernels, take a minute or more once; later starts take seconds).
    pub startup_timeout: Duration,
    /// Time between liveness health checks of a ready worker (default 2 s).
    pub health_interval: Duration,
    /// Deadline of one health check (default 1 s).
    pub health_timeout: Duration,
    /// Consecutive failed health checks after which the worker is killed and restarted
    /// (default 3).
    pub health_failure_threshold: u32,
    /// Restart backoff and intensity limit.
    pub restart: RestartPolicy,
    /// How long a stopping worker may drain in-flight requests after SIGTERM before it is
    /// killed (default 10 s). Also the grace between SIGTERM and SIGKILL for a hung worker.
    pub shutdown_grace: Duration,
    /// The parent directory of the supervisor's private socket directory (default: the
    /// system temporary directory).
    pub socket_dir: Option<PathBuf>,
    /// Use exactly this socket path instead of a private directory (for a worker that
    /// other processes connect to). A stale socket file there is removed; one a live
    /// process answers on is never taken over.
    pub socket_path: Option<PathBuf>,
    /// How many of the worker's last log lines to keep for error reports (default 50).
    pub log_tail_lines: usize,
    /// Keep a standby worker (default off): once the active worker is ready, a second one
    /// loads the model on its own socket and waits, idle and health-probed. When the active
    /// worker dies, the standby takes over at once (no start-up, no backoff) and a new
    /// standby starts. Costs a second copy of the model's memory (about 0.6 GB more for the
    /// default model on the CPU) and the standby's start-up CPU after each takeover. On
    /// Linux, where the supervisor may raise a priority back (root, `CAP_SYS_NICE` or
    /// `RLIMIT_NICE`), the standby starts at nice +10, so that its start-up yields the CPU
    /// to the streams the promoted worker resumes, and gets the supervisor's priority back
    /// once ready (with `shadow_prefill`) or when promoted. Cannot be combined with
    /// `socket_path`.
    pub standby: bool,
    /// With `standby`: shadow each stream on the idle standby (default on). As a stream
    /// starts, and again when a new standby becomes ready, the standby computes the
    /// stream's prompt and the tokens delivered so far into its prefix cache
    /// (`GenerateRequest.prefill_only`), at the normal priority once it is ready; a stream
    /// resumed there after the active worker died then prefills only the tokens delivered
    /// since. Costs the standby's CPU (or GPU) time for each prompt, and its prefix cache's
    /// memory.
    pub shadow_prefill: bool,
    /// How many replicas to run (default 1): each is a worker of its own, with its own
    /// socket, restart policy, health probes (and standby, with `standby`), all loading
    /// the same model. Each call goes to the ready replica with the fewest calls in flight;
    /// a call that has not started when its replica dies goes to another one. Costs one
    /// copy of the model's memory per replica. Cannot be combined with `socket_path`.
    pub replicas: usize,
    /// Pins replica `i` to device `replica_devices[i % len]` through `CUDA_VISIBLE_DEVICES`
    /// (MLX's CUDA backend sees only that GPU, as its device 0); empty (the default) leaves
    /// the device alone, so on a CPU, or on one GPU, the replicas share it.
    pub replica_devices: Vec<String>,
}

impl SupervisorConfig {
    /// The defaults, running `worker`.
    pub fn new(worker: WorkerCommand) -> Self {
        SupervisorConfig {
            worker,
            startup_timeout: Duration::from_secs(300),
            health_interval: Duration::from_secs(2),
            health_timeout: Duration::from_secs(1),
            health_failure_threshold: 3,
            restart: RestartPolicy::default(),
            shutdown_grace: Duration::from_secs(10),
            socket_dir: None,
            socket_path: None,
            log_tail_lines: 50,
            standby: false,
            shadow_prefill: true,
            replicas: 1,
            replica_devices: Vec::new(),
        }
    }

    /// Sets [`SupervisorConfig::startup_timeout`].
    pub fn with_startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Sets the liveness probe: interval, deadline per check and failure threshold.
    pub fn with_health(mut self, interval: Duration, timeout: Duration, threshold: u32) -> Self {
        self.health_interval = interval;
        self.health_timeout = timeout;
        self.health_failure_threshold = threshold.max(1);
        self
    }

    /// Sets [`SupervisorConfig::restart`].
    pub fn with_restart(mut self, restart: RestartPolicy) -> Self {
        self.restart = restart;
        self
    }

    /// Sets [`SupervisorConfig::shutdown_grace`].
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Sets [`SupervisorConfig::socket_dir`].
    pub fn with_socket_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.socket_dir = Some(dir.into());
        self
    }

    /// Sets [`SupervisorConfig::socket_path`].
    pub fn with_socket_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.socket_path = Some(path.into());
        self
    }

    /// Sets [`SupervisorConfig::log_tail_lines`].
    pub fn with_log_tail_lines(mut self, lines: usize) -> Self {
        self.log_tail_lines = lines;
        self
    }

    /// Sets [`SupervisorConfig::standby`].
    pub fn with_standby(mut self, standby: bool) -> Self {
        self.standby = standby;
        self
    }

    /// Sets [`SupervisorConfig::shadow_prefill`].
    pub fn with_shadow_prefill(mut self, shadow: bool) -> Self {
        self.shadow_prefill = shadow;
        self
    }

    /// Sets [`SupervisorConfig::replicas`] (at least 1).
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    /// Sets [`SupervisorConfig::replica_devices`], such as `["0", "1"]` for two GPUs.
    pub fn with_replica_devices<I, S>(mut self, devices: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.replica_devices = devices.into_iter().map(Into::into).collect();
        self
    }

    /// The device replica `index` is pinned to, if any.
    pub(crate) fn replica_device(&self, index: usize) -> Option<String> {
        if self.replica_devices.is_empty() {
            return None;
        }
        self.replica_devices
            .get(index % self.replica_devices.len())
            .cloned()
    }

    /// The configuration of replica `index`: this one, with its device pinned.
    pub(crate) fn for_replica(&self, index: usize) -> SupervisorConfig {
        let mut config = self.clone();
        if let Some(device) = self.replica_device(index) {
            config
                .worker
                .env
                .retain(|(key, _)| key != "CUDA_VISIBLE_DEVICES");
            config
                .worker
                .env
                .push(("CUDA_VISIBLE_DEVICES".into(), device));
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::{PrefixCacheLimits, WorkerCommand};

    #[test]
    fn prefix_cache_limits_become_worker_flags_and_defaults_add_none() {
        let worker = WorkerCommand::new("python", "worker").with_prefix_cache(PrefixCacheLimits {
            max_entries: Some(0),
            max_bytes: Some(512 << 20),
        });
        assert_eq!(
            worker.extra_args,
            [
                "--prefix-cache-entries",
                "0",
                "--prefix-cache-bytes",
                "536870912"
            ]
        );
        let default = WorkerCommand::new("python", "worker").with_prefix_cache(Default::default());
        assert!(default.extra_args.is_empty());
    }
}
