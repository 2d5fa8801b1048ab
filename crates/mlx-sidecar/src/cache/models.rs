//! The converted models in `<cache>/models/`: listing them, removing one, pruning the unused.
//!
//! An entry counts only when it holds the worker's completion marker
//! (`mlx-sidecar-complete.json`, written last); the marker says what the entry was made from.
//! Hidden directories (builds in progress, entries being removed) are left to the worker.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::in_use::{LOCK_NAME, lock_if_unused};
use super::{CacheError, discard_dir, disk_usage};

/// The worker's completion marker in a cache entry.
const MARKER: &str = "mlx-sidecar-complete.json";

/// What a cache entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// A GGUF file converted to an mlx-lm model directory.
    ConvertedGguf,
    /// A float32 copy of a quantized model (made on a CPU, for fast loading).
    Float32Copy,
}

/// One converted model in the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedModel {
    /// The entry's directory name (what `remove_model` takes).
    pub name: String,
    /// The entry's directory.
    pub path: PathBuf,
    /// What it holds.
    pub kind: ModelKind,
    /// What it was made from: the GGUF file, or the model directory the float32 copy
    /// expands (`None` when the marker does not say).
    pub source: Option<PathBuf>,
    /// Bytes on disk.
    pub size_bytes: u64,
    /// When a worker last loaded it (else when it was made).
    pub last_used: Option<SystemTime>,
    /// Whether a running worker uses it now.
    pub in_use: bool,
}

/// What [`prune_models`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PruneReport {
    /// The entries removed.
    pub removed: Vec<CachedModel>,
    /// The entries kept because a running worker uses them.
    pub in_use: Vec<CachedModel>,
}

impl PruneReport {
    /// The bytes the removed entries took.
    pub fn freed_bytes(&self) -> u64 {
        self.removed.iter().map(|m| m.size_bytes).sum()
    }
}

/// The models directory of a cache directory.
fn models_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("models")
}

/// The converted models in `cache_dir` (see [`super::default_cache_dir`]), most recently
/// used first. An absent cache is empty.
pub fn list_models(cache_dir: &Path) -> Result<Vec<CachedModel>, CacheError> {
    let dir = models_dir(cache_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CacheError::io("reading", &dir)(e)),
    };
    let mut models = Vec::new();
    for entry in entries {
        let entry = entry.map_err(CacheError::io("reading", &dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.path().join(MARKER).is_file() {
            continue;
        }
        models.push(describe(&entry.path(), name)?);
    }
    models.sort_by(|a, b| b.last_used.cmp(&a.last_used).then(a.name.cmp(&b.name)));
    Ok(models)
}

/// Reads one complete entry.
fn describe(path: &Path, name: String) -> Result<CachedModel, CacheError> {
    let marker: serde_json::Value = std::fs::read(path.join(MARKER))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    let text = |key: &str| marker.get(key).and_then(|v| v.as_str()).map(PathBuf::from);
    let (kind, source) = match text("dequantized_from") {
        Some(from) => (ModelKind::Float32Copy, Some(from)),
        None => (ModelKind::ConvertedGguf, text("source_path")),
    };
    let last_used = [path.join(LOCK_NAME), path.join(MARKER)]
        .iter()
        .find_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    let in_use = lock_if_unused(path, false)
        .map_err(CacheError::io("checking the use of", path))?
        .is_none()
        && path.join(LOCK_NAME).exists();
    Ok(CachedModel {
        path: path.to_path_buf(),
        size_bytes: disk_usage(path),
        name,
        kind,
        source,
        last_used,
        in_use,
    })
}

/// Removes the converted model `name` from `cache_dir`, unless a running worker uses it
/// ([`CacheError::InUse`]). Returns what was removed. A worker that loads it again later
/// converts it again.
pub fn remove_model(cache_dir: &Path, name: &str) -> Result<CachedModel, CacheError> {
    let dir = models_dir(cache_dir);
    let not_found = || CacheError::NotFound {
        name: name.to_owned(),
        dir: dir.clone(),
    };
    if name.is_empty() || name.starts_with('.') || name.contains('/') || name == ".." {
        return Err(not_found());
    }
    let path = dir.join(name);
    if !path.join(MARKER).is_file() {
        return Err(not_found());
    }
    let model = describe(&path, name.to_owned())?;
    let _lock = lock_if_unused(&path, true)
        .map_err(CacheError::io("checking the use of", &path))?
        .ok_or_else(|| CacheError::InUse {
            name: name.to_owned(),
        })?;
    discard_dir(&path)?;
    Ok(CachedModel {
        in_use: false,
        ..model
    })
}

/// Removes every converted model in `cache_dir` that no running worker uses.
pub fn prune_models(cache_dir: &Path) -> Result<PruneReport, CacheError> {
    let mut report = PruneReport::default();
    for model in list_models(cache_dir)? {
        match remove_model(cache_dir, &model.name) {
            Ok(removed) => report.removed.push(removed),
            Err(CacheError::InUse { .. }) => report.in_use.push(CachedModel {
                in_use: true,
                ..model
            }),
            // Removed by someone else meanwhile.
            Err(CacheError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(report)
}
