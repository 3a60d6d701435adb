//! Makes the trainer binary find libtorch without LD_LIBRARY_PATH, and keeps CUDA on.
//!
//! * torch-sys puts no rpath on the binary: add one to the libtorch lib folder it linked
//!   against (`DEP_TCH_LIBTORCH_LIB`, exported because we depend on torch-sys directly).
//! * torch-sys links `libtorch_cuda.so` whenever it exists, but nothing in our code
//!   references its symbols, so the default `--as-needed` drops it and CUDA then silently
//!   reports "unavailable" on GPU hosts. When the full CUDA libtorch is installed (its
//!   cuBLAS/cuDNN wheels are present) we link it with `--no-as-needed`. On the slim CPU
//!   install those wheels are absent and linking it would make the binary unloadable, so
//!   we leave it out. `NODULE_TORCH_CUDA=1|0` overrides the detection.
use std::path::Path;

fn main() {
    // The commit the binary was built from, recorded in exported models (best effort).
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=NODULE_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs/heads");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=NODULE_TORCH_CUDA");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report its libtorch lib folder; no rpath added");
        println!("cargo:rustc-env=NODULE_LIBTORCH_LIB=unknown");
        return;
    };
    let lib = Path::new(&lib);
    println!("cargo:rustc-env=NODULE_LIBTORCH_LIB={}", lib.display());
    // Applies to the binary and to every test/bench/example executable of this crate.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // Re-run when the venv's NVIDIA wheels change (scripts/setup --cpu ↔ --cuda), or the
    // --no-as-needed decision below would go stale and CUDA would silently stay off.
    if let Some(nvidia) = lib.parent().and_then(Path::parent).map(|s| s.join("nvidia")) {
        if nvidia.exists() {
            println!("cargo:rerun-if-changed={}", nvidia.display());
        } else {
            println!("cargo:rerun-if-changed={}", lib.display());
        }
    }
    let full_cuda = match std::env::var("NODULE_TORCH_CUDA").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => {
            // site-packages/torch/lib -> site-packages/nvidia/{cublas,cudnn}
            let site = lib.parent().and_then(Path::parent);
            lib.join("libtorch_cuda.so").exists()
                && site.is_some_and(|s| {
                    s.join("nvidia/cudnn").exists()
                        && s.join("nvidia/cu13/lib")
                            .read_dir()
                            .map(|mut d| {
                                d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libcublas")))
                            })
                            .unwrap_or(false)
                })
        }
    };
    println!(
        "cargo:rustc-cfg=torch_cuda_linked=\"{}\"",
        if full_cuda { "yes" } else { "no" }
    );
    println!("cargo::rustc-check-cfg=cfg(torch_cuda_linked, values(\"yes\", \"no\"))");
    if full_cuda {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,-lc10_cuda,--as-needed");
    }
}
