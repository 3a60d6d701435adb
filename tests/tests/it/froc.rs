//! train → infer --format luna16 → froc, and `froc compare` on the runs' LUNA16 results,
//! through the real binaries (froc's own tests: `evaluation/tests/`).
use chain_tests::{run_err, run_ok, s};

use crate::fixture::{fixture, PATCHES, SERIES};

#[test]
fn infer_luna16_output_feeds_froc() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let results = d.path().join("results.csv");
    run_ok(
        "infer",
        &[
            "--model",
            s(&f.run.join("model.onnx")),
            "--index",
            s(&f.patches),
            "--format",
            "luna16",
            "-o",
            s(&results),
            "-q",
        ],
    );
    let text = std::fs::read_to_string(&results).expect("results");
    assert_eq!(text.lines().next(), Some("seriesuid,coordX,coordY,coordZ,probability"));
    assert_eq!(text.lines().count(), PATCHES + 1);
    let l16 = f.patches.join("luna16");
    let out = d.path().join("froc");
    let r = run_ok(
        "froc",
        &[
            "--annotations",
            s(&l16.join("annotations.csv")),
            "--excluded",
            s(&l16.join("annotations_excluded.csv")),
            "--seriesuids",
            s(&l16.join("seriesuids.csv")),
            "--results",
            s(&results),
            "-o",
            s(&out),
            "--bootstrap",
            "200",
        ],
    );
    assert!(r.stdout.contains("CPM"), "{}", r.stdout);
    for name in [
        "froc_summary.yaml",
        "froc_curve.csv",
        "froc_bootstrap.csv",
        "nodules_without_candidate.csv",
        "froc.png",
    ] {
        assert!(out.join(name).is_file(), "froc output lacks {name}");
    }
    let y: yaml_serde::Value =
        yaml_serde::from_str(&std::fs::read_to_string(out.join("froc_summary.yaml")).expect("read")).expect("yaml");
    let cpm = y["cpm"].as_f64().expect("cpm");
    assert!((0.0..=1.0).contains(&cpm));
    assert_eq!(y["rates"].as_sequence().expect("rates").len(), 7);
    let t = &y["totals"];
    let nodules = t["nodules"].as_u64().expect("nodules");
    assert_eq!(
        t["true_positives"].as_u64().expect("tp") + t["false_negatives"].as_u64().expect("fn"),
        nodules
    );
    // Every synthetic nodule has a candidate at its centre, so none is missed.
    assert_eq!(t["false_negatives"].as_u64(), Some(0));
    assert_eq!(t["scans"].as_u64(), Some(SERIES as u64));
}

/// `froc compare` with LUNA16's files: each model's CPM is the one `froc` computes on
/// that model's submission file (froc itself agrees with the official script's rules), the
/// CPM difference is paired over scans, a model against itself differs by exactly 0, and
/// scores without world positions or with other positions are refused.
#[test]
fn compare_gives_the_paired_cpm_difference() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let a = d.path().join("a.csv");
    run_ok(
        "infer",
        &[
            "--model",
            s(&f.run.join("model.onnx")),
            "--index",
            s(&f.patches),
            "-o",
            s(&a),
            "-q",
        ],
    );
    // Model B: A's logits with every other positive pushed down (a worse model).
    let (h, rows) = chain_tests::read_csv(&a);
    let (lc, yc) = (chain_tests::col(&h, "logit"), chain_tests::col(&h, "label"));
    let mut text = h.join(",") + "\n";
    let mut flip = false;
    for r in &rows {
        let mut r = r.clone();
        if r[yc] == "1" {
            flip = !flip;
            if flip {
                r[lc] = format!("{}", r[lc].parse::<f64>().expect("logit") - 8.0);
            }
        }
        text += &(r.join(",") + "\n");
    }
    let b = d.path().join("b.csv");
    std::fs::write(&b, text).expect("b");
    let l16 = f.patches.join("luna16");
    let files = ["annotations.csv", "annotations_excluded.csv", "seriesuids.csv"].map(|n| l16.join(n));
    let truth = [
        "--annotations",
        s(&files[0]),
        "--excluded",
        s(&files[1]),
        "--seriesuids",
        s(&files[2]),
    ];
    let out = d.path().join("cmp");
    let mut args = vec![
        "compare",
        s(&a),
        s(&b),
        s(&a),
        "--name",
        "A",
        "--name",
        "B",
        "--name",
        "A again",
    ];
    args.extend(truth);
    args.extend(["--bootstrap", "300", "-o", s(&out)]);
    let r = run_ok("froc", &args);
    assert!(
        r.stdout.contains("LUNA16 CPM on") && r.stdout.contains("ΔCPM"),
        "{}",
        r.stdout
    );
    let y: yaml_serde::Value =
        yaml_serde::from_str(&std::fs::read_to_string(out.join("comparison.yaml")).expect("yaml")).expect("parse");
    let cpm = &y["cpm"];
    let model_cpm = |i: usize| cpm["models"][i]["cpm"].as_f64().expect("cpm");
    // froc on each model's submission file (written from the scores: probability = sigmoid).
    let froc_cpm = |scores: &std::path::Path, name: &str| {
        let (h, rows) = chain_tests::read_csv(scores);
        let c = |n: &str| chain_tests::col(&h, n);
        let mut sub = String::from("seriesuid,coordX,coordY,coordZ,probability\n");
        for r in &rows {
            let z: f64 = r[c("logit")].parse().expect("logit");
            sub += &format!(
                "{},{},{},{},{}\n",
                r[c("seriesuid")],
                r[c("center_x")],
                r[c("center_y")],
                r[c("center_z")],
                1.0 / (1.0 + (-z).exp())
            );
        }
        let p = d.path().join(format!("{name}_luna16.csv"));
        std::fs::write(&p, sub).expect("sub");
        let o = d.path().join(format!("froc_{name}"));
        let mut args = vec!["--results", s(&p), "-o", s(&o), "--bootstrap", "0"];
        args.extend(truth);
        run_ok("froc", &args);
        let y: yaml_serde::Value =
            yaml_serde::from_str(&std::fs::read_to_string(o.join("froc_summary.yaml")).expect("read")).expect("yaml");
        y["cpm"].as_f64().expect("cpm")
    };
    let (fa, fb) = (froc_cpm(&a, "a"), froc_cpm(&b, "b"));
    assert!(
        (model_cpm(0) - fa).abs() < 1e-12 && (model_cpm(1) - fb).abs() < 1e-12,
        "{cpm:?} vs {fa} {fb}"
    );
    assert!(fb < fa, "B is worse: {fa} {fb}");
    let diff = |i: usize, k: &str| cpm["diffs"][i][k].clone();
    assert!((diff(0, "diff").as_f64().expect("d") - (fb - fa)).abs() < 1e-12);
    let ci: Vec<f64> = diff(0, "ci")
        .as_sequence()
        .expect("ci")
        .iter()
        .map(|v| v.as_f64().expect("f"))
        .collect();
    assert!(ci[0] <= ci[1] && ci[1] <= 1.0 && ci[0] >= -1.0, "{ci:?}");
    assert_eq!(diff(1, "diff").as_f64(), Some(0.0));
    assert_eq!(diff(1, "p").as_f64(), Some(1.0));
    // Scores without world positions: refused, naming the file and what is missing.
    let bare = d.path().join("bare.csv");
    let (h, rows) = chain_tests::read_csv(&a);
    let keep: Vec<usize> = ["patch_file", "seriesuid", "label", "logit"]
        .iter()
        .map(|n| chain_tests::col(&h, n))
        .collect();
    let mut text = "patch_file,seriesuid,label,logit\n".to_string();
    for r in &rows {
        text += &(keep.iter().map(|&i| r[i].as_str()).collect::<Vec<_>>().join(",") + "\n");
    }
    std::fs::write(&bare, text).expect("bare");
    let mut args = vec!["compare", s(&bare), s(&a)];
    args.extend(truth);
    let r = run_err("froc", &args);
    assert!(
        r.stderr.contains("bare.csv") && r.stderr.contains("center_x"),
        "{}",
        r.stderr
    );
    // The same patch files at other positions: not the same candidates.
    let (h, rows) = chain_tests::read_csv(&a);
    let xc = chain_tests::col(&h, "center_x");
    let mut text = h.join(",") + "\n";
    for r in &rows {
        let mut r = r.clone();
        r[xc] = format!("{}", r[xc].parse::<f64>().expect("x") + 1.0);
        text += &(r.join(",") + "\n");
    }
    let moved = d.path().join("moved.csv");
    std::fs::write(&moved, text).expect("moved");
    let mut args = vec!["compare", s(&a), s(&moved)];
    args.extend(truth);
    let r = run_err("froc", &args);
    assert!(
        r.stderr.contains("moved.csv") && r.stderr.contains("not the same candidates"),
        "{}",
        r.stderr
    );
}
