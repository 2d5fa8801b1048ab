//! The in-process baseline path: the workload in one Python process calling mlx-lm directly
//! (`stream_generate` for one stream, `BatchGenerator` for several), no transport at all.

use anyhow::Context;
use serde::Deserialize;

use super::measure::{LevelRun, RequestRecord};
use super::python::PythonEnv;
use super::workload::Workload;
use super::{ModelArgs, PathRun};

#[derive(Deserialize)]
struct ScriptLevel {
    concurrency: usize,
    wall_s: f64,
    cpu_s: f64,
    requests: Vec<RequestRecord>,
}

#[derive(Deserialize)]
struct ScriptResult {
    levels: Vec<ScriptLevel>,
    peak_rss_bytes: u64,
}

/// Arguments of `bench_inprocess.py run|serve`: the model as the worker loads it, the tokenizer
/// directory `prepare` wrote, the workload file (`-`: stdin).
pub(crate) fn script_args(
    command: &str,
    model: &ModelArgs,
    mlx_lm_dir: &std::path::Path,
    workload: &str,
) -> Vec<String> {
    let mut args = vec![command.to_owned()];
    args.extend(model.script_args());
    args.extend([
        "--tokenizer-dir".to_owned(),
        mlx_lm_dir.display().to_string(),
        "--workload".to_owned(),
        workload.to_owned(),
    ]);
    args
}

/// Runs the workload in `bench_inprocess.py run`.
pub(crate) async fn run(
    py: &PythonEnv,
    model: &ModelArgs,
    workload: &Workload,
    mlx_lm_dir: &std::path::Path,
) -> anyhow::Result<PathRun> {
    let args = script_args("run", model, mlx_lm_dir, "-");
    let input = serde_json::to_vec(&workload.to_inprocess_json())?;
    let (value, _) = py.run_script(&args, Some(&input)).await?;
    let result: ScriptResult =
        serde_json::from_value(value).context("reading bench_inprocess.py's results")?;
    let levels = result
        .levels
        .into_iter()
        .map(|l| LevelRun {
            concurrency: l.concurrency,
            wall_s: l.wall_s,
            server_cpu_s: l.cpu_s,
            client_cpu_s: 0.0,
            requests: l.requests,
        })
        .collect();
    Ok(PathRun {
        levels,
        server_peak_rss_bytes: result.peak_rss_bytes,
        client_peak_rss_bytes: 0,
    })
}
