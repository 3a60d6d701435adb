//! Regression tests of `froc`, one per bug, run on the binary Cargo builds for them: an
//! output folder holding an input, series and rows listed twice, absurd diameters, a FIFO
//! as an input. Each stands for its class (the README's "Failure behaviour"); the ones that
//! cross binaries are in `tests/tests/it/regression.rs`.
use std::path::Path;

use chain_tests::fixtures::{mkfifo, shared, Shared};
use chain_tests::{run_err, run_ok, s};

const FROC: &str = env!("CARGO_BIN_EXE_froc");

/// The shared patch folder, for its LUNA16 reference files (`luna16/`) and the centres the
/// results file is written at.
fn fixture() -> &'static Shared {
    shared(env!("CARGO_TARGET_TMPDIR"))
}

#[test]
fn froc_output_folder_holding_its_inputs_is_refused() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let results = d.path().join("froc_curve.csv");
    chain_tests::fixtures::luna16_results(&f.patches, &results, 3);
    let l16 = f.patches.join("luna16");
    let r = run_err(
        FROC,
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

#[test]
fn froc_counted_a_series_listed_twice_twice() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let results = d.path().join("results.csv");
    chain_tests::fixtures::luna16_results(&f.patches, &results, 3);
    let l16 = f.patches.join("luna16");
    let froc = |ann: &Path, uids: &Path, res: &Path, out: &str| {
        let r = run_ok(
            FROC,
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
            FROC,
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

/// A FIFO given as an input is refused, never waited on.
#[test]
fn a_fifo_as_an_input_blocked_froc_forever() {
    let d = tempfile::tempdir().expect("tmp");
    let fifo = d.path().join("fifo.csv");
    mkfifo(&fifo);
    let r = run_err(
        FROC,
        &[
            "--annotations",
            s(&fifo),
            "--seriesuids",
            s(&fifo),
            "--results",
            s(&fifo),
            "-o",
            s(&d.path().join("f")),
        ],
    );
    assert!(r.stderr.contains("FIFO"), "{}", r.stderr);
}

#[test]
fn froc_bad_input() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let l16 = f.patches.join("luna16");
    let froc = |results: &std::path::Path| {
        run_err(
            FROC,
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
