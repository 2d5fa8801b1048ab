//! Streams resumed on the next worker after their worker dies (issue 15): the worker is
//! killed at chosen points (right after the first token, mid-stream, twice, inside a batch,
//! hung and found by the health probes, its engine crashed at a chosen step by fault
//! injection, with a standby taking over, with and without the stream shadowed on the
//! standby) and every resumed
//! stream must give, token id by token id, what an uninterrupted run of the same request
//! gives; the resume limit and the opt-out end the stream with `WorkerDied`. The points of
//! `resume_points` use the helpers here: during prefill, with a stop string half matched
//! at the seam, with penalties, during the solo-to-batch hand-over.

use std::time::Duration;

use mlx_sidecar::{
    Error, Finished, GenerateEvent, GenerateRequest, GenerateStream, LifecycleEvent, Supervisor,
    TokenLogprob,
};
use nix::sys::signal::Signal;
use tokio::time::Instant;

use crate::support::{self, READY};

/// What a caller received from one stream.
#[derive(Debug, Default)]
pub(super) struct Received {
    pub(super) ids: Vec<u32>,
    pub(super) text: String,
    pub(super) logprobs: Vec<TokenLogprob>,
    pub(super) finished: Option<Finished>,
    pub(super) error: Option<Error>,
    /// After each token event: the token ids and text bytes received so far.
    pub(super) seen: Vec<(usize, usize)>,
}

impl Received {
    /// Adds one event of the stream.
    pub(super) fn add(&mut self, event: Result<GenerateEvent, Error>) {
        match event {
            Ok(GenerateEvent::Token {
                text,
                token_ids,
                logprobs,
            }) => {
                self.text.push_str(&text);
                self.ids.extend(token_ids);
                self.logprobs.extend(logprobs);
                self.seen.push((self.ids.len(), self.text.len()));
            }
            Ok(GenerateEvent::Finished(f)) => self.finished = Some(f),
            Err(e) => self.error = Some(e),
        }
    }
}

/// Reads `stream` into `got` until `enough` holds for what was received, or to its end.
pub(super) async fn read_until(
    stream: &mut GenerateStream,
    got: &mut Received,
    enough: impl Fn(&Received) -> bool,
) {
    let read = async {
        while !enough(got)
            && let Some(event) = stream.next_event().await
        {
            got.add(event);
        }
    };
    tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .expect("the stream goes on");
}

/// Reads `stream` to its end. Each time the tokens received reach the next of `cuts`, the
/// worker serving the stream then gets `signal` (once per worker: a cut waits until the
/// stream runs on a worker not signalled yet).
pub(super) async fn read_cutting(
    supervisor: &Supervisor,
    mut stream: GenerateStream,
    cuts: &[usize],
    signal: Signal,
) -> Received {
    let mut got = Received::default();
    let mut signalled: Vec<u32> = Vec::new();
    let mut cuts = cuts.iter().copied().peekable();
    let read = async {
        while let Some(event) = stream.next_event().await {
            got.add(event);
            if let Some(&cut) = cuts.peek()
                && got.ids.len() >= cut
                && let Some(pid) = supervisor.worker_pid()
                && !signalled.contains(&pid)
            {
                support::signal(pid, signal);
                signalled.push(pid);
                cuts.next();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .expect("the stream ends");
    assert!(cuts.next().is_none(), "every cut was made: {got:?}");
    got
}

/// The uninterrupted run of `request`.
pub(super) async fn reference(supervisor: &Supervisor, request: GenerateRequest) -> Received {
    let stream = supervisor
        .client()
        .generate(request)
        .await
        .expect("generate");
    let got = read_cutting(supervisor, stream, &[], Signal::SIGKILL).await;
    assert!(got.error.is_none(), "{:?}", got.error);
    got
}

/// `got` is `want`, token by token (and text, logprobs, finish), resumed `resumes` times.
pub(super) fn assert_same_stream(got: &Received, want: &Received, resumes: u32, what: &str) {
    assert!(got.error.is_none(), "{what}: {:?}", got.error);
    assert_eq!(
        got.ids.len(),
        want.ids.len(),
        "{what}: tokens; finished {:?}, want {:?}",
        got.finished,
        want.finished
    );
    assert_eq!(got.ids, want.ids, "{what}: token ids");
    assert_eq!(got.text, want.text, "{what}: text");
    let (g, w) = (
        got.finished.as_ref().expect("finished"),
        want.finished.as_ref().expect("finished"),
    );
    assert_eq!(g.finish_reason, w.finish_reason, "{what}");
    assert_eq!(g.matched_stop, w.matched_stop, "{what}");
    assert_eq!(
        g.usage.completion_tokens, w.usage.completion_tokens,
        "{what}"
    );
    assert_eq!(g.usage.prompt_tokens, w.usage.prompt_tokens, "{what}");
    assert_eq!(g.usage.resumes, resumes, "{what}: resumes");
    assert_eq!(got.logprobs.len(), want.logprobs.len(), "{what}: logprobs");
    for (a, b) in got.logprobs.iter().zip(&want.logprobs) {
        assert_eq!(a.token_id, b.token_id, "{what}");
        assert!(
            (a.logprob - b.logprob).abs() < 1e-3,
            "{what}: {a:?} vs {b:?}"
        );
        let top = |l: &TokenLogprob| l.top.iter().map(|t| t.token_id).collect::<Vec<_>>();
        assert_eq!(top(a), top(b), "{what}");
    }
}

/// A greedy request that generates exactly `tokens` tokens.
pub(super) fn long(prompt: &str, tokens: u32) -> GenerateRequest {
    GenerateRequest::text(prompt)
        .max_tokens(tokens)
        .ignore_eos(true)
}

/// Greedy with logprobs, SIGKILL mid-stream: one unbroken stream, the reference's tokens;
/// the resume is counted in `Finished`, the client's count and a `Resumed` event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_stream_resumes_mid_stream_with_the_same_tokens() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let supervisor = support::ready_tiny_supervisor(sandbox.path()).await;
    let request = long("A long story:", 300).logprobs(3);
    let want = reference(&supervisor, request.clone()).await;
    let mut events = supervisor.subscribe();
    let client = supervisor.client();
    let stream = client.generate(request).await.expect("generate");
    let got = read_cutting(&supervisor, stream, &[40], Signal::SIGKILL).await;
    assert_same_stream(&got, &want, 1, "greedy, cut at 40");
    let (resumed, _) = support::wait_event(&mut events, Duration::from_secs(5), |e| {
        matches!(e, LifecycleEvent::Resumed { .. })
    })
    .await;
    let LifecycleEvent::Resumed {
        resume_count,
        delivered_tokens,
        pid,
        stall,
        gap,
        ..
    } = resumed
    else {
        unreachable!()
    };
    assert_eq!(resume_count, 1);
    assert!((40..300).contains(&delivered_tokens), "{delivered_tokens}");
    // The gap runs from the last token before the kill, so it holds the whole stall.
    assert!(gap >= stall, "gap {gap:?} stall {stall:?}");
    assert_eq!(pid, supervisor.worker_pid());
    assert_eq!(client.resumes(), 1);
    assert_eq!(supervisor.resumes(), 1);
    eprintln!(
        "FIGURE resume greedy: seam after {delivered_tokens} tokens, stall {stall:?}, gap {gap:?}"
    );
    supervisor.shutdown().await.expect("shutdown");
}

/// Seeded sampling, SIGKILL right after the first token, then again mid-stream on the
/// restarted worker: the seeded key sequence carries on across both seams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_stream_resumes_after_the_first_token_and_again() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let supervisor = support::ready_tiny_supervisor(sandbox.path()).await;
    let request = long("Once upon a time", 200)
        .temperature(0.9)
        .top_p(0.95)
        .seed(42)
        .repetition_penalty(1.3)
        .presence_penalty(0.5);
    let want = reference(&supervisor, request.clone()).await;
    let stream = supervisor
        .client()
        .generate(request)
        .await
        .expect("generate");
    let got = read_cutting(&supervisor, stream, &[1, 100], Signal::SIGKILL).await;
    assert_same_stream(&got, &want, 2, "seeded, cut at 1 and 100");
    supervisor.shutdown().await.expect("shutdown");
}

/// Four streams in one batch (greedy and seeded) when the worker is killed: each goes on
/// on the next worker with its own reference's tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_streams_resumes_together() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let supervisor = support::ready_tiny_supervisor(sandbox.path()).await;
    let requests: Vec<GenerateRequest> = vec![
        long("The first", 160),
        long("Second prompt, longer than the first one", 200),
        long("Third", 180).temperature(0.8).seed(7),
        long("Fourth: 日本語", 170).temperature(1.0).seed(9),
    ];
    let mut wants = Vec::new();
    for request in &requests {
        wants.push(reference(&supervisor, request.clone()).await);
    }
    let client = supervisor.client();
    let mut streams = Vec::new();
    for request in &requests {
        streams.push(client.generate(request.clone()).await.expect("generate"));
    }
    // All four have output (generate returned); kill while they decode together.
    let pid = supervisor.worker_pid().expect("pid");
    support::signal(pid, Signal::SIGKILL);
    for (i, (stream, want)) in streams.into_iter().zip(&wants).enumerate() {
        let got = read_cutting(&supervisor, stream, &[], Signal::SIGKILL).await;
        let resumes = got.finished.as_ref().map(|f| f.usage.resumes);
        // A stream the worker had finished before the kill was not resumed.
        let expected = if got.ids.len() == want.ids.len() && resumes == Some(0) {
            0
        } else {
            1
        };
        assert_same_stream(&got, want, expected, &format!("batch stream {i}"));
    }
    assert!(client.resumes() >= 1, "{}", client.resumes());
    eprintln!(
        "FIGURE resume batch: {} of 4 streams resumed",
        client.resumes()
    );
    supervisor.shutdown().await.expect("shutdown");
}

/// A hung worker (SIGSTOP) mid-stream is found by the health probes and killed; the stream
/// goes on on the next worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_worker_found_by_the_probes_is_resumed_from() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    // A short grace: the stopped worker gets SIGTERM and SIGCONT once its probes fail, and
    // must not finish the stream while it drains (else nothing is resumed).
    let config = support::config(support::tiny_worker(), sandbox.path())
        .with_health(Duration::from_millis(250), Duration::from_millis(400), 3)
        .with_shutdown_grace(Duration::from_millis(300));
    let supervisor = Supervisor::spawn(config).await.expect("spawn");
    supervisor.wait_ready(READY).await.expect("ready");
    // Long enough that the worker is still generating when it is stopped.
    let request = long("Hang on", 1500);
    let want = reference(&supervisor, request.clone()).await;
    let stream = supervisor
        .client()
        .generate(request)
        .await
        .expect("generate");
    let stopped_at = Instant::now();
    let got = read_cutting(&supervisor, stream, &[30], Signal::SIGSTOP).await;
    assert_same_stream(&got, &want, 1, "SIGSTOP at 30");
    eprintln!(
        "FIGURE resume after a hang: stream done {:?} after the stop",
        stopped_at.elapsed()
    );
    supervisor.shutdown().await.expect("shutdown");
}

/// With a standby, the killed worker's stream goes on on the promoted standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_the_stream_over() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let config = support::config(support::tiny_worker(), sandbox.path()).with_standby(true);
    let supervisor = Supervisor::spawn(config).await.expect("spawn");
    let mut events = supervisor.subscribe();
    supervisor.wait_ready(READY).await.expect("ready");
    let (ready, _) = support::wait_event(&mut events, READY, |e| {
        matches!(e, LifecycleEvent::StandbyReady { .. })
    })
    .await;
    let LifecycleEvent::StandbyReady { pid: standby, .. } = ready else {
        unreachable!()
    };
    let request = long("Standby story", 240).logprobs(0);
    let want = reference(&supervisor, request.clone()).await;
    let stream = supervisor
        .client()
        .generate(request)
        .await
        .expect("generate");
    let got = read_cutting(&supervisor, stream, &[20], Signal::SIGKILL).await;
    assert_same_stream(&got, &want, 1, "standby, cut at 20");
    let (resumed, _) = support::wait_event(&mut events, Duration::from_secs(5), |e| {
        matches!(e, LifecycleEvent::Resumed { .. })
    })
    .await;
    let LifecycleEvent::Resumed { pid, stall, .. } = resumed else {
        unreachable!()
    };
    assert_eq!(pid, Some(standby), "the former standby continued it");
    eprintln!("FIGURE resume on the standby: stall {stall:?}");
    supervisor.shutdown().await.expect("shutdown");
}

/// Shadow prefill: the idle standby computed the stream's prompt ahead, so the stream it
/// resumes reuses it (the whole prompt cached) and goes on with the reference's tokens;
/// with shadowing off the standby computes the prompt again (nothing cached).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_resumes_a_shadowed_stream_from_its_cache() {
    for shadow in [true, false] {
        let sandbox = tempfile::tempdir().expect("tempdir");
        let config = support::config(support::tiny_worker(), sandbox.path())
            .with_standby(true)
            .with_shadow_prefill(shadow);
        let supervisor = Supervisor::spawn(config).await.expect("spawn");
        let mut events = supervisor.subscribe();
        supervisor.wait_ready(READY).await.expect("ready");
        support::wait_event(&mut events, READY, |e| {
            matches!(e, LifecycleEvent::StandbyReady { .. })
        })
        .await;
        // Long enough (seconds on the tiny model) for the kill to come mid-stream.
        let request = long("A story told on two workers", 1500);
        let want = reference(&supervisor, request.clone()).await;
        let client = supervisor.client();
        let shadowed_before = client.shadow_prefills();
        let mut stream = client.generate(request).await.expect("generate");
        let mut got = Received::default();
        read_until(&mut stream, &mut got, |r| !r.ids.is_empty()).await;
        if shadow {
            support::wait_until(READY, "the stream's shadow prefill", || async {
                client.shadow_prefills() > shadowed_before
            })
            .await;
        }
        let pid = supervisor.worker_pid().expect("a worker");
        support::signal(pid, Signal::SIGKILL);
        read_until(&mut stream, &mut got, |r| {
            r.finished.is_some() || r.error.is_some()
        })
        .await;
        assert_same_stream(&got, &want, 1, &format!("shadow {shadow}"));
        let usage = &got.finished.as_ref().expect("finished").usage;
        let cached = if shadow { usage.prompt_tokens } else { 0 };
        assert_eq!(usage.cached_prompt_tokens, cached, "shadow {shadow}");
        if !shadow {
            assert_eq!(client.shadow_prefills(), 0);
        }
        supervisor.shutdown().await.expect("shutdown");
    }
}

/// Past the limit the stream ends with `WorkerDied` holding what was streamed and the
/// resumes made; with resuming off, at the first death.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_and_the_opt_out_end_with_worker_died() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let supervisor = support::ready_tiny_supervisor(sandbox.path()).await;
    let request = long("Limits", 400);
    let want = reference(&supervisor, request.clone()).await;
    let client = supervisor.client();
    for (limit, cuts) in [(1u32, vec![20, 80]), (0, vec![20])] {
        let stream = client
            .generate(request.clone().max_resumes(limit))
            .await
            .expect("generate");
        let got = read_cutting(&supervisor, stream, &cuts, Signal::SIGKILL).await;
        assert!(got.finished.is_none(), "limit {limit}: {got:?}");
        match &got.error {
            Some(Error::WorkerDied {
                partial_text,
                tokens_received,
                resumes,
                ..
            }) => {
                assert_eq!(*resumes, limit);
                assert_eq!(partial_text, &got.text);
                assert_eq!(*tokens_received, got.ids.len());
            }
            other => panic!("limit {limit}: expected WorkerDied, got {other:?}"),
        }
        // What arrived is the reference's beginning.
        assert_eq!(got.ids, want.ids[..got.ids.len()], "limit {limit}");
    }
    assert_eq!(client.resumes(), 1);
    supervisor.shutdown().await.expect("shutdown");
}

/// The engine thread crashes at a chosen decode step (fault injection) while gRPC still
/// answers: the stream gets `UNAVAILABLE`, the supervisor replaces the worker (health says
/// `NOT_SERVING`), and the stream goes on on the next worker with the reference's tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_crash_mid_decode_is_resumed_from() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let faults = sandbox.path().join("faults");
    std::fs::write(&faults, "engine_crash_after_steps=40").expect("write faults");
    let worker = support::tiny_worker()
        .with_args(["--stall-seconds", "1"])
        .with_env("MLX_WORKER_FAULTS_FILE", faults.display().to_string());
    let supervisor = Supervisor::spawn(support::config(worker, sandbox.path()))
        .await
        .expect("spawn");
    supervisor.wait_ready(READY).await.expect("ready");
    let request = long("Crash the engine", 300).seed(3).temperature(0.7);
    let stream = supervisor
        .client()
        .generate(request.clone())
        .await
        .expect("generate");
    // The faults were read at start-up: the next worker runs without them.
    std::fs::write(&faults, "").expect("clear faults for the next worker");
    let got = read_cutting(&supervisor, stream, &[], Signal::SIGKILL).await;
    // The reference, on the fault-free worker.
    let want = reference(&supervisor, request).await;
    assert_same_stream(&got, &want, 1, "engine crash at step 40");
    assert_eq!(supervisor.resumes(), 1);
    supervisor.shutdown().await.expect("shutdown");
}
