//! Tabular (clinical) features: `model.features` from the index or a CSV joined on
//! `seriesuid`, standardised with training statistics carried by the model, a second ONNX
//! input; scored by `infer --index` (a bad value is that row's error) and `calibrate
//! --patches`; and on validation series the model with a feature that carries signal beats
//! the same model without it, by a paired test with intervals.
use std::path::{Path, PathBuf};

use chain_tests::{col, read_csv, run_err, run_ok, s};

/// A synthetic set with `suv_max` in the index (signal) and `clinical.csv` (pack_years, no
/// signal): 60 series of 10 patches.
fn set(dir: &Path) -> PathBuf {
    let out = dir.join("patches");
    run_ok(
        "trainer",
        &[
            "synth",
            "--out",
            s(&out),
            "--series",
            "60",
            "--patches-per-series",
            "10",
            "--cube-size",
            "16",
            "--seed",
            "4",
            "--features",
        ],
    );
    out
}

fn train(dir: &Path, data: &Path, name: &str, model: &str) -> PathBuf {
    let run = dir.join(name);
    let cfg = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &cfg,
        format!(
            "data: {}\nout: {}\nmodel: {model}\npreprocess: {{ cube_size: 16 }}\n\
             train: {{ epochs: 10, batch_size: 16, lr: 0.01, device: cpu, seed: 1 }}\n",
            s(data),
            s(&run)
        ),
    )
    .expect("config");
    run_ok("trainer", &["train", "--config", s(&cfg), "-q"]);
    run
}

fn metadata(p: &Path) -> std::collections::BTreeMap<String, String> {
    models::onnx::metadata(&models::onnx::read_model(p).expect("model"))
}

#[test]
fn a_feature_with_signal_beats_the_image_alone_and_scores_everywhere() {
    let d = tempfile::tempdir().expect("tmp");
    let data = set(d.path());
    let image = train(d.path(), &data, "image", "{ width: 2 }");
    let both = train(d.path(), &data, "both", "{ width: 2, features: [suv_max] }");
    // Same validation series (same split seed), paired test of the AUROC difference.
    let out = d.path().join("cmp");
    let r = run_ok(
        "froc",
        &[
            "compare",
            s(&image.join("val_scores.csv")),
            s(&both.join("val_scores.csv")),
            "--name",
            "image",
            "--name",
            "image+suv_max",
            "-o",
            s(&out),
        ],
    );
    eprintln!("{}", r.stdout);
    let y: yaml_serde::Value =
        yaml_serde::from_str(&std::fs::read_to_string(out.join("comparison.yaml")).expect("yaml")).expect("parse");
    let pair = &y["pairs"][0];
    let diff = pair["auroc_diff"].as_f64().expect("diff");
    let lo = pair["delong_ci95"][0].as_f64().expect("lo");
    let p = pair["delong_p"].as_f64().expect("p");
    assert!(diff > 0.05 && lo > 0.0 && p < 0.01, "{}", r.stdout);
    // The model carries its statistics and takes the features as a second input.
    let md = metadata(&both.join("model.onnx"));
    assert_eq!(md["features.columns"], r#"["suv_max"]"#);
    assert!(md.contains_key("features.mean") && md.contains_key("features.std"));
    let g = models::onnx::read_model(&both.join("model.onnx"))
        .expect("model")
        .graph
        .expect("graph");
    let inputs: Vec<String> = g.input.iter().filter_map(|i| i.name.clone()).collect();
    assert_eq!(inputs, ["patch", "features"]);
    // infer --index scores it, as the run's validation did.
    let scores = d.path().join("scores.csv");
    run_ok(
        "infer",
        &[
            "--model",
            s(&both.join("model.onnx")),
            "--index",
            s(&data),
            "-o",
            s(&scores),
            "-q",
        ],
    );
    let (h, rows) = read_csv(&scores);
    assert_eq!(rows.len(), 600);
    let (vh, vrows) = read_csv(&both.join("val_scores.csv"));
    let logit_of: std::collections::HashMap<&str, f64> = rows
        .iter()
        .map(|r| {
            (
                r[col(&h, "patch_file")].as_str(),
                r[col(&h, "logit")].parse().expect("z"),
            )
        })
        .collect();
    for r in &vrows {
        let want: f64 = r[col(&vh, "logit")].parse().expect("z");
        let got = logit_of[r[col(&vh, "patch_file")].as_str()];
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }
    // A missing or non-finite value: that row's error; the others are scored.
    let text = std::fs::read_to_string(data.join("patch_index.csv")).expect("index");
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    for (i, v) in [(2, ""), (4, "inf")] {
        let mut f: Vec<&str> = lines[i].split(',').collect();
        *f.last_mut().expect("suv") = v;
        lines[i] = f.join(",");
    }
    let bad = data.join("bad_index.csv");
    std::fs::write(&bad, lines.join("\n") + "\n").expect("bad");
    let out = d.path().join("bad_scores.csv");
    let r = run_err(
        "infer",
        &[
            "--model",
            s(&both.join("model.onnx")),
            "--index",
            s(&bad),
            "-o",
            s(&out),
        ],
    );
    assert!(
        r.stderr.contains("line 3: suv_max is missing") && r.stderr.contains("line 5: suv_max is not finite"),
        "{}",
        r.stderr
    );
    assert_eq!(read_csv(&out).1.len(), 598);
    // Without the index's rows there are no features: refused, naming them.
    let r = run_err(
        "infer",
        &[
            s(&data),
            "--model",
            s(&both.join("model.onnx")),
            "-o",
            s(&d.path().join("x.csv")),
        ],
    );
    assert!(
        r.stderr.contains("takes tabular features (suv_max)") && r.stderr.contains("--index"),
        "{}",
        r.stderr
    );
    // calibrate --patches scores through ONNX Runtime with them.
    let cal = d.path().join("cal.yaml");
    run_ok(
        "calibrate",
        &[
            "--patches",
            s(&data),
            "--model",
            s(&both.join("model.onnx")),
            "-o",
            s(&cal),
            "--bootstrap",
            "50",
        ],
    );
    assert!(cal.is_file());
    // An export from the run's weights and config is the same model (statistics from the file).
    let again = d.path().join("again.onnx");
    run_ok(
        "trainer",
        &[
            "export",
            "--weights",
            s(&both.join("best.safetensors")),
            "--config",
            s(&both.join("config.yaml")),
            "-o",
            s(&again),
        ],
    );
    let md2 = metadata(&again);
    assert_eq!(
        (&md2["features.mean"], &md2["features.std"]),
        (&md["features.mean"], &md["features.std"])
    );
    // An ensemble of feature models takes the features too (each member standardises them
    // itself); members with other columns are refused, naming the member.
    let ens = d.path().join("ens.onnx");
    run_ok(
        "trainer",
        &["ensemble", s(&both.join("model.onnx")), s(&again), "-o", s(&ens)],
    );
    assert_eq!(metadata(&ens)["features.columns"], r#"["suv_max"]"#);
    let es = d.path().join("ens.csv");
    run_ok("infer", &["--model", s(&ens), "--index", s(&data), "-o", s(&es), "-q"]);
    let (eh, erows) = read_csv(&es);
    for r in &erows {
        let got: f64 = r[col(&eh, "logit")].parse().expect("z");
        let want = logit_of[r[col(&eh, "patch_file")].as_str()];
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }
    let r = run_err(
        "trainer",
        &[
            "ensemble",
            s(&both.join("model.onnx")),
            s(&image.join("model.onnx")),
            "-o",
            s(&d.path().join("e.onnx")),
        ],
    );
    assert!(
        r.stderr.contains("image/model.onnx") && r.stderr.contains("tabular features (none) differ"),
        "{}",
        r.stderr
    );
}

#[test]
fn joined_features_and_refused_columns() {
    let d = tempfile::tempdir().expect("tmp");
    let data = set(d.path());
    let clinical = data.join("clinical.csv");
    let run = train(
        d.path(),
        &data,
        "joined",
        &format!(
            "{{ width: 2, features: [suv_max, pack_years], features_csv: {} }}",
            s(&clinical)
        ),
    );
    assert_eq!(
        metadata(&run.join("model.onnx"))["features.columns"],
        r#"["suv_max","pack_years"]"#
    );
    let out = d.path().join("j.csv");
    run_ok(
        "infer",
        &[
            "--model",
            s(&run.join("model.onnx")),
            "--index",
            s(&data),
            "--features-csv",
            s(&clinical),
            "-o",
            s(&out),
            "-q",
        ],
    );
    assert_eq!(read_csv(&out).1.len(), 600);
    let cal = d.path().join("cal.yaml");
    run_ok(
        "calibrate",
        &[
            "--patches",
            s(&data),
            "--features-csv",
            s(&clinical),
            "--model",
            s(&run.join("model.onnx")),
            "-o",
            s(&cal),
            "--bootstrap",
            "20",
        ],
    );
    // Without the CSV, pack_years is nowhere: refused before scoring, naming the column.
    let r = run_err(
        "infer",
        &[
            "--model",
            s(&run.join("model.onnx")),
            "--index",
            s(&data),
            "-o",
            s(&out),
        ],
    );
    assert!(r.stderr.contains("pack_years in neither the index"), "{}", r.stderr);
    // Columns that are identifiers, the label or give it away; a column in neither file.
    // A training index with a value missing: every bad row named, before the run folder.
    let text = std::fs::read_to_string(data.join("patch_index.csv")).expect("index");
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let mut f: Vec<&str> = lines[7].split(',').collect();
    *f.last_mut().expect("suv") = "n/a";
    lines[7] = f.join(",");
    std::fs::write(data.join("holes.csv"), lines.join("\n") + "\n").expect("holes");
    for (index, features, want) in [
        ("patch_index.csv", "[label]", "`label` cannot be a feature"),
        ("patch_index.csv", "[diam_mm]", "gives the label away"),
        ("patch_index.csv", "[suv_max, suv_max]", "listed twice"),
        ("patch_index.csv", "[bmi]", "bmi in neither the index"),
        (
            "holes.csv",
            "[suv_max]",
            "1 of 600 patch(es) lack a usable value of a feature (suv_max):\n  ",
        ),
    ] {
        let cfg = d.path().join("bad.yaml");
        std::fs::write(
            &cfg,
            format!(
                "data: {}\nout: {}\nmodel: {{ width: 2, features: {features} }}\npreprocess: {{ cube_size: 16 }}\n\
                 train: {{ epochs: 1, device: cpu }}\n",
                s(&data.join(index)),
                s(&d.path().join("never"))
            ),
        )
        .expect("cfg");
        let r = run_err("trainer", &["train", "--config", s(&cfg)]);
        assert!(r.stderr.contains(want), "{features}: {}", r.stderr);
        assert!(!d.path().join("never").exists(), "{features}: the run folder was made");
    }
}
