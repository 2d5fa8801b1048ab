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
//! | 9  | SIGKILL the supervisor                  | `catalogue_process::fault_09_sigkill_supervisor_takes_the_worker_along` (the CLI binary; also stdin EOF alone), `lifetime::supervisor_killed_takes_its_worker_along` |
//! | 10 | stale socket file / live socket         | `faults::stale_socket_file_is_replaced`, `faults::live_socket_is_not_taken_over` |
//! | 11 | socket file deleted while running       | `faults::removed_socket_file_gets_the_worker_restarted`       |
//! | 12 | graceful stop (SIGTERM)                 | `catalogue_process::fault_12_sigterm_drains_or_cancels_and_exits_0`, `serving::shutdown_drains_and_cleans_up`, `faults::worker_ignoring_sigterm_is_killed_after_the_grace` |
//! | 13 | 100 crash/restart cycles                | `catalogue_process::fault_13_hundred_crash_restart_cycles_leak_nothing` (101 cycles), `lifetime::crash_cycles_leak_nothing` (40) |
//! | 14 | oversize, malformed, invalid requests   | `catalogue_requests::fault_14_bad_requests_get_precise_errors`, `serving::invalid_parameters_are_invalid_argument` |
//! | 15 | client cancel mid-stream / in prefill   | `catalogue_requests::fault_15_cancel_frees_the_sequence`      |
//! | 16 | short deadline                          | `catalogue_requests::fault_16_short_deadline_leaves_no_work`, `serving::short_deadline_is_deadline_exceeded_and_worker_carries_on` |
//! | 17 | worker killed under concurrent load     | `catalogue_requests::fault_17_kills_under_load_lose_nothing` (the `chaos` command), `catalogue_requests::fault_17_queued_request_is_retried_on_the_new_worker` |
//! | 18 | out of memory, disk full in conversion  | `catalogue_process::fault_18_disk_full_and_out_of_memory_back_off`, `catalogue_process::fault_18_failed_load_is_reported_with_its_cause` |
//! | 19 | fuzzed protobuf input                   | `catalogue_requests::fault_19_fuzzed_requests_never_hurt_the_worker`, `fuzz/` |
//!
//! This module holds what those tests share: a raw gRPC channel to a worker's socket (to
//! send wire messages the typed client never would), and `/proc` readings for leak checks.

use std::{path::Path, time::Duration};

use hyper_util::rt::TokioIo;
use mlx_sidecar::proto::v1::inference_client::InferenceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// A tonic channel to the worker listening on `path` (no supervisor in between).
pub(crate) fn uds_channel(path: &Path) -> Channel {
    let path = path.to_path_buf();
    Endpoint::from_static("http://worker.sock").connect_with_connector_lazy(tower::service_fn(
        move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        },
    ))
}

/// The generated client on that channel (sends exactly the wire message given).
pub(crate) fn raw_client(path: &Path) -> InferenceClient<Channel> {
    InferenceClient::new(uds_channel(path))
}

/// The worker's own health answer for the inference service.
pub(crate) async fn worker_health(path: &Path) -> Result<i32, tonic::Status> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let mut client = HealthClient::new(uds_channel(path));
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: "mlx_sidecar.v1.Inference".into(),
    });
    request.set_timeout(Duration::from_secs(2));
    Ok(client.check(request).await?.into_inner().status)
}

/// Sends raw bytes as the request of `method` (e.g. `Tokenize`) and returns the raw
/// response messages, or the status.
pub(crate) async fn raw_call(
    channel: Channel,
    method: &'static str,
    body: Vec<u8>,
    streaming: bool,
) -> Result<Vec<Vec<u8>>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = format!("/mlx_sidecar.v1.Inference/{method}")
        .parse()
        .map_err(|_| tonic::Status::internal("bad path"))?;
    let mut request = tonic::Request::new(body);
    request.set_timeout(Duration::from_secs(30));
    if streaming {
        let mut stream = grpc
            .server_streaming(request, path, BytesCodec)
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(message) = stream.message().await? {
            out.push(message);
        }
        Ok(out)
    } else {
        Ok(vec![
            grpc.unary(request, path, BytesCodec).await?.into_inner(),
        ])
    }
}

/// A codec that passes message bytes through untouched.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BytesCodec;

impl tonic::codec::Codec for BytesCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;

    fn encoder(&mut self) -> Self::Encoder {
        BytesCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesCodec
    }
}

impl tonic::codec::Encoder for BytesCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for BytesCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

/// Open file descriptors of this process.
pub(crate) fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Threads of this process.
pub(crate) fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// `(pid, ppid, state)` of every process.
fn processes() -> Vec<(u32, u32, char)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (_, rest) = stat.rsplit_once(')')?;
            let mut fields = rest.split_whitespace();
            let state = fields.next()?.chars().next()?;
            let ppid = fields.next()?.parse().ok()?;
            Some((pid, ppid, state))
        })
        .collect()
}

/// Children of `parent` that exited and were not reaped.
pub(crate) fn zombie_children(parent: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|&(_, ppid, state)| ppid == parent && state == 'Z')
        .map(|(pid, ..)| pid)
        .collect()
}

/// Live children of `parent` whose command line contains `needle`.
pub(crate) fn children_running(parent: u32, needle: &str) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|&(pid, ppid, state)| {
            ppid == parent
                && state != 'Z'
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(needle))
                    .unwrap_or(false)
        })
        .map(|(pid, ..)| pid)
        .collect()
}
