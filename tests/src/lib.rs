//! Helpers for the integration tests that drive the real `trainer`, `calibrate` and `infer`
//! binaries (built by `cargo build --workspace --bins` before `cargo test`).
#![warn(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The folder holding the workspace's binaries: `target/<profile>`, found from the test
/// executable's own path (`target/<profile>/deps/<test>`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf();
    for (b, crates) in [
        ("trainer", &["trainer", "models", "scorer", "plots"][..]),
        ("calibrate", &["calibrate", "models", "plots", "scorer"][..]),
        ("froc", &["froc", "models", "plots"][..]),
        ("infer", &["infer", "models", "scorer", "scans"][..]),
        ("scans", &["scans", "models"][..]),
    ] {
        let path = dir.join(b);
        let built = std::fs::metadata(&path).and_then(|m| m.modified()).unwrap_or_else(|_| {
            panic!(
                "{} missing: build the binaries first (`cargo build --workspace --bins`, as scripts/test does)",
                path.display()
            )
        });
        for (k, c) in crates.iter().enumerate() {
            // The binary's own crate counts whole; of the crates it links only the library
            // does (another crate's `main.rs` or `src/bin/` is not part of this binary).
            if let Some(src) = newest_source(&workspace().join(c).join("src"), k > 0) {
                assert!(
                    src <= built,
                    "{} is older than the sources of `{c}`: run `cargo build --workspace --bins` (scripts/test does)",
                    path.display()
                );
            }
        }
    }
    dir
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

/// Runs a workspace binary with arguments.
pub fn run(name: &str, args: &[&str]) -> Run {
    Command::new(bin(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"))
        .into()
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

/// Writes a tiny synthetic patch folder with the real `trainer synth`.
pub fn synth(dir: &Path, series: usize, per: usize, cube: usize, seed: u64) -> PathBuf {
    let out = dir.join(format!("patches_{seed}"));
    run_ok(
        "trainer",
        &[
            "synth",
            "--out",
            s(&out),
            "--series",
            &series.to_string(),
            "--patches-per-series",
            &per.to_string(),
            "--cube-size",
            &cube.to_string(),
            "--seed",
            &seed.to_string(),
            "--positive-fraction",
            "0.4",
        ],
    );
    out
}
