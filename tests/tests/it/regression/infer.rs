//! Regression tests of `infer`, one per bug (see `regression/mod.rs`).
use crate::fixture::fixture;
use chain_tests::{read_csv, run, run_err, s};
use std::io::Write;

use super::*;

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
