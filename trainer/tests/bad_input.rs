//! Bad input to `trainer` ends in a clear error naming the file and what was wrong, never a
//! panic and never a run folder: run on the binary Cargo builds for these tests.
use std::path::Path;

use chain_tests::{run_err, s, synth};
use ndarray::Array3;
use ndarray_npy::write_npy;

const TRAINER: &str = env!("CARGO_BIN_EXE_trainer");
const CUBE: usize = 16;

fn index_with(dir: &Path, body: &str) -> std::path::PathBuf {
    let p = dir.join("patch_index.csv");
    std::fs::write(&p, body).expect("write");
    p
}

#[test]
fn trainer_missing_index_column() {
    let d = tempfile::tempdir().expect("tmp");
    let idx = index_with(
        d.path(),
        "patch_file,seriesuid,diam_mm,center_x,center_y,center_z\na.npy,s,1,2,3,4\n",
    );
    let out = d.path().join("run");
    let r = run_err(TRAINER, &["train", "--data", s(&idx), "--out", s(&out)]);
    assert!(
        r.stderr.contains("patch_index.csv") && r.stderr.contains("missing column(s) label"),
        "{}",
        r.stderr
    );
    assert!(!out.exists(), "a failed run must not leave a run folder");
}

#[test]
fn trainer_index_row_without_patch_file() {
    let d = tempfile::tempdir().expect("tmp");
    let patches = synth(d.path(), 4, 3, CUBE, 21);
    let idx = patches.join("patch_index.csv");
    let mut text = std::fs::read_to_string(&idx).expect("read");
    text.push_str("no_such_patch.npy,1.2.3,5,0,0,0,1\n");
    std::fs::write(&idx, text).expect("write");
    let out = d.path().join("run");
    let r = run_err(
        TRAINER,
        &["train", "--data", s(&patches), "--out", s(&out), "--cube-size", "16"],
    );
    assert!(
        r.stderr.contains("no_such_patch.npy") && r.stderr.contains("do not exist"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
}

#[test]
fn trainer_bad_patch_names_the_file() {
    let d = tempfile::tempdir().expect("tmp");
    let patches = synth(d.path(), 4, 3, CUBE, 22);
    // Replace one patch with a uint8 array.
    write_npy(patches.join("s001_p001.npy"), &Array3::<u8>::zeros((16, 16, 16))).expect("write");
    let out = d.path().join("run");
    let r = run_err(
        TRAINER,
        &[
            "train",
            "--data",
            s(&patches),
            "--out",
            s(&out),
            "--cube-size",
            "16",
            "--epochs",
            "1",
            "--device",
            "cpu",
        ],
    );
    assert!(
        r.stderr.contains("s001_p001.npy") && r.stderr.contains("expected float32, float64 or int16"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
}

#[test]
fn trainer_refuses_a_set_without_negatives() {
    let d = tempfile::tempdir().expect("tmp");
    let patches = synth(d.path(), 4, 3, CUBE, 23);
    let idx = patches.join("patch_index.csv");
    let text = std::fs::read_to_string(&idx).expect("read");
    let relabelled: String = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                format!("{l}\n")
            } else {
                format!("{}1\n", &l[..l.len() - 1])
            }
        })
        .collect();
    std::fs::write(&idx, relabelled).expect("write");
    let r = run_err(
        TRAINER,
        &["train", "--data", s(&patches), "--out", s(&d.path().join("run"))],
    );
    assert!(r.stderr.contains("no negative patches"), "{}", r.stderr);
}
