//! Paired waves: the concurrency targets measured wave by wave.
//!
//! At a level `c` above 1, a wave is the level's requests (`max(rounds × c, min-requests)`,
//! the same prompts every wave) run as a closed loop of `c` streams on one path, as the level
//! runs do. A wave pair runs one wave on each path, back to back, the order swapped every
//! pair; its aggregate ratio (sidecar / in-process generated tokens per second of wall time)
//! and its TTFT p50 difference are what the summary takes the medians of, with the same
//! distribution-free intervals as the single-stream pairs.

use serde::Serialize;

use super::super::measure::{LevelRun, LevelSummary, per_thousand_tokens, percentile};
use super::stats::{Median, PairedTarget, median_ci95, medians_by_pass, render_by_pass};

/// The aggregate target: at every level, the full path's aggregate tokens per second at
/// least this share of the in-process baseline's.
pub(crate) const AGGREGATE_TARGET: f64 = 0.95;

/// One wave on each path, with the same prompts, back to back.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WavePair {
    /// Streams in flight.
    pub(crate) concurrency: usize,
    /// Which pass (session of both processes, from 0) it ran in.
    pub(crate) pass: usize,
    /// Whether the worker was started before the baseline in that session.
    pub(crate) worker_started_first: bool,
    /// Whether the sidecar's wave ran first in this pair.
    pub(crate) sidecar_first: bool,
    /// The full path's wave (its CPU times are the worker's and this process's).
    pub(crate) sidecar: LevelRun,
    /// The in-process baseline's wave (its CPU time is the baseline's).
    pub(crate) inprocess: LevelRun,
}

/// One wave pair with each side summarized once (what the level's figures are made of).
struct WaveFigures {
    pass: usize,
    sidecar: LevelSummary,
    inprocess: LevelSummary,
}

impl WaveFigures {
    fn of(w: &WavePair) -> Self {
        Self {
            pass: w.pass,
            sidecar: LevelSummary::from_records(&w.sidecar),
            inprocess: LevelSummary::from_records(&w.inprocess),
        }
    }

    /// Sidecar / in-process aggregate tokens per second.
    fn aggregate_ratio(&self) -> f64 {
        if self.inprocess.aggregate_tps > 0.0 {
            self.sidecar.aggregate_tps / self.inprocess.aggregate_tps
        } else {
            0.0
        }
    }

    /// Sidecar minus in-process TTFT p50, ms.
    fn ttft_p50_delta_ms(&self) -> f64 {
        self.sidecar.ttft_p50_ms - self.inprocess.ttft_p50_ms
    }
}

/// The figures of one level's wave pairs.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WaveSummary {
    /// Streams in flight.
    pub(crate) concurrency: usize,
    /// Wave pairs run.
    pub(crate) waves: usize,
    /// Requests in each wave.
    pub(crate) requests_per_wave: usize,
    /// Sidecar / in-process aggregate tokens per second, wave pair by wave pair.
    pub(crate) aggregate_ratio: Median,
    /// All the sidecar's tokens over all its waves' wall time, divided by the same of the
    /// baseline.
    pub(crate) aggregate_ratio_pooled: f64,
    /// Sidecar minus in-process TTFT p50, ms, wave pair by wave pair.
    pub(crate) ttft_p50_delta_ms: Median,
    /// The median aggregate ratio and TTFT p50 difference of each pass.
    pub(crate) by_pass: Vec<(f64, f64)>,
    /// Median over the waves of each path's aggregate tokens per second.
    pub(crate) aggregate_tps_p50: (f64, f64),
    /// Median over the waves of each path's TTFT p50, ms.
    pub(crate) ttft_p50_ms: (f64, f64),
    /// Requests whose two runs (one on each path) generated the same token ids, and all
    /// request pairs.
    pub(crate) identical_token_ids: (usize, usize),
    /// CPU seconds per thousand generated tokens: the worker, the in-process baseline, this
    /// (Rust) process.
    pub(crate) cpu_s_per_1k_tokens: (f64, f64, f64),
}

impl WaveSummary {
    /// Summarizes the wave pairs of one level.
    pub(crate) fn new(concurrency: usize, waves: &[&WavePair]) -> Self {
        let figures: Vec<WaveFigures> = waves.iter().map(|&w| WaveFigures::of(w)).collect();
        let ratios: Vec<f64> = figures.iter().map(WaveFigures::aggregate_ratio).collect();
        let deltas: Vec<f64> = figures.iter().map(WaveFigures::ttft_p50_delta_ms).collect();
        // Sums and medians over the waves of one side's figure.
        let sum = |side: fn(&WaveFigures) -> &LevelSummary, f: fn(&LevelSummary) -> f64| {
            figures.iter().map(|w| f(side(w))).sum::<f64>()
        };
        let median = |f: fn(&LevelSummary) -> f64| {
            let of = |side: fn(&WaveFigures) -> &LevelSummary| {
                percentile(
                    &figures.iter().map(|w| f(side(w))).collect::<Vec<_>>(),
                    50.0,
                )
            };
            (of(|w| &w.sidecar), of(|w| &w.inprocess))
        };
        let tokens = |l: &LevelSummary| l.tokens as f64;
        let (s_tokens, b_tokens) = (sum(|w| &w.sidecar, tokens), sum(|w| &w.inprocess, tokens));
        let rate = |tokens: f64, wall: f64| if wall > 0.0 { tokens / wall } else { 0.0 };
        let s_rate = rate(s_tokens, sum(|w| &w.sidecar, |l| l.wall_s));
        let b_rate = rate(b_tokens, sum(|w| &w.inprocess, |l| l.wall_s));
        let per_1k = |cpu: f64, tokens: f64| per_thousand_tokens(cpu, tokens as u64);
        let identical = waves
            .iter()
            .flat_map(|w| w.sidecar.requests.iter().zip(&w.inprocess.requests))
            .filter(|(s, b)| s.token_ids == b.token_ids)
            .count();
        let request_pairs = waves
            .iter()
            .map(|w| w.sidecar.requests.len().min(w.inprocess.requests.len()))
            .sum();
        Self {
            concurrency,
            waves: waves.len(),
            requests_per_wave: waves.first().map_or(0, |w| w.sidecar.requests.len()),
            aggregate_ratio: median_ci95(&ratios),
            aggregate_ratio_pooled: if b_rate > 0.0 { s_rate / b_rate } else { 0.0 },
            ttft_p50_delta_ms: median_ci95(&deltas),
            by_pass: medians_by_pass(
                &figures,
                |w| w.pass,
                WaveFigures::aggregate_ratio,
                WaveFigures::ttft_p50_delta_ms,
            ),
            aggregate_tps_p50: median(|l| l.aggregate_tps),
            ttft_p50_ms: median(|l| l.ttft_p50_ms),
            identical_token_ids: (identical, request_pairs),
            cpu_s_per_1k_tokens: (
                per_1k(sum(|w| &w.sidecar, |l| l.server_cpu_s), s_tokens),
                per_1k(sum(|w| &w.inprocess, |l| l.server_cpu_s), b_tokens),
                per_1k(sum(|w| &w.sidecar, |l| l.client_cpu_s), s_tokens),
            ),
        }
    }

    /// The aggregate target of this level.
    pub(crate) fn target(&self) -> PairedTarget {
        PairedTarget::new(
            &format!(
                "{} streams: aggregate tok/s, sidecar / in-process (median of waves)",
                self.concurrency
            ),
            self.aggregate_ratio,
            AGGREGATE_TARGET,
            true,
        )
    }

    /// The summary and its target as text.
    pub(crate) fn render(&self, target: &PairedTarget) -> String {
        let mut out = format!(
            "{} streams, paired waves: {} pairs of waves of {} requests (the same prompts on \
             both paths, back to back, order alternating)\n\n",
            self.concurrency, self.waves, self.requests_per_wave
        );
        out.push_str(
            &self
                .aggregate_ratio
                .render_row("aggregate ratio, sidecar / in-process", 3),
        );
        out.push_str(&format!(
            "  {:<42} {:>9.3}\n",
            "aggregate ratio, pooled", self.aggregate_ratio_pooled
        ));
        out.push_str(
            &self
                .ttft_p50_delta_ms
                .render_row("TTFT p50 difference, sidecar - in-process", 2),
        );
        out.push_str(&render_by_pass(
            &self.by_pass,
            "aggregate ratio",
            "TTFT p50 difference",
        ));
        let (w, b, c) = self.cpu_s_per_1k_tokens;
        out.push_str(&format!(
            "  {:<42} {:>9.1} / {:.1}\n  {:<42} {:>9.2} / {:.2}\n  {:<42} worker {w:.3}, \
             in-process {b:.3}, Rust side {c:.4}\n  identical token ids: {}/{} requests\n\n\
             target:\n{}",
            "aggregate tok/s p50, sidecar / in-process",
            self.aggregate_tps_p50.0,
            self.aggregate_tps_p50.1,
            "TTFT p50 ms, sidecar / in-process",
            self.ttft_p50_ms.0,
            self.ttft_p50_ms.1,
            "CPU s per 1k tokens",
            self.identical_token_ids.0,
            self.identical_token_ids.1,
            target.render(),
        ));
        out
    }
}

/// One summary per level, in the order the levels first appear.
pub(crate) fn summaries(waves: &[WavePair]) -> Vec<WaveSummary> {
    let mut levels: Vec<usize> = Vec::new();
    for w in waves {
        if !levels.contains(&w.concurrency) {
            levels.push(w.concurrency);
        }
    }
    levels
        .into_iter()
        .map(|c| {
            let of_level: Vec<&WavePair> = waves.iter().filter(|w| w.concurrency == c).collect();
            WaveSummary::new(c, &of_level)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::super::measure::RequestRecord;
    use super::*;

    fn wave(concurrency: usize, wall_s: f64, ttft: f64) -> LevelRun {
        LevelRun {
            concurrency,
            wall_s,
            server_cpu_s: wall_s,
            client_cpu_s: 0.0,
            requests: (0..2 * concurrency)
                .map(|i| RequestRecord {
                    start: 0.0,
                    first_token: ttft,
                    last_token: wall_s,
                    end: wall_s,
                    tokens: 10,
                    prompt_tokens: 4,
                    text: String::new(),
                    messages: 10,
                    token_ids: vec![i as u32; 10],
                    server_ttft_ms: None,
                })
                .collect(),
        }
    }

    #[test]
    fn wave_pairs_give_aggregate_ratios_per_level() {
        // At 4 streams the sidecar takes 2.0 s for what the baseline does in 1.9 s (ratio
        // 0.95), its TTFT p50 3 ms longer; at 16 streams 1.0 s against 1.0 s.
        let mut waves = Vec::new();
        for i in 0..8 {
            for (c, s_wall, b_wall) in [(4, 2.0, 1.9), (16, 1.0, 1.0)] {
                waves.push(WavePair {
                    concurrency: c,
                    pass: i / 4,
                    worker_started_first: i < 4,
                    sidecar_first: i % 2 == 0,
                    sidecar: wave(c, s_wall, 0.013),
                    inprocess: wave(c, b_wall, 0.010),
                });
            }
        }
        let all = summaries(&waves);
        assert_eq!(
            all.iter().map(|s| s.concurrency).collect::<Vec<_>>(),
            [4, 16]
        );
        let four = &all[0];
        assert_eq!((four.waves, four.requests_per_wave), (8, 8));
        assert!(
            (four.aggregate_ratio.median - 0.95).abs() < 1e-9,
            "{four:?}"
        );
        assert!((four.aggregate_ratio_pooled - 0.95).abs() < 1e-9);
        assert!((four.ttft_p50_delta_ms.median - 3.0).abs() < 1e-9);
        assert_eq!(four.identical_token_ids, (64, 64));
        assert_eq!(four.by_pass.len(), 2);
        assert!((four.aggregate_tps_p50.0 - 40.0).abs() < 1e-9);
        // The worker's CPU (its wall time here) per thousand of its 80 tokens a wave.
        assert!((four.cpu_s_per_1k_tokens.0 - 25.0).abs() < 1e-9);
        let target = four.target();
        assert!(target.met && target.settled, "{target:?}");
        let sixteen = &all[1];
        assert!((sixteen.aggregate_ratio.median - 1.0).abs() < 1e-9);
        let text = sixteen.render(&sixteen.target());
        assert!(
            text.contains("16 streams, paired waves: 8 pairs of waves of 32 requests")
                && text.contains("[met]"),
            "{text}"
        );
        // A slower sidecar misses the target.
        let slow: Vec<WavePair> = waves
            .iter()
            .map(|w| WavePair {
                sidecar: wave(w.concurrency, 2.2, 0.013),
                ..w.clone()
            })
            .collect();
        let t = summaries(&slow)[0].target();
        assert!(!t.met && t.settled);
    }
}
