//! The trainer library's errors: what failed, and in which file, setting or step.
//!
//! libtorch reports failures in two ways: tch's `f_*` calls return them, and its other calls
//! panic with the message. Where a user can meet one (a tensor moved to the device, the
//! forward and backward passes, loading a checkpoint), the call goes through [`torch`],
//! which turns either into a [`TrainError`]; a CUDA out-of-memory error becomes
//! [`TrainError::Device`] naming the batch size and the device's free memory, with what to
//! change.
use std::fmt::Display;
use std::path::PathBuf;

/// Errors of the trainer library.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Settings out of range or that do not go together (the config file's own problems too).
    #[error("{0}")]
    Config(String),
    /// Input that cannot be trained on or prepared: the index, the split, patches, scans, CSVs.
    #[error("{0}")]
    Data(String),
    /// The run folder (or a file in it): not empty, or not the run a resume expects; `path`
    /// names it.
    #[error("{path}: {msg}")]
    RunFolder { path: PathBuf, msg: String },
    /// The device: CUDA that cannot be had, memory exhausted.
    #[error("{0}")]
    Device(String),
    /// Training stopped: a loss that is not finite, an epoch that learnt nothing.
    #[error("{0}")]
    Diverged(String),
    /// The export could not be made or failed its parity check.
    #[error("{0}")]
    Export(String),
    /// A libtorch call failed; `what` says which.
    #[error("{what}: {msg}")]
    Torch { what: String, msg: String },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file operation failed; `what` names the file and the operation.
    #[error("{what}: {source}")]
    File {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Text that could not be encoded or decoded (YAML, CSV, JSON); `what` names it.
    #[error("{what}: {source}")]
    Format {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An invariant of the code broke: a bug, never bad input.
    /// A patch that read when the run started no longer does (changed or removed under it);
    /// the reader's error kept.
    #[error("{0} (changed since the run started?)")]
    PatchChanged(#[source] models::Error),
    /// Worker threads could not be started (the system's limits): not a bug, not bad input.
    #[error("cannot start {count} {what} threads: {source}")]
    Threads {
        count: usize,
        what: &'static str,
        #[source]
        source: rayon::ThreadPoolBuildError,
    },
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Models(#[from] models::Error),
    #[error(transparent)]
    Scorer(#[from] scorer::ScorerError),
    #[error(transparent)]
    Plot(#[from] plots::PlotError),
}

models::errors_through_models!(TrainError);

/// The trainer's result type.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

impl TrainError {
    /// The run folder or sweep folder at `path` (or a file in it) is not what this run may use.
    pub fn run_folder(path: &std::path::Path, msg: impl Into<String>) -> Self {
        TrainError::RunFolder {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }

    /// A file operation's error, `what` naming the file and the operation.
    pub fn file(what: String, source: std::io::Error) -> Self {
        TrainError::File { what, source }
    }

    /// A closure turning an encoding/decoding error into [`TrainError::Format`].
    pub fn format<E: std::error::Error + Send + Sync + 'static>(what: impl Display) -> impl FnOnce(E) -> Self {
        let what = what.to_string();
        move |e| TrainError::Format {
            what,
            source: Box::new(e),
        }
    }

    /// A closure turning a tch error into [`TrainError::Torch`] (or [`TrainError::Device`]
    /// for memory exhausted).
    pub fn tch(what: impl Display) -> impl FnOnce(tch::TchError) -> Self {
        let what = what.to_string();
        move |e| from_torch_message(&what, &e.to_string(), None)
    }
}

impl From<tch::TchError> for TrainError {
    fn from(e: tch::TchError) -> Self {
        from_torch_message("libtorch", &e.to_string(), None)
    }
}

impl From<yaml_serde::Error> for TrainError {
    fn from(e: yaml_serde::Error) -> Self {
        TrainError::Format {
            what: "YAML".into(),
            source: Box::new(e),
        }
    }
}

impl From<serde_json::Error> for TrainError {
    fn from(e: serde_json::Error) -> Self {
        TrainError::Format {
            what: "JSON".into(),
            source: Box::new(e),
        }
    }
}

impl From<csv::Error> for TrainError {
    fn from(e: csv::Error) -> Self {
        TrainError::Format {
            what: "CSV".into(),
            source: Box::new(e),
        }
    }
}

impl<W> From<csv::IntoInnerError<W>> for TrainError {
    fn from(e: csv::IntoInnerError<W>) -> Self {
        TrainError::Format {
            what: "CSV".into(),
            source: Box::new(e.into_error()),
        }
    }
}

/// Where a libtorch call runs, for its error messages.
#[derive(Debug, Clone, Copy)]
pub struct Site {
    pub device: tch::Device,
    /// The batch size in use, when a batch is involved.
    pub batch: Option<usize>,
}

/// Free and total memory of CUDA device `n`, in bytes, when the CUDA runtime is loaded.
fn cuda_memory(n: usize) -> Option<(u64, u64)> {
    crate::cuda::mem_info(n)
}

/// The error for a libtorch failure message.
fn from_torch_message(what: &str, msg: &str, site: Option<Site>) -> TrainError {
    let first = msg.lines().next().unwrap_or(msg).trim().to_string();
    if msg.contains("out of memory") {
        let (dev, batch) = match site {
            Some(s) => (crate::device_name(s.device), s.batch),
            None => ("the device".to_string(), None),
        };
        let free = match site.map(|s| s.device) {
            Some(tch::Device::Cuda(n)) => cuda_memory(n).map_or_else(
                || "free memory unknown".to_string(),
                |(free, total)| {
                    format!(
                        "{:.0} MiB free of {:.0} MiB",
                        free as f64 / 1048576.0,
                        total as f64 / 1048576.0
                    )
                },
            ),
            _ => "host memory".to_string(),
        };
        let batch = batch.map_or_else(String::new, |b| format!(" at batch size {b}"));
        return TrainError::Device(format!(
            "{what}: out of memory on {dev}{batch} ({free}); lower train.batch_size, the cube size or the model \
             width, or use a device with more memory ({first})"
        ));
    }
    TrainError::Torch {
        what: what.to_string(),
        msg: first,
    }
}

/// Runs libtorch work `f`, turning a failure reported by panic (tch's non-`f_*` calls) into
/// an error as [`TrainError::tch`] does for returned ones. Other panics pass on unchanged.
pub fn torch<T>(what: &str, site: Site, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Err(TrainError::Torch { what: w, msg })) => Err(from_torch_message(&w, &msg, Some(site))),
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()));
            match msg {
                // tch's panics carry libtorch's message (`Torch("...")`, `TchError...`).
                Some(m) if m.contains("Torch") || m.contains("Tch") || m.contains("CUDA") => {
                    Err(from_torch_message(what, &m, Some(site)))
                }
                _ => std::panic::resume_unwind(payload),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtorch_failures_become_errors_and_out_of_memory_says_what_to_change() {
        let site = Site {
            device: tch::Device::Cpu,
            batch: Some(32),
        };
        // A panicking tch call (a shape mismatch) comes back as an error naming the step.
        let r = torch("the forward pass", site, || {
            let a = tch::Tensor::zeros([2, 3], (tch::Kind::Float, tch::Device::Cpu));
            let b = tch::Tensor::zeros([4, 5], (tch::Kind::Float, tch::Device::Cpu));
            Ok(a.matmul(&b))
        });
        let e = r.expect_err("shape mismatch").to_string();
        assert!(e.starts_with("the forward pass:"), "{e}");
        let e = from_torch_message("a step", "CUDA out of memory. Tried to allocate 2.00 GiB", Some(site)).to_string();
        assert!(
            e.contains("out of memory on cpu at batch size 32") && e.contains("lower train.batch_size"),
            "{e}"
        );
        // Other panics are not swallowed.
        let other = std::panic::catch_unwind(|| torch("x", site, || -> Result<()> { panic!("a bug") }));
        assert!(other.is_err());
    }
}
