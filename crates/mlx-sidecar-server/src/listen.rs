//! The daemon's listeners: the per-user Unix socket, an optional TCP address, or the
//! sockets systemd hands over (`LISTEN_FDS`, through `listenfd`). The default socket is
//! the library's [`default_socket_path`], where clients look for a daemon.
//!
//! The Unix socket's folder is made 0700 and the socket 0600: only the daemon's user can
//! connect, which is why it needs no API key. Claiming the path follows pueue: if a file
//! is there, connect to it; an answer means another daemon owns it (refused, naming the
//! path and, from `SO_PEERCRED`, its pid); no answer means a stale file from a dead
//! daemon, removed before binding. A TCP address other than loopback is refused unless an
//! API key is configured.

use std::{
    net::SocketAddr,
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use mlx_sidecar::daemon::default_socket_path;
use tokio::net::{TcpListener, UnixListener, UnixStream};

use crate::{ServeConfig, ServeError};

/// How long a claim waits for an existing socket to accept a connection.
const CLAIM_TIMEOUT: Duration = Duration::from_millis(500);

/// A listener ready to serve, and what the `Status` rpc's `Listener` says about it.
#[derive(Debug)]
pub(crate) enum Bound {
    /// A Unix socket.
    Unix {
        listener: UnixListener,
        info: ListenerInfo,
        /// The file to remove at shutdown (a socket this daemon bound itself), with its
        /// inode, so that a socket someone else bound there since is left alone.
        owned: Option<(PathBuf, u64)>,
    },
    /// A TCP socket.
    Tcp {
        listener: TcpListener,
        info: ListenerInfo,
    },
}

impl Bound {
    pub(crate) fn info(&self) -> &ListenerInfo {
        match self {
            Bound::Unix { info, .. } | Bound::Tcp { info, .. } => info,
        }
    }
}

/// Where a listener listens, for logs and the `Status` rpc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListenerInfo {
    /// "unix" or "tcp".
    pub(crate) kind: &'static str,
    /// The socket path or the address.
    pub(crate) address: String,
    /// Whether requests on it need the API key.
    pub(crate) requires_api_key: bool,
    /// Whether systemd handed it over.
    pub(crate) activated: bool,
}

impl std::fmt::Display for ListenerInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind, self.address)
    }
}

/// Binds the listeners `config` asks for, or takes those systemd handed over.
pub(crate) async fn bind_all(config: &ServeConfig) -> Result<Vec<Bound>, ServeError> {
    let has_key = config.api_key.is_some();
    // Refuse an insecure address before binding anything.
    if let Some(addr) = config.listen.filter(|a| !a.ip().is_loopback() && !has_key) {
        return Err(ServeError::InsecureListen { addr });
    }
    if config.socket_activation {
        let activated = take_activated(has_key)?;
        if !activated.is_empty() {
            return Ok(activated);
        }
    }
    let mut bound = vec![match &config.socket_path {
        Some(path) => bind_unix(path).await?,
        None => {
            let path = default_socket_path();
            // The default folder is the daemon's own: make it private even if it exists.
            if let Some(dir) = path.parent() {
                tighten_dir(dir)?;
            }
            bind_unix(&path).await?
        }
    }];
    if let Some(addr) = config.listen {
        bound.push(bind_tcp(addr, has_key).await?);
    }
    Ok(bound)
}

/// Makes an existing folder of the user's own 0700.
fn tighten_dir(dir: &Path) -> Result<(), ServeError> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.uid() == nix::unistd::getuid().as_raw() && meta.mode() & 0o077 != 0 => {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
                ServeError::listen(format!("cannot make {} private", dir.display()), e)
            })
        }
        _ => Ok(()),
    }
}

/// Claims `path` (see the [module docs](self)) and binds a 0600 socket there, in a 0700 folder.
pub(crate) async fn bind_unix(path: &Path) -> Result<Bound, ServeError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        prepare_dir(dir)?;
    }
    claim(path).await?;
    let listener = UnixListener::bind(path)
        .map_err(|e| ServeError::listen(format!("cannot bind {}", path.display()), e))?;
    let set_mode = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    let inode = std::fs::metadata(path).map(|m| m.ino());
    let inode = set_mode
        .and(inode)
        .map_err(|e| ServeError::listen(format!("cannot make {} private", path.display()), e))?;
    Ok(Bound::Unix {
        listener,
        info: ListenerInfo {
            kind: "unix",
            address: path.display().to_string(),
            requires_api_key: false,
            activated: false,
        },
        owned: Some((path.to_path_buf(), inode)),
    })
}

/// Makes the socket's folder if missing, 0700; an existing folder must be the user's own
/// and not writable by others.
fn prepare_dir(dir: &Path) -> Result<(), ServeError> {
    let context = || format!("cannot prepare the socket folder {}", dir.display());
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| ServeError::listen(context(), e)),
        Err(e) => Err(ServeError::listen(context(), e)),
        Ok(meta) => {
            let mine = meta.uid() == nix::unistd::getuid().as_raw();
            let shared_writable = meta.mode() & 0o022 != 0;
            // A shared folder such as /tmp is fine when it is sticky: others cannot
            // replace the socket there.
            let sticky = meta.mode() & 0o1000 != 0;
            if !sticky && (!mine || shared_writable) {
                return Err(ServeError::listen(
                    context(),
                    std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        "it belongs to another user or others may write to it",
                    ),
                ));
            }
            Ok(())
        }
    }
}

/// Makes `path` free to bind: refuses when a daemon answers there, removes a stale socket.
async fn claim(path: &Path) -> Result<(), ServeError> {
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(ServeError::listen(
                format!("cannot inspect {}", path.display()),
                e,
            ));
        }
        Ok(meta) => meta,
    };
    use std::os::unix::fs::FileTypeExt;
    if !meta.file_type().is_socket() {
        return Err(ServeError::listen(
            format!("cannot use {}", path.display()),
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way (not removed)",
            ),
        ));
    }
    match tokio::time::timeout(CLAIM_TIMEOUT, UnixStream::connect(path)).await {
        Ok(Ok(stream)) => {
            let pid = stream
                .peer_cred()
                .ok()
                .and_then(|cred| cred.pid())
                .and_then(|pid| u32::try_from(pid).ok());
            Err(ServeError::AlreadyRunning {
                path: path.to_path_buf(),
                pid,
            })
        }
        // A socket that accepts but is slow to: someone is there.
        Err(_) => Err(ServeError::AlreadyRunning {
            path: path.to_path_buf(),
            pid: None,
        }),
        Ok(Err(_)) => {
            tracing::info!(path = %path.display(), "removing a stale daemon socket (nothing answers on it)");
            std::fs::remove_file(path).map_err(|e| {
                ServeError::listen(format!("cannot remove the stale {}", path.display()), e)
            })
        }
    }
}

/// Binds `addr`; refuses a non-loopback address without an API key.
pub(crate) async fn bind_tcp(addr: SocketAddr, has_key: bool) -> Result<Bound, ServeError> {
    if !addr.ip().is_loopback() && !has_key {
        return Err(ServeError::InsecureListen { addr });
    }
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| ServeError::listen(format!("cannot listen on {addr}"), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| ServeError::listen(format!("cannot listen on {addr}"), e))?;
    Ok(Bound::Tcp {
        listener,
        info: ListenerInfo {
            kind: "tcp",
            address: local.to_string(),
            requires_api_key: has_key,
            activated: false,
        },
    })
}

/// The stream sockets systemd passed (`LISTEN_FDS`), Unix or TCP; none when not activated.
fn take_activated(has_key: bool) -> Result<Vec<Bound>, ServeError> {
    let mut fds = listenfd::ListenFd::from_env();
    let mut bound = Vec::new();
    let context = |i: usize| format!("cannot take the socket systemd passed as fd #{i}");
    for i in 0..fds.len() {
        if let Ok(Some(listener)) = fds.take_unix_listener(i) {
            listener
                .set_nonblocking(true)
                .map_err(|e| ServeError::listen(context(i), e))?;
            let address = listener
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
                .unwrap_or_else(|| format!("fd {i}"));
            let listener =
                UnixListener::from_std(listener).map_err(|e| ServeError::listen(context(i), e))?;
            bound.push(Bound::Unix {
                listener,
                info: ListenerInfo {
                    kind: "unix",
                    address,
                    requires_api_key: false,
                    activated: true,
                },
                owned: None,
            });
            continue;
        }
        let listener = fds
            .take_tcp_listener(i)
            .map_err(|e| ServeError::listen(context(i), e))?
            .ok_or_else(|| {
                ServeError::listen(
                    context(i),
                    std::io::Error::other("it is neither a Unix nor a TCP stream socket"),
                )
            })?;
        let addr = listener
            .local_addr()
            .map_err(|e| ServeError::listen(context(i), e))?;
        if !addr.ip().is_loopback() && !has_key {
            return Err(ServeError::InsecureListen { addr });
        }
        listener
            .set_nonblocking(true)
            .map_err(|e| ServeError::listen(context(i), e))?;
        let listener =
            TcpListener::from_std(listener).map_err(|e| ServeError::listen(context(i), e))?;
        bound.push(Bound::Tcp {
            listener,
            info: ListenerInfo {
                kind: "tcp",
                address: addr.to_string(),
                requires_api_key: has_key,
                activated: true,
            },
        });
    }
    Ok(bound)
}

/// Removes a socket file this daemon bound, unless another socket has replaced it.
pub(crate) fn remove_owned(path: &Path, inode: u64) {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.ino() == inode => {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove the daemon socket");
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_socket_is_private_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("run/daemon.sock");
        let first = bind_unix(&path).await.expect("bind");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().expect("parent")), 0o700);
        match bind_unix(&path).await {
            Err(ServeError::AlreadyRunning { path: p, pid }) => {
                assert_eq!(p, path);
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("a live socket was not refused: {other:?}"),
        }
        drop(first);
        assert!(path.exists(), "the listener's file stays: a stale socket");
        bind_unix(&path)
            .await
            .expect("the stale socket is replaced");
    }

    #[test]
    fn an_own_folder_is_made_private() {
        let dir = tempfile::tempdir().expect("temp dir");
        let folder = dir.path().join("mlx-sidecar");
        std::fs::create_dir(&folder).expect("mkdir");
        std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        tighten_dir(&folder).expect("tighten");
        assert_eq!(
            std::fs::metadata(&folder).expect("meta").mode() & 0o777,
            0o700
        );
    }

    #[tokio::test]
    async fn a_plain_file_is_not_removed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("daemon.sock");
        std::fs::write(&path, "data").expect("write");
        assert!(bind_unix(&path).await.is_err());
        assert_eq!(std::fs::read_to_string(&path).expect("kept"), "data");
    }

    #[tokio::test]
    async fn non_loopback_tcp_needs_a_key() {
        let any: SocketAddr = "0.0.0.0:0".parse().expect("addr");
        assert!(matches!(
            bind_tcp(any, false).await,
            Err(ServeError::InsecureListen { .. })
        ));
        let loopback: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let bound = bind_tcp(loopback, false)
            .await
            .expect("loopback without a key");
        assert!(!bound.info().requires_api_key);
    }
}
