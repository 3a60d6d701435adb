//! Regression tests for hostile input, special files and concurrent use, one per bug,
//! through the real binaries. Each stands for a class (see the README's "Failure
//! behaviour"): an output that names an input, a special file, two processes at once,
//! memory beyond the cube, non-finite values, settings out of range, duplicates, resume
//! integrity.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use chain_tests::{run, run_ok, s};

use crate::fixture::fixture;

mod calibrate;
mod every_binary;
mod froc;
mod infer;
mod trainer;

/// Makes a FIFO at `p` (coreutils' mkfifo).
pub(super) fn mkfifo(p: &Path) {
    let ok = Command::new("mkfifo").arg(p).status().expect("mkfifo").success();
    assert!(ok, "mkfifo {}", p.display());
}

/// Holds the OS lock on `path` as another process running there would, and says who it is.
pub(super) fn hold(path: &Path) -> std::fs::File {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .expect("lock file");
    f.lock().expect("lock");
    writeln!(f, "PID 424242: trainer train --out elsewhere").expect("w");
    f
}

/// A copy of the fixture's patch folder (tests must not change the shared one).
pub(super) fn patches_copy(dir: &Path) -> PathBuf {
    let f = fixture();
    let out = dir.join("patches");
    std::fs::create_dir(&out).expect("mkdir");
    for e in std::fs::read_dir(&f.patches).expect("ls").flatten() {
        if e.file_type().expect("type").is_file() {
            std::fs::copy(e.path(), out.join(e.file_name())).expect("copy");
        }
    }
    out
}

/// A three-epoch CPU training run of the fixture's size into `out`.
pub(super) fn small_run<'a>(patches: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec![
        "train",
        "--data",
        s(patches),
        "--out",
        s(out),
        "--cube-size",
        "16",
        "--width",
        "4",
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "-q",
    ]
}

/// The fixture's patches scored into a LUNA16 results file at `out`.
pub(super) fn luna16_results(out: &Path) {
    let f = fixture();
    run_ok(
        "infer",
        &[
            "--model",
            s(&model()),
            "--index",
            s(&f.patches),
            "--format",
            "luna16",
            "-o",
            s(out),
            "-q",
        ],
    );
}

pub(super) fn model() -> PathBuf {
    fixture().run.join("model.onnx")
}

pub(super) fn infer(args: &[&str]) -> chain_tests::Run {
    let m = model();
    let mut a = vec!["--model", s(&m), "--device", "cpu", "-q"];
    a.extend_from_slice(args);
    run("infer", &a)
}

// ---- Outputs that name inputs (or each other) -------------------------------------------
