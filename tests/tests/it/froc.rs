//! train → infer --format luna16 → froc, through the real binaries, and froc's bad input.
use chain_tests::{run_err, run_ok, s};

use crate::fixture::fixture;

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
    assert_eq!(text.lines().count(), 65);
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
    let y: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(out.join("froc_summary.yaml")).expect("read")).expect("yaml");
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
    assert_eq!(t["scans"].as_u64(), Some(8));
}

#[test]
fn froc_bad_input() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let l16 = f.patches.join("luna16");
    let froc = |results: &std::path::Path| {
        run_err(
            "froc",
            &[
                "--annotations",
                s(&l16.join("annotations.csv")),
                "--seriesuids",
                s(&l16.join("seriesuids.csv")),
                "--results",
                s(results),
                "-o",
                s(&d.path().join("out")),
            ],
        )
    };
    let p = d.path().join("r.csv");
    std::fs::write(&p, "seriesuid,coordX,coordY,probability\nx,1,2,0.5\n").expect("w");
    let r = froc(&p);
    assert!(
        r.stderr.contains("r.csv") && r.stderr.contains("missing column(s) coordZ"),
        "{}",
        r.stderr
    );
    std::fs::write(&p, "seriesuid,coordX,coordY,coordZ,probability\nx,1,two,3,0.5\n").expect("w");
    let r = froc(&p);
    assert!(
        r.stderr.contains("line 2") && r.stderr.contains("coordY is not a number"),
        "{}",
        r.stderr
    );
    std::fs::write(&p, "seriesuid,coordX,coordY,coordZ,probability\nx,1,2,3,NaN\n").expect("w");
    let r = froc(&p);
    assert!(r.stderr.contains("probability is not finite"), "{}", r.stderr);
    std::fs::write(&p, "seriesuid,coordX,coordY,coordZ,probability\n").expect("w");
    let r = froc(&p);
    assert!(r.stderr.contains("no candidates"), "{}", r.stderr);
    assert!(!d.path().join("out").exists(), "no output on bad input");
}
