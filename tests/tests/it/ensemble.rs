//! `trainer ensemble`: the fold models of a k-fold run as one model averaging their logits,
//! scored, calibrated and bundled like any model; members that cannot be averaged refused.
use std::path::Path;

use chain_tests::{col, read_csv, run_err, run_ok, s};

use crate::fixture::fixture;

fn logits(scores: &Path) -> Vec<(String, f64)> {
    let (h, rows) = read_csv(scores);
    let (p, l) = (col(&h, "patch_file"), col(&h, "logit"));
    rows.iter()
        .map(|r| (r[p].clone(), r[l].parse().expect("logit")))
        .collect()
}

/// A 2-fold cross-validation of the fixture's patches in `dir/cv`, trained as the fixture's
/// run is (small and fast).
fn folds(dir: &Path) -> [std::path::PathBuf; 2] {
    let f = fixture();
    let cv = dir.join("cv");
    run_ok(
        "trainer",
        &[
            "train",
            "--data",
            s(&f.patches),
            "--out",
            s(&cv),
            "--cube-size",
            "16",
            "--width",
            "4",
            "--epochs",
            "4",
            "--batch-size",
            "8",
            "--lr",
            "0.003",
            "--device",
            "cpu",
            "--folds",
            "2",
            "-q",
        ],
    );
    [cv.join("fold_1"), cv.join("fold_2")]
}

#[test]
fn an_ensemble_scores_the_mean_of_its_folds_and_calibrates_and_bundles() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let [a, b] = folds(d.path());
    let ens = d.path().join("ensemble.onnx");
    let r = run_ok("trainer", &["ensemble", s(&a), s(&b), "-o", s(&ens)]);
    assert!(r.stdout.contains("ensemble of 2 models"), "{}", r.stdout);
    let md = models::onnx::metadata(&models::onnx::read_model(&ens).expect("model"));
    assert_eq!(md["architecture"], "ensemble");
    for m in [&a, &b] {
        let sha = files::sha256_file(&m.join("model.onnx")).expect("sha");
        assert!(md["ensemble.members"].contains(&sha), "{md:?}");
    }
    // infer's logits of the ensemble are the mean of its members' (each scored on its own).
    let score = |model: &Path, name: &str| {
        let out = d.path().join(name);
        run_ok("infer", &[s(&f.patches), "--model", s(model), "-o", s(&out)]);
        logits(&out)
    };
    let (e, la, lb) = (
        score(&ens, "e.csv"),
        score(&a.join("model.onnx"), "a.csv"),
        score(&b.join("model.onnx"), "b.csv"),
    );
    assert_eq!(e.len(), la.len());
    for ((pe, ve), ((pa, va), (pb, vb))) in e.iter().zip(la.iter().zip(&lb)) {
        assert!(pe == pa && pa == pb);
        let mean = (va + vb) / 2.0;
        assert!(
            (ve - mean).abs() <= 1e-5 * mean.abs().max(1.0),
            "{pe}: {ve} vs mean {mean}"
        );
    }
    // Calibrated on labelled patches, scored with the calibration, and bundled.
    let cal = d.path().join("cal/calibration.yaml");
    run_ok(
        "calibrate",
        &[
            "--model",
            s(&ens),
            "--patches",
            s(&f.patches.join("patch_index.csv")),
            "-o",
            s(&cal),
            "--bootstrap",
            "0",
            "--no-report",
        ],
    );
    let scored = d.path().join("cal_scores.csv");
    run_ok(
        "infer",
        &[
            s(&f.patches),
            "--model",
            s(&ens),
            "--calibration",
            s(&cal),
            "-o",
            s(&scored),
        ],
    );
    let (h, _) = read_csv(&scored);
    assert!(h.iter().any(|c| c == "calibrated_probability"));
    let archive = d.path().join("scorer.tar.gz");
    run_ok(
        "infer",
        &[
            "bundle",
            "--model",
            s(&ens),
            "--calibration",
            s(&cal),
            "-o",
            s(&archive),
        ],
    );
    // What cannot be averaged is refused, naming the member, and nothing is written.
    let out = d.path().join("refused.onnx");
    let calibrated = d.path().join("cal/model.calibrated.onnx");
    let mut other_window = d.path().join("other_window.onnx");
    run_ok(
        "trainer",
        &[
            "export",
            "--weights",
            s(&a.join("best.safetensors")),
            "--config",
            s(&a.join("config.yaml")),
            "--hu-min",
            "-1200",
            "-o",
            s(&other_window),
        ],
    );
    for (members, want) in [
        (vec![s(&a), s(&calibrated)], "a calibrated model"),
        (vec![s(&a), s(&ens)], "already an ensemble"),
        (vec![s(&a), s(&other_window)], "members must see the same cubes"),
        (vec![s(&a), s(&f.patches)], "model.onnx"),
    ] {
        let mut args = vec!["ensemble"];
        args.extend(members);
        args.extend(["-o", s(&out)]);
        let r = run_err("trainer", &args);
        assert!(r.stderr.contains(want), "{want:?} in {}", r.stderr);
        assert!(!out.exists());
    }
    // One member is not an ensemble; the output may not be a member.
    let r = run_err("trainer", &["ensemble", s(&a), "-o", s(&out)]);
    assert!(
        r.stderr.contains("MEMBERS") || r.stderr.contains("2 values"),
        "{}",
        r.stderr
    );
    other_window = a.join("model.onnx");
    let before = std::fs::read(&other_window).expect("read");
    let r = run_err("trainer", &["ensemble", s(&a), s(&b), "-o", s(&other_window)]);
    assert!(r.stderr.contains("model.onnx"), "{}", r.stderr);
    assert_eq!(std::fs::read(&other_window).expect("read"), before);
}
