//! The manifest: what a managed environment holds, written last, so that its presence means
//! the environment is complete.
//!
//! It lives at `<root>/manifest.json` and is replaced atomically (written to a temporary file
//! beside it, then renamed). A missing, unreadable or mismatching manifest makes
//! [`ensure`](super::ensure) rebuild the environment from scratch.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::EnvError;
use super::probe::RuntimeInfo;
use super::variant::Variant;

/// The manifest's format version; a manifest of another format is treated as missing.
pub(crate) const FORMAT: u32 = 1;

/// What a managed environment holds and how it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The manifest format version (1); a manifest of another format is treated as missing.
    pub format: u32,
    /// The platform variant whose requirements are installed.
    pub variant: Variant,
    /// Hash of the requirement files installed (variant, base and model; dev too when `dev`).
    pub requirements_hash: String,
    /// Whether the development tools (`requirements/dev.txt`) are installed too.
    pub dev: bool,
    /// The interpreter the venv was made from.
    pub base_python: String,
    /// What the environment's interpreter reported after installing.
    pub runtime: RuntimeInfo,
    /// Hash of the worker source extracted when the manifest was written.
    pub worker_source_hash: String,
    /// When the environment was completed, in seconds since the Unix epoch.
    pub created_unix: u64,
    /// The mlx-sidecar version that wrote the manifest.
    pub written_by: String,
}

/// The manifest's path in an environment root.
pub(crate) fn path(root: &Path) -> std::path::PathBuf {
    root.join("manifest.json")
}

/// Reads the manifest of `root`; `None` when it is missing, unreadable or of another format
/// (all of which mean "rebuild").
pub(crate) fn read(root: &Path) -> Option<Manifest> {
    let bytes = std::fs::read(path(root)).ok()?;
    let manifest: Manifest = serde_json::from_slice(&bytes).ok()?;
    (manifest.format == FORMAT).then_some(manifest)
}

/// Writes the manifest atomically: a temporary file in `root`, flushed, then renamed.
pub(crate) fn write(root: &Path, manifest: &Manifest) -> Result<(), EnvError> {
    let target = path(root);
    let json = serde_json::to_vec_pretty(manifest).map_err(|e| EnvError::Io {
        op: "encoding",
        path: target.clone(),
        source: e.into(),
    })?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".manifest.")
        .tempfile_in(root)
        .map_err(EnvError::io("creating a temporary file in", root))?;
    use std::io::Write;
    tmp.write_all(&json)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(EnvError::io("writing", tmp.path()))?;
    tmp.persist(&target).map_err(|e| EnvError::Io {
        op: "renaming the manifest to",
        path: target.clone(),
        source: e.error,
    })?;
    Ok(())
}

/// Removes the manifest (first thing before a rebuild: a half-made environment never has one).
pub(crate) fn remove(root: &Path) -> Result<(), EnvError> {
    let target = path(root);
    match std::fs::remove_file(&target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(EnvError::Io {
            op: "removing",
            path: target,
            source: e,
        }),
    }
}
