//! `/proc` readings for leak checks: this process's file descriptors and threads, and the
//! children of a process (zombies, or live ones running a given command).

/// Open file descriptors of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Threads of this process.
pub fn thread_count() -> usize {
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
pub fn zombie_children(parent: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|&(_, ppid, state)| ppid == parent && state == 'Z')
        .map(|(pid, ..)| pid)
        .collect()
}

/// Live children of `parent` whose command line contains `needle`.
pub fn children_running(parent: u32, needle: &str) -> Vec<u32> {
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
