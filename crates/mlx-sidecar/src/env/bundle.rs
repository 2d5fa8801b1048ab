//! The worker's Python source, embedded in the binary so that an installed `mlx-sidecar`
//! needs no checkout of the repository.
//!
//! `sidecar/mlx_worker`, `sidecar/mlx_sidecar` (the generated gRPC stubs) and
//! `sidecar/requirements` are compiled in with `include_dir`. Only source files are used
//! (`.py`, `.pyi`, `.txt`, `py.typed`); caches and tests are left out. [`extract`] writes them
//! to `<root>/worker/<hash>/`, named by a hash of their content, by writing a temporary
//! directory beside it and renaming it into place: a directory with that name is always
//! complete, and two processes extracting at once both end up with the same one.

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use include_dir::{Dir, DirEntry, include_dir};
use sha2::{Digest, Sha256};

use super::error::EnvError;

static WORKER: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../../sidecar/mlx_worker");
static STUBS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../../sidecar/mlx_sidecar");
static REQUIREMENTS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../../sidecar/requirements");

/// One embedded file: its path relative to the worker directory and its bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BundleFile {
    /// Path relative to the extracted worker directory, e.g. `mlx_worker/__main__.py`.
    pub path: &'static str,
    /// The file's content.
    pub contents: &'static [u8],
}

/// The embedded files (sorted by path) and the hash of their paths and contents.
struct Bundle {
    files: Vec<(String, &'static [u8])>,
    hash: String,
}

fn bundle() -> &'static Bundle {
    static BUNDLE: OnceLock<Bundle> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let mut files = Vec::new();
        for (prefix, dir) in [
            ("mlx_worker", &WORKER),
            ("mlx_sidecar", &STUBS),
            ("requirements", &REQUIREMENTS),
        ] {
            collect(dir, prefix, &mut files);
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let mut hasher = Sha256::new();
        for (path, contents) in &files {
            hasher.update((path.len() as u64).to_le_bytes());
            hasher.update(path.as_bytes());
            hasher.update((contents.len() as u64).to_le_bytes());
            hasher.update(contents);
        }
        let hash = hex(&hasher.finalize())[..16].to_owned();
        Bundle { files, hash }
    })
}

fn collect(dir: &'static Dir<'static>, prefix: &str, out: &mut Vec<(String, &'static [u8])>) {
    for entry in dir.entries() {
        match entry {
            DirEntry::Dir(sub) => {
                if keep_dir(sub.path()) {
                    collect(sub, prefix, out);
                }
            }
            DirEntry::File(file) => {
                if keep_file(file.path()) {
                    let rel = file.path().to_string_lossy().replace('\\', "/");
                    out.push((format!("{prefix}/{rel}"), file.contents()));
                }
            }
        }
    }
}

fn keep_dir(path: &Path) -> bool {
    match path.file_name().and_then(|n| n.to_str()) {
        Some(name) => !(name == "__pycache__" || name == "tests" || name.starts_with('.')),
        None => false,
    }
}

fn keep_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.starts_with('.') {
        return false;
    }
    name == "py.typed"
        || matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("py" | "pyi" | "txt")
        )
}

/// A short hash (16 hex digits) of the embedded worker source and requirements; it names
/// the extracted directory and is recorded in the environment's manifest.
pub(crate) fn source_hash() -> &'static str {
    &bundle().hash
}

/// The embedded files, sorted by path.
pub(crate) fn files() -> impl Iterator<Item = BundleFile> {
    bundle().files.iter().map(|(path, contents)| BundleFile {
        path: path.as_str(),
        contents,
    })
}

/// The content of an embedded file, e.g. `requirements/cpu.txt`.
pub(crate) fn file(path: &str) -> Option<&'static [u8]> {
    bundle()
        .files
        .iter()
        .find(|(p, _)| p == path)
        .map(|(_, contents)| *contents)
}

/// Writes the embedded worker source to `<root>/worker/<hash>/` unless it is there already,
/// and returns that directory (the one to put on `PYTHONPATH`).
///
/// Safe against concurrent callers: each writes its own temporary directory and renames it
/// into place; the loser of the race removes its copy and uses the winner's.
pub(crate) fn extract(root: &Path) -> Result<PathBuf, EnvError> {
    let parent = root.join("worker");
    let target = parent.join(source_hash());
    if target.is_dir() {
        mark_usable(&target)?;
        return Ok(target);
    }
    std::fs::create_dir_all(&parent).map_err(EnvError::io("creating directory", &parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", source_hash()))
        .tempdir_in(&parent)
        .map_err(EnvError::io("creating a temporary directory in", &parent))?;
    for file in files() {
        let dest = safe_join(tmp.path(), file.path);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(EnvError::io("creating directory", dir))?;
        }
        std::fs::write(&dest, file.contents).map_err(EnvError::io("writing", &dest))?;
    }
    mark_usable(tmp.path())?;
    let tmp_path = tmp.keep();
    match std::fs::rename(&tmp_path, &target) {
        Ok(()) => Ok(target),
        Err(_) if target.is_dir() => {
            // Another process won the race; its copy is identical.
            let _ = std::fs::remove_dir_all(&tmp_path);
            Ok(target)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp_path);
            Err(EnvError::Io {
                op: "renaming the extracted worker source to",
                path: target,
                source: e,
            })
        }
    }
}

/// Makes sure an extracted source directory has its `.in-use` file, which a running worker
/// locks so that pruning never removes the source it runs (see `crate::cache`).
pub(crate) fn mark_usable(dir: &Path) -> Result<(), EnvError> {
    let path = dir.join(".in-use");
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map(drop)
        .map_err(EnvError::io("creating", &path))
}

/// Joins a bundle-relative path (always plain, `/`-separated components) onto `base`.
fn safe_join(base: &Path, rel: &str) -> PathBuf {
    let mut out = base.to_path_buf();
    for comp in Path::new(rel).components() {
        if let Component::Normal(part) = comp {
            out.push(part);
        }
    }
    out
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
