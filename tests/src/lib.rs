//! Helpers for the integration tests that drive the real binaries: those of `tests/` (built
//! by `cargo build --workspace --bins` before `cargo test`) and a package's own tests (the
//! binary Cargo builds for them), with the inputs they share ([`fixtures`]).
#![warn(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The folder holding the workspace's binaries: `target/<profile>`, found from the test
/// executable's own path (`target/<profile>/deps/<test>`). Each binary must be newer than the
/// sources it is built from (see [`binaries`]): a suite run after an edit without a rebuild
/// would test old binaries.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf();
    for (b, crates) in binaries() {
        let path = dir.join(b);
        let built = std::fs::metadata(&path).and_then(|m| m.modified()).unwrap_or_else(|_| {
            panic!(
                "{} missing: build the binaries first (`cargo build --workspace --bins`, as scripts/test does)",
                path.display()
            )
        });
        for (k, src) in crates.iter().enumerate() {
            // The binary's own crate counts whole; of the crates it links only the library
            // does (another crate's `main.rs` or `src/bin/` is not part of this binary).
            if let Some(t) = newest_source(src, k > 0) {
                assert!(
                    t <= built,
                    "{} is older than the sources in {}: run `cargo build --workspace --bins` (scripts/test does)",
                    path.display(),
                    src.display()
                );
            }
        }
    }
    dir
}

/// `cargo metadata --no-deps` of the workspace (its packages, their targets and declared
/// dependencies), read offline.
pub fn cargo_metadata() -> serde_json::Value {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
            "--manifest-path",
        ])
        .arg(workspace().join("Cargo.toml"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata JSON")
}

/// Every binary of the workspace with the source folders it is built from: its own
/// package's `src` first, then the `src` of every workspace package it reaches through
/// normal dependencies. Read from `cargo metadata` once per test process, so the list
/// follows the manifests (a hand-kept one went stale: it missed `scans` for the trainer and
/// `froc` for calibrate).
pub fn binaries() -> &'static [(String, Vec<PathBuf>)] {
    static BINS: std::sync::OnceLock<Vec<(String, Vec<PathBuf>)>> = std::sync::OnceLock::new();
    BINS.get_or_init(|| {
        let meta = cargo_metadata();
        let packages = meta["packages"].as_array().cloned().unwrap_or_default();
        // Workspace package name -> (its src folder, its normal workspace dependencies).
        let mut pkgs: std::collections::BTreeMap<String, (PathBuf, Vec<String>)> = std::collections::BTreeMap::new();
        for p in &packages {
            let name = p["name"].as_str().unwrap_or_default().to_string();
            let dir = Path::new(p["manifest_path"].as_str().unwrap_or_default())
                .parent()
                .map(|d| d.join("src"))
                .unwrap_or_default();
            let deps = p["dependencies"]
                .as_array()
                .map(|d| {
                    d.iter()
                        .filter(|d| d["kind"].is_null() && d.get("path").is_some_and(|p| !p.is_null()))
                        .filter_map(|d| d["name"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            pkgs.insert(name, (dir, deps));
        }
        let mut bins = Vec::new();
        for p in &packages {
            let name = p["name"].as_str().unwrap_or_default().to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                if !t["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin")) {
                    continue;
                }
                let mut seen = vec![name.clone()];
                let mut at = 0;
                while at < seen.len() {
                    let deps = pkgs.get(&seen[at]).map(|(_, d)| d.clone()).unwrap_or_default();
                    for d in deps {
                        if !seen.contains(&d) {
                            seen.push(d);
                        }
                    }
                    at += 1;
                }
                let dirs = seen
                    .iter()
                    .filter_map(|c| pkgs.get(c).map(|(d, _)| d.clone()))
                    .collect();
                bins.push((t["name"].as_str().unwrap_or_default().to_string(), dirs));
            }
        }
        assert!(bins.len() >= 5, "cargo metadata listed too few binaries: {bins:?}");
        bins
    })
}

/// Newest modification time under `dir`; with `library_only`, `dir`'s `main.rs` and `bin/`
/// are left out.
fn newest_source(dir: &Path, library_only: bool) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if library_only && (e.file_name() == "main.rs" || e.file_name() == "bin") {
            continue;
        }
        let t = if p.is_dir() {
            newest_source(&p, false)
        } else {
            e.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(t);
    }
    newest
}

/// Path of one of the workspace binaries.
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The project's Python (`scripts/setup`'s venv), which holds the references the tests
/// compare with (scikit-learn, onnxruntime, pydicom, nibabel, SimpleITK).
pub fn python() -> PathBuf {
    workspace().join(".venv/bin/python")
}

/// A finished command with its output as text.
pub struct Run {
    pub ok: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            ok: o.status.success(),
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs a workspace binary with arguments. What it prints is for people: Rust's Debug
/// formatting of an `Option` or a struct reaching it (`opset Some(17)`, `Preprocess {
/// cube_size: 16, … }`) fails the test that ran it, whichever test that is.
///
/// `name` is a workspace binary's name, or a path to one: a package's own tests pass
/// `env!("CARGO_BIN_EXE_<name>")`, the binary Cargo built for them.
pub fn run(name: &str, args: &[&str]) -> Run {
    let exe = if name.contains('/') { PathBuf::from(name) } else { bin(name) };
    let r: Run = Command::new(exe)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"))
        .into();
    assert_no_debug_formatting(name, args, &r.stdout);
    assert_no_debug_formatting(name, args, &r.stderr);
    r
}

/// Fails on text that only Rust's `{:?}` of an `Option` or of a struct writes.
pub fn assert_no_debug_formatting(name: &str, args: &[&str], text: &str) {
    let leaks = ["Some(", "(None)", " None,", ": None", "Preprocess {", "PathBuf {", "Error {"];
    if let Some(l) = leaks.iter().find(|l| text.contains(*l)) {
        let line = text.lines().find(|x| x.contains(*l)).unwrap_or_default();
        panic!("{name} {args:?} printed Rust Debug formatting ({l:?}) to a user:\n{line}");
    }
}

/// Runs and asserts success, printing the output on failure.
pub fn run_ok(name: &str, args: &[&str]) -> Run {
    let r = run(name, args);
    assert!(
        r.ok,
        "{name} {args:?} failed ({:?}):\nstdout:\n{}\nstderr:\n{}",
        r.code, r.stdout, r.stderr
    );
    r
}

/// Runs and asserts failure; returns the output.
pub fn run_err(name: &str, args: &[&str]) -> Run {
    let r = run(name, args);
    assert!(
        !r.ok,
        "{name} {args:?} should have failed:\nstdout:\n{}\nstderr:\n{}",
        r.stdout, r.stderr
    );
    assert!(
        !r.stderr.contains("panicked"),
        "{name} panicked instead of reporting an error:\n{}",
        r.stderr
    );
    r
}

/// Path as &str (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Reads a CSV into a header and rows.
pub fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header = r.headers().expect("header").iter().map(str::to_string).collect();
    let rows = r
        .records()
        .map(|x| x.expect("record").iter().map(str::to_string).collect())
        .collect();
    (header, rows)
}

/// Column index by name.
pub fn col(header: &[String], name: &str) -> usize {
    header
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name} in {header:?}"))
}

/// A folder for what one test process makes once and uses for its whole run:
/// `tmp/PREFIX-PID`, under cargo's `CARGO_TARGET_TMPDIR` (a static fixture outlives any
/// `TempDir`). The folders of this prefix that ended processes left (and any of the old
/// random-named ones) are removed first, so runs do not pile them up; a live process's
/// folder is left alone.
pub fn process_dir(tmp: &Path, prefix: &str) -> PathBuf {
    let me = std::process::id();
    for e in std::fs::read_dir(tmp).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(suffix) = name.strip_prefix(prefix).and_then(|s| s.strip_prefix('-')) else {
            continue;
        };
        let stale = suffix
            .parse::<u32>()
            .map_or(true, |pid| pid == me || !Path::new(&format!("/proc/{pid}")).exists());
        if stale {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let dir = tmp.join(format!("{prefix}-{me}"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

pub mod fixtures;
pub use fixtures::synth;
