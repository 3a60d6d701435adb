//! `trainer doctor`: what the trainer links and sees.

/// `trainer doctor`.
pub(crate) fn doctor() {
    let lib = std::path::Path::new(env!("NODULE_LIBTORCH_LIB"));
    let version = trainer::torch_version_in(lib).unwrap_or_else(|| "not found there now".into());
    println!(
        "libtorch built against: {} (torch {version}; tch 0.24 needs 2.11.0)",
        lib.display()
    );
    if let Some(dir) = trainer::cuda::loaded_libtorch_dir() {
        println!(
            "libtorch loaded from: {} (torch {})",
            dir.display(),
            trainer::libtorch_version()
        );
    }
    println!("CUDA library: {}", trainer::cuda::ensure_loaded());
    println!(
        "CUDA available: {} ({} device(s)); cuDNN: {}",
        tch::Cuda::is_available(),
        tch::Cuda::device_count(),
        tch::Cuda::cudnn_is_available()
    );
}
