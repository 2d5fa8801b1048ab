//! Single-stream pairs: one request on each path with the same prompt, back to back, and
//! their summary (decode ratio and TTFT difference, the two single-stream targets).

use serde::Serialize;

use super::super::measure::{RequestRecord, per_thousand_tokens, percentile, tokens_per_message};
use super::PairedUsage;
use super::stats::{Median, PairedTarget, median_ci95, medians_by_pass, render_by_pass};

/// One pair: the same prompt on both paths, back to back.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Pair {
    /// Which pass (session of both processes, from 0) it ran in.
    pub(crate) pass: usize,
    /// Whether the worker was started before the baseline in that session.
    pub(crate) worker_started_first: bool,
    /// Whether the sidecar ran first in this pair.
    pub(crate) sidecar_first: bool,
    /// The full path's request.
    pub(crate) sidecar: RequestRecord,
    /// The in-process baseline's request.
    pub(crate) inprocess: RequestRecord,
}

impl Pair {
    /// Sidecar / in-process decode rate.
    fn decode_ratio(&self) -> f64 {
        match (self.sidecar.decode_tps(), self.inprocess.decode_tps()) {
            (Some(s), Some(b)) if b > 0.0 => s / b,
            _ => 0.0,
        }
    }

    /// Sidecar minus in-process TTFT, ms.
    fn ttft_delta_ms(&self) -> f64 {
        self.sidecar.ttft_ms() - self.inprocess.ttft_ms()
    }
}

/// The figures over all pairs.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PairedSummary {
    /// Pairs run.
    pub(crate) pairs: usize,
    /// Sidecar / in-process decode rate, pair by pair.
    pub(crate) decode_ratio: Median,
    /// All the sidecar's decode tokens over all its decode time, divided by the same of the
    /// baseline.
    pub(crate) decode_ratio_pooled: f64,
    /// Sidecar minus in-process TTFT, ms, pair by pair.
    pub(crate) ttft_delta_ms: Median,
    /// The median decode ratio and TTFT difference of each pass (both processes started
    /// afresh), which shows how much a process's start moves them.
    pub(crate) by_pass: Vec<(f64, f64)>,
    /// TTFT p50 of each path, ms.
    pub(crate) ttft_p50_ms: (f64, f64),
    /// p50 of the worker's own TTFT (from the request's arrival to its first token), ms: the
    /// rest of the sidecar's TTFT is the way there and back (client, gRPC, socket).
    pub(crate) worker_ttft_p50_ms: f64,
    /// Median decode rate of each path, tokens per second.
    pub(crate) decode_tps_p50: (f64, f64),
    /// Pairs whose two requests generated the same token ids.
    pub(crate) identical_token_ids: usize,
    /// Tokens per gRPC message on the full path.
    pub(crate) tokens_per_message: f64,
    /// CPU seconds per thousand generated tokens: the worker, the in-process baseline, this
    /// (Rust) process.
    pub(crate) cpu_s_per_1k_tokens: (f64, f64, f64),
    /// Peak resident memory, bytes, the largest of any session (waves included): the worker,
    /// the in-process baseline (the report's text gives it once, after every level).
    pub(crate) peak_rss_bytes: (u64, u64),
}

impl PairedSummary {
    /// Summarizes the pairs.
    pub(crate) fn new(pairs: &[Pair], usage: PairedUsage) -> Self {
        let ratios: Vec<f64> = pairs.iter().map(Pair::decode_ratio).collect();
        let deltas: Vec<f64> = pairs.iter().map(Pair::ttft_delta_ms).collect();
        let pooled = |side: fn(&Pair) -> &RequestRecord| {
            let (tokens, seconds) = pairs
                .iter()
                .map(side)
                .filter(|r| r.decode_tps().is_some())
                .fold((0.0, 0.0), |(t, s), r| {
                    (
                        t + (r.tokens - 1) as f64,
                        s + (r.last_token - r.first_token),
                    )
                });
            if seconds > 0.0 { tokens / seconds } else { 0.0 }
        };
        let (s_pooled, b_pooled) = (pooled(|p| &p.sidecar), pooled(|p| &p.inprocess));
        let column = |f: fn(&RequestRecord) -> f64, side: fn(&Pair) -> &RequestRecord| {
            percentile(&pairs.iter().map(|p| f(side(p))).collect::<Vec<_>>(), 50.0)
        };
        let tokens: u64 = pairs.iter().map(|p| p.sidecar.tokens).sum();
        let messages: u64 = pairs.iter().map(|p| p.sidecar.messages).sum();
        let per_1k = |cpu: f64| per_thousand_tokens(cpu, tokens);
        Self {
            pairs: pairs.len(),
            decode_ratio: median_ci95(&ratios),
            decode_ratio_pooled: if b_pooled > 0.0 {
                s_pooled / b_pooled
            } else {
                0.0
            },
            ttft_delta_ms: median_ci95(&deltas),
            by_pass: medians_by_pass(pairs, |p| p.pass, Pair::decode_ratio, Pair::ttft_delta_ms),
            ttft_p50_ms: (
                column(RequestRecord::ttft_ms, |p| &p.sidecar),
                column(RequestRecord::ttft_ms, |p| &p.inprocess),
            ),
            worker_ttft_p50_ms: percentile(
                &pairs
                    .iter()
                    .filter_map(|p| p.sidecar.server_ttft_ms)
                    .collect::<Vec<_>>(),
                50.0,
            ),
            decode_tps_p50: (
                column(|r| r.decode_tps().unwrap_or(0.0), |p| &p.sidecar),
                column(|r| r.decode_tps().unwrap_or(0.0), |p| &p.inprocess),
            ),
            identical_token_ids: pairs
                .iter()
                .filter(|p| p.sidecar.token_ids == p.inprocess.token_ids)
                .count(),
            tokens_per_message: tokens_per_message(tokens, messages),
            cpu_s_per_1k_tokens: (
                per_1k(usage.worker_cpu_s),
                per_1k(usage.inprocess_cpu_s),
                per_1k(usage.client_cpu_s),
            ),
            peak_rss_bytes: (usage.worker_peak_rss_bytes, usage.inprocess_peak_rss_bytes),
        }
    }

    /// The two single-stream targets.
    pub(crate) fn targets(&self) -> Vec<PairedTarget> {
        vec![
            PairedTarget::new(
                "single stream: decode tok/s, sidecar / in-process (median of pairs)",
                self.decode_ratio,
                0.99,
                true,
            ),
            PairedTarget::new(
                "single stream: TTFT, sidecar - in-process, ms (median of pairs)",
                self.ttft_delta_ms,
                2.0,
                false,
            ),
        ]
    }

    /// The summary and targets as text.
    pub(crate) fn render(&self, targets: &[PairedTarget]) -> String {
        let mut out = format!(
            "single stream, paired: {} pairs (same prompt on both paths, back to back, \
             order alternating)\n\n",
            self.pairs
        );
        out.push_str(
            &self
                .decode_ratio
                .render_row("decode ratio, sidecar / in-process", 3),
        );
        out.push_str(&format!(
            "  {:<42} {:>9.3}\n",
            "decode ratio, pooled", self.decode_ratio_pooled
        ));
        out.push_str(
            &self
                .ttft_delta_ms
                .render_row("TTFT difference, sidecar - in-process, ms", 2),
        );
        out.push_str(&render_by_pass(
            &self.by_pass,
            "decode ratio",
            "TTFT difference",
        ));
        out.push_str(&format!(
            "  {:<42} {:>9.2} / {:.2} (in the worker {:.2})\n  {:<42} {:>9.1} / {:.1}\n",
            "TTFT p50 ms, sidecar / in-process",
            self.ttft_p50_ms.0,
            self.ttft_p50_ms.1,
            self.worker_ttft_p50_ms,
            "decode tok/s p50, sidecar / in-process",
            self.decode_tps_p50.0,
            self.decode_tps_p50.1,
        ));
        let (w, b, c) = self.cpu_s_per_1k_tokens;
        out.push_str(&format!(
            "  {:<42} worker {w:.3}, in-process {b:.3}, Rust side {c:.4}\n  tokens per message \
             (sidecar): {:.2}\n  identical token ids: {}/{} pairs\n\ntargets:\n",
            "CPU s per 1k tokens", self.tokens_per_message, self.identical_token_ids, self.pairs,
        ));
        for t in targets {
            out.push_str(&t.render());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ttft: f64, tokens: u64, decode_s: f64) -> RequestRecord {
        RequestRecord {
            start: 0.0,
            first_token: ttft,
            last_token: ttft + decode_s,
            end: ttft + decode_s,
            tokens,
            prompt_tokens: 4,
            text: String::new(),
            messages: tokens,
            token_ids: vec![1; tokens as usize],
            server_ttft_ms: None,
        }
    }

    #[test]
    fn pairs_give_ratios_differences_and_verdicts() {
        // The sidecar decodes 9 tokens in 0.1 s (90 tok/s) against 0.09 s (100 tok/s), and
        // its first token comes 1 ms later, in every pair.
        let pairs: Vec<Pair> = (0..20)
            .map(|i| Pair {
                pass: i / 10,
                worker_started_first: i < 10,
                sidecar_first: i % 2 == 0,
                sidecar: record(0.011, 10, 0.1),
                inprocess: record(0.010, 10, 0.09),
            })
            .collect();
        let s = PairedSummary::new(&pairs, PairedUsage::default());
        assert!((s.decode_ratio.median - 0.9).abs() < 1e-9, "{s:?}");
        assert!((s.decode_ratio_pooled - 0.9).abs() < 1e-9);
        assert!((s.ttft_delta_ms.median - 1.0).abs() < 1e-9);
        assert_eq!(s.identical_token_ids, 20);
        assert_eq!(s.by_pass.len(), 2);
        assert!((s.by_pass[1].0 - 0.9).abs() < 1e-9 && (s.by_pass[1].1 - 1.0).abs() < 1e-9);
        let targets = s.targets();
        assert!(!targets[0].met && targets[0].settled);
        assert!(targets[1].met && targets[1].settled);
        let text = s.render(&targets);
        assert!(
            text.contains("[MISSED]") && text.contains("[met]"),
            "{text}"
        );
    }
}
