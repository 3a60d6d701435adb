//! `calibrate`'s metrics and fits against scikit-learn (`tests/reference/
//! calibration_reference.py`), on 3000 scores from 60 series with ties. Run on the binary
//! Cargo builds for these tests.
use std::path::{Path, PathBuf};

use chain_tests::{python, run_ok, s, workspace};

const CALIBRATE: &str = env!("CARGO_BIN_EXE_calibrate");

fn yaml(p: &Path) -> yaml_serde::Value {
    yaml_serde::from_str(&std::fs::read_to_string(p).expect("read")).expect("yaml")
}

/// 3000 scores from 60 series; labels from sigmoid(0.6 z − 0.8); logits rounded so that
/// ties occur.
fn scores_csv(dir: &Path) -> PathBuf {
    let mut st: u64 = 7;
    let mut next = || {
        st = st.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (st >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut text = String::from("patch_file,seriesuid,logit,label\n");
    for i in 0..3000 {
        let z = ((next() - 0.5) * 12.0 * 100.0).round() / 100.0;
        let p = 1.0 / (1.0 + (-(0.6 * z - 0.8f64)).exp());
        text += &format!("p{i}.npy,S{},{z},{}\n", i / 50, u8::from(next() < p));
    }
    let p = dir.join("scores.csv");
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn metrics_and_fits_agree_with_scikit_learn() {
    let d = tempfile::tempdir().expect("tmp");
    // The model the calibration is bound to (its scores do not matter here).
    let model = d.path().join("model.onnx");
    chain_tests::fixtures::untrained_model(&model, 16, 4, 1);
    let scores = scores_csv(d.path());
    let out = d.path().join("cal/calibration.yaml");
    run_ok(
        CALIBRATE,
        &[
            "--scores",
            s(&scores),
            "--model",
            s(&model),
            "-o",
            s(&out),
            "--bootstrap",
            "0",
            "--no-bake",
        ],
    );
    let c = yaml(&out);
    let t = c["temperature"]["temperature"].as_f64().expect("T");
    let o = std::process::Command::new(python())
        .arg(workspace().join("tests/reference/calibration_reference.py"))
        .arg(&scores)
        .arg(t.to_string())
        .output()
        .expect("python");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let m = &c["metrics"]["uncalibrated"];
    let close = |ours: f64, key: &str, tol: f64| {
        let theirs = r[key].as_f64().expect(key);
        assert!(
            (ours - theirs).abs() <= tol,
            "{key}: ours {ours}, scikit-learn {theirs}"
        );
    };
    close(m["auroc"].as_f64().expect("auroc"), "auroc", 1e-6);
    close(m["auprc"].as_f64().expect("auprc"), "average_precision", 1e-6);
    close(m["brier"].as_f64().expect("brier"), "brier", 1e-6);
    close(m["nll"].as_f64().expect("nll"), "log_loss", 1e-6);
    close(c["platt"]["a"].as_f64().expect("a"), "platt_a", 1e-6);
    close(c["platt"]["b"].as_f64().expect("b"), "platt_b", 1e-6);
    // Temperature: exact Newton is no worse than a fine grid search.
    let (ours, grid) = (
        r["temperature_nll_ours"].as_f64().expect("n"),
        r["temperature_nll_grid_best"].as_f64().expect("g"),
    );
    assert!(ours <= grid + 1e-12, "temperature NLL {ours} worse than grid {grid}");
    // Isotonic: our knots, interpolated, predict what scikit-learn predicts.
    let seq = |v: &yaml_serde::Value| -> Vec<f64> {
        v.as_sequence()
            .expect("seq")
            .iter()
            .map(|x| x.as_f64().expect("f"))
            .collect()
    };
    let iso = models::calibration::Isotonic {
        x: seq(&c["isotonic"]["x"]),
        y: seq(&c["isotonic"]["y"]),
    };
    let probes: Vec<f64> = r["isotonic_probes"]
        .as_array()
        .expect("p")
        .iter()
        .map(|v| v.as_f64().expect("f"))
        .collect();
    let pred: Vec<f64> = r["isotonic_pred"]
        .as_array()
        .expect("p")
        .iter()
        .map(|v| v.as_f64().expect("f"))
        .collect();
    for (x, want) in probes.iter().zip(&pred) {
        let got = iso.apply(*x);
        assert!(
            (got - want).abs() <= 1e-9,
            "isotonic at {x}: ours {got}, scikit-learn {want}"
        );
    }
    // All methods reported, with intervals and the four operating points.
    for k in ["uncalibrated", "temperature", "platt", "isotonic"] {
        for key in [
            "auroc",
            "auprc",
            "brier",
            "nll",
            "ece_15",
            "adaptive_ece_15",
            "mce_15",
            "calibration_slope",
            "calibration_intercept",
        ] {
            assert!(c["metrics"][k][key].as_f64().is_some(), "metrics.{k}.{key}");
        }
        assert_eq!(
            c["metrics"][k]["auroc_delong_ci95"].as_sequence().map(Vec::len),
            Some(2)
        );
    }
    let names: Vec<&str> = c["operating_points"]
        .as_sequence()
        .expect("ops")
        .iter()
        .map(|p| p["name"].as_str().expect("n"))
        .collect();
    assert_eq!(names, ["youden_j", "max_f1", "sensitivity_0.95", "specificity_0.95"]);
    assert_eq!(c["method_selection"]["cv_nll"].as_mapping().map(|m| m.len()), Some(3));
    let dir = out.parent().expect("dir");
    for p in [
        "calibration_report.md",
        "calibration_plots/reliability.png",
        "calibration_plots/roc.png",
        "calibration_plots/precision_recall.png",
        "calibration_plots/decision_curve.png",
    ] {
        assert!(dir.join(p).is_file(), "missing {p}");
    }
}
