//! An exclusive lock on an environment root (`<root>/.lock`, `flock(2)`), held while the
//! environment is checked and, if needed, built, so that two processes never build the same
//! environment at once. The OS releases it when the holder exits, even by a crash.

use std::fs::{File, OpenOptions};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::error::EnvError;
use super::progress::{Progress, Step};

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub(crate) struct EnvLock {
    _lock: Flock<File>,
}

/// Takes the lock of `root` (which must exist), waiting for another holder if there is one;
/// the wait is reported as [`Step::WaitForLock`].
pub(crate) async fn acquire(root: &Path, progress: &dyn Progress) -> Result<EnvLock, EnvError> {
    let path = root.join(".lock");
    let open = || {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(EnvError::io("opening the lock file", &path))
    };
    let lock_error = |errno: Errno| EnvError::Io {
        op: "locking",
        path: path.clone(),
        source: errno.into(),
    };
    match Flock::lock(open()?, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => return Ok(EnvLock { _lock: lock }),
        Err((_, Errno::EWOULDBLOCK)) => {}
        Err((_, errno)) => return Err(lock_error(errno)),
    }
    let started = std::time::Instant::now();
    progress.started(Step::WaitForLock, &path.display().to_string());
    let file = open()?;
    let result = tokio::task::spawn_blocking(move || Flock::lock(file, FlockArg::LockExclusive))
        .await
        .map_err(|e| EnvError::Io {
            op: "waiting for the lock",
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
    match result {
        Ok(lock) => {
            progress.finished(Step::WaitForLock, started.elapsed());
            Ok(EnvLock { _lock: lock })
        }
        Err((_, errno)) => {
            let err = lock_error(errno);
            progress.failed(Step::WaitForLock, &err.to_string());
            Err(err)
        }
    }
}
