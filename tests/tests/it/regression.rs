//! Regression tests for hostile input, special files and concurrent use, one per bug,
//! through the real binaries. Each stands for a class (see the README's "Failure
//! behaviour"): an output that names an input, a special file, two processes at once,
//! memory beyond the cube, non-finite values, settings out of range, duplicates, resume
//! integrity.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use chain_tests::{bin, read_csv, run, run_err, run_ok, s, synth};

use crate::fixture::{fixture, CUBE};

/// Makes a FIFO at `p` (coreutils' mkfifo).
fn mkfifo(p: &Path) {
    let ok = Command::new("mkfifo").arg(p).status().expect("mkfifo").success();
    assert!(ok, "mkfifo {}", p.display());
}

/// Holds the OS lock on `path` as another process running there would, and says who it is.
fn hold(path: &Path) -> std::fs::File {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .expect("lock file");
    f.lock().expect("lock");
    writeln!(f, "PID 424242: trainer train --out elsewhere").expect("w");
    f
}

/// A copy of the fixture's patch folder (tests must not change the shared one).
fn patches_copy(dir: &Path) -> PathBuf {
    let f = fixture();
    let out = dir.join("patches");
    std::fs::create_dir(&out).expect("mkdir");
    for e in std::fs::read_dir(&f.patches).expect("ls").flatten() {
        if e.file_type().expect("type").is_file() {
            std::fs::copy(e.path(), out.join(e.file_name())).expect("copy");
        }
    }
    out
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

/// The fixture's patches scored into a LUNA16 results file at `out`.
fn luna16_results(out: &Path) {
    let f = fixture();
    run_ok(
        "infer",
        &[
            "--model",
            s(&model()),
            "--index",
            s(&f.patches),
            "--format",
            "luna16",
            "-o",
            s(out),
            "-q",
        ],
    );
}

fn model() -> PathBuf {
    fixture().run.join("model.onnx")
}

fn infer(args: &[&str]) -> chain_tests::Run {
    let m = model();
    let mut a = vec!["--model", s(&m), "--device", "cpu", "-q"];
    a.extend_from_slice(args);
    run("infer", &a)
}

// ---- Outputs that name inputs (or each other) -------------------------------------------

#[test]
fn infer_output_equal_to_a_patch_turned_the_patch_into_a_csv() {
    let d = tempfile::tempdir().expect("tmp");
    let p = patches_copy(d.path());
    let patch = p.join("s001_p001.npy");
    let before = std::fs::read(&patch).expect("read");
    let r = infer(&[s(&p), "-o", s(&patch)]);
    assert!(!r.ok && r.stderr.contains("an input of this run"), "{}", r.stderr);
    assert_eq!(std::fs::read(&patch).expect("read"), before, "the patch was changed");
    // The same file through a symlink, a hard link and a `..` detour.
    let link = d.path().join("scores.csv");
    std::os::unix::fs::symlink(&patch, &link).expect("ln");
    let hard = d.path().join("hard.csv");
    std::fs::hard_link(&patch, &hard).expect("hard link");
    std::fs::create_dir(d.path().join("sub")).expect("mkdir");
    let detour = d.path().join("sub/../patches/s001_p001.npy");
    for out in [&link, &hard, &detour] {
        let r = infer(&[s(&p), "-o", s(out)]);
        assert!(
            !r.ok && r.stderr.contains("an input of this run"),
            "{}: {}",
            out.display(),
            r.stderr
        );
    }
    // The errors file is an output too, and two outputs may not be one file.
    let r = infer(&[s(&p), "-o", s(&d.path().join("x.csv")), "--errors", s(&model())]);
    assert!(!r.ok && r.stderr.contains("an input of this run"), "{}", r.stderr);
    let same = d.path().join("same.csv");
    let r = infer(&[s(&p), "-o", s(&same), "--errors", s(&same)]);
    assert!(!r.ok && r.stderr.contains("are the same file"), "{}", r.stderr);
    assert!(!same.exists());
    assert_eq!(std::fs::read(&patch).expect("read"), before);
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
fn stdout_with_fail_fast_wrote_rows_before_failing() {
    let d = tempfile::tempdir().expect("tmp");
    let p = patches_copy(d.path());
    // A bad file sorted last: the good ones before it were already printed.
    std::fs::write(p.join("zz_bad.npy"), b"not a patch").expect("w");
    let r = infer(&[s(&p), "-o", "-", "--fail-fast", "--batch-size", "4"]);
    assert!(!r.ok && r.stderr.contains("zz_bad.npy"), "{}", r.stderr);
    assert!(r.stdout.is_empty(), "rows written before the failure:\n{}", r.stdout);
    // Without --fail-fast the good rows stream and the bad file is reported.
    let r = infer(&[s(&p), "-o", "-", "--batch-size", "4"]);
    assert!(!r.ok && r.stdout.lines().count() > 10, "{}", r.stderr);
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
fn a_fifo_named_like_a_patch_blocked_infer_forever() {
    let d = tempfile::tempdir().expect("tmp");
    let p = patches_copy(d.path());
    mkfifo(&p.join("x.npy"));
    std::fs::create_dir(p.join("folder.npy")).expect("mkdir");
    let sock = p.join("sock.npy");
    let _l = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    let out = d.path().join("scores.csv");
    // Folder mode: each reported, every good file scored, exit non-zero.
    let r = infer(&[s(&p), "-o", s(&out)]);
    assert!(!r.ok);
    for (name, why) in [("x.npy", "FIFO"), ("folder.npy", "a folder"), ("sock.npy", "a socket")] {
        assert!(
            r.stderr.lines().any(|l| l.contains(name) && l.contains(why)),
            "{name}: {}",
            r.stderr
        );
    }
    let (_, rows) = read_csv(&out);
    assert_eq!(rows.len(), crate::fixture::PATCHES);
    // Explicit arguments, a device among them: reported, never waited on.
    let r = infer(&[
        s(&p.join("x.npy")),
        "/dev/zero",
        s(&p.join("s001_p001.npy")),
        "-o",
        s(&out),
    ]);
    assert!(!r.ok, "{}", r.stderr);
    assert!(
        r.stderr.contains("x.npy") && r.stderr.contains("/dev/zero"),
        "{}",
        r.stderr
    );
    assert_eq!(read_csv(&out).1.len(), 1);
    // The other binaries' inputs: a FIFO as scores, config, results, scan.
    let fifo = d.path().join("fifo.csv");
    mkfifo(&fifo);
    let r = run_err(
        "calibrate",
        &[
            "--scores",
            s(&fifo),
            "--model",
            s(&model()),
            "-o",
            s(&d.path().join("c.yaml")),
        ],
    );
    assert!(r.stderr.contains("FIFO"), "{}", r.stderr);
    let r = run_err("trainer", &["train", "--config", s(&fifo)]);
    assert!(r.stderr.contains("FIFO"), "{}", r.stderr);
    let r = run_err(
        "froc",
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
fn the_same_file_twice_and_odd_names_were_scored_silently() {
    let d = tempfile::tempdir().expect("tmp");
    let p = patches_copy(d.path());
    let a = p.join("s001_p001.npy");
    let out = d.path().join("scores.csv");
    let r = infer(&[s(&a), s(&a), s(&p.join(".").join("s001_p001.npy")), "-o", s(&out)]);
    assert!(!r.ok && r.stderr.matches("scored once").count() == 2, "{}", r.stderr);
    assert_eq!(read_csv(&out).1.len(), 1);
    // A name that is not UTF-8 is refused on its own: two such names could not be told apart.
    use std::os::unix::ffi::OsStrExt;
    let odd = p.join(std::ffi::OsStr::from_bytes(b"odd\xff.npy"));
    std::fs::copy(&a, &odd).expect("copy");
    let r = infer(&[s(&p), "-o", s(&out)]);
    assert!(!r.ok && r.stderr.contains("not valid UTF-8"), "{}", r.stderr);
    // A duplicated index row is reported, the first scored.
    let idx = p.join("patch_index.csv");
    let mut text = std::fs::read_to_string(&idx).expect("read");
    let second = text.lines().nth(1).expect("row").to_string();
    text.push_str(&second);
    text.push('\n');
    std::fs::write(&idx, text).expect("w");
    let r = infer(&["--index", s(&idx), "-o", s(&out)]);
    assert!(
        !r.ok && r.stderr.contains("listed again (first on line 2)"),
        "{}",
        r.stderr
    );
    assert_eq!(read_csv(&out).1.len(), crate::fixture::PATCHES);
}

// ---- Memory bounded by the cube ----------------------------------------------------------

#[test]
fn a_huge_npy_was_read_whole_and_aborted_the_process() {
    let d = tempfile::tempdir().expect("tmp");
    let p = patches_copy(d.path());
    // 1200³ int16 (3.4 GB, stored sparse): read through the 16³ crop only.
    let n = 1200usize;
    let head = models::patch::npy_header_bytes(&format!(
        "{{'descr': '<i2', 'fortran_order': False, 'shape': ({n}, {n}, {n}), }}"
    ));
    let mut f = std::fs::File::create(p.join("huge.npy")).expect("create");
    f.write_all(&head).expect("w");
    f.set_len((head.len() + n * n * n * 2) as u64).expect("sparse");
    drop(f);
    let out = d.path().join("scores.csv");
    let m = model();
    let r = run("infer", &["--model", s(&m), s(&p), "-o", s(&out), "--device", "cpu"]);
    assert!(r.ok, "{}", r.stderr);
    let (_, rows) = read_csv(&out);
    assert!(rows.iter().any(|r| r[0] == "huge.npy"));
    let rss: f64 = r
        .stderr
        .split("peak RSS ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("peak RSS in the summary");
    assert!(rss < 1024.0, "peak RSS {rss} MiB for a 3.4 GB file");
}

// ---- Non-finite values -------------------------------------------------------------------

#[test]
fn a_nan_logit_became_a_silent_negative() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    // The fixture's model with its last bias NaN: every logit is NaN.
    let mut m = models::onnx::read_model(&model()).expect("model");
    let g = m.graph.as_mut().expect("graph");
    let bias = g
        .initializer
        .iter_mut()
        .rev()
        .find(|t| t.name.as_deref().is_some_and(|n| n.ends_with("bias")))
        .expect("a bias");
    let n = bias.raw_data.as_ref().map_or(0, Vec::len) / 4;
    bias.raw_data = Some(std::iter::repeat_n(f32::NAN.to_le_bytes(), n).flatten().collect());
    let nan_model = d.path().join("nan.onnx");
    std::fs::write(&nan_model, models::onnx::to_bytes(&m)).expect("w");
    let out = d.path().join("scores.csv");
    let r = run(
        "infer",
        &[
            "--model",
            s(&nan_model),
            s(&f.patches),
            "-o",
            s(&out),
            "--device",
            "cpu",
            "-q",
        ],
    );
    assert!(!r.ok && r.stderr.contains("logit is NaN (not finite)"), "{}", r.stderr);
    let (_, rows) = read_csv(&out);
    assert!(rows.is_empty(), "rows with a NaN logit were written: {rows:?}");
    let (_, errs) = read_csv(&d.path().join("scores.csv.errors.csv"));
    assert_eq!(errs.len(), crate::fixture::PATCHES);
}

#[test]
fn calibrate_fitted_garbage_on_absurd_logits() {
    let d = tempfile::tempdir().expect("tmp");
    let val = fixture().run.join("val_scores.csv");
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
    let m = model();
    // Beyond what a float32 model can output: an error naming the line.
    let p = write("huge.csv", "1e308");
    let r = run_err(
        "calibrate",
        &["--scores", s(&p), "--model", s(&m), "-o", s(&d.path().join("a/c.yaml"))],
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
        "calibrate",
        &[
            "--scores",
            s(&p),
            "--model",
            s(&m),
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

#[test]
fn nan_index_centres_reached_the_luna16_output() {
    let d = tempfile::tempdir().expect("tmp");
    let p = patches_copy(d.path());
    let idx = p.join("patch_index.csv");
    let text = std::fs::read_to_string(&idx).expect("read");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let h: Vec<&str> = lines[0].split(',').collect();
    let cx = h.iter().position(|c| *c == "center_x").expect("center_x");
    let mut f: Vec<String> = lines[1].split(',').map(str::to_string).collect();
    f[cx] = "NaN".into();
    lines[1] = f.join(",");
    std::fs::write(&idx, lines.join("\n") + "\n").expect("w");
    let out = d.path().join("r.csv");
    let r = infer(&["--index", s(&idx), "--format", "luna16", "-o", s(&out)]);
    assert!(!r.ok && r.stderr.contains("center_x is not finite"), "{}", r.stderr);
    let body = std::fs::read_to_string(&out).expect("read");
    assert!(!body.to_lowercase().contains("nan"), "{body}");
    assert_eq!(body.lines().count(), crate::fixture::PATCHES);
}

// ---- Settings out of range ----------------------------------------------------------------

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

#[test]
fn infer_resume_kept_rows_of_inputs_no_longer_given() {
    let d = tempfile::tempdir().expect("tmp");
    let p = patches_copy(d.path());
    let out = d.path().join("scores.csv");
    let r = infer(&[s(&p), "-o", s(&out)]);
    assert!(r.ok, "{}", r.stderr);
    std::fs::remove_file(p.join("s001_p001.npy")).expect("rm");
    let m = model();
    let r = run(
        "infer",
        &["--model", s(&m), s(&p), "-o", s(&out), "--resume", "--device", "cpu"],
    );
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stderr.contains("1 dropped from it: no longer among the inputs"),
        "{}",
        r.stderr
    );
    let (_, rows) = read_csv(&out);
    assert_eq!(rows.len(), crate::fixture::PATCHES - 1);
    assert!(!rows.iter().any(|r| r[0] == "s001_p001.npy"));
}
