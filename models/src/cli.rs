//! What every command-line binary of the toolchain does first.

/// Restores the default action of SIGPIPE, so `trainer doctor | head` ends quietly when
/// `head` closes the pipe, as Unix tools do. Rust's runtime ignores SIGPIPE, which turns a
/// closed pipe into an error on the next `println!` and so into a panic; no kept crate
/// offers this (the standard library's switch is unstable), hence the one `libc` call.
/// Files are unaffected: only writes to a pipe nobody reads raise the signal.
#[allow(unsafe_code)]
pub fn default_sigpipe() {
    // SAFETY: called at the start of `main`, before any thread exists; `signal` with
    // SIG_DFL installs no handler code.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The preprocessing flags of the commands that make a model from something else
/// (`infer import`, `trainer export`): each one given replaces that field of the
/// preprocessing the command starts from (another model's, a config's, or the defaults).
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct PreprocessFlags {
    /// Cube side in voxels (8 to 512).
    #[arg(long)]
    pub cube_size: Option<usize>,
    /// HU window low end (default -1000).
    #[arg(long, allow_hyphen_values = true)]
    pub hu_min: Option<f32>,
    /// HU window high end (default 400).
    #[arg(long, allow_hyphen_values = true)]
    pub hu_max: Option<f32>,
    /// The window's low end maps onto this (default 0).
    #[arg(long, allow_hyphen_values = true)]
    pub out_min: Option<f32>,
    /// The window's high end maps onto this (default 1).
    #[arg(long, allow_hyphen_values = true)]
    pub out_max: Option<f32>,
    /// HU of the padding where a patch is smaller than the cube (default -1000, air).
    #[arg(long, allow_hyphen_values = true)]
    pub pad_hu: Option<f32>,
}

impl PreprocessFlags {
    /// `pre` with every flag given put in (not validated: the caller validates the result).
    pub fn apply(&self, pre: &mut crate::preprocess::Preprocess) {
        if let Some(c) = self.cube_size {
            pre.cube_size = c;
        }
        for (v, slot) in [
            (self.hu_min, &mut pre.hu_min),
            (self.hu_max, &mut pre.hu_max),
            (self.out_min, &mut pre.out_min),
            (self.out_max, &mut pre.out_max),
            (self.pad_hu, &mut pre.pad_hu),
        ] {
            if let Some(v) = v {
                *slot = v;
            }
        }
    }
}

/// This process's peak resident memory so far (Linux `VmHWM`), in KiB; `None` where
/// `/proc` does not say.
pub fn peak_rss_kib() -> Option<u64> {
    // fsutil-exempt: the kernel's own file, no user input.
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

/// The most bootstrap resamples `calibrate` and `froc` take. Every resample's statistics are
/// kept until the percentiles are read (a billion resamples asked for 4.8 GB at once and
/// aborted); beyond 100,000 the Monte Carlo error of a 95% interval's ends is far below the
/// interval's own width.
pub const MAX_BOOTSTRAP: usize = 100_000;

/// `Ok` unless `b` is more than [`MAX_BOOTSTRAP`]; the message names `--bootstrap`.
pub fn check_bootstrap(b: usize) -> Result<(), String> {
    if b > MAX_BOOTSTRAP {
        return Err(format!(
            "--bootstrap {b}: at most {MAX_BOOTSTRAP} resamples (more change a 95% interval by less \
             than its Monte Carlo error, and each one's statistics are held in memory)"
        ));
    }
    Ok(())
}

/// An error and its causes as one line for a person: `outer: cause: cause`, each cause
/// added only when the text so far does not already say it (our errors print the cause they
/// wrap, and also expose it as their `source` for callers that match on it: printing the
/// chain naively said "No such file or directory" twice).
pub fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text = format!("{text}: {c_text}");
        }
        cause = c.source();
    }
    text
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

    #[derive(Debug, thiserror::Error)]
    #[error("{what}: {source}")]
    struct Wrapped {
        what: String,
        #[source]
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("reading the scans")]
    struct Outer(#[source] Wrapped);

    #[test]
    fn each_cause_is_said_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let w = Wrapped {
            what: "c.csv".into(),
            source: io(),
        };
        assert_eq!(error_text(&w), "c.csv: No such file or directory");
        let o = Outer(Wrapped {
            what: "c.csv".into(),
            source: io(),
        });
        assert_eq!(error_text(&o), "reading the scans: c.csv: No such file or directory");
    }
}
