//! More points a worker is killed at under a stream (issue 15), with the helpers of
//! `resume`: during prefill (the call is retried before any output), while a stop string
//! is half matched at the seam, with repetition, presence and frequency penalties, and
//! during the solo-to-batch hand-over. Points a caller cannot time from outside are hit
//! by the worker's fault injection: its faults file is written before a restart (the
//! worker reads it once, at start-up) and emptied once that worker is ready, so the worker
//! after it runs without faults; the uninterrupted references run first, on a worker
//! without faults.

use std::path::{Path, PathBuf};

use mlx_sidecar::{FinishReason, GenerateRequest, LifecycleEvent, Supervisor};
use nix::sys::signal::Signal;

use crate::resume::{Received, assert_same_stream, long, read_cutting, read_until, reference};
use crate::support::{self, READY};

/// A supervisor of the tiny model (its worker given `args` too) whose workers add the
/// faults written in the returned file (empty at first); once its worker is ready.
async fn supervisor_with_faults_file(sandbox: &Path, args: &[&str]) -> (Supervisor, PathBuf) {
    let faults = sandbox.join("faults");
    std::fs::write(&faults, "").expect("write the faults file");
    let worker = support::tiny_worker()
        .with_args(args.iter().copied())
        .with_env("MLX_WORKER_FAULTS_FILE", faults.display().to_string());
    let supervisor = Supervisor::spawn(support::config(worker, sandbox))
        .await
        .expect("spawn");
    supervisor.wait_ready(READY).await.expect("ready");
    (supervisor, faults)
}

/// Replaces the idle worker (SIGKILL) by one that runs with `faults`, and empties the
/// faults file once it is ready. Returns the new worker's pid.
async fn restart_with_faults(supervisor: &Supervisor, file: &Path, faults: &str) -> u32 {
    let mut events = supervisor.subscribe();
    let old = supervisor.worker_pid().expect("a worker");
    std::fs::write(file, faults).expect("write the faults");
    support::signal(old, Signal::SIGKILL);
    let (ready, _) = support::wait_event(
        &mut events,
        READY,
        |e| matches!(e, LifecycleEvent::Ready { pid, .. } if *pid != old),
    )
    .await;
    std::fs::write(file, "").expect("clear the faults for the worker after it");
    let LifecycleEvent::Ready { pid, .. } = ready else {
        unreachable!()
    };
    pid
}

/// Waits for worker `pid`'s death and checks that SIGKILL ended it.
async fn wait_killed(events: &mut tokio::sync::broadcast::Receiver<LifecycleEvent>, pid: u32) {
    let (crashed, _) = support::wait_event(
        events,
        READY,
        |e| matches!(e, LifecycleEvent::Crashed { pid: p, .. } if *p == pid),
    )
    .await;
    let LifecycleEvent::Crashed { status, .. } = crashed else {
        unreachable!()
    };
    assert_eq!(status.signal, Some(Signal::SIGKILL as i32), "{status}");
}

/// A worker killed during the prefill of a long prompt (prefilled in chunks of 64 tokens,
/// the worker kills itself when its third engine step begins, two chunks in): no output
/// was delivered, so the call is retried on the next worker, transparently, and gives the
/// reference's tokens, with no resume counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_prefill_is_retried_with_the_same_tokens() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let (supervisor, faults) =
        supervisor_with_faults_file(sandbox.path(), &["--prefill-step-size", "64"]).await;
    let client = supervisor.client();
    let prompt = "The quick brown fox jumps over the lazy dog. ".repeat(20);
    let prompt_tokens = client
        .tokenize(prompt.as_str())
        .await
        .expect("tokenize")
        .ids
        .len();
    assert!(prompt_tokens > 4 * 64, "{prompt_tokens} prompt tokens");
    let request = long(&prompt, 60).logprobs(2);
    let want = reference(&supervisor, request.clone()).await;
    let pid = restart_with_faults(&supervisor, &faults, "sigkill_after_steps=2").await;
    let mut events = supervisor.subscribe();
    let stream = client.generate(request).await.expect("generate");
    assert_eq!(stream.attempts(), 2, "sent again after the kill");
    wait_killed(&mut events, pid).await;
    let got = read_cutting(&supervisor, stream, &[], Signal::SIGKILL).await;
    assert_same_stream(&got, &want, 0, "killed during prefill");
    assert_eq!(client.resumes(), 0);
    supervisor.shutdown().await.expect("shutdown");
}

/// The first `k` with tokens `k`, `k + 1` and `k + 2` each delivered alone with text of
/// its own (no replacement or control character), past the first third of `free`, whose joined text
/// first occurs in `free` where token `k`'s begins. Returns `k`, that text (the stop
/// string) and where it begins in `free.text`.
fn stop_string_of_three_tokens(free: &Received) -> (usize, String, usize) {
    let mut tokens = Vec::new(); // (tokens before, text start, text end) of single tokens
    let mut before = (0, 0);
    for &(ids, bytes) in &free.seen {
        if ids == before.0 + 1 {
            tokens.push((before.0, before.1, bytes));
        }
        before = (ids, bytes);
    }
    tokens
        .windows(3)
        .find_map(|w| {
            let [a, b, c] = [w[0], w[1], w[2]];
            let consecutive = b.0 == a.0 + 1 && c.0 == b.0 + 1;
            let text = &free.text[a.1..c.2];
            let clean = [a, b, c].iter().all(|t| t.2 > t.1)
                && !text.chars().any(|c| c == '\u{fffd}' || c.is_control());
            (a.0 >= free.ids.len() / 3 && consecutive && clean && free.text.find(text) == Some(a.1))
                .then(|| (a.0, text.to_owned(), a.1))
        })
        .expect("three tokens to make a stop string of")
}

/// A stop string made of the text of three tokens; the worker is SIGKILLed once the caller
/// has two of them (their text held back by the worker, as the start of the stop string,
/// so the caller has their ids but not their text). The next worker rebuilds the half
/// match from the delivered ids: the stream ends exactly as the uninterrupted run with
/// that stop string (same ids, text, finish reason "stop", matched stop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_string_half_matched_at_the_seam_still_stops_the_stream() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let (supervisor, faults) = supervisor_with_faults_file(sandbox.path(), &[]).await;
    let plain = long("The capital of France is", 90);
    let free = reference(&supervisor, plain.clone()).await;
    let (k, stop, at) = stop_string_of_three_tokens(&free);
    let request = plain.stop(stop.clone());
    let want = reference(&supervisor, request.clone()).await;
    let finished = want.finished.as_ref().expect("finished");
    assert_eq!(finished.finish_reason, FinishReason::Stop);
    assert_eq!(finished.matched_stop.as_deref(), Some(stop.as_str()));
    assert_eq!(
        want.ids,
        free.ids[..k + 3],
        "the stop string's tokens are sent"
    );
    assert_eq!(
        want.text,
        free.text[..at],
        "the text ends before the stop string"
    );
    // The next worker runs alone, one token per engine step: its engine stalls once it has
    // made tokens 0..=k+1, which the caller receives before killing it.
    restart_with_faults(
        &supervisor,
        &faults,
        &format!("engine_stall_after_steps={}", k + 2),
    )
    .await;
    let mut events = supervisor.subscribe();
    let stream = supervisor
        .client()
        .generate(request)
        .await
        .expect("generate");
    let got = read_cutting(&supervisor, stream, &[k + 2], Signal::SIGKILL).await;
    let what = format!(
        "stop string {stop:?} (tokens {k}..={}), cut at {}",
        k + 2,
        k + 2
    );
    assert_same_stream(&got, &want, 1, &what);
    let (resumed, _) = support::wait_event(&mut events, READY, |e| {
        matches!(e, LifecycleEvent::Resumed { .. })
    })
    .await;
    let LifecycleEvent::Resumed {
        delivered_tokens, ..
    } = resumed
    else {
        unreachable!()
    };
    assert_eq!(delivered_tokens, k + 2, "{what}: the seam");
    // At the seam the caller had two of the stop string's tokens but none of its text.
    let seam_text = got
        .seen
        .iter()
        .rev()
        .find(|(ids, _)| *ids <= k + 2)
        .map_or(0, |&(_, bytes)| bytes);
    assert_eq!(seam_text, at, "{what}: the text held back at the seam");
    supervisor.shutdown().await.expect("shutdown");
}

/// Greedy decoding with repetition, presence and frequency penalties (which change this
/// output), SIGKILL mid-stream: the next worker's penalties count the delivered tokens,
/// so the stream is the reference's, token by token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_with_penalties_resumes_with_the_same_tokens() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let supervisor = support::ready_tiny_supervisor(sandbox.path()).await;
    let plain = long("The capital of France is", 300).logprobs(2);
    let request = plain
        .clone()
        .repetition_penalty(1.5)
        .repetition_context_size(8)
        .presence_penalty(1.0)
        .frequency_penalty(0.7)
        .penalty_context_size(8);
    let unpenalized = reference(&supervisor, plain).await;
    let want = reference(&supervisor, request.clone()).await;
    assert_ne!(unpenalized.ids, want.ids, "the penalties change the output");
    let stream = supervisor
        .client()
        .generate(request)
        .await
        .expect("generate");
    let got = read_cutting(&supervisor, stream, &[40], Signal::SIGKILL).await;
    assert_same_stream(&got, &want, 1, "penalties, cut at 40");
    supervisor.shutdown().await.expect("shutdown");
}

/// A lone stream runs on the worker's solo path; a second request arrives, which moves the
/// first into the batch, and the worker is SIGKILLed right then (by its fault injection,
/// once the hand-over is done). The first stream is resumed, the second (no output yet)
/// sent again; both give their references' tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_the_solo_to_batch_hand_over_loses_neither_stream() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let (supervisor, faults) = supervisor_with_faults_file(sandbox.path(), &[]).await;
    let first: GenerateRequest = long("A lone stream", 600).logprobs(1);
    let second = long("The second request", 80);
    let want_first = reference(&supervisor, first.clone()).await;
    let want_second = reference(&supervisor, second.clone()).await;
    let pid = restart_with_faults(&supervisor, &faults, "sigkill_at_hand_over").await;
    let mut events = supervisor.subscribe();
    let client = supervisor.client();
    let mut stream = client.generate(first).await.expect("generate");
    let mut got = Received::default();
    read_until(&mut stream, &mut got, |g| g.ids.len() >= 20).await;
    assert!(got.finished.is_none() && got.error.is_none(), "{got:?}");
    let second_call = tokio::spawn({
        let client = client.clone();
        async move {
            let mut stream = client.generate(second).await.expect("generate the second");
            let attempts = stream.attempts();
            let mut got = Received::default();
            read_until(&mut stream, &mut got, |_| false).await;
            (attempts, got)
        }
    });
    read_until(&mut stream, &mut got, |_| false).await;
    wait_killed(&mut events, pid).await;
    assert_same_stream(&got, &want_first, 1, "the stream handed over");
    let (attempts, got_second) = second_call.await.expect("the second call");
    assert_same_stream(&got_second, &want_second, 0, "the request that came second");
    assert_eq!(attempts, 2, "the second request was sent again");
    supervisor.shutdown().await.expect("shutdown");
}
