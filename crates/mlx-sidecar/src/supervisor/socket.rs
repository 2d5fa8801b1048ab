//! Where the worker's Unix socket lives.
//!
//! By default each supervisor makes a private directory (mode 0700) named
//! `mlx-sidecar-<pid>-<random>` under `socket_dir` or the system temporary directory, and
//! the worker binds `worker.sock` in it; directories left by supervisors that died without
//! cleaning up are removed on the way. With a standby worker there is a second path,
//! `worker-2.sock`: the active and the standby worker each bind one, and as a standby takes
//! over, the roles of the two paths swap. With `socket_path` set, that exact path is used
//! (and a standby is refused: its path would not be the one other processes know).
//!
//! Before each worker start the path is claimed like pueue does: a socket file that
//! accepts a connection belongs to a live process and is never taken over; one that
//! refuses is stale and is removed. Paths longer than `sun_path` allows are refused with
//! a clear error rather than failing deep inside `bind`.

use std::{
    fs, io,
    os::unix::{
        fs::{DirBuilderExt, FileTypeExt, MetadataExt},
        net::{SocketAddr, UnixStream},
    },
    path::{Path, PathBuf},
};

use crate::{Error, config::SupervisorConfig};

const DIR_PREFIX: &str = "mlx-sidecar-";
const SOCKET_NAME: &str = "worker.sock";
const SECOND_SOCKET_NAME: &str = "worker-2.sock";

/// The worker's socket path (two with a standby) and the private directory holding it
/// (when the supervisor made one).
#[derive(Debug)]
pub(crate) struct SocketPlace {
    path: PathBuf,
    /// The other path, for a standby worker.
    second: Option<PathBuf>,
    private_dir: Option<PathBuf>,
}

impl SocketPlace {
    /// Picks (and for a private directory, creates) the socket's place for `config`.
    pub(crate) fn prepare(config: &SupervisorConfig) -> Result<Self, Error> {
        if let Some(path) = &config.socket_path {
            if config.standby {
                return Err(Error::Socket {
                    path: path.clone(),
                    reason: "a standby worker needs the supervisor's private socket directory; \
                             it cannot be combined with socket_path"
                        .into(),
                });
            }
            check_length(path)?;
            claim(path)?;
            return Ok(SocketPlace {
                path: path.clone(),
                second: None,
                private_dir: None,
            });
        }
        let base = config.socket_dir.clone().unwrap_or_else(std::env::temp_dir);
        remove_stale_dirs(&base);
        // Check the final path's length before creating anything.
        let suffix: u64 = rand::random();
        let dir = base.join(format!("{DIR_PREFIX}{}-{suffix:016x}", std::process::id()));
        let path = dir.join(SOCKET_NAME);
        check_length(&path)?;
        let second = config.standby.then(|| dir.join(SECOND_SOCKET_NAME));
        if let Some(second) = &second {
            check_length(second)?;
        }
        fs::DirBuilder::new()
            .recursive(false)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::Socket {
                path: dir.clone(),
                reason: format!("cannot create the private socket directory: {e}"),
            })?;
        Ok(SocketPlace {
            path,
            second,
            private_dir: Some(dir),
        })
    }

    /// The socket path the first worker binds.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// With a standby: the path that the worker on `active` does not use.
    pub(crate) fn other(&self, active: &Path) -> Option<&Path> {
        let second = self.second.as_deref()?;
        Some(if active == second { &self.path } else { second })
    }

    /// The directory holding the socket.
    pub(crate) fn dir(&self) -> PathBuf {
        match &self.private_dir {
            Some(dir) => dir.clone(),
            None => self
                .path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        }
    }

    /// Makes `path` (one of this place's paths) free for a new worker (see the module doc).
    pub(crate) fn claim(&self, path: &Path) -> Result<(), Error> {
        claim(path)
    }

    /// What to remove when the supervisor ends.
    pub(crate) fn cleanup_target(&self) -> Cleanup {
        match &self.private_dir {
            Some(dir) => Cleanup::Dir(dir.clone()),
            None => Cleanup::Socket(self.path.clone()),
        }
    }
}

/// What the supervisor removes when it ends; run from `Drop`, so it is synchronous.
#[derive(Debug, Clone)]
pub(crate) enum Cleanup {
    /// The private directory and everything in it.
    Dir(PathBuf),
    /// A socket file at a caller-chosen path (only if it is still a socket nobody answers on).
    Socket(PathBuf),
}

impl Cleanup {
    pub(crate) fn run(&self) {
        match self {
            Cleanup::Dir(dir) => match fs::remove_dir_all(dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the socket directory");
                }
                _ => {}
            },
            Cleanup::Socket(path) => {
                let _ = claim(path);
            }
        }
    }
}

/// The longest socket path accepted: `sockaddr_un.sun_path` holds 108 bytes on Linux and
/// 104 on macOS, including the terminating NUL (the worker checks the same limit).
const MAX_SOCKET_PATH_BYTES: usize = 103;

/// Refuses paths that do not fit `sockaddr_un.sun_path` on every platform.
fn check_length(path: &Path) -> Result<(), Error> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH_BYTES || SocketAddr::from_pathname(path).is_err() {
        return Err(Error::Socket {
            path: path.to_path_buf(),
            reason: format!(
                "the path is {len} bytes long, more than a Unix socket address holds \
                 ({MAX_SOCKET_PATH_BYTES}); choose a shorter socket_dir"
            ),
        });
    }
    Ok(())
}

/// Frees `path` for binding: absent is fine, a stale socket is removed, a live one or a
/// file that is not a socket is refused.
pub(crate) fn claim(path: &Path) -> Result<(), Error> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::Socket {
                path: path.to_path_buf(),
                reason: format!("cannot inspect it: {e}"),
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(Error::Socket {
            path: path.to_path_buf(),
            reason: "a file that is not a socket is in the way; not removing it".into(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(Error::Socket {
            path: path.to_path_buf(),
            reason: "a live process is serving on it; not taking it over".into(),
        }),
        Err(_) => {
            tracing::debug!(path = %path.display(), "removing a stale socket file");
            match fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::Socket {
                    path: path.to_path_buf(),
                    reason: format!("cannot remove the stale socket file: {e}"),
                }),
            }
        }
    }
}

/// Removes `mlx-sidecar-<pid>-*` directories under `base` that belong to this user and to
/// a process that no longer exists (a supervisor that was killed).
fn remove_stale_dirs(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    let uid = nix::unistd::getuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        let owned = entry
            .metadata()
            .map(|m| m.is_dir() && m.uid() == uid)
            .unwrap_or(false);
        if !owned || pid == std::process::id() as i32 || process_exists(pid) {
            continue;
        }
        let dir = entry.path();
        tracing::debug!(dir = %dir.display(), pid, "removing the socket directory of a dead supervisor");
        let _ = fs::remove_dir_all(&dir);
    }
}

fn process_exists(pid: i32) -> bool {
    use nix::{errno::Errno, sys::signal::kill, unistd::Pid};
    !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn stale_socket_is_removed_and_live_one_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("s.sock");
        drop(UnixListener::bind(&path)?); // leaves a socket file nobody answers on
        assert!(path.exists());
        claim(&path)?;
        assert!(!path.exists());

        let _live = UnixListener::bind(&path)?;
        let err = claim(&path).err().ok_or("live socket was claimed")?;
        assert!(err.to_string().contains("live process"), "{err}");
        assert!(path.exists());
        Ok(())
    }

    #[test]
    fn long_path_is_refused_clearly() {
        let long = PathBuf::from(format!("/tmp/{}/worker.sock", "x".repeat(120)));
        let err = check_length(&long).err();
        assert!(matches!(err, Some(Error::Socket { .. })));
    }

    #[test]
    fn a_standby_gets_the_second_path_and_the_roles_swap() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let worker = crate::WorkerCommand::new("python", "sidecar");
        let config = SupervisorConfig::new(worker).with_socket_dir(dir.path());
        let single = SocketPlace::prepare(&config)?;
        assert_eq!(single.other(single.path()), None);

        let place = SocketPlace::prepare(&config.clone().with_standby(true))?;
        let first = place.path().to_path_buf();
        let second = place.other(&first).ok_or("no second path")?.to_path_buf();
        assert_ne!(first, second);
        assert_eq!(first.parent(), second.parent());
        assert_eq!(place.other(&second), Some(first.as_path()));

        let fixed = config
            .with_socket_path(dir.path().join("w.sock"))
            .with_standby(true);
        assert!(matches!(
            SocketPlace::prepare(&fixed),
            Err(Error::Socket { .. })
        ));
        for place in [single, place] {
            place.cleanup_target().run();
        }
        Ok(())
    }

    #[test]
    fn regular_file_is_not_removed() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("s.sock");
        fs::write(&path, b"data")?;
        assert!(claim(&path).is_err());
        assert!(path.exists());
        Ok(())
    }
}
