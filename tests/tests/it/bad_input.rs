//! Bad input ends in a clear error naming the file and what was wrong, never a panic, and
//! never a half-written output.
use std::path::Path;

use chain_tests::{read_csv, run_err, run_ok, s, synth};
use ndarray::{Array2, Array3};
use ndarray_npy::write_npy;

use crate::fixture::{fixture, CUBE};

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
    let r = run_err("trainer", &["train", "--data", s(&idx), "--out", s(&out)]);
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
        "trainer",
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
        "trainer",
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
        "trainer",
        &["train", "--data", s(&patches), "--out", s(&d.path().join("run"))],
    );
    assert!(r.stderr.contains("no negative patches"), "{}", r.stderr);
}

#[test]
fn infer_reports_every_bad_file_and_keeps_going() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let folder = d.path().join("mixed");
    std::fs::create_dir(&folder).expect("mkdir");
    for name in ["s001_p001.npy", "s001_p002.npy"] {
        std::fs::copy(f.patches.join(name), folder.join(name)).expect("copy");
    }
    write_npy(folder.join("bad_dtype.npy"), &Array3::<u8>::zeros((4, 4, 4))).expect("write");
    write_npy(folder.join("bad_rank.npy"), &Array2::<f32>::zeros((16, 16))).expect("write");
    let bytes = std::fs::read(f.patches.join("s001_p003.npy")).expect("read");
    std::fs::write(folder.join("truncated.npy"), &bytes[..bytes.len() / 2]).expect("write");
    let model = f.run.join("model.onnx");
    let out = d.path().join("scores.csv");
    let r = run_err(
        "infer",
        &["--model", s(&model), "--device", "cpu", s(&folder), "-o", s(&out)],
    );
    assert!(
        r.stderr.contains("bad_dtype.npy") && r.stderr.contains("expected float32, float64 or int16"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("bad_rank.npy") && r.stderr.contains("3-D"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("truncated.npy") && r.stderr.contains("truncated"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("3 input(s) could not be scored"), "{}", r.stderr);
    let (_, rows) = read_csv(&out);
    let names: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(names, ["s001_p001.npy", "s001_p002.npy"]);

    // --fail-fast stops at the first bad file and writes nothing.
    let out2 = d.path().join("scores2.csv");
    let r = run_err(
        "infer",
        &[
            "--model",
            s(&model),
            "--device",
            "cpu",
            "--fail-fast",
            s(&folder),
            "-o",
            s(&out2),
        ],
    );
    assert!(r.stderr.contains("bad_dtype.npy"), "{}", r.stderr);
    assert!(!out2.exists());
}

#[test]
fn model_that_is_not_onnx() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let fake = d.path().join("model.onnx");
    std::fs::write(&fake, b"definitely not a protobuf").expect("write");
    let out = d.path().join("scores.csv");
    let r = run_err("infer", &["--model", s(&fake), s(&f.patches), "-o", s(&out)]);
    assert!(
        r.stderr.contains("model.onnx") && r.stderr.contains("not a valid ONNX model"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
    let cal_out = d.path().join("cal.yaml");
    let r = run_err(
        "calibrate",
        &[
            "--scores",
            s(&f.run.join("val_scores.csv")),
            "--model",
            s(&fake),
            "-o",
            s(&cal_out),
        ],
    );
    assert!(r.stderr.contains("not a valid ONNX model"), "{}", r.stderr);
    assert!(!cal_out.exists());
}

/// A thread or job count beyond 4× the CPUs is refused before any pool starts (a slip such
/// as `--threads 100000` used to start that many threads and exhaust the process limit).
/// The count tried is one above the limit, so a broken check costs a few threads only.
#[test]
fn thread_counts_beyond_the_cpus_are_refused() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let n = (host::max_threads() + 1).to_string();
    let out = d.path().join("scores.csv");
    let model = f.run.join("model.onnx");
    let r = run_err(
        "infer",
        &["--model", s(&model), s(&f.patches), "-o", s(&out), "--threads", &n],
    );
    assert!(
        r.stderr.contains(&format!("--threads {n} is more than")),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
    let run = d.path().join("run");
    let r = run_err(
        "trainer",
        &["train", "--data", s(&f.patches), "--out", s(&run), "--threads", &n],
    );
    assert!(
        r.stderr.contains(&format!("train.threads {n} is more than")),
        "{}",
        r.stderr
    );
    assert!(!run.exists());
    let r = run_err(
        "scans",
        &[
            "prepare",
            "--scans",
            s(d.path()),
            "--annotations",
            s(&d.path().join("a.csv")),
            "--candidates",
            s(&d.path().join("c.csv")),
            "--out",
            s(&d.path().join("p")),
            "--jobs",
            &n,
        ],
    );
    assert!(r.stderr.contains(&format!("--jobs {n} is more than")), "{}", r.stderr);
}

#[test]
fn too_many_bootstrap_resamples_are_refused_before_any_work() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let out = d.path().join("cal/calibration.yaml");
    let n = "100001"; // calibrate::MAX_BOOTSTRAP + 1
    let r = run_err("calibrate", &[s(&f.run), "-o", s(&out), "--bootstrap", n]);
    assert!(r.stderr.contains(&format!("--bootstrap {n}: at most")), "{}", r.stderr);
    assert!(!out.exists());
}

#[test]
fn calibration_of_another_model_is_refused() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let cal = d.path().join("calibration.yaml");
    run_ok("calibrate", &[s(&f.run), "-o", s(&cal)]);
    // The same network re-saved with one weight changed: a valid ONNX file, another model.
    let other = d.path().join("other.onnx");
    let mut m = models::onnx::read_model(&f.run.join("model.onnx")).expect("read model");
    let w = m
        .graph
        .as_mut()
        .and_then(|g| {
            g.initializer
                .iter_mut()
                .find(|t| t.name.as_deref() == Some("head.3.bias"))
        })
        .expect("head.3.bias");
    let raw = w.raw_data.as_mut().expect("raw data");
    let v = f32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) + 0.5;
    raw[..4].copy_from_slice(&v.to_le_bytes());
    std::fs::write(&other, models::onnx::to_bytes(&m)).expect("write");
    let out = d.path().join("scores.csv");
    let r = run_err(
        "infer",
        &[
            "--model",
            s(&other),
            "--calibration",
            s(&cal),
            "--device",
            "cpu",
            s(&f.patches),
            "-o",
            s(&out),
        ],
    );
    assert!(
        r.stderr.contains("calibration.yaml") && r.stderr.contains("another model"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
}

#[test]
fn cuda_that_cannot_be_had_is_an_error() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let out = d.path().join("scores.csv");
    let r = chain_tests::run(
        "infer",
        &[
            "--model",
            s(&f.run.join("model.onnx")),
            "--device",
            "cuda",
            s(&f.patches),
            "-o",
            s(&out),
        ],
    );
    let stamp = std::fs::read_to_string(chain_tests::workspace().join(".venv/.nodule-setup")).unwrap_or_default();
    if stamp.contains("variant=cuda") && r.ok {
        // A GPU host with onnxruntime-gpu: it must say it ran on CUDA.
        assert!(r.stderr.contains("on CUDAExecutionProvider"), "{}", r.stderr);
    } else {
        // The CPU build of ONNX Runtime: a loud, explained failure and no output.
        assert!(
            !r.ok,
            "--device cuda succeeded on a CPU-only ONNX Runtime:\n{}",
            r.stderr
        );
        assert!(
            r.stderr
                .contains("CUDA device 0 requested but the CUDA execution provider cannot be registered"),
            "{}",
            r.stderr
        );
        assert!(
            r.stderr.contains("CPU-only build") || r.stderr.contains("nvidia-smi"),
            "{}",
            r.stderr
        );
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        assert!(!out.exists());
    }
    let tr = chain_tests::run("trainer", &["doctor"]);
    if tr.stdout.contains("CUDA available: false") {
        let r = run_err(
            "trainer",
            &[
                "train",
                "--data",
                s(&f.patches),
                "--out",
                s(&d.path().join("run")),
                "--device",
                "cuda",
            ],
        );
        assert!(r.stderr.contains("CUDA requested"), "{}", r.stderr);
    }
}

/// Several bad settings are reported together, in one error, by each binary that takes
/// settings (the docs promise it; `prepare`, `infer` and `froc` once named the first only).
#[test]
fn every_bad_setting_is_named_in_one_error() {
    let d = tempfile::tempdir().expect("tmp");
    let f = fixture();
    let slab = chain_tests::workspace().join("../shared/data/lidc-idri-0002");
    let out = d.path().join("p");
    let r = run_err(
        "scans",
        &[
            "prepare", "--scans", s(&slab), "--annotations", "a.csv", "--candidates", "c.csv", "--out", s(&out),
            "--size-mm=-5", "--spacing-mm=0", "--neg-ratio=-1", "--jobs", "100000",
        ],
    );
    for want in ["--jobs 100000", "patch size -5", "patch spacing 0", "--neg-ratio"] {
        assert!(r.stderr.contains(want), "prepare: {want} missing from: {}", r.stderr);
    }
    let r = run_err(
        "infer",
        &[
            "--model", s(&f.run.join("model.onnx")), s(&f.patches), "-o", s(&d.path().join("x.csv")),
            "--batch-size", "100000", "--threads", "100000",
        ],
    );
    for want in ["--batch-size 100000", "--threads 100000"] {
        assert!(r.stderr.contains(want), "infer: {want} missing from: {}", r.stderr);
    }
    let r = run_err(
        "froc",
        &["--annotations", "a", "--seriesuids", "b", "--results", "c", "-o", s(&d.path().join("f")), "--bootstrap", "200000", "--confidence", "2"],
    );
    for want in ["--bootstrap 200000", "--confidence"] {
        assert!(r.stderr.contains(want), "froc: {want} missing from: {}", r.stderr);
    }
    assert!(!out.exists() && !d.path().join("x.csv").exists(), "nothing written");
}
