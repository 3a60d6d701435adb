//! `froc compare` against an independent computation (scikit-learn's AUROC, average
//! precision and ROC curve; a paired DeLong written from the papers with scipy's midranks;
//! scipy's χ² and exact binomial for McNemar), and its refusals.
use std::path::{Path, PathBuf};

use chain_tests::{run_err, run_ok, s, workspace};

/// The binary Cargo built for this package's tests.
const FROC: &str = env!("CARGO_BIN_EXE_froc");

/// Three models' scores of the same 1,500 patches from 50 series (rows in another order in
/// each file): B sees the signal better than A; C is A rounded (ties).
fn scores(dir: &Path) -> [PathBuf; 3] {
    let mut st: u64 = 11;
    let mut next = || {
        st = st.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (st >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut rows = Vec::new();
    for i in 0..1500 {
        let series = i / 30;
        let y = u8::from(next() < 0.3);
        // A series effect shared by both models, and each model's own noise.
        let base = f64::from(y) * 1.2 + (series % 7) as f64 * 0.1;
        let a = base + (next() - 0.5) * 4.0;
        let b = base + (next() - 0.5) * 2.5;
        rows.push((format!("p{i:04}.npy"), format!("S{series:02}"), y, a, b));
    }
    let write = |name: &str, order: &[usize], logit: &dyn Fn(usize) -> f64| {
        let mut text = String::from("patch_file,seriesuid,label,logit\n");
        for &i in order {
            let r = &rows[i];
            text += &format!("{},{},{},{}\n", r.0, r.1, r.2, logit(i));
        }
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let forward: Vec<usize> = (0..rows.len()).collect();
    let backward: Vec<usize> = (0..rows.len()).rev().collect();
    [
        write("a.csv", &forward, &|i| rows[i].3),
        write("b.csv", &backward, &|i| rows[i].4),
        write("c.csv", &forward, &|i| (rows[i].3 * 2.0).round() / 2.0),
    ]
}

fn yaml(p: &Path) -> yaml_serde::Value {
    yaml_serde::from_str(&std::fs::read_to_string(p).expect("read")).expect("yaml")
}

#[test]
fn compare_agrees_with_an_independent_computation() {
    let d = tempfile::tempdir().expect("tmp");
    let [a, b, c] = scores(d.path());
    let out = d.path().join("cmp");
    let r = run_ok(
        FROC,
        &[
            "compare",
            s(&a),
            s(&b),
            s(&c),
            "--specificity",
            "0.9",
            "--bootstrap",
            "300",
            "-o",
            s(&out),
        ],
    );
    assert!(r.stdout.contains("| b − a |"), "{}", r.stdout);
    let ours = yaml(&out.join("comparison.yaml"));
    for f in ["comparison.md", "roc.png"] {
        assert!(out.join(f).exists(), "{f}");
    }
    let o = std::process::Command::new(chain_tests::python())
        .arg(workspace().join("tests/reference/compare_reference.py"))
        .args(["0.9", s(&a), s(&b), s(&c)])
        .output()
        .expect("python");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let theirs: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let close = |x: f64, y: f64, what: &str| {
        assert!(
            (x - y).abs() <= 1e-9 * y.abs().max(1.0),
            "{what}: ours {x}, reference {y}"
        )
    };
    let f = |v: &yaml_serde::Value| v.as_f64().expect("f64");
    let g = |v: &serde_json::Value| v.as_f64().expect("f64");
    for k in 0..3 {
        let (m, r) = (&ours["models"][k], &theirs["models"][k]);
        close(f(&m["auroc"]), g(&r["auroc"]), "auroc");
        close(f(&m["auprc"]), g(&r["auprc"]), "auprc");
        close(f(&m["sensitivity_at_specificity"]), g(&r["sensitivity"]), "sensitivity");
        // Our threshold sits midway to the next lower score, scikit-learn's on the score:
        // the same patches are called positive (McNemar's counts below agree).
        let (ours_t, theirs_t) = (f(&m["threshold_logit"]), g(&r["threshold"]));
        assert!(ours_t <= theirs_t, "threshold: ours {ours_t}, reference {theirs_t}");
    }
    for k in 0..2 {
        let (p, r) = (&ours["pairs"][k], &theirs["pairs"][k]);
        close(f(&p["auroc_diff"]), g(&r["auroc_diff"]), "ΔAUROC");
        close(f(&p["delong_p"]), g(&r["p"]), "DeLong p");
        let se = (f(&p["delong_ci95"][1]) - f(&p["delong_ci95"][0])) / (2.0 * 1.959963984540054);
        close(se, g(&r["se"]), "DeLong se");
        let mc = &p["mcnemar_at_specificity"];
        assert_eq!(mc["b"].as_u64(), r["b"].as_u64());
        assert_eq!(mc["c"].as_u64(), r["c"].as_u64());
        close(f(&mc["chi2"]), g(&r["chi2"]), "χ²");
        close(f(&mc["p_chi2"]), g(&r["p_chi2"]), "McNemar p");
        close(f(&mc["p_exact"]), g(&r["p_exact"]), "exact p");
        // The bootstrap interval brackets the point difference, and B is better than A.
        let bo = &p["bootstrap_auroc"];
        assert!(
            f(&bo["ci95"][0]) <= f(&bo["diff"]) && f(&bo["diff"]) <= f(&bo["ci95"][1]),
            "{bo:?}"
        );
    }
    assert!(f(&ours["pairs"][0]["auroc_diff"]) > 0.0 && f(&ours["pairs"][0]["delong_p"]) < 0.05);
    // Calibrated decisions (a `decision` column, as infer --calibration writes it): McNemar on
    // them too, its counts those of the decisions.
    let with_decision = |src: &Path, name: &str, cut: f64| {
        let text = std::fs::read_to_string(src).expect("read");
        let mut out = String::from("patch_file,seriesuid,label,logit,decision\n");
        let mut right = std::collections::BTreeMap::new();
        for line in text.lines().skip(1) {
            let v: Vec<&str> = line.split(',').collect();
            let z: f64 = v[3].parse().expect("logit");
            let d = u8::from(z >= cut);
            right.insert(v[0].to_string(), d.to_string() == v[2]);
            out += &format!("{line},{d}\n");
        }
        let p = d.path().join(name);
        std::fs::write(&p, out).expect("w");
        (p, right)
    };
    let (ad, ra) = with_decision(&a, "ad.csv", 0.8);
    let (bd, rb) = with_decision(&b, "bd.csv", 0.5);
    let dec = d.path().join("cmp_decision");
    run_ok(
        FROC,
        &["compare", s(&ad), s(&bd), "--bootstrap", "0", "-o", s(&dec)],
    );
    let m = &yaml(&dec.join("comparison.yaml"))["pairs"][0]["mcnemar_at_decision"];
    let want_b = ra.iter().filter(|(k, &r)| r && !rb[*k]).count() as u64;
    let want_c = ra.iter().filter(|(k, &r)| !r && rb[*k]).count() as u64;
    assert_eq!(
        (m["b"].as_u64(), m["c"].as_u64()),
        (Some(want_b), Some(want_c)),
        "{m:?}"
    );
    // Seeded: the same command, the same numbers.
    let again = d.path().join("cmp2");
    run_ok(
        FROC,
        &[
            "compare",
            s(&a),
            s(&b),
            s(&c),
            "--specificity",
            "0.9",
            "--bootstrap",
            "300",
            "-o",
            s(&again),
        ],
    );
    assert_eq!(
        std::fs::read(out.join("comparison.yaml")).expect("read"),
        std::fs::read(again.join("comparison.yaml")).expect("read")
    );
}

#[test]
fn comparisons_on_different_patches_are_refused() {
    let d = tempfile::tempdir().expect("tmp");
    let [a, b, _] = scores(d.path());
    let text = std::fs::read_to_string(&b).expect("read");
    // One patch fewer; one label changed.
    let fewer = d.path().join("fewer.csv");
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&fewer, lines[..lines.len() - 1].join("\n") + "\n").expect("w");
    let relabelled = d.path().join("relabelled.csv");
    let first = lines[1];
    let flipped = if first.contains(",1,") {
        first.replacen(",1,", ",0,", 1)
    } else {
        first.replacen(",0,", ",1,", 1)
    };
    std::fs::write(&relabelled, text.replacen(first, &flipped, 1)).expect("w");
    let no_series = d.path().join("no_series.csv");
    std::fs::write(&no_series, "patch_file,label,logit\np1.npy,0,0.1\np2.npy,1,0.3\n").expect("w");
    for (other, want) in [
        (&fewer, "not the same patches"),
        (&relabelled, "label"),
        (&no_series, "seriesuid"),
    ] {
        let r = run_err(FROC, &["compare", s(&a), s(other)]);
        assert!(r.stderr.contains(want), "{want:?} in {}", r.stderr);
    }
    let r = run_err(FROC, &["compare", s(&a)]);
    assert!(
        r.stderr.contains("2 values") || r.stderr.contains("SCORES"),
        "{}",
        r.stderr
    );
    let r = run_err(FROC, &["compare", s(&a), s(&b), "--specificity", "1"]);
    assert!(r.stderr.contains("--specificity"), "{}", r.stderr);
    let r = run_err(FROC, &["compare", s(&a), s(&b), "--bootstrap", "100001"]);
    assert!(r.stderr.contains("bootstrap"), "{}", r.stderr);
}

/// The one percentile-interval definition (`metrics::percentile_interval`, used by
/// calibrate, compare and froc) equals LUNA16's evaluation script's indexing computed by numpy
/// on random values, for several resample counts and levels.
#[test]
fn the_bootstrap_interval_is_the_luna16_scripts_checked_with_numpy() {
    let d = tempfile::tempdir().expect("tmp");
    let mut cases = Vec::new();
    let mut x = 12345u64;
    for (b, level) in [(1000usize, 0.95), (137, 0.95), (20, 0.9), (999, 0.99), (1, 0.95)] {
        let v: Vec<f64> = (0..b)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (x >> 11) as f64 / (1u64 << 53) as f64
            })
            .collect();
        cases.push((v, level));
    }
    let json = serde_json::to_string(&cases).expect("json");
    let input = d.path().join("cases.json");
    std::fs::write(&input, json).expect("w");
    let script = r#"
import json, sys, numpy as np
cases = json.load(open(sys.argv[1]))
out = []
for v, c in cases:
    s = np.sort(np.array(v)); B = len(s); pz = (1.0 - c) / 2.0
    out.append([s[min(int(np.floor(pz * B)), B - 1)], s[min(int(np.floor((1.0 - pz) * B)), B - 1)]])
print(json.dumps(out))
"#;
    let o = std::process::Command::new(chain_tests::python())
        .args(["-c", script])
        .arg(&input)
        .output()
        .expect("python");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want: Vec<[f64; 2]> = serde_json::from_slice(&o.stdout).expect("numpy output");
    for ((v, level), w) in cases.iter().zip(&want) {
        let got = metrics::percentile_interval(v, *level).expect("interval");
        assert_eq!(got, *w, "B {} level {level}", v.len());
    }
}
