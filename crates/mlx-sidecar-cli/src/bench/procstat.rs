//! CPU time and resident memory of a process, read from Linux's `/proc`.
//!
//! CPU time is `utime + stime` of `/proc/<pid>/stat` (all threads of the process); peak memory
//! is `VmHWM` of `/proc/<pid>/status`, which [`reset_peak`] sets back to the current size
//! (`/proc/<pid>/clear_refs`), so that each path of the bench gets its own peak.

use std::fs;

use nix::unistd::{SysconfVar, sysconf};

/// CPU time (user + system, all threads) a process has used so far, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: skip past it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12 here.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let ticks = sysconf(SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    Some((utime + stime) / ticks)
}

/// CPU seconds `pid` used since it had used `before` (from [`cpu_seconds`]); 0 where either
/// reading is missing.
pub(crate) fn cpu_seconds_since(pid: Option<u32>, before: Option<f64>) -> f64 {
    match (before, pid.and_then(cpu_seconds)) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    }
}

/// A `Vm*` line of `/proc/<pid>/status`, in bytes.
fn status_bytes(pid: u32, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    vm_bytes(&status, key)
}

/// A `Vm*` line of one reading of a `status` file, in bytes.
fn vm_bytes(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Peak resident memory (`VmHWM`) of a process, in bytes.
pub(crate) fn peak_rss_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmHWM:")
}

/// Sets the peak resident memory of a process back to its current size (best effort: needs
/// Linux 4.0 or later and permission to write `/proc/<pid>/clear_refs`).
pub(crate) fn reset_peak(pid: u32) {
    let _ = fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// CPU time of this process, in seconds.
pub(crate) fn own_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id()).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_some());
        assert!(peak_rss_bytes(pid).is_some_and(|peak| peak > 0));
        // Both from one reading: other test threads allocate and free between two readings,
        // and the kernel keeps the peak at least the current size only within one.
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss = vm_bytes(&status, "VmRSS:").unwrap_or(0);
        let peak = vm_bytes(&status, "VmHWM:").unwrap_or(0);
        assert!(rss > 0 && peak >= rss, "rss {rss} peak {peak}");
    }
}
