//! The process's memory use, from `/proc/self/status` (Linux), for benches and soak tests.

/// A `/proc/self/status` field in MB: `VmRSS` (now) or `VmHWM` (peak). `None` off Linux.
pub fn proc_status_mb(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}
