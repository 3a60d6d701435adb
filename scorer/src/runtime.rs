//! Finding and loading ONNX Runtime (`load-dynamic`: nothing is linked at build time).
//!
//! Search order: the `--ort-lib` flag, then a `libonnxruntime.so*` next to the executable
//! (a shipped bundle), then `ORT_DYLIB_PATH`, then the project venv made by `scripts/setup`
//! (`.venv/lib/python3.*/site-packages/onnxruntime/capi/`). A missing library is an error
//! that lists where it looked and how to fix it.

/// The `--ort-lib` flag's help, in the order [`find_library`]-style search takes (one text
/// for every binary, so `--help` and the docs cannot drift apart).
pub const ORT_LIB_HELP: &str =
    "libonnxruntime.so to load (else: a libonnxruntime.so* next to this binary, $ORT_DYLIB_PATH, the project venv)";
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

use crate::ScorerError;

/// Environment variable naming the ONNX Runtime shared library (the name ort itself uses).
pub const ORT_ENV: &str = "ORT_DYLIB_PATH";

/// The loaded runtime: where it came from and its version.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub library: PathBuf,
    pub version: String,
    pub env: Environment,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
/// Serialises the first initialisation: ort refuses a second environment per process.
static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The workspace's project venv, recorded at build time.
fn venv_dirs() -> Vec<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let workspace = workspace.canonicalize().unwrap_or(workspace);
    let root = workspace.join(".venv").join("lib");
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&root) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("python") {
                out.push(e.path().join("site-packages/onnxruntime/capi"));
            }
        }
    }
    out.sort();
    out
}

/// The newest-looking `libonnxruntime.so*` in a folder.
fn lib_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            n.starts_with("libonnxruntime.so") || n == "libonnxruntime.dylib"
        })
        .collect();
    found.sort();
    found.pop()
}

/// Resolves the library path without loading it; `Err` lists every place tried.
pub fn locate(flag: Option<&Path>) -> Result<PathBuf, ScorerError> {
    let mut tried = Vec::new();
    if let Some(p) = flag {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        return Err(ScorerError::NoSuchLibrary {
            given: format!("--ort-lib {}", p.display()),
            path: p.to_path_buf(),
        });
    }
    // A bundle carries its library next to the binary: that wins over the environment.
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        if let Some(p) = lib_in(&dir) {
            return Ok(p);
        }
        tried.push(format!("next to the executable: {}", dir.display()));
    }
    if let Some(p) = std::env::var_os(ORT_ENV) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(ScorerError::NoSuchLibrary {
            given: format!("{ORT_ENV}={}", p.display()),
            path: p,
        });
    }
    tried.push(format!("--ort-lib (not given), ${ORT_ENV} (not set)"));
    for dir in venv_dirs() {
        if let Some(p) = lib_in(&dir) {
            return Ok(p);
        }
        tried.push(format!("project venv: {}", dir.display()));
    }
    if venv_dirs().is_empty() {
        tried.push(format!(
            "project venv: {} (absent)",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv").display()
        ));
    }
    Err(ScorerError::RuntimeNotFound { tried })
}

/// Loads ONNX Runtime once per process (ort allows one environment per process).
pub fn init(flag: Option<&Path>) -> Result<&'static Runtime, ScorerError> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let _guard = INIT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let library = locate(flag)?;
    let env = ort::init_from(&library)
        .map_err(|source| ScorerError::Load {
            library: library.clone(),
            what: "cannot load ONNX Runtime",
            source: Box::new(source),
        })?
        .with_name("nodule-infer")
        .build()
        .map_err(|source| ScorerError::Load {
            library: library.clone(),
            what: "cannot create the ONNX Runtime environment",
            source: Box::new(source),
        })?;
    let version = version_of(&library);
    Ok(RUNTIME.get_or_init(|| Runtime { library, version, env }))
}

/// ONNX Runtime's version, from its build-info string (`git-branch=rel-1.31.1`) or, failing
/// that, the library file name.
fn version_of(lib: &Path) -> String {
    let info = ort::info();
    if let Some(v) = info.split(',').find_map(|f| f.trim().strip_prefix("git-branch=rel-")) {
        return v.to_string();
    }
    let name = lib
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_prefix("libonnxruntime.so.")
        .map(str::to_string)
        .unwrap_or_else(|| info.to_string())
}

/// When ONNX Runtime comes from a Python venv with NVIDIA's wheels beside it
/// (`site-packages/nvidia/cu13/lib`, `nvidia/cudnn/lib`, as the CUDA install of
/// `scripts/setup` lays them out), loads the CUDA 13 and cuDNN 9 libraries the CUDA
/// provider needs from there: they are not on the loader path, and without them the
/// provider fails to register. `Ok(None)` when there is nothing to preload.
pub fn preload_cuda_libraries(rt: &Runtime) -> Result<Option<PathBuf>, String> {
    // .../site-packages/onnxruntime/capi/libonnxruntime.so.X
    let Some(site) = rt.library.parent().and_then(Path::parent).and_then(Path::parent) else {
        return Ok(None);
    };
    let cuda = site.join("nvidia/cu13/lib");
    let cudnn = site.join("nvidia/cudnn/lib");
    if !cuda.join("libcublas.so.13").exists() {
        return Ok(None);
    }
    let cudnn = cudnn.join("libcudnn.so.9").exists().then_some(cudnn);
    ort::ep::cuda::preload_dylibs(Some(&cuda), cudnn.as_deref())
        .map(|()| Some(site.join("nvidia")))
        .map_err(|e| format!("preloading CUDA libraries from {}: {e}", site.join("nvidia").display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A library given by flag that is not there is `NoSuchLibrary`, naming the path a caller
    /// can match on and how it was given.
    #[test]
    fn a_missing_library_given_by_flag_names_its_path() {
        let p = Path::new("/nonexistent/libonnxruntime.so");
        match locate(Some(p)) {
            Err(ScorerError::NoSuchLibrary { given, path }) => {
                assert_eq!(path, p);
                assert_eq!(given, format!("--ort-lib {}", p.display()));
            }
            other => panic!("not NoSuchLibrary: {other:?}"),
        }
    }
}
