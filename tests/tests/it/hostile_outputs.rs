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

/// A copy of the fixture's patch folder (tests must not change the shared one).
fn patches_copy(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).expect("mkdir");
    for e in std::fs::read_dir(&fixture().patches).expect("ls").flatten() {
        if e.file_type().expect("type").is_file() {
            std::fs::copy(e.path(), out.join(e.file_name())).expect("copy");
        }
    }
    out
}

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
fn infer_resume_kept_the_row_of_another_file_of_the_same_name() {
    let d = tempfile::tempdir().expect("tmp");
    let model = fixture().run.join("model.onnx");
    let a = patches_copy(d.path(), "a");
    let out = d.path().join("scores.csv");
    run_ok("infer", &["--model", s(&model), s(&a), "-o", s(&out), "-q"]);
    // Another folder: the same names, one file with other contents.
    let b = patches_copy(d.path(), "b");
    std::fs::copy(b.join("s002_p002.npy"), b.join("s001_p001.npy")).expect("copy");
    let r = run_ok("infer", &["--model", s(&model), s(&b), "-o", s(&out), "--resume"]);
    assert!(r.stderr.contains("1 scored again: their files changed"), "{}", r.stderr);
    // Every row is what a fresh run over b gives.
    let fresh = d.path().join("fresh.csv");
    run_ok("infer", &["--model", s(&model), s(&b), "-o", s(&fresh), "-q"]);
    let sorted = |p: &Path| {
        let (h, mut rows) = read_csv(p);
        rows.sort();
        (h, rows)
    };
    assert_eq!(sorted(&out), sorted(&fresh));
    // Another test-time augmentation gives every patch another input: all scored again.
    let r = run_ok(
        "infer",
        &["--model", s(&model), s(&b), "-o", s(&out), "--resume", "--tta", "flips"],
    );
    assert!(
        r.stderr.contains("0 kept from the earlier output, 80 scored again"),
        "{}",
        r.stderr
    );
    // An output re-saved with Windows line ends is not resumed (its rows would be copied
    // with them).
    let text = std::fs::read_to_string(&out).expect("r");
    std::fs::write(&out, text.replace('\n', "\r\n")).expect("w");
    let r = run_err(
        "infer",
        &["--model", s(&model), s(&b), "-o", s(&out), "--resume", "--tta", "flips"],
    );
    assert!(r.stderr.contains("line ends"), "{}", r.stderr);
}

#[test]
fn infer_deleted_a_file_at_its_errors_path_it_did_not_write() {
    let d = tempfile::tempdir().expect("tmp");
    let model = fixture().run.join("model.onnx");
    let p = patches_copy(d.path(), "p");
    let theirs = d.path().join("finished_scores.csv");
    std::fs::write(&theirs, "seriesuid,probability\n1.2.3,0.9\n").expect("w");
    let out = d.path().join("scores.csv");
    let r = run_err(
        "infer",
        &["--model", s(&model), s(&p), "-o", s(&out), "--errors", s(&theirs)],
    );
    assert!(
        r.stderr.contains("not a errors list") || r.stderr.contains("is not a"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&theirs).expect("r"),
        "seriesuid,probability\n1.2.3,0.9\n"
    );
    assert!(!out.exists());
    // The default errors path beside the output, held by another file: the same.
    let beside = d.path().join("scores.csv.errors.csv");
    std::fs::write(&beside, "my notes\n").expect("w");
    run_err("infer", &["--model", s(&model), s(&p), "-o", s(&out)]);
    assert_eq!(std::fs::read_to_string(&beside).expect("r"), "my notes\n");
    // And an output path holding a file of another kind.
    std::fs::remove_file(&beside).expect("rm");
    std::fs::write(&out, "not scores\n").expect("w");
    let r = run_err("infer", &["--model", s(&model), s(&p), "-o", s(&out)]);
    assert!(r.stderr.contains("not a scores output"), "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&out).expect("r"), "not scores\n");
    // Our own earlier outputs are replaced as before.
    std::fs::remove_file(&out).expect("rm");
    run_ok("infer", &["--model", s(&model), s(&p), "-o", s(&out), "-q"]);
    run_ok("infer", &["--model", s(&model), s(&p), "-o", s(&out), "-q"]);
}

#[test]
fn one_blank_seriesuid_switched_calibrate_to_per_patch_folds() {
    let d = tempfile::tempdir().expect("tmp");
    let runf = fixture().run.clone();
    let text = std::fs::read_to_string(runf.join("val_scores.csv")).expect("r");
    let (h, _) = read_csv(&runf.join("val_scores.csv"));
    let ui = col(&h, "seriesuid");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut fields: Vec<String> = lines[3].split(',').map(str::to_string).collect();
    fields[ui] = String::new();
    lines[3] = fields.join(",");
    let scores = d.path().join("scores.csv");
    std::fs::write(&scores, lines.join("\n") + "\n").expect("w");
    let r = run_err(
        "calibrate",
        &[
            "--scores",
            s(&scores),
            "--model",
            s(&runf.join("model.onnx")),
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
        "calibrate",
        &[
            "--scores",
            s(&scores),
            "--model",
            s(&runf.join("model.onnx")),
            "-o",
            s(&d.path().join("c.yaml")),
        ],
    );
    assert!(r.stderr.contains("line 3"), "{}", r.stderr);
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
            Command::new(bin("trainer"))
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
    let r = run_err("trainer", &["sweep", s(&p), "--list"]);
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
        let mut c = Command::new(bin("trainer"))
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

#[test]
fn merge_and_resume_disagreed_with_one_run_on_names_with_commas_newlines_and_repeated_luna16_rows() {
    let d = tempfile::tempdir().expect("tmp");
    let model = fixture().run.join("model.onnx");
    let p = patches_copy(d.path(), "p");
    for (from, to) in [
        ("s001_p001.npy", "a,b.npy"),
        ("s001_p002.npy", "quote\"d.npy"),
        ("s001_p003.npy", "new\nline.npy"),
    ] {
        std::fs::rename(p.join(from), p.join(to)).expect("rename");
    }
    let one = d.path().join("one.csv");
    run_ok("infer", &["--model", s(&model), s(&p), "-o", s(&one), "-q"]);
    let text = std::fs::read_to_string(&one).expect("r");
    assert!(
        text.contains("\"new\nline.npy\"") && text.contains("\"a,b.npy\""),
        "{text}"
    );
    // Three shards merged: one run's bytes.
    let parts: Vec<PathBuf> = (1..=3).map(|k| d.path().join(format!("s{k}.csv"))).collect();
    for (k, part) in parts.iter().enumerate() {
        let shard = format!("{}/3", k + 1);
        run_ok(
            "infer",
            &["--model", s(&model), s(&p), "-o", s(part), "--shard", &shard, "-q"],
        );
    }
    let merged = d.path().join("merged.csv");
    run_ok(
        "infer",
        &["merge", s(&parts[0]), s(&parts[1]), s(&parts[2]), "-o", s(&merged)],
    );
    assert_eq!(std::fs::read(&merged).expect("m"), std::fs::read(&one).expect("one"));
    // Resumed from an output of part of the folder: the rows of one run.
    let resumed = d.path().join("resumed.csv");
    std::fs::copy(&parts[0], &resumed).expect("copy");
    let r = run_ok("infer", &["--model", s(&model), s(&p), "-o", s(&resumed), "--resume"]);
    assert!(r.stderr.contains("kept from the earlier output"), "{}", r.stderr);
    let sorted = |f: &Path| {
        let (h, mut rows) = read_csv(f);
        rows.sort();
        (h, rows)
    };
    assert_eq!(sorted(&resumed), sorted(&one));

    // LUNA16 submissions name no patch: two patches at one place with one content give two
    // equal rows, in one run and in a merge alike.
    let q = patches_copy(d.path(), "q");
    std::fs::copy(q.join("s002_p001.npy"), q.join("s002_p001_again.npy")).expect("copy");
    let idx = q.join("patch_index.csv");
    let (h, mut rows) = read_csv(&idx);
    let dup = rows
        .iter()
        .find(|r| r[col(&h, "patch_file")] == "s002_p001.npy")
        .expect("row")
        .clone();
    let mut again = dup.clone();
    again[col(&h, "patch_file")] = "s002_p001_again.npy".into();
    rows.push(again);
    let mut w = csv::Writer::from_path(&idx).expect("w");
    w.write_record(&h).expect("h");
    for r in &rows {
        w.write_record(r).expect("r");
    }
    w.flush().expect("flush");
    let one = d.path().join("one_luna.csv");
    run_ok(
        "infer",
        &[
            "--model",
            s(&model),
            "--index",
            s(&idx),
            "--format",
            "luna16",
            "-o",
            s(&one),
            "-q",
        ],
    );
    let lines: Vec<String> = std::fs::read_to_string(&one)
        .expect("r")
        .lines()
        .map(str::to_string)
        .collect();
    let mut seen = std::collections::HashSet::new();
    assert!(
        lines.iter().any(|l| !seen.insert(l.clone())),
        "no repeated row to test with"
    );
    let parts: Vec<PathBuf> = (1..=4).map(|k| d.path().join(format!("l{k}.csv"))).collect();
    for (k, part) in parts.iter().enumerate() {
        let shard = format!("{}/4", k + 1);
        run_ok(
            "infer",
            &[
                "--model",
                s(&model),
                "--index",
                s(&idx),
                "--format",
                "luna16",
                "-o",
                s(part),
                "--shard",
                &shard,
                "-q",
            ],
        );
    }
    let merged = d.path().join("merged_luna.csv");
    let mut a = vec!["merge"];
    a.extend(parts.iter().map(|p| s(p)));
    a.extend(["-o", s(&merged)]);
    run_ok("infer", &a);
    assert_eq!(std::fs::read(&merged).expect("m"), std::fs::read(&one).expect("one"));
}
