//! Regression tests of `froc`, one per bug (see `regression/mod.rs`).
use crate::fixture::fixture;
use chain_tests::{run_err, run_ok, s};
use std::path::Path;

use super::*;

#[test]
fn froc_output_folder_holding_its_inputs_is_refused() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let results = d.path().join("froc_curve.csv");
    luna16_results(&results);
    let l16 = f.patches.join("luna16");
    let r = run_err(
        "froc",
        &[
            "--annotations",
            s(&l16.join("annotations.csv")),
            "--seriesuids",
            s(&l16.join("seriesuids.csv")),
            "--results",
            s(&results),
            "-o",
            s(d.path()),
            "--bootstrap",
            "0",
        ],
    );
    assert!(r.stderr.contains("an input of this run"), "{}", r.stderr);
    assert!(std::fs::read_to_string(&results)
        .expect("read")
        .starts_with("seriesuid,"));
}

// ---- Outputs that are not regular files --------------------------------------------------

#[test]
fn froc_counted_a_series_listed_twice_twice() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let results = d.path().join("results.csv");
    luna16_results(&results);
    let l16 = f.patches.join("luna16");
    let froc = |ann: &Path, uids: &Path, res: &Path, out: &str| {
        let r = run_ok(
            "froc",
            &[
                "--annotations",
                s(ann),
                "--seriesuids",
                s(uids),
                "--results",
                s(res),
                "-o",
                s(&d.path().join(out)),
                "--bootstrap",
                "0",
            ],
        );
        let cpm: f64 = r
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("CPM "))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("CPM");
        (cpm, r.stdout)
    };
    let (clean, _) = froc(
        &l16.join("annotations.csv"),
        &l16.join("seriesuids.csv"),
        &results,
        "clean",
    );
    let twice = |src: &Path, name: &str, skip_header: bool| {
        let text = std::fs::read_to_string(src).expect("read");
        let body: String = text
            .lines()
            .skip(usize::from(skip_header))
            .map(|l| format!("{l}\n"))
            .collect();
        let p = d.path().join(name);
        std::fs::write(&p, format!("{text}{body}")).expect("w");
        p
    };
    let uids2 = twice(&l16.join("seriesuids.csv"), "uids2.csv", false);
    let ann2 = twice(&l16.join("annotations.csv"), "ann2.csv", true);
    let res2 = twice(&results, "res2.csv", true);
    let (dup, out) = froc(&ann2, &uids2, &res2, "dup");
    assert_eq!(dup, clean, "{out}");
    for w in [
        "series listed more than once",
        "annotation row(s) repeat",
        "result row(s) repeat",
    ] {
        assert!(out.contains(w), "no `{w}` warning:\n{out}");
    }
    // Absurd and non-positive diameters are refused; annotations of unlisted series named.
    for d_mm in ["0", "-3", "250"] {
        let text = std::fs::read_to_string(l16.join("annotations.csv")).expect("read");
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let mut row: Vec<String> = lines[1].split(',').map(str::to_string).collect();
        *row.last_mut().expect("diameter") = d_mm.into();
        lines[1] = row.join(",");
        let p = d.path().join("bad_ann.csv");
        std::fs::write(&p, lines.join("\n") + "\n").expect("w");
        let r = run_err(
            "froc",
            &[
                "--annotations",
                s(&p),
                "--seriesuids",
                s(&l16.join("seriesuids.csv")),
                "--results",
                s(&results),
                "-o",
                s(&d.path().join("bad")),
            ],
        );
        assert!(
            r.stderr.contains("line 2") && r.stderr.contains("diameter_mm"),
            "{d_mm}: {}",
            r.stderr
        );
    }
    let text = std::fs::read_to_string(l16.join("annotations.csv")).expect("read");
    let p = d.path().join("extra_ann.csv");
    std::fs::write(&p, format!("{text}9.9.9.9,1,2,3,6\n")).expect("w");
    let (_, out) = froc(&p, &l16.join("seriesuids.csv"), &results, "extra");
    assert!(out.contains("1 annotation(s) belong to series not in"), "{out}");
}

// ---- Resume integrity ---------------------------------------------------------------------
