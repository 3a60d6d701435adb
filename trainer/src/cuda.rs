//! Brings up libtorch's CUDA half at run time, so one trainer binary runs on CPU-only hosts
//! and on GPU hosts alike.
//!
//! libtorch's CUDA kernels and its CUDA "hooks" live in `libtorch_cuda.so`, which registers
//! them from static initialisers when it is loaded. Nothing in our code calls into it, so the
//! linker's default `--as-needed` drops it and `tch::Cuda::is_available()` then says `false`
//! on a GPU host. build.rs links it with `--no-as-needed` when the build host has the full
//! CUDA libtorch; otherwise (the slim CPU venv, where linking it would make the binary
//! unloadable for want of libcudart) this module `dlopen`s the `libtorch_cuda.so` that sits
//! beside the `libtorch_cpu.so` the process actually loaded, with `RTLD_GLOBAL`, before
//! anything asks libtorch about CUDA (libtorch caches its CUDA hooks on first use).
//!
//! Written on libc directly: it is two calls, and `libloading` would unload the library on
//! drop and hides `RTLD_GLOBAL` behind its unix-only API anyway. The workspace denies unsafe
//! code; the functions here that call C (dlopen, dlsym, libtorch's autocast switches, the
//! CUDA runtime's memory query) allow it one by one, each block with its SAFETY comment.
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// How libtorch's CUDA library came to be (or not be) in the process.
#[derive(Debug, Clone)]
pub enum CudaLib {
    /// Linked into the binary at build time (`--no-as-needed`).
    Linked,
    /// Loaded at run time from this path.
    Loaded(PathBuf),
    /// Not loaded, and why (a CPU-only libtorch, or the loader's message naming the missing
    /// library such as `libcudart.so.13`).
    Unavailable(String),
}

impl std::fmt::Display for CudaLib {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CudaLib::Linked => write!(f, "libtorch_cuda linked at build time"),
            CudaLib::Loaded(p) => write!(f, "libtorch_cuda loaded at run time from {}", p.display()),
            CudaLib::Unavailable(why) => write!(f, "libtorch_cuda not loaded: {why}"),
        }
    }
}

/// The folder of the `libtorch_cpu.so` this process runs with (from `/proc/self/maps`),
/// which may differ from the one the binary was built against (`LD_LIBRARY_PATH`).
pub fn loaded_libtorch_dir() -> Option<PathBuf> {
    // files-exempt: no user input (the kernel's or the libtorch install's own file).
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| Path::new(p).file_name().is_some_and(|n| n == "libtorch_cpu.so"))
        .and_then(|p| Path::new(p).parent().map(Path::to_path_buf))
}

/// The CUDA runtime, cuBLAS and cuDNN libraries this process has loaded (file names, which
/// carry their major versions, e.g. `libcudart.so.13 libcudnn.so.9`), or `none`.
pub fn loaded_cuda_libraries() -> String {
    // files-exempt: no user input (the kernel's or the libtorch install's own file).
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut names: Vec<String> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter_map(|p| Path::new(p).file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| {
            ["libcudart.so", "libcublas.so", "libcudnn.so"]
                .iter()
                .any(|k| n.starts_with(k))
        })
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(" ")
    }
}

/// Loads libtorch_cuda once (idempotent); call before any CUDA query or seeding.
#[allow(unsafe_code)]
pub fn ensure_loaded() -> &'static CudaLib {
    static STATE: OnceLock<CudaLib> = OnceLock::new();
    STATE.get_or_init(|| {
        if crate::TORCH_CUDA_LINKED {
            return CudaLib::Linked;
        }
        if std::env::var_os("NODULE_NO_CUDA").is_some() {
            return CudaLib::Unavailable("NODULE_NO_CUDA is set".into());
        }
        let Some(dir) = loaded_libtorch_dir() else {
            return CudaLib::Unavailable("cannot find the loaded libtorch_cpu.so in /proc/self/maps".into());
        };
        let path = dir.join("libtorch_cuda.so");
        if !path.is_file() {
            return CudaLib::Unavailable(format!(
                "{} has no libtorch_cuda.so (a CPU-only libtorch)",
                dir.display()
            ));
        }
        let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
            return CudaLib::Unavailable(format!("{}: path has a NUL byte", path.display()));
        };
        // SAFETY: dlopen/dlerror with a valid NUL-terminated path; the handle is kept for the
        // life of the process (never dlclose'd), as libtorch's registrations require.
        unsafe {
            let h = libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
            if h.is_null() {
                let e = libc::dlerror();
                let msg = if e.is_null() {
                    "dlopen failed".to_string()
                } else {
                    CStr::from_ptr(e).to_string_lossy().into_owned()
                };
                return CudaLib::Unavailable(msg);
            }
        }
        CudaLib::Loaded(path)
    })
}

/// c10's `FLAGS_caffe2_log_level` (0 info, 1 warning, 2 error), the threshold below which
/// libtorch's C++ logger drops a message; `None` if this libtorch does not export it.
#[allow(unsafe_code)]
fn torch_log_level() -> Option<&'static std::sync::atomic::AtomicI32> {
    static FLAG: OnceLock<usize> = OnceLock::new();
    let addr = *FLAG.get_or_init(|| {
        // SAFETY: dlsym on the global scope with a NUL-terminated name.
        unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"FLAGS_caffe2_log_level".as_ptr()) as usize }
    });
    // SAFETY: the symbol is a C++ `int` with static storage duration in libc10, alive for the
    // life of the process; AtomicI32 has the same size and alignment as i32.
    (addr != 0).then(|| unsafe { &*(addr as *const std::sync::atomic::AtomicI32) })
}

/// Runs `f` with libtorch's warnings silenced (errors still print). Nested or concurrent
/// calls share one silence: the level is restored when the last of them ends (also when `f`
/// panics).
fn without_torch_warnings<T>(f: impl FnOnce() -> T) -> T {
    use std::sync::atomic::Ordering;
    use std::sync::Mutex;
    // (callers inside, the level to restore)
    static QUIET: Mutex<(usize, i32)> = Mutex::new((0, 0));
    struct Restore(&'static std::sync::atomic::AtomicI32);
    impl Drop for Restore {
        fn drop(&mut self) {
            let mut q = QUIET.lock().unwrap_or_else(|e| e.into_inner());
            q.0 -= 1;
            if q.0 == 0 {
                self.0.store(q.1, Ordering::SeqCst);
            }
        }
    }
    let Some(flag) = torch_log_level() else { return f() };
    {
        let mut q = QUIET.lock().unwrap_or_else(|e| e.into_inner());
        if q.0 == 0 {
            q.1 = flag.swap(2, Ordering::SeqCst);
        }
        q.0 += 1;
    }
    let _restore = Restore(flag);
    f()
}

/// What `tch::autocast` does (fp16 autocast on CUDA around `f`), minus the deprecation
/// warnings libtorch 2.11 prints on every call of the entry points tch uses
/// (`at::autocast::is_enabled` / `set_enabled`): five lines per training step otherwise.
/// Only those calls are silenced; warnings raised inside `f` still print.
#[allow(unsafe_code)]
pub fn autocast<T>(enabled: bool, f: impl FnOnce() -> T) -> T {
    if !enabled {
        return f();
    }
    /// Leaves autocast as it was, also when `f` panics (a CUDA out-of-memory).
    struct Leave(std::os::raw::c_int);
    impl Drop for Leave {
        #[allow(unsafe_code)]
        fn drop(&mut self) {
            // SAFETY: as below.
            if unsafe { torch_sys::at_autocast_decrement_nesting() } == 0 {
                unsafe { torch_sys::at_autocast_clear_cache() };
            }
            let prev = self.0;
            without_torch_warnings(|| unsafe { torch_sys::at_autocast_set_enabled(prev) });
        }
    }
    // SAFETY: plain C calls into torch-sys's wrapper; errors are caught there (PROTECT).
    let prev = without_torch_warnings(|| unsafe { torch_sys::at_autocast_is_enabled() });
    without_torch_warnings(|| unsafe { torch_sys::at_autocast_set_enabled(1) });
    unsafe { torch_sys::at_autocast_increment_nesting() };
    let _leave = Leave(prev);
    f()
}

/// Free and total bytes of CUDA device `n` (the CUDA runtime's `cudaMemGetInfo`), when the
/// runtime is loaded in this process (it is once libtorch has used CUDA); `None` otherwise.
#[allow(unsafe_code)]
pub fn mem_info(n: usize) -> Option<(u64, u64)> {
    type GetDevice = unsafe extern "C" fn(*mut i32) -> i32;
    type SetDevice = unsafe extern "C" fn(i32) -> i32;
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;
    let n = i32::try_from(n).ok()?;
    // SAFETY: dlsym on the global scope with NUL-terminated names; the symbols, when present,
    // are the CUDA runtime's functions with exactly these C signatures (cuda_runtime_api.h),
    // called with valid pointers to locals. The current device is restored.
    unsafe {
        let sym = |name: &std::ffi::CStr| libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr());
        let (get, set, info) = (sym(c"cudaGetDevice"), sym(c"cudaSetDevice"), sym(c"cudaMemGetInfo"));
        if get.is_null() || set.is_null() || info.is_null() {
            return None;
        }
        let get: GetDevice = std::mem::transmute::<*mut libc::c_void, GetDevice>(get);
        let set: SetDevice = std::mem::transmute::<*mut libc::c_void, SetDevice>(set);
        let info: MemGetInfo = std::mem::transmute::<*mut libc::c_void, MemGetInfo>(info);
        let mut current = 0i32;
        if get(&mut current) != 0 || (current != n && set(n) != 0) {
            return None;
        }
        let (mut free, mut total) = (0usize, 0usize);
        let rc = info(&mut free, &mut total);
        if current != n {
            set(current);
        }
        (rc == 0).then_some((free as u64, total as u64))
    }
}

#[cfg(test)]
mod tests {
    /// libtorch 2.11 warns on every `at::autocast::is_enabled()` call (CPU too): the
    /// silencer must find the log threshold and restore it afterwards.
    #[test]
    fn log_threshold_is_found_and_restored() {
        let flag = super::torch_log_level().expect("libc10 exports FLAGS_caffe2_log_level");
        let before = flag.load(std::sync::atomic::Ordering::SeqCst);
        let inside = super::without_torch_warnings(|| flag.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(inside, 2);
        assert_eq!(flag.load(std::sync::atomic::Ordering::SeqCst), before);
        // Nested: still silent inside, restored once at the end.
        let nested = super::without_torch_warnings(|| {
            super::without_torch_warnings(|| ());
            flag.load(std::sync::atomic::Ordering::SeqCst)
        });
        assert_eq!(nested, 2);
        assert_eq!(flag.load(std::sync::atomic::Ordering::SeqCst), before);
        // A panic inside still restores it.
        let _ = std::panic::catch_unwind(|| super::without_torch_warnings(|| panic!("inside")));
        assert_eq!(flag.load(std::sync::atomic::Ordering::SeqCst), before);
        // And autocast off is a plain call.
        assert_eq!(super::autocast(false, || 7), 7);
    }
}
