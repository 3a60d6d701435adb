//! Regression tests of `calibrate`, one per bug (see `regression/mod.rs`).
use crate::fixture::fixture;
use chain_tests::{read_csv, run_err, run_ok, s};

use super::*;

#[test]
fn calibrate_fitted_garbage_on_absurd_logits() {
    let d = tempfile::tempdir().expect("tmp");
    let val = fixture().run.join("val_scores.csv");
    let (h, rows) = read_csv(&val);
    let li = chain_tests::col(&h, "logit");
    let write = |name: &str, z: &str| {
        let p = d.path().join(name);
        let mut w = csv::Writer::from_path(&p).expect("csv");
        w.write_record(&h).expect("w");
        for (i, r) in rows.iter().enumerate() {
            let mut r = r.clone();
            if i == 0 {
                r[li] = z.to_string();
            }
            w.write_record(&r).expect("w");
        }
        w.flush().expect("flush");
        p
    };
    let m = model();
    // Beyond what a float32 model can output: an error naming the line.
    let p = write("huge.csv", "1e308");
    let r = run_err(
        "calibrate",
        &["--scores", s(&p), "--model", s(&m), "-o", s(&d.path().join("a/c.yaml"))],
    );
    assert!(
        r.stderr.contains("line 2") && r.stderr.contains("beyond what a float32 model outputs"),
        "{}",
        r.stderr
    );
    assert!(!d.path().join("a").exists());
    // Within float32 but absurd beside the rest: a named warning, and the fit is the one
    // without the outlier's weight (the temperature stays of the order of the others').
    let p = write("outlier.csv", "1e30");
    let out = d.path().join("b/c.yaml");
    let r = run_ok(
        "calibrate",
        &[
            "--scores",
            s(&p),
            "--model",
            s(&m),
            "-o",
            s(&out),
            "--bootstrap",
            "0",
            "--no-report",
            "--no-bake",
            "--method",
            "temperature",
        ],
    );
    assert!(r.stdout.contains("robust spreads from the median"), "{}", r.stdout);
    let cal: yaml_serde::Value = yaml_serde::from_str(&std::fs::read_to_string(&out).expect("read")).expect("yaml");
    let t = cal["temperature"]["temperature"].as_f64().expect("T");
    assert!(t.is_finite() && t < 1e6, "temperature {t}");
}

/// `calibrate compare` moved to `froc compare`: an old script's command says so instead of
/// reading `compare` as a run folder (or failing on the comparison's flags).
#[test]
fn the_old_compare_command_read_compare_as_a_run_folder() {
    for args in [&["compare"][..], &["compare", "a.csv", "b.csv", "--name", "A"][..]] {
        let r = run_err("calibrate", args);
        assert!(r.stderr.contains("is now `froc compare`"), "{}", r.stderr);
    }
}
