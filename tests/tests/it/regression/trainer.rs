//! Regression tests of `trainer`, one per bug (see `regression/mod.rs`).
use crate::fixture::{fixture, CUBE};
use chain_tests::{bin, run_err, run_ok, s, synth};
use std::process::Command;

use super::*;

#[test]
fn trainer_run_files_that_are_inputs_are_refused_before_any_work() {
    let d = tempfile::tempdir().expect("tmp");
    let p = synth(d.path(), 6, 4, CUBE, 61);
    // The index inside the run folder under a name the run writes.
    let run_dir = d.path().join("run");
    std::fs::create_dir(&run_dir).expect("mkdir");
    let idx = run_dir.join("split.csv");
    let text = std::fs::read_to_string(p.join("patch_index.csv"))
        .expect("read")
        .replace("s0", &format!("{}/s0", p.display()));
    std::fs::write(&idx, &text).expect("w");
    let r = run_err(
        "trainer",
        &[
            "train",
            "--data",
            s(&idx),
            "--out",
            s(&run_dir),
            "--cube-size",
            "16",
            "--force",
        ],
    );
    assert!(r.stderr.contains("an input of this run"), "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(&idx).expect("read"),
        text,
        "the index was touched"
    );
    // A config file that is the run's own config.yaml, with --force.
    let cfg = run_dir.join("config.yaml");
    std::fs::write(&cfg, format!("data: {}\nout: {}\n", p.display(), run_dir.display())).expect("w");
    let r = run_err(
        "trainer",
        &["train", "--config", s(&cfg), "--force", "--cube-size", "16"],
    );
    assert!(
        r.stderr.contains("config file") && r.stderr.contains("an input of this run"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_diverging_run_looped_forever_and_lost_its_last_good_epoch() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let run_dir = d.path().join("run");
    let args = small_run(&f.patches, &run_dir);
    // Step 13 is in epoch 2 (60 training patches, 8 steps an epoch).
    let r: chain_tests::Run = Command::new(bin("trainer"))
        .args(&args)
        .env("NODULE_FAILPOINT", "nan_loss_at_step=13")
        .output()
        .expect("trainer")
        .into();
    assert!(!r.ok, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("training diverged at epoch 2, step 5 of 8 (step 13 of the run)")
            && r.stderr.contains("keeps epoch 1"),
        "{}",
        r.stderr
    );
    let st = std::fs::read_to_string(run_dir.join("train_state.yaml")).expect("state");
    assert!(st.contains("epochs_done: 1"), "{st}");
    // The last good epoch resumes (without the fault, as after lowering nothing else).
    let r = run_ok("trainer", &["train", "--resume", s(&run_dir), "-q"]);
    assert!(r.stdout.contains("best epoch"), "{}", r.stdout);
    // In the first epoch nothing was finished: the same command starts again, no --force.
    let run2 = d.path().join("run2");
    let mut a2 = args.to_vec();
    a2[4] = s(&run2);
    let r: chain_tests::Run = Command::new(bin("trainer"))
        .args(&a2)
        .env("NODULE_FAILPOINT", "nan_loss_at_step=2")
        .output()
        .expect("trainer")
        .into();
    assert!(!r.ok && r.stderr.contains("no --force needed"), "{}", r.stderr);
    run_ok("trainer", &a2);
}

// ---- froc duplicates ----------------------------------------------------------------------

#[test]
fn resume_accepted_a_folder_whose_config_or_metrics_changed() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let run_dir = d.path().join("run");
    let mut args = small_run(&f.patches, &run_dir);
    args.extend(["--stop-after", "1"]);
    run_ok("trainer", &args);
    for (file, edit) in [
        ("config.yaml", "  epochs: 3", "  epochs: 5"),
        ("metrics.csv", "1,", "1,9"),
    ]
    .map(|(f, a, b)| (f, (a, b)))
    {
        let p = run_dir.join(file);
        let orig = std::fs::read_to_string(&p).expect("read");
        assert!(orig.contains(edit.0), "{file}: {orig}");
        std::fs::write(&p, orig.replacen(edit.0, edit.1, 1)).expect("w");
        let r = run_err("trainer", &["train", "--resume", s(&run_dir), "-q"]);
        assert!(
            r.stderr.contains(file) && r.stderr.contains("changed since the run wrote it"),
            "{}",
            r.stderr
        );
        std::fs::write(&p, orig).expect("restore");
    }
    run_ok("trainer", &["train", "--resume", s(&run_dir), "-q"]);
}

/// `--force` over a finished run with data that fail to load removed the finished run first.
#[test]
fn force_with_bad_data_lost_the_previous_run() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let run_dir = d.path().join("run");
    run_ok("trainer", &small_run(&f.patches, &run_dir));
    let before: Vec<(String, Vec<u8>)> = ["model.onnx", "metrics.csv", "summary.yaml", "config.yaml"]
        .iter()
        .map(|n| (n.to_string(), std::fs::read(run_dir.join(n)).expect(n)))
        .collect();
    let bad = patches_copy(d.path());
    let index = bad.join("patch_index.csv");
    let text = std::fs::read_to_string(&index).expect("index");
    std::fs::write(&index, text.replacen(",1\n", ",7\n", 1)).expect("w");
    let mut args = small_run(&bad, &run_dir);
    args.push("--force");
    let r = run_err("trainer", &args);
    assert!(
        r.stderr.contains("patch_index.csv") && r.stderr.contains("label"),
        "{}",
        r.stderr
    );
    for (n, bytes) in before {
        assert_eq!(std::fs::read(run_dir.join(&n)).expect(&n), bytes, "{n} changed");
    }
}

/// A run killed (SIGKILL) inside its first epoch left a folder that refused the same
/// command without --force.
#[test]
fn a_run_killed_in_its_first_epoch_could_not_start_again() {
    let d = tempfile::tempdir().expect("tmp");
    // 64³ cubes read from disk for every batch: a first epoch of a few seconds.
    let p = synth(d.path(), 10, 6, 64, 71);
    let run_dir = d.path().join("run");
    let args = [
        "train",
        "--data",
        s(&p),
        "--out",
        s(&run_dir),
        "--cube-size",
        "64",
        "--width",
        "4",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "-q",
        "--cache-mb",
        "0",
        "--threads",
        "1",
    ];
    let mut child = Command::new(bin("trainer")).args(args).spawn().expect("trainer");
    let state = run_dir.join("train_state.yaml");
    let t0 = std::time::Instant::now();
    while !state.exists() && t0.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().expect("kill");
    let _ = child.wait();
    assert!(state.exists(), "the run never started");
    assert!(
        !run_dir.join("metrics.csv").exists(),
        "the first epoch finished before the kill; the test did not test what it means to"
    );
    let r = run_ok("trainer", &args);
    assert!(r.stdout.contains("best epoch"), "{}", r.stdout);
}
