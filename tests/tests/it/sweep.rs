//! `trainer sweep`: a grid run as k-fold cross-validations, resumable, spread over tasks as a
//! job array would (`--task`, `SLURM_ARRAY_TASK_ID`, `JOB_COMPLETION_INDEX`) with the same
//! summary as one run; its paired differences agree with `froc compare` on the
//! configurations' out-of-fold scores (the README's "Running experiments" path).
use std::path::{Path, PathBuf};
use std::process::Command;

use chain_tests::{bin, run_err, run_ok, s};

use crate::fixture::fixture;

fn sweep_file(dir: &Path, name: &str, out: &str, grid: &str) -> PathBuf {
    let f = fixture();
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &p,
        format!(
            "config:\n  data: {}\n  out: unused\n  model: {{ width: 4 }}\n  preprocess: {{ cube_size: 16 }}\n  \
             train: {{ epochs: 2, batch_size: 8, lr: 0.003, device: cpu }}\nout: {}\nfolds: 2\ngrid:\n  {grid}\n",
            s(&f.patches),
            s(&dir.join(out))
        ),
    )
    .expect("write");
    p
}

fn summary(dir: &Path) -> Vec<Vec<String>> {
    chain_tests::read_csv(&dir.join("sweep_summary.csv")).1
}

#[test]
fn a_sweep_runs_resumes_spreads_over_tasks_and_compares() {
    let d = tempfile::tempdir().expect("tmp");
    // Width 4 is the base's: that combination is the base, run once.
    let file = sweep_file(d.path(), "sw", "sw", "model.width: [2, 4, 8]");
    let r = run_ok("trainer", &["sweep", s(&file), "--list"]);
    assert!(
        r.stdout.contains("3 configurations × 2 folds = 6 tasks"),
        "{}",
        r.stdout
    );
    let r = run_ok("trainer", &["sweep", s(&file), "-q"]);
    assert!(r.stdout.contains("6 tasks: 6 run now, 0 done before"), "{}", r.stdout);
    assert!(
        r.stdout.contains("(best)") && r.stdout.contains("model.width=8"),
        "{}",
        r.stdout
    );
    let out = d.path().join("sw");
    for f in [
        "sweep_summary.csv",
        "sweep_summary.md",
        "forest.png",
        "cell_02/oof_scores.csv",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    let full = summary(&out);
    assert_eq!(full.len(), 3);
    // Resumed: nothing to do.
    let r = run_ok("trainer", &["sweep", s(&file), "-q"]);
    assert!(r.stdout.contains("0 run now, 6 done before"), "{}", r.stdout);

    // The same sweep as a job array: one task per process, one left out, then the collect.
    let tasks_file = sweep_file(d.path(), "tasks", "tasks", "model.width: [2, 4, 8]");
    for i in [0usize, 1, 2, 4, 5] {
        let mut c = Command::new(bin("trainer"));
        c.args(["sweep", s(&tasks_file), "-q"]);
        match i {
            0 => c.args(["--task", "0"]),
            1 => c.env("SLURM_ARRAY_TASK_ID", "1"),
            _ => c.env("JOB_COMPLETION_INDEX", i.to_string()),
        };
        let o = c.output().expect("trainer");
        assert!(o.status.success(), "task {i}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let r = run_err("trainer", &["sweep", s(&tasks_file), "--collect"]);
    assert!(
        r.stderr.contains("1 of 6 tasks not done: task 3 (cell_01/fold_2)"),
        "{}",
        r.stderr
    );
    run_ok("trainer", &["sweep", s(&tasks_file), "--task", "3", "-q"]);
    run_ok("trainer", &["sweep", s(&tasks_file), "--collect"]);
    let spread = summary(&d.path().join("tasks"));
    for (a, b) in full.iter().zip(&spread) {
        // Configuration, folds, AUROCs and differences (not the time or memory).
        assert_eq!(a[..13], b[..13], "one run and the job array disagree");
    }

    // The paired difference against the base equals `froc compare` on the out-of-fold
    // scores of the two configurations.
    let cmp = d.path().join("cmp");
    let r = run_ok(
        "froc",
        &[
            "compare",
            s(&out.join("cell_00/oof_scores.csv")),
            s(&out.join("cell_02/oof_scores.csv")),
            "--bootstrap",
            "0",
            "-o",
            s(&cmp),
        ],
    );
    assert!(r.stdout.contains("ΔAUROC"), "{}", r.stdout);
    let y: yaml_serde::Value =
        yaml_serde::from_str(&std::fs::read_to_string(cmp.join("comparison.yaml")).expect("read")).expect("yaml");
    let theirs = y["pairs"][0]["auroc_diff"].as_f64().expect("diff");
    let ours: f64 = full[2][9].parse().expect("diff_vs_base");
    assert!((ours - theirs).abs() < 1e-9, "sweep {ours} vs compare {theirs}");

    // Refused: another plan in the same folder, a task out of range, a key that is not a
    // config key, an unknown sweep key.
    let other = sweep_file(d.path(), "other", "sw", "model.width: [2, 16]");
    let r = run_err("trainer", &["sweep", s(&other), "-q"]);
    assert!(r.stderr.contains("holds another sweep"), "{}", r.stderr);
    let r = run_err("trainer", &["sweep", s(&file), "--task", "6"]);
    assert!(r.stderr.contains("tasks 0 to 5"), "{}", r.stderr);
    let typo = sweep_file(d.path(), "typo", "typo", "model.widht: [2]");
    let r = run_err("trainer", &["sweep", s(&typo)]);
    assert!(
        r.stderr.contains("model.widht=2") && r.stderr.contains("widht"),
        "{}",
        r.stderr
    );
    let bad = d.path().join("bad.yaml");
    std::fs::write(&bad, "config: {}\nout: x\nfold: 3\n").expect("w");
    let r = run_err("trainer", &["sweep", s(&bad)]);
    assert!(r.stderr.contains("unknown field `fold`"), "{}", r.stderr);
}
