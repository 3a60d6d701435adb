//! Regression tests of `trainer`, one per bug, run on the binary Cargo builds for them: run
//! files that are inputs, a diverging run, a resume over a changed folder, `--force` with
//! bad data, a run killed in its first epoch, a FIFO as the config; sweeps started together
//! on one folder, a grid too large to expand, FIFOs among a sweep's files. Each stands for its
//! class (the README's "Failure behaviour"); the ones that cross binaries are in
//! `tests/tests/it/regression.rs`.
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chain_tests::fixtures::{copy_files, mkfifo, shared, Shared, CUBE};
use chain_tests::{run_err, run_ok, s, synth};

const TRAINER: &str = env!("CARGO_BIN_EXE_trainer");

/// The shared patch folder: 20 series of 4 patches of 16³ (60 training patches).
fn fixture() -> &'static Shared {
    shared(env!("CARGO_TARGET_TMPDIR"))
}

/// A three-epoch CPU training run of the fixture's size into `out`.
fn small_run<'a>(patches: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec![
        "train",
        "--data",
        s(patches),
        "--out",
        s(out),
        "--cube-size",
        "16",
        "--width",
        "4",
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "-q",
    ]
}

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
        TRAINER,
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
        TRAINER,
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
    let r: chain_tests::Run = Command::new(TRAINER)
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
    let r = run_ok(TRAINER, &["train", "--resume", s(&run_dir), "-q"]);
    assert!(r.stdout.contains("best epoch"), "{}", r.stdout);
    // In the first epoch nothing was finished: the same command starts again, no --force.
    let run2 = d.path().join("run2");
    let mut a2 = args.to_vec();
    a2[4] = s(&run2);
    let r: chain_tests::Run = Command::new(TRAINER)
        .args(&a2)
        .env("NODULE_FAILPOINT", "nan_loss_at_step=2")
        .output()
        .expect("trainer")
        .into();
    assert!(!r.ok && r.stderr.contains("no --force needed"), "{}", r.stderr);
    run_ok(TRAINER, &a2);
}

#[test]
fn resume_accepted_a_folder_whose_config_or_metrics_changed() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let run_dir = d.path().join("run");
    let mut args = small_run(&f.patches, &run_dir);
    args.extend(["--stop-after", "1"]);
    run_ok(TRAINER, &args);
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
        let r = run_err(TRAINER, &["train", "--resume", s(&run_dir), "-q"]);
        assert!(
            r.stderr.contains(file) && r.stderr.contains("changed since the run wrote it"),
            "{}",
            r.stderr
        );
        std::fs::write(&p, orig).expect("restore");
    }
    run_ok(TRAINER, &["train", "--resume", s(&run_dir), "-q"]);
}

/// `--force` over a finished run with data that fail to load removed the finished run first.
#[test]
fn force_with_bad_data_lost_the_previous_run() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let run_dir = d.path().join("run");
    run_ok(TRAINER, &small_run(&f.patches, &run_dir));
    let before: Vec<(String, Vec<u8>)> = ["model.onnx", "metrics.csv", "summary.yaml", "config.yaml"]
        .iter()
        .map(|n| (n.to_string(), std::fs::read(run_dir.join(n)).expect(n)))
        .collect();
    let bad = copy_files(&fixture().patches, &d.path().join("patches"));
    let index = bad.join("patch_index.csv");
    let text = std::fs::read_to_string(&index).expect("index");
    std::fs::write(&index, text.replacen(",1\n", ",7\n", 1)).expect("w");
    let mut args = small_run(&bad, &run_dir);
    args.push("--force");
    let r = run_err(TRAINER, &args);
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
    let mut child = Command::new(TRAINER).args(args).spawn().expect("trainer");
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
    let r = run_ok(TRAINER, &args);
    assert!(r.stdout.contains("best epoch"), "{}", r.stdout);
}

/// A FIFO given as the config file is refused, never waited on.
#[test]
fn a_fifo_as_the_config_blocked_trainer_forever() {
    let d = tempfile::tempdir().expect("tmp");
    let fifo = d.path().join("fifo.yaml");
    mkfifo(&fifo);
    let r = run_err(TRAINER, &["train", "--config", s(&fifo)]);
    assert!(r.stderr.contains("FIFO"), "{}", r.stderr);
}

#[test]
fn two_sweeps_started_together_on_one_folder_were_both_accepted() {
    let d = tempfile::tempdir().expect("tmp");
    let f = fixture();
    let sweep = |name: &str, out: &Path, grid: &str| {
        let p = d.path().join(format!("{name}.yaml"));
        std::fs::write(
            &p,
            format!(
                "config:\n  data: {}\n  out: unused\n  preprocess: {{ cube_size: 16 }}\nout: {}\nfolds: 2\ngrid:\n  {grid}\n",
                s(&f.patches),
                s(out)
            ),
        )
        .expect("w");
        p
    };
    for i in 0..6 {
        let out = d.path().join(format!("sw{i}"));
        let a = sweep(&format!("a{i}"), &out, "model.width: [2, 3]");
        let b = sweep(&format!("b{i}"), &out, "model.width: [5, 6]");
        // --collect: the plan is checked and recorded, then nothing trains.
        let spawn = |p: &Path| {
            Command::new(TRAINER)
                .args(["sweep", s(p), "--collect"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn")
        };
        let (ca, cb) = (spawn(&a), spawn(&b));
        let ea = String::from_utf8_lossy(&ca.wait_with_output().expect("a").stderr).into_owned();
        let eb = String::from_utf8_lossy(&cb.wait_with_output().expect("b").stderr).into_owned();
        let accepted = |e: &str| e.contains("tasks not done");
        assert!(
            accepted(&ea) ^ accepted(&eb),
            "round {i}: both or neither accepted:\n{ea}\n{eb}"
        );
        let refused = if accepted(&ea) { &eb } else { &ea };
        assert!(
            refused.contains("another sweep") || refused.contains("in use"),
            "{refused}"
        );
    }
}

#[test]
fn a_sweep_of_ten_million_combinations_was_expanded_before_the_limit() {
    let d = tempfile::tempdir().expect("tmp");
    let p = d.path().join("big.yaml");
    let values: Vec<String> = (1..=10).map(|v| v.to_string()).collect();
    let list = values.join(", ");
    let keys = [
        "model.width",
        "train.lr",
        "train.epochs",
        "train.batch_size",
        "train.seed",
        "split.seed",
        "train.weight_decay",
    ];
    let grid: String = keys.iter().map(|k| format!("  {k}: [{list}]\n")).collect();
    std::fs::write(
        &p,
        format!("config: {{}}\nout: {}\nfolds: 2\ngrid:\n{grid}", s(&d.path().join("o"))),
    )
    .expect("w");
    let t0 = Instant::now();
    let r = run_err(TRAINER, &["sweep", s(&p), "--list"]);
    assert!(
        r.stderr.contains("10000001 configurations: at most 10000"),
        "{}",
        r.stderr
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}

#[test]
fn a_fifo_named_sweep_plan_or_fold_config_hung_trainer_sweep() {
    let d = tempfile::tempdir().expect("tmp");
    let f = fixture();
    let out = d.path().join("sw");
    let p = d.path().join("s.yaml");
    std::fs::write(
        &p,
        format!(
            "config:\n  data: {}\n  out: unused\n  preprocess: {{ cube_size: 16 }}\nout: {}\nfolds: 2\ngrid:\n  model.width: [2]\n",
            s(&f.patches),
            s(&out)
        ),
    )
    .expect("w");
    let mkfifo = |q: &Path| {
        std::fs::create_dir_all(q.parent().expect("dir")).expect("mkdir");
        assert!(Command::new("mkfifo").arg(q).status().expect("mkfifo").success());
    };
    let within = |args: &[&str]| {
        let mut c = Command::new(TRAINER)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let t0 = Instant::now();
        loop {
            if c.try_wait().expect("wait").is_some() {
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                let _ = c.kill();
                panic!("trainer {args:?} hung on a FIFO");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        String::from_utf8_lossy(&c.wait_with_output().expect("out").stderr).into_owned()
    };
    mkfifo(&out.join("sweep_plan.yaml"));
    let e = within(&["sweep", s(&p), "--collect"]);
    assert!(e.contains("sweep_plan.yaml") && e.contains("FIFO"), "{e}");
    std::fs::remove_file(out.join("sweep_plan.yaml")).expect("rm");
    mkfifo(&out.join("cell_00/fold_1/config.yaml"));
    let e = within(&["sweep", s(&p), "--collect"]);
    assert!(e.contains("tasks not done"), "{e}");
}
