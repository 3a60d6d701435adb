//! What this host allows a run: the device a command runs on, as every binary spells it
//! ([`device::DeviceChoice`]), the CPUs this process may use, the most worker threads a
//! setting may ask for (checked by every library that starts a pool: the scorer, `infer`,
//! the trainer, `scans prepare`), and the peak memory a run reports.

pub mod device;

/// This process's peak resident memory so far (Linux `VmHWM`), in KiB; `None` where
/// `/proc` does not say.
pub fn peak_rss_kib() -> Option<u64> {
    // files-exempt: the kernel's own file, no user input.
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPUs this process may use (`available_parallelism`: affinity and cgroup quota), at least 1.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The most worker threads a thread or job count may ask for: 4× [`cpus`], at least 8. More
/// only compete for the same cores, and a slip such as `--threads 100000` would otherwise
/// start that many OS threads at once (ONNX Runtime and libtorch create their pools whole)
/// and exhaust the host's process limit, taking other programs' `fork` down with it.
pub fn max_threads() -> usize {
    (4 * cpus()).max(8)
}

/// `Ok` when `n` is at most [`max_threads`]; otherwise a message naming `what` (the flag
/// or config key) and the limit.
pub fn check_threads(what: &str, n: usize) -> Result<(), String> {
    let max = max_threads();
    if n > max {
        return Err(format!(
            "{what} {n} is more than 4x the {} CPU(s) this process may use (at most {max}): \
             threads beyond the CPUs only compete for them",
            cpus()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_counts_are_bounded_by_the_cpus() {
        let max = max_threads();
        assert!(max >= 8 && max >= 4 * cpus());
        assert!(check_threads("--threads", 0).is_ok());
        assert!(check_threads("--threads", max).is_ok());
        let e = check_threads("--threads", max + 1).expect_err("too many");
        assert!(
            e.starts_with(&format!("--threads {}", max + 1)) && e.contains(&max.to_string()),
            "{e}"
        );
    }

}
