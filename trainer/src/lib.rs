//! Training of the 3D patch classifier with libtorch (tch), and native ONNX export.
//!
//! * [`config`] is the YAML training config;
//! * [`data`] loads a patch folder and splits it by `seriesuid`;
//! * [`net`] builds a [`models::spec::ArchSpec`] in a tch VarStore under the spec's names;
//! * [`train`] runs a training run as named steps (the run folder, the inputs, the epochs,
//!   the finish) and [`kfold`] a cross-validation of them;
//! * [`optim`] is AdamW on tensors (its state saved for `--resume`) and the fp16 loss scaler;
//! * [`export`] writes `model.onnx` through [`models::onnx`] and checks libtorch ↔ ONNX
//!   Runtime parity with [`scorer::Scorer`];
//! * [`cuda`] brings libtorch's CUDA half up at run time;
//! * [`error`] is the library's error type: libtorch failures a user can meet (CUDA out of
//!   memory) are errors with what to change, not panics.
#![warn(clippy::unwrap_used)]

pub mod augment;
pub mod config;
pub mod cuda;
pub mod data;
pub mod ensemble;
pub mod export;
pub mod kfold;
pub mod net;
pub mod optim;
pub mod sweep;
pub mod train;

pub mod error;

pub use error::{Result, TrainError};
use tch::Device;

pub use host::device::DeviceChoice;

/// Runs the configured job: one training run, or with `split.folds >= 2` (and no single
/// `split.fold`) one run per fold in `OUT/fold_N` and `OUT/cv_summary.yaml`. (Here, above
/// both: `kfold` runs `train`, and `train` knows nothing of `kfold`.)
pub fn run(
    cfg: &config::TrainConfig,
    opts: &train::RunOptions,
) -> Result<(Vec<train::RunSummary>, Option<kfold::CvSummary>)> {
    if cfg.split.folds < 2 || cfg.split.fold.is_some() {
        return Ok((train::train(cfg, opts)?.into_iter().collect(), None));
    }
    kfold::run(cfg, opts)
}

/// Parses `auto`, `cpu`, `cuda`, `cuda:N`.
pub fn parse_device(s: &str) -> Result<DeviceChoice> {
    s.parse::<DeviceChoice>().map_err(TrainError::Config)
}

/// Whether this binary was linked against libtorch_cuda (see build.rs).
pub const TORCH_CUDA_LINKED: bool = cfg!(torch_cuda_linked = "yes");

/// Resolves a device string; `cuda` that cannot be had is an error saying why.
pub fn resolve_device(s: &str) -> Result<Device> {
    match parse_device(s)? {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => Ok(
            if !matches!(cuda::ensure_loaded(), cuda::CudaLib::Unavailable(_)) && tch::Cuda::is_available() {
                Device::Cuda(0)
            } else {
                Device::Cpu
            },
        ),
        DeviceChoice::Cuda(n) => {
            if let cuda::CudaLib::Unavailable(why) = cuda::ensure_loaded() {
                return Err(TrainError::Device(format!(
                    "CUDA requested but libtorch's CUDA library cannot be used: {why} \
                     (on a GPU host, point LD_LIBRARY_PATH at a CUDA build of torch 2.11.0's torch/lib, \
                     or run `scripts/setup --cuda` and rebuild)"
                )));
            }
            if !tch::Cuda::is_available() {
                return Err(TrainError::Device(
                    "CUDA requested but libtorch reports no usable GPU (check `nvidia-smi` and the driver)".to_string(),
                ));
            }
            let count = tch::Cuda::device_count() as usize;
            if n >= count {
                return Err(TrainError::Device(format!(
                    "CUDA device {n} requested but only {count} visible"
                )));
            }
            Ok(Device::Cuda(n))
        }
    }
}

/// The libtorch version this binary runs with (from the `torch/version.py` beside the
/// libtorch it loaded, else beside the one it was built against).
pub fn libtorch_version() -> String {
    let lib = cuda::loaded_libtorch_dir().unwrap_or_else(|| env!("NODULE_LIBTORCH_LIB").into());
    torch_version_in(&lib).unwrap_or_else(|| "unknown".into())
}

/// The torch version of a `torch/lib` folder, from the `torch/version.py` beside it.
pub fn torch_version_in(lib: &std::path::Path) -> Option<String> {
    // files-exempt: no user input (the kernel's or the libtorch install's own file).
    let text = std::fs::read_to_string(lib.join("../version.py")).ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix("__version__ = ")
            .map(|v| v.trim_matches(['\'', '"']).to_string())
    })
}

/// `cpu` or `cuda:N`.
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cuda(n) => format!("cuda:{n}"),
        _ => "cpu".into(),
    }
}
