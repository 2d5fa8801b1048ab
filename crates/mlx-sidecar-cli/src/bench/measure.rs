//! What one request and one concurrency level measured, and the summary figures of a level.
//!
//! Every path (sidecar, in-process, HTTP) produces the same [`RequestRecord`]s, times in seconds
//! from the start of the level, so that one function ([`LevelSummary::from_records`]) computes
//! the figures of all three the same way. With `--passes`, [`merge_passes`] joins a path's
//! passes into one run before that.

use serde::{Deserialize, Serialize};

use super::PathRun;

/// One request, as its client saw it. Times are seconds from the start of the level.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RequestRecord {
    /// When the request was sent.
    pub(crate) start: f64,
    /// When its first generated token arrived.
    pub(crate) first_token: f64,
    /// When its last generated token arrived.
    pub(crate) last_token: f64,
    /// When the request was complete (the stream ended).
    pub(crate) end: f64,
    /// Generated tokens.
    pub(crate) tokens: u64,
    /// Prompt tokens.
    pub(crate) prompt_tokens: u64,
    /// The generated text (used to check that the paths generated the same thing).
    #[serde(default)]
    pub(crate) text: String,
    /// Messages (chunks or server-sent events) that carried the tokens; 0 where not known.
    #[serde(default)]
    pub(crate) messages: u64,
    /// The generated token ids, where the path reports them (not over HTTP).
    #[serde(default)]
    pub(crate) token_ids: Vec<u32>,
    /// The serving process's own time to first token (the worker's: from the request's
    /// arrival to its first token, in ms), where it reports one; so that the client's TTFT
    /// splits into the server's part and the transport's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) server_ttft_ms: Option<f64>,
}

impl RequestRecord {
    /// Decode rate after the first token, tokens per second; `None` when it cannot be told
    /// (fewer than two tokens, or no time between the first and the last).
    pub(crate) fn decode_tps(&self) -> Option<f64> {
        (self.tokens >= 2 && self.last_token > self.first_token)
            .then(|| (self.tokens - 1) as f64 / (self.last_token - self.first_token))
    }

    /// Time to first token, ms.
    pub(crate) fn ttft_ms(&self) -> f64 {
        (self.first_token - self.start) * 1000.0
    }
}

/// CPU seconds per thousand generated tokens (0 when none were).
pub(crate) fn per_thousand_tokens(cpu_s: f64, tokens: u64) -> f64 {
    if tokens == 0 {
        0.0
    } else {
        cpu_s * 1000.0 / tokens as f64
    }
}

/// Tokens per message (0 when no messages were counted).
pub(crate) fn tokens_per_message(tokens: u64, messages: u64) -> f64 {
    if messages == 0 {
        0.0
    } else {
        tokens as f64 / messages as f64
    }
}

/// The raw measurements of one concurrency level on one path.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LevelRun {
    /// Requests in flight at once.
    pub(crate) concurrency: usize,
    /// Wall time of the level, seconds.
    pub(crate) wall_s: f64,
    /// CPU seconds the serving process (worker, baseline script, HTTP server) used.
    pub(crate) server_cpu_s: f64,
    /// CPU seconds the Rust process (supervisor and client) used; 0 for the in-process path.
    pub(crate) client_cpu_s: f64,
    /// One record per request, in request order (merged passes: pass by pass, each in
    /// request order).
    pub(crate) requests: Vec<RequestRecord>,
}

impl LevelRun {
    /// Appends a later pass of the same level as if it had run right after this one: its
    /// requests go after these, their times shifted by this run's wall time; wall and CPU
    /// times add up.
    fn append(&mut self, pass: LevelRun) -> anyhow::Result<()> {
        anyhow::ensure!(
            pass.concurrency == self.concurrency,
            "passes ran different levels ({} and {})",
            self.concurrency,
            pass.concurrency
        );
        let offset = self.wall_s;
        self.requests
            .extend(pass.requests.into_iter().map(|r| RequestRecord {
                start: r.start + offset,
                first_token: r.first_token + offset,
                last_token: r.last_token + offset,
                end: r.end + offset,
                ..r
            }));
        self.wall_s += pass.wall_s;
        self.server_cpu_s += pass.server_cpu_s;
        self.client_cpu_s += pass.client_cpu_s;
        Ok(())
    }
}

/// Joins the passes of one path (`--passes`, in running order) into one run, as if they had
/// run back to back: per level, the requests of the first pass, then those of the second, and
/// so on (every path alike, so that requests at the same position sent the same prompt on
/// every path, as the output comparison needs), wall and CPU times summed (so aggregate tok/s
/// is all tokens over all wall time, and percentiles are over all requests); peak memory is
/// the largest of the passes.
pub(crate) fn merge_passes(passes: Vec<PathRun>) -> anyhow::Result<PathRun> {
    let mut passes = passes.into_iter();
    let Some(mut merged) = passes.next() else {
        anyhow::bail!("no pass to merge");
    };
    for pass in passes {
        anyhow::ensure!(
            pass.levels.len() == merged.levels.len(),
            "passes ran different numbers of levels ({} and {})",
            merged.levels.len(),
            pass.levels.len()
        );
        for (level, next) in merged.levels.iter_mut().zip(pass.levels) {
            level.append(next)?;
        }
        merged.server_peak_rss_bytes = merged.server_peak_rss_bytes.max(pass.server_peak_rss_bytes);
        merged.client_peak_rss_bytes = merged.client_peak_rss_bytes.max(pass.client_peak_rss_bytes);
    }
    Ok(merged)
}

/// Summary figures of one level.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LevelSummary {
    /// Requests in flight at once.
    pub(crate) concurrency: usize,
    /// Requests completed.
    pub(crate) requests: usize,
    /// Generated tokens, all requests.
    pub(crate) tokens: u64,
    /// Time to first token, median, milliseconds.
    pub(crate) ttft_p50_ms: f64,
    /// Time to first token, 99th percentile, milliseconds.
    pub(crate) ttft_p99_ms: f64,
    /// Decode speed of one stream (tokens after the first / time from first to last token),
    /// mean over requests.
    pub(crate) decode_tps_per_stream: f64,
    /// Generated tokens of all requests / wall time of the level.
    pub(crate) aggregate_tps: f64,
    /// Wall time of the level, seconds.
    pub(crate) wall_s: f64,
    /// CPU seconds of the serving process.
    pub(crate) server_cpu_s: f64,
    /// CPU seconds of the Rust process (supervisor + client).
    pub(crate) client_cpu_s: f64,
    /// Serving process CPU seconds per thousand generated tokens.
    pub(crate) server_cpu_s_per_1k_tokens: f64,
    /// Rust process CPU seconds per thousand generated tokens.
    pub(crate) client_cpu_s_per_1k_tokens: f64,
    /// Mean tokens per message (chunk or event); 0 where not known.
    pub(crate) tokens_per_message: f64,
}

/// The `p`-th percentile (0 to 100) of `values`, by linear interpolation; 0 when empty.
pub(crate) fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (p / 100.0).clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    let frac = rank - lo as f64;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

impl LevelSummary {
    /// Computes the figures of a level from its raw measurements.
    pub(crate) fn from_records(run: &LevelRun) -> Self {
        let requests = &run.requests;
        let ttfts: Vec<f64> = requests.iter().map(RequestRecord::ttft_ms).collect();
        let decode: Vec<f64> = requests
            .iter()
            .filter_map(RequestRecord::decode_tps)
            .collect();
        let tokens: u64 = requests.iter().map(|r| r.tokens).sum();
        let messages: u64 = requests.iter().map(|r| r.messages).sum();
        Self {
            concurrency: run.concurrency,
            requests: requests.len(),
            tokens,
            ttft_p50_ms: percentile(&ttfts, 50.0),
            ttft_p99_ms: percentile(&ttfts, 99.0),
            decode_tps_per_stream: if decode.is_empty() {
                0.0
            } else {
                decode.iter().sum::<f64>() / decode.len() as f64
            },
            aggregate_tps: if run.wall_s > 0.0 {
                tokens as f64 / run.wall_s
            } else {
                0.0
            },
            wall_s: run.wall_s,
            server_cpu_s: run.server_cpu_s,
            client_cpu_s: run.client_cpu_s,
            server_cpu_s_per_1k_tokens: per_thousand_tokens(run.server_cpu_s, tokens),
            client_cpu_s_per_1k_tokens: per_thousand_tokens(run.client_cpu_s, tokens),
            tokens_per_message: tokens_per_message(tokens, messages),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate() {
        let v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 50.0), 2.5);
        assert_eq!(percentile(&v, 100.0), 4.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    fn record(start: f64, first: f64, last: f64) -> RequestRecord {
        RequestRecord {
            start,
            first_token: first,
            last_token: last,
            end: last,
            tokens: 11,
            prompt_tokens: 5,
            text: String::new(),
            messages: 11,
            token_ids: Vec::new(),
            server_ttft_ms: None,
        }
    }

    #[test]
    fn summary_of_two_requests() {
        let run = LevelRun {
            concurrency: 2,
            wall_s: 2.0,
            server_cpu_s: 1.1,
            client_cpu_s: 0.011,
            requests: vec![record(0.0, 0.1, 1.1), record(0.0, 0.3, 2.0)],
        };
        let s = LevelSummary::from_records(&run);
        assert_eq!(s.tokens, 22);
        assert!((s.aggregate_tps - 11.0).abs() < 1e-9);
        assert!((s.ttft_p50_ms - 200.0).abs() < 1e-9);
        assert!((s.decode_tps_per_stream - (10.0 + 10.0 / 1.7) / 2.0).abs() < 1e-9);
        assert!((s.server_cpu_s_per_1k_tokens - 50.0).abs() < 1e-9);
        assert!((s.tokens_per_message - 1.0).abs() < 1e-9);
    }

    #[test]
    fn passes_merge_into_one_run() {
        let pass = |wall_s: f64, server_rss: u64, client_rss: u64, text: &str| PathRun {
            levels: vec![LevelRun {
                concurrency: 2,
                wall_s,
                server_cpu_s: wall_s / 2.0,
                client_cpu_s: wall_s / 10.0,
                requests: ["a", "b"]
                    .iter()
                    .map(|prompt| RequestRecord {
                        text: format!("{prompt}{text}"),
                        ..record(0.0, 0.1, 1.1)
                    })
                    .collect(),
            }],
            server_peak_rss_bytes: server_rss,
            client_peak_rss_bytes: client_rss,
        };
        let merged = merge_passes(vec![pass(2.0, 100, 50, "1"), pass(3.0, 300, 20, "2")])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(merged.server_peak_rss_bytes, 300);
        assert_eq!(merged.client_peak_rss_bytes, 50);
        let [level] = merged.levels.as_slice() else {
            panic!("one level expected, got {}", merged.levels.len());
        };
        assert!((level.wall_s - 5.0).abs() < 1e-9);
        assert!((level.server_cpu_s - 2.5).abs() < 1e-9);
        assert!((level.client_cpu_s - 0.5).abs() < 1e-9);
        let texts: Vec<&str> = level.requests.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(texts, ["a1", "b1", "a2", "b2"]);
        // The second pass's times follow the first pass's wall time.
        assert!((level.requests[2].start - 2.0).abs() < 1e-9);
        assert!((level.requests[2].first_token - 2.1).abs() < 1e-9);
        let s = LevelSummary::from_records(level);
        assert_eq!(s.requests, 4);
        assert!((s.aggregate_tps - 44.0 / 5.0).abs() < 1e-9);
        assert!((s.ttft_p50_ms - 100.0).abs() < 1e-9);

        let mut other = pass(1.0, 0, 0, "");
        other.levels[0].concurrency = 4;
        assert!(merge_passes(vec![pass(1.0, 0, 0, ""), other]).is_err());
        assert!(merge_passes(Vec::new()).is_err());
    }
}
