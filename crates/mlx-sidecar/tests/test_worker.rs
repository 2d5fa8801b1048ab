//! How a service built on mlx-sidecar tests itself against the real worker without a real
//! model. The crate's documentation shows this file ("Testing your service"), and
//! `cargo test` runs it.
//!
//! The interpreter: the one `MLX_SIDECAR_PYTHON` names, when set (it must have the worker's
//! packages; the fast path, as CI runs it), else the managed environment (made on first use,
//! which takes a minute, and reused after).

use std::time::Duration;

use mlx_sidecar::env::{self, EnvOptions, NoProgress};
use mlx_sidecar::{
    ChatMessage, Client, Error, FinishReason, GenerateEvent, GenerateRequest, Supervisor,
    SupervisorConfig, WorkerCommand,
};

/// The service under test: it answers a question in at most `limit` tokens and stops
/// before `stop`, streaming the text to `on_text` as it comes.
struct Answerer {
    client: Client,
}

/// An answer, and how sure the model was of it.
struct Answer {
    text: String,
    finish_reason: FinishReason,
    tokens: usize,
    logprobs: Vec<f32>,
}

impl Answerer {
    async fn answer(
        &self,
        question: &str,
        limit: u32,
        stop: Option<&str>,
        mut on_text: impl FnMut(&str),
    ) -> Result<Answer, Error> {
        let mut request = GenerateRequest::chat(vec![ChatMessage::user(question)])
            .max_tokens(limit)
            .logprobs(2);
        if let Some(stop) = stop {
            request = request.stop(stop);
        }
        let mut stream = self.client.generate(request).await?;
        let (mut text, mut tokens, mut logprobs) = (String::new(), 0, Vec::new());
        while let Some(event) = stream.next_event().await {
            match event? {
                GenerateEvent::Token {
                    text: chunk,
                    token_ids,
                    logprobs: probs,
                } => {
                    on_text(&chunk);
                    text.push_str(&chunk);
                    tokens += token_ids.len();
                    logprobs.extend(probs.iter().map(|p| p.logprob));
                }
                GenerateEvent::Finished(done) => {
                    return Ok(Answer {
                        text,
                        finish_reason: done.finish_reason,
                        tokens,
                        logprobs,
                    });
                }
            }
        }
        unreachable!("a stream ends with Finished or an error")
    }
}

/// The real worker on its test model (tiny, random weights), supervised and ready.
async fn start_test_worker(
    scratch: &std::path::Path,
) -> Result<Supervisor, Box<dyn std::error::Error>> {
    let opts = match std::env::var_os("MLX_SIDECAR_PYTHON") {
        // The worker's source is extracted under the root: a scratch one for the test.
        Some(python) => EnvOptions::default().with_python(python).with_root(scratch),
        None => EnvOptions::default(),
    };
    let py = env::ensure(&opts, &NoProgress).await?;
    let worker = WorkerCommand::test_worker(py.python, py.worker_dir);
    let supervisor = Supervisor::spawn(SupervisorConfig::new(worker)).await?;
    supervisor.wait_ready(Duration::from_secs(60)).await?;
    Ok(supervisor)
}

#[tokio::test]
async fn answers_stream_stop_and_keep_to_the_limit() -> Result<(), Box<dyn std::error::Error>> {
    let scratch = tempfile::tempdir()?;
    let supervisor = start_test_worker(scratch.path()).await?;
    let service = Answerer {
        client: supervisor.client(),
    };

    // Streaming: the chunks add up to the answer; the test model never stops by itself.
    let mut chunks = Vec::new();
    let full = service
        .answer("Hello?", 24, None, |c| chunks.push(c.to_owned()))
        .await?;
    assert_eq!(full.finish_reason, FinishReason::Length);
    assert_eq!(full.tokens, 24);
    assert_eq!(chunks.concat(), full.text);
    assert!(chunks.len() > 1, "streamed in pieces: {chunks:?}");
    // Log-probabilities: one per token, each a probability's logarithm.
    assert_eq!(full.logprobs.len(), full.tokens);
    assert!(full.logprobs.iter().all(|p| *p <= 0.0));

    // Greedy decoding gives the same text again, so a piece of the first answer is a stop
    // string that the second one ends just before.
    let stop: String = full.text.chars().skip(12).take(3).collect();
    let cut = service.answer("Hello?", 24, Some(&stop), |_| {}).await?;
    assert_eq!(cut.finish_reason, FinishReason::Stop);
    let before_stop = full.text.split(stop.as_str()).next().unwrap_or_default();
    assert_eq!(cut.text, before_stop);

    // Tokenize round trip.
    let tokens = supervisor.client().tokenize("Hello, world!").await?;
    assert!(!tokens.ids.is_empty());

    supervisor.shutdown().await?;
    Ok(())
}
