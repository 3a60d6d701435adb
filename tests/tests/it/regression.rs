//! Regression tests that cross binaries, one per bug: a class checked on every binary that
//! can meet it (an output that names an input or a device, temporary files of a killed run,
//! two processes at once, a planted lock file, settings out of range). Each stands for its
//! class (see the README's "Failure behaviour"). A binary's own regression tests sit in its
//! package (`trainer/tests/regression.rs`, `calibrate/tests/…`, `infer/tests/…`,
//! `evaluation/tests/…`, `scans/tests/hostile_scans.rs`) and run the binary Cargo builds
//! for them.
use std::path::{Path, PathBuf};

use chain_tests::fixtures::hold;
use chain_tests::{run, run_err, s};

use crate::fixture::fixture;

fn model() -> PathBuf {
    fixture().run.join("model.onnx")
}

/// `infer --model MODEL --device cpu -q ARGS` with the fixture's model.
fn infer(args: &[&str]) -> chain_tests::Run {
    let m = model();
    let mut a = vec!["--model", s(&m), "--device", "cpu", "-q"];
    a.extend_from_slice(args);
    run("infer", &a)
}

#[test]
fn infer_and_calibrate_output_equal_to_the_model_overwrote_the_model() {
    let d = tempfile::tempdir().expect("tmp");
    let f = fixture();
    let m = d.path().join("model.onnx");
    std::fs::copy(model(), &m).expect("copy");
    let before = std::fs::read(&m).expect("read");
    let r = run("infer", &["--model", s(&m), s(&f.patches), "-o", s(&m), "-q"]);
    assert!(!r.ok && r.stderr.contains("would overwrite the model"), "{}", r.stderr);
    let r = run(
        "calibrate",
        &[
            "--scores",
            s(&f.run.join("val_scores.csv")),
            "--model",
            s(&m),
            "-o",
            s(&m),
        ],
    );
    assert!(!r.ok && r.stderr.contains("would overwrite the model"), "{}", r.stderr);
    // The calibrated model beside the calibration file is an output as well.
    let baked = d.path().join("model.calibrated.onnx");
    std::fs::copy(&m, &baked).expect("copy");
    let r = run(
        "calibrate",
        &[
            "--scores",
            s(&f.run.join("val_scores.csv")),
            "--model",
            s(&baked),
            "-o",
            s(&d.path().join("calibration.yaml")),
        ],
    );
    assert!(!r.ok && r.stderr.contains("an input of this run"), "{}", r.stderr);
    let r = run("infer", &["bundle", "--model", s(&m), "-o", s(&m)]);
    assert!(!r.ok && r.stderr.contains("an input of this run"), "{}", r.stderr);
    assert_eq!(std::fs::read(&m).expect("read"), before, "the model was changed");
}

#[test]
fn output_to_dev_null_replaced_the_device_and_symlinks_were_replaced_by_files() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let r = infer(&[s(&f.patches), "-o", "/dev/null"]);
    assert!(r.ok, "{}", r.stderr);
    let m = std::fs::metadata("/dev/null").expect("meta");
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(&m.file_type()));
    assert!(!Path::new("/dev/null.errors.csv").exists());
    // -o through a symlink writes its target; the link stays.
    let target = d.path().join("real.csv");
    let link = d.path().join("link.csv");
    std::os::unix::fs::symlink(&target, &link).expect("ln");
    let r = infer(&[s(&f.patches), "-o", s(&link)]);
    assert!(r.ok, "{}", r.stderr);
    assert!(std::fs::symlink_metadata(&link).expect("meta").file_type().is_symlink());
    assert!(std::fs::read_to_string(&target)
        .expect("target")
        .starts_with("patch_file,"));
    // A folder is no output.
    let r = infer(&[s(&f.patches), "-o", s(d.path())]);
    assert!(!r.ok && r.stderr.contains("is a folder"), "{}", r.stderr);
    // Nor is a socket.
    let sock = d.path().join("sock.csv");
    let _l = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    let r = infer(&[s(&f.patches), "-o", s(&sock)]);
    assert!(!r.ok && r.stderr.contains("a socket"), "{}", r.stderr);
}

#[test]
fn temporary_files_of_a_killed_run_stayed_forever() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    // PID 4194305 is above Linux's largest pid_max: its process is surely gone.
    let stale = d.path().join(".tmp-nodule.4194305.AbCdEf.csv");
    // And one as fresh: its writer may be a live process this PID namespace cannot see.
    let fresh = d.path().join(".tmp-nodule.4194305.GhIjKl.csv");
    std::fs::write(&stale, b"half a file").expect("w");
    std::fs::write(&fresh, b"being written").expect("w");
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .and_then(|f| f.set_modified(hour_ago))
        .expect("mtime");
    let r = infer(&[s(&f.patches), "-o", s(&d.path().join("scores.csv"))]);
    assert!(r.ok, "{}", r.stderr);
    assert!(!stale.exists(), "a killed run's temporary file was left");
    assert!(fresh.exists(), "a temporary file written minutes ago was removed");
    std::fs::remove_file(&fresh).expect("rm");
    let left: Vec<String> = std::fs::read_dir(d.path())
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["scores.csv"], "files left besides the output: {left:?}");
}

// ---- Two processes at once ------------------------------------------------------------

#[test]
fn a_second_process_writing_the_same_output_was_not_refused() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    // infer (also with --resume).
    let out = d.path().join("scores.csv");
    let held = hold(&d.path().join(".scores.csv.lock"));
    for extra in [&[][..], &["--resume"][..]] {
        let mut a = vec![s(&f.patches), "-o", s(&out)];
        a.extend_from_slice(extra);
        let r = infer(&a);
        assert!(
            !r.ok && r.stderr.contains("in use by another process") && r.stderr.contains("PID 424242"),
            "{}",
            r.stderr
        );
    }
    assert!(!out.exists());
    drop(held);
    // trainer train: a new run, --force and --resume alike.
    let run_dir = d.path().join("run");
    std::fs::create_dir(&run_dir).expect("mkdir");
    let held = hold(&run_dir.join(".nodule.lock"));
    for extra in [&[][..], &["--force"][..]] {
        let mut a = vec![
            "train",
            "--data",
            s(&f.patches),
            "--out",
            s(&run_dir),
            "--cube-size",
            "16",
        ];
        a.extend_from_slice(extra);
        let r = run_err("trainer", &a);
        assert!(
            r.stderr.contains("run folder") && r.stderr.contains("PID 424242"),
            "{}",
            r.stderr
        );
    }
    // --resume of a run folder (its config present): refused on the lock, not later.
    std::fs::copy(f.run.join("config.yaml"), run_dir.join("config.yaml")).expect("config");
    let r = run_err("trainer", &["train", "--resume", s(&run_dir)]);
    assert!(r.stderr.contains("PID 424242"), "{}", r.stderr);
    drop(held);
    // calibrate.
    let cal = d.path().join("cal");
    std::fs::create_dir(&cal).expect("mkdir");
    let held = hold(&cal.join(".nodule.lock"));
    let r = run_err(
        "calibrate",
        &[s(&f.run), "-o", s(&cal.join("calibration.yaml")), "--bootstrap", "0"],
    );
    assert!(r.stderr.contains("PID 424242"), "{}", r.stderr);
    drop(held);
}

/// A lock file planted as a symlink to another file would have had that file truncated
/// (the holder writes its PID into the lock file).
#[test]
fn a_lock_file_planted_as_a_symlink_truncated_its_target() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let victim = d.path().join("precious.txt");
    std::fs::write(&victim, b"keep me").expect("w");
    std::os::unix::fs::symlink(&victim, d.path().join(".scores.csv.lock")).expect("ln");
    let r = infer(&[s(&f.patches), "-o", s(&d.path().join("scores.csv"))]);
    assert!(!r.ok && r.stderr.contains("symbolic link"), "{}", r.stderr);
    assert_eq!(std::fs::read(&victim).expect("read"), b"keep me");
}

// ---- Inputs that are not regular files ---------------------------------------------------

#[test]
fn settings_out_of_range_panicked_or_never_ended() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let cal = d.path().join("cal/calibration.yaml");
    for (args, want) in [
        (&["--folds", "0"][..], "--folds 0 must be from 2"),
        (&["--min-sensitivity", "0"][..], "--min-sensitivity 0 must be in (0, 1]"),
        (
            &["--min-specificity", "1.5"][..],
            "--min-specificity 1.5 must be in (0, 1]",
        ),
        (
            &["--min-sensitivity", "NaN"][..],
            "--min-sensitivity NaN must be in (0, 1]",
        ),
        (
            &["--operating-point", "best"][..],
            "operating point `best` is not one of",
        ),
    ] {
        let mut a = vec![s(&f.run), "-o", s(&cal)];
        a.extend_from_slice(args);
        let r = run_err("calibrate", &a);
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
    }
    assert!(!cal.exists() && !d.path().join("cal").exists());
    let scores = d.path().join("s.csv");
    for (args, want) in [
        (&["--batch-size", "0"][..], "at least 1"),
        (&["--batch-size", "100000"][..], "more than 4096"),
    ] {
        let mut a = vec![s(&f.patches), "-o", s(&scores)];
        a.extend_from_slice(args);
        let r = infer(&a);
        assert!(!r.ok && r.stderr.contains(want), "{args:?}: {}", r.stderr);
    }
    let run_dir = d.path().join("run");
    for (yaml, want) in [
        ("train: { lr: 1e30 }", "train.lr must be in (0, 1]"),
        ("train: { lr: .nan }", "train.lr must be in (0, 1]"),
        (
            "train: { augment: { intensity_scale: 1e308 } }",
            "intensity_scale must be in [0, 1)",
        ),
        (
            "train: { augment: { jitter_voxels: 8 } }",
            "jitter_voxels must be below half the cube",
        ),
        ("model: { width: 0 }", "model.width must be from 1"),
        ("model: { width: 100000 }", "model.width must be from 1"),
        ("train: { batch_size: 1000000 }", "train.batch_size must be from 2"),
        ("train: { focal_gamma: .inf }", "train.focal_gamma must be in [0, 10]"),
    ] {
        let c = d.path().join("c.yaml");
        std::fs::write(
            &c,
            format!(
                "data: {}\nout: {}\npreprocess: {{ cube_size: 16 }}\n{yaml}\n",
                f.patches.display(),
                run_dir.display()
            ),
        )
        .expect("w");
        let r = run_err("trainer", &["train", "--config", s(&c)]);
        assert!(r.stderr.contains(want), "{yaml}: {}", r.stderr);
        assert!(!run_dir.exists(), "{yaml}: a run folder was left");
    }
    let r = run_err(
        "froc",
        &[
            "--annotations",
            "a",
            "--seriesuids",
            "b",
            "--results",
            "c",
            "-o",
            "d",
            "--confidence",
            "1.5",
        ],
    );
    assert!(r.stderr.contains("--confidence must be in (0, 1)"), "{}", r.stderr);
}
