//! synthetic patches → train → ONNX → calibrate → infer, through the real binaries.
use std::collections::{BTreeMap, BTreeSet};

use chain_tests::{col, read_csv, run_ok, s};
use sha2::{Digest, Sha256};

use crate::fixture::{fixture, EPOCHS, PATCHES};

fn sha256(path: &std::path::Path) -> String {
    Sha256::digest(std::fs::read(path).expect("read"))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn run_folder_is_complete_and_honest() {
    let f = fixture();
    for name in [
        "config.yaml",
        "split.csv",
        "metrics.csv",
        "best.safetensors",
        "model.onnx",
        "parity.yaml",
        "val_scores.csv",
        "summary.yaml",
    ] {
        assert!(f.run.join(name).is_file(), "run folder lacks {name}");
    }
    for name in ["last.safetensors", "curves.png"] {
        assert!(f.run.join(name).is_file(), "run folder lacks {name}");
    }
    // Augmentation touched both classes in every epoch (the notebook augmented positives only).
    {
        let (h, rows) = read_csv(&f.run.join("metrics.csv"));
        for r in &rows {
            let pos: usize = r[col(&h, "augmented_positive")].parse().expect("n");
            let neg: usize = r[col(&h, "augmented_negative")].parse().expect("n");
            assert!(
                pos > 0 && neg > 0,
                "epoch {}: augmented {pos} positives, {neg} negatives",
                r[0]
            );
            let auprc: f64 = r[col(&h, "val_auprc")].parse().expect("auprc");
            assert!((0.0..=1.0).contains(&auprc));
        }
    }
    // Per-epoch metrics, and the loss falls on this learnable task.
    let (h, rows) = read_csv(&f.run.join("metrics.csv"));
    assert_eq!(rows.len(), EPOCHS);
    let loss: Vec<f64> = rows
        .iter()
        .map(|r| r[col(&h, "train_loss")].parse().expect("f64"))
        .collect();
    assert!(loss[EPOCHS - 1] < loss[0], "training loss did not fall: {loss:?}");
    // The best checkpoint is the epoch with the highest validation AUROC.
    let auroc: Vec<f64> = rows
        .iter()
        .map(|r| r[col(&h, "val_auroc")].parse().expect("f64"))
        .collect();
    let best = auroc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let summary: yaml_serde::Value =
        yaml_serde::from_str(&std::fs::read_to_string(f.run.join("summary.yaml")).expect("read")).expect("yaml");
    assert_eq!(summary["best_val_auroc"].as_f64(), Some(best));
    let best_epoch = auroc.iter().position(|&a| a == best).expect("best") + 1;
    assert_eq!(summary["best_epoch"].as_u64(), Some(best_epoch as u64));
    let ci = summary["onnx_val_auroc_delong_ci95"].as_sequence().expect("ci");
    assert_eq!(ci.len(), 2);
    for key in [
        "tool.git_commit",
        "training.libtorch_version",
        "training.index_sha256",
        "training.split_sha256",
    ] {
        assert!(
            summary["provenance"][key].as_str().is_some_and(|v| !v.is_empty()),
            "provenance lacks {key}"
        );
    }
    assert!(summary["provenance"]["training.libtorch_version"]
        .as_str()
        .is_some_and(|v| v.starts_with("2.11.0")));
    // Validation is series-disjoint from training, and val_scores covers exactly validation.
    let (h, rows) = read_csv(&f.run.join("split.csv"));
    let side: BTreeMap<String, String> = rows
        .iter()
        .map(|r| (r[col(&h, "seriesuid")].clone(), r[col(&h, "split")].clone()))
        .collect();
    let (vh, vrows) = read_csv(&f.run.join("val_scores.csv"));
    assert!(!vrows.is_empty());
    assert!(vrows.iter().all(|r| side[&r[col(&vh, "seriesuid")]] == "val"));
    let labels: BTreeSet<&str> = vrows.iter().map(|r| r[col(&vh, "label")].as_str()).collect();
    assert_eq!(labels.len(), 2, "validation must hold both classes");
    // Parity recorded and within tolerance.
    let parity: yaml_serde::Value =
        yaml_serde::from_str(&std::fs::read_to_string(f.run.join("parity.yaml")).expect("read")).expect("yaml");
    assert_eq!(parity["passed"].as_bool(), Some(true));
    assert!(parity["max_abs_diff_logit"].as_f64().expect("f64") <= 1e-4);
    assert!(f.train_stdout.contains("best epoch"), "{}", f.train_stdout);
}

#[test]
fn calibrate_then_infer_agree_with_the_run() {
    let f = fixture();
    let out_dir = tempfile::tempdir_in(&f.root).expect("tmp");
    let cal = out_dir.path().join("calibration.yaml");
    let r = run_ok("calibrate", &[s(&f.run), "-o", s(&cal)]);
    assert!(
        r.stdout.contains("youden_j") && r.stdout.contains("max_f1"),
        "{}",
        r.stdout
    );
    let c: yaml_serde::Value = yaml_serde::from_str(&std::fs::read_to_string(&cal).expect("read")).expect("yaml");
    assert_eq!(
        c["model"]["sha256"].as_str(),
        Some(sha256(&f.run.join("model.onnx")).as_str())
    );
    let t = c["temperature"]["temperature"].as_f64().expect("T");
    assert!(t > 0.0 && t.is_finite());
    for k in ["uncalibrated", "temperature", "platt"] {
        for m in ["auroc", "brier", "nll", "ece_15"] {
            assert!(c["metrics"][k][m].as_f64().is_some(), "metrics.{k}.{m} missing");
        }
    }
    let op = c["operating_points"]
        .as_sequence()
        .expect("points")
        .iter()
        .find(|p| p["name"] == "youden_j")
        .expect("youden")
        .clone();
    let thr = op["threshold_logit"].as_f64().expect("thr");

    let scores = out_dir.path().join("scores.csv");
    let r = run_ok(
        "infer",
        &[
            "--model",
            s(&f.run.join("model.onnx")),
            "--calibration",
            s(&cal),
            "--device",
            "cpu",
            s(&f.patches),
            "-o",
            s(&scores),
        ],
    );
    assert!(
        r.stderr.contains("CPUExecutionProvider") && r.stderr.contains(&format!("scored {PATCHES}")),
        "{}",
        r.stderr
    );
    let (h, rows) = read_csv(&scores);
    assert_eq!(
        h,
        [
            "patch_file",
            "logit",
            "probability",
            "calibrated_probability",
            "decision",
            "operating_point",
            "model_sha256",
            "input_sha256"
        ]
    );
    assert_eq!(rows.len(), PATCHES);
    let logit: BTreeMap<&str, f64> = rows
        .iter()
        .map(|r| (r[0].as_str(), r[1].parse().expect("f64")))
        .collect();
    for r in &rows {
        let z: f64 = r[1].parse().expect("f64");
        let p: f64 = r[3].parse().expect("f64");
        assert!((0.0..=1.0).contains(&p));
        assert_eq!(r[4], if z >= thr { "1" } else { "0" }, "decision of {}", r[0]);
    }
    // The scores infer gives are the exported model's validation scores from training.
    let (vh, vrows) = read_csv(&f.run.join("val_scores.csv"));
    for v in &vrows {
        let z: f64 = v[col(&vh, "logit")].parse().expect("f64");
        let got = logit[v[col(&vh, "patch_file")].as_str()];
        assert!((z - got).abs() < 1e-5, "{}: infer {got} vs training {z}", v[0]);
    }
    // Uncalibrated output to stdout.
    let r = run_ok(
        "infer",
        &[
            "--model",
            s(&f.run.join("model.onnx")),
            "--device",
            "cpu",
            "-q",
            s(&f.patches),
            "-o",
            "-",
        ],
    );
    let first = r.stdout.lines().next().expect("header");
    assert_eq!(first, "patch_file,logit,probability,model_sha256,input_sha256");
    assert_eq!(r.stdout.lines().count(), PATCHES + 1);
}

#[test]
fn onnx_file_describes_itself_and_passes_the_checker() {
    let f = fixture();
    let model = f.run.join("model.onnx");
    let python = chain_tests::python();
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import onnx, sys; onnx.checker.check_model(sys.argv[1], full_check=True); m = onnx.load(sys.argv[1]); \
             print(m.opset_import[0].version); print(dict((p.key, p.value) for p in m.metadata_props)['preprocess.cube_size']); \
             print(m.graph.input[0].type.tensor_type.shape.dim[0].dim_param)",
        ])
        .arg(&model)
        .output()
        .expect("venv python (scripts/setup)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].parse::<i64>().expect("opset") >= 17);
    assert_eq!(lines[1], "16");
    assert_eq!(lines[2], "batch", "batch dimension must be dynamic");
}

/// What `scans prepare` writes is what `trainer train` reads: eight scans with a nodule each
/// → a patch folder → a trained, exported model (the split by series holding both classes).
#[test]
fn a_prepared_folder_trains() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let mut ann = String::from("seriesuid,coordX,coordY,coordZ,diameter_mm\n");
    let mut cand = String::from("seriesuid,coordX,coordY,coordZ,class\n");
    for k in 0..8u32 {
        let uid = format!("1.2.3.{k}");
        let p = [2.0 + f64::from(k), 6.0, 0.0];
        let o = scans::metaimage::WriteOptions::default();
        crate::from_scans::scan(&root.join(format!("scans/{uid}.mhd")), crate::from_scans::ID, [-16.0, -14.0, -20.0], &[p], o, k);
        ann += &format!("{uid},{},{},{},6\n", p[0], p[1], p[2]);
        for j in 0..3 {
            cand += &format!("{uid},{},{},{},0\n", -10.0 + 8.0 * f64::from(j), -8.0, 4.0);
        }
    }
    std::fs::write(root.join("annotations.csv"), ann).expect("w");
    std::fs::write(root.join("candidates.csv"), cand).expect("w");
    let out = root.join("patches");
    run_ok(
        "scans",
        &[
            "prepare",
            "--scans",
            s(&root.join("scans")),
            "--annotations",
            s(&root.join("annotations.csv")),
            "--candidates",
            s(&root.join("candidates.csv")),
            "--out",
            s(&out),
            "--size-mm",
            "16",
            "--all-negatives",
            "-q",
        ],
    );
    let run_dir = root.join("run");
    let r = run_ok(
        "trainer",
        &[
            "train", "--data", s(&out), "--out", s(&run_dir), "--cube-size", "16", "--width", "4", "--epochs", "2",
            "--batch-size", "8", "--device", "cpu", "-q",
        ],
    );
    assert!(r.stdout.contains("best epoch"), "{}", r.stdout);
    assert!(run_dir.join("model.onnx").is_file());
}
