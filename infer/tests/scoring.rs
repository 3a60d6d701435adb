//! `infer` at full strength on one model: every bad input reported and every good file
//! scored, test-time augmentation and its JSONL output, the same scores on any thread count.
//! Run on the binary Cargo builds for these tests.
use std::path::Path;

use chain_tests::{read_csv, run_err, run_ok, s};
use ndarray::{Array2, Array3};
use ndarray_npy::write_npy;

mod common;
use common::{fixture, INFER, PATCHES};

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
}

#[test]
fn every_bad_input_is_reported_and_every_good_file_scored() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let root = d.path().join("in");
    let sub = root.join("sub");
    std::fs::create_dir_all(&sub).expect("mkdir");
    copy(&f.patches.join("s001_p001.npy"), &root.join("a.npy"));
    copy(&f.patches.join("s001_p002.npy"), &sub.join("b.npy"));
    // Bad files of every kind.
    write_npy(root.join("rank2.npy"), &Array2::<f32>::zeros((4, 4))).expect("w");
    let mut nan = Array3::<f32>::zeros((4, 4, 4));
    nan[[1, 2, 3]] = f32::NAN;
    write_npy(root.join("nan.npy"), &nan).expect("w");
    std::fs::write(root.join("empty.npy"), b"").expect("w");
    let good = std::fs::read(f.patches.join("s001_p003.npy")).expect("r");
    std::fs::write(root.join("truncated.npy"), &good[..good.len() - 100]).expect("w");
    // A header claiming ~90 G elements in a tiny file must be refused, not allocated.
    let mut dict = String::from("{'descr': '<f4', 'fortran_order': False, 'shape': (99999, 99999, 9), }");
    while (11 + dict.len()) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut huge = b"\x93NUMPY\x01\x00".to_vec();
    huge.extend((dict.len() as u16).to_le_bytes());
    huge.extend(dict.as_bytes());
    std::fs::write(root.join("huge.npy"), huge).expect("w");
    std::os::unix::fs::symlink(root.join("gone.npy"), root.join("dangling.npy")).expect("symlink");
    std::os::unix::fs::symlink(&root, sub.join("loop")).expect("symlink loop");
    std::fs::write(root.join("notes.txt"), b"not a patch").expect("w");

    // Without --recursive the sub-folder is not scored.
    let out = d.path().join("flat.csv");
    let r = run_err(
        INFER,
        &[
            "--model",
            s(&f.model),
            s(&root),
            "-o",
            s(&out),
            "-q",
            "--device",
            "cpu",
        ],
    );
    let (_, rows) = read_csv(&out);
    assert_eq!(
        rows.iter().map(|r| r[0].as_str()).collect::<Vec<_>>(),
        ["a.npy"],
        "{}",
        r.stderr
    );

    let out = d.path().join("scores.csv");
    let r = run_err(
        INFER,
        &[
            "--model",
            s(&f.model),
            "--recursive",
            s(&root),
            s(&root.join("notes.txt")),
            "-o",
            s(&out),
            "--device",
            "cpu",
        ],
    );
    for (name, why) in [
        ("rank2.npy", "3-D"),
        ("nan.npy", "non-finite"),
        ("empty.npy", "empty file"),
        ("truncated.npy", "truncated"),
        ("huge.npy", "declares 89998200009 elements"),
        ("dangling.npy", "No such file"),
        ("loop", "symlink loop"),
        ("notes.txt", "not a .npy file"),
    ] {
        assert!(
            r.stderr.lines().any(|l| l.contains(name) && l.contains(why)),
            "no `{name}: …{why}…` in:\n{}",
            r.stderr
        );
    }
    assert!(!r.stderr.contains("panicked"));
    let (_, rows) = read_csv(&out);
    let names: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    let root_s = root.display().to_string();
    assert_eq!(names, [format!("{root_s}/a.npy"), format!("{root_s}/sub/b.npy")]);
    let (h, errs) = read_csv(&d.path().join("scores.csv.errors.csv"));
    assert_eq!(h, ["patch_file", "error"]);
    assert_eq!(errs.len(), 8, "{errs:?}");
    // The good files shared a batch with the bad ones (they close ranks in the batch
    // buffer): their logits are those they get scored on their own.
    let alone = d.path().join("alone.csv");
    run_ok(
        INFER,
        &[
            "--model",
            s(&f.model),
            s(&root.join("a.npy")),
            s(&sub.join("b.npy")),
            "-o",
            s(&alone),
            "-q",
            "--device",
            "cpu",
        ],
    );
    let (ha, alone_rows) = read_csv(&alone);
    let logit = ha.iter().position(|c| c == "logit").expect("logit column");
    for (mixed, own) in rows.iter().zip(&alone_rows) {
        let (a, b): (f64, f64) = (mixed[logit].parse().expect("logit"), own[logit].parse().expect("logit"));
        assert!((a - b).abs() < 1e-5, "{}: {a} among bad files, {b} alone", own[0]);
    }

    // A clean run to the same output removes the earlier errors file.
    run_ok(
        INFER,
        &[
            "--model",
            s(&f.model),
            s(&f.patches),
            "-o",
            s(&out),
            "-q",
            "--device",
            "cpu",
        ],
    );
    assert!(
        !d.path().join("scores.csv.errors.csv").exists(),
        "stale errors file left behind"
    );

    // An output in a folder that does not exist: refused before any work.
    let r = run_err(
        INFER,
        &[
            "--model",
            s(&f.model),
            s(&f.patches),
            "-o",
            s(&d.path().join("no/such/dir/x.csv")),
        ],
    );
    assert!(r.stderr.contains("does not exist"), "{}", r.stderr);
    // A folder without patches.
    let empty = d.path().join("nothing");
    std::fs::create_dir(&empty).expect("mkdir");
    let r = run_err(INFER, &["--model", s(&f.model), s(&empty)]);
    assert!(r.stderr.contains("no .npy files"), "{}", r.stderr);
}

#[test]
fn tta_averages_eight_flips_and_jsonl_carries_the_same_values() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let model = f.model.clone();
    let plain = d.path().join("plain.jsonl");
    let tta = d.path().join("tta.jsonl");
    run_ok(
        INFER,
        &[
            "--model",
            s(&model),
            s(&f.patches),
            "-o",
            s(&plain),
            "--format",
            "jsonl",
            "-q",
            "--device",
            "cpu",
        ],
    );
    run_ok(
        INFER,
        &[
            "--model",
            s(&model),
            s(&f.patches),
            "-o",
            s(&tta),
            "--format",
            "jsonl",
            "--tta",
            "flips",
            "-q",
            "--device",
            "cpu",
        ],
    );
    let parse = |p: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(p)
            .expect("read")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect()
    };
    let (a, b) = (parse(&plain), parse(&tta));
    assert_eq!(a.len(), b.len());
    let differs = a.iter().zip(&b).filter(|(x, y)| x["logit"] != y["logit"]).count();
    assert!(
        differs > a.len() / 2,
        "TTA should change most logits ({differs} of {})",
        a.len()
    );
    // The TTA logit of one patch is the mean of its 8 flips scored one by one.
    let name = a[0]["patch_file"].as_str().expect("name");
    let cube: Array3<f32> = ndarray_npy::read_npy(f.patches.join(name)).expect("npy");
    let mut sum = 0.0;
    for mask in 0..8u8 {
        let mut v = cube.view();
        for axis in 0..3 {
            if mask & (1 << axis) != 0 {
                v.invert_axis(ndarray::Axis(axis));
            }
        }
        let p = d.path().join(format!("flip{mask}.npy"));
        write_npy(&p, &v.as_standard_layout().into_owned()).expect("w");
        let r = run_ok(
            INFER,
            &[
                "--model",
                s(&model),
                s(&p),
                "-o",
                "-",
                "--format",
                "jsonl",
                "-q",
                "--device",
                "cpu",
            ],
        );
        let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).expect("json");
        sum += v["logit"].as_f64().expect("logit");
    }
    let want = sum / 8.0;
    let got = b[0]["logit"].as_f64().expect("logit");
    assert!((got - want).abs() < 1e-5, "TTA {got} vs mean of flips {want}");
}

/// `--spin` only changes how ONNX Runtime's threads wait: the scores are the same.
#[test]
fn spinning_threads_give_the_same_scores() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let model = f.model.clone();
    let (a, b) = (d.path().join("a.csv"), d.path().join("b.csv"));
    let args = |out: &Path| {
        vec![
            "--model".to_string(),
            s(&model).into(),
            s(&f.patches).into(),
            "-o".into(),
            s(out).into(),
            "--threads".into(),
            "2".into(),
            "-q".into(),
        ]
    };
    let plain = args(&a);
    run_ok(INFER, &plain.iter().map(String::as_str).collect::<Vec<_>>());
    let mut spin = args(&b);
    spin.push("--spin".into());
    run_ok(INFER, &spin.iter().map(String::as_str).collect::<Vec<_>>());
    let (ha, ra) = read_csv(&a);
    let (hb, rb) = read_csv(&b);
    assert_eq!(ha, hb);
    assert!(!ra.is_empty());
    assert_eq!(ra, rb);
}

#[test]
fn infer_reports_every_bad_file_and_keeps_going() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let folder = d.path().join("mixed");
    std::fs::create_dir(&folder).expect("mkdir");
    for name in ["s001_p001.npy", "s001_p002.npy"] {
        std::fs::copy(f.patches.join(name), folder.join(name)).expect("copy");
    }
    write_npy(folder.join("bad_dtype.npy"), &Array3::<u8>::zeros((4, 4, 4))).expect("write");
    write_npy(folder.join("bad_rank.npy"), &Array2::<f32>::zeros((16, 16))).expect("write");
    let bytes = std::fs::read(f.patches.join("s001_p003.npy")).expect("read");
    std::fs::write(folder.join("truncated.npy"), &bytes[..bytes.len() / 2]).expect("write");
    let model = f.model.clone();
    let out = d.path().join("scores.csv");
    let r = run_err(
        INFER,
        &["--model", s(&model), "--device", "cpu", s(&folder), "-o", s(&out)],
    );
    assert!(
        r.stderr.contains("bad_dtype.npy") && r.stderr.contains("expected float32, float64 or int16"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("bad_rank.npy") && r.stderr.contains("3-D"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("truncated.npy") && r.stderr.contains("truncated"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("3 input(s) could not be scored"), "{}", r.stderr);
    let (_, rows) = read_csv(&out);
    let names: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(names, ["s001_p001.npy", "s001_p002.npy"]);

    // --fail-fast stops at the first bad file and writes nothing.
    let out2 = d.path().join("scores2.csv");
    let r = run_err(
        INFER,
        &[
            "--model",
            s(&model),
            "--device",
            "cpu",
            "--fail-fast",
            s(&folder),
            "-o",
            s(&out2),
        ],
    );
    assert!(r.stderr.contains("bad_dtype.npy"), "{}", r.stderr);
    assert!(!out2.exists());
}

/// The fixture's model is untrained, and the tests above compare scores of different patches
/// (a batch against the same patches alone, a resumed run against a fresh one): they mean
/// something only if its logits tell the patches apart.
#[test]
fn the_untrained_model_tells_patches_apart() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let out = d.path().join("scores.csv");
    run_ok(INFER, &["--model", s(&f.model), s(&f.patches), "-o", s(&out), "-q"]);
    let (h, rows) = read_csv(&out);
    let li = chain_tests::col(&h, "logit");
    let mut logits: Vec<f64> = rows.iter().map(|r| r[li].parse().expect("logit")).collect();
    assert_eq!(logits.len(), PATCHES);
    logits.sort_by(f64::total_cmp);
    let distinct = logits.windows(2).filter(|w| w[1] - w[0] > 1e-4).count() + 1;
    assert!(distinct > PATCHES * 3 / 4, "{distinct} distinct logits of {PATCHES}");
    assert!(logits[PATCHES - 1] - logits[0] > 1e-2, "spread {:?}", (logits[0], logits[PATCHES - 1]));
}
