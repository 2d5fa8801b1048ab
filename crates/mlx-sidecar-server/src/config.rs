//! What the daemon runs and how: [`ServeConfig`] (built with [`ServeConfig::new`] and the
//! `with_*` methods), the HTTP front's [`Limits`], and [`ServeError`], the failures that
//! stop [`crate::run`].

use std::{fmt, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use mlx_sidecar::SupervisorConfig;

use crate::auth::ApiKey;

/// Default grace for in-flight requests at shutdown.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Default limit of an HTTP request body (4 MiB, gRPC's default message limit too).
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Limits of the HTTP front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body (default [`DEFAULT_MAX_BODY_BYTES`]); larger ones get 413.
    pub max_body_bytes: usize,
    /// Deadline of a whole generation (default 600 s, the library's default); a
    /// non-streaming request that runs past it (plus a little) gets 504.
    pub request_timeout: Duration,
    /// How long reading a request body, or a streaming client that stops reading, may
    /// stall before the request is cancelled (default 30 s).
    pub stall_timeout: Duration,
    /// Events buffered per stream between the generation and the connection (default 64).
    pub stream_buffer: usize,
    /// What `Retry-After` says on a 429 or 503 (default 1 s).
    pub retry_after: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            request_timeout: Duration::from_secs(600),
            stall_timeout: Duration::from_secs(30),
            stream_buffer: 64,
            retry_after: Duration::from_secs(1),
        }
    }
}

/// Everything the daemon needs; see [`crate::run`].
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The worker's supervisor: what to run, restart policy, standby.
    pub supervisor: SupervisorConfig,
    /// The Unix socket to listen on; `None` takes [`mlx_sidecar::daemon::default_socket_path`].
    /// Ignored when systemd hands over sockets (`LISTEN_FDS`).
    pub socket_path: Option<PathBuf>,
    /// Also listen on this TCP address (`--listen HOST:PORT`). A non-loopback address
    /// needs [`ServeConfig::api_key`].
    pub listen: Option<SocketAddr>,
    /// The key every request on a TCP listener must carry as `authorization: Bearer KEY`.
    /// The Unix socket is protected by its mode (0600) instead.
    pub api_key: Option<ApiKey>,
    /// Let health probes through a keyed TCP listener without the key (default off): `GET
    /// /health`, `GET /ready` and `grpc.health.v1.Health/Check`, which say only whether the
    /// daemon serves. For orchestrators whose probes cannot carry a secret (Kubernetes'
    /// gRPC probe sends no metadata); see `deploy/kubernetes`.
    pub open_probes: bool,
    /// Take sockets handed over by systemd (`LISTEN_FDS`) instead of binding, when there
    /// are any (default on).
    pub socket_activation: bool,
    /// How long in-flight requests may run on after shutdown was asked for (default 30 s).
    pub grace: Duration,
    /// Limits of the HTTP front: body size, timeouts, stream buffer, `Retry-After`.
    pub limits: Limits,
    /// Called once every listener is bound, before the worker starts, with each listener as
    /// `unix:PATH` or `tcp:HOST:PORT` (the port actually bound, also for port 0).
    pub on_listening: Option<OnListening>,
}

/// What [`OnListening`] calls: given the listeners as `unix:PATH` or `tcp:HOST:PORT`.
pub type ListeningCallback = dyn Fn(&[String]) + Send + Sync;

/// A callback told where the daemon listens; see [`ServeConfig::with_on_listening`].
#[derive(Clone)]
pub struct OnListening(pub Arc<ListeningCallback>);

impl fmt::Debug for OnListening {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OnListening(..)")
    }
}

impl ServeConfig {
    /// The defaults, supervising as `supervisor` says: the default Unix socket, no TCP, no
    /// key, socket activation when systemd offers it, a 30 s grace, [`Limits::default`].
    pub fn new(supervisor: SupervisorConfig) -> Self {
        ServeConfig {
            supervisor,
            socket_path: None,
            listen: None,
            api_key: None,
            open_probes: false,
            socket_activation: true,
            grace: DEFAULT_GRACE,
            limits: Limits::default(),
            on_listening: None,
        }
    }

    /// Sets [`ServeConfig::on_listening`]: `callback` learns the bound listeners (for
    /// example the port chosen for `--listen 127.0.0.1:0`).
    pub fn with_on_listening(
        mut self,
        callback: impl Fn(&[String]) + Send + Sync + 'static,
    ) -> Self {
        self.on_listening = Some(OnListening(Arc::new(callback)));
        self
    }

    /// Sets [`ServeConfig::socket_path`].
    pub fn with_socket_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.socket_path = Some(path.into());
        self
    }

    /// Sets [`ServeConfig::listen`].
    pub fn with_listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// Sets [`ServeConfig::open_probes`].
    pub fn with_open_probes(mut self, open: bool) -> Self {
        self.open_probes = open;
        self
    }

    /// Sets [`ServeConfig::api_key`].
    pub fn with_api_key(mut self, key: ApiKey) -> Self {
        self.api_key = Some(key);
        self
    }

    /// Sets [`ServeConfig::socket_activation`].
    pub fn with_socket_activation(mut self, on: bool) -> Self {
        self.socket_activation = on;
        self
    }

    /// Sets [`ServeConfig::grace`].
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Sets [`Limits::max_body_bytes`] (`--max-body-bytes`).
    pub fn with_max_body_bytes(mut self, bytes: usize) -> Self {
        self.limits.max_body_bytes = bytes;
        self
    }

    /// Sets [`Limits::stall_timeout`] (`--stall-timeout`).
    pub fn with_stall_timeout(mut self, timeout: Duration) -> Self {
        self.limits.stall_timeout = timeout;
        self
    }

    /// Sets [`ServeConfig::limits`].
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}

/// Why the daemon could not start, or stopped with a failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Another daemon answers on the socket path.
    #[error("another mlx-sidecar serve is running on {path}{}", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    AlreadyRunning {
        /// The socket path.
        path: PathBuf,
        /// The other daemon's process id, when the socket says (`SO_PEERCRED`).
        pid: Option<u32>,
    },

    /// A TCP address other than loopback was asked for without an API key.
    #[error(
        "refusing to listen on {addr} without an API key: anyone who can reach it could use the model (give an API key, or listen on 127.0.0.1 / [::1])"
    )]
    InsecureListen {
        /// The address.
        addr: SocketAddr,
    },

    /// The API key file cannot be used.
    #[error("API key file {path}: {reason}")]
    ApiKey {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A socket could not be prepared, bound or taken over.
    #[error("{context}: {source}")]
    Listen {
        /// What was being done, naming the path or address.
        context: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },

    /// The supervisor could not start the worker, or failed to stop it.
    #[error("supervisor: {0}")]
    Supervisor(#[from] mlx_sidecar::Error),

    /// Serving a listener failed.
    #[error("serving {listener}: {source}")]
    Serve {
        /// The listener, as `unix:PATH` or `tcp:ADDR`.
        listener: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },

    /// The gRPC reflection service could not be built from the descriptors.
    #[error("gRPC reflection: {0}")]
    Reflection(String),
}

impl ServeError {
    pub(crate) fn listen(context: impl Into<String>, source: std::io::Error) -> Self {
        ServeError::Listen {
            context: context.into(),
            source,
        }
    }
}
