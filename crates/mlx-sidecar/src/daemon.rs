//! Where a `mlx-sidecar serve` daemon listens by default, so that the daemon and its
//! clients (the command line, a service using [`Client::connect`](crate::Client::connect))
//! agree on one per-user path without configuration.

use std::path::{Path, PathBuf};

/// The file name of the daemon's socket inside its folder.
const SOCKET_NAME: &str = "daemon.sock";

/// The daemon's default Unix socket: `$XDG_RUNTIME_DIR/mlx-sidecar/daemon.sock` when
/// `XDG_RUNTIME_DIR` names an absolute path (the per-user runtime folder of systemd-based
/// systems), else `<temp dir>/mlx-sidecar-<uid>/daemon.sock`, the temp dir being
/// `$TMPDIR` or `/tmp`.
///
/// Only a path: the daemon creates the folder (mode 0700) when it starts.
pub fn default_socket_path() -> PathBuf {
    socket_path_in(
        std::env::var_os("XDG_RUNTIME_DIR")
            .as_deref()
            .map(Path::new),
        &std::env::temp_dir(),
        nix::unistd::getuid().as_raw(),
    )
}

/// [`default_socket_path`] from its inputs.
fn socket_path_in(runtime_dir: Option<&Path>, temp_dir: &Path, uid: u32) -> PathBuf {
    match runtime_dir {
        Some(dir) if dir.is_absolute() => dir.join("mlx-sidecar").join(SOCKET_NAME),
        _ => temp_dir
            .join(format!("mlx-sidecar-{uid}"))
            .join(SOCKET_NAME),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_dir_first_then_a_uid_named_temp_folder() {
        let tmp = Path::new("/tmp");
        assert_eq!(
            socket_path_in(Some(Path::new("/run/user/1000")), tmp, 1000),
            Path::new("/run/user/1000/mlx-sidecar/daemon.sock")
        );
        assert_eq!(
            socket_path_in(None, tmp, 1000),
            Path::new("/tmp/mlx-sidecar-1000/daemon.sock")
        );
        // An empty or relative XDG_RUNTIME_DIR is invalid per the XDG spec: ignored.
        for bad in ["", "relative/dir"] {
            assert_eq!(
                socket_path_in(Some(Path::new(bad)), tmp, 7),
                Path::new("/tmp/mlx-sidecar-7/daemon.sock")
            );
        }
    }
}
