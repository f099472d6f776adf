//! CPU time of processes, from /proc: what a stage costs per ride or record.

/// User + system CPU seconds `pid` has used so far (0 once it is gone); with `reaped`, also
/// what its children that have exited used.
fn cpu_seconds(pid: u32, reaped: bool) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime, stime, cutime, cstime are fields 14 to 17 of stat, 12 to 15 after the name.
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let children = if reaped { ticks(13) + ticks(14) } else { 0.0 };
    (ticks(11) + ticks(12) + children) / per_second
}

/// The parent of `pid`.
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU seconds used by `pid` and all its children, living and exited (Postgres' postmaster
/// and its backends, which come and go with connections).
pub fn family_used(pid: u32) -> f64 {
    let living: f64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|child| parent(*child) == Some(pid))
        .map(|child| cpu_seconds(child, false))
        .sum();
    cpu_seconds(pid, true) + living
}

/// CPU seconds used by `pids`, summed.
pub fn used(pids: &[u32]) -> f64 {
    pids.iter().map(|p| cpu_seconds(*p, false)).sum()
}

/// Resident memory of `pid`, in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}
