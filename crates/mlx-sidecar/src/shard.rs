//! A model sharded over several processes: what [`WorkerCommand::with_shard`] asks for.
//!
//! The worker the supervisor spawns becomes rank 0 of an `mx.distributed` group
//! (`python -m mlx_worker --shard-ranks N`; see the worker's `mlx_worker.shard`). It starts
//! ranks 1..N-1 itself, as its children in its own process group, each with a parent-death
//! signal and a stdin pipe (over `ssh` on other hosts, as `mlx.launch` does), and exits as
//! soon as any rank ends. So the supervisor still sees one worker: one process to watch,
//! one process group to signal, one socket and one health check. A crash of any rank is a
//! crash of the worker (the group is restarted whole: no rank is left running, the ring's
//! ports close with their processes), and a hung rank stalls rank 0's engine (every step is
//! a collective operation), which turns health `NOT_SERVING` and gets the group killed.
//!
//! [`WorkerCommand::with_shard`]: crate::WorkerCommand::with_shard

use std::path::PathBuf;

/// The `mx.distributed` backend the ranks talk through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShardBackend {
    /// TCP between the ranks (any device; on one host, over loopback).
    #[default]
    Ring,
    /// NCCL between CUDA GPUs, one GPU per rank.
    Nccl,
}

impl ShardBackend {
    /// The name the worker's `--shard-backend` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            ShardBackend::Ring => "ring",
            ShardBackend::Nccl => "nccl",
        }
    }
}

/// One model split tensor-parallel over `ranks` worker processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardGroup {
    /// How many processes hold the model (the model's attention heads, key/value heads and
    /// MLP width must divide by it). `None`: as many as the hostfile lists hosts.
    pub ranks: Option<u32>,
    /// The backend (default: ring).
    pub backend: ShardBackend,
    /// The hosts of the ranks, in the JSON format `mlx.distributed_config` writes; the first
    /// is this machine (rank 0). `None`: every rank on this machine, over loopback.
    pub hostfile: Option<PathBuf>,
    /// The first TCP port of the ring (or NCCL's port) when the ranks span hosts; `None`:
    /// the worker's default, 32323 (on loopback, free ports are picked).
    pub port: Option<u16>,
    /// The command that runs a rank on another host as `CMD HOST SCRIPT`; `None`: `ssh`.
    pub ssh: Option<String>,
}

impl ShardGroup {
    /// `ranks` processes on this machine, talking over the ring backend on loopback.
    pub fn new(ranks: u32) -> Self {
        ShardGroup {
            ranks: Some(ranks.max(1)),
            backend: ShardBackend::Ring,
            hostfile: None,
            port: None,
            ssh: None,
        }
    }

    /// One rank per host of `hostfile` (see [`ShardGroup::hostfile`]).
    pub fn from_hostfile(hostfile: impl Into<PathBuf>) -> Self {
        ShardGroup {
            ranks: None,
            backend: ShardBackend::Ring,
            hostfile: Some(hostfile.into()),
            port: None,
            ssh: None,
        }
    }

    /// Sets [`ShardGroup::backend`].
    pub fn with_backend(mut self, backend: ShardBackend) -> Self {
        self.backend = backend;
        self
    }

    /// Sets [`ShardGroup::hostfile`].
    pub fn with_hostfile(mut self, hostfile: impl Into<PathBuf>) -> Self {
        self.hostfile = Some(hostfile.into());
        self
    }

    /// Sets [`ShardGroup::port`].
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Sets [`ShardGroup::ssh`].
    pub fn with_ssh(mut self, command: impl Into<String>) -> Self {
        self.ssh = Some(command.into());
        self
    }

    /// The worker's `--shard-*` arguments.
    pub(crate) fn worker_args(&self) -> Vec<String> {
        let mut args = vec![
            "--shard-backend".to_owned(),
            self.backend.as_str().to_owned(),
        ];
        if let Some(ranks) = self.ranks {
            args.push("--shard-ranks".to_owned());
            args.push(ranks.to_string());
        }
        if let Some(hostfile) = &self.hostfile {
            args.push("--shard-hostfile".to_owned());
            args.push(hostfile.display().to_string());
        }
        if let Some(port) = self.port {
            args.push("--shard-port".to_owned());
            args.push(port.to_string());
        }
        if let Some(ssh) = &self.ssh {
            args.push("--shard-ssh".to_owned());
            args.push(ssh.clone());
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_args_name_ranks_backend_and_hostfile() {
        let group = ShardGroup::new(3)
            .with_backend(ShardBackend::Nccl)
            .with_hostfile("/etc/hosts.json");
        assert_eq!(
            group.worker_args(),
            [
                "--shard-backend",
                "nccl",
                "--shard-ranks",
                "3",
                "--shard-hostfile",
                "/etc/hosts.json"
            ]
        );
        assert_eq!(ShardGroup::new(0).ranks, Some(1));
        assert_eq!(
            ShardGroup::from_hostfile("h.json")
                .with_port(40000)
                .with_ssh("ssh -p 2222")
                .worker_args(),
            [
                "--shard-backend",
                "ring",
                "--shard-hostfile",
                "h.json",
                "--shard-port",
                "40000",
                "--shard-ssh",
                "ssh -p 2222"
            ]
        );
    }
}
