//! Whether a running worker uses a directory: the worker holds a shared `flock` on the
//! directory's `.in-use` file for its whole life (see the worker's `mlx_worker/in_use.py`);
//! the OS drops it when the worker exits, even by SIGKILL.

use std::fs::{File, OpenOptions};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The lock file's name inside a directory.
pub(crate) const LOCK_NAME: &str = ".in-use";

/// An exclusive lock on a directory no worker uses; while it is held no worker can start
/// using the directory (a worker's shared lock waits for it).
#[derive(Debug)]
pub(crate) struct UnusedLock {
    _lock: Flock<File>,
}

/// Takes the exclusive lock of `dir` without waiting: `Ok(None)` when a worker holds it.
/// With `create` false, a directory without a lock file gives `Ok(None)` too (it was made
/// by a version that did not mark its use, so whether it is used cannot be told).
pub(crate) fn lock_if_unused(dir: &Path, create: bool) -> std::io::Result<Option<UnusedLock>> {
    let path = dir.join(LOCK_NAME);
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(&path)
    {
        Ok(file) => file,
        Err(e) if !create && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(UnusedLock { _lock: lock })),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(errno.into()),
    }
}
