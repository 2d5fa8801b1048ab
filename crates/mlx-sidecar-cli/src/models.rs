//! `mlx-sidecar models`: the worker's converted models in the cache directory (through the
//! library's `cache` module): list them, remove one, or remove all that no worker uses.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use mlx_sidecar::cache::{self, CacheError, CachedModel, ModelKind};
use serde_json::json;

use super::args::{GlobalArgs, ModelsAction, ModelsArgs};
use super::exit::UsageError;

/// Runs `models`.
pub(crate) fn run(global: &GlobalArgs, args: &ModelsArgs) -> anyhow::Result<ExitCode> {
    let dir = cache_dir(global)?;
    match args.action.as_ref().unwrap_or(&ModelsAction::List) {
        ModelsAction::List => {
            let models = cache::list_models(&dir)?;
            if args.json {
                let list: Vec<_> = models.iter().map(to_json).collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({ "cache_dir": dir, "models": list }))?
                );
            } else {
                print_list(&dir, &models);
            }
        }
        ModelsAction::Rm { name } => {
            let removed = cache::remove_model(&dir, name).map_err(|e| match e {
                CacheError::NotFound { .. } => {
                    anyhow::Error::new(UsageError(format!("{e}; `mlx-sidecar models` lists them")))
                }
                other => other.into(),
            })?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&to_json(&removed))?);
            } else {
                println!(
                    "removed {} ({})",
                    removed.name,
                    human_bytes(removed.size_bytes)
                );
            }
        }
        ModelsAction::Prune => {
            let report = cache::prune_models(&dir)?;
            if args.json {
                let removed: Vec<_> = report.removed.iter().map(to_json).collect();
                let kept: Vec<_> = report.in_use.iter().map(to_json).collect();
                let out = json!({ "removed": removed, "in_use": kept, "freed_bytes": report.freed_bytes() });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                for m in &report.removed {
                    println!("removed {} ({})", m.name, human_bytes(m.size_bytes));
                }
                for m in &report.in_use {
                    println!("kept    {} (in use by a running worker)", m.name);
                }
                println!(
                    "freed {} in {}",
                    human_bytes(report.freed_bytes()),
                    dir.join("models").display()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--cache-dir` (or `MLX_SIDECAR_CACHE_DIR`), else the worker's default.
pub(crate) fn cache_dir(global: &GlobalArgs) -> anyhow::Result<PathBuf> {
    match &global.cache_dir {
        Some(dir) => Ok(dir.clone()),
        None => cache::default_cache_dir().context("finding the cache directory"),
    }
}

fn print_list(dir: &std::path::Path, models: &[CachedModel]) {
    if models.is_empty() {
        println!("no converted models in {}", dir.join("models").display());
        return;
    }
    println!("{:<44} {:>9}  {:<14} SOURCE", "NAME", "SIZE", "LAST USED");
    for m in models {
        let used = if m.in_use {
            "in use now".to_owned()
        } else {
            m.last_used.map(ago).unwrap_or_else(|| "-".to_owned())
        };
        println!(
            "{:<44} {:>9}  {:<14} {}",
            m.name,
            human_bytes(m.size_bytes),
            used,
            source(m)
        );
    }
    let total: u64 = models.iter().map(|m| m.size_bytes).sum();
    println!(
        "{} models, {} in {}",
        models.len(),
        human_bytes(total),
        dir.join("models").display()
    );
}

fn source(m: &CachedModel) -> String {
    let path = m
        .source
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "?".to_owned());
    match m.kind {
        ModelKind::ConvertedGguf => path,
        ModelKind::Float32Copy => format!("float32 copy of {path}"),
    }
}

fn to_json(m: &CachedModel) -> serde_json::Value {
    let since_epoch = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .ok()
    };
    json!({
        "name": m.name,
        "path": m.path,
        "kind": match m.kind {
            ModelKind::ConvertedGguf => "converted_gguf",
            ModelKind::Float32Copy => "float32_copy",
        },
        "source": m.source,
        "size_bytes": m.size_bytes,
        "last_used_unix": m.last_used.and_then(since_epoch),
        "in_use": m.in_use,
    })
}

/// "1.2 GB", "340 MB", "12 kB".
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// "5 min ago", "3 days ago".
fn ago(t: SystemTime) -> String {
    let secs = t.elapsed().map(|d| d.as_secs()).unwrap_or(0);
    match secs {
        0..60 => "just now".to_owned(),
        60..3600 => format!("{} min ago", secs / 60),
        3600..86400 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86400),
    }
}
