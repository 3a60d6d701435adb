//! infer at full strength: inputs, per-file validation, errors file, resume, TTA, formats.
use std::path::Path;

use chain_tests::{read_csv, run, run_err, run_ok, s};
use ndarray::{Array2, Array3};
use ndarray_npy::write_npy;

use crate::fixture::fixture;

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
        "infer",
        &[
            "--model",
            s(&f.run.join("model.onnx")),
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
        "infer",
        &[
            "--model",
            s(&f.run.join("model.onnx")),
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
        "infer",
        &[
            "--model",
            s(&f.run.join("model.onnx")),
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
        "infer",
        &[
            "--model",
            s(&f.run.join("model.onnx")),
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
        "infer",
        &[
            "--model",
            s(&f.run.join("model.onnx")),
            s(&f.patches),
            "-o",
            s(&d.path().join("no/such/dir/x.csv")),
        ],
    );
    assert!(r.stderr.contains("does not exist"), "{}", r.stderr);
    // A folder without patches.
    let empty = d.path().join("nothing");
    std::fs::create_dir(&empty).expect("mkdir");
    let r = run_err("infer", &["--model", s(&f.run.join("model.onnx")), s(&empty)]);
    assert!(r.stderr.contains("no .npy files"), "{}", r.stderr);
}

#[test]
fn resume_scores_only_what_is_missing_and_equals_one_run() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let model = f.run.join("model.onnx");
    let full = d.path().join("full.csv");
    run_ok(
        "infer",
        &[
            "--model",
            s(&model),
            s(&f.patches),
            "-o",
            s(&full),
            "-q",
            "--device",
            "cpu",
        ],
    );
    // A partial output: the header and the first 30 rows, as an interrupted run leaves it.
    let text = std::fs::read_to_string(&full).expect("read");
    let partial: String = text.lines().take(31).map(|l| format!("{l}\n")).collect();
    let out = d.path().join("resumed.csv");
    std::fs::write(&out, partial).expect("w");
    let r = run_ok(
        "infer",
        &[
            "--model",
            s(&model),
            s(&f.patches),
            "-o",
            s(&out),
            "--resume",
            "--device",
            "cpu",
        ],
    );
    assert!(r.stderr.contains("(30 kept from the earlier output)"), "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&out).expect("read"), text);
    // Columns of another kind of run are refused.
    let cal_out = d.path().join("cal");
    run_ok(
        "calibrate",
        &[
            s(&f.run),
            "-o",
            s(&cal_out.join("calibration.yaml")),
            "--bootstrap",
            "0",
            "--no-report",
            "--no-bake",
        ],
    );
    let r = run_err(
        "infer",
        &[
            "--model",
            s(&model),
            "-c",
            s(&cal_out.join("calibration.yaml")),
            s(&f.patches),
            "-o",
            s(&out),
            "--resume",
        ],
    );
    assert!(
        r.stderr.contains("columns") && r.stderr.contains("differ"),
        "{}",
        r.stderr
    );
    // Calibrated, in CSV and JSONL: resuming with the same calibration equals one run; with
    // another one (same columns, same model) it is refused rather than mixing the two.
    let other = d.path().join("other");
    run_ok(
        "calibrate",
        &[
            s(&f.run),
            "-o",
            s(&other.join("calibration.yaml")),
            "--method",
            "isotonic",
            "--operating-point",
            "max_f1",
            "--bootstrap",
            "0",
            "--no-report",
            "--no-bake",
        ],
    );
    for ext in ["csv", "jsonl"] {
        let one = d.path().join(format!("cal-one.{ext}"));
        let cal = |c: &Path, out: &Path, resume: bool| {
            let mut a = vec![
                "--model",
                s(&model),
                "-c",
                s(c),
                s(&f.patches),
                "-o",
                s(out),
                "-q",
                "--format",
                ext,
            ];
            if resume {
                a.push("--resume");
            }
            chain_tests::run("infer", &a)
        };
        assert!(cal(&cal_out.join("calibration.yaml"), &one, false).ok);
        let text = std::fs::read_to_string(&one).expect("read");
        let keep = if ext == "csv" { 31 } else { 30 };
        let partial: String = text.lines().take(keep).map(|l| format!("{l}\n")).collect();
        let out = d.path().join(format!("cal-resumed.{ext}"));
        std::fs::write(&out, &partial).expect("w");
        let r = cal(&other.join("calibration.yaml"), &out, true);
        assert!(
            !r.ok && r.stderr.contains("calibrated otherwise"),
            "{ext}: {}",
            r.stderr
        );
        assert_eq!(
            std::fs::read_to_string(&out).expect("read"),
            partial,
            "{ext}: kept as it was"
        );
        assert!(cal(&cal_out.join("calibration.yaml"), &out, true).ok);
        assert_eq!(std::fs::read_to_string(&out).expect("read"), text, "{ext}");
    }
}

#[test]
fn tta_averages_eight_flips_and_jsonl_carries_the_same_values() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let model = f.run.join("model.onnx");
    let plain = d.path().join("plain.jsonl");
    let tta = d.path().join("tta.jsonl");
    run_ok(
        "infer",
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
        "infer",
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
            "infer",
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

#[test]
fn doctor_reports_runtime_and_model() {
    let f = fixture();
    let r = run_ok("infer", &["doctor", "--model", s(&f.run.join("model.onnx"))]);
    for want in [
        "ONNX Runtime 1.31.1",
        "execution providers: CPUExecutionProvider",
        "libcudart.so.13",
        "driver:",
        "preprocess.cube_size = 16",
        "preprocessing: centre crop/pad to 16³",
        // Provenance of the training run travels in the model.
        "training.precision = fp32",
        "training.cuda_libraries = ",
        "training.libtorch_version = 2.11.0",
        "training.device = cpu",
        "tool.git_commit = ",
    ] {
        assert!(r.stdout.contains(want), "doctor lacks `{want}`:\n{}", r.stdout);
    }
    // A scoring run says where it ran and whether every node landed there.
    let r = run(
        "infer",
        &[
            "--model",
            s(&f.run.join("model.onnx")),
            s(&f.patches),
            "-o",
            "-",
            "--device",
            "cpu",
        ],
    );
    assert!(
        r.stderr.contains("on CPUExecutionProvider (every node on it)"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("peak RSS"), "{}", r.stderr);
    // And how much of the scoring time the model was busy (a percentage, at most 100).
    let busy: f64 = r
        .stderr
        .split("model busy ")
        .nth(1)
        .and_then(|t| t.split('%').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no `model busy N%` in:\n{}", r.stderr));
    assert!((0.0..=100.0).contains(&busy), "{busy}");
}

/// `--spin` only changes how ONNX Runtime's threads wait: the scores are the same.
#[test]
fn spinning_threads_give_the_same_scores() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let model = f.run.join("model.onnx");
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
    run_ok("infer", &plain.iter().map(String::as_str).collect::<Vec<_>>());
    let mut spin = args(&b);
    spin.push("--spin".into());
    run_ok("infer", &spin.iter().map(String::as_str).collect::<Vec<_>>());
    let (ha, ra) = read_csv(&a);
    let (hb, rb) = read_csv(&b);
    assert_eq!(ha, hb);
    assert!(!ra.is_empty());
    assert_eq!(ra, rb);
}

/// A reader that goes away (`infer doctor | head -1`) ends the writer quietly, as a Unix
/// tool does: by SIGPIPE, not by a panic on the next write.
#[test]
fn closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let f = fixture();
    for (name, args) in [
        ("infer", vec!["doctor", "--model", s(&f.run.join("model.onnx"))]),
        ("trainer", vec!["doctor"]),
    ] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader); // nobody will read
        let out = std::process::Command::new(chain_tests::bin(name))
            .args(&args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("spawn");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{name} {args:?}: {stderr}");
        // 13: SIGPIPE on Linux.
        assert_eq!(
            out.status.signal(),
            Some(13),
            "{name} {args:?}: {:?} {stderr}",
            out.status
        );
    }
}
