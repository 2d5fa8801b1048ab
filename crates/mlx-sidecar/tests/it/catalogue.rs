//! The fault catalogue: every numbered fault of FAULTS.md provoked for real, against the
//! real worker and real MLX, each test asserting the required behaviour and its bounds
//! (time to detect, time to serve again, what the caller saw, what was left behind).
//!
//! | #  | fault                                   | test                                                          |
//! |----|-----------------------------------------|---------------------------------------------------------------|
//! | 1  | SIGKILL an idle worker                  | `faults::sigkill_idle_worker_is_restarted`                    |
//! | 2  | SIGKILL during a token stream           | `faults::sigkill_mid_stream_ends_the_stream_with_partial_output` |
//! | 3  | crash loop at start-up                  | `faults::crash_loop_backs_off_then_gives_up`                  |
//! | 4  | backoff reset after a stable period     | `faults::backoff_resets_after_a_stable_period`                |
//! | 5  | SIGSTOP (hung worker)                   | `faults::hung_worker_is_detected_and_restarted`               |
//! | 6  | slow model load / real stall            | `catalogue_process::fault_06_slow_model_load_is_allowed`, `faults::slow_start_within_the_window_is_fine`, `faults::startup_that_never_finishes_fails_in_bounded_time` |
//! | 7  | engine stuck or dead, gRPC answering    | `catalogue_process::fault_07_stalled_engine_is_not_serving_and_replaced`, `faults::dead_engine_is_not_serving_and_gets_restarted` |
//! | 8  | long prefill                            | `catalogue_process::fault_08_long_prefill_is_not_killed`      |
//! | 9  | SIGKILL the supervisor                  | CLI `catalogue::fault_09_sigkill_supervisor_takes_the_worker_along` (the binary; also stdin EOF alone), `lifetime::supervisor_killed_takes_its_worker_along` |
//! | 10 | stale socket file / live socket         | `faults::stale_socket_file_is_replaced`, `faults::live_socket_is_not_taken_over` |
//! | 11 | socket file deleted while running       | `faults::removed_socket_file_gets_the_worker_restarted`       |
//! | 12 | graceful stop (SIGTERM)                 | `catalogue_process::fault_12_sigterm_drains_or_cancels_and_exits_0`, `serving::shutdown_drains_and_cleans_up`, `faults::worker_ignoring_sigterm_is_killed_after_the_grace` |
//! | 13 | 100 crash/restart cycles                | `catalogue_process::fault_13_hundred_crash_restart_cycles_leak_nothing` (101 cycles), `lifetime::crash_cycles_leak_nothing` (40) |
//! | 14 | oversize, malformed, invalid requests   | `catalogue_requests::fault_14_bad_requests_get_precise_errors`, `serving::invalid_parameters_are_invalid_argument` |
//! | 15 | client cancel mid-stream / in prefill   | `catalogue_requests::fault_15_cancel_frees_the_sequence`      |
//! | 16 | short deadline                          | `catalogue_requests::fault_16_short_deadline_leaves_no_work`, `serving::short_deadline_is_deadline_exceeded_and_worker_carries_on` |
//! | 17 | worker killed under concurrent load     | CLI `catalogue::fault_17_kills_under_load_lose_nothing` (the `chaos` command), `catalogue_requests::fault_17_queued_request_is_retried_on_the_new_worker` |
//! | 18 | out of memory, disk full in conversion  | `catalogue_process::fault_18_disk_full_and_out_of_memory_back_off`, `catalogue_process::fault_18_failed_load_is_reported_with_its_cause` |
//! | 19 | fuzzed protobuf input                   | `catalogue_requests::fault_19_fuzzed_requests_never_hurt_the_worker`, `fuzz/` |
//! | 28 | one rank of a sharded group dies/hangs  | `shard::killing_a_rank_restarts_the_whole_group`, `shard::a_hung_rank_turns_health_and_the_group_is_restarted` (rank 0 killed: `sidecar/tests/test_shard.py`) |
//!
//! The faults provoked through the `mlx-sidecar` binary (9, 17 and the other `chaos` kinds)
//! are tested in `crates/mlx-sidecar-cli/tests/it/catalogue.rs`. What these tests share, a raw
//! gRPC channel to a worker's socket and `/proc` readings for leak checks, comes from the
//! testkit crate.

pub(crate) use mlx_sidecar_testkit::{
    procfs::{fd_count, thread_count, zombie_children},
    raw::{raw_call, raw_client, uds_channel, worker_health},
};
