//! The worker's cache directory, seen from outside the worker: the models it converted and
//! what they take on disk, and removing the ones no running worker uses.
//!
//! The worker converts a GGUF file once into `<cache>/models/<name>-<digest>/` (and, on a
//! CPU, keeps a float32 copy of a quantized model beside it as `<name>-f32-<digest>/`); the
//! test model lives in `<cache>/test-model/`. `<cache>` is `MLX_SIDECAR_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/mlx-sidecar`, else `~/.cache/mlx-sidecar` ([`default_cache_dir`], the
//! worker's own rule; its `--cache-dir` overrides it).
//!
//! How the parts fit:
//!
//! - `models`: [`list_models`] reads each entry's completion marker (what it was made from),
//!   its size and its last use; [`remove_model`] and [`prune_models`] remove entries.
//! - `in_use`: a running worker holds a shared `flock` on each directory it uses (its cache
//!   entries and, for an extracted worker source, that too); removal takes an exclusive one
//!   without waiting, so it never removes what a worker uses, and a worker that starts
//!   meanwhile waits until the directory is gone and then makes it again.

mod in_use;
mod models;

use std::path::{Path, PathBuf};

pub(crate) use in_use::lock_if_unused;
pub use models::{CachedModel, ModelKind, PruneReport, list_models, prune_models, remove_model};

/// What can go wrong looking at or cleaning the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// No cache directory was given and the home directory is unknown.
    #[error("cannot find the cache directory: set MLX_SIDECAR_CACHE_DIR or HOME")]
    NoCacheDir,
    /// No converted model of that name.
    #[error("no converted model named {name} in {}", dir.display())]
    NotFound {
        /// The name asked for.
        name: String,
        /// The models directory looked in.
        dir: PathBuf,
    },
    /// A running worker uses the model.
    #[error("{name} is in use by a running worker; stop the worker first")]
    InUse {
        /// The model's name.
        name: String,
    },
    /// A file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl CacheError {
    pub(crate) fn io<'a>(
        op: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(std::io::Error) -> Self + 'a {
        move |source| CacheError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The worker's default cache directory: `MLX_SIDECAR_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/mlx-sidecar`, else `~/.cache/mlx-sidecar` (the same rule as the worker's).
pub fn default_cache_dir() -> Result<PathBuf, CacheError> {
    if let Some(dir) = std::env::var_os("MLX_SIDECAR_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(xdg).join("mlx-sidecar"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".cache").join("mlx-sidecar"))
        .ok_or(CacheError::NoCacheDir)
}

/// The bytes the files under `path` take (symbolic links are not followed; 0 when absent).
pub fn disk_usage(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| disk_usage(&entry.path()))
                .sum()
        })
        .unwrap_or(0)
}

/// Removes a directory by first renaming it to a hidden name beside it, so that nobody sees
/// it half-deleted (a worker looking for it finds it gone and makes it again).
pub(crate) fn discard_dir(dir: &Path) -> Result<(), CacheError> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let trash = dir.with_file_name(format!(
        ".trash-{name}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::rename(dir, &trash).map_err(CacheError::io("moving aside", dir))?;
    std::fs::remove_dir_all(&trash).map_err(CacheError::io("removing", &trash))
}
