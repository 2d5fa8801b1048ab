//! The chaos report: requests by outcome (a completed stream whose token ids differ from
//! its prompt's reference is mismatched), the floor (mismatches without faults), each fault kind's time to detect and to serve
//! again (p50, p99, max), where a restart's time goes, and what was left behind. Printed as
//! tables for people or one JSON object for machines.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{
    inject::FaultRecord,
    leaks::FinalState,
    load::{Outcome, RequestRecord},
    observe::Marks,
    plan::{FaultKind, FaultPlan},
};

/// Percentiles of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Stats {
    pub(crate) n: usize,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
    pub(crate) mean: f64,
}

impl Stats {
    /// From values in seconds (reported in milliseconds), nearest-rank percentiles.
    pub(crate) fn of_secs(values: impl IntoIterator<Item = f64>) -> Stats {
        let mut v: Vec<f64> = values.into_iter().map(|s| s * 1e3).collect();
        if v.is_empty() {
            return Stats::default();
        }
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Stats {
            n: v.len(),
            p50: rank(0.50),
            p99: rank(0.99),
            max: v[v.len() - 1],
            mean: v.iter().sum::<f64>() / v.len() as f64,
        }
    }
}

/// The whole report (the `--json` object).
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) settings: Settings,
    pub(crate) requests: Requests,
    /// The same load without faults, before them.
    pub(crate) floor: Floor,
    pub(crate) faults: Faults,
    /// Worker restarts (Starting events after the first).
    pub(crate) restarts: usize,
    /// Takeovers by the standby worker (Promoted events), with --standby.
    pub(crate) standby_takeovers: usize,
    /// After each `kill`, where the time to serve again went.
    pub(crate) restart_breakdown_ms: BTreeMap<&'static str, Stats>,
    pub(crate) final_state: FinalState,
    pub(crate) verdict: Verdict,
}

#[derive(Debug, Serialize)]
pub(crate) struct Settings {
    pub(crate) model: String,
    pub(crate) clients: usize,
    pub(crate) prompt_tokens: usize,
    /// Distinct prompts, each with a greedy reference run alone before any fault.
    pub(crate) prompts: u64,
    pub(crate) max_tokens: u32,
    pub(crate) duration_s: f64,
    pub(crate) faults: Vec<FaultPlan>,
    /// Whether the supervisor kept a standby worker (--standby).
    pub(crate) standby: bool,
    /// Whether streams resumed on the next worker (no --no-resume).
    pub(crate) resume: bool,
    /// Whether the first restart after a served run was immediate (no --no-immediate-restart).
    pub(crate) immediate_restart: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct Requests {
    pub(crate) total: usize,
    pub(crate) completed: usize,
    /// Completed streams whose token ids differ from their prompt's reference.
    pub(crate) mismatched: usize,
    /// `mismatched` / (`completed` + `mismatched`).
    pub(crate) mismatched_rate: f64,
    pub(crate) failed: usize,
    pub(crate) lost: usize,
    /// Completed or failed after the client library re-sent them (the worker died or was
    /// unavailable before their first token): the caller did nothing.
    pub(crate) retried_transparently: usize,
    /// Requests whose stream the client library resumed on the next worker after their
    /// worker died mid-stream (completed or not), and the resumes in all.
    pub(crate) resumed: usize,
    pub(crate) resumes: u64,
    pub(crate) failed_by_reason: BTreeMap<String, usize>,
    pub(crate) lost_by_reason: BTreeMap<String, usize>,
    /// Failures whose error said retrying is safe (nothing had been streamed).
    pub(crate) failed_retry_safe: usize,
    pub(crate) tokens: u64,
    pub(crate) tokens_per_second: f64,
    pub(crate) time_to_first_token_ms: Stats,
    /// Per resume: from noticing the worker's death to the continuation's first message
    /// (the `Resumed` events' stall).
    pub(crate) resume_stall_ms: Stats,
    /// Per resume: from the last token before the seam to the first after it (the
    /// `Resumed` events' gap: the stall plus the time the dying worker took to go).
    pub(crate) seam_gap_ms: Stats,
    /// Per resumed stream that finished, at its last worker: the continuation's queue wait
    /// and its prefill (the prompt and the delivered tokens), parts of the stall.
    pub(crate) resume_queue_wait_ms: Stats,
    pub(crate) resume_prefill_ms: Stats,
    /// What those last workers found in their prefix caches.
    pub(crate) resume_cached: ResumeCached,
}

/// Over the resumed streams that finished: the KV their last worker found computed (a
/// standby's shadows), summed.
#[derive(Debug, Default, Serialize)]
pub(crate) struct ResumeCached {
    pub(crate) streams: usize,
    pub(crate) prompt_tokens: u64,
    pub(crate) cached_prompt_tokens: u64,
    pub(crate) cached_delivered_tokens: u64,
}

/// The same load without faults: how often streams differ from their reference when
/// nothing happens (floating-point near-ties flipped by batching, for example).
#[derive(Debug, Serialize)]
pub(crate) struct Floor {
    pub(crate) total: usize,
    pub(crate) completed: usize,
    pub(crate) mismatched: usize,
    /// `mismatched` / (`completed` + `mismatched`).
    pub(crate) mismatched_rate: f64,
    /// Requests that did not complete (an error or lost) although nothing was injected.
    pub(crate) not_completed: usize,
}

impl Floor {
    fn of(records: &[RequestRecord]) -> Floor {
        let count = |f: fn(&Outcome) -> bool| records.iter().filter(|r| f(&r.outcome)).count();
        let completed = count(|o| matches!(o, Outcome::Completed));
        let mismatched = count(|o| matches!(o, Outcome::Mismatched(_)));
        Floor {
            total: records.len(),
            completed,
            mismatched,
            mismatched_rate: rate(mismatched, completed),
            not_completed: records.len() - completed - mismatched,
        }
    }
}

/// `mismatched` among the streams that completed.
fn rate(mismatched: usize, completed: usize) -> f64 {
    mismatched as f64 / (completed + mismatched).max(1) as f64
}

#[derive(Debug, Serialize)]
pub(crate) struct Faults {
    pub(crate) injected: usize,
    pub(crate) recovered: usize,
    pub(crate) by_kind: BTreeMap<FaultKind, KindStats>,
    pub(crate) events_missed: u64,
    pub(crate) records: Vec<FaultRecord>,
}

#[derive(Debug, Serialize)]
pub(crate) struct KindStats {
    pub(crate) injected: usize,
    pub(crate) recovered: usize,
    /// Fault to the supervisor's `Crashed`/`Unhealthy` event.
    pub(crate) time_to_detect_ms: Stats,
    /// Fault to the replacement worker's `Ready` event (health `SERVING`), when replaced.
    pub(crate) time_to_ready_ms: Stats,
    /// Fault to the next first token after recovery.
    pub(crate) time_to_serve_again_ms: Stats,
}

#[derive(Debug, Serialize)]
pub(crate) struct Verdict {
    pub(crate) lost: usize,
    /// Completed streams under faults that differ from their reference.
    pub(crate) mismatched: usize,
    pub(crate) leaked: usize,
    pub(crate) unrecovered: usize,
    pub(crate) ok: bool,
}

/// Builds the report.
pub(crate) fn build(
    settings: Settings,
    requests: &[RequestRecord],
    floor: &[RequestRecord],
    faults: Vec<FaultRecord>,
    marks: &Marks,
    final_state: FinalState,
) -> Report {
    let mut failed_by_reason = BTreeMap::new();
    let mut lost_by_reason = BTreeMap::new();
    let (mut completed, mut failed, mut lost, mut retried, mut retry_safe) = (0, 0, 0, 0, 0);
    let mut mismatched = 0;
    for r in requests {
        match &r.outcome {
            Outcome::Completed => completed += 1,
            Outcome::Mismatched(detail) => {
                mismatched += 1;
                tracing::warn!(
                    "request {} (prompt {}) mismatched: {detail}",
                    r.client,
                    r.prompt
                );
            }
            Outcome::Failed(reason) => {
                failed += 1;
                *failed_by_reason.entry(reason.clone()).or_insert(0) += 1;
                if r.retry_safe == Some(true) {
                    retry_safe += 1;
                }
            }
            Outcome::Lost(reason) => {
                lost += 1;
                // Group by the reason's kind (the text before the colon).
                let key = reason.split(':').next().unwrap_or(reason).to_owned();
                *lost_by_reason.entry(key).or_insert(0) += 1;
            }
        }
        if r.attempts > 1 && !matches!(r.outcome, Outcome::Lost(_)) {
            retried += 1;
        }
    }
    let resumed = requests.iter().filter(|r| r.resumes > 0).count();
    let resumes: u64 = requests.iter().map(|r| u64::from(r.resumes)).sum();
    let tokens: u64 = requests.iter().map(|r| u64::from(r.tokens)).sum();
    let duration = settings.duration_s.max(1e-9);

    let mut by_kind: BTreeMap<FaultKind, KindStats> = BTreeMap::new();
    let kinds: std::collections::BTreeSet<FaultKind> = faults.iter().map(|f| f.kind).collect();
    for kind in kinds {
        let of: Vec<&FaultRecord> = faults.iter().filter(|f| f.kind == kind).collect();
        by_kind.insert(
            kind,
            KindStats {
                injected: of.len(),
                recovered: of.iter().filter(|f| f.recovered()).count(),
                time_to_detect_ms: Stats::of_secs(
                    of.iter().filter_map(|f| Some(f.detected? - f.at)),
                ),
                time_to_ready_ms: Stats::of_secs(of.iter().filter_map(|f| Some(f.ready? - f.at))),
                time_to_serve_again_ms: Stats::of_secs(
                    of.iter().filter_map(|f| Some(f.serving? - f.at)),
                ),
            },
        );
    }
    let kills: Vec<&FaultRecord> = faults
        .iter()
        .filter(|f| f.kind == FaultKind::Kill && f.recovered())
        .collect();
    let phase =
        |f: fn(&FaultRecord) -> Option<f64>| Stats::of_secs(kills.iter().filter_map(|r| f(r)));
    let mut breakdown = BTreeMap::new();
    breakdown.insert(
        "1_detect (kill to Crashed)",
        phase(|r| Some(r.crashed? - r.at)),
    );
    breakdown.insert(
        "2_backoff (Crashed to Starting)",
        phase(|r| Some(r.starting? - r.crashed?)),
    );
    let takeovers = |serving: bool| {
        Stats::of_secs(
            kills
                .iter()
                .filter(|r| r.promoted == Some(serving))
                .filter_map(|r| Some(r.ready? - r.crashed?)),
        )
    };
    breakdown.insert(
        "2a_takeover by a serving standby (Crashed to Ready)",
        takeovers(true),
    );
    breakdown.insert(
        "2b_takeover by a starting standby (Crashed to Ready)",
        takeovers(false),
    );
    breakdown.insert(
        "3_python_start (process start to worker object)",
        phase(|r| Some(r.startup?.interpreter.as_secs_f64())),
    );
    breakdown.insert(
        "4_imports (mlx, mlx-lm)",
        phase(|r| Some(r.startup?.imports.as_secs_f64())),
    );
    breakdown.insert(
        "5_model_load",
        phase(|r| Some(r.startup?.load.as_secs_f64())),
    );
    breakdown.insert("6_warmup", phase(|r| Some(r.startup?.warmup.as_secs_f64())));
    breakdown.insert(
        "7_supervisor_sees_ready (+-10 ms clock tick)",
        phase(|r| Some(r.load_time? - r.startup?.process_to_ready.as_secs_f64())),
    );
    breakdown.insert(
        "8_first_token (Ready to a request's first token)",
        phase(|r| Some(r.serving? - r.ready?)),
    );
    breakdown.insert(
        "total (kill to first token)",
        phase(|r| Some(r.serving? - r.at)),
    );

    let restarts = marks
        .events
        .iter()
        .filter(|(_, e)| matches!(e, mlx_sidecar::LifecycleEvent::Starting { attempt, .. } if *attempt > 0))
        .count();
    let standby_takeovers = marks
        .events
        .iter()
        .filter(|(_, e)| matches!(e, mlx_sidecar::LifecycleEvent::Promoted { .. }))
        .count();
    let unrecovered = faults.iter().filter(|f| !f.recovered()).count();
    let leaked = final_state.leaks();
    Report {
        requests: Requests {
            total: requests.len(),
            completed,
            mismatched,
            mismatched_rate: rate(mismatched, completed),
            failed,
            lost,
            retried_transparently: retried,
            resumed,
            resumes,
            failed_by_reason,
            lost_by_reason,
            failed_retry_safe: retry_safe,
            tokens,
            tokens_per_second: tokens as f64 / duration,
            time_to_first_token_ms: Stats::of_secs(
                requests
                    .iter()
                    .filter_map(|r| Some(r.first_token? - r.sent)),
            ),
            resume_stall_ms: Stats::of_secs(marks.events.iter().filter_map(|(_, e)| match e {
                mlx_sidecar::LifecycleEvent::Resumed { stall, .. } => Some(stall.as_secs_f64()),
                _ => None,
            })),
            seam_gap_ms: Stats::of_secs(marks.events.iter().filter_map(|(_, e)| match e {
                mlx_sidecar::LifecycleEvent::Resumed { gap, .. } => Some(gap.as_secs_f64()),
                _ => None,
            })),
            resume_queue_wait_ms: Stats::of_secs(
                requests
                    .iter()
                    .filter_map(|r| Some(r.resumed_segment?.queue_wait_ms / 1e3)),
            ),
            resume_prefill_ms: Stats::of_secs(
                requests
                    .iter()
                    .filter_map(|r| Some(r.resumed_segment?.prefill_ms / 1e3)),
            ),
            resume_cached: requests.iter().filter_map(|r| r.resumed_segment).fold(
                ResumeCached::default(),
                |mut sum, s| {
                    sum.streams += 1;
                    sum.prompt_tokens += u64::from(s.prompt_tokens);
                    sum.cached_prompt_tokens += u64::from(s.cached_prompt_tokens);
                    sum.cached_delivered_tokens += u64::from(s.cached_delivered_tokens);
                    sum
                },
            ),
        },
        faults: Faults {
            injected: faults.len(),
            recovered: faults.len() - unrecovered,
            by_kind,
            events_missed: marks.events_missed,
            records: faults,
        },
        floor: Floor::of(floor),
        settings,
        restarts,
        standby_takeovers,
        restart_breakdown_ms: breakdown,
        verdict: Verdict {
            lost,
            mismatched,
            leaked,
            unrecovered,
            ok: lost == 0 && mismatched == 0 && leaked == 0 && unrecovered == 0,
        },
        final_state,
    }
}

fn stats_row(name: &str, s: &Stats) -> String {
    if s.n == 0 {
        return format!("  {name:<52} {:>6}", "-");
    }
    format!(
        "  {name:<52} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
        s.n, s.p50, s.p99, s.max, s.mean
    )
}

/// The report as text tables.
pub(crate) fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let s = &r.settings;
    let q = &r.requests;
    let _ = writeln!(
        out,
        "chaos: {} clients, prompt {} tokens, {} generated each, {:.1} s, model {}",
        s.clients, s.prompt_tokens, s.max_tokens, s.duration_s, s.model
    );
    let _ = writeln!(
        out,
        "supervisor: standby {}, first restart after a served run {}",
        if s.standby { "on" } else { "off" },
        if s.immediate_restart {
            "immediate"
        } else {
            "after --restart-delay"
        }
    );
    let _ = writeln!(out, "\nrequests");
    let _ = writeln!(out, "  {:<28} {:>8}", "total", q.total);
    let _ = writeln!(out, "  {:<28} {:>8}", "completed", q.completed);
    let _ = writeln!(
        out,
        "  {:<28} {:>8}  (token ids differ from the greedy reference)",
        "MISMATCHED", q.mismatched
    );
    let _ = writeln!(
        out,
        "  {:<28} {:>8}",
        "retried transparently", q.retried_transparently
    );
    let _ = writeln!(
        out,
        "  {:<28} {:>8}  ({} resumes{})",
        "resumed mid-stream",
        q.resumed,
        q.resumes,
        if s.resume { "" } else { "; off: --no-resume" }
    );
    let _ = writeln!(
        out,
        "  {:<28} {:>8}",
        "failed (caller got an error)", q.failed
    );
    for (reason, n) in &q.failed_by_reason {
        let _ = writeln!(out, "    {reason:<26} {n:>8}");
    }
    let _ = writeln!(out, "  {:<28} {:>8}", "LOST (silently)", q.lost);
    for (reason, n) in &q.lost_by_reason {
        let _ = writeln!(out, "    {reason:<26} {n:>8}");
    }
    let _ = writeln!(
        out,
        "  {:<28} {:>8}  ({:.1} tokens/s)",
        "tokens", q.tokens, q.tokens_per_second
    );
    let fl = &r.floor;
    let _ = writeln!(
        out,
        "\nno-fault floor: {} requests over the {} prompts, {} completed, {} mismatched, {} not completed",
        fl.total, s.prompts, fl.completed, fl.mismatched, fl.not_completed
    );
    if fl.mismatched > 0 {
        let _ = writeln!(
            out,
            "  NOTE: without faults {:.2}% of streams differ from their reference (floating-point \
             near-ties); under faults {:.2}%",
            fl.mismatched_rate * 100.0,
            q.mismatched_rate * 100.0
        );
    }
    let header = format!(
        "  {:<52} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "", "n", "p50 ms", "p99 ms", "max ms", "mean ms"
    );
    let _ = writeln!(
        out,
        "\nfaults: {} injected, {} recovered, {} restarts, {} standby takeovers",
        r.faults.injected, r.faults.recovered, r.restarts, r.standby_takeovers
    );
    let _ = writeln!(out, "{header}");
    for (kind, k) in &r.faults.by_kind {
        let _ = writeln!(
            out,
            "{}",
            stats_row(&format!("{kind}: time to detect"), &k.time_to_detect_ms)
        );
        let _ = writeln!(
            out,
            "{}",
            stats_row(
                &format!("{kind}: time to Ready (replacement worker)"),
                &k.time_to_ready_ms
            )
        );
        let _ = writeln!(
            out,
            "{}",
            stats_row(
                &format!("{kind}: time to serve again"),
                &k.time_to_serve_again_ms
            )
        );
    }
    let _ = writeln!(
        out,
        "{}",
        stats_row(
            "time to first token (all requests)",
            &q.time_to_first_token_ms
        )
    );
    let _ = writeln!(
        out,
        "{}",
        stats_row(
            "seam gap (last token before to first token after)",
            &q.seam_gap_ms
        )
    );
    let _ = writeln!(
        out,
        "{}",
        stats_row(
            "resume stall (death noticed to the next token)",
            &q.resume_stall_ms
        )
    );
    if q.resume_prefill_ms.n > 0 {
        for (name, stats) in [
            (
                "  of which queue wait at the next worker",
                &q.resume_queue_wait_ms,
            ),
            (
                "  of which prefill there (prompt + delivered)",
                &q.resume_prefill_ms,
            ),
        ] {
            let _ = writeln!(out, "{}", stats_row(name, stats));
        }
        let c = &q.resume_cached;
        let _ = writeln!(
            out,
            "  found cached there: {} of {} prompt tokens, {} delivered tokens ({} streams)",
            c.cached_prompt_tokens, c.prompt_tokens, c.cached_delivered_tokens, c.streams
        );
    }
    if r.restart_breakdown_ms.values().any(|s| s.n > 0) {
        let _ = writeln!(out, "\nafter SIGKILL, where the time to serve again goes");
        let _ = writeln!(out, "{header}");
        for (name, stats) in &r.restart_breakdown_ms {
            let _ = writeln!(out, "{}", stats_row(name, stats));
        }
    }
    let f = &r.final_state;
    let _ = writeln!(out, "\nfinal state");
    let _ = writeln!(out, "  workers started            {:>8}", f.workers_started);
    let _ = writeln!(
        out,
        "  leaked processes           {:>8} {:?}",
        f.leaked_processes.len(),
        f.leaked_processes
    );
    let _ = writeln!(
        out,
        "  zombies                    {:>8} {:?}",
        f.zombies.len(),
        f.zombies
    );
    let _ = writeln!(
        out,
        "  file descriptors           {:>8} before, {} after",
        f.fds_before, f.fds_after
    );
    let _ = writeln!(
        out,
        "  threads                    {:>8} before, {} after",
        f.threads_before, f.threads_after
    );
    let _ = writeln!(
        out,
        "  socket files/dirs left     {:>8} {:?}",
        f.leftover_paths.len(),
        f.leftover_paths
    );
    let v = &r.verdict;
    let _ = writeln!(
        out,
        "\n{}: {} lost, {} mismatched, {} leaked, {} faults without recovery",
        if v.ok { "PASS" } else { "FAIL" },
        v.lost,
        v.mismatched,
        v.leaked,
        v.unrecovered
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::load::ResumedSegment;

    fn record(outcome: Outcome, attempts: u32) -> RequestRecord {
        RequestRecord {
            client: 0,
            prompt: 0,
            sent: 0.0,
            first_token: Some(0.1),
            ended: 1.0,
            tokens: 4,
            attempts,
            resumes: 0,
            outcome,
            retry_safe: Some(false),
            resumed_segment: None,
        }
    }

    fn settings() -> Settings {
        Settings {
            model: "m".into(),
            clients: 1,
            prompt_tokens: 1,
            prompts: 1,
            max_tokens: 4,
            duration_s: 2.0,
            faults: Vec::new(),
            standby: false,
            resume: true,
            immediate_restart: true,
        }
    }

    fn fault(serving: Option<f64>) -> FaultRecord {
        FaultRecord {
            kind: FaultKind::Kill,
            pid: 1,
            replica: 0,
            also: Vec::new(),
            at: 1.0,
            resumed: None,
            detected: Some(1.01),
            crashed: Some(1.01),
            starting: Some(1.1),
            promoted: None,
            ready: Some(1.9),
            load_time: Some(0.8),
            startup: None,
            serving,
        }
    }

    #[test]
    fn anything_lost_leaked_or_unrecovered_fails_the_verdict() {
        let ok = build(
            settings(),
            &[
                record(Outcome::Completed, 1),
                record(Outcome::Completed, 2),
                record(Outcome::Failed("worker died mid-stream".into()), 1),
            ],
            &[],
            vec![fault(Some(2.0))],
            &Marks::default(),
            FinalState::default(),
        );
        assert!(ok.verdict.ok);
        assert_eq!(ok.requests.retried_transparently, 1);
        assert_eq!(ok.requests.failed_by_reason["worker died mid-stream"], 1);
        let kill = &ok.faults.by_kind[&FaultKind::Kill];
        assert!((kill.time_to_serve_again_ms.p50 - 1000.0).abs() < 1e-6);
        assert!((kill.time_to_detect_ms.p50 - 10.0).abs() < 1e-6);

        let lost = build(
            settings(),
            &[record(Outcome::Lost("hung: no finish".into()), 1)],
            &[],
            Vec::new(),
            &Marks::default(),
            FinalState::default(),
        );
        assert!(!lost.verdict.ok);
        assert_eq!(lost.requests.lost_by_reason["hung"], 1);

        let leaked = FinalState {
            fds_before: 10,
            fds_after: 11,
            ..FinalState::default()
        };
        let leak = build(settings(), &[], &[], Vec::new(), &Marks::default(), leaked);
        assert_eq!(leak.verdict.leaked, 1);
        assert!(!leak.verdict.ok);

        let stuck = build(
            settings(),
            &[],
            &[],
            vec![fault(None)],
            &Marks::default(),
            FinalState::default(),
        );
        assert_eq!(stuck.verdict.unrecovered, 1);
        assert!(!stuck.verdict.ok);
        assert!(render(&stuck).contains("FAIL"));
    }

    #[test]
    fn standby_takeovers_are_told_apart_from_fresh_starts() {
        let promoted = FaultRecord {
            starting: None,
            promoted: Some(true),
            ready: Some(1.02),
            load_time: None,
            ..fault(Some(1.5))
        };
        let r = build(
            settings(),
            &[],
            &[],
            vec![fault(Some(2.0)), promoted],
            &Marks::default(),
            FinalState::default(),
        );
        let phase = |name: &str| {
            r.restart_breakdown_ms
                .iter()
                .find(|(k, _)| k.starts_with(name))
                .map(|(_, s)| *s)
                .unwrap_or_default()
        };
        assert_eq!(
            phase("2_backoff").n,
            1,
            "only the fresh start had a backoff"
        );
        let takeover = phase("2a_takeover");
        assert_eq!(takeover.n, 1);
        assert!((takeover.p50 - 10.0).abs() < 1e-6, "{takeover:?}");
        assert_eq!(phase("2b_takeover").n, 0);
        assert_eq!(phase("total").n, 2);
    }

    #[test]
    fn a_mismatched_stream_fails_the_verdict_and_the_floor_is_reported_apart() {
        let mismatched = || Outcome::Mismatched("token 3 of 4".into());
        let r = build(
            settings(),
            &[record(Outcome::Completed, 1), record(mismatched(), 1)],
            &[
                record(Outcome::Completed, 1),
                record(Outcome::Completed, 1),
                record(Outcome::Completed, 1),
                record(mismatched(), 1),
            ],
            Vec::new(),
            &Marks::default(),
            FinalState::default(),
        );
        assert_eq!(r.requests.completed, 1);
        assert_eq!(r.requests.mismatched, 1);
        assert!((r.requests.mismatched_rate - 0.5).abs() < 1e-9);
        assert_eq!(r.verdict.mismatched, 1);
        assert!(!r.verdict.ok);
        assert_eq!((r.floor.total, r.floor.mismatched), (4, 1));
        assert!((r.floor.mismatched_rate - 0.25).abs() < 1e-9);
        let text = render(&r);
        assert!(text.contains("MISMATCHED"), "{text}");
        assert!(text.contains("25.00%") && text.contains("50.00%"), "{text}");
        assert!(text.contains("FAIL: 0 lost, 1 mismatched"), "{text}");
    }

    #[test]
    fn the_resumed_streams_cached_tokens_are_summed_and_shown() {
        let resumed = |cached_prompt, cached_delivered| RequestRecord {
            resumes: 1,
            resumed_segment: Some(ResumedSegment {
                queue_wait_ms: 5.0,
                prefill_ms: 300.0,
                prompt_tokens: 32,
                cached_prompt_tokens: cached_prompt,
                cached_delivered_tokens: cached_delivered,
            }),
            ..record(Outcome::Completed, 1)
        };
        let r = build(
            settings(),
            &[resumed(32, 6), resumed(0, 0), record(Outcome::Completed, 1)],
            &[],
            Vec::new(),
            &Marks::default(),
            FinalState::default(),
        );
        let c = &r.requests.resume_cached;
        assert_eq!(c.streams, 2);
        assert_eq!((c.prompt_tokens, c.cached_prompt_tokens), (64, 32));
        assert_eq!(c.cached_delivered_tokens, 6);
        let text = render(&r);
        assert!(
            text.contains(
                "found cached there: 32 of 64 prompt tokens, 6 delivered tokens (2 streams)"
            ),
            "{text}"
        );
    }

    #[test]
    fn nearest_rank_percentiles() {
        let s = Stats::of_secs((1..=100).map(|i| f64::from(i) / 1000.0));
        assert_eq!(s.n, 100);
        assert!((s.p50 - 50.0).abs() < 1e-9);
        assert!((s.p99 - 99.0).abs() < 1e-9);
        assert!((s.max - 100.0).abs() < 1e-9);
        assert_eq!(Stats::of_secs([]).n, 0);
    }
}
