//! `mlx-sidecar bench`, run for real on the tiny model with a tiny workload: all three paths
//! (supervised worker over gRPC, mlx-lm in-process, mlx-lm's HTTP server) and the transport
//! ceiling (the worker's synthetic-token mode). Checks the JSON's shape and that its values
//! are sane, not timing targets.

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use super::support::{python, tiny_model};

const BIN: &str = env!("CARGO_BIN_EXE_mlx-sidecar");
const DEADLINE: Duration = Duration::from_secs(300);
const LEVELS: [u64; 2] = [1, 2];
const MAX_TOKENS: u64 = 6;

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

fn check_level(path: &str, level: &Value, concurrency: u64) {
    assert_eq!(level["concurrency"].as_u64(), Some(concurrency), "{path}");
    // Two requests per level (--rounds 1 --min-requests 2), each exactly MAX_TOKENS long.
    assert_eq!(level["requests"].as_u64(), Some(2), "{path}: {level}");
    assert_eq!(
        level["tokens"].as_u64(),
        Some(2 * MAX_TOKENS),
        "{path}: {level}"
    );
    let (p50, p99) = (num(level, "ttft_p50_ms"), num(level, "ttft_p99_ms"));
    assert!(
        p50 > 0.0 && p50 <= p99 && p99 < 60_000.0,
        "{path}: ttft {p50} {p99}"
    );
    for key in ["decode_tps_per_stream", "aggregate_tps", "wall_s"] {
        assert!(num(level, key) > 0.0, "{path}: {key} in {level}");
    }
    for key in ["server_cpu_s", "client_cpu_s", "server_cpu_s_per_1k_tokens"] {
        assert!(num(level, key) >= 0.0, "{path}: {key} in {level}");
    }
}

/// The tiny workload of these tests: 12-token prompts, `max_tokens` each, two requests a
/// level, a 2-token warm-up.
fn small_workload(max_tokens: &str) -> [&str; 10] {
    [
        "--prompt-tokens",
        "12",
        "--max-tokens",
        max_tokens,
        "--rounds",
        "1",
        "--min-requests",
        "2",
        "--warmup-tokens",
        "2",
    ]
}

/// Runs `mlx-sidecar bench ARGS` on the tiny model in `scratch`, within [`DEADLINE`].
fn run_bench(scratch: &std::path::Path, args: &[&str]) -> std::process::Output {
    let model = tiny_model().display().to_string();
    run_bench_on(scratch, &["--model", &model], args)
}

/// Runs `mlx-sidecar MODEL_ARGS bench ARGS` in `scratch`, within [`DEADLINE`].
fn run_bench_on(
    scratch: &std::path::Path,
    model_args: &[&str],
    args: &[&str],
) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    for var in [
        "MLX_SIDECAR_ENV_DIR",
        "MLX_SIDECAR_MODEL",
        "MLX_SIDECAR_WORKER_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("MLX_SIDECAR_CACHE_DIR", scratch.join("cache"))
        .arg("--python")
        .arg(python())
        .arg("--env-dir")
        .arg(scratch.join("env"))
        .args(model_args)
        .arg("bench")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("start mlx-sidecar bench");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(out) => out.expect("wait for mlx-sidecar bench"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("mlx-sidecar bench did not finish within {DEADLINE:?}");
        }
    }
}

#[test]
fn bench_measures_three_paths_and_the_transport_ceiling() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let (json, chart) = (
        scratch.path().join("bench.json"),
        scratch.path().join("bench.svg"),
    );
    let max_tokens = MAX_TOKENS.to_string();
    let (json_arg, chart_arg) = (json.display().to_string(), chart.display().to_string());
    let out = run_bench(
        scratch.path(),
        &[
            &["--concurrency", "1,2"][..],
            &small_workload(&max_tokens),
            &[
                "--transport-ceiling",
                "--ceiling-concurrency",
                "1,2",
                "--ceiling-tokens",
                "40",
                "--ceiling-unary-calls",
                "20",
                "--json",
                &json_arg,
                "--chart",
                &chart_arg,
            ][..],
        ]
        .concat(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("targets:") && stdout.contains("transport ceiling"),
        "{stdout}"
    );

    let report: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("read the JSON")).expect("JSON");
    for key in ["command", "machine", "versions", "model", "workload"] {
        assert!(!report[key].is_null(), "{key} missing");
    }
    assert_eq!(report["versions"]["mlx_lm"].as_str(), Some("0.32.2"));
    let paths = report["paths"].as_array().expect("paths");
    let names: Vec<&str> = paths.iter().filter_map(|p| p["path"].as_str()).collect();
    assert_eq!(names, ["sidecar", "inprocess", "http"]);
    for p in paths {
        let name = p["path"].as_str().unwrap_or_default();
        let levels = p["levels"].as_array().expect("levels");
        assert_eq!(levels.len(), LEVELS.len(), "{name}");
        for (level, c) in levels.iter().zip(LEVELS) {
            check_level(name, level, c);
        }
        assert!(
            num(p, "server_peak_rss_bytes") > 20e6,
            "{name}: server memory"
        );
        if name != "inprocess" {
            assert!(
                num(p, "client_peak_rss_bytes") > 1e6,
                "{name}: client memory"
            );
        }
    }
    // Greedy and the same prompts: the single stream generates the same ids on both paths
    // that report ids.
    let ids = |i: usize| paths[i]["raw"][0]["requests"].clone();
    let (sidecar, inprocess) = (ids(0), ids(1));
    for (a, b) in sidecar
        .as_array()
        .into_iter()
        .flatten()
        .zip(inprocess.as_array().into_iter().flatten())
    {
        assert_eq!(a["token_ids"], b["token_ids"]);
        assert_eq!(
            a["token_ids"].as_array().map(Vec::len),
            Some(MAX_TOKENS as usize)
        );
    }
    let ratios = report["ratios"].as_array().expect("ratios");
    assert_eq!(ratios.len(), 2 * LEVELS.len());
    for r in ratios {
        assert!(
            num(r, "aggregate_tps") > 0.0 && num(r, "decode_tps") > 0.0,
            "{r}"
        );
    }
    // Two single-stream targets, then two per level.
    let targets = report["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 2 + 2 * LEVELS.len());
    assert!(
        targets
            .iter()
            .all(|t| t["met"].is_boolean() && t["name"].is_string())
    );

    let ceiling = &report["transport_ceiling"];
    let modes = ceiling["modes"].as_array().expect("ceiling modes");
    assert_eq!(modes.len(), 2);
    for (mode, one_per_message) in modes.iter().zip([false, true]) {
        let levels = mode["levels"].as_array().expect("ceiling levels");
        assert_eq!(levels.len(), LEVELS.len());
        for l in levels {
            assert!(num(l, "aggregate_tps") > 0.0, "{l}");
            let per_message = num(l, "tokens_per_message");
            if one_per_message {
                assert_eq!(per_message, 1.0, "{l}");
            } else {
                assert!(per_message >= 1.0, "{l}");
            }
        }
    }
    for u in ceiling["unary"].as_array().expect("unary") {
        assert!(
            num(u, "p50_us") > 0.0 && num(u, "p99_us") >= num(u, "p50_us"),
            "{u}"
        );
    }

    let svg = std::fs::read_to_string(&chart).expect("read the chart");
    assert!(
        svg.starts_with("<svg") && svg.contains("sidecar"),
        "not an SVG chart"
    );
}

#[test]
fn bench_paired_alternates_requests_and_waves_between_the_worker_and_the_baseline_in_sessions() {
    const PAIRS: usize = 6;
    let scratch = tempfile::tempdir().expect("tempdir");
    let json = scratch.path().join("paired.json");
    let (pairs_arg, max_tokens, json_arg) = (
        PAIRS.to_string(),
        MAX_TOKENS.to_string(),
        json.display().to_string(),
    );
    let out = run_bench(
        scratch.path(),
        &[
            "--paired",
            &pairs_arg,
            "--passes",
            "2",
            "--concurrency",
            "1,4",
            "--min-requests",
            "6",
            "--prompt-tokens",
            "12",
            "--max-tokens",
            &max_tokens,
            "--warmup-tokens",
            "2",
            "--worker-arg=--stream-interval-ms=0",
            "--json",
            &json_arg,
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench --paired failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("single stream, paired: 6 pairs"),
        "{stdout}"
    );

    let report: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("read the JSON")).expect("JSON");
    let pairs = report["pairs"].as_array().expect("pairs");
    assert_eq!(pairs.len(), PAIRS);
    for (i, pair) in pairs.iter().enumerate() {
        // Two sessions of three pairs; the order swaps every pair; both requests of a pair
        // generate the same greedy ids.
        // The worker starts first in the first session, the baseline in the second.
        assert_eq!(pair["pass"].as_u64(), Some((i / 3) as u64), "{pair}");
        assert_eq!(
            pair["worker_started_first"].as_bool(),
            Some(i < 3),
            "{pair}"
        );
        assert_eq!(
            pair["sidecar_first"].as_bool(),
            Some(i % 3 % 2 == 0),
            "{pair}"
        );
        for side in ["sidecar", "inprocess"] {
            let r = &pair[side];
            assert_eq!(r["tokens"].as_u64(), Some(MAX_TOKENS), "{side}: {r}");
            assert!(
                num(r, "start") <= num(r, "first_token")
                    && num(r, "first_token") <= num(r, "last_token"),
                "{side}: {r}"
            );
        }
        assert_eq!(pair["sidecar"]["token_ids"], pair["inprocess"]["token_ids"]);
        // The worker's own TTFT (from its final message) is part of the client's.
        let worker_ttft = num(&pair["sidecar"], "server_ttft_ms");
        let client_ttft =
            1e3 * (num(&pair["sidecar"], "first_token") - num(&pair["sidecar"], "start"));
        assert!(worker_ttft > 0.0 && worker_ttft <= client_ttft, "{pair}");
    }
    let summary = &report["summary"];
    assert_eq!(summary["pairs"].as_u64(), Some(PAIRS as u64));
    assert_eq!(summary["identical_token_ids"].as_u64(), Some(PAIRS as u64));
    for key in ["decode_ratio", "ttft_delta_ms"] {
        let m = &summary[key];
        assert!(
            num(m, "ci95_low") <= num(m, "median") && num(m, "median") <= num(m, "ci95_high"),
            "{key}: {m}"
        );
    }
    assert!(num(&summary["decode_ratio"], "median") > 0.0);
    assert!(num(summary, "worker_ttft_p50_ms") > 0.0, "{summary}");
    assert_eq!(
        summary["by_pass"].as_array().map(Vec::len),
        Some(2),
        "{summary}"
    );
    // Level 4: one wave of 8 requests (2 rounds of 4) on each path per pair, in the same
    // sessions and order as the single requests.
    let waves = report["waves"].as_array().expect("waves");
    assert_eq!(waves.len(), PAIRS);
    for (i, wave) in waves.iter().enumerate() {
        assert_eq!(wave["concurrency"].as_u64(), Some(4), "{wave}");
        assert_eq!(wave["pass"].as_u64(), Some((i / 3) as u64), "{wave}");
        assert_eq!(wave["sidecar_first"].as_bool(), Some(i % 3 % 2 == 0));
        let (s, b) = (&wave["sidecar"]["requests"], &wave["inprocess"]["requests"]);
        for side in [s, b] {
            let requests = side.as_array().expect("requests");
            assert_eq!(requests.len(), 8, "{wave}");
            assert!(
                requests
                    .iter()
                    .all(|r| r["tokens"].as_u64() == Some(MAX_TOKENS))
            );
        }
        let ids = |side: &Value| -> Vec<Value> {
            side.as_array()
                .expect("requests")
                .iter()
                .map(|r| r["token_ids"].clone())
                .collect()
        };
        assert_eq!(ids(s), ids(b), "{wave}");
        assert!(num(&wave["sidecar"], "wall_s") > 0.0 && num(&wave["inprocess"], "wall_s") > 0.0);
    }
    let level = &report["wave_summaries"][0];
    assert_eq!(level["concurrency"].as_u64(), Some(4), "{level}");
    assert_eq!(level["waves"].as_u64(), Some(PAIRS as u64));
    assert_eq!(
        level["identical_token_ids"],
        serde_json::json!([8 * PAIRS, 8 * PAIRS])
    );
    let m = &level["aggregate_ratio"];
    assert!(
        num(m, "ci95_low") <= num(m, "median") && num(m, "median") > 0.0,
        "{m}"
    );
    assert!(
        stdout.contains("4 streams, paired waves: 6 pairs of waves of 8 requests"),
        "{stdout}"
    );
    let targets = report["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 3);
    assert!(
        targets
            .iter()
            .all(|t| t["met"].is_boolean() && t["settled"].is_boolean())
    );
}

#[test]
fn bench_paired_refuses_the_options_of_the_level_design() {
    let scratch = tempfile::tempdir().expect("tempdir");
    // (`--paired N --paths A,B` pairs any two client paths: bench_paired_* above.)
    // Each level once: a level's pairs are shared out over the sessions.
    let out = run_bench(scratch.path(), &["--paired", "4", "--concurrency", "1,4,1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("each level once"), "{stderr}");
}

/// `--test-model` reaches every path: the worker and the in-process baseline both load the
/// worker's test model (written into the bench's scratch directory), not the default model.
#[test]
fn bench_with_the_test_model_runs_it_on_every_path() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let json = scratch.path().join("bench.json");
    let json_arg = json.display().to_string();
    let max_tokens = MAX_TOKENS.to_string();
    let out = run_bench_on(
        scratch.path(),
        &["--test-model"],
        &[
            &["--paths", "sidecar,inprocess", "--concurrency", "1"][..],
            &small_workload(&max_tokens),
            &["--json", &json_arg],
        ]
        .concat(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("read the JSON")).expect("JSON");
    assert!(
        report["model"].to_string().contains("test-model"),
        "the test model was benchmarked: {}",
        report["model"]
    );
    let paths = report["paths"].as_array().expect("paths");
    assert_eq!(paths.len(), 2, "{report}");
    for path in paths {
        let name = path["path"].as_str().unwrap_or("?");
        check_level(name, &path["levels"][0], 1);
    }
}
