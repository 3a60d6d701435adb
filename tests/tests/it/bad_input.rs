//! Bad input ends in a clear error naming the file and what was wrong, never a panic, and
//! never a half-written output.
use chain_tests::{run_err, run_ok, s};

use crate::fixture::fixture;

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
