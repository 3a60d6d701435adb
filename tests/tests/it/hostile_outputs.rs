//! Regression tests, round 2, for outputs: files read together must agree after a kill at
//! any instant, a tool replaces only files it wrote, `--resume` keeps only rows of the same
//! input, CSVs survive any text in their fields, and settings must mean something. Each is
//! named after the failure it fixes; each stands for its class.
//!
//! The kill loops run a command once per file it commits, killed (SIGKILL) right after that
//! commit by the `NODULE_FAILPOINT=kill_after_commit=N` hook, the instant between two files
//! a real kill can hit, and then at fixed delays with SIGTERM and SIGKILL; after each, the
//! readers of those files must either agree with each other or refuse the pair by name.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chain_tests::{bin, col, read_csv, run, run_err, run_ok, s, synth};

use crate::fixture::fixture;

/// A copy of the fixture's run folder.
fn run_copy(dir: &Path) -> PathBuf {
    let out = dir.join("run");
    let status = Command::new("cp")
        .args(["-r", s(&fixture().run), s(&out)])
        .status()
        .expect("cp");
    assert!(status.success());
    out
}

/// Runs `name args` with the kill hook at commit `n`: whether it was killed.
fn killed_after_commit(name: &str, args: &[&str], n: usize) -> bool {
    let o = Command::new(bin(name))
        .args(args)
        .env("NODULE_FAILPOINT", format!("kill_after_commit={n}"))
        .output()
        .expect("run");
    use std::os::unix::process::ExitStatusExt;
    o.status.signal() == Some(9)
}

/// Runs `name args`, sending `signal` after `delay` if it is still running.
fn killed_after(name: &str, args: &[&str], delay: Duration, signal: i32) {
    let mut child = Command::new(bin(name))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let t0 = Instant::now();
    while t0.elapsed() < delay {
        if child.try_wait().expect("wait").is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on a child process id we spawned and have not reaped.
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
    let _ = child.wait();
}

/// Kills `name args` after each of its commits, then at fixed delays; `check` runs after
/// each kill. Returns how many commits a full run makes.
fn kill_loop(name: &str, args: &[&str], check: &mut dyn FnMut(&str)) -> usize {
    let mut n = 1;
    while killed_after_commit(name, args, n) {
        check(&format!("killed after commit {n}"));
        n += 1;
        assert!(n < 200, "{name} never finished");
    }
    check("finished");
    for (i, ms) in [30u64, 120, 400, 900].iter().enumerate() {
        let sig = if i % 2 == 0 { libc::SIGTERM } else { libc::SIGKILL };
        killed_after(name, args, Duration::from_millis(*ms), sig);
        check(&format!("signal {sig} after {ms} ms"));
    }
    n - 1
}

#[test]
fn an_interrupted_calibrate_left_a_baked_model_of_another_method() {
    let d = tempfile::tempdir().expect("tmp");
    let runf = run_copy(d.path());
    let patches = &fixture().patches;
    let baked = runf.join("model.calibrated.onnx");
    let yaml = runf.join("calibration.yaml");
    // Each loop calibrates with the other method than the files left by the last one.
    for method in ["temperature", "isotonic"] {
        let args = ["--bootstrap", "50", "--method", method, s(&runf)];
        let mut check = |when: &str| {
            if !baked.exists() {
                return;
            }
            let out = d.path().join("scores.csv");
            let r = run("infer", &["--model", s(&baked), s(patches), "-o", s(&out)]);
            if r.ok {
                // Served: the calibration it applies is the one calibration.yaml records.
                if let Ok(text) = std::fs::read_to_string(&yaml) {
                    let m = text.lines().find_map(|l| l.strip_prefix("method: ")).expect("method");
                    assert!(
                        r.stderr.contains(&format!("({m};")),
                        "{when}: yaml says {m}: {}",
                        r.stderr
                    );
                }
            } else {
                assert!(r.stderr.contains("different calibrate runs"), "{when}: {}", r.stderr);
            }
            // The calibration file alone is always whole and applies to the run's model.
            if yaml.exists() {
                let r = run(
                    "infer",
                    &[
                        "--model",
                        s(&runf.join("model.onnx")),
                        "--calibration",
                        s(&yaml),
                        s(patches),
                        "-o",
                        s(&out),
                        "-q",
                    ],
                );
                assert!(r.ok, "{when}: {}", r.stderr);
            }
        };
        let commits = kill_loop("calibrate", &args, &mut check);
        assert!(commits >= 3, "{commits} commits");
    }
    // After the loops: a mismatched pair made by hand (the model of one run beside the file
    // of another) is refused by name.
    let other = d.path().join("other");
    std::fs::create_dir(&other).expect("mkdir");
    run_ok(
        "calibrate",
        &[
            "--bootstrap",
            "0",
            "--method",
            "platt",
            "--scores",
            s(&runf.join("val_scores.csv")),
            "--model",
            s(&runf.join("model.onnx")),
            "-o",
            s(&other.join("calibration.yaml")),
        ],
    );
    std::fs::copy(other.join("model.calibrated.onnx"), &baked).expect("copy");
    let r = run_err(
        "infer",
        &["--model", s(&baked), s(patches), "-o", s(&d.path().join("x.csv"))],
    );
    assert!(r.stderr.contains("different calibrate runs"), "{}", r.stderr);
}

#[test]
fn a_shard_killed_between_its_output_and_its_record_was_merged() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let runf = run_copy(d.path());
    // Two calibrations of the run's model: the shards of one must never merge with the
    // other's.
    let (a, b) = (d.path().join("a.yaml"), d.path().join("b.yaml"));
    for (p, m) in [(&a, "temperature"), (&b, "isotonic")] {
        run_ok(
            "calibrate",
            &[
                "--bootstrap",
                "0",
                "--no-report",
                "--no-bake",
                "--method",
                m,
                "--scores",
                s(&runf.join("val_scores.csv")),
                "--model",
                s(&runf.join("model.onnx")),
                "-o",
                s(p),
            ],
        );
    }
    let model = runf.join("model.onnx");
    let part = |k: usize| d.path().join(format!("s{k}.csv"));
    let score = |k: usize, cal: &Path| {
        vec![
            "--model".to_string(),
            s(&model).to_string(),
            "--calibration".into(),
            s(cal).into(),
            s(&f.patches).into(),
            "-o".into(),
            s(&part(k)).into(),
            "--shard".into(),
            format!("{k}/3"),
            "-q".into(),
        ]
    };
    for k in 1..=3 {
        let a_args = score(k, &a);
        run_ok("infer", &a_args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    let one = d.path().join("one.csv");
    run_ok(
        "infer",
        &[
            "--model",
            s(&model),
            "--calibration",
            s(&a),
            s(&f.patches),
            "-o",
            s(&one),
            "-q",
        ],
    );
    let merged = d.path().join("merged.csv");
    let b_args = score(2, &b);
    let b_args: Vec<&str> = b_args.iter().map(String::as_str).collect();
    let mut check = |when: &str| {
        let _ = std::fs::remove_file(&merged);
        let r = run(
            "infer",
            &["merge", s(&part(1)), s(&part(2)), s(&part(3)), "-o", s(&merged)],
        );
        if r.ok {
            // Merged only if every part is of calibration A: what one run with A writes.
            assert_eq!(
                std::fs::read(&merged).expect("merged"),
                std::fs::read(&one).expect("one"),
                "{when}: merged rows of two calibrations"
            );
        } else {
            assert!(
                r.stderr.contains("differ from") || r.stderr.contains("not the output its record"),
                "{when}: {}",
                r.stderr
            );
        }
    };
    let commits = kill_loop("infer", &b_args, &mut check);
    assert!(commits >= 2, "{commits}");
}

#[test]
fn a_training_run_killed_while_it_exported_was_calibrated_against_another_model() {
    let d = tempfile::tempdir().expect("tmp");
    let patches = synth(d.path(), 8, 4, 16, 9);
    let out = d.path().join("run");
    let args = [
        "train",
        "--data",
        s(&patches),
        "--out",
        s(&out),
        "--cube-size",
        "16",
        "--width",
        "2",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--force",
        "-q",
    ];
    let args: Vec<&str> = args.to_vec();
    let mut n = 1;
    // Every commit of a first run (checkpoints, metrics, the export), the run folder then
    // read as `calibrate RUN` reads it.
    while killed_after_commit("trainer", &args, n) {
        let r = run(
            "calibrate",
            &["--bootstrap", "0", "--no-report", "--method", "platt", s(&out)],
        );
        if r.ok {
            // Calibrated: against the model its scores came from.
            let cal = std::fs::read_to_string(out.join("calibration.yaml")).expect("yaml");
            let sha = files::sha256_file(&out.join("model.onnx")).expect("sha");
            assert!(cal.contains(&sha), "commit {n}: calibrated for another model");
        } else {
            // Refused by name: an unfinished run, a missing file, two runs mixed, or (a
            // two-epoch model) scores no calibration can use.
            assert!(
                ["did not finish", "not found", "mixes two runs", "rank positives higher"]
                    .iter()
                    .any(|w| r.stderr.contains(w)),
                "commit {n}: {}",
                r.stderr
            );
        }
        let _ = std::fs::remove_file(out.join("calibration.yaml"));
        n += 1;
        assert!(n < 200);
    }
    assert!(n > 5, "{n} commits");
    // The summary records what it commits.
    let summary = std::fs::read_to_string(out.join("summary.yaml")).expect("summary");
    for f in ["model.onnx", "val_scores.csv", "parity.yaml"] {
        let sha = files::sha256_file(&out.join(f)).expect("sha");
        assert!(summary.contains(&sha), "{f} not recorded");
    }
    // A model swapped in afterwards: calibrate refuses the folder.
    std::fs::write(
        out.join("val_scores.csv"),
        std::fs::read_to_string(out.join("val_scores.csv")).expect("r") + "",
    )
    .expect("w");
    std::fs::copy(fixture().run.join("model.onnx"), out.join("model.onnx")).expect("copy");
    let r = run_err(
        "calibrate",
        &["--bootstrap", "0", "--no-report", "--method", "platt", s(&out)],
    );
    assert!(r.stderr.contains("mixes two runs"), "{}", r.stderr);
}

#[test]
fn an_interrupted_bundle_left_a_broken_archive() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let out = d.path().join("scorer.tar.gz");
    let model = f.run.join("model.onnx");
    let args = ["bundle", "--model", s(&model), "-o", s(&out)];
    let mut check = |when: &str| {
        if !out.exists() {
            return;
        }
        // Whole, with every file its manifest lists.
        let x = d.path().join("x");
        let _ = std::fs::remove_dir_all(&x);
        std::fs::create_dir(&x).expect("mkdir");
        let ok = Command::new("tar")
            .args(["-xzf", s(&out), "-C", s(&x)])
            .status()
            .expect("tar")
            .success();
        assert!(ok, "{when}: not an archive");
        let manifest = walk_find(&x, "SHA256SUMS");
        let ok = Command::new("sha256sum")
            .args(["-c", "--quiet", s(&manifest)])
            .current_dir(manifest.parent().expect("dir"))
            .status()
            .expect("sha256sum")
            .success();
        assert!(ok, "{when}: manifest does not match");
    };
    kill_loop("infer", &args, &mut check);
}

fn walk_find(dir: &Path, name: &str) -> PathBuf {
    for e in std::fs::read_dir(dir).expect("ls").flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == name) {
            return p;
        }
        if p.is_dir() {
            let q = walk_find(&p, name);
            if q.exists() {
                return q;
            }
        }
    }
    dir.join("absent")
}

#[test]
fn settings_that_mean_nothing_passed_validation() {
    let d = tempfile::tempdir().expect("tmp");
    let f = fixture();
    // A HU window of [−1e38, 1e38] maps every patch to one value.
    let cfg = std::fs::read_to_string(f.run.join("config.yaml")).expect("config");
    let cfg = cfg
        .replace("hu_min: -1000.0", "hu_min: -1.0e38")
        .replace("hu_max: 400.0", "hu_max: 1.0e38")
        .replace(s(&f.run), s(&d.path().join("run")));
    let p = d.path().join("config.yaml");
    std::fs::write(&p, cfg).expect("w");
    let r = run_err("trainer", &["train", "--config", s(&p)]);
    assert!(
        r.stderr.contains("HU window [-1e38, 1e38]") && r.stderr.contains("no CT"),
        "{}",
        r.stderr
    );
    assert!(!d.path().join("run").exists());
    let src = f.run.join("model.onnx");
    for (flags, want) in [
        (vec!["--hu-min", "-1e38", "--hu-max", "1e38"], "HU window"),
        (vec!["--hu-min", "3000", "--hu-max", "3005"], "narrower"),
        (
            vec!["--hu-min", "-3000", "--hu-max", "-2000"],
            "outside the HU of air and tissue",
        ),
        (vec!["--out-min", "0", "--out-max", "1e-30"], "output range"),
    ] {
        let m = d.path().join("m.onnx");
        let mut a = vec!["import", s(&src), "-o", s(&m), "--output-kind", "logit"];
        a.extend(flags);
        let r = run_err("infer", &a);
        assert!(r.stderr.contains(want), "{want}: {}", r.stderr);
    }
    // A model of ours imported again (its node named `logit` no longer collides).
    let m = d.path().join("again.onnx");
    run_ok(
        "infer",
        &[
            "import",
            s(&src),
            "-o",
            s(&m),
            "--output-kind",
            "logit",
            "--like",
            s(&src),
        ],
    );
    // Cubes of fewer than 8 voxels, spacings of 1e-30 or 1e300 mm.
    let scans = chain_tests::workspace().join("../shared/data/lidc-idri-0002");
    for (size, spacing, want) in [
        ("4", "1", "8 to 512"),
        ("64", "1e-30", "spacing"),
        ("64", "1e300", "spacing"),
    ] {
        let r = run_err(
            "scans",
            &[
                "prepare",
                "--scans",
                s(&scans),
                "--format",
                "metaimage",
                "--annotations",
                s(&p),
                "--candidates",
                s(&p),
                "--out",
                s(&d.path().join("prep")),
                "--size-mm",
                size,
                "--spacing-mm",
                spacing,
            ],
        );
        assert!(
            r.stderr.contains(want) && !r.stderr.contains("singular"),
            "{size} {spacing}: {}",
            r.stderr
        );
    }
}

/// A sweep over a folder whose series names hold commas, quotes and spaces.
fn comma_sweep(dir: &Path, out: &str) -> PathBuf {
    let patches = synth(dir, 8, 4, 16, 11);
    let idx = patches.join("patch_index.csv");
    let text = std::fs::read_to_string(&idx).expect("index");
    let (h, rows) = read_csv(&idx);
    let ui = col(&h, "seriesuid");
    let mut w = csv::Writer::from_path(&idx).expect("w");
    w.write_record(&h).expect("h");
    for mut r in rows {
        r[ui] = format!("{}, \"site A\"", r[ui]);
        w.write_record(&r).expect("r");
    }
    w.flush().expect("flush");
    assert_ne!(std::fs::read_to_string(&idx).expect("r"), text);
    let file = dir.join(format!("{out}.yaml"));
    std::fs::write(
        &file,
        format!(
            "config:\n  data: {}\n  out: unused\n  model: {{ width: 2 }}\n  preprocess: {{ cube_size: 16 }}\n  \
             train: {{ epochs: 1, batch_size: 8, device: cpu }}\nout: {}\nfolds: 2\ngrid:\n  model.width: [2, 3]\n",
            s(&patches),
            s(&dir.join(out))
        ),
    )
    .expect("w");
    file
}

#[test]
fn a_comma_in_a_seriesuid_shifted_the_columns_of_a_sweeps_oof_scores() {
    let d = tempfile::tempdir().expect("tmp");
    let file = comma_sweep(d.path(), "sw");
    run_ok("trainer", &["sweep", s(&file), "-q"]);
    let out = d.path().join("sw");
    for cell in ["cell_00", "cell_01"] {
        let (h, rows) = read_csv(&out.join(cell).join("oof_scores.csv"));
        assert_eq!(h, ["patch_file", "seriesuid", "label", "logit"]);
        assert_eq!(rows.len(), 32);
        assert!(
            rows.iter().all(|r| r.len() == 4 && r[1].ends_with(", \"site A\"")),
            "{rows:?}"
        );
    }
    // froc compare reads them as they are.
    let r = run_ok(
        "froc",
        &[
            "compare",
            s(&out.join("cell_00/oof_scores.csv")),
            s(&out.join("cell_01/oof_scores.csv")),
            "--bootstrap",
            "0",
        ],
    );
    assert!(r.stdout.contains("from 8 series"), "{}", r.stdout);
    // The summary's commit point after a kill at every instant of --collect: present only
    // with the digests of the files beside it.
    let md = out.join("sweep_summary.md");
    let mut check = |when: &str| {
        let Ok(text) = std::fs::read_to_string(&md) else {
            return;
        };
        for line in text.lines().filter(|l| l.starts_with("| `")) {
            let mut parts = line.split('`');
            let name = parts.nth(1).expect("name");
            let sha = line.rsplit('|').nth(1).expect("sha").trim();
            assert_eq!(
                files::sha256_file(&out.join(name)).expect("sha"),
                sha,
                "{when}: {name} is not the file the summary names"
            );
        }
    };
    let commits = kill_loop("trainer", &["sweep", s(&file), "--collect", "-q"], &mut check);
    assert!(commits >= 4, "{commits}");
}

