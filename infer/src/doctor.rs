//! `infer doctor`: what this host offers a scorer: the ONNX Runtime library and version,
//! its execution providers, the CUDA libraries and driver found, and a model's metadata.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ort::ep::{self, ExecutionProvider};

use scorer::runtime;

use crate::InferError;

/// CUDA 13 / cuDNN 9 libraries the CUDA provider loads.
const CUDA_LIBS: [&str; 5] = [
    "libcudart.so.13",
    "libcublas.so.13",
    "libcublasLt.so.13",
    "libcufft.so.12",
    "libcudnn.so.9",
];

fn find_lib(name: &str, extra: &[PathBuf]) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = extra.to_vec();
    if let Some(ld) = std::env::var_os("LD_LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&ld));
    }
    dirs.extend(
        [
            "/usr/lib/x86_64-linux-gnu",
            "/usr/local/cuda/lib64",
            "/usr/lib64",
            "/usr/lib",
        ]
        .iter()
        .map(PathBuf::from),
    );
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.exists())
}

/// The report, as text.
pub fn report(model: Option<&Path>, ort_lib: Option<&Path>) -> Result<String, InferError> {
    let mut s = String::new();
    let rt = runtime::init(ort_lib)?;
    let _ = writeln!(s, "ONNX Runtime {} at {}", rt.version, rt.library.display());
    let cuda = ep::CUDA::is_available().unwrap_or(false);
    let _ = writeln!(
        s,
        "execution providers: CPUExecutionProvider{}",
        if cuda {
            ", CUDAExecutionProvider (compiled in)"
        } else {
            " (this build has no CUDA provider)"
        }
    );
    let site_nvidia: Vec<PathBuf> = rt
        .library
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(|site| vec![site.join("nvidia/cu13/lib"), site.join("nvidia/cudnn/lib")])
        .unwrap_or_default();
    for lib in CUDA_LIBS {
        let _ = writeln!(
            s,
            "  {lib:<20} {}",
            find_lib(lib, &site_nvidia).map_or("not found".to_string(), |p| p.display().to_string())
        );
    }
    // files-exempt: the kernel's own file, no user input.
    let driver = std::fs::read_to_string("/proc/driver/nvidia/version")
        .ok()
        .and_then(|t| t.lines().next().map(str::to_string))
        .unwrap_or_else(|| "no NVIDIA driver (/proc/driver/nvidia/version absent)".into());
    let _ = writeln!(s, "driver: {driver}");
    if let Some(m) = model {
        let proto = models::onnx::read_model(m)?;
        let md = models::onnx::metadata(&proto);
        let sha = files::sha256_file(m)?;
        let _ = writeln!(s, "model {} (sha256 {sha})", m.display());
        let g = proto.graph.as_ref();
        let names = |v: Option<&Vec<models::onnx::proto::ValueInfoProto>>| {
            v.map(|v| v.iter().filter_map(|i| i.name.clone()).collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        };
        let _ = writeln!(
            s,
            "  opset {}, inputs [{}], outputs [{}]",
            proto
                .opset_import
                .first()
                .and_then(|o| o.version)
                .map_or_else(|| "not stated".to_string(), |v| v.to_string()),
            names(g.map(|g| &g.input)),
            names(g.map(|g| &g.output))
        );
        for (k, v) in &md {
            if k != "architecture.spec_json" {
                let _ = writeln!(s, "  {k} = {v}");
            }
        }
        match models::preprocess::Preprocess::from_metadata(&md) {
            Ok(p) => {
                let _ = writeln!(
                    s,
                    "  preprocessing: centre crop/pad to {}³ (pad {} HU), clip [{}, {}] HU → [{}, {}]",
                    p.cube_size, p.pad_hu, p.hu_min, p.hu_max, p.out_min, p.out_max
                );
            }
            Err(e) => {
                let _ = writeln!(s, "  not scorable by infer: {e}");
            }
        }
    }
    Ok(s)
}

/// The host against a bundle's requirements.
pub fn bundle_report(info: &crate::bundle::BundleInfo) -> String {
    let r = &info.requires;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "bundle: {} with {} {} (tool {})",
        info.model, info.onnxruntime, info.onnxruntime_version, info.tool_version
    );
    let arch = std::env::consts::ARCH;
    let _ = writeln!(
        s,
        "  architecture: needs {}, host {arch}: {}",
        r.arch,
        if r.arch == arch { "ok" } else { "MISMATCH" }
    );
    let host = std::process::Command::new("/usr/bin/getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .trim_start_matches("glibc ")
                .to_string()
        });
    let parse = |v: &str| v.split('.').map(|p| p.parse::<u32>().unwrap_or(0)).collect::<Vec<_>>();
    let verdict = match &host {
        Some(h) if parse(h) >= parse(&r.min_glibc) => format!("host {h}: ok"),
        Some(h) => format!("host {h}: TOO OLD"),
        None => "host unknown (no getconf)".into(),
    };
    let _ = writeln!(s, "  glibc: needs >= {}, {verdict}", r.min_glibc);
    if let (Some(cuda), Some(cudnn)) = (r.cuda_major, r.cudnn_major) {
        // files-exempt: the kernel's own file, no user input.
        let driver = std::fs::read_to_string("/proc/driver/nvidia/version").ok();
        let _ = writeln!(
            s,
            "  GPU: needs CUDA {cuda}, cuDNN {cudnn}, NVIDIA driver {}; host driver: {}",
            r.nvidia_driver.as_deref().unwrap_or("?"),
            driver.as_deref().and_then(|d| d.lines().next()).unwrap_or("none")
        );
    }
    s
}
