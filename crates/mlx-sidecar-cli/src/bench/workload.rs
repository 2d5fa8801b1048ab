//! The bench's fixed workload: which prompts each concurrency level sends, and how many
//! tokens each request generates.
//!
//! The prompts come from `bench_inprocess.py prepare` (the worker's own tokenizer cuts them
//! from a fixed English text; each one distinct from its first tokens, so no prefix cache can
//! help), and every path sends the same prompts in the same order: token ids over gRPC and to
//! the in-process baseline, the matching text (checked to tokenize to the same ids) over HTTP.
//! Generation is greedy with the end-of-sequence tokens banned by a logit bias, so every
//! request generates exactly `max_tokens` tokens and every path computes the same thing.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One prompt, as token ids and as the text that tokenizes to them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Prompt {
    /// Token ids.
    pub(crate) ids: Vec<u32>,
    /// Text whose tokenization (with the tokenizer's special tokens) gives `ids`.
    pub(crate) text: String,
}

/// What `bench_inprocess.py prepare` prints.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Prepared {
    /// Distinct prompts, as many as asked for.
    pub(crate) prompts: Vec<Prompt>,
    /// The model's end-of-sequence ids (banned during the bench).
    pub(crate) eos_token_ids: Vec<u32>,
    /// The loaded model's description.
    #[serde(default)]
    pub(crate) model: serde_json::Value,
    /// The mlx-lm directory holding the weights as the worker loads them (for mlx-lm's server).
    pub(crate) mlx_lm_dir: PathBuf,
}

/// The requests of one concurrency level.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LevelPlan {
    /// Requests in flight at once.
    pub(crate) concurrency: usize,
    /// Index into [`Workload::prompts`] of each request, in sending order.
    pub(crate) prompts: Vec<usize>,
}

/// The shape of the workload, as the command line gives it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WorkloadSpec {
    /// Concurrency levels, in running order.
    pub(crate) levels: Vec<usize>,
    /// Tokens per prompt.
    pub(crate) prompt_tokens: usize,
    /// Tokens generated per request.
    pub(crate) max_tokens: u32,
    /// Requests per level: `max(rounds × concurrency, min_requests)`.
    pub(crate) rounds: usize,
    /// Fewest requests of a level.
    pub(crate) min_requests: usize,
    /// Tokens each warm-up request generates.
    pub(crate) warmup_tokens: u32,
    /// Times the whole sequence of paths runs (`--passes`), the paths alternating; each pass
    /// sends the same prompts to a freshly started path.
    pub(crate) passes: usize,
    /// `--paired N`: N pairs per level. Level 1 then has N requests (one per pair, each its
    /// own prompt); a level above 1 keeps its requests, run as one wave per path per pair.
    pub(crate) paired: Option<usize>,
}

/// The whole workload: prompts, the levels, and the warm-up run before them.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    /// What it was made from.
    pub(crate) spec: WorkloadSpec,
    /// All prompts; each is sent once in a pass of a path (warm-up included).
    pub(crate) prompts: Vec<Arc<Prompt>>,
    /// End-of-sequence ids, banned with a logit bias.
    pub(crate) eos_token_ids: Vec<u32>,
    /// Warm-up levels (a single stream, then a small batch), run before measuring.
    pub(crate) warmup: Vec<LevelPlan>,
    /// The measured levels.
    pub(crate) levels: Vec<LevelPlan>,
    /// Largest batch the servers are allowed (the largest level).
    pub(crate) max_batch: usize,
}

/// The logit bias that keeps a token from ever being chosen.
pub(crate) const BAN_BIAS: f32 = -1e9;

impl WorkloadSpec {
    /// Requests of a level of `concurrency` (in the paired mode: of one wave, or at level 1
    /// one per pair).
    pub(crate) fn requests(&self, concurrency: usize) -> usize {
        match self.paired {
            Some(pairs) if concurrency == 1 => pairs.max(1),
            _ => (self.rounds * concurrency).max(self.min_requests).max(1),
        }
    }

    /// Concurrency of the warm-up batch.
    fn warmup_batch(&self) -> usize {
        self.levels.iter().copied().max().unwrap_or(1).min(4)
    }

    /// Prompts the whole run needs.
    pub(crate) fn prompt_count(&self) -> usize {
        1 + self.warmup_batch() + self.levels.iter().map(|&c| self.requests(c)).sum::<usize>()
    }

    /// Assigns the prepared prompts to the warm-up and the levels.
    pub(crate) fn build(self, prepared: Prepared) -> anyhow::Result<Workload> {
        anyhow::ensure!(
            prepared.prompts.len() >= self.prompt_count(),
            "needed {} prompts, got {}",
            self.prompt_count(),
            prepared.prompts.len()
        );
        let mut next = 0usize;
        let mut take = |n: usize| {
            let v: Vec<usize> = (next..next + n).collect();
            next += n;
            v
        };
        let batch = self.warmup_batch();
        let warmup = vec![
            LevelPlan {
                concurrency: 1,
                prompts: take(1),
            },
            LevelPlan {
                concurrency: batch,
                prompts: take(batch),
            },
        ];
        let levels = self
            .levels
            .iter()
            .map(|&c| LevelPlan {
                concurrency: c,
                prompts: take(self.requests(c)),
            })
            .collect();
        let max_batch = self.levels.iter().copied().max().unwrap_or(1);
        Ok(Workload {
            spec: self,
            prompts: prepared.prompts.into_iter().map(Arc::new).collect(),
            eos_token_ids: prepared.eos_token_ids,
            warmup,
            levels,
            max_batch,
        })
    }
}

impl Workload {
    /// The workload as `bench_inprocess.py run` reads it.
    pub(crate) fn to_inprocess_json(&self) -> serde_json::Value {
        let level = |plan: &LevelPlan| {
            let prompts: Vec<&Vec<u32>> =
                plan.prompts.iter().map(|&i| &self.prompts[i].ids).collect();
            serde_json::json!({ "concurrency": plan.concurrency, "prompts": prompts })
        };
        serde_json::json!({
            "max_tokens": self.spec.max_tokens,
            "max_batch": self.max_batch,
            "eos_token_ids": self.eos_token_ids,
            "warmup": {
                "max_tokens": self.spec.warmup_tokens,
                "levels": self.warmup.iter().map(level).collect::<Vec<_>>(),
            },
            "levels": self.levels.iter().map(level).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> WorkloadSpec {
        WorkloadSpec {
            levels: vec![1, 4, 16],
            prompt_tokens: 8,
            max_tokens: 5,
            rounds: 1,
            min_requests: 3,
            warmup_tokens: 2,
            passes: 1,
            paired: None,
        }
    }

    #[test]
    fn paired_levels_have_one_request_per_pair_at_one_stream_and_a_wave_above() {
        let spec = WorkloadSpec {
            paired: Some(5),
            rounds: 2,
            ..spec()
        };
        assert_eq!(spec.requests(1), 5);
        assert_eq!(spec.requests(4), 8);
        assert_eq!(spec.requests(16), 32);
        assert_eq!(spec.prompt_count(), 1 + 4 + 5 + 8 + 32);
    }

    #[test]
    fn every_request_gets_its_own_prompt() {
        let spec = spec();
        assert_eq!(spec.prompt_count(), 1 + 4 + 3 + 4 + 16);
        let n = spec.prompt_count();
        let prepared = Prepared {
            prompts: (0..n)
                .map(|i| Prompt {
                    ids: vec![i as u32],
                    text: i.to_string(),
                })
                .collect(),
            eos_token_ids: vec![0],
            model: serde_json::Value::Null,
            mlx_lm_dir: PathBuf::new(),
        };
        let w = spec.build(prepared).unwrap_or_else(|e| panic!("{e}"));
        let mut all: Vec<usize> = w
            .warmup
            .iter()
            .chain(&w.levels)
            .flat_map(|l| l.prompts.clone())
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
        assert_eq!(w.max_batch, 16);
        let json = w.to_inprocess_json();
        assert_eq!(
            json["levels"][2]["prompts"].as_array().map(Vec::len),
            Some(16)
        );
    }
}
