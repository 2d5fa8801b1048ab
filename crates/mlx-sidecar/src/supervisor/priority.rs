//! The standby worker's CPU priority. A standby loads the model at a lower priority (nice
//! +10 over the supervisor's own), so that on a small CPU the next standby's start-up right
//! after a takeover does not slow the streams the promoted worker resumes; once promoted (or,
//! with shadow prefill, once ready: see `standby`), a standby's threads get the supervisor's
//! priority back (`restore`).
//!
//! Raising a priority back needs root, `CAP_SYS_NICE` or an `RLIMIT_NICE` that allows it;
//! where none holds, a promoted worker would keep the low priority for good, so the standby
//! starts at the normal priority instead (Linux only; elsewhere always).

/// How much lower (in nice steps) a standby runs than the supervisor.
pub(crate) const STANDBY_NICE_INCREMENT: i32 = 10;

/// The nice value to start a standby at, or `None` to start it at the normal priority.
#[cfg(target_os = "linux")]
pub(crate) fn standby_nice() -> Option<i32> {
    let base = own_nice()?;
    let lowered = (base + STANDBY_NICE_INCREMENT).min(19);
    (lowered > base && may_raise_to(base)).then_some(lowered)
}

/// The nice value to start a standby at: the normal priority off Linux.
#[cfg(not(target_os = "linux"))]
pub(crate) fn standby_nice() -> Option<i32> {
    None
}

/// Gives every thread of `pid` (a promoted standby) the supervisor's own nice value
/// (Linux nice values are per thread; threads it starts later inherit theirs).
#[cfg(target_os = "linux")]
pub(crate) fn restore(pid: u32) -> std::io::Result<()> {
    let base = own_nice().ok_or_else(|| std::io::Error::other("cannot read this thread's nice"))?;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Some(tid) = entry?.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        set_nice(tid, base)?;
    }
    Ok(())
}

/// Nothing to restore off Linux (the standby was not lowered).
#[cfg(not(target_os = "linux"))]
pub(crate) fn restore(_pid: u32) -> std::io::Result<()> {
    Ok(())
}

/// Sets the nice value of thread `tid` (0: the calling thread). Async-signal-safe (one
/// system call), so a forked child may call it before exec.
#[cfg(target_os = "linux")]
pub(crate) fn set_nice(tid: u32, nice: i32) -> std::io::Result<()> {
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    let rc = unsafe { nix::libc::setpriority(nix::libc::PRIO_PROCESS, tid, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The calling thread's nice value (field 19 of `/proc/thread-self/stat`).
#[cfg(target_os = "linux")]
fn own_nice() -> Option<i32> {
    nice_of_stat(&std::fs::read_to_string("/proc/thread-self/stat").ok()?)
}

/// The nice value in a `/proc/.../stat` line (the fields after the command's `)`).
pub(crate) fn nice_of_stat(stat: &str) -> Option<i32> {
    let (_, rest) = stat.rsplit_once(')')?;
    // Field 3 (state) is the first after the `)`; nice is field 19.
    rest.split_whitespace().nth(16)?.parse().ok()
}

/// Whether this process may set a thread's nice value back to `nice`: root,
/// `CAP_SYS_NICE`, or an `RLIMIT_NICE` soft limit of at least `20 - nice`.
#[cfg(target_os = "linux")]
fn may_raise_to(nice: i32) -> bool {
    const CAP_SYS_NICE: u32 = 23;
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let capable = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_NICE) != 0);
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let allowed = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max nice priority"))
        .and_then(|rest| rest.split_whitespace().next().map(str::to_owned))
        .is_some_and(|soft| {
            soft == "unlimited" || soft.parse::<i64>().is_ok_and(|s| s >= i64::from(20 - nice))
        });
    capable || allowed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_nice_field_past_a_command_with_spaces_and_parens() {
        let stat = "4242 (python (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 1 0 0 30 10 3 0 \
                    123 456 789";
        assert_eq!(nice_of_stat(stat), Some(10));
        assert_eq!(nice_of_stat("garbage"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_standby_nice_is_lower_than_our_own_or_none() {
        let base = own_nice().expect("this thread's nice");
        if let Some(nice) = standby_nice() {
            assert!(
                nice > base && nice <= base + STANDBY_NICE_INCREMENT,
                "{nice}"
            );
        }
    }
}
