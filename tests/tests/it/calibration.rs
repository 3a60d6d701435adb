//! calibrate against scikit-learn, the calibrated ONNX file against infer, site
//! recalibration against the scores-CSV path, and calibration binding.
use std::path::Path;

use chain_tests::{python, read_csv, run_err, run_ok, s};

use crate::fixture::fixture;

fn yaml(p: &Path) -> yaml_serde::Value {
    yaml_serde::from_str(&std::fs::read_to_string(p).expect("read")).expect("yaml")
}

/// Runs the calibrated ONNX file in Python onnxruntime on the fixture's patches
/// (preprocessed by the model's own window) and returns (patch, probability, decision).
fn run_calibrated(model: &Path, patches: &Path) -> Vec<(String, f64, i64)> {
    let code = r#"
import glob, os, sys
import numpy as np, onnx, onnxruntime as ort
onnx.checker.check_model(sys.argv[1], full_check=True)
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
assert [o.name for o in s.get_outputs()] == ["logit", "probability", "decision"], s.get_outputs()
for f in sorted(glob.glob(os.path.join(sys.argv[2], "*.npy"))):
    x = np.clip(np.load(f).astype(np.float32), -1000, 400)
    x = ((x + 1000) / 1400).astype(np.float32)[None, None]
    _, p, d = s.run(None, {"patch": x})
    print(os.path.basename(f), repr(float(p[0, 0])), int(d[0, 0]))
"#;
    let o = std::process::Command::new(python())
        .args(["-c", code])
        .arg(model)
        .arg(patches)
        .output()
        .expect("python");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let v: Vec<&str> = l.split(' ').collect();
            (v[0].to_string(), v[1].parse().expect("p"), v[2].parse().expect("d"))
        })
        .collect()
}

#[test]
fn calibrated_onnx_equals_infer_with_the_calibration() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    for method in ["temperature", "platt", "isotonic"] {
        let out = d.path().join(method).join("calibration.yaml");
        run_ok(
            "calibrate",
            &[
                s(&f.run),
                "-o",
                s(&out),
                "--method",
                method,
                "--bootstrap",
                "50",
                "--no-report",
            ],
        );
        let baked = out.parent().expect("dir").join("model.calibrated.onnx");
        let scores = d.path().join(format!("{method}.csv"));
        run_ok(
            "infer",
            &[
                "--model",
                s(&f.run.join("model.onnx")),
                "-c",
                s(&out),
                s(&f.patches),
                "-o",
                s(&scores),
                "-q",
                "--device",
                "cpu",
            ],
        );
        let (h, rows) = read_csv(&scores);
        let (pi, di) = (
            chain_tests::col(&h, "calibrated_probability"),
            chain_tests::col(&h, "decision"),
        );
        let onnx = run_calibrated(&baked, &f.patches);
        assert_eq!(onnx.len(), rows.len());
        for ((name, p, dec), r) in onnx.iter().zip(&rows) {
            assert_eq!(name, &r[0]);
            let want: f64 = r[pi].parse().expect("p");
            assert!((p - want).abs() <= 1e-5, "{method} {name}: ONNX {p}, infer {want}");
            assert_eq!(dec.to_string(), r[di], "{method} {name}: decision");
        }
        // infer scores the calibrated file by itself: the calibration it carries gives the
        // same calibrated columns as the file does for model.onnx. Its own calibration
        // file is accepted for it too (its logit is model.onnx's), and gives them again.
        for extra in [vec![], vec!["-c", s(&out)]] {
            let again = d.path().join(format!("{method}-baked-{}.csv", extra.len()));
            let mut args = vec![
                "--model",
                s(&baked),
                s(&f.patches),
                "-o",
                s(&again),
                "-q",
                "--device",
                "cpu",
            ];
            args.extend(extra);
            run_ok("infer", &args);
            let (h2, rows2) = read_csv(&again);
            assert_eq!(rows2.len(), rows.len());
            for key in [
                "logit",
                "probability",
                "calibrated_probability",
                "decision",
                "operating_point",
            ] {
                let (a, b) = (chain_tests::col(&h, key), chain_tests::col(&h2, key));
                for (r, r2) in rows.iter().zip(&rows2) {
                    assert_eq!(r[a], r2[b], "{method}: {key} of {}", r[0]);
                }
            }
        }
    }
}

#[test]
fn site_recalibration_from_patches_matches_the_scores_path() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let model = f.run.join("model.onnx");
    // Path 1: infer writes labelled scores; calibrate reads them.
    let scores = d.path().join("scores.csv");
    run_ok(
        "infer",
        &[
            "--model",
            s(&model),
            "--index",
            s(&f.patches),
            "-o",
            s(&scores),
            "-q",
            "--device",
            "cpu",
        ],
    );
    let a = d.path().join("a/calibration.yaml");
    run_ok(
        "calibrate",
        &[
            "--scores",
            s(&scores),
            "--model",
            s(&model),
            "-o",
            s(&a),
            "--method",
            "platt",
            "--no-bake",
            "--no-report",
        ],
    );
    // Path 2: calibrate scores the labelled patch folder itself through ONNX Runtime.
    let b = d.path().join("b/calibration.yaml");
    run_ok(
        "calibrate",
        &[
            "--patches",
            s(&f.patches),
            "--model",
            s(&model),
            "-o",
            s(&b),
            "--method",
            "platt",
            "--no-bake",
            "--no-report",
        ],
    );
    let (ya, yb) = (yaml(&a), yaml(&b));
    for key in ["a", "b"] {
        let (x, y) = (
            ya["platt"][key].as_f64().expect("a"),
            yb["platt"][key].as_f64().expect("b"),
        );
        assert!((x - y).abs() < 1e-6, "platt.{key}: scores path {x}, patches path {y}");
    }
    assert_eq!(yb["model"]["sha256"], ya["model"]["sha256"]);
    // An index without labels cannot calibrate.
    let idx = d.path().join("unlabelled.csv");
    let text = std::fs::read_to_string(f.patches.join("patch_index.csv")).expect("index");
    // The same rows without their last column (label).
    std::fs::write(
        &idx,
        text.lines()
            .map(|l| l.rsplit_once(',').map_or(l, |x| x.0).to_string() + "\n")
            .collect::<String>(),
    )
    .expect("w");
    let r = run_err(
        "calibrate",
        &[
            "--patches",
            s(&idx),
            "--model",
            s(&model),
            "-o",
            s(&d.path().join("c/calibration.yaml")),
        ],
    );
    assert!(r.stderr.contains("no `label` column"), "{}", r.stderr);
}

#[test]
fn force_calibration_applies_with_a_warning() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let cal = d.path().join("calibration.yaml");
    run_ok(
        "calibrate",
        &[s(&f.run), "-o", s(&cal), "--bootstrap", "0", "--no-report", "--no-bake"],
    );
    let mut m = models::onnx::read_model(&f.run.join("model.onnx")).expect("model");
    m.doc_string = Some("another model".into());
    let other = d.path().join("other.onnx");
    std::fs::write(&other, models::onnx::to_bytes(&m)).expect("w");
    run_err(
        "infer",
        &[
            "--model",
            s(&other),
            "-c",
            s(&cal),
            s(&f.patches),
            "-o",
            s(&d.path().join("x.csv")),
        ],
    );
    let r = run_ok(
        "infer",
        &[
            "--model",
            s(&other),
            "-c",
            s(&cal),
            "--force-calibration",
            s(&f.patches),
            "-o",
            s(&d.path().join("y.csv")),
        ],
    );
    assert!(
        r.stderr.contains("warning") && r.stderr.contains("another model"),
        "{}",
        r.stderr
    );
}

/// The closing line names what was written, no more: `--no-report --no-bake` writes
/// `calibration.yaml` alone, and the line says so (it once claimed the report and the model).
#[test]
fn the_closing_line_names_only_what_was_written() {
    let d = tempfile::tempdir().expect("tmp");
    let f = crate::fixture::fixture();
    let cal = d.path().join("c/calibration.yaml");
    let r = chain_tests::run_ok(
        "calibrate",
        &[chain_tests::s(&f.run), "-o", chain_tests::s(&cal), "--bootstrap", "0", "--method", "platt", "--no-report", "--no-bake"],
    );
    assert!(r.stdout.lines().any(|l| l == format!("wrote {}", cal.display())), "{}", r.stdout);
    let names: Vec<String> = std::fs::read_dir(d.path().join("c"))
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["calibration.yaml"]);
    let r = chain_tests::run_ok(
        "calibrate",
        &[chain_tests::s(&f.run), "-o", chain_tests::s(&cal), "--bootstrap", "0", "--method", "platt", "--no-bake"],
    );
    assert!(
        r.stdout.contains("(and calibration_report.md, calibration_plots/ beside it)") && !r.stdout.contains("model.calibrated.onnx"),
        "{}",
        r.stdout
    );
}
