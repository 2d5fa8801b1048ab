//! Removing the worker sources of other versions from `<root>/worker/` when the environment
//! is checked: each version of this library extracts its own (named by its hash), and
//! nothing else would ever remove the old ones.
//!
//! A source directory a running worker uses is never removed: the worker holds a shared
//! lock on its `.in-use` file (see `crate::cache`). A directory without that file was made
//! by a version that did not mark its use and is left alone; so are leftovers of an
//! extraction that is less than an hour old (it may still be running), and a source whose
//! `.in-use` file was touched within the hour (each worker touches it when it starts, so a
//! supervisor between two workers, or one about to start its first, keeps its source).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cache::{discard_dir, lock_if_unused};

/// How old an unfinished extraction must be before it counts as abandoned.
const ABANDONED_AFTER: Duration = Duration::from_secs(3600);

/// Removes the unused worker sources under `<root>/worker/` other than `keep`; returns the
/// directories removed. Failures are logged, never returned (cleaning up is best effort).
pub(crate) fn prune_other_sources(root: &Path, keep: &Path) -> Vec<PathBuf> {
    let parent = root.join("worker");
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path == keep || !path.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let result = if name.starts_with('.') {
            if !is_older_than(&path, ABANDONED_AFTER) {
                continue;
            }
            std::fs::remove_dir_all(&path).map_err(|e| e.to_string())
        } else if !is_older_than(&path.join(".in-use"), ABANDONED_AFTER) {
            // Used (or extracted) within the hour: another version's supervisor may be
            // between two of its workers, or about to start its first.
            continue;
        } else {
            match lock_if_unused(&path, false) {
                Ok(Some(_lock)) => discard_dir(&path).map_err(|e| e.to_string()),
                Ok(None) => {
                    tracing::debug!(dir = %path.display(), "worker source in use (or unmarked); kept");
                    continue;
                }
                Err(e) => Err(e.to_string()),
            }
        };
        match result {
            Ok(()) => {
                tracing::info!(dir = %path.display(), "removed the worker source of another version");
                removed.push(path);
            }
            Err(e) => {
                tracing::warn!(dir = %path.display(), "cannot remove an old worker source: {e}")
            }
        }
    }
    removed
}

fn is_older_than(path: &Path, age: Duration) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|elapsed| elapsed > age)
}
