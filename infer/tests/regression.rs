//! Regression tests of `infer`, one per bug, run on the binary Cargo builds for them: an
//! output that names an input, a special file where a patch should be, the same file twice,
//! a patch far larger than its cube, a NaN logit or centre, a resume over other inputs or
//! over files of the same name with other contents, an errors path held by another file,
//! merge and resume on names with commas and newlines. Each
//! stands for its class (the README's "Failure behaviour"); the ones that cross binaries
//! are in `tests/tests/it/regression.rs`.
use std::io::Write;
use std::path::{Path, PathBuf};

mod common;
use common::{fixture, infer, patches_copy, INFER, PATCHES};

use chain_tests::fixtures::mkfifo;
use chain_tests::{col, read_csv, run, run_err, run_ok, s};

#[test]
fn infer_output_equal_to_a_patch_turned_the_patch_into_a_csv() {
    let d = tempfile::tempdir().expect("tmp");
    let p = patches_copy(d.path(), "patches");
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
    let r = infer(&[s(&p), "-o", s(&d.path().join("x.csv")), "--errors", s(&fixture().model)]);
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
    let p = patches_copy(d.path(), "patches");
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
    let p = patches_copy(d.path(), "patches");
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
    assert_eq!(rows.len(), PATCHES);
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
}

#[test]
fn the_same_file_twice_and_odd_names_were_scored_silently() {
    let d = tempfile::tempdir().expect("tmp");
    let p = patches_copy(d.path(), "patches");
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
    assert_eq!(read_csv(&out).1.len(), PATCHES);
}

// ---- Memory bounded by the cube ----------------------------------------------------------

#[test]
fn a_huge_npy_was_read_whole_and_aborted_the_process() {
    let d = tempfile::tempdir().expect("tmp");
    let p = patches_copy(d.path(), "patches");
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
    let m = &fixture().model;
    let r = run(INFER, &["--model", s(m), s(&p), "-o", s(&out), "--device", "cpu"]);
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
    let mut m = models::onnx::read_model(&f.model).expect("model");
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
        INFER,
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
    assert_eq!(errs.len(), PATCHES);
}

#[test]
fn nan_index_centres_reached_the_luna16_output() {
    let d = tempfile::tempdir().expect("tmp");
    let p = patches_copy(d.path(), "patches");
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
    assert_eq!(body.lines().count(), PATCHES);
}

// ---- Settings out of range ----------------------------------------------------------------

#[test]
fn infer_resume_kept_rows_of_inputs_no_longer_given() {
    let d = tempfile::tempdir().expect("tmp");
    let p = patches_copy(d.path(), "patches");
    let out = d.path().join("scores.csv");
    let r = infer(&[s(&p), "-o", s(&out)]);
    assert!(r.ok, "{}", r.stderr);
    std::fs::remove_file(p.join("s001_p001.npy")).expect("rm");
    let m = &fixture().model;
    let r = run(
        INFER,
        &["--model", s(m), s(&p), "-o", s(&out), "--resume", "--device", "cpu"],
    );
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stderr.contains("1 dropped from it: no longer among the inputs"),
        "{}",
        r.stderr
    );
    let (_, rows) = read_csv(&out);
    assert_eq!(rows.len(), PATCHES - 1);
    assert!(!rows.iter().any(|r| r[0] == "s001_p001.npy"));
}

#[test]
fn infer_resume_kept_the_row_of_another_file_of_the_same_name() {
    let d = tempfile::tempdir().expect("tmp");
    let model = fixture().model.clone();
    let a = patches_copy(d.path(), "a");
    let out = d.path().join("scores.csv");
    run_ok(INFER, &["--model", s(&model), s(&a), "-o", s(&out), "-q"]);
    // Another folder: the same names, one file with other contents.
    let b = patches_copy(d.path(), "b");
    std::fs::copy(b.join("s002_p002.npy"), b.join("s001_p001.npy")).expect("copy");
    let r = run_ok(INFER, &["--model", s(&model), s(&b), "-o", s(&out), "--resume"]);
    assert!(r.stderr.contains("1 scored again: their files changed"), "{}", r.stderr);
    // Every row is what a fresh run over b gives.
    let fresh = d.path().join("fresh.csv");
    run_ok(INFER, &["--model", s(&model), s(&b), "-o", s(&fresh), "-q"]);
    let sorted = |p: &Path| {
        let (h, mut rows) = read_csv(p);
        rows.sort();
        (h, rows)
    };
    assert_eq!(sorted(&out), sorted(&fresh));
    // Another test-time augmentation gives every patch another input: all scored again.
    let r = run_ok(
        INFER,
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
        INFER,
        &["--model", s(&model), s(&b), "-o", s(&out), "--resume", "--tta", "flips"],
    );
    assert!(r.stderr.contains("line ends"), "{}", r.stderr);
}

#[test]
fn infer_deleted_a_file_at_its_errors_path_it_did_not_write() {
    let d = tempfile::tempdir().expect("tmp");
    let model = fixture().model.clone();
    let p = patches_copy(d.path(), "p");
    let theirs = d.path().join("finished_scores.csv");
    std::fs::write(&theirs, "seriesuid,probability\n1.2.3,0.9\n").expect("w");
    let out = d.path().join("scores.csv");
    let r = run_err(
        INFER,
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
    run_err(INFER, &["--model", s(&model), s(&p), "-o", s(&out)]);
    assert_eq!(std::fs::read_to_string(&beside).expect("r"), "my notes\n");
    // And an output path holding a file of another kind.
    std::fs::remove_file(&beside).expect("rm");
    std::fs::write(&out, "not scores\n").expect("w");
    let r = run_err(INFER, &["--model", s(&model), s(&p), "-o", s(&out)]);
    assert!(r.stderr.contains("not a scores output"), "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&out).expect("r"), "not scores\n");
    // Our own earlier outputs are replaced as before.
    std::fs::remove_file(&out).expect("rm");
    run_ok(INFER, &["--model", s(&model), s(&p), "-o", s(&out), "-q"]);
    run_ok(INFER, &["--model", s(&model), s(&p), "-o", s(&out), "-q"]);
}

#[test]
fn merge_and_resume_disagreed_with_one_run_on_names_with_commas_newlines_and_repeated_luna16_rows() {
    let d = tempfile::tempdir().expect("tmp");
    let model = fixture().model.clone();
    let p = patches_copy(d.path(), "p");
    for (from, to) in [
        ("s001_p001.npy", "a,b.npy"),
        ("s001_p002.npy", "quote\"d.npy"),
        ("s001_p003.npy", "new\nline.npy"),
    ] {
        std::fs::rename(p.join(from), p.join(to)).expect("rename");
    }
    let one = d.path().join("one.csv");
    run_ok(INFER, &["--model", s(&model), s(&p), "-o", s(&one), "-q"]);
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
            INFER,
            &["--model", s(&model), s(&p), "-o", s(part), "--shard", &shard, "-q"],
        );
    }
    let merged = d.path().join("merged.csv");
    run_ok(
        INFER,
        &["merge", s(&parts[0]), s(&parts[1]), s(&parts[2]), "-o", s(&merged)],
    );
    assert_eq!(std::fs::read(&merged).expect("m"), std::fs::read(&one).expect("one"));
    // Resumed from an output of part of the folder: the rows of one run.
    let resumed = d.path().join("resumed.csv");
    std::fs::copy(&parts[0], &resumed).expect("copy");
    let r = run_ok(INFER, &["--model", s(&model), s(&p), "-o", s(&resumed), "--resume"]);
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
        INFER,
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
            INFER,
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
    run_ok(INFER, &a);
    assert_eq!(std::fs::read(&merged).expect("m"), std::fs::read(&one).expect("one"));
}
