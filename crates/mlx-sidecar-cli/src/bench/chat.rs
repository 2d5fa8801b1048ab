//! `bench --chat`: what the worker's prefix cache buys a chat, measured in one run with the
//! cache off and on (a fresh worker each, one after the other, on the same prompts).
//!
//! Two parts per worker: a conversation of `--chat-turns` turns, each prompt the last one plus
//! its answer plus a new user turn (token ids, as a client that keeps the ids would send;
//! greedy, end-of-sequence banned, so every turn answers `--max-tokens` tokens), timed turn by
//! turn; then `--chat-users` requests sent at once that share a `--chat-system-tokens` system
//! prompt (a different one, so the conversation's cache cannot serve it), which shows how often
//! that prompt was prefilled: the prompt tokens computed (prompt minus reported cached) less
//! the users' own tokens, over the system prompt's length. Both parts' outputs must be the same
//! token ids with the cache and without it.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::future::join_all;
use mlx_sidecar::{Client, GenerateEvent, GenerateRequest};
use serde::{Deserialize, Serialize};

use super::python::PythonEnv;
use super::workload::{BAN_BIAS, Prompt};
use super::{BenchArgs, ModelArgs, sidecar};

/// The turn-10 / turn-1 TTFT ratio the cache must stay within (issue 16).
const TURN_RATIO_TARGET: f64 = 1.3;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);

/// What `bench_inprocess.py prepare` prints (the part this bench reads).
#[derive(Debug, Deserialize)]
struct Prepared {
    prompts: Vec<Prompt>,
    eos_token_ids: Vec<u32>,
}

/// The shape of the chat workload.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ChatSpec {
    /// Turns of the conversation.
    pub(crate) turns: usize,
    /// Tokens of each system prompt.
    pub(crate) system_tokens: usize,
    /// Tokens of each user turn.
    pub(crate) user_tokens: usize,
    /// Users sending at once with the shared system prompt.
    pub(crate) users: usize,
    /// Tokens each answer has.
    pub(crate) max_tokens: u32,
}

/// One request as the client saw it.
#[derive(Debug, Clone, Serialize)]
struct Sent {
    prompt_tokens: u32,
    cached_prompt_tokens: u32,
    /// From sending to the first token, as the client sees it.
    ttft_ms: f64,
    #[serde(skip)]
    ids: Vec<u32>,
}

/// Everything one worker (cache off or on) measured.
#[derive(Debug, Clone, Serialize)]
struct ModeRun {
    cache: bool,
    turns: Vec<Sent>,
    users: Vec<Sent>,
    #[serde(skip)]
    outputs: Vec<Vec<u32>>,
}

impl ModeRun {
    fn turn_ratio(&self) -> f64 {
        match (self.turns.first(), self.turns.last()) {
            (Some(first), Some(last)) if first.ttft_ms > 0.0 => last.ttft_ms / first.ttft_ms,
            _ => f64::NAN,
        }
    }

    fn users_prompt_tokens(&self) -> u64 {
        self.users.iter().map(|s| u64::from(s.prompt_tokens)).sum()
    }

    fn users_cached_tokens(&self) -> u64 {
        self.users
            .iter()
            .map(|s| u64::from(s.cached_prompt_tokens))
            .sum()
    }

    /// How many times the shared system prompt was prefilled: the tokens computed less the
    /// users' own, over its length.
    fn system_prefills(&self, spec: &ChatSpec) -> f64 {
        let computed = self.users_prompt_tokens() - self.users_cached_tokens();
        let own = (spec.users * spec.user_tokens) as u64;
        computed.saturating_sub(own) as f64 / spec.system_tokens as f64
    }

    fn users_ttft_ms(&self) -> (f64, f64) {
        let mut t: Vec<f64> = self.users.iter().map(|s| s.ttft_ms).collect();
        t.sort_by(f64::total_cmp);
        let median = t.get(t.len() / 2).copied().unwrap_or(f64::NAN);
        (median, t.last().copied().unwrap_or(f64::NAN))
    }
}

/// Sends one greedy request (end-of-sequence banned) and times its first token.
async fn send(
    client: &Client,
    ids: Vec<u32>,
    max_tokens: u32,
    eos: &[u32],
) -> anyhow::Result<Sent> {
    let mut request = GenerateRequest::tokens(ids)
        .max_tokens(max_tokens)
        .ignore_eos(true);
    for &id in eos {
        request = request.logit_bias(id, BAN_BIAS);
    }
    let started = Instant::now();
    let mut stream = client.generate(request).await?;
    let mut first = None;
    let mut out = Vec::new();
    while let Some(event) = stream.next_event().await {
        match event? {
            GenerateEvent::Token { token_ids, .. } => {
                first.get_or_insert_with(|| started.elapsed());
                out.extend_from_slice(&token_ids);
            }
            GenerateEvent::Finished(done) => {
                return Ok(Sent {
                    prompt_tokens: done.usage.prompt_tokens,
                    cached_prompt_tokens: done.usage.cached_prompt_tokens,
                    ttft_ms: first.unwrap_or_else(|| started.elapsed()).as_secs_f64() * 1e3,
                    ids: out,
                });
            }
        }
    }
    bail!("the stream ended without its final message")
}

/// The prompts: two system prompts, the conversation's user turns, the users' own turns and a
/// warm-up, each cut from its own prepared prompt.
struct ChatPrompts {
    conversation_system: Vec<u32>,
    shared_system: Vec<u32>,
    turns: Vec<Vec<u32>>,
    users: Vec<Vec<u32>>,
    warmup: Vec<u32>,
}

impl ChatPrompts {
    fn count(spec: &ChatSpec) -> usize {
        3 + spec.turns + spec.users
    }

    fn new(spec: &ChatSpec, prompts: &[Prompt]) -> anyhow::Result<Self> {
        anyhow::ensure!(
            prompts.len() >= Self::count(spec),
            "needed {} prompts, got {}",
            Self::count(spec),
            prompts.len()
        );
        let user = |p: &Prompt| p.ids[..spec.user_tokens.min(p.ids.len())].to_vec();
        let (turns, rest) = prompts[2..].split_at(spec.turns);
        let (users, rest) = rest.split_at(spec.users);
        Ok(ChatPrompts {
            conversation_system: prompts[0].ids.clone(),
            shared_system: prompts[1].ids.clone(),
            turns: turns.iter().map(user).collect(),
            users: users.iter().map(user).collect(),
            warmup: user(&rest[0]),
        })
    }
}

/// Runs both parts on one worker.
async fn run_mode(
    client: &Client,
    spec: &ChatSpec,
    prompts: &ChatPrompts,
    eos: &[u32],
    cache: bool,
) -> anyhow::Result<ModeRun> {
    send(client, prompts.warmup.clone(), 4, eos).await?;
    let mut history = prompts.conversation_system.clone();
    let mut turns = Vec::new();
    let mut outputs = Vec::new();
    for (i, user) in prompts.turns.iter().enumerate() {
        history.extend_from_slice(user);
        let sent = send(client, history.clone(), spec.max_tokens, eos)
            .await
            .with_context(|| format!("turn {}", i + 1))?;
        eprintln!(
            "  turn {:>2}: {} prompt tokens, {} cached, TTFT {:.1} ms",
            i + 1,
            sent.prompt_tokens,
            sent.cached_prompt_tokens,
            sent.ttft_ms
        );
        history.extend_from_slice(&sent.ids);
        outputs.push(sent.ids.clone());
        turns.push(sent);
    }
    let requests = prompts.users.iter().map(|user| {
        let mut ids = prompts.shared_system.clone();
        ids.extend_from_slice(user);
        send(client, ids, spec.max_tokens, eos)
    });
    let users = join_all(requests)
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()
        .context("the users sharing a system prompt")?;
    outputs.extend(users.iter().map(|s| s.ids.clone()));
    Ok(ModeRun {
        cache,
        turns,
        users,
        outputs,
    })
}

/// The figures as text (also the Markdown, in a code block).
fn render(spec: &ChatSpec, off: &ModeRun, on: &ModeRun) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "multi-turn chat: {} turns, {}-token system prompt, {}-token user turns, {}-token answers",
        spec.turns, spec.system_tokens, spec.user_tokens, spec.max_tokens
    );
    let _ = writeln!(
        s,
        "turn  prompt  cached   TTFT off ms   TTFT on ms   on/off"
    );
    for (i, (a, b)) in off.turns.iter().zip(&on.turns).enumerate() {
        let _ = writeln!(
            s,
            "{:>4}  {:>6}  {:>6}  {:>12.1}  {:>11.1}  {:>7.2}",
            i + 1,
            b.prompt_tokens,
            b.cached_prompt_tokens,
            a.ttft_ms,
            b.ttft_ms,
            b.ttft_ms / a.ttft_ms
        );
    }
    let on_ratio = on.turn_ratio();
    let _ = writeln!(
        s,
        "last turn / first turn TTFT: cache off {:.2}x, on {:.2}x (target <= {TURN_RATIO_TARGET}x \
         with the cache: {})",
        off.turn_ratio(),
        on_ratio,
        if on_ratio <= TURN_RATIO_TARGET {
            "met"
        } else {
            "MISSED"
        }
    );
    let _ = writeln!(
        s,
        "\n{} users sent at once, sharing a {}-token system prompt (+{} tokens each):",
        spec.users, spec.system_tokens, spec.user_tokens
    );
    let _ = writeln!(
        s,
        "cache  prompt tokens  cached (reported)  computed  system prefills  median TTFT ms  \
         max TTFT ms"
    );
    for run in [off, on] {
        let (median, max) = run.users_ttft_ms();
        let _ = writeln!(
            s,
            "{:<5}  {:>13}  {:>17}  {:>8}  {:>15.2}  {:>14.1}  {:>11.1}",
            if run.cache { "on" } else { "off" },
            run.users_prompt_tokens(),
            run.users_cached_tokens(),
            run.users_prompt_tokens() - run.users_cached_tokens(),
            run.system_prefills(spec),
            median,
            max
        );
    }
    let same = off.outputs == on.outputs;
    let _ = writeln!(
        s,
        "\noutputs (token ids) identical with and without the cache: {}",
        if same { "yes" } else { "NO" }
    );
    s
}

/// `bench --chat` (see the module docs).
pub(crate) async fn run(
    args: &BenchArgs,
    py: &PythonEnv,
    model: &ModelArgs,
    socket_dir: Option<&std::path::Path>,
    mlx_lm_dir: &std::path::Path,
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    let spec = ChatSpec {
        turns: args.chat_turns,
        system_tokens: args.chat_system_tokens,
        user_tokens: args.chat_user_tokens,
        users: args.chat_users,
        max_tokens: args.max_tokens,
    };
    anyhow::ensure!(spec.turns >= 2, "--chat-turns must be at least 2");
    anyhow::ensure!(spec.users >= 1, "--chat-users must be at least 1");
    anyhow::ensure!(
        spec.user_tokens >= 1 && spec.user_tokens <= spec.system_tokens,
        "--chat-user-tokens must be between 1 and --chat-system-tokens"
    );
    let count = ChatPrompts::count(&spec);
    eprintln!(
        "preparing the chat workload ({count} prompts of {} tokens)",
        spec.system_tokens
    );
    let mut prepare_args = vec!["prepare".to_owned()];
    prepare_args.extend(model.script_args());
    prepare_args.extend([
        "--out-dir".to_owned(),
        mlx_lm_dir.display().to_string(),
        "--prompt-tokens".to_owned(),
        spec.system_tokens.to_string(),
        "--count".to_owned(),
        count.to_string(),
    ]);
    let (prepared, _) = py.run_script(&prepare_args, None).await?;
    let prepared: Prepared =
        serde_json::from_value(prepared).context("reading the prepared workload")?;
    let prompts = ChatPrompts::new(&spec, &prepared.prompts)?;
    let max_batch = spec.users.max(8);
    let mut runs = Vec::new();
    for cache in [false, true] {
        eprintln!("prefix cache {}:", if cache { "on" } else { "off" });
        let mut worker_args = args.worker_args.clone();
        if !cache {
            worker_args.extend(["--prefix-cache-entries".to_owned(), "0".to_owned()]);
        }
        let sup =
            sidecar::start(py, model, socket_dir, &worker_args, max_batch, 1, timeout).await?;
        // Without the cache, the users' prefills take minutes on a small, busy CPU.
        let client = sup.client().with_generate_timeout(REQUEST_TIMEOUT);
        let run = run_mode(&client, &spec, &prompts, &prepared.eos_token_ids, cache).await;
        sup.shutdown().await.ok();
        runs.push(run?);
    }
    let (off, on) = (&runs[0], &runs[1]);
    let text = render(&spec, off, on);
    println!("{text}");
    Ok(serde_json::json!({
        "spec": spec,
        "text": text,
        "runs": runs,
        "turn_ratio_off": off.turn_ratio(),
        "turn_ratio_on": on.turn_ratio(),
        "system_prefills_off": off.system_prefills(&spec),
        "system_prefills_on": on.system_prefills(&spec),
        "outputs_identical": off.outputs == on.outputs,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(prompt: u32, cached: u32, ttft: f64) -> Sent {
        Sent {
            prompt_tokens: prompt,
            cached_prompt_tokens: cached,
            ttft_ms: ttft,
            ids: Vec::new(),
        }
    }

    #[test]
    fn system_prefills_count_the_computed_tokens_beyond_the_users_own() {
        let spec = ChatSpec {
            turns: 2,
            system_tokens: 500,
            user_tokens: 32,
            users: 4,
            max_tokens: 8,
        };
        let run = |cached: [u32; 4]| ModeRun {
            cache: true,
            turns: vec![sent(532, 0, 100.0), sent(600, 560, 110.0)],
            users: cached.iter().map(|&c| sent(532, c, 50.0)).collect(),
            outputs: Vec::new(),
        };
        assert!((run([0, 0, 0, 0]).system_prefills(&spec) - 4.0).abs() < 1e-9);
        assert!((run([0, 500, 500, 500]).system_prefills(&spec) - 1.0).abs() < 1e-9);
        assert!((run([0, 0, 0, 0]).turn_ratio() - 1.1).abs() < 1e-9);
    }
}
