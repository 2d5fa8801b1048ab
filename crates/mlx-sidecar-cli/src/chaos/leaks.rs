//! What a run may leave behind, read from `/proc` (Linux; elsewhere the counts are empty):
//! worker processes still alive (or anything still in their process groups), zombie
//! children, this process's open file descriptors and threads, and socket files or
//! directories.

use std::{collections::BTreeSet, path::Path};

use serde::Serialize;

/// The final state after the supervisor shut down.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct FinalState {
    /// Worker processes started during the run.
    pub(crate) workers_started: usize,
    /// Of those, still running (or any process left in their process groups).
    pub(crate) leaked_processes: Vec<u32>,
    /// Children of this process that exited and were never reaped.
    pub(crate) zombies: Vec<u32>,
    /// Open file descriptors before the supervisor started and after it stopped.
    pub(crate) fds_before: usize,
    pub(crate) fds_after: usize,
    /// Threads before and after (informational: runtime threads come and go).
    pub(crate) threads_before: usize,
    pub(crate) threads_after: usize,
    /// Socket files or directories left.
    pub(crate) leftover_paths: Vec<String>,
}

impl FinalState {
    /// How many things leaked (processes, zombies, descriptors, paths).
    pub(crate) fn leaks(&self) -> usize {
        self.leaked_processes.len()
            + self.zombies.len()
            + self.fds_after.saturating_sub(self.fds_before)
            + self.leftover_paths.len()
    }
}

/// Open file descriptors of this process.
pub(crate) fn fd_count() -> usize {
    count_entries("/proc/self/fd")
}

/// Threads of this process.
pub(crate) fn thread_count() -> usize {
    count_entries("/proc/self/task")
}

fn count_entries(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Whether process `pid` is gone (absent, or a zombie).
pub(crate) fn process_gone(pid: u32) -> bool {
    stat(pid).is_none_or(|s| s.state == 'Z' || s.state == 'X')
}

struct Stat {
    state: char,
    ppid: u32,
    pgrp: u32,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(Stat { state, ppid, pgrp })
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Processes still alive among `workers`, or in their process groups (each worker leads
/// its own group).
pub(crate) fn leaked_processes(workers: &BTreeSet<u32>) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&pid| {
            stat(pid).is_some_and(|s| {
                s.state != 'Z' && (workers.contains(&pid) || workers.contains(&s.pgrp))
            })
        })
        .collect()
}

/// Unreaped children of this process.
pub(crate) fn zombie_children() -> Vec<u32> {
    let me = std::process::id();
    all_pids()
        .into_iter()
        .filter(|&pid| stat(pid).is_some_and(|s| s.ppid == me && s.state == 'Z'))
        .collect()
}

/// Socket-related paths left: the socket file, its private directory, and any
/// `mlx-sidecar-<this pid>-*` directory under `parent`.
pub(crate) fn leftover_paths(socket: &Path, dir: &Path, parent: &Path) -> Vec<String> {
    let mut left: BTreeSet<String> = [socket, dir]
        .into_iter()
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    let prefix = format!("mlx-sidecar-{}-", std::process::id());
    if let Ok(entries) = std::fs::read_dir(parent) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                left.insert(entry.path().display().to_string());
            }
        }
    }
    left.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_has_descriptors() {
        assert!(!process_gone(std::process::id()));
        assert!(fd_count() >= 3);
        assert!(thread_count() >= 1);
        assert!(zombie_children().is_empty());
    }
}
