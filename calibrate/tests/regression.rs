//! Regression tests of `calibrate`, one per bug, run on the binary Cargo builds for them:
//! absurd logits among the scores, the old `compare` command, a FIFO as the scores file, a
//! blank series or a ragged row among the scores.
//! Each stands for its class (the README's "Failure behaviour"); the ones that cross
//! binaries are in `tests/tests/it/regression.rs`.
use chain_tests::fixtures::{mkfifo, shared, Shared};
use chain_tests::{read_csv, run_err, run_ok, s};

const CALIBRATE: &str = env!("CARGO_BIN_EXE_calibrate");

/// The shared patch folder (whose index the scores follow) and the untrained model the
/// calibration is bound to.
fn fixture() -> &'static Shared {
    shared(env!("CARGO_TARGET_TMPDIR"))
}

#[test]
fn calibrate_fitted_garbage_on_absurd_logits() {
    let d = tempfile::tempdir().expect("tmp");
    let val = d.path().join("val_scores.csv");
    chain_tests::fixtures::scores_csv(&fixture().patches, &val, 3);
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
    let m = &fixture().model;
    // Beyond what a float32 model can output: an error naming the line.
    let p = write("huge.csv", "1e308");
    let r = run_err(
        CALIBRATE,
        &["--scores", s(&p), "--model", s(m), "-o", s(&d.path().join("a/c.yaml"))],
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
        CALIBRATE,
        &[
            "--scores",
            s(&p),
            "--model",
            s(m),
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
        let r = run_err(CALIBRATE, args);
        assert!(r.stderr.contains("is now `froc compare`"), "{}", r.stderr);
    }
}

/// A FIFO given as the scores file is refused, never waited on.
#[test]
fn a_fifo_as_the_scores_blocked_calibrate_forever() {
    let d = tempfile::tempdir().expect("tmp");
    let fifo = d.path().join("fifo.csv");
    mkfifo(&fifo);
    let r = run_err(
        CALIBRATE,
        &[
            "--scores",
            s(&fifo),
            "--model",
            s(&fixture().model),
            "-o",
            s(&d.path().join("c.yaml")),
        ],
    );
    assert!(r.stderr.contains("FIFO"), "{}", r.stderr);
}

#[test]
fn one_blank_seriesuid_switched_calibrate_to_per_patch_folds() {
    let d = tempfile::tempdir().expect("tmp");
    let val = d.path().join("val_scores.csv");
    chain_tests::fixtures::scores_csv(&fixture().patches, &val, 3);
    let text = std::fs::read_to_string(&val).expect("r");
    let (h, _) = read_csv(&val);
    let ui = chain_tests::col(&h, "seriesuid");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut fields: Vec<String> = lines[3].split(',').map(str::to_string).collect();
    fields[ui] = String::new();
    lines[3] = fields.join(",");
    let scores = d.path().join("scores.csv");
    std::fs::write(&scores, lines.join("\n") + "\n").expect("w");
    let r = run_err(
        CALIBRATE,
        &[
            "--scores",
            s(&scores),
            "--model",
            s(&fixture().model),
            "-o",
            s(&d.path().join("c.yaml")),
        ],
    );
    assert!(
        r.stderr.contains("line 4") && r.stderr.contains("blank"),
        "{}",
        r.stderr
    );
    // A ragged row (an unquoted comma in a field) is refused naming its line, not read
    // with its columns shifted.
    let mut fields: Vec<String> = text
        .lines()
        .nth(2)
        .expect("row")
        .split(',')
        .map(str::to_string)
        .collect();
    fields[ui] = format!("{},x", fields[ui]);
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[2] = fields.join(",");
    std::fs::write(&scores, lines.join("\n") + "\n").expect("w");
    let r = run_err(
        CALIBRATE,
        &[
            "--scores",
            s(&scores),
            "--model",
            s(&fixture().model),
            "-o",
            s(&d.path().join("c.yaml")),
        ],
    );
    assert!(r.stderr.contains("line 3"), "{}", r.stderr);
}
