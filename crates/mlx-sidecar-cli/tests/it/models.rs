//! `mlx-sidecar models` and `doctor`'s cache line, for real: tiny GGUF files converted by
//! the real worker into a temp cache, listed, pruned and removed, while a running daemon
//! keeps the one it serves.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cli::{Cli, DEADLINE, Running, text};
use crate::support;

/// Writes the tiny model as a GGUF file (`seed` makes a different file).
fn tiny_gguf(path: &Path, seed: u32) -> PathBuf {
    let status = std::process::Command::new(support::python())
        .args(["-m", "mlx_worker.testing.tiny_gguf"])
        .arg(path)
        .args(["--seed", &seed.to_string()])
        .env("PYTHONPATH", support::worker_dir())
        .status()
        .expect("run tiny_gguf");
    assert!(status.success());
    path.to_path_buf()
}

fn cli(cache: &Path) -> Cli {
    Cli::new().arg("--cache-dir").arg(cache)
}

fn models(cache: &Path) -> Vec<Value> {
    let out = cli(cache).args(["models", "--json"]).run();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    list["models"].as_array().cloned().unwrap_or_default()
}

fn named<'a>(list: &'a [Value], source: &Path) -> &'a Value {
    list.iter()
        .find(|m| m["source"] == source.display().to_string())
        .unwrap_or_else(|| panic!("no model from {}: {list:?}", source.display()))
}

/// `serve` of `model` on a socket in `dir`, once its worker is ready.
fn serve(cache: &Path, model: &Path, dir: &Path) -> Running {
    let socket = dir.join("d.sock");
    let serving = cli(cache)
        .arg("--model")
        .arg(model)
        .arg("serve")
        .arg("--socket")
        .arg(&socket)
        .spawn(Stdio::null());
    let until = Instant::now() + DEADLINE;
    loop {
        let out = Cli::new()
            .args(["status", "--json", "--connect"])
            .arg(format!("unix:{}", socket.display()))
            .run();
        if out.status.success() {
            let status: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
            if status["worker_state"] == "ready" {
                return serving;
            }
        }
        assert!(
            Instant::now() < until,
            "the daemon's worker never got ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn models_lists_prunes_and_removes_but_never_one_in_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let served = tiny_gguf(&dir.path().join("served.gguf"), 0);
    let spare = tiny_gguf(&dir.path().join("spare.gguf"), 1);
    for model in [&served, &spare] {
        let out = cli(&cache)
            .arg("--model")
            .arg(model)
            .args(["generate", "--no-daemon", "--max-tokens", "1", "hi"])
            .run();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }

    let list = models(&cache);
    assert_eq!(list.len(), 2, "{list:?}");
    for model in [&served, &spare] {
        let entry = named(&list, model);
        assert_eq!(entry["kind"], "converted_gguf");
        assert!(
            entry["size_bytes"].as_u64().unwrap_or(0) > 10_000,
            "{entry}"
        );
        assert!(entry["last_used_unix"].as_u64().is_some(), "{entry}");
        assert_eq!(entry["in_use"], false);
    }
    let served_name = named(&list, &served)["name"]
        .as_str()
        .expect("name")
        .to_owned();

    let human = cli(&cache).arg("models").run();
    assert!(text(&human.stdout).contains(&served_name));
    assert!(
        text(&human.stdout).contains("2 models"),
        "{}",
        text(&human.stdout)
    );

    let daemon = serve(&cache, &served, dir.path());
    assert_eq!(named(&models(&cache), &served)["in_use"], true);
    let refused = cli(&cache).args(["models", "rm", &served_name]).run();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("in use by a running worker"),
        "{}",
        text(&refused.stderr)
    );
    let pruned = cli(&cache).args(["models", "prune"]).run();
    assert!(pruned.status.success(), "{}", text(&pruned.stderr));
    let pruned = text(&pruned.stdout);
    assert!(
        pruned.contains(&format!("kept    {served_name}")),
        "{pruned}"
    );
    let left = models(&cache);
    assert_eq!(left.len(), 1);
    named(&left, &served);

    drop(daemon);
    // The daemon's worker dies with it (its stdin closes); its lock goes with the process.
    let until = Instant::now() + DEADLINE;
    while named(&models(&cache), &served)["in_use"] == true {
        assert!(
            Instant::now() < until,
            "the worker never let go of the model"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let removed = cli(&cache).args(["models", "rm", &served_name]).run();
    assert!(removed.status.success(), "{}", text(&removed.stderr));
    assert!(models(&cache).is_empty());

    let unknown = cli(&cache).args(["models", "rm", "no-such-model"]).run();
    assert_eq!(unknown.status.code(), Some(2));
    assert!(text(&unknown.stderr).contains("no converted model named no-such-model"));

    let doctor = cli(&cache).args(["doctor", "--json"]).run();
    let report: Value = serde_json::from_slice(&doctor.stdout).expect("doctor JSON");
    let checks = report["checks"].as_array().cloned().unwrap_or_default();
    let line = checks
        .iter()
        .find(|c| c["name"] == "cache")
        .expect("a cache check");
    assert!(
        line["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(&cache.display().to_string())),
        "{line}"
    );
}
