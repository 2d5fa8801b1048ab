//! `mlx-sidecar status`: asks a running daemon what it runs (`Client::daemon_status`) and
//! prints it as aligned lines, or as one JSON object with `--json`.

use std::process::ExitCode;
use std::time::Duration;

use mlx_sidecar::{Client, DaemonStatus, Endpoint, ShardInfo};

use super::args::StatusArgs;
use super::exit::UsageError;
use super::session::{no_daemon_error, read_api_key};

/// How long the daemon has to answer.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Prints the daemon's status; fails (exit 1) when no daemon answers.
pub(crate) async fn run(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let endpoint = match &args.connect {
        Some(address) => address
            .parse()
            .map_err(|e| UsageError(format!("--connect {address}: {e}")))?,
        None => Endpoint::default_daemon(),
    };
    let mut client = Client::connect(endpoint.clone())
        .await
        .map_err(|e| no_daemon_error(&endpoint, e))?
        .with_timeout(STATUS_TIMEOUT);
    if let Some(file) = &args.api_key_file {
        client = client.with_api_key(&read_api_key(file)?)?;
    }
    let status = client
        .daemon_status()
        .await
        .map_err(|e| no_daemon_error(&endpoint, e))?;
    if args.json {
        println!("{}", serde_json::to_string(&status)?);
    } else {
        print!("{}", lines(&status));
    }
    Ok(ExitCode::SUCCESS)
}

/// The status as a few aligned lines.
fn lines(s: &DaemonStatus) -> String {
    let pid = |p: Option<u32>| p.map_or_else(|| "-".to_owned(), |p| p.to_string());
    let standby = match s.standby_pid {
        Some(p) => format!("{} (pid {p})", s.standby),
        None => s.standby.clone(),
    };
    let listeners: Vec<String> = s
        .listeners
        .iter()
        .map(|l| {
            let key = if l.requires_api_key { " (key)" } else { "" };
            format!("{}:{}{key}", l.kind, l.address)
        })
        .collect();
    // Before a worker has described its model: the configured one, and what the worker does.
    let (model, device) = if s.model_id.is_empty() {
        let configured = s.configured_model.as_deref().unwrap_or("-");
        (
            format!("{configured} ({})", s.worker_state),
            "- (known once a worker is ready)".to_owned(),
        )
    } else {
        (
            format!("{} ({})", s.model_id, s.model_path),
            format!("{} ({}, {})", s.device, s.backend, s.device_name),
        )
    };
    let rows = [
        ("model", model),
        ("device", device),
        (
            "worker",
            format!(
                "{}, pid {}, up {}",
                s.worker_state,
                pid(s.worker_pid),
                secs(s.worker_uptime)
            ),
        ),
        ("restarts", s.worker_restarts.to_string()),
        (
            "requests",
            format!(
                "{} running, {} waiting",
                s.requests_running, s.requests_waiting
            ),
        ),
        ("standby", standby),
        ("listening", listeners.join(", ")),
        (
            "daemon",
            format!(
                "{}, pid {}, up {}{}",
                s.daemon_version,
                s.daemon_pid,
                secs(s.daemon_uptime),
                if s.draining { ", draining" } else { "" }
            ),
        ),
    ];
    let mut text: String = rows
        .iter()
        .map(|(name, value)| format!("{name:<10} {value}\n"))
        .collect();
    if let Some(shard) = &s.shard {
        text.push_str(&format!("{:<10} {}\n", "shard", shard_line(shard)));
    }
    // One line per replica, when the daemon runs several (`serve --workers N`).
    if s.replicas.len() > 1 {
        for r in &s.replicas {
            let device = if r.device.is_empty() {
                String::new()
            } else {
                format!(", device {}", r.device)
            };
            let name = format!("replica {}", r.index);
            text.push_str(&format!(
                "{name:<10} {}, pid {}, {} in flight, {} restarts{device}\n",
                r.state,
                pid(r.worker_pid),
                r.in_flight,
                r.restarts
            ));
        }
    }
    text
}

/// A sharded model's group: "2 ranks (ring), pids 10, 11".
fn shard_line(shard: &ShardInfo) -> String {
    let ranks = match shard.ranks {
        0 => "ranks from the hostfile".to_owned(),
        1 => "1 rank".to_owned(),
        n => format!("{n} ranks"),
    };
    let pids = if shard.pids.is_empty() {
        "pids once the group is ready".to_owned()
    } else {
        let pids: Vec<String> = shard.pids.iter().map(u32::to_string).collect();
        format!("pids {}", pids.join(", "))
    };
    format!("{ranks} ({}), {pids}", shard.backend)
}

fn secs(d: Duration) -> String {
    format!("{:.0}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use mlx_sidecar::DaemonReplica;

    use super::*;

    fn status(replicas: usize) -> DaemonStatus {
        DaemonStatus {
            daemon_version: "0.1.0".into(),
            daemon_pid: 1,
            daemon_uptime: Duration::from_secs(5),
            worker_state: "ready".into(),
            model_id: "tiny".into(),
            model_path: "/m".into(),
            device: "cpu".into(),
            backend: "cpu".into(),
            device_name: "cpu".into(),
            worker_pid: Some(10),
            worker_uptime: Duration::from_secs(4),
            worker_restarts: 1,
            requests_running: 0,
            requests_waiting: 0,
            standby: "off".into(),
            standby_pid: None,
            listeners: Vec::new(),
            draining: false,
            replicas: (0..replicas)
                .map(|i| DaemonReplica {
                    index: i as u32,
                    state: if i == 0 { "ready" } else { "restarting" }.into(),
                    worker_pid: (i == 0).then_some(10),
                    standby_pid: None,
                    restarts: i as u32,
                    in_flight: 2,
                    device: if i == 0 { String::new() } else { "1".into() },
                })
                .collect(),
            configured_model: Some("/m".into()),
            shard: None,
        }
    }

    /// A daemon whose workers are still loading: no worker has described the model yet.
    fn starting(replicas: usize) -> DaemonStatus {
        let mut s = status(replicas);
        s.worker_state = "starting".into();
        s.model_id = String::new();
        s.model_path = String::new();
        s.device = "unspecified".into();
        s.backend = "unspecified".into();
        s.device_name = String::new();
        s.worker_pid = None;
        s.worker_uptime = Duration::ZERO;
        s.listeners.push(mlx_sidecar::DaemonListener {
            kind: "unix".into(),
            address: "/d.sock".into(),
            requires_api_key: false,
            activated: false,
        });
        for r in &mut s.replicas {
            r.state = "starting".into();
            r.worker_pid = None;
        }
        s
    }

    #[test]
    fn a_starting_daemon_names_the_configured_model_and_leaves_no_field_empty() {
        for replicas in [1, 2] {
            let text = lines(&starting(replicas));
            assert!(text.contains("model      /m (starting)\n"), "{text}");
            assert!(
                text.contains("device     - (known once a worker is ready)\n"),
                "{text}"
            );
            assert!(
                text.contains("worker     starting, pid -, up 0s\n"),
                "{text}"
            );
            for line in text.lines() {
                assert!(!line.contains("()") && !line.contains(", )"), "{line}");
                assert!(line.len() > 11 && !line.ends_with(' '), "{line}");
            }
        }
        assert!(
            lines(&starting(2))
                .contains("replica 1  starting, pid -, 2 in flight, 1 restarts, device 1\n")
        );
        // A daemon older than `configured_model` still shows something.
        let mut old = starting(1);
        old.configured_model = None;
        assert!(lines(&old).contains("model      - (starting)\n"));
    }

    #[test]
    fn a_sharded_model_shows_its_ranks_backend_and_pids() {
        assert!(!lines(&status(1)).contains("shard"));
        let mut s = status(1);
        s.shard = Some(ShardInfo {
            ranks: 2,
            backend: "ring".into(),
            pids: vec![10, 11],
        });
        let text = lines(&s);
        assert!(
            text.contains("shard      2 ranks (ring), pids 10, 11\n"),
            "{text}"
        );
        let mut s = starting(1);
        s.shard = Some(ShardInfo {
            ranks: 0,
            backend: "nccl".into(),
            pids: Vec::new(),
        });
        let text = lines(&s);
        assert!(
            text.contains(
                "shard      ranks from the hostfile (nccl), pids once the group is ready\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn one_line_per_replica_only_when_there_are_several() {
        assert!(!lines(&status(1)).contains("replica"));
        let text = lines(&status(2));
        assert!(
            text.contains("replica 0  ready, pid 10, 2 in flight, 0 restarts\n"),
            "{text}"
        );
        assert!(
            text.contains("replica 1  restarting, pid -, 2 in flight, 1 restarts, device 1\n"),
            "{text}"
        );
    }
}
