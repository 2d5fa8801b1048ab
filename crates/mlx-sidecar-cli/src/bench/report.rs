//! The bench's results: per-path summaries, the ratios of the full path to the two
//! baselines, the targets with whether each is met, the printed table, and the JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::ceiling::CeilingReport;
use super::measure::{LevelRun, LevelSummary, merge_passes};
use super::workload::WorkloadSpec;
use super::{PathKind, PathRun};

/// One path's results.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PathReport {
    /// `sidecar`, `inprocess` or `http`.
    pub(crate) path: PathKind,
    /// Summary figures, one per level.
    pub(crate) levels: Vec<LevelSummary>,
    /// Peak resident memory of the serving process (worker, baseline script, HTTP server).
    pub(crate) server_peak_rss_bytes: u64,
    /// Peak resident memory of the Rust process while it drove this path (supervisor and
    /// client); 0 for the in-process path.
    pub(crate) client_peak_rss_bytes: u64,
    /// Summary figures of each pass on its own, one list per pass (empty with one pass).
    pub(crate) pass_levels: Vec<Vec<LevelSummary>>,
    /// The raw per-request measurements.
    pub(crate) raw: Vec<LevelRun>,
}

impl PathReport {
    /// Summarizes a path's raw runs, one per pass: each pass on its own, and all merged.
    pub(crate) fn new(path: PathKind, passes: Vec<PathRun>) -> anyhow::Result<Self> {
        let pass_levels = if passes.len() > 1 {
            passes
                .iter()
                .map(|run| run.levels.iter().map(LevelSummary::from_records).collect())
                .collect()
        } else {
            Vec::new()
        };
        let run = merge_passes(passes)?;
        Ok(Self {
            path,
            levels: run.levels.iter().map(LevelSummary::from_records).collect(),
            server_peak_rss_bytes: run.server_peak_rss_bytes,
            client_peak_rss_bytes: run.client_peak_rss_bytes,
            pass_levels,
            raw: run.levels,
        })
    }

    fn level(&self, concurrency: usize) -> Option<&LevelSummary> {
        self.levels.iter().find(|l| l.concurrency == concurrency)
    }

    /// Aggregate tokens per second at one level, pass by pass.
    fn aggregate_by_pass(&self, concurrency: usize) -> Vec<f64> {
        self.pass_levels
            .iter()
            .filter_map(|levels| levels.iter().find(|l| l.concurrency == concurrency))
            .map(|l| l.aggregate_tps)
            .collect()
    }
}

/// The full path compared with a baseline at one level.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Ratio {
    /// Requests in flight at once.
    pub(crate) concurrency: usize,
    /// `inprocess` or `http`.
    pub(crate) baseline: PathKind,
    /// Decode tokens per second per stream, sidecar / baseline.
    pub(crate) decode_tps: f64,
    /// Aggregate tokens per second, sidecar / baseline.
    pub(crate) aggregate_tps: f64,
    /// Time to first token (p50), sidecar minus baseline, milliseconds.
    pub(crate) ttft_p50_delta_ms: f64,
    /// Time to first token (p50), sidecar / baseline.
    pub(crate) ttft_p50: f64,
    /// Aggregate tokens per second, sidecar / baseline, pass by pass (the sidecar's pass i
    /// against the baseline's pass i; empty with one pass): how far the machine's drift moves
    /// one pass's ratio.
    pub(crate) aggregate_tps_by_pass: Vec<f64>,
}

impl Ratio {
    /// The per-pass ratios as text ("0.93 1.12 1.01"), empty with one pass.
    fn by_pass(&self) -> String {
        let parts: Vec<String> = self
            .aggregate_tps_by_pass
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect();
        parts.join(" ")
    }
}

/// One of the targets.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Target {
    /// What is compared.
    pub(crate) name: String,
    /// The measured value.
    pub(crate) measured: f64,
    /// The bound it must meet.
    pub(crate) bound: f64,
    /// `>=` or `<=`.
    pub(crate) relation: &'static str,
    /// Whether it is met.
    pub(crate) met: bool,
}

/// How many requests generated the same output on two paths.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct OutputMatch {
    /// The two paths.
    pub(crate) paths: (PathKind, PathKind),
    /// What was compared: "token ids" where both paths report them, else "text" (the
    /// detokenizers differ in how they show invalid UTF-8, so text can differ where ids
    /// don't).
    pub(crate) by: &'static str,
    /// Requests with identical text.
    pub(crate) identical: usize,
    /// Requests compared.
    pub(crate) compared: usize,
}

/// Everything the bench measured, as written to `--json`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// The command line that produced it.
    pub(crate) command: String,
    /// When it started (Unix seconds).
    pub(crate) started_unix_s: u64,
    /// The machine.
    pub(crate) machine: BTreeMap<String, serde_json::Value>,
    /// Versions of the software involved.
    pub(crate) versions: BTreeMap<String, serde_json::Value>,
    /// The model as the worker's loader describes it.
    pub(crate) model: serde_json::Value,
    /// The workload.
    pub(crate) workload: WorkloadSpec,
    /// Results per path.
    pub(crate) paths: Vec<PathReport>,
    /// Full path / baselines.
    pub(crate) ratios: Vec<Ratio>,
    /// The targets.
    pub(crate) targets: Vec<Target>,
    /// Whether the paths generated the same text.
    pub(crate) outputs: Vec<OutputMatch>,
    /// The transport ceiling, when measured.
    pub(crate) transport_ceiling: Option<CeilingReport>,
}

fn div(a: f64, b: f64) -> f64 {
    if b == 0.0 { 0.0 } else { a / b }
}

impl Report {
    /// Every (path, concurrency, summary) row, by concurrency level, then in path order.
    fn rows_by_level(&self) -> impl Iterator<Item = (&PathReport, usize, &LevelSummary)> {
        let mut levels: Vec<usize> = self
            .paths
            .iter()
            .flat_map(|p| p.levels.iter().map(|l| l.concurrency))
            .collect();
        levels.sort_unstable();
        levels.dedup();
        levels.into_iter().flat_map(move |c| {
            self.paths
                .iter()
                .filter_map(move |p| p.level(c).map(|l| (p, c, l)))
        })
    }

    /// Fills in the ratios, the targets and the output comparison from the paths.
    pub(crate) fn compare(&mut self) {
        self.ratios.clear();
        self.targets.clear();
        self.outputs.clear();
        let Some(sidecar) = self.path(PathKind::Sidecar).cloned() else {
            return;
        };
        for baseline in [PathKind::Inprocess, PathKind::Http, PathKind::Replicas] {
            let Some(base) = self.path(baseline).cloned() else {
                continue;
            };
            for s in &sidecar.levels {
                let Some(b) = base.level(s.concurrency) else {
                    continue;
                };
                self.ratios.push(Ratio {
                    concurrency: s.concurrency,
                    baseline,
                    decode_tps: div(s.decode_tps_per_stream, b.decode_tps_per_stream),
                    aggregate_tps: div(s.aggregate_tps, b.aggregate_tps),
                    ttft_p50_delta_ms: s.ttft_p50_ms - b.ttft_p50_ms,
                    ttft_p50: div(s.ttft_p50_ms, b.ttft_p50_ms),
                    aggregate_tps_by_pass: sidecar
                        .aggregate_by_pass(s.concurrency)
                        .iter()
                        .zip(base.aggregate_by_pass(s.concurrency))
                        .map(|(&a, b)| div(a, b))
                        .collect(),
                });
            }
        }
        let ratio = |c: usize, base: PathKind| {
            self.ratios
                .iter()
                .find(|r| r.concurrency == c && r.baseline == base)
                .cloned()
        };
        let mut targets = Vec::new();
        if let Some(r) = ratio(1, PathKind::Inprocess) {
            targets.push(Target {
                name: "single stream: decode tok/s, sidecar / in-process".into(),
                measured: r.decode_tps,
                bound: 0.99,
                relation: ">=",
                met: r.decode_tps >= 0.99,
            });
            targets.push(Target {
                name: "single stream: TTFT p50, sidecar - in-process (ms)".into(),
                measured: r.ttft_p50_delta_ms,
                bound: 2.0,
                relation: "<=",
                met: r.ttft_p50_delta_ms <= 2.0,
            });
        }
        for s in &sidecar.levels {
            let c = s.concurrency;
            if let Some(r) = ratio(c, PathKind::Inprocess) {
                targets.push(Target {
                    name: format!("concurrency {c}: aggregate tok/s, sidecar / in-process"),
                    measured: r.aggregate_tps,
                    bound: 0.95,
                    relation: ">=",
                    met: r.aggregate_tps >= 0.95,
                });
            }
            if let Some(r) = ratio(c, PathKind::Http) {
                targets.push(Target {
                    name: format!("concurrency {c}: aggregate tok/s, sidecar / mlx-lm HTTP"),
                    measured: r.aggregate_tps,
                    bound: 1.0,
                    relation: ">=",
                    met: r.aggregate_tps >= 1.0,
                });
            }
        }
        self.targets = targets;
        let kinds: Vec<PathKind> = self.paths.iter().map(|p| p.path).collect();
        for (i, &a) in kinds.iter().enumerate() {
            for &b in &kinds[i + 1..] {
                if let (Some(pa), Some(pb)) = (self.path(a), self.path(b)) {
                    let pairs: Vec<_> = pa
                        .raw
                        .iter()
                        .zip(&pb.raw)
                        .flat_map(|(la, lb)| la.requests.iter().zip(&lb.requests))
                        .collect();
                    let by_ids = pairs
                        .iter()
                        .all(|(ra, rb)| !ra.token_ids.is_empty() && !rb.token_ids.is_empty());
                    let identical = pairs
                        .iter()
                        .filter(|(ra, rb)| {
                            if by_ids {
                                ra.token_ids == rb.token_ids
                            } else {
                                ra.text == rb.text
                            }
                        })
                        .count();
                    self.outputs.push(OutputMatch {
                        paths: (a, b),
                        by: if by_ids { "token ids" } else { "text" },
                        identical,
                        compared: pairs.len(),
                    });
                }
            }
        }
    }

    fn path(&self, kind: PathKind) -> Option<&PathReport> {
        self.paths.iter().find(|p| p.path == kind)
    }

    /// The human-readable table, ratios, targets and memory.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        if self.workload.passes > 1 {
            let _ = writeln!(
                out,
                "{} passes, paths alternating; each path's figures are over all its passes\n",
                self.workload.passes
            );
        }
        let _ = writeln!(
            out,
            "{:<11} {:>5} {:>10} {:>10} {:>12} {:>12} {:>13} {:>13} {:>9}",
            "path",
            "conc",
            "TTFT p50",
            "TTFT p99",
            "decode t/s",
            "aggr. t/s",
            "server CPU",
            "client CPU",
            "tok/msg"
        );
        let _ = writeln!(
            out,
            "{:<11} {:>5} {:>10} {:>10} {:>12} {:>12} {:>13} {:>13} {:>9}",
            "", "", "ms", "ms", "per stream", "", "s/1k tok", "s/1k tok", ""
        );
        for (p, c, l) in self.rows_by_level() {
            let _ = writeln!(
                out,
                "{:<11} {:>5} {:>10.1} {:>10.1} {:>12.1} {:>12.1} {:>13.3} {:>13.4} {:>9.2}",
                p.path.name(),
                c,
                l.ttft_p50_ms,
                l.ttft_p99_ms,
                l.decode_tps_per_stream,
                l.aggregate_tps,
                l.server_cpu_s_per_1k_tokens,
                l.client_cpu_s_per_1k_tokens,
                l.tokens_per_message
            );
        }
        let _ = writeln!(out, "\npeak resident memory:");
        for p in &self.paths {
            let _ = write!(
                out,
                "  {:<11} server {:>8.1} MiB",
                p.path.name(),
                mib(p.server_peak_rss_bytes)
            );
            if p.client_peak_rss_bytes > 0 {
                let _ = write!(
                    out,
                    "   Rust side {:>7.1} MiB",
                    mib(p.client_peak_rss_bytes)
                );
            }
            let _ = writeln!(out);
        }
        if !self.ratios.is_empty() {
            let _ = writeln!(out, "\nsidecar vs baselines:");
            let _ = writeln!(
                out,
                "  {:>5} {:<10} {:>12} {:>12} {:>14}  {}",
                "conc",
                "baseline",
                "decode",
                "aggregate",
                "TTFT p50 Δ ms",
                if self.workload.passes > 1 {
                    "aggregate, pass by pass"
                } else {
                    ""
                }
            );
            for r in &self.ratios {
                let _ = writeln!(
                    out,
                    "  {:>5} {:<10} {:>12.3} {:>12.3} {:>+14.2}  {}",
                    r.concurrency,
                    r.baseline.name(),
                    r.decode_tps,
                    r.aggregate_tps,
                    r.ttft_p50_delta_ms,
                    r.by_pass()
                );
            }
        }
        if !self.targets.is_empty() {
            let _ = writeln!(out, "\ntargets:");
            for t in &self.targets {
                let _ = writeln!(
                    out,
                    "  [{}] {}: {:.3} (needs {} {})",
                    if t.met { "met" } else { "MISSED" },
                    t.name,
                    t.measured,
                    t.relation,
                    t.bound
                );
            }
        }
        for o in &self.outputs {
            let _ = writeln!(
                out,
                "identical output ({}) {} vs {}: {}/{}",
                o.by,
                o.paths.0.name(),
                o.paths.1.name(),
                o.identical,
                o.compared
            );
        }
        if let Some(c) = &self.transport_ceiling {
            out.push('\n');
            out.push_str(&c.render());
        }
        out
    }

    /// The same figures as Markdown (machine, versions, command, tables, ratios, targets),
    /// ready to paste into BENCHMARKS.md.
    pub(crate) fn render_markdown(&self) -> String {
        let mut out = String::new();
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let value = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let _ = writeln!(
            out,
            "Command: `{}`
",
            self.command
        );
        let machine: Vec<String> = self
            .machine
            .iter()
            .map(|(k, v)| format!("{k} {}", value(v)))
            .collect();
        let _ = writeln!(
            out,
            "Machine: {}
",
            machine.join(", ")
        );
        let versions: Vec<String> = self
            .versions
            .iter()
            .map(|(k, v)| format!("{k} {}", value(v)))
            .collect();
        let _ = writeln!(
            out,
            "Versions: {}
",
            versions.join(", ")
        );
        let w = &self.workload;
        let passes = if w.passes > 1 {
            format!(
                " {} passes, paths alternating (each path started afresh every pass); figures \
                 over all passes.",
                w.passes
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "Workload: prompts of {} tokens, {} generated tokens per request (greedy, \
             end-of-sequence banned), levels {:?}, max({} x concurrency, {}) requests per level, \
             warm-up first.{passes}\n",
            w.prompt_tokens, w.max_tokens, w.levels, w.rounds, w.min_requests
        );
        let _ = writeln!(
            out,
            "| path | conc | TTFT p50 ms | TTFT p99 ms | decode tok/s/stream | aggregate tok/s \
             | server CPU s/1k tok | Rust CPU s/1k tok | tok/msg |"
        );
        let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|--:|");
        for (p, c, l) in self.rows_by_level() {
            let _ = writeln!(
                out,
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.3} | {:.4} | {:.2} |",
                p.path.name(),
                c,
                l.ttft_p50_ms,
                l.ttft_p99_ms,
                l.decode_tps_per_stream,
                l.aggregate_tps,
                l.server_cpu_s_per_1k_tokens,
                l.client_cpu_s_per_1k_tokens,
                l.tokens_per_message
            );
        }
        let _ = writeln!(
            out,
            "\n| path | serving process peak RSS MiB | Rust process peak RSS MiB |"
        );
        let _ = writeln!(out, "|---|--:|--:|");
        for p in &self.paths {
            let rust = if p.client_peak_rss_bytes > 0 {
                format!("{:.1}", mib(p.client_peak_rss_bytes))
            } else {
                "-".to_owned()
            };
            let _ = writeln!(
                out,
                "| {} | {:.1} | {rust} |",
                p.path.name(),
                mib(p.server_peak_rss_bytes)
            );
        }
        if !self.ratios.is_empty() {
            let by_pass = self.workload.passes > 1;
            let _ = writeln!(
                out,
                "\n| conc | sidecar / baseline | decode | aggregate | TTFT p50 difference ms |{}",
                if by_pass {
                    " aggregate, pass by pass |"
                } else {
                    ""
                }
            );
            let _ = writeln!(
                out,
                "|--:|---|--:|--:|--:|{}",
                if by_pass { "---|" } else { "" }
            );
            for r in &self.ratios {
                let _ = write!(
                    out,
                    "| {} | {} | {:.3} | {:.3} | {:+.2} |",
                    r.concurrency,
                    r.baseline.name(),
                    r.decode_tps,
                    r.aggregate_tps,
                    r.ttft_p50_delta_ms
                );
                if by_pass {
                    let _ = write!(out, " {} |", r.by_pass());
                }
                let _ = writeln!(out);
            }
        }
        if !self.targets.is_empty() {
            let _ = writeln!(out, "\n| target | measured | needs | met |");
            let _ = writeln!(out, "|---|--:|--:|---|");
            for t in &self.targets {
                let _ = writeln!(
                    out,
                    "| {} | {:.3} | {} {} | {} |",
                    t.name,
                    t.measured,
                    t.relation,
                    t.bound,
                    if t.met { "yes" } else { "**no**" }
                );
            }
        }
        for o in &self.outputs {
            let _ = writeln!(
                out,
                "\nIdentical output ({}), {} vs {}: {}/{} requests.",
                o.by,
                o.paths.0.name(),
                o.paths.1.name(),
                o.identical,
                o.compared
            );
        }
        if let Some(c) = &self.transport_ceiling {
            out.push('\n');
            out.push_str(&c.render_markdown());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::measure::RequestRecord;

    /// One pass of one level: `tokens` tokens in `wall_s` seconds (one request).
    fn pass(wall_s: f64, tokens: u64) -> PathRun {
        PathRun {
            levels: vec![LevelRun {
                concurrency: 4,
                wall_s,
                server_cpu_s: 0.0,
                client_cpu_s: 0.0,
                requests: vec![RequestRecord {
                    start: 0.0,
                    first_token: 0.1,
                    last_token: wall_s,
                    end: wall_s,
                    tokens,
                    prompt_tokens: 8,
                    text: String::new(),
                    messages: tokens,
                    token_ids: vec![1; tokens as usize],
                    server_ttft_ms: None,
                }],
            }],
            server_peak_rss_bytes: 0,
            client_peak_rss_bytes: 0,
        }
    }

    fn compared(paths: Vec<PathReport>, passes: usize) -> Report {
        let mut report = Report {
            command: String::new(),
            started_unix_s: 0,
            machine: BTreeMap::new(),
            versions: BTreeMap::new(),
            model: serde_json::Value::Null,
            workload: WorkloadSpec {
                levels: vec![4],
                prompt_tokens: 8,
                max_tokens: 100,
                rounds: 1,
                min_requests: 1,
                warmup_tokens: 1,
                passes,
                paired: None,
            },
            paths,
            ratios: Vec::new(),
            targets: Vec::new(),
            outputs: Vec::new(),
            transport_ceiling: None,
        };
        report.compare();
        report
    }

    #[test]
    fn ratios_are_given_pass_by_pass_as_well_as_over_all_passes() {
        let path = |kind, passes| PathReport::new(kind, passes).unwrap_or_else(|e| panic!("{e}"));
        // The sidecar: 100 tokens in 1 s, then in 2 s; in-process: in 2 s, then in 1 s.
        let sidecar = path(PathKind::Sidecar, vec![pass(1.0, 100), pass(2.0, 100)]);
        let inprocess = path(PathKind::Inprocess, vec![pass(2.0, 100), pass(1.0, 100)]);
        assert_eq!(sidecar.pass_levels.len(), 2);
        let report = compared(vec![sidecar, inprocess], 2);
        let [ratio] = report.ratios.as_slice() else {
            panic!("one ratio expected, got {:?}", report.ratios);
        };
        assert!((ratio.aggregate_tps - 1.0).abs() < 1e-9, "{ratio:?}");
        assert_eq!(ratio.aggregate_tps_by_pass, [2.0, 0.5]);
        assert!(report.render().contains("2.00 0.50"));
        assert!(report.render_markdown().contains("| 2.00 0.50 |"));

        // One pass: no pass-by-pass figures.
        let one = compared(
            vec![
                path(PathKind::Sidecar, vec![pass(1.0, 100)]),
                path(PathKind::Inprocess, vec![pass(2.0, 100)]),
            ],
            1,
        );
        assert!(one.paths[0].pass_levels.is_empty());
        assert!(one.ratios[0].aggregate_tps_by_pass.is_empty());
        assert!(!one.render_markdown().contains("pass by pass"));
    }
}
